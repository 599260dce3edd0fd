using System.Text.Json;
using SharpLens.Tokenization;

namespace SharpLens.Sweeps;

/// <summary>
/// One clean/corrupted prompt pair of an attribution sweep, tokenized. The metric is the logit difference
/// <c>logit[Answer] - logit[Wrong]</c> at the last position.
/// </summary>
/// <param name="Index">0-based index among the valid pairs of the prompts file (skipped lines take no index).</param>
/// <param name="Line">1-based line number in the prompts file (0 for pairs made in code).</param>
/// <param name="Clean">Clean prompt ids.</param>
/// <param name="Corrupted">Corrupted prompt ids, of the same length.</param>
/// <param name="Answer">The answer token id.</param>
/// <param name="Wrong">The wrong-answer token id.</param>
public sealed record PromptPair(int Index, int Line, long[] Clean, long[] Corrupted, long Answer, long Wrong)
{
    /// <summary>The number of positions of both prompts.</summary>
    public int Length => Clean.Length;

    /// <summary>Throws <see cref="ArgumentException"/> when the pair cannot run on a model with this configuration.</summary>
    public void Validate(TransformerConfig config)
    {
        var problem = Problem(Clean, Corrupted, Answer, Wrong, config);
        if (problem is not null) throw new ArgumentException($"prompt pair {Index}" + (Line > 0 ? $" (line {Line})" : "") + $": {problem}");
    }

    internal static string? Problem(long[] clean, long[] corrupted, long answer, long wrong, TransformerConfig config)
    {
        if (clean.Length == 0) return "the clean prompt is empty";
        if (corrupted.Length == 0) return "the corrupted prompt is empty";
        if (clean.Length != corrupted.Length)
            return $"the clean prompt has {clean.Length} tokens but the corrupted one has {corrupted.Length}; they must have the same length";
        if (clean.Length > config.NCtx) return $"the prompts have {clean.Length} tokens, more than the model's context of {config.NCtx}";
        foreach (var (what, ids) in new (string, long[])[] { ("clean", clean), ("corrupted", corrupted), ("answer", new[] { answer }), ("wrong", new[] { wrong }) })
            foreach (var id in ids)
                if (id < 0 || id >= config.DVocab)
                    return $"the {what} token id {id} is outside the vocabulary [0, {config.DVocab})";
        return null;
    }
}

/// <summary>A line of a prompts file that could not be used, with why.</summary>
/// <param name="Line">1-based line number.</param>
/// <param name="Message">What is wrong with it.</param>
public sealed record PromptLineError(int Line, string Message)
{
    /// <inheritdoc/>
    public override string ToString() => $"line {Line}: {Message}";
}

/// <summary>The valid pairs of a prompts file and the lines that were not.</summary>
public sealed record PromptFile(IReadOnlyList<PromptPair> Pairs, IReadOnlyList<PromptLineError> Errors);

/// <summary>
/// Reads a JSONL prompts file: one object per line,
/// <c>{"clean": "..." | [ids], "corrupted": "..." | [ids], "answer": "..." | id, "wrong": "..." | id}</c>.
/// Text needs a tokenizer; an answer given as text must encode to exactly one token. Blank lines are
/// ignored; other keys are allowed and ignored. Every fault is reported with its line number.
/// </summary>
public static class PromptFileReader
{
    /// <summary>Reads and validates every line of <paramref name="path"/>.</summary>
    /// <param name="path">The JSONL file.</param>
    /// <param name="config">The model's configuration (vocabulary size and context).</param>
    /// <param name="tokenizer">Encodes text fields; null when the model has none (text lines are then errors).</param>
    /// <param name="prependBos">Put the tokenizer's BOS before prompts given as text (ids are used as they are).</param>
    public static PromptFile Read(string path, TransformerConfig config, BpeTokenizer? tokenizer, bool prependBos)
    {
        var pairs = new List<PromptPair>();
        var errors = new List<PromptLineError>();
        var lineNumber = 0;
        foreach (var line in File.ReadLines(path))
        {
            lineNumber++;
            if (string.IsNullOrWhiteSpace(line)) continue;
            try
            {
                pairs.Add(ParseLine(line, lineNumber, pairs.Count, config, tokenizer, prependBos));
            }
            catch (PromptFormatException e)
            {
                errors.Add(new PromptLineError(lineNumber, e.Message));
            }
        }
        return new PromptFile(pairs, errors);
    }

    private sealed class PromptFormatException(string message) : Exception(message);

    private static PromptPair ParseLine(string line, int lineNumber, int index, TransformerConfig config, BpeTokenizer? tokenizer, bool prependBos)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(line);
        }
        catch (JsonException e)
        {
            throw new PromptFormatException($"not valid JSON ({e.Message})");
        }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object) throw new PromptFormatException($"expected a JSON object, got {root.ValueKind}");
            var clean = Prompt(root, "clean", tokenizer, prependBos);
            var corrupted = Prompt(root, "corrupted", tokenizer, prependBos);
            var answer = Token(root, "answer", tokenizer);
            var wrong = Token(root, "wrong", tokenizer);
            var problem = PromptPair.Problem(clean, corrupted, answer, wrong, config);
            if (problem is not null) throw new PromptFormatException(problem);
            return new PromptPair(index, lineNumber, clean, corrupted, answer, wrong);
        }
    }

    private static JsonElement Field(JsonElement root, string name) =>
        root.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null
            ? v
            : throw new PromptFormatException($"missing \"{name}\" (each line needs \"clean\", \"corrupted\", \"answer\" and \"wrong\")");

    private static BpeTokenizer NeedTokenizer(BpeTokenizer? tokenizer, string name) => tokenizer ??
        throw new PromptFormatException($"\"{name}\" is text but the model folder has no tokenizer (tokenizer.json, or vocab.json with merges.txt); give token ids instead");

    private static long[] Prompt(JsonElement root, string name, BpeTokenizer? tokenizer, bool prependBos)
    {
        var v = Field(root, name);
        switch (v.ValueKind)
        {
            case JsonValueKind.String:
                var text = v.GetString()!;
                int[] ids;
                try
                {
                    ids = NeedTokenizer(tokenizer, name).Encode(text, prependBos);
                }
                catch (InvalidOperationException e)
                {
                    throw new PromptFormatException($"cannot encode \"{name}\": {e.Message}");
                }
                return ids.Select(i => (long)i).ToArray();
            case JsonValueKind.Array:
                var result = new long[v.GetArrayLength()];
                var k = 0;
                foreach (var item in v.EnumerateArray())
                {
                    if (item.ValueKind != JsonValueKind.Number || !item.TryGetInt64(out var id))
                        throw new PromptFormatException($"\"{name}\"[{k}] is not an integer token id: {item.GetRawText()}");
                    result[k++] = id;
                }
                return result;
            default:
                throw new PromptFormatException($"\"{name}\" must be a string or an array of token ids, got {v.ValueKind}");
        }
    }

    private static long Token(JsonElement root, string name, BpeTokenizer? tokenizer)
    {
        var v = Field(root, name);
        switch (v.ValueKind)
        {
            case JsonValueKind.Number:
                return v.TryGetInt64(out var id) ? id : throw new PromptFormatException($"\"{name}\" is not an integer token id: {v.GetRawText()}");
            case JsonValueKind.String:
                var text = v.GetString()!;
                var ids = NeedTokenizer(tokenizer, name).Encode(text);
                if (ids.Length != 1)
                    throw new PromptFormatException(
                        $"\"{name}\" {JsonSerializer.Serialize(text)} encodes to {ids.Length} tokens [{string.Join(", ", ids)}]; it must be exactly one (mind the leading space)");
                return ids[0];
            default:
                throw new PromptFormatException($"\"{name}\" must be a token id or a one-token string, got {v.ValueKind}");
        }
    }
}
