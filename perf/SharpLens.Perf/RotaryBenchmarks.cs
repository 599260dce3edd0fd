using BenchmarkDotNet.Attributes;
using SharpLens.Tensors;

namespace SharpLens.Perf;

/// <summary>
/// Rotary embeddings of q and k at Pythia-160m's shape (batch 4, 12 heads of 64, rotary_dim 16 = rotary_pct 0.25,
/// base 10000), q and k being strided views into one fused [4, Positions, 3 * 768] projection output as the bridge
/// gets them: the libtorch composition (the path before the kernel) against the kernel called once per tensor and
/// the q+k call that shares one cos/sin table, forward only.
/// </summary>
public class RotaryForwardBenchmarks : RotaryInputs
{
    [Benchmark(Baseline = true, Description = "composed q, k")]
    public void Composed()
    {
        using var noGrad = Torch.NoGrad();
        using var q = TransformerOps.Rotary(_q, _positions, RotaryDim, RotaryBase, RotaryImplementation.Composed);
        using var k = TransformerOps.Rotary(_k, _positions, RotaryDim, RotaryBase, RotaryImplementation.Composed);
    }

    [Benchmark(Description = "kernel q, k (2 calls)")]
    public void Kernel()
    {
        using var noGrad = Torch.NoGrad();
        using var q = TransformerOps.Rotary(_q, _positions, RotaryDim, RotaryBase, RotaryImplementation.Fused);
        using var k = TransformerOps.Rotary(_k, _positions, RotaryDim, RotaryBase, RotaryImplementation.Fused);
    }

    [Benchmark(Description = "kernel q+k (1 call, shared table)")]
    public void KernelQk()
    {
        using var noGrad = Torch.NoGrad();
        var (q, k) = TransformerOps.RotaryQk(_q, _k, _positions, RotaryDim, RotaryBase);
        q.Dispose();
        k.Dispose();
    }
}

/// <summary>
/// Forward and backward of the same rotations with fixed random upstream gradients, differentiating w.r.t. the q and
/// k views (made per call from the fused output that requires grad, as in a forward pass): the time is the rotary
/// ops' forward and backward. Carrying the gradients on into the fused output adds the views' backward (a zero-filled
/// [4, Positions, 2304] per view and their sum), the same cost for every variant.
/// </summary>
public class RotaryForwardBackwardBenchmarks : RotaryInputs
{
    public RotaryForwardBackwardBenchmarks() => WithGradients = true;

    private void Run(RotaryImplementation? implementation)
    {
        using var scope = Torch.NewScope();
        var q = _qkv.Narrow(2, 0, 768).View(Batch, Positions, 12, 64);
        var k = _qkv.Narrow(2, 768, 768).View(Batch, Positions, 12, 64);
        var (qr, kr) = implementation is { } i
            ? (TransformerOps.Rotary(q, _positions, RotaryDim, RotaryBase, i), TransformerOps.Rotary(k, _positions, RotaryDim, RotaryBase, i))
            : TransformerOps.RotaryQk(q, k, _positions, RotaryDim, RotaryBase);
        Torch.Autograd.Grad([qr, kr], [q, k], [_gq, _gk]);
    }

    [Benchmark(Baseline = true, Description = "composed q, k fwd+bwd")]
    public void Composed() => Run(RotaryImplementation.Composed);

    [Benchmark(Description = "kernel q, k (2 calls) fwd+bwd")]
    public void Kernel() => Run(RotaryImplementation.Fused);

    [Benchmark(Description = "kernel q+k (1 call) fwd+bwd")]
    public void KernelQk() => Run(null);
}

/// <summary>
/// The fused projection output [4, Positions, 3 * 768] (float32), its q and k parts as [4, Positions, 12, 64] views,
/// positions 0..Positions-1 per batch row, and upstream gradients for q and k; made once per parameter value.
/// </summary>
public abstract class RotaryInputs
{
    protected const long Batch = 4, RotaryDim = 16;
    protected const double RotaryBase = 10000;
    protected Tensor _qkv = null!, _q = null!, _k = null!, _positions = null!, _gq = null!, _gk = null!;

    [Params(128, 1024)] public int Positions;

    /// <summary>Whether the projection output requires grad (set by backward benchmarks).</summary>
    protected bool WithGradients { get; init; }

    [GlobalSetup]
    public void Setup()
    {
        using var g = new Generator(0);
        _qkv = Torch.Randn([Batch, Positions, 3 * 768], g);
        if (WithGradients) _qkv.RequiresGrad_();
        _q = _qkv.Narrow(2, 0, 768).View(Batch, Positions, 12, 64);
        _k = _qkv.Narrow(2, 768, 768).View(Batch, Positions, 12, 64);
        _positions = Torch.Arange(Positions).Unsqueeze(0).Expand(Batch, Positions).Contiguous();
        _gq = Torch.Randn([Batch, Positions, 12, 64], g);
        _gk = Torch.Randn([Batch, Positions, 12, 64], g);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (var t in new[] { _q, _k, _qkv, _positions, _gq, _gk }) t.Dispose();
    }
}
