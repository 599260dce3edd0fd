using System.Text.Json;
using SharpLens.Conversions;
using SharpLens.Tensors;

namespace SharpLens.Adapters;

/// <summary>
/// GPT-2 (<c>GPT2LMHeadModel</c>): learned positions, LayerNorm, gelu_new, Conv1D layers ([in, out])
/// with the fused <c>c_attn</c> QKV, and the unembedding tied to <c>wte</c>.
/// </summary>
public sealed class Gpt2Adapter : ArchitectureAdapter
{
    /// <inheritdoc/>
    public override string ModelType => "gpt2";

    /// <inheritdoc/>
    public override TransformerConfig ReadConfig(JsonElement c, string path)
    {
        var dModel = RequireSize(c, "n_embd", path);
        var nHeads = RequireSize(c, "n_head", path);
        if (nHeads <= 0 || dModel % nHeads != 0)
            throw new ModelLoadException(path, $"n_embd {dModel} is not divisible by n_head {nHeads}");
        if (OptionalBool(c, "scale_attn_by_inverse_layer_idx", false, path) || OptionalBool(c, "reorder_and_upcast_attn", false, path))
            throw new ModelLoadException(path, "scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not supported");
        return new TransformerConfig
        {
            ModelType = ModelType,
            NLayers = RequireSize(c, "n_layer", path),
            DModel = dModel,
            NHeads = nHeads,
            DMlp = OptionalSize(c, "n_inner", path) ?? 4 * dModel,
            DVocab = RequireSize(c, "vocab_size", path),
            NCtx = RequireSize(c, "n_positions", path),
            ActFn = ParseActivation(OptionalString(c, "activation_function", path) ?? "gelu_new", "activation_function", path),
            NormEps = OptionalDouble(c, "layer_norm_epsilon", 1e-5, path),
            Positional = PositionalEmbedding.Learned,
            TiedEmbeddings = OptionalBool(c, "tie_word_embeddings", true, path),
            DefaultPrependBos = true,
            AttentionScale = OptionalBool(c, "scale_attn_weights", true, path) ? double.NaN : 1.0,
        };
    }

    private static string Block(int i) => $"transformer.h.{i}";

    /// <inheritdoc/>
    public override IReadOnlyList<(string Name, long[] Shape)> ExpectedParameters(TransformerConfig cfg)
    {
        long m = cfg.DModel, mlp = cfg.DMlp;
        var list = new List<(string, long[])> { ("transformer.wte.weight", [cfg.DVocab, m]), ("transformer.wpe.weight", [cfg.NCtx, m]) };
        for (var i = 0; i < cfg.NLayers; i++)
        {
            var b = Block(i);
            list.AddRange([
                ($"{b}.ln_1.weight", [m]), ($"{b}.ln_1.bias", [m]),
                ($"{b}.attn.c_attn.weight", [m, 3 * m]), ($"{b}.attn.c_attn.bias", [3 * m]),
                ($"{b}.attn.c_proj.weight", [m, m]), ($"{b}.attn.c_proj.bias", [m]),
                ($"{b}.ln_2.weight", [m]), ($"{b}.ln_2.bias", [m]),
                ($"{b}.mlp.c_fc.weight", [m, mlp]), ($"{b}.mlp.c_fc.bias", [mlp]),
                ($"{b}.mlp.c_proj.weight", [mlp, m]), ($"{b}.mlp.c_proj.bias", [m]),
            ]);
        }
        list.AddRange([("transformer.ln_f.weight", [m]), ("transformer.ln_f.bias", [m])]);
        if (!cfg.TiedEmbeddings) list.Add(("lm_head.weight", [cfg.DVocab, m]));
        return list;
    }

    /// <inheritdoc/>
    public override bool IsIgnorableTensor(string name) =>
        name.EndsWith(".attn.bias") || name.EndsWith(".attn.masked_bias") || name == "lm_head.weight";

    /// <inheritdoc/>
    public override ModelSpec Describe(TransformerConfig cfg)
    {
        var blocks = Enumerable.Range(0, cfg.NLayers).Select(i =>
        {
            var b = Block(i);
            return new BlockSpec(
                new NormSpec($"{b}.ln_1.weight", $"{b}.ln_1.bias"),
                new AttentionSpec(
                    new LinearSpec($"{b}.attn.c_attn.weight", $"{b}.attn.c_attn.bias", LinearWeightLayout.InOut),
                    QkvLayout.PartMajorInOut,
                    new LinearSpec($"{b}.attn.c_proj.weight", $"{b}.attn.c_proj.bias", LinearWeightLayout.InOut)),
                new NormSpec($"{b}.ln_2.weight", $"{b}.ln_2.bias"),
                new MlpSpec(
                    new LinearSpec($"{b}.mlp.c_fc.weight", $"{b}.mlp.c_fc.bias", LinearWeightLayout.InOut),
                    new LinearSpec($"{b}.mlp.c_proj.weight", $"{b}.mlp.c_proj.bias", LinearWeightLayout.InOut)));
        }).ToList();
        return new ModelSpec("transformer.wte.weight", "transformer.wpe.weight", blocks,
            new NormSpec("transformer.ln_f.weight", "transformer.ln_f.bias"),
            cfg.TiedEmbeddings ? "transformer.wte.weight" : "lm_head.weight", null);
    }

    /// <inheritdoc/>
    public override IReadOnlyList<TlWeight> TlWeights(TransformerConfig cfg)
    {
        long h = cfg.NHeads;
        var id = WeightConversion.Identity;
        var list = new List<TlWeight>
        {
            new("embed.W_E", "transformer.wte.weight", id),
            new("pos_embed.W_pos", "transformer.wpe.weight", id),
        };
        string[] qkv = ["Q", "K", "V"];
        for (var i = 0; i < cfg.NLayers; i++)
        {
            var b = Block(i);
            var t = $"blocks.{i}";
            list.Add(new($"{t}.ln1.w", $"{b}.ln_1.weight", id));
            list.Add(new($"{t}.ln1.b", $"{b}.ln_1.bias", id));
            for (var j = 0; j < 3; j++)
            {
                list.Add(new($"{t}.attn.W_{qkv[j]}", $"{b}.attn.c_attn.weight", WeightConversion.Chain(
                    WeightConversion.Split(1, j, 3), WeightConversion.Rearrange("d_model (head d_head) -> head d_model d_head", ("head", h)))));
                list.Add(new($"{t}.attn.b_{qkv[j]}", $"{b}.attn.c_attn.bias", WeightConversion.Chain(
                    WeightConversion.Split(0, j, 3), WeightConversion.Rearrange("(head d_head) -> head d_head", ("head", h)))));
            }
            list.Add(new($"{t}.attn.W_O", $"{b}.attn.c_proj.weight", WeightConversion.Rearrange("(head d_head) d_model -> head d_head d_model", ("head", h))));
            list.Add(new($"{t}.attn.b_O", $"{b}.attn.c_proj.bias", id));
            list.Add(new($"{t}.ln2.w", $"{b}.ln_2.weight", id));
            list.Add(new($"{t}.ln2.b", $"{b}.ln_2.bias", id));
            list.Add(new($"{t}.mlp.W_in", $"{b}.mlp.c_fc.weight", id));
            list.Add(new($"{t}.mlp.b_in", $"{b}.mlp.c_fc.bias", id));
            list.Add(new($"{t}.mlp.W_out", $"{b}.mlp.c_proj.weight", id));
            list.Add(new($"{t}.mlp.b_out", $"{b}.mlp.c_proj.bias", id));
        }
        list.Add(new("ln_final.w", "transformer.ln_f.weight", id));
        list.Add(new("ln_final.b", "transformer.ln_f.bias", id));
        list.Add(new("unembed.W_U", cfg.TiedEmbeddings ? "transformer.wte.weight" : "lm_head.weight", WeightConversion.Rearrange("vocab d_model -> d_model vocab")));
        list.Add(new("unembed.b_U", null, id, [cfg.DVocab]));
        return list;
    }
}
