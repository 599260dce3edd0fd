using SharpLens.Tensors.Optim;
using SharpLens.Verification;

namespace SharpLens.Tests;

/// <summary>
/// Device placement, checked on any machine: libtorch's meta device holds shapes without data and refuses to mix devices
/// as a GPU does ("Expected all tensors to be on the same device"), so a forward and a backward of every architecture on
/// meta fail if anything the forward pass creates (positions, masks, rotary tables, constants, indices) lands on the CPU.
/// The custom kernels run on CPU tensors only; on meta (as on a GPU without its kernels) the composition takes over.
/// Beyond the forward pass: key/value-cached steps, optimizer steps, steering and ablation hooks, and activation patching.
/// </summary>
[TestFixtureSource(typeof(Fixtures), nameof(Fixtures.AllModels))]
public class MetaDeviceTests(string model)
{
    private TransformerBridge LoadOnMeta(bool allOptional = false)
    {
        var bridge = TransformerBridge.Load(Fixtures.Path(model), new BridgeOptions { AllOptionalHooks = allOptional });
        return bridge.To(Device.Meta);
    }

    private static Tensor MetaTokens(long batch, long pos) => Torch.Zeros([batch, pos], ScalarType.Int64, Device.Meta);

    [Test]
    public void ForwardAndBackwardRunOnMetaWithEveryParameterThere()
    {
        using var bridge = LoadOnMeta();
        using var scope = Torch.NewScope();
        Assert.That(bridge.Parameters().All(p => p.Device == Device.Meta), Is.True, "To moved every parameter");
        Assert.That(bridge.Config.Device, Is.EqualTo(Device.Meta), "and the config says so");
        var logits = bridge.Forward(MetaTokens(2, 9));
        Assert.That(logits.Device, Is.EqualTo(Device.Meta));
        Assert.That(logits.Shape, Is.EqualTo(new long[] { 2, 9, bridge.Config.DVocab }));
        bridge.Loss(MetaTokens(2, 9)).Backward();
        Assert.That(bridge.Parameters().All(p => p.Grad is { } g && g.Device == Device.Meta), Is.True, "every gradient on meta");
        Assert.That(bridge.TlParameters().All(w => w.Device == Device.Meta), Is.True, "TransformerLens views follow the leaves");
    }

    [Test]
    public void EveryHookPointForwardAndBackwardWithPaddingRunsOnMeta()
    {
        using var bridge = LoadOnMeta(allOptional: true);
        using var scope = Torch.NewScope();
        var mask = Torch.Ones([2, 7], ScalarType.Int64, Device.Meta);
        // Hooks on scores and pattern take the staged attention path; the cache's gradient capture the backward hooks.
        var (logits, cache) = bridge.RunWithCache(MetaTokens(2, 7), null, mask, l => l.Select(1, -1).Sum());
        // The same run on the CPU says which hook points fire (and which gradients reach them).
        using var cpuBridge = TransformerBridge.Load(Fixtures.Path(model), new BridgeOptions { AllOptionalHooks = true });
        var (_, cpuCache) = cpuBridge.RunWithCache(Torch.Zeros([2, 7], ScalarType.Int64), null, Torch.Ones([2, 7], ScalarType.Int64),
            l => l.Select(1, -1).Sum());
        using (cpuCache)
        using (cache)
        {
            Assert.That(logits.Device, Is.EqualTo(Device.Meta));
            Assert.That(cache.Keys, Is.EquivalentTo(cpuCache.Keys), "every hook point and gradient the CPU run caches");
            Assert.That(cache.Keys.Count(k => !k.EndsWith("_grad")), Is.GreaterThan(30));
            Assert.That(cache.Values.All(t => t.Device == Device.Meta), Is.True);
            foreach (var key in cache.Keys) Assert.That(cache[key].Shape, Is.EqualTo(cpuCache[key].Shape), key);
        }
    }

    [Test]
    public void ReferenceAndVerificationRunOnMeta()
    {
        using var bridge = VerificationSuite.Prepare(TransformerBridge.Load(Fixtures.Path(model)));
        using var reference = HookedTransformer.FromBridge(bridge.To(Device.Meta));
        using var scope = Torch.NewScope();
        Assert.That(reference.Parameters().All(p => p.Device == Device.Meta), Is.True);
        var logits = reference.Forward(MetaTokens(1, 5));
        Assert.That(logits.Device, Is.EqualTo(Device.Meta));
        reference.Loss(MetaTokens(1, 5)).Backward();
    }

    [Test]
    public void KeyValueCachedStepsRunOnMeta()
    {
        using var bridge = LoadOnMeta();
        using var scope = Torch.NewScope();
        using var cache = bridge.NewKeyValueCache();
        bridge.Forward(MetaTokens(2, 5), cache);
        var step = bridge.Forward(MetaTokens(2, 1), cache);
        Assert.That(step.Device, Is.EqualTo(Device.Meta));
        Assert.That(step.Shape, Is.EqualTo(new long[] { 2, 1, bridge.Config.DVocab }));
        Assert.That(cache.Length, Is.EqualTo(6));
        Assert.That(Enumerable.Range(0, bridge.Config.NLayers).All(l => cache.Keys(l)!.Device == Device.Meta && cache.Values(l)!.Device == Device.Meta),
            Is.True, "the cached keys and values stay on the model's device");
    }

    [Test]
    public void OptimizerStepsRunOnMeta()
    {
        using var bridge = LoadOnMeta();
        using var optimizer = new AdamW(bridge.Parameters(), lr: 1e-3, weightDecay: 0.01);
        for (var step = 0; step < 2; step++)
        {
            using var scope = Torch.NewScope();
            optimizer.ZeroGrad();
            bridge.Loss(MetaTokens(2, 6)).Backward();
            optimizer.Step();
        }
        Assert.That(bridge.Parameters().All(p => p.Device == Device.Meta), Is.True, "the step leaves every parameter on meta");
        Assert.That(optimizer.State(0, 0, "exp_avg")!.Device, Is.EqualTo(Device.Meta), "and keeps its moments there");
    }

    [Test]
    public void SteeringAblationAndPatchingRunOnMeta()
    {
        using var bridge = LoadOnMeta();
        using var scope = Torch.NewScope();
        // A direction made on the CPU, as a user would: the hook moves it to the activation's device.
        var direction = Torch.Ones([bridge.Config.DModel]);
        using (bridge.AddSteeringVector("blocks.0.hook_resid_pre", direction, 2.0, positions: [-1]))
        using (bridge.AddMeanAblation("blocks.0.hook_resid_post", MetaTokens(3, 4)))
            Assert.That(bridge.Forward(MetaTokens(2, 4)).Device, Is.EqualTo(Device.Meta));

        var (_, clean) = bridge.RunWithCache(MetaTokens(1, 4));
        using (clean)
        {
            PatchingMetric metric = logits => logits.Select(1, -1).Sum();
            var result = Patching.GetActPatchResidPre(bridge, MetaTokens(1, 4), clean, metric);
            Assert.That(result.Device, Is.EqualTo(Device.Meta));
            Assert.That(result.Shape, Is.EqualTo(new long[] { bridge.Config.NLayers, 4 }));
        }
    }
}
