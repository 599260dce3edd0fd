using System.Runtime.InteropServices;

namespace SharpLens.Tensors.Native;

internal enum UnaryOp
{
    Neg = 0, Abs, Exp, Log, Sqrt, Rsqrt, Tanh, Sigmoid, Relu, Gelu, GeluTanh, Silu, IsFinite, LogicalNot, Sin, Cos,
    Reciprocal, Sign, Floor, Ceil, Round, Erf, IsNan, Square, Log1p,
}

internal enum BinaryOp
{
    Add = 0, Sub, Mul, Div, Pow, Maximum, Minimum, Eq, Ne, Lt, Le, Gt, Ge, LogicalAnd, LogicalOr, Matmul, Bmm,
    Remainder, RSub, RDiv, RPow,
}

internal enum ReduceOp { Sum = 0, Mean, Amax, Amin, Prod, LogSumExp, Any, All }

internal static unsafe partial class NativeMethods
{
    [LibraryImport(Library)] internal static partial int sl_tensor_unary(UnaryOp op, TensorHandle t, out nint result);
    [LibraryImport(Library)] internal static partial int sl_tensor_binary(BinaryOp op, TensorHandle a, TensorHandle b, out nint result);
    [LibraryImport(Library)] internal static partial int sl_tensor_binary_scalar(BinaryOp op, TensorHandle a, double scalar, out nint result);
    [LibraryImport(Library, EntryPoint = "sl_tensor_binary_")] internal static partial int sl_tensor_binary_inplace(BinaryOp op, TensorHandle a, TensorHandle b);
    [LibraryImport(Library, EntryPoint = "sl_tensor_binary_scalar_")] internal static partial int sl_tensor_binary_scalar_inplace(BinaryOp op, TensorHandle a, double scalar);
    [LibraryImport(Library)] internal static partial int sl_tensor_clamp(TensorHandle t, int hasMin, double min, int hasMax, double max, out nint result);
    [LibraryImport(Library, EntryPoint = "sl_tensor_copy_")] internal static partial int sl_tensor_copy_inplace(TensorHandle dst, TensorHandle src);
    [LibraryImport(Library, EntryPoint = "sl_tensor_fill_")] internal static partial int sl_tensor_fill_inplace(TensorHandle t, double value);

    [LibraryImport(Library)] internal static partial int sl_tensor_reduce(ReduceOp op, TensorHandle t, long* dims, int ndims, int keepdim, out nint result);
    [LibraryImport(Library)] internal static partial int sl_tensor_minmax_dim(int isMax, TensorHandle t, long dim, int keepdim, out nint values, out nint indices);
    [LibraryImport(Library)] internal static partial int sl_tensor_argminmax(int isMax, TensorHandle t, int hasDim, long dim, int keepdim, out nint result);
    [LibraryImport(Library)] internal static partial int sl_tensor_var_std(int isStd, TensorHandle t, long* dims, int ndims, long correction, int keepdim, out nint result);
    [LibraryImport(Library)] internal static partial int sl_tensor_norm(TensorHandle t, double p, long* dims, int ndims, int keepdim, out nint result);
    [LibraryImport(Library, StringMarshalling = StringMarshalling.Utf8)] internal static partial int sl_tensor_einsum(string equation, nint* tensors, int count, out nint result);
    [LibraryImport(Library)] internal static partial int sl_tensor_svd(TensorHandle t, int fullMatrices, out nint u, out nint s, out nint vh);
    [LibraryImport(Library)] internal static partial int sl_tensor_topk(TensorHandle t, long k, long dim, int largest, int sorted, out nint values, out nint indices);
    [LibraryImport(Library)] internal static partial int sl_tensor_sort(TensorHandle t, long dim, int descending, int stable, out nint values, out nint indices);
    [LibraryImport(Library)] internal static partial int sl_tensor_allclose(TensorHandle a, TensorHandle b, double rtol, double atol, int equalNan, out int value);
    [LibraryImport(Library)] internal static partial int sl_tensor_equal(TensorHandle a, TensorHandle b, out int value);

    [LibraryImport(Library)] internal static partial int sl_tensor_softmax(TensorHandle t, long dim, int dtype, out nint result);
    [LibraryImport(Library)] internal static partial int sl_tensor_cumsum(TensorHandle t, long dim, out nint result);
    [LibraryImport(Library)] internal static partial int sl_tensor_log_softmax(TensorHandle t, long dim, int dtype, out nint result);
    [LibraryImport(Library)] internal static partial int sl_tensor_layer_norm(TensorHandle t, long* normalizedShape, int ndim, TensorHandle weight, TensorHandle bias, double eps, out nint result);
    [LibraryImport(Library)] internal static partial int sl_tensor_linear(TensorHandle x, TensorHandle weight, TensorHandle bias, int layout, out nint result);
    [LibraryImport(Library)] internal static partial int sl_tensor_cross_entropy(TensorHandle logits, TensorHandle target, TensorHandle weight, int reduction, long ignoreIndex, double labelSmoothing, out nint result);
}
