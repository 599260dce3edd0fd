using SharpLens.Testing;
using SharpLens.Generation;

namespace SharpLens.Tests;

/// <summary>
/// Steering vectors and mean/resample ablation against the same intervention made another way: steering the residual stream
/// entering layer 0 equals adding the vector to the embedding (GPT-2's resid_pre 0 is embed + pos_embed), leaves earlier
/// positions alone (causality) and steers greedy generation exactly as it steers the forward pass; a mean ablation equals
/// overwriting the head with the mean computed from a cache; a resample ablation from a one-row reference equals patching
/// that row in. float64, 1e-10.
/// </summary>
public class InterventionTests : FixtureTest
{
    public InterventionTests() : base("tiny-gpt2") { }

    private TransformerBridge Load() => TransformerBridge.Load(ModelDir, new BridgeOptions { DType = ScalarType.Float64 });

    private static Tensor Direction()
    {
        var rng = new Random(3);
        return Torch.FromArray(Enumerable.Range(0, 64).Select(_ => rng.NextDouble() - 0.5).ToArray());
    }

    [Test]
    public void SteeringTheResidualStreamEqualsSteeringTheEmbedding()
    {
        var live = LiveTensorCount.Settled();
        using (var scope = Torch.NewScope())
        {
            using var bridge = Load();
            var direction = Direction();
            Tensor steered;
            using (bridge.AddSteeringVector("blocks.0.hook_resid_pre", direction, 3.0, [5, -1])) steered = bridge.Forward(Tokens);
            var plain = bridge.Forward(Tokens);
            var expected = bridge.RunWithHooks(Tokens, [("hook_embed", (a, _) =>
            {
                var add = Torch.Zeros(a.Shape, a.DType);
                foreach (var p in new[] { 5, 11 }) add.Narrow(1, p, 1).CopyFrom((direction * 3.0).Expand(2, 1, 64));
                return a + add;
            })]);
            Assert.That(Fixtures.MaxAbsDiff(expected, steered), Is.LessThan(1e-10));
            Assert.That(Fixtures.MaxAbsDiff(plain.Narrow(1, 0, 5), steered.Narrow(1, 0, 5)), Is.EqualTo(0).Within(1e-12), "positions before the first steered one are untouched");
            Assert.That(Fixtures.MaxAbsDiff(plain.Narrow(1, 5, 1), steered.Narrow(1, 5, 1)), Is.GreaterThan(1e-3));
            // z steering: a [head, d_head] direction, all positions.
            using (bridge.AddSteeringVector("blocks.1.attn.hook_z", Torch.Ones([4, 16], ScalarType.Float64), 0.5))
                Assert.That(Fixtures.MaxAbsDiff(plain, bridge.Forward(Tokens)), Is.GreaterThan(1e-3));
            var e = Assert.Throws<HookException>(() =>
            {
                using (bridge.AddSteeringVector("blocks.0.hook_resid_pre", Torch.Ones([3], ScalarType.Float64))) bridge.Forward(Tokens);
            });
            Assert.That(e!.Message, Does.Contain("3 elements"));
            Assert.That(bridge.HookDict.Values.Sum(h => h.HookCount), Is.EqualTo(0), "hooks removed");
        }
        Assert.That(Torch.LiveTensors, Is.EqualTo(live), "tensors leaked");
    }

    [Test]
    public void SteeringActsInGenerationAsInTheForwardPass()
    {
        using var scope = Torch.NewScope();
        using var bridge = Load();
        var prompt = Tokens.Narrow(0, 0, 1).Narrow(1, 0, 6);
        using (bridge.AddSteeringVector("blocks.1.hook_resid_pre", Direction(), 8.0, [-1]))
        {
            var generated = bridge.Generate(prompt, 3, temperature: 0).ToArray<long>();
            // Each greedy step is the argmax of the steered forward pass over the tokens so far (the newest one steered).
            for (var step = 0; step < 3; step++)
            {
                var so_far = Torch.FromArray(generated.Take(6 + step).ToArray(), 1, 6 + step);
                var next = bridge.Forward(so_far).Select(1, 5 + step).Argmax(-1).ToInt64();
                Assert.That(generated[6 + step], Is.EqualTo(next), $"step {step}");
            }
        }
    }

    [Test]
    public void MeanAblationReplacesTheHeadByItsReferenceMean()
    {
        using var scope = Torch.NewScope();
        using var bridge = Load();
        var reference = PatchingTests.Roll(Tokens);
        var (_, cache) = bridge.RunWithCache(reference, n => n == "blocks.0.attn.hook_z");
        using (cache)
        {
            var mean = cache["blocks.0.attn.hook_z"].Mean(0);  // [pos, head, d_head]
            Assert.That(Fixtures.MaxAbsDiff(mean, Ablation.MeanActivation(bridge, "blocks.0.attn.hook_z", reference)), Is.LessThan(1e-14));
            Tensor ablated;
            using (bridge.AddMeanAblation("blocks.0.attn.hook_z", reference, heads: [2])) ablated = bridge.Forward(Tokens);
            var expected = bridge.RunWithHooks(Tokens, [("blocks.0.attn.hook_z", (a, _) =>
            {
                var copy = a.Clone();
                copy.Narrow(2, 2, 1).CopyFrom(mean.Narrow(1, 2, 1).Unsqueeze(0).Expand(2, 12, 1, 16));
                return copy;
            })]);
            Assert.That(Fixtures.MaxAbsDiff(expected, ablated), Is.LessThan(1e-10));
            Tensor overPositions;
            using (bridge.AddMeanAblation("blocks.0.hook_mlp_out", reference, overPositions: true)) overPositions = bridge.Forward(Tokens);
            var mlpMean = Ablation.MeanActivation(bridge, "blocks.0.hook_mlp_out", reference, overPositions: true);
            Assert.That(mlpMean.Shape, Is.EqualTo(new long[] { 64 }));
            var expectedMlp = bridge.RunWithHooks(Tokens, [("blocks.0.hook_mlp_out", (a, _) => mlpMean.Expand(a.Shape).Contiguous())]);
            Assert.That(Fixtures.MaxAbsDiff(expectedMlp, overPositions), Is.LessThan(1e-10));
        }
        Assert.That(bridge.HookDict.Values.Sum(h => h.HookCount), Is.EqualTo(0));
    }

    [Test]
    public void ResampleAblationPatchesInReferenceRows()
    {
        using var scope = Torch.NewScope();
        using var bridge = Load();
        var one = PatchingTests.Roll(Tokens).Narrow(0, 1, 1);
        var (_, cache) = bridge.RunWithCache(one, n => n == "blocks.1.hook_attn_out");
        using (cache)
        {
            var row = cache["blocks.1.hook_attn_out"];
            Tensor resampled;
            using (bridge.AddResampleAblation("blocks.1.hook_attn_out", one, seed: 1, positions: [3, 4])) resampled = bridge.Forward(Tokens);
            var expected = bridge.RunWithHooks(Tokens, [("blocks.1.hook_attn_out", (a, _) =>
            {
                var copy = a.Clone();
                copy.Narrow(1, 3, 2).CopyFrom(row.Narrow(1, 3, 2).Expand(2, 2, 64));
                return copy;
            })]);
            Assert.That(Fixtures.MaxAbsDiff(expected, resampled), Is.LessThan(1e-10));
        }
        // Seeded: the same seed draws the same rows.
        var reference = PatchingTests.Roll(Tokens);
        Tensor a1, a2;
        using (bridge.AddResampleAblation("blocks.0.hook_resid_mid", reference, seed: 9)) a1 = bridge.Forward(Tokens);
        using (bridge.AddResampleAblation("blocks.0.hook_resid_mid", reference, seed: 9)) a2 = bridge.Forward(Tokens);
        Assert.That(Fixtures.MaxAbsDiff(a1, a2), Is.EqualTo(0));
    }
}
