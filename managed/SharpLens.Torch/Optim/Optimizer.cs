using System.Runtime.InteropServices;
using SharpLens.Tensors.Native;

namespace SharpLens.Tensors.Optim;

/// <summary>
/// Base of the optimizers (torch.optim.Optimizer). The update itself runs natively: <see cref="Step"/> is
/// one native call over every parameter of every group, with torch.optim's single-tensor semantics.
/// </summary>
/// <remarks>
/// The native optimizer holds its own references to the parameter tensors, so the caller may dispose
/// the <see cref="Tensor"/> objects it passed in (or let a <see cref="DisposeScope"/> do it): the optimizer
/// keeps updating the parameters, and any other handle to them (an alias, a module's field) sees the
/// updates. Dispose the optimizer to release those references and its state (momentum buffers, moment
/// estimates); a finalizer frees them if it is dropped undisposed. Like torch.optim, an optimizer is not
/// meant to be used from several threads at once, but disposing it while another thread steps is safe.
/// </remarks>
public abstract class Optimizer : IDisposable
{
    private readonly OptimizerHandle _handle;
    private readonly List<ParamGroup> _groups = [];
    private readonly ParamGroup _defaults;
    private readonly GroupOption _supported;

    /// <summary>Creates the native optimizer and adds <paramref name="groups"/>, each completed from <paramref name="defaults"/>.</summary>
    private protected Optimizer(int kind, GroupOption supported, ParamGroup defaults, IEnumerable<ParamGroup> groups)
    {
        ArgumentNullException.ThrowIfNull(groups);
        _supported = supported;
        _defaults = defaults;
        var list = groups.ToList();
        // torch raises the same ValueError: an optimizer with nothing to optimize is always a mistake.
        if (list.Count == 0) throw new ArgumentException("optimizer got an empty parameter list", nameof(groups));
        var seen = new HashSet<ParamGroup>(ReferenceEqualityComparer.Instance);
        for (var i = 0; i < list.Count; i++)
        {
            if (list[i] is null) throw new ArgumentException($"parameter group {i} is null", nameof(groups));
            if (!seen.Add(list[i])) throw new ArgumentException($"parameter group {i} appears twice in the list", nameof(groups));
            list[i].EnsureUnowned(this);
        }

        NativeStatus.Check(NativeMethods.sl_optim_new(kind, out var raw));
        _handle = new OptimizerHandle(raw);
        try
        {
            // Groups are adopted only once all of them were accepted, so that after a failure none of the
            // caller's ParamGroup objects is left tied to an optimizer that does not exist.
            var effective = new OptimOptions[list.Count];
            for (var i = 0; i < list.Count; i++) effective[i] = AddNative(list[i], i);
            for (var i = 0; i < list.Count; i++)
            {
                list[i].Adopt(this, effective[i], _supported);
                _groups.Add(list[i]);
            }
        }
        catch
        {
            _handle.Dispose();
            throw;
        }
    }

    /// <summary>Wraps a plain parameter list as the one group of the list-of-tensors constructors.</summary>
    private protected static IEnumerable<ParamGroup> SingleGroup(IEnumerable<Tensor> parameters)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        var group = new ParamGroup(parameters);
        // torch raises the same ValueError: an optimizer with nothing to optimize is always a mistake.
        if (group.Parameters.Count == 0) throw new ArgumentException("optimizer got an empty parameter list", nameof(parameters));
        return [group];
    }

    /// <summary>The optimizer's name in messages ("SGD", "AdamW").</summary>
    private protected abstract string Name { get; }

    /// <summary>
    /// The parameter groups, in the order they were added (index = the group argument of <see cref="State"/>).
    /// Setting an option of a group (e.g. <see cref="ParamGroup.Lr"/>) takes effect at the next <see cref="Step"/>.
    /// </summary>
    public IReadOnlyList<ParamGroup> ParamGroups => _groups;

    /// <summary>
    /// Updates every parameter that has a gradient, in one native call; parameters whose <see cref="Tensor.Grad"/>
    /// is null are skipped and their state does not advance (torch.optim semantics). Runs without recording
    /// autograd history.
    /// </summary>
    public void Step()
    {
        using var lease = Lease();
        NativeStatus.Check(NativeMethods.sl_optim_step(lease.Handle));
    }

    /// <summary>
    /// Clears the gradients of all parameters. With <paramref name="setToNone"/> (the PyTorch 2.x default) the
    /// gradients become null, which frees their memory and lets <see cref="Step"/> skip them; otherwise they are
    /// detached and filled with zeros in place.
    /// </summary>
    public void ZeroGrad(bool setToNone = true)
    {
        using var lease = Lease();
        NativeStatus.Check(NativeMethods.sl_optim_zero_grad(lease.Handle, setToNone ? 1 : 0));
    }

    /// <summary>
    /// Adds a group (torch <c>add_param_group</c>), e.g. to train layers unfrozen later. Its unset options take
    /// the optimizer's defaults, and from now on its options write through to this optimizer.
    /// </summary>
    /// <exception cref="ArgumentException">
    /// The group already belongs to an optimizer, sets an option this optimizer does not use, has an invalid
    /// option, or holds a parameter that is not a floating-point leaf or already belongs to a group.
    /// </exception>
    public void AddParamGroup(ParamGroup group)
    {
        ArgumentNullException.ThrowIfNull(group);
        group.EnsureUnowned(this);
        var effective = AddNative(group, _groups.Count);
        group.Adopt(this, effective, _supported);
        _groups.Add(group);
    }

    /// <summary>
    /// One entry of a parameter's state, for inspection and tests: "step" (a float32 scalar), "exp_avg",
    /// "exp_avg_sq", "max_exp_avg_sq" (AdamW) or "momentum_buffer" (SGD); null while it does not exist yet
    /// (before the parameter's first step with a gradient). The result is a new handle to the state tensor
    /// itself, not a copy: dispose it when done, and do not write to it unless you mean to change the state.
    /// </summary>
    /// <param name="group">Index in <see cref="ParamGroups"/>.</param>
    /// <param name="index">Index of the parameter in that group's <see cref="ParamGroup.Parameters"/>.</param>
    /// <param name="name">The torch.optim state key.</param>
    /// <exception cref="ArgumentException">No such group, parameter or state name.</exception>
    public Tensor? State(int group, int index, string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        using var lease = Lease();
        return Tensor.WrapOptional(NativeMethods.sl_optim_state(lease.Handle, group, index, name, out var r), r);
    }

    /// <summary>True once the optimizer has been disposed.</summary>
    public bool IsDisposed => _handle.IsClosed;

    /// <summary>Releases the native optimizer, its state and its references to the parameters. Idempotent.</summary>
    public void Dispose()
    {
        _handle.Dispose();
        GC.SuppressFinalize(this);
    }

    /// <summary>The options the native optimizer uses for a group, read back from it (tests check write-through with it).</summary>
    internal OptimOptions NativeGroupOptions(int group)
    {
        using var lease = Lease();
        NativeStatus.Check(NativeMethods.sl_optim_get_group_options(lease.Handle, group, out var o));
        return o;
    }

    /// <summary>Throws when a group sets an option that this optimizer has no use for.</summary>
    internal void CheckSupported(GroupOption options, bool settingAValue = true)
    {
        var foreign = options & ~_supported;
        if (foreign != 0 && settingAValue)
            throw new ArgumentException($"{Name} has no option {foreign}; it uses {_supported}");
    }

    /// <summary>Writes an owned group's options (unset ones from the defaults) to the native optimizer, then shows the effective values.</summary>
    internal void WriteGroupOptions(ParamGroup group)
    {
        var index = _groups.IndexOf(group);
        var o = group.Resolve(_defaults, Name);
        using (var lease = Lease())
            NativeStatus.Check(NativeMethods.sl_optim_set_group_options(lease.Handle, index, o));
        group.Fill(o, _supported);
    }

    /// <summary>Validates a group on the managed side and hands it to the native optimizer as group <paramref name="index"/>.</summary>
    private unsafe OptimOptions AddNative(ParamGroup group, int index)
    {
        CheckSupported(group.SetOptions);
        var options = group.Resolve(_defaults, Name);
        using var lease = Lease();
        var handle = lease.Handle;
        // WithHandleArray keeps every tensor handle referenced for the duration of the call, so a concurrent
        // Dispose of a parameter cannot free it under native code.
        var status = Torch.WithHandleArray(group.Parameters, h =>
        {
            fixed (nint* p = h) return NativeMethods.sl_optim_add_group(handle, p, h.Length, options);
        });
        try
        {
            NativeStatus.Check(status);
        }
        catch (ArgumentException e)
        {
            // The native message says "parameter i"; name the group too, as a constructor may add several.
            throw new ArgumentException($"parameter group {index}: {e.Message}", e);
        }
        return options;
    }

    /// <summary>
    /// Keeps the native optimizer alive for one call: a Dispose racing with the call waits for it to finish
    /// instead of freeing the optimizer under native code.
    /// </summary>
    private HandleLease Lease()
    {
        if (_handle.IsClosed) throw new ObjectDisposedException(GetType().Name, "this optimizer was disposed");
        return new HandleLease(_handle);
    }

    private readonly ref struct HandleLease
    {
        private readonly SafeHandle _owner;

        internal HandleLease(SafeHandle owner)
        {
            var added = false;
            owner.DangerousAddRef(ref added);  // throws ObjectDisposedException if it was closed meanwhile
            _owner = owner;
            Handle = owner.DangerousGetHandle();
        }

        internal nint Handle { get; }

        public void Dispose() => _owner.DangerousRelease();
    }
}

/// <summary>
/// Owns one native sl_optimizer. Being a SafeHandle, its critical finalizer is the safety net that frees an
/// optimizer the user forgot to dispose, and reference counting defers the free past calls in progress.
/// </summary>
internal sealed class OptimizerHandle : SafeHandle
{
    internal OptimizerHandle(nint handle) : base(0, ownsHandle: true) => SetHandle(handle);

    public override bool IsInvalid => handle == 0;

    protected override bool ReleaseHandle() => NativeMethods.sl_optim_free(handle) == 0;
}
