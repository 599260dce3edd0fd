using SharpLens.Testing;
namespace SharpLens.Tests;

/// <summary>
/// Built-in hook actions on the bridge: each is compared with the same effect written as a user callback (which the
/// earlier suites check against the fixtures), plus ordering with callbacks, errors, and native gradient capture.
/// </summary>
[TestFixtureSource(typeof(Fixtures), nameof(Fixtures.AllModels))]
public class HookActionTests(string model) : FixtureTest(model)
{
    private static Tensor LastLogitsSum(Tensor logits) => logits.Select(1, -1).Sum();

    [Test]
    public void CacheActionHoldsWhatACallbackSees()
    {
        using var bridge = TransformerBridge.Load(ModelDir);
        using var scope = Torch.NewScope();
        using var cache = new ActivationCache(bridge);
        var seen = new Dictionary<string, Tensor>();
        bridge.AddHook(_ => true, HookAction.Cache(cache));
        bridge.AddHook(_ => true, (a, hp) => { seen[hp.Name] = a.Detach().MoveToOuterScope(); return null; });
        bridge.Forward(Tokens);  // its own scope ends here; MoveToOuterScope kept the callback's tensors in ours
        Assert.That(cache.Keys, Is.EquivalentTo(seen.Keys));
        foreach (var (name, t) in seen)
        {
            Assert.That(cache[name].SharesStorageWith(t), $"{name}: cached without a copy");
            Assert.That(MaxAbsDiff(t, cache[name]), Is.EqualTo(0), name);
        }
    }

    [Test]
    public void ReplaceActionEqualsAReplacingCallback()
    {
        using var bridge = TransformerBridge.Load(ModelDir);
        using var scope = Torch.NewScope();
        const string name = "blocks.0.attn.hook_pattern";
        var (_, cache) = bridge.RunWithCache(Tokens, n => n == name);
        using (cache)
        {
            var replacement = cache[name] * 0.5;  // any tensor of the right shape will do
            var clean = bridge.Forward(Tokens);
            Tensor expected;
            using (bridge.Hooks((name, (_, _) => replacement))) expected = bridge.Forward(Tokens);
            using var action = HookAction.Replace(replacement);
            using (bridge.AddHook(name, action))
                Assert.That(MaxAbsDiff(expected, bridge.Forward(Tokens)), Is.EqualTo(0));
            Assert.That(MaxAbsDiff(clean, expected), Is.GreaterThan(1e-3), "the replacement changes the logits");
        }
    }

    [Test]
    public void AblateActionEqualsHandWrittenAblation()
    {
        using var bridge = TransformerBridge.Load(ModelDir);
        using var scope = Torch.NewScope();
        const string z = "blocks.1.attn.hook_z";
        var heads = Enumerable.Range(0, bridge.Config.NHeads).Where(h => h % 2 == 1).Select(h => (long)h).ToArray();
        // By hand: multiply by a [head] mask that is 0 at the odd heads, at positions 0 and the last one.
        Tensor HandZero(Tensor a)
        {
            var keep = Torch.Ones(a.Shape, a.DType);
            var headMask = Torch.FromArray(Enumerable.Range(0, (int)a.Size(2)).Select(h => h % 2 == 1 ? 0.0 : 1.0).ToArray(), 1, 1, a.Size(2), 1).To(a.DType);
            var posMask = Torch.FromArray(Enumerable.Range(0, (int)a.Size(1)).Select(p => p == 0 || p == a.Size(1) - 1 ? 1.0 : 0.0).ToArray(), 1, a.Size(1), 1, 1).To(a.DType);
            return a * (keep - (keep - headMask) * posMask);
        }
        var expected = bridge.RunWithHooks(Tokens, [(z, (a, _) => HandZero(a))]);
        using (bridge.AddHook(z, HookAction.Ablate(heads, positions: [0, -1])))
            Assert.That(MaxAbsDiff(expected, bridge.Forward(Tokens)), Is.EqualTo(0));

        // Mean ablation of the pattern's head 0 at query position 3, to the batch mean of the clean pattern.
        const string p = "blocks.0.attn.hook_pattern";
        var (_, clean) = bridge.RunWithCache(Tokens, n => n == p);
        using (clean)
        {
            var mean = clean[p].Mean(0);  // [head, q, k]
            using var cache = new ActivationCache(bridge);
            using var action = HookAction.Ablate(heads: [0], positions: [3], mean: mean);
            using (bridge.AddHook(p, action))
            using (bridge.AddHook(p, HookAction.Cache(cache)))
                bridge.Forward(Tokens);
            var got = cache[p];
            for (var b = 0; b < Tokens.Size(0); b++)
            {
                Assert.That(MaxAbsDiff(mean.Select(0, 0).Select(0, 3), got.Select(0, b).Select(0, 0).Select(0, 3)), Is.EqualTo(0), "ablated row");
                Assert.That(MaxAbsDiff(clean[p].Select(0, b).Select(0, 1), got.Select(0, b).Select(0, 1)), Is.EqualTo(0), "other heads untouched");
                Assert.That(MaxAbsDiff(clean[p].Select(0, b).Select(0, 0).Select(0, 2), got.Select(0, b).Select(0, 0).Select(0, 2)), Is.EqualTo(0), "other positions untouched");
            }
        }
    }

    [Test]
    public void NativeGradientCaptureEqualsCallbackGradientsAndKeepsRegistrationOrder()
    {
        using var bridge = TransformerBridge.Load(ModelDir);
        using var scope = Torch.NewScope();
        using var cache = new ActivationCache(bridge);
        var seen = new Dictionary<string, Tensor>();
        bridge.AddHook(_ => true, HookAction.CacheGradient(cache));
        LastLogitsSum(bridge.Forward(Tokens)).Backward();
        bridge.ResetHooks();
        bridge.AddBackwardHook(_ => true, (g, hp) => { seen[hp.Name] = g.Detach(); return null; });
        LastLogitsSum(bridge.Forward(Tokens)).Backward();
        bridge.ResetHooks();
        Assert.That(cache.Keys, Is.EquivalentTo(seen.Keys.Select(k => k + ActivationCache.GradientSuffix)));
        foreach (var (name, g) in seen)
            Assert.That(MaxAbsDiff(g, cache[name + ActivationCache.GradientSuffix]), Is.EqualTo(0), name);

        // Mixed with a callback on the same point: each sees what the hooks before it returned.
        const string z = "blocks.0.attn.hook_z";
        using var before = new ActivationCache(bridge);
        using var after = new ActivationCache(bridge);
        bridge.AddHook(z, HookAction.CacheGradient(before));
        bridge.AddBackwardHook(z, (g, _) => g * 3);
        bridge.AddHook(z, HookAction.CacheGradient(after));
        LastLogitsSum(bridge.Forward(Tokens)).Backward();
        // With hooks on z only, the later layers run the fused attention rather than the staged one: float32 rounding,
        // a few 2^-24 per accumulated term relative to the gradient's size, so 1e-5 of its magnitude.
        var magnitude = Math.Max(1, seen[z].Abs().Max().ToDouble());
        Assert.That(MaxAbsDiff(seen[z], before[z + "_grad"]), Is.LessThan(1e-5 * magnitude));
        Assert.That(MaxAbsDiff(before[z + "_grad"] * 3, after[z + "_grad"]), Is.EqualTo(0));
    }

    [Test]
    public void ACacheReadBetweenTwoBackwardPassesSeesTheLaterGradient()
    {
        using var bridge = TransformerBridge.Load(ModelDir);
        using var scope = Torch.NewScope();
        using var cache = new ActivationCache(bridge);
        const string z = "blocks.0.attn.hook_z_grad";
        using (bridge.AddHook("blocks.0.attn.hook_z", HookAction.CacheGradient(cache)))
        {
            LastLogitsSum(bridge.Forward(Tokens)).Backward();
            var first = cache[z].Clone();
            Assert.That(cache[z].SharesStorageWith(cache[z]), "repeated reads with nothing new return the cached tensor");
            (LastLogitsSum(bridge.Forward(Tokens)) * 2).Backward();
            Assert.That(MaxAbsDiff(first * 2, cache[z]), Is.LessThan(1e-5), "the second pass's gradient replaced the first");
        }
    }

    [Test]
    public void ActionErrorsNameTheHookPointAndShapes()
    {
        using var bridge = TransformerBridge.Load(ModelDir);
        using var scope = Torch.NewScope();
        using (bridge.AddHook("blocks.0.hook_resid_pre", HookAction.Ablate(heads: [0])))
        {
            var e = Assert.Throws<HookException>(() => bridge.Forward(Tokens))!;
            Assert.That(e.HookName, Is.EqualTo("blocks.0.hook_resid_pre"));
            Assert.That(e.Message, Does.Contain("no head dimension"));
        }
        using (bridge.AddHook("blocks.0.attn.hook_z", HookAction.Ablate(heads: [bridge.Config.NHeads])))
        {
            var e = Assert.Throws<HookException>(() => bridge.Forward(Tokens))!;
            Assert.That(e.Message, Does.Contain($"head index {bridge.Config.NHeads}").And.Contain("blocks.0.attn.hook_z"));
        }
        using (var wrong = HookAction.Replace(Torch.Zeros([1, 2, 3])))
        using (bridge.AddHook("hook_embed", wrong))
        {
            var e = Assert.Throws<HookException>(() => bridge.Forward(Tokens))!;
            Assert.That(e.Message, Does.Contain("[1, 2, 3]").And.Contain("hook_embed"));
        }
        var disposed = HookAction.Replace(Torch.Zeros([2, 12, bridge.Config.DModel]));
        disposed.Dispose();
        using (bridge.AddHook("hook_embed", disposed))
            Assert.Throws<HookException>(() => bridge.Forward(Tokens));
        Assert.Throws<InvalidOperationException>(() => bridge.AddHook("hook_tokens", HookAction.CacheGradient(new ActivationCache(bridge))));
    }

    [Test]
    public void RunWithCacheWithGradientsLeavesNoLiveTensorsBehind()
    {
        using var bridge = TransformerBridge.Load(ModelDir);
        GC.Collect();
        GC.WaitForPendingFinalizers();
        var before = LiveTensorCount.Settled();
        for (var i = 0; i < 3; i++)
        {
            var (logits, cache) = bridge.RunWithCache(Tokens, null, null, LastLogitsSum);
            Assert.That(cache.Keys.Count(k => k.EndsWith("_grad")), Is.GreaterThan(20));
            logits.Dispose();
            cache.Dispose();
        }
        foreach (var p in bridge.Parameters()) p.Grad = null;
        Assert.That(Torch.LiveTensors, Is.EqualTo(before));
    }
}
