using System.Runtime.InteropServices;
using SharpLens.Tensors.Native;

namespace SharpLens.Tensors;

public sealed unsafe partial class Tensor
{
    /// <summary>Whether autograd records operations on this tensor. Settable on leaves.</summary>
    public bool RequiresGrad
    {
        get
        {
            NativeStatus.Check(NativeMethods.sl_tensor_requires_grad(Handle, out var v));
            return v != 0;
        }
        set => NativeStatus.Check(NativeMethods.sl_tensor_set_requires_grad(Handle, value ? 1 : 0));
    }

    /// <summary>Sets <see cref="RequiresGrad"/> and returns this tensor, for chaining.</summary>
    public Tensor RequiresGrad_(bool requiresGrad = true)
    {
        RequiresGrad = requiresGrad;
        return this;
    }

    /// <summary>True for tensors created by the user rather than by a differentiable operation.</summary>
    public bool IsLeaf
    {
        get
        {
            NativeStatus.Check(NativeMethods.sl_tensor_is_leaf(Handle, out var v));
            return v != 0;
        }
    }

    /// <summary>
    /// The accumulated gradient of a leaf (a new handle each time, sharing the gradient's storage), or
    /// null when none has been computed. Setting it replaces (or with null clears) the gradient.
    /// </summary>
    public Tensor? Grad
    {
        get => WrapOptional(NativeMethods.sl_tensor_grad(Handle, out var r), r);
        set => NativeStatus.Check(NativeMethods.sl_tensor_set_grad(Handle, HandleOrNull(value)));
    }

    /// <summary>
    /// Computes gradients of this tensor w.r.t. the graph's leaves and accumulates them in their <see cref="Grad"/>.
    /// A one-element tensor needs no <paramref name="gradient"/>. An exception thrown by a gradient hook reaches
    /// the caller here, with its original type.
    /// </summary>
    public void Backward(Tensor? gradient = null, bool retainGraph = false, bool createGraph = false) =>
        NativeStatus.Check(NativeMethods.sl_tensor_backward(Handle, HandleOrNull(gradient), retainGraph || createGraph ? 1 : 0, createGraph ? 1 : 0));

    /// <summary>A tensor sharing this one's storage but cut off from the autograd graph.</summary>
    public Tensor Detach() => Wrap(NativeMethods.sl_tensor_detach(Handle, out var r), r);

    /// <summary>
    /// Registers a gradient hook (libtorch register_hook): <paramref name="hook"/> receives the gradient
    /// flowing into this tensor during backward and returns a replacement of the same shape, or null to
    /// keep it. The gradient passed in is owned like any new tensor (by the current scope, if one is
    /// open on the thread running backward). Dispose the returned handle to remove the hook.
    /// </summary>
    public GradHookHandle RegisterHook(Func<Tensor, Tensor?> hook)
    {
        ArgumentNullException.ThrowIfNull(hook);
        var state = GCHandle.Alloc(new GradHookState(hook));
        // From here on native code owns the GCHandle and frees it through the release callback, also on failure.
        NativeStatus.Check(NativeMethods.sl_tensor_register_hook(Handle, &GradHookState.Invoke, GCHandle.ToIntPtr(state), out var registered));
        return new GradHookHandle(registered);
    }

    /// <summary>Registers a hook that only observes the gradient.</summary>
    public GradHookHandle RegisterHook(Action<Tensor> hook)
    {
        ArgumentNullException.ThrowIfNull(hook);
        return RegisterHook(g => { hook(g); return null; });
    }
}

/// <summary>
/// Identifies a gradient hook; <see cref="Remove"/> or <see cref="Dispose"/> removes it. It does not keep
/// the tensor alive: when the tensor's autograd state dies the hook goes with it. Dropping this object
/// without disposing it leaves the hook in place.
/// </summary>
public sealed class GradHookHandle : IDisposable
{
    private nint _hook;

    internal GradHookHandle(nint hook) => _hook = hook;

    /// <summary>Removes the hook (idempotent; a no-op once the tensor is gone).</summary>
    public void Remove()
    {
        var h = Interlocked.Exchange(ref _hook, 0);
        if (h == 0) return;
        try
        {
            NativeStatus.Check(NativeMethods.sl_hook_remove(h));
        }
        finally
        {
            NativeMethods.sl_hook_free(h);
            GC.SuppressFinalize(this);
        }
    }

    /// <inheritdoc/>
    public void Dispose() => Remove();

    /// <summary>
    /// Keeps the hook for the rest of its tensor's life and frees this handle's native record now (so no
    /// finalizer is left to run); the hook can no longer be removed through this handle.
    /// </summary>
    public void Forget()
    {
        var h = Interlocked.Exchange(ref _hook, 0);
        if (h != 0) NativeMethods.sl_hook_free(h);
        GC.SuppressFinalize(this);
    }

    /// <summary>Frees the native record only: an abandoned handle must not remove a hook the user still relies on.</summary>
    ~GradHookHandle()
    {
        var h = Interlocked.Exchange(ref _hook, 0);
        if (h != 0) NativeMethods.sl_hook_free(h);
    }
}

/// <summary>What native code holds (through a GCHandle) for one gradient hook; released by native code.</summary>
internal sealed unsafe class GradHookState : IDisposable
{
    private static long _live;
    private readonly Func<Tensor, Tensor?> hook;
    private int _disposed;

    internal GradHookState(Func<Tensor, Tensor?> hook)
    {
        this.hook = hook;
        Interlocked.Increment(ref _live);
    }

    /// <summary>Hook states native code still holds; tests use it to prove hooks are released.</summary>
    internal static long Live => Interlocked.Read(ref _live);

    /// <summary>Called through the release callback when libtorch drops the hook.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 0) Interlocked.Decrement(ref _live);
    }

    [UnmanagedCallersOnly]
    internal static int Invoke(nint userData, nint grad, nint* replacement, long* exceptionId)
    {
        try
        {
            var state = (GradHookState)GCHandle.FromIntPtr(userData).Target!;
            var gradient = new Tensor(grad);
            var result = state.Invoke(gradient);
            if (result is not null)
            {
                // Native code takes its own handle; the caller keeps theirs.
                NativeStatus.Check(NativeMethods.sl_tensor_share(result.Handle, out var shared));
                *replacement = shared;
            }
            return 0;
        }
        catch (Exception e)
        {
            *exceptionId = NativeStatus.Stash(e);
            return 1;
        }
    }

    private Tensor? Invoke(Tensor gradient)
    {
        var result = hook(gradient);
        if (result is not null && !result.Shape.AsSpan().SequenceEqual(gradient.Shape))
            throw new InvalidOperationException(
                $"a gradient hook returned shape {Tensor.FormatShape(result.Shape)} but the gradient has shape {Tensor.FormatShape(gradient.Shape)}");
        return result;
    }
}
