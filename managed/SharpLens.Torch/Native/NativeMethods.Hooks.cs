using System.Runtime.InteropServices;

namespace SharpLens.Tensors.Native;

internal static unsafe partial class NativeMethods
{
    [LibraryImport(Library)] internal static partial int sl_slots_new(int count, out nint slots);
    [LibraryImport(Library)] internal static partial int sl_slots_free(nint slots);
    [LibraryImport(Library)] internal static partial int sl_slots_capture_grad(GradientSlotsHandle slots, int slot, TensorHandle t);
    [LibraryImport(Library)] internal static partial int sl_slots_version(GradientSlotsHandle slots, out long version);
    [LibraryImport(Library)] internal static partial int sl_slots_take(GradientSlotsHandle slots, int slot, out nint tensor);
    [LibraryImport(Library)] internal static partial int sl_ablate(TensorHandle x, int headDim, long* heads, int nHeads, int posDim, long* positions, int nPositions, TensorHandle value, out nint result);
}

/// <summary>Owns one native slot table; native gradient hooks keep their own reference, so freeing it early is safe.</summary>
internal sealed class GradientSlotsHandle : SafeHandle
{
    internal GradientSlotsHandle(nint handle) : base(0, ownsHandle: true) => SetHandle(handle);

    public override bool IsInvalid => handle == 0;

    protected override bool ReleaseHandle() => NativeMethods.sl_slots_free(handle) == 0;
}
