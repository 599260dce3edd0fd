using System.Runtime.InteropServices;

namespace SharpLens.Tensors.Native;

internal static unsafe partial class NativeMethods
{
    [LibraryImport(Library)] internal static partial int sl_tensor_requires_grad(TensorHandle t, out int value);
    [LibraryImport(Library)] internal static partial int sl_tensor_set_requires_grad(TensorHandle t, int requiresGrad);
    [LibraryImport(Library)] internal static partial int sl_tensor_is_leaf(TensorHandle t, out int value);
    [LibraryImport(Library)] internal static partial int sl_tensor_grad(TensorHandle t, out nint result);
    [LibraryImport(Library)] internal static partial int sl_tensor_set_grad(TensorHandle t, TensorHandle grad);
    [LibraryImport(Library)] internal static partial int sl_tensor_backward(TensorHandle t, TensorHandle gradient, int retainGraph, int createGraph);
    [LibraryImport(Library)] internal static partial int sl_tensor_detach(TensorHandle t, out nint result);
    [LibraryImport(Library)] internal static partial int sl_autograd_grad(nint* outputs, int nOutputs, nint* gradOutputs, nint* inputs, int nInputs, int retainGraph, int createGraph, int allowUnused, nint* grads);
    [LibraryImport(Library)] internal static partial int sl_tensor_register_hook(TensorHandle t, delegate* unmanaged<nint, nint, nint*, long*, int> fn, nint userData, out nint hook);
    [LibraryImport(Library)] internal static partial int sl_hook_remove(nint hook);
    [LibraryImport(Library)] internal static partial int sl_hook_free(nint hook);

}
