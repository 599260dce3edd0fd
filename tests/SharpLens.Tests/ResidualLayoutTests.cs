using SharpLens.Tensors.IO;

namespace SharpLens.Tests;

/// <summary>
/// GPT-NeoX's parallel and sequential residual layouts. The ground truth is an independent float64
/// forward pass written here from the raw HF tensors with plain tensor ops (no bridge code, no fused
/// native attention): it is first checked against HuggingFace's logits for the parallel fixture, then
/// used for a sequential variant of the same weights.
/// </summary>
public class ResidualLayoutTests
{
    private static string SequentialPythia()
    {
        var dir = Directory.CreateTempSubdirectory("sharplens-seq-pythia").FullName;
        var source = Fixtures.Path("tiny-pythia");
        File.Copy(Path.Combine(source, "model.safetensors"), Path.Combine(dir, "model.safetensors"));
        var config = File.ReadAllText(Path.Combine(source, "config.json")).Replace("\"use_parallel_residual\": true", "\"use_parallel_residual\": false");
        Assert.That(config, Does.Contain("\"use_parallel_residual\": false"));
        File.WriteAllText(Path.Combine(dir, "config.json"), config);
        return dir;
    }

    /// <summary>GPT-NeoX written out longhand, in float64.</summary>
    private static Tensor ReferenceNeoX(IReadOnlyDictionary<string, Tensor> raw, Tensor tokens, bool parallel)
    {
        const int layers = 2, heads = 4, dHead = 16, rotary = 4;
        Tensor P(string name) => raw[name].To(ScalarType.Float64);
        Tensor LayerNorm(Tensor x, string prefix) => Functional.LayerNorm(x, [64], P(prefix + ".weight"), P(prefix + ".bias"));
        Tensor Linear(Tensor x, string prefix) => x.Matmul(P(prefix + ".weight").Transpose(0, 1)) + P(prefix + ".bias");
        var (batch, pos) = (tokens.Size(0), tokens.Size(1));

        // Rotary tables: angle(p, i) = p / 10000^(2i / rotary), duplicated for the two halves.
        var angles = new double[pos * rotary];
        for (var p = 0; p < pos; p++)
            for (var i = 0; i < rotary; i++)
                angles[p * rotary + i] = p / Math.Pow(10000, 2.0 * (i % (rotary / 2)) / rotary);
        var theta = Torch.FromArray(angles, 1, pos, 1, rotary);
        Tensor Rotate(Tensor x)  // x [b, p, h, d]
        {
            var r = x.Narrow(3, 0, rotary);
            var half = Torch.Cat([-r.Narrow(3, rotary / 2, rotary / 2), r.Narrow(3, 0, rotary / 2)], 3);
            return Torch.Cat([r * theta.Cos() + half * theta.Sin(), x.Narrow(3, rotary, dHead - rotary)], 3);
        }

        var causal = Torch.Ones([pos, pos], ScalarType.Bool);
        using (var upper = Torch.Ones(pos, pos)) causal = causal.LogicalAnd(Torch.Arange(pos).Unsqueeze(1).Lt(Torch.Arange(pos).Unsqueeze(0)));
        var x = P("gpt_neox.embed_in.weight").IndexSelect(0, tokens.Reshape(-1)).View(batch, pos, 64);
        for (var l = 0; l < layers; l++)
        {
            var pre = $"gpt_neox.layers.{l}";
            var qkv = Linear(LayerNorm(x, pre + ".input_layernorm"), pre + ".attention.query_key_value").View(batch, pos, heads, 3 * dHead);
            var q = Rotate(qkv.Narrow(3, 0, dHead));
            var k = Rotate(qkv.Narrow(3, dHead, dHead));
            var v = qkv.Narrow(3, 2 * dHead, dHead);
            var scores = q.Permute(0, 2, 1, 3).Matmul(k.Permute(0, 2, 3, 1)) / Math.Sqrt(dHead);
            var pattern = scores.MaskedFill(causal, double.NegativeInfinity).Softmax(-1);
            var z = pattern.Matmul(v.Permute(0, 2, 1, 3)).Permute(0, 2, 1, 3).Reshape(batch, pos, 64);
            var attn = Linear(z, pre + ".attention.dense");
            Tensor Mlp(Tensor input) =>
                Linear(Linear(LayerNorm(input, pre + ".post_attention_layernorm"), pre + ".mlp.dense_h_to_4h").Gelu(), pre + ".mlp.dense_4h_to_h");
            if (parallel)
            {
                x = x + attn + Mlp(x);
            }
            else
            {
                var mid = x + attn;
                x = mid + Mlp(mid);
            }
        }
        return LayerNorm(x, "gpt_neox.final_layer_norm").Matmul(P("embed_out.weight").Transpose(0, 1));
    }

    [Test]
    public void ReferenceForwardMatchesHuggingFaceOnTheParallelFixture()
    {
        using var scope = Torch.NewScope();
        var raw = SafeTensors.Load(Path.Combine(Fixtures.Path("tiny-pythia"), "model.safetensors"));
        var reference = SafeTensors.Load(Path.Combine(Fixtures.Path("tiny-pythia"), "reference.safetensors"));
        var logits = ReferenceNeoX(raw, reference["input_ids"], parallel: true);
        Assert.That((logits - reference["logits"].To(ScalarType.Float64)).Abs().Max().ToDouble(), Is.LessThan(1e-4));
    }

    [TestCase(true)]
    [TestCase(false)]
    public void BridgeMatchesTheReferenceForBothResidualLayouts(bool parallel)
    {
        using var scope = Torch.NewScope();
        var dir = parallel ? Fixtures.Path("tiny-pythia") : SequentialPythia();
        var raw = SafeTensors.Load(Path.Combine(dir, "model.safetensors"));
        var tokens = SafeTensors.Load(Path.Combine(Fixtures.Path("tiny-pythia"), "reference.safetensors"))["input_ids"];
        using var bridge = TransformerBridge.Load(dir, new BridgeOptions { DType = ScalarType.Float64 });
        Assert.That(bridge.Config.ParallelAttnMlp, Is.EqualTo(parallel));
        Assert.That(bridge.HookDict.ContainsKey("blocks.0.hook_resid_mid"), Is.EqualTo(!parallel), "resid_mid exists only with a sequential residual");
        var expected = ReferenceNeoX(raw, tokens, parallel);
        var (logits, cache) = bridge.RunWithCache(tokens);
        using (cache)
        {
            Assert.That((logits - expected).Abs().Max().ToDouble(), Is.LessThan(1e-10));
            // Sequential: resid_mid is resid_pre + attn_out, and resid_post adds the MLP of resid_mid.
            Assert.That(cache.ContainsKey("blocks.0.hook_resid_mid"), Is.EqualTo(!parallel));
            if (!parallel)
            {
                var mid = cache["resid_pre", 1] - cache["resid_mid", 1];
                Assert.That((mid + cache["attn_out", 1]).Abs().Max().ToDouble(), Is.LessThan(1e-12));
                Assert.That((cache["resid_mid", 1] + cache["mlp_out", 1] - cache["resid_post", 1]).Abs().Max().ToDouble(), Is.LessThan(1e-12));
            }
        }
        if (!parallel) Directory.Delete(dir, recursive: true);
    }
}
