using SharpLens.Tensors;

namespace SharpLens.Testing;

/// <summary>The fused QKV projection written from elementary ops, the oracle of the QKV projection, split and kernel tests.</summary>
public static class QkvOracle
{
    /// <summary>
    /// x [b, p, m] through the fused weight (and bias), part 0/1/2 (q, k, v) as [b, p, h, d]: views of the fused output by the
    /// layout's column order (part-major: part, head, feature; head-major: head, part, feature).
    /// </summary>
    public static Tensor Part(QkvLayout layout, Tensor x, Tensor w, Tensor? bias, int part, long h, long d)
    {
        var (b, p, m) = (x.Size(0), x.Size(1), x.Size(2));
        var y = layout == QkvLayout.PartMajorInOut ? x.Reshape(b * p, m).Matmul(w) : x.Reshape(b * p, m).Matmul(w.Transpose(0, 1));
        if (bias is not null) y = y + bias;
        return layout == QkvLayout.PartMajorInOut ? y.View(b, p, 3, h, d).Select(2, part) : y.View(b, p, h, 3, d).Select(3, part);
    }
}
