namespace SharpLens.Adapters;

/// <summary>
/// Gemma (<c>GemmaForCausalLM</c>): RMSNorm weights stored as w − 1, a tanh-GELU gated MLP (<c>hidden_activation</c>),
/// embeddings scaled by sqrt(d_model), <c>head_dim</c> independent of d_model / n_heads, tied embeddings.
/// Not sealed: <see cref="Gemma2Adapter"/> is Gemma with what Gemma 2 adds, so the settings they share are stated once, here.
/// </summary>
public class GemmaAdapter : LlamaStyleAdapter
{
    /// <inheritdoc/>
    public override string ModelType => "gemma";

    /// <inheritdoc/>
    protected override NormKind NormKind => NormKind.RmsNormPlusOne;

    /// <inheritdoc/>
    protected override bool TiedByDefault => true;

    /// <inheritdoc/>
    protected override (string Field, string Default) ActivationField => ("hidden_activation", "gelu_pytorch_tanh");

    /// <inheritdoc/>
    protected override IReadOnlyCollection<RopeType> RopeTypes => [];

    /// <inheritdoc/>
    protected override double EmbeddingScale(int dModel) => Math.Sqrt(dModel);

    /// <inheritdoc/>
    protected override int DefaultMaxPositions => 8192;

    /// <inheritdoc/>
    protected override int? DefaultHeadDim => 256;
}
