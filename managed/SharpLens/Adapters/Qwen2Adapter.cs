using System.Text.Json;

namespace SharpLens.Adapters;

/// <summary>Qwen2 / Qwen2.5 (<c>Qwen2ForCausalLM</c>): Llama's layout with q/k/v biases and no BOS token.</summary>
public sealed class Qwen2Adapter : LlamaStyleAdapter
{
    /// <inheritdoc/>
    public override string ModelType => "qwen2";

    /// <inheritdoc/>
    protected override bool QkvBias(JsonElement c, string path)
    {
        // transformers 4.44.2 applies Qwen2's use_sliding_window only in its flash-attention path, so eager results (the
        // reference) ignore it; a checkpoint that asks for it is refused rather than run with a window HF would not use.
        if (OptionalBool(c, "use_sliding_window", false, path))
            throw new ModelLoadException(path, "use_sliding_window = true is not supported for qwen2");
        return true;
    }

    /// <inheritdoc/>
    protected override bool OutBias(JsonElement c, string path) => false;

    /// <inheritdoc/>
    protected override bool PrependsBos => false;

    /// <inheritdoc/>
    protected override int DefaultMaxPositions => 32768;

    /// <inheritdoc/>
    protected override IReadOnlyCollection<RopeType> RopeTypes => [];
}
