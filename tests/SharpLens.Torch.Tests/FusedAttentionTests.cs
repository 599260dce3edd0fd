namespace SharpLens.Tensors.Tests;

/// <summary>
/// The fused CPU attention kernel against the plain composition (matmul, mask, softmax, matmul) in float64:
/// outputs and the gradients of q, k and v agree to 1e-10 over odd lengths, one token, long sequences, cached
/// prefixes (more keys than queries), padding masks and grouped-query attention.
/// </summary>
public class FusedAttentionTests
{
    private static double MaxDiff(Tensor a, Tensor b) => (a - b).Abs().Max().ToDouble();

    [TestCase(1, 1, 1, 1, 8, 1, false)]       // one token
    [TestCase(2, 7, 7, 3, 16, 3, false)]      // odd length
    [TestCase(2, 65, 65, 4, 16, 4, true)]     // crosses a tile boundary, padded
    [TestCase(1, 130, 130, 2, 64, 2, true)]   // several tiles each way
    [TestCase(2, 5, 19, 4, 8, 4, false)]      // cached prefix: queries are the last 5 of 19 positions
    [TestCase(2, 33, 33, 8, 16, 2, true)]     // grouped-query: 8 query heads over 2 key/value heads
    [TestCase(1, 300, 300, 2, 32, 1, false)]  // long-ish, multi-query
    public void FusedMatchesComposedForwardAndBackward(int batch, int pq, int pk, int heads, int dHead, int kvHeads, bool padded)
    {
        using var scope = Torch.NewScope();
        using var g = new Generator((ulong)(batch * 1000 + pq * 10 + heads));
        var q = Torch.Randn([batch, pq, heads, dHead], g, ScalarType.Float64).RequiresGrad_();
        var k = Torch.Randn([batch, pk, kvHeads, dHead], g, ScalarType.Float64).RequiresGrad_();
        var v = Torch.Randn([batch, pk, kvHeads, dHead], g, ScalarType.Float64).RequiresGrad_();
        Tensor? mask = null;
        if (padded)
        {
            // Row 0 is left-padded by 3, later rows right-padded by 2: some queries see no key at all.
            var m = new long[batch * pk];
            for (var b = 0; b < batch; b++)
                for (var p = 0; p < pk; p++)
                    m[b * pk + p] = b == 0 ? (p >= Math.Min(3, pk - 1) ? 1 : 0) : (p < pk - 2 ? 1 : 0);
            mask = Torch.FromArray(m, batch, pk);
        }
        var scale = 1 / Math.Sqrt(dHead);
        var weight = Torch.Randn([batch, pq, heads, dHead], g, ScalarType.Float64);
        var fused = TransformerOps.Attention(q, k, v, mask, scale, AttentionImplementation.Fused);
        var composed = TransformerOps.Attention(q, k, v, mask, scale, AttentionImplementation.Composed);
        Assert.That(fused.Shape, Is.EqualTo(new long[] { batch, pq, heads, dHead }));
        Assert.That(MaxDiff(fused, composed), Is.LessThan(1e-10), "forward");
        var gf = Torch.Autograd.Grad([(fused * weight).Sum()], [q, k, v]);
        var gc = Torch.Autograd.Grad([(composed * weight).Sum()], [q, k, v]);
        string[] names = ["dq", "dk", "dv"];
        for (var i = 0; i < 3; i++) Assert.That(MaxDiff(gf[i]!, gc[i]!), Is.LessThan(1e-10), names[i]);
    }

    [Test]
    public void FusedGradientsMatchFiniteDifferences()
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(7);
        var inputs = new[] { Torch.Randn([1, 5, 2, 4], g, ScalarType.Float64), Torch.Randn([1, 5, 2, 4], g, ScalarType.Float64), Torch.Randn([1, 5, 2, 4], g, ScalarType.Float64) };
        GradCheck.Verify(x => TransformerOps.Attention(x[0], x[1], x[2], null, 0.5, AttentionImplementation.Fused), inputs);
    }

    [Test]
    public void Float32FusedAgreesWithComposed()
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(3);
        var q = Torch.Randn([2, 200, 4, 64], g);
        var k = Torch.Randn([2, 200, 4, 64], g);
        var v = Torch.Randn([2, 200, 4, 64], g);
        var fused = TransformerOps.Attention(q, k, v, null, 0.125, AttentionImplementation.Fused);
        var composed = TransformerOps.Attention(q, k, v, null, 0.125, AttentionImplementation.Composed);
        Assert.That(MaxDiff(fused, composed), Is.LessThan(1e-5));
    }

    [Test]
    public void FusedRefusesWhatItCannotRun()
    {
        using var scope = Torch.NewScope();
        var q = Torch.Zeros([1, 4, 2, 8], ScalarType.BFloat16);
        var ex = Assert.Throws<ArgumentException>(() => TransformerOps.Attention(q, q, q, null, 1, AttentionImplementation.Fused));
        Assert.That(ex!.Message, Does.Contain("float32 or float64"));
        // Auto falls back to the composition for such inputs.
        Assert.That(TransformerOps.Attention(q, q, q, null, 1).Shape, Is.EqualTo(new long[] { 1, 4, 2, 8 }));
        var bad = Torch.Zeros([1, 4, 3, 8], ScalarType.Float64);
        var kv = Torch.Zeros([1, 4, 2, 8], ScalarType.Float64);
        Assert.Throws<ArgumentException>(() => TransformerOps.Attention(bad, kv, kv, null, 1, AttentionImplementation.Composed));
    }
}
