namespace SharpLens.Adapters;

/// <summary>Llama 1/2/3 (<c>LlamaForCausalLM</c>): the family's defaults; <c>attention_bias</c> and <c>mlp_bias</c> from the config.</summary>
public sealed class LlamaAdapter : LlamaStyleAdapter
{
    /// <inheritdoc/>
    public override string ModelType => "llama";
}
