using System.Text.Json;
using SharpLens.Tensors;

namespace SharpLens.Adapters;

/// <summary>
/// GPT-2 (<c>GPT2LMHeadModel</c>): learned positions, LayerNorm, gelu_new, Conv1D layers ([in, out]) with the fused
/// part-major <c>c_attn</c> QKV, and the unembedding tied to <c>wte</c>.
/// </summary>
public sealed class Gpt2Adapter : ArchitectureAdapter
{
    /// <inheritdoc/>
    public override string ModelType => "gpt2";

    /// <inheritdoc/>
    protected override TensorNames Names { get; } = new()
    {
        Embed = "transformer.wte",
        PosEmbed = "transformer.wpe",
        Ln1 = "transformer.h.{i}.ln_1",
        Qkv = "transformer.h.{i}.attn.c_attn",
        O = "transformer.h.{i}.attn.c_proj",
        Ln2 = "transformer.h.{i}.ln_2",
        MlpIn = "transformer.h.{i}.mlp.c_fc",
        MlpOut = "transformer.h.{i}.mlp.c_proj",
        LnFinal = "transformer.ln_f",
        Unembed = "lm_head",
    };

    /// <inheritdoc/>
    protected override LinearWeightLayout WeightLayout => LinearWeightLayout.InOut;

    /// <inheritdoc/>
    public override TransformerConfig ReadConfig(JsonElement c, string path)
    {
        var dModel = RequireSize(c, "n_embd", path);
        var nHeads = RequireSize(c, "n_head", path);
        if (dModel % nHeads != 0)
            throw new ModelLoadException(path, $"n_embd {dModel} is not divisible by n_head {nHeads}");
        if (OptionalBool(c, "scale_attn_by_inverse_layer_idx", false, path) || OptionalBool(c, "reorder_and_upcast_attn", false, path))
            throw new ModelLoadException(path, "scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not supported");
        return new TransformerConfig
        {
            ModelType = ModelType,
            NLayers = RequireSize(c, "n_layer", path),
            DModel = dModel,
            NHeads = nHeads,
            DMlp = OptionalSize(c, "n_inner", path) ?? (dModel <= int.MaxValue / 4 ? 4 * dModel
                : throw new ModelLoadException(path, $"n_embd {dModel} is too large for n_inner's default of 4 × n_embd")),
            DVocab = RequireSize(c, "vocab_size", path),
            NCtx = RequireSize(c, "n_positions", path),
            ActFn = ParseActivation(OptionalString(c, "activation_function", path) ?? "gelu_new", "activation_function", path),
            NormEps = OptionalNonNegative(c, "layer_norm_epsilon", 1e-5, path),
            Positional = PositionalEmbedding.Learned,
            QkvBias = true,
            AttentionOutBias = true,
            MlpBias = true,
            TiedEmbeddings = OptionalBool(c, "tie_word_embeddings", true, path),
            DefaultPrependBos = true,
            AttentionScale = OptionalBool(c, "scale_attn_weights", true, path) ? double.NaN : 1.0,
        };
    }

    /// <inheritdoc/>
    public override bool IsIgnorableTensor(string name) =>
        name.EndsWith(".attn.bias") || name.EndsWith(".attn.masked_bias");
}
