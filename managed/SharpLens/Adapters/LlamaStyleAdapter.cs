using System.Text.Json;

namespace SharpLens.Adapters;

/// <summary>Which layers of a Llama-style model attend through a sliding window.</summary>
public enum SlidingWindowLayers
{
    /// <summary>None: every layer is global (the config's window, if any, is not used by this family).</summary>
    None,
    /// <summary>Every layer, when the config gives <c>sliding_window</c> (Mistral, Phi-3).</summary>
    All,
    /// <summary>Layers 0, 2, 4, ... (Gemma 2 alternates local and global attention).</summary>
    Even,
}

/// <summary>
/// The config reading and tensor names shared by the Llama family (Llama, Mistral, Qwen2, Gemma, Gemma 2, Phi-3): RMSNorm,
/// rotary embeddings, grouped-query attention and a gated MLP. Each architecture is one small file that states only what
/// differs (its traits below, its names where they differ).
/// </summary>
public abstract class LlamaStyleAdapter : ArchitectureAdapter
{
    /// <summary>The module names of a standard Llama checkpoint (<c>model.layers.{i}.self_attn.q_proj</c>, ...).</summary>
    protected static readonly TensorNames LlamaNames = new()
    {
        Embed = "model.embed_tokens",
        Ln1 = "model.layers.{i}.input_layernorm",
        Q = "model.layers.{i}.self_attn.q_proj",
        K = "model.layers.{i}.self_attn.k_proj",
        V = "model.layers.{i}.self_attn.v_proj",
        O = "model.layers.{i}.self_attn.o_proj",
        Ln2 = "model.layers.{i}.post_attention_layernorm",
        MlpGate = "model.layers.{i}.mlp.gate_proj",
        MlpIn = "model.layers.{i}.mlp.up_proj",
        MlpOut = "model.layers.{i}.mlp.down_proj",
        LnFinal = "model.norm",
        Unembed = "lm_head",
    };

    /// <inheritdoc/>
    protected override TensorNames Names => LlamaNames;

    /// <summary>The norm kind (RMSNorm; Gemma's stores w − 1).</summary>
    protected virtual NormKind NormKind => NormKind.RmsNorm;
    /// <summary>tie_word_embeddings when the config does not say.</summary>
    protected virtual bool TiedByDefault => false;
    /// <summary>The config field naming the MLP activation, and its default.</summary>
    protected virtual (string Field, string Default) ActivationField => ("hidden_act", "silu");
    /// <summary>Which layers use the config's <c>sliding_window</c>.</summary>
    protected virtual SlidingWindowLayers WindowLayers => SlidingWindowLayers.None;
    /// <summary>Whether q, k, v have biases, given the config (Llama: <c>attention_bias</c>; Qwen2: always).</summary>
    protected virtual bool QkvBias(JsonElement c, string path) => OptionalBool(c, "attention_bias", false, path);
    /// <summary>Whether the output projection has a bias, given the config.</summary>
    protected virtual bool OutBias(JsonElement c, string path) => OptionalBool(c, "attention_bias", false, path);
    /// <summary>The rope_scaling types this family has in transformers 4.44.2.</summary>
    protected virtual IReadOnlyCollection<RopeType> RopeTypes => [RopeType.Linear, RopeType.Dynamic, RopeType.Llama3];
    /// <summary>Whether ToTokens prepends BOS by default (TransformerLens's prepend_bos for the family).</summary>
    protected virtual bool PrependsBos => true;

    // Defaults of fields config.json may leave out: those of the family's config class in transformers 4.44.2 (here
    // LlamaConfig's), so that a config without a field means what HuggingFace makes of it.
    /// <summary><c>rms_norm_eps</c> when absent.</summary>
    protected virtual double DefaultNormEps => 1e-6;
    /// <summary><c>max_position_embeddings</c> when absent.</summary>
    protected virtual int DefaultMaxPositions => 2048;
    /// <summary><c>head_dim</c> when absent (null: hidden_size / num_attention_heads).</summary>
    protected virtual int? DefaultHeadDim => null;
    /// <summary><c>sliding_window</c> when absent (null: none; an explicit null is always none).</summary>
    protected virtual int? DefaultSlidingWindow => null;

    /// <summary>The token embedding's multiplier (Gemma: sqrt(d_model)).</summary>
    protected virtual double EmbeddingScale(int dModel) => 1;
    /// <summary>Whether blocks normalise the attention and MLP outputs too (Gemma 2).</summary>
    protected virtual bool UsePostNorms => false;
    /// <summary>The attention score scale (NaN: 1/sqrt(d_head)).</summary>
    protected virtual double AttentionScale(JsonElement c, string path, int dHead) => double.NaN;
    /// <summary>Soft-caps of attention scores and final logits (0: none).</summary>
    protected virtual (double Attention, double Final) SoftCaps(JsonElement c, string path) => (0, 0);

    /// <inheritdoc/>
    public sealed override TransformerConfig ReadConfig(JsonElement c, string path)
    {
        var dModel = RequireSize(c, "hidden_size", path);
        var nHeads = RequireSize(c, "num_attention_heads", path);
        var nKv = OptionalSize(c, "num_key_value_heads", path) ?? nHeads;
        if (nHeads % nKv != 0)
            throw new ModelLoadException(path, $"num_attention_heads {nHeads} is not a multiple of num_key_value_heads {nKv}");
        var headDim = Has(c, "head_dim") ? OptionalSize(c, "head_dim", path) : DefaultHeadDim;
        if (headDim is null && dModel % nHeads != 0)
            throw new ModelLoadException(path, $"hidden_size {dModel} is not divisible by num_attention_heads {nHeads} and there is no head_dim");
        var dHead = headDim ?? dModel / nHeads;
        var rotaryDim = RotaryDimension(c, "partial_rotary_factor", 1.0, dHead, path);
        var nLayers = RequireSize(c, "num_hidden_layers", path);
        var nCtx = OptionalSize(c, "max_position_embeddings", path) ?? DefaultMaxPositions;
        var (actField, actDefault) = ActivationField;
        var window = Has(c, "sliding_window") ? OptionalSize(c, "sliding_window", path) : DefaultSlidingWindow;
        var windows = window is not { } w || WindowLayers == SlidingWindowLayers.None ? null : new LayerWindowPattern(nLayers, w, WindowLayers);
        var (attentionCap, finalCap) = SoftCaps(c, path);
        if (attentionCap < 0 || finalCap < 0) throw new ModelLoadException(path, "soft-capping values must be positive (or null for none)");
        return new TransformerConfig
        {
            ModelType = ModelType,
            NLayers = nLayers,
            DModel = dModel,
            NHeads = nHeads,
            NKeyValueHeads = nKv,
            DHead = dHead,
            DMlp = RequireSize(c, "intermediate_size", path),
            DVocab = RequireSize(c, "vocab_size", path),
            NCtx = nCtx,
            ActFn = ParseActivation(OptionalString(c, actField, path) ?? actDefault, actField, path),
            NormEps = OptionalNonNegative(c, "rms_norm_eps", DefaultNormEps, path),
            Norm = NormKind,
            Mlp = MlpKind.Gated,
            QkvBias = QkvBias(c, path),
            AttentionOutBias = OutBias(c, path),
            MlpBias = OptionalBool(c, "mlp_bias", false, path),
            Positional = PositionalEmbedding.Rotary,
            RotaryDim = rotaryDim,
            RotaryBase = OptionalPositive(c, "rope_theta", 10000, path),
            RopeScaling = ReadRopeScaling(c, path, nCtx, rotaryDim, RopeTypes),
            LayerWindows = windows,
            TiedEmbeddings = OptionalBool(c, "tie_word_embeddings", TiedByDefault, path),
            DefaultPrependBos = PrependsBos,
            EmbeddingScale = EmbeddingScale(dModel),
            UsePostNorms = UsePostNorms,
            AttentionScale = AttentionScale(c, path, dHead),
            AttentionSoftCap = attentionCap,
            FinalLogitSoftCap = finalCap,
            Float32Islands = true,
        };
    }

    /// <summary>
    /// Each layer's sliding window, computed on demand rather than stored: config.json may claim any number of layers (the
    /// checkpoint then refuses it), and an array per claimed layer would be allocated before that check.
    /// </summary>
    private sealed class LayerWindowPattern(int layers, int window, SlidingWindowLayers which) : IReadOnlyList<int>
    {
        public int this[int layer] => (uint)layer < (uint)layers
            ? which == SlidingWindowLayers.All || layer % 2 == 0 ? window : 0
            : throw new ArgumentOutOfRangeException(nameof(layer), $"layer {layer} of {layers}");

        public int Count => layers;

        public IEnumerator<int> GetEnumerator()
        {
            for (var i = 0; i < layers; i++) yield return this[i];
        }

        System.Collections.IEnumerator System.Collections.IEnumerable.GetEnumerator() => GetEnumerator();
    }
}
