using System.Text.Json;

namespace SharpLens.Adapters;

/// <summary>
/// Gemma 2 (<c>Gemma2ForCausalLM</c>): Gemma plus norms after attention and after the MLP (TransformerLens's ln1_post and
/// ln2_post), sliding-window attention on even layers, soft-capped attention scores and final logits, and the attention
/// scale query_pre_attn_scalar^-1/2.
/// </summary>
public sealed class Gemma2Adapter : LlamaStyleAdapter
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
    protected override NormKind NormKind => NormKind.RmsNormPlusOne;

    /// <inheritdoc/>
    protected override bool TiedByDefault => true;

    /// <inheritdoc/>
    protected override (string Field, string Default) ActivationField => ("hidden_activation", "gelu_pytorch_tanh");

    /// <inheritdoc/>
    protected override SlidingWindowLayers WindowLayers => SlidingWindowLayers.Even;

    /// <inheritdoc/>
    protected override IReadOnlyCollection<RopeType> RopeTypes => [];

    /// <inheritdoc/>
    protected override double EmbeddingScale(int dModel) => Math.Sqrt(dModel);

    /// <inheritdoc/>
    protected override bool UsePostNorms => true;

    /// <inheritdoc/>
    protected override double AttentionScale(JsonElement c, string path, int dHead)
    {
        var scalar = OptionalDouble(c, "query_pre_attn_scalar", dHead, path);
        return scalar > 0 ? 1.0 / Math.Sqrt(scalar)
            : throw new ModelLoadException(path, $"config field 'query_pre_attn_scalar' must be positive, got {scalar}");
    }

    /// <inheritdoc/>
    protected override (double Attention, double Final) SoftCaps(JsonElement c, string path) =>
        (OptionalDouble(c, "attn_logit_softcapping", 0, path), OptionalDouble(c, "final_logit_softcapping", 0, path));
}
