using System.Text.Json;
using System.Text.Json.Nodes;
using SharpLens.Adapters;
using SharpLens.Tensors.IO;

namespace SharpLens.Loading;

/// <summary>
/// Writes a HuggingFace-format model directory with random weights for any supported architecture: the
/// adapter declares the parameters and their shapes, so this knows no architecture's names. Initialisation
/// follows HuggingFace: weights normal(0, 0.02), biases 0, LayerNorm weights 1.
/// </summary>
public static class RandomCheckpoint
{
    /// <summary>Writes <c>config.json</c> (from <paramref name="config"/>) and a random <c>model.safetensors</c> into <paramref name="directory"/>.</summary>
    public static void Write(string directory, JsonObject config, ulong seed, double initializerRange = 0.02)
    {
        Directory.CreateDirectory(directory);
        var configPath = Path.Combine(directory, ModelLoader.ConfigFile);
        File.WriteAllText(configPath, config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        var (cfg, adapter) = ModelLoader.ReadConfig(directory);
        var spec = adapter.Describe(cfg);
        var normWeights = spec.Blocks.SelectMany(b => new[] { b.Ln1.Weight, b.Ln2.Weight }).Append(spec.LnFinal.Weight).ToHashSet();
        using var generator = new Generator(seed);
        using var scope = Torch.NewScope();
        var tensors = new List<KeyValuePair<string, Tensor>>();
        foreach (var (name, shape) in adapter.ExpectedParameters(cfg))
        {
            var t = normWeights.Contains(name) ? Torch.Ones(shape)
                : shape.Length == 1 ? Torch.Zeros(shape)
                : Torch.Randn(shape, generator) * initializerRange;
            tensors.Add(new(name, t));
        }
        SafeTensors.Save(Path.Combine(directory, ModelLoader.SafetensorsFile), tensors, new Dictionary<string, string> { ["format"] = "pt" });
    }

    /// <summary>GPT-2 small's shape: 12 layers, d_model 768, 12 heads, vocabulary 50257, 1024 positions.</summary>
    public static JsonObject Gpt2Small() => new()
    {
        ["model_type"] = "gpt2", ["architectures"] = new JsonArray("GPT2LMHeadModel"),
        ["n_layer"] = 12, ["n_head"] = 12, ["n_embd"] = 768, ["n_positions"] = 1024, ["vocab_size"] = 50257,
        ["activation_function"] = "gelu_new", ["layer_norm_epsilon"] = 1e-5, ["tie_word_embeddings"] = true,
        ["bos_token_id"] = 50256, ["eos_token_id"] = 50256,
    };

    /// <summary>
    /// A Llama-shaped model for benchmarks: 12 layers, d_model 768, 12 query heads over 4 key/value heads, gated SiLU MLP of
    /// 2048, vocabulary 32000, untied (125 M parameters).
    /// </summary>
    public static JsonObject Llama160m() => new()
    {
        ["model_type"] = "llama", ["architectures"] = new JsonArray("LlamaForCausalLM"),
        ["num_hidden_layers"] = 12, ["num_attention_heads"] = 12, ["num_key_value_heads"] = 4, ["hidden_size"] = 768,
        ["intermediate_size"] = 2048, ["max_position_embeddings"] = 2048, ["vocab_size"] = 32000, ["rms_norm_eps"] = 1e-5,
        ["rope_theta"] = 10000.0, ["hidden_act"] = "silu", ["tie_word_embeddings"] = false, ["bos_token_id"] = 1, ["eos_token_id"] = 2,
    };

    /// <summary>Pythia-160m's shape: 12 layers, hidden 768, 12 heads, vocabulary 50304, partial rotary 0.25, parallel residual.</summary>
    public static JsonObject Pythia160m() => new()
    {
        ["model_type"] = "gpt_neox", ["architectures"] = new JsonArray("GPTNeoXForCausalLM"),
        ["num_hidden_layers"] = 12, ["num_attention_heads"] = 12, ["hidden_size"] = 768, ["intermediate_size"] = 3072,
        ["max_position_embeddings"] = 2048, ["vocab_size"] = 50304, ["rotary_pct"] = 0.25, ["rotary_emb_base"] = 10000,
        ["use_parallel_residual"] = true, ["hidden_act"] = "gelu", ["layer_norm_eps"] = 1e-5, ["tie_word_embeddings"] = false,
        ["bos_token_id"] = 0, ["eos_token_id"] = 0,
    };
}
