using SharpLens.Testing;
using SharpLens.Generation;

namespace SharpLens.Tests;

/// <summary>
/// The key/value cache against full forward passes in float64 (the same math over a different split of the sequence, so
/// the same logits to float64 rounding): a prompt then single tokens, for every attention variant (learned positions, partial
/// rotary, grouped-query, sliding window shorter than the sequence, soft-capping, fused QKV views); hooks firing on the new
/// positions only; greedy generation giving the same tokens as without the cache; the cache's refusals; its memory.
/// </summary>
[TestFixture("tiny-gpt2")]
[TestFixture("tiny-pythia")]
[TestFixture("tiny-llama")]
[TestFixture("tiny-mistral")]
[TestFixture("tiny-gemma2")]
[TestFixture("tiny-phi3")]
public class KeyValueCacheTests(string model)
{
    private static readonly long[] Sequence = [17, 401, 5, 993, 250, 3, 77, 12, 640, 9, 31, 500, 2, 88];

    private TransformerBridge Load(ScalarType dtype = ScalarType.Float64) =>
        TransformerBridge.Load(Fixtures.Path(model), new BridgeOptions { DType = dtype });

    [Test]
    public void PromptThenSingleTokensEqualTheFullForward()
    {
        using var bridge = Load();
        bridge.Config.Float32Islands = false;  // float64 throughout: the comparison is of the math, to float64 rounding
        using var scope = Torch.NewScope();
        var full = bridge.Forward(Torch.FromArray(Sequence, 1, Sequence.Length));
        using var cache = bridge.NewKeyValueCache();
        const int prompt = 5;
        var first = bridge.Forward(Torch.FromArray(Sequence[..prompt], 1, prompt), cache);
        Assert.That(Fixtures.MaxAbsDiff(full.Narrow(1, 0, prompt), first), Is.LessThan(1e-12), "the prompt");
        for (var p = prompt; p < Sequence.Length; p++)
        {
            var step = bridge.Forward(Torch.FromArray(new[] { Sequence[p] }, 1, 1), cache);
            Assert.That(Fixtures.MaxAbsDiff(full.Narrow(1, p, 1), step), Is.LessThan(1e-12), $"position {p} (window and offset applied)");
        }
        Assert.That(cache.Length, Is.EqualTo(Sequence.Length));
        Assert.That(cache.Keys(0)!.Shape, Is.EqualTo(new long[] { 1, Sequence.Length, bridge.Config.NKeyValueHeads, bridge.Config.DHead }));
    }

    [Test]
    public void APassAHookBreaksLeavesTheCacheAsTheLastCompletedPassLeftIt()
    {
        using var bridge = Load();
        bridge.Config.Float32Islands = false;
        using var scope = Torch.NewScope();
        var full = bridge.Forward(Torch.FromArray(Sequence, 1, Sequence.Length));
        using var cache = bridge.NewKeyValueCache();
        bridge.Forward(Torch.FromArray(Sequence[..5], 1, 5), cache);
        // Fails in the last block, after every earlier block appended the new position's keys and values.
        var last = bridge.Config.NLayers - 1;
        using (bridge.AddHook($"blocks.{last}.hook_resid_post", (_, _) => throw new InvalidOperationException("broken hook")))
            Assert.That(() => bridge.Forward(Torch.FromArray(new[] { Sequence[5] }, 1, 1), cache), Throws.InstanceOf<HookException>());
        Assert.That(cache.Length, Is.EqualTo(5));
        for (var l = 0; l < bridge.Config.NLayers; l++)
            Assert.That(cache.Keys(l)!.Size(1) == 5 && cache.Values(l)!.Size(1) == 5, Is.True, $"layer {l} holds the 5 completed positions");
        // The same step again, now without the broken hook, continues the sequence exactly.
        var step = bridge.Forward(Torch.FromArray(new[] { Sequence[5] }, 1, 1), cache);
        Assert.That(Fixtures.MaxAbsDiff(full.Narrow(1, 5, 1), step), Is.LessThan(1e-12));
    }

    [Test]
    public void HooksSeeTheNewPositionsAndTheWholeCachedPattern()
    {
        using var bridge = Load(ScalarType.Float32);
        using var scope = Torch.NewScope();
        using var cache = bridge.NewKeyValueCache();
        bridge.Forward(Torch.FromArray(Sequence[..6], 1, 6), cache);
        var (logits, acts) = RunCached(bridge, cache);
        using (acts)
        {
            Assert.That(acts["blocks.0.hook_resid_pre"].Shape, Is.EqualTo(new long[] { 1, 2, bridge.Config.DModel }));
            Assert.That(acts["blocks.1.attn.hook_pattern"].Shape, Is.EqualTo(new long[] { 1, bridge.Config.NHeads, 2, 8 }));
            // The pattern of the new positions equals rows 6 and 7 of a full run's pattern.
            var (_, full) = bridge.RunWithCache(Torch.FromArray(Sequence[..8], 1, 8), n => n.EndsWith("hook_pattern"));
            using (full) Assert.That(Fixtures.MaxAbsDiff(full["blocks.1.attn.hook_pattern"].Narrow(2, 6, 2), acts["blocks.1.attn.hook_pattern"]), Is.LessThan(1e-5));
            Assert.That(logits.Shape, Is.EqualTo(new long[] { 1, 2, bridge.Config.DVocab }));
        }
    }

    /// <summary>Two more tokens through the cache with every hook point cached.</summary>
    private static (Tensor Logits, ActivationCache Cache) RunCached(TransformerBridge bridge, KeyValueCache kv)
    {
        var acts = new ActivationCache(bridge);
        using var handle = bridge.AddHook(_ => true, HookAction.Cache(acts));
        return (bridge.Forward(Torch.FromArray(Sequence[6..8], 1, 2), kv), acts);
    }

    [Test]
    public void GreedyGenerationGivesTheSameTokensWithAndWithoutTheCache()
    {
        using var bridge = Load(ScalarType.Float32);
        using var scope = Torch.NewScope();
        var prompt = Torch.FromArray(Sequence[..4], 1, 4);
        var cached = bridge.Generate(prompt, 20, temperature: 0).ToArray<long>();
        var uncached = bridge.Generate(prompt, 20, temperature: 0, useKeyValueCache: false).ToArray<long>();
        Assert.That(cached, Is.EqualTo(uncached));
        Assert.That(cached, Has.Length.EqualTo(24));
    }

    [Test]
    public void TheCacheRefusesWhatItCannotContinueAndFreesItsTensors()
    {
        using var bridge = Load(ScalarType.Float32);
        GC.Collect();
        GC.WaitForPendingFinalizers();
        var start = LiveTensorCount.Settled();
        using (var scope = Torch.NewScope())
        {
            var cache = bridge.NewKeyValueCache();
            bridge.Forward(Torch.FromArray(Sequence[..3], 1, 3), cache);
            Assert.That(() => bridge.Forward(Torch.FromArray(Sequence[..6], 2, 3), cache),
                Throws.ArgumentException.With.Message.Contain("holds 1 rows").And.Message.Contain("2"));
            var tooLong = Enumerable.Repeat(1L, bridge.Config.NCtx - 2).ToArray();
            Assert.That(() => bridge.Forward(Torch.FromArray(tooLong, 1, tooLong.Length), cache),
                Throws.ArgumentException.With.Message.Contain("context"));
            cache.Dispose();
            Assert.That(() => bridge.Forward(Torch.FromArray(new[] { 1L }, 1, 1), cache), Throws.InstanceOf<ObjectDisposedException>());
        }
        GC.Collect();
        GC.WaitForPendingFinalizers();
        Assert.That(Torch.LiveTensors, Is.EqualTo(start), "the cache and the passes left nothing behind");
    }
}
