using BenchmarkDotNet.Attributes;
using SharpLens.Tensors;

namespace SharpLens.Perf;

/// <summary>
/// Causal attention, 12 heads of 64, batch 1: the fused CPU kernel (blocked over queries, online softmax, scores
/// never materialised, tiles above the diagonal skipped) against the libtorch composition of the same math
/// (matmul, mask, softmax, matmul) in the same run.
/// </summary>
public class AttentionForwardBenchmarks : AttentionInputs
{
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
public class AttentionForwardBackwardBenchmarks : AttentionInputs
{
    public AttentionForwardBackwardBenchmarks() => WithGradients = true;

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

/// <summary>
/// q, k, v [1, Positions, 12, 64] (and a random weighting of z for backward benchmarks), made once per parameter
/// value; shared by every attention benchmark class.
/// </summary>
public abstract class AttentionInputs
{
    protected Tensor _q = null!, _k = null!, _v = null!, _w = null!;

    [Params(128, 512, 1024, 2048)] public int Positions;

    /// <summary>Whether q, k and v require grad (set by backward benchmarks).</summary>
    protected bool WithGradients { get; init; }

    [GlobalSetup]
    public void Setup()
    {
        using var g = new Generator(0);
        _q = Torch.Randn([1, Positions, 12, 64], g);
        _k = Torch.Randn([1, Positions, 12, 64], g);
        _v = Torch.Randn([1, Positions, 12, 64], g);
        _w = Torch.Randn([1, Positions, 12, 64], g);
        if (WithGradients)
            foreach (var t in new[] { _q, _k, _v }) t.RequiresGrad_();
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _q.Dispose(); _k.Dispose(); _v.Dispose(); _w.Dispose();
    }
}
