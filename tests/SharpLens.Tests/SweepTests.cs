using SharpLens.Testing;
using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using SharpLens.Cli;
using SharpLens.Sweeps;
using SharpLens.Tensors.IO;

namespace SharpLens.Tests;

/// <summary>
/// Attribution patching (<see cref="AttributionPatcher"/>) against exact activation patching, and <c>lens sweep</c>:
/// outputs, resumption after a real kill of a child process, refusal of changed arguments, bad prompt lines.
/// </summary>
public class SweepTests
{
    private string _tmp = null!;

    [OneTimeSetUp]
    public void CreateTemp()
    {
        _tmp = Path.Combine(Path.GetTempPath(), "sharplens-sweep-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(_tmp);
    }

    [OneTimeTearDown]
    public void DeleteTemp()
    {
        if (Directory.Exists(_tmp)) Directory.Delete(_tmp, recursive: true);
    }

    private static string Model => Fixtures.Path("tiny-gpt2");

    /// <summary>Seeded random pairs: a random clean prompt, the corrupted one differs at one or two positions.</summary>
    internal static List<PromptPair> RandomPairs(int count, int seed, int minLength = 5, int maxLength = 10)
    {
        var rng = new Random(seed);
        var pairs = new List<PromptPair>();
        for (var i = 0; i < count; i++)
        {
            var n = rng.Next(minLength, maxLength + 1);
            var clean = Enumerable.Range(0, n).Select(_ => (long)rng.Next(1000)).ToArray();
            var corrupted = (long[])clean.Clone();
            foreach (var p in Enumerable.Range(0, n).OrderBy(_ => rng.Next()).Take(rng.Next(1, 3))) corrupted[p] = rng.Next(1000);
            var answer = rng.Next(1000);
            var wrong = (answer + 1 + rng.Next(998)) % 1000;
            pairs.Add(new PromptPair(i, i + 1, clean, corrupted, answer, wrong));
        }
        return pairs;
    }

    private string WritePrompts(string name, IEnumerable<PromptPair> pairs) => WritePrompts(_tmp, name, pairs);

    /// <summary>Writes the pairs as a prompts file (ids) <paramref name="name"/> in <paramref name="dir"/>.</summary>
    internal static string WritePrompts(string dir, string name, IEnumerable<PromptPair> pairs)
    {
        var lines = pairs.Select(p => JsonSerializer.Serialize(new { clean = p.Clean, corrupted = p.Corrupted, answer = p.Answer, wrong = p.Wrong })).ToList();
        var path = Path.Combine(dir, name);
        File.WriteAllText(path, string.Join("\n", lines) + "\n");
        return path;
    }

    private static double Pearson(IReadOnlyList<double> x, IReadOnlyList<double> y)
    {
        double mx = x.Average(), my = y.Average(), sxy = 0, sxx = 0, syy = 0;
        for (var i = 0; i < x.Count; i++)
        {
            sxy += (x[i] - mx) * (y[i] - my);
            sxx += (x[i] - mx) * (x[i] - mx);
            syy += (y[i] - my) * (y[i] - my);
        }
        return sxy / Math.Sqrt(sxx * syy);
    }

    // ------------------------------------------------------------------ estimates vs exact patching

    [Test]
    public void EstimatesCorrelateWithExactActivationPatching()
    {
        using var bridge = TransformerBridge.Load(Model);
        var patcher = new AttributionPatcher(bridge);
        var pairs = RandomPairs(6, seed: 11);
        var positions = pairs.Max(p => p.Length);
        using var scope = Torch.NewScope();
        var estimates = patcher.Attribute(pairs, positions);
        var heads = bridge.Config.NHeads;
        var report = new List<string>();
        var correlations = new Dictionary<string, double>();
        var exacts = pairs.Select(p => patcher.PatchExact(p, positions, rowsPerForward: 64)).ToList();
        for (var i = 0; i < pairs.Count; i++)
        {
            // The metrics of the batched (padded) run and of the unpadded exact runs agree.
            Assert.That(estimates.MetricClean[i], Is.EqualTo(exacts[i].MetricClean).Within(1e-4), $"clean metric of pair {i}");
            Assert.That(estimates.MetricCorrupted[i], Is.EqualTo(exacts[i].MetricCorrupted).Within(1e-4), $"corrupted metric of pair {i}");
        }
        foreach (var site in patcher.Sites)
        {
            var (xs, ys) = (new List<double>(), new List<double>());
            var h = site.PerHead ? heads : 1;
            var per = site.ValuesPerPair(positions, heads);
            for (var i = 0; i < pairs.Count; i++)
                for (var layer = 0; layer < site.Layers; layer++)
                    for (var pos = 0; pos < pairs[i].Length; pos++)
                        for (var head = 0; head < h; head++)
                        {
                            var offset = (layer * positions + pos) * h + head;
                            xs.Add(estimates.Estimates[site.Key].Data[i * per + offset]);
                            ys.Add(exacts[i].Effects[site.Key].Data[offset]);
                        }
            correlations[site.Key] = Pearson(xs, ys);
            // Many values are exactly 0 in both (positions before the first corrupted token): report without them too.
            var nonzero = xs.Zip(ys).Where(v => v.First != 0 || v.Second != 0).ToList();
            report.Add($"{site.Key}: Pearson r = {correlations[site.Key]:F4} over {xs.Count} values " +
                       $"({Pearson(nonzero.Select(v => v.First).ToList(), nonzero.Select(v => v.Second).ToList()):F4} over the {nonzero.Count} not both 0)");
        }
        TestContext.Out.WriteLine(string.Join("\n", report));
        Assert.That(correlations["resid_pre"], Is.GreaterThan(0.9), string.Join("; ", report));
        foreach (var key in new[] { "z", "attn_out", "mlp_out" })
            Assert.That(correlations[key], Is.GreaterThan(0.8), string.Join("; ", report));

        // Patching every position of resid_pre 0 is the whole corrupted run: the exact effects of the corrupted positions
        // cannot be summed (each is patched alone), but the estimates can: their sum estimates the total change.
        var residPer = patcher.Sites.First(s => s.Key == "resid_pre").ValuesPerPair(positions, heads);
        var totals = pairs.Select((p, i) => Enumerable.Range(0, p.Length).Sum(pos => estimates.Estimates["resid_pre"].Data[i * residPer + pos])).ToList();
        var deltas = pairs.Select((_, i) => estimates.MetricCorrupted[i] - estimates.MetricClean[i]).ToList();
        TestContext.Out.WriteLine($"total estimate vs corrupted - clean: r = {Pearson(totals, deltas):F4}");
    }

    [TestCase("tiny-gpt2")]
    [TestCase("tiny-pythia")]
    public void EstimateIsExactWhereTheMetricIsLinearInTheActivation(string model)
    {
        // logits = ln_final.hook_normalized @ W_U (+ b_U): the logit difference is linear in that activation, so the
        // first-order estimate must equal the exact effect of patching it.
        using var bridge = TransformerBridge.Load(Fixtures.Path(model), new BridgeOptions { DType = ScalarType.Float64 });
        var patcher = new AttributionPatcher(bridge, [AttributionSite.LnFinalNormalized()]);
        var pairs = RandomPairs(5, seed: 5);
        var positions = pairs.Max(p => p.Length);
        using var scope = Torch.NewScope();
        var estimates = patcher.Attribute(pairs, positions).Estimates["ln_final_normalized"].Data;
        var largest = 0.0;
        for (var i = 0; i < pairs.Count; i++)
        {
            var exact = patcher.PatchExact(pairs[i], positions).Effects["ln_final_normalized"].Data;
            for (var pos = 0; pos < positions; pos++)
            {
                var e = estimates[i * positions + pos];
                Assert.That(e, Is.EqualTo(exact[pos]).Within(1e-5), $"pair {i} position {pos}");
                if (pos != pairs[i].Length - 1) Assert.That(e, Is.EqualTo(0), "only the last position reaches the metric");
                largest = Math.Max(largest, Math.Abs(e));
            }
        }
        Assert.That(largest, Is.GreaterThan(1e-3), "the test must compare non-trivial effects");

        // And the metric itself is a difference of logits at the last real position of a padded batch.
        var values = patcher.Attribute(pairs).MetricClean;
        for (var i = 0; i < pairs.Count; i++)
        {
            using var s = Torch.NewScope();
            var logits = bridge.Forward(Torch.FromArray(pairs[i].Clean, 1, pairs[i].Length));
            var expected = logits[0, ^1, pairs[i].Answer].ToDouble() - logits[0, ^1, pairs[i].Wrong].ToDouble();
            Assert.That(values[i], Is.EqualTo(expected).Within(1e-9), $"pair {i}");
        }
    }

    [Test]
    public void PatcherLeavesParametersAndHooksAsItFoundThem()
    {
        using var bridge = TransformerBridge.Load(Model);
        var patcher = new AttributionPatcher(bridge);
        var live = LiveTensorCount.Settled();
        using (Torch.NewScope())
        {
            patcher.Attribute(RandomPairs(3, seed: 2));
            patcher.PatchExact(RandomPairs(1, seed: 3)[0]);
        }
        Assert.That(Torch.LiveTensors, Is.LessThanOrEqualTo(live), "no tensor outlives the scope");
        Assert.That(bridge.Parameters().All(p => p.RequiresGrad && p.Grad is null), "parameters still require grad and received none");
        Assert.That(bridge.HookDict.Values.Sum(h => h.HookCount + h.BackwardHookCount), Is.EqualTo(0));
    }

    // ------------------------------------------------------------------ lens sweep

    internal static (int Code, string Out, string Err) Lens(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        var code = Program.Run(args, o, e);
        return (code, o.ToString(), e.ToString());
    }

    internal static string[] CsvLines(string dir) => File.ReadAllLines(Path.Combine(dir, "summary.csv"));

    internal static List<string> ChunkFiles(string dir) =>
        Directory.GetFiles(dir, "chunk-*.safetensors").Select(Path.GetFileName).Order(StringComparer.Ordinal).ToList()!;

    [Test]
    public void SweepWritesChunksSummaryAndExactEffects()
    {
        var pairs = RandomPairs(7, seed: 21);
        var prompts = WritePrompts("shapes.jsonl", pairs);
        var dir = Path.Combine(_tmp, "shapes");
        var r = Lens("sweep", Model, "--prompts", prompts, "--out", dir, "--batch-size", "3", "--chunk-size", "4", "--exact", "2");
        Assert.That(r.Code, Is.EqualTo(0), r.Err);
        Assert.That(r.Out, Does.Contain("pairs/s").And.Contain("ETA"));
        Assert.That(ChunkFiles(dir), Is.EqualTo(new[] { "chunk-00000.safetensors", "chunk-00001.safetensors" }));

        var positions = pairs.Max(p => p.Length);
        var chunk = SafeTensors.Load(Path.Combine(dir, "chunk-00000.safetensors"));
        try
        {
            Assert.That(chunk["pair_index"].ToArray<long>(), Is.EqualTo(new long[] { 0, 1, 2, 3 }));
            Assert.That(chunk["line"].ToArray<long>(), Is.EqualTo(new long[] { 1, 2, 3, 4 }));
            Assert.That(chunk["length"].ToArray<long>(), Is.EqualTo(pairs.Take(4).Select(p => (long)p.Length)));
            Assert.That(chunk["attr.z"].Shape, Is.EqualTo(new long[] { 4, 2, positions, 4 }));
            foreach (var key in new[] { "resid_pre", "attn_out", "mlp_out" })
                Assert.That(chunk["attr." + key].Shape, Is.EqualTo(new long[] { 4, 2, positions }), key);
            Assert.That(chunk["exact.z"].Shape, Is.EqualTo(chunk["attr.z"].Shape));
            Assert.That(chunk["has_exact"].ToArray<bool>(), Is.EqualTo(new[] { true, true, false, false }));

            // The file's numbers are the library's.
            using var bridge = TransformerBridge.Load(Model);
            var patcher = new AttributionPatcher(bridge);
            using var scope = Torch.NewScope();
            var expected = patcher.Attribute(pairs.Take(3).ToList(), positions);
            var attr = chunk["attr.resid_pre"].To(ScalarType.Float64).ToArray<double>();
            for (var k = 0; k < 3 * 2 * positions; k++) Assert.That(attr[k], Is.EqualTo(expected.Estimates["resid_pre"].Data[k]).Within(1e-6));
            var exact = patcher.PatchExact(pairs[1], positions, 3);
            var fileExact = chunk["exact.mlp_out"].To(ScalarType.Float64).ToArray<double>();
            for (var k = 0; k < 2 * positions; k++) Assert.That(fileExact[2 * positions + k], Is.EqualTo(exact.Effects["mlp_out"].Data[k]).Within(1e-6));
            Assert.That(double.IsNaN(fileExact[2 * 2 * positions]), "pairs without exact patching hold NaN");
            Assert.That(chunk["logit_diff_clean"].To(ScalarType.Float64).ToArray<double>().Take(3), Is.EqualTo(expected.MetricClean).Within(1e-6));
        }
        finally
        {
            foreach (var t in chunk.Values) t.Dispose();
        }
        using (var second = SafeTensorsFile.Open(Path.Combine(dir, "chunk-00001.safetensors")))
            Assert.That(second.Contains("exact.z"), Is.False, "no exact keys in chunks without exactly patched pairs");

        var csv = CsvLines(dir);
        Assert.That(csv[0], Does.StartWith("pair_index,line,length,logit_diff_clean,logit_diff_corrupted,delta,estimate_total,top_component"));
        Assert.That(csv.Skip(1).Select(l => l.Split(',')[0]), Is.EqualTo(Enumerable.Range(0, 7).Select(i => i.ToString())));
        Assert.That(csv.Skip(1).All(l => l.Split(',').Length == csv[0].Split(',').Length), "every row has every column");
        Assert.That(csv[1].Split(',')[9], Is.Not.Empty, "pair 0 has an exact effect for its top component");
        Assert.That(csv[3].Split(',')[9], Is.Empty, "pair 2 has none");

        // A finished sweep run again has nothing to do.
        var again = Lens("sweep", Model, "--prompts", prompts, "--out", dir, "--batch-size", "3", "--chunk-size", "4", "--exact", "2");
        Assert.That(again.Code, Is.EqualTo(0), again.Err);
        Assert.That(again.Out, Does.Contain("already complete"));
        Assert.That(CsvLines(dir), Is.EqualTo(csv));
    }

    [Test]
    public void InterruptedWritesAreRepairedOnRestart()
    {
        // Simulates the kills that matter deterministically: rows appended but the manifest not yet updated, a torn
        // CSV line, a lost CSV (rebuilt from the chunk files) and a chunk file lost after the manifest named it.
        var pairs = RandomPairs(10, seed: 31);
        var prompts = WritePrompts("repair.jsonl", pairs);
        string[] Args(string d) => ["sweep", Model, "--prompts", prompts, "--out", d, "--batch-size", "2", "--chunk-size", "3", "--exact", "1"];
        var reference = Path.Combine(_tmp, "repair-reference");
        Assert.That(Lens(Args(reference)).Code, Is.EqualTo(0));
        var expectedCsv = File.ReadAllText(Path.Combine(reference, "summary.csv"));
        Assert.That(CsvLines(reference), Has.Length.EqualTo(11));

        void Restart(string d, string what)
        {
            var r = Lens(Args(d));
            Assert.That(r.Code, Is.EqualTo(0), what + ": " + r.Err);
            Assert.That(File.ReadAllText(Path.Combine(d, "summary.csv")), Is.EqualTo(expectedCsv), what);
            foreach (var f in ChunkFiles(reference))
                Assert.That(File.ReadAllBytes(Path.Combine(d, f)), Is.EqualTo(File.ReadAllBytes(Path.Combine(reference, f))), what + ": " + f);
        }

        var dir = Path.Combine(_tmp, "repair");
        Assert.That(Lens(Args(dir)).Code, Is.EqualTo(0));
        var manifestPath = Path.Combine(dir, "manifest.json");
        void KeepCompleted(int count)
        {
            var m = JsonNode.Parse(File.ReadAllText(manifestPath))!;
            var completed = m["completed"]!.AsArray();
            while (completed.Count > count) completed.RemoveAt(completed.Count - 1);
            File.WriteAllText(manifestPath, m.ToJsonString());
        }

        KeepCompleted(2);  // chunks 2 and 3 written, their rows appended, the manifest never updated
        Restart(dir, "rows appended without a manifest entry");

        KeepCompleted(3);
        File.AppendAllText(Path.Combine(dir, "summary.csv"), "9,10,7,0.12");  // a torn row
        Restart(dir, "a torn row");

        File.Delete(Path.Combine(dir, "summary.csv"));
        Restart(dir, "a lost summary");

        KeepCompleted(4);
        File.Delete(Path.Combine(dir, "chunk-00002.safetensors"));
        Restart(dir, "a lost chunk file");
    }

    /// <summary>The command that runs the lens CLI built next to the tests, as a separate process.</summary>
    internal static ProcessStartInfo LensProcess(IEnumerable<string> args)
    {
        var dll = Path.Combine(TestContext.CurrentContext.TestDirectory, "lens.dll");
        Assert.That(File.Exists(dll), $"the lens CLI is not next to the tests: {dll}");
        var host = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH");
        if (string.IsNullOrEmpty(host) || !File.Exists(host))
            host = Path.GetFileNameWithoutExtension(Environment.ProcessPath) == "dotnet" ? Environment.ProcessPath! : "dotnet";
        var psi = new ProcessStartInfo(host) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add("exec");
        psi.ArgumentList.Add(dll);
        foreach (var a in args) psi.ArgumentList.Add(a);
        return psi;
    }

    /// <summary>Starts the sweep in a child process and kills it (whole tree) the moment a chunk file beyond those present appears.</summary>
    private static (int ChunksBefore, int ChunksAfter, string Output) RunAndKill(string[] args, string dir)
    {
        var before = Directory.Exists(dir) ? ChunkFiles(dir).Count : 0;
        var output = new System.Text.StringBuilder();
        using var p = new Process { StartInfo = LensProcess(args) };
        p.OutputDataReceived += (_, e) => { lock (output) output.AppendLine(e.Data); };
        p.ErrorDataReceived += (_, e) => { lock (output) output.AppendLine(e.Data); };
        p.Start();
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        var clock = Stopwatch.StartNew();
        while (!p.HasExited && (!Directory.Exists(dir) || ChunkFiles(dir).Count <= before))
        {
            if (clock.Elapsed > TimeSpan.FromSeconds(60)) break;
            Thread.Sleep(1);
        }
        Assert.That(p.HasExited, Is.False, $"the sweep ended before it could be killed (exit {(p.HasExited ? p.ExitCode : 0)}):\n{output}");
        p.Kill(entireProcessTree: true);
        p.WaitForExit();
        return (before, ChunkFiles(dir).Count, output.ToString());
    }

    [Test]
    public void KilledSweepResumesWithNoRowLostOrDuplicated()
    {
        var pairs = RandomPairs(72, seed: 41, minLength: 6, maxLength: 12);
        var prompts = WritePrompts("resume.jsonl", pairs);
        string[] Args(string d) => ["sweep", Model, "--prompts", prompts, "--out", d, "--batch-size", "2", "--chunk-size", "3", "--exact", "1"];
        var chunks = 24;

        var reference = Path.Combine(_tmp, "resume-reference");
        var full = Lens(Args(reference));
        Assert.That(full.Code, Is.EqualTo(0), full.Err);

        // Killed twice by a real SIGKILL to the process tree, each time right as a new chunk file lands (before its CSV
        // rows and manifest entry, if the kill is quick enough), then run to the end.
        var dir = Path.Combine(_tmp, "resume");
        int Recorded() => JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "manifest.json")))!["completed"]!.AsArray().Count;
        var first = RunAndKill(Args(dir), dir);
        var firstRecorded = Recorded();
        var second = RunAndKill(Args(dir), dir);
        var secondRecorded = Recorded();
        // A kill between a chunk's rename and its manifest entry leaves one more chunk file than the manifest records:
        // the window that must not duplicate rows. Which window a kill hits is up to timing; the repair test covers each.
        TestContext.Out.WriteLine($"first run killed with {first.ChunksAfter} chunk file(s) and {firstRecorded} recorded, " +
                                  $"second with {second.ChunksAfter} and {secondRecorded} recorded, of {chunks}");
        Assert.That(second.ChunksAfter, Is.LessThan(chunks), "the second run must also be cut short");
        if (firstRecorded > 0) Assert.That(second.Output, Does.Contain("resuming"), second.Output);

        using (var p = Process.Start(LensProcess(Args(dir)))!)
        {
            var stdout = p.StandardOutput.ReadToEndAsync();
            var stderr = p.StandardError.ReadToEnd();
            p.WaitForExit();
            Assert.That(p.ExitCode, Is.EqualTo(0), stderr);
            Assert.That(stdout.Result, Does.Contain("resuming").And.Contain("done"));
        }

        var csv = CsvLines(dir);
        Assert.That(csv, Is.EqualTo(CsvLines(reference)), "the same rows as an uninterrupted run");
        Assert.That(csv.Skip(1).Select(l => int.Parse(l.Split(',')[0])), Is.EqualTo(Enumerable.Range(0, pairs.Count)), "every pair once, in order");
        Assert.That(ChunkFiles(dir), Is.EqualTo(ChunkFiles(reference)));
        foreach (var f in ChunkFiles(reference))
        {
            var (a, b) = (SafeTensors.Load(Path.Combine(reference, f)), SafeTensors.Load(Path.Combine(dir, f)));
            try
            {
                Assert.That(b.Keys.Order(), Is.EqualTo(a.Keys.Order()), f);
                foreach (var key in a.Keys)
                    Assert.That(b[key].ValueEquals(a[key]) || (b[key].Shape.SequenceEqual(a[key].Shape) && SameWithNaN(a[key], b[key])), $"{f}: {key}");
            }
            finally
            {
                foreach (var t in a.Values.Concat(b.Values)) t.Dispose();
            }
        }
        Assert.That(Directory.GetFiles(dir, "*.tmp", SearchOption.AllDirectories), Is.Empty, "no temporary files left");
    }

    private static bool SameWithNaN(Tensor a, Tensor b)
    {
        var (x, y) = (a.To(ScalarType.Float64).ToArray<double>(), b.To(ScalarType.Float64).ToArray<double>());
        return x.Zip(y).All(p => p.First.Equals(p.Second));  // double.Equals treats NaN as equal to NaN
    }

    [Test]
    public void ChangedArgumentsAreRefused()
    {
        var pairs = RandomPairs(4, seed: 51);
        var prompts = WritePrompts("args.jsonl", pairs);
        var dir = Path.Combine(_tmp, "args");
        Assert.That(Lens("sweep", Model, "--prompts", prompts, "--out", dir, "--batch-size", "2", "--chunk-size", "2").Code, Is.EqualTo(0));
        var csv = CsvLines(dir);

        var batch = Lens("sweep", Model, "--prompts", prompts, "--out", dir, "--batch-size", "4", "--chunk-size", "2");
        Assert.That(batch.Code, Is.EqualTo(1));
        Assert.That(batch.Err, Does.Contain("--batch-size was 2, now 4"));

        var exact = Lens("sweep", Model, "--prompts", prompts, "--out", dir, "--batch-size", "2", "--chunk-size", "2", "--exact", "1");
        Assert.That(exact.Code, Is.EqualTo(1));
        Assert.That(exact.Err, Does.Contain("--exact was 0, now 1"));

        var dtype = Lens("sweep", Model, "--prompts", prompts, "--out", dir, "--batch-size", "2", "--chunk-size", "2", "--dtype", "float64");
        Assert.That(dtype.Code, Is.EqualTo(1));
        Assert.That(dtype.Err, Does.Contain("--dtype was float32, now float64"));

        var changed = WritePrompts("args-changed.jsonl", RandomPairs(4, seed: 52));
        File.Copy(changed, prompts, overwrite: true);  // same path, other content
        var content = Lens("sweep", Model, "--prompts", prompts, "--out", dir, "--batch-size", "2", "--chunk-size", "2");
        Assert.That(content.Code, Is.EqualTo(1));
        Assert.That(content.Err, Does.Contain("--prompts file changed"));

        Assert.That(CsvLines(dir), Is.EqualTo(csv), "a refused run touches nothing");

        var foreign = Path.Combine(_tmp, "foreign");
        Directory.CreateDirectory(foreign);
        File.WriteAllText(Path.Combine(foreign, "notes.txt"), "mine");
        var r = Lens("sweep", Model, "--prompts", prompts, "--out", foreign);
        Assert.That(r.Code, Is.EqualTo(1));
        Assert.That(r.Err, Does.Contain("not empty"));
    }

    [Test]
    public void BadLinesAreReportedByLineNumberAndSkippedOrFatal()
    {
        var pairs = RandomPairs(5, seed: 61);
        string Line(PromptPair p) => JsonSerializer.Serialize(new { clean = p.Clean, corrupted = p.Corrupted, answer = p.Answer, wrong = p.Wrong });
        var prompts = Path.Combine(_tmp, "bad.jsonl");
        File.WriteAllLines(prompts,
        [
            Line(pairs[0]),
            Line(pairs[1]),
            """{"clean": [1, 2, 3], "corrupted": [1, 2], "answer": 4, "wrong": 5}""",
            Line(pairs[2]),
            "this is not json",
            Line(pairs[3]),
            """{"clean": [1, 2, 3], "corrupted": [1, 2, 9], "answer": 4000, "wrong": 5}""",
            "   ",
            """{"clean": "some text", "corrupted": "more text", "answer": 1, "wrong": 2}""",
            Line(pairs[4]),
        ]);
        var dir = Path.Combine(_tmp, "bad-skip");
        var r = Lens("sweep", Model, "--prompts", prompts, "--out", dir, "--chunk-size", "2");
        Assert.That(r.Code, Is.EqualTo(0), r.Err);
        Assert.That(r.Err, Does.Contain("line 3:").And.Contain("same length"));
        Assert.That(r.Err, Does.Contain("line 5:").And.Contain("not valid JSON"));
        Assert.That(r.Err, Does.Contain("line 7:").And.Contain("4000"));
        Assert.That(r.Err, Does.Contain("line 9:").And.Contain("tokenizer"));
        Assert.That(r.Err, Does.Not.Contain("line 8:"), "blank lines are not errors");
        var rows = CsvLines(dir).Skip(1).Select(l => l.Split(',')).ToList();
        Assert.That(rows.Select(c => c[0]), Is.EqualTo(new[] { "0", "1", "2", "3", "4" }));
        Assert.That(rows.Select(c => c[1]), Is.EqualTo(new[] { "1", "2", "4", "6", "10" }), "each row names its line");

        var failDir = Path.Combine(_tmp, "bad-fail");
        var f = Lens("sweep", Model, "--prompts", prompts, "--out", failDir, "--on-error", "fail");
        Assert.That(f.Code, Is.EqualTo(1));
        Assert.That(f.Err, Does.Contain("line 3:").And.Contain("--on-error fail"));
        Assert.That(Directory.Exists(failDir) && Directory.EnumerateFiles(failDir).Any(), Is.False, "nothing is written");

        var missing = Lens("sweep", Model, "--prompts", Path.Combine(_tmp, "nope.jsonl"), "--out", Path.Combine(_tmp, "nope"));
        Assert.That(missing.Code, Is.EqualTo(1));
        Assert.That(missing.Err, Does.Contain("does not exist"));
    }

    [Test]
    public void TextPromptsUseTheModelsTokenizer()
    {
        var model = GenerationTests.ModelWithTokenizer(_tmp);
        var path = Path.Combine(_tmp, "text.jsonl");
        File.WriteAllLines(path,
        [
            """{"clean": "ab cd", "corrupted": "ab ce", "answer": " a", "wrong": " b"}""",
            """{"clean": "xy", "corrupted": "xyz", "answer": " a", "wrong": " b"}""",
            """{"clean": "ab", "corrupted": "ba", "answer": "ab", "wrong": " b"}""",
        ]);
        var dir = Path.Combine(_tmp, "text");
        var r = Lens("sweep", model, "--prompts", path, "--out", dir);
        Assert.That(r.Code, Is.EqualTo(0), r.Err);
        Assert.That(r.Err, Does.Contain("line 2:").And.Contain("same length"));
        Assert.That(r.Err, Does.Contain("line 3:").And.Contain("exactly one"));
        var row = CsvLines(dir)[1].Split(',');
        // BOS (<|endoftext|>, id 999) + 5 byte tokens.
        Assert.That(row[2], Is.EqualTo("6"));
    }
}
