namespace SharpLens.Tensors.Tests;

/// <summary>Short constructors and readers shared by the forward-value fixtures.</summary>
internal static class Mk
{
    public static Tensor F(params float[] v) => Torch.FromArray(v);
    public static Tensor D(params double[] v) => Torch.FromArray(v);
    public static Tensor L(params long[] v) => Torch.FromArray(v);
    public static Tensor B(params bool[] v) => Torch.FromArray(v);
    public static double[] V(Tensor t) => Expect.Values(t);
    public static bool[] Bits(Tensor t) => t.ToArray<bool>();
}

/// <summary>Tensor creation, random numbers, element access, dtype conversion and printing.</summary>
public class TensorOpsCreationTests
{
    [Test]
    public void ZerosOnesFullHaveShapeDtypeAndValue()
    {
        using var scope = Torch.NewScope();
        var z = Torch.Zeros(2, 3);
        var o = Torch.Ones([4], ScalarType.Float64);
        var fl = Torch.Full([2, 2], 7.5);
        var fi = Torch.Full([3], -2, ScalarType.Int32);
        var zl = Torch.Zeros([2], ScalarType.Int64);
        Assert.Multiple(() =>
        {
            Assert.That(z.Shape, Is.EqualTo(new long[] { 2, 3 }));
            Assert.That(z.DType, Is.EqualTo(ScalarType.Float32));
            Assert.That(z.ToArray<float>(), Is.EqualTo(new float[6]));
            Assert.That(o.DType, Is.EqualTo(ScalarType.Float64));
            Assert.That(o.ToArray<double>(), Is.EqualTo(new[] { 1.0, 1, 1, 1 }));
            Assert.That(fl.ToArray<float>(), Is.EqualTo(new[] { 7.5f, 7.5f, 7.5f, 7.5f }));
            Assert.That(fi.ToArray<int>(), Is.EqualTo(new[] { -2, -2, -2 }));
            Assert.That(zl.ToArray<long>(), Is.EqualTo(new long[] { 0, 0 }));
        });
    }

    [Test]
    public void CreationWithRequiresGradMakesALeaf()
    {
        using var scope = Torch.NewScope();
        var t = Torch.Ones([2], ScalarType.Float64, requiresGrad: true);
        Assert.That(t.RequiresGrad, Is.True);
        Assert.That(t.IsLeaf, Is.True);
    }

    [Test]
    public void ArangeVariants()
    {
        using var scope = Torch.NewScope();
        var a = Torch.Arange(5);
        Assert.Multiple(() =>
        {
            Assert.That(a.DType, Is.EqualTo(ScalarType.Int64));
            Assert.That(a.ToArray<long>(), Is.EqualTo(new long[] { 0, 1, 2, 3, 4 }));
            Assert.That(Torch.Arange(2, 11, 3).ToArray<long>(), Is.EqualTo(new long[] { 2, 5, 8 }));
            Assert.That(Torch.Arange(5, 0, -2).ToArray<long>(), Is.EqualTo(new long[] { 5, 3, 1 }));
            Assert.That(Torch.Arange(0, 1, 0.25, ScalarType.Float32).ToArray<float>(), Is.EqualTo(new[] { 0f, 0.25f, 0.5f, 0.75f }));
            Assert.That(Torch.Arange(1, 2, 0.5, ScalarType.Float64).ToArray<double>(), Is.EqualTo(new[] { 1.0, 1.5 }));
            Assert.That(Torch.Arange(0).NumEl, Is.EqualTo(0));
        });
        Assert.Throws<ArgumentOutOfRangeException>(() => Torch.Arange(0, 1, 0));
    }

    [Test]
    public void EmptyHasTheRequestedShapeAndDtype()
    {
        using var scope = Torch.NewScope();
        var e = Torch.Empty([4, 5], ScalarType.Float64);
        var none = Torch.Empty([2, 0, 3]);
        Assert.Multiple(() =>
        {
            Assert.That(e.Shape, Is.EqualTo(new long[] { 4, 5 }));
            Assert.That(e.DType, Is.EqualTo(ScalarType.Float64));
            Assert.That(e.NumEl, Is.EqualTo(20));
            Assert.That(none.Shape, Is.EqualTo(new long[] { 2, 0, 3 }));
            Assert.That(none.NumEl, Is.EqualTo(0));
            Assert.That(none.ToArray<float>(), Is.Empty);
            Assert.That(none.AsReadOnlySpan<float>().Length, Is.EqualTo(0));
        });
    }

    [Test]
    public void ScalarIsZeroDimensional()
    {
        using var scope = Torch.NewScope();
        var s = Torch.Scalar(3.5);
        var i = Torch.Scalar(-7, ScalarType.Int64);
        Assert.Multiple(() =>
        {
            Assert.That(s.Dim, Is.EqualTo(0));
            Assert.That(s.Shape, Is.Empty);
            Assert.That(s.NumEl, Is.EqualTo(1));
            Assert.That(s.ToDouble(), Is.EqualTo(3.5));
            Assert.That(s.ToSingle(), Is.EqualTo(3.5f));
            Assert.That(i.ToInt64(), Is.EqualTo(-7));
            Assert.That(i.DType, Is.EqualTo(ScalarType.Int64));
        });
    }

    private static void RoundTrip<TElem>(TElem[] values, ScalarType dtype) where TElem : unmanaged
    {
        using var scope = Torch.NewScope();
        var t = Torch.FromArray(values);
        Assert.That(t.DType, Is.EqualTo(dtype), typeof(TElem).Name);
        Assert.That(t.Shape, Is.EqualTo(new long[] { values.Length }));
        Assert.That(t.ToArray<TElem>(), Is.EqualTo(values), typeof(TElem).Name);
        Assert.That(t.AsReadOnlySpan<TElem>().ToArray(), Is.EqualTo(values), typeof(TElem).Name);
    }

    [Test]
    public void FromArrayRoundTripsEveryElementType()
    {
        RoundTrip(new[] { 1.5f, -0.0f, float.MaxValue, float.Epsilon, float.NegativeInfinity }, ScalarType.Float32);
        RoundTrip(new[] { Math.PI, -1e300, double.Epsilon, double.PositiveInfinity }, ScalarType.Float64);
        RoundTrip(new[] { long.MinValue, -1L, 0L, long.MaxValue }, ScalarType.Int64);
        RoundTrip(new[] { int.MinValue, 42, int.MaxValue }, ScalarType.Int32);
        RoundTrip(new[] { true, false, true, true }, ScalarType.Bool);
        RoundTrip(new short[] { short.MinValue, -3, short.MaxValue }, ScalarType.Int16);
        RoundTrip(new sbyte[] { sbyte.MinValue, -1, 0, sbyte.MaxValue }, ScalarType.Int8);
        RoundTrip(new byte[] { 0, 1, 128, 255 }, ScalarType.Byte);
        RoundTrip(new[] { (Half)1.5, (Half)(-0.25), Half.MaxValue, Half.Epsilon }, ScalarType.Float16);
        RoundTrip(new[] { BFloat16.FromBits(0x3F80), (BFloat16)(-2.5f), (BFloat16)3.140625f, BFloat16.FromBits(0x7F7F) }, ScalarType.BFloat16);
    }

    [Test]
    public void SmallTypesConvertToTheRightValues()
    {
        using var scope = Torch.NewScope();
        Assert.Multiple(() =>
        {
            Assert.That(Mk.V(Torch.FromArray(new[] { (Half)1.5, (Half)(-0.25), Half.MaxValue })), Is.EqualTo(new[] { 1.5, -0.25, 65504.0 }));
            Assert.That(Mk.V(Torch.FromArray(new[] { (BFloat16)1f, (BFloat16)(-2.5f), BFloat16.FromBits(0x4049) })), Is.EqualTo(new[] { 1.0, -2.5, 3.140625 }));
            Assert.That(Mk.V(Torch.FromArray(new sbyte[] { -128, 127 })), Is.EqualTo(new[] { -128.0, 127 }));
            Assert.That(Mk.V(Torch.FromArray(new byte[] { 0, 255 })), Is.EqualTo(new[] { 0.0, 255 }));
            Assert.That(Mk.V(Mk.B(true, false)), Is.EqualTo(new[] { 1.0, 0 }));
        });
    }

    [Test]
    public void FromArrayWithShapeAndFrom2DArrayAreRowMajor()
    {
        using var scope = Torch.NewScope();
        var flat = Torch.FromArray(new[] { 1, 2, 3, 4, 5, 6 }, 2, 3);
        var twoD = Torch.FromArray(new float[,] { { 1, 2, 3 }, { 4, 5, 6 } });
        Assert.Multiple(() =>
        {
            Assert.That(flat.Shape, Is.EqualTo(new long[] { 2, 3 }));
            Assert.That(flat.DType, Is.EqualTo(ScalarType.Int32));
            Assert.That(flat[1, 0].ToInt64(), Is.EqualTo(4));
            Assert.That(twoD.Shape, Is.EqualTo(new long[] { 2, 3 }));
            Assert.That(twoD.ToArray<float>(), Is.EqualTo(new float[] { 1, 2, 3, 4, 5, 6 }));
            Assert.That(twoD[0, 2].ToDouble(), Is.EqualTo(3));
            Assert.That(twoD[1, 1].ToDouble(), Is.EqualTo(5));
        });
    }

    [Test]
    public void FromSpanCopiesASliceInAnyShape()
    {
        using var scope = Torch.NewScope();
        var source = new double[] { 9, 1, 2, 3, 4, 9 };
        var t = Torch.FromSpan<double>(source.AsSpan(1, 4), [2, 2]);
        source[1] = 100;  // a copy: later writes do not show
        var scalar = Torch.FromSpan<long>(new long[] { 5 }, ReadOnlySpan<long>.Empty);
        Assert.Multiple(() =>
        {
            Assert.That(t.Shape, Is.EqualTo(new long[] { 2, 2 }));
            Assert.That(t.ToArray<double>(), Is.EqualTo(new[] { 1.0, 2, 3, 4 }));
            Assert.That(scalar.Dim, Is.EqualTo(0));
            Assert.That(scalar.ToInt64(), Is.EqualTo(5));
        });
    }

    [Test]
    public void ShapeDtypeDeviceAndStrideQueries()
    {
        using var scope = Torch.NewScope();
        var t = Torch.Zeros([2, 3, 4], ScalarType.Float64);
        var tt = t.Transpose(0, 2);
        Assert.Multiple(() =>
        {
            Assert.That(t.Shape, Is.EqualTo(new long[] { 2, 3, 4 }));
            Assert.That(t.Dim, Is.EqualTo(3));
            Assert.That(t.NumEl, Is.EqualTo(24));
            Assert.That(t.Size(0), Is.EqualTo(2));
            Assert.That(t.Size(-1), Is.EqualTo(4));
            Assert.That(t.Strides, Is.EqualTo(new long[] { 12, 4, 1 }));
            Assert.That(t.IsContiguous, Is.True);
            Assert.That(t.DType, Is.EqualTo(ScalarType.Float64));
            Assert.That(t.DType.ElementSize(), Is.EqualTo(8));
            Assert.That(t.Device, Is.EqualTo(Device.CPU));
            Assert.That(t.Device.ToString(), Is.EqualTo("cpu"));
            Assert.That(tt.Shape, Is.EqualTo(new long[] { 4, 3, 2 }));
            Assert.That(tt.Strides, Is.EqualTo(new long[] { 1, 4, 12 }));
            Assert.That(tt.IsContiguous, Is.False);
        });
        var ex = Assert.Throws<ArgumentOutOfRangeException>(() => t.Size(3));
        Assert.That(ex!.Message, Does.Contain("[2, 3, 4]"));
    }

    [Test]
    public void DeviceParsingAndScalarTypeFacts()
    {
        Assert.Multiple(() =>
        {
            Assert.That(Device.Parse(" CPU "), Is.EqualTo(Device.CPU));
            Assert.That(Device.Parse("cuda"), Is.EqualTo(Device.CUDA(0)));
            Assert.That(Device.Parse("cuda:1").Index, Is.EqualTo(1));
            Assert.That(Device.CUDA(2).ToString(), Is.EqualTo("cuda:2"));
            Assert.That(new Device(DeviceType.CUDA).ToString(), Is.EqualTo("cuda"));
            Assert.That(Assert.Throws<FormatException>(() => Device.Parse("gpu"))!.Message, Does.Contain("gpu"));
            Assert.Throws<FormatException>(() => Device.Parse("cuda:-1"));
            Assert.That(ScalarType.BFloat16.ElementSize(), Is.EqualTo(2));
            Assert.That(ScalarType.Bool.ElementSize(), Is.EqualTo(1));
            Assert.That(ScalarType.Float16.IsFloatingPoint(), Is.True);
            Assert.That(ScalarType.Int64.IsFloatingPoint(), Is.False);
            Assert.That(ScalarType.Byte.ToTorchName(), Is.EqualTo("uint8"));
            Assert.That(ScalarTypeInfo.Of<Half>(), Is.EqualTo(ScalarType.Float16));
            Assert.That(ScalarTypeInfo.Of<BFloat16>(), Is.EqualTo(ScalarType.BFloat16));
            Assert.That(float.IsNaN((BFloat16)float.NaN), Is.True);
        });
    }

    [Test]
    public void ToConvertsDtypes()
    {
        using var scope = Torch.NewScope();
        var f = Mk.F(1.5f, -2.7f, 3.9f, 0f);
        Assert.Multiple(() =>
        {
            Assert.That(f.To(ScalarType.Int64).ToArray<long>(), Is.EqualTo(new long[] { 1, -2, 3, 0 }), "truncates toward zero");
            Assert.That(f.To(ScalarType.Float64).ToArray<double>(), Is.EqualTo(new[] { 1.5, (double)-2.7f, (double)3.9f, 0 }));
            Assert.That(f.To(ScalarType.Bool).ToArray<bool>(), Is.EqualTo(new[] { true, true, true, false }));
            Assert.That(Mk.L(3, -4).To(ScalarType.Float32).ToArray<float>(), Is.EqualTo(new[] { 3f, -4f }));
            Assert.That(Mk.D(1.0 / 3).To(ScalarType.Float16).ToArray<Half>()[0], Is.EqualTo((Half)(1.0 / 3)));
            Assert.That(Mk.F(300f, -1f).To(ScalarType.Int16).ToArray<short>(), Is.EqualTo(new short[] { 300, -1 }));
            Assert.That(f.To(ScalarType.Float64).DType, Is.EqualTo(ScalarType.Float64));
        });
    }

    [Test]
    public void ToBFloat16RoundsToNearestEvenLikeTheManagedStruct()
    {
        using var scope = Torch.NewScope();
        // 1 + 2^-8 is halfway between bf16 1.0 and 1.0078125 (even: 1.0); 1 + 3*2^-8 is halfway to 1.015625 (even).
        var values = new[] { 1.00390625f, 1.01171875f, -3.3f, 1e-3f, 65504f, 0.1f };
        var native = Torch.FromArray(values).To(ScalarType.BFloat16).ToArray<BFloat16>();
        var managed = values.Select(v => (BFloat16)v).ToArray();
        Assert.That(native.Select(b => b.Bits), Is.EqualTo(managed.Select(b => b.Bits)));
        Assert.That((float)native[0], Is.EqualTo(1.0f));
        Assert.That((float)native[1], Is.EqualTo(1.015625f));
    }

    [Test]
    public void ToSameDtypeSharesUnlessCopyIsAsked()
    {
        using var scope = Torch.NewScope();
        var t = Mk.F(1, 2);
        Assert.That(t.To(ScalarType.Float32).SharesStorageWith(t), Is.True);
        Assert.That(t.To(ScalarType.Float32, copy: true).SharesStorageWith(t), Is.False);
        Assert.That(t.To(Device.CPU).SharesStorageWith(t), Is.True);
        Assert.That(t.To(ScalarType.Float64).SharesStorageWith(t), Is.False);
    }

    [Test]
    public void ItemReaders()
    {
        using var scope = Torch.NewScope();
        Assert.Multiple(() =>
        {
            Assert.That(Torch.Scalar(2.25, ScalarType.Float64).ToDouble(), Is.EqualTo(2.25));
            Assert.That(Mk.L(long.MaxValue).ToInt64(), Is.EqualTo(long.MaxValue), "a one-element 1-D tensor is an item too");
            Assert.That(Mk.B(true).ToBoolean(), Is.True);
            Assert.That(Mk.B(false).ToBoolean(), Is.False);
            Assert.That(Torch.Scalar(3).ToBoolean(), Is.True);
            Assert.That(Torch.Scalar(0).ToBoolean(), Is.False);
        });
    }

    [Test]
    public void ToBooleanOfAFractionalFloatIsTrue()
    {
        using var scope = Torch.NewScope();
        Assert.That(Torch.Scalar(0.5).ToBoolean(), Is.True);
        Assert.That(Torch.Scalar(-0.25, ScalarType.Float64).ToBoolean(), Is.True);
    }

    [Test]
    public void ToStringShowsShapeDtypeDeviceAndLeadingValues()
    {
        using var scope = Torch.NewScope();
        var small = Torch.FromArray(new float[] { 1, 2.5f, -3 }, 1, 3);
        var big = Torch.Arange(10);
        var flags = Mk.B(true, false);
        var leaf = Mk.D(0.125).RequiresGrad_();
        Assert.Multiple(() =>
        {
            Assert.That(small.ToString(), Is.EqualTo("tensor([1, 3], float32, cpu) [1, 2.5, -3]"));
            Assert.That(big.ToString(), Does.Contain("[10]").And.Contain("int64").And.Contain("[0, 1, 2, 3, 4, 5, ...]"));
            Assert.That(flags.ToString(), Does.Contain("bool").And.Contain("[true, false]"));
            Assert.That(leaf.ToString(), Does.Contain("requires_grad").And.Contain("0.125"));
            Assert.That(Torch.Scalar(7).ToString(), Does.StartWith("tensor([], float32, cpu)").And.Contain("[7]"));
        });
        var gone = Mk.F(1);
        gone.Dispose();
        Assert.That(gone.ToString(), Is.EqualTo("tensor(disposed)"));
    }

    [Test]
    public void ToStringLeavesNoTensorsBehind()
    {
        using var scope = Torch.NewScope();
        var big = Torch.Arange(10);
        var before = scope.Count;
        _ = big.ToString();
        Assert.That(scope.Count, Is.EqualTo(before));
    }

    [Test]
    public void ToStringOfASmallTensorLeavesNoTensorsBehind()
    {
        using var scope = Torch.NewScope();
        var small = Torch.Arange(4);
        var before = scope.Count;
        _ = small.ToString();
        Assert.That(scope.Count, Is.EqualTo(before));
    }
}

/// <summary>Seeded and global random number generation.</summary>
public class TensorOpsRandomTests
{
    [Test]
    public void RandnWithASeededGeneratorIsReproducible()
    {
        using var scope = Torch.NewScope();
        using var g1 = new Generator(42);
        using var g2 = new Generator(42);
        using var g3 = new Generator(43);
        var a = Torch.Randn([64], g1);
        var b = Torch.Randn([64], g2);
        var c = Torch.Randn([64], g3);
        var a2 = Torch.Randn([64], g1);
        Assert.Multiple(() =>
        {
            Assert.That(g1.Seed, Is.EqualTo(42UL));
            Assert.That(a.ValueEquals(b), Is.True, "same seed, same values");
            Assert.That(a.ValueEquals(c), Is.False, "different seed, different values");
            Assert.That(a.ValueEquals(a2), Is.False, "the generator advances");
            Assert.That(a.DType, Is.EqualTo(ScalarType.Float32));
        });
    }

    [Test]
    public void ManualSeedMakesTheGlobalGeneratorReproducible()
    {
        using var scope = Torch.NewScope();
        Torch.ManualSeed(1234);
        var a = Torch.Randn(16);
        Torch.ManualSeed(1234);
        var b = Torch.Randn(16);
        Assert.That(a.ValueEquals(b), Is.True);
    }

    [Test]
    public void RandnIsStandardNormal()
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(7);
        var x = Torch.Randn([100_000], g, ScalarType.Float64).ToArray<double>();
        var mean = x.Average();
        var std = Math.Sqrt(x.Sum(v => (v - mean) * (v - mean)) / (x.Length - 1));
        var within1 = x.Count(v => Math.Abs(v) < 1) / (double)x.Length;
        // standard errors: mean 0.0032, std 0.0022, fraction 0.0015
        Assert.That(mean, Is.EqualTo(0).Within(0.02));
        Assert.That(std, Is.EqualTo(1).Within(0.02));
        Assert.That(within1, Is.EqualTo(0.6827).Within(0.01));
    }

    [Test]
    public void RandIsUniformInTheHalfOpenUnitInterval()
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(8);
        var x = Torch.Rand([100_000], g, ScalarType.Float64).ToArray<double>();
        Assert.That(x.Min(), Is.GreaterThanOrEqualTo(0));
        Assert.That(x.Max(), Is.LessThan(1));
        Assert.That(x.Average(), Is.EqualTo(0.5).Within(0.01));
        Assert.That(x.Count(v => v < 0.25) / (double)x.Length, Is.EqualTo(0.25).Within(0.01));
    }

    [Test]
    public void RandIntStaysWithinBoundsAndReachesBoth()
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(9);
        var x = Torch.RandInt(-3, 4, [10_000], g);
        var v = x.ToArray<long>();
        Assert.That(x.DType, Is.EqualTo(ScalarType.Int64));
        Assert.That(v.Min(), Is.EqualTo(-3));
        Assert.That(v.Max(), Is.EqualTo(3), "high is exclusive");
        var i32 = Torch.RandInt(0, 2, [100], g, ScalarType.Int32);
        Assert.That(i32.DType, Is.EqualTo(ScalarType.Int32));
        Assert.That(i32.ToArray<int>(), Is.All.InRange(0, 1));
        using var g2 = new Generator(9);
        Assert.That(Torch.RandInt(-3, 4, [10_000], g2).ValueEquals(x), Is.True, "seeded RandInt is reproducible");
    }
}

/// <summary>Zero-copy spans, view semantics and Python-style indexing.</summary>
public class TensorOpsViewTests
{
    [Test]
    public void SpanIsZeroCopyBothWays()
    {
        using var scope = Torch.NewScope();
        var t = Torch.Zeros(2, 3);
        var span = t.AsSpan<float>();
        span[4] = 9;
        Assert.That(t.ToArray<float>(), Is.EqualTo(new float[] { 0, 0, 0, 0, 9, 0 }));
        t.Fill(2);  // native write, seen through the span
        Assert.That(t.AsReadOnlySpan<float>()[4], Is.EqualTo(2f));
        Assert.That(span[0], Is.EqualTo(2f));
        unsafe
        {
            fixed (float* p = span) Assert.That((nint)p, Is.EqualTo(t.DataPointer));
        }
    }

    [Test]
    public void SpanOfAContiguousRowViewStartsAtTheRow()
    {
        using var scope = Torch.NewScope();
        var t = Torch.Arange(0, 6, 1, ScalarType.Float64).Reshape(2, 3);
        var row = t.Select(0, 1);
        Assert.That(row.IsContiguous, Is.True);
        Assert.That(row.AsReadOnlySpan<double>().ToArray(), Is.EqualTo(new[] { 3.0, 4, 5 }));
        row.AsSpan<double>()[0] = -1;
        Assert.That(t.ToArray<double>(), Is.EqualTo(new[] { 0.0, 1, 2, -1, 4, 5 }));
    }

    [Test]
    public void SpanOfANonContiguousTensorThrows()
    {
        using var scope = Torch.NewScope();
        var t = Torch.Zeros(2, 3).Transpose(0, 1);
        var ex = Assert.Throws<InvalidOperationException>(() => _ = t.AsReadOnlySpan<float>().Length);
        Assert.That(ex!.Message, Does.Contain("contiguous").And.Contain("[3, 2]").And.Contain("Contiguous()"));
        Assert.That(t.Contiguous().AsReadOnlySpan<float>().Length, Is.EqualTo(6));
    }

    [Test]
    public void SpanOfTheWrongElementTypeThrows()
    {
        using var scope = Torch.NewScope();
        var t = Torch.Zeros(2);
        var ex = Assert.Throws<InvalidOperationException>(() => _ = t.AsSpan<double>().Length);
        Assert.That(ex!.Message, Does.Contain("float32").And.Contain("Double"));
    }

    [Test]
    public void ViewsShareStorageAndWritesReachTheBase()
    {
        using var scope = Torch.NewScope();
        var baseT = Torch.Arange(0, 12, 1, ScalarType.Float32).Reshape(3, 4);
        var narrow = baseT.Narrow(1, 1, 2);
        var row = baseT.Select(0, 2);
        var transposed = baseT.Transpose(0, 1);
        Assert.Multiple(() =>
        {
            Assert.That(narrow.SharesStorageWith(baseT), Is.True);
            Assert.That(row.SharesStorageWith(baseT), Is.True);
            Assert.That(transposed.SharesStorageWith(baseT), Is.True);
            Assert.That(baseT.Reshape(12).SharesStorageWith(baseT), Is.True, "reshape of a contiguous tensor is a view");
            Assert.That(transposed.Reshape(12).SharesStorageWith(baseT), Is.False, "reshape of a transposed tensor copies");
            Assert.That(baseT.Clone().SharesStorageWith(baseT), Is.False);
            Assert.That(baseT.Contiguous().SharesStorageWith(baseT), Is.True);
            Assert.That(baseT.Detach().SharesStorageWith(baseT), Is.True);
            Assert.That(baseT.Alias().SharesStorageWith(baseT), Is.True);
        });
        narrow.Fill(-1);
        row.CopyFrom(Mk.F(10, 20, 30, 40));
        Assert.That(baseT.ToArray<float>(), Is.EqualTo(new float[] { 0, -1, -1, 3, 4, -1, -1, 7, 10, 20, 30, 40 }));
        transposed.Select(0, 3).CopyFrom(Torch.Scalar(5));  // broadcast copy into column 3 of the base
        Assert.That(baseT.ToArray<float>(), Is.EqualTo(new float[] { 0, -1, -1, 5, 4, -1, -1, 5, 10, 20, 30, 5 }));
    }

    [Test]
    public void InPlaceArithmeticChangesTheTensor()
    {
        using var scope = Torch.NewScope();
        var t = Mk.D(1, 2, 3);
        var alias = t.Alias();
        t.AddInPlace(Mk.D(1, 1, 1)).MulInPlace(2).SubInPlace(Mk.D(0, 1, 2)).AddInPlace(0.5).DivInPlace(Mk.D(1, 2, 4));
        Assert.That(alias.ToArray<double>(), Is.EqualTo(new[] { 4.5, 2.75, 1.625 }));  // ((x + 1) * 2 - [0, 1, 2] + 0.5) / [1, 2, 4]
        t.MulInPlace(Mk.D(2, 2, 2)).Zero();
        Assert.That(alias.ToArray<double>(), Is.EqualTo(new double[3]));
    }

    private static Tensor Cube() => Torch.Arange(24).Reshape(2, 3, 4);  // value = 12 i + 4 j + k

    private static long[] Expected(long[] iRange, long[] jRange, long[] kRange) =>
        (from i in iRange from j in jRange from k in kRange select 12 * i + 4 * j + k).ToArray();

    private static readonly long[] I2 = [0, 1], J3 = [0, 1, 2], K4 = [0, 1, 2, 3];

    [Test]
    public void IndexerSelectsSlicesAndAddsAxes()
    {
        using var scope = Torch.NewScope();
        var t = Cube();
        Assert.Multiple(() =>
        {
            Assert.That(t[1].Shape, Is.EqualTo(new long[] { 3, 4 }));
            Assert.That(t[1].ToArray<long>(), Is.EqualTo(Expected([1], J3, K4)));
            Assert.That(t[^1].ToArray<long>(), Is.EqualTo(Expected([1], J3, K4)));
            Assert.That(t[-2].ToArray<long>(), Is.EqualTo(Expected([0], J3, K4)));
            Assert.That(t[.., 1..3].Shape, Is.EqualTo(new long[] { 2, 2, 4 }));
            Assert.That(t[.., 1..3].ToArray<long>(), Is.EqualTo(Expected(I2, [1, 2], K4)));
            Assert.That(t[TensorIndex.Ellipsis, 0].Shape, Is.EqualTo(new long[] { 2, 3 }));
            Assert.That(t[TensorIndex.Ellipsis, 0].ToArray<long>(), Is.EqualTo(Expected(I2, J3, [0])));
            Assert.That(t[TensorIndex.NewAxis].Shape, Is.EqualTo(new long[] { 1, 2, 3, 4 }));
            Assert.That(t[TensorIndex.NewAxis].ToArray<long>(), Is.EqualTo(Expected(I2, J3, K4)));
            Assert.That(t[0, 2, 3].Dim, Is.EqualTo(0));
            Assert.That(t[0, 2, 3].ToInt64(), Is.EqualTo(11));
            Assert.That(t[1, .., ^1].ToArray<long>(), Is.EqualTo(new long[] { 15, 19, 23 }));
            Assert.That(t[.., TensorIndex.NewAxis, 1].Shape, Is.EqualTo(new long[] { 2, 1, 4 }));
            Assert.That(t[.., TensorIndex.NewAxis, 1].ToArray<long>(), Is.EqualTo(Expected(I2, [1], K4)));
            Assert.That(t[0, TensorIndex.Ellipsis].ToArray<long>(), Is.EqualTo(Expected([0], J3, K4)));
            Assert.That(t[0, TensorIndex.Ellipsis, 2].ToArray<long>(), Is.EqualTo(Expected([0], J3, [2])));
            Assert.That(t[TensorIndex.Ellipsis, TensorIndex.NewAxis, 1].Shape, Is.EqualTo(new long[] { 2, 3, 1 }));
            Assert.That(t[1..].Shape, Is.EqualTo(new long[] { 1, 3, 4 }));
            Assert.That(t[.., ..^1, 1..^1].ToArray<long>(), Is.EqualTo(Expected(I2, [0, 1], [1, 2])));
            Assert.That(t[.., 2..1].Shape, Is.EqualTo(new long[] { 2, 0, 4 }), "an empty range is clamped, like Python");
            Assert.That(t[.., ..10].Shape, Is.EqualTo(new long[] { 2, 3, 4 }), "ends past the size are clamped");
        });
        Assert.That(t[.., 1..3].SharesStorageWith(t), Is.True, "indexing gives views");
    }

    [Test]
    public void NarrowSelectSliceUnsqueezeSqueezeExpandFlattenPermute()
    {
        using var scope = Torch.NewScope();
        var t = Cube();
        Assert.Multiple(() =>
        {
            Assert.That(t.Narrow(2, 1, 2).ToArray<long>(), Is.EqualTo(Expected(I2, J3, [1, 2])));
            Assert.That(t.Select(1, -1).ToArray<long>(), Is.EqualTo(Expected(I2, [2], K4)));
            Assert.That(t.Slice(2, 0, 4, 2).ToArray<long>(), Is.EqualTo(Expected(I2, J3, [0, 2])));
            Assert.That(t.Slice(2, 1, 100, 2).ToArray<long>(), Is.EqualTo(Expected(I2, J3, [1, 3])));
            Assert.That(t.Slice(1, -2, 3).ToArray<long>(), Is.EqualTo(Expected(I2, [1, 2], K4)));
            Assert.That(t.Unsqueeze(-1).Shape, Is.EqualTo(new long[] { 2, 3, 4, 1 }));
            Assert.That(Torch.Zeros(1, 2, 1).Squeeze().Shape, Is.EqualTo(new long[] { 2 }));
            Assert.That(Torch.Zeros(1, 2, 1).Squeeze(0).Shape, Is.EqualTo(new long[] { 2, 1 }));
            Assert.That(Mk.L(1, 2).Unsqueeze(1).Expand(2, 3).ToArray<long>(), Is.EqualTo(new long[] { 1, 1, 1, 2, 2, 2 }));
            Assert.That(Mk.L(1, 2).Expand(3, -1).ToArray<long>(), Is.EqualTo(new long[] { 1, 2, 1, 2, 1, 2 }));
            Assert.That(t.Flatten().Shape, Is.EqualTo(new long[] { 24 }));
            Assert.That(t.Flatten(1).Shape, Is.EqualTo(new long[] { 2, 12 }));
            Assert.That(t.Flatten(0, 1).Shape, Is.EqualTo(new long[] { 6, 4 }));
            Assert.That(t.Permute(2, 0, 1)[3, 1, 2].ToInt64(), Is.EqualTo(12 * 1 + 4 * 2 + 3));
            Assert.That(t.Transpose(0, 2).Contiguous().ToArray<long>()[1], Is.EqualTo(12));
            Assert.That(t.View(4, 6).Shape, Is.EqualTo(new long[] { 4, 6 }));
            Assert.That(t.Reshape(-1, 8).Shape, Is.EqualTo(new long[] { 3, 8 }));
        });
    }

    [Test]
    public void SplitAndChunkSizes()
    {
        using var scope = Torch.NewScope();
        var t = Torch.Arange(10);
        long[][] Values(Tensor[] parts) => parts.Select(p => p.ToArray<long>()).ToArray();
        Assert.Multiple(() =>
        {
            Assert.That(t.Split(3).Select(p => p.NumEl), Is.EqualTo(new long[] { 3, 3, 3, 1 }));
            Assert.That(Values(t.Split(3))[3], Is.EqualTo(new long[] { 9 }));
            Assert.That(t.Split([2, 5, 3]).Select(p => p.NumEl), Is.EqualTo(new long[] { 2, 5, 3 }));
            Assert.That(Values(t.Split([2, 5, 3]))[1], Is.EqualTo(new long[] { 2, 3, 4, 5, 6 }));
            Assert.That(t.Split(10).Length, Is.EqualTo(1));
            Assert.That(t.Split(20).Select(p => p.NumEl), Is.EqualTo(new long[] { 10 }));
            Assert.That(t.Chunk(3).Select(p => p.NumEl), Is.EqualTo(new long[] { 4, 4, 2 }));
            Assert.That(t.Chunk(5).Select(p => p.NumEl), Is.EqualTo(new long[] { 2, 2, 2, 2, 2 }));
            Assert.That(Torch.Arange(6).Chunk(4).Select(p => p.NumEl), Is.EqualTo(new long[] { 2, 2, 2 }), "like torch.chunk, fewer pieces");
            Assert.That(Torch.Arange(3).Chunk(5).Select(p => p.NumEl), Is.EqualTo(new long[] { 1, 1, 1 }));
            var m = Torch.Arange(12).Reshape(3, 4);
            var cols = m.Split(3, 1);
            Assert.That(cols.Select(c => c.Shape), Is.EqualTo(new[] { new long[] { 3, 3 }, new long[] { 3, 1 } }));
            Assert.That(cols[1].ToArray<long>(), Is.EqualTo(new long[] { 3, 7, 11 }));
            Assert.That(m.Chunk(2, -1)[1].ToArray<long>(), Is.EqualTo(new long[] { 2, 3, 6, 7, 10, 11 }));
            Assert.That(cols[0].SharesStorageWith(m), Is.True, "pieces are views");
        });
    }

    [Test]
    public void CatAndStackValues()
    {
        using var scope = Torch.NewScope();
        var a = Torch.FromArray(new long[] { 1, 2, 3, 4 }, 2, 2);
        var b = Torch.FromArray(new long[] { 5, 6 }, 1, 2);
        var cat0 = Torch.Cat([a, b]);
        var cat1 = Torch.Cat([a, a], 1);
        var stack = Torch.Stack([Mk.L(1, 2), Mk.L(3, 4), Mk.L(5, 6)], 1);
        Assert.Multiple(() =>
        {
            Assert.That(cat0.Shape, Is.EqualTo(new long[] { 3, 2 }));
            Assert.That(cat0.ToArray<long>(), Is.EqualTo(new long[] { 1, 2, 3, 4, 5, 6 }));
            Assert.That(cat1.ToArray<long>(), Is.EqualTo(new long[] { 1, 2, 1, 2, 3, 4, 3, 4 }));
            Assert.That(stack.Shape, Is.EqualTo(new long[] { 2, 3 }));
            Assert.That(stack.ToArray<long>(), Is.EqualTo(new long[] { 1, 3, 5, 2, 4, 6 }));
            Assert.That(Torch.Stack([Mk.L(1, 2), Mk.L(3, 4)]).Shape, Is.EqualTo(new long[] { 2, 2 }));
        });
    }

    [Test]
    public void GatherScatterIndexSelectMaskedFillWhereValues()
    {
        using var scope = Torch.NewScope();
        var src = Torch.FromArray(new float[,] { { 1, 2, 3 }, { 4, 5, 6 } });
        var idx = Torch.FromArray(new long[,] { { 2, 0 }, { 1, 1 } });
        var zeros = Torch.Zeros(2, 4);
        var scattered = zeros.Scatter(1, Torch.FromArray(new long[,] { { 3, 0 }, { 1, 2 } }), Torch.FromArray(new float[,] { { 10, 20 }, { 30, 40 } }));
        Assert.Multiple(() =>
        {
            Assert.That(src.Gather(1, idx).ToArray<float>(), Is.EqualTo(new float[] { 3, 1, 5, 5 }));
            Assert.That(src.Gather(0, Torch.FromArray(new long[,] { { 1, 0, 1 } })).ToArray<float>(), Is.EqualTo(new float[] { 4, 2, 6 }));
            Assert.That(scattered.ToArray<float>(), Is.EqualTo(new float[] { 20, 0, 0, 10, 0, 30, 40, 0 }));
            Assert.That(zeros.ToArray<float>(), Is.EqualTo(new float[8]), "scatter returns a copy");
            Assert.That(src.IndexSelect(0, Mk.L(1, 0, 1)).ToArray<float>(), Is.EqualTo(new float[] { 4, 5, 6, 1, 2, 3, 4, 5, 6 }));
            Assert.That(src.IndexSelect(1, Mk.L(2)).ToArray<float>(), Is.EqualTo(new float[] { 3, 6 }));
            Assert.That(src.IndexSelect(1, Mk.L(2)).Shape, Is.EqualTo(new long[] { 2, 1 }));
            Assert.That(src.MaskedFill(Torch.FromArray(new bool[,] { { true, false, false }, { false, false, true } }), -1).ToArray<float>(),
                Is.EqualTo(new float[] { -1, 2, 3, 4, 5, -1 }));
            Assert.That(src.MaskedFill(Mk.B(false, true, false), 0.5).ToArray<float>(), Is.EqualTo(new float[] { 1, 0.5f, 3, 4, 0.5f, 6 }));
            Assert.That(Torch.Where(Mk.B(true, false, true), Mk.F(1, 2, 3), Mk.F(10, 20, 30)).ToArray<float>(), Is.EqualTo(new float[] { 1, 20, 3 }));
            Assert.That(Torch.Where(src > 2.5, src, Torch.Scalar(0)).ToArray<float>(), Is.EqualTo(new float[] { 0, 0, 3, 4, 5, 6 }));
        });
    }
}

/// <summary>Elementwise math, comparisons, reductions, sorting and equality, against hand-computed values.</summary>
public class TensorOpsMathTests
{
    [Test]
    public void UnaryFunctionsMatchSystemMath()
    {
        using var scope = Torch.NewScope();
        var xs = new[] { -2.5, -0.3, 0.4, 1.7 };
        var pos = new[] { 0.2, 1.0, 2.5, 9.0 };
        var x = Mk.D(xs);
        var p = Mk.D(pos);
        double Erf(double v) => v switch { -2.5 => -0.999593047982555, -0.3 => -0.328626759459127, 0.4 => 0.428392355046668, 1.7 => 0.983790458590775, _ => double.NaN };
        Assert.Multiple(() =>
        {
            Expect.Close(xs.Select(v => -v).ToArray(), Mk.V(x.Neg()), 0, "neg");
            Expect.Close(xs.Select(v => Math.Abs(v)).ToArray(), Mk.V(x.Abs()), 0, "abs");
            Expect.Close(xs.Select(v => Math.Exp(v)).ToArray(), Mk.V(x.Exp()), 1e-14, "exp");
            Expect.Close(pos.Select(v => Math.Log(v)).ToArray(), Mk.V(p.Log()), 1e-14, "log");
            Expect.Close(pos.Select(v => Math.Log(1 + v)).ToArray(), Mk.V(p.Log1p()), 1e-14, "log1p");
            Expect.Close(new[] { 1e-10 - 0.5e-20 }, Mk.V(Mk.D(1e-10).Log1p()), 1e-25, "log1p keeps precision near 0");
            Expect.Close(pos.Select(v => Math.Sqrt(v)).ToArray(), Mk.V(p.Sqrt()), 1e-14, "sqrt");
            Expect.Close(pos.Select(v => 1 / Math.Sqrt(v)).ToArray(), Mk.V(p.Rsqrt()), 1e-14, "rsqrt");
            Expect.Close(xs.Select(v => v * v).ToArray(), Mk.V(x.Square()), 1e-15, "square");
            Expect.Close(xs.Select(v => Math.Tanh(v)).ToArray(), Mk.V(x.Tanh()), 1e-15, "tanh");
            Expect.Close(xs.Select(v => 1 / (1 + Math.Exp(-v))).ToArray(), Mk.V(x.Sigmoid()), 1e-15, "sigmoid");
            Expect.Close(xs.Select(v => Math.Max(v, 0)).ToArray(), Mk.V(x.Relu()), 0, "relu");
            Expect.Close(xs.Select(v => Math.Sin(v)).ToArray(), Mk.V(x.Sin()), 1e-15, "sin");
            Expect.Close(xs.Select(v => Math.Cos(v)).ToArray(), Mk.V(x.Cos()), 1e-15, "cos");
            Expect.Close(xs.Select(Erf).ToArray(), Mk.V(x.Erf()), 1e-13, "erf");
            Expect.Close(xs.Select(v => 1 / v).ToArray(), Mk.V(x.Reciprocal()), 1e-15, "reciprocal");
            Expect.Close(new[] { -1.0, -1, 1, 1, 0 }, Mk.V(Mk.D(-2.5, -0.3, 0.4, 1.7, 0).Sign()), 0, "sign");
            Expect.Close(new[] { -3.0, -1, 0, 1 }, Mk.V(x.Floor()), 0, "floor");
            Expect.Close(new[] { -2.0, -0.0, 1, 2 }, Mk.V(x.Ceil()), 0, "ceil");
            Expect.Close(new[] { 0.0, 2, 2, -0.0, -2, 3 }, Mk.V(Mk.D(0.5, 1.5, 2.5, -0.5, -2.5, 2.6).Round()), 0, "round half to even");
        });
    }

    [Test]
    public void GeluAndSiluKnownValues()
    {
        using var scope = Torch.NewScope();
        var one = Mk.D(1.0, -1.0, 0.0);
        Assert.Multiple(() =>
        {
            Expect.Close(new[] { 0.8413447460685429, -0.15865525393145707, 0 }, Mk.V(one.Gelu()), 1e-15, "exact gelu");
            Expect.Close(new[] { 0.8411919906082768, -0.15880800939172324, 0 }, Mk.V(one.Gelu(tanhApproximation: true)), 1e-15, "tanh gelu");
            Expect.Close(new[] { 0.8413447460685429 }, Mk.V(Functional.Gelu(Mk.F(1f))), 1e-7, "float32 gelu");
            Expect.Close(new[] { 1 / (1 + Math.Exp(-1.0)), -1 / (1 + Math.Exp(1.0)), 0 }, Mk.V(one.Silu()), 1e-15, "silu");
            Expect.Close(new[] { -2 / (1 + Math.Exp(2.0)) }, Mk.V(Functional.Silu(Mk.D(-2))), 1e-15, "silu(-2)");
        });
    }

    [Test]
    public void BinaryArithmeticWithBroadcastingAndScalars()
    {
        using var scope = Torch.NewScope();
        var a = Torch.FromArray(new double[,] { { 1, 2, 3 }, { 4, 5, 6 } });
        var row = Mk.D(10, 20, 30);
        var col = Torch.FromArray(new double[] { 2, 4 }, 2, 1);
        var t = Mk.D(1, 2, 4);
        Assert.Multiple(() =>
        {
            Assert.That((a + row).ToArray<double>(), Is.EqualTo(new double[] { 11, 22, 33, 14, 25, 36 }));
            Assert.That((a - col).ToArray<double>(), Is.EqualTo(new double[] { -1, 0, 1, 0, 1, 2 }));
            Assert.That((a * col).ToArray<double>(), Is.EqualTo(new double[] { 2, 4, 6, 16, 20, 24 }));
            Assert.That((a / col).ToArray<double>(), Is.EqualTo(new double[] { 0.5, 1, 1.5, 1, 1.25, 1.5 }));
            Assert.That((col + row).Shape, Is.EqualTo(new long[] { 2, 3 }));
            Assert.That(a.Add(row).ValueEquals(a + row), Is.True);
            Assert.That((t + 1.5).ToArray<double>(), Is.EqualTo(new[] { 2.5, 3.5, 5.5 }));
            Assert.That((1.5 + t).ToArray<double>(), Is.EqualTo(new[] { 2.5, 3.5, 5.5 }));
            Assert.That((t - 1).ToArray<double>(), Is.EqualTo(new double[] { 0, 1, 3 }));
            Assert.That((2.0 - t).ToArray<double>(), Is.EqualTo(new double[] { 1, 0, -2 }));
            Assert.That((t * 3).ToArray<double>(), Is.EqualTo(new double[] { 3, 6, 12 }));
            Assert.That((3 * t).ToArray<double>(), Is.EqualTo(new double[] { 3, 6, 12 }));
            Assert.That((t / 2).ToArray<double>(), Is.EqualTo(new[] { 0.5, 1, 2 }));
            Assert.That((2.0 / t).ToArray<double>(), Is.EqualTo(new[] { 2, 1, 0.5 }));
            Assert.That((-t).ToArray<double>(), Is.EqualTo(new double[] { -1, -2, -4 }));
            Assert.That(t.Pow(2).ToArray<double>(), Is.EqualTo(new double[] { 1, 4, 16 }));
            Assert.That(t.Pow(Mk.D(3, 0.5, -1)).ToArray<double>(), Is.EqualTo(new[] { 1, Math.Sqrt(2), 0.25 }));
            Assert.That(t.Pow(0.5).ToArray<double>(), Is.EqualTo(new[] { 1, Math.Sqrt(2), 2 }));
            Assert.That(Mk.D(1, 5, -3).Maximum(Mk.D(2, 4, -3)).ToArray<double>(), Is.EqualTo(new double[] { 2, 5, -3 }));
            Assert.That(Mk.D(1, 5, -3).Minimum(Mk.D(2, 4, -3)).ToArray<double>(), Is.EqualTo(new double[] { 1, 4, -3 }));
            Assert.That(Mk.D(-7, 7, -7, 7.5).Remainder(Mk.D(3, -3, -3, 2)).ToArray<double>(), Is.EqualTo(new double[] { 2, -2, -1, 1.5 }), "Python's %");
            Assert.That(Mk.L(-7, 7).Remainder(Mk.L(3)).ToArray<long>(), Is.EqualTo(new long[] { 2, 1 }));
            Assert.That(Mk.V(Mk.L(-7, 7).Remainder(3)), Is.EqualTo(new double[] { 2, 1 }));
            Assert.That(Mk.D(-2, 0.3, 5).Clamp(-1, 1).ToArray<double>(), Is.EqualTo(new[] { -1, 0.3, 1 }));
            Assert.That(Mk.D(-2, 0.3, 5).Clamp(min: 0).ToArray<double>(), Is.EqualTo(new[] { 0, 0.3, 5 }));
            Assert.That(Mk.D(-2, 0.3, 5).Clamp(max: 0).ToArray<double>(), Is.EqualTo(new[] { -2, 0, 0 }));
        });
    }

    [Test]
    public void IntegerTensorsPromoteLikePyTorch()
    {
        using var scope = Torch.NewScope();
        var i = Mk.L(1, 2, 3);
        var half = i + 0.5;
        var div = Mk.L(1, 3).Div(2);
        Assert.Multiple(() =>
        {
            Assert.That((i + Mk.L(2)).DType, Is.EqualTo(ScalarType.Int64));
            Assert.That((i * Mk.L(2)).ToArray<long>(), Is.EqualTo(new long[] { 2, 4, 6 }));
            Assert.That(half.DType, Is.EqualTo(ScalarType.Float32), "a float scalar promotes to the default float type");
            Assert.That(half.ToArray<float>(), Is.EqualTo(new[] { 1.5f, 2.5f, 3.5f }));
            Assert.That(div.DType.IsFloatingPoint(), Is.True, "Div is true division");
            Assert.That(Mk.V(div), Is.EqualTo(new[] { 0.5, 1.5 }));
            Assert.That((Mk.F(1) + Mk.D(1)).DType, Is.EqualTo(ScalarType.Float64));
            Assert.That((Mk.L(1) + Mk.F(0.5f)).DType, Is.EqualTo(ScalarType.Float32));
        });
    }

    [Test]
    public void IntegerTensorWithAnIntegralScalarStaysInteger()
    {
        using var scope = Torch.NewScope();
        var i = Mk.L(1, 2, 3);
        Assert.That((i + 2).DType, Is.EqualTo(ScalarType.Int64));
        Assert.That((i * 2).ToArray<long>(), Is.EqualTo(new long[] { 2, 4, 6 }));
        Assert.That((i - 1).ToArray<long>(), Is.EqualTo(new long[] { 0, 1, 2 }));
        Assert.That(Mk.L(-7, 7).Remainder(3).ToArray<long>(), Is.EqualTo(new long[] { 2, 1 }));
        Assert.That(Mk.D(10, 20, 30).IndexSelect(0, i - 1).ToArray<double>(), Is.EqualTo(new double[] { 10, 20, 30 }));
    }

    [Test]
    public void ComparisonsGiveBoolTensors()
    {
        using var scope = Torch.NewScope();
        var a = Mk.F(1, 2, 3, 4);
        var b = Mk.F(4, 2, 1, 4);
        Assert.Multiple(() =>
        {
            Assert.That(a.Eq(b).DType, Is.EqualTo(ScalarType.Bool));
            Assert.That(Mk.Bits(a.Eq(b)), Is.EqualTo(new[] { false, true, false, true }));
            Assert.That(Mk.Bits(a.Ne(b)), Is.EqualTo(new[] { true, false, true, false }));
            Assert.That(Mk.Bits(a.Lt(b)), Is.EqualTo(new[] { true, false, false, false }));
            Assert.That(Mk.Bits(a.Le(b)), Is.EqualTo(new[] { true, true, false, true }));
            Assert.That(Mk.Bits(a.Gt(b)), Is.EqualTo(new[] { false, false, true, false }));
            Assert.That(Mk.Bits(a.Ge(b)), Is.EqualTo(new[] { false, true, true, true }));
            Assert.That(Mk.Bits(a < b), Is.EqualTo(new[] { true, false, false, false }));
            Assert.That(Mk.Bits(a <= b), Is.EqualTo(new[] { true, true, false, true }));
            Assert.That(Mk.Bits(a > b), Is.EqualTo(new[] { false, false, true, false }));
            Assert.That(Mk.Bits(a >= b), Is.EqualTo(new[] { false, true, true, true }));
            Assert.That(Mk.Bits(a < 2.5), Is.EqualTo(new[] { true, true, false, false }));
            Assert.That(Mk.Bits(a <= 2), Is.EqualTo(new[] { true, true, false, false }));
            Assert.That(Mk.Bits(a > 2.5), Is.EqualTo(new[] { false, false, true, true }));
            Assert.That(Mk.Bits(a >= 3), Is.EqualTo(new[] { false, false, true, true }));
            Assert.That(Mk.Bits(a.Eq(2)), Is.EqualTo(new[] { false, true, false, false }));
            Assert.That(Mk.Bits(a.Ne(2)), Is.EqualTo(new[] { true, false, true, true }));
            Assert.That(Mk.Bits(a.Lt(2)), Is.EqualTo(new[] { true, false, false, false }));
            Assert.That(Mk.Bits(a.Le(2)), Is.EqualTo(new[] { true, true, false, false }));
            Assert.That(Mk.Bits(a.Gt(2)), Is.EqualTo(new[] { false, false, true, true }));
            Assert.That(Mk.Bits(a.Ge(2)), Is.EqualTo(new[] { false, true, true, true }));
            Assert.That(Mk.Bits((a > 1).LogicalAnd(a < 4)), Is.EqualTo(new[] { false, true, true, false }));
            Assert.That(Mk.Bits((a < 2).LogicalOr(a > 3)), Is.EqualTo(new[] { true, false, false, true }));
            Assert.That(Mk.Bits((a < 2).LogicalNot()), Is.EqualTo(new[] { false, true, true, true }));
            Assert.That(Mk.Bits(Mk.B(true, false, false).Any()), Is.EqualTo(new[] { true }));
            Assert.That(Mk.B(true, false, false).All().ToBoolean(), Is.False);
            Assert.That(Mk.Bits(Torch.FromArray(new bool[,] { { true, false }, { true, true } }).All([1])), Is.EqualTo(new[] { false, true }));
            Assert.That(Mk.Bits(Torch.FromArray(new bool[,] { { true, false }, { false, false } }).Any([0], keepDim: true)), Is.EqualTo(new[] { true, false }));
        });
    }

    [Test]
    public void IsFiniteAndIsNanOnSpecialValues()
    {
        using var scope = Torch.NewScope();
        var x = Mk.D(1, double.PositiveInfinity, double.NegativeInfinity, double.NaN, 0);
        Assert.That(Mk.Bits(x.IsFinite()), Is.EqualTo(new[] { true, false, false, false, true }));
        Assert.That(Mk.Bits(x.IsNan()), Is.EqualTo(new[] { false, false, false, true, false }));
        Assert.That(Mk.Bits(Mk.L(1, 2).IsFinite()), Is.EqualTo(new[] { true, true }), "integers are always finite");
    }

    [Test]
    public void ReductionsWithKeepDimShapes()
    {
        using var scope = Torch.NewScope();
        var x = Torch.Arange(0, 24, 1, ScalarType.Float64).Reshape(2, 3, 4);  // 12 i + 4 j + k
        Assert.Multiple(() =>
        {
            Assert.That(x.Sum().ToDouble(), Is.EqualTo(276));
            Assert.That(x.Sum().Shape, Is.Empty);
            Assert.That(x.Sum(1).Shape, Is.EqualTo(new long[] { 2, 4 }));
            Assert.That(x.Sum(1).ToArray<double>()[0], Is.EqualTo(12), "0 + 4 + 8");
            Assert.That(x.Sum(1, keepDim: true).Shape, Is.EqualTo(new long[] { 2, 1, 4 }));
            Assert.That(x.Sum([0, 2], keepDim: true).Shape, Is.EqualTo(new long[] { 1, 3, 1 }));
            Assert.That(x.Sum([0, 2]).ToArray<double>(), Is.EqualTo(new double[] { 60, 92, 124 }));
            Assert.That(x.Sum(Array.Empty<long>(), keepDim: true).Shape, Is.EqualTo(new long[] { 1, 1, 1 }));
            Assert.That(x.Mean().ToDouble(), Is.EqualTo(11.5));
            Assert.That(x.Mean([1, 2]).ToArray<double>(), Is.EqualTo(new[] { 5.5, 17.5 }));
            Assert.That(x.Mean(-1, keepDim: true).Shape, Is.EqualTo(new long[] { 2, 3, 1 }));
            Assert.That(x.Mean(-1).ToArray<double>()[5], Is.EqualTo(12 + 8 + 1.5));
            Assert.That(x.Max().ToDouble(), Is.EqualTo(23));
            Assert.That(x.Min().ToDouble(), Is.EqualTo(0));
            Assert.That(x.Amax([2]).ToArray<double>(), Is.EqualTo(new double[] { 3, 7, 11, 15, 19, 23 }));
            Assert.That(x.Amin([0, 1], keepDim: true).Shape, Is.EqualTo(new long[] { 1, 1, 4 }));
            Assert.That(x.Amin([0, 1]).ToArray<double>(), Is.EqualTo(new double[] { 0, 1, 2, 3 }));
        });
    }

    [Test]
    public void ProdAndLogSumExp()
    {
        using var scope = Torch.NewScope();
        var m = Torch.FromArray(new double[,] { { 1, 2 }, { 3, 4 } });
        Assert.Multiple(() =>
        {
            Assert.That(m.Prod().ToDouble(), Is.EqualTo(24));
            Assert.That(m.Prod(1).ToArray<double>(), Is.EqualTo(new double[] { 2, 12 }));
            Assert.That(m.Prod(0, keepDim: true).Shape, Is.EqualTo(new long[] { 1, 2 }));
            Assert.That(m.Prod(0, keepDim: true).ToArray<double>(), Is.EqualTo(new double[] { 3, 8 }));
            Assert.That(Mk.D(0, Math.Log(2), Math.Log(3)).LogSumExp(0).ToDouble(), Is.EqualTo(Math.Log(6)).Within(1e-15));
            Assert.That(Torch.FromArray(new[] { 0, Math.Log(3), Math.Log(2), Math.Log(4) }, 2, 2).LogSumExp(Array.Empty<long>()).ToDouble(),
                Is.EqualTo(Math.Log(10)).Within(1e-15));
            Assert.That(m.LogSumExp(1, keepDim: true).Shape, Is.EqualTo(new long[] { 2, 1 }));
            Expect.Close(new[] { Math.Log(Math.Exp(1) + Math.Exp(3)), Math.Log(Math.Exp(2) + Math.Exp(4)) }, Mk.V(m.LogSumExp([0])), 1e-14, "logsumexp dim 0");
            Assert.That(Mk.D(1000, 1000).LogSumExp(0).ToDouble(), Is.EqualTo(1000 + Math.Log(2)).Within(1e-12), "stable for large inputs");
        });
    }

    [Test]
    public void MaxMinWithIndicesAndArgmaxArgmin()
    {
        using var scope = Torch.NewScope();
        var m = Torch.FromArray(new float[,] { { 3, 7, 1 }, { 9, 2, 5 } });
        var (maxV, maxI) = m.Max(1);
        var (minV, minI) = m.Min(1);
        var (max0V, max0I) = m.Max(0, keepDim: true);
        Assert.Multiple(() =>
        {
            Assert.That(maxV.ToArray<float>(), Is.EqualTo(new float[] { 7, 9 }));
            Assert.That(maxI.ToArray<long>(), Is.EqualTo(new long[] { 1, 0 }));
            Assert.That(minV.ToArray<float>(), Is.EqualTo(new float[] { 1, 2 }));
            Assert.That(minI.ToArray<long>(), Is.EqualTo(new long[] { 2, 1 }));
            Assert.That(max0V.Shape, Is.EqualTo(new long[] { 1, 3 }));
            Assert.That(max0V.ToArray<float>(), Is.EqualTo(new float[] { 9, 7, 5 }));
            Assert.That(max0I.ToArray<long>(), Is.EqualTo(new long[] { 1, 0, 1 }));
            Assert.That(m.Argmax().ToInt64(), Is.EqualTo(3), "flattened");
            Assert.That(m.Argmin().ToInt64(), Is.EqualTo(2));
            Assert.That(m.Argmax(1).ToArray<long>(), Is.EqualTo(new long[] { 1, 0 }));
            Assert.That(m.Argmin(0).ToArray<long>(), Is.EqualTo(new long[] { 0, 1, 0 }));
            Assert.That(m.Argmax(1, keepDim: true).Shape, Is.EqualTo(new long[] { 2, 1 }));
            Assert.That(m.Argmax(1).DType, Is.EqualTo(ScalarType.Int64));
        });
    }

    [Test]
    public void TopKAndSortValuesAndIndices()
    {
        using var scope = Torch.NewScope();
        var v = Mk.F(5, 1, 4, 2, 3);
        var (topV, topI) = v.TopK(2);
        var (lowV, lowI) = v.TopK(2, largest: false);
        var (sV, sI) = v.Sort();
        var (dV, dI) = v.Sort(descending: true);
        var (stV, stI) = Mk.F(2, 1, 2, 1).Sort(stable: true);
        var m = Torch.FromArray(new float[,] { { 3, 7 }, { 9, 2 }, { 5, 4 } });
        var (colV, colI) = m.TopK(1, dim: 0);
        var (rowV, rowI) = m.Sort(1);
        Assert.Multiple(() =>
        {
            Assert.That(topV.ToArray<float>(), Is.EqualTo(new float[] { 5, 4 }));
            Assert.That(topI.ToArray<long>(), Is.EqualTo(new long[] { 0, 2 }));
            Assert.That(lowV.ToArray<float>(), Is.EqualTo(new float[] { 1, 2 }));
            Assert.That(lowI.ToArray<long>(), Is.EqualTo(new long[] { 1, 3 }));
            Assert.That(sV.ToArray<float>(), Is.EqualTo(new float[] { 1, 2, 3, 4, 5 }));
            Assert.That(sI.ToArray<long>(), Is.EqualTo(new long[] { 1, 3, 4, 2, 0 }));
            Assert.That(dV.ToArray<float>(), Is.EqualTo(new float[] { 5, 4, 3, 2, 1 }));
            Assert.That(dI.ToArray<long>(), Is.EqualTo(new long[] { 0, 2, 4, 3, 1 }));
            Assert.That(stV.ToArray<float>(), Is.EqualTo(new float[] { 1, 1, 2, 2 }));
            Assert.That(stI.ToArray<long>(), Is.EqualTo(new long[] { 1, 3, 0, 2 }), "stable keeps the original order of ties");
            Assert.That(colV.ToArray<float>(), Is.EqualTo(new float[] { 9, 7 }));
            Assert.That(colI.ToArray<long>(), Is.EqualTo(new long[] { 1, 0 }));
            Assert.That(colV.Shape, Is.EqualTo(new long[] { 1, 2 }));
            Assert.That(rowV.ToArray<float>(), Is.EqualTo(new float[] { 3, 7, 2, 9, 4, 5 }));
            Assert.That(rowI.ToArray<long>(), Is.EqualTo(new long[] { 0, 1, 1, 0, 1, 0 }));
        });
    }

    [Test]
    public void VarStdNormOfKnownVectors()
    {
        using var scope = Torch.NewScope();
        var v = Mk.D(2, 4, 4, 4, 5, 5, 7, 9);  // mean 5, squared deviations sum to 32
        var m = Torch.FromArray(new double[,] { { 1, 2, 3 }, { 4, 6, 8 } });
        Assert.Multiple(() =>
        {
            Assert.That(v.Var(correction: 0).ToDouble(), Is.EqualTo(4).Within(1e-14));
            Assert.That(v.Std(correction: 0).ToDouble(), Is.EqualTo(2).Within(1e-14));
            Assert.That(v.Var().ToDouble(), Is.EqualTo(32.0 / 7).Within(1e-14), "correction 1 by default");
            Assert.That(v.Std(correction: 1).ToDouble(), Is.EqualTo(Math.Sqrt(32.0 / 7)).Within(1e-14));
            Expect.Close(new[] { 1.0, 4 }, Mk.V(m.Var([1])), 1e-14, "var dim 1");
            Expect.Close(new[] { 2.0 / 3, 8.0 / 3 }, Mk.V(m.Var([1], 0)), 1e-14, "population var dim 1");
            Assert.That(m.Var([1], 1, keepDim: true).Shape, Is.EqualTo(new long[] { 2, 1 }));
            Expect.Close(new[] { 1.5 * Math.Sqrt(2), 2 * Math.Sqrt(2), 2.5 * Math.Sqrt(2) }, Mk.V(m.Std([0])), 1e-14, "std dim 0");
            Assert.That(Mk.D(3, 4).Norm().ToDouble(), Is.EqualTo(5).Within(1e-15));
            Assert.That(Mk.D(3, -4).Norm(1).ToDouble(), Is.EqualTo(7));
            Assert.That(Mk.D(3, -4).Norm(double.PositiveInfinity).ToDouble(), Is.EqualTo(4));
            Assert.That(Mk.D(1, -2, 2).Norm(3).ToDouble(), Is.EqualTo(Math.Cbrt(17)).Within(1e-14));
            Expect.Close(new[] { 5.0, 10 }, Mk.V(Torch.FromArray(new double[,] { { 3, 4 }, { 6, 8 } }).Norm(2, [1])), 1e-14, "norm dim 1");
            Assert.That(Torch.FromArray(new double[,] { { 3, 4 }, { 6, 8 } }).Norm(2, [1], keepDim: true).Shape, Is.EqualTo(new long[] { 2, 1 }));
        });
    }

    [Test]
    public void AllCloseAndValueEquals()
    {
        using var scope = Torch.NewScope();
        var a = Mk.D(1, 2);
        Assert.Multiple(() =>
        {
            Assert.That(a.AllClose(Mk.D(1 + 1e-9, 2)), Is.True);
            Assert.That(a.AllClose(Mk.D(1.1, 2)), Is.False);
            Assert.That(a.AllClose(Mk.D(1.1, 2), rtol: 0.2), Is.True);
            Assert.That(a.AllClose(Mk.D(1.05, 2), rtol: 0, atol: 0.1), Is.True);
            Assert.That(Mk.D(double.NaN).AllClose(Mk.D(double.NaN)), Is.False);
            Assert.That(Mk.D(double.NaN).AllClose(Mk.D(double.NaN), equalNan: true), Is.True);
            Assert.That(a.AllClose(Mk.D(1, 2, 3).Narrow(0, 0, 2)), Is.True);
            Assert.That(a.ValueEquals(Mk.D(1, 2)), Is.True);
            Assert.That(a.ValueEquals(Mk.D(1, 2.0000001)), Is.False);
            Assert.That(a.ValueEquals(Torch.FromArray(new double[] { 1, 2 }, 1, 2)), Is.False, "shapes differ");
            Assert.That(a.ValueEquals(Mk.D(2, 1).Sort().Values), Is.True);
        });
    }
}

/// <summary>Neural-network functions and linear algebra against hand-computed values.</summary>
public class TensorOpsFunctionalTests
{
    [Test]
    public void SoftmaxAndLogSoftmaxOfKnownInputs()
    {
        using var scope = Torch.NewScope();
        var x = Mk.D(0, Math.Log(2), Math.Log(3));
        Assert.Multiple(() =>
        {
            Expect.Close(new[] { 1.0 / 6, 2.0 / 6, 3.0 / 6 }, Mk.V(x.Softmax(0)), 1e-15, "softmax");
            Expect.Close(new[] { Math.Log(1.0 / 6), Math.Log(2.0 / 6), Math.Log(3.0 / 6) }, Mk.V(x.LogSoftmax(-1)), 1e-15, "log_softmax");
            Expect.Close(new[] { 0.25, 0.75 }, Mk.V(Mk.D(1000, 1000 + Math.Log(3)).Softmax(0)), 1e-13, "stable softmax");
            var m = Torch.FromArray(new double[,] { { 0, 0 }, { Math.Log(3), 0 } });
            Expect.Close(new[] { 0.25, 0.5, 0.75, 0.5 }, Mk.V(Functional.Softmax(m, 0)), 1e-15, "softmax dim 0");
            Expect.Close(new[] { 0.5, 0.5, 0.75, 0.25 }, Mk.V(m.Softmax(1)), 1e-15, "softmax dim 1");
            var asDouble = Mk.F(0, 0).Softmax(0, ScalarType.Float64);
            Assert.That(asDouble.DType, Is.EqualTo(ScalarType.Float64));
            Assert.That(asDouble.ToArray<double>(), Is.EqualTo(new[] { 0.5, 0.5 }));
            Assert.That(Functional.LogSoftmax(Mk.F(0, 0), 0, ScalarType.Float64).DType, Is.EqualTo(ScalarType.Float64));
        });
    }

    [Test]
    public void LayerNormOfOneTwoThree()
    {
        using var scope = Torch.NewScope();
        var x = Mk.D(1, 2, 3);
        var s = 1 / Math.Sqrt(2.0 / 3 + 1e-5);  // mean 2, biased variance 2/3
        Assert.Multiple(() =>
        {
            Expect.Close(new[] { -s, 0, s }, Mk.V(Functional.LayerNorm(x, [3])), 1e-12, "plain");
            Expect.Close(new[] { -s * 1 + 0.5, 0 * 2 + 0.5, s * 3 + 0.5 }, Mk.V(Functional.LayerNorm(x, [3], Mk.D(1, 2, 3), Mk.D(0.5, 0.5, 0.5))), 1e-12, "affine");
            Expect.Close(new[] { -1 / Math.Sqrt(2.0 / 3 + 0.1), 0, 1 / Math.Sqrt(2.0 / 3 + 0.1) }, Mk.V(Functional.LayerNorm(x, [3], eps: 0.1)), 1e-12, "eps");
            var rows = Torch.FromArray(new double[,] { { 1, 2, 3 }, { 10, 20, 30 } });
            var r = Mk.V(Functional.LayerNorm(rows, [3], eps: 0));
            Expect.Close(new[] { -Math.Sqrt(1.5), 0, Math.Sqrt(1.5), -Math.Sqrt(1.5), 0, Math.Sqrt(1.5) }, r, 1e-12, "per row");
            var both = Mk.V(Functional.LayerNorm(rows, [2, 3], eps: 0));
            var mean = 11.0;
            var values = new[] { 1.0, 2, 3, 10, 20, 30 };
            var sd = Math.Sqrt(values.Select(v => (v - mean) * (v - mean)).Average());
            Expect.Close(values.Select(v => (v - mean) / sd).ToArray(), both, 1e-12, "over two dims");
        });
    }

    private static double[] Nll(double[,] logits, long[] target)
    {
        var n = logits.GetLength(0);
        var c = logits.GetLength(1);
        var loss = new double[n];
        for (var i = 0; i < n; i++)
        {
            var lse = Math.Log(Enumerable.Range(0, c).Sum(j => Math.Exp(logits[i, j])));
            loss[i] = lse - logits[i, target[i]];
        }
        return loss;
    }

    [Test]
    public void CrossEntropyOfKnownLogits()
    {
        using var scope = Torch.NewScope();
        var logits = new double[,] { { 1, 2, 3 }, { 1, 1, 1 }, { -1, 0.5, 2 } };
        var target = new long[] { 2, 0, 1 };
        var nll = Nll(logits, target);  // [log(e+e^2+e^3) - 3, log 3, ...]
        var l = Torch.FromArray(logits);
        var t = Mk.L(target);
        Assert.That(nll[1], Is.EqualTo(Math.Log(3)).Within(1e-15));
        Assert.Multiple(() =>
        {
            Assert.That(Functional.CrossEntropy(l, t).ToDouble(), Is.EqualTo(nll.Average()).Within(1e-14));
            Assert.That(Functional.CrossEntropy(l, t, reduction: Reduction.Sum).ToDouble(), Is.EqualTo(nll.Sum()).Within(1e-14));
            Expect.Close(nll, Mk.V(Functional.CrossEntropy(l, t, reduction: Reduction.None)), 1e-14, "none");
            Assert.That(Functional.CrossEntropy(l, Mk.L(2, -100, 1)).ToDouble(), Is.EqualTo((nll[0] + nll[2]) / 2).Within(1e-14), "ignored target");
            Assert.That(Functional.CrossEntropy(l, t, ignoreIndex: 0).ToDouble(), Is.EqualTo((nll[0] + nll[2]) / 2).Within(1e-14));
            Expect.Close(new[] { nll[0], 0, nll[2] }, Mk.V(Functional.CrossEntropy(l, t, reduction: Reduction.None, ignoreIndex: 0)), 1e-14, "ignored is 0");
            var w = new[] { 0.5, 1, 2 };
            var weighted = (w[2] * nll[0] + w[0] * nll[1] + w[1] * nll[2]) / (w[2] + w[0] + w[1]);
            Assert.That(Functional.CrossEntropy(l, t, weight: Mk.D(w)).ToDouble(), Is.EqualTo(weighted).Within(1e-14), "class weights");
        });
    }

    [Test]
    public void CrossEntropyWithLabelSmoothing()
    {
        using var scope = Torch.NewScope();
        var logits = new double[,] { { 1, 2, 3 }, { 0, -1, 0.5 } };
        var target = new long[] { 0, 2 };
        const double eps = 0.2;
        var expected = new double[2];
        for (var i = 0; i < 2; i++)
        {
            var lse = Math.Log(Math.Exp(logits[i, 0]) + Math.Exp(logits[i, 1]) + Math.Exp(logits[i, 2]));
            var nll = lse - logits[i, target[i]];
            var uniform = Enumerable.Range(0, 3).Sum(j => lse - logits[i, j]) / 3;
            expected[i] = (1 - eps) * nll + eps * uniform;
        }
        var loss = Functional.CrossEntropy(Torch.FromArray(logits), Mk.L(target), reduction: Reduction.None, labelSmoothing: eps);
        Expect.Close(expected, Mk.V(loss), 1e-14, "label smoothing");
        Assert.That(Functional.CrossEntropy(Torch.FromArray(logits), Mk.L(target), labelSmoothing: eps).ToDouble(), Is.EqualTo(expected.Average()).Within(1e-14));
    }

    [Test]
    public void MatmulBmmAndEinsum()
    {
        using var scope = Torch.NewScope();
        var a = Torch.FromArray(new double[,] { { 1, 2 }, { 3, 4 } });
        var b = Torch.FromArray(new double[,] { { 5, 6 }, { 7, 8 } });
        var batch = Torch.Stack([a, b]);  // [2, 2, 2]
        Assert.Multiple(() =>
        {
            Assert.That(a.Matmul(b).ToArray<double>(), Is.EqualTo(new double[] { 19, 22, 43, 50 }));
            Assert.That(a.Matmul(Mk.D(1, -1)).ToArray<double>(), Is.EqualTo(new double[] { -1, -1 }));
            Assert.That(Mk.D(1, 2).Matmul(Mk.D(3, 4)).ToDouble(), Is.EqualTo(11));
            Assert.That(batch.Matmul(a).Shape, Is.EqualTo(new long[] { 2, 2, 2 }));
            Assert.That(batch.Matmul(a).ToArray<double>(), Is.EqualTo(new double[] { 7, 10, 15, 22, 23, 34, 31, 46 }));
            Assert.That(Torch.Zeros([3, 1, 2, 4], ScalarType.Float64).Matmul(Torch.Zeros([5, 4, 6], ScalarType.Float64)).Shape,
                Is.EqualTo(new long[] { 3, 5, 2, 6 }), "batch dimensions broadcast");
            Assert.That(batch.Bmm(batch).ToArray<double>(), Is.EqualTo(new double[] { 7, 10, 15, 22, 67, 78, 91, 106 }));
            Assert.That(Torch.Einsum("ij,jk->ik", a, b).ToArray<double>(), Is.EqualTo(new double[] { 19, 22, 43, 50 }));
            Assert.That(Torch.Einsum("ij->ji", a).ToArray<double>(), Is.EqualTo(new double[] { 1, 3, 2, 4 }));
            Assert.That(Torch.Einsum("ii->", a).ToDouble(), Is.EqualTo(5));
            Assert.That(Torch.Einsum("i,j->ij", Mk.D(1, 2), Mk.D(3, 4, 5)).ToArray<double>(), Is.EqualTo(new double[] { 3, 4, 5, 6, 8, 10 }));
            Assert.That(Torch.Einsum("bij,bjk->bik", batch, batch).ToArray<double>(), Is.EqualTo(new double[] { 7, 10, 15, 22, 67, 78, 91, 106 }));
            Assert.That(Torch.Einsum("bij->b", batch).ToArray<double>(), Is.EqualTo(new double[] { 10, 26 }));
        });
    }

    [Test]
    public void SvdReconstructsAndFindsKnownSingularValues()
    {
        using var scope = Torch.NewScope();
        var diag = Torch.FromArray(new double[,] { { 3, 0, 0 }, { 0, -5, 0 }, { 0, 0, 2 } });
        Expect.Close(new[] { 5.0, 3, 2 }, Mk.V(diag.Svd().S), 1e-12, "singular values of a diagonal matrix");

        var a = Torch.FromArray(new double[,] { { 1, 2 }, { 3, 4 }, { 5, 6 } });
        var (u, s, vh) = a.Svd();
        Assert.That(u.Shape, Is.EqualTo(new long[] { 3, 2 }));
        Assert.That(s.Shape, Is.EqualTo(new long[] { 2 }));
        Assert.That(vh.Shape, Is.EqualTo(new long[] { 2, 2 }));
        var rebuilt = u.Matmul(Torch.Einsum("i,ij->ij", s, vh));  // U diag(S) Vh
        Expect.Close(a.ToArray<double>(), rebuilt.ToArray<double>(), 1e-12, "U diag(S) Vh");
        Expect.Close(new double[] { 1, 0, 0, 1 }, Mk.V(u.Transpose(0, 1).Matmul(u)), 1e-12, "U has orthonormal columns");
        // singular values of [[1,2],[3,4],[5,6]]: square roots of the eigenvalues of A^T A = [[35,44],[44,56]]
        var tr = 91.0;
        var det = 35.0 * 56 - 44 * 44;
        var disc = Math.Sqrt(tr * tr / 4 - det);
        Expect.Close(new[] { Math.Sqrt(tr / 2 + disc), Math.Sqrt(tr / 2 - disc) }, s.ToArray<double>(), 1e-12, "singular values");
        var full = a.Svd(fullMatrices: true);
        Assert.That(full.U.Shape, Is.EqualTo(new long[] { 3, 3 }));
        Expect.Close(new double[] { 1, 0, 0, 0, 1, 0, 0, 0, 1 }, Mk.V(full.U.Matmul(full.U.Transpose(0, 1))), 1e-12, "full U is orthogonal");

        var f32 = Torch.FromArray(new float[,] { { 2, 0 }, { 1, 3 } });
        var r = f32.Svd();
        var back = r.U.Matmul(Torch.Einsum("i,ij->ij", r.S, r.Vh));
        Assert.That(back.AllClose(f32, rtol: 1e-5, atol: 1e-5), Is.True);
        Assert.That(r.S.DType, Is.EqualTo(ScalarType.Float32));
    }
}

/// <summary>Error paths: exception type and a useful message.</summary>
public class TensorOpsErrorTests
{
    [Test]
    public void AddOfMismatchedShapesNamesTheSizes()
    {
        using var scope = Torch.NewScope();
        var ex = Assert.Throws<TorchException>(() => _ = Torch.Ones(2, 3) + Torch.Ones(4));
        Assert.That(ex!.Message, Does.Contain("(3)").And.Contain("(4)").And.Contain("must match"));
        Assert.That(ex.NativeStatus, Is.Not.Zero);
    }

    [Test]
    public void MatmulOfIncompatibleShapes()
    {
        using var scope = Torch.NewScope();
        var ex = Assert.Throws<TorchException>(() => Torch.Ones(2, 3).Matmul(Torch.Ones(4, 5)));
        Assert.That(ex!.Message, Does.Contain("2x3").And.Contain("4x5"));
        var bmm = Assert.Throws<TorchException>(() => Torch.Ones(2, 3).Bmm(Torch.Ones(3, 2)));
        Assert.That(bmm!.Message, Does.Contain("3D"));
    }

    [Test]
    public void ViewOfAPermutedTensorSaysToUseReshape()
    {
        using var scope = Torch.NewScope();
        var p = Torch.Zeros(2, 3, 4).Permute(2, 0, 1);
        var ex = Assert.Throws<TorchException>(() => p.View(24));
        Assert.That(ex!.Message, Does.Contain("view").And.Contain("reshape"));
        Assert.That(p.Reshape(24).Shape, Is.EqualTo(new long[] { 24 }), "reshape copies instead");
    }

    [Test]
    public void ToArrayOfTheWrongElementTypeNamesBothTypes()
    {
        using var scope = Torch.NewScope();
        var t = Torch.Zeros([2], ScalarType.Float64);
        var ex = Assert.Throws<InvalidOperationException>(() => t.ToArray<float>());
        Assert.That(ex!.Message, Does.Contain("float64").And.Contain("Single").And.Contain("Float32"));
        var ex2 = Assert.Throws<InvalidOperationException>(() => Torch.Arange(3).ToArray<int>());
        Assert.That(ex2!.Message, Does.Contain("int64").And.Contain("Int32"));
    }

    [Test]
    public void FromArrayWithAShapeThatDoesNotMatchTheLength()
    {
        var ex = Assert.Throws<ArgumentException>(() => Torch.FromArray(new float[5], 2, 3));
        Assert.That(ex!.Message, Does.Contain("[2, 3]").And.Contain("6").And.Contain("5"));
        var neg = Assert.Throws<ArgumentException>(() => Torch.FromArray(new float[2], -1, -2));
        Assert.That(neg!.Message, Does.Contain("negative"));
        Assert.Throws<NotSupportedException>(() => Torch.FromArray(new decimal[1]));
    }

    [Test]
    public void UsingADisposedTensorThrowsObjectDisposed()
    {
        var t = Torch.Ones(2);
        t.Dispose();
        Assert.That(t.IsDisposed, Is.True);
        var ex = Assert.Throws<ObjectDisposedException>(() => _ = t.Shape);
        Assert.That(ex!.Message, Does.Contain("disposed"));
        Assert.Throws<ObjectDisposedException>(() => t.Add(1));
        using var other = Torch.Ones(2);
        Assert.Throws<ObjectDisposedException>(() => other.Add(t));
        Assert.Throws<ObjectDisposedException>(() => Torch.Cat([other, t]));
        t.Dispose();  // idempotent

        Tensor inScope;
        using (Torch.NewScope()) inScope = Torch.Zeros(1);
        Assert.Throws<ObjectDisposedException>(() => inScope.ToArray<float>(), "the scope disposed it");
    }

    [Test]
    public void ClampWithNoBounds()
    {
        using var scope = Torch.NewScope();
        var ex = Assert.Throws<ArgumentException>(() => Torch.Ones(2).Clamp());
        Assert.That(ex!.Message, Does.Contain("min").And.Contain("max"));
    }

    [Test]
    public void SliceWithANonPositiveStep()
    {
        using var scope = Torch.NewScope();
        var t = Torch.Arange(5);
        var ex = Assert.Throws<ArgumentOutOfRangeException>(() => t.Slice(0, 0, 5, 0));
        Assert.That(ex!.Message, Does.Contain("step"));
        Assert.Throws<ArgumentOutOfRangeException>(() => t.Slice(0, 0, 5, -1));
    }

    [Test]
    public void OutOfRangeIndexInTheIndexer()
    {
        using var scope = Torch.NewScope();
        var t = Torch.Zeros(2, 3);
        var ex = Assert.Throws<IndexOutOfRangeException>(() => _ = t[2]);
        Assert.That(ex!.Message, Does.Contain("2").And.Contain("dimension 0").And.Contain("size 2"));
        var ex2 = Assert.Throws<IndexOutOfRangeException>(() => _ = t[0, -4]);
        Assert.That(ex2!.Message, Does.Contain("out of range").And.Contain("size 3"));
        var many = Assert.Throws<ArgumentException>(() => _ = t[0, 0, 0]);
        Assert.That(many!.Message, Does.Contain("too many indices"));
        var ellipses = Assert.Throws<ArgumentException>(() => _ = t[TensorIndex.Ellipsis, TensorIndex.Ellipsis]);
        Assert.That(ellipses!.Message, Does.Contain("Ellipsis"));
        Assert.Throws<TorchException>(() => t.Select(0, 5), "native select checks too");
    }

    [Test]
    public void OutOfRangeIndexAfterAnIntegerIndexNamesTheRightDimension()
    {
        using var scope = Torch.NewScope();
        var t = Torch.Zeros(2, 3);
        var ex = Assert.Throws<IndexOutOfRangeException>(() => _ = t[0, -4]);
        Assert.That(ex!.Message, Does.Contain("dimension 1"));
    }

    [Test]
    public void BackwardOfANonScalarWithoutAGradient()
    {
        using var scope = Torch.NewScope();
        var x = Mk.D(1, 2).RequiresGrad_();
        var ex = Assert.Throws<TorchException>(() => (x * 2).Backward());
        Assert.That(ex!.Message, Does.Contain("scalar"));
    }

    [Test]
    public void RequiresGradOnAnIntegerTensor()
    {
        using var scope = Torch.NewScope();
        var t = Torch.Arange(3);
        var ex = Assert.Throws<TorchException>(() => t.RequiresGrad = true);
        Assert.That(ex!.Message, Does.Contain("floating point"));
        Assert.That(t.RequiresGrad, Is.False);
        Assert.Throws<TorchException>(() => Torch.Zeros([2], ScalarType.Int64, requiresGrad: true));
    }

    [Test]
    public void OtherArgumentChecks()
    {
        using var scope = Torch.NewScope();
        var t = Torch.Arange(6);
        Assert.Multiple(() =>
        {
            Assert.Throws<ArgumentOutOfRangeException>(() => t.Split(0));
            Assert.Throws<ArgumentOutOfRangeException>(() => t.Chunk(0));
            Assert.That(Assert.Throws<TorchException>(() => t.Split([2, 2]))!.Message, Does.Contain("sum"));
            Assert.That(Assert.Throws<ArgumentException>(() => Torch.RandInt(5, 5, [2]))!.Message, Does.Contain("low < high"));
            Assert.That(Assert.Throws<TorchException>(() => t.ToDouble())!.Message, Does.Contain("6 elements"));
            Assert.Throws<TorchException>(() => Torch.Cat([Torch.Zeros(2, 3), Torch.Zeros(2, 4)]));
            Assert.Throws<TorchException>(() => Torch.Zeros(2, 3).Gather(1, Torch.Zeros([2, 1], ScalarType.Int32)));
            Assert.Throws<TorchException>(() => Torch.Zeros(2, 3).Reshape(4, 2));
            Assert.That(Assert.Throws<ArgumentException>(() => Functional.CrossEntropy(Torch.Zeros(2, 3), Mk.L(0, 1), reduction: (Reduction)7))!.Message,
                Does.Contain("reduction"));
            Assert.Throws<TorchException>(() => Functional.CrossEntropy(Torch.Zeros(2, 3), Mk.L(0, 3)), "target out of range");
        });
    }
}
