namespace SharpLens.Tensors.Tests;

/// <summary>
/// The materialising attention kernels used when a hook wants the scores or the pattern
/// (<see cref="TransformerOps.AttentionScores"/>, <see cref="TransformerOps.AttentionPattern"/>,
/// <see cref="TransformerOps.AttentionCausalPattern"/>, <see cref="TransformerOps.AttentionApply"/>,
/// <see cref="TransformerOps.AttentionApplyCausal"/>), in float64 against the plain ATen composition and against a
/// composition written here from elementary tensor ops, including hook-style replacements and finite differences.
/// </summary>
public class StagedAttentionTests
{
    private static double MaxDiff(Tensor a, Tensor b) => (a - b).Abs().Max().ToDouble();

    /// <summary>Row 0 left-padded by 3, later rows right-padded by 2: some queries see no key at all.</summary>
    private static Tensor? Mask(int batch, int pk, bool padded)
    {
        if (!padded) return null;
        var m = new long[batch * pk];
        for (var b = 0; b < batch; b++)
            for (var p = 0; p < pk; p++)
                m[b * pk + p] = b == 0 ? (p >= Math.Min(3, pk - 1) ? 1 : 0) : (p < pk - 2 ? 1 : 0);
        return Torch.FromArray(m, batch, pk);
    }

    /// <summary>[q_pos, k_pos] booleans: true above the causal diagonal (query i sits at key i + pk - pq).</summary>
    private static Tensor Future(long pq, long pk)
    {
        var m = new bool[pq * pk];
        for (var i = 0; i < pq; i++)
            for (var j = 0; j < pk; j++)
                m[i * pk + j] = j > i + (pk - pq);
        return Torch.FromArray(m, pq, pk);
    }

    [TestCase(1, 1, 1, 1, 8, 1, false)]       // one token
    [TestCase(2, 7, 7, 3, 16, 3, false)]      // odd length
    [TestCase(2, 65, 65, 4, 16, 4, true)]     // crosses a tile boundary, padded
    [TestCase(1, 130, 130, 2, 64, 2, true)]   // several tiles each way
    [TestCase(2, 5, 19, 4, 8, 4, false)]      // cached prefix
    [TestCase(2, 33, 33, 8, 7, 2, true)]      // grouped-query, odd d_head
    [TestCase(1, 300, 300, 2, 32, 1, false)]  // long-ish, multi-query
    public void StagedKernelsMatchTheCompositionForwardAndBackward(int batch, int pq, int pk, int heads, int dHead, int kvHeads, bool padded)
    {
        using var scope = Torch.NewScope();
        using var g = new Generator((ulong)(batch * 1000 + pq * 10 + heads));
        var q = Torch.Randn([batch, pq, heads, dHead], g, ScalarType.Float64).RequiresGrad_();
        var k = Torch.Randn([batch, pk, kvHeads, dHead], g, ScalarType.Float64).RequiresGrad_();
        var v = Torch.Randn([batch, pk, kvHeads, dHead], g, ScalarType.Float64).RequiresGrad_();
        var mask = Mask(batch, pk, padded);
        var scale = 1 / Math.Sqrt(dHead);
        var wz = Torch.Randn([batch, pq, heads, dHead], g, ScalarType.Float64);
        var wp = Torch.Randn([batch, heads, pq, pk], g, ScalarType.Float64);  // a hook's use of the pattern

        var composed = TransformerOps.Attention(q, k, v, mask, scale, AttentionImplementation.Composed);
        // The pattern a hook sees, from the composition's own steps in this dtype, for the pattern's gradient.
        var reference = Run(TransformerOps.AttentionPattern(TransformerOps.AttentionScores(q, k, mask, scale)), causal: false, fromComposition: true);

        (Tensor Z, Tensor?[] Grads) Run(Tensor pattern, bool causal, bool fromComposition = false)
        {
            var z = fromComposition ? composed : causal ? TransformerOps.AttentionApplyCausal(pattern, v) : TransformerOps.AttentionApply(pattern, v);
            var loss = (z * wz).Sum() + (pattern * wp).Sum();
            return (z, Torch.Autograd.Grad([loss], [q, k, v]));
        }

        var viaScores = Run(TransformerOps.AttentionPattern(TransformerOps.AttentionScores(q, k, mask, scale)), causal: true);
        var viaPattern = Run(TransformerOps.AttentionCausalPattern(q, k, mask, scale), causal: true);
        var dense = Run(TransformerOps.AttentionCausalPattern(q, k, mask, scale), causal: false);
        foreach (var (name, r) in new[] { ("scores->pattern->apply causal", viaScores), ("causal pattern->apply causal", viaPattern), ("causal pattern->apply", dense) })
        {
            Assert.That(MaxDiff(r.Z, composed), Is.LessThan(1e-10), $"{name}: z");
            string[] grads = ["dq", "dk", "dv"];
            for (var i = 0; i < 3; i++) Assert.That(MaxDiff(r.Grads[i]!, reference.Grads[i]!), Is.LessThan(1e-10), $"{name}: {grads[i]}");
        }
    }

    [Test]
    public void ScoresAndPatternEqualAnElementaryComposition()
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(11);
        const int b = 2, pq = 70, pk = 75, h = 3, d = 9;
        var q = Torch.Randn([b, pq, h, d], g, ScalarType.Float64);
        var k = Torch.Randn([b, pk, h, d], g, ScalarType.Float64);
        var future = Future(pq, pk).View(1, 1, pq, pk);
        var expectedScores = q.Permute(0, 2, 1, 3).Matmul(k.Permute(0, 2, 3, 1)) * 0.3;
        var scores = TransformerOps.AttentionScores(q, k, null, 0.3);
        Assert.That(scores.MaskedFill(future, 0).Sub(expectedScores.MaskedFill(future, 0)).Abs().Max().ToDouble(), Is.LessThan(1e-12));
        Assert.That(scores.MaskedFill(future.LogicalNot(), 0).Eq(double.NegativeInfinity).Sum().ToInt64(), Is.EqualTo(future.Sum().ToInt64() * b * h),
            "exactly the future keys are -inf");
        var expectedPattern = expectedScores.MaskedFill(future, double.NegativeInfinity).Softmax(-1);
        Assert.That(MaxDiff(TransformerOps.AttentionPattern(scores), expectedPattern), Is.LessThan(1e-14));
        Assert.That(MaxDiff(TransformerOps.AttentionCausalPattern(q, k, null, 0.3), expectedPattern), Is.LessThan(1e-14));
    }

    [Test]
    public void ReplacedScoresAndPatternsAreUsedInFull()
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(5);
        const int b = 1, p = 67, h = 2, d = 8;
        // Scores a hook replaced with finite values everywhere, above the diagonal too: softmax over the whole row.
        var scores = Torch.Randn([b, h, p, p], g, ScalarType.Float64).RequiresGrad_();
        var pattern = TransformerOps.AttentionPattern(scores);
        var expected = scores.Softmax(-1);
        Assert.That(MaxDiff(pattern, expected), Is.LessThan(1e-14));
        var w = Torch.Randn([b, h, p, p], g, ScalarType.Float64);
        Assert.That(MaxDiff(Torch.Autograd.Grad([(pattern * w).Sum()], [scores])[0]!, Torch.Autograd.Grad([(expected * w).Sum()], [scores])[0]!), Is.LessThan(1e-12));

        // A dense replaced pattern: AttentionApply uses all of it; AttentionApplyCausal only its causal part.
        var dense = Torch.Randn([b, h, p, p], g, ScalarType.Float64);
        var v = Torch.Randn([b, p, h, d], g, ScalarType.Float64);
        var full = dense.Matmul(v.Permute(0, 2, 1, 3)).Permute(0, 2, 1, 3);
        Assert.That(MaxDiff(TransformerOps.AttentionApply(dense, v), full), Is.LessThan(1e-12));
        var lower = dense.MaskedFill(Future(p, p).View(1, 1, p, p), 0);
        var causalPart = lower.Matmul(v.Permute(0, 2, 1, 3)).Permute(0, 2, 1, 3);
        Assert.That(MaxDiff(TransformerOps.AttentionApplyCausal(dense, v), causalPart), Is.LessThan(1e-12));
    }

    [Test]
    public void StagedGradientsMatchFiniteDifferences()
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(9);
        Tensor R(params long[] shape) => Torch.Randn(shape, g, ScalarType.Float64);
        var mask = Torch.FromArray(new long[] { 0, 1, 1, 1, 1, 1 }, 1, 6);
        GradCheck.Verify(x =>
        {
            var scores = TransformerOps.AttentionScores(x[0], x[1], mask, 0.5);
            return scores.MaskedFill(scores.Eq(double.NegativeInfinity), 0);  // the masked entries are constants
        }, [R(1, 6, 2, 3), R(1, 6, 2, 3)]);
        GradCheck.Verify(x => TransformerOps.AttentionCausalPattern(x[0], x[1], mask, 0.5), [R(1, 6, 2, 3), R(1, 6, 2, 3)]);
        GradCheck.Verify(x => TransformerOps.AttentionPattern(x[0]), [R(1, 2, 5, 5)]);
        GradCheck.Verify(x => TransformerOps.AttentionApply(x[0], x[1]), [R(1, 2, 5, 5), R(1, 5, 2, 3)]);
        GradCheck.Verify(x => TransformerOps.AttentionApplyCausal(TransformerOps.AttentionCausalPattern(x[0], x[1], null, 0.5), x[2]), [R(1, 5, 2, 3), R(1, 5, 2, 3), R(1, 5, 2, 3)]);
    }

    [Test]
    public void Float32AndHalfPrecisionAgreeWithTheComposition()
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(3);
        var q = Torch.Randn([2, 200, 4, 64], g);
        var k = Torch.Randn([2, 200, 4, 64], g);
        var v = Torch.Randn([2, 200, 4, 64], g);
        var composed = TransformerOps.Attention(q, k, v, null, 0.125, AttentionImplementation.Composed);
        var staged = TransformerOps.AttentionApplyCausal(TransformerOps.AttentionCausalPattern(q, k, null, 0.125), v);
        Assert.That(MaxDiff(staged, composed), Is.LessThan(1e-5));
        // bfloat16 has no kernel: the composition runs (softmax in float32), with the same shapes and contract.
        var (qb, kb, vb) = (q.To(ScalarType.BFloat16), k.To(ScalarType.BFloat16), v.To(ScalarType.BFloat16));
        var zb = TransformerOps.AttentionApplyCausal(TransformerOps.AttentionCausalPattern(qb, kb, null, 0.125), vb);
        Assert.That(zb.DType, Is.EqualTo(ScalarType.BFloat16));
        Assert.That(MaxDiff(zb.To(ScalarType.Float32), composed), Is.LessThan(0.1));
    }

    [Test]
    public void MismatchedShapesAreArgumentErrors()
    {
        using var scope = Torch.NewScope();
        var q = Torch.Zeros([1, 4, 2, 8], ScalarType.Float64);
        var e = Assert.Throws<ArgumentException>(() => TransformerOps.AttentionCausalPattern(q, q, Torch.Ones([1, 5]), 1))!;
        Assert.That(e.Message, Does.Contain("key mask").And.Contain("[1, 5]"));
        e = Assert.Throws<ArgumentException>(() => TransformerOps.AttentionApplyCausal(Torch.Zeros([1, 2, 4, 4], ScalarType.Float64), Torch.Zeros([1, 6, 2, 8], ScalarType.Float64)))!;
        Assert.That(e.Message, Does.Contain("[1, 2, 4, 4]").And.Contain("[1, 6, 2, 8]"));
        Assert.Throws<ArgumentException>(() => TransformerOps.AttentionPattern(Torch.Zeros([4, 4], ScalarType.Float64)));
    }
}
