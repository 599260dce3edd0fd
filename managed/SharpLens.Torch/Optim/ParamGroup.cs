using SharpLens.Tensors.Native;

namespace SharpLens.Tensors.Optim;

/// <summary>
/// A set of parameters that share optimizer options: the .NET form of one of torch.optim's
/// <c>param_groups</c> dicts. An option left null falls back to the optimizer's default when the group
/// is added, like a key missing from the dict.
/// </summary>
/// <remarks>
/// Once an optimizer owns the group (it appears in <see cref="Optimizer.ParamGroups"/>), every option
/// holds its effective value and setting one writes through to the native optimizer at once, so
/// <c>group.Lr *= 0.1</c> is how a learning-rate scheduler works, as with <c>group['lr']</c> in PyTorch.
/// Setting an owned option to null restores the optimizer's default. Options that the owning optimizer
/// does not use (Momentum for AdamW, Betas for SGD, ...) read null and cannot be set, so a misspelt
/// configuration fails instead of being ignored silently.
/// </remarks>
public sealed class ParamGroup
{
    private double? _lr, _momentum, _dampening, _weightDecay, _eps;
    private (double Beta1, double Beta2)? _betas;
    private bool? _nesterov, _amsgrad, _maximize;
    private Optimizer? _owner;

    /// <summary>Creates a group of <paramref name="parameters"/> (enumerated once, now) with every option unset.</summary>
    /// <exception cref="ArgumentNullException">The sequence is null.</exception>
    /// <exception cref="ArgumentException">An element is null.</exception>
    public ParamGroup(IEnumerable<Tensor> parameters)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        // Snapshot: a lazy sequence must not be enumerated again (it might create new tensors each time).
        var list = parameters.ToArray();
        for (var i = 0; i < list.Length; i++)
            if (list[i] is null) throw new ArgumentException($"parameter {i} is null", nameof(parameters));
        Parameters = list;
    }

    /// <summary>
    /// The tensors this group updates, as the caller passed them. The optimizer holds its own references to
    /// them, so disposing these objects does not stop it; they are kept here for identification only.
    /// </summary>
    public IReadOnlyList<Tensor> Parameters { get; }

    /// <summary>The optimizer that owns this group, or null before it is added to one.</summary>
    public Optimizer? Owner => _owner;

    /// <summary>Learning rate (torch <c>lr</c>).</summary>
    public double? Lr { get => _lr; set => Set(ref _lr, value, GroupOption.Lr); }

    /// <summary>SGD momentum factor (torch <c>momentum</c>).</summary>
    public double? Momentum { get => _momentum; set => Set(ref _momentum, value, GroupOption.Momentum); }

    /// <summary>SGD dampening of the momentum (torch <c>dampening</c>).</summary>
    public double? Dampening { get => _dampening; set => Set(ref _dampening, value, GroupOption.Dampening); }

    /// <summary>Weight decay: an L2 term added to the gradient for SGD, decoupled shrinking of the parameter for AdamW.</summary>
    public double? WeightDecay { get => _weightDecay; set => Set(ref _weightDecay, value, GroupOption.WeightDecay); }

    /// <summary>SGD Nesterov momentum (torch <c>nesterov</c>).</summary>
    public bool? Nesterov { get => _nesterov; set => Set(ref _nesterov, value, GroupOption.Nesterov); }

    /// <summary>AdamW decay rates of the first and second moment estimates (torch <c>betas</c>).</summary>
    public (double Beta1, double Beta2)? Betas { get => _betas; set => Set(ref _betas, value, GroupOption.Betas); }

    /// <summary>AdamW term added to the denominator for numerical stability (torch <c>eps</c>).</summary>
    public double? Eps { get => _eps; set => Set(ref _eps, value, GroupOption.Eps); }

    /// <summary>AdamW: use the running maximum of the second moment (torch <c>amsgrad</c>).</summary>
    public bool? Amsgrad { get => _amsgrad; set => Set(ref _amsgrad, value, GroupOption.Amsgrad); }

    /// <summary>Maximise the objective instead of minimising it (torch <c>maximize</c>).</summary>
    public bool? Maximize { get => _maximize; set => Set(ref _maximize, value, GroupOption.Maximize); }

    /// <summary>Options that have a value in this group.</summary>
    internal GroupOption SetOptions =>
        (_lr.HasValue ? GroupOption.Lr : 0) | (_momentum.HasValue ? GroupOption.Momentum : 0) |
        (_dampening.HasValue ? GroupOption.Dampening : 0) | (_weightDecay.HasValue ? GroupOption.WeightDecay : 0) |
        (_nesterov.HasValue ? GroupOption.Nesterov : 0) | (_betas.HasValue ? GroupOption.Betas : 0) |
        (_eps.HasValue ? GroupOption.Eps : 0) | (_amsgrad.HasValue ? GroupOption.Amsgrad : 0) |
        (_maximize.HasValue ? GroupOption.Maximize : 0);

    private void Set<T>(ref T? field, T? value, GroupOption option) where T : struct
    {
        if (_owner is null)
        {
            field = value;
            return;
        }
        _owner.CheckSupported(option, value.HasValue);
        // Native validation decides whether the new value is acceptable; keep the old one if it is not,
        // so the managed view never disagrees with what the native optimizer uses.
        var old = field;
        field = value;
        try
        {
            _owner.WriteGroupOptions(this);
        }
        catch
        {
            field = old;
            throw;
        }
    }

    /// <summary>
    /// The effective native options: this group's values, else <paramref name="defaults"/>'s. Throws when a
    /// required option (SGD's lr) has neither.
    /// </summary>
    internal OptimOptions Resolve(ParamGroup defaults, string optimizerName)
    {
        var lr = _lr ?? defaults._lr ?? throw new ArgumentException(
            $"a parameter group of {optimizerName} has no lr and the optimizer was given no default lr");
        var betas = _betas ?? defaults._betas ?? (0, 0);
        return new OptimOptions
        {
            Lr = lr,
            Momentum = _momentum ?? defaults._momentum ?? 0,
            Dampening = _dampening ?? defaults._dampening ?? 0,
            WeightDecay = _weightDecay ?? defaults._weightDecay ?? 0,
            Beta1 = betas.Beta1,
            Beta2 = betas.Beta2,
            Eps = _eps ?? defaults._eps ?? 0,
            Nesterov = (_nesterov ?? defaults._nesterov ?? false) ? 1 : 0,
            Amsgrad = (_amsgrad ?? defaults._amsgrad ?? false) ? 1 : 0,
            Maximize = (_maximize ?? defaults._maximize ?? false) ? 1 : 0,
        };
    }

    /// <summary>Throws unless the group is free: a group belongs to at most one optimizer, as its options write through to it.</summary>
    internal void EnsureUnowned(Optimizer candidate)
    {
        if (_owner is null) return;
        throw new ArgumentException(ReferenceEquals(_owner, candidate)
            ? "this parameter group was already added to this optimizer"
            : "this parameter group already belongs to another optimizer; create a new ParamGroup");
    }

    /// <summary>
    /// Called once the native optimizer has accepted the group: from now on the options write through, and
    /// the supported ones hold their effective values (defaults filled in) so the group shows what is used.
    /// </summary>
    internal void Adopt(Optimizer owner, in OptimOptions effective, GroupOption supported)
    {
        _owner = owner;
        Fill(effective, supported);
    }

    /// <summary>Stores the effective values of the supported options (the others stay null).</summary>
    internal void Fill(in OptimOptions o, GroupOption supported)
    {
        _lr = Pick(supported, GroupOption.Lr, o.Lr);
        _momentum = Pick(supported, GroupOption.Momentum, o.Momentum);
        _dampening = Pick(supported, GroupOption.Dampening, o.Dampening);
        _weightDecay = Pick(supported, GroupOption.WeightDecay, o.WeightDecay);
        _nesterov = Pick(supported, GroupOption.Nesterov, o.Nesterov != 0);
        _betas = Pick(supported, GroupOption.Betas, (o.Beta1, o.Beta2));
        _eps = Pick(supported, GroupOption.Eps, o.Eps);
        _amsgrad = Pick(supported, GroupOption.Amsgrad, o.Amsgrad != 0);
        _maximize = Pick(supported, GroupOption.Maximize, o.Maximize != 0);
    }

    private static T? Pick<T>(GroupOption supported, GroupOption option, T value) where T : struct =>
        (supported & option) != 0 ? value : null;
}

/// <summary>The per-group options, as flags, to say which ones an optimizer uses and which ones a group sets.</summary>
[Flags]
internal enum GroupOption
{
    Lr = 1 << 0,
    Momentum = 1 << 1,
    Dampening = 1 << 2,
    WeightDecay = 1 << 3,
    Nesterov = 1 << 4,
    Betas = 1 << 5,
    Eps = 1 << 6,
    Amsgrad = 1 << 7,
    Maximize = 1 << 8,
}
