namespace SharpLens.Testing.Fuzzing;

/// <summary>What a config field does, which decides what a random value in it must lead to.</summary>
internal enum FieldKind
{
    /// <summary>Does not change the eval forward pass or the tensors (ids, dropout, initialisation, bookkeeping).</summary>
    Inert,
    /// <summary><c>model_type</c>.</summary>
    ModelType,
    /// <summary>A positive integer that sizes tensors (widths, layers, vocabulary, learned positions, head_dim).</summary>
    ShapeSize,
    /// <summary>A positive integer count of heads: it must divide what it splits, so a huge one cannot fit the checkpoint.</summary>
    HeadCount,
    /// <summary>A positive integer that sizes no tensor (the rotary context, the sliding window): any positive value loads.</summary>
    FreeSize,
    /// <summary>A positive finite number (rotary base, query_pre_attn_scalar).</summary>
    Positive,
    /// <summary>A non-negative finite number (norm epsilon).</summary>
    NonNegative,
    /// <summary>A soft-cap: positive caps, negative is refused, 0 is SharpLens's "none".</summary>
    SoftCap,
    /// <summary>The fraction of a head that rotary embeddings rotate (0, 1], giving an even positive rotary dimension.</summary>
    Fraction,
    /// <summary>A switch.</summary>
    Bool,
    /// <summary>An activation function's name.</summary>
    Activation,
    /// <summary><c>rope_scaling</c>: null or an object.</summary>
    RopeScaling,
}

/// <summary>One config field: its default when config.json omits it (a JSON literal; "null" for Python's None) and its kind.</summary>
internal sealed record HfField(string Name, string Default, FieldKind Kind);

/// <summary>
/// The config classes of transformers 4.44.2 (the version that wrote and ran the fixtures), as ground truth for what a field
/// means when config.json leaves it out: each entry is the default of the class's <c>__init__</c> argument
/// (<c>GPT2Config</c>, <c>GPTNeoXConfig</c>, <c>LlamaConfig</c>, <c>MistralConfig</c>, <c>Qwen2Config</c>, <c>GemmaConfig</c>,
/// <c>Gemma2Config</c>, <c>Phi3Config</c> in <c>transformers/models/*/configuration_*.py</c>), or PretrainedConfig's where the class
/// has none (architectures, torch_dtype, ids: None). <c>model_type</c> has no default: without it AutoConfig cannot pick a class.
/// Every field of every fixture config must appear here (a test checks it), so no field is fuzzed without a stated meaning.
/// </summary>
internal static class HfConfigDefaults
{
    private static HfField F(string name, string @default, FieldKind kind) => new(name, @default, kind);

    private static readonly HfField[] Common =
    [
        F("architectures", "null", FieldKind.Inert), F("torch_dtype", "null", FieldKind.Inert), F("transformers_version", "null", FieldKind.Inert),
        F("initializer_range", "0.02", FieldKind.Inert), F("use_cache", "true", FieldKind.Inert),
    ];

    /// <summary>The fields of each model_type.</summary>
    public static readonly IReadOnlyDictionary<string, IReadOnlyDictionary<string, HfField>> Fields = new Dictionary<string, HfField[]>
    {
        ["gpt2"] =
        [
            F("vocab_size", "50257", FieldKind.ShapeSize), F("n_positions", "1024", FieldKind.ShapeSize), F("n_embd", "768", FieldKind.ShapeSize),
            F("n_layer", "12", FieldKind.ShapeSize), F("n_head", "12", FieldKind.HeadCount), F("n_inner", "null", FieldKind.ShapeSize),
            F("activation_function", "\"gelu_new\"", FieldKind.Activation), F("resid_pdrop", "0.1", FieldKind.Inert), F("embd_pdrop", "0.1", FieldKind.Inert),
            F("attn_pdrop", "0.1", FieldKind.Inert), F("layer_norm_epsilon", "1e-05", FieldKind.NonNegative), F("summary_type", "\"cls_index\"", FieldKind.Inert),
            F("summary_use_proj", "true", FieldKind.Inert), F("summary_activation", "null", FieldKind.Inert), F("summary_proj_to_labels", "true", FieldKind.Inert),
            F("summary_first_dropout", "0.1", FieldKind.Inert), F("scale_attn_weights", "true", FieldKind.Bool), F("bos_token_id", "50256", FieldKind.Inert),
            F("eos_token_id", "50256", FieldKind.Inert), F("scale_attn_by_inverse_layer_idx", "false", FieldKind.Bool),
            F("reorder_and_upcast_attn", "false", FieldKind.Bool), F("tie_word_embeddings", "true", FieldKind.Bool),
        ],
        ["gpt_neox"] =
        [
            F("vocab_size", "50432", FieldKind.ShapeSize), F("hidden_size", "6144", FieldKind.ShapeSize), F("num_hidden_layers", "44", FieldKind.ShapeSize),
            F("num_attention_heads", "64", FieldKind.HeadCount), F("intermediate_size", "24576", FieldKind.ShapeSize), F("hidden_act", "\"gelu\"", FieldKind.Activation),
            F("rotary_pct", "0.25", FieldKind.Fraction), F("rotary_emb_base", "10000", FieldKind.Positive), F("attention_dropout", "0.0", FieldKind.Inert),
            F("hidden_dropout", "0.0", FieldKind.Inert), F("classifier_dropout", "0.1", FieldKind.Inert), F("max_position_embeddings", "2048", FieldKind.FreeSize),
            F("layer_norm_eps", "1e-05", FieldKind.NonNegative), F("bos_token_id", "0", FieldKind.Inert), F("eos_token_id", "2", FieldKind.Inert),
            F("tie_word_embeddings", "false", FieldKind.Bool), F("use_parallel_residual", "true", FieldKind.Bool), F("rope_scaling", "null", FieldKind.RopeScaling),
            F("attention_bias", "true", FieldKind.Bool),
        ],
        ["llama"] =
        [
            F("vocab_size", "32000", FieldKind.ShapeSize), F("hidden_size", "4096", FieldKind.ShapeSize), F("intermediate_size", "11008", FieldKind.ShapeSize),
            F("num_hidden_layers", "32", FieldKind.ShapeSize), F("num_attention_heads", "32", FieldKind.HeadCount), F("num_key_value_heads", "null", FieldKind.HeadCount),
            F("hidden_act", "\"silu\"", FieldKind.Activation), F("max_position_embeddings", "2048", FieldKind.FreeSize), F("rms_norm_eps", "1e-06", FieldKind.NonNegative),
            F("pad_token_id", "null", FieldKind.Inert), F("bos_token_id", "1", FieldKind.Inert), F("eos_token_id", "2", FieldKind.Inert),
            F("pretraining_tp", "1", FieldKind.Inert), F("tie_word_embeddings", "false", FieldKind.Bool), F("rope_theta", "10000.0", FieldKind.Positive),
            F("rope_scaling", "null", FieldKind.RopeScaling), F("attention_bias", "false", FieldKind.Bool), F("attention_dropout", "0.0", FieldKind.Inert),
            F("mlp_bias", "false", FieldKind.Bool),
        ],
        ["mistral"] =
        [
            F("vocab_size", "32000", FieldKind.ShapeSize), F("hidden_size", "4096", FieldKind.ShapeSize), F("intermediate_size", "14336", FieldKind.ShapeSize),
            F("num_hidden_layers", "32", FieldKind.ShapeSize), F("num_attention_heads", "32", FieldKind.HeadCount), F("num_key_value_heads", "8", FieldKind.HeadCount),
            F("head_dim", "null", FieldKind.ShapeSize), F("hidden_act", "\"silu\"", FieldKind.Activation), F("max_position_embeddings", "131072", FieldKind.FreeSize),
            F("rms_norm_eps", "1e-06", FieldKind.NonNegative), F("pad_token_id", "null", FieldKind.Inert), F("bos_token_id", "1", FieldKind.Inert),
            F("eos_token_id", "2", FieldKind.Inert), F("tie_word_embeddings", "false", FieldKind.Bool), F("rope_theta", "10000.0", FieldKind.Positive),
            F("sliding_window", "4096", FieldKind.FreeSize), F("attention_dropout", "0.0", FieldKind.Inert),
        ],
        ["qwen2"] =
        [
            F("vocab_size", "151936", FieldKind.ShapeSize), F("hidden_size", "4096", FieldKind.ShapeSize), F("intermediate_size", "22016", FieldKind.ShapeSize),
            F("num_hidden_layers", "32", FieldKind.ShapeSize), F("num_attention_heads", "32", FieldKind.HeadCount), F("num_key_value_heads", "32", FieldKind.HeadCount),
            F("hidden_act", "\"silu\"", FieldKind.Activation), F("max_position_embeddings", "32768", FieldKind.FreeSize), F("rms_norm_eps", "1e-06", FieldKind.NonNegative),
            F("tie_word_embeddings", "false", FieldKind.Bool), F("rope_theta", "10000.0", FieldKind.Positive), F("use_sliding_window", "false", FieldKind.Bool),
            // The eager attention of 4.44.2 (the reference) ignores the window, whatever use_sliding_window says.
            F("sliding_window", "4096", FieldKind.Inert), F("max_window_layers", "28", FieldKind.Inert), F("attention_dropout", "0.0", FieldKind.Inert),
            F("bos_token_id", "null", FieldKind.Inert), F("eos_token_id", "null", FieldKind.Inert),
        ],
        ["gemma"] =
        [
            F("vocab_size", "256000", FieldKind.ShapeSize), F("hidden_size", "3072", FieldKind.ShapeSize), F("intermediate_size", "24576", FieldKind.ShapeSize),
            F("num_hidden_layers", "28", FieldKind.ShapeSize), F("num_attention_heads", "16", FieldKind.HeadCount), F("num_key_value_heads", "16", FieldKind.HeadCount),
            F("head_dim", "256", FieldKind.ShapeSize),
            // GemmaMLP reads hidden_activation (None: gelu_pytorch_tanh, with a warning); hidden_act is kept only for old configs.
            F("hidden_act", "\"gelu_pytorch_tanh\"", FieldKind.Inert), F("hidden_activation", "null", FieldKind.Activation),
            F("max_position_embeddings", "8192", FieldKind.FreeSize), F("rms_norm_eps", "1e-06", FieldKind.NonNegative), F("pad_token_id", "0", FieldKind.Inert),
            F("eos_token_id", "1", FieldKind.Inert), F("bos_token_id", "2", FieldKind.Inert), F("tie_word_embeddings", "true", FieldKind.Bool),
            F("rope_theta", "10000.0", FieldKind.Positive), F("attention_bias", "false", FieldKind.Bool), F("attention_dropout", "0.0", FieldKind.Inert),
        ],
        ["gemma2"] =
        [
            F("vocab_size", "256000", FieldKind.ShapeSize), F("hidden_size", "3072", FieldKind.ShapeSize), F("intermediate_size", "24576", FieldKind.ShapeSize),
            F("num_hidden_layers", "28", FieldKind.ShapeSize), F("num_attention_heads", "16", FieldKind.HeadCount), F("num_key_value_heads", "16", FieldKind.HeadCount),
            F("head_dim", "256", FieldKind.ShapeSize), F("hidden_activation", "\"gelu_pytorch_tanh\"", FieldKind.Activation),
            F("max_position_embeddings", "8192", FieldKind.FreeSize), F("rms_norm_eps", "1e-06", FieldKind.NonNegative), F("pad_token_id", "0", FieldKind.Inert),
            F("eos_token_id", "1", FieldKind.Inert), F("bos_token_id", "2", FieldKind.Inert), F("tie_word_embeddings", "true", FieldKind.Bool),
            F("rope_theta", "10000.0", FieldKind.Positive), F("attention_bias", "false", FieldKind.Bool), F("attention_dropout", "0.0", FieldKind.Inert),
            F("final_logit_softcapping", "30.0", FieldKind.SoftCap), F("attn_logit_softcapping", "50.0", FieldKind.SoftCap),
            F("query_pre_attn_scalar", "224", FieldKind.Positive), F("sliding_window", "4096", FieldKind.FreeSize),
            F("cache_implementation", "\"hybrid\"", FieldKind.Inert),
        ],
        ["phi3"] =
        [
            F("vocab_size", "32064", FieldKind.ShapeSize), F("hidden_size", "3072", FieldKind.ShapeSize), F("intermediate_size", "8192", FieldKind.ShapeSize),
            F("num_hidden_layers", "32", FieldKind.ShapeSize), F("num_attention_heads", "32", FieldKind.HeadCount), F("num_key_value_heads", "null", FieldKind.HeadCount),
            F("resid_pdrop", "0.0", FieldKind.Inert), F("embd_pdrop", "0.0", FieldKind.Inert), F("attention_dropout", "0.0", FieldKind.Inert),
            F("hidden_act", "\"silu\"", FieldKind.Activation), F("max_position_embeddings", "4096", FieldKind.FreeSize),
            // Read only by LongRoPE scaling, which the fixture does not use.
            F("original_max_position_embeddings", "4096", FieldKind.Inert), F("rms_norm_eps", "1e-05", FieldKind.NonNegative),
            F("tie_word_embeddings", "false", FieldKind.Bool), F("rope_theta", "10000.0", FieldKind.Positive), F("rope_scaling", "null", FieldKind.RopeScaling),
            F("bos_token_id", "1", FieldKind.Inert), F("eos_token_id", "32000", FieldKind.Inert), F("pad_token_id", "32000", FieldKind.Inert),
            F("sliding_window", "null", FieldKind.FreeSize),
        ],
    }.ToDictionary(p => p.Key, p => (IReadOnlyDictionary<string, HfField>)p.Value.Concat(Common).ToDictionary(f => f.Name));

    // Before Required, which reads it (static fields initialise in order).
    private static readonly string[] LlamaRequired = ["hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "vocab_size"];

    /// <summary>
    /// The fields SharpLens requires although the config class has a default: the sizes that shape the model, which every real
    /// config states. Without one, SharpLens refuses by name instead of guessing the architecture from the class default
    /// (LlamaConfig's 32 heads, say, can fit a checkpoint's tensors with a different head split and load a different model).
    /// </summary>
    public static readonly IReadOnlyDictionary<string, string[]> Required = new Dictionary<string, string[]>
    {
        ["gpt2"] = ["n_embd", "n_head", "n_layer", "vocab_size", "n_positions"],
        ["gpt_neox"] = ["hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "vocab_size"],
        ["llama"] = LlamaRequired, ["mistral"] = LlamaRequired, ["qwen2"] = LlamaRequired, ["gemma"] = LlamaRequired, ["gemma2"] = LlamaRequired,
        ["phi3"] = LlamaRequired,
    };

    /// <summary>The rope_scaling types SharpLens implements per model_type (any other type is refused by name; "default" is none).</summary>
    public static readonly IReadOnlyDictionary<string, string[]> RopeTypes = new Dictionary<string, string[]>
    {
        ["gpt2"] = [], ["gpt_neox"] = ["linear", "dynamic"], ["llama"] = ["linear", "dynamic", "llama3"], ["mistral"] = [], ["qwen2"] = [],
        ["gemma"] = [], ["gemma2"] = [], ["phi3"] = ["longrope", "su"],
    };

    /// <summary>The activation names SharpLens implements (HF's ACT2FN spellings); others may be refused.</summary>
    public static readonly string[] Activations = ["gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu", "silu", "swish"];
}
