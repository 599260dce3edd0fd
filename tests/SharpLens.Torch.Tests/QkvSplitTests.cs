using SharpLens.Testing;

namespace SharpLens.Tensors.Tests;

/// <summary>
/// <see cref="TransformerOps.QkvSplit"/> (one GEMM, then the split into the attention kernels' [batch, head, pos, d_head]
/// layout) against the fused projection written here from elementary ops, in float64: values, layout, first and
/// second derivatives, unused parts, meta shapes and shape errors. The split and its adjoint are the autograd wiring
/// the CUDA split kernel shares, so these run it without a GPU.
/// </summary>
public class QkvSplitTests
{
    private static double MaxDiff(Tensor a, Tensor b) => (a - b).Abs().Max().ToDouble();

    private static (Tensor X, Tensor W, Tensor? Bias) Inputs(QkvLayout layout, bool withBias, Generator g, long b, long p, long h, long d, long m)
    {
        var x = Torch.Randn([b, p, m], g, ScalarType.Float64).RequiresGrad_();
        var w = (layout == QkvLayout.PartMajorInOut ? Torch.Randn([m, 3 * h * d], g, ScalarType.Float64) : Torch.Randn([3 * h * d, m], g, ScalarType.Float64)).RequiresGrad_();
        var bias = withBias ? Torch.Randn([3 * h * d], g, ScalarType.Float64).RequiresGrad_() : null;
        return (x, w, bias);
    }

    [TestCase(QkvLayout.PartMajorInOut, true)]
    [TestCase(QkvLayout.PartMajorInOut, false)]
    [TestCase(QkvLayout.HeadMajorOutIn, true)]
    [TestCase(QkvLayout.HeadMajorOutIn, false)]
    public void MatchesTheFusedProjectionInTheAttentionLayout(QkvLayout layout, bool withBias)
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(23);
        const long b = 2, p = 7, h = 3, d = 5, m = 11;
        var (x, w, bias) = Inputs(layout, withBias, g, b, p, h, d, m);
        var (q, k, v) = TransformerOps.QkvSplit(layout, x, w, bias, h);
        Tensor[] got = [q, k, v];
        for (var i = 0; i < 3; i++)
        {
            Assert.That(got[i].Shape, Is.EqualTo(new[] { b, p, h, d }), $"part {i} shape");
            // A transposed view of a contiguous [b, h, p, d] tensor: the fused attention reads it without a copy.
            Assert.That(got[i].IsContiguous, Is.False, $"part {i} is [b, p, h, d] over [b, h, p, d] storage");
            Assert.That(got[i].Transpose(1, 2).IsContiguous, Is.True, $"part {i} storage is [b, h, p, d]");
            // The same GEMM as the reference up to where the bias is added (addmm vs matmul + add): float64 rounding.
            Assert.That(MaxDiff(got[i], QkvOracle.Part(layout, x, w, bias, i, h, d)), Is.LessThan(1e-12), $"part {i}");
        }
    }

    [TestCase(QkvLayout.PartMajorInOut)]
    [TestCase(QkvLayout.HeadMajorOutIn)]
    public void FirstAndSecondDerivativesMatchTheComposition(QkvLayout layout)
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(29);
        const long b = 2, p = 4, h = 2, d = 3, m = 5;
        var (x, w, bias) = Inputs(layout, true, g, b, p, h, d, m);
        var weights = Enumerable.Range(0, 3).Select(_ => Torch.Randn([b, p, h, d], g, ScalarType.Float64)).ToArray();
        var (q, k, v) = TransformerOps.QkvSplit(layout, x, w, bias, h);
        var expected = Enumerable.Range(0, 3).Select(i => QkvOracle.Part(layout, x, w, bias, i, h, d)).ToArray();
        // A loss that is not linear in the outputs, so the second derivative passes through the split's backward.
        Tensor Loss(Tensor[] parts) => (parts[0] * parts[1] * weights[0]).Sum() + (parts[2].Square() * weights[2]).Sum();
        Tensor[] inputs = [x, w, bias!];
        var gGot = Torch.Autograd.Grad([Loss([q, k, v])], inputs, createGraph: true);
        var gExpected = Torch.Autograd.Grad([Loss(expected)], inputs, createGraph: true);
        for (var i = 0; i < inputs.Length; i++)
            Assert.That(MaxDiff(gGot[i]!, gExpected[i]!), Is.LessThan(1e-12), $"gradient of input {i}");
        // d/dx of sum(dL/dw): through the split's backward (the merge) and the merge's backward (the split).
        var hGot = Torch.Autograd.Grad([gGot[1]!.Sum()], [x])[0]!;
        var hExpected = Torch.Autograd.Grad([gExpected[1]!.Sum()], [x])[0]!;
        Assert.That(MaxDiff(hGot, hExpected), Is.LessThan(1e-12), "second derivative");
        Assert.That(hExpected.Abs().Max().ToDouble(), Is.GreaterThan(0.1), "the second derivative is not trivially zero");
    }

    [Test]
    public void AnUnusedPartGetsAZeroBlockOfTheFusedGradient()
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(31);
        const long b = 1, p = 3, h = 2, d = 4, m = 6;
        var (x, w, bias) = Inputs(QkvLayout.PartMajorInOut, true, g, b, p, h, d, m);
        var (q, _, v) = TransformerOps.QkvSplit(QkvLayout.PartMajorInOut, x, w, bias, h);
        (q.Sum() + v.Sum()).Backward();
        var dk = w.Grad!.Narrow(1, h * d, h * d);
        Assert.That(dk.Abs().Max().ToDouble(), Is.EqualTo(0.0), "k's columns of the fused weight gradient");
        Assert.That(w.Grad!.Narrow(1, 0, h * d).Abs().Max().ToDouble(), Is.GreaterThan(0.1));
        Assert.That(bias!.Grad!.Narrow(0, h * d, h * d).Abs().Max().ToDouble(), Is.EqualTo(0.0), "k's bias gradient");
    }

    [TestCase(QkvLayout.PartMajorInOut)]
    [TestCase(QkvLayout.HeadMajorOutIn)]
    public void RunsOnTheMetaDeviceWithTheRightShapes(QkvLayout layout)
    {
        using var scope = Torch.NewScope();
        const long b = 2, p = 5, h = 4, d = 8, m = 32;
        var x = Torch.Zeros([b, p, m], ScalarType.Float32, Device.Meta).RequiresGrad_();
        var w = (layout == QkvLayout.PartMajorInOut ? Torch.Zeros([m, 3 * h * d], ScalarType.Float32, Device.Meta) : Torch.Zeros([3 * h * d, m], ScalarType.Float32, Device.Meta)).RequiresGrad_();
        var (q, k, v) = TransformerOps.QkvSplit(layout, x, w, null, h);
        foreach (var t in new[] { q, k, v })
        {
            Assert.That(t.Device, Is.EqualTo(Device.Meta));
            Assert.That(t.Shape, Is.EqualTo(new[] { b, p, h, d }));
        }
        (q.Sum() + k.Sum() + v.Sum()).Backward();
        Assert.That(w.Grad!.Shape, Is.EqualTo(w.Shape));
        Assert.That(w.Grad!.Device, Is.EqualTo(Device.Meta));
    }

    [Test]
    public void AWeightThatDoesNotSplitIntoHeadsIsAnArgumentErrorNamingItsShape()
    {
        using var scope = Torch.NewScope();
        var x = Torch.Zeros([2, 7, 11], ScalarType.Float64);
        var e = Assert.Throws<ArgumentException>(() => TransformerOps.QkvSplit(QkvLayout.PartMajorInOut, x, Torch.Zeros([11, 44], ScalarType.Float64), null, 3))!;
        Assert.That(e.Message, Does.Contain("[11, 44]"));
    }
}
