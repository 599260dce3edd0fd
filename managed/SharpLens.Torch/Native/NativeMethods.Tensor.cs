using System.Runtime.InteropServices;

namespace SharpLens.Tensors.Native;

internal static unsafe partial class NativeMethods
{
    [LibraryImport(Library)] internal static partial int sl_tensor_free(nint t);
    [LibraryImport(Library)] internal static partial int sl_tensor_share(TensorHandle t, out nint result);
    [LibraryImport(Library)] internal static partial int sl_tensor_ndim(TensorHandle t, out long value);
    [LibraryImport(Library)] internal static partial int sl_tensor_shape(TensorHandle t, long* shape);
    [LibraryImport(Library)] internal static partial int sl_tensor_strides(TensorHandle t, long* strides);
    [LibraryImport(Library)] internal static partial int sl_tensor_numel(TensorHandle t, out long value);
    [LibraryImport(Library)] internal static partial int sl_tensor_dtype(TensorHandle t, out int value);
    [LibraryImport(Library)] internal static partial int sl_tensor_device(TensorHandle t, out int deviceType, out int deviceIndex);
    [LibraryImport(Library)] internal static partial int sl_tensor_is_contiguous(TensorHandle t, out int value);
    [LibraryImport(Library)] internal static partial int sl_tensor_data_ptr(TensorHandle t, out nint value);
    [LibraryImport(Library)] internal static partial int sl_tensor_copy_to_buffer(TensorHandle t, void* dst, long nbytes);
    [LibraryImport(Library)] internal static partial int sl_tensor_item_double(TensorHandle t, out double value);
    [LibraryImport(Library)] internal static partial int sl_tensor_item_int64(TensorHandle t, out long value);
    [LibraryImport(Library)] internal static partial int sl_tensor_is_same_storage(TensorHandle a, TensorHandle b, out int value);

    [LibraryImport(Library)] internal static partial int sl_tensor_from_data(void* data, long nbytes, long* shape, int ndim, int dtype, out nint result);
    [LibraryImport(Library)] internal static partial int sl_tensor_from_blob(nint data, long* shape, int ndim, int dtype, nint owner, out nint result);
    [LibraryImport(Library)] internal static partial int sl_tensor_empty(long* shape, int ndim, int dtype, int deviceType, int deviceIndex, out nint result);
    [LibraryImport(Library)] internal static partial int sl_tensor_full(long* shape, int ndim, double value, int dtype, int deviceType, int deviceIndex, out nint result);
    [LibraryImport(Library)] internal static partial int sl_tensor_arange(double start, double end, double step, int dtype, int deviceType, int deviceIndex, out nint result);
    [LibraryImport(Library)] internal static partial int sl_tensor_random(int kind, long* shape, int ndim, int dtype, int deviceType, int deviceIndex, nint generator, out nint result);
    [LibraryImport(Library)] internal static partial int sl_tensor_randint(long low, long high, long* shape, int ndim, int dtype, int deviceType, int deviceIndex, nint generator, out nint result);
    [LibraryImport(Library)] internal static partial int sl_tensor_to(TensorHandle t, int dtype, int deviceType, int deviceIndex, int copy, out nint result);
    [LibraryImport(Library)] internal static partial int sl_tensor_clone(TensorHandle t, out nint result);

    [LibraryImport(Library)] internal static partial int sl_tensor_reshape(TensorHandle t, long* shape, int ndim, out nint result);
    [LibraryImport(Library)] internal static partial int sl_tensor_view(TensorHandle t, long* shape, int ndim, out nint result);
    [LibraryImport(Library)] internal static partial int sl_tensor_permute(TensorHandle t, long* dims, int ndim, out nint result);
    [LibraryImport(Library)] internal static partial int sl_tensor_transpose(TensorHandle t, long dim0, long dim1, out nint result);
    [LibraryImport(Library)] internal static partial int sl_tensor_narrow(TensorHandle t, long dim, long start, long length, out nint result);
    [LibraryImport(Library)] internal static partial int sl_tensor_select(TensorHandle t, long dim, long index, out nint result);
    [LibraryImport(Library)] internal static partial int sl_tensor_slice(TensorHandle t, long dim, long start, long end, long step, out nint result);
    [LibraryImport(Library)] internal static partial int sl_tensor_unsqueeze(TensorHandle t, long dim, out nint result);
    [LibraryImport(Library)] internal static partial int sl_tensor_squeeze(TensorHandle t, int hasDim, long dim, out nint result);
    [LibraryImport(Library)] internal static partial int sl_tensor_expand(TensorHandle t, long* shape, int ndim, out nint result);
    [LibraryImport(Library)] internal static partial int sl_tensor_contiguous(TensorHandle t, out nint result);
    [LibraryImport(Library)] internal static partial int sl_tensor_flatten(TensorHandle t, long startDim, long endDim, out nint result);
    [LibraryImport(Library)] internal static partial int sl_tensor_index_select(TensorHandle t, long dim, TensorHandle index, out nint result);
    [LibraryImport(Library)] internal static partial int sl_tensor_gather(TensorHandle t, long dim, TensorHandle index, out nint result);
    [LibraryImport(Library)] internal static partial int sl_tensor_scatter(TensorHandle t, long dim, TensorHandle index, TensorHandle src, out nint result);
    [LibraryImport(Library)] internal static partial int sl_tensor_masked_fill(TensorHandle t, TensorHandle mask, double value, out nint result);
    [LibraryImport(Library)] internal static partial int sl_tensor_where(TensorHandle condition, TensorHandle a, TensorHandle b, out nint result);
    [LibraryImport(Library)] internal static partial int sl_tensor_cat(nint* tensors, int count, long dim, out nint result);
    [LibraryImport(Library)] internal static partial int sl_tensor_stack(nint* tensors, int count, long dim, out nint result);
    [LibraryImport(Library)] internal static partial int sl_tensor_split_sizes(TensorHandle t, long* sizes, int count, long dim, nint* outs);
}
