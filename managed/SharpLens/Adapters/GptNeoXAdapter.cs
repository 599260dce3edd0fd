using System.Text.Json;

namespace SharpLens.Adapters;

/// <summary>
/// GPT-NeoX / Pythia (<c>GPTNeoXForCausalLM</c>): partial rotary embeddings, parallel or sequential residual
/// (<c>use_parallel_residual</c>), a head-major fused <c>query_key_value</c>, nn.Linear layers and an untied <c>embed_out</c>.
/// </summary>
public sealed class GptNeoXAdapter : ArchitectureAdapter
{
    /// <inheritdoc/>
    public override string ModelType => "gpt_neox";

    /// <inheritdoc/>
    protected override TensorNames Names { get; } = new()
    {
        Embed = "gpt_neox.embed_in",
        Ln1 = "gpt_neox.layers.{i}.input_layernorm",
        Qkv = "gpt_neox.layers.{i}.attention.query_key_value",
        O = "gpt_neox.layers.{i}.attention.dense",
        Ln2 = "gpt_neox.layers.{i}.post_attention_layernorm",
        MlpIn = "gpt_neox.layers.{i}.mlp.dense_h_to_4h",
        MlpOut = "gpt_neox.layers.{i}.mlp.dense_4h_to_h",
        LnFinal = "gpt_neox.final_layer_norm",
        Unembed = "embed_out",
    };

    /// <inheritdoc/>
    protected internal override QkvPartOrder QkvOrder => QkvPartOrder.HeadMajor;

    /// <inheritdoc/>
    public override TransformerConfig ReadConfig(JsonElement c, string path)
    {
        var dModel = RequireSize(c, "hidden_size", path);
        var nHeads = RequireSize(c, "num_attention_heads", path);
        if (dModel % nHeads != 0)
            throw new ModelLoadException(path, $"hidden_size {dModel} is not divisible by num_attention_heads {nHeads}");
        var dHead = dModel / nHeads;
        // Absent fields take GPTNeoXConfig's defaults (transformers 4.44.2): rotary_pct 0.25, max_position_embeddings 2048.
        var rotaryDim = RotaryDimension(c, "rotary_pct", 0.25, dHead, path);
        if (!OptionalBool(c, "attention_bias", true, path))
            throw new ModelLoadException(path, "attention_bias = false is not supported");
        var nCtx = OptionalSize(c, "max_position_embeddings", path) ?? 2048;
        return new TransformerConfig
        {
            ModelType = ModelType,
            NLayers = RequireSize(c, "num_hidden_layers", path),
            DModel = dModel,
            NHeads = nHeads,
            DMlp = RequireSize(c, "intermediate_size", path),
            DVocab = RequireSize(c, "vocab_size", path),
            NCtx = nCtx,
            ActFn = ParseActivation(OptionalString(c, "hidden_act", path) ?? "gelu", "hidden_act", path),
            NormEps = OptionalNonNegative(c, "layer_norm_eps", 1e-5, path),
            Positional = PositionalEmbedding.Rotary,
            RotaryDim = rotaryDim,
            RotaryBase = OptionalPositive(c, "rotary_emb_base", 10000, path),
            RopeScaling = ReadRopeScaling(c, path, nCtx, dHead, allowed: [RopeType.Linear, RopeType.Dynamic]),
            QkvBias = true,
            AttentionOutBias = true,
            MlpBias = true,
            ParallelAttnMlp = OptionalBool(c, "use_parallel_residual", true, path),
            TiedEmbeddings = OptionalBool(c, "tie_word_embeddings", false, path),
            DefaultPrependBos = false,
        };
    }

    /// <inheritdoc/>
    public override bool IsIgnorableTensor(string name) =>
        name.EndsWith(".attention.bias") || name.EndsWith(".attention.masked_bias") || base.IsIgnorableTensor(name);
}
