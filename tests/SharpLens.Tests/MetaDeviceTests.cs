using SharpLens.Verification;

namespace SharpLens.Tests;

/// <summary>
/// Device placement, checked on any machine: libtorch's meta device holds shapes without data and refuses to mix devices
/// as a GPU does ("Expected all tensors to be on the same device"), so a forward and a backward of every architecture on
/// meta fail if anything the forward pass creates (positions, masks, rotary tables, constants, indices) lands on the CPU.
/// The custom kernels run on CPU tensors only; on meta (as on a GPU without its kernels) the composition takes over.
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
}
