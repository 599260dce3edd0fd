using System.Text.Json.Nodes;
using SharpLens.Loading;
using SharpLens.Tensors.IO;

namespace SharpLens.Demo;

/// <summary>
/// The shape of the small GPT-NeoX (Pythia layout) the demo trains from scratch: 2 layers of 4 heads, d_model 64,
/// partial rotary position embeddings, parallel residual. Two layers are the fewest in which the classic induction
/// circuit (a previous-token head in layer 0 feeding, by K-composition, an induction head in layer 1) can form.
/// </summary>
/// <remarks>
/// Why GPT-NeoX rather than GPT-2: with learned absolute position embeddings, a GPT-2 of this size trained on this
/// task reliably learns to predict the repeat, but usually by diffuse position-dependent attention (we measured
/// layer-1 heads attending 12-13 tokens back on copies of 20, best induction score 0.005-0.07, after 2,500 steps)
/// rather than by the canonical circuit. Rotary embeddings make "the previous token" a fixed relative offset, and
/// the canonical previous-token head + induction head pair forms within a few hundred steps.
/// </remarks>
public sealed record TinyModelConfig
{
    /// <summary>Transformer blocks (<c>num_hidden_layers</c>). Induction needs at least 2.</summary>
    public int NLayers { get; init; } = 2;
    /// <summary>Heads per block (<c>num_attention_heads</c>).</summary>
    public int NHeads { get; init; } = 4;
    /// <summary>Residual width (<c>hidden_size</c>); must be divisible by <see cref="NHeads"/>.</summary>
    public int DModel { get; init; } = 64;
    /// <summary>MLP hidden width (<c>intermediate_size</c>).</summary>
    public int DMlp { get; init; } = 256;
    /// <summary>Vocabulary size. The last id is BOS/EOS; the others are the random tokens.</summary>
    public int VocabSize { get; init; } = 96;
    /// <summary>Context length (<c>max_position_embeddings</c>).</summary>
    public int NPositions { get; init; } = 128;
    /// <summary>Fraction of each head's dimensions that rotary embeddings rotate (<c>rotary_pct</c>); the rest match on content.</summary>
    public double RotaryPct { get; init; } = 0.5;
    /// <summary>Pythia's parallel residual (<c>use_parallel_residual</c>).</summary>
    public bool ParallelResidual { get; init; } = true;
    /// <summary>LayerNorm epsilon (<c>layer_norm_eps</c>).</summary>
    public double LayerNormEpsilon { get; init; } = 1e-5;
    /// <summary>Standard deviation of the normal initialisation (HF <c>initializer_range</c>).</summary>
    public double InitializerRange { get; init; } = 0.02;

    /// <summary>The BOS (= EOS) token id: the last id of the vocabulary.</summary>
    public int BosTokenId => VocabSize - 1;

    /// <summary>Throws <see cref="ArgumentException"/> when the sizes cannot make a GPT-NeoX.</summary>
    public void Validate()
    {
        if (NLayers < 1) throw new ArgumentException($"NLayers must be at least 1, got {NLayers}");
        if (NHeads < 1 || DModel < 1 || DModel % NHeads != 0)
            throw new ArgumentException($"DModel {DModel} must be a positive multiple of NHeads {NHeads}");
        if (DMlp < 1) throw new ArgumentException($"DMlp must be positive, got {DMlp}");
        if (VocabSize < 3) throw new ArgumentException($"VocabSize must be at least 3, got {VocabSize}");
        if (NPositions < 3) throw new ArgumentException($"NPositions must be at least 3, got {NPositions}");
        if (!(RotaryPct > 0 && RotaryPct <= 1)) throw new ArgumentException($"RotaryPct must lie in (0, 1], got {RotaryPct}");
        if ((int)(DModel / NHeads * RotaryPct) % 2 != 0)
            throw new ArgumentException($"rotary dimensions d_head x RotaryPct = {DModel / NHeads * RotaryPct} must be even");
        if (!(LayerNormEpsilon > 0)) throw new ArgumentException($"LayerNormEpsilon must be positive, got {LayerNormEpsilon}");
        if (!(InitializerRange > 0)) throw new ArgumentException($"InitializerRange must be positive, got {InitializerRange}");
    }

    /// <summary>The HuggingFace <c>config.json</c> of this shape (<c>GPTNeoXForCausalLM</c>, untied <c>embed_out</c>, dropout 0).</summary>
    public JsonObject ToHuggingFaceConfig()
    {
        Validate();
        return new JsonObject
        {
            ["architectures"] = new JsonArray("GPTNeoXForCausalLM"),
            ["model_type"] = "gpt_neox",
            ["num_hidden_layers"] = NLayers,
            ["num_attention_heads"] = NHeads,
            ["hidden_size"] = DModel,
            ["intermediate_size"] = DMlp,
            ["max_position_embeddings"] = NPositions,
            ["vocab_size"] = VocabSize,
            ["rotary_pct"] = RotaryPct,
            ["rotary_emb_base"] = 10000,
            ["use_parallel_residual"] = ParallelResidual,
            ["hidden_act"] = "gelu",
            ["layer_norm_eps"] = LayerNormEpsilon,
            ["initializer_range"] = InitializerRange,
            ["tie_word_embeddings"] = false,
            ["attention_dropout"] = 0.0,
            ["hidden_dropout"] = 0.0,
            ["bos_token_id"] = BosTokenId,
            ["eos_token_id"] = BosTokenId,
            ["torch_dtype"] = "float32",
        };
    }
}

/// <summary>
/// Writes the demo's models as HuggingFace checkpoints (<c>config.json</c> + <c>model.safetensors</c> with
/// <c>GPTNeoXForCausalLM</c>'s names), so they load with <see cref="TransformerBridge.Load"/> and with
/// <c>transformers.AutoModelForCausalLM.from_pretrained</c> alike. Writing the initial model as a checkpoint (rather
/// than building tensors in memory) means the demo exercises the same loading path as any real model.
/// </summary>
public static class TinyCheckpoint
{
    /// <summary>
    /// Writes a freshly initialised model as GPT-NeoX's <c>_init_weights</c> does (weights and embeddings
    /// normal(0, initializer_range), biases 0, LayerNorm weights 1), through <see cref="RandomCheckpoint"/>.
    /// The same <paramref name="seed"/> writes the same bytes.
    /// </summary>
    public static void WriteInitialModel(string directory, TinyModelConfig config, ulong seed)
    {
        ArgumentNullException.ThrowIfNull(config);
        RandomCheckpoint.Write(directory, config.ToHuggingFaceConfig(), seed, config.InitializerRange);
    }

    /// <summary>
    /// Saves a (trained) bridge of the shape <paramref name="config"/> describes as a HuggingFace checkpoint: the
    /// config and the leaf parameters under their HF names (<see cref="TransformerBridge.NamedParameters"/>).
    /// </summary>
    /// <exception cref="ArgumentException">The bridge is not a GPT-NeoX of that shape.</exception>
    public static void Save(TransformerBridge bridge, string directory, TinyModelConfig config)
    {
        ArgumentNullException.ThrowIfNull(bridge);
        ArgumentNullException.ThrowIfNull(config);
        var c = bridge.Config;
        if (c.ModelType != "gpt_neox" || c.NLayers != config.NLayers || c.NHeads != config.NHeads || c.DModel != config.DModel ||
            c.DMlp != config.DMlp || c.DVocab != config.VocabSize)
            throw new ArgumentException(
                $"the bridge ({c.ModelType}, {c.NLayers} layers x {c.NHeads} heads, d_model {c.DModel}) is not a GPT-NeoX of the configured shape");
        Directory.CreateDirectory(directory);
        File.WriteAllText(Path.Combine(directory, ModelLoader.ConfigFile),
            config.ToHuggingFaceConfig().ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
        using var scope = Torch.NewScope();
        using (Torch.NoGrad())
        {
            var tensors = bridge.NamedParameters().Select(p => new KeyValuePair<string, Tensor>(p.Name, p.Parameter.Detach())).ToList();
            // HuggingFace refuses a safetensors checkpoint whose metadata lacks format=pt.
            SafeTensors.Save(Path.Combine(directory, ModelLoader.SafetensorsFile), tensors,
                new Dictionary<string, string> { ["format"] = "pt", ["producer"] = "SharpLens lens demo" });
        }
    }
}
