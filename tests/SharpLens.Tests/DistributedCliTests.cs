using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text;
using SharpLens.Tensors.IO;

namespace SharpLens.Tests;

/// <summary>
/// <c>lens sweep --nproc</c> and <c>lens train --nproc</c> as real worker processes on loopback, launched by the lens CLI
/// built next to the tests. Ground truth: a single-process run of the same command (the pre-existing code path, with no
/// distributed code in it), and means recomputed here from the chunk files' rows. Every run has a time limit, so a fault
/// fails the test instead of hanging it.
/// </summary>
[NonParallelizable]
public class DistributedCliTests
{
    private static readonly TimeSpan RunLimit = TimeSpan.FromSeconds(120);
    private string _tmp = null!;

    [OneTimeSetUp]
    public void CreateTemp()
    {
        Assert.That(Distributed.IsAvailable, Is.True, Distributed.UnavailableReason);
        _tmp = Path.Combine(Path.GetTempPath(), "sharplens-dist-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(_tmp);
    }

    [OneTimeTearDown]
    public void DeleteTemp()
    {
        if (Directory.Exists(_tmp)) Directory.Delete(_tmp, recursive: true);
    }

    private static string Model => Fixtures.Path("tiny-gpt2");

    /// <summary>A lens process (launcher) with extra environment variables; output collected as it comes.</summary>
    private sealed class LensRun : IDisposable
    {
        private readonly StringBuilder _output = new();
        public Process Process { get; }

        public LensRun(IEnumerable<string> args, IReadOnlyDictionary<string, string>? environment = null)
        {
            var psi = SweepTests.LensProcess(args);
            foreach (var (k, v) in environment ?? new Dictionary<string, string>()) psi.Environment[k] = v;
            Process = new Process { StartInfo = psi };
            Process.OutputDataReceived += (_, e) => { lock (_output) _output.AppendLine(e.Data); };
            Process.ErrorDataReceived += (_, e) => { lock (_output) _output.AppendLine(e.Data); };
            Process.Start();
            Process.BeginOutputReadLine();
            Process.BeginErrorReadLine();
        }

        public string Output
        {
            get { lock (_output) return _output.ToString(); }
        }

        /// <summary>Waits for the exit (killing the tree past the limit, which fails the test) and returns the exit code.</summary>
        public int Wait()
        {
            if (!Process.WaitForExit(RunLimit))
            {
                Process.Kill(entireProcessTree: true);
                Assert.Fail($"lens did not finish within {RunLimit.TotalSeconds} s:\n{Output}");
            }
            Process.WaitForExit();
            return Process.ExitCode;
        }

        public void Dispose()
        {
            if (!Process.HasExited) Process.Kill(entireProcessTree: true);
            Process.Dispose();
        }
    }

    private static (int Code, string Output) RunLens(IEnumerable<string> args, IReadOnlyDictionary<string, string>? environment = null)
    {
        using var run = new LensRun(args, environment);
        var code = run.Wait();
        return (code, run.Output);
    }

    private static Dictionary<string, SweepChunkData> LoadChunks(string dir) =>
        SweepTests.ChunkFiles(dir).ToDictionary(f => f, f => SweepChunkData.Load(Path.Combine(dir, f)));

    /// <summary>A chunk file's tensors as float64 arrays (pair_index etc. included), for comparisons.</summary>
    private sealed record SweepChunkData(Dictionary<string, (long[] Shape, double[] Values)> Tensors)
    {
        public static SweepChunkData Load(string path)
        {
            var loaded = SafeTensors.Load(path);
            try
            {
                return new SweepChunkData(loaded.ToDictionary(kv => kv.Key,
                    kv => (kv.Value.Shape.ToArray(), kv.Value.To(ScalarType.Float64).Contiguous().ToArray<double>())));
            }
            finally
            {
                foreach (var t in loaded.Values) t.Dispose();
            }
        }
    }

    [Test]
    public void SweepOnTwoRanksEqualsOneProcessAndItsMeanEqualsTheRowsMean()
    {
        var pairs = SweepTests.RandomPairs(200, seed: 1414, minLength: 5, maxLength: 12);
        var prompts = SweepTests.WritePrompts(_tmp, "two-ranks.jsonl", pairs);
        string[] Args(string dir) => ["sweep", Model, "--prompts", prompts, "--out", dir, "--batch-size", "4", "--chunk-size", "8", "--dist-timeout", "60"];

        var single = Path.Combine(_tmp, "single");
        var reference = SweepTests.Lens(Args(single));  // in this process: the single-process path, no distributed code
        Assert.That(reference.Code, Is.EqualTo(0), reference.Err);

        var dir = Path.Combine(_tmp, "two-ranks");
        var (code, output) = RunLens([.. Args(dir), "--nproc", "2", "--aggregate", "mean"]);
        Assert.That(code, Is.EqualTo(0), output);
        Assert.That(output, Does.Contain("rank 0/2").And.Contain("rank 1/2"), "both ranks took chunks:\n" + output);

        // Every pair once, in order, in the summary and across the chunk files.
        var csv = SweepTests.CsvLines(dir);
        Assert.That(csv.Skip(1).Select(l => int.Parse(l.Split(',')[0])), Is.EqualTo(Enumerable.Range(0, pairs.Count)));
        Assert.That(SweepTests.ChunkFiles(dir), Is.EqualTo(SweepTests.ChunkFiles(single)));
        var (mine, theirs) = (LoadChunks(dir), LoadChunks(single));
        Assert.That(mine.Values.SelectMany(c => c.Tensors["pair_index"].Values), Is.EqualTo(Enumerable.Range(0, pairs.Count).Select(i => (double)i)));
        Assert.That(Directory.GetFiles(dir, "*.tmp"), Is.Empty);

        // The same floats: the workers run one intra-op thread each and this process several, so GEMM sums may be split
        // differently; float32 results of magnitude below ~10 then differ by a few ulps (ulp(8) = 9.5e-7), well inside 1e-6
        // for |x| < 1 and 1e-6 relative above.
        var maxDiff = 0.0;
        foreach (var (file, chunk) in theirs)
            foreach (var (key, (shape, values)) in chunk.Tensors)
            {
                var other = mine[file].Tensors[key];
                Assert.That(other.Shape, Is.EqualTo(shape), $"{file}: {key}");
                for (var i = 0; i < values.Length; i++)
                {
                    var d = Math.Abs(values[i] - other.Values[i]);
                    maxDiff = Math.Max(maxDiff, d);
                    Assert.That(d, Is.LessThanOrEqualTo(1e-6 * Math.Max(1, Math.Abs(values[i]))), $"{file}: {key}[{i}]");
                }
            }
        TestContext.Out.WriteLine($"largest difference to the single-process run: {maxDiff:G3}");

        // --aggregate mean: the all-reduced mean against the mean of the rows, summed here in pair order (float64 sums of
        // the same float32 values in another order: relative error below 200 × 2^-53 ≈ 2e-14 of the largest partial sum).
        using var mean = SafeTensorsFile.Open(Path.Combine(dir, "mean.safetensors"));
        using var scope = Torch.NewScope();
        Assert.That(mean.Load("pairs").ToArray<long>(), Is.EqualTo(new long[] { pairs.Count }));
        foreach (var key in mine.First().Value.Tensors.Keys.Where(k => k.StartsWith("attr.") || k.StartsWith("logit_diff")))
        {
            var perPair = mine.First().Value.Tensors[key].Shape.Skip(1).Aggregate(1L, (a, b) => a * b);
            var sum = new double[perPair];
            var sumAbs = new double[perPair];
            foreach (var chunk in mine.OrderBy(kv => kv.Key).Select(kv => kv.Value.Tensors[key].Values))
                for (var i = 0; i < chunk.Length; i++)
                {
                    sum[i % perPair] += chunk[i];
                    sumAbs[i % perPair] += Math.Abs(chunk[i]);
                }
            var got = mean.Load(key).ToArray<double>();
            Assert.That(got.Length, Is.EqualTo(perPair), key);
            for (var j = 0; j < perPair; j++)
                Assert.That(got[j], Is.EqualTo(sum[j] / pairs.Count).Within(1e-13 * sumAbs[j] / pairs.Count + 1e-300), $"{key}[{j}]");
        }
    }

    /// <summary>PIDs of the worker processes the launcher <paramref name="launcher"/> started, by rank (from /proc).</summary>
    private static Dictionary<int, int> Workers(int launcher)
    {
        var workers = new Dictionary<int, int>();
        foreach (var dir in Directory.GetDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out var pid)) continue;
            try
            {
                var stat = File.ReadAllText(Path.Combine(dir, "stat"));
                var parent = int.Parse(stat[(stat.LastIndexOf(')') + 2)..].Split(' ')[1]);
                if (parent != launcher) continue;
                var rank = File.ReadAllText(Path.Combine(dir, "environ")).Split('\0').FirstOrDefault(v => v.StartsWith("RANK="));
                if (rank is not null) workers[int.Parse(rank[5..])] = pid;
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException)
            {
                // the process ended while being read
            }
        }
        return workers;
    }

    [Test]
    public void KilledRankLeavesCompleteChunksAndARerunFinishesWithIdenticalRows()
    {
        var pairs = SweepTests.RandomPairs(48, seed: 77, minLength: 5, maxLength: 10);
        var prompts = SweepTests.WritePrompts(_tmp, "kill.jsonl", pairs);
        const int chunks = 12;
        string[] Common(string dir) => ["sweep", Model, "--prompts", prompts, "--out", dir, "--batch-size", "2", "--chunk-size", "4"];
        string[] Args(string dir) => [.. Common(dir), "--nproc", "2", "--dist-timeout", "30"];
        // Each chunk pauses 150 ms between computing and writing, so most of a worker's time is mid-chunk.
        var slow = new Dictionary<string, string> { ["SHARPLENS_SWEEP_CHUNK_DELAY_MS"] = "150" };

        // The reference: the single-process path in this process, on one intra-op thread like each worker, so the rows are
        // the same bits.
        var reference = Path.Combine(_tmp, "kill-reference");
        var threads = Torch.NumThreads;
        Torch.NumThreads = 1;
        (int Code, string Out, string Err) full;
        try
        {
            full = SweepTests.Lens(Common(reference));
        }
        finally
        {
            Torch.NumThreads = threads;
        }
        Assert.That(full.Code, Is.EqualTo(0), full.Err);
        var referenceChunks = LoadChunks(reference);

        // Three moments, drawn from a seeded generator: after 1-3, 4-7 and 8-10 of the 12 chunk files exist; the victim rank
        // alternates (rank 0 holds the folder lock and writes the summary; rank 1 does neither).
        var rng = new Random(2024);
        var moments = new[] { rng.Next(1, 4), rng.Next(4, 8), rng.Next(8, 11) };
        var victims = new[] { 1, 0, 1 };
        for (var m = 0; m < moments.Length; m++)
        {
            var dir = Path.Combine(_tmp, $"kill-{m}");
            string killed;
            using (var run = new LensRun(Args(dir), slow))
            {
                var clock = Stopwatch.StartNew();
                Dictionary<int, int> workers = [];
                while (!run.Process.HasExited && clock.Elapsed < RunLimit &&
                       (!Directory.Exists(dir) || SweepTests.ChunkFiles(dir).Count < moments[m] || (workers = Workers(run.Process.Id)).Count < 2))
                    Thread.Sleep(5);
                Assert.That(run.Process.HasExited, Is.False, $"the job ended before the kill at {moments[m]} chunk(s):\n{run.Output}");
                Assert.That(workers.ContainsKey(victims[m]), $"rank {victims[m]} not found among the launcher's children");
                using (var victim = Process.GetProcessById(workers[victims[m]])) victim.Kill();  // SIGKILL
                killed = $"rank {victims[m]} at {SweepTests.ChunkFiles(dir).Count} chunk file(s)";
                var code = run.Wait();
                TestContext.Out.WriteLine($"moment {m}: killed {killed}; the job ended with {SweepTests.ChunkFiles(dir).Count} of {chunks} chunk files");
                Assert.That(code, Is.EqualTo(1), run.Output);
                Assert.That(run.Output, Does.Contain($"rank {victims[m]}").And.Contain("killed by signal 9"), run.Output);
            }

            // What the killed job left: only complete chunks (each loads, and equals the reference), at most one missing
            // (the victim's claim), the survivor's report naming the rerun, and no summary of a complete sweep.
            var left = SweepTests.ChunkFiles(dir);
            Assert.That(left.Count, Is.InRange(chunks - 1, chunks), "the surviving rank computes every chunk but the victim's claim");
            var before = left.ToDictionary(f => f, f => (File.GetLastWriteTimeUtc(Path.Combine(dir, f)), new FileInfo(Path.Combine(dir, f)).Length));
            foreach (var (f, chunk) in LoadChunks(dir)) AssertSameChunk(referenceChunks[f], chunk, f);

            var rerun = RunLens(Args(dir));
            Assert.That(rerun.Code, Is.EqualTo(0), rerun.Output);
            Assert.That(rerun.Output, Does.Contain($"{chunks - left.Count} to compute").Or.Contain("already complete"), rerun.Output);
            foreach (var (f, stamp) in before)
                Assert.That((File.GetLastWriteTimeUtc(Path.Combine(dir, f)), new FileInfo(Path.Combine(dir, f)).Length), Is.EqualTo(stamp),
                    $"{f} was written again by the rerun ({killed})");
            Assert.That(SweepTests.CsvLines(dir), Is.EqualTo(SweepTests.CsvLines(reference)), $"identical rows after the rerun ({killed})");
            Assert.That(SweepTests.ChunkFiles(dir), Is.EqualTo(SweepTests.ChunkFiles(reference)));
            foreach (var (f, chunk) in LoadChunks(dir)) AssertSameChunk(referenceChunks[f], chunk, f);
            Assert.That(Directory.GetFiles(dir, "*.tmp"), Is.Empty, "no temporary files left");
        }
    }

    private static void AssertSameChunk(SweepChunkData expected, SweepChunkData actual, string file)
    {
        Assert.That(actual.Tensors.Keys.Order(), Is.EqualTo(expected.Tensors.Keys.Order()), file);
        foreach (var (key, (shape, values)) in expected.Tensors)
        {
            Assert.That(actual.Tensors[key].Shape, Is.EqualTo(shape), $"{file}: {key}");
            Assert.That(actual.Tensors[key].Values, Is.EqualTo(values), $"{file}: {key} (same thread count, same bits)");
        }
    }

    [DllImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static extern int SendSignal(int pid, int signal);

    private const int SigKill = 9, SigStop = 19;

    [Test]
    public void StoppedRankIsNamedByTheOtherOnceItsHeartbeatIsSilentForTheTimeout()
    {
        // SIGSTOP freezes rank 1 mid-chunk (every thread, its heartbeat too) without ending it, so the launcher has no
        // death to report: rank 0 must notice the silence itself, finish the other chunks, and name rank 1; the launcher then
        // sees rank 1's heartbeat silent for the timeout after rank 0's failure, kills it, and ends.
        var pairs = SweepTests.RandomPairs(48, seed: 78, minLength: 5, maxLength: 10);
        var prompts = SweepTests.WritePrompts(_tmp, "stop.jsonl", pairs);
        var dir = Path.Combine(_tmp, "stop");
        const double timeout = 4;
        string[] args = ["sweep", Model, "--prompts", prompts, "--out", dir, "--batch-size", "2", "--chunk-size", "4", "--nproc", "2",
            "--dist-timeout", timeout.ToString(System.Globalization.CultureInfo.InvariantCulture)];
        using var run = new LensRun(args, new Dictionary<string, string> { ["SHARPLENS_SWEEP_CHUNK_DELAY_MS"] = "200" });
        var clock = Stopwatch.StartNew();
        Dictionary<int, int> workers = [];
        while (!run.Process.HasExited && clock.Elapsed < RunLimit &&
               (!Directory.Exists(dir) || SweepTests.ChunkFiles(dir).Count < 2 || (workers = Workers(run.Process.Id)).Count < 2))
            Thread.Sleep(5);
        Assert.That(run.Process.HasExited, Is.False, $"the job ended before rank 1 was stopped:\n{run.Output}");
        Assert.That(SendSignal(workers[1], SigStop), Is.EqualTo(0), "SIGSTOP rank 1");
        var stopped = Stopwatch.StartNew();
        try
        {
            while (!run.Output.Contains("the sweep is incomplete") && stopped.Elapsed < RunLimit) Thread.Sleep(20);
            var reported = stopped.Elapsed;
            TestContext.Out.WriteLine($"rank 0 reported rank 1 {reported.TotalSeconds:0.0} s after SIGSTOP (timeout {timeout} s)");
            Assert.That(run.Output, Does.Contain("rank 0/2: the sweep is incomplete: rank 1 sent no heartbeat for"), run.Output);
            Assert.That(reported, Is.GreaterThan(TimeSpan.FromSeconds(timeout - 1)).And.LessThan(TimeSpan.FromSeconds(timeout + 30)), run.Output);
        }
        catch
        {
            SendSignal(workers[1], SigKill);  // a failed assertion must not leave a stopped process behind
            throw;
        }
        // The launcher kills the stopped worker by itself a timeout after rank 0's failure, and names it.
        var ended = Stopwatch.StartNew();
        var exitCode = run.Wait();
        if (Process.GetProcesses().Any(p => p.Id == workers[1])) SendSignal(workers[1], SigKill);
        Assert.That(exitCode, Is.EqualTo(1), run.Output);
        Assert.That(ended.Elapsed, Is.LessThan(TimeSpan.FromSeconds(timeout + 30)), "the launcher ended without help");
        Assert.That(run.Output, Does.Contain("rank 1 (pid").And.Contain("was killed by the launcher: rank 1 sent no heartbeat for"), run.Output);
        Assert.That(SweepTests.ChunkFiles(dir).Count, Is.InRange(11, 12), "rank 0 computes every chunk but rank 1's claim");
    }

    [Test]
    public void RankThatCannotReachTheStoreNamesAddressAndTimeout()
    {
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();  // nobody listens there now
        var prompts = SweepTests.WritePrompts(_tmp, "unreachable.jsonl", SweepTests.RandomPairs(2, seed: 5));
        var env = new Dictionary<string, string>(DistributedEnvironment.ForLocalWorker("127.0.0.1", port, 1, 2));
        var clock = Stopwatch.StartNew();
        var (code, output) = RunLens(["sweep", Model, "--prompts", prompts, "--out", Path.Combine(_tmp, "unreachable"), "--dist-timeout", "2"], env);
        Assert.That(code, Is.EqualTo(1), output);
        Assert.That(output, Does.Contain($"127.0.0.1:{port}").And.Contain("2000 ms").And.Contain("rank 1 of 2"), output);
        Assert.That(clock.Elapsed, Is.LessThan(TimeSpan.FromSeconds(60)), "it gives up after the timeout, not never");
    }

    [TestCase("tiny-gpt2")]
    [TestCase("tiny-pythia")]
    public void TrainOnTwoRanksMatchesOneProcessInFloat64(string fixture)
    {
        var model = Fixtures.Path(fixture);
        // Three rows: rank 0 gets one, rank 1 two, so the loss weighting (1/3, 2/3) is exercised, not just an even split.
        var rng = new Random(99);
        var rows = Enumerable.Range(0, 3).Select(_ => Enumerable.Range(0, 12).Select(_ => (long)rng.Next(1000)).ToArray()).ToArray();
        var tokens = Path.Combine(_tmp, $"train-tokens-{fixture}.json");
        File.WriteAllText(tokens, System.Text.Json.JsonSerializer.Serialize(new { batches = new[] { rows } }));
        string[] Args(string outPath) => ["train", model, "--tokens", tokens, "--steps", "10", "--dtype", "float64", "--lr", "0.01", "--out", outPath];

        var single = Path.Combine(_tmp, $"train-1-{fixture}.safetensors");
        var one = SweepTests.Lens(Args(single));
        Assert.That(one.Code, Is.EqualTo(0), one.Err);
        var two = Path.Combine(_tmp, $"train-2-{fixture}.safetensors");
        var (code, output) = RunLens([.. Args(two), "--nproc", "2", "--dist-timeout", "60"]);
        Assert.That(code, Is.EqualTo(0), output);

        // float64: the two runs differ only in how the batch's loss terms are grouped before summing (per shard, then across
        // ranks), a relative rounding of ~1e-16 of each gradient. AdamW's update lr * m / (sqrt(v) + eps) is then equally
        // close wherever the gradient is a real signal (|g| >> eps = 1e-8): ten steps move a parameter by at most a few ulps
        // of lr more, far below 1e-12. The exception is a gradient that is exactly zero in exact arithmetic, such as GPT-2's
        // key bias (it adds q . b_k to every score of a query, and the softmax ignores a shift common to all keys): there both
        // runs' gradients are rounding noise (~1e-18) that AdamW scales by lr / eps = 1e6, so they may differ by ~1e-12 per
        // step. Such elements are recognised by what they do: a real gradient moves an AdamW parameter by about lr = 1e-2 per
        // step, a noise gradient by less than 1e-9 in ten steps beyond what weight decay alone gives, x0 (1 - lr wd)^steps.
        // For them the check is the one that holds: the runs differ by at most the sum of their two noise moves.
        const double lr = 0.01, weightDecay = 0.01;  // lens train's default weight decay
        const int steps = 10;
        var dModel = System.Text.Json.JsonDocument.Parse(File.ReadAllText(Path.Combine(model, "config.json"))).RootElement
            .GetProperty(fixture == "tiny-gpt2" ? "n_embd" : "hidden_size").GetInt32();
        var (a, b) = (SafeTensors.Load(single), SafeTensors.Load(two));
        using var original = SafeTensorsFile.Open(Path.Combine(model, "model.safetensors"));
        try
        {
            Assert.That(b.Keys.Order(), Is.EqualTo(a.Keys.Order()));
            var (maxDiff, maxNoise, moved, noiseElements, keyBiasNoise) = (0.0, 0.0, 0.0, 0, 0);
            foreach (var key in a.Keys.Where(k => k != "losses"))
            {
                var (x, y) = (a[key].ToArray<double>(), b[key].ToArray<double>());
                double[]? x0 = null;
                if (original.Contains(key))
                    using (var w = original.Load(key).To(ScalarType.Float64)) x0 = w.Contiguous().ToArray<double>();
                for (var i = 0; i < x.Length; i++)
                {
                    if (x0 is not null)
                    {
                        moved = Math.Max(moved, Math.Abs(x[i] - x0[i]));
                        var decayed = x0[i] * Math.Pow(1 - lr * weightDecay, steps);
                        var (noiseX, noiseY) = (Math.Abs(x[i] - decayed), Math.Abs(y[i] - decayed));
                        if (noiseX < 1e-9 && noiseY < 1e-9)
                        {
                            maxNoise = Math.Max(maxNoise, Math.Max(noiseX, noiseY));
                            Assert.That(Math.Abs(x[i] - y[i]), Is.LessThanOrEqualTo(noiseX + noiseY + 1e-15), $"{key}[{i}]");
                            noiseElements++;
                            if (key.EndsWith("attn.c_attn.bias") && i >= dModel && i < 2 * dModel) keyBiasNoise++;
                            continue;
                        }
                    }
                    maxDiff = Math.Max(maxDiff, Math.Abs(x[i] - y[i]));
                    Assert.That(y[i], Is.EqualTo(x[i]).Within(1e-12), $"{key}[{i}]");
                }
            }
            TestContext.Out.WriteLine($"{fixture}: largest parameter difference {maxDiff:G3}; {noiseElements} element(s) with a zero or noise gradient " +
                                      $"(moves up to {maxNoise:G3}); largest move by training {moved:G3}");
            var layers = a.Keys.Count(k => k.EndsWith("attn.c_attn.bias"));
            if (fixture == "tiny-gpt2") Assert.That(keyBiasNoise, Is.EqualTo(layers * dModel), "every element of the key biases has a zero (noise) gradient");
            Assert.That(moved, Is.GreaterThan(1e-2), "training moved the parameters, so the comparison means something");
            Assert.That(b["losses"].ToArray<float>(), Is.EqualTo(a["losses"].ToArray<float>()).Within(1e-6f), "the same losses (stored as float32)");
        }
        finally
        {
            foreach (var t in a.Values.Concat(b.Values)) t.Dispose();
        }
    }
}
