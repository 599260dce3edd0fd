using SharpLens.Testing;
namespace SharpLens.Tensors.Tests;

/// <summary>
/// The rotary kernel (<see cref="TransformerOps.Rotary(Tensor, Tensor, long, double)"/> on float32/float64 CPU, and
/// <see cref="TransformerOps.RotaryQk"/>) against a reference written here from elementary ops, with the cos/sin
/// tables computed in C# from the formula (inv_freq_i = base^(-2i / rotary_dim), angle = pos * inv_freq,
/// emb = cat(angles, angles)): values and gradients in float64, finite differences, strided views as a QKV split
/// produces them, left-padded and arbitrary positions, float32 against float64, the half-precision fallback, and
/// argument errors.
/// </summary>
public class RotaryKernelTests
{
    private const double Base = 10000;

    private static double MaxDiff(Tensor a, Tensor b) => (a.To(ScalarType.Float64) - b.To(ScalarType.Float64)).Abs().Max().ToDouble();

    /// <summary>How the test presents x to the kernel: contiguous, or one of the strided views models produce.</summary>
    public enum Layout
    {
        Contiguous,
        /// <summary>The k part of a GPT-2 style fused output [b, p, 3*h*d]: narrow(2, h*d, h*d).view(b, p, h, d).</summary>
        Gpt2Split,
        /// <summary>The k part of a GPT-NeoX fused output [b, p, h*3*d]: view(b, p, h, 3, d).select(3, 1).</summary>
        NeoXSplit,
        /// <summary>[b, h, p, d].transpose(1, 2).</summary>
        Transposed,
        /// <summary>[b, p, d, h].transpose(2, 3): the feature stride is h, not 1.</summary>
        StridedFeatures,
    }

    /// <summary>A float64 leaf to differentiate against and the [b, p, h, d] view of it given to the op.</summary>
    private static (Tensor Source, Tensor X) MakeInput(Generator g, Layout layout, long b, long p, long h, long d, ScalarType dtype = ScalarType.Float64)
    {
        switch (layout)
        {
            case Layout.Contiguous:
            {
                var s = Torch.Randn([b, p, h, d], g, dtype).RequiresGrad_();
                return (s, s);
            }
            case Layout.Gpt2Split:
            {
                var s = Torch.Randn([b, p, 3 * h * d], g, dtype).RequiresGrad_();
                return (s, s.Narrow(2, h * d, h * d).View(b, p, h, d));
            }
            case Layout.NeoXSplit:
            {
                var s = Torch.Randn([b, p, h * 3 * d], g, dtype).RequiresGrad_();
                return (s, s.View(b, p, h, 3, d).Select(3, 1));
            }
            case Layout.Transposed:
            {
                var s = Torch.Randn([b, h, p, d], g, dtype).RequiresGrad_();
                return (s, s.Transpose(1, 2));
            }
            default:
            {
                var s = Torch.Randn([b, p, d, h], g, dtype).RequiresGrad_();
                return (s, s.Transpose(2, 3));
            }
        }
    }

    /// <summary>
    /// Positions [b, p] that differ per batch row: row 0 counts from 0; row 1 is left-padded (0, 0, 0, 1, 2, ...);
    /// row 2 holds arbitrary non-monotone positions below 2048; row 3 continues a cache from 517. A single token
    /// sits at 37 + 5 * row, as in cached decoding (at position 0 the rotation would be the identity).
    /// </summary>
    private static long[] MakePositions(int seed, long b, long p)
    {
        var rng = new Random(seed);
        var pos = new long[b * p];
        for (var i = 0; i < b; i++)
        {
            var pad = Math.Min(p - 1, 3);
            for (var j = 0; j < p; j++)
                pos[i * p + j] = p == 1 ? 37 + 5 * i : (i % 4) switch
                {
                    0 => j,
                    1 => Math.Max(0, j - pad),
                    2 => rng.Next(2048),
                    _ => 517 + j,
                };
        }
        return pos;
    }

    /// <summary>The rotation written out from elementary ops, with cos and sin tables [b, p, 1, rot] built in C#.</summary>
    private static Tensor Reference(Tensor x, long[] positions, long rot, double rotaryBase = Base)
    {
        var (b, p, d) = (x.Size(0), x.Size(1), x.Size(3));
        var half = rot / 2;
        var cos = new double[b * p * rot];
        var sin = new double[b * p * rot];
        for (var r = 0; r < b * p; r++)
            for (var i = 0; i < half; i++)
            {
                var angle = positions[r] * Math.Pow(rotaryBase, -2.0 * i / rot);
                cos[r * rot + i] = cos[r * rot + half + i] = Math.Cos(angle);
                sin[r * rot + i] = sin[r * rot + half + i] = Math.Sin(angle);
            }
        var c = Torch.FromArray(cos, b, p, 1, rot).To(x.DType);
        var s = Torch.FromArray(sin, b, p, 1, rot).To(x.DType);
        var xr = x.Narrow(3, 0, rot);
        var rotated = Torch.Cat([-xr.Narrow(3, half, half), xr.Narrow(3, 0, half)], 3);
        var applied = xr * c + rotated * s;
        return rot == d ? applied : Torch.Cat([applied, x.Narrow(3, rot, d - rot)], 3);
    }

    private static Tensor PositionsTensor(long[] positions, long b, long p) => Torch.FromArray(positions, b, p);

    [TestCase(1, 1, 1, 8, 8, Layout.Contiguous)]         // one token
    [TestCase(1, 1, 3, 64, 16, Layout.Gpt2Split)]        // one token, Pythia's 16 of 64
    [TestCase(2, 7, 3, 10, 6, Layout.NeoXSplit)]         // odd lengths
    [TestCase(3, 5, 2, 6, 2, Layout.Contiguous)]         // 2 of 6
    [TestCase(4, 9, 4, 64, 16, Layout.Gpt2Split)]        // 16 of 64, every kind of positions row
    [TestCase(2, 5, 3, 16, 16, Layout.Transposed)]       // rotary_dim == d_head
    [TestCase(2, 6, 3, 12, 8, Layout.StridedFeatures)]   // feature stride h
    [TestCase(3, 37, 5, 64, 64, Layout.NeoXSplit)]       // 111 rows: several parallel chunks
    [TestCase(4, 33, 2, 6, 4, Layout.Transposed)]
    public void MatchesTheElementaryCompositionForwardAndBackwardInFloat64(long b, long p, long h, long d, long rot, Layout layout)
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(11);
        var (source, x) = MakeInput(g, layout, b, p, h, d);
        var pos = MakePositions((int)(b * 100 + p), b, p);
        var positions = PositionsTensor(pos, b, p);
        var gy = Torch.Randn([b, p, h, d], g, ScalarType.Float64);

        var got = TransformerOps.Rotary(x, positions, rot, Base);
        var expected = Reference(x, pos, rot);
        Assert.That(got.Shape, Is.EqualTo(new[] { b, p, h, d }));
        Assert.That(got.IsContiguous, Is.True);
        Assert.That(MaxDiff(got, expected), Is.LessThan(1e-10));

        var gGot = Torch.Autograd.Grad([got], [source], [gy])[0]!;
        var gExpected = Torch.Autograd.Grad([expected], [source], [gy])[0]!;
        Assert.That(MaxDiff(gGot, gExpected), Is.LessThan(1e-10));
    }

    [TestCase(false)]
    [TestCase(true)]
    public void BatchRowsWithTheSamePositionsShareTheTableAndOthersDoNot(bool lastRowDiffers)
    {
        // Unpadded batches (every row 0..p-1) take a table row per position; one differing entry must not.
        using var scope = Torch.NewScope();
        using var g = new Generator(18);
        const long b = 3, p = 21, h = 2, d = 12;
        var (source, x) = MakeInput(g, Layout.Gpt2Split, b, p, h, d);
        var pos = new long[b * p];
        for (var i = 0; i < b * p; i++) pos[i] = 5 + i % p;
        if (lastRowDiffers) pos[b * p - 4] = 900;
        var gy = Torch.Randn([b, p, h, d], g, ScalarType.Float64);
        var got = TransformerOps.Rotary(x, PositionsTensor(pos, b, p), 8, Base);
        var expected = Reference(x, pos, 8);
        Assert.That(MaxDiff(got, expected), Is.LessThan(1e-10));
        Assert.That(MaxDiff(Torch.Autograd.Grad([got], [source], [gy])[0]!, Torch.Autograd.Grad([expected], [source], [gy])[0]!),
            Is.LessThan(1e-10));
    }

    [Test]
    public void KernelAndLibtorchCompositionAgreeInFloat64()
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(12);
        var (source, x) = MakeInput(g, Layout.Gpt2Split, 4, 19, 3, 64);
        var positions = PositionsTensor(MakePositions(5, 4, 19), 4, 19);
        var gy = Torch.Randn([4, 19, 3, 64], g, ScalarType.Float64);
        var fused = TransformerOps.Rotary(x, positions, 16, Base, RotaryImplementation.Fused);
        var composed = TransformerOps.Rotary(x, positions, 16, Base, RotaryImplementation.Composed);
        Assert.That(MaxDiff(fused, composed), Is.LessThan(1e-12));
        Assert.That(MaxDiff(Torch.Autograd.Grad([fused], [source], [gy])[0]!, Torch.Autograd.Grad([composed], [source], [gy])[0]!),
            Is.LessThan(1e-12));
    }

    [Test]
    public void AnExpandedUpstreamGradientIsReadThroughItsZeroStrides()
    {
        // out.Sum().Backward() hands the op a gradient of ones expanded from a scalar: every stride 0.
        using var scope = Torch.NewScope();
        using var g = new Generator(13);
        var (source, x) = MakeInput(g, Layout.NeoXSplit, 2, 5, 3, 8);
        var pos = MakePositions(3, 2, 5);
        var gGot = Torch.Autograd.Grad([TransformerOps.Rotary(x, PositionsTensor(pos, 2, 5), 4, Base).Sum()], [source])[0]!;
        var gExpected = Torch.Autograd.Grad([Reference(x, pos, 4).Sum()], [source])[0]!;
        Assert.That(MaxDiff(gGot, gExpected), Is.LessThan(1e-10));
    }

    [Test]
    public void GradientsMatchFiniteDifferencesThroughAStridedView()
    {
        const long b = 2, p = 3, h = 2, d = 6;
        using var positions = PositionsTensor([0, 0, 1, 5, 2, 9], b, p);
        GradCheck.Verify(inputs => TransformerOps.Rotary(inputs[0].Narrow(2, h * d, h * d).View(b, p, h, d), positions, 4, Base),
            [GradCheck.Uniform(1, -2, 2, b, p, 3 * h * d)]);
    }

    [Test]
    public void TheGradientIsItselfDifferentiable()
    {
        // The backward is the same op at the opposite angles, so create_graph gives a gradient that is a function of
        // the upstream gradient: check d(gx)/d(gy) against finite differences.
        const long b = 2, p = 3, h = 2, d = 6;
        using var positions = PositionsTensor([3, 0, 1, 7, 2, 2], b, p);
        GradCheck.Verify(inputs =>
        {
            using var grad = Torch.EnableGrad();
            var x = inputs[0].Detach().RequiresGrad_();
            var y = TransformerOps.Rotary(x, positions, 4, Base);
            return Torch.Autograd.Grad([y], [x], [inputs[1]], createGraph: true)[0]!;
        }, [GradCheck.Uniform(2, -1, 1, b, p, h, d), GradCheck.Uniform(3, -1, 1, b, p, h, d)]);
    }

    [Test]
    public void Float32AgreesWithFloat64()
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(14);
        var (source64, x64) = MakeInput(g, Layout.Gpt2Split, 4, 50, 4, 64);
        var source32 = source64.Detach().To(ScalarType.Float32).RequiresGrad_();
        var x32 = source32.Narrow(2, 4 * 64, 4 * 64).View(4, 50, 4, 64);
        var positions = PositionsTensor(MakePositions(9, 4, 50), 4, 50);
        var gy = Torch.Randn([4, 50, 4, 64], g, ScalarType.Float64);

        var y64 = TransformerOps.Rotary(x64, positions, 16, Base);
        var y32 = TransformerOps.Rotary(x32, positions, 16, Base);
        Assert.That(y32.DType, Is.EqualTo(ScalarType.Float32));
        Assert.That(MaxDiff(y32, y64), Is.LessThan(1e-5));
        var g64 = Torch.Autograd.Grad([y64], [source64], [gy])[0]!;
        var g32 = Torch.Autograd.Grad([y32], [source32], [gy.To(ScalarType.Float32)])[0]!;
        Assert.That(g32.DType, Is.EqualTo(ScalarType.Float32));
        Assert.That(MaxDiff(g32, g64), Is.LessThan(1e-5));
        // And the float32 composition, which rounds the same products.
        Assert.That(MaxDiff(y32, TransformerOps.Rotary(x32, positions, 16, Base, RotaryImplementation.Composed)), Is.LessThan(1e-6));
    }

    [TestCase(ScalarType.BFloat16, 0.06)]
    [TestCase(ScalarType.Float16, 0.01)]
    public void HalfPrecisionTakesTheComposedPath(ScalarType dtype, double tolerance)
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(15);
        var (source, x64) = MakeInput(g, Layout.Gpt2Split, 2, 7, 3, 16);
        var pos = MakePositions(4, 2, 7);
        var positions = PositionsTensor(pos, 2, 7);
        var leaf = source.Detach().To(dtype).RequiresGrad_();
        var x = leaf.Narrow(2, 3 * 16, 3 * 16).View(2, 7, 3, 16);
        var y = TransformerOps.Rotary(x, positions, 8, Base);
        Assert.That(y.DType, Is.EqualTo(dtype));
        Assert.That(MaxDiff(y, Reference(x64, pos, 8)), Is.LessThan(tolerance));
        y.Sum().Backward();
        Assert.That(leaf.Grad!.DType, Is.EqualTo(dtype));
        var e = Assert.Throws<ArgumentException>(() => TransformerOps.Rotary(x, positions, 8, Base, RotaryImplementation.Fused))!;
        Assert.That(e.Message, Does.Contain("rotary kernel"));
    }

    [Test]
    public void RotaryQkEqualsTwoRotaryCallsWithDifferentHeadCounts()
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(16);
        const long b = 3, p = 11, hq = 4, hk = 2, d = 16;
        var (qSource, q) = MakeInput(g, Layout.Gpt2Split, b, p, hq, d);
        var (kSource, k) = MakeInput(g, Layout.NeoXSplit, b, p, hk, d);
        var positions = PositionsTensor(MakePositions(21, b, p), b, p);
        var (gq, gk) = (Torch.Randn([b, p, hq, d], g, ScalarType.Float64), Torch.Randn([b, p, hk, d], g, ScalarType.Float64));

        var (qr, kr) = TransformerOps.RotaryQk(q, k, positions, 8, Base);
        var (q1, k1) = (TransformerOps.Rotary(q, positions, 8, Base), TransformerOps.Rotary(k, positions, 8, Base));
        Assert.That(MaxDiff(qr, q1), Is.EqualTo(0));
        Assert.That(MaxDiff(kr, k1), Is.EqualTo(0));
        var both = Torch.Autograd.Grad([qr, kr], [qSource, kSource], [gq, gk]);
        var separate = Torch.Autograd.Grad([q1, k1], [qSource, kSource], [gq, gk]);
        Assert.That(MaxDiff(both[0]!, separate[0]!), Is.EqualTo(0));
        Assert.That(MaxDiff(both[1]!, separate[1]!), Is.EqualTo(0));

        // Mixed dtypes are two calls through whatever path each takes.
        var (qh, kf) = TransformerOps.RotaryQk(q.To(ScalarType.BFloat16), k, positions, 8, Base);
        Assert.That(qh.DType, Is.EqualTo(ScalarType.BFloat16));
        Assert.That(MaxDiff(kf, k1), Is.EqualTo(0));
    }

    [Test]
    public void BadArgumentsAreArgumentErrorsNamingThemAndTheShapes()
    {
        using var scope = Torch.NewScope();
        var x = Torch.Zeros([2, 3, 4, 6], ScalarType.Float64);
        var positions = PositionsTensor([0, 1, 2, 0, 1, 2], 2, 3);
        foreach (var rot in new long[] { 5, 0, -2, 8 })
        {
            var e = Assert.Throws<ArgumentException>(() => TransformerOps.Rotary(x, positions, rot, Base))!;
            Assert.That(e.Message, Does.Contain("rotary_dim").And.Contain("[2, 3, 4, 6]").And.Contain($"got {rot}"), $"rotary_dim {rot}");
        }
        foreach (var bad in new[] { Torch.Zeros([2, 4], ScalarType.Int64), Torch.Zeros([6], ScalarType.Int64), Torch.Zeros([3, 3], ScalarType.Int64) })
        {
            var e = Assert.Throws<ArgumentException>(() => TransformerOps.Rotary(x, bad, 4, Base))!;
            Assert.That(e.Message, Does.Contain("positions must be [batch, pos] = [2, 3]").And.Contain(Tensor.FormatShape(bad.Shape)));
        }
        var rank = Assert.Throws<ArgumentException>(() => TransformerOps.Rotary(Torch.Zeros([2, 3, 24], ScalarType.Float64), positions, 4, Base))!;
        Assert.That(rank.Message, Does.Contain("x must have shape [batch, pos, head, d_head]").And.Contain("[2, 3, 24]"));
        Assert.Throws<ArgumentException>(() => TransformerOps.Rotary(x, positions, 4, Base, (RotaryImplementation)7));

        var k = Torch.Zeros([2, 3, 2, 2], ScalarType.Float64);
        var qk = Assert.Throws<ArgumentException>(() => TransformerOps.RotaryQk(x, k, positions, 4, Base))!;
        Assert.That(qk.Message, Does.Contain("rotary_dim").And.Contain("of k [2, 3, 2, 2]"));
        qk = Assert.Throws<ArgumentException>(() => TransformerOps.RotaryQk(x, Torch.Zeros([1, 3, 2, 6], ScalarType.Float64), positions, 4, Base))!;
        Assert.That(qk.Message, Does.Contain("positions must be [batch, pos] = [1, 3] for k [1, 3, 2, 6]").And.Contain("[2, 3]"));
    }

    [Test]
    [NonParallelizable]
    public void ForwardAndBackwardLeakNoHandle()
    {
        using var g = new Generator(17);
        using var source = Torch.Randn([2, 9, 3 * 4 * 16], g).RequiresGrad_();
        using var positions = PositionsTensor(MakePositions(1, 2, 9), 2, 9);
        var start = LiveTensorCount.Settled();
        for (var i = 0; i < 200; i++)
        {
            using var scope = Torch.NewScope();
            var q = source.Narrow(2, 0, 64).View(2, 9, 4, 16);
            var k = source.Narrow(2, 64, 64).View(2, 9, 4, 16);
            var (qr, kr) = TransformerOps.RotaryQk(q, k, positions, 16, Base);
            var y = TransformerOps.Rotary(q, positions, 8, Base);
            (qr.Sum() + kr.Sum() + y.Sum()).Backward();
            source.Grad = null;
        }
        Assert.That(Torch.LiveTensors, Is.EqualTo(start));
    }
}
