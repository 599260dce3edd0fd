namespace SharpLens;

/// <summary>How positions enter the model.</summary>
public enum PositionalEmbedding
{
    /// <summary>A learned table added to the token embedding (GPT-2).</summary>
    Learned,
    /// <summary>Rotary embeddings applied to queries and keys (GPT-NeoX, Llama).</summary>
    Rotary,
}

/// <summary>Which normalisation a model's norm slots hold.</summary>
public enum NormKind
{
    /// <summary>LayerNorm: centre, divide by sqrt(mean(x²) + eps), times w plus b (GPT-2, GPT-NeoX).</summary>
    LayerNorm,
    /// <summary>RMSNorm: x / sqrt(mean(x²) + eps) times w (Llama, Mistral, Qwen2, Phi-3).</summary>
    RmsNorm,
    /// <summary>RMSNorm whose checkpoint stores w − 1: x / sqrt(mean(x²) + eps) times (1 + w) (Gemma, Gemma 2).</summary>
    RmsNormPlusOne,
}

/// <summary>Which MLP a block holds.</summary>
public enum MlpKind
{
    /// <summary>act(x W_in + b_in) W_out + b_out.</summary>
    Plain,
    /// <summary>(act(x W_gate) ∘ (x W_in)) W_out: the gated MLP of Llama-style models (SiLU) and Gemma (tanh-GELU).</summary>
    Gated,
}

/// <summary>The MLP nonlinearity.</summary>
public enum ActivationFunction
{
    /// <summary>Exact GELU (erf).</summary>
    Gelu,
    /// <summary>GELU with the tanh approximation (GPT-2's <c>gelu_new</c>).</summary>
    GeluNew,
    /// <summary>max(x, 0).</summary>
    Relu,
    /// <summary>x·sigmoid(x).</summary>
    Silu,
}

/// <summary>
/// The architecture-independent description of a model, in TransformerLens's vocabulary (its
/// <c>HookedTransformerConfig</c>): sizes, activation, positional scheme, residual layout, and the
/// switches that turn optional hook points on.
/// </summary>
public sealed class TransformerConfig
{
    /// <summary>The HuggingFace <c>model_type</c> the model was loaded from.</summary>
    public required string ModelType { get; init; }
    /// <summary>Number of transformer blocks.</summary>
    public required int NLayers { get; init; }
    /// <summary>Residual stream width.</summary>
    public required int DModel { get; init; }
    /// <summary>Attention (query) heads per block.</summary>
    public required int NHeads { get; init; }

    private readonly int? _dHead, _nKeyValueHeads;

    /// <summary>Width of one head: the config's <c>head_dim</c> where it gives one (Gemma: 256, not d_model / n_heads), else d_model / n_heads.</summary>
    public int DHead
    {
        get => _dHead ?? DModel / NHeads;
        init => _dHead = value;
    }

    /// <summary>Key/value heads (grouped-query attention when fewer than <see cref="NHeads"/>; equal by default).</summary>
    public int NKeyValueHeads
    {
        get => _nKeyValueHeads ?? NHeads;
        init => _nKeyValueHeads = value;
    }

    /// <summary>True when key/value heads are shared by several query heads.</summary>
    public bool IsGroupedQueryAttention => NKeyValueHeads != NHeads;
    /// <summary>MLP hidden width.</summary>
    public required int DMlp { get; init; }
    /// <summary>Vocabulary size.</summary>
    public required int DVocab { get; init; }
    /// <summary>Maximum context length.</summary>
    public required int NCtx { get; init; }
    /// <summary>MLP nonlinearity.</summary>
    public required ActivationFunction ActFn { get; init; }
    /// <summary>Normalisation epsilon.</summary>
    public required double NormEps { get; init; }
    /// <summary>What the norm slots hold (LayerNorm unless the architecture says otherwise).</summary>
    public NormKind Norm { get; init; } = NormKind.LayerNorm;
    /// <summary>True when the q, k and v projections have biases (GPT-2, GPT-NeoX, Qwen2; Llama's <c>attention_bias</c>).</summary>
    public bool QkvBias { get; init; }
    /// <summary>True when the attention output projection has a bias.</summary>
    public bool AttentionOutBias { get; init; }
    /// <summary>True when the MLP projections have biases.</summary>
    public bool MlpBias { get; init; }
    /// <summary>What the MLP slot holds (plain unless the architecture says otherwise).</summary>
    public MlpKind Mlp { get; init; } = MlpKind.Plain;
    /// <summary>True when each block also normalises the attention and MLP outputs before adding them (Gemma 2's post norms, TL's ln1_post/ln2_post).</summary>
    public bool UsePostNorms { get; init; }
    /// <summary>Multiplies the token embedding (Gemma: sqrt(d_model), rounded to the model's dtype as HuggingFace does); 1 otherwise.</summary>
    public double EmbeddingScale { get; init; } = 1;
    /// <summary>Soft-cap of the scaled attention scores (Gemma 2's <c>attn_logit_softcapping</c>); 0 for none.</summary>
    public double AttentionSoftCap { get; init; }
    /// <summary>Soft-cap of the final logits (Gemma 2's <c>final_logit_softcapping</c>); 0 for none.</summary>
    public double FinalLogitSoftCap { get; init; }
    /// <summary>Sliding attention window per layer (0: global causal attention); null for none anywhere.</summary>
    public IReadOnlyList<int>? LayerWindows { get; init; }
    /// <summary>Rotary scaling (null: plain rotary).</summary>
    public RopeScaling? RopeScaling { get; init; }
    /// <summary>Learned positions or rotary.</summary>
    public required PositionalEmbedding Positional { get; init; }
    /// <summary>Features per head that rotary embeddings rotate (0 without rotary).</summary>
    public int RotaryDim { get; init; }
    /// <summary>Rotary frequency base.</summary>
    public double RotaryBase { get; init; } = 10000;
    /// <summary>True when attention and MLP both read resid_pre and add into resid_post (GPT-NeoX's use_parallel_residual).</summary>
    public bool ParallelAttnMlp { get; init; }
    /// <summary>True when the unembedding is the transposed token embedding.</summary>
    public bool TiedEmbeddings { get; init; }
    /// <summary>Whether <c>ToTokens</c> prepends BOS by default (GPT-2 yes, Pythia no).</summary>
    public bool DefaultPrependBos { get; init; }
    /// <summary>The attention score scale, 1/sqrt(d_head) unless the architecture says otherwise.</summary>
    public double AttentionScale { get; init; } = double.NaN;
    /// <summary>The scale actually used.</summary>
    public double EffectiveAttentionScale => double.IsNaN(AttentionScale) ? 1.0 / Math.Sqrt(DHead) : AttentionScale;

    /// <summary>The sliding window of one layer (0 for global attention).</summary>
    public int WindowFor(int layer) => LayerWindows is { } w ? w[layer] : 0;

    /// <summary>The attention options of one layer: scale, soft-cap, window, and the float32 softmax of <see cref="Float32Islands"/>.</summary>
    public AttentionOptions AttentionOptionsFor(int layer) => new(EffectiveAttentionScale, AttentionSoftCap, WindowFor(layer), Float32Islands);

    /// <summary>
    /// HuggingFace's Llama-family code computes RMSNorm, the attention softmax and the rotary angles in float32 whatever the
    /// model's dtype (it casts a float64 model's activations down there). On (the default for those families), the bridge
    /// does the same, so its float64 runs reproduce HuggingFace's float64 numbers to rounding; off, everything runs in the
    /// model's dtype (true float64 arithmetic, as TransformerLens computes). Float32 and half-precision models are unaffected
    /// apart from the rotary table's recipe.
    /// </summary>
    public bool Float32Islands { get; set; }

    /// <summary>The parameters' dtype; kept in sync by <see cref="TransformerBridge.To(Device, ScalarType?)"/>.</summary>
    public ScalarType DType { get; internal set; } = ScalarType.Float32;
    /// <summary>The parameters' device; kept in sync by <see cref="TransformerBridge.To(Device, ScalarType?)"/>.</summary>
    public Device Device { get; internal set; } = Device.CPU;

    // ------------------------------------------------------------------ optional hook points (TransformerLens switches)

    /// <summary>Compute per-head outputs and fire <c>attn.hook_result</c> [batch, pos, head, d_model].</summary>
    public bool UseAttnResult { get; set; }
    /// <summary>Give q, k and v separate inputs per head and fire <c>hook_q_input</c>/<c>hook_k_input</c>/<c>hook_v_input</c>.</summary>
    public bool UseSplitQkvInput { get; set; }
    /// <summary>Give attention one input per head and fire <c>hook_attn_in</c>.</summary>
    public bool UseAttnIn { get; set; }
    /// <summary>Fire <c>hook_mlp_in</c> on the MLP's input.</summary>
    public bool UseHookMlpIn { get; set; }
    /// <summary>Fire <c>hook_tokens</c> on the input ids.</summary>
    public bool UseHookTokens { get; set; }
    /// <summary>
    /// With grouped-query attention, repeat the key/value heads before <c>hook_k</c>/<c>hook_v</c> (and the k/v inputs), so those
    /// hooks see one head per query head (TransformerLens's <c>ungroup_grouped_query_attention</c>); off, they see the key/value heads.
    /// </summary>
    public bool UngroupGroupedQueryAttention { get; set; }

    /// <summary>A copy (the hook switches included).</summary>
    public TransformerConfig Clone() => (TransformerConfig)MemberwiseClone();
}

/// <summary>The rotary scaling types of transformers 4.44.2 for the supported families.</summary>
public enum RopeType
{
    /// <summary>Positions divided by <see cref="RopeScaling.Factor"/> (inv_freq / factor).</summary>
    Linear,
    /// <summary>Dynamic NTK: beyond the trained context the base grows with the sequence length.</summary>
    Dynamic,
    /// <summary>Llama 3.1's frequency-dependent scaling (low/high frequency factors).</summary>
    Llama3,
    /// <summary>Phi-3's LongRoPE (also named "su"): per-frequency short/long factors and an attention factor on cos and sin.</summary>
    LongRope,
}

/// <summary>A config's <c>rope_scaling</c>, validated (see <see cref="SharpLens.Components.RotaryTables"/> for the math).</summary>
public sealed record RopeScaling
{
    /// <summary>The scaling type.</summary>
    public required RopeType Type { get; init; }
    /// <summary>The scaling factor (linear, dynamic, llama3).</summary>
    public double Factor { get; init; } = 1;
    /// <summary>Llama 3: the low-frequency factor.</summary>
    public double LowFreqFactor { get; init; } = 1;
    /// <summary>Llama 3: the high-frequency factor.</summary>
    public double HighFreqFactor { get; init; } = 4;
    /// <summary>The context the model was trained with before scaling (llama3, longrope; dynamic uses max_position_embeddings).</summary>
    public int OriginalMaxPositionEmbeddings { get; init; }
    /// <summary>LongRoPE: per-frequency factors up to the original context.</summary>
    public IReadOnlyList<double>? ShortFactor { get; init; }
    /// <summary>LongRoPE: per-frequency factors beyond it.</summary>
    public IReadOnlyList<double>? LongFactor { get; init; }
}
