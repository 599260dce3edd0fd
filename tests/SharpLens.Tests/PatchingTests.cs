using SharpLens.Testing;
namespace SharpLens.Tests;

/// <summary>
/// Activation patching against TransformerLens 2.15.4's <c>transformer_lens.patching</c> results in the fixtures
/// (patch.*: clean activations patched into the run on the corrupted tokens, the clean ones rolled by one position; metric
/// logit[answer] − logit[wrong] at the last position, averaged over the batch), and the batched patches of the other
/// setters against TransformerLens's setters written out literally (copy the slice into a clone of the activation, one
/// forward pass per patch). Bounds as for the analysis fixtures: float64 1e-9 (same sums, other order; measured ~1e-15);
/// float32 1e-4 (float32 forward ≤ 1.5e-5 relative of logits up to ~2 in magnitude, a difference of two such: ≤ 6e-5).
/// </summary>
[TestFixture("tiny-gpt2")]
[TestFixture("tiny-pythia")]
public class PatchingTests(string model)
{
    private AnalysisFixture _fx = null!;

    [OneTimeSetUp]
    public void Load() => _fx = new AnalysisFixture(model);

    [OneTimeTearDown]
    public void Free() => _fx.Dispose();

    /// <summary>The clean tokens rolled by one position along the sequence (torch.roll(input_ids, 1, dims=1)).</summary>
    internal static Tensor Roll(Tensor tokens)
    {
        var n = tokens.Size(1);
        return Torch.Cat([tokens.Narrow(1, n - 1, 1), tokens.Narrow(1, 0, n - 1)], 1);
    }

    private PatchingMetric MeanLogitDiff() => logits => Patching.LogitDiff(_fx["answer"].Reshape(1), _fx["wrong"].Reshape(1))(logits).Mean();

    [TestCase(ScalarType.Float64, 1e-9, 256)]
    [TestCase(ScalarType.Float64, 1e-9, 1)]
    [TestCase(ScalarType.Float32, 1e-4, 256)]
    public void ReproducesTransformerLens(ScalarType dtype, double bound, int copiesPerForward)
    {
        var live = LiveTensorCount.Settled();
        using (var scope = Torch.NewScope())
        {
            using var bridge = TransformerBridge.Load(Fixtures.Path(model), new BridgeOptions { DType = dtype });
            var clean = _fx["input_ids"];
            var corrupted = Roll(clean);
            var metric = MeanLogitDiff();
            var (cleanLogits, cleanCache) = bridge.RunWithCache(clean);
            using (cleanCache)
            {
                var options = new PatchingOptions { MaxTokensPerForward = copiesPerForward * 24 };  // a copy of the [2, 12] batch is 24 tokens
                var results = new Dictionary<string, Tensor>
                {
                    ["patch.clean_metric"] = metric(cleanLogits).Reshape(1),
                    ["patch.corrupted_metric"] = metric(bridge.Forward(corrupted)).Reshape(1),
                    ["patch.resid_pre_by_pos"] = Patching.GetActPatchResidPre(bridge, corrupted, cleanCache, metric, options),
                    ["patch.attn_out_by_pos"] = Patching.GetActPatchAttnOut(bridge, corrupted, cleanCache, metric, options),
                    ["patch.mlp_out_by_pos"] = Patching.GetActPatchMlpOut(bridge, corrupted, cleanCache, metric, options),
                    ["patch.head_out_all_pos"] = Patching.GetActPatchAttnHeadOutAllPos(bridge, corrupted, cleanCache, metric, options),
                };
                var worst = 0.0;
                Assert.Multiple(() =>
                {
                    foreach (var (key, value) in results)
                    {
                        var d = Fixtures.MaxAbsDiff(_fx[key], value);
                        worst = Math.Max(worst, d);
                        Assert.That(d, Is.LessThanOrEqualTo(bound), $"{key}: max abs difference {d:G3}");
                    }
                });
                TestContext.Out.WriteLine($"{model} {dtype.ToTorchName()} ({copiesPerForward} patches per forward): largest difference from TransformerLens {worst:G3}");
            }
        }
        Assert.That(Torch.LiveTensors, Is.EqualTo(live), "tensors leaked");
    }

    /// <summary>TransformerLens's loop with its setter written literally: clone the corrupted activation, copy the clean slice in.</summary>
    private static double[] LiteralPatches(TransformerBridge bridge, Tensor corrupted, ActivationCache cleanCache, PatchingMetric metric, string activation,
        IEnumerable<long[]> indices, Func<Tensor, long[], Tensor> slice)
    {
        var values = new List<double>();
        foreach (var index in indices)
        {
            using var scope = Torch.NewScope();
            var name = ActivationCache.ActName(activation, (int)index[0]);
            var clean = cleanCache[name];
            var patched = bridge.RunWithHooks(corrupted, [(name, (a, _) =>
            {
                var copy = a.Clone();
                slice(copy, index).CopyFrom(slice(clean, index));
                return copy;
            })]);
            values.Add(metric(patched).ToDouble());
        }
        return values.ToArray();
    }

    [Test]
    public void EverySetterMatchesTransformerLensesLoop()
    {
        using var scope = Torch.NewScope();
        using var bridge = TransformerBridge.Load(Fixtures.Path(model), new BridgeOptions { DType = ScalarType.Float64 });
        var corrupted = Roll(_fx["input_ids"]);
        var metric = MeanLogitDiff();
        var (_, cleanCache) = bridge.RunWithCache(_fx["input_ids"]);
        using (cleanCache)
        {
            var options = new PatchingOptions { MaxTokensPerForward = 5 * 24 };  // several forwards of 5 patches, some spanning two layers
            void Check(Tensor batched, string activation, Func<Tensor, long[], Tensor> slice, string what)
            {
                var grid = batched.Shape;
                var all = new List<long[]>();
                var count = grid.Aggregate(1L, (a, b) => a * b);
                for (long r = 0; r < count; r++)
                {
                    var ix = new long[grid.Length];
                    var rest = r;
                    for (var k = grid.Length - 1; k >= 0; k--) { ix[k] = rest % grid[k]; rest /= grid[k]; }
                    all.Add(ix);
                }
                var expected = LiteralPatches(bridge, corrupted, cleanCache, metric, activation, all, slice);
                var actual = batched.Reshape(-1).ToArray<double>();
                for (var i = 0; i < expected.Length; i++)
                    Assert.That(actual[i], Is.EqualTo(expected[i]).Within(1e-12), $"{what} at [{string.Join(", ", all[i])}]");
            }
            Check(Patching.GetActPatchAttnHeadQByPos(bridge, corrupted, cleanCache, metric, options), "q",
                (t, i) => t.Narrow(1, i[1], 1).Narrow(2, i[2], 1), "q by position");
            Check(Patching.GetActPatchAttnHeadVAllPos(bridge, corrupted, cleanCache, metric, options), "v",
                (t, i) => t.Narrow(2, i[1], 1), "v at all positions");
            Check(Patching.GetActPatchAttnHeadPatternByPos(bridge, corrupted, cleanCache, metric, options), "pattern",
                (t, i) => t.Narrow(1, i[1], 1).Narrow(2, i[2], 1), "pattern by query position");
            // Entries of the pattern: the index-list form (TransformerLens's index_df) on a subset of the grid.
            var entries = new List<long[]>();
            foreach (var l in new long[] { 0, 1 })
                foreach (var h in new long[] { 1, 3 })
                    for (var src = 0; src < 12; src++)
                        entries.Add([l, h, 11, src]);
            var entryResults = Patching.GenericActivationPatch(bridge, corrupted, cleanCache, metric, PatchSetter.LayerHeadDestSrcPosPattern, "pattern", entries, options);
            var literal = LiteralPatches(bridge, corrupted, cleanCache, metric, "pattern", entries, (t, i) => t.Narrow(1, i[1], 1).Narrow(2, i[2], 1).Narrow(3, i[3], 1));
            Assert.That(entryResults.Shape, Is.EqualTo(new long[] { entries.Count }));
            var batchedEntries = entryResults.ToArray<double>();
            for (var i = 0; i < literal.Length; i++)
                Assert.That(batchedEntries[i], Is.EqualTo(literal[i]).Within(1e-12), $"pattern entry [{string.Join(", ", entries[i])}]");
            Check(Patching.GetActPatchResidPost(bridge, corrupted, cleanCache, metric, options), "resid_post",
                (t, i) => t.Narrow(1, i[1], 1), "resid_post");
            var every = Patching.GetActPatchAttnHeadAllPosEvery(bridge, corrupted, cleanCache, metric);
            Assert.That(every.Shape, Is.EqualTo(new long[] { 5, 2, 4 }));
            Assert.That(Fixtures.MaxAbsDiff(_fx["patch.head_out_all_pos"], every.Select(0, 0)), Is.LessThan(1e-9));
            var block = Patching.GetActPatchBlockEvery(bridge, corrupted, cleanCache, metric);
            Assert.That(Fixtures.MaxAbsDiff(_fx["patch.mlp_out_by_pos"], block.Select(0, 2)), Is.LessThan(1e-9));
            var byPos = Patching.GetActPatchAttnHeadByPosEvery(bridge, corrupted, cleanCache, metric);
            Assert.That(byPos.Shape, Is.EqualTo(new long[] { 5, 2, 12, 4 }));
        }
    }

    [Test]
    public void PerRowMetricsKeepTheBatchAndAverageToTheScalarOnes()
    {
        using var scope = Torch.NewScope();
        using var bridge = TransformerBridge.Load(Fixtures.Path(model), new BridgeOptions { DType = ScalarType.Float64 });
        var corrupted = Roll(_fx["input_ids"]);
        var (_, cleanCache) = bridge.RunWithCache(_fx["input_ids"]);
        using (cleanCache)
        {
            var perRow = Patching.GetActPatchResidPre(bridge, corrupted, cleanCache, Patching.LogitDiff(_fx["answer"].Reshape(1), _fx["wrong"].Reshape(1)));
            Assert.That(perRow.Shape, Is.EqualTo(new long[] { 2, 12, 2 }));
            Assert.That(Fixtures.MaxAbsDiff(_fx["patch.resid_pre_by_pos"], perRow.Mean(-1)), Is.LessThan(1e-9));
        }
    }

    [Test]
    public void BadArgumentsAreRefusedWithAReason()
    {
        using var scope = Torch.NewScope();
        using var bridge = TransformerBridge.Load(Fixtures.Path(model), new BridgeOptions { DType = ScalarType.Float64 });
        var clean = _fx["input_ids"];
        var (_, cache) = bridge.RunWithCache(clean, n => n.EndsWith("hook_resid_pre"));
        using (cache)
        {
            var metric = MeanLogitDiff();
            Assert.Throws<KeyNotFoundException>(() => Patching.GetActPatchAttnOut(bridge, clean, cache, metric));
            var e = Assert.Throws<ArgumentException>(() => Patching.GetActPatchResidPre(bridge, clean.Narrow(0, 0, 1), cache, metric));
            Assert.That(e!.Message, Does.Contain("batch"));
            Assert.Throws<ArgumentException>(() => Patching.GenericActivationPatch(bridge, clean, cache, metric, PatchSetter.LayerPosHeadVector, "resid_pre",
                [PatchAxis.Layer, PatchAxis.Pos], null));
            Assert.Throws<ArgumentOutOfRangeException>(() => Patching.GenericActivationPatch(bridge, clean, cache, metric, PatchSetter.LayerPos, "resid_pre",
                [new long[] { 0, 12 }], null));
            var thrown = Assert.Throws<InvalidOperationException>(() => Patching.GetActPatchResidPre(bridge, clean, cache, _ => throw new FormatException("boom")));
            Assert.That(thrown!.InnerException, Is.TypeOf<FormatException>());
        }
    }
}

/// <summary>
/// Path patching against what it means, computed independently: with every other head and MLP frozen, a sender's only
/// path to the final residual stream is its own output, so patching sender h into the final residual equals the corrupted
/// run with <c>(z_clean − z_corrupted)·W_O[h]</c> added to that stream (W_O from the TL weights, a hook adding the sum).
/// A sender downstream of its receiver reaches it by no path and leaves the corrupted metric. float64: 1e-10.
/// </summary>
[TestFixture("tiny-gpt2")]
[TestFixture("tiny-pythia")]
public class PathPatchingTests(string model) : FixtureTest(model)
{
    [Test]
    public void DirectPathToTheLogitsIsTheSendersOutputDifference()
    {
        var live = LiveTensorCount.Settled();
        using (var scope = Torch.NewScope())
        {
            using var bridge = TransformerBridge.Load(ModelDir, new BridgeOptions { DType = ScalarType.Float64 });
            var clean = Tokens;
            var corrupted = PatchingTests.Roll(clean);
            var metric = Patching.LogitDiff(Torch.FromArray(new long[] { 3 }), Torch.FromArray(new long[] { 11 }));
            var (_, cleanCache) = bridge.RunWithCache(clean);
            var (corruptedLogits, corruptedCache) = bridge.RunWithCache(corrupted);
            using (cleanCache)
            using (corruptedCache)
            {
                var weights = bridge.TlNamedParameters().ToDictionary(p => p.Name, p => p.Weight);
                var final = PathReceiver.FinalResidual(bridge.Config);
                Tensor Expected(IEnumerable<HeadIndex> senders)
                {
                    Tensor delta = Torch.Zeros([2, 12, bridge.Config.DModel], ScalarType.Float64);
                    foreach (var s in senders)
                    {
                        var dz = cleanCache["z", s.Layer].Select(2, s.Head) - corruptedCache["z", s.Layer].Select(2, s.Head);  // [batch, pos, d_head]
                        delta = delta + dz.Matmul(weights[$"blocks.{s.Layer}.attn.W_O"].Select(0, s.Head));
                    }
                    return metric(bridge.RunWithHooks(corrupted, [(final.HookName, (a, _) => a + delta)]));
                }
                var each = Patching.PathPatchEachHead(bridge, corrupted, cleanCache, corruptedCache, metric, [final], options: new PatchingOptions { MaxTokensPerForward = 3 * 24 });
                Assert.That(each.Shape, Is.EqualTo(new long[] { 2, 4, 2 }));
                for (var l = 0; l < 2; l++)
                    for (var h = 0; h < 4; h++)
                        Assert.That(Fixtures.MaxAbsDiff(Expected([new HeadIndex(l, h)]), each.Select(0, l).Select(0, h)), Is.LessThan(1e-10), $"L{l}H{h}");
                IReadOnlyList<HeadIndex> set = [new(0, 1), new(0, 3), new(1, 2)];
                var together = Patching.PathPatch(bridge, corrupted, cleanCache, corruptedCache, metric, [set], [final]);
                Assert.That(Fixtures.MaxAbsDiff(Expected(set), together.Select(0, 0)), Is.LessThan(1e-10), "a set of senders");

                // Layer-1 senders cannot reach layer 1's queries; layer-0 ones do, and change the result.
                var toQueries = Patching.PathPatchEachHead(bridge, corrupted, cleanCache, corruptedCache, metric,
                    [PathReceiver.HeadInput(1, 0, 'q'), PathReceiver.HeadInput(1, 2, 'k') with { Heads = [2, 3] }]);
                var corruptedMetric = metric(corruptedLogits);
                for (var h = 0; h < 4; h++)
                    Assert.That(Fixtures.MaxAbsDiff(corruptedMetric, toQueries.Select(0, 1).Select(0, h)), Is.LessThan(1e-12), $"L1H{h} to layer 1 (rounding only: the copies run in a larger batch)");
                Assert.That((toQueries.Select(0, 0) - corruptedMetric).Abs().Max().ToDouble(), Is.GreaterThan(1e-6), "layer 0 reaches layer 1");

                Assert.Throws<ArgumentOutOfRangeException>(() => Patching.PathPatch(bridge, corrupted, cleanCache, corruptedCache, metric, [[new HeadIndex(2, 0)]], [final]));
                Assert.Throws<ArgumentException>(() => Patching.PathPatch(bridge, corrupted, cleanCache, corruptedCache, metric, [[new HeadIndex(0, 0)]], [new PathReceiver("blocks.9.hook_resid_pre")]));
            }
        }
        Assert.That(Torch.LiveTensors, Is.EqualTo(live), "tensors leaked");
    }
}
