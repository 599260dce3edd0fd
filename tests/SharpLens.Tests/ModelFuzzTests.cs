using SharpLens.Testing;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json.Nodes;
using SharpLens.Adapters;
using SharpLens.Loading;
using SharpLens.Tensors.IO;
using SharpLens.Testing.Fuzzing;

namespace SharpLens.Tests;

/// <summary>
/// Property-based loading tests (FsCheck) for every fixture architecture: the fixture's model.safetensors header and its
/// config.json are edited at random, and every edit must either load, exactly as what it says (the parameters hold the bytes
/// the header declares; the config means what transformers 4.44.2 would make of it), or be refused by a
/// <see cref="ModelLoadException"/> or <see cref="SafeTensorsFormatException"/> whose message names the file: never another
/// exception, a crash, a hang, a leaked tensor or a silently wrong load. Each property runs a fixed number of cases from a
/// fixed seed, so the suite is deterministic and any failure replays (FsCheck reports the edit and the seed);
/// <c>SHARPLENS_FUZZ_SEED</c> and <c>SHARPLENS_FUZZ_SCALE</c> explore further.
/// </summary>
[NonParallelizable]
public class ModelFuzzTests
{
    /// <summary>The fixture folders, one per supported architecture.</summary>
    public static readonly string[] Models =
        ["tiny-gpt2", "tiny-pythia", "tiny-llama", "tiny-mistral", "tiny-qwen2", "tiny-gemma", "tiny-gemma2", "tiny-phi3"];

    private string _dir = null!;

    [SetUp]
    public void MakeTempDir()
    {
        _dir = Path.Combine(Path.GetTempPath(), "sharplens-model-fuzz-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(_dir);
        // Earlier tests' undisposed tensors are freed now, not by a finalizer in the middle of a case's leak check.
        LiveTensorCount.Settled();
    }

    [TearDown]
    public void RemoveTempDir()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    private string ConfigPath => Path.Combine(_dir, ModelLoader.ConfigFile);
    private string CheckpointPath => Path.Combine(_dir, ModelLoader.SafetensorsFile);

    private static ulong SeedOf(string model) => (ulong)model.Aggregate(17L, (h, c) => h * 31 + c);

    private void CopyFixture(string model)
    {
        foreach (var f in new[] { ModelLoader.ConfigFile, ModelLoader.SafetensorsFile })
            File.Copy(Path.Combine(Fixtures.Path(model), f), Path.Combine(_dir, f));
    }

    private static JsonObject FixtureConfig(string model) =>
        JsonNode.Parse(File.ReadAllText(Path.Combine(Fixtures.Path(model), ModelLoader.ConfigFile)))!.AsObject();

    // ------------------------------------------------------------------ the table of meanings

    [TestCaseSource(nameof(Models))]
    public void EveryFixtureConfigFieldHasAStatedMeaning(string model)
    {
        var config = FixtureConfig(model);
        var table = HfConfigDefaults.Fields[config["model_type"]!.GetValue<string>()];
        Assert.That(config.Select(p => p.Key).Where(k => k != "model_type" && !table.ContainsKey(k)), Is.Empty,
            "fields the fuzzing would not know the meaning of");
    }

    // ------------------------------------------------------------------ model.safetensors

    /// <summary>
    /// Edits of the checkpoint's header and bytes (<see cref="HeaderMutations"/>). The model must load exactly when the file is
    /// a valid safetensors file (<see cref="SafeTensorsSpec"/>, the independent oracle) holding the fixture's tensor names, each
    /// with its shape and a floating-point dtype; then every parameter equals, value for value, the bytes the header declares.
    /// </summary>
    [TestCaseSource(nameof(Models))]
    public void CheckpointEditsLoadExactlyOrAreRefusedByName(string model)
    {
        CopyFixture(model);
        var image = SafeTensorsImage.Read(CheckpointPath);
        var shapes = image.Entries.ToDictionary(e => e.Name, e => e.Shape);
        var (loaded, refused) = (0, 0);
        Fuzz.Check(HeaderMutations.For(image), cases: 200, seed: SeedOf(model), mutation =>
        {
            var bytes = mutation.Apply(image);
            var verdict = SafeTensorsSpec.Check(bytes);
            var expectLoad = verdict.Valid && verdict.Entries.Count == shapes.Count && verdict.Entries.All(e =>
                shapes.TryGetValue(e.Name, out var shape) && shape.SequenceEqual(e.Shape) && e.DType is "F64" or "F32" or "F16" or "BF16");
            var why = verdict.Valid ? "a valid file whose tensors do not fit the config" : verdict.Reason;
            ReplaceFile(CheckpointPath, bytes);
            var what = mutation.ToString();
            var outcome = LoadOutcome.Of(_dir, what, bridge =>
            {
                foreach (var entry in verdict.Entries)
                {
                    var expected = SafeTensorsSpec.FloatValues(SafeTensorsSpec.Bytes(bytes, verdict, entry), entry.DType);
                    var actual = bridge.Parameter(entry.Name).ToArray<float>();
                    if (!expected.Select(v => (float)v).SequenceEqual(actual))
                        throw new FuzzFailure($"{what}: parameter '{entry.Name}' does not hold the values its header declares");
                }
            }, forward: false);
            if (outcome.Loaded != expectLoad)
                throw new FuzzFailure(expectLoad ? $"{what}: a valid checkpoint was refused: {outcome.Error!.Message}" : $"{what}: accepted ({why})");
            if (outcome.Loaded) loaded++;
            else refused++;
        });
        TestContext.Out.WriteLine($"{model}: {loaded} edited checkpoints loaded and compared, {refused} refused by name");
        Assert.That(loaded, Is.GreaterThanOrEqualTo(5), "loads among the edits (else the exactness side is untested)");
        Assert.That(refused, Is.GreaterThanOrEqualTo(50), "refusals among the edits");
    }

    // ------------------------------------------------------------------ config.json

    /// <summary>
    /// A config.json without some fields means what transformers would make of it: the outcome (refused, or the loaded
    /// <see cref="TransformerConfig"/>) must equal that of the config with those fields set to the config class's defaults.
    /// </summary>
    [TestCaseSource(nameof(Models))]
    public void DeletedConfigFieldsMeanTransformersDefaults(string model)
    {
        CopyFixture(model);
        var original = FixtureConfig(model);
        var table = HfConfigDefaults.Fields[original["model_type"]!.GetValue<string>()];
        var fields = original.Select(p => p.Key).Where(k => k != "model_type").Select(k => table[k]).ToArray();
        Fuzz.Check(ConfigEdits.Deletions(original, fields), cases: 100, seed: SeedOf(model) + 1, edit => CheckConfigEdit(edit, null));
    }

    /// <summary>Edits of every kind (<see cref="ConfigEdits"/>), each with the outcome its meaning requires.</summary>
    [TestCaseSource(nameof(Models))]
    public void ConfigEditsLoadAsTheyMeanOrAreRefusedByName(string model)
    {
        CopyFixture(model);
        var original = FixtureConfig(model);
        var originalConfig = LoadOutcome.Of(_dir, "the unedited fixture", null, forward: true);
        Assert.That(originalConfig.Loaded, Is.True, "the fixture loads");
        var counts = new Dictionary<bool, int> { [true] = 0, [false] = 0 };
        Fuzz.Check(ConfigEdits.For(original), cases: 300, seed: SeedOf(model) + 2, edit => counts[CheckConfigEdit(edit, originalConfig.Config)]++);
        TestContext.Out.WriteLine($"{model}: {counts[true]} edited configs loaded, {counts[false]} refused by name");
        Assert.That(counts[true], Is.GreaterThanOrEqualTo(10), "loads among the edits");
        Assert.That(counts[false], Is.GreaterThanOrEqualTo(50), "refusals among the edits");
    }

    /// <summary>Writes the edit, loads, and checks the outcome against what the edit must lead to; returns whether it loaded.</summary>
    private bool CheckConfigEdit(ConfigEdit edit, string? originalConfig)
    {
        var what = edit.ToString();
        if (edit.Expect == Expect.SameAsReference)
        {
            ReplaceFile(ConfigPath, edit.Reference!);
            var reference = LoadOutcome.Of(_dir, what + " [the reference]", null, forward: false);
            ReplaceFile(ConfigPath, edit.Bytes);
            var outcome = LoadOutcome.Of(_dir, what, null, forward: true);
            if (outcome.Loaded != reference.Loaded || outcome.Config != reference.Config)
                throw new FuzzFailure($"{what}: {outcome.Describe()}, but the reference config {reference.Describe()}");
            return outcome.Loaded;
        }
        ReplaceFile(ConfigPath, edit.Bytes);
        var result = LoadOutcome.Of(_dir, what, null, forward: true);
        var ok = edit.Expect switch
        {
            Expect.Refuse => !result.Loaded,
            Expect.Load => result.Loaded,
            Expect.LoadAsOriginal => result.Loaded && result.Config == originalConfig,
            Expect.RefuseOrAsOriginal => !result.Loaded || result.Config == originalConfig,
            _ => true,
        };
        if (!ok) throw new FuzzFailure($"{what}: {result.Describe()}" + (result.Loaded && result.Config != originalConfig ? $" (unedited: {originalConfig})" : ""));
        return result.Loaded;
    }

    /// <summary>Replaces a file by renaming a complete new one over it, so a mapping still open on the old one never sees a torn file.</summary>
    private static void ReplaceFile(string path, byte[] bytes)
    {
        var temp = path + ".new";
        File.WriteAllBytes(temp, bytes);
        File.Move(temp, path, overwrite: true);
    }
}

/// <summary>
/// What loading a model folder gave: loaded (with a canonical description of its <see cref="TransformerConfig"/>) or refused
/// by name. Any other exception, a refusal whose message does not name the file, a failed forward pass, or a tensor left alive
/// fails the case on the spot.
/// </summary>
internal sealed record LoadOutcome(bool Loaded, string? Config, Exception? Error)
{
    public string Describe() => Loaded ? $"loaded as {Config}" : $"refused: {Error!.Message}";

    private static readonly long[] Tokens = [1, 2, 3, 4, 5];

    public static LoadOutcome Of(string dir, string what, Action<TransformerBridge>? check, bool forward)
    {
        // Raw, per case: the test's SetUp settled the count once (a full collection per case would cost minutes).
        var live = Torch.LiveTensors;
        LoadOutcome outcome;
        try
        {
            using var bridge = TransformerBridge.Load(dir);
            check?.Invoke(bridge);
            if (forward) Forward(bridge, what);
            outcome = new LoadOutcome(true, Canonical(bridge.Config), null);
        }
        catch (Exception e) when (e is ModelLoadException or SafeTensorsFormatException)
        {
            var files = new[] { ModelLoader.ConfigFile, ModelLoader.SafetensorsFile }.Select(f => Path.Combine(dir, f));
            if (!files.Any(f => e.Message.Contains(f)))
                throw new FuzzFailure($"{what}: the refusal does not name the file: {e.Message}", e);
            outcome = new LoadOutcome(false, null, e);
        }
        catch (FuzzFailure)
        {
            throw;
        }
        catch (Exception e)
        {
            throw new FuzzFailure($"{what}: {e.GetType().FullName} instead of a named refusal: {e.Message}", e);
        }
        if (Torch.LiveTensors != live) throw new FuzzFailure($"{what}: {Torch.LiveTensors - live} tensors leaked");
        return outcome;
    }

    /// <summary>A forward pass on five tokens: finite logits, or (a context shorter than five) a named ArgumentException.</summary>
    private static void Forward(TransformerBridge bridge, string what)
    {
        using var scope = Torch.NewScope();
        var tokens = Torch.FromArray(Tokens, 1, Tokens.Length);
        Tensor logits;
        try
        {
            logits = bridge.Forward(tokens);
        }
        catch (ArgumentException e) when (bridge.Config.NCtx < Tokens.Length && e.Message.Contains("context"))
        {
            return;
        }
        catch (Exception e)
        {
            throw new FuzzFailure($"{what}: loaded, but the forward pass failed with {e.GetType().FullName}: {e.Message}", e);
        }
        if (!logits.IsFinite().All().ToBoolean()) throw new FuzzFailure($"{what}: loaded, but the logits are not finite");
    }

    /// <summary>Every public property of the config (lists and the rope scaling record element by element), as one string.</summary>
    public static string Canonical(object? value) => value switch
    {
        null => "null",
        string s => s,
        System.Collections.IEnumerable list => "[" + string.Join(", ", list.Cast<object?>().Select(Canonical)) + "]",
        TransformerConfig or RopeScaling => value.GetType().Name + "{" + string.Join(", ", value.GetType().GetProperties()
            .Where(p => p.GetIndexParameters().Length == 0).OrderBy(p => p.Name).Select(p => $"{p.Name} = {Canonical(p.GetValue(value))}")) + "}",
        IFormattable f => f.ToString(null, System.Globalization.CultureInfo.InvariantCulture),
        _ => value.ToString() ?? "",
    };
}
