namespace SharpLens;

/// <summary>
/// Activations recorded by <see cref="TransformerBridge.RunWithCache"/>, by TransformerLens name, with
/// TransformerLens's shorthand (<c>cache["resid_pre", 0]</c>, <c>cache["pattern", 1]</c>,
/// <c>cache["scale", 0, "ln1"]</c>). Owns its tensors: dispose the cache to free them.
/// </summary>
public sealed partial class ActivationCache : IDisposable, IReadOnlyDictionary<string, Tensor>
{
    /// <summary>Appended to a hook point's name for its cached gradient (TransformerLens's <c>incl_bwd</c> naming).</summary>
    public const string GradientSuffix = "_grad";

    private readonly Dictionary<string, Tensor> _tensors = new();
    private readonly int _slotCapacity;
    private GradientSlots? _slots;
    private long _collectedVersion;
    private readonly Dictionary<string, int> _gradientSlots = new();

    /// <summary>
    /// An empty cache for <paramref name="model"/>, to fill with <see cref="HookAction.Cache"/> and
    /// <see cref="HookAction.CacheGradient"/> (RunWithCache creates its own).
    /// </summary>
    public ActivationCache(HookedModel model) : this(model.Config.Clone(), model.HookDict.Count) => Model = model;

    /// <summary>An empty cache for <paramref name="model"/> with gradient slots for <paramref name="extraHookPoints"/> hook points beyond the model's own (an SAE's).</summary>
    internal ActivationCache(HookedModel model, int extraHookPoints) : this(model.Config.Clone(), model.HookDict.Count + extraHookPoints) => Model = model;

    internal ActivationCache(TransformerConfig config, int hookPoints)
    {
        Config = config;
        _slotCapacity = hookPoints;
    }

    /// <summary>The config of the model that produced the cache.</summary>
    public TransformerConfig Config { get; }

    internal void Store(string name, Tensor tensor)
    {
        if (_tensors.Remove(name, out var old)) old.Dispose();
        _tensors[name] = tensor.DetachFromScope();
    }

    /// <summary>
    /// Registers a native hook on <paramref name="node"/> that stores its gradient in this cache's slot for
    /// <paramref name="hookName"/> during backward; <see cref="CollectGradients"/> moves it into the cache on the next read.
    /// </summary>
    internal void CaptureGradient(string hookName, Tensor node)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (!_gradientSlots.TryGetValue(hookName, out var slot))
        {
            if (_gradientSlots.Count == _slotCapacity)
                throw new InvalidOperationException($"this cache has gradient slots for {_slotCapacity} hook points and all are taken; '{hookName}' is one more");
            _gradientSlots[hookName] = slot = _gradientSlots.Count;
        }
        _slots ??= new GradientSlots(_slotCapacity);
        _slots.Capture(node, slot);
    }

    /// <summary>Moves gradients the native hooks stored since the last read into the cache (the latest per hook point wins).</summary>
    private void CollectGradients()
    {
        // One native call per read when nothing arrived since the last one, instead of one per slot.
        if (_slots is null) return;
        var version = _slots.Version;
        if (version == _collectedVersion) return;
        _collectedVersion = version;
        foreach (var (name, slot) in _gradientSlots)
            if (_slots.Take(slot) is { } gradient)
                Store(name + GradientSuffix, gradient);
    }

    private bool _disposed;

    /// <summary>The activation with this full TransformerLens name, or a layerless short name (<c>"embed"</c>, <c>"scale"</c> for ln_final).</summary>
    public Tensor this[string name] => Lookup(name);

    private Tensor Lookup(string name)
    {
        CollectGradients();
        return _tensors.TryGetValue(name, out var t) || (TryActName(name, out var full) && _tensors.TryGetValue(full, out t))
            ? t
            : throw new KeyNotFoundException($"the cache holds no '{name}'" + (_tensors.Count == 0 ? " (it is empty)" : $"; it holds {_tensors.Count} activations, e.g. {string.Join(", ", _tensors.Keys.Take(3))}"));
    }

    /// <summary>
    /// TransformerLens <c>get_act_name</c> shorthand: <c>("resid_pre", 0)</c>, <c>("pattern", 1)</c>, <c>("scale", 0, "ln2")</c>;
    /// a negative layer counts from the end (<c>("resid_post", -1)</c> is the last block).
    /// </summary>
    public Tensor this[string shortName, int layer, string? layerType = null]
    {
        get
        {
            var resolved = layer < 0 ? layer + Config.NLayers : layer;
            if (resolved < 0 || resolved >= Config.NLayers)
                throw new KeyNotFoundException($"the cache holds no '{ActName(shortName, layer, layerType)}': layer {layer} does not exist in a model of {Config.NLayers} layers");
            return this[ActName(shortName, resolved, layerType)];
        }
    }

    private static bool TryActName(string name, out string full)
    {
        try
        {
            full = ActName(name);
            return true;
        }
        catch (ArgumentException)
        {
            full = "";
            return false;
        }
    }

    /// <summary>The full hook name for a TransformerLens short name (as <c>utils.get_act_name</c>).</summary>
    public static string ActName(string shortName, int? layer = null, string? layerType = null)
    {
        var full = shortName switch
        {
            "embed" or "pos_embed" or "tokens" => $"hook_{shortName}",
            "resid_pre" or "resid_mid" or "resid_post" or "attn_out" or "mlp_out" or "q_input" or "k_input" or "v_input" or "attn_in" or "mlp_in"
                => $"blocks.{{0}}.hook_{shortName}",
            "q" or "k" or "v" or "z" or "result" or "attn_scores" or "pattern" or "rot_q" or "rot_k" => $"blocks.{{0}}.attn.hook_{shortName}",
            "attn" => "blocks.{0}.attn.hook_pattern",
            "pre" or "post" or "mid" => $"blocks.{{0}}.mlp.hook_{shortName}",
            "scale" or "normalized" => layer is null ? $"ln_final.hook_{shortName}" : $"blocks.{{0}}.{layerType ?? "ln1"}.hook_{shortName}",
            _ when shortName.Contains('.') || shortName.StartsWith("hook_") => shortName,
            _ => throw new ArgumentException($"'{shortName}' is not a TransformerLens activation short name"),
        };
        if (full.Contains("{0}"))
        {
            if (layer is null) throw new ArgumentException($"'{shortName}' needs a layer index");
            full = string.Format(full, layer);
        }
        return full;
    }

    /// <inheritdoc/>
    public bool ContainsKey(string key) => Collected.ContainsKey(key);
    /// <inheritdoc/>
    public bool TryGetValue(string key, out Tensor value) => Collected.TryGetValue(key, out value!);
    /// <inheritdoc/>
    public IEnumerable<string> Keys => Collected.Keys;
    /// <inheritdoc/>
    public IEnumerable<Tensor> Values => Collected.Values;
    /// <inheritdoc/>
    public int Count => Collected.Count;
    /// <inheritdoc/>
    public IEnumerator<KeyValuePair<string, Tensor>> GetEnumerator() => Collected.GetEnumerator();

    private Dictionary<string, Tensor> Collected
    {
        get
        {
            CollectGradients();
            return _tensors;
        }
    }
    System.Collections.IEnumerator System.Collections.IEnumerable.GetEnumerator() => GetEnumerator();

    /// <summary>Frees every cached tensor.</summary>
    public void Dispose()
    {
        _disposed = true;
        _slots?.Dispose();  // hooks still attached to a live graph keep the native table until the graph goes
        _slots = null;
        foreach (var t in _tensors.Values) t.Dispose();
        _tensors.Clear();
    }
}
