namespace SharpLens.Tensors.Tests;

/// <summary>
/// The one attention contract (<see cref="AttentionOptions"/>: scale, soft-cap, sliding window, float32 softmax) on every
/// path: the fused CPU kernel, the staged scores → pattern → apply path and the composition, each against an elementary
/// float64 reference written here with loops straight from the rule (query i of p_q sits at key position i + p_k − p_q and
/// sees key j when j ≤ i + p_k − p_q and, with a window w, j &gt; i + p_k − p_q − w). Values and q/k/v gradients agree to
/// 1e-10 in float64; the fused kernel's gradients also against finite differences.
/// </summary>
public class AttentionContractTests
{
    private static double MaxDiff(Tensor a, Tensor b) => (a - b).Abs().Max().ToDouble();

    /// <summary>z [b, p_q, h, d] by loops: scaled scores, soft-cap, rule + key mask, softmax (0 where nothing is visible), weighted sum.</summary>
    private static double[] Elementary(Tensor q, Tensor k, Tensor v, long[]? keyMask, AttentionOptions o)
    {
        var (b, pq, h, d) = (q.Size(0), q.Size(1), q.Size(2), q.Size(3));
        var (pk, hkv) = (k.Size(1), k.Size(2));
        var (qa, ka, va) = (q.ToArray<double>(), k.ToArray<double>(), v.ToArray<double>());
        var z = new double[b * pq * h * d];
        var offset = pk - pq;
        for (long bi = 0; bi < b; bi++)
            for (long hi = 0; hi < h; hi++)
            {
                var hk = hi / (h / hkv);
                for (long i = 0; i < pq; i++)
                {
                    var s = new double[pk];
                    var visible = new bool[pk];
                    for (long j = 0; j < pk; j++)
                    {
                        visible[j] = j <= i + offset && (o.Window <= 0 || j > i + offset - o.Window) && (keyMask is null || keyMask[bi * pk + j] != 0);
                        double dot = 0;
                        for (long x = 0; x < d; x++) dot += qa[((bi * pq + i) * h + hi) * d + x] * ka[((bi * pk + j) * hkv + hk) * d + x];
                        s[j] = dot * o.Scale;
                        if (o.SoftCap > 0) s[j] = o.SoftCap * Math.Tanh(s[j] / o.SoftCap);
                    }
                    var max = double.NegativeInfinity;
                    for (long j = 0; j < pk; j++) if (visible[j]) max = Math.Max(max, s[j]);
                    if (double.IsNegativeInfinity(max)) continue;  // no visible key: z = 0
                    double sum = 0;
                    var p = new double[pk];
                    for (long j = 0; j < pk; j++) sum += p[j] = visible[j] ? Math.Exp(s[j] - max) : 0;
                    for (long j = 0; j < pk; j++)
                        for (long x = 0; x < d; x++)
                            z[((bi * pq + i) * h + hi) * d + x] += p[j] / sum * va[((bi * pk + j) * hkv + hk) * d + x];
                }
            }
        return z;
    }

    private static (Tensor Q, Tensor K, Tensor V, long[]? Mask) Inputs(int seed, int batch, int pq, int pk, int heads, int kvHeads, int d, bool padded)
    {
        using var g = new Generator((ulong)seed);
        var q = Torch.Randn([batch, pq, heads, d], g, ScalarType.Float64).RequiresGrad_();
        var k = Torch.Randn([batch, pk, kvHeads, d], g, ScalarType.Float64).RequiresGrad_();
        var v = Torch.Randn([batch, pk, kvHeads, d], g, ScalarType.Float64).RequiresGrad_();
        long[]? mask = null;
        if (padded)
        {
            mask = new long[batch * pk];
            for (var b = 0; b < batch; b++)
                for (var p = 0; p < pk; p++) mask[b * pk + p] = b == 0 ? (p >= 2 ? 1 : 0) : 1;  // row 0 left-padded by 2
        }
        return (q, k, v, mask);
    }

    public static IEnumerable<TestCaseData> Cases()
    {
        // (batch, p_q, p_k, heads, kv heads, d, padded, scale, soft-cap, window)
        yield return new TestCaseData(2, 12, 12, 4, 2, 16, false, 0.25, 0.0, 8L).SetName("window 8 over 12 tokens (Mistral), grouped-query");
        yield return new TestCaseData(2, 12, 12, 4, 2, 16, false, 1 / Math.Sqrt(24), 50.0, 0L).SetName("soft-cap 50 (Gemma 2 global layer)");
        yield return new TestCaseData(2, 12, 12, 4, 2, 16, true, 1 / Math.Sqrt(24), 0.5, 8L).SetName("soft-cap 0.5 (saturating) and window, padded");
        yield return new TestCaseData(1, 150, 150, 2, 1, 32, false, 0.2, 0.0, 70L).SetName("window 70 over 150: whole key tiles skipped");
        yield return new TestCaseData(2, 5, 19, 4, 4, 8, true, 0.3, 3.0, 6L).SetName("cached prefix with window and cap");
        yield return new TestCaseData(1, 9, 9, 2, 2, 8, false, 0.5, 0.0, 1L).SetName("window 1: each query sees only itself");
        yield return new TestCaseData(1, 7, 7, 2, 2, 8, false, 0.5, 0.0, 100L).SetName("window longer than the sequence: plain causal");
    }

    [TestCaseSource(nameof(Cases))]
    public void EveryPathFollowsTheRuleAndTheCap(int batch, int pq, int pk, int heads, int kvHeads, int d, bool padded, double scale, double cap, long window)
    {
        using var scope = Torch.NewScope();
        var (q, k, v, m) = Inputs(batch * 100 + pq + (int)window, batch, pq, pk, heads, kvHeads, d, padded);
        var mask = m is null ? null : Torch.FromArray(m, batch, pk);
        var options = new AttentionOptions(scale, cap, window);
        var expected = Torch.FromArray(Elementary(q, k, v, m, options), batch, pq, heads, d);
        var fused = TransformerOps.Attention(q, k, v, mask, options, AttentionImplementation.Fused);
        var composed = TransformerOps.Attention(q, k, v, mask, options, AttentionImplementation.Composed);
        var scores = TransformerOps.AttentionScores(q, k, mask, options);
        var staged = TransformerOps.AttentionApply(TransformerOps.AttentionPattern(scores, options), v);
        var pattern = TransformerOps.AttentionCausalPattern(q, k, mask, options);
        Assert.Multiple(() =>
        {
            Assert.That(MaxDiff(expected, fused), Is.LessThan(1e-10), "fused");
            Assert.That(MaxDiff(expected, composed), Is.LessThan(1e-10), "composed");
            Assert.That(MaxDiff(expected, staged), Is.LessThan(1e-10), "staged");
            Assert.That(MaxDiff(expected, TransformerOps.AttentionApply(pattern, v)), Is.LessThan(1e-10), "pattern in one call");
        });
        // Hidden scores are -inf exactly where the rule (or the mask) hides the key.
        var s = scores.ToArray<double>();
        var offset = pk - pq;
        for (var b = 0; b < batch; b++)
            for (var h = 0; h < heads; h++)
                for (var i = 0; i < pq; i++)
                    for (var j = 0; j < pk; j++)
                    {
                        var hidden = j > i + offset || (window > 0 && j <= i + offset - window) || (m is not null && m[b * pk + j] == 0);
                        Assert.That(double.IsNegativeInfinity(s[((b * heads + h) * pq + i) * pk + j]), Is.EqualTo(hidden), $"score ({b}, {h}, {i}, {j})");
                    }
        var weight = Torch.Randn([batch, pq, heads, d], new Generator(5), ScalarType.Float64);
        var gf = Torch.Autograd.Grad([(fused * weight).Sum()], [q, k, v]);
        var gc = Torch.Autograd.Grad([(composed * weight).Sum()], [q, k, v]);
        var gs = Torch.Autograd.Grad([(staged * weight).Sum()], [q, k, v]);
        string[] names = ["dq", "dk", "dv"];
        Assert.Multiple(() =>
        {
            for (var i = 0; i < 3; i++)
            {
                Assert.That(MaxDiff(gf[i]!, gc[i]!), Is.LessThan(1e-10), "fused " + names[i]);
                Assert.That(MaxDiff(gs[i]!, gc[i]!), Is.LessThan(1e-10), "staged " + names[i]);
            }
        });
    }

    [Test]
    public void FusedGradientsWithCapAndWindowMatchFiniteDifferences()
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(11);
        var inputs = new[] { Torch.Randn([1, 6, 2, 4], g, ScalarType.Float64), Torch.Randn([1, 6, 1, 4], g, ScalarType.Float64), Torch.Randn([1, 6, 1, 4], g, ScalarType.Float64) };
        var options = new AttentionOptions(0.7, 1.5, 3);
        GradCheck.Verify(x => TransformerOps.Attention(x[0], x[1], x[2], null, options, AttentionImplementation.Fused), inputs);
    }

    [Test]
    public void Float32SoftmaxOfFloat64ScoresIsTheFloat32RoundedSoftmax()
    {
        using var scope = Torch.NewScope();
        var (q, k, v, _) = Inputs(3, 2, 10, 10, 4, 2, 8, false);
        var options = new AttentionOptions(0.35, 0, 4, softmaxInFloat32: true);
        var scores = TransformerOps.AttentionScores(q, k, null, options);
        // HuggingFace's softmax(scores, dtype=float32).to(float64), written with ordinary ops.
        var expectedPattern = scores.Softmax(-1, ScalarType.Float32).To(ScalarType.Float64);
        expectedPattern = Torch.Where(expectedPattern.IsNan(), Torch.Zeros([], ScalarType.Float64), expectedPattern);
        Assert.That(MaxDiff(expectedPattern, TransformerOps.AttentionPattern(scores, options)), Is.EqualTo(0), "staged pattern");
        Assert.That(MaxDiff(expectedPattern, TransformerOps.AttentionCausalPattern(q, k, null, options)), Is.EqualTo(0), "one-call pattern");
        var z = TransformerOps.Attention(q, k, v, null, options);
        Assert.That(MaxDiff(TransformerOps.AttentionApply(expectedPattern, v), z), Is.LessThan(1e-15), "Auto takes the composition for it");
        Assert.That(MaxDiff(z, TransformerOps.Attention(q, k, v, null, options with { SoftmaxInFloat32 = false })), Is.GreaterThan(1e-12),
            "and it is not the float64 softmax");
    }

    [TestCase(double.NaN, 0, 0L, 0, "scale")]
    [TestCase(1, -1, 0L, 0, "softcap")]
    [TestCase(1, double.PositiveInfinity, 0L, 0, "softcap")]
    [TestCase(1, 0, -2L, 0, "window")]
    public void BadOptionsAreRefusedByName(double scale, double cap, long window, int _, string named)
    {
        using var scope = Torch.NewScope();
        var q = Torch.Zeros([1, 3, 2, 4], ScalarType.Float64);
        var options = new AttentionOptions(scale, cap, window);
        Assert.Multiple(() =>
        {
            foreach (var call in new Func<Tensor>[]
                     {
                         () => TransformerOps.Attention(q, q, q, null, options),
                         () => TransformerOps.AttentionScores(q, q, null, options),
                         () => TransformerOps.AttentionCausalPattern(q, q, null, options),
                     })
                Assert.That(() => call(), Throws.ArgumentException.With.Message.Contain(named));
        });
    }
}
