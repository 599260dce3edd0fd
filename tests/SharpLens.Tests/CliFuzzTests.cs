using System.Text;
using System.Text.Json.Nodes;
using SharpLens.Loading;
using SharpLens.Testing.Fuzzing;

namespace SharpLens.Tests;

/// <summary>
/// The faults of the property-based loading tests, end to end through <c>lens params MODEL --out F</c>: for every fixture
/// architecture, edits drawn from the same generators with a fixed seed (checkpoint headers the format refuses, configs that
/// must be refused) give exit code 1 and one line <c>error: ...</c> naming the file, with no stack trace and no output file.
/// </summary>
[NonParallelizable]
public class CliFuzzTests : CliTestBase
{
    /// <summary>How many edits of each kind are drawn per architecture.</summary>
    private const int PerKind = 2;

    /// <summary>A seed per architecture, so each draws different edits.</summary>
    private static ulong SeedOf(string model) => (ulong)model.Aggregate(7L, (h, c) => h * 31 + c);

    [TestCaseSource(typeof(ModelFuzzTests), nameof(ModelFuzzTests.Models))]
    public void RefusedCheckpointEditsAreOneLineUserErrors(string model)
    {
        var dir = CopyModel(model, "checkpoint");
        var checkpoint = Path.Combine(dir, ModelLoader.SafetensorsFile);
        var image = SafeTensorsImage.Read(checkpoint);
        var edits = Fuzz.Sample(HeaderMutations.For(image), 50, seed: SeedOf(model))
            .Select(m => (m, bytes: m.Apply(image))).Where(e => !SafeTensorsSpec.Check(e.bytes).Valid).Take(PerKind).ToList();
        Assert.That(edits, Has.Count.EqualTo(PerKind), "invalid edits among the samples");
        foreach (var (mutation, bytes) in edits)
        {
            File.WriteAllBytes(checkpoint, bytes);
            AssertRefused(dir, checkpoint, mutation.ToString(), checkpoint);
        }
    }

    [TestCaseSource(typeof(ModelFuzzTests), nameof(ModelFuzzTests.Models))]
    public void RefusedConfigEditsAreOneLineUserErrors(string model)
    {
        var dir = CopyModel(model, "config");
        var config = Path.Combine(dir, ModelLoader.ConfigFile);
        var original = JsonNode.Parse(File.ReadAllText(config))!.AsObject();
        var edits = Fuzz.Sample(ConfigEdits.For(original), 100, seed: SeedOf(model) + 1).Where(e => e.Expect == Expect.Refuse).Take(PerKind).ToList();
        Assert.That(edits, Has.Count.EqualTo(PerKind), "edits that must be refused among the samples");
        foreach (var edit in edits)
        {
            File.WriteAllBytes(config, edit.Bytes);
            // A config fault is reported against config.json, or (a size the checkpoint contradicts) against model.safetensors.
            AssertRefused(dir, dir, edit.ToString(), config, Path.Combine(dir, ModelLoader.SafetensorsFile));
        }
    }

    /// <summary>
    /// A tensor name holding a line break (legal in JSON) is printed escaped: the error stays one line, whatever text from the
    /// file it quotes.
    /// </summary>
    [Test]
    public void ATensorNameWithALineBreakStaysOneLine()
    {
        var dir = CopyModel("tiny-gpt2", "newline");
        var checkpoint = Path.Combine(dir, ModelLoader.SafetensorsFile);
        var image = SafeTensorsImage.Read(checkpoint);
        var header = image.ParseHeader();
        header["line\nbreak"] = JsonNode.Parse("""{"dtype":"F32","shape":[0],"data_offsets":[0,0]}""");
        File.WriteAllBytes(checkpoint, image.Compose(Encoding.UTF8.GetBytes(header.ToJsonString())));
        var r = Lens("params", dir, "--out", TempPath("newline.safetensors"));
        AssertUserError(r, checkpoint, "line\\nbreak");
        AssertOneLine(r);
    }

    /// <summary>lens params refuses the folder: a one-line user error naming one of <paramref name="files"/>, and no output.</summary>
    private void AssertRefused(string dir, string namedFile, string what, params string[] files)
    {
        var output = TempPath($"params-{Guid.NewGuid():N}.safetensors");
        var r = Lens("params", dir, "--out", output);
        TestContext.Out.WriteLine($"{what}\n  -> {r.Error.TrimEnd()}");
        Assert.Multiple(() =>
        {
            AssertUserError(r, namedFile);
            Assert.That(files.Any(f => r.Error.Contains(f)), Is.True, $"{what}: the error names {string.Join(" or ", files)}");
            AssertOneLine(r);
            Assert.That(File.Exists(output), Is.False, $"{what}: nothing is written");
        });
    }

    private string CopyModel(string model, string name)
    {
        var dir = TempPath($"{model}-{name}");
        Directory.CreateDirectory(dir);
        foreach (var f in new[] { ModelLoader.ConfigFile, ModelLoader.SafetensorsFile })
            File.Copy(Path.Combine(Fixtures.Path(model), f), Path.Combine(dir, f));
        return dir;
    }
}
