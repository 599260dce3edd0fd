using BenchmarkDotNet.Attributes;
using SharpLens.Tensors;
using SharpLens.Tensors.Optim;

namespace SharpLens.Perf;

/// <summary>
/// An AdamW step over many small parameters: one native call (<see cref="AdamW.Step"/>) against the same
/// update written as a managed loop of tensor operations (about a dozen calls per parameter), the way a
/// managed optimizer over a tensor API would do it.
/// </summary>
[MemoryDiagnoser(false)]
public class OptimizerBenchmarks
{
    private const double Lr = 1e-3, Beta1 = 0.9, Beta2 = 0.999, Eps = 1e-8, WeightDecay = 0.01;

    private readonly List<Tensor> _params = new();
    private readonly List<Tensor> _expAvg = new(), _expAvgSq = new();
    private AdamW _native = null!;
    private int _step;

    [Params(16, 160)] public int ParameterCount;

    [GlobalSetup]
    public void Setup()
    {
        using var g = new Generator(0);
        for (var i = 0; i < ParameterCount; i++)
        {
            var p = Torch.Randn([64, 64], g).RequiresGrad_();
            p.Grad = Torch.Randn([64, 64], g);
            _params.Add(p);
            _expAvg.Add(Torch.Zeros(64, 64));
            _expAvgSq.Add(Torch.Zeros(64, 64));
        }
        _native = new AdamW(_params, lr: Lr, weightDecay: WeightDecay);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _native.Dispose();
        foreach (var t in _params.Concat(_expAvg).Concat(_expAvgSq)) t.Dispose();
    }

    [Benchmark(Baseline = true, Description = "managed loop of small ops")]
    public void ManagedLoop()
    {
        _step++;
        var bc1 = 1 - Math.Pow(Beta1, _step);
        var bc2Sqrt = Math.Sqrt(1 - Math.Pow(Beta2, _step));
        using var noGrad = Torch.NoGrad();
        for (var i = 0; i < _params.Count; i++)
        {
            using var scope = Torch.NewScope();
            var p = _params[i];
            var grad = p.Grad!;
            p.MulInPlace(1 - Lr * WeightDecay);
            _expAvg[i].MulInPlace(Beta1).AddInPlace(grad * (1 - Beta1));
            _expAvgSq[i].MulInPlace(Beta2).AddInPlace(grad.Square() * (1 - Beta2));
            var denom = _expAvgSq[i].Sqrt() / bc2Sqrt + Eps;
            p.SubInPlace(_expAvg[i] / denom * (Lr / bc1));
        }
    }

    [Benchmark(Description = "native: 1 call")]
    public void NativeStep() => _native.Step();
}
