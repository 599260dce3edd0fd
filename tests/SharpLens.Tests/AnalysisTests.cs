using SharpLens.Testing;
using SharpLens.Analysis;

namespace SharpLens.Tests;

/// <summary>
/// FactoredMatrix and SvdInterpreter against ground truth computed outside the code under test: the
/// materialised product A.Matmul(B), Tensor.Svd of materialised matrices, einsum of the raw TL weights.
/// Everything runs in float64 so agreement can be demanded to ~1e-10.
/// </summary>
public class AnalysisTests
{
    private const double Tight = 1e-10;

    private static Tensor Rand(Generator g, params long[] shape) => Torch.Randn(shape, g, ScalarType.Float64);

    private static double MaxAbsDiff(Tensor expected, Tensor actual)
    {
        Assert.That(actual.Shape, Is.EqualTo(expected.Shape), "shape");
        using var scope = Torch.NewScope();
        return (expected - actual).Abs().Max().ToDouble();
    }

    private static void AssertClose(Tensor expected, Tensor actual, string what, double tol = Tight)
    {
        var d = MaxAbsDiff(expected, actual);
        Assert.That(d, Is.LessThanOrEqualTo(tol), $"{what}: max abs difference {d:G3}");
    }

    /// <summary>U·diag(S)·Vh for any leading dims.</summary>
    private static Tensor Reconstruct(Tensor u, Tensor s, Tensor vh) => u.Mul(s.Unsqueeze(-2)).Matmul(vh);

    private static Tensor Identity(long n)
    {
        var data = new double[n * n];
        for (var i = 0; i < n; i++) data[i * n + i] = 1;
        return Torch.FromArray(data, n, n);
    }

    // ------------------------------------------------------------------ FactoredMatrix on random matrices

    [Test]
    public void ShapeDimsAndProduct()
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(1);
        var a = Rand(g, 5, 3);
        var b = Rand(g, 3, 7);
        using var fm = new FactoredMatrix(a, b);
        Assert.Multiple(() =>
        {
            Assert.That(fm.Shape, Is.EqualTo(new long[] { 5, 7 }));
            Assert.That(fm.Dim, Is.EqualTo(2));
            Assert.That((fm.LeftDim, fm.MiddleDim, fm.RightDim), Is.EqualTo((5L, 3L, 7L)));
            Assert.That(fm.ToString(), Is.EqualTo("FactoredMatrix: Shape([5, 7]), Hidden Dim(3)"));
        });
        Assert.That(fm.AB().ValueEquals(a.Matmul(b)), Is.True);
    }

    [Test]
    public void SvdReconstructsAndMatchesSvdOfMaterialisedProduct()
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(2);
        var a = Rand(g, 9, 4);
        var b = Rand(g, 4, 6);
        using var fm = new FactoredMatrix(a, b);
        var ab = a.Matmul(b);
        var (u, s, vh) = fm.Svd();
        Assert.Multiple(() =>
        {
            // k = min(m, r, n) = r: the factored SVD only has the rank-bearing part.
            Assert.That(u.Shape, Is.EqualTo(new long[] { 9, 4 }));
            Assert.That(s.Shape, Is.EqualTo(new long[] { 4 }));
            Assert.That(vh.Shape, Is.EqualTo(new long[] { 4, 6 }));
        });
        AssertClose(ab, Reconstruct(u, s, vh), "U diag(S) Vh");
        AssertClose(Identity(4), u.Transpose(0, 1).Matmul(u), "UᵀU");
        AssertClose(Identity(4), vh.Matmul(vh.Transpose(0, 1)), "Vh Vhᵀ");

        var (_, sRef, _) = ab.Svd();
        Assert.That(sRef.Shape, Is.EqualTo(new long[] { 6 }));
        AssertClose(sRef.Narrow(0, 0, 4), s, "singular values vs Tensor.Svd(AB)");
        // The product has rank r = 4: the materialised SVD's values beyond r vanish.
        Assert.That(sRef.Narrow(0, 4, 2).Abs().Max().ToDouble(), Is.LessThan(Tight));
        Assert.That(s.Min().ToDouble(), Is.GreaterThan(1e-3), "the factored values are the non-zero ones");
        AssertClose(s, fm.S(), "S()");
    }

    [Test]
    public void SvdWhenInnerDimExceedsOuterDims()
    {
        // r > m, n: k = min(m, n), and the SVD must equal the full one.
        using var scope = Torch.NewScope();
        using var g = new Generator(3);
        var a = Rand(g, 4, 10);
        var b = Rand(g, 10, 5);
        using var fm = new FactoredMatrix(a, b);
        var ab = a.Matmul(b);
        var (u, s, vh) = fm.Svd();
        Assert.That(s.Shape, Is.EqualTo(new long[] { 4 }));
        AssertClose(ab, Reconstruct(u, s, vh), "U diag(S) Vh");
        AssertClose(ab.Svd().S, s, "singular values");
    }

    [Test]
    public void SvdIsCachedAndReturnedHandlesAreTheCallers()
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(4);
        using var fm = new FactoredMatrix(Rand(g, 6, 2), Rand(g, 2, 6));
        var first = fm.Svd();
        var firstS = first.S.Clone();
        first.U.Dispose();
        first.S.Dispose();
        first.Vh.Dispose();
        var second = fm.Svd();
        Assert.That(second.S.ValueEquals(firstS), Is.True);
        Assert.That(second.U.SharesStorageWith(fm.Svd().U), Is.True, "served from the cache");
    }

    [Test]
    public void NormIsFrobeniusNormOfProduct()
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(5);
        var a = Rand(g, 8, 3);
        var b = Rand(g, 3, 5);
        using var fm = new FactoredMatrix(a, b);
        var ab = a.Matmul(b);
        var frobenius = Math.Sqrt(ab.Square().Sum().ToDouble());
        Assert.That(fm.Norm().Dim, Is.EqualTo(0));
        Assert.That(fm.Norm().ToDouble(), Is.EqualTo(frobenius).Within(Tight));
    }

    [Test]
    public void TransposeIsFactoredTransposeOfProduct()
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(6);
        var a = Rand(g, 5, 2);
        var b = Rand(g, 2, 7);
        using var fm = new FactoredMatrix(a, b);
        using var t = fm.T;
        Assert.That(t.Shape, Is.EqualTo(new long[] { 7, 5 }));
        Assert.That(t.MiddleDim, Is.EqualTo(2));
        AssertClose(a.Matmul(b).Transpose(0, 1), t.AB(), "Tᵀ.AB");
    }

    [Test]
    public void BaIsTheReverseProductAndNeedsSquareProduct()
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(7);
        var a = Rand(g, 6, 3);
        var b = Rand(g, 3, 6);
        using var fm = new FactoredMatrix(a, b);
        var ba = fm.BA();
        Assert.That(ba.Shape, Is.EqualTo(new long[] { 3, 3 }));
        AssertClose(b.Matmul(a), ba, "BA");
        // Trace is invariant under cyclic permutation: tr(BA) = tr(AB), a property check independent of the code.
        var trAb = a.Matmul(b).Mul(Identity(6)).Sum().ToDouble();
        Assert.That(ba.Mul(Identity(3)).Sum().ToDouble(), Is.EqualTo(trAb).Within(Tight));

        using var rect = new FactoredMatrix(Rand(g, 6, 3), Rand(g, 3, 5));
        Assert.Throws<InvalidOperationException>(() => rect.BA());
    }

    [Test]
    public void GetCornerIsTheCornerOfTheProduct()
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(8);
        var a = Rand(g, 2, 6, 3);
        var b = Rand(g, 2, 3, 5);
        using var fm = new FactoredMatrix(a, b);
        var ab = a.Matmul(b);
        AssertClose(ab.Narrow(1, 0, 3).Narrow(2, 0, 3), fm.GetCorner(3), "3x3 corner");
        AssertClose(ab.Narrow(1, 0, 6).Narrow(2, 0, 5), fm.GetCorner(100), "k beyond the size clamps");
        Assert.Throws<ArgumentOutOfRangeException>(() => fm.GetCorner(0));
    }

    [Test]
    public void BatchedPerHeadShapesAndSvd()
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(9);
        var a = Rand(g, 4, 8, 2);
        var b = Rand(g, 4, 2, 8);
        using var fm = new FactoredMatrix(a, b);
        Assert.That(fm.Shape, Is.EqualTo(new long[] { 4, 8, 8 }));
        var ab = a.Matmul(b);
        AssertClose(ab, fm.AB(), "AB");
        var (u, s, vh) = fm.Svd();
        Assert.Multiple(() =>
        {
            Assert.That(u.Shape, Is.EqualTo(new long[] { 4, 8, 2 }));
            Assert.That(s.Shape, Is.EqualTo(new long[] { 4, 2 }));
            Assert.That(vh.Shape, Is.EqualTo(new long[] { 4, 2, 8 }));
        });
        AssertClose(ab, Reconstruct(u, s, vh), "batched U diag(S) Vh");
        for (var h = 0; h < 4; h++)
        {
            var sRef = ab.Select(0, h).Svd().S;
            AssertClose(sRef.Narrow(0, 0, 2), s.Select(0, h), $"head {h} singular values");
            Assert.That(sRef.Narrow(0, 2, 6).Abs().Max().ToDouble(), Is.LessThan(Tight), $"head {h} rank");
        }
        var norms = fm.Norm();
        Assert.That(norms.Shape, Is.EqualTo(new long[] { 4 }));
        AssertClose(ab.Square().Sum([1, 2]).Sqrt(), norms, "per-head Frobenius norms");

        using var head2 = fm.Select(2);
        Assert.That(head2.Shape, Is.EqualTo(new long[] { 8, 8 }));
        AssertClose(ab.Select(0, 2), head2.AB(), "Select(2)");
        Assert.Throws<ArgumentOutOfRangeException>(() => fm.Select(4));
        Assert.Throws<InvalidOperationException>(() => head2.Select(0));
    }

    [Test]
    public void LeadingDimsBroadcast()
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(10);
        var a = Rand(g, 8, 2);        // shared by every head
        var b = Rand(g, 3, 1, 2, 5);  // broadcasts against a second leading dim of A
        var a2 = Rand(g, 4, 8, 2);
        using var fm = new FactoredMatrix(a, b);
        Assert.That(fm.Shape, Is.EqualTo(new long[] { 3, 1, 8, 5 }));
        AssertClose(a.Matmul(b), fm.AB(), "broadcast AB");
        using var fm2 = new FactoredMatrix(a2, b);
        Assert.That(fm2.Shape, Is.EqualTo(new long[] { 3, 4, 8, 5 }));
        AssertClose(a2.Matmul(b), fm2.AB(), "broadcast AB (3, 4)");
        Assert.That(fm2.A.Shape, Is.EqualTo(new long[] { 3, 4, 8, 2 }), "factors expanded to the common leading shape");
        Assert.Throws<ArgumentException>(() => new FactoredMatrix(Rand(g, 2, 8, 2), Rand(g, 3, 2, 5)));
        Assert.Throws<ArgumentException>(() => new FactoredMatrix(Rand(g, 8, 2), Rand(g, 3, 5)));
        Assert.Throws<ArgumentException>(() => new FactoredMatrix(Rand(g, 8), Rand(g, 8, 5)));
    }

    [Test]
    public void MatmulKeepsFactoredFormAndEqualsMaterialisedProduct()
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(11);
        var a = Rand(g, 6, 2);
        var b = Rand(g, 2, 5);
        var m = Rand(g, 5, 4);
        var ab = a.Matmul(b);
        using var fm = new FactoredMatrix(a, b);

        // n = 5 > r = 2: A·(B·M), inner dimension stays 2.
        using var right = fm.Matmul(m);
        Assert.That(right.Shape, Is.EqualTo(new long[] { 6, 4 }));
        Assert.That(right.MiddleDim, Is.EqualTo(2));
        Assert.That(right.A.SharesStorageWith(a), Is.True, "left factor untouched");
        AssertClose(ab.Matmul(m), right.AB(), "(AB)M");

        // m = 6 > r = 2: (M·A)·B, inner dimension stays 2.
        var l = Rand(g, 3, 6);
        using var left = fm.LeftMatmul(l);
        Assert.That(left.Shape, Is.EqualTo(new long[] { 3, 5 }));
        Assert.That(left.MiddleDim, Is.EqualTo(2));
        Assert.That(left.B.SharesStorageWith(b), Is.True, "right factor untouched");
        AssertClose(l.Matmul(ab), left.AB(), "M(AB)");

        // When the outer dimension is no larger than r, TL collapses A·B and uses the outer dimension as inner one.
        var wide = new FactoredMatrix(Rand(g, 3, 4), Rand(g, 4, 3));
        using (wide)
        {
            var p = Rand(g, 3, 7);
            using var r2 = wide.Matmul(p);
            Assert.That(r2.MiddleDim, Is.EqualTo(3));
            AssertClose(wide.AB().Matmul(p), r2.AB(), "(AB)M collapsed");
            var q = Rand(g, 7, 3);
            using var l2 = wide.LeftMatmul(q);
            Assert.That(l2.MiddleDim, Is.EqualTo(3));
            AssertClose(q.Matmul(wide.AB()), l2.AB(), "M(AB) collapsed");
        }

        // Factored · factored.
        var c = Rand(g, 5, 2);
        var d = Rand(g, 2, 4);
        using var other = new FactoredMatrix(c, d);
        using var both = fm.Matmul(other);
        Assert.That(both.Shape, Is.EqualTo(new long[] { 6, 4 }));
        Assert.That(both.MiddleDim, Is.LessThanOrEqualTo(2));
        AssertClose(ab.Matmul(c.Matmul(d)), both.AB(), "(AB)(CD)");

        // Vectors collapse to tensors, as TL.
        var v = Rand(g, 5);
        AssertClose(ab.Matmul(v.Unsqueeze(1)).Squeeze(1), fm.MatVec(v), "(AB)v");
        var w = Rand(g, 6);
        AssertClose(w.Unsqueeze(0).Matmul(ab).Squeeze(0), fm.VecMat(w), "w(AB)");

        using var scaled = fm * 2.5;
        AssertClose(ab.Mul(2.5), scaled.AB(), "scalar");

        Assert.Throws<ArgumentException>(() => fm.Matmul(Rand(g, 4, 4)));
        Assert.Throws<ArgumentException>(() => fm.LeftMatmul(Rand(g, 4, 4)));
        Assert.Throws<ArgumentException>(() => fm.Matmul(v));
        Assert.Throws<ArgumentException>(() => fm.MatVec(w));
    }

    [Test]
    public void BatchedMatmulBroadcasts()
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(12);
        var a = Rand(g, 4, 6, 2);
        var b = Rand(g, 4, 2, 6);
        var m = Rand(g, 6, 3);
        using var fm = new FactoredMatrix(a, b);
        using var prod = fm.Matmul(m);
        Assert.That(prod.Shape, Is.EqualTo(new long[] { 4, 6, 3 }));
        AssertClose(a.Matmul(b).Matmul(m), prod.AB(), "batched (AB)M");
        var v = Rand(g, 6);
        AssertClose(a.Matmul(b).Matmul(v.Unsqueeze(1)).Squeeze(-1), fm.MatVec(v), "batched (AB)v");
    }

    [Test]
    public void DisposeReleasesHandlesButNotTheCallersTensors()
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(13);
        var a = Rand(g, 6, 2);
        var b = Rand(g, 2, 6);
        var fm = new FactoredMatrix(a, b);
        fm.Svd();
        var factorA = fm.A;
        fm.Dispose();
        Assert.Multiple(() =>
        {
            Assert.That(factorA.IsDisposed, Is.True);
            Assert.That(a.IsDisposed, Is.False);
            Assert.That(b.IsDisposed, Is.False);
        });
        Assert.Throws<ObjectDisposedException>(() => fm.AB());
        Assert.Throws<ObjectDisposedException>(() => _ = fm.A);
        fm.Dispose(); // idempotent

        // A factored matrix outlives the scope its inputs were created in (it holds its own handles).
        FactoredMatrix survivor;
        Tensor expected;
        using (Torch.NewScope())
        {
            var x = Rand(g, 5, 2);
            var y = Rand(g, 2, 5);
            expected = x.Matmul(y).MoveToOuterScope();
            survivor = new FactoredMatrix(x, y);
        }
        using (survivor) AssertClose(expected, survivor.AB(), "after the inputs' scope closed");
    }

    [Test]
    public void NoTensorLeaksOutsideScopes()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        var before = LiveTensorCount.Settled();
        using (Torch.NewScope())
        {
            using var g = new Generator(14);
            using var fm = new FactoredMatrix(Rand(g, 3, 6, 2), Rand(g, 3, 2, 6));
            fm.Svd();
            fm.Norm();
            fm.GetCorner();
            using var t = fm.T;
            using var p = fm.Matmul(Rand(g, 6, 6));
            using var q = fm.LeftMatmul(Rand(g, 6, 6));
            using var h = fm.Select(1);
            fm.MatVec(Rand(g, 6));
        }
        Assert.That(Torch.LiveTensors, Is.LessThanOrEqualTo(before));
    }

    // ------------------------------------------------------------------ circuits and SVDInterpreter on tiny-gpt2

    private static TransformerBridge LoadTiny() =>
        TransformerBridge.Load(Fixtures.Path("tiny-gpt2"), new BridgeOptions { DType = ScalarType.Float64 });

    private static Tensor Weight(TransformerBridge bridge, string name) =>
        bridge.TlNamedParameters().Single(p => p.Name == name).Weight;

    [Test]
    public void OvAndQkCircuitsMatchEinsumOfWeights()
    {
        using var bridge = LoadTiny();
        using var scope = Torch.NewScope();
        var cfg = bridge.Config;
        for (var layer = 0; layer < cfg.NLayers; layer++)
        {
            using var ov = FactoredMatrix.OV(bridge, layer);
            Assert.That(ov.Shape, Is.EqualTo(new long[] { cfg.NHeads, cfg.DModel, cfg.DModel }));
            Assert.That(ov.MiddleDim, Is.EqualTo(cfg.DHead));
            var expectedOv = Torch.Einsum("hmd,hdn->hmn", Weight(bridge, $"blocks.{layer}.attn.W_V"), Weight(bridge, $"blocks.{layer}.attn.W_O"));
            AssertClose(expectedOv, ov.AB(), $"OV[{layer}]", 1e-12);

            using var qk = FactoredMatrix.QK(bridge, layer);
            Assert.That(qk.Shape, Is.EqualTo(new long[] { cfg.NHeads, cfg.DModel, cfg.DModel }));
            var expectedQk = Torch.Einsum("hmd,hnd->hmn", Weight(bridge, $"blocks.{layer}.attn.W_Q"), Weight(bridge, $"blocks.{layer}.attn.W_K"));
            AssertClose(expectedQk, qk.AB(), $"QK[{layer}]", 1e-12);

            // The factored SVD of the real circuit agrees with Tensor.Svd of the materialised one.
            var (_, s, _) = ov.Svd();
            var sRef = expectedOv.Svd().S.Narrow(-1, 0, cfg.DHead);
            AssertClose(sRef, s, $"OV[{layer}] singular values", 1e-9);
        }
        Assert.Throws<ArgumentOutOfRangeException>(() => FactoredMatrix.OV(bridge, cfg.NLayers));
        Assert.Throws<ArgumentOutOfRangeException>(() => FactoredMatrix.QK(bridge, -1));
    }

    /// <summary>
    /// Asserts that column j of <paramref name="actual"/> is ±(expectedVectors[:, j] · W_U): singular vectors are only
    /// defined up to sign, so each column's sign is aligned on its largest entry before comparing.
    /// </summary>
    private static void AssertProjectionsMatch(Tensor expectedVectors, Tensor wU, Tensor actual, string what)
    {
        var n = actual.Size(1);
        var expected = expectedVectors.Transpose(0, 1).Narrow(0, 0, n).Matmul(wU).Transpose(0, 1); // [vocab, n]
        Assert.That(actual.Shape, Is.EqualTo(expected.Shape), what + " shape");
        for (var j = 0; j < n; j++)
        {
            var e = expected.Select(1, j);
            var a = actual.Select(1, j);
            var pivot = e.Abs().Argmax().ToInt64();
            var sign = Math.Sign(e[pivot].ToDouble()) * Math.Sign(a[pivot].ToDouble());
            Assert.That(sign, Is.Not.Zero);
            AssertClose(e, a.Mul(sign), $"{what} vector {j}", 1e-9);
        }
    }

    /// <summary>The gaps between consecutive singular values, so that the vectors compared are well defined.</summary>
    private static void AssertDistinct(Tensor s, int n, string what)
    {
        var values = s.ToArray<double>();
        for (var j = 0; j < n; j++)
            Assert.That(values[j] - values[j + 1], Is.GreaterThan(1e-6 * values[0]), $"{what}: singular values {j} and {j + 1} nearly coincide");
    }

    [Test]
    public void OvSingularVectorsAreRightSingularVectorsOfTheHeadsOvProjectedThroughWu()
    {
        using var bridge = LoadTiny();
        using var scope = Torch.NewScope();
        var interp = new SvdInterpreter(bridge);
        var wU = Weight(bridge, "unembed.W_U");
        const int n = 6;
        foreach (var (layer, head) in new[] { (0, 0), (1, 3) })
        {
            var actual = interp.GetSingularVectors(VectorType.OV, layer, n, head);
            Assert.That(actual.Shape, Is.EqualTo(new long[] { bridge.Config.DVocab, n }));
            Assert.That(actual.RequiresGrad, Is.False);
            // Independent path: materialise the head's OV and take Tensor.Svd; right singular vectors = rows of Vh.
            var ovHead = Weight(bridge, $"blocks.{layer}.attn.W_V").Select(0, head).Matmul(Weight(bridge, $"blocks.{layer}.attn.W_O").Select(0, head));
            var (_, s, vh) = ovHead.Svd();
            AssertDistinct(s, n, $"OV {layer}.{head}");
            AssertProjectionsMatch(vh.Transpose(0, 1), wU, actual, $"OV {layer}.{head}");
        }
    }

    [Test]
    public void MlpSingularVectorsMatchSvdOfTheWeights()
    {
        using var bridge = LoadTiny();
        using var scope = Torch.NewScope();
        var interp = new SvdInterpreter(bridge);
        var wU = Weight(bridge, "unembed.W_U");
        const int n = 5;
        const int layer = 1;

        // W_in: TL decomposes W_inᵀ·diag(ln2.w); its right singular vectors are the left singular vectors (columns of U)
        // of diag(ln2.w)·W_in [d_model, d_mlp], which is what is decomposed here, independently.
        var win = Weight(bridge, $"blocks.{layer}.mlp.W_in").Mul(Weight(bridge, $"blocks.{layer}.ln2.w").Unsqueeze(1));
        var (uIn, sIn, _) = win.Svd();
        AssertDistinct(sIn, n, "W_in");
        var actualIn = interp.GetSingularVectors(VectorType.WIn, layer, n);
        Assert.That(actualIn.Shape, Is.EqualTo(new long[] { bridge.Config.DVocab, n }));
        AssertProjectionsMatch(uIn, wU, actualIn, "W_in");

        // W_out [d_mlp, d_model]: right singular vectors = columns of U of W_outᵀ.
        var (uOut, sOut, _) = Weight(bridge, $"blocks.{layer}.mlp.W_out").Transpose(0, 1).Contiguous().Svd();
        AssertDistinct(sOut, n, "W_out");
        var actualOut = interp.GetSingularVectors(VectorType.WOut, layer, n, head: 99); // head is ignored for MLP weights, as TL
        AssertProjectionsMatch(uOut, wU, actualOut, "W_out");
    }

    [Test]
    public void ArgumentsAreValidated()
    {
        using var bridge = LoadTiny();
        using var scope = Torch.NewScope();
        var interp = new SvdInterpreter(bridge);
        var cfg = bridge.Config; // 2 layers, 4 heads, d_model 64, d_head 16, d_mlp 256
        Assert.Multiple(() =>
        {
            Assert.Throws<ArgumentOutOfRangeException>(() => interp.GetSingularVectors(VectorType.OV, 0, 0, 0));
            Assert.Throws<ArgumentOutOfRangeException>(() => interp.GetSingularVectors(VectorType.OV, 0, cfg.DHead + 1, 0));
            Assert.Throws<ArgumentOutOfRangeException>(() => interp.GetSingularVectors(VectorType.OV, 0, 3, cfg.NHeads));
            Assert.Throws<ArgumentOutOfRangeException>(() => interp.GetSingularVectors(VectorType.OV, 0, 3, -1));
            Assert.Throws<ArgumentOutOfRangeException>(() => interp.GetSingularVectors(VectorType.OV, cfg.NLayers, 3, 0));
            Assert.Throws<ArgumentOutOfRangeException>(() => interp.GetSingularVectors(VectorType.WIn, -1, 3));
            Assert.Throws<ArgumentOutOfRangeException>(() => interp.GetSingularVectors(VectorType.WIn, 0, cfg.DModel + 1));
            Assert.Throws<ArgumentOutOfRangeException>(() => interp.GetSingularVectors(VectorType.WOut, 0, -2));
            Assert.Throws<ArgumentNullException>(() => interp.GetSingularVectors(VectorType.OV, 0, 3));
        });
        Assert.That(interp.GetSingularVectors(VectorType.OV, 0, cfg.DHead, 0).Shape, Is.EqualTo(new long[] { cfg.DVocab, cfg.DHead }));
        Assert.That(interp.GetSingularVectors(VectorType.WIn, 0, cfg.DModel).Shape, Is.EqualTo(new long[] { cfg.DVocab, cfg.DModel }));
    }

    [Test]
    public void TopTokensAreTheLargestEntriesOfEachColumn()
    {
        using var bridge = LoadTiny();
        using var scope = Torch.NewScope();
        var projected = new SvdInterpreter(bridge).GetSingularVectors(VectorType.OV, 1, 3, 2);
        const int k = 7;
        var top = SvdInterpreter.TopTokens(projected, k);
        var bottom = SvdInterpreter.TopTokens(projected, k, largest: false);
        Assert.That(top, Has.Length.EqualTo(3));
        for (var j = 0; j < 3; j++)
        {
            var column = projected.Select(1, j).Contiguous().ToArray<double>();
            var order = Enumerable.Range(0, column.Length).OrderByDescending(i => column[i]).ToArray();
            Assert.That(top[j].Select(t => t.TokenId), Is.EqualTo(order.Take(k).Select(i => (long)i)), $"top of vector {j}");
            Assert.That(top[j].Select(t => t.Value), Is.EqualTo(order.Take(k).Select(i => column[i])), $"top values of vector {j}");
            Assert.That(bottom[j].Select(t => t.TokenId), Is.EqualTo(order.Reverse().Take(k).Select(i => (long)i)), $"bottom of vector {j}");
        }
        Assert.Throws<ArgumentOutOfRangeException>(() => SvdInterpreter.TopTokens(projected, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => SvdInterpreter.TopTokens(projected, (int)projected.Size(0) + 1));
        Assert.Throws<ArgumentException>(() => SvdInterpreter.TopTokens(projected.Unsqueeze(1), 3));
    }
}
