using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using SharpLens.Tokenization;

namespace SharpLens.Sweeps;

/// <summary>A sweep cannot start or continue: bad arguments, a foreign or mismatched output folder, bad prompt lines with fail-on-error.</summary>
public sealed class SweepException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>Settings of an <see cref="AttributionSweep"/>.</summary>
public sealed record SweepOptions
{
    /// <summary>The model folder (recorded in the manifest: its full path and a fingerprint of its files).</summary>
    public required string ModelDirectory { get; init; }
    /// <summary>The JSONL prompts file.</summary>
    public required string PromptsPath { get; init; }
    /// <summary>The output folder (created if missing).</summary>
    public required string OutputDirectory { get; init; }
    /// <summary>Pairs per forward/backward pass (and patched copies per forward pass for exact patching).</summary>
    public int BatchSize { get; init; } = 8;
    /// <summary>Pairs per chunk file (the unit of resumption).</summary>
    public int ChunkSize { get; init; } = 64;
    /// <summary>Exact activation patching for the first this-many pairs.</summary>
    public int Exact { get; init; }
    /// <summary>Fail on a bad prompt line instead of reporting and skipping it.</summary>
    public bool FailOnBadLines { get; init; }
    /// <summary>Prepend BOS to prompts given as text; null: when the tokenizer has a BOS token.</summary>
    public bool? PrependBos { get; init; }
    /// <summary>Also write <c>mean.safetensors</c>, the mean of every site's estimates over all pairs (see <see cref="SweepMean"/>).
    /// An output, not an argument of the sweep: a sweep may be continued with or without it.</summary>
    public bool AggregateMean { get; init; }
}

/// <summary>What a run of <see cref="AttributionSweep.Run"/> did.</summary>
/// <param name="Pairs">Valid pairs in the prompts file.</param>
/// <param name="SkippedLines">Bad lines reported and skipped.</param>
/// <param name="Chunks">Chunks of the whole sweep.</param>
/// <param name="ChunksAlreadyDone">Chunks found complete when this run started.</param>
/// <param name="ChunksComputed">Chunks computed by this run.</param>
public sealed record SweepSummary(int Pairs, int SkippedLines, int Chunks, int ChunksAlreadyDone, int ChunksComputed);

/// <summary>
/// A resumable attribution-patching sweep over a prompts file, streaming results to a folder:
/// <list type="bullet">
/// <item><c>chunk-NNNNN.safetensors</c>: one per chunk of consecutive pairs (see <see cref="SweepChunk"/>), each written
/// under a temporary name and renamed into place;</item>
/// <item><c>summary.csv</c>: one row per pair (see <see cref="SweepChunk.SummaryRows"/>), appended chunk by chunk;</item>
/// <item><c>manifest.json</c>: the arguments (and their hash) and, per completed chunk, its file and the CSV's
/// length after its rows, replaced atomically after each chunk.</item>
/// </list>
/// A chunk counts as complete only once the manifest lists it, and the manifest is written last (chunk file, then CSV
/// rows, then manifest). On restart the CSV is cut back to the length the manifest records, so rows appended by a run
/// killed before its manifest update are dropped and recomputed, never duplicated; a CSV that is missing or shorter is
/// rebuilt from the chunk files. A restart with different arguments is refused, naming what differs.
/// </summary>
public static class AttributionSweep
{
    /// <summary>The manifest's file name.</summary>
    public const string ManifestName = "manifest.json";
    /// <summary>The summary's file name.</summary>
    public const string SummaryName = "summary.csv";
    private const string LockName = ".lock";
    internal const string ManifestFormat = "lens-sweep/1";

    /// <summary>The file name of chunk <paramref name="index"/>.</summary>
    public static string ChunkName(int index) => $"chunk-{index:D5}.safetensors";

    /// <summary>
    /// Runs (or continues) the sweep. Progress lines go to <paramref name="output"/>, bad prompt lines to <paramref name="errors"/>.
    /// </summary>
    /// <exception cref="SweepException">Bad options, bad lines with <see cref="SweepOptions.FailOnBadLines"/>, no valid pair, an output folder
    /// that holds something else, another sweep running there, or a sweep with different arguments.</exception>
    public static SweepSummary Run(TransformerBridge model, BpeTokenizer? tokenizer, SweepOptions options, TextWriter output, TextWriter errors)
    {
        ArgumentNullException.ThrowIfNull(output);
        var plan = Prepare(model, tokenizer, options, errors);
        using var dirLock = Lock(plan.Directory);
        try
        {
            return RunLocked(plan, output, errors);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new SweepException($"cannot write to output folder '{options.OutputDirectory}': {e.Message}", e);
        }
    }

    /// <summary>
    /// Everything a run needs before it touches the output folder's contents: checked options, the valid pairs (bad lines
    /// reported to <paramref name="errors"/>), the chunking, the arguments and their hash; creates the folder.
    /// </summary>
    internal static SweepPlan Prepare(TransformerBridge model, BpeTokenizer? tokenizer, SweepOptions options, TextWriter errors)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(errors);
        if (options.BatchSize < 1) throw new SweepException($"--batch-size must be at least 1, got {options.BatchSize}");
        if (options.ChunkSize < 1) throw new SweepException($"--chunk-size must be at least 1, got {options.ChunkSize}");
        if (options.Exact < 0) throw new SweepException($"--exact must be 0 or more, got {options.Exact}");
        var (prompts, promptsHash, prependBos) = ReadPrompts(options.PromptsPath, options.PrependBos, options.FailOnBadLines, model.Config, tokenizer, errors);

        var pairs = prompts.Pairs;
        var positions = pairs.Max(p => p.Length);
        var chunks = (pairs.Count + options.ChunkSize - 1) / options.ChunkSize;
        var dtype = model.Parameters()[0].DType;
        var storage = dtype == ScalarType.Float64 ? ScalarType.Float64 : ScalarType.Float32;
        var patcher = new AttributionPatcher(model);
        var arguments = new SortedDictionary<string, string>(StringComparer.Ordinal)
        {
            ["model"] = Path.GetFullPath(options.ModelDirectory),
            ["model_files"] = ModelFingerprint(options.ModelDirectory),
            ["prompts_sha256"] = promptsHash,
            ["batch_size"] = options.BatchSize.ToString(CultureInfo.InvariantCulture),
            ["chunk_size"] = options.ChunkSize.ToString(CultureInfo.InvariantCulture),
            ["exact"] = options.Exact.ToString(CultureInfo.InvariantCulture),
            ["dtype"] = dtype.ToTorchName(),
            ["prepend_bos"] = prependBos ? "true" : "false",
            ["sites"] = string.Join(",", patcher.Sites.Select(s => s.Key)),
        };
        var argumentsHash = Sha256(Encoding.UTF8.GetBytes(JsonSerializer.Serialize(arguments)));

        var dir = Path.GetFullPath(options.OutputDirectory);
        if (File.Exists(dir)) throw new SweepException($"--out '{options.OutputDirectory}' is a file; give a folder");
        try
        {
            Directory.CreateDirectory(dir);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new SweepException($"cannot create output folder '{options.OutputDirectory}': {e.Message}", e);
        }

        return new SweepPlan(options, dir, pairs, prompts.Errors.Count, positions, chunks, storage, patcher, arguments, argumentsHash);
    }

    /// <summary>
    /// Reads and validates every line of a prompts file up front (so the set of pairs, and the chunking, is fixed): the
    /// pairs, the file's hash and whether BOS is prepended to text prompts. Bad lines are reported to <paramref name="errors"/>
    /// and skipped, or fail the run with <paramref name="failOnBadLines"/>; a file without a valid pair fails it.
    /// </summary>
    internal static (PromptFile Prompts, string Hash, bool PrependBos) ReadPrompts(string path, bool? prependBosOption, bool failOnBadLines,
        TransformerConfig config, BpeTokenizer? tokenizer, TextWriter errors)
    {
        if (!File.Exists(path)) throw new SweepException($"prompts file '{path}' does not exist");
        var prependBos = prependBosOption ?? tokenizer?.BosTokenId is not null;
        if (prependBos && tokenizer is not null && tokenizer.BosTokenId is null)
            throw new SweepException("BOS was asked for but the model's tokenizer has no BOS token");
        string hash;
        PromptFile prompts;
        try
        {
            hash = Sha256File(path);
            prompts = PromptFileReader.Read(path, config, tokenizer, prependBos);
        }
        catch (IOException e)
        {
            throw new SweepException($"cannot read prompts file '{path}': {e.Message}", e);
        }
        if (prompts.Errors.Count > 0)
        {
            if (failOnBadLines)
                throw new SweepException($"{path}: {prompts.Errors.Count} bad line(s) (--on-error fail): " +
                                         string.Join("; ", prompts.Errors.Take(10)) + (prompts.Errors.Count > 10 ? "; ..." : ""));
            foreach (var e in prompts.Errors) errors.WriteLine($"warning: {path}: {e}; skipped");
            errors.Flush();
        }
        if (prompts.Pairs.Count == 0) throw new SweepException($"{path} holds no valid prompt pair");
        return (prompts, hash, prependBos);
    }

    /// <summary>
    /// Reads the folder's manifest and checks that it belongs to this sweep, or, in a folder that holds nothing else, writes a
    /// new one (first, so the folder is recognised as this sweep's from then on). Sets its pair, position and chunk counts.
    /// </summary>
    internal static Manifest OpenManifest(SweepPlan plan)
    {
        var (options, dir, arguments, argumentsHash) = (plan.Options, plan.Directory, plan.Arguments, plan.ArgumentsHash);
        var manifestPath = Path.Combine(dir, ManifestName);
        Manifest manifest;
        if (File.Exists(manifestPath))
        {
            manifest = Manifest.Read(manifestPath);
            if (manifest.ArgumentsHash != argumentsHash)
                throw new SweepException($"'{options.OutputDirectory}' holds a sweep started with other arguments: {Differences(manifest.Arguments, arguments)}. " +
                                         "Continue it with the same arguments, or choose another --out folder.");
        }
        else
        {
            var foreign = Directory.EnumerateFileSystemEntries(dir).Select(Path.GetFileName).Where(f => f != LockName).ToList();
            if (foreign.Count > 0)
                throw new SweepException($"output folder '{options.OutputDirectory}' is not empty and holds no {ManifestName} " +
                                         $"(it holds {string.Join(", ", foreign.Take(3))}{(foreign.Count > 3 ? ", ..." : "")}); give an empty or new folder");
            manifest = new Manifest { Format = ManifestFormat, Arguments = arguments, ArgumentsHash = argumentsHash };
            manifest.Write(manifestPath);  // first, so that the folder is recognised as this sweep's from now on
        }
        manifest.Pairs = plan.Pairs.Count;
        manifest.Positions = plan.Positions;
        manifest.Chunks = plan.Chunks;
        return manifest;
    }

    /// <summary>The metadata every chunk file of this sweep carries.</summary>
    internal static Dictionary<string, string> ChunkMetadata(SweepPlan plan) => new()
    {
        ["producer"] = "SharpLens lens sweep",
        ["arguments_sha256"] = plan.ArgumentsHash,
        ["model_dir"] = plan.Arguments["model"],
        ["dtype"] = plan.Arguments["dtype"],
    };

    private static SweepSummary RunLocked(SweepPlan plan, TextWriter output, TextWriter errors)
    {
        var (options, dir, pairs, positions, chunks) = (plan.Options, plan.Directory, plan.Pairs, plan.Positions, plan.Chunks);
        RemoveTemporaryFiles(dir);
        var manifestPath = Path.Combine(dir, ManifestName);
        var csvPath = Path.Combine(dir, SummaryName);
        var header = SummaryHeaderBytes;
        var manifest = OpenManifest(plan);

        // What is really complete: the manifest's chunks, in order, as long as their files exist.
        var kept = new List<Manifest.Entry>();
        foreach (var entry in manifest.Completed.OrderBy(e => e.Chunk))
        {
            if (entry.Chunk != kept.Count || !File.Exists(Path.Combine(dir, entry.File))) break;
            kept.Add(entry);
        }
        if (kept.Count < manifest.Completed.Count)
            errors.WriteLine($"warning: chunk {kept.Count} listed in {ManifestName} is missing; recomputing from there");
        manifest.Completed = kept;
        var expectedCsv = kept.Count == 0 ? header.Length : kept[^1].CsvBytes;
        if (kept.Count == 0)
        {
            WriteAtomically(csvPath, header);
        }
        else if (File.Exists(csvPath) && new FileInfo(csvPath).Length >= expectedCsv)
        {
            using var csv = new FileStream(csvPath, FileMode.Open, FileAccess.Write);
            csv.SetLength(expectedCsv);  // drops rows of a chunk whose manifest entry was never written
            csv.Flush(flushToDisk: true);
        }
        else
        {
            errors.WriteLine($"warning: {SummaryName} is missing or shorter than {ManifestName} records; rebuilding it from the chunk files");
            RebuildCsv(dir, csvPath, header, kept);
        }
        manifest.Write(manifestPath);

        var alreadyDone = kept.Count;
        if (alreadyDone > 0)
            output.WriteLine(alreadyDone == chunks
                ? $"all {chunks} chunk(s) of {pairs.Count} pair(s) are already complete in {options.OutputDirectory}"
                : $"resuming: {alreadyDone} of {chunks} chunk(s) already complete ({Math.Min(pairs.Count, alreadyDone * options.ChunkSize)} of {pairs.Count} pairs)");
        output.Flush();

        var metadata = ChunkMetadata(plan);
        var clock = Stopwatch.StartNew();
        var pairsThisRun = 0;
        for (var c = alreadyDone; c < chunks; c++)
        {
            var chunkPairs = plan.ChunkPairs(c);
            var chunk = SweepChunk.Compute(plan.Patcher, c, chunkPairs, positions, options.BatchSize, options.Exact, plan.Storage);
            var file = ChunkName(c);
            chunk.Save(Path.Combine(dir, file), metadata);

            var rows = Encoding.UTF8.GetBytes(string.Concat(chunk.SummaryRows().Select(r => r + "\n")));
            long csvLength;
            using (var csv = new FileStream(csvPath, FileMode.Open, FileAccess.Write))
            {
                csv.Seek(0, SeekOrigin.End);
                csv.Write(rows);
                csv.Flush(flushToDisk: true);
                csvLength = csv.Length;
            }
            manifest.Completed.Add(new Manifest.Entry { Chunk = c, File = file, Rows = chunkPairs.Count, CsvBytes = csvLength });
            manifest.Write(manifestPath);

            pairsThisRun += chunkPairs.Count;
            var done = Math.Min(pairs.Count, (c + 1) * options.ChunkSize);
            var rate = pairsThisRun / Math.Max(clock.Elapsed.TotalSeconds, 1e-9);
            var eta = TimeSpan.FromSeconds((pairs.Count - done) / rate);
            output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"chunk {c + 1}/{chunks}: {done}/{pairs.Count} pairs ({100.0 * done / pairs.Count:0.0}%), {rate:0.0} pairs/s, ETA {(int)eta.TotalHours}:{eta:mm\\:ss}"));
            output.Flush();
        }
        if (options.AggregateMean) SweepMean.Write(plan, group: null, output);
        if (chunks > alreadyDone)
            output.WriteLine($"done: {pairs.Count} pair(s) in {chunks} chunk(s) under {options.OutputDirectory} (summary: {SummaryName})");
        output.Flush();
        return new SweepSummary(pairs.Count, plan.SkippedLines, chunks, alreadyDone, chunks - alreadyDone);
    }

    /// <summary>The first line of <c>summary.csv</c>, as bytes.</summary>
    internal static byte[] SummaryHeaderBytes => Encoding.UTF8.GetBytes(SweepChunk.SummaryHeader + "\n");

    /// <summary>Writes <c>summary.csv</c> afresh (atomically) from the chunk files of <paramref name="kept"/>, in order, recording each entry's CSV length.</summary>
    internal static void RebuildCsv(string dir, string csvPath, byte[] header, List<Manifest.Entry> kept)
    {
        using var buffer = new MemoryStream();
        buffer.Write(header);
        foreach (var entry in kept)
        {
            SweepChunk chunk;
            try
            {
                chunk = SweepChunk.Load(Path.Combine(dir, entry.File));
            }
            catch (Exception e) when (e is FormatException or IOException)
            {
                throw new SweepException($"cannot rebuild {SummaryName}: chunk file '{entry.File}' is unreadable ({e.Message}); delete it and its manifest entry, or start afresh", e);
            }
            buffer.Write(Encoding.UTF8.GetBytes(string.Concat(chunk.SummaryRows().Select(r => r + "\n"))));
            entry.CsvBytes = buffer.Length;
        }
        WriteAtomically(csvPath, buffer.ToArray());
    }

    internal static IDisposable Lock(string dir)
    {
        try
        {
            // FileShare.None takes an exclusive advisory lock (flock) on Unix; the OS releases it if the process dies.
            return new FileStream(Path.Combine(dir, LockName), FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
        }
        catch (IOException e)
        {
            throw new SweepException($"another lens sweep is writing to '{dir}' ({e.Message})", e);
        }
    }

    internal static void RemoveTemporaryFiles(string dir)
    {
        foreach (var f in Directory.EnumerateFiles(dir, "*.tmp"))
        {
            // .chunk-N.safetensors.GUID.tmp, and the temporary of that temporary that SafeTensors.Save writes first (..chunk-).
            var name = Path.GetFileName(f).TrimStart('.');
            if (name.StartsWith("chunk-", StringComparison.Ordinal) || name.StartsWith(ManifestName, StringComparison.Ordinal) ||
                name.StartsWith(SummaryName, StringComparison.Ordinal) || name.StartsWith(SweepMean.FileName, StringComparison.Ordinal))
                File.Delete(f);
        }
    }

    /// <summary>Writes a whole file under a temporary name, flushed to disk, then renames it over <paramref name="path"/>.</summary>
    internal static void WriteAtomically(string path, byte[] content)
    {
        var temp = Path.Combine(Path.GetDirectoryName(path)!, $".{Path.GetFileName(path)}.{Guid.NewGuid():N}.tmp");
        using (var s = new FileStream(temp, FileMode.CreateNew, FileAccess.Write))
        {
            s.Write(content);
            s.Flush(flushToDisk: true);
        }
        File.Move(temp, path, overwrite: true);
    }

    private static string Differences(IReadOnlyDictionary<string, string> before, IReadOnlyDictionary<string, string> now)
    {
        var names = new Dictionary<string, string>
        {
            ["model"] = "MODEL_DIR", ["model_files"] = "the model's files", ["prompts_sha256"] = "the content of the --prompts file",
            ["batch_size"] = "--batch-size", ["chunk_size"] = "--chunk-size", ["exact"] = "--exact", ["dtype"] = "--dtype",
            ["prepend_bos"] = "--prepend-bos", ["sites"] = "the measured sites",
        };
        var diffs = new List<string>();
        foreach (var key in before.Keys.Union(now.Keys).Order(StringComparer.Ordinal))
        {
            before.TryGetValue(key, out var a);
            now.TryGetValue(key, out var b);
            if (a == b) continue;
            var name = names.GetValueOrDefault(key, key);
            diffs.Add(key is "prompts_sha256" or "model_files" ? $"{name} changed" : $"{name} was {a ?? "(unset)"}, now {b ?? "(unset)"}");
        }
        return diffs.Count == 0 ? "the manifest's argument hash does not match" : string.Join("; ", diffs);
    }

    internal static string ModelFingerprint(string modelDir)
    {
        var parts = new List<string>();
        // The config and tokenizer files by content (they are small; the tokenizer decides what text prompts become),
        // the weights by size (hashing gigabytes on every start would cost more than it protects).
        foreach (var name in new[] { "config.json", "tokenizer.json", "vocab.json", "merges.txt", "added_tokens.json", "tokenizer_config.json", "special_tokens_map.json" })
        {
            var path = Path.Combine(modelDir, name);
            if (File.Exists(path)) parts.Add($"{name} sha256 {Sha256File(path)}");
        }
        foreach (var f in Directory.EnumerateFiles(modelDir, "*.safetensors").Order(StringComparer.Ordinal))
            parts.Add($"{Path.GetFileName(f)} {new FileInfo(f).Length} bytes");
        return string.Join("; ", parts);
    }

    internal static string Sha256File(string path)
    {
        using var s = File.OpenRead(path);
        return Convert.ToHexStringLower(SHA256.HashData(s));
    }

    internal static string Sha256(byte[] data) => Convert.ToHexStringLower(SHA256.HashData(data));

    /// <summary>DIR/manifest.json.</summary>
    internal sealed class Manifest
    {
        private static readonly JsonSerializerOptions Json = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower, WriteIndented = true };

        public string Format { get; set; } = "";
        public SortedDictionary<string, string> Arguments { get; set; } = new(StringComparer.Ordinal);
        public string ArgumentsHash { get; set; } = "";
        public int Pairs { get; set; }
        public int Positions { get; set; }
        public int Chunks { get; set; }
        public List<Entry> Completed { get; set; } = [];

        public sealed class Entry
        {
            public int Chunk { get; set; }
            public string File { get; set; } = "";
            public int Rows { get; set; }
            public long CsvBytes { get; set; }
        }

        public static Manifest Read(string path)
        {
            try
            {
                var m = JsonSerializer.Deserialize<Manifest>(System.IO.File.ReadAllBytes(path), Json)
                        ?? throw new JsonException("the manifest is null");
                if (m.Format != ManifestFormat) throw new JsonException($"format is '{m.Format}', expected '{ManifestFormat}'");
                return m;
            }
            catch (JsonException e)
            {
                throw new SweepException($"'{path}' is not a lens sweep manifest ({e.Message})", e);
            }
        }

        public void Write(string path) => WriteAtomically(path, JsonSerializer.SerializeToUtf8Bytes(this, Json));
    }
}

/// <summary>A prepared sweep: its options, folder, valid pairs, chunking, storage dtype, patcher and arguments (with their hash).</summary>
internal sealed record SweepPlan(SweepOptions Options, string Directory, IReadOnlyList<PromptPair> Pairs, int SkippedLines, int Positions, int Chunks,
    ScalarType Storage, AttributionPatcher Patcher, SortedDictionary<string, string> Arguments, string ArgumentsHash)
{
    /// <summary>The pairs of chunk <paramref name="index"/>.</summary>
    public List<PromptPair> ChunkPairs(int index) => Pairs.Skip(index * Options.ChunkSize).Take(Options.ChunkSize).ToList();
}
