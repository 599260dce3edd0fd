using SharpLens.Testing;
namespace SharpLens.Tests;

/// <summary>
/// ActivationCache analysis against identities that hold whatever the implementation: decompositions sum to the residual
/// stream the forward pass cached, the final norm applied to the last component reproduces <c>ln_final.hook_normalized</c>
/// and the logit lens's last layer the model's logits, head results computed from z equal the forward pass's own
/// <c>hook_result</c>, and a batch of one equals a row of the batch. All in float64, so sums of a handful of terms below
/// 10 agree to 1e-12 (a few ulps each).
/// </summary>
[TestFixture("tiny-gpt2")]
[TestFixture("tiny-pythia")]
public class CacheAnalysisTests(string model) : FixtureTest(model)
{
    private const double Exact = 1e-12;

    private TransformerBridge Load(bool allHooks = false) =>
        TransformerBridge.Load(ModelDir, new BridgeOptions { DType = ScalarType.Float64, AllOptionalHooks = allHooks });

    private static void AssertClose(Tensor expected, Tensor actual, string what, double bound = Exact)
    {
        var d = Fixtures.MaxAbsDiff(expected, actual);
        Assert.That(d, Is.LessThanOrEqualTo(bound), $"{what}: max abs difference {d:G3}");
    }

    [Test]
    public void DecompositionsSumToTheResidualStream()
    {
        var live = LiveTensorCount.Settled();
        using (var scope = Torch.NewScope())
        {
            using var bridge = Load();
            var (_, cache) = bridge.RunWithCache(Tokens);
            using (cache)
            {
                var final = cache["resid_post", -1];
                AssertClose(final, cache.DecomposeResid().Sum(0), "decompose_resid");
                AssertClose(cache["resid_pre", 1], cache.DecomposeResid(1).Sum(0), "decompose_resid(layer 1)");
                AssertClose(final, cache.GetFullResidDecomposition().Sum(0), "full decomposition, neurons");
                AssertClose(final, cache.GetFullResidDecomposition(expandNeurons: false).Sum(0), "full decomposition, MLP outputs");
                AssertClose(final, cache.StackHeadResults(inclRemainder: true).Sum(0), "heads + remainder");
                AssertClose(final, cache.StackNeuronResults(-1, inclRemainder: true).Sum(0), "neurons + remainder");
                AssertClose(cache["resid_pre", 1].Select(1, 3), cache.GetFullResidDecomposition(1, posSlice: 3).Sum(0), "full decomposition at layer 1, position 3");
                if (!bridge.Config.ParallelAttnMlp)
                {
                    AssertClose(cache["resid_mid", 1], cache.DecomposeResid(1, mlpInput: true).Sum(0), "decompose_resid(layer 1, mlp input)");
                    AssertClose(cache["resid_mid", 1], cache.GetFullResidDecomposition(1, mlpInput: true).Sum(0), "full decomposition of the MLP input");
                }
                // The last accumulated component is the final residual stream; the first is the embedding.
                var accumulated = cache.AccumulatedResid();
                AssertClose(final, accumulated.Select(0, bridge.Config.NLayers), "accumulated final_post");
                Assert.That(accumulated.Size(0), Is.EqualTo(bridge.Config.NLayers + 1));
            }
        }
        Assert.That(Torch.LiveTensors, Is.EqualTo(live), "tensors leaked");
    }

    [Test]
    public void CachedScaleReproducesTheFinalNormAndTheLogitLensTheLogits()
    {
        using var scope = Torch.NewScope();
        using var bridge = Load();
        var (logits, cache) = bridge.RunWithCache(Tokens);
        using (cache)
        {
            var tl = bridge.TlNamedParameters().ToDictionary(p => p.Name, p => p.Weight);
            // ApplyLnToStack is the norm without its weight and bias; with them, the final residual stream becomes hook_normalized.
            var normed = cache.AccumulatedResid(applyLn: true).Select(0, bridge.Config.NLayers) * tl["ln_final.w"] + tl["ln_final.b"];
            AssertClose(cache["ln_final.hook_normalized"], normed, "final norm from the cached scale");
            var lens = cache.LogitLens();
            Assert.That(lens.Shape, Is.EqualTo(new long[] { bridge.Config.NLayers + 1, 2, 12, bridge.Config.DVocab }));
            AssertClose(logits, lens.Select(0, bridge.Config.NLayers), "logit lens, last layer");
            AssertClose(logits.Select(1, 11), cache.LogitLens(posSlice: -1).Select(0, bridge.Config.NLayers), "logit lens at the last position");
            // Logit attributions are linear: the components' attributions add up to the whole stream's.
            var full = cache.GetFullResidDecomposition(posSlice: -1);
            var whole = cache["resid_post", -1].Select(1, 11).Unsqueeze(0);
            AssertClose(cache.LogitAttrs(whole, 5, 7, posSlice: -1).Sum(0), cache.LogitAttrs(full, 5, 7, posSlice: -1).Sum(0), "attribution is linear");
        }
    }

    [Test]
    public void HeadResultsFromZEqualTheForwardPassesOwn()
    {
        using var scope = Torch.NewScope();
        using var plain = Load();
        using var withResult = Load(allHooks: true);
        var (_, computed) = plain.RunWithCache(Tokens);
        var (_, recorded) = withResult.RunWithCache(Tokens);
        using (computed)
        using (recorded)
        {
            Assert.That(computed.ContainsKey("blocks.0.attn.hook_result"), Is.False);
            computed.ComputeHeadResults();
            for (var l = 0; l < plain.Config.NLayers; l++)
                AssertClose(recorded["result", l], computed["result", l], $"layer {l} head results");
        }
    }

    [Test]
    public void BatchOfOneAndBatchSliceEqualARowOfTheBatch()
    {
        using var scope = Torch.NewScope();
        using var bridge = Load();
        var (_, cache) = bridge.RunWithCache(Tokens);
        var (_, single) = bridge.RunWithCache(Tokens.Narrow(0, 1, 1));
        using (cache)
        using (single)
        {
            var expected = cache.GetFullResidDecomposition(applyLn: true).Select(1, 1);
            using (var row = cache.ApplySliceToBatchDim(1))
            {
                Assert.That(row.HasBatchDim, Is.False);
                AssertClose(expected, row.GetFullResidDecomposition(applyLn: true), "sliced cache", 1e-10);
            }
            single.RemoveBatchDim();
            Assert.That(single.HasBatchDim, Is.False);
            Assert.That(single["resid_pre", 0].Shape, Is.EqualTo(new long[] { 12, bridge.Config.DModel }));
            AssertClose(expected, single.GetFullResidDecomposition(applyLn: true), "batch of one without its batch dimension", 1e-10);
            var attrs = single.LogitAttrs(single.DecomposeResid(posSlice: -1), 5, 7, posSlice: -1, hasBatchDim: false);
            AssertClose(cache.LogitAttrs(cache.DecomposeResid(posSlice: -1), 5, 7, posSlice: -1).Select(1, 1), attrs, "logit attributions without a batch", 1e-10);
            Assert.Throws<InvalidOperationException>(() => cache.RemoveBatchDim());
        }
    }

    [Test]
    public void BadArgumentsAreRefusedWithAReason()
    {
        using var scope = Torch.NewScope();
        using var bridge = Load();
        var (_, cache) = bridge.RunWithCache(Tokens, name => !name.Contains("ln_final"));
        using (cache)
        {
            var e = Assert.Throws<KeyNotFoundException>(() => cache.AccumulatedResid(applyLn: true));
            Assert.That(e!.Message, Does.Contain("ln_final.hook_scale"));
            Assert.Throws<ArgumentOutOfRangeException>(() => cache.DecomposeResid(bridge.Config.NLayers + 1));
            Assert.Throws<ArgumentOutOfRangeException>(() => cache.AccumulatedResid(posSlice: 12));
            Assert.Throws<ArgumentOutOfRangeException>(() => cache.TokensToResidualDirections(bridge.Config.DVocab));
        }
    }
}
