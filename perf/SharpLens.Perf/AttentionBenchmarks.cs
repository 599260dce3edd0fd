using BenchmarkDotNet.Attributes;
using SharpLens.Tensors;

namespace SharpLens.Perf;

/// <summary>
/// Causal attention, 12 heads of 64, batch 1: the fused CPU kernel (blocked over queries, online softmax, scores
/// never materialised, tiles above the diagonal skipped) against the libtorch composition of the same math
/// (matmul, mask, softmax, matmul) in the same run.
/// </summary>
public class AttentionForwardBenchmarks
{
    private Tensor _q = null!, _k = null!, _v = null!;

    [Params(128, 512, 1024, 2048)] public int Positions;

    [GlobalSetup]
    public void Setup()
    {
        using var g = new Generator(0);
        _q = Torch.Randn([1, Positions, 12, 64], g);
        _k = Torch.Randn([1, Positions, 12, 64], g);
        _v = Torch.Randn([1, Positions, 12, 64], g);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _q.Dispose(); _k.Dispose(); _v.Dispose();
    }

    [Benchmark(Baseline = true, Description = "composed")]
    public void Composed()
    {
        using var noGrad = Torch.NoGrad();
        using var z = TransformerOps.Attention(_q, _k, _v, null, 0.125, AttentionImplementation.Composed);
    }

    [Benchmark(Description = "fused")]
    public void Fused()
    {
        using var noGrad = Torch.NoGrad();
        using var z = TransformerOps.Attention(_q, _k, _v, null, 0.125, AttentionImplementation.Fused);
    }
}

/// <summary>Forward and backward of the same attention (gradients of q, k and v), fused against composed.</summary>
public class AttentionForwardBackwardBenchmarks
{
    private Tensor _q = null!, _k = null!, _v = null!, _w = null!;

    [Params(128, 512, 1024, 2048)] public int Positions;

    [GlobalSetup]
    public void Setup()
    {
        using var g = new Generator(0);
        _q = Torch.Randn([1, Positions, 12, 64], g).RequiresGrad_();
        _k = Torch.Randn([1, Positions, 12, 64], g).RequiresGrad_();
        _v = Torch.Randn([1, Positions, 12, 64], g).RequiresGrad_();
        _w = Torch.Randn([1, Positions, 12, 64], g);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _q.Dispose(); _k.Dispose(); _v.Dispose(); _w.Dispose();
    }

    private void Run(AttentionImplementation implementation)
    {
        using var scope = Torch.NewScope();
        var z = TransformerOps.Attention(_q, _k, _v, null, 0.125, implementation);
        Torch.Autograd.Grad([(z * _w).Sum()], [_q, _k, _v]);
    }

    [Benchmark(Baseline = true, Description = "composed fwd+bwd")]
    public void Composed() => Run(AttentionImplementation.Composed);

    [Benchmark(Description = "fused fwd+bwd")]
    public void Fused() => Run(AttentionImplementation.Fused);
}
