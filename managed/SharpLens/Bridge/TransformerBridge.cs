using System.Text.RegularExpressions;
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
public sealed partial class TransformerBridge : IDisposable
{
    private readonly Dictionary<string, Tensor> _parameters;
    private readonly ModelSpec _spec;
    private readonly Dictionary<string, HookPoint> _hooks;
    private readonly HookPoint _hookEmbed, _hookPosEmbed, _hookTokens, _lnFinalScale, _lnFinalNormalized;
    private readonly BlockHooks[] _blocks;

    private TransformerBridge(LoadedModel model)
    {
        Config = model.Config;
        Adapter = model.Adapter;
        ModelDirectory = model.Directory;
        _parameters = new Dictionary<string, Tensor>(model.Parameters);
        _spec = Adapter.Describe(Config);
        _hooks = new Dictionary<string, HookPoint>();
        _hookTokens = NewHook("hook_tokens", c => c.UseHookTokens, nameof(TransformerConfig.UseHookTokens), differentiable: false);
        _hookEmbed = NewHook("hook_embed");
        _hookPosEmbed = NewHook("hook_pos_embed", c => c.Positional == PositionalEmbedding.Learned, "a learned positional embedding");
        _blocks = Enumerable.Range(0, Config.NLayers).Select(i => new BlockHooks(this, i)).ToArray();
        _lnFinalScale = NewHook("ln_final.hook_scale");
        _lnFinalNormalized = NewHook("ln_final.hook_normalized");
    }

    /// <summary>Loads a HuggingFace model directory (config.json + safetensors).</summary>
    public static TransformerBridge Load(string modelDirectory, BridgeOptions? options = null)
    {
        options ??= new BridgeOptions();
        var model = ModelLoader.Load(modelDirectory, options.DType, options.Device);
        var bridge = new TransformerBridge(model);
        if (options.AllOptionalHooks)
        {
            bridge.Config.UseAttnResult = true;
            bridge.Config.UseSplitQkvInput = true;
            bridge.Config.UseHookMlpIn = true;
            bridge.Config.UseHookTokens = true;
        }
        return bridge;
    }

    /// <summary>The model's configuration, including the switches for optional hook points.</summary>
    public TransformerConfig Config { get; }

    /// <summary>The adapter that maps the HF checkpoint to components.</summary>
    public ArchitectureAdapter Adapter { get; }

    /// <summary>Where the model was loaded from.</summary>
    public string ModelDirectory { get; }

    // ------------------------------------------------------------------ parameters

    /// <summary>The leaf parameters with their HF names, each once (tied weights once), requiring grad: hand them to an optimizer.</summary>
    public IReadOnlyList<(string Name, Tensor Parameter)> NamedParameters() => _parameters.Select(p => (p.Key, p.Value)).ToList();

    /// <summary>The leaf parameters (see <see cref="NamedParameters"/>).</summary>
    public IReadOnlyList<Tensor> Parameters() => _parameters.Values.ToList();

    /// <summary>One HF parameter by name.</summary>
    public Tensor Parameter(string hfName) =>
        _parameters.TryGetValue(hfName, out var t) ? t : throw new KeyNotFoundException($"no parameter '{hfName}' in this {Config.ModelType} model");

    /// <summary>
    /// TransformerLens-named weights (<c>blocks.0.attn.W_Q</c> [head, d_model, d_head], ...), built by the
    /// adapter's conversions as views of the HF leaves wherever the layout allows, so they reflect the
    /// current weights (an optimizer step shows at once). New tensors each call: dispose them (or use a scope).
    /// Weights the HF model lacks (<c>unembed.b_U</c>) are zeros.
    /// </summary>
    public IReadOnlyList<(string Name, Tensor Weight)> TlNamedParameters()
    {
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

    // ------------------------------------------------------------------ hooks

    /// <summary>Every hook point by TransformerLens name (optional ones included; they fire when their switch is on).</summary>
    public IReadOnlyDictionary<string, HookPoint> HookDict => _hooks;

    private HookPoint NewHook(string name, Func<TransformerConfig, bool>? enabledWhen = null, string? switchName = null, bool differentiable = true)
    {
        var hp = new HookPoint(name, enabledWhen, switchName, differentiable);
        _hooks.Add(name, hp);
        return hp;
    }

    private HookPoint Hook(string name) =>
        _hooks.TryGetValue(name, out var hp)
            ? hp
            : throw new KeyNotFoundException($"no hook point '{name}' in this {Config.ModelType} model (see HookDict for the {_hooks.Count} names)");

    /// <summary>Adds a forward hook by hook-point name. Permanent hooks survive <see cref="ResetHooks"/>.</summary>
    public HookHandle AddHook(string name, ForwardHook hook, bool permanent = false) => AddHooks([Hook(name)], hook, permanent);

    /// <summary>Adds a forward hook to every hook point whose name satisfies <paramref name="filter"/>.</summary>
    public HookHandle AddHook(Func<string, bool> filter, ForwardHook hook, bool permanent = false) =>
        AddHooks(_hooks.Values.Where(h => filter(h.Name) && IsEnabled(h)).ToList(), hook, permanent);

    /// <summary>Adds a forward hook to every hook point whose name matches <paramref name="pattern"/>.</summary>
    public HookHandle AddHook(Regex pattern, ForwardHook hook, bool permanent = false) => AddHook(pattern.IsMatch, hook, permanent);

    private bool IsEnabled(HookPoint hp) => hp.EnabledWhen is null || hp.EnabledWhen(Config);

    private HookHandle AddHooks(IReadOnlyList<HookPoint> points, ForwardHook hook, bool permanent)
    {
        ArgumentNullException.ThrowIfNull(hook);
        foreach (var hp in points)
            if (!IsEnabled(hp))
                throw new InvalidOperationException($"hook point '{hp.Name}' fires only with {hp.SwitchName}; turn it on in Config first");
        return new HookHandle(points.Select(hp =>
        {
            var r = hp.Add(hook, permanent);
            return (hp, (Action)(() => hp.Remove(r)));
        }).ToList());
    }

    /// <summary>
    /// Adds a backward hook by hook-point name: it receives the gradient of whatever objective is
    /// backpropagated w.r.t. that activation and may return a replacement. Hooks on one point run in
    /// registration order. Integer hook points (hook_tokens) refuse backward hooks.
    /// </summary>
    public HookHandle AddBackwardHook(string name, BackwardHook hook, bool permanent = false) => AddBackwardHooks([Hook(name)], hook, permanent);

    /// <summary>Adds a backward hook to every enabled, differentiable hook point whose name satisfies <paramref name="filter"/>.</summary>
    public HookHandle AddBackwardHook(Func<string, bool> filter, BackwardHook hook, bool permanent = false) =>
        AddBackwardHooks(_hooks.Values.Where(h => filter(h.Name) && IsEnabled(h) && h.IsDifferentiable).ToList(), hook, permanent);

    /// <summary>Adds a backward hook to every enabled, differentiable hook point whose name matches <paramref name="pattern"/>.</summary>
    public HookHandle AddBackwardHook(Regex pattern, BackwardHook hook, bool permanent = false) => AddBackwardHook(pattern.IsMatch, hook, permanent);

    private HookHandle AddBackwardHooks(IReadOnlyList<HookPoint> points, BackwardHook hook, bool permanent)
    {
        ArgumentNullException.ThrowIfNull(hook);
        foreach (var hp in points)
            if (!IsEnabled(hp))
                throw new InvalidOperationException($"hook point '{hp.Name}' fires only with {hp.SwitchName}; turn it on in Config first");
        var entries = new List<(HookPoint, Action)>();
        try
        {
            foreach (var hp in points)
            {
                var r = hp.AddBackward(hook, permanent);
                entries.Add((hp, () => hp.Remove(r)));
            }
        }
        catch
        {
            foreach (var (_, remove) in entries) remove();
            throw;
        }
        return new HookHandle(entries);
    }

    /// <summary>Adds several hooks and removes them all when the returned scope is disposed: <c>using (bridge.Hooks(("hook_embed", h))) { ... }</c>.</summary>
    public IDisposable Hooks(params (string Name, ForwardHook Hook)[] hooks) => Hooks(hooks, []);

    /// <summary>Adds forward and backward hooks and removes them all when the returned scope is disposed.</summary>
    public IDisposable Hooks(IEnumerable<(string Name, ForwardHook Hook)> forward, IEnumerable<(string Name, BackwardHook Hook)> backward)
    {
        var handles = new List<HookHandle>();
        try
        {
            foreach (var (name, hook) in forward) handles.Add(AddHook(name, hook));
            foreach (var (name, hook) in backward) handles.Add(AddBackwardHook(name, hook));
        }
        catch
        {
            foreach (var h in handles) h.Dispose();
            throw;
        }
        return new CompositeDisposable(handles);
    }

    /// <summary>Removes every hook except permanent ones (or all, with <paramref name="includingPermanent"/>).</summary>
    public void ResetHooks(bool includingPermanent = false)
    {
        foreach (var hp in _hooks.Values) hp.Reset(includingPermanent);
    }

    private sealed class CompositeDisposable(List<HookHandle> handles) : IDisposable
    {
        public void Dispose()
        {
            foreach (var h in handles) h.Dispose();
        }
    }

    // ------------------------------------------------------------------ running

    /// <summary>Logits [batch, pos, vocab] for int64 token ids [batch, pos]; <paramref name="attentionMask"/> [batch, pos] marks real tokens with 1.</summary>
    public Tensor Forward(Tensor tokens, Tensor? attentionMask = null)
    {
        var outer = DisposeScope.Current;
        using var scope = Torch.NewScope();
        var logits = RunModel(tokens, attentionMask);
        return outer is null ? logits.DetachFromScope() : logits.MoveToOuterScope();
    }

    /// <summary>
    /// Mean next-token cross-entropy as HuggingFace computes it; with a mask, predictions from or of padding
    /// are skipped. Per token [batch, pos - 1] with <paramref name="perToken"/> (skipped entries give 0).
    /// </summary>
    public Tensor Loss(Tensor tokens, Tensor? attentionMask = null, bool perToken = false)
    {
        var outer = DisposeScope.Current;
        using var scope = Torch.NewScope();
        var logits = RunModel(tokens, attentionMask);
        var loss = LossFromLogits(logits, tokens, attentionMask, perToken);
        return outer is null ? loss.DetachFromScope() : loss.MoveToOuterScope();
    }

    /// <summary>Next-token cross-entropy of given logits (see <see cref="Loss"/>).</summary>
    public static Tensor LossFromLogits(Tensor logits, Tensor tokens, Tensor? attentionMask = null, bool perToken = false)
    {
        var (batch, pos, vocab) = (logits.Size(0), logits.Size(1), logits.Size(2));
        if (pos < 2) throw new ArgumentException($"a next-token loss needs at least 2 positions, got {pos}");
        using var scope = Torch.NewScope();
        var predictions = logits.Narrow(1, 0, pos - 1).Reshape(-1, vocab);
        var targets = tokens.Narrow(1, 1, pos - 1).Reshape(-1);
        var perPosition = Functional.CrossEntropy(predictions, targets, reduction: Reduction.None).View(batch, pos - 1);
        Tensor result;
        if (attentionMask is null)
        {
            result = perToken ? perPosition : perPosition.Mean();
        }
        else
        {
            // A prediction counts only when both the predicting and the predicted token are real: with left
            // padding, the pad before the first real token must not "predict" it.
            var valid = attentionMask.Narrow(1, 1, pos - 1).Ne(0).LogicalAnd(attentionMask.Narrow(1, 0, pos - 1).Ne(0)).To(perPosition.DType);
            var masked = perPosition * valid;
            result = perToken ? masked : masked.Sum() / valid.Sum();
        }
        return result.MoveToOuterScope();
    }

    /// <summary>Runs the model with hooks recording activations; returns logits and the cache (dispose both).</summary>
    public (Tensor Logits, ActivationCache Cache) RunWithCache(Tensor tokens, Func<string, bool>? namesFilter = null, Tensor? attentionMask = null) =>
        RunWithCache(tokens, namesFilter, attentionMask, backwardObjective: null);

    /// <summary>
    /// Runs the model recording activations and, when <paramref name="backwardObjective"/> is given, backpropagates
    /// the scalar it computes from the logits and records the gradient at every selected hook point under
    /// <c>&lt;name&gt;_grad</c> (TransformerLens's <c>incl_bwd</c>). Parameter gradients accumulate in <c>.Grad</c> as usual.
    /// </summary>
    public (Tensor Logits, ActivationCache Cache) RunWithCache(Tensor tokens, Func<string, bool>? namesFilter, Tensor? attentionMask,
        Func<Tensor, Tensor>? backwardObjective)
    {
        var cache = new ActivationCache(Config.Clone());
        var points = _hooks.Values.Where(h => IsEnabled(h) && (namesFilter is null || namesFilter(h.Name))).ToList();
        using var handle = AddHooks(points, (activation, hp) =>
        {
            cache.Store(hp.Name, activation.Detach());
            return null;
        }, permanent: false);
        using var backwardHandle = backwardObjective is null
            ? null
            : AddBackwardHooks(points.Where(p => p.IsDifferentiable).ToList(), (gradient, hp) =>
            {
                cache.Store(hp.Name + "_grad", gradient.Detach());
                return null;
            }, permanent: false);
        try
        {
            var logits = Forward(tokens, attentionMask);
            if (backwardObjective is not null)
            {
                using var scope = Torch.NewScope();
                backwardObjective(logits).Backward();
            }
            return (logits, cache);
        }
        catch
        {
            cache.Dispose();
            throw;
        }
    }

    /// <summary>Runs the model with extra hooks that are removed afterwards; returns logits.</summary>
    public Tensor RunWithHooks(Tensor tokens, IEnumerable<(string Name, ForwardHook Hook)> hooks, Tensor? attentionMask = null)
    {
        using (Hooks(hooks.ToArray())) return Forward(tokens, attentionMask);
    }

    /// <summary>Releases the parameters.</summary>
    public void Dispose()
    {
        foreach (var p in _parameters.Values) p.Dispose();
        _parameters.Clear();
    }
}
