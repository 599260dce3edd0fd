using System.CommandLine;
using System.Globalization;
using SharpLens.Generation;
using SharpLens.Tokenization;

namespace SharpLens.Cli;

/// <summary><c>lens generate</c>: extend a prompt with greedy or sampled tokens (see <see cref="TextGenerator"/>).</summary>
internal static class GenerateCommand
{
    public static Command Build(CliContext context)
    {
        var modelDir = new Argument<string>("MODEL_DIR") { Description = "HuggingFace model folder (config.json + model.safetensors)" };
        var text = new Option<string?>("--text") { Description = "Prompt text (needs the model folder's tokenizer)" };
        var tokens = new Option<string?>("--tokens") { Description = "Prompt token ids, comma-separated: \"1,2,3\"", HelpName = "IDS" };
        var maxNew = new Option<int>("--max-new-tokens") { Description = "How many tokens to generate at most", Required = true, HelpName = "N" };
        var temperature = new Option<double>("--temperature")
        {
            Description = "Sampling temperature; 0 is greedy argmax", DefaultValueFactory = _ => 1.0,
        };
        var topK = new Option<int?>("--top-k") { Description = "Sample only among the k most likely tokens" };
        var topP = new Option<double?>("--top-p") { Description = "Sample only among the smallest set of most likely tokens whose probability reaches p, in (0, 1]" };
        var seed = new Option<ulong?>("--seed") { Description = "Seed of the sampler (same seed, same tokens); random when left out" };
        var stop = new Option<int?>("--stop-token") { Description = "Stop after generating this token id (e.g. the EOS id)", HelpName = "ID" };
        var prependBos = new Option<bool>("--prepend-bos") { Description = "With --text: put the tokenizer's BOS token first" };
        var dtype = new Option<string>("--dtype") { Description = "Parameter dtype", DefaultValueFactory = _ => "float32" };
        dtype.AcceptOnlyFromAmong("float32", "float64");
        var noKvCache = new Option<bool>("--no-kv-cache")
        {
            Description = "Rerun the whole sequence every step instead of keeping a key/value cache (hooks then see every position each step)",
        };
        var command = new Command("generate",
            "Generate tokens after a prompt (HuggingFace sampling: temperature, then top-k, then top-p; temperature 0 is greedy). " +
            "Prints 'tokens:' (prompt and new ids), 'new_tokens:', and with a tokenizer 'text:' (the prompt and the decoded new tokens). " +
            "A key/value cache runs only the new position each step after the first (--no-kv-cache reruns the whole sequence).")
        {
            modelDir, text, tokens, maxNew, temperature, topK, topP, seed, stop, prependBos, dtype, noKvCache,
        };
        command.SetAction(parse => context.Execute(() => Run(context, new Settings(
            parse.GetValue(modelDir)!, parse.GetValue(text), parse.GetValue(tokens), parse.GetValue(maxNew), parse.GetValue(temperature),
            parse.GetValue(topK), parse.GetValue(topP), parse.GetValue(seed), parse.GetValue(stop), parse.GetValue(prependBos),
            CliSupport.ParseDType(parse.GetValue(dtype)), !parse.GetValue(noKvCache)))));
        return command;
    }

    private sealed record Settings(string ModelDir, string? Text, string? Tokens, int MaxNewTokens, double Temperature, int? TopK, double? TopP,
        ulong? Seed, int? StopToken, bool PrependBos, ScalarType DType, bool KeyValueCache);

    private static int Run(CliContext context, Settings s)
    {
        if ((s.Text is null) == (s.Tokens is null)) throw new CliException("give the prompt with either --text \"...\" or --tokens \"1,2,3\"");
        if (s.PrependBos && s.Text is null) throw new CliException("--prepend-bos applies only to --text");
        if (s.MaxNewTokens < 0) throw new CliException($"--max-new-tokens must be 0 or more, got {s.MaxNewTokens}");
        try
        {
            TextGenerator.ValidateSampling(s.Temperature, s.TopK, s.TopP);
        }
        catch (ArgumentOutOfRangeException e)
        {
            throw new CliException(e.ParamName switch { "topK" => "--top-k", "topP" => "--top-p", _ => "--temperature" } + ": " + FirstLine(e.Message), e);
        }
        var tokenizer = TryLoadTokenizer(s.ModelDir);
        long[] prompt;
        if (s.Text is not null)
        {
            if (tokenizer is null)
                throw new CliException($"--text needs a tokenizer, but model directory '{s.ModelDir}' has none " +
                                       "(expected tokenizer.json, or vocab.json with merges.txt); pass token ids with --tokens instead");
            try
            {
                prompt = tokenizer.Encode(s.Text, s.PrependBos).Select(i => (long)i).ToArray();
            }
            catch (InvalidOperationException e)
            {
                throw new CliException(e.Message, e);
            }
            if (prompt.Length == 0) throw new CliException("--text encodes to no tokens");
        }
        else
        {
            prompt = ParseIds(s.Tokens!);
        }

        using var scope = Torch.NewScope();
        using var bridge = CliSupport.LoadBridge(s.ModelDir, new BridgeOptions { DType = s.DType });
        foreach (var id in prompt)
            if (id < 0 || id >= bridge.Config.DVocab) throw new CliException($"--tokens: id {id} is outside the vocabulary [0, {bridge.Config.DVocab})");
        if (prompt.Length + (long)s.MaxNewTokens > bridge.Config.NCtx)
            throw new CliException($"a prompt of {prompt.Length} tokens plus --max-new-tokens {s.MaxNewTokens} exceeds the model's context of {bridge.Config.NCtx}");
        if (s.StopToken is { } stop && (stop < 0 || stop >= bridge.Config.DVocab))
            throw new CliException($"--stop-token {stop} is outside the vocabulary [0, {bridge.Config.DVocab})");

        var output = bridge.Generate(Torch.FromArray(prompt, 1, prompt.Length), s.MaxNewTokens, s.Temperature, s.TopK, s.TopP, s.Seed, s.StopToken,
            useKeyValueCache: s.KeyValueCache);
        var all = output.ToArray<long>();
        var generated = all.Skip(prompt.Length).ToArray();
        context.Out.WriteLine("tokens: " + string.Join(",", all));
        context.Out.WriteLine("new_tokens: " + string.Join(",", generated));
        if (tokenizer is not null)
        {
            var decoded = s.Text is not null
                ? s.Text + tokenizer.Decode(generated.Select(i => (int)i))
                : tokenizer.Decode(all.Select(i => (int)i));
            context.Out.WriteLine("text: " + decoded);
        }
        return Program.Success;
    }

    private static string FirstLine(string message) => message.Split('\n')[0].Trim();

    internal static long[] ParseIds(string text)
    {
        var parts = text.Split([',', ' ', '\t'], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (parts.Length == 0) throw new CliException("--tokens holds no ids; give them comma-separated: \"1,2,3\"");
        var ids = new long[parts.Length];
        for (var i = 0; i < parts.Length; i++)
            if (!long.TryParse(parts[i], NumberStyles.Integer, CultureInfo.InvariantCulture, out ids[i]))
                throw new CliException($"--tokens: '{parts[i]}' is not an integer token id");
        return ids;
    }

    /// <summary>The model folder's tokenizer, or null when it has none; a malformed one is a user error.</summary>
    internal static BpeTokenizer? TryLoadTokenizer(string modelDir)
    {
        if (!Directory.Exists(modelDir)) return null;  // LoadBridge reports the missing folder
        var hasTokenizer = File.Exists(Path.Combine(modelDir, "tokenizer.json")) ||
                           (File.Exists(Path.Combine(modelDir, "vocab.json")) && File.Exists(Path.Combine(modelDir, "merges.txt")));
        if (!hasTokenizer) return null;
        try
        {
            return BpeTokenizer.FromDirectory(modelDir);
        }
        catch (Exception e) when (e is FormatException or IOException or InvalidOperationException or System.Text.Json.JsonException or ArgumentException or NotSupportedException)
        {
            throw new CliException($"cannot load the tokenizer of '{modelDir}': {e.Message}", e);
        }
    }
}
