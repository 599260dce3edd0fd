namespace SharpLens;

/// <summary>
/// A forward hook: receives the activation and its hook point, returns a replacement of the same shape
/// or null to keep the activation.
/// </summary>
public delegate Tensor? ForwardHook(Tensor activation, HookPoint hookPoint);

/// <summary>
/// A backward hook: receives the gradient of the backward objective w.r.t. the hook point's activation
/// (PyTorch full-backward-hook semantics: the total gradient flowing into it) and returns a replacement
/// of the same shape, or null to keep it. Upstream gradients are computed from what the hooks return.
/// </summary>
public delegate Tensor? BackwardHook(Tensor gradient, HookPoint hookPoint);

/// <summary>
/// A named place in the forward pass (TransformerLens names: <c>blocks.0.attn.hook_pattern</c>, ...)
/// where hooks observe or replace the activation. With no hooks, firing costs one branch.
/// </summary>
public sealed class HookPoint
{
    private readonly List<Registration> _hooks = new();
    private readonly List<BackwardRegistration> _backwardHooks = new();

    internal HookPoint(string name, Func<TransformerConfig, bool>? enabledWhen = null, string? switchName = null, bool differentiable = true)
    {
        Name = name;
        IsDifferentiable = differentiable;
        EnabledWhen = enabledWhen;
        SwitchName = switchName;
    }

    /// <summary>The TransformerLens name.</summary>
    public string Name { get; }

    /// <summary>For optional hook points, the config switch that makes them fire.</summary>
    public string? SwitchName { get; }

    internal Func<TransformerConfig, bool>? EnabledWhen { get; }

    /// <summary>False for hook points whose activation has no gradient (integer token ids).</summary>
    public bool IsDifferentiable { get; }

    /// <summary>Number of forward hooks attached.</summary>
    public int HookCount => _hooks.Count;

    /// <summary>Number of backward hooks attached.</summary>
    public int BackwardHookCount => _backwardHooks.Count;

    internal bool HasHooks => _hooks.Count > 0;

    internal bool HasBackwardHooks => _backwardHooks.Count > 0;

    internal bool HasAnyHooks => _hooks.Count > 0 || _backwardHooks.Count > 0;

    /// <summary>A backward hook: a user callback, or the built-in native gradient capture into a cache.</summary>
    internal sealed class BackwardRegistration(BackwardHook? hook, ActivationCache? gradientCache, bool permanent)
    {
        public BackwardHook? Hook { get; } = hook;
        public ActivationCache? GradientCache { get; } = gradientCache;
        public bool Permanent { get; } = permanent;
    }

    internal BackwardRegistration AddBackward(BackwardHook? hook, bool permanent, ActivationCache? gradientCache = null)
    {
        if (!IsDifferentiable)
            throw new InvalidOperationException($"hook point '{Name}' holds integer token ids, which have no gradient: a backward hook there could never fire");
        var r = new BackwardRegistration(hook, gradientCache, permanent);
        _backwardHooks.Add(r);
        return r;
    }

    internal void Remove(BackwardRegistration r) => _backwardHooks.Remove(r);

    /// <summary>A forward hook: a user callback or a built-in action.</summary>
    internal sealed class Registration(ForwardHook? hook, HookAction? action, bool permanent)
    {
        public ForwardHook? Hook { get; } = hook;
        public HookAction? Action { get; } = action;
        public bool Permanent { get; } = permanent;
    }

    internal Registration Add(ForwardHook? hook, bool permanent, HookAction? action = null)
    {
        var r = new Registration(hook, action, permanent);
        _hooks.Add(r);
        return r;
    }

    internal void Remove(Registration r) => _hooks.Remove(r);

    internal void Reset(bool includingPermanent)
    {
        _hooks.RemoveAll(r => includingPermanent || !r.Permanent);
        _backwardHooks.RemoveAll(r => includingPermanent || !r.Permanent);
    }

    /// <summary>
    /// Runs the forward hooks in registration order (each sees the previous one's result); with backward
    /// hooks attached, returns the activation through an identity view of its own whose gradient hooks run
    /// them, so every hook point is a distinct node even where two share a tensor (resid_post of one block
    /// and resid_pre of the next): downstream hooks run first and their replacements reach upstream ones.
    /// </summary>
    internal Tensor Fire(Tensor activation) => Fire(activation, out _);

    /// <summary>As <see cref="Fire(Tensor)"/>; <paramref name="replaced"/> tells whether a forward hook replaced the activation.</summary>
    internal Tensor Fire(Tensor activation, out bool replaced)
    {
        var current = _hooks.Count == 0 ? activation : RunForwardHooks(activation);
        replaced = !ReferenceEquals(current, activation);
        return _backwardHooks.Count == 0 ? current : AttachBackwardHooks(current);
    }

    private Tensor AttachBackwardHooks(Tensor activation)
    {
        if (!activation.RequiresGrad)
            throw new HookException(Name,
                $"a backward hook on '{Name}' cannot fire: the activation does not require grad (is the model running under Torch.NoGrad(), or are its parameters frozen?)");
        var node = activation.View(activation.Shape);
        if (_backwardHooks.TrueForAll(r => r.GradientCache is not null))
        {
            // Only built-in gradient captures: native hooks store the gradient, and backward never calls managed code here.
            foreach (var r in _backwardHooks) r.GradientCache!.CaptureGradient(Name, node);
            return node;
        }
        var handle = node.RegisterHook(RunBackwardHooks);
        handle.Forget();  // the hook lives as long as the graph; removal works through this HookPoint
        return node;
    }

    private Tensor? RunBackwardHooks(Tensor gradient)
    {
        var chain = _backwardHooks.Select(r => r.Hook is { } hook
            ? (Func<Tensor, HookPoint, Tensor?>)hook.Invoke
            : (g, hp) =>
            {
                r.GradientCache!.Store(hp.Name + ActivationCache.GradientSuffix, g.Detach());
                return null;
            }).ToArray();
        var result = RunChain(chain, gradient, "backward", "gradient");
        return ReferenceEquals(result, gradient) ? null : result;
    }

    private Tensor RunForwardHooks(Tensor activation) =>
        RunChain(_hooks.Select(r => r.Hook is { } hook
            ? (Func<Tensor, HookPoint, Tensor?>)hook.Invoke
            : r.Action!.Apply).ToArray(), activation, "forward", "activation");

    /// <summary>
    /// Runs hooks in registration order over a snapshot of the list (a hook may add or remove hooks while
    /// running); each sees the previous one's replacement. Failures and unusable replacements become
    /// <see cref="HookException"/>s naming this hook point.
    /// </summary>
    private Tensor RunChain(Func<Tensor, HookPoint, Tensor?>[] hooks, Tensor input, string kind, string what)
    {
        var current = input;
        foreach (var hook in hooks)
        {
            Tensor? replacement;
            try
            {
                replacement = hook(current, this);
            }
            catch (Exception e) when (e is not HookException)
            {
                throw new HookException(Name, $"a {kind} hook on '{Name}' threw: {e.Message}", e);
            }
            if (replacement is null || ReferenceEquals(replacement, current)) continue;
            CheckReplacement(kind, what, current, replacement);
            current = replacement;
        }
        return current;
    }

    /// <summary>A replacement must match what it replaces in shape, dtype and device; the error names the hook and both.</summary>
    private void CheckReplacement(string kind, string what, Tensor original, Tensor replacement)
    {
        if (!replacement.Shape.SequenceEqual(original.Shape))
            throw new HookException(Name,
                $"a {kind} hook on '{Name}' returned shape {Tensor.FormatShape(replacement.Shape)} but the {what} has shape {Tensor.FormatShape(original.Shape)}");
        if (replacement.DType != original.DType)
            throw new HookException(Name,
                $"a {kind} hook on '{Name}' returned dtype {replacement.DType.ToTorchName()} but the {what} has dtype {original.DType.ToTorchName()}");
        if (replacement.Device != original.Device)
            throw new HookException(Name, $"a {kind} hook on '{Name}' returned a tensor on {replacement.Device} but the {what} is on {original.Device}");
    }

    /// <inheritdoc/>
    public override string ToString() => $"HookPoint({Name}, {HookCount} forward and {BackwardHookCount} backward hooks)";
}

/// <summary>A hook failed or returned something unusable; names the hook point.</summary>
public sealed class HookException(string hookName, string message, Exception? inner = null) : Exception(message, inner)
{
    /// <summary>The hook point's name.</summary>
    public string HookName { get; } = hookName;
}

/// <summary>Removes the hooks it stands for when disposed.</summary>
public sealed class HookHandle : IDisposable
{
    private List<(HookPoint Point, Action Remove)>? _entries;

    internal HookHandle(List<(HookPoint, Action)> entries) => _entries = entries;

    /// <summary>The hook points this handle covers.</summary>
    public IReadOnlyList<string> HookNames => _entries?.Select(e => e.Point.Name).ToList() ?? [];

    /// <summary>Removes the hooks (idempotent).</summary>
    public void Remove()
    {
        var entries = Interlocked.Exchange(ref _entries, null);
        if (entries is null) return;
        foreach (var (_, remove) in entries) remove();
    }

    /// <inheritdoc/>
    public void Dispose() => Remove();
}
