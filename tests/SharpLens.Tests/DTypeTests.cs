using SharpLens.Testing;
using SharpLens.Tensors.IO;

namespace SharpLens.Tests;

/// <summary>Half-precision forward on CPU, float64, and To(device, dtype) keeping config and parameters in sync.</summary>
[TestFixtureSource(typeof(Fixtures), nameof(Fixtures.AllModels))]
public class DTypeTests(string model) : FixtureTest(model)
{
    // bfloat16 keeps 8 significant bits (relative step 2^-8), float16 11 (2^-11); the logits here are O(1),
    // so a few steps of rounding across two layers bound the error.
    [TestCase(ScalarType.BFloat16, 0.05)]
    [TestCase(ScalarType.Float16, 0.005)]
    public void HalfPrecisionForwardMatchesFloat32Reference(ScalarType dtype, double tolerance)
    {
        using var bridge = TransformerBridge.Load(Fixtures.Path(model), new BridgeOptions { DType = dtype });
        using var scope = Torch.NewScope();
        var (logits, cache) = bridge.RunWithCache(Tokens);
        using (cache)
        {
            Assert.That(logits.DType, Is.EqualTo(dtype));
            Assert.That((logits.To(ScalarType.Float32) - Reference["logits"]).Abs().Max().ToDouble(), Is.LessThan(tolerance));
            var pattern = cache["pattern", 1];
            Assert.That(pattern.DType, Is.EqualTo(dtype), "the pattern is cast to the value dtype");
            Assert.That(cache["v", 1].DType, Is.EqualTo(dtype));
            // Softmax in float32: every row sums to one up to the final rounding of each entry.
            var rowSums = pattern.To(ScalarType.Float32).Sum(-1);
            Assert.That((rowSums - 1).Abs().Max().ToDouble(), Is.LessThan(12 * (dtype == ScalarType.BFloat16 ? 1.0 / 256 : 1.0 / 2048)));
            var loss = bridge.Loss(Tokens);
            loss.Backward();
            Assert.That(bridge.Parameters().All(p => p.Grad is { } g && g.DType == dtype), "gradients reach the half-precision leaves");
        }
    }

    [Test]
    public void ToConvertsParametersAndConfigAndKeepsTheModelExact()
    {
        using var bridge = TransformerBridge.Load(Fixtures.Path(model));
        using var scope = Torch.NewScope();
        var original = bridge.Forward(Tokens);
        var liveBefore = LiveTensorCount.Settled();
        bridge.To(ScalarType.Float64);
        Assert.Multiple(() =>
        {
            Assert.That(bridge.Config.DType, Is.EqualTo(ScalarType.Float64));
            Assert.That(bridge.Config.Device, Is.EqualTo(Device.CPU));
            Assert.That(bridge.Parameters().All(p => p.DType == ScalarType.Float64 && p.IsLeaf && p.RequiresGrad));
            Assert.That(Torch.LiveTensors, Is.EqualTo(liveBefore), "old parameters are freed");
        });
        var logits64 = bridge.Forward(Tokens);
        Assert.That(logits64.DType, Is.EqualTo(ScalarType.Float64));
        Assert.That((logits64 - Reference["logits"].To(ScalarType.Float64)).Abs().Max().ToDouble(), Is.LessThan(1e-4));
        using (var views = new DisposableList(bridge.TlParameters()))
            Assert.That(views.Items.All(v => v.DType == ScalarType.Float64));
        bridge.To(Device.CPU, ScalarType.Float32);
        Assert.That((bridge.Forward(Tokens) - original).Abs().Max().ToDouble(), Is.EqualTo(0), "float32 -> float64 -> float32 is exact");
        Assert.Throws<ArgumentException>(() => bridge.To(ScalarType.Int64));
    }

    private sealed class DisposableList(IReadOnlyList<Tensor> items) : IDisposable
    {
        public IReadOnlyList<Tensor> Items => items;
        public void Dispose()
        {
            foreach (var t in items) t.Dispose();
        }
    }
}
