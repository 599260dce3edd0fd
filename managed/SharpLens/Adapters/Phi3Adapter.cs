namespace SharpLens.Adapters;

/// <summary>
/// Phi-3 (<c>Phi3ForCausalLM</c>): Llama's math with a fused part-major <c>qkv_proj</c> and a fused <c>gate_up_proj</c> (gate
/// first), read as views; LongRoPE scaling; the config's sliding window on every layer (as flash attention and later
/// transformers apply it; 4.44.2's eager path ignores it).
/// </summary>
public sealed class Phi3Adapter : LlamaStyleAdapter
{
    /// <inheritdoc/>
    public override string ModelType => "phi3";

    /// <inheritdoc/>
    protected override TensorNames Names { get; } = LlamaNames with
    {
        Q = null,
        K = null,
        V = null,
        Qkv = "model.layers.{i}.self_attn.qkv_proj",
        MlpGate = null,
        MlpIn = null,
        MlpGateUp = "model.layers.{i}.mlp.gate_up_proj",
    };

    /// <inheritdoc/>
    protected override SlidingWindowLayers WindowLayers => SlidingWindowLayers.All;

    /// <inheritdoc/>
    protected override IReadOnlyCollection<RopeType> RopeTypes => [RopeType.LongRope];

    /// <inheritdoc/>
    protected override double DefaultNormEps => 1e-5;

    /// <inheritdoc/>
    protected override int DefaultMaxPositions => 4096;
}
