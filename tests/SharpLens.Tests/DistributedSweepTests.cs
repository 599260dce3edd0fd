using SharpLens.Sweeps;

namespace SharpLens.Tests;

/// <summary>
/// <see cref="DistributedSweep"/> with its ranks as threads of this process (each its own session, store connection and
/// model), on a store this test hosts as a launcher would, so timing can be arranged exactly with hooks and the timeout
/// can be short. Process deaths are tested with real processes in <see cref="DistributedCliTests"/>.
/// </summary>
[NonParallelizable]
public class DistributedSweepTests
{
    private string _tmp = null!;

    [SetUp]
    public void CreateTemp()
    {
        Assert.That(Distributed.IsAvailable, Is.True, Distributed.UnavailableReason);
        _tmp = Path.Combine(Path.GetTempPath(), "sharplens-dsweep-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(_tmp);
    }

    [TearDown]
    public void DeleteTemp()
    {
        if (Directory.Exists(_tmp)) Directory.Delete(_tmp, recursive: true);
    }

    [Test]
    public void AChunkLongerThanTheTimeoutDoesNotStopTheRankWaitingForIt()
    {
        // Two chunks, one per rank: rank 0's first forward waits until rank 1 has started its chunk (so each claims one),
        // and rank 1's first forward sleeps three timeouts. Rank 0 then waits for rank 1 far longer than the timeout with no
        // chunk completing, and must keep waiting, because rank 1 is alive.
        var timeout = TimeSpan.FromSeconds(1);
        var slow = 3 * timeout;
        var pairs = SweepTests.RandomPairs(8, seed: 31);
        var options = new SweepOptions
        {
            ModelDirectory = Fixtures.Path("tiny-gpt2"), PromptsPath = SweepTests.WritePrompts(_tmp, "slow.jsonl", pairs),
            OutputDirectory = Path.Combine(_tmp, "out"), BatchSize = 4, ChunkSize = 4,
        };
        var rank1Computing = new ManualResetEventSlim();
        var slept = false;
        var models = LoadRanks(options.ModelDirectory, rank =>
        {
            if (rank == 0)
            {
                rank1Computing.Wait(TimeSpan.FromSeconds(20));
                return;
            }
            rank1Computing.Set();
            Thread.Sleep(slow);
            slept = true;
        });
        try
        {
            var (summaries, outputs, clock) = RunRanks(models, options, timeout);
            Assert.That(slept, Is.True, "rank 1 computed a chunk and slept in it");
            Assert.That(clock, Is.GreaterThanOrEqualTo(slow));
            Assert.That(summaries.Select(s => s!.ChunksComputed), Is.EqualTo(new[] { 1, 1 }), string.Join("\n", outputs));
            Assert.That(SweepTests.ChunkFiles(options.OutputDirectory), Has.Count.EqualTo(2));
            Assert.That(File.Exists(Path.Combine(options.OutputDirectory, AttributionSweep.SummaryName)), Is.True);
        }
        finally
        {
            foreach (var m in models) m?.Dispose();
        }
    }

    [Test]
    public void ARankThatLeavesWithItsChunkUnwrittenIsNamedAtOnce()
    {
        // Rank 1 claims a chunk and then its sweep fails (a hook throws) and it closes its session: rank 0 finishes the
        // other chunk and reports rank 1 as gone, without waiting for the timeout.
        var timeout = TimeSpan.FromSeconds(30);
        var pairs = SweepTests.RandomPairs(8, seed: 32);
        var options = new SweepOptions
        {
            ModelDirectory = Fixtures.Path("tiny-gpt2"), PromptsPath = SweepTests.WritePrompts(_tmp, "left.jsonl", pairs),
            OutputDirectory = Path.Combine(_tmp, "out"), BatchSize = 4, ChunkSize = 4,
        };
        var rank1Computing = new ManualResetEventSlim();
        var models = LoadRanks(options.ModelDirectory, rank =>
        {
            if (rank == 0)
            {
                rank1Computing.Wait(TimeSpan.FromSeconds(20));
                return;
            }
            rank1Computing.Set();
            throw new InvalidOperationException("rank 1 fails mid-chunk");
        });
        try
        {
            var clock = System.Diagnostics.Stopwatch.StartNew();
            var failures = RunRanksExpectingFailures(models, options, timeout);
            Assert.That(failures[1]?.ToString(), Does.Contain("rank 1 fails mid-chunk"));
            Assert.That(failures[0], Is.InstanceOf<SweepException>());
            Assert.That(failures[0]!.Message, Does.Contain("rank 0/2: the sweep is incomplete: rank 1 left the job").And.Contain("1 chunk(s) not written"));
            Assert.That(clock.Elapsed, Is.LessThan(timeout / 2), "a rank that left is reported without waiting for the timeout");
            Assert.That(SweepTests.ChunkFiles(options.OutputDirectory), Has.Count.EqualTo(1));
        }
        finally
        {
            foreach (var m in models) m?.Dispose();
        }
    }

    /// <summary>
    /// One model per rank (two), each with a permanent hook on its first block's input that calls
    /// <paramref name="onFirstForward"/> with the rank on the model's first forward only.
    /// </summary>
    private static TransformerBridge[] LoadRanks(string modelDirectory, Action<int> onFirstForward)
    {
        var models = new TransformerBridge[2];
        for (var rank = 0; rank < models.Length; rank++)
        {
            var r = rank;
            var first = 0;
            models[rank] = TransformerBridge.Load(modelDirectory);
            models[rank].AddHook("blocks.0.hook_resid_pre", (_, _) =>
            {
                if (Interlocked.Exchange(ref first, 1) == 0) onFirstForward(r);
                return null;
            }, permanent: true);
        }
        return models;
    }

    /// <summary>Runs the sweep on one thread per model, as ranks of one job; fails the test when a rank fails.</summary>
    private static (SweepSummary?[] Summaries, string[] Outputs, TimeSpan Elapsed) RunRanks(TransformerBridge[] models, SweepOptions options, TimeSpan timeout)
    {
        var summaries = new SweepSummary?[models.Length];
        var outputs = new string[models.Length];
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var failures = Run(models, options, timeout, (rank, summary, output) => (summaries[rank], outputs[rank]) = (summary, output));
        foreach (var f in failures)
            if (f is not null) Assert.Fail($"a rank failed: {f}\n{string.Join("\n", outputs)}");
        return (summaries, outputs, clock.Elapsed);
    }

    private static Exception?[] RunRanksExpectingFailures(TransformerBridge[] models, SweepOptions options, TimeSpan timeout) =>
        Run(models, options, timeout, (_, _, _) => { });

    private static Exception?[] Run(TransformerBridge[] models, SweepOptions options, TimeSpan timeout, Action<int, SweepSummary, string> done)
    {
        var world = models.Length;
        using var host = DistributedStore.Host("127.0.0.1", 0, TimeSpan.FromSeconds(30));
        var port = host.Port;
        var failures = new Exception?[world];
        var threads = Enumerable.Range(0, world).Select(rank => new Thread(() =>
        {
            var output = new StringWriter();
            try
            {
                using var session = Distributed.Init(new DistributedEnvironment("127.0.0.1", port, rank, world, rank, world, AgentHostsStore: true), timeout);
                var summary = DistributedSweep.Run(models[rank], null, options, session, output, output);
                done(rank, summary, output.ToString());
            }
            catch (Exception e)
            {
                failures[rank] = e;
            }
        })).ToList();
        threads.ForEach(t => t.Start());
        foreach (var t in threads) Assert.That(t.Join(TimeSpan.FromSeconds(60)), Is.True, "a rank did not finish within a minute");
        return failures;
    }
}
