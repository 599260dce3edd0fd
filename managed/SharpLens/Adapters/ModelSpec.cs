using SharpLens.Tensors;

namespace SharpLens.Adapters;

/// <summary>
/// The part of a linear layer's output features a spec reads: [<paramref name="Offset"/>, Offset + <paramref name="Length"/>)
/// of a fused weight (Phi-3's <c>qkv_proj</c> and <c>gate_up_proj</c>), read as a view so gradients land in the fused leaf.
/// </summary>
public sealed record OutputSlice(long Offset, long Length);

/// <summary>A linear layer's HF tensors: weight, optional bias, the weight's orientation, and optionally a slice of its outputs.</summary>
public sealed record LinearSpec(string Weight, string? Bias, LinearWeightLayout Layout, OutputSlice? Slice = null);

/// <summary>A norm slot's HF tensors and kind (LayerNorm has a bias; RMSNorm has none).</summary>
public sealed record NormSpec(NormKind Kind, string Weight, string? Bias);

/// <summary>Where q, k and v come from.</summary>
public abstract record QkvSpec;

/// <summary>One fused weight in a layout the native QKV op splits (part-major in-out, head-major out-in); q, k, v have equal heads.</summary>
public sealed record FusedQkvSpec(LinearSpec Linear, QkvLayout Layout) : QkvSpec;

/// <summary>Three projections (their own weights, or slices of one fused weight); k and v may have fewer heads (grouped-query attention).</summary>
public sealed record SeparateQkvSpec(LinearSpec Q, LinearSpec K, LinearSpec V) : QkvSpec
{
    /// <summary>
    /// When Q, K and V are slices of one fused weight covering its outputs in order (e.g. Phi-3's qkv_proj): that whole layer,
    /// so the forward runs one GEMM, as HuggingFace does, and takes the parts as column views of its output. Null otherwise.
    /// </summary>
    public LinearSpec? Fused { get; init; }
}

/// <summary>An attention layer: where q, k, v come from and the output projection.</summary>
public sealed record AttentionSpec(QkvSpec Qkv, LinearSpec Out);

/// <summary>An MLP: <see cref="MlpKind.Plain"/> uses In and Out; <see cref="MlpKind.Gated"/> also Gate (act(x W_gate) ∘ x W_in).</summary>
public sealed record MlpSpec(MlpKind Kind, LinearSpec In, LinearSpec? Gate, LinearSpec Out)
{
    /// <summary>
    /// When Gate and In are slices of one fused weight, gate first (e.g. Phi-3's gate_up_proj): that whole layer, run as one
    /// GEMM whose output columns are the two parts. Null otherwise.
    /// </summary>
    public LinearSpec? Fused { get; init; }
}

/// <summary>
/// One transformer block as a superset of slots: the pre-attention norm, attention, an optional post-attention norm (Gemma 2's
/// ln1_post), the pre-MLP norm, the MLP and an optional post-MLP norm (ln2_post). The kinds in the slots decide the math.
/// </summary>
public sealed record BlockSpec(NormSpec Ln1, AttentionSpec Attention, NormSpec? Ln1Post, NormSpec Ln2, MlpSpec Mlp, NormSpec? Ln2Post);

/// <summary>
/// The component mapping of a model: which HF tensors play which part. The bridge runs the forward pass from this alone;
/// only adapters know HF names.
/// </summary>
public sealed record ModelSpec(
    string Embed,
    string? PosEmbed,
    IReadOnlyList<BlockSpec> Blocks,
    NormSpec LnFinal,
    string Unembed,
    string? UnembedBias);
