using SharpLens.Tensors.Native;

namespace SharpLens.Tensors;

/// <summary>How a loss reduces over its elements.</summary>
public enum Reduction
{
    /// <summary>One value per element.</summary>
    None = 0,
    /// <summary>The mean (the default in PyTorch).</summary>
    Mean = 1,
    /// <summary>The sum.</summary>
    Sum = 2,
}

public sealed unsafe partial class Tensor
{
    private Tensor Unary(UnaryOp op) => Wrap(NativeMethods.sl_tensor_unary(op, Handle, out var r), r);
    private Tensor Binary(BinaryOp op, Tensor other) => Wrap(NativeMethods.sl_tensor_binary(op, Handle, other.Handle, out var r), r);
    private Tensor Binary(BinaryOp op, double scalar) => Wrap(NativeMethods.sl_tensor_binary_scalar(op, Handle, scalar, out var r), r);

    // ------------------------------------------------------------------ unary

    /// <summary>-x</summary>
    public Tensor Neg() => Unary(UnaryOp.Neg);
    /// <summary>|x|</summary>
    public Tensor Abs() => Unary(UnaryOp.Abs);
    /// <summary>e^x</summary>
    public Tensor Exp() => Unary(UnaryOp.Exp);
    /// <summary>Natural logarithm.</summary>
    public Tensor Log() => Unary(UnaryOp.Log);
    /// <summary>log(1 + x)</summary>
    public Tensor Log1p() => Unary(UnaryOp.Log1p);
    /// <summary>Square root.</summary>
    public Tensor Sqrt() => Unary(UnaryOp.Sqrt);
    /// <summary>1 / sqrt(x)</summary>
    public Tensor Rsqrt() => Unary(UnaryOp.Rsqrt);
    /// <summary>x * x</summary>
    public Tensor Square() => Unary(UnaryOp.Square);
    /// <summary>Hyperbolic tangent.</summary>
    public Tensor Tanh() => Unary(UnaryOp.Tanh);
    /// <summary>1 / (1 + e^-x)</summary>
    public Tensor Sigmoid() => Unary(UnaryOp.Sigmoid);
    /// <summary>max(x, 0)</summary>
    public Tensor Relu() => Unary(UnaryOp.Relu);
    /// <summary>GELU: exact (erf) by default, or the tanh approximation (GPT-2's gelu_new).</summary>
    public Tensor Gelu(bool tanhApproximation = false) => Unary(tanhApproximation ? UnaryOp.GeluTanh : UnaryOp.Gelu);
    /// <summary>x * sigmoid(x)</summary>
    public Tensor Silu() => Unary(UnaryOp.Silu);
    /// <summary>Sine.</summary>
    public Tensor Sin() => Unary(UnaryOp.Sin);
    /// <summary>Cosine.</summary>
    public Tensor Cos() => Unary(UnaryOp.Cos);
    /// <summary>Error function.</summary>
    public Tensor Erf() => Unary(UnaryOp.Erf);
    /// <summary>1 / x</summary>
    public Tensor Reciprocal() => Unary(UnaryOp.Reciprocal);
    /// <summary>-1, 0 or 1.</summary>
    public Tensor Sign() => Unary(UnaryOp.Sign);
    /// <summary>Rounds down.</summary>
    public Tensor Floor() => Unary(UnaryOp.Floor);
    /// <summary>Rounds up.</summary>
    public Tensor Ceil() => Unary(UnaryOp.Ceil);
    /// <summary>Rounds half to even.</summary>
    public Tensor Round() => Unary(UnaryOp.Round);
    /// <summary>Boolean: neither infinite nor NaN.</summary>
    public Tensor IsFinite() => Unary(UnaryOp.IsFinite);
    /// <summary>Boolean: NaN.</summary>
    public Tensor IsNan() => Unary(UnaryOp.IsNan);
    /// <summary>Boolean not.</summary>
    public Tensor LogicalNot() => Unary(UnaryOp.LogicalNot);

    // ------------------------------------------------------------------ binary (broadcasting)

    /// <summary>this + other</summary>
    public Tensor Add(Tensor other) => Binary(BinaryOp.Add, other);
    /// <summary>this + scalar</summary>
    public Tensor Add(double scalar) => Binary(BinaryOp.Add, scalar);
    /// <summary>this - other</summary>
    public Tensor Sub(Tensor other) => Binary(BinaryOp.Sub, other);
    /// <summary>this - scalar</summary>
    public Tensor Sub(double scalar) => Binary(BinaryOp.Sub, scalar);
    /// <summary>this * other</summary>
    public Tensor Mul(Tensor other) => Binary(BinaryOp.Mul, other);
    /// <summary>this * scalar</summary>
    public Tensor Mul(double scalar) => Binary(BinaryOp.Mul, scalar);
    /// <summary>this / other (true division)</summary>
    public Tensor Div(Tensor other) => Binary(BinaryOp.Div, other);
    /// <summary>this / scalar</summary>
    public Tensor Div(double scalar) => Binary(BinaryOp.Div, scalar);
    /// <summary>this ^ exponent</summary>
    public Tensor Pow(Tensor exponent) => Binary(BinaryOp.Pow, exponent);
    /// <summary>this ^ exponent</summary>
    public Tensor Pow(double exponent) => Binary(BinaryOp.Pow, exponent);
    /// <summary>Python's % (sign of the divisor).</summary>
    public Tensor Remainder(Tensor other) => Binary(BinaryOp.Remainder, other);
    /// <summary>Python's % (sign of the divisor).</summary>
    public Tensor Remainder(double scalar) => Binary(BinaryOp.Remainder, scalar);
    /// <summary>Elementwise maximum.</summary>
    public Tensor Maximum(Tensor other) => Binary(BinaryOp.Maximum, other);
    /// <summary>Elementwise minimum.</summary>
    public Tensor Minimum(Tensor other) => Binary(BinaryOp.Minimum, other);
    /// <summary>Boolean ==</summary>
    public Tensor Eq(Tensor other) => Binary(BinaryOp.Eq, other);
    /// <summary>Boolean ==</summary>
    public Tensor Eq(double scalar) => Binary(BinaryOp.Eq, scalar);
    /// <summary>Boolean !=</summary>
    public Tensor Ne(Tensor other) => Binary(BinaryOp.Ne, other);
    /// <summary>Boolean !=</summary>
    public Tensor Ne(double scalar) => Binary(BinaryOp.Ne, scalar);
    /// <summary>Boolean &lt;</summary>
    public Tensor Lt(Tensor other) => Binary(BinaryOp.Lt, other);
    /// <summary>Boolean &lt;</summary>
    public Tensor Lt(double scalar) => Binary(BinaryOp.Lt, scalar);
    /// <summary>Boolean &lt;=</summary>
    public Tensor Le(Tensor other) => Binary(BinaryOp.Le, other);
    /// <summary>Boolean &lt;=</summary>
    public Tensor Le(double scalar) => Binary(BinaryOp.Le, scalar);
    /// <summary>Boolean &gt;</summary>
    public Tensor Gt(Tensor other) => Binary(BinaryOp.Gt, other);
    /// <summary>Boolean &gt;</summary>
    public Tensor Gt(double scalar) => Binary(BinaryOp.Gt, scalar);
    /// <summary>Boolean &gt;=</summary>
    public Tensor Ge(Tensor other) => Binary(BinaryOp.Ge, other);
    /// <summary>Boolean &gt;=</summary>
    public Tensor Ge(double scalar) => Binary(BinaryOp.Ge, scalar);
    /// <summary>Boolean and.</summary>
    public Tensor LogicalAnd(Tensor other) => Binary(BinaryOp.LogicalAnd, other);
    /// <summary>Boolean or.</summary>
    public Tensor LogicalOr(Tensor other) => Binary(BinaryOp.LogicalOr, other);
    /// <summary>Matrix product with NumPy broadcasting rules (torch.matmul).</summary>
    public Tensor Matmul(Tensor other) => Binary(BinaryOp.Matmul, other);
    /// <summary>Batched matrix product of [b, n, m] and [b, m, p].</summary>
    public Tensor Bmm(Tensor other) => Binary(BinaryOp.Bmm, other);

    /// <summary>Limits values to [min, max]; either bound may be absent.</summary>
    public Tensor Clamp(double? min = null, double? max = null)
    {
        if (min is null && max is null) throw new ArgumentException("Clamp needs a min, a max or both");
        return Wrap(NativeMethods.sl_tensor_clamp(Handle, min.HasValue ? 1 : 0, min ?? 0, max.HasValue ? 1 : 0, max ?? 0, out var r), r);
    }

    // ------------------------------------------------------------------ in place (no autograd history on leaves that require grad)

    /// <summary>this += other, in place.</summary>
    public Tensor AddInPlace(Tensor other) { NativeStatus.Check(NativeMethods.sl_tensor_binary_inplace(BinaryOp.Add, Handle, other.Handle)); return this; }
    /// <summary>this += scalar, in place.</summary>
    public Tensor AddInPlace(double scalar) { NativeStatus.Check(NativeMethods.sl_tensor_binary_scalar_inplace(BinaryOp.Add, Handle, scalar)); return this; }
    /// <summary>this -= other, in place.</summary>
    public Tensor SubInPlace(Tensor other) { NativeStatus.Check(NativeMethods.sl_tensor_binary_inplace(BinaryOp.Sub, Handle, other.Handle)); return this; }
    /// <summary>this *= other, in place.</summary>
    public Tensor MulInPlace(Tensor other) { NativeStatus.Check(NativeMethods.sl_tensor_binary_inplace(BinaryOp.Mul, Handle, other.Handle)); return this; }
    /// <summary>this *= scalar, in place.</summary>
    public Tensor MulInPlace(double scalar) { NativeStatus.Check(NativeMethods.sl_tensor_binary_scalar_inplace(BinaryOp.Mul, Handle, scalar)); return this; }
    /// <summary>this /= other, in place.</summary>
    public Tensor DivInPlace(Tensor other) { NativeStatus.Check(NativeMethods.sl_tensor_binary_inplace(BinaryOp.Div, Handle, other.Handle)); return this; }
    /// <summary>Copies (broadcasting and converting) the values of <paramref name="source"/> into this tensor.</summary>
    public Tensor CopyFrom(Tensor source) { NativeStatus.Check(NativeMethods.sl_tensor_copy_inplace(Handle, source.Handle)); return this; }
    /// <summary>Sets every element to <paramref name="value"/>.</summary>
    public Tensor Fill(double value) { NativeStatus.Check(NativeMethods.sl_tensor_fill_inplace(Handle, value)); return this; }
    /// <summary>Sets every element to zero.</summary>
    public Tensor Zero() => Fill(0);

    // ------------------------------------------------------------------ operators

    /// <summary>Elementwise sum with broadcasting.</summary>
    public static Tensor operator +(Tensor a, Tensor b) => a.Add(b);
    /// <summary>Adds a scalar.</summary>
    public static Tensor operator +(Tensor a, double b) => a.Add(b);
    /// <summary>Adds a scalar.</summary>
    public static Tensor operator +(double a, Tensor b) => b.Add(a);
    /// <summary>Elementwise difference with broadcasting.</summary>
    public static Tensor operator -(Tensor a, Tensor b) => a.Sub(b);
    /// <summary>Subtracts a scalar.</summary>
    public static Tensor operator -(Tensor a, double b) => a.Sub(b);
    /// <summary>scalar - tensor.</summary>
    public static Tensor operator -(double a, Tensor b) => b.Binary(BinaryOp.RSub, a);
    /// <summary>Elementwise product with broadcasting.</summary>
    public static Tensor operator *(Tensor a, Tensor b) => a.Mul(b);
    /// <summary>Multiplies by a scalar.</summary>
    public static Tensor operator *(Tensor a, double b) => a.Mul(b);
    /// <summary>Multiplies by a scalar.</summary>
    public static Tensor operator *(double a, Tensor b) => b.Mul(a);
    /// <summary>Elementwise quotient with broadcasting.</summary>
    public static Tensor operator /(Tensor a, Tensor b) => a.Div(b);
    /// <summary>Divides by a scalar.</summary>
    public static Tensor operator /(Tensor a, double b) => a.Div(b);
    /// <summary>scalar / tensor.</summary>
    public static Tensor operator /(double a, Tensor b) => b.Binary(BinaryOp.RDiv, a);
    /// <summary>Negation.</summary>
    public static Tensor operator -(Tensor a) => a.Neg();
    /// <summary>Boolean &lt;.</summary>
    public static Tensor operator <(Tensor a, Tensor b) => a.Lt(b);
    /// <summary>Boolean &gt;.</summary>
    public static Tensor operator >(Tensor a, Tensor b) => a.Gt(b);
    /// <summary>Boolean &lt;=.</summary>
    public static Tensor operator <=(Tensor a, Tensor b) => a.Le(b);
    /// <summary>Boolean &gt;=.</summary>
    public static Tensor operator >=(Tensor a, Tensor b) => a.Ge(b);
    /// <summary>Boolean &lt; scalar.</summary>
    public static Tensor operator <(Tensor a, double b) => a.Lt(b);
    /// <summary>Boolean &gt; scalar.</summary>
    public static Tensor operator >(Tensor a, double b) => a.Gt(b);
    /// <summary>Boolean &lt;= scalar.</summary>
    public static Tensor operator <=(Tensor a, double b) => a.Le(b);
    /// <summary>Boolean &gt;= scalar.</summary>
    public static Tensor operator >=(Tensor a, double b) => a.Ge(b);

    // ------------------------------------------------------------------ reductions

    private Tensor Reduce(ReduceOp op, long[]? dims, bool keepDim)
    {
        dims ??= Array.Empty<long>();
        fixed (long* p = dims) return Wrap(NativeMethods.sl_tensor_reduce(op, Handle, p, dims.Length, keepDim ? 1 : 0, out var r), r);
    }

    /// <summary>Sum of every element.</summary>
    public Tensor Sum() => Reduce(ReduceOp.Sum, null, false);
    /// <summary>Sum over one dimension.</summary>
    public Tensor Sum(long dim, bool keepDim = false) => Reduce(ReduceOp.Sum, [dim], keepDim);
    /// <summary>Sum over several dimensions.</summary>
    public Tensor Sum(long[] dims, bool keepDim = false) => Reduce(ReduceOp.Sum, dims, keepDim);
    /// <summary>Mean of every element.</summary>
    public Tensor Mean() => Reduce(ReduceOp.Mean, null, false);
    /// <summary>Mean over one dimension.</summary>
    public Tensor Mean(long dim, bool keepDim = false) => Reduce(ReduceOp.Mean, [dim], keepDim);
    /// <summary>Mean over several dimensions.</summary>
    public Tensor Mean(long[] dims, bool keepDim = false) => Reduce(ReduceOp.Mean, dims, keepDim);
    /// <summary>Product of every element.</summary>
    public Tensor Prod() => Reduce(ReduceOp.Prod, null, false);
    /// <summary>Product over one dimension.</summary>
    public Tensor Prod(long dim, bool keepDim = false) => Reduce(ReduceOp.Prod, [dim], keepDim);
    /// <summary>log(sum(exp(x))) over one dimension, computed stably.</summary>
    public Tensor LogSumExp(long dim, bool keepDim = false) => Reduce(ReduceOp.LogSumExp, [dim], keepDim);
    /// <summary>log(sum(exp(x))) over several dimensions (empty: all).</summary>
    public Tensor LogSumExp(long[] dims, bool keepDim = false) => Reduce(ReduceOp.LogSumExp, dims, keepDim);
    /// <summary>Largest element.</summary>
    public Tensor Max() => Reduce(ReduceOp.Amax, null, false);
    /// <summary>Smallest element.</summary>
    public Tensor Min() => Reduce(ReduceOp.Amin, null, false);
    /// <summary>Largest values over dimensions (no indices; gradient spread evenly among ties).</summary>
    public Tensor Amax(long[] dims, bool keepDim = false) => Reduce(ReduceOp.Amax, dims, keepDim);
    /// <summary>Smallest values over dimensions.</summary>
    public Tensor Amin(long[] dims, bool keepDim = false) => Reduce(ReduceOp.Amin, dims, keepDim);
    /// <summary>Boolean: any element true (over all, or over dims).</summary>
    public Tensor Any(long[]? dims = null, bool keepDim = false) => Reduce(ReduceOp.Any, dims, keepDim);
    /// <summary>Boolean: every element true (over all, or over dims).</summary>
    public Tensor All(long[]? dims = null, bool keepDim = false) => Reduce(ReduceOp.All, dims, keepDim);

    /// <summary>Largest values along a dimension and their int64 indices.</summary>
    public (Tensor Values, Tensor Indices) Max(long dim, bool keepDim = false)
    {
        NativeStatus.Check(NativeMethods.sl_tensor_minmax_dim(1, Handle, dim, keepDim ? 1 : 0, out var v, out var i));
        return (new Tensor(v), new Tensor(i));
    }

    /// <summary>Smallest values along a dimension and their int64 indices.</summary>
    public (Tensor Values, Tensor Indices) Min(long dim, bool keepDim = false)
    {
        NativeStatus.Check(NativeMethods.sl_tensor_minmax_dim(0, Handle, dim, keepDim ? 1 : 0, out var v, out var i));
        return (new Tensor(v), new Tensor(i));
    }

    /// <summary>Index of the largest element of the flattened tensor, or along <paramref name="dim"/>.</summary>
    public Tensor Argmax(long? dim = null, bool keepDim = false) =>
        Wrap(NativeMethods.sl_tensor_argminmax(1, Handle, dim.HasValue ? 1 : 0, dim ?? 0, keepDim ? 1 : 0, out var r), r);

    /// <summary>Index of the smallest element of the flattened tensor, or along <paramref name="dim"/>.</summary>
    public Tensor Argmin(long? dim = null, bool keepDim = false) =>
        Wrap(NativeMethods.sl_tensor_argminmax(0, Handle, dim.HasValue ? 1 : 0, dim ?? 0, keepDim ? 1 : 0, out var r), r);

    /// <summary>Variance over dims (null: all) with <paramref name="correction"/> (1: sample, 0: population).</summary>
    public Tensor Var(long[]? dims = null, long correction = 1, bool keepDim = false) => VarStd(0, dims, correction, keepDim);

    /// <summary>Standard deviation over dims (null: all) with <paramref name="correction"/>.</summary>
    public Tensor Std(long[]? dims = null, long correction = 1, bool keepDim = false) => VarStd(1, dims, correction, keepDim);

    private Tensor VarStd(int isStd, long[]? dims, long correction, bool keepDim)
    {
        dims ??= Array.Empty<long>();
        fixed (long* p = dims)
            return Wrap(NativeMethods.sl_tensor_var_std(isStd, Handle, p, dims.Length, correction, keepDim ? 1 : 0, out var r), r);
    }

    /// <summary>Vector p-norm over dims (null: all elements).</summary>
    public Tensor Norm(double p = 2, long[]? dims = null, bool keepDim = false)
    {
        dims ??= Array.Empty<long>();
        fixed (long* d = dims) return Wrap(NativeMethods.sl_tensor_norm(Handle, p, d, dims.Length, keepDim ? 1 : 0, out var r), r);
    }

    // ------------------------------------------------------------------ sorting, comparison, linear algebra

    /// <summary>The k largest (or smallest) entries along a dimension and their indices.</summary>
    public (Tensor Values, Tensor Indices) TopK(long k, long dim = -1, bool largest = true, bool sorted = true)
    {
        NativeStatus.Check(NativeMethods.sl_tensor_topk(Handle, k, dim, largest ? 1 : 0, sorted ? 1 : 0, out var v, out var i));
        return (new Tensor(v), new Tensor(i));
    }

    /// <summary>Sorted values along a dimension and the permutation that sorts them.</summary>
    public (Tensor Values, Tensor Indices) Sort(long dim = -1, bool descending = false, bool stable = false)
    {
        NativeStatus.Check(NativeMethods.sl_tensor_sort(Handle, dim, descending ? 1 : 0, stable ? 1 : 0, out var v, out var i));
        return (new Tensor(v), new Tensor(i));
    }

    /// <summary>|this - other| &lt;= atol + rtol * |other| everywhere (torch.allclose).</summary>
    public bool AllClose(Tensor other, double rtol = 1e-5, double atol = 1e-8, bool equalNan = false)
    {
        NativeStatus.Check(NativeMethods.sl_tensor_allclose(Handle, other.Handle, rtol, atol, equalNan ? 1 : 0, out var v));
        return v != 0;
    }

    /// <summary>Same shape and exactly equal values (torch.equal).</summary>
    public bool ValueEquals(Tensor other)
    {
        NativeStatus.Check(NativeMethods.sl_tensor_equal(Handle, other.Handle, out var v));
        return v != 0;
    }

    /// <summary>Singular value decomposition: this = U diag(S) Vh (reduced unless <paramref name="fullMatrices"/>).</summary>
    public (Tensor U, Tensor S, Tensor Vh) Svd(bool fullMatrices = false)
    {
        NativeStatus.Check(NativeMethods.sl_tensor_svd(Handle, fullMatrices ? 1 : 0, out var u, out var s, out var vh));
        return (new Tensor(u), new Tensor(s), new Tensor(vh));
    }

    // ------------------------------------------------------------------ neural-network functions

    /// <summary>Running sum along a dimension (torch.cumsum; integer inputs sum in int64).</summary>
    public Tensor Cumsum(long dim) => Wrap(NativeMethods.sl_tensor_cumsum(Handle, dim, out var r), r);

    /// <summary>Softmax along a dimension, optionally computed in another dtype (e.g. float32 for half inputs).</summary>
    public Tensor Softmax(long dim, ScalarType? dtype = null) =>
        Wrap(NativeMethods.sl_tensor_softmax(Handle, dim, dtype.HasValue ? (int)dtype.Value : -1, out var r), r);

    /// <summary>Log-softmax along a dimension.</summary>
    public Tensor LogSoftmax(long dim, ScalarType? dtype = null) =>
        Wrap(NativeMethods.sl_tensor_log_softmax(Handle, dim, dtype.HasValue ? (int)dtype.Value : -1, out var r), r);
}
