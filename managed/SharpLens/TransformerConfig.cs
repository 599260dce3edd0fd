namespace SharpLens;

/// <summary>How positions enter the model.</summary>
public enum PositionalEmbedding
{
    /// <summary>A learned table added to the token embedding (GPT-2).</summary>
    Learned,
    /// <summary>Rotary embeddings applied to queries and keys (GPT-NeoX, Llama).</summary>
    Rotary,
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
    /// <summary>Attention heads per block.</summary>
    public required int NHeads { get; init; }
    /// <summary>Width of one head.</summary>
    public int DHead => DModel / NHeads;
    /// <summary>MLP hidden width.</summary>
    public required int DMlp { get; init; }
    /// <summary>Vocabulary size.</summary>
    public required int DVocab { get; init; }
    /// <summary>Maximum context length.</summary>
    public required int NCtx { get; init; }
    /// <summary>MLP nonlinearity.</summary>
    public required ActivationFunction ActFn { get; init; }
    /// <summary>Layer-norm epsilon.</summary>
    public required double NormEps { get; init; }
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

    /// <summary>A copy (the hook switches included).</summary>
    public TransformerConfig Clone() => (TransformerConfig)MemberwiseClone();
}
