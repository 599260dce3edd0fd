using System.Text.Json;

namespace SharpLens.Cli;

/// <summary>
/// A tokens file: <c>{"batches": [[[ids...], ...], ...]}</c>, a list of batches, each a list of rows of equal
/// length holding integer token ids. Every fault raises a <see cref="CliException"/> naming the file and the place.
/// </summary>
public sealed class TokensFile
{
    private TokensFile(string path, List<long[][]> batches)
    {
        Path = path;
        Batches = batches;
    }

    /// <summary>Where the file was read from.</summary>
    public string Path { get; }

    /// <summary>The batches: each a list of rows, all rows of a batch of the same length.</summary>
    public IReadOnlyList<long[][]> Batches { get; }

    /// <summary>Reads and checks the structure of a tokens file (not yet against a model: see <see cref="CheckAgainst"/>).</summary>
    public static TokensFile Read(string path)
    {
        if (!File.Exists(path))
            throw new CliException(Directory.Exists(path) ? $"tokens file '{path}' is a directory" : $"tokens file '{path}' does not exist");
        byte[] bytes;
        try
        {
            bytes = File.ReadAllBytes(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CliException($"cannot read tokens file '{path}': {e.Message}", e);
        }
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(bytes);
        }
        catch (JsonException e)
        {
            throw new CliException($"{path}: not valid JSON ({e.Message})", e);
        }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
                throw Fault(path, $"expected a JSON object {{\"batches\": [[[ids...], ...], ...]}}, got {Describe(root.ValueKind)}");
            if (!root.TryGetProperty("batches", out var batchesEl))
                throw Fault(path, "the object has no \"batches\" field; expected {\"batches\": [[[ids...], ...], ...]}");
            if (batchesEl.ValueKind != JsonValueKind.Array)
                throw Fault(path, $"\"batches\" must be a list of batches, got {Describe(batchesEl.ValueKind)}");
            if (batchesEl.GetArrayLength() == 0) throw Fault(path, "\"batches\" is empty");

            var batches = new List<long[][]>();
            var b = 0;
            foreach (var batchEl in batchesEl.EnumerateArray())
            {
                if (batchEl.ValueKind != JsonValueKind.Array)
                    throw Fault(path, $"batch {b} must be a list of rows, got {Describe(batchEl.ValueKind)}");
                if (batchEl.GetArrayLength() == 0) throw Fault(path, $"batch {b} has no rows");
                var rows = new List<long[]>();
                var r = 0;
                foreach (var rowEl in batchEl.EnumerateArray())
                {
                    if (rowEl.ValueKind != JsonValueKind.Array)
                        throw Fault(path, $"batch {b} row {r} must be a list of token ids, got {Describe(rowEl.ValueKind)}");
                    var row = new long[rowEl.GetArrayLength()];
                    var p = 0;
                    foreach (var idEl in rowEl.EnumerateArray())
                    {
                        if (idEl.ValueKind != JsonValueKind.Number || !idEl.TryGetInt64(out var id))
                            throw Fault(path, $"batch {b} row {r} position {p}: token id {Raw(idEl)} is not an integer");
                        row[p++] = id;
                    }
                    if (row.Length == 0) throw Fault(path, $"batch {b} row {r} is empty");
                    if (rows.Count > 0 && row.Length != rows[0].Length)
                        throw Fault(path, $"batch {b} is ragged: row {r} has {row.Length} tokens but row 0 has {rows[0].Length} " +
                            "(all rows of a batch must have the same length)");
                    rows.Add(row);
                    r++;
                }
                batches.Add(rows.ToArray());
                b++;
            }
            return new TokensFile(path, batches);
        }
    }

    /// <summary>
    /// Checks every id against the model's vocabulary and every row against its context. One-token rows are valid (their
    /// next-token loss is NaN, as HuggingFace's; commands that need the loss say so themselves).
    /// </summary>
    public void CheckAgainst(TransformerConfig config, IEnumerable<int>? batchIndices = null)
    {
        foreach (var b in batchIndices ?? Enumerable.Range(0, Batches.Count))
        {
            var rows = Batches[b];
            var length = rows[0].Length;
            if (length > config.NCtx)
                throw Fault(Path, $"batch {b} has rows of {length} tokens, more than the model's context of {config.NCtx}");
            for (var r = 0; r < rows.Length; r++)
                for (var p = 0; p < rows[r].Length; p++)
                {
                    var id = rows[r][p];
                    if (id < 0 || id >= config.DVocab)
                        throw Fault(Path, $"batch {b} row {r} position {p}: token id {id} is outside the model's vocabulary [0, {config.DVocab})");
                }
        }
    }

    /// <summary>Batch <paramref name="index"/> as an int64 tensor [rows, length] (owned by the current scope, if any).</summary>
    public Tensor ToTensor(int index)
    {
        var rows = Batches[index];
        var length = rows[0].Length;
        var flat = new long[rows.Length * length];
        for (var r = 0; r < rows.Length; r++) rows[r].CopyTo(flat, r * length);
        return Torch.FromArray(flat, rows.Length, length);
    }

    private static CliException Fault(string path, string fault) => new($"{path}: {fault}");

    private static string Describe(JsonValueKind kind) => kind switch
    {
        JsonValueKind.Object => "an object",
        JsonValueKind.Array => "a list",
        JsonValueKind.String => "a string",
        JsonValueKind.Number => "a number",
        JsonValueKind.True or JsonValueKind.False => "a boolean",
        JsonValueKind.Null => "null",
        _ => kind.ToString(),
    };

    private static string Raw(JsonElement el)
    {
        var text = el.GetRawText();
        return text.Length > 40 ? text[..40] + "..." : text;
    }
}
