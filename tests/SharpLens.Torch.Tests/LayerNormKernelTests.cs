namespace SharpLens.Tensors.Tests;

/// <summary>
/// The two-step native LayerNorm (<see cref="TransformerOps.LayerNormCentreScale"/>, then
/// <see cref="TransformerOps.LayerNormApplyScale"/>) against the same math composed of ATen ops in float64, against
/// libtorch's own layer_norm, and against finite differences, including a replaced scale between the steps.
/// </summary>
public class LayerNormKernelTests
{
    private static double MaxDiff(Tensor a, Tensor b) => (a - b).Abs().Max().ToDouble();

    private static (Tensor Centred, Tensor Scale) ComposedCentreScale(Tensor x, double eps)
    {
        var centred = x - x.Mean(-1, keepDim: true);
        return (centred, (centred.Square().Mean(-1, keepDim: true) + eps).Sqrt());
    }

    [TestCase(new long[] { 2, 5, 7 }, true, true)]
    [TestCase(new long[] { 3, 64 }, true, false)]
    [TestCase(new long[] { 4, 1 }, false, true)]     // d = 1: centred is 0, scale is sqrt(eps)
    [TestCase(new long[] { 9 }, false, false)]       // one row, no affine parameters
    [TestCase(new long[] { 37, 130 }, true, true)]   // rows split across threads
    public void MatchesTheCompositionForwardAndBackwardInFloat64(long[] shape, bool withWeight, bool withBias)
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(7);
        var d = shape[^1];
        var x = (Torch.Randn(shape, g, ScalarType.Float64) * 3 + 1).RequiresGrad_();
        var w = withWeight ? Torch.Randn([d], g, ScalarType.Float64).RequiresGrad_() : null;
        var b = withBias ? Torch.Randn([d], g, ScalarType.Float64).RequiresGrad_() : null;
        var gy = Torch.Randn(shape, g, ScalarType.Float64);
        var scaleShape = shape.ToArray();
        scaleShape[^1] = 1;
        var gs = Torch.Randn(scaleShape, g, ScalarType.Float64);
        const double eps = 1e-5;

        // The loss reaches the scale both through y and directly, as a hook_scale backward hook would see it.
        (Tensor Y, Tensor Scale, Tensor?[] Grads) Run(bool native)
        {
            var (c, s) = native ? TransformerOps.LayerNormCentreScale(x, eps) : ComposedCentreScale(x, eps);
            Tensor y;
            if (native) y = TransformerOps.LayerNormApplyScale(c, s, w, b);
            else
            {
                y = c / s;
                if (w is not null) y = y * w;
                if (b is not null) y = y + b;
            }
            var loss = (y * gy).Sum() + (s * gs).Sum();
            var inputs = new List<Tensor> { x };
            if (w is not null) inputs.Add(w);
            if (b is not null) inputs.Add(b);
            return (y, s, Torch.Autograd.Grad([loss], inputs));
        }

        var native = Run(true);
        var composed = Run(false);
        Assert.That(native.Scale.Shape, Is.EqualTo(scaleShape));
        Assert.That(MaxDiff(native.Y, composed.Y), Is.LessThan(1e-12));
        Assert.That(MaxDiff(native.Scale, composed.Scale), Is.LessThan(1e-12));
        for (var i = 0; i < native.Grads.Length; i++)
            Assert.That(MaxDiff(native.Grads[i]!, composed.Grads[i]!), Is.LessThan(1e-11), $"gradient {i}");
    }

    [Test]
    public void EqualsLibtorchLayerNormInFloat32()
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(3);
        var x = Torch.Randn([4, 16, 768], g);
        var w = Torch.Randn([768], g);
        var b = Torch.Randn([768], g);
        var (c, s) = TransformerOps.LayerNormCentreScale(x, 1e-5);
        var y = TransformerOps.LayerNormApplyScale(c, s, w, b);
        Assert.That(MaxDiff(y, Functional.LayerNorm(x, [768], w, b, 1e-5)), Is.LessThan(1e-4));
    }

    [Test]
    public void NonContiguousInputGivesTheSameResult()
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(5);
        var x = Torch.Randn([6, 5], g, ScalarType.Float64).Transpose(0, 1);  // [5, 6], not contiguous
        var (c1, s1) = TransformerOps.LayerNormCentreScale(x, 1e-5);
        var (c2, s2) = ComposedCentreScale(x, 1e-5);
        Assert.That(MaxDiff(c1, c2), Is.LessThan(1e-13));
        Assert.That(MaxDiff(s1, s2), Is.LessThan(1e-13));
    }

    [Test]
    public void GradientsMatchFiniteDifferencesWithAReplacedScale()
    {
        // What a hook that rescales hook_scale does: the second step must differentiate through the replaced value.
        GradCheck.Verify(inputs =>
        {
            var (c, s) = TransformerOps.LayerNormCentreScale(inputs[0], 1e-5);
            var replaced = s * 1.5 + 0.25;
            return TransformerOps.LayerNormApplyScale(c, replaced, inputs[1], inputs[2]) + replaced;
        }, [GradCheck.Uniform(1, -2, 2, 3, 5), GradCheck.Uniform(2, 0.5, 1.5, 5), GradCheck.Uniform(3, -1, 1, 5)]);
    }

    [Test]
    public void HalfPrecisionTakesTheComposedPath()
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(9);
        var x = Torch.Randn([3, 32], g);
        var (c, s) = TransformerOps.LayerNormCentreScale(x.To(ScalarType.BFloat16), 1e-5);
        Assert.That(c.DType, Is.EqualTo(ScalarType.BFloat16));
        var y = TransformerOps.LayerNormApplyScale(c, s, null, null).To(ScalarType.Float32);
        Assert.That(MaxDiff(y, Functional.LayerNorm(x, [32], eps: 1e-5)), Is.LessThan(0.05));
    }

    [Test]
    public void WrongShapesAreArgumentErrorsNamingThem()
    {
        using var scope = Torch.NewScope();
        var c = Torch.Zeros([2, 3, 4]);
        var ex = Assert.Throws<ArgumentException>(() => TransformerOps.LayerNormApplyScale(c, Torch.Ones([2, 3]), null, null));
        Assert.That(ex!.Message, Does.Contain("[2, 3, 1]").And.Contain("[2, 3]"));
        ex = Assert.Throws<ArgumentException>(() => TransformerOps.LayerNormApplyScale(c, Torch.Ones([2, 3, 1]), Torch.Ones([5]), null));
        Assert.That(ex!.Message, Does.Contain("[4]").And.Contain("[5]"));
        ex = Assert.Throws<ArgumentException>(() => TransformerOps.LayerNormCentreScale(Torch.Zeros([2, 0]), 1e-5));
        Assert.That(ex!.Message, Does.Contain("non-empty last dimension"));
        Assert.Throws<ArgumentException>(() => TransformerOps.LayerNormCentreScale(c, -1));
    }
}
