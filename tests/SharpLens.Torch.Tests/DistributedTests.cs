using System.Collections;
using System.Net;
using System.Net.Sockets;

namespace SharpLens.Tensors.Tests;

/// <summary>
/// The torch.distributed bindings (c10d TCPStore, ProcessGroupGloo) on loopback. Ranks are threads of this process, each
/// with its own store connection and process group, as c10d allows; collectives are checked against values computed by
/// hand from what each rank contributed. Every wait has a short timeout so a fault fails the test instead of hanging it.
/// </summary>
[NonParallelizable]
public class DistributedTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(20);

    [OneTimeSetUp]
    public void RequireDistributed()
    {
        // This build is expected to have it (./build.sh installs libgloo-dev); a build without says why, and that is a failure here.
        Assert.That(Distributed.IsAvailable, Is.True, Distributed.UnavailableReason);
        Assert.That(Distributed.UnavailableReason, Is.Empty);
    }

    /// <summary>Runs <paramref name="body"/> as <paramref name="worldSize"/> ranks on threads sharing one hosted store; rethrows the first failure.</summary>
    private static void RunRanks(int worldSize, Action<int, DistributedStore> body)
    {
        using var host = DistributedStore.Host("127.0.0.1", 0, Timeout);
        var port = host.Port;
        var failures = new Exception?[worldSize];
        var threads = Enumerable.Range(0, worldSize).Select(rank => new Thread(() =>
        {
            try
            {
                using var store = DistributedStore.Connect("127.0.0.1", port, Timeout);
                using var scope = Torch.NewScope();
                body(rank, store);
            }
            catch (Exception e)
            {
                failures[rank] = e;
            }
        })).ToList();
        threads.ForEach(t => t.Start());
        foreach (var t in threads) Assert.That(t.Join(Timeout * 2), Is.True, "a rank did not finish within the timeout");
        foreach (var f in failures)
            if (f is not null) throw new AssertionException($"a rank failed: {f}");
    }

    private static ProcessGroup Group(DistributedStore store, int rank, int worldSize, string name)
    {
        using var prefixed = store.WithPrefix(name);
        return ProcessGroup.Create(prefixed, rank, worldSize, Timeout);
    }

    [Test]
    public void StoreSetGetAddCompareSetWaitCheckDelete()
    {
        using var store = DistributedStore.Host("127.0.0.1", 0, Timeout);
        Assert.That(store.Port, Is.InRange(1, 65535), "port 0 lets the OS pick a real port");
        using var other = DistributedStore.Connect("127.0.0.1", store.Port, Timeout);

        store.Set("greeting", "héllo");
        Assert.That(other.GetString("greeting"), Is.EqualTo("héllo"));
        other.Set("empty", ReadOnlySpan<byte>.Empty);
        Assert.That(store.Get("empty"), Is.Empty);

        Assert.That(store.Add("counter", 5), Is.EqualTo(5), "a missing counter starts at 0");
        Assert.That(other.Add("counter", -2), Is.EqualTo(3));
        Assert.That(store.Add("counter", 0), Is.EqualTo(3), "adding 0 reads the counter");

        // compare-set: a swap from the expected value, no swap from another one (returns the current value).
        Assert.That(store.CompareSet("claim", "", "rank0"), Is.EqualTo("rank0"), "a missing key with empty expected is claimed");
        Assert.That(other.CompareSet("claim", "", "rank1"), Is.EqualTo("rank0"), "the second claim sees the first");
        Assert.That(other.CompareSet("claim", "rank0", "rank1"), Is.EqualTo("rank1"));

        Assert.That(store.Check("greeting", "counter"), Is.True);
        Assert.That(store.Check("greeting", "absent"), Is.False);
        store.Wait(["greeting", "claim"], TimeSpan.FromSeconds(1));
        Assert.That(store.Delete("greeting"), Is.True);
        Assert.That(store.Delete("greeting"), Is.False);

        using var view = store.WithPrefix("job7");
        view.Set("k", "v");
        Assert.That(store.GetString("job7/k"), Is.EqualTo("v"), "a prefixed view writes under its prefix");
        Assert.That(view.Check("greeting"), Is.False);
    }

    [Test]
    public void WaitAndGetTimeOutNamingTheKey()
    {
        // c10d's connect needs a timeout of a second or more (it counts whole seconds); get waits for the store's timeout.
        using var store = DistributedStore.Host("127.0.0.1", 0, TimeSpan.FromMilliseconds(1500));
        var wait = Assert.Throws<TorchException>(() => store.Wait(["never-set"], TimeSpan.FromMilliseconds(200)))!;
        Assert.That(wait.Message, Does.Contain("'never-set'").And.Contain("200 ms"));
        var get = Assert.Throws<TorchException>(() => store.Get("never-set-either"))!;
        Assert.That(get.Message, Does.Contain("'never-set-either'").And.Contain("1500 ms").And.Not.Contain("frame #"));
    }

    [Test]
    public void UnreachableStoreFailsNamingAddressAndTimeout()
    {
        // A port nobody listens on: bind one, note it, close it.
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        var e = Assert.Throws<TorchException>(() => DistributedStore.Connect("127.0.0.1", port, TimeSpan.FromMilliseconds(1200)))!;
        Assert.That(e.Message, Does.Contain($"127.0.0.1:{port}").And.Contain("1200 ms"));
    }

    [Test]
    public void CollectivesCombineEveryRanksTensor()
    {
        const int world = 3;
        var gathered = new double[world][];
        RunRanks(world, (rank, store) =>
        {
            using var group = Group(store, rank, world, "collectives");
            Assert.That((group.Rank, group.WorldSize), Is.EqualTo((rank, world)));
            // Rank r contributes [r+1, 10(r+1), -(r+1)]: sum 6/60/-6, product 6/6000/-6, min 1/10/-3, max 3/30/-1.
            double[] Mine() => [rank + 1, 10 * (rank + 1), -(rank + 1)];
            var sum = Torch.FromArray(Mine());
            group.AllReduce(sum);
            Assert.That(sum.ToArray<double>(), Is.EqualTo(new double[] { 6, 60, -6 }));
            var product = Torch.FromArray(Mine());
            group.AllReduce(product, CollectiveOp.Product);
            Assert.That(product.ToArray<double>(), Is.EqualTo(new double[] { 6, 6000, -6 }));
            var min = Torch.FromArray(Mine());
            group.AllReduce(min, CollectiveOp.Min);
            Assert.That(min.ToArray<double>(), Is.EqualTo(new double[] { 1, 10, -3 }));
            var max = Torch.FromArray(Mine());
            group.AllReduce(max, CollectiveOp.Max);
            Assert.That(max.ToArray<double>(), Is.EqualTo(new double[] { 3, 30, -1 }));

            // Several tensors of different shapes in one flat collective; a non-contiguous view is written back in place.
            var a = Torch.FromArray(new float[] { rank, 1, 2, 3 }, 2, 2);
            var b = Torch.FromArray(new float[] { 1, 2, 3, 4, 5, 6 }, 2, 3).Transpose(0, 1);  // [3, 2], not contiguous
            group.AllReduce(new[] { a, b });
            Assert.That(a.ToArray<float>(), Is.EqualTo(new float[] { 0 + 1 + 2, 3, 6, 9 }));
            Assert.That(b.Contiguous().ToArray<float>(), Is.EqualTo(new float[] { 3, 12, 6, 15, 9, 18 }), "3 × the transpose of [[1,2,3],[4,5,6]]");

            var all = group.AllGather(Torch.FromArray(new long[] { rank, rank * rank }));
            Assert.That(all.Shape, Is.EqualTo(new long[] { world, 2 }));
            gathered[rank] = all.To(ScalarType.Float64).ToArray<double>();

            var shared = Torch.FromArray(new double[] { rank == 1 ? 42 : -1, rank });
            group.Broadcast(shared, root: 1);
            Assert.That(shared.ToArray<double>(), Is.EqualTo(new double[] { 42, 1 }));
            group.Barrier();
        });
        foreach (var g in gathered) Assert.That(g, Is.EqualTo(new double[] { 0, 0, 1, 1, 2, 4 }), "rank order, on every rank");
    }

    [Test]
    public void GradientsOfLeavesReduceInPlace()
    {
        RunRanks(2, (rank, store) =>
        {
            using var group = Group(store, rank, 2, "grads");
            var w = Torch.FromArray(new double[] { 1, 2, 3 });
            w.RequiresGrad = true;
            (w * (rank + 1.0)).Sum().Backward();  // grad = rank + 1 per element
            var grad = w.Grad!;
            group.AllReduce(new[] { grad });
            Assert.That(w.Grad!.ToArray<double>(), Is.EqualTo(new double[] { 3, 3, 3 }), "1 + 2 in the parameter's own gradient");
        });
    }

    [Test]
    public void BadArgumentsAreRefusedWithTheirNames()
    {
        using var store = DistributedStore.Host("127.0.0.1", 0, Timeout);
        var rank = Assert.Throws<ArgumentException>(() => ProcessGroup.Create(store, 2, 2, Timeout))!;
        Assert.That(rank.Message, Does.Contain("rank 2").And.Contain("world size 2"));
        var nccl = Assert.Throws<ArgumentException>(() => ProcessGroup.Create(store, 0, 1, Timeout, DistributedBackend.Nccl))!;
        Assert.That(nccl.Message, Does.Contain("NCCL"));
        Assert.Throws<ArgumentException>(() => DistributedStore.Connect("127.0.0.1", 0, Timeout));

        using var solo = Group(store, 0, 1, "solo");
        Assert.Throws<ArgumentException>(() => solo.Broadcast(Torch.Zeros(2), root: 1));
        var mixed = Assert.Throws<ArgumentException>(() => solo.AllReduce(new[] { Torch.Zeros(2), Torch.Zeros([2], ScalarType.Float64) }))!;
        Assert.That(mixed.Message, Does.Contain("Float").And.Contain("Double"));
        var t = Torch.FromArray(new float[] { 1, 2 });
        solo.AllReduce(t);
        Assert.That(t.ToArray<float>(), Is.EqualTo(new float[] { 1, 2 }), "a world of one reduces to itself");
    }

    [Test]
    public void EnvironmentFollowsTorchrunsContract()
    {
        Assert.That(DistributedEnvironment.FromEnvironment(new Hashtable()), Is.Null, "no job without RANK/WORLD_SIZE");
        var env = DistributedEnvironment.FromEnvironment(new Hashtable
        {
            ["MASTER_ADDR"] = "10.0.0.1", ["MASTER_PORT"] = "29500", ["RANK"] = "5", ["WORLD_SIZE"] = "16",
            ["LOCAL_RANK"] = "1", ["LOCAL_WORLD_SIZE"] = "8", ["TORCHELASTIC_USE_AGENT_STORE"] = "True", ["TORCHELASTIC_RESTART_COUNT"] = "2",
        })!;
        Assert.That(env, Is.EqualTo(new DistributedEnvironment("10.0.0.1", 29500, 5, 16, 1, 8, true, 2)));
        var missing = Assert.Throws<DistributedException>(() => DistributedEnvironment.FromEnvironment(new Hashtable { ["RANK"] = "0", ["WORLD_SIZE"] = "2" }))!;
        Assert.That(missing.Message, Does.Contain("MASTER_ADDR"));
        var bad = Assert.Throws<DistributedException>(() => DistributedEnvironment.FromEnvironment(new Hashtable
            { ["MASTER_ADDR"] = "h", ["MASTER_PORT"] = "1", ["RANK"] = "2", ["WORLD_SIZE"] = "2" }))!;
        Assert.That(bad.Message, Does.Contain("RANK").And.Contain("'2'"));
        var local = DistributedEnvironment.ForLocalWorker("127.0.0.1", 1234, 1, 2);
        Assert.That(DistributedEnvironment.FromEnvironment(new Hashtable(local.ToDictionary(kv => kv.Key, kv => kv.Value))),
            Is.EqualTo(new DistributedEnvironment("127.0.0.1", 1234, 1, 2, 1, 2, true)));
    }

    [Test]
    public void InitJoinsAJobWhoseRankZeroHostsTheStore()
    {
        // env:// without an agent: rank 0 hosts the store on MASTER_PORT. A free port: bind one and release it (a race
        // with other processes that is retried once).
        for (var attempt = 0; ; attempt++)
        {
            var listener = new TcpListener(IPAddress.Loopback, 0);
            listener.Start();
            var port = ((IPEndPoint)listener.LocalEndpoint).Port;
            listener.Stop();
            try
            {
                var sums = new double[2];
                var failures = new Exception?[2];
                var threads = Enumerable.Range(0, 2).Select(rank => new Thread(() =>
                {
                    try
                    {
                        using var session = Distributed.Init(new DistributedEnvironment("127.0.0.1", port, rank, 2, rank, 2, AgentHostsStore: false), Timeout);
                        using var scope = Torch.NewScope();
                        var t = Torch.FromArray(new double[] { 10 + rank });
                        session.Group.AllReduce(t);
                        sums[rank] = t.ToArray<double>()[0];
                        session.Store.Add("joined", 1);
                        session.Group.Barrier();
                        Assert.That(session.Store.Add("joined", 0), Is.EqualTo(2));
                    }
                    catch (Exception e)
                    {
                        failures[rank] = e;
                    }
                })).ToList();
                threads.ForEach(t => t.Start());
                foreach (var t in threads) Assert.That(t.Join(Timeout * 2), Is.True);
                if (failures.FirstOrDefault(f => f is not null) is { } f) throw f;
                Assert.That(sums, Is.EqualTo(new double[] { 21, 21 }));
                return;
            }
            catch (TorchException e) when (attempt == 0 && e.Message.Contains("cannot host"))
            {
                // the port was taken between the probe and the store: once more
            }
        }
    }

    [Test]
    public void HeartbeatsKeepABusyRankAliveAndARankThatLeftIsNamedAtOnce()
    {
        // Rank 1 does nothing on its main thread for 2.5 timeouts (as a long computation would): its heartbeat thread keeps
        // it alive in rank 0's eyes. Then it closes its session, and rank 0 sees it left without waiting for the timeout.
        var timeout = TimeSpan.FromSeconds(1);
        using var host = DistributedStore.Host("127.0.0.1", 0, Timeout);
        var port = host.Port;
        using var rank1Busy = new ManualResetEventSlim();
        using var rank1Closed = new ManualResetEventSlim();
        var failures = new Exception?[2];
        UnresponsiveRank? whileBusy = null, afterClose = null;
        var threads = Enumerable.Range(0, 2).Select(rank => new Thread(() =>
        {
            try
            {
                var session = Distributed.Init(new DistributedEnvironment("127.0.0.1", port, rank, 2, rank, 2, AgentHostsStore: true), timeout);
                if (rank == 1)
                {
                    rank1Busy.Set();
                    Thread.Sleep(2.5 * timeout);
                    session.Dispose();
                    rank1Closed.Set();
                    return;
                }
                using (session)
                {
                    Assert.That(session.HeartbeatInterval, Is.EqualTo(timeout / 5));
                    Assert.That(() => session.FindUnresponsive([2]), Throws.InstanceOf<ArgumentOutOfRangeException>());
                    Assert.That(session.FindUnresponsive([0]), Is.Null, "a rank does not judge itself");
                    rank1Busy.Wait(Timeout);
                    while (!rank1Closed.IsSet)
                    {
                        whileBusy ??= session.FindUnresponsive([0, 1]);
                        Thread.Sleep(session.HeartbeatInterval);
                    }
                    var clock = System.Diagnostics.Stopwatch.StartNew();
                    while ((afterClose = session.FindUnresponsive([1])) is null && clock.Elapsed < Timeout) Thread.Sleep(10);
                    Assert.That(clock.Elapsed, Is.LessThan(timeout), "a rank that left is seen at once");
                }
            }
            catch (Exception e)
            {
                failures[rank] = e;
            }
        })).ToList();
        threads.ForEach(t => t.Start());
        foreach (var t in threads) Assert.That(t.Join(Timeout * 2), Is.True);
        if (failures.FirstOrDefault(f => f is not null) is { } f) throw f;
        Assert.That(whileBusy, Is.Null, "a busy rank that is alive is never reported");
        Assert.That(afterClose, Is.EqualTo(new UnresponsiveRank(1, true, TimeSpan.Zero, timeout)));
        Assert.That(afterClose!.ToString(), Is.EqualTo("rank 1 left the job (closed its session)"));
    }

    [Test]
    public void ASilentHeartbeatIsReportedAfterTheTimeoutOnTheObserversClock()
    {
        // The watch against keys set by hand: rank 1's counter moves, then stops (a killed or frozen process).
        var timeout = TimeSpan.FromMilliseconds(600);
        using var store = DistributedStore.Host("127.0.0.1", 0, Timeout);
        using var keys = store.WithPrefix(DistributedHeartbeat.Prefix(3));
        var watch = new HeartbeatWatch(store, restartCount: 3, self: 0, worldSize: 2, timeout);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        Assert.That(watch.Find([1]), Is.Null, "never seen: silence counts from the first look");
        var silentSince = TimeSpan.Zero;  // after the last look that saw a beat
        while (clock.Elapsed < 2 * timeout)
        {
            keys.Add(DistributedHeartbeat.AliveKey(1), 1);
            silentSince = clock.Elapsed;  // before the look that sees this beat, so the silence measured below is not shorter than the watch's
            Assert.That(watch.Find([1]), Is.Null, "beating");
            Thread.Sleep(50);
        }
        UnresponsiveRank? found;
        while ((found = watch.Find([1])) is null && clock.Elapsed < Timeout) Thread.Sleep(20);
        var after = clock.Elapsed - silentSince;
        Assert.That(found, Is.Not.Null);
        Assert.That(found!.Rank, Is.EqualTo(1));
        Assert.That(found.Left, Is.False);
        Assert.That(found.Silence, Is.GreaterThan(timeout));
        Assert.That(after, Is.GreaterThanOrEqualTo(timeout).And.LessThan(timeout + TimeSpan.FromSeconds(1)));
        Assert.That(found.ToString(), Does.StartWith("rank 1 sent no heartbeat for ").And.Contain("(the distributed timeout is 0.6 s)"));
        keys.Add(DistributedHeartbeat.AliveKey(1), 1);
        Assert.That(watch.Find([1]), Is.Null, "a beat after the silence counts as alive again");
    }
}
