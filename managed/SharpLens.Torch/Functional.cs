using SharpLens.Tensors.Native;

namespace SharpLens.Tensors;

/// <summary>Neural-network functions (PyTorch's <c>torch.nn.functional</c>).</summary>
public static unsafe class Functional
{
    /// <summary>Layer normalisation over the trailing <paramref name="normalizedShape"/> dimensions, with optional affine weight and bias.</summary>
    public static Tensor LayerNorm(Tensor input, long[] normalizedShape, Tensor? weight = null, Tensor? bias = null, double eps = 1e-5)
    {
        fixed (long* p = normalizedShape)
            return Tensor.Wrap(NativeMethods.sl_tensor_layer_norm(input.Handle, p, normalizedShape.Length, Tensor.HandleOrNull(weight), Tensor.HandleOrNull(bias), eps, out var r), r);
    }

    /// <summary>
    /// Cross-entropy of <paramref name="logits"/> [N, C] (or [N, C, d...]) against int64 class indices
    /// <paramref name="target"/> [N] (or [N, d...]); targets equal to <paramref name="ignoreIndex"/> are skipped.
    /// </summary>
    public static Tensor CrossEntropy(Tensor logits, Tensor target, Tensor? weight = null, Reduction reduction = Reduction.Mean,
        long ignoreIndex = -100, double labelSmoothing = 0) =>
        Tensor.Wrap(NativeMethods.sl_tensor_cross_entropy(logits.Handle, target.Handle, Tensor.HandleOrNull(weight), (int)reduction, ignoreIndex, labelSmoothing, out var r), r);

    /// <summary>Softmax along a dimension.</summary>
    public static Tensor Softmax(Tensor input, long dim, ScalarType? dtype = null) => input.Softmax(dim, dtype);

    /// <summary>Log-softmax along a dimension.</summary>
    public static Tensor LogSoftmax(Tensor input, long dim, ScalarType? dtype = null) => input.LogSoftmax(dim, dtype);

    /// <summary>GELU, exact or with the tanh approximation.</summary>
    public static Tensor Gelu(Tensor input, bool tanhApproximation = false) => input.Gelu(tanhApproximation);

    /// <summary>SiLU (swish).</summary>
    public static Tensor Silu(Tensor input) => input.Silu();
}
