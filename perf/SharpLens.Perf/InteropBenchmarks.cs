using BenchmarkDotNet.Attributes;
using SharpLens.Tensors;

namespace SharpLens.Perf;

/// <summary>The floor under every managed call: a query that only crosses the boundary, against a tiny libtorch op.</summary>
public class InteropBenchmarks
{
    private Tensor _t = null!;

    [GlobalSetup]
    public void Setup() => _t = Torch.Ones(4);

    [GlobalCleanup]
    public void Cleanup() => _t.Dispose();

    [Benchmark(Baseline = true, Description = "tiny op (add, allocates a tensor)")]
    public void TinyOp()
    {
        using var r = _t.Add(1);
    }

    [Benchmark(Description = "boundary crossing only (numel)")]
    public long BoundaryOnly() => _t.NumEl;
}
