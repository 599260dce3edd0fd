using SharpLens.Adapters;
using SharpLens.Loading;

namespace SharpLens;

/// <summary>Options for loading a <see cref="TransformerBridge"/>.</summary>
public sealed record BridgeOptions
{
    /// <summary>Parameter dtype (default float32).</summary>
    public ScalarType DType { get; init; } = ScalarType.Float32;
    /// <summary>Device (default CPU).</summary>
    public Device? Device { get; init; }
    /// <summary>Turn every optional hook point on (attn.hook_result, hook_q_input..., hook_mlp_in, hook_tokens).</summary>
    public bool AllOptionalHooks { get; init; }
}

/// <summary>
/// A HuggingFace causal LM with TransformerLens's interface: every TL hook point (forward), activation
/// caching, leaf parameters with HF names for optimizers and TL-named weight views of them. The HF leaf
/// parameters are the single source of truth; the architecture adapter maps them to components.
/// </summary>
public sealed partial class TransformerBridge : HookedModel
{
    private readonly Dictionary<string, Tensor> _parameters;
    private readonly ModelSpec _spec;

    private TransformerBridge(LoadedModel model) : base(model.Config)
    {
        var first = model.Parameters.Values.First();
        Config.DType = first.DType;
        Config.Device = first.Device;
        Adapter = model.Adapter;
        ModelDirectory = model.Directory;
        _parameters = new Dictionary<string, Tensor>(model.Parameters);
        _spec = Adapter.Describe(Config);
    }

    /// <summary>Loads a HuggingFace model directory (config.json + safetensors).</summary>
    public static TransformerBridge Load(string modelDirectory, BridgeOptions? options = null)
    {
        options ??= new BridgeOptions();
        var model = ModelLoader.Load(modelDirectory, options.DType, options.Device);
        TransformerBridge bridge;
        try
        {
            bridge = new TransformerBridge(model);
        }
        catch
        {
            foreach (var p in model.Parameters.Values) p.Dispose();
            throw;
        }
        if (options.AllOptionalHooks)
        {
            bridge.Config.UseAttnResult = true;
            bridge.Config.UseSplitQkvInput = true;
            bridge.Config.UseHookMlpIn = true;
            bridge.Config.UseHookTokens = true;
        }
        return bridge;
    }

    /// <summary>The adapter that maps the HF checkpoint to components.</summary>
    public ArchitectureAdapter Adapter { get; }

    /// <summary>Where the model was loaded from.</summary>
    public string ModelDirectory { get; }

    // ------------------------------------------------------------------ parameters

    /// <summary>The leaf parameters with their HF names, each once (tied weights once), requiring grad: hand them to an optimizer.</summary>
    public IReadOnlyList<(string Name, Tensor Parameter)> NamedParameters()
    {
        ThrowIfDisposed();
        return _parameters.Select(p => (p.Key, p.Value)).ToList();
    }

    /// <inheritdoc/>
    private protected override long CountParameters() => _parameters.Values.Sum(p => p.NumEl);

    /// <summary>The leaf parameters (see <see cref="NamedParameters"/>).</summary>
    public IReadOnlyList<Tensor> Parameters() => _parameters.Values.ToList();

    /// <summary>One HF parameter by name.</summary>
    public Tensor Parameter(string hfName)
    {
        ThrowIfDisposed();
        return _parameters.TryGetValue(hfName, out var t) ? t : throw new KeyNotFoundException($"no parameter '{hfName}' in this {Config.ModelType} model");
    }

    /// <summary>
    /// TransformerLens-named weights (<c>blocks.0.attn.W_Q</c> [head, d_model, d_head], ...), built by the
    /// adapter's conversions as views of the HF leaves wherever the layout allows, so they reflect the
    /// current weights (an optimizer step shows at once). New tensors each call: dispose them (or use a scope).
    /// Weights the HF model lacks (<c>unembed.b_U</c>) are zeros.
    /// </summary>
    public IReadOnlyList<(string Name, Tensor Weight)> TlNamedParameters()
    {
        ThrowIfDisposed();
        var result = new List<(string, Tensor)>();
        foreach (var w in Adapter.TlWeights(Config))
        {
            var p0 = _parameters.Values.First();
            var t = w.HfName is null
                ? Torch.Zeros(w.ZerosShape!, p0.DType, p0.Device)
                : w.Conversion.Apply(Parameter(w.HfName));
            result.Add((w.TlName, t));
        }
        return result;
    }

    /// <summary>The TransformerLens weights (see <see cref="TlNamedParameters"/>).</summary>
    public IReadOnlyList<Tensor> TlParameters() => TlNamedParameters().Select(p => p.Weight).ToList();

    /// <summary>
    /// Moves and/or converts every parameter (new leaves that require grad, replacing the old ones) and keeps
    /// <see cref="HookedModel.Config"/> in sync. Optimizers and TL views made before hold the old tensors:
    /// create them after calling this. Returns this bridge.
    /// </summary>
    public TransformerBridge To(Device device, ScalarType? dtype = null)
    {
        ThrowIfDisposed();
        var type = dtype ?? Config.DType;
        if (!type.IsFloatingPoint()) throw new ArgumentException($"parameters must be floating point, not {type.ToTorchName()}");
        var converted = new Dictionary<string, Tensor>();
        try
        {
            using (Torch.NoGrad())
                foreach (var (name, p) in _parameters)
                {
                    var t = p.To(device, type, copy: true).DetachFromScope();
                    converted[name] = t;
                    t.RequiresGrad = true;
                }
        }
        catch
        {
            foreach (var t in converted.Values) t.Dispose();
            throw;
        }
        foreach (var (name, p) in _parameters) p.Dispose();
        foreach (var (name, t) in converted) _parameters[name] = t;
        Config.DType = type;
        Config.Device = device;
        return this;
    }

    /// <summary>Converts every parameter to <paramref name="dtype"/> on the current device (see <see cref="To(Device, ScalarType?)"/>).</summary>
    public TransformerBridge To(ScalarType dtype) => To(Config.Device, dtype);

    /// <summary>Releases the parameters; the bridge is unusable afterwards.</summary>
    public override void Dispose()
    {
        IsDisposed = true;
        foreach (var p in _parameters.Values) p.Dispose();
        _parameters.Clear();
    }
}
