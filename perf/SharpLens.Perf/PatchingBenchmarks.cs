using System.Text.Json.Nodes;
using BenchmarkDotNet.Attributes;
using SharpLens.Loading;
using SharpLens.Tensors;

namespace SharpLens.Perf;

/// <summary>
/// Activation patching of <c>resid_pre</c> by layer × position for all positions of a [2, 12] batch on a random 2-layer model
/// (2 × 12 = 24 patches), against the forward passes it must run: 24 plain forward passes of the corrupted [2, 12] batch
/// (TransformerLens's loop runs exactly these, each with one hook). The target is at most 1.5× the baseline.
/// Two shapes: the tiny fixtures' (d_model 64, vocabulary 1000), where a pass costs mostly call overhead, and GPT-2 small's
/// width (d_model 768, 12 heads, vocabulary 50257) with 2 layers, where the matrix products dominate. "one patch per
/// forward" is the same library code limited to one patch per pass: what batching the patches as rows buys.
/// </summary>
public class PatchingBenchmarks
{
    private string _dir = null!;
    private TransformerBridge _bridge = null!;
    private Tensor _clean = null!, _corrupted = null!, _answers = null!, _wrongs = null!;
    private ActivationCache _cache = null!;

    /// <summary>The model's width.</summary>
    public enum Shape { Tiny, Gpt2SmallWidth }

    [Params(Shape.Tiny, Shape.Gpt2SmallWidth)] public Shape Model;

    [GlobalSetup]
    public void Setup()
    {
        _dir = Path.Combine(Path.GetTempPath(), $"sharplens-patching-bench-{Environment.ProcessId}-{Model}");
        var config = RandomCheckpoint.Gpt2Small();
        config["n_layer"] = 2;
        if (Model == Shape.Tiny)
        {
            config["n_embd"] = 64;
            config["n_head"] = 4;
            config["vocab_size"] = 1000;
            config["n_positions"] = 128;
            config["bos_token_id"] = 0;
            config["eos_token_id"] = 0;
        }
        RandomCheckpoint.Write(_dir, config, seed: 1);
        _bridge = TransformerBridge.Load(_dir);
        var vocab = (long)(int)config["vocab_size"]!;
        using var g = new Generator(2);
        _clean = Torch.RandInt(0, vocab, [2, 12], g);
        _corrupted = Torch.RandInt(0, vocab, [2, 12], g);
        _answers = Torch.FromArray(new long[] { 11, 12 });
        _wrongs = Torch.FromArray(new long[] { 21, 22 });
        using (Torch.NoGrad()) (_, _cache) = _bridge.RunWithCache(_clean, n => n.EndsWith("hook_resid_pre"));
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _cache.Dispose();
        foreach (var t in new[] { _clean, _corrupted, _answers, _wrongs }) t.Dispose();
        _bridge.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    private Tensor Metric(Tensor logits) => Patching.LogitDiff(_answers, _wrongs)(logits).Mean();

    [Benchmark(Baseline = true, Description = "24 forward passes [2, 12]")]
    public void ForwardsItMustRun()
    {
        using var noGrad = Torch.NoGrad();
        for (var i = 0; i < 24; i++)
        {
            using var scope = Torch.NewScope();
            Metric(_bridge.Forward(_corrupted)).ToDouble();
        }
    }

    [Benchmark(Description = "patch resid_pre, layer x position")]
    public void PatchResidPre()
    {
        using var scope = Torch.NewScope();
        Patching.GetActPatchResidPre(_bridge, _corrupted, _cache, Metric);
    }

    [Benchmark(Description = "patch resid_pre, one patch per forward")]
    public void PatchResidPreOnePerForward()
    {
        using var scope = Torch.NewScope();
        Patching.GetActPatchResidPre(_bridge, _corrupted, _cache, Metric, new PatchingOptions { MaxTokensPerForward = 24 });
    }
}
