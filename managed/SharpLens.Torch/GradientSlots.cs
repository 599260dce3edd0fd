using SharpLens.Tensors.Native;

namespace SharpLens.Tensors;

/// <summary>
/// A fixed table of slots that native gradient hooks fill during backward, with no call into managed code:
/// <see cref="Capture"/> registers the hook, <see cref="Take"/> collects what it stored. Capturing the gradient
/// at hundreds of places therefore costs one stored reference each, not a managed callback each.
/// </summary>
public sealed class GradientSlots : IDisposable
{
    private readonly GradientSlotsHandle _handle;

    /// <summary>Creates a table of <paramref name="count"/> empty slots.</summary>
    public GradientSlots(int count)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        NativeStatus.Check(NativeMethods.sl_slots_new(count, out var raw));
        _handle = new GradientSlotsHandle(raw);
        Count = count;
    }

    /// <summary>Number of slots.</summary>
    public int Count { get; }

    /// <summary>
    /// When backward reaches <paramref name="tensor"/> (which must require grad), its gradient is stored, detached,
    /// in <paramref name="slot"/>, replacing what was there; the gradient itself flows on unchanged.
    /// </summary>
    public void Capture(Tensor tensor, int slot)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        NativeStatus.Check(NativeMethods.sl_slots_capture_grad(_handle, slot, tensor.Handle));
    }

    /// <summary>How many gradients the hooks have stored so far; unchanged since the last look means there is nothing new to take.</summary>
    public long Version
    {
        get
        {
            NativeStatus.Check(NativeMethods.sl_slots_version(_handle, out var version));
            return version;
        }
    }

    /// <summary>Removes and returns the gradient stored in <paramref name="slot"/> (owned by the caller's scope), or null if none arrived.</summary>
    public Tensor? Take(int slot)
    {
        NativeStatus.Check(NativeMethods.sl_slots_take(_handle, slot, out var raw));
        return raw == 0 ? null : new Tensor(raw);
    }

    /// <summary>Frees the table (hooks still attached to a live graph keep it alive until the graph goes).</summary>
    public void Dispose() => _handle.Dispose();
}
