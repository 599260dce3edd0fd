namespace SharpLens.Tensors.Tests;

/// <summary>
/// The caching CPU allocator (<see cref="CpuCache"/>): freed large buffers are parked and reused, contents of a
/// reused buffer never leak into a new tensor's values, the limit and release work; and the operator profiler
/// (<see cref="Profiler"/>) reports the operators a pass ran, including autograd nodes, and refuses misuse.
/// </summary>
[NonParallelizable]
public class CpuCacheAndProfilerTests
{
    // An odd size no other test allocates: 3 MiB plus a little, in float32 elements.
    private const long Elements = (3L << 20) / 4 + 37;

    [SetUp]
    public void EmptyTheCache()
    {
        // Tensors other tests left to the finalizer would otherwise be freed into the cache mid-test.
        GC.Collect();
        GC.WaitForPendingFinalizers();
        CpuCache.Release();
    }

    [Test]
    public void AFreedLargeBufferIsParkedAndReusedByTheNextTensorOfItsSize()
    {
        var limit = CpuCache.LimitBytes;
        Assume.That(limit, Is.GreaterThan(16L << 20), "caching is on (SHARPLENS_CPU_CACHE_MB not set low)");
        var ones = Torch.Ones([Elements]);
        var address = ones.DataPointer;
        ones.Dispose();
        var parked = CpuCache.CachedBytes;
        Assert.That(parked, Is.GreaterThanOrEqualTo(Elements * 4), "the freed buffer is parked");
        Assert.That(parked, Is.LessThanOrEqualTo(Elements * 4 * 9 / 8 + 64), "size classes waste at most an eighth");

        using var zeros = Torch.Zeros([Elements]);
        Assert.That(zeros.DataPointer, Is.EqualTo(address), "the parked buffer is handed out again");
        Assert.That(CpuCache.CachedBytes, Is.EqualTo(0));
        Assert.That(zeros.Abs().Max().ToDouble(), Is.EqualTo(0.0), "the old contents (ones) do not show through");
    }

    [Test]
    public void SmallBuffersAreNotCachedAndReleaseEmptiesTheCache()
    {
        Torch.Ones([1000]).Dispose();
        Assert.That(CpuCache.CachedBytes, Is.EqualTo(0), "4 KB is below the 1 MiB threshold");
        Torch.Ones([Elements]).Dispose();
        Assert.That(CpuCache.CachedBytes, Is.GreaterThan(0));
        CpuCache.Release();
        Assert.That(CpuCache.CachedBytes, Is.EqualTo(0));
    }

    [Test]
    public void ALimitOfZeroTurnsCachingOffAndANegativeLimitIsRefused()
    {
        var limit = CpuCache.LimitBytes;
        try
        {
            Torch.Ones([Elements]).Dispose();
            CpuCache.LimitBytes = 0;
            Assert.That(CpuCache.CachedBytes, Is.EqualTo(0), "lowering the limit frees what is parked beyond it");
            Torch.Ones([Elements]).Dispose();
            Assert.That(CpuCache.CachedBytes, Is.EqualTo(0));
            var e = Assert.Throws<ArgumentException>(() => CpuCache.LimitBytes = -1)!;
            Assert.That(e.Message, Does.Contain("-1"));
        }
        finally
        {
            CpuCache.LimitBytes = limit;
        }
        Assert.That(CpuCache.LimitBytes, Is.EqualTo(limit));
    }

    [Test]
    public void TheProfilerReportsForwardOperatorsAndBackwardNodes()
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(1);
        var a = Torch.Randn([64, 32], g).RequiresGrad_();
        var b = Torch.Randn([32, 16], g);
        IReadOnlyList<ProfiledOp> ops;
        using (var session = Profiler.Start())
        {
            a.Matmul(b).Sum().Backward();
            ops = session.Stop();
        }
        var mm = ops.Single(o => o.Op == "aten::mm");
        Assert.That(mm.Calls, Is.GreaterThanOrEqualTo(2), "forward and the input-gradient product");
        Assert.That(ops.Any(o => o.Op.Contains("MmBackward0")), Is.True, string.Join(", ", ops.Select(o => o.Op)));
        Assert.That(ops.All(o => o.SelfMs >= 0 && o.TotalMs >= o.SelfMs - 1e-6), Is.True, "self time never exceeds total");
        Assert.That(ops.Select(o => o.SelfMs), Is.Ordered.Descending);
    }

    [Test]
    public void TheProfilerRefusesASecondStartAndASecondStop()
    {
        var session = Profiler.Start();
        try
        {
            Assert.Throws<ArgumentException>(() => Profiler.Start());
            session.Stop();
            Assert.Throws<ObjectDisposedException>(() => session.Stop());
        }
        finally
        {
            session.Dispose();
        }
        using (Profiler.Start()) { }  // a disposed, never-stopped session leaves the profiler free for the next
        Profiler.Start().Stop();
    }
}
