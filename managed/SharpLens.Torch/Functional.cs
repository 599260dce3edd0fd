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
    /// A linear layer: <paramref name="input"/> [..., in] times <paramref name="weight"/> in the given layout, plus
    /// <paramref name="bias"/> [out] when given. One autograd node whose backward multiplies only the rows of the
    /// output gradient that hold a nonzero entry once at least 1/8 of them are zero, as when a loss reads a few
    /// positions; the gradients equal the dense backward's (it runs instead when a skipped term would be non-finite).
    /// </summary>
    public static Tensor Linear(Tensor input, Tensor weight, Tensor? bias = null, LinearWeightLayout layout = LinearWeightLayout.OutIn) =>
        Tensor.Wrap(NativeMethods.sl_tensor_linear(input.Handle, weight.Handle, Tensor.HandleOrNull(bias), (int)layout, out var r), r);

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

/// <summary>How a linear layer's weight is stored.</summary>
public enum LinearWeightLayout
{
    /// <summary>[in, out]: y = x w (Hugging Face's GPT-2 <c>Conv1D</c>).</summary>
    InOut = 0,
    /// <summary>[out, in]: y = x wᵀ (PyTorch's <c>nn.Linear</c>).</summary>
    OutIn = 1,
}
