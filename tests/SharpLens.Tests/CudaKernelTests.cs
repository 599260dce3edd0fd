using SharpLens.Testing;

namespace SharpLens.Tests;

/// <summary>
/// The CUDA kernels the bridge calls, each against the libtorch composition of the same math on the same GPU: the
/// rotary kernel bit for bit (it rounds op by op as the composition does), LayerNorm's two steps and the QKV split in
/// float64 to summation order (the kernels add in another order than ATen's reductions; 1e-12 relative to the
/// magnitudes summed is a thousand times float64's rounding of 768-term sums), forward and backward. Marked
/// <c>CUDA</c>: where libsharplens or libtorch sees no CUDA device each test is reported as skipped, never as passed.
/// </summary>
[Category("CUDA")]
public class CudaKernelTests
{
    [SetUp]
    public void RequireCuda()
    {
        if (!Torch.CudaIsAvailable) Assert.Ignore("no CUDA device here (Torch.CudaIsAvailable is false): not run");
    }

    private static readonly Device Gpu = Device.CUDA();

    private static double MaxDiff(Tensor a, Tensor b) => (a.To(ScalarType.Float64) - b.To(ScalarType.Float64)).Abs().Max().ToDouble();

    [TestCase(ScalarType.Float32)]
    [TestCase(ScalarType.Float64)]
    [TestCase(ScalarType.Float16)]
    [TestCase(ScalarType.BFloat16)]
    public void RotaryKernelEqualsTheCompositionBitForBit(ScalarType dtype)
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(5);
        // x as the QKV split hands it over: [b, p, h, d] over [b, h, p, d] storage; 12 of 16 features rotate.
        var x = Torch.Randn([2, 3, 5, 16], g, ScalarType.Float64).To(Gpu, dtype).Transpose(1, 2).RequiresGrad_();
        var angles = Torch.Arange(0, 5, 1, ScalarType.Float64).Unsqueeze(1) * Torch.Randn([1, 6], g, ScalarType.Float64).Abs();
        var table = Torch.Stack([angles.Cos(), angles.Sin()], 1).To(Gpu, ScalarType.Float32);   // [p, 2, half]
        var upstream = Torch.Randn([2, 5, 3, 16], g, ScalarType.Float64).To(Gpu, dtype);
        var fused = TransformerOps.Rotary(x, table, RotaryImplementation.Fused);
        var composed = TransformerOps.Rotary(x, table, RotaryImplementation.Composed);
        Assert.That(MaxDiff(fused, composed), Is.EqualTo(0.0), "forward");
        var gFused = Torch.Autograd.Grad([(fused * upstream).Sum()], [x])[0]!;
        var gComposed = Torch.Autograd.Grad([(composed * upstream).Sum()], [x])[0]!;
        Assert.That(MaxDiff(gFused, gComposed), Is.EqualTo(0.0), "backward (the rotation by the opposite angles)");
    }

    [Test]
    public void LayerNormKernelsMatchTheCompositionInFloat64()
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(7);
        const long d = 768;
        var x = (Torch.Randn([4, 9, d], g, ScalarType.Float64) * 2 + 3).To(Gpu).RequiresGrad_();
        var w = (Torch.Randn([d], g, ScalarType.Float64) * 0.3 + 1).To(Gpu).RequiresGrad_();
        var b = Torch.Randn([d], g, ScalarType.Float64).To(Gpu).RequiresGrad_();
        var upstream = Torch.Randn([4, 9, d], g, ScalarType.Float64).To(Gpu);
        const double eps = 1e-5;
        var (centred, scale) = TransformerOps.LayerNormCentreScale(x, eps);
        var y = TransformerOps.LayerNormApplyScale(centred, scale, w, b);
        var refCentred = x - x.Mean(-1, keepDim: true);
        var refScale = refCentred.Square().Mean(-1, keepDim: true).Add(eps).Sqrt();
        var refY = refCentred / refScale * w + b;
        var magnitude = x.Abs().Max().ToDouble();
        Assert.Multiple(() =>
        {
            Assert.That(MaxDiff(centred, refCentred), Is.LessThan(1e-12 * magnitude), "centred");
            Assert.That(MaxDiff(scale, refScale), Is.LessThan(1e-12 * magnitude), "scale");
            Assert.That(MaxDiff(y, refY), Is.LessThan(1e-12 * refY.Abs().Max().ToDouble()), "y");
        });
        // The loss also reads the scale, so both branches of the first step's backward run.
        Tensor Loss(Tensor yy, Tensor s) => (yy * upstream).Sum() + s.Sum();
        Tensor[] inputs = [x, w, b];
        var got = Torch.Autograd.Grad([Loss(y, scale)], inputs);
        var want = Torch.Autograd.Grad([Loss(refY, refScale)], inputs);
        for (var i = 0; i < inputs.Length; i++)
            Assert.That(MaxDiff(got[i]!, want[i]!), Is.LessThan(1e-12 * Math.Max(1, want[i]!.Abs().Max().ToDouble())), $"gradient of input {i}");
    }

    [Test]
    public void RmsNormScaleKernelMatchesTheCompositionInFloat64()
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(13);
        var x = (Torch.Randn([4, 9, 768], g, ScalarType.Float64) * 2 + 1).To(Gpu).RequiresGrad_();
        var upstream = Torch.Randn([4, 9, 1], g, ScalarType.Float64).To(Gpu);
        var got = TransformerOps.RmsNormScale(x, 1e-6);
        var want = x.Square().Mean(-1, keepDim: true).Add(1e-6).Sqrt();
        Assert.That(got.Device.Type, Is.EqualTo(DeviceType.CUDA));
        Assert.That(MaxDiff(got, want), Is.LessThan(1e-12 * want.Abs().Max().ToDouble()), "scale");
        var gGot = Torch.Autograd.Grad([(got * upstream).Sum()], [x])[0]!;
        var gWant = Torch.Autograd.Grad([(want * upstream).Sum()], [x])[0]!;
        Assert.That(MaxDiff(gGot, gWant), Is.LessThan(1e-12 * gWant.Abs().Max().ToDouble()), "gradient");
    }

    [TestCase(ScalarType.Float32, 1e-5)]
    [TestCase(ScalarType.BFloat16, 2e-2)]
    public void LayerNormKernelsInLowerPrecisionStayWithinTheirRoundingOfFloat64(ScalarType dtype, double relTol)
    {
        // float32: the input's rounding (2^-24) and 768-term sums whose error grows as sqrt(d)·2^-24 ≈ 2e-6 for random signs
        // (d·2^-24 ≈ 5e-5 only in the worst case); 1e-5 is five times the typical figure. bfloat16: the input and the output
        // are each rounded to 2^-8 relative (unit roundoff), about 1e-2 of the largest value together; 2e-2 allows both in full.
        using var scope = Torch.NewScope();
        using var g = new Generator(9);
        var x64 = Torch.Randn([3, 7, 768], g, ScalarType.Float64) * 2 + 1;
        var (c64, s64) = TransformerOps.LayerNormCentreScale(x64.To(Gpu), 1e-5);
        var (c, s) = TransformerOps.LayerNormCentreScale(x64.To(Gpu, dtype), 1e-5);
        Assert.That(MaxDiff(c, c64), Is.LessThan(relTol * c64.Abs().Max().ToDouble()), "centred");
        Assert.That(MaxDiff(s, s64), Is.LessThan(relTol * s64.Abs().Max().ToDouble()), "scale");
    }

    [TestCase(QkvLayout.PartMajorInOut)]
    [TestCase(QkvLayout.HeadMajorOutIn)]
    public void QkvSplitKernelMatchesTheFusedProjectionInFloat64(QkvLayout layout)
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(11);
        const long b = 2, p = 7, h = 4, dh = 8, m = 32;
        var x = Torch.Randn([b, p, m], g, ScalarType.Float64).To(Gpu).RequiresGrad_();
        var w = (layout == QkvLayout.PartMajorInOut ? Torch.Randn([m, 3 * h * dh], g, ScalarType.Float64) : Torch.Randn([3 * h * dh, m], g, ScalarType.Float64)).To(Gpu).RequiresGrad_();
        var bias = Torch.Randn([3 * h * dh], g, ScalarType.Float64).To(Gpu).RequiresGrad_();
        var (q, k, v) = TransformerOps.QkvSplit(layout, x, w, bias, h);
        var parts = Enumerable.Range(0, 3).Select(i => QkvOracle.Part(layout, x, w, bias, i, h, dh)).ToArray();
        Tensor[] got = [q, k, v];
        var weights = Enumerable.Range(0, 3).Select(_ => Torch.Randn([b, p, h, dh], g, ScalarType.Float64).To(Gpu)).ToArray();
        for (var i = 0; i < 3; i++)
        {
            Assert.That(got[i].Device.Type, Is.EqualTo(DeviceType.CUDA));
            Assert.That(got[i].Transpose(1, 2).IsContiguous, Is.True, $"part {i} storage is [b, h, p, d]");
            Assert.That(MaxDiff(got[i], parts[i]), Is.LessThan(1e-12), $"part {i}");
        }
        Tensor Loss(Tensor[] t) => Enumerable.Range(0, 3).Select(i => (t[i] * weights[i]).Sum()).Aggregate((a, c) => a + c);
        Tensor[] inputs = [x, w, bias];
        var gGot = Torch.Autograd.Grad([Loss(got)], inputs);
        var gWant = Torch.Autograd.Grad([Loss(parts)], inputs);
        for (var i = 0; i < inputs.Length; i++) Assert.That(MaxDiff(gGot[i]!, gWant[i]!), Is.LessThan(1e-12), $"gradient of input {i}");
    }
}
