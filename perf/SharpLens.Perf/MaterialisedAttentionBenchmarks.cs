using BenchmarkDotNet.Attributes;
using SharpLens.Tensors;

namespace SharpLens.Perf;

/// <summary>
/// Causal attention with the pattern materialised for a hook (hook_pattern listened to), 12 heads of 64, batch 1:
/// the staged kernels (pattern straight from q and k, weighted sum over the causal tiles only) against the libtorch
/// composition of the same math (matmul, mask, softmax, NaN-to-zero, matmul), which also materialises the pattern,
/// in the same run. With scores hooked as well, the scores kernel runs in front (third row).
/// </summary>
public class MaterialisedAttentionForwardBenchmarks : AttentionInputs
{
    [Benchmark(Baseline = true, Description = "composed (pattern materialised)")]
    public void Composed()
    {
        using var noGrad = Torch.NoGrad();
        using var z = TransformerOps.Attention(_q, _k, _v, null, 0.125, AttentionImplementation.Composed);
    }

    [Benchmark(Description = "kernels: pattern, apply")]
    public void Pattern()
    {
        using var scope = Torch.NewScope();
        using var noGrad = Torch.NoGrad();
        TransformerOps.AttentionApplyCausal(TransformerOps.AttentionCausalPattern(_q, _k, null, 0.125), _v);
    }

    [Benchmark(Description = "kernels: scores, pattern, apply")]
    public void ScoresAndPattern()
    {
        using var scope = Torch.NewScope();
        using var noGrad = Torch.NoGrad();
        TransformerOps.AttentionApplyCausal(TransformerOps.AttentionPattern(TransformerOps.AttentionScores(_q, _k, null, 0.125)), _v);
    }
}

/// <summary>Forward and backward of the materialised attention (gradients of q, k and v), kernels against composed.</summary>
public class MaterialisedAttentionForwardBackwardBenchmarks : AttentionInputs
{
    public MaterialisedAttentionForwardBackwardBenchmarks() => WithGradients = true;

    private void Run(Func<Tensor> attention)
    {
        using var scope = Torch.NewScope();
        Torch.Autograd.Grad([(attention() * _w).Sum()], [_q, _k, _v]);
    }

    [Benchmark(Baseline = true, Description = "composed fwd+bwd (pattern materialised)")]
    public void Composed() => Run(() => TransformerOps.Attention(_q, _k, _v, null, 0.125, AttentionImplementation.Composed));

    [Benchmark(Description = "kernels fwd+bwd: pattern, apply")]
    public void Pattern() => Run(() => TransformerOps.AttentionApplyCausal(TransformerOps.AttentionCausalPattern(_q, _k, null, 0.125), _v));

    [Benchmark(Description = "kernels fwd+bwd: scores, pattern, apply")]
    public void ScoresAndPattern() =>
        Run(() => TransformerOps.AttentionApplyCausal(TransformerOps.AttentionPattern(TransformerOps.AttentionScores(_q, _k, null, 0.125)), _v));
}
