using SharpLens.Testing;
using System.Buffers.Binary;
using System.Globalization;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using SharpLens.Tensors.IO;

namespace SharpLens.Tensors.Tests;

/// <summary>
/// safetensors reading and writing: exact round trips for every dtype, zero-copy loads that outlive the file
/// object, copy-on-write isolation from the file, the real fixture, and one test per malformed-file fault.
/// Non-parallel because several tests compare process-wide counters (live tensors, live mappings).
/// </summary>
[NonParallelizable]
public class SafeTensorsTests
{
    private string _dir = null!;

    [SetUp]
    public void CreateFolder()
    {
        _dir = Path.Combine(Path.GetTempPath(), "sharplens-safetensors-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(_dir);
    }

    [TearDown]
    public void DeleteFolder()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    private string TempFile(string name = "t.safetensors") => Path.Combine(_dir, name);

    // ------------------------------------------------------------------ round trips

    /// <summary>
    /// Saves a [2, 3] matrix, a 0-d scalar and a [0, 3] empty tensor of one dtype, checks the header names the
    /// dtype as safetensors spells it and the file holds the exact bytes, then loads them back bit for bit.
    /// </summary>
    private void AssertRoundTrip<T>(string dtypeName, T[] matrix, T scalar) where T : unmanaged
    {
        Assert.That(matrix, Has.Length.EqualTo(6));
        var path = TempFile();
        var start = LiveTensorCount.Settled();
        using (var m = Torch.FromArray(matrix, 2, 3))
        using (var s = Torch.FromSpan<T>([scalar], ReadOnlySpan<long>.Empty))
        using (var e = Torch.FromSpan<T>([], [0, 3]))
            SafeTensors.Save(path, new Dictionary<string, Tensor> { ["matrix"] = m, ["scalar"] = s, ["empty"] = e });

        // An independent reading of the header, so a symmetric mistake in both directions cannot pass.
        var (header, dataStart) = ReadHeader(path);
        var bytes = File.ReadAllBytes(path);
        Assert.That(dataStart % 8, Is.EqualTo(0), "data section must start 8-aligned");
        foreach (var name in new[] { "matrix", "scalar", "empty" })
            Assert.That(header.GetProperty(name).GetProperty("dtype").GetString(), Is.EqualTo(dtypeName), name);
        var mOffsets = header.GetProperty("matrix").GetProperty("data_offsets");
        var mBegin = mOffsets[0].GetInt64();
        var mEnd = mOffsets[1].GetInt64();
        Assert.That(bytes.AsSpan((int)(dataStart + mBegin), (int)(mEnd - mBegin)).ToArray(),
            Is.EqualTo(MemoryMarshal.AsBytes(matrix.AsSpan()).ToArray()), "raw little-endian bytes on disk");
        Assert.That(header.GetProperty("scalar").GetProperty("shape").GetArrayLength(), Is.EqualTo(0));

        using (var file = SafeTensorsFile.Open(path))
        {
            Assert.That(file.Names, Is.EquivalentTo(new[] { "matrix", "scalar", "empty" }));
            var dtype = ScalarTypeInfo.Of<T>();
            using var m = file.Load("matrix");
            using var s = file.Load("scalar");
            using var e = file.Load("empty");
            Assert.That(m.DType, Is.EqualTo(dtype));
            Assert.That(m.Shape, Is.EqualTo(new long[] { 2, 3 }));
            AssertSameBits(matrix, m.ToArray<T>(), "matrix");
            Assert.That(s.DType, Is.EqualTo(dtype));
            Assert.That(s.Shape, Is.Empty, "0-d scalar keeps no dimensions");
            AssertSameBits([scalar], s.ToArray<T>(), "scalar");
            Assert.That(e.DType, Is.EqualTo(dtype));
            Assert.That(e.Shape, Is.EqualTo(new long[] { 0, 3 }));
            Assert.That(e.NumEl, Is.EqualTo(0));
            var info = file.GetInfo("matrix");
            Assert.That(info.DType, Is.EqualTo(dtype));
            Assert.That(info.DTypeName, Is.EqualTo(dtypeName));
            Assert.That(info.ByteLength, Is.EqualTo(6 * dtype.ElementSize()));
            Assert.That(file.CopiedLoads, Is.EqualTo(0), "files we write are aligned, so nothing is copied");
        }
        Assert.That(Torch.LiveTensors, Is.EqualTo(start));
    }

    private static void AssertSameBits<T>(T[] expected, T[] actual, string what) where T : unmanaged =>
        Assert.That(MemoryMarshal.AsBytes(actual.AsSpan()).ToArray(), Is.EqualTo(MemoryMarshal.AsBytes(expected.AsSpan()).ToArray()),
            $"{what}: expected [{string.Join(", ", expected)}], got [{string.Join(", ", actual)}]");

    [Test]
    public void RoundTripsF64() =>
        AssertRoundTrip("F64", [1.5, -2.25, double.MaxValue, double.Epsilon, double.NaN, -0.0], Math.PI);

    [Test]
    public void RoundTripsF32() =>
        AssertRoundTrip("F32", [1.5f, -2.25f, float.MaxValue, float.Epsilon, float.NegativeInfinity, -0.0f], 0.1f);

    [Test]
    public void RoundTripsF16() =>
        AssertRoundTrip("F16", [(Half)1.5, (Half)(-0.0999755859375), Half.MaxValue, Half.Epsilon, Half.NaN, Half.NegativeInfinity], (Half)65504);

    [Test]
    public void RoundTripsBF16() =>
        AssertRoundTrip("BF16",
            [(BFloat16)1.5f, (BFloat16)(-3.140625f), (BFloat16)1e30f, BFloat16.FromBits(1), BFloat16.FromBits(0x7FC0), BFloat16.FromBits(0xFF80)],
            (BFloat16)(-0.5f));

    [Test]
    public void RoundTripsI64() =>
        AssertRoundTrip("I64", [long.MinValue, long.MaxValue, 0L, -1L, 1L << 40, 7L], -123456789012L);

    [Test]
    public void RoundTripsI32() =>
        AssertRoundTrip("I32", [int.MinValue, int.MaxValue, 0, -1, 1 << 20, 7], 42);

    [Test]
    public void RoundTripsI16() =>
        AssertRoundTrip("I16", [short.MinValue, short.MaxValue, (short)0, (short)-1, (short)300, (short)7], (short)-2);

    [Test]
    public void RoundTripsI8() =>
        AssertRoundTrip("I8", [sbyte.MinValue, sbyte.MaxValue, (sbyte)0, (sbyte)-1, (sbyte)100, (sbyte)7], (sbyte)-5);

    [Test]
    public void RoundTripsU8() =>
        AssertRoundTrip("U8", [(byte)0, (byte)255, (byte)1, (byte)128, (byte)100, (byte)7], (byte)200);

    [Test]
    public void RoundTripsBool() =>
        AssertRoundTrip("BOOL", [true, false, true, true, false, false], true);

    [Test]
    public void MetadataRoundTrips()
    {
        var path = TempFile();
        var metadata = new Dictionary<string, string> { ["format"] = "pt", ["note"] = "ünïcode \"quoted\" <tag> + 1", ["empty"] = "" };
        using (var t = Torch.Ones(2))
            SafeTensors.Save(path, [new("x", t)], metadata);
        using var file = SafeTensorsFile.Open(path);
        Assert.That(file.Metadata, Is.EquivalentTo(metadata));

        var plain = TempFile("plain.safetensors");
        using (var t = Torch.Ones(2)) SafeTensors.Save(plain, [new("x", t)]);
        using var noMeta = SafeTensorsFile.Open(plain);
        Assert.That(noMeta.Metadata, Is.Empty);
        Assert.That(ReadHeader(plain).Header.TryGetProperty("__metadata__", out _), Is.False, "no metadata, no key");
    }

    [Test]
    public void SaveOrdersByAlignmentThenNameAndAlignsEveryTensor()
    {
        var path = TempFile();
        using (var scope = Torch.NewScope())
            SafeTensors.Save(path, new Dictionary<string, Tensor>
            {
                ["u8_odd"] = Torch.Ones([3], ScalarType.Byte),
                ["b_f32"] = Torch.Ones([3], ScalarType.Float32),
                ["f64"] = Torch.Ones([2], ScalarType.Float64),
                ["a_f32"] = Torch.Ones([1], ScalarType.Float32),
                ["i16"] = Torch.Ones([1], ScalarType.Int16),
            });
        var (header, dataStart) = ReadHeader(path);
        Assert.That((dataStart - 8) % 8, Is.EqualTo(0), "header padded to a multiple of 8");
        var order = header.EnumerateObject().Select(p => p.Name).ToArray();
        Assert.That(order, Is.EqualTo(new[] { "f64", "a_f32", "b_f32", "i16", "u8_odd" }));
        long expectedBegin = 0;
        foreach (var p in header.EnumerateObject())
        {
            var begin = p.Value.GetProperty("data_offsets")[0].GetInt64();
            var end = p.Value.GetProperty("data_offsets")[1].GetInt64();
            Assert.That(begin, Is.EqualTo(expectedBegin), $"{p.Name} follows the previous tensor without a gap");
            expectedBegin = end;
        }
        Assert.That(new FileInfo(path).Length, Is.EqualTo(dataStart + expectedBegin));
        using var file = SafeTensorsFile.Open(path);
        using (Torch.NewScope()) file.LoadAll();
        Assert.That(file.CopiedLoads, Is.EqualTo(0));
    }

    [Test]
    public void SaveWritesNonContiguousTensorsInLogicalOrder()
    {
        var path = TempFile();
        using (Torch.NewScope())
        {
            var t = Torch.Arange(0, 6, 1, ScalarType.Float32).Reshape(2, 3).Transpose(0, 1);
            Assert.That(t.IsContiguous, Is.False);
            SafeTensors.Save(path, [new("t", t)]);
            var back = SafeTensors.Load(path)["t"];
            Assert.That(back.Shape, Is.EqualTo(new long[] { 3, 2 }));
            Assert.That(back.ToArray<float>(), Is.EqualTo(new float[] { 0, 3, 1, 4, 2, 5 }));
        }
    }

    [Test]
    public void SaveLeavesNoTemporaryFileBehind()
    {
        using (var t = Torch.Ones(4)) SafeTensors.Save(TempFile(), [new("x", t)]);
        Assert.That(Directory.GetFiles(_dir).Select(Path.GetFileName), Is.EqualTo(new[] { "t.safetensors" }));
    }

    [Test]
    public void SaveRejectsDuplicateAndReservedNames()
    {
        var path = TempFile();
        using var t = Torch.Ones(2);
        var dup = Assert.Throws<ArgumentException>(() => SafeTensors.Save(path, [new("w", t), new("w", t)]));
        Assert.That(dup!.Message, Does.Contain("'w'").And.Contain("more than once"));
        var reserved = Assert.Throws<ArgumentException>(() => SafeTensors.Save(path, [new("__metadata__", t)]));
        Assert.That(reserved!.Message, Does.Contain("reserved"));
        var nullTensor = Assert.Throws<ArgumentException>(() => SafeTensors.Save(path, [new("n", null!)]));
        Assert.That(nullTensor!.Message, Does.Contain("'n'").And.Contain("null"));
        Assert.That(File.Exists(path), Is.False, "a rejected save creates no file");
        Assert.That(Directory.GetFiles(_dir), Is.Empty, "nor a temporary one");
    }

    [Test]
    public void DTypeNamesCoverEverySupportedTypeAndRejectOthers()
    {
        foreach (var dtype in SafeTensors.SupportedDTypes)
        {
            Assert.That(SafeTensors.TryParseDType(SafeTensors.DTypeName(dtype), out var back), Is.True);
            Assert.That(back, Is.EqualTo(dtype));
        }
        Assert.That(SafeTensors.TryParseDType("U16", out _), Is.False);
        var ex = Assert.Throws<ArgumentException>(() => SafeTensors.DTypeName((ScalarType)99));
        Assert.That(ex!.Message, Does.Contain("99"));
    }

    // ------------------------------------------------------------------ zero copy and lifetime

    [Test]
    public void AlignedLoadViewsTheMappedFileWithoutCopying()
    {
        var path = TempFile();
        using (var scope = Torch.NewScope())
            SafeTensors.Save(path, new Dictionary<string, Tensor> { ["a"] = Torch.Randn(16, 16), ["b"] = Torch.Arange(10) });
        using var file = SafeTensorsFile.Open(path);
        using var a = file.Load("a");
        using var b = file.Load("b");
        Assert.That(a.DataPointer, Is.EqualTo(file.DataSectionAddress + (nint)file.GetInfo("a").DataBegin), "a points into the mapping");
        Assert.That(b.DataPointer, Is.EqualTo(file.DataSectionAddress + (nint)file.GetInfo("b").DataBegin), "b points into the mapping");
        Assert.That(file.CopiedLoads, Is.EqualTo(0));
        AssertMappedFromFile(a.DataPointer, path);
    }

    [Test]
    public void MisalignedDataIsCopiedAndStillCorrect()
    {
        var path = TempFile();
        var floats = new[] { 1.25f, -7.5f };
        var data = new byte[9];
        data[0] = 42;
        MemoryMarshal.AsBytes(floats.AsSpan()).CopyTo(data.AsSpan(1));
        WriteRaw(path, """{"u":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"f":{"dtype":"F32","shape":[2],"data_offsets":[1,9]}}""", data);
        using var file = SafeTensorsFile.Open(path);
        using var f = file.Load("f");
        Assert.That(f.ToArray<float>(), Is.EqualTo(floats));
        Assert.That(file.CopiedLoads, Is.EqualTo(1), "an F32 at an odd address must be copied");
        Assert.That(f.DataPointer % 4, Is.EqualTo((nint)0));
        using var u = file.Load("u");
        Assert.That(u.ToArray<byte>(), Is.EqualTo(new byte[] { 42 }));
        Assert.That(file.CopiedLoads, Is.EqualTo(1), "bytes are always aligned");
    }

    [Test]
    public void InPlaceWritesToALoadedTensorNeverReachTheFile()
    {
        var path = TempFile();
        using (var t = Torch.Arange(0, 8, 1, ScalarType.Float32)) SafeTensors.Save(path, [new("w", t)]);
        var before = File.ReadAllBytes(path);
        using (var file = SafeTensorsFile.Open(path))
        {
            using var w = file.Load("w");
            Assert.That(w.DataPointer, Is.EqualTo(file.DataSectionAddress + (nint)file.GetInfo("w").DataBegin), "the write goes to mapped pages");
            w.AddInPlace(1);  // an optimizer step would do this: must not fault on the mapping nor write through
            w.MulInPlace(2);
            Assert.That(w.ToArray<float>(), Is.EqualTo(new float[] { 2, 4, 6, 8, 10, 12, 14, 16 }));

            // A second load sees the file, not the first tensor's private pages, and is independent of it.
            using var again = file.Load("w");
            Assert.That(again.ToArray<float>(), Is.EqualTo(new float[] { 0, 1, 2, 3, 4, 5, 6, 7 }));
            Assert.That(file.CopiedLoads, Is.EqualTo(0), "the second load is a fresh view, not a copy");
            AssertMappedFromFile(again.DataPointer, path);
            again.Fill(-1);
            Assert.That(w.ToArray<float>()[0], Is.EqualTo(2f));
        }
        Assert.That(File.ReadAllBytes(path), Is.EqualTo(before), "the file on disk is unchanged");
        using var reloaded = SafeTensors.Load(path)["w"];
        Assert.That(reloaded.ToArray<float>(), Is.EqualTo(new float[] { 0, 1, 2, 3, 4, 5, 6, 7 }));
    }

    [Test]
    public void ReloadAfterAWrittenTensorDiesStillSeesTheFile()
    {
        var path = TempFile();
        using (var t = Torch.Ones(4)) SafeTensors.Save(path, [new("w", t)]);
        using var file = SafeTensorsFile.Open(path);
        using (var w = file.Load("w")) w.Fill(9);
        using var again = file.Load("w");
        Assert.That(again.ToArray<float>(), Is.EqualTo(new float[] { 1, 1, 1, 1 }));
    }

    [Test]
    public void TensorsOutliveTheFileAndTheMappingIsReleasedWithTheLastOne()
    {
        var path = TempFile();
        using (var t = Torch.Arange(0, 5, 1, ScalarType.Float64)) SafeTensors.Save(path, [new("x", t), new("y", t)]);
        var startTensors = Torch.LiveTensors;
        var startMappings = SafeTensorsFile.LiveMappings;

        var file = SafeTensorsFile.Open(path);
        var x = file.Load("x");
        var y = file.Load("y");
        var y2 = file.Load("y");  // a second view: its own mapping
        Assert.That(SafeTensorsFile.LiveMappings, Is.EqualTo(startMappings + 2));
        file.Dispose();
        Assert.That(SafeTensorsFile.LiveMappings, Is.EqualTo(startMappings + 2), "tensors keep the mapping alive");
        Assert.Throws<ObjectDisposedException>(() => file.Load("x"));

        Assert.That(x.ToArray<double>(), Is.EqualTo(new double[] { 0, 1, 2, 3, 4 }));
        x.AddInPlace(1);
        Assert.That(x.ToArray<double>(), Is.EqualTo(new double[] { 1, 2, 3, 4, 5 }));
        Assert.That(y.ToArray<double>(), Is.EqualTo(new double[] { 0, 1, 2, 3, 4 }));
        using (var view = x.Narrow(0, 1, 2)) // a view keeps the storage (and so the mapping) past x's handle
        {
            x.Dispose();
            Assert.That(view.ToArray<double>(), Is.EqualTo(new double[] { 2, 3 }));
            y2.Dispose();
            Assert.That(SafeTensorsFile.LiveMappings, Is.EqualTo(startMappings + 1), "y2's own view is unmapped with it");
        }
        Assert.That(SafeTensorsFile.LiveMappings, Is.EqualTo(startMappings + 1), "y still views the file");
        y.Dispose();
        Assert.That(SafeTensorsFile.LiveMappings, Is.EqualTo(startMappings), "the last tensor unmaps the file");
        Assert.That(Torch.LiveTensors, Is.EqualTo(startTensors));
    }

    [Test]
    public void SavingOverAnOpenFileIsAtomicAndLeavesLoadedTensorsIntact()
    {
        var path = TempFile();
        using (var t = Torch.Full([4], 3.0)) SafeTensors.Save(path, [new("w", t)]);
        using var file = SafeTensorsFile.Open(path);
        using var old = file.Load("w");
        using (var t = Torch.Full([2], 5.0)) SafeTensors.Save(path, [new("w", t)]);
        Assert.That(old.ToArray<float>(), Is.EqualTo(new float[] { 3, 3, 3, 3 }), "the mapping keeps the old version");
        using var fresh = SafeTensors.Load(path)["w"];
        Assert.That(fresh.ToArray<float>(), Is.EqualTo(new float[] { 5, 5 }));
    }

    [Test]
    public void LoadAllAndConvenienceLoadReturnOwnedTensors()
    {
        var path = TempFile();
        using (Torch.NewScope())
            SafeTensors.Save(path, new Dictionary<string, Tensor> { ["a"] = Torch.Ones(2), ["b"] = Torch.Zeros([3], ScalarType.Int64) });
        var start = LiveTensorCount.Settled();
        var startMappings = SafeTensorsFile.LiveMappings;
        var all = SafeTensors.Load(path);
        Assert.That(all.Keys, Is.EquivalentTo(new[] { "a", "b" }));
        Assert.That(all["b"].DType, Is.EqualTo(ScalarType.Int64));
        Assert.That(Torch.LiveTensors, Is.EqualTo(start + 2));
        foreach (var t in all.Values) t.Dispose();
        Assert.That(Torch.LiveTensors, Is.EqualTo(start));
        Assert.That(SafeTensorsFile.LiveMappings, Is.EqualTo(startMappings));
    }

    [Test]
    public void UnknownNameAndQueries()
    {
        var path = TempFile();
        using (var t = Torch.Ones(2, 3)) SafeTensors.Save(path, [new("present", t)]);
        using var file = SafeTensorsFile.Open(path);
        Assert.That(file.Contains("present"), Is.True);
        Assert.That(file.Contains("absent"), Is.False);
        Assert.That(file.Count, Is.EqualTo(1));
        Assert.That(file.GetInfo("present").Shape, Is.EqualTo(new long[] { 2, 3 }));
        Assert.That(file.GetInfo("present").NumEl, Is.EqualTo(6));
        var ex = Assert.Throws<KeyNotFoundException>(() => file.Load("absent"));
        Assert.That(ex!.Message, Does.Contain("absent").And.Contain("t.safetensors"));
    }

    // ------------------------------------------------------------------ the real fixture

    [Test]
    public void ReadsTheTinyGpt2Fixture()
    {
        var path = FixturePath("tiny-gpt2/model.safetensors");
        using var file = SafeTensorsFile.Open(path);
        Assert.That(file.Count, Is.EqualTo(28));
        Assert.That(file.Metadata["format"], Is.EqualTo("pt"));
        Assert.That(file.Contains("transformer.h.1.mlp.c_proj.weight"), Is.True);
        var info = file.GetInfo("transformer.wte.weight");
        Assert.That(info.DType, Is.EqualTo(ScalarType.Float32));
        Assert.That(info.Shape, Is.EqualTo(new long[] { 1000, 64 }));

        using var scope = Torch.NewScope();
        var wte = file.Load("transformer.wte.weight");
        Assert.That(wte.Shape, Is.EqualTo(new long[] { 1000, 64 }));
        Assert.That(wte.IsFinite().All().ToBoolean(), Is.True);
        var values = wte.ToArray<float>();
        // Read independently from the file with Python's struct module.
        Assert.That(values[..4], Is.EqualTo(new[] { -0.050984397530555725f, -0.02480810321867466f, -0.03153562545776367f, -0.017293579876422882f }));
        Assert.That(values[^1], Is.EqualTo(0.00698021799325943f));
        Assert.That(wte.To(ScalarType.Float64).Sum().ToDouble(), Is.EqualTo(-8.764856404657621).Within(1e-9));
        var lnf = file.Load("transformer.ln_f.weight");
        Assert.That(lnf.ToArray<float>()[..2], Is.EqualTo(new[] { 0.9776946902275085f, 0.9924780130386353f }));
        Assert.That(file.CopiedLoads, Is.EqualTo(0), "the reference writer aligns data, so nothing is copied");
        foreach (var t in file.LoadAll().Values)
            Assert.That(t.IsFinite().All().ToBoolean(), Is.True);
    }

    // ------------------------------------------------------------------ malformed files

    private SafeTensorsFormatException AssertFault(string path, params string[] fragments)
    {
        var ex = Assert.Throws<SafeTensorsFormatException>(() => SafeTensorsFile.Open(path).Dispose())!;
        Assert.That(ex.Message, Does.Contain(Path.GetFileName(path)), "the message names the file");
        Assert.That(ex.FilePath, Is.EqualTo(path));
        foreach (var f in fragments) Assert.That(ex.Message, Does.Contain(f));
        Assert.That(ex, Is.InstanceOf<FormatException>());
        return ex;
    }

    private string Malformed(string header, int dataBytes = 16, [CallerMemberName] string name = "")
    {
        var path = TempFile(name + ".safetensors");
        WriteRaw(path, header, new byte[dataBytes]);
        return path;
    }

    private static string Entry(string name, string dtype, string shape, long begin, long end) =>
        $"\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":{shape},\"data_offsets\":[{begin},{end}]}}";

    [Test]
    public void FileShorterThanTheLengthField()
    {
        var empty = TempFile("empty.safetensors");
        File.WriteAllBytes(empty, []);
        AssertFault(empty, "0 bytes", "shorter than the 8-byte header length");
        var five = TempFile("five.safetensors");
        File.WriteAllBytes(five, [1, 2, 3, 4, 5]);
        AssertFault(five, "5 bytes");
    }

    [Test]
    public void HeaderLengthPastTheEnd()
    {
        var path = TempFile("long.safetensors");
        var bytes = new byte[8 + 10];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, 11);
        File.WriteAllBytes(path, bytes);
        AssertFault(path, "header length 11", "past the end of the file");

        var huge = TempFile("huge.safetensors");
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, ulong.MaxValue);
        File.WriteAllBytes(huge, bytes);
        AssertFault(huge, ulong.MaxValue.ToString(CultureInfo.InvariantCulture), "past the end");
    }

    [Test]
    public void HeaderNotJson() => AssertFault(Malformed("{\"w\" {}}"), "not valid JSON");

    [Test]
    public void HeaderTruncatedJson() => AssertFault(Malformed("{\"w\":{\"dtype\":\"F32\","), "not valid JSON");

    [Test]
    public void HeaderTrailingGarbage() => AssertFault(Malformed("{} x"), "not valid JSON");

    [Test]
    public void HeaderInvalidUtf8()
    {
        var path = TempFile("utf8.safetensors");
        var header = Encoding.UTF8.GetBytes("{\"a\xff\":{}}");
        header[3] = 0xFF;  // "a" then an invalid UTF-8 byte inside the key
        WriteRawBytes(path, header, []);
        AssertFault(path, "UTF-8");
    }

    /// <summary>Found by the header fuzzing: invalid UTF-8 inside a value the reader skips (an unknown field) was accepted.</summary>
    [Test]
    public void HeaderInvalidUtf8InASkippedValue()
    {
        var path = TempFile("utf8-skipped.safetensors");
        var header = Encoding.UTF8.GetBytes("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"note\":\"a?\"}}");
        header[^4] = 0xFF;  // the '?' inside the unknown field's string
        WriteRawBytes(path, header, [1]);
        AssertFault(path, "not valid UTF-8");
    }

    /// <summary>Found by the header fuzzing: the reference reads <c>"__metadata__": null</c> as no metadata; it was refused.</summary>
    [Test]
    public void NullMetadataIsNoMetadata()
    {
        var path = Malformed("{\"__metadata__\":null," + Entry("w", "U8", "[2]", 0, 2) + "}", dataBytes: 2);
        using var file = SafeTensorsFile.Open(path);
        Assert.That(file.Metadata, Is.Empty);
        using var w = file.Load("w");
        Assert.That(w.ToArray<byte>(), Is.EqualTo(new byte[] { 0, 0 }));
    }

    [Test]
    public void HeaderNotAnObject() => AssertFault(Malformed("[1, 2, 3]"), "not a JSON object", "array");

    [Test]
    public void EntryNotAnObject() => AssertFault(Malformed("{\"w\": 5}"), "entry 'w'", "JSON object", "number");

    [Test]
    public void EntryMissingDtype() =>
        AssertFault(Malformed("{\"w\":{\"shape\":[2],\"data_offsets\":[0,8]}}"), "entry 'w'", "missing 'dtype'");

    [Test]
    public void EntryMissingShape() =>
        AssertFault(Malformed("{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}"), "entry 'w'", "missing 'shape'");

    [Test]
    public void EntryMissingDataOffsets() =>
        AssertFault(Malformed("{\"w\":{\"dtype\":\"F32\",\"shape\":[2]}}"), "entry 'w'", "missing 'data_offsets'");

    [Test]
    public void DtypeOfWrongJsonType() =>
        AssertFault(Malformed("{\"w\":{\"dtype\":32,\"shape\":[2],\"data_offsets\":[0,8]}}"), "entry 'w'", "dtype must be a string");

    [Test]
    public void ShapeOfWrongJsonType() =>
        AssertFault(Malformed("{\"w\":{\"dtype\":\"F32\",\"shape\":\"2\",\"data_offsets\":[0,8]}}"), "entry 'w'", "shape must be an array of integers");

    [Test]
    public void ShapeWithAFraction() =>
        AssertFault(Malformed("{\"w\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}"), "entry 'w'", "2.5", "not a 64-bit integer");

    [Test]
    public void DataOffsetsOfWrongArity() =>
        AssertFault(Malformed("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4,8]}}"), "'w'", "3 entries", "[begin, end]");

    [Test]
    public void UnknownDtypeIsNamed() =>
        AssertFault(Malformed("{" + Entry("w", "F8_E4M3", "[2]", 0, 2) + "}"), "'w'", "unsupported dtype 'F8_E4M3'");

    [Test]
    public void NegativeShape() =>
        AssertFault(Malformed("{" + Entry("w", "F32", "[2,-1]", 0, 8) + "}"), "'w'", "negative size -1");

    [Test]
    public void NegativeOffsets() =>
        AssertFault(Malformed("{" + Entry("w", "U8", "[2]", -2, 0) + "}"), "'w'", "negative data_offsets");

    [Test]
    public void OffsetsBeyondTheDataSection() =>
        AssertFault(Malformed("{" + Entry("w", "F32", "[8]", 0, 32) + "}", dataBytes: 16), "'w'", "[0, 32]", "beyond the data section of 16 bytes");

    [Test]
    public void BeginAfterEnd() =>
        AssertFault(Malformed("{" + Entry("w", "U8", "[0]", 8, 4) + "}"), "'w'", "[8, 4]", "begin is after its end");

    [Test]
    public void OverlappingTensorsNameBoth() =>
        AssertFault(Malformed("{" + Entry("first", "F32", "[2]", 0, 8) + "," + Entry("second", "F32", "[2]", 4, 12) + "}"),
            "'first'", "'second'", "overlap");

    [Test]
    public void SizeMismatchNamesTensorShapeDtypeAndByteCounts() =>
        AssertFault(Malformed("{" + Entry("w", "F32", "[2,3]", 0, 16) + "}", dataBytes: 16),
            "'w'", "[2, 3]", "F32", "needs 24 bytes", "span 16 bytes");

    [Test]
    public void ShapeWhoseByteSizeOverflows() =>
        AssertFault(Malformed("{" + Entry("w", "F64", "[4611686018427387904,4]", 0, 8) + "}"), "'w'", "overflows");

    [Test]
    public void DuplicateTensorKey() =>
        AssertFault(Malformed("{" + Entry("w", "U8", "[4]", 0, 4) + "," + Entry("w", "U8", "[4]", 4, 8) + "}"), "duplicate key 'w'");

    [Test]
    public void DuplicateFieldInsideAnEntry() =>
        AssertFault(Malformed("{\"w\":{\"dtype\":\"U8\",\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,4]}}"), "entry 'w'", "duplicate key 'dtype'");

    [Test]
    public void MetadataWithANonStringValue() =>
        AssertFault(Malformed("{\"__metadata__\":{\"epoch\":3}}"), "metadata value 'epoch'", "must be a string");

    [Test]
    public void DuplicateMetadataKey() =>
        AssertFault(Malformed("{\"__metadata__\":{\"a\":\"1\",\"a\":\"2\"}}"), "duplicate key 'a'");

    [Test]
    public void BoolBytesOtherThanZeroOrOneAreRejectedOnLoad()
    {
        var path = TempFile("bool.safetensors");
        WriteRaw(path, "{" + Entry("mask", "BOOL", "[3]", 0, 3) + "}", [1, 0, 2]);
        using var file = SafeTensorsFile.Open(path);
        var start = LiveTensorCount.Settled();
        var ex = Assert.Throws<SafeTensorsFormatException>(() => file.Load("mask"))!;
        Assert.That(ex.Message, Does.Contain("bool.safetensors").And.Contain("'mask'").And.Contain("byte value 2"));
        Assert.That(Torch.LiveTensors, Is.EqualTo(start));
    }

    [Test]
    public void GapsAndUnknownFieldsAreAccepted()
    {
        var path = TempFile();
        var data = new byte[24];
        MemoryMarshal.AsBytes(new[] { 1f, 2f }.AsSpan()).CopyTo(data.AsSpan(0));
        MemoryMarshal.AsBytes(new[] { 3f, 4f }.AsSpan()).CopyTo(data.AsSpan(16));  // bytes 8..16 unused
        WriteRaw(path, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"extra\":{\"x\":[1]}}," + Entry("b", "F32", "[2]", 16, 24) + "}", data);
        using var file = SafeTensorsFile.Open(path);
        using var a = file.Load("a");
        using var b = file.Load("b");
        Assert.That(a.ToArray<float>(), Is.EqualTo(new[] { 1f, 2f }));
        Assert.That(b.ToArray<float>(), Is.EqualTo(new[] { 3f, 4f }));
    }

    [Test]
    public void EmptyTensorsMayShareAnOffset()
    {
        var path = TempFile();
        WriteRaw(path, "{" + Entry("e1", "F32", "[0]", 4, 4) + "," + Entry("e2", "I64", "[0,5]", 4, 4) + "," + Entry("w", "U8", "[8]", 0, 8) + "}", new byte[8]);
        using var file = SafeTensorsFile.Open(path);
        using var e2 = file.Load("e2");
        Assert.That(e2.Shape, Is.EqualTo(new long[] { 0, 5 }));
    }

    // ------------------------------------------------------------------ helpers

    /// <summary>Writes a file from a header string padded to 8 bytes (like the reference writer) and raw data bytes.</summary>
    private static void WriteRaw(string path, string header, byte[] data)
    {
        var h = Encoding.UTF8.GetBytes(header);
        var padded = new byte[(h.Length + 7) / 8 * 8];
        Array.Fill(padded, (byte)' ');
        h.CopyTo(padded, 0);
        WriteRawBytes(path, padded, data);
    }

    private static void WriteRawBytes(string path, byte[] header, byte[] data)
    {
        using var s = File.Create(path);
        Span<byte> len = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)header.Length);
        s.Write(len);
        s.Write(header);
        s.Write(data);
    }

    /// <summary>Parses a file's header with System.Text.Json, independently of the code under test.</summary>
    private static (JsonElement Header, long DataStart) ReadHeader(string path)
    {
        var bytes = File.ReadAllBytes(path);
        var n = (long)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        using var doc = JsonDocument.Parse(bytes.AsMemory(8, (int)n));
        return (doc.RootElement.Clone(), 8 + n);
    }

    /// <summary>
    /// Asserts, from the kernel's own list of mappings, that <paramref name="address"/> lies in a mapping of
    /// <paramref name="path"/>: the strongest evidence that the tensor's memory is the file, not a copy.
    /// </summary>
    private static void AssertMappedFromFile(nint address, string path)
    {
        if (!File.Exists("/proc/self/maps")) Assert.Ignore("/proc/self/maps is Linux-only");
        var full = Path.GetFullPath(path);
        var a = (ulong)address;
        foreach (var line in File.ReadLines("/proc/self/maps"))
        {
            var parts = line.Split(' ', 6, StringSplitOptions.RemoveEmptyEntries);
            var range = parts[0].Split('-');
            var lo = ulong.Parse(range[0], NumberStyles.HexNumber);
            var hi = ulong.Parse(range[1], NumberStyles.HexNumber);
            if (a < lo || a >= hi) continue;
            Assert.That(parts.Length, Is.EqualTo(6), $"address 0x{a:x} lies in an anonymous mapping: {line}");
            Assert.That(parts[5].Trim(), Is.EqualTo(full), $"address 0x{a:x} maps another file: {line}");
            Assert.That(parts[1], Does.EndWith("p"), "the mapping is private (copy-on-write)");
            return;
        }
        Assert.Fail($"address 0x{a:x} is in no mapping");
    }

    /// <summary>
    /// tests/fixtures/NAME inside the repository: under the first folder holding Engine.sln above the test binaries,
    /// or above this source file when the binaries were built elsewhere (--artifacts-path). Nothing outside the
    /// repository is read, so a clone on its own passes.
    /// </summary>
    private static string FixturePath(string name, [CallerFilePath] string sourceFile = "")
    {
        var searched = new List<string>();
        foreach (var start in new[] { TestContext.CurrentContext.TestDirectory, Path.GetDirectoryName(sourceFile) })
        {
            for (var dir = string.IsNullOrEmpty(start) ? null : new DirectoryInfo(start); dir is not null; dir = dir.Parent)
            {
                if (!File.Exists(Path.Combine(dir.FullName, "Engine.sln"))) continue;
                var candidate = Path.GetFullPath(Path.Combine(dir.FullName, "tests", "fixtures", name));
                if (File.Exists(candidate)) return candidate;
                searched.Add(candidate);
                break;
            }
        }
        Assert.Fail($"fixture {name} not found; looked for: {string.Join(", ", searched)}");
        return null!;
    }
}
