using SharpLens.Tensors.IO;

namespace SharpLens.Saes;

/// <summary>
/// A sparse autoencoder in SAELens's on-disk format (a folder with <c>cfg.json</c> and <c>sae_weights.safetensors</c> holding
/// <c>W_enc</c> [d_in, d_sae], <c>b_enc</c> [d_sae], <c>W_dec</c> [d_sae, d_in], <c>b_dec</c> [d_in], and <c>threshold</c> [d_sae]
/// for JumpReLU or <c>b_gate</c>, <c>r_mag</c>, <c>b_mag</c> for gated SAEs), with SAELens's forward pass and hook points:
/// <c>hook_sae_input</c>, <c>hook_sae_acts_pre</c>, <c>hook_sae_acts_post</c> (the feature activations), <c>hook_sae_recons</c>,
/// <c>hook_sae_error</c>, <c>hook_sae_output</c>, named after the model hook point it reads
/// (<c>blocks.0.hook_resid_pre.hook_sae_acts_post</c>), as in SAELens's <c>HookedSAETransformer</c>.
/// <para>
/// The forward pass, in the SAE's dtype: reshape <c>hook_z</c> inputs to [..., head·d_head]; normalise (per
/// <see cref="SaeConfig.NormalizeActivations"/>); subtract <c>b_dec</c> when <see cref="SaeConfig.ApplyBDecToInput"/>;
/// <c>pre = x W_enc + b_enc</c>; the activation; <c>recons = acts W_dec + b_dec</c>; undo the normalisation and the reshape. With
/// the error term, <c>error = x − recons</c> is recomputed without hooks and without gradient (SAELens's choice, so that an
/// intervention on the features shows in the output and gradients reach the features through the decoder) and added to the output.
/// </para>
/// </summary>
public sealed class Sae : IDisposable
{
    /// <summary>The config file's name.</summary>
    public const string ConfigFile = "cfg.json";
    /// <summary>The weights file's name.</summary>
    public const string WeightsFile = "sae_weights.safetensors";

    private static readonly string[] HookSuffixes =
        ["hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_recons", "hook_sae_error", "hook_sae_output"];

    private readonly Dictionary<string, Tensor> _weights;
    private readonly Dictionary<string, HookPoint> _hooks;
    private readonly HookPoint _input, _actsPre, _actsPost, _recons, _error, _output;

    private Sae(SaeConfig config, Dictionary<string, Tensor> weights)
    {
        Config = config;
        _weights = weights;
        _hooks = HookSuffixes.ToDictionary(s => $"{config.HookName}.{s}", s => new HookPoint($"{config.HookName}.{s}"));
        HookPoint H(string suffix) => _hooks[$"{config.HookName}.{suffix}"];
        (_input, _actsPre, _actsPost, _recons, _error, _output) =
            (H("hook_sae_input"), H("hook_sae_acts_pre"), H("hook_sae_acts_post"), H("hook_sae_recons"), H("hook_sae_error"), H("hook_sae_output"));
    }

    /// <summary>The configuration.</summary>
    public SaeConfig Config { get; }

    /// <summary>The dtype the SAE computes in.</summary>
    public ScalarType DType => _weights["W_enc"].DType;

    /// <summary>Encoder weights [d_in, d_sae].</summary>
    public Tensor WEnc => W("W_enc");
    /// <summary>Decoder weights [d_sae, d_in]: row f is feature f's direction.</summary>
    public Tensor WDec => W("W_dec");
    /// <summary>Decoder bias [d_in].</summary>
    public Tensor BDec => W("b_dec");

    private Tensor W(string name)
    {
        ObjectDisposedException.ThrowIf(_weights.Count == 0, this);
        return _weights[name];
    }

    /// <summary>The SAE's hook points by full name.</summary>
    public IReadOnlyDictionary<string, HookPoint> HookDict => _hooks;

    /// <summary>The full name of a hook point given by its suffix (<c>hook_sae_acts_post</c>) or full name.</summary>
    public string HookName(string name) => _hooks.ContainsKey(name) ? name
        : _hooks.ContainsKey($"{Config.HookName}.{name}") ? $"{Config.HookName}.{name}"
        : throw new KeyNotFoundException($"the SAE has no hook point '{name}'; it has {string.Join(", ", HookSuffixes)} under '{Config.HookName}.'");

    /// <summary>Adds a forward hook to one of the SAE's hook points (suffix or full name).</summary>
    public HookHandle AddHook(string name, ForwardHook hook)
    {
        ArgumentNullException.ThrowIfNull(hook);
        var hp = _hooks[HookName(name)];
        var r = hp.Add(hook, permanent: false);
        return new HookHandle([(hp, () => hp.Remove(r))]);
    }

    /// <summary>Adds a built-in action (cache, replace, ablate, cache the gradient) to one of the SAE's hook points.</summary>
    public HookHandle AddHook(string name, HookAction action)
    {
        ArgumentNullException.ThrowIfNull(action);
        var hp = _hooks[HookName(name)];
        if (action is HookAction.CacheGradientAction gradient)
        {
            var b = hp.AddBackward(null, permanent: false, gradient.Cache);
            return new HookHandle([(hp, () => hp.Remove(b))]);
        }
        var r = hp.Add(null, permanent: false, action);
        return new HookHandle([(hp, () => hp.Remove(r))]);
    }

    /// <summary>Adds a backward hook to one of the SAE's hook points.</summary>
    public HookHandle AddBackwardHook(string name, BackwardHook hook)
    {
        ArgumentNullException.ThrowIfNull(hook);
        var hp = _hooks[HookName(name)];
        var r = hp.AddBackward(hook, permanent: false);
        return new HookHandle([(hp, () => hp.Remove(r))]);
    }

    // ------------------------------------------------------------------ loading and saving

    /// <summary>
    /// Loads an SAE folder in SAELens's format, in <paramref name="dtype"/> (default: cfg.json's dtype). With
    /// <c>expected_average_only_in</c> and a <c>norm_scaling_factor</c>, the factor is folded into the weights as SAELens does.
    /// The weights go to <paramref name="device"/> (default the CPU): the device of the model it will be spliced into.
    /// </summary>
    /// <exception cref="FormatException">A missing or malformed file, a missing weight, or a weight of the wrong shape (named).</exception>
    public static Sae Load(string directory, ScalarType? dtype = null, Device? device = null)
    {
        var cfgPath = Path.Combine(directory, ConfigFile);
        var weightsPath = Path.Combine(directory, WeightsFile);
        if (!File.Exists(cfgPath)) throw new FormatException($"'{directory}' holds no {ConfigFile}: not an SAELens SAE folder");
        if (!File.Exists(weightsPath)) throw new FormatException($"'{directory}' holds no {WeightsFile}: not an SAELens SAE folder");
        var config = SaeConfig.Parse(File.ReadAllText(cfgPath), cfgPath);
        Dictionary<string, Tensor> loaded;
        try
        {
            loaded = SafeTensors.Load(weightsPath);
        }
        catch (SafeTensorsFormatException e)
        {
            throw new FormatException($"{weightsPath}: {e.Message}", e);
        }
        try
        {
            return FromWeights(config, loaded, dtype ?? config.ScalarDType, device ?? Device.CPU, weightsPath);
        }
        finally
        {
            foreach (var t in loaded.Values) t.Dispose();
        }
    }

    /// <summary>An SAE from weights by SAELens name (copied, in <paramref name="dtype"/>, default the config's dtype, onto <paramref name="device"/>, default the CPU).</summary>
    public static Sae FromWeights(SaeConfig config, IReadOnlyDictionary<string, Tensor> weights, ScalarType? dtype = null, Device? device = null) =>
        FromWeights(config, weights, dtype ?? config.ScalarDType, device ?? Device.CPU, "the weights");

    private static Sae FromWeights(SaeConfig config, IReadOnlyDictionary<string, Tensor> weights, ScalarType dtype, Device device, string source)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(weights);
        long i = config.DIn, s = config.DSae;
        var expected = new Dictionary<string, long[]> { ["W_enc"] = [i, s], ["W_dec"] = [s, i], ["b_dec"] = [i] };
        switch (config.Architecture)
        {
            case SaeArchitecture.Gated:
                expected["b_gate"] = [s];
                expected["r_mag"] = [s];
                expected["b_mag"] = [s];
                break;
            case SaeArchitecture.JumpRelu:
                expected["b_enc"] = [s];
                expected["threshold"] = [s];
                break;
            default:
                expected["b_enc"] = [s];
                break;
        }
        var result = new Dictionary<string, Tensor>();
        try
        {
            foreach (var (name, shape) in expected)
            {
                if (!weights.TryGetValue(name, out var w))
                    throw new FormatException($"{source}: a {config.Architecture} SAE needs '{name}' {Tensor.FormatShape(shape)}; present: {string.Join(", ", weights.Keys)}");
                if (!w.Shape.SequenceEqual(shape))
                    throw new FormatException($"{source}: '{name}' has shape {Tensor.FormatShape(w.Shape)}, expected {Tensor.FormatShape(shape)} for d_in {i}, d_sae {s}");
                using var scope = Torch.NewScope();
                result[name] = w.To(device, dtype, copy: true).Detach().DetachFromScope();
            }
            if (config.NormalizeActivations == SaeNormalization.ExpectedAverageOnlyIn && config.NormScalingFactor is { } factor)
            {
                // SAELens's fold_activation_norm_scaling_factor: the encoder sees x·factor, the decoder's output is divided back.
                foreach (var (name, scale) in new[] { ("W_enc", factor), ("W_dec", 1 / factor), ("b_dec", 1 / factor) })
                {
                    var old = result[name];
                    result[name] = (old * scale).DetachFromScope();
                    old.Dispose();
                }
                config = config with { NormalizeActivations = SaeNormalization.None, NormScalingFactor = null };
            }
            return new Sae(config, result);
        }
        catch
        {
            foreach (var t in result.Values) t.Dispose();
            throw;
        }
    }

    /// <summary>Writes the SAE as SAELens does: <c>cfg.json</c> and <c>sae_weights.safetensors</c> in <paramref name="directory"/>.</summary>
    public void Save(string directory)
    {
        Directory.CreateDirectory(directory);
        File.WriteAllText(Path.Combine(directory, ConfigFile), Config.ToJson());
        SafeTensors.Save(Path.Combine(directory, WeightsFile), _weights.Select(p => new KeyValuePair<string, Tensor>(p.Key, p.Value)));
    }

    // ------------------------------------------------------------------ forward

    /// <summary>What the normalisation removed from an input, to put back on the output.</summary>
    private sealed record Normalisation(Tensor? Scale, Tensor? Mean);

    /// <summary>The feature activations of <paramref name="input"/> [..., d_in] (or [..., head, d_head] for hook_z): [..., d_sae].</summary>
    public Tensor Encode(Tensor input)
    {
        using var scope = Torch.NewScope();
        return EncodeCore(input, fire: true, out _).MoveToOuterScope();
    }

    /// <summary>
    /// The reconstruction of feature activations [..., d_sae], in the input's layout. <paramref name="input"/> is the encoded
    /// input, needed (only) to undo a run-time normalisation.
    /// </summary>
    public Tensor Decode(Tensor featureActs, Tensor? input = null)
    {
        ArgumentNullException.ThrowIfNull(featureActs);
        using var scope = Torch.NewScope();
        Normalisation? norm = null;
        if (Config.NormalizeActivations != SaeNormalization.None)
        {
            if (input is null) throw new ArgumentException($"this SAE normalises its input ({Config.NormalizeActivations}); pass the encoded input to undo it", nameof(input));
            norm = Normalise(Flatten(input.To(DType)), out _);
        }
        return DecodeCore(featureActs, norm, input?.Shape, fire: true).MoveToOuterScope();
    }

    /// <summary>
    /// The SAE's output for <paramref name="input"/>: the reconstruction, plus the error term with <paramref name="useErrorTerm"/>
    /// (so the output equals the input unless a hook changed the features). In the input's dtype.
    /// </summary>
    public Tensor Forward(Tensor input, bool useErrorTerm = false)
    {
        ArgumentNullException.ThrowIfNull(input);
        using var scope = Torch.NewScope();
        var acts = EncodeCore(input, fire: true, out var norm);
        var output = DecodeCore(acts, norm, input.Shape, fire: true);
        if (useErrorTerm)
        {
            Tensor error;
            using (Torch.NoGrad())
            {
                var clean = DecodeCore(EncodeCore(input, fire: false, out var n2), n2, input.Shape, fire: false);
                error = input.To(DType) - clean;
            }
            output = output + _error.Fire(error);
        }
        return _output.Fire(output).To(input.DType).MoveToOuterScope();
    }

    private Tensor Flatten(Tensor x)
    {
        if (!Config.ReshapeHookZ) return CheckWidth(x, x.Size(-1));
        if (x.Dim < 2) throw new ArgumentException($"a hook_z SAE reads [..., head, d_head], got {Tensor.FormatShape(x.Shape)}");
        return CheckWidth(x.Flatten(x.Dim - 2), x.Size(-1) * x.Size(-2));
    }

    private Tensor CheckWidth(Tensor x, long width) => width == Config.DIn
        ? x
        : throw new ArgumentException($"the SAE on '{Config.HookName}' reads d_in = {Config.DIn} features, got an activation of shape {Tensor.FormatShape(x.Shape)}");

    private Normalisation? Normalise(Tensor x, out Tensor normalised)
    {
        switch (Config.NormalizeActivations)
        {
            case SaeNormalization.ConstantNormRescale:
                var coeff = Math.Sqrt(Config.DIn) / x.Norm(2, [-1], keepDim: true);
                normalised = x * coeff;
                return new Normalisation(coeff, null);
            case SaeNormalization.LayerNorm:
                var mu = x.Mean(-1, keepDim: true);
                var centred = x - mu;
                var std = centred.Std([-1], keepDim: true);  // unbiased, as torch.std
                normalised = centred / (std + 1e-5);
                return new Normalisation(std, mu);
            default:
                normalised = x;
                return null;
        }
    }

    private Tensor EncodeCore(Tensor input, bool fire, out Normalisation? norm)
    {
        ArgumentNullException.ThrowIfNull(input);
        var x = Flatten(input.To(DType));
        if (fire) x = _input.Fire(x);
        norm = Normalise(x, out x);
        var sIn = Config.ApplyBDecToInput ? x - _weights["b_dec"] : x;
        Tensor Fire(HookPoint hp, Tensor t) => fire ? hp.Fire(t) : t;
        Tensor acts;
        switch (Config.Architecture)
        {
            case SaeArchitecture.Gated:
                var active = (sIn.Matmul(_weights["W_enc"]) + _weights["b_gate"]).Gt(0).To(DType);
                var magnitudePre = Fire(_actsPre, sIn.Matmul(_weights["W_enc"] * _weights["r_mag"].Exp()) + _weights["b_mag"]);
                acts = active * magnitudePre.Relu();
                break;
            default:
                var pre = Fire(_actsPre, sIn.Matmul(_weights["W_enc"]) + _weights["b_enc"]);
                acts = Config.Architecture switch
                {
                    SaeArchitecture.JumpRelu => pre.Relu() * pre.Gt(_weights["threshold"]).To(DType),
                    SaeArchitecture.TopK => TopK(pre, Config.K!.Value),
                    _ => Config.ActivationFunction == "tanh-relu" ? pre.Relu().Tanh() : pre.Relu(),
                };
                break;
        }
        return Fire(_actsPost, acts);
    }

    /// <summary>The k largest pre-activations along the features, ReLU'd, others zero (SAELens's TopK).</summary>
    private static Tensor TopK(Tensor pre, int k)
    {
        var (values, indices) = pre.TopK(Math.Min(k, pre.Size(-1)), -1);
        return Torch.Zeros(pre.Shape, pre.DType, pre.Device).Scatter(-1, indices, values.Relu());
    }

    private Tensor DecodeCore(Tensor acts, Normalisation? norm, long[]? inputShape, bool fire)
    {
        if (acts.Size(-1) != Config.DSae)
            throw new ArgumentException($"the SAE has d_sae = {Config.DSae} features, got activations of shape {Tensor.FormatShape(acts.Shape)}");
        var recons = acts.To(DType).Matmul(_weights["W_dec"]) + _weights["b_dec"];
        if (fire) recons = _recons.Fire(recons);
        if (norm is { Mean: { } mu, Scale: { } std }) recons = recons * std + mu;
        else if (norm is { Scale: { } coeff }) recons = recons / coeff;
        return Config.ReshapeHookZ && inputShape is not null ? recons.Reshape(inputShape) : recons;
    }

    /// <summary>Frees the weights.</summary>
    public void Dispose()
    {
        foreach (var t in _weights.Values) t.Dispose();
        _weights.Clear();
    }
}
