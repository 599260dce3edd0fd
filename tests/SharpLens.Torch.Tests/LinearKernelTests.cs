namespace SharpLens.Tensors.Tests;

/// <summary>
/// <see cref="Functional.Linear"/>, whose backward multiplies only the nonzero rows of the output gradient, against
/// the same layer written as matmul plus bias, in float64: dense gradients, gradients on a few rows (the gathered
/// backward), no nonzero row at all, non-finite weights and inputs (where the dense backward's NaNs must appear),
/// finite differences, and shape errors.
/// </summary>
public class LinearKernelTests
{
    private static double MaxDiff(Tensor a, Tensor b) => (a - b).Abs().Max().ToDouble();

    private static Tensor Composed(Tensor x, Tensor w, Tensor? b, LinearWeightLayout layout)
    {
        var y = x.Matmul(layout == LinearWeightLayout.InOut ? w : w.Transpose(0, 1));
        return b is null ? y : y + b;
    }

    /// <summary>An upstream gradient [batch, pos, out] that is nonzero only at the given positions (all when null).</summary>
    private static Tensor Upstream(Generator g, long batch, long pos, long outDim, long[]? livePositions)
    {
        var grad = Torch.Randn([batch, pos, outDim], g, ScalarType.Float64);
        if (livePositions is null) return grad;
        var mask = Torch.Zeros([1, pos, 1], ScalarType.Float64);
        foreach (var p in livePositions) mask.Narrow(1, p, 1).Fill(1.0);
        return grad * mask;
    }

    private static (Tensor Y, Tensor?[] Grads) Run(bool kernel, Tensor x, Tensor w, Tensor? b, LinearWeightLayout layout, Tensor upstream)
    {
        var y = kernel ? Functional.Linear(x, w, b, layout) : Composed(x, w, b, layout);
        Tensor[] inputs = b is null ? [x, w] : [x, w, b];
        return (y, Torch.Autograd.Grad([(y * upstream).Sum()], inputs));
    }

    // live positions: null = dense gradient; the last position only (a last-token loss); two of seven; none.
    [TestCase(LinearWeightLayout.InOut, true, null)]
    [TestCase(LinearWeightLayout.OutIn, true, null)]
    [TestCase(LinearWeightLayout.InOut, true, new long[] { 6 })]
    [TestCase(LinearWeightLayout.OutIn, false, new long[] { 6 })]
    [TestCase(LinearWeightLayout.OutIn, true, new long[] { 0, 4 })]
    [TestCase(LinearWeightLayout.InOut, false, new long[0])]
    public void MatchesMatmulPlusBiasForwardAndBackwardInFloat64(LinearWeightLayout layout, bool withBias, long[]? livePositions)
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(23);
        const long batch = 3, pos = 7, inDim = 13, outDim = 11;
        var x = Torch.Randn([batch, pos, inDim], g, ScalarType.Float64).RequiresGrad_();
        var w = (layout == LinearWeightLayout.InOut ? Torch.Randn([inDim, outDim], g, ScalarType.Float64) : Torch.Randn([outDim, inDim], g, ScalarType.Float64)).RequiresGrad_();
        var b = withBias ? Torch.Randn([outDim], g, ScalarType.Float64).RequiresGrad_() : null;
        var upstream = Upstream(g, batch, pos, outDim, livePositions);

        var (yGot, gradsGot) = Run(true, x, w, b, layout, upstream);
        var (yExpected, gradsExpected) = Run(false, x, w, b, layout, upstream);

        Assert.That(yGot.Shape, Is.EqualTo(new long[] { batch, pos, outDim }));
        Assert.That(MaxDiff(yGot, yExpected), Is.LessThan(1e-12), "output");
        string[] names = ["x", "w", "b"];
        for (var i = 0; i < gradsExpected.Length; i++)
        {
            Assert.That(gradsGot[i]!.Shape, Is.EqualTo(gradsExpected[i]!.Shape), $"shape of the gradient of {names[i]}");
            Assert.That(MaxDiff(gradsGot[i]!, gradsExpected[i]!), Is.LessThan(1e-12), $"gradient of {names[i]}");
        }
        if (livePositions is not null)
        {
            // Rows the loss does not read get an input gradient of exactly zero, not merely a small one.
            var dead = Enumerable.Range(0, (int)pos).Where(p => !livePositions.Contains(p));
            foreach (var p in dead)
                Assert.That(gradsGot[0]!.Narrow(1, p, 1).Abs().Max().ToDouble(), Is.EqualTo(0.0), $"x gradient at position {p}");
        }
    }

    [Test]
    public void OnlyTheRequestedGradientsAreComputed()
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(5);
        var x = Torch.Randn([2, 4, 6], g, ScalarType.Float64);  // no grad: a frozen input
        var w = Torch.Randn([5, 6], g, ScalarType.Float64).RequiresGrad_();
        var upstream = Upstream(g, 2, 4, 5, [3]);
        var got = Torch.Autograd.Grad([(Functional.Linear(x, w) * upstream).Sum()], [w])[0]!;
        var expected = Torch.Autograd.Grad([(Composed(x, w, null, LinearWeightLayout.OutIn) * upstream).Sum()], [w])[0]!;
        Assert.That(MaxDiff(got, expected), Is.LessThan(1e-12));
    }

    [TestCase(double.PositiveInfinity)]
    [TestCase(double.NaN)]
    public void NonFiniteWeightsGiveTheDenseBackwardsNaNs(double bad)
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(9);
        var x = Torch.Randn([2, 5, 4], g, ScalarType.Float64).RequiresGrad_();
        var w = Torch.Randn([3, 4], g, ScalarType.Float64);
        w.Narrow(0, 1, 1).Narrow(1, 2, 1).Fill(bad);
        w.RequiresGrad_();
        var upstream = Upstream(g, 2, 5, 3, [4]);
        var got = Run(true, x, w, null, LinearWeightLayout.OutIn, upstream).Grads;
        var expected = Run(false, x, w, null, LinearWeightLayout.OutIn, upstream).Grads;
        // 0 * inf and 0 * NaN are NaN: rows the loss does not read still get NaN in x's gradient, as in PyTorch.
        for (var i = 0; i < 2; i++)
            Assert.That(got[i]!.IsNan().ValueEquals(expected[i]!.IsNan()), Is.True, $"NaN pattern of gradient {i}");
        Assert.That(expected[0]!.IsNan().Sum().ToDouble(), Is.GreaterThan(0), "the reference has NaNs to match");
    }

    [Test]
    public void ANonFiniteInputOnAnUnreadRowReachesTheWeightGradient()
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(10);
        var x = Torch.Randn([1, 5, 4], g, ScalarType.Float64);
        x.Narrow(1, 0, 1).Narrow(2, 1, 1).Fill(double.PositiveInfinity);  // position 0, which the loss does not read
        x.RequiresGrad_();
        var w = Torch.Randn([4, 3], g, ScalarType.Float64).RequiresGrad_();
        var upstream = Upstream(g, 1, 5, 3, [4]);
        var got = Run(true, x, w, null, LinearWeightLayout.InOut, upstream).Grads[1]!;
        var expected = Run(false, x, w, null, LinearWeightLayout.InOut, upstream).Grads[1]!;
        Assert.That(expected.IsNan().Sum().ToDouble(), Is.GreaterThan(0));
        Assert.That(got.IsNan().ValueEquals(expected.IsNan()), Is.True);
    }

    [Test]
    public void GradientsMatchFiniteDifferencesWithDenseAndSparseUpstreamGradients()
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(3);
        var mask = Torch.Zeros([1, 6, 1], ScalarType.Float64);
        mask.Narrow(1, 5, 1).Fill(1.0);
        // Dense: GradCheck's random weighting reads every row. Sparse: only the last position reaches the loss.
        GradCheck.Verify(t => Functional.Linear(t[0], t[1], t[2], LinearWeightLayout.InOut),
            [Torch.Randn([2, 6, 4], g, ScalarType.Float64), Torch.Randn([4, 3], g, ScalarType.Float64), Torch.Randn([3], g, ScalarType.Float64)]);
        GradCheck.Verify(t => Functional.Linear(t[0], t[1], t[2], LinearWeightLayout.OutIn) * mask,
            [Torch.Randn([2, 6, 4], g, ScalarType.Float64), Torch.Randn([3, 4], g, ScalarType.Float64), Torch.Randn([3], g, ScalarType.Float64)]);
    }

    [TestCase(ScalarType.Float32, 1e-5)]
    [TestCase(ScalarType.BFloat16, 5e-2)]
    public void OtherDtypesAgreeWithFloat64(ScalarType dtype, double tolerance)
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(31);
        var x64 = Torch.Randn([2, 9, 8], g, ScalarType.Float64) * 0.5;
        var w64 = Torch.Randn([8, 5], g, ScalarType.Float64) * 0.5;
        var upstream64 = Upstream(g, 2, 9, 5, [8]);
        var x = x64.To(dtype).RequiresGrad_();
        var w = w64.To(dtype).RequiresGrad_();
        var y = Functional.Linear(x, w, null, LinearWeightLayout.InOut);
        var grads = Torch.Autograd.Grad([(y * upstream64.To(dtype)).Sum()], [x, w]);
        var (yRef, gradsRef) = Run(false, x64.RequiresGrad_(), w64.RequiresGrad_(), null, LinearWeightLayout.InOut, upstream64);
        Assert.That(MaxDiff(y.To(ScalarType.Float64), yRef), Is.LessThan(tolerance * 10));
        for (var i = 0; i < 2; i++)
            Assert.That(MaxDiff(grads[i]!.To(ScalarType.Float64), gradsRef[i]!), Is.LessThan(tolerance * 10), $"gradient {i}");
    }

    [Test]
    public void MismatchedShapesAreArgumentErrorsNamingTheShapes()
    {
        using var scope = Torch.NewScope();
        var x = Torch.Zeros([2, 7, 11], ScalarType.Float64);
        var e = Assert.Throws<ArgumentException>(() => Functional.Linear(x, Torch.Zeros([10, 5], ScalarType.Float64), null, LinearWeightLayout.InOut))!;
        Assert.That(e.Message, Does.Contain("[2, 7, 11]").And.Contain("[10, 5]"));
        e = Assert.Throws<ArgumentException>(() => Functional.Linear(x, Torch.Zeros([5, 11], ScalarType.Float64), Torch.Zeros([4], ScalarType.Float64)))!;
        Assert.That(e.Message, Does.Contain("bias [4]").And.Contain("[5]"));
        e = Assert.Throws<ArgumentException>(() => Functional.Linear(x, Torch.Zeros([5, 11], ScalarType.Float64), null, (LinearWeightLayout)7))!;
        Assert.That(e.Message, Does.Contain("layout"));
    }
}
