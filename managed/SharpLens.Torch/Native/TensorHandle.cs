using System.Runtime.InteropServices;

namespace SharpLens.Tensors.Native;

/// <summary>
/// Owns one native at::Tensor* handle. Passing it to [LibraryImport] functions keeps it alive (and
/// un-freed) for the duration of the call, so a concurrent Dispose or finalizer can never free a
/// tensor that native code is using.
/// </summary>
internal sealed class TensorHandle : SafeHandle
{
    /// <summary>A handle standing for an absent optional tensor (NULL on the native side).</summary>
    internal static readonly TensorHandle Null = new(0, ownsHandle: false);

    internal TensorHandle(nint handle, bool ownsHandle = true) : base(0, ownsHandle)
    {
        SetHandle(handle);
    }

    public override bool IsInvalid => handle == 0;

    protected override bool ReleaseHandle() => NativeMethods.sl_tensor_free(handle) == 0;
}
