using System.Text.Json;
using System.Text.Json.Nodes;
using SharpLens.Sweeps;
using SharpLens.Tensors.IO;

namespace SharpLens.Tests;

/// <summary>
/// <c>lens patch</c>: its per-pair results averaged over the fixture's two pairs equal TransformerLens's batch-mean patching
/// results (analysis.safetensors patch.*), for every kind the fixture has, in float64 (1e-9) and float32 (1e-4; the bound of
/// <see cref="PatchingTests"/>); pairs of different lengths equal each pair patched alone by the library; a run cut short
/// (chunks missing from the manifest, a chunk written but not recorded, a stray temporary file) resumes to the same files;
/// changed arguments and foreign folders are refused.
/// </summary>
public class PatchCommandTests : TempFolderTest
{
    private string WritePrompts(string name, IEnumerable<(long[] Clean, long[] Corrupted, long Answer, long Wrong)> pairs)
    {
        var path = Path.Combine(Tmp, name);
        File.WriteAllLines(path, pairs.Select(p => JsonSerializer.Serialize(new { clean = p.Clean, corrupted = p.Corrupted, answer = p.Answer, wrong = p.Wrong })));
        return path;
    }

    /// <summary>The fixture's rows as pairs: clean, the row rolled by one position, and the fixture's answer and wrong token.</summary>
    private string FixturePrompts(string model, AnalysisFixture fx)
    {
        var ids = fx["input_ids"].ToArray<long>();
        var pairs = Enumerable.Range(0, 2).Select(r =>
        {
            var clean = ids.Skip(r * 12).Take(12).ToArray();
            var rolled = clean.TakeLast(1).Concat(clean.Take(11)).ToArray();
            return (clean, rolled, fx["answer"].ToInt64(), fx["wrong"].ToInt64());
        });
        return WritePrompts($"{model}.jsonl", pairs);
    }

    [TestCase("tiny-gpt2", "float64", 1e-9)]
    [TestCase("tiny-pythia", "float64", 1e-9)]
    [TestCase("tiny-gpt2", "float32", 1e-4)]
    public void AveragedOverPairsEqualsTransformerLens(string model, string dtype, double bound)
    {
        using var fx = new AnalysisFixture(model);
        {
            var prompts = FixturePrompts(model, fx);
            foreach (var (kind, key) in new[] { ("resid_pre", "resid_pre_by_pos"), ("attn_out", "attn_out_by_pos"), ("mlp_out", "mlp_out_by_pos"), ("head_out", "head_out_all_pos") })
            {
                var dir = Path.Combine(Tmp, $"{model}-{dtype}-{kind}");
                var r = Lens("patch", Fixtures.Path(model), "--prompts", prompts, "--kind", kind, "--dtype", dtype, "--out", dir);
                Assert.That(r.Code, Is.EqualTo(0), r.Err);
                var result = SafeTensors.Load(Path.Combine(dir, PatchSweep.ResultName));
                try
                {
                    using var scope = Torch.NewScope();
                    Assert.That(result[kind].Shape, Is.EqualTo(kind == "head_out" ? new long[] { 2, 2, 4 } : new long[] { 2, 2, 12 }));
                    Assert.That(result[kind].DType, Is.EqualTo(dtype == "float64" ? ScalarType.Float64 : ScalarType.Float32));
                    var d = Fixtures.MaxAbsDiff(fx["patch." + key], result[kind].Mean(0));
                    Assert.That(d, Is.LessThanOrEqualTo(bound), $"{model} {kind} {dtype}: {d:G3}");
                    Assert.That(Fixtures.MaxAbsDiff(fx["patch.clean_metric"], result["clean_metric"].Mean().Reshape(1)), Is.LessThanOrEqualTo(bound));
                    Assert.That(Fixtures.MaxAbsDiff(fx["patch.corrupted_metric"], result["corrupted_metric"].Mean().Reshape(1)), Is.LessThanOrEqualTo(bound));
                    var csv = File.ReadAllLines(Path.Combine(dir, PatchSweep.CsvName));
                    Assert.That(csv[0], Does.StartWith("pair_index,line,clean_metric,corrupted_metric,layer," + (kind == "head_out" ? "head" : "position")));
                    Assert.That(csv, Has.Length.EqualTo(1 + 2 * 2 * (kind == "head_out" ? 4 : 12)));
                    TestContext.Out.WriteLine($"{model} {dtype} {kind}: {d:G3}");
                }
                finally
                {
                    foreach (var t in result.Values) t.Dispose();
                }
            }
        }
    }

    private static List<(long[] Clean, long[] Corrupted, long Answer, long Wrong)> RandomPairs(int count, int seed)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, count).Select(_ =>
        {
            var n = rng.Next(4, 9);
            var clean = Enumerable.Range(0, n).Select(_ => (long)rng.Next(1000)).ToArray();
            var corrupted = clean.Select(t => rng.Next(3) == 0 ? (long)rng.Next(1000) : t).ToArray();
            return (clean, corrupted, (long)rng.Next(1000), (long)rng.Next(1000));
        }).ToList();
    }

    [Test]
    public void PairsOfDifferentLengthsEqualEachPairPatchedAlone()
    {
        var pairs = RandomPairs(7, seed: 5);
        var prompts = WritePrompts("lengths.jsonl", pairs);
        var dir = Path.Combine(Tmp, "lengths");
        var r = Lens("patch", Fixtures.Path("tiny-gpt2"), "--prompts", prompts, "--kind", "mlp_out", "--dtype", "float64", "--out", dir,
            "--batch-size", "3", "--chunk-size", "4", "--max-tokens", "40");
        Assert.That(r.Code, Is.EqualTo(0), r.Err);
        using var scope = Torch.NewScope();
        var result = SafeTensors.Load(Path.Combine(dir, PatchSweep.ResultName));
        var values = result["mlp_out"];
        var width = pairs.Max(p => p.Clean.Length);
        Assert.That(values.Shape, Is.EqualTo(new long[] { 7, 2, width }));
        using var bridge = TransformerBridge.Load(Fixtures.Path("tiny-gpt2"), new BridgeOptions { DType = ScalarType.Float64 });
        for (var i = 0; i < pairs.Count; i++)
        {
            var (clean, corrupted, answer, wrong) = pairs[i];
            var n = clean.Length;
            var (_, cache) = bridge.RunWithCache(Torch.FromArray(clean, 1, n));
            using (cache)
            {
                var metric = Patching.LogitDiff(Torch.FromArray(new[] { answer }), Torch.FromArray(new[] { wrong }));
                var alone = Patching.GetActPatchMlpOut(bridge, Torch.FromArray(corrupted, 1, n), cache, metric).Select(-1, 0);  // [layer, n]
                var row = values.Select(0, i);
                Assert.That(Fixtures.MaxAbsDiff(alone, row.Narrow(1, 0, n)), Is.LessThan(1e-12), $"pair {i}");
                if (n < width) Assert.That(row.Narrow(1, n, width - n).IsNan().All().ToBoolean(), $"pair {i}: NaN past its length");
            }
        }
        var csv = File.ReadAllLines(Path.Combine(dir, PatchSweep.CsvName));
        Assert.That(csv, Has.Length.EqualTo(1 + pairs.Sum(p => 2 * p.Clean.Length)), "one row per layer and real position");
        foreach (var t in result.Values) t.Dispose();
    }

    [Test]
    public void AnInterruptedRunResumesToTheSameFiles()
    {
        var prompts = WritePrompts("resume.jsonl", RandomPairs(5, seed: 9));
        string[] Args(string d) => ["patch", Fixtures.Path("tiny-pythia"), "--prompts", prompts, "--kind", "head_out", "--out", d, "--chunk-size", "2", "--batch-size", "2"];
        var reference = Path.Combine(Tmp, "resume-reference");
        Assert.That(Lens(Args(reference)).Code, Is.EqualTo(0));

        var dir = Path.Combine(Tmp, "resume");
        Assert.That(Lens(Args(dir)).Code, Is.EqualTo(0));
        // As a kill would leave it: the last chunk never recorded (its file gone), the middle one written but not recorded,
        // a temporary file half written, and no assembled results yet.
        var manifestPath = Path.Combine(dir, "manifest.json");
        var manifest = JsonNode.Parse(File.ReadAllText(manifestPath))!;
        manifest["completed"] = new JsonArray(0);
        File.WriteAllText(manifestPath, manifest.ToJsonString());
        File.Delete(Path.Combine(dir, "chunks", "chunk-00002.safetensors"));
        File.WriteAllText(Path.Combine(dir, "chunks", ".chunk-00002.safetensors.0123.tmp"), "half");
        File.Delete(Path.Combine(dir, PatchSweep.ResultName));
        File.Delete(Path.Combine(dir, PatchSweep.CsvName));

        var resumed = Lens(Args(dir));
        Assert.That(resumed.Code, Is.EqualTo(0), resumed.Err);
        Assert.That(resumed.Out, Does.Contain("resuming: 1 of 3"));
        Assert.That(File.ReadAllText(Path.Combine(dir, PatchSweep.CsvName)), Is.EqualTo(File.ReadAllText(Path.Combine(reference, PatchSweep.CsvName))));
        Assert.That(File.ReadAllBytes(Path.Combine(dir, PatchSweep.ResultName)), Is.EqualTo(File.ReadAllBytes(Path.Combine(reference, PatchSweep.ResultName))), "byte for byte");
        var (a, b) = (SafeTensors.Load(Path.Combine(reference, PatchSweep.ResultName)), SafeTensors.Load(Path.Combine(dir, PatchSweep.ResultName)));
        foreach (var key in a.Keys) Assert.That(b[key].ValueEquals(a[key]), key);
        foreach (var t in a.Values.Concat(b.Values)) t.Dispose();
        Assert.That(Directory.GetFiles(dir, "*.tmp", SearchOption.AllDirectories), Is.Empty, "no temporary files left");

        var again = Lens(Args(dir));
        Assert.That(again.Out, Does.Contain("already complete"));
    }

    [Test]
    public void BadRunsAreRefusedWithAReason()
    {
        var prompts = WritePrompts("refuse.jsonl", RandomPairs(2, seed: 3));
        var dir = Path.Combine(Tmp, "refuse");
        Assert.That(Lens("patch", Fixtures.Path("tiny-gpt2"), "--prompts", prompts, "--out", dir).Code, Is.EqualTo(0));
        var changed = Lens("patch", Fixtures.Path("tiny-gpt2"), "--prompts", prompts, "--out", dir, "--kind", "attn_out");
        Assert.That(changed.Code, Is.EqualTo(1));
        Assert.That(changed.Err, Does.Contain("other arguments").And.Contain("kind"));

        var foreign = Path.Combine(Tmp, "foreign");
        Directory.CreateDirectory(foreign);
        File.WriteAllText(Path.Combine(foreign, "notes.txt"), "mine");
        var r = Lens("patch", Fixtures.Path("tiny-gpt2"), "--prompts", prompts, "--out", foreign);
        Assert.That(r.Code, Is.EqualTo(1));
        Assert.That(r.Err, Does.Contain("not empty"));
        Assert.That(Directory.GetFileSystemEntries(foreign).Select(Path.GetFileName), Is.EquivalentTo(new[] { "notes.txt", ".lock" }).Or.EquivalentTo(new[] { "notes.txt" }));

        var mid = Lens("patch", Fixtures.Path("tiny-pythia"), "--prompts", prompts, "--out", Path.Combine(Tmp, "mid"), "--kind", "resid_mid");
        Assert.That(mid.Code, Is.EqualTo(1));
        Assert.That(mid.Err, Does.Contain("hook_resid_mid"));
        Assert.That(Lens("patch", Fixtures.Path("tiny-gpt2"), "--prompts", Path.Combine(Tmp, "none.jsonl"), "--out", Path.Combine(Tmp, "x")).Err, Does.Contain("does not exist"));
        Assert.That(Lens("patch", Fixtures.Path("tiny-gpt2"), "--prompts", prompts, "--out", Path.Combine(Tmp, "y"), "--kind", "q").Code, Is.EqualTo(1));
    }
}
