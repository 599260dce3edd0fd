namespace SharpLens;

/// <summary>
/// A built-in hook: caching an activation or its gradient, replacing an activation with a given tensor, or ablating
/// selected heads and positions. Built-ins run without calling a user delegate, and gradient caching runs entirely
/// natively (no managed callback during backward); only user callbacks cross into managed code. Add one with
/// <see cref="HookedModel.AddHook(string, HookAction, bool)"/>. Replace and Ablate keep their own reference to the
/// tensor they were given (the caller may dispose theirs); dispose the action to free it once it is no longer attached.
/// </summary>
public abstract class HookAction : IDisposable
{
    private protected HookAction() { }

    /// <summary>True for actions that act on the gradient during backward rather than on the activation.</summary>
    internal virtual bool IsBackward => false;

    /// <summary>Stores the activation (detached; no copy) in <paramref name="cache"/> under the hook point's name.</summary>
    public static HookAction Cache(ActivationCache cache) => new CacheAction(cache ?? throw new ArgumentNullException(nameof(cache)));

    /// <summary>Stores the gradient at the hook point in <paramref name="cache"/> under <c>&lt;name&gt;_grad</c>, natively during backward.</summary>
    public static HookAction CacheGradient(ActivationCache cache) => new CacheGradientAction(cache ?? throw new ArgumentNullException(nameof(cache)));

    /// <summary>
    /// Replaces the activation with <paramref name="value"/> (same shape, dtype and device; checked when it fires). The
    /// action keeps its own reference to the tensor, so the caller may dispose theirs.
    /// </summary>
    public static HookAction Replace(Tensor value) => new ReplaceAction(value ?? throw new ArgumentNullException(nameof(value)));

    /// <summary>
    /// Sets the selected <paramref name="heads"/> and <paramref name="positions"/> of the activation to zero, or to
    /// <paramref name="mean"/> (broadcast to the activation's shape; e.g. the activation's mean over a reference batch,
    /// [pos, head, d_head] for hook_z). Null selects all. Head and position dimensions follow TransformerLens's layouts:
    /// [batch, pos, head, ...] for q/k/v/z/result and the per-head inputs, [batch, head, query_pos, key_pos] for
    /// attn_scores and pattern (positions are query positions), [batch, pos, ...] elsewhere (no heads there).
    /// </summary>
    public static HookAction Ablate(IReadOnlyList<long>? heads = null, IReadOnlyList<long>? positions = null, Tensor? mean = null) =>
        new AblateAction(heads?.ToArray(), positions?.ToArray(), mean);

    /// <summary>Applies a forward action; returns the (possibly replaced) activation.</summary>
    internal virtual Tensor Apply(Tensor activation, HookPoint hookPoint) => activation;

    /// <summary>Frees the tensor the action holds (Replace, Ablate with a mean); a hook point that fires it afterwards fails.</summary>
    public void Dispose() => Release();

    private protected virtual void Release() { }

    private sealed class CacheAction(ActivationCache cache) : HookAction
    {
        internal override Tensor Apply(Tensor activation, HookPoint hookPoint)
        {
            cache.Store(hookPoint.Name, activation.Detach());
            return activation;
        }
    }

    internal sealed class CacheGradientAction(ActivationCache cache) : HookAction
    {
        internal override bool IsBackward => true;

        public ActivationCache Cache { get; } = cache;
    }

    private sealed class ReplaceAction : HookAction
    {
        private readonly Tensor _value;

        public ReplaceAction(Tensor value) => _value = value.Alias().DetachFromScope();

        internal override Tensor Apply(Tensor activation, HookPoint hookPoint) =>
            _value.IsDisposed ? throw new ObjectDisposedException(nameof(HookAction), "this Replace action was disposed; its tensor is gone") : _value;

        private protected override void Release() => _value.Dispose();
    }

    /// <summary>
    /// Where heads and positions sit in the activation of hook point <paramref name="name"/>: [batch, head, query, key] for
    /// scores and patterns, [batch, pos, head, ...] for per-head activations, [batch, pos, ...] (no head, -1) otherwise.
    /// Refuses heads where there is no head dimension and activations without a position dimension, naming the hook point.
    /// </summary>
    internal static (int HeadDim, int PosDim) AblationDims(string name, Tensor activation, bool headsGiven)
    {
        var (headDim, posDim) = name.EndsWith("hook_attn_scores", StringComparison.Ordinal) || name.EndsWith("hook_pattern", StringComparison.Ordinal) ? (1, 2)
            : activation.Dim == 4 ? (2, 1)
            : (-1, 1);
        if (headDim < 0 && headsGiven)
            throw new ArgumentException($"'{name}' has no head dimension (shape {Tensor.FormatShape(activation.Shape)}); ablate positions only there");
        if (activation.Dim < 2)
            throw new ArgumentException($"'{name}' has shape {Tensor.FormatShape(activation.Shape)}, which has no position dimension");
        return (headDim, posDim);
    }

    private sealed class AblateAction(long[]? heads, long[]? positions, Tensor? mean) : HookAction
    {
        private readonly Tensor? _mean = mean?.Alias().DetachFromScope();

        internal override Tensor Apply(Tensor activation, HookPoint hookPoint)
        {
            var (headDim, posDim) = AblationDims(hookPoint.Name, activation, heads is not null);
            return TransformerOps.Ablate(activation, headDim, heads, posDim, positions, _mean);
        }

        private protected override void Release() => _mean?.Dispose();
    }
}
