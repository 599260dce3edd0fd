namespace SharpLens;

/// <summary>
/// A forward hook: receives the activation and its hook point, returns a replacement of the same shape
/// or null to keep the activation.
/// </summary>
public delegate Tensor? ForwardHook(Tensor activation, HookPoint hookPoint);

/// <summary>
/// A named place in the forward pass (TransformerLens names: <c>blocks.0.attn.hook_pattern</c>, ...)
/// where hooks observe or replace the activation. With no hooks, firing costs one branch.
/// </summary>
public sealed class HookPoint
{
    private readonly List<Registration> _hooks = new();

    internal HookPoint(string name, Func<TransformerConfig, bool>? enabledWhen = null, string? switchName = null)
    {
        Name = name;
        EnabledWhen = enabledWhen;
        SwitchName = switchName;
    }

    /// <summary>The TransformerLens name.</summary>
    public string Name { get; }

    /// <summary>For optional hook points, the config switch that makes them fire.</summary>
    public string? SwitchName { get; }

    internal Func<TransformerConfig, bool>? EnabledWhen { get; }

    /// <summary>Number of forward hooks attached.</summary>
    public int HookCount => _hooks.Count;

    internal bool HasHooks => _hooks.Count > 0;

    internal sealed class Registration(ForwardHook hook, bool permanent)
    {
        public ForwardHook Hook { get; } = hook;
        public bool Permanent { get; } = permanent;
    }

    internal Registration Add(ForwardHook hook, bool permanent)
    {
        var r = new Registration(hook, permanent);
        _hooks.Add(r);
        return r;
    }

    internal void Remove(Registration r) => _hooks.Remove(r);

    internal void Reset(bool includingPermanent) => _hooks.RemoveAll(r => includingPermanent || !r.Permanent);

    /// <summary>Runs the hooks in registration order; each sees the previous one's result.</summary>
    internal Tensor Fire(Tensor activation)
    {
        if (_hooks.Count == 0) return activation;
        var current = activation;
        // A copy of the list: a hook may add or remove hooks while running.
        foreach (var r in _hooks.ToArray())
        {
            Tensor? replacement;
            try
            {
                replacement = r.Hook(current, this);
            }
            catch (Exception e) when (e is not HookException)
            {
                throw new HookException(Name, $"a forward hook on '{Name}' threw: {e.Message}", e);
            }
            if (replacement is null) continue;
            var expected = current.Shape;
            var actual = replacement.Shape;
            if (!expected.SequenceEqual(actual))
                throw new HookException(Name,
                    $"a forward hook on '{Name}' returned shape {Tensor.FormatShape(actual)} but the activation has shape {Tensor.FormatShape(expected)}");
            current = replacement;
        }
        return current;
    }

    /// <inheritdoc/>
    public override string ToString() => $"HookPoint({Name}, {HookCount} hooks)";
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
    private List<(HookPoint Point, HookPoint.Registration Registration)>? _entries;

    internal HookHandle(List<(HookPoint, HookPoint.Registration)> entries) => _entries = entries;

    /// <summary>The hook points this handle covers.</summary>
    public IReadOnlyList<string> HookNames => _entries?.Select(e => e.Point.Name).ToList() ?? [];

    /// <summary>Removes the hooks (idempotent).</summary>
    public void Remove()
    {
        var entries = Interlocked.Exchange(ref _entries, null);
        if (entries is null) return;
        foreach (var (point, registration) in entries) point.Remove(registration);
    }

    /// <inheritdoc/>
    public void Dispose() => Remove();
}
