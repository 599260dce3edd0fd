using SharpLens.Testing;
using System.Text.Json.Nodes;
using SharpLens.Benchmarks;
using SharpLens.Loading;
using SharpLens.Tensors.IO;

namespace SharpLens.Tests;

/// <summary>Random checkpoints of any architecture load and are initialised as HuggingFace does; the pass benchmark reports what it ran.</summary>
public class RandomCheckpointTests
{
    private static JsonObject Small(JsonObject config, params (string Key, JsonNode Value)[] sizes)
    {
        foreach (var (k, v) in sizes) config[k] = v;
        return config;
    }

    [Test]
    public void Gpt2AndNeoXShapedCheckpointsLoadWithHuggingFaceInitialisation()
    {
        var configs = new[]
        {
            Small(RandomCheckpoint.Gpt2Small(), ("n_layer", 2), ("n_embd", 48), ("n_head", 4), ("vocab_size", 300), ("n_positions", 64)),
            Small(RandomCheckpoint.Pythia160m(), ("num_hidden_layers", 2), ("hidden_size", 64), ("num_attention_heads", 4), ("intermediate_size", 96),
                ("vocab_size", 300), ("max_position_embeddings", 64)),
        };
        foreach (var config in configs)
        {
            var dir = Directory.CreateTempSubdirectory("sharplens-random").FullName;
            try
            {
                RandomCheckpoint.Write(dir, config, seed: 5);
                using var bridge = TransformerBridge.Load(dir);
                using var scope = Torch.NewScope();
                var raw = SafeTensors.Load(Path.Combine(dir, "model.safetensors"));
                foreach (var (name, p) in bridge.NamedParameters())
                {
                    var values = p.To(ScalarType.Float64);
                    if (name.Contains("layernorm.weight") || name.Contains("ln_") && name.EndsWith(".weight") || name.Contains("layer_norm.weight"))
                        Assert.That((values - 1).Abs().Max().ToDouble(), Is.EqualTo(0), name);
                    else if (p.Dim == 1)
                        Assert.That(values.Abs().Max().ToDouble(), Is.EqualTo(0), name);
                    else if (p.NumEl > 2000)
                        Assert.That(values.Std().ToDouble(), Is.EqualTo(0.02).Within(0.002), name);
                    Assert.That(raw.ContainsKey(name), name);
                }
                Assert.That(bridge.Forward(Torch.Arange(10).View(1, 10)).IsFinite().All().ToBoolean(), Is.True);
            }
            finally
            {
                Directory.Delete(dir, recursive: true);
            }
        }
    }

    [Test]
    public void PassBenchmarkTimesEveryPassAndCountsTheHooks()
    {
        using var bridge = TransformerBridge.Load(Fixtures.Path("tiny-gpt2"));
        using var scope = Torch.NewScope();
        var start = LiveTensorCount.Settled();
        var t = PassBenchmark.Run(bridge, Torch.Arange(24).View(2, 12), reps: 2);
        Assert.That(new[] { t.ForwardSeconds, t.RunWithCacheSeconds, t.ForwardNoOpHooksSeconds, t.ForwardBackwardSeconds, t.ForwardBackwardAllBackwardHooksSeconds }, Is.All.GreaterThan(0));
        Assert.That(t.Tokens, Is.EqualTo(24));
        Assert.That(t.HooksCached, Is.EqualTo(bridge.HookDict.Values.Count(h => h.SwitchName is null)));
        Assert.That(t.BackwardHooks, Is.GreaterThanOrEqualTo(t.HooksCached), "every hook point's gradient was captured (ln1's fire three times)");
        Assert.That(t.ToJson(), Does.Contain("\"fwd_bwd_all_bwd_hooks_s\"").And.Contain("\"forward_matmul_flop\""));
        // GPT-2's matrix work by hand: per layer c_attn d·3d, attn c_proj d·d, c_fc d·d_mlp, mlp c_proj d_mlp·d, each 2·tokens FLOP per
        // weight element; the unembedding vocab·d; causal attention 2·2·batch·heads·d_head·(12·13/2) per layer.
        var c = bridge.Config;
        long d = c.DModel, perLayer = d * 3 * d + d * d + 2 * d * c.DMlp;
        var expected = 2.0 * 24 * (c.NLayers * perLayer + (long)c.DVocab * d) + 4.0 * c.NLayers * 2 * c.NHeads * c.DHead * (12 * 13 / 2);
        Assert.That(t.ForwardMatmulFlop, Is.EqualTo(expected));
        Assert.That(t.ForwardTflopPerSecond, Is.EqualTo(expected / t.ForwardSeconds / 1e12).Within(1e-9).Percent);
        Assert.That(bridge.Parameters().All(p => p.Grad is null), "the benchmark leaves no gradients behind");
        Assert.That(Torch.LiveTensors, Is.EqualTo(start + 2), "only the arange and its view created here are alive");
    }
}
