using BenchmarkDotNet.Attributes;
using SharpLens.Tensors;

namespace SharpLens.Perf;

/// <summary>
/// GPT-2 small's unembedding (x [4, 128, 768] times W_U [50257, 768]ᵀ), forward and backward to x and W_U:
/// matmul's backward (the libtorch composition) against <see cref="Functional.Linear"/>, whose backward multiplies
/// only the nonzero rows of the logit gradient. With a last-position loss (<c>logits[:, -1, :].sum()</c>, lens
/// bench's) 4 of 512 rows are nonzero; with a loss on every position none are zero and the two should tie.
/// </summary>
public class LinearBenchmarks
{
    private Tensor _x = null!, _w = null!;

    /// <summary>Which positions the loss reads.</summary>
    public enum LossPositions { Last, All }

    [Params(LossPositions.Last, LossPositions.All)] public LossPositions Loss;

    [GlobalSetup]
    public void Setup()
    {
        using var g = new Generator(0);
        _x = Torch.Randn([4, 128, 768], g).RequiresGrad_();
        _w = (Torch.Randn([50257, 768], g) * 0.02).Detach().RequiresGrad_();
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _x.Dispose();
        _w.Dispose();
    }

    private void ForwardBackward(Func<Tensor> logits)
    {
        using var scope = Torch.NewScope();
        var y = logits();
        var loss = Loss == LossPositions.Last ? y.Select(1, -1).Sum() : y.Sum();
        _ = Torch.Autograd.Grad([loss], [_x, _w]);
    }

    [Benchmark(Baseline = true, Description = "composed: matmul, autograd's backward")]
    public void Composed() => ForwardBackward(() => _x.Matmul(_w.Transpose(0, 1)));

    [Benchmark(Description = "linear: backward on nonzero rows")]
    public void Linear() => ForwardBackward(() => Functional.Linear(_x, _w, null, LinearWeightLayout.OutIn));
}
