using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace SharpLens.Saes;

/// <summary>The encoder of an SAE (SAELens's <c>architecture</c>).</summary>
public enum SaeArchitecture
{
    /// <summary><c>act(x W_enc + b_enc)</c> with ReLU (or tanh-ReLU, or top-k by <c>activation_fn</c>).</summary>
    Standard,
    /// <summary>JumpReLU: <c>relu(pre) · (pre &gt; threshold)</c> with a learned per-feature threshold.</summary>
    JumpRelu,
    /// <summary>Top-k: keep the k largest pre-activations (ReLU applied to them), zero the rest.</summary>
    TopK,
    /// <summary>Gated: a gate <c>x W_enc + b_gate &gt; 0</c> times a magnitude <c>relu(x (W_enc · exp(r_mag)) + b_mag)</c>.</summary>
    Gated,
}

/// <summary>How an SAE normalises its input at run time (SAELens's <c>normalize_activations</c>).</summary>
public enum SaeNormalization
{
    /// <summary>None ("none").</summary>
    None,
    /// <summary>Scale each input vector to norm sqrt(d_in), undone on the output ("constant_norm_rescale").</summary>
    ConstantNormRescale,
    /// <summary>Subtract the mean and divide by (std + 1e-5) per vector, undone on the output ("layer_norm").</summary>
    LayerNorm,
    /// <summary>
    /// A fixed dataset-wide scale ("expected_average_only_in"). SAELens folds the factor from its pretrained directory into the
    /// weights; a folder on disk carries it only as <c>norm_scaling_factor</c> in cfg.json, which is then folded the same way,
    /// and without it SAELens (and SharpLens) run the SAE unscaled.
    /// </summary>
    ExpectedAverageOnlyIn,
}

/// <summary>
/// An SAE's <c>cfg.json</c> as SAELens writes it (versions 3 to 6: <c>hook_name</c> at the top or under <c>meta</c>, the
/// older <c>hook_point</c>, <c>activation_fn</c> / <c>activation_fn_str</c> with <c>activation_fn_kwargs</c>, or <c>k</c>).
/// </summary>
public sealed record SaeConfig
{
    /// <summary>Input width (the hook point's last dimension, or n_heads · d_head for <c>hook_z</c>).</summary>
    public required int DIn { get; init; }
    /// <summary>Number of features.</summary>
    public required int DSae { get; init; }
    /// <summary>The TransformerLens hook point the SAE reads and replaces.</summary>
    public required string HookName { get; init; }
    /// <summary>The encoder.</summary>
    public SaeArchitecture Architecture { get; init; } = SaeArchitecture.Standard;
    /// <summary>The nonlinearity of a standard SAE: "relu" or "tanh-relu" (top-k has its own architecture).</summary>
    public string ActivationFunction { get; init; } = "relu";
    /// <summary>k of a top-k SAE.</summary>
    public int? K { get; init; }
    /// <summary>Subtract b_dec from the input before encoding.</summary>
    public bool ApplyBDecToInput { get; init; } = true;
    /// <summary>Run-time input normalisation.</summary>
    public SaeNormalization NormalizeActivations { get; init; } = SaeNormalization.None;
    /// <summary>The dataset-wide scale of <see cref="SaeNormalization.ExpectedAverageOnlyIn"/>, when the folder has one.</summary>
    public double? NormScalingFactor { get; init; }
    /// <summary>The dtype the weights are stored and computed in ("float32" by default).</summary>
    public string DType { get; init; } = "float32";
    /// <summary>Reshape a [..., head, d_head] input to [..., head · d_head] (SAEs on <c>hook_z</c>).</summary>
    public bool ReshapeHookZ { get; init; }

    /// <summary>Reads <c>cfg.json</c>; faults name the file and the field.</summary>
    /// <exception cref="FormatException">Missing or malformed fields, or an architecture or activation SharpLens does not know.</exception>
    public static SaeConfig Parse(string json, string path = "cfg.json")
    {
        JsonObject root;
        try
        {
            root = JsonNode.Parse(json) as JsonObject ?? throw new FormatException($"{path}: the top level is not a JSON object");
        }
        catch (JsonException e)
        {
            throw new FormatException($"{path}: not valid JSON ({e.Message})", e);
        }
        var meta = root["meta"] as JsonObject;
        JsonNode? Field(params string[] names)
        {
            foreach (var n in names)
            {
                if (root[n] is { } v) return v;
                if (meta?[n] is { } m) return m;
            }
            return null;
        }
        int Int(string name) => Field(name) is JsonValue v && v.TryGetValue<int>(out var i) && i > 0
            ? i
            : throw new FormatException($"{path}: \"{name}\" must be a positive integer");
        string? Str(params string[] names) => Field(names) is JsonValue v && v.TryGetValue<string>(out var s) ? s : null;
        bool Bool(string name, bool fallback) => Field(name) switch
        {
            null => fallback,
            JsonValue v when v.TryGetValue<bool>(out var b) => b,
            _ => throw new FormatException($"{path}: \"{name}\" must be true or false"),
        };

        var hook = Str("hook_name", "hook_point") ?? throw new FormatException($"{path}: no \"hook_name\" (nor \"hook_point\"): which hook point does the SAE read?");
        var activation = Str("activation_fn_str", "activation_fn") ?? "relu";
        var kwargs = Field("activation_fn_kwargs") as JsonObject;
        int? k = Field("k") is JsonValue kv && kv.TryGetValue<double>(out var kd) ? (int)kd
            : kwargs?["k"] is JsonValue kk && kk.TryGetValue<double>(out var kkd) ? (int)kkd : null;
        var architecture = (Str("architecture") ?? (activation == "topk" ? "topk" : "standard")) switch
        {
            "standard" => activation == "topk" ? SaeArchitecture.TopK : SaeArchitecture.Standard,
            "jumprelu" => SaeArchitecture.JumpRelu,
            "topk" => SaeArchitecture.TopK,
            "gated" => SaeArchitecture.Gated,
            var other => throw new FormatException($"{path}: architecture \"{other}\" is not one SharpLens runs (standard, jumprelu, topk, gated)"),
        };
        if (architecture == SaeArchitecture.Standard && activation is not ("relu" or "tanh-relu"))
            throw new FormatException($"{path}: activation function \"{activation}\" is not one SharpLens runs (relu, tanh-relu, topk)");
        if (architecture == SaeArchitecture.TopK && k is not > 0) throw new FormatException($"{path}: a top-k SAE needs a positive \"k\"");
        var normalization = (Str("normalize_activations") ?? "none") switch
        {
            "none" => SaeNormalization.None,
            "constant_norm_rescale" => SaeNormalization.ConstantNormRescale,
            "layer_norm" => SaeNormalization.LayerNorm,
            "expected_average_only_in" => SaeNormalization.ExpectedAverageOnlyIn,
            var other => throw new FormatException($"{path}: normalize_activations \"{other}\" is not none, constant_norm_rescale, layer_norm or expected_average_only_in"),
        };
        double? scaling = Field("norm_scaling_factor") is JsonValue sv && sv.TryGetValue<double>(out var sf) ? sf : null;
        return new SaeConfig
        {
            DIn = Int("d_in"),
            DSae = Int("d_sae"),
            HookName = hook,
            Architecture = architecture,
            ActivationFunction = architecture == SaeArchitecture.TopK ? "topk" : activation,
            K = k,
            ApplyBDecToInput = Bool("apply_b_dec_to_input", true),
            NormalizeActivations = normalization,
            NormScalingFactor = scaling,
            DType = Str("dtype") ?? "float32",
            ReshapeHookZ = Str("reshape_activations") == "hook_z" || hook.EndsWith("hook_z", StringComparison.Ordinal),
        };
    }

    /// <summary>The config as SAELens 5 writes it (the fields SharpLens reads).</summary>
    public string ToJson()
    {
        var o = new JsonObject
        {
            ["architecture"] = Architecture switch
            {
                SaeArchitecture.JumpRelu => "jumprelu", SaeArchitecture.TopK => "topk", SaeArchitecture.Gated => "gated", _ => "standard",
            },
            ["d_in"] = DIn,
            ["d_sae"] = DSae,
            ["hook_name"] = HookName,
            ["activation_fn_str"] = ActivationFunction,
            ["activation_fn_kwargs"] = K is { } k ? new JsonObject { ["k"] = k } : new JsonObject(),
            ["apply_b_dec_to_input"] = ApplyBDecToInput,
            ["normalize_activations"] = NormalizeActivations switch
            {
                SaeNormalization.ConstantNormRescale => "constant_norm_rescale", SaeNormalization.LayerNorm => "layer_norm",
                SaeNormalization.ExpectedAverageOnlyIn => "expected_average_only_in", _ => "none",
            },
            ["dtype"] = DType,
        };
        if (NormScalingFactor is { } s) o["norm_scaling_factor"] = s;
        return o.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
    }

    internal ScalarType ScalarDType => DType switch
    {
        "float32" or "torch.float32" => ScalarType.Float32,
        "float64" or "torch.float64" => ScalarType.Float64,
        "float16" or "torch.float16" => ScalarType.Float16,
        "bfloat16" or "torch.bfloat16" => ScalarType.BFloat16,
        _ => throw new FormatException(string.Create(CultureInfo.InvariantCulture, $"cfg.json: dtype \"{DType}\" is not float32, float64, float16 or bfloat16")),
    };
}
