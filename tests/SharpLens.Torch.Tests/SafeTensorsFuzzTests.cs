using SharpLens.Testing;
using System.Runtime.InteropServices;
using PropertyAttribute = FsCheck.NUnit.PropertyAttribute;
using SharpLens.Tensors.IO;
using SharpLens.Testing.Fuzzing;

namespace SharpLens.Tensors.Tests;

/// <summary>
/// Property-based tests of <see cref="SafeTensorsFile"/> against the format's rules: a valid file with a tensor of every
/// dtype (0-d, empty, misaligned-able, BOOL) and metadata is edited at random (<see cref="HeaderMutations"/>: the JSON header,
/// the length prefix, truncation, flipped bytes), and every result must be judged as the independent oracle
/// (<see cref="SafeTensorsSpec"/>) judges it: an invalid file raises <see cref="SafeTensorsFormatException"/> naming the file
/// (never another exception, a crash or a hang), and a valid one opens and loads each tensor with exactly the bytes its
/// header declares (nothing valid refused, nothing loaded wrong). A fixed seed makes the run deterministic and replayable.
/// </summary>
[NonParallelizable]
public class SafeTensorsFuzzTests
{
    private string _dir = null!;
    private SafeTensorsImage _image = null!;
    private int _case, _accepted, _refused;

    /// <summary>Earlier tests' undisposed tensors are freed now, not by a finalizer in the middle of a case's leak check.</summary>
    [SetUp]
    public void SettleLiveTensors() => LiveTensorCount.Settled();

    [OneTimeSetUp]
    public void WriteValidFile()
    {
        _dir = Path.Combine(Path.GetTempPath(), "sharplens-st-fuzz-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(_dir);
        var path = Path.Combine(_dir, "valid.safetensors");
        using (var scope = Torch.NewScope())
        {
            var tensors = new Dictionary<string, Tensor>
            {
                ["f64"] = Torch.FromArray(new[] { 1.5, -2.25, 3 }, 3),
                ["f32"] = Torch.FromArray(new[] { 0.5f, 1, 2, 3, 4, 5 }, 2, 3),
                ["f16"] = Torch.FromArray(new[] { 0.5f, 1, 2, 3 }, 2, 2).To(ScalarType.Float16),
                ["bf16"] = Torch.FromArray(new[] { 0.5f, -1 }, 2).To(ScalarType.BFloat16),
                ["i64"] = Torch.FromArray(new[] { 7L }, 1),
                ["i32"] = Torch.FromArray(new[] { 1, 2, 3, 4 }, 4),
                ["i16"] = Torch.FromArray(new short[] { -3, 3 }, 2),
                ["i8"] = Torch.FromArray(new sbyte[] { -1, 1, 0 }, 3),
                ["u8"] = Torch.FromArray(new byte[] { 9, 8, 7, 6, 5 }, 5),
                ["bool"] = Torch.FromArray(new[] { true, false, true }, 3),
                ["scalar"] = Torch.FromSpan<float>([42], ReadOnlySpan<long>.Empty),
                ["empty"] = Torch.FromSpan<float>([], [0, 3]),
            };
            SafeTensors.Save(path, tensors, new Dictionary<string, string> { ["format"] = "pt" });
        }
        _image = SafeTensorsImage.Read(path);
        Assert.That(SafeTensorsSpec.Check(_image.Compose(_image.Header)).Valid, Is.True, "the oracle accepts the unedited file");
    }

    [OneTimeTearDown]
    public void DeleteFolder()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    /// <summary>The edited files: 500 cases from a fixed seed (replay a failure with the seed FsCheck reports).</summary>
    [Test]
    public void EveryEditIsJudgedAsTheFormatSays()
    {
        var (accepted, refused) = (_accepted, _refused);
        Fuzz.Check(HeaderMutations.For(_image), cases: 1000, seed: 20241204, mutation => CheckOne(mutation.Apply(_image), mutation.ToString()));
        (accepted, refused) = (_accepted - accepted, _refused - refused);
        TestContext.Out.WriteLine($"{accepted} edits gave valid files (loaded and compared), {refused} invalid ones (refused by name)");
        // Both sides of the property must be exercised, or it could not fail on that side.
        Assert.That(accepted, Is.GreaterThanOrEqualTo(50), "valid files among the edits");
        Assert.That(refused, Is.GreaterThanOrEqualTo(50), "invalid files among the edits");
    }

    /// <summary>Arbitrary bytes as the header (FsCheck's own byte arrays), behind a length prefix that fits them, then data.</summary>
    [Property(MaxTest = 300, QuietOnSuccess = true, Replay = "(20241204,1122334457)")]
    public void ArbitraryHeaderBytesAreJudgedAsTheFormatSays(byte[] header, byte[] data) =>
        CheckOne([.. BitConverter.GetBytes((ulong)header.Length), .. header, .. data], $"header {Convert.ToHexString(header)}, {data.Length} data bytes");

    /// <summary>Arbitrary text as the header (FsCheck's own strings, any Unicode) before the valid file's data.</summary>
    [Property(MaxTest = 300, QuietOnSuccess = true, Replay = "(20241205,1122334459)")]
    public void ArbitraryHeaderTextIsJudgedAsTheFormatSays(string? text) =>
        CheckOne(_image.Compose(System.Text.Encoding.UTF8.GetBytes(text ?? "")), $"header text '{text}'");

    private void CheckOne(byte[] bytes, string what)
    {
        var verdict = SafeTensorsSpec.Check(bytes);
        var path = Path.Combine(_dir, $"case{Interlocked.Increment(ref _case)}.safetensors");
        File.WriteAllBytes(path, bytes);
        var liveBefore = Torch.LiveTensors;  // settled once per test in SetUp; a full collection per case would cost minutes
        try
        {
            SafeTensorsFile file;
            try
            {
                file = SafeTensorsFile.Open(path);
            }
            catch (SafeTensorsFormatException e)
            {
                if (verdict.Valid) throw new FuzzFailure($"{what}: a valid file was refused: {e.Message}", e);
                AssertNamesTheFile(e, path, what);
                Interlocked.Increment(ref _refused);
                return;
            }
            catch (Exception e)
            {
                throw new FuzzFailure($"{what}: {e.GetType().Name} instead of SafeTensorsFormatException ({verdict.Reason}): {e.Message}", e);
            }
            using (file)
            {
                if (!verdict.Valid) throw new FuzzFailure($"{what}: an invalid file was accepted ({verdict.Reason})");
                CheckContents(file, bytes, verdict, what);
                Interlocked.Increment(ref _accepted);
            }
        }
        finally
        {
            File.Delete(path);
        }
        if (Torch.LiveTensors != liveBefore) throw new FuzzFailure($"{what}: {Torch.LiveTensors - liveBefore} tensors leaked");
    }

    /// <summary>Header order, each tensor's dtype, shape and offsets, the metadata, and each loaded tensor's bytes, against the oracle.</summary>
    private static void CheckContents(SafeTensorsFile file, byte[] bytes, SpecVerdict verdict, string what)
    {
        if (!file.Names.SequenceEqual(verdict.Entries.Select(e => e.Name)))
            throw new FuzzFailure($"{what}: names [{string.Join(", ", file.Names)}], the header has [{string.Join(", ", verdict.Entries.Select(e => e.Name))}]");
        if (!file.Metadata.OrderBy(p => p.Key).SequenceEqual(verdict.Metadata.OrderBy(p => p.Key)))
            throw new FuzzFailure($"{what}: metadata differs from the header's");
        foreach (var entry in verdict.Entries)
        {
            var info = file.GetInfo(entry.Name);
            if (info.DTypeName != entry.DType || !info.Shape.SequenceEqual(entry.Shape) || info.DataBegin != entry.Begin || info.DataEnd != entry.End)
                throw new FuzzFailure($"{what}: '{entry.Name}' read as {info}, the header says {entry.DType} [{string.Join(", ", entry.Shape)}] [{entry.Begin}, {entry.End})");
            if (SafeTensorsSpec.HasInvalidBoolBytes(bytes, verdict, entry))
            {
                try
                {
                    file.Load(entry.Name).Dispose();
                }
                catch (SafeTensorsFormatException e)
                {
                    AssertNamesTheFile(e, file.Path, what);
                    continue;
                }
                throw new FuzzFailure($"{what}: BOOL tensor '{entry.Name}' with bytes other than 0 and 1 was loaded");
            }
            using var t = file.Load(entry.Name);
            var loaded = new byte[entry.ByteLength];
            if (loaded.Length > 0) Marshal.Copy(t.DataPointer, loaded, 0, loaded.Length);
            if (t.DType.ElementSize() != SafeTensorsSpec.ElementSizes[entry.DType] || !t.Shape.SequenceEqual(entry.Shape)
                || !loaded.AsSpan().SequenceEqual(SafeTensorsSpec.Bytes(bytes, verdict, entry)))
                throw new FuzzFailure($"{what}: tensor '{entry.Name}' does not hold the bytes its header declares");
        }
    }

    private static void AssertNamesTheFile(SafeTensorsFormatException e, string path, string what)
    {
        if (e.FilePath != path || !e.Message.Contains(path))
            throw new FuzzFailure($"{what}: the error does not name the file: {e.Message}");
    }
}
