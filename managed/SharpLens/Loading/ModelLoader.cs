using System.Text.Json;
using SharpLens.Adapters;
using SharpLens.Tensors.IO;

namespace SharpLens.Loading;

/// <summary>A loaded HF model directory: its config, its adapter and its parameters (HF names, leaf tensors).</summary>
public sealed record LoadedModel(string Directory, TransformerConfig Config, ArchitectureAdapter Adapter, IReadOnlyDictionary<string, Tensor> Parameters);

/// <summary>
/// Reads a HuggingFace model directory: <c>config.json</c>, then <c>model.safetensors</c> or the shards
/// named by <c>model.safetensors.index.json</c>. Pickle checkpoints are refused. Every fault raises a
/// <see cref="ModelLoadException"/> naming the file, the tensor and what was expected.
/// </summary>
public static class ModelLoader
{
    /// <summary>The config file name.</summary>
    public const string ConfigFile = "config.json";
    /// <summary>The single-file checkpoint name.</summary>
    public const string SafetensorsFile = "model.safetensors";
    /// <summary>The sharded checkpoint index name.</summary>
    public const string IndexFile = "model.safetensors.index.json";

    /// <summary>Reads config.json and picks the adapter.</summary>
    public static (TransformerConfig Config, ArchitectureAdapter Adapter) ReadConfig(string directory)
    {
        if (!System.IO.Directory.Exists(directory))
            throw new ModelLoadException(directory, "model directory does not exist");
        var path = Path.Combine(directory, ConfigFile);
        if (!File.Exists(path)) throw new ModelLoadException(path, "config.json is missing from the model directory");
        using (var doc = ParseJson(path))
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object) throw new ModelLoadException(path, "the config is not a JSON object");
            if (!root.TryGetProperty("model_type", out var mt) || mt.ValueKind != JsonValueKind.String)
                throw new ModelLoadException(path, "config field 'model_type' is missing or not a string");
            try
            {
                var adapter = ArchitectureAdapter.For(mt.GetString()!, path);
                return (adapter.ReadConfig(root, path), adapter);
            }
            catch (InvalidOperationException e) when (IsUnreadableString(e))
            {
                throw new ModelLoadException(path, $"a string is not valid UTF-16 text ({e.Message})", e);
            }
        }
    }

    /// <summary>
    /// The exception JsonElement.GetString throws for a string JSON can escape but .NET cannot hold (a lone surrogate such as
    /// "\ud800"), which would otherwise leave the loader naming no file. Every string read of a config passes through here.
    /// </summary>
    private static bool IsUnreadableString(InvalidOperationException e) => e.Source?.StartsWith("System.Text.Json", StringComparison.Ordinal) == true;

    /// <summary>
    /// Parses a JSON file, refusing bytes that are not UTF-8 up front: <see cref="JsonDocument"/> checks only the syntax, and
    /// a string holding invalid UTF-8 would otherwise surface later, at the first read of it, as an InvalidOperationException
    /// that names no file.
    /// </summary>
    private static JsonDocument ParseJson(string path)
    {
        var bytes = File.ReadAllBytes(path);
        if (!System.Text.Unicode.Utf8.IsValid(bytes)) throw new ModelLoadException(path, "not valid UTF-8 text");
        try
        {
            return JsonDocument.Parse(bytes);
        }
        catch (JsonException e)
        {
            throw new ModelLoadException(path, $"not valid JSON ({e.Message})", e);
        }
    }

    /// <summary>Loads config and parameters; parameters are converted to <paramref name="dtype"/> on <paramref name="device"/> and require grad.</summary>
    public static LoadedModel Load(string directory, ScalarType dtype = ScalarType.Float32, Device? device = null)
    {
        var (cfg, adapter) = ReadConfig(directory);
        var files = OpenCheckpoint(directory);
        var parameters = new Dictionary<string, Tensor>();
        try
        {
            // Every layer has tensors of its own, so a config claiming more layers than the checkpoint has tensors cannot fit;
            // refusing it here keeps a huge claimed count from building a spec per claimed layer (2^31 - 1 of them: out of memory).
            if (cfg.NLayers > files.Locations.Count)
                throw new ModelLoadException(Path.Combine(directory, ConfigFile),
                    $"the config has {cfg.NLayers} layers, but {files.Describe} holds only {files.Locations.Count} tensors (each layer has its own)");
            var expected = adapter.ExpectedParameters(cfg);
            var expectedNames = expected.Select(e => e.Name).ToHashSet();
            var tied = adapter.TiedUnembedding(cfg);
            foreach (var (name, file) in files.Locations)
                if (!expectedNames.Contains(name) && name != tied?.Copy && !adapter.IsIgnorableTensor(name))
                    throw new ModelLoadException(file.Path, $"tensor '{name}' is not part of a {cfg.ModelType} model with this config");
            foreach (var (name, shape) in expected)
            {
                if (!files.Locations.TryGetValue(name, out var file))
                    throw new ModelLoadException(files.Describe, $"tensor '{name}' is missing (expected shape {Tensor.FormatShape(shape)})");
                var info = file.GetInfo(name);
                if (!info.Shape.SequenceEqual(shape))
                    throw new ModelLoadException(file.Path,
                        $"tensor '{name}' has shape {Tensor.FormatShape(info.Shape)} but config.json implies {Tensor.FormatShape(shape)}");
                if (!info.DType.IsFloatingPoint())
                    throw new ModelLoadException(file.Path, $"tensor '{name}' has dtype {info.DTypeName}; parameters must be floating point");
                using var raw = file.Load(name);
                var leaf = raw.DType == dtype && (device ?? Device.CPU) == Device.CPU ? raw.Alias() : raw.To(device ?? Device.CPU, dtype);
                leaf.DetachFromScope().RequiresGrad = true;
                parameters[name] = leaf;
            }
            if (tied is { } t && files.Locations.ContainsKey(t.Copy)) CheckTiedCopy(files, t.Copy, t.Embedding);
        }
        catch
        {
            foreach (var t in parameters.Values) t.Dispose();
            throw;
        }
        finally
        {
            files.Dispose();  // tensors keep their mapped memory alive on their own
        }
        return new LoadedModel(directory, cfg, adapter, parameters);
    }

    /// <summary>
    /// A tied checkpoint that still holds the unembedding weight (a state dict saved as it is): accepted, and not loaded,
    /// when it equals the embedding (same shape and values; the dtypes may differ, as a conversion of one of them leaves
    /// them); refused otherwise, since the tied model would silently drop it, naming the file and the tensor.
    /// </summary>
    private static void CheckTiedCopy(CheckpointFiles files, string copy, string embedding)
    {
        var (copyFile, embeddingFile) = (files.Locations[copy], files.Locations[embedding]);
        var (c, e) = (copyFile.GetInfo(copy), embeddingFile.GetInfo(embedding));
        void Refuse(string why) => throw new ModelLoadException(copyFile.Path,
            $"tensor '{copy}' {why}, but config.json ties the unembedding to '{embedding}' (tie_word_embeddings): a tied checkpoint " +
            "may hold it only as a copy of the embedding; if it is the model's own unembedding, set tie_word_embeddings to false");
        if (!c.Shape.SequenceEqual(e.Shape))
            Refuse($"has shape {Tensor.FormatShape(c.Shape)} and '{embedding}' {Tensor.FormatShape(e.Shape)}");
        if (!c.DType.IsFloatingPoint()) Refuse($"has dtype {c.DTypeName}");
        using var scope = Torch.NewScope();
        using var a = copyFile.Load(copy);
        using var b = embeddingFile.Load(embedding);
        bool equal;
        if (a.DType == b.DType) equal = a.ValueEquals(b);
        else
        {
            // Float64 holds every value of every floating dtype exactly; compared in blocks of rows so a large vocabulary
            // is never widened whole.
            equal = true;
            var shape = a.Shape;
            var rows = shape.Length == 0 ? 1 : shape[0];
            var perRow = Math.Max(1, shape.Skip(1).Aggregate(1L, (x, y) => x * y));
            var block = Math.Max(1, (1L << 24) / perRow);
            for (var start = 0L; equal && start < rows; start += block)
            {
                using var inner = Torch.NewScope();
                var n = Math.Min(block, rows - start);
                var (x, y) = shape.Length == 0 ? (a, b) : (a.Narrow(0, start, n), b.Narrow(0, start, n));
                equal = x.To(ScalarType.Float64).ValueEquals(y.To(ScalarType.Float64));
            }
        }
        if (!equal) Refuse("differs from the embedding");
    }

    private sealed class CheckpointFiles(List<SafeTensorsFile> files, Dictionary<string, SafeTensorsFile> locations, string describe) : IDisposable
    {
        public Dictionary<string, SafeTensorsFile> Locations { get; } = locations;
        public string Describe { get; } = describe;

        public void Dispose()
        {
            foreach (var f in files) f.Dispose();
        }
    }

    private static CheckpointFiles OpenCheckpoint(string directory)
    {
        var index = Path.Combine(directory, IndexFile);
        var single = Path.Combine(directory, SafetensorsFile);
        if (File.Exists(index)) return OpenSharded(directory, index);
        if (File.Exists(single))
        {
            var f = SafeTensorsFile.Open(single);
            return new CheckpointFiles([f], f.Names.ToDictionary(n => n, _ => f), single);
        }
        var pickles = System.IO.Directory.EnumerateFiles(directory, "*.bin").Concat(System.IO.Directory.EnumerateFiles(directory, "*.pt")).ToList();
        if (pickles.Count > 0)
            throw new ModelLoadException(pickles[0],
                "pickle checkpoints are refused because loading them can run arbitrary code; convert the model to safetensors " +
                "(in Python: model.save_pretrained(dir, safe_serialization=True))");
        throw new ModelLoadException(directory, $"no checkpoint found: expected {SafetensorsFile} or {IndexFile}");
    }

    private static CheckpointFiles OpenSharded(string directory, string indexPath)
    {
        Dictionary<string, string> weightMap;
        using (var doc = ParseJson(indexPath))
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw new ModelLoadException(indexPath, $"the index is not a JSON object (found {doc.RootElement.ValueKind})");
            if (!doc.RootElement.TryGetProperty("weight_map", out var wm) || wm.ValueKind != JsonValueKind.Object)
                throw new ModelLoadException(indexPath, "the index has no 'weight_map' object");
            weightMap = new Dictionary<string, string>();
            foreach (var p in wm.EnumerateObject())
            {
                if (p.Value.ValueKind != JsonValueKind.String)
                    throw new ModelLoadException(indexPath, $"weight_map entry '{p.Name}' is not a file name");
                try
                {
                    weightMap[p.Name] = p.Value.GetString()!;
                }
                catch (InvalidOperationException e) when (IsUnreadableString(e))
                {
                    throw new ModelLoadException(indexPath, $"weight_map entry '{p.Name}' is not valid UTF-16 text ({e.Message})", e);
                }
            }
        }
        var opened = new Dictionary<string, SafeTensorsFile>();
        var locations = new Dictionary<string, SafeTensorsFile>();
        try
        {
            foreach (var (tensor, shard) in weightMap)
            {
                if (shard.Contains('/') || shard.Contains('\\') || shard.Contains(".."))
                    throw new ModelLoadException(indexPath, $"shard name '{shard}' for tensor '{tensor}' must be a plain file name");
                if (!opened.TryGetValue(shard, out var file))
                {
                    var shardPath = Path.Combine(directory, shard);
                    if (!File.Exists(shardPath))
                        throw new ModelLoadException(indexPath, $"shard '{shard}' (holding '{tensor}') does not exist");
                    file = SafeTensorsFile.Open(shardPath);
                    opened[shard] = file;
                }
                if (!file.Contains(tensor))
                    throw new ModelLoadException(file.Path, $"tensor '{tensor}' is listed in {IndexFile} but missing from this shard");
                locations[tensor] = file;
            }
            // Tensors in shards but not in the index would be silently dropped: refuse them.
            foreach (var (shard, file) in opened)
                foreach (var name in file.Names)
                    if (!locations.ContainsKey(name))
                        throw new ModelLoadException(file.Path, $"tensor '{name}' is not listed in {IndexFile}");
        }
        catch
        {
            foreach (var f in opened.Values) f.Dispose();
            throw;
        }
        return new CheckpointFiles(opened.Values.ToList(), locations, indexPath);
    }
}
