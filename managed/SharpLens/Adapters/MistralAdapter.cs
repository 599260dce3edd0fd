namespace SharpLens.Adapters;

/// <summary>Mistral (<c>MistralForCausalLM</c>): Llama's layout with a sliding attention window on every layer.</summary>
public sealed class MistralAdapter : LlamaStyleAdapter
{
    /// <inheritdoc/>
    public override string ModelType => "mistral";

    /// <inheritdoc/>
    protected override SlidingWindowLayers WindowLayers => SlidingWindowLayers.All;

    /// <inheritdoc/>
    protected override int DefaultMaxPositions => 4096 * 32;

    /// <inheritdoc/>
    protected override int? DefaultSlidingWindow => 4096;

    /// <inheritdoc/>
    protected override IReadOnlyCollection<RopeType> RopeTypes => [];
}
