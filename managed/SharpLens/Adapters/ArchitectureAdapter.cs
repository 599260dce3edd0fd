using System.Text.Json;
using SharpLens.Conversions;
using SharpLens.Tensors;

namespace SharpLens.Adapters;

/// <summary>A linear layer's HF tensors.</summary>
public sealed record LinearSpec(string Weight, string? Bias, LinearWeightLayout Layout);

/// <summary>A layer norm's HF tensors.</summary>
public sealed record NormSpec(string Weight, string? Bias);

/// <summary>An attention layer: the fused QKV projection, its layout, and the output projection.</summary>
public sealed record AttentionSpec(LinearSpec Qkv, QkvLayout QkvLayout, LinearSpec Out);

/// <summary>A two-layer MLP.</summary>
public sealed record MlpSpec(LinearSpec In, LinearSpec Out);

/// <summary>One transformer block.</summary>
public sealed record BlockSpec(NormSpec Ln1, AttentionSpec Attention, NormSpec Ln2, MlpSpec Mlp);

/// <summary>
/// The component mapping of a model: which HF tensors play which part. The bridge runs the forward pass
/// from this alone; only adapters know HF names.
/// </summary>
public sealed record ModelSpec(
    string Embed,
    string? PosEmbed,
    IReadOnlyList<BlockSpec> Blocks,
    NormSpec LnFinal,
    string Unembed,
    string? UnembedBias);

/// <summary>A TransformerLens weight declared as a conversion of one HF parameter (or zeros when it has none).</summary>
public sealed record TlWeight(string TlName, string? HfName, WeightConversion Conversion, long[]? ZerosShape = null);

/// <summary>
/// Everything SharpLens knows about one HuggingFace architecture, in one file per architecture: how to
/// read its config, which tensors the checkpoint must hold (with shapes), the component mapping and
/// the TransformerLens weight conversions.
/// </summary>
public abstract class ArchitectureAdapter
{
    /// <summary>The HF <c>model_type</c> this adapter reads.</summary>
    public abstract string ModelType { get; }

    /// <summary>Reads config.json into a <see cref="TransformerConfig"/>; missing fields raise errors naming the file.</summary>
    public abstract TransformerConfig ReadConfig(JsonElement config, string configPath);

    /// <summary>Every parameter the checkpoint must hold, HF names with shapes, in a stable order.</summary>
    public abstract IReadOnlyList<(string Name, long[] Shape)> ExpectedParameters(TransformerConfig cfg);

    /// <summary>Checkpoint tensors that are known and deliberately not parameters (buffers, tied copies).</summary>
    public virtual bool IsIgnorableTensor(string name) => false;

    /// <summary>The component mapping.</summary>
    public abstract ModelSpec Describe(TransformerConfig cfg);

    /// <summary>The TransformerLens weights and how each derives from an HF parameter.</summary>
    public abstract IReadOnlyList<TlWeight> TlWeights(TransformerConfig cfg);

    /// <summary>The adapter for a <c>model_type</c>, or an exception listing the supported ones.</summary>
    public static ArchitectureAdapter For(string modelType, string configPath)
    {
        ArchitectureAdapter[] known = [new Gpt2Adapter(), new GptNeoXAdapter()];
        return known.FirstOrDefault(a => a.ModelType == modelType)
               ?? throw new ModelLoadException(configPath,
                   $"model_type '{modelType}' is not supported; supported: {string.Join(", ", known.Select(a => a.ModelType))}");
    }

    // ------------------------------------------------------------------ config helpers shared by adapters

    /// <summary>A required integer field.</summary>
    protected static int RequireInt(JsonElement config, string field, string path) =>
        config.TryGetProperty(field, out var v) && v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out var i)
            ? i
            : throw new ModelLoadException(path, $"config field '{field}' is missing or not an integer");

    /// <summary>A required size (layers, widths, heads, vocabulary, context): an integer of at least 1.</summary>
    protected static int RequireSize(JsonElement config, string field, string path)
    {
        var value = RequireInt(config, field, path);
        return value >= 1 ? value : throw new ModelLoadException(path, $"config field '{field}' must be a positive integer, got {value}");
    }

    /// <summary>An optional size field (absent or null gives null; otherwise an integer of at least 1).</summary>
    protected static int? OptionalSize(JsonElement config, string field, string path)
    {
        if (!config.TryGetProperty(field, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt32(out var i))
            throw new ModelLoadException(path, $"config field '{field}' must be an integer, got {v.ValueKind}");
        return i >= 1 ? i : throw new ModelLoadException(path, $"config field '{field}' must be a positive integer, got {i}");
    }

    /// <summary>An optional number field.</summary>
    protected static double OptionalDouble(JsonElement config, string field, double fallback, string path)
    {
        if (!config.TryGetProperty(field, out var v) || v.ValueKind == JsonValueKind.Null) return fallback;
        return v.ValueKind == JsonValueKind.Number
            ? v.GetDouble()
            : throw new ModelLoadException(path, $"config field '{field}' must be a number, got {v.ValueKind}");
    }

    /// <summary>An optional boolean field.</summary>
    protected static bool OptionalBool(JsonElement config, string field, bool fallback, string path)
    {
        if (!config.TryGetProperty(field, out var v) || v.ValueKind == JsonValueKind.Null) return fallback;
        return v.ValueKind is JsonValueKind.True or JsonValueKind.False
            ? v.GetBoolean()
            : throw new ModelLoadException(path, $"config field '{field}' must be true or false, got {v.ValueKind}");
    }

    /// <summary>An optional string field.</summary>
    protected static string? OptionalString(JsonElement config, string field, string path)
    {
        if (!config.TryGetProperty(field, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        return v.ValueKind == JsonValueKind.String
            ? v.GetString()
            : throw new ModelLoadException(path, $"config field '{field}' must be a string, got {v.ValueKind}");
    }

    /// <summary>Maps an HF activation name.</summary>
    protected static ActivationFunction ParseActivation(string name, string field, string path) => name switch
    {
        "gelu" => ActivationFunction.Gelu,
        "gelu_new" or "gelu_pytorch_tanh" or "gelu_fast" => ActivationFunction.GeluNew,
        "relu" => ActivationFunction.Relu,
        "silu" or "swish" => ActivationFunction.Silu,
        _ => throw new ModelLoadException(path, $"config field '{field}' names activation '{name}', which is not supported"),
    };
}

/// <summary>A model directory or file that cannot be loaded; the message names the file and the fault.</summary>
public sealed class ModelLoadException(string path, string fault, Exception? inner = null)
    : Exception($"{path}: {fault}", inner)
{
    /// <summary>The file (or directory) at fault.</summary>
    public string Path { get; } = path;

    /// <summary>What is wrong with it.</summary>
    public string Fault { get; } = fault;
}
