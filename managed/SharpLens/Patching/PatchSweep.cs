using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using SharpLens.Tensors.IO;
using SharpLens.Tokenization;

namespace SharpLens.Sweeps;

/// <summary>What <c>lens patch</c> patches.</summary>
public enum PatchKind
{
    /// <summary><c>hook_resid_pre</c> by layer and position.</summary>
    ResidPre,
    /// <summary><c>hook_resid_mid</c> by layer and position (models without a parallel residual).</summary>
    ResidMid,
    /// <summary><c>hook_resid_post</c> by layer and position.</summary>
    ResidPost,
    /// <summary><c>hook_attn_out</c> by layer and position.</summary>
    AttnOut,
    /// <summary><c>hook_mlp_out</c> by layer and position.</summary>
    MlpOut,
    /// <summary>Each head's output (<c>attn.hook_z</c>) by layer and head, at all positions at once.</summary>
    HeadOut,
}

/// <summary>Settings of a <see cref="PatchSweep"/>.</summary>
public sealed record PatchSweepOptions
{
    /// <summary>The model folder (recorded in the manifest with a fingerprint of its files).</summary>
    public required string ModelDirectory { get; init; }
    /// <summary>The JSONL prompts file (the format of <c>lens sweep</c>: clean, corrupted, answer, wrong).</summary>
    public required string PromptsPath { get; init; }
    /// <summary>The output folder (created if missing).</summary>
    public required string OutputDirectory { get; init; }
    /// <summary>What to patch.</summary>
    public PatchKind Kind { get; init; } = PatchKind.ResidPre;
    /// <summary>Pairs of one length patched together (the batch every patched copy repeats).</summary>
    public int BatchSize { get; init; } = 8;
    /// <summary>Pairs per chunk file, the unit of resumption.</summary>
    public int ChunkSize { get; init; } = 64;
    /// <summary>Tokens per forward pass (see <see cref="PatchingOptions.MaxTokensPerForward"/>).</summary>
    public int MaxTokensPerForward { get; init; } = new PatchingOptions().MaxTokensPerForward;
    /// <summary>Fail on a bad prompt line instead of reporting and skipping it.</summary>
    public bool FailOnBadLines { get; init; }
    /// <summary>Prepend BOS to prompts given as text; null: when the tokenizer has a BOS token.</summary>
    public bool? PrependBos { get; init; }
}

/// <summary>What a run of <see cref="PatchSweep.Run"/> did.</summary>
/// <param name="Pairs">Valid pairs in the prompts file.</param>
/// <param name="SkippedLines">Bad lines reported and skipped.</param>
/// <param name="Chunks">Chunks of the whole run.</param>
/// <param name="ChunksAlreadyDone">Chunks found complete when this run started.</param>
/// <param name="ForwardPasses">Patched forward passes this run made.</param>
/// <param name="Patches">Patches (patched runs of one pair batch) this run measured.</param>
public sealed record PatchSweepSummary(int Pairs, int SkippedLines, int Chunks, int ChunksAlreadyDone, int ForwardPasses, long Patches);

/// <summary>
/// <c>lens patch</c>: activation patching as <c>transformer_lens.patching</c> does it (clean activations patched into the
/// corrupted run), for every pair of a prompts file, metric <c>logit[answer] − logit[wrong]</c> at the last position of
/// each pair, streamed to a folder and resumable:
/// <list type="bullet">
/// <item><c>chunks/chunk-NNNNN.safetensors</c>: the results of consecutive pairs, each written under a temporary name and renamed;</item>
/// <item><c>manifest.json</c>: the arguments (and their hash) and the completed chunks, replaced atomically after each chunk;</item>
/// <item>when every chunk is done, <c>patch.safetensors</c> (<c>pair_index</c>, <c>line</c>, <c>length</c>, <c>clean_metric</c>,
/// <c>corrupted_metric</c> [n_pairs] and <c>&lt;kind&gt;</c> [n_pairs, layer, pos], or [n_pairs, layer, head] for <c>head_out</c>,
/// NaN past a pair's length) and <c>patch.csv</c> (one row per value), assembled from the chunks.</item>
/// </list>
/// A run killed at any point continues where it stopped when restarted with the same arguments; other arguments are refused.
/// Pairs of equal length share forward passes, each pair its own rows, so results do not depend on the batching.
/// </summary>
public static class PatchSweep
{
    /// <summary>The manifest's file name.</summary>
    public const string ManifestName = "manifest.json";
    /// <summary>The results file.</summary>
    public const string ResultName = "patch.safetensors";
    /// <summary>The CSV file.</summary>
    public const string CsvName = "patch.csv";
    private const string ChunkFolder = "chunks";
    private const string ManifestFormat = "lens-patch/1";
    private const string ChunkFormat = "lens-patch-chunk/1";

    /// <summary>The key of a kind in the output (<c>resid_pre</c>, ..., <c>head_out</c>).</summary>
    public static string Key(PatchKind kind) => kind switch
    {
        PatchKind.ResidPre => "resid_pre",
        PatchKind.ResidMid => "resid_mid",
        PatchKind.ResidPost => "resid_post",
        PatchKind.AttnOut => "attn_out",
        PatchKind.MlpOut => "mlp_out",
        PatchKind.HeadOut => "head_out",
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, null),
    };

    /// <summary>The kind named <paramref name="key"/> (see <see cref="Key"/>).</summary>
    public static PatchKind ParseKind(string key)
    {
        foreach (var kind in Enum.GetValues<PatchKind>())
            if (Key(kind) == key) return kind;
        throw new ArgumentException($"unknown patch kind '{key}'; one of {string.Join(", ", Enum.GetValues<PatchKind>().Select(Key))}");
    }

    /// <summary>The short activation name TransformerLens patches for a kind.</summary>
    private static string Activation(PatchKind kind) => kind == PatchKind.HeadOut ? "z" : Key(kind);

    /// <summary>Runs (or continues) the patching. Progress goes to <paramref name="output"/>, bad prompt lines to <paramref name="errors"/>.</summary>
    /// <exception cref="SweepException">Bad options, bad lines with <see cref="PatchSweepOptions.FailOnBadLines"/>, no valid pair, a kind the model
    /// does not have, an output folder that holds something else, another run writing there, or a run with different arguments.</exception>
    public static PatchSweepSummary Run(TransformerBridge model, BpeTokenizer? tokenizer, PatchSweepOptions options, TextWriter output, TextWriter errors)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(errors);
        if (options.BatchSize < 1) throw new SweepException($"--batch-size must be at least 1, got {options.BatchSize}");
        if (options.ChunkSize < 1) throw new SweepException($"--chunk-size must be at least 1, got {options.ChunkSize}");
        if (options.MaxTokensPerForward < 1) throw new SweepException($"--max-tokens must be at least 1, got {options.MaxTokensPerForward}");
        var hook = Patching.HookName(Activation(options.Kind), 0);
        if (!model.HookDict.ContainsKey(hook))
            throw new SweepException($"--kind {Key(options.Kind)} patches '{hook}', which this {model.Config.ModelType} model does not have" +
                                     (model.Config.ParallelAttnMlp ? " (its attention and MLP read the same residual stream)" : ""));
        var (prompts, promptsHash, prependBos) =
            AttributionSweep.ReadPrompts(options.PromptsPath, options.PrependBos, options.FailOnBadLines, model.Config, tokenizer, errors);
        var pairs = prompts.Pairs;

        var dtype = model.Config.DType;
        var arguments = new SortedDictionary<string, string>(StringComparer.Ordinal)
        {
            ["model"] = Path.GetFullPath(options.ModelDirectory),
            ["model_files"] = AttributionSweep.ModelFingerprint(options.ModelDirectory),
            ["prompts_sha256"] = promptsHash,
            ["kind"] = Key(options.Kind),
            ["chunk_size"] = options.ChunkSize.ToString(CultureInfo.InvariantCulture),
            ["dtype"] = dtype.ToTorchName(),
            ["prepend_bos"] = prependBos ? "true" : "false",
        };
        var argumentsHash = AttributionSweep.Sha256(Encoding.UTF8.GetBytes(JsonSerializer.Serialize(arguments)));
        var dir = Path.GetFullPath(options.OutputDirectory);
        if (File.Exists(dir)) throw new SweepException($"--out '{options.OutputDirectory}' is a file; give a folder");
        try
        {
            Directory.CreateDirectory(dir);
            using var dirLock = AttributionSweep.Lock(dir);
            return RunLocked(model, options, output, dir, pairs, prompts.Errors.Count, arguments, argumentsHash);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new SweepException($"cannot write to output folder '{options.OutputDirectory}': {e.Message}", e);
        }
    }

    private static PatchSweepSummary RunLocked(TransformerBridge model, PatchSweepOptions options, TextWriter output, string dir,
        IReadOnlyList<PromptPair> pairs, int skipped, SortedDictionary<string, string> arguments, string argumentsHash)
    {
        var manifestPath = Path.Combine(dir, ManifestName);
        var chunkDir = Path.Combine(dir, ChunkFolder);
        Manifest manifest;
        if (File.Exists(manifestPath))
        {
            manifest = Manifest.Read(manifestPath);
            if (manifest.ArgumentsHash != argumentsHash)
            {
                var diffs = manifest.Arguments.Keys.Union(arguments.Keys).Where(k => manifest.Arguments.GetValueOrDefault(k) != arguments.GetValueOrDefault(k));
                throw new SweepException($"'{options.OutputDirectory}' holds a lens patch run started with other arguments (differing: {string.Join(", ", diffs)}). " +
                                         "Continue it with the same arguments, or choose another --out folder.");
            }
        }
        else
        {
            var foreign = Directory.EnumerateFileSystemEntries(dir).Select(Path.GetFileName).Where(f => f != ".lock").ToList();
            if (foreign.Count > 0)
                throw new SweepException($"output folder '{options.OutputDirectory}' is not empty and holds no {ManifestName}; give an empty or new folder");
            manifest = new Manifest { Format = ManifestFormat, Arguments = arguments, ArgumentsHash = argumentsHash };
            manifest.Write(manifestPath);
        }
        Directory.CreateDirectory(chunkDir);
        // Leftovers of a run killed while writing a file (the files themselves are only ever renamed into place).
        foreach (var f in Directory.EnumerateFiles(dir, ".*.tmp").Concat(Directory.EnumerateFiles(chunkDir, ".*.tmp"))) File.Delete(f);

        var chunks = (pairs.Count + options.ChunkSize - 1) / options.ChunkSize;
        manifest.Completed = manifest.Completed.Where(c => c < chunks && File.Exists(ChunkPath(dir, c))).Order().ToList();
        var alreadyDone = manifest.Completed.Count;
        if (alreadyDone > 0)
            output.WriteLine(alreadyDone == chunks
                ? $"all {chunks} chunk(s) of {pairs.Count} pair(s) are already complete in {options.OutputDirectory}"
                : $"resuming: {alreadyDone} of {chunks} chunk(s) already complete");
        output.Flush();

        var positions = pairs.Max(p => p.Length);
        var clock = Stopwatch.StartNew();
        var (forwards, patches, pairsThisRun) = (0, 0L, 0);
        for (var c = 0; c < chunks; c++)
        {
            if (manifest.Completed.Contains(c)) continue;
            var chunkPairs = pairs.Skip(c * options.ChunkSize).Take(options.ChunkSize).ToList();
            var chunk = ComputeChunk(model, options, chunkPairs, positions, ref forwards, ref patches);
            chunk.Save(ChunkPath(dir, c), options.Kind);
            manifest.Completed.Add(c);
            manifest.Write(manifestPath);
            pairsThisRun += chunkPairs.Count;
            var done = manifest.Completed.Count;
            var rate = pairsThisRun / Math.Max(clock.Elapsed.TotalSeconds, 1e-9);
            output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"chunk {c + 1}/{chunks}: {Math.Min(pairs.Count, done * options.ChunkSize)}/{pairs.Count} pairs, {rate:0.0} pairs/s, {forwards} patched forward passes for {patches} patches"));
            output.Flush();
        }

        // Assemble the results from every chunk (also when a previous run was killed between its last chunk and here).
        var all = Enumerable.Range(0, chunks).Select(c => Chunk.Load(ChunkPath(dir, c))).ToList();
        Assemble(dir, all, options.Kind, arguments);
        output.WriteLine($"done: {pairs.Count} pair(s), {Key(options.Kind)} -> {Path.Combine(options.OutputDirectory, ResultName)} and {CsvName}");
        output.Flush();
        return new PatchSweepSummary(pairs.Count, skipped, chunks, alreadyDone, forwards, patches);
    }

    private static string ChunkPath(string dir, int chunk) => Path.Combine(dir, ChunkFolder, $"chunk-{chunk:D5}.safetensors");

    private static Chunk ComputeChunk(TransformerBridge model, PatchSweepOptions options, List<PromptPair> pairs, int positions, ref int forwards, ref long patches)
    {
        var config = model.Config;
        var third = options.Kind == PatchKind.HeadOut ? config.NHeads : positions;
        var chunk = new Chunk(pairs, config.NLayers, third);
        var activation = Activation(options.Kind);
        var hookNames = Enumerable.Range(0, config.NLayers).Select(l => Patching.HookName(activation, l)).ToHashSet();
        var device = config.Device;
        var forwardsHere = 0;
        var patching = new PatchingOptions { MaxTokensPerForward = options.MaxTokensPerForward, Progress = (_, _) => forwardsHere++ };
        foreach (var group in pairs.Select((p, i) => (p, i)).GroupBy(x => x.p.Length))
        {
            foreach (var batch in group.Chunk(options.BatchSize))
            {
                using var scope = Torch.NewScope();
                using var noGrad = Torch.NoGrad();
                var n = batch[0].p.Length;
                long[] Ids(Func<PromptPair, long[]> f) => batch.SelectMany(x => f(x.p)).ToArray();
                var clean = Torch.FromArray(Ids(p => p.Clean), batch.Length, n).To(device);
                var corrupted = Torch.FromArray(Ids(p => p.Corrupted), batch.Length, n).To(device);
                var metric = Patching.LogitDiff(Torch.FromArray(batch.Select(x => x.p.Answer).ToArray()), Torch.FromArray(batch.Select(x => x.p.Wrong).ToArray()));
                var (cleanLogits, cache) = model.RunWithCache(clean, hookNames.Contains);
                using (cache)
                {
                    var cleanMetric = Doubles(metric(cleanLogits));
                    var corruptedMetric = Doubles(metric(model.Forward(corrupted)));
                    var results = options.Kind switch
                    {
                        PatchKind.HeadOut => Patching.GetActPatchAttnHeadOutAllPos(model, corrupted, cache, metric, patching),
                        _ => Patching.GenericActivationPatch(model, corrupted, cache, metric, PatchSetter.LayerPos, activation, [PatchAxis.Layer, PatchAxis.Pos], patching),
                    };
                    var values = Doubles(results);  // [layer, third, batch]
                    var width = results.Size(1);
                    patches += results.Size(0) * width;
                    for (var b = 0; b < batch.Length; b++)
                    {
                        var row = batch[b].i;
                        chunk.Clean[row] = cleanMetric[b];
                        chunk.Corrupted[row] = corruptedMetric[b];
                        for (var l = 0; l < config.NLayers; l++)
                            for (var k = 0; k < width; k++)
                                chunk.Values[(row * config.NLayers + l) * third + k] = values[(l * width + k) * batch.Length + b];
                    }
                }
            }
        }
        forwards += forwardsHere;
        chunk.RoundTo(config.DType);
        return chunk;
    }

    private static double[] Doubles(Tensor t)
    {
        using var cpu = t.Detach().To(Device.CPU, ScalarType.Float64).Contiguous();
        return cpu.ToArray<double>();
    }

    /// <summary>Writes patch.safetensors and patch.csv (each atomically) from the chunks, in pair order.</summary>
    private static void Assemble(string dir, List<Chunk> chunks, PatchKind kind, SortedDictionary<string, string> arguments)
    {
        var key = Key(kind);
        var n = chunks.Sum(c => c.Count);
        var (layers, third) = (chunks[0].Layers, chunks[0].Third);
        var storage = chunks[0].Storage;
        var values = chunks.SelectMany(c => c.Values).ToArray();
        using (var scope = Torch.NewScope())
        {
            Tensor Floats(double[] data, params long[] shape) =>
                storage == ScalarType.Float64 ? Torch.FromArray(data, shape) : Torch.FromArray(data.Select(x => (float)x).ToArray(), shape);
            var tensors = new List<KeyValuePair<string, Tensor>>
            {
                new("pair_index", Torch.FromArray(chunks.SelectMany(c => c.PairIndex).ToArray())),
                new("line", Torch.FromArray(chunks.SelectMany(c => c.Line).ToArray())),
                new("length", Torch.FromArray(chunks.SelectMany(c => c.Length).ToArray())),
                new("clean_metric", Floats(chunks.SelectMany(c => c.Clean).ToArray(), n)),
                new("corrupted_metric", Floats(chunks.SelectMany(c => c.Corrupted).ToArray(), n)),
                new(key, Floats(values, n, layers, third)),
            };
            var metadata = new Dictionary<string, string>
            {
                ["producer"] = "SharpLens lens patch",
                ["format"] = ManifestFormat,
                ["kind"] = key,
                ["dims"] = kind == PatchKind.HeadOut ? "pair, layer, head" : "pair, layer, pos",
                ["hooks"] = string.Join(",", Enumerable.Range(0, layers).Select(l => Patching.HookName(Activation(kind), l))),
                ["metric"] = "logit[answer] - logit[wrong] at the last position, after patching the clean activation into the corrupted run (transformer_lens.patching)",
                ["model_dir"] = arguments["model"],
                ["dtype"] = arguments["dtype"],
            };
            var temp = Path.Combine(dir, $".{ResultName}.{Guid.NewGuid():N}.tmp");
            SafeTensors.Save(temp, tensors, metadata);
            File.Move(temp, Path.Combine(dir, ResultName), overwrite: true);
        }

        var csv = new StringBuilder();
        csv.Append("pair_index,line,clean_metric,corrupted_metric,layer,").Append(kind == PatchKind.HeadOut ? "head" : "position").Append(",patched_metric,restored\n");
        string F(double x) => storage == ScalarType.Float32 ? ((float)x).ToString("R", CultureInfo.InvariantCulture) : x.ToString("R", CultureInfo.InvariantCulture);
        foreach (var c in chunks)
            for (var i = 0; i < c.Count; i++)
            {
                var span = kind == PatchKind.HeadOut ? third : (int)c.Length[i];
                var delta = c.Clean[i] - c.Corrupted[i];
                for (var l = 0; l < layers; l++)
                    for (var k = 0; k < span; k++)
                    {
                        var v = c.Values[(i * layers + l) * third + k];
                        csv.Append(CultureInfo.InvariantCulture, $"{c.PairIndex[i]},{c.Line[i]},{F(c.Clean[i])},{F(c.Corrupted[i])},{l},{k},{F(v)},")
                            .Append(delta == 0 ? "" : F((v - c.Corrupted[i]) / delta)).Append('\n');
                    }
            }
        AttributionSweep.WriteAtomically(Path.Combine(dir, CsvName), Encoding.UTF8.GetBytes(csv.ToString()));
    }

    /// <summary>The results of consecutive pairs, as stored in one chunk file.</summary>
    private sealed class Chunk
    {
        public Chunk(IReadOnlyList<PromptPair> pairs, int layers, int third)
            : this(pairs.Select(p => (long)p.Index).ToArray(), pairs.Select(p => (long)p.Line).ToArray(), pairs.Select(p => (long)p.Length).ToArray(), layers, third)
        {
        }

        private Chunk(long[] index, long[] line, long[] length, int layers, int third)
        {
            (PairIndex, Line, Length, Layers, Third) = (index, line, length, layers, third);
            Clean = new double[index.Length];
            Corrupted = new double[index.Length];
            Values = new double[index.Length * layers * third];
            Array.Fill(Values, double.NaN);  // positions past a pair's length
        }

        public long[] PairIndex { get; }
        public long[] Line { get; }
        public long[] Length { get; }
        public int Layers { get; }
        public int Third { get; }
        public int Count => PairIndex.Length;
        public double[] Clean { get; }
        public double[] Corrupted { get; }
        public double[] Values { get; }
        public ScalarType Storage { get; private set; } = ScalarType.Float64;

        /// <summary>Rounds to the storage type, so what a resumed run reads back equals what an uninterrupted one holds.</summary>
        public void RoundTo(ScalarType dtype)
        {
            Storage = dtype == ScalarType.Float64 ? ScalarType.Float64 : ScalarType.Float32;
            if (Storage == ScalarType.Float64) return;
            foreach (var a in new[] { Clean, Corrupted, Values })
                for (var i = 0; i < a.Length; i++) a[i] = (float)a[i];
        }

        public void Save(string path, PatchKind kind)
        {
            using var scope = Torch.NewScope();
            var tensors = new List<KeyValuePair<string, Tensor>>
            {
                new("pair_index", Torch.FromArray(PairIndex)), new("line", Torch.FromArray(Line)), new("length", Torch.FromArray(Length)),
                new("clean_metric", Torch.FromArray(Clean)), new("corrupted_metric", Torch.FromArray(Corrupted)),
                new("values", Torch.FromArray(Values, Count, Layers, Third)),
            };
            var metadata = new Dictionary<string, string> { ["format"] = ChunkFormat, ["kind"] = Key(kind), ["storage"] = Storage.ToTorchName() };
            var temp = Path.Combine(Path.GetDirectoryName(path)!, $".{Path.GetFileName(path)}.{Guid.NewGuid():N}.tmp");
            SafeTensors.Save(temp, tensors, metadata);
            File.Move(temp, path, overwrite: true);
        }

        public static Chunk Load(string path)
        {
            try
            {
                using var file = SafeTensorsFile.Open(path);
                if (!file.Metadata.TryGetValue("format", out var format) || format != ChunkFormat)
                    throw new SweepException($"'{path}' is not a lens patch chunk; delete it (and its manifest entry) or start afresh");
                using var scope = Torch.NewScope();
                var shape = file.GetInfo("values").Shape;
                var chunk = new Chunk(file.Load("pair_index").ToArray<long>(), file.Load("line").ToArray<long>(), file.Load("length").ToArray<long>(),
                    (int)shape[1], (int)shape[2]);
                file.Load("clean_metric").ToArray<double>().CopyTo(chunk.Clean, 0);
                file.Load("corrupted_metric").ToArray<double>().CopyTo(chunk.Corrupted, 0);
                file.Load("values").ToArray<double>().CopyTo(chunk.Values, 0);
                chunk.Storage = file.Metadata.TryGetValue("storage", out var s) && s == "float32" ? ScalarType.Float32 : ScalarType.Float64;
                return chunk;
            }
            catch (SafeTensorsFormatException e)
            {
                throw new SweepException($"chunk file '{path}' is unreadable ({e.Message}); delete it and start the run again to recompute it", e);
            }
        }
    }

    /// <summary>DIR/manifest.json.</summary>
    private sealed class Manifest
    {
        private static readonly JsonSerializerOptions Json = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower, WriteIndented = true };

        public string Format { get; set; } = "";
        public SortedDictionary<string, string> Arguments { get; set; } = new(StringComparer.Ordinal);
        public string ArgumentsHash { get; set; } = "";
        public List<int> Completed { get; set; } = [];

        public static Manifest Read(string path)
        {
            try
            {
                var m = JsonSerializer.Deserialize<Manifest>(File.ReadAllBytes(path), Json) ?? throw new JsonException("the manifest is null");
                if (m.Format != ManifestFormat) throw new JsonException($"format is '{m.Format}', expected '{ManifestFormat}'");
                return m;
            }
            catch (JsonException e)
            {
                throw new SweepException($"'{path}' is not a lens patch manifest ({e.Message})", e);
            }
        }

        public void Write(string path) => AttributionSweep.WriteAtomically(path, JsonSerializer.SerializeToUtf8Bytes(this, Json));
    }
}
