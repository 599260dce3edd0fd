using BenchmarkDotNet.Attributes;
using SharpLens.Tensors;

namespace SharpLens.Perf;

/// <summary>
/// One native layer-norm call against the same math as a sequence of nine small tensor calls (mean,
/// centre, square, mean, add eps, rsqrt, scale, weight, bias): the cost of crossing the boundary per op
/// and of materialising every intermediate.
/// </summary>
[MemoryDiagnoser(false)]
public class LayerNormBenchmarks
{
    private Tensor _x = null!, _w = null!, _b = null!;

    [Params(4, 512)] public int Rows;

    [GlobalSetup]
    public void Setup()
    {
        using var g = new Generator(0);
        _x = Torch.Randn([Rows, 768], g);
        _w = Torch.Randn([768], g);
        _b = Torch.Randn([768], g);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _x.Dispose(); _w.Dispose(); _b.Dispose();
    }

    [Benchmark(Baseline = true, Description = "composed: 9 calls")]
    public void Composed()
    {
        using var scope = Torch.NewScope();
        var mean = _x.Mean(-1, keepDim: true);
        var centred = _x - mean;
        var variance = centred.Square().Mean(-1, keepDim: true);
        var normed = centred * (variance + 1e-5).Rsqrt();
        _ = normed * _w + _b;
    }

    [Benchmark(Description = "native two-step, scale exposed (the bridge's): 2 calls")]
    public void TwoStep()
    {
        using var scope = Torch.NewScope();
        var (centred, scale) = TransformerOps.LayerNormCentreScale(_x, 1e-5);
        _ = TransformerOps.LayerNormApplyScale(centred, scale, _w, _b);
    }

    [Benchmark(Description = "native: 1 call")]
    public void Native()
    {
        using var scope = Torch.NewScope();
        _ = Functional.LayerNorm(_x, [768], _w, _b);
    }
}

/// <summary>
/// LayerNorm forward + backward with every input requiring a gradient, as in a training or attribution pass through
/// the bridge: the composition (with the scale as a graph tensor, as TransformerLens computes it) against the native
/// two-step kernels that keep the scale hookable.
/// </summary>
public class LayerNormBackwardBenchmarks
{
    private Tensor _x = null!, _w = null!, _b = null!, _gy = null!;

    [Params(512, 2048)] public int Rows;

    [GlobalSetup]
    public void Setup()
    {
        using var g = new Generator(0);
        _x = Torch.Randn([Rows, 768], g).RequiresGrad_();
        _w = Torch.Randn([768], g).RequiresGrad_();
        _b = Torch.Randn([768], g).RequiresGrad_();
        _gy = Torch.Randn([Rows, 768], g);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _x.Dispose(); _w.Dispose(); _b.Dispose(); _gy.Dispose();
    }

    [Benchmark(Baseline = true, Description = "composed fwd+bwd")]
    public void Composed()
    {
        using var scope = Torch.NewScope();
        var centred = _x - _x.Mean(-1, keepDim: true);
        var scale = (centred.Square().Mean(-1, keepDim: true) + 1e-5).Sqrt();
        var y = centred / scale * _w + _b;
        _ = Torch.Autograd.Grad([y], [_x, _w, _b], [_gy]);
    }

    [Benchmark(Description = "native two-step fwd+bwd")]
    public void TwoStep()
    {
        using var scope = Torch.NewScope();
        var (centred, scale) = TransformerOps.LayerNormCentreScale(_x, 1e-5);
        var y = TransformerOps.LayerNormApplyScale(centred, scale, _w, _b);
        _ = Torch.Autograd.Grad([y], [_x, _w, _b], [_gy]);
    }
}
