using System.Text.Json;
using SharpLens.Conversions;
using SharpLens.Tensors;

namespace SharpLens.Adapters;

/// <summary>
/// GPT-NeoX / Pythia (<c>GPTNeoXForCausalLM</c>): partial rotary embeddings, parallel or sequential
/// residual (<c>use_parallel_residual</c>), a per-head interleaved fused <c>query_key_value</c>,
/// nn.Linear layers ([out, in]) and an untied <c>embed_out</c>.
/// </summary>
public sealed class GptNeoXAdapter : ArchitectureAdapter
{
    /// <inheritdoc/>
    public override string ModelType => "gpt_neox";

    /// <inheritdoc/>
    public override TransformerConfig ReadConfig(JsonElement c, string path)
    {
        var dModel = RequireSize(c, "hidden_size", path);
        var nHeads = RequireSize(c, "num_attention_heads", path);
        if (nHeads <= 0 || dModel % nHeads != 0)
            throw new ModelLoadException(path, $"hidden_size {dModel} is not divisible by num_attention_heads {nHeads}");
        var dHead = dModel / nHeads;
        var rotaryPct = OptionalDouble(c, "rotary_pct", 1.0, path);
        var rotaryDim = (int)(dHead * rotaryPct);
        if (rotaryDim <= 0 || rotaryDim % 2 != 0)
            throw new ModelLoadException(path, $"rotary_pct {rotaryPct} of d_head {dHead} gives rotary dimension {rotaryDim}, which must be even and positive");
        if (c.TryGetProperty("rope_scaling", out var rs) && rs.ValueKind != JsonValueKind.Null)
            throw new ModelLoadException(path, "rope_scaling is not supported");
        if (!OptionalBool(c, "attention_bias", true, path))
            throw new ModelLoadException(path, "attention_bias = false is not supported");
        return new TransformerConfig
        {
            ModelType = ModelType,
            NLayers = RequireSize(c, "num_hidden_layers", path),
            DModel = dModel,
            NHeads = nHeads,
            DMlp = RequireSize(c, "intermediate_size", path),
            DVocab = RequireSize(c, "vocab_size", path),
            NCtx = RequireSize(c, "max_position_embeddings", path),
            ActFn = ParseActivation(OptionalString(c, "hidden_act", path) ?? "gelu", "hidden_act", path),
            NormEps = OptionalDouble(c, "layer_norm_eps", 1e-5, path),
            Positional = PositionalEmbedding.Rotary,
            RotaryDim = rotaryDim,
            RotaryBase = OptionalDouble(c, "rotary_emb_base", 10000, path),
            ParallelAttnMlp = OptionalBool(c, "use_parallel_residual", true, path),
            TiedEmbeddings = OptionalBool(c, "tie_word_embeddings", false, path),
            DefaultPrependBos = false,
        };
    }

    private static string Layer(int i) => $"gpt_neox.layers.{i}";

    /// <inheritdoc/>
    public override IReadOnlyList<(string Name, long[] Shape)> ExpectedParameters(TransformerConfig cfg)
    {
        long m = cfg.DModel, mlp = cfg.DMlp;
        var list = new List<(string, long[])> { ("gpt_neox.embed_in.weight", [cfg.DVocab, m]) };
        for (var i = 0; i < cfg.NLayers; i++)
        {
            var l = Layer(i);
            list.AddRange([
                ($"{l}.input_layernorm.weight", [m]), ($"{l}.input_layernorm.bias", [m]),
                ($"{l}.attention.query_key_value.weight", [3 * m, m]), ($"{l}.attention.query_key_value.bias", [3 * m]),
                ($"{l}.attention.dense.weight", [m, m]), ($"{l}.attention.dense.bias", [m]),
                ($"{l}.post_attention_layernorm.weight", [m]), ($"{l}.post_attention_layernorm.bias", [m]),
                ($"{l}.mlp.dense_h_to_4h.weight", [mlp, m]), ($"{l}.mlp.dense_h_to_4h.bias", [mlp]),
                ($"{l}.mlp.dense_4h_to_h.weight", [m, mlp]), ($"{l}.mlp.dense_4h_to_h.bias", [m]),
            ]);
        }
        list.AddRange([("gpt_neox.final_layer_norm.weight", [m]), ("gpt_neox.final_layer_norm.bias", [m])]);
        if (!cfg.TiedEmbeddings) list.Add(("embed_out.weight", [cfg.DVocab, m]));
        return list;
    }

    /// <inheritdoc/>
    public override bool IsIgnorableTensor(string name) =>
        name.EndsWith(".attention.bias") || name.EndsWith(".attention.masked_bias") || name.EndsWith(".rotary_emb.inv_freq");

    /// <inheritdoc/>
    public override ModelSpec Describe(TransformerConfig cfg)
    {
        var blocks = Enumerable.Range(0, cfg.NLayers).Select(i =>
        {
            var l = Layer(i);
            return new BlockSpec(
                new NormSpec($"{l}.input_layernorm.weight", $"{l}.input_layernorm.bias"),
                new AttentionSpec(
                    new LinearSpec($"{l}.attention.query_key_value.weight", $"{l}.attention.query_key_value.bias", LinearWeightLayout.OutIn),
                    QkvLayout.HeadMajorOutIn,
                    new LinearSpec($"{l}.attention.dense.weight", $"{l}.attention.dense.bias", LinearWeightLayout.OutIn)),
                new NormSpec($"{l}.post_attention_layernorm.weight", $"{l}.post_attention_layernorm.bias"),
                new MlpSpec(
                    new LinearSpec($"{l}.mlp.dense_h_to_4h.weight", $"{l}.mlp.dense_h_to_4h.bias", LinearWeightLayout.OutIn),
                    new LinearSpec($"{l}.mlp.dense_4h_to_h.weight", $"{l}.mlp.dense_4h_to_h.bias", LinearWeightLayout.OutIn)));
        }).ToList();
        return new ModelSpec("gpt_neox.embed_in.weight", null, blocks,
            new NormSpec("gpt_neox.final_layer_norm.weight", "gpt_neox.final_layer_norm.bias"),
            cfg.TiedEmbeddings ? "gpt_neox.embed_in.weight" : "embed_out.weight", null);
    }

    /// <inheritdoc/>
    public override IReadOnlyList<TlWeight> TlWeights(TransformerConfig cfg)
    {
        long h = cfg.NHeads;
        var id = WeightConversion.Identity;
        var transpose = WeightConversion.Rearrange("out in -> in out");
        var list = new List<TlWeight> { new("embed.W_E", "gpt_neox.embed_in.weight", id) };
        string[] qkv = ["Q", "K", "V"];
        for (var i = 0; i < cfg.NLayers; i++)
        {
            var l = Layer(i);
            var t = $"blocks.{i}";
            list.Add(new($"{t}.ln1.w", $"{l}.input_layernorm.weight", id));
            list.Add(new($"{t}.ln1.b", $"{l}.input_layernorm.bias", id));
            for (var j = 0; j < 3; j++)
            {
                list.Add(new($"{t}.attn.W_{qkv[j]}", $"{l}.attention.query_key_value.weight", WeightConversion.Chain(
                    WeightConversion.Rearrange("(head three d_head) d_model -> three head d_model d_head", ("head", h), ("three", 3)),
                    WeightConversion.Select(0, j))));
                list.Add(new($"{t}.attn.b_{qkv[j]}", $"{l}.attention.query_key_value.bias", WeightConversion.Chain(
                    WeightConversion.Rearrange("(head three d_head) -> three head d_head", ("head", h), ("three", 3)),
                    WeightConversion.Select(0, j))));
            }
            list.Add(new($"{t}.attn.W_O", $"{l}.attention.dense.weight", WeightConversion.Rearrange("d_model (head d_head) -> head d_head d_model", ("head", h))));
            list.Add(new($"{t}.attn.b_O", $"{l}.attention.dense.bias", id));
            list.Add(new($"{t}.ln2.w", $"{l}.post_attention_layernorm.weight", id));
            list.Add(new($"{t}.ln2.b", $"{l}.post_attention_layernorm.bias", id));
            list.Add(new($"{t}.mlp.W_in", $"{l}.mlp.dense_h_to_4h.weight", transpose));
            list.Add(new($"{t}.mlp.b_in", $"{l}.mlp.dense_h_to_4h.bias", id));
            list.Add(new($"{t}.mlp.W_out", $"{l}.mlp.dense_4h_to_h.weight", transpose));
            list.Add(new($"{t}.mlp.b_out", $"{l}.mlp.dense_4h_to_h.bias", id));
        }
        list.Add(new("ln_final.w", "gpt_neox.final_layer_norm.weight", id));
        list.Add(new("ln_final.b", "gpt_neox.final_layer_norm.bias", id));
        list.Add(new("unembed.W_U", cfg.TiedEmbeddings ? "gpt_neox.embed_in.weight" : "embed_out.weight", transpose));
        list.Add(new("unembed.b_U", null, id, [cfg.DVocab]));
        return list;
    }
}
