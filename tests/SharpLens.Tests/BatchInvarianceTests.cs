using SharpLens.Tensors.IO;

namespace SharpLens.Tests;

/// <summary>
/// A prompt's logits and hook activations are the same alone and inside a batch padded on the right or
/// on the left (positions come from the attention mask, padded keys are masked). Peers have shipped
/// silently wrong left-padded GPT-2 batches; this guards against it for both position schemes.
/// </summary>
[TestFixtureSource(typeof(Fixtures), nameof(Fixtures.AllModels))]
public class BatchInvarianceTests(string model)
{
    private const int Short = 7, Long = 12;
    private TransformerBridge _bridge = null!;
    private long[] _rowA = null!, _rowB = null!;

    [OneTimeSetUp]
    public void Load()
    {
        _bridge = TransformerBridge.Load(Fixtures.Path(model), new BridgeOptions { DType = ScalarType.Float64 });
        // Invariance is a property of the float64 math: the Llama family's float32 islands (HuggingFace's own precision
        // quirks, TransformerConfig.Float32Islands) would hold it to float32 rounding, so they are off here.
        _bridge.Config.Float32Islands = false;
        using var reference = SafeTensors.Load(Path.Combine(Fixtures.Path(model), "reference.safetensors"))["input_ids"];
        var ids = reference.ToArray<long>();
        _rowA = ids.Take(Short).ToArray();
        _rowB = ids.Skip(Long).Take(Long).ToArray();
    }

    [OneTimeTearDown]
    public void Free() => _bridge.Dispose();

    private static readonly string[] Hooks =
        ["hook_embed", "blocks.0.hook_resid_pre", "blocks.0.attn.hook_q", "blocks.1.attn.hook_z", "blocks.1.hook_resid_post", "ln_final.hook_normalized"];

    [TestCase(false, TestName = "{m}(right padding)")]
    [TestCase(true, TestName = "{m}(left padding)")]
    public void PromptAloneEqualsPromptInPaddedBatch(bool leftPadding)
    {
        using var scope = Torch.NewScope();
        var alone = Torch.FromArray(_rowA, 1, Short);
        var (aloneLogits, aloneCache) = _bridge.RunWithCache(alone, name => Hooks.Contains(name) || name.EndsWith("hook_pattern"));

        const long pad = 0;
        var padding = Enumerable.Repeat(pad, Long - Short);
        var paddedA = leftPadding ? padding.Concat(_rowA) : _rowA.Concat(padding);
        var tokens = Torch.FromArray(paddedA.Concat(_rowB).ToArray(), 2, Long);
        var maskA = leftPadding
            ? Enumerable.Repeat(0L, Long - Short).Concat(Enumerable.Repeat(1L, Short))
            : Enumerable.Repeat(1L, Short).Concat(Enumerable.Repeat(0L, Long - Short));
        var mask = Torch.FromArray(maskA.Concat(Enumerable.Repeat(1L, Long)).ToArray(), 2, Long);
        var (batchLogits, batchCache) = _bridge.RunWithCache(tokens, name => Hooks.Contains(name) || name.EndsWith("hook_pattern"), mask);
        using (aloneCache)
        using (batchCache)
        {
            var start = leftPadding ? Long - Short : 0;
            Assert.Multiple(() =>
            {
                AssertSame(aloneLogits, batchLogits.Narrow(0, 0, 1).Narrow(1, start, Short), "logits");
                foreach (var hook in Hooks)
                    AssertSame(aloneCache[hook], batchCache[hook].Narrow(0, 0, 1).Narrow(1, start, Short), hook);
                for (var layer = 0; layer < 2; layer++)
                {
                    // Pattern rows of real queries over real keys; padded keys must get exactly zero weight.
                    var batchPattern = batchCache["pattern", layer].Narrow(0, 0, 1).Narrow(2, start, Short);
                    AssertSame(aloneCache["pattern", layer], batchPattern.Narrow(3, start, Short), $"pattern {layer}");
                    var toPadding = leftPadding ? batchPattern.Narrow(3, 0, Long - Short) : batchPattern.Narrow(3, Short, Long - Short);
                    Assert.That(toPadding.Abs().Max().ToDouble(), Is.EqualTo(0), $"attention to padding in layer {layer}");
                }
            });
            // The unpadded row is unaffected by its neighbour.
            var bAlone = _bridge.Forward(Torch.FromArray(_rowB, 1, Long));
            AssertSame(bAlone, batchLogits.Narrow(0, 1, 1), "full row");
        }
    }

    [Test]
    public void LossSkipsPaddedTargets()
    {
        using var scope = Torch.NewScope();
        var aloneLoss = _bridge.Loss(Torch.FromArray(_rowA, 1, Short)).ToDouble();
        var tokens = Torch.FromArray(Enumerable.Repeat(0L, Long - Short).Concat(_rowA).ToArray(), 1, Long);
        var mask = Torch.FromArray(Enumerable.Repeat(0L, Long - Short).Concat(Enumerable.Repeat(1L, Short)).ToArray(), 1, Long);
        Assert.That(_bridge.Loss(tokens, mask).ToDouble(), Is.EqualTo(aloneLoss).Within(1e-10));
    }

    private static void AssertSame(Tensor expected, Tensor actual, string what)
    {
        Assert.That(actual.Shape, Is.EqualTo(expected.Shape), what + " shape");
        var diff = (expected - actual).Abs().Max().ToDouble();
        Assert.That(diff, Is.LessThanOrEqualTo(1e-10), $"{what}: max abs difference {diff:G3} (float64)");
    }
}
