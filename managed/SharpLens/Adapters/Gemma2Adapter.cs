using System.Text.Json;

namespace SharpLens.Adapters;

/// <summary>
/// Gemma 2 (<c>Gemma2ForCausalLM</c>): Gemma plus norms after attention and after the MLP (TransformerLens's ln1_post and
/// ln2_post), sliding-window attention on even layers, soft-capped attention scores and final logits, and the attention
/// scale query_pre_attn_scalar^-1/2. Everything else (the w − 1 RMSNorm, the tanh-GELU MLP, the sqrt(d_model) embedding
/// scale, no RoPE scaling, tied embeddings, and the defaults head_dim 256 and max_position_embeddings 8192, which
/// Gemma2Config shares with GemmaConfig) comes from <see cref="GemmaAdapter"/>.
/// </summary>
public sealed class Gemma2Adapter : GemmaAdapter
{
    /// <inheritdoc/>
    public override string ModelType => "gemma2";

    /// <inheritdoc/>
    protected override TensorNames Names { get; } = LlamaNames with
    {
        Ln1Post = "model.layers.{i}.post_attention_layernorm",
        Ln2 = "model.layers.{i}.pre_feedforward_layernorm",
        Ln2Post = "model.layers.{i}.post_feedforward_layernorm",
    };

    /// <inheritdoc/>
    protected override SlidingWindowLayers WindowLayers => SlidingWindowLayers.Even;

    /// <inheritdoc/>
    protected override bool UsePostNorms => true;

    // Gemma2Config's defaults (transformers 4.44.2) for absent fields that Gemma does not have: sliding_window 4096,
    // query_pre_attn_scalar 224, soft-caps 50 (attention) and 30 (final).

    /// <inheritdoc/>
    protected override int? DefaultSlidingWindow => 4096;

    /// <inheritdoc/>
    protected override double AttentionScale(JsonElement c, string path, int dHead) =>
        1.0 / Math.Sqrt(OptionalPositive(c, "query_pre_attn_scalar", 224, path));

    /// <inheritdoc/>
    protected override (double Attention, double Final) SoftCaps(JsonElement c, string path) =>
        (SoftCap(c, "attn_logit_softcapping", 50, path), SoftCap(c, "final_logit_softcapping", 30, path));

    /// <summary>An absent soft-cap takes the default; null (Python's None) means no capping, as in transformers.</summary>
    private static double SoftCap(JsonElement c, string field, double absent, string path) =>
        Has(c, field) ? OptionalDouble(c, field, 0, path) : absent;
}
