using SharpLens.Testing;

namespace SharpLens.Tensors.Tests;

/// <summary>
/// <see cref="TransformerOps.QkvProject"/> (one input per q/k/v part) against the projection written here from
/// elementary ops on the fused HF weight, in float64: outputs and the gradients of the three inputs, the weight and
/// the bias, for both fused layouts, distinct and shared inputs, and a part whose output is unused.
/// </summary>
public class QkvProjectTests
{
    private static double MaxDiff(Tensor a, Tensor b) => (a - b).Abs().Max().ToDouble();

    [TestCase(QkvLayout.PartMajorInOut, true, false)]
    [TestCase(QkvLayout.PartMajorInOut, false, true)]
    [TestCase(QkvLayout.HeadMajorOutIn, true, false)]
    [TestCase(QkvLayout.HeadMajorOutIn, false, true)]
    [TestCase(QkvLayout.HeadMajorOutIn, true, true)]
    public void MatchesTheFusedProjectionForwardAndBackward(QkvLayout layout, bool withBias, bool sharedInput)
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(17);
        const long b = 2, p = 7, h = 3, d = 5, m = 11;
        var xs = Enumerable.Range(0, 3).Select(_ => Torch.Randn([b, p, m], g, ScalarType.Float64).RequiresGrad_()).ToArray();
        if (sharedInput) xs = [xs[0], xs[0], xs[0]];
        var w = (layout == QkvLayout.PartMajorInOut ? Torch.Randn([m, 3 * h * d], g, ScalarType.Float64) : Torch.Randn([3 * h * d, m], g, ScalarType.Float64)).RequiresGrad_();
        var bias = withBias ? Torch.Randn([3 * h * d], g, ScalarType.Float64).RequiresGrad_() : null;
        var weights = Enumerable.Range(0, 3).Select(_ => Torch.Randn([b, p, h, d], g, ScalarType.Float64)).ToArray();
        var (q, k, v) = TransformerOps.QkvProject(layout, xs[0], xs[1], xs[2], w, bias, h);
        Tensor[] got = [q, k, v];
        var expected = Enumerable.Range(0, 3).Select(i => QkvOracle.Part(layout, xs[i], w, bias, i, h, d)).ToArray();
        var inputs = xs.Distinct().Append(w).Concat(bias is null ? [] : new[] { bias }).ToList();
        for (var i = 0; i < 3; i++) Assert.That(MaxDiff(got[i], expected[i]), Is.LessThan(1e-12), $"part {i}");
        // k unused: its part of the weight gradient must be exactly zero, the others as the reference.
        var lossGot = (got[0] * weights[0]).Sum() + (got[2] * weights[2]).Sum();
        var lossExpected = (expected[0] * weights[0]).Sum() + (expected[2] * weights[2]).Sum();
        var gGot = Torch.Autograd.Grad([lossGot], inputs, allowUnused: true);
        var gExpected = Torch.Autograd.Grad([lossExpected], inputs, allowUnused: true);
        for (var i = 0; i < inputs.Count; i++)
        {
            if (gExpected[i] is null) { Assert.That(gGot[i] is null || gGot[i]!.Abs().Max().ToDouble() == 0, $"input {i}: no gradient expected"); continue; }
            Assert.That(MaxDiff(gGot[i]!, gExpected[i]!), Is.LessThan(1e-10), $"gradient of input {i}");
        }
    }

    [Test]
    public void MismatchedInputsAreArgumentErrorsNamingTheShapes()
    {
        using var scope = Torch.NewScope();
        var x = Torch.Zeros([2, 7, 11], ScalarType.Float64);
        var e = Assert.Throws<ArgumentException>(() => TransformerOps.QkvProject(QkvLayout.PartMajorInOut, x, x, x, Torch.Zeros([10, 45], ScalarType.Float64), null, 3))!;
        Assert.That(e.Message, Does.Contain("[10, 45]"));
        e = Assert.Throws<ArgumentException>(() => TransformerOps.QkvProject(QkvLayout.PartMajorInOut, x, Torch.Zeros([1, 7, 11], ScalarType.Float64), x, Torch.Zeros([11, 45], ScalarType.Float64), null, 3))!;
        Assert.That(e.Message, Does.Contain("[1, 7, 11]"));
    }
}
