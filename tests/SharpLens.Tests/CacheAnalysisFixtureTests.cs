using SharpLens.Testing;
namespace SharpLens.Tests;

/// <summary>
/// The ActivationCache analysis helpers against TransformerLens 2.15.4's own results (tests/fixtures/*/analysis.safetensors:
/// float64, unprocessed weights, the fixture's [2, 12] batch; its metadata says how each was made).
/// <para>
/// Bounds. float64 runs: 1e-9 (TransformerLens and SharpLens compute the same float64 sums in different orders, so they
/// agree to a few ulps of values below 3; measured ≤ 1.4e-15). float32 runs: 1e-4, derived as the fixture README's
/// float32-vs-float64 agreement of the forward pass (≤ 1.5e-5 relative) times the largest magnitude among these tensors
/// (|x| ≤ 3: the LayerNorm-scaled residual stream), i.e. ≤ 4.5e-5, below 1e-4 (measured ≤ 1.2e-6).
/// </para>
/// </summary>
[TestFixture("tiny-gpt2")]
[TestFixture("tiny-pythia")]
public class CacheAnalysisFixtureTests(string model)
{
    private AnalysisFixture _fx = null!;

    [OneTimeSetUp]
    public void Load() => _fx = new AnalysisFixture(model);

    [OneTimeTearDown]
    public void Free() => _fx.Dispose();

    /// <summary>Each fixture key and how TransformerLens made it, in SharpLens's names.</summary>
    private static IEnumerable<(string Key, Func<ActivationCache, long, long, Tensor> Compute)> Cases(bool parallel) =>
    [
        // accumulated_resid(incl_mid=True) where resid_mid exists (GPT-2), plain for the parallel residual (Pythia).
        ("accumulated_resid", (c, _, _) => c.AccumulatedResid(inclMid: !parallel)),
        ("accumulated_resid.apply_ln", (c, _, _) => c.AccumulatedResid(inclMid: !parallel, applyLn: true, posSlice: -1)),
        ("decompose_resid.apply_ln", (c, _, _) => c.DecomposeResid(applyLn: true, posSlice: -1)),
        ("full_resid_decomposition.apply_ln", (c, _, _) => c.GetFullResidDecomposition(expandNeurons: false, applyLn: true, posSlice: -1)),
        ("stack_head_results.apply_ln", (c, _, _) => c.StackHeadResults(applyLn: true, posSlice: -1)),
        ("stack_neuron_results.last_layer.apply_ln", (c, _, _) => c.StackNeuronResults(-1, posSlice: -1, applyLn: true)),
        ("logit_direction", (c, a, w) => c.TokensToResidualDirections(a) - c.TokensToResidualDirections(w)),
        // logit_attrs applies the final norm's cached scale itself, to the plain decomposition.
        ("logit_attrs.decompose_resid", (c, a, w) => c.LogitAttrs(c.DecomposeResid(posSlice: -1), a, w, posSlice: -1)),
    ];

    [TestCase(ScalarType.Float64, 1e-9)]
    [TestCase(ScalarType.Float32, 1e-4)]
    public void ReproducesTransformerLens(ScalarType dtype, double bound)
    {
        var live = LiveTensorCount.Settled();
        using (var scope = Torch.NewScope())
        {
            using var bridge = TransformerBridge.Load(Fixtures.Path(model), new BridgeOptions { DType = dtype });
            var (_, cache) = bridge.RunWithCache(_fx["input_ids"]);
            using (cache)
            {
                var (answer, wrong) = (_fx["answer"].ToInt64(), _fx["wrong"].ToInt64());
                var worst = 0.0;
                Assert.Multiple(() =>
                {
                    foreach (var (key, compute) in Cases(bridge.Config.ParallelAttnMlp))
                    {
                        var d = Fixtures.MaxAbsDiff(_fx[key], compute(cache, answer, wrong));
                        worst = Math.Max(worst, d);
                        Assert.That(d, Is.LessThanOrEqualTo(bound), $"{key}: max abs difference {d:G3} ({dtype.ToTorchName()})");
                    }
                });
                TestContext.Out.WriteLine($"{model} {dtype.ToTorchName()}: largest difference from TransformerLens {worst:G3}");
            }
        }
        Assert.That(Torch.LiveTensors, Is.EqualTo(live), "tensors leaked");
    }

    [Test]
    public void LabelsNameEveryComponent()
    {
        using var scope = Torch.NewScope();
        using var bridge = TransformerBridge.Load(Fixtures.Path(model), new BridgeOptions { DType = ScalarType.Float64 });
        var (_, cache) = bridge.RunWithCache(_fx["input_ids"]);
        using (cache)
        {
            var parallel = bridge.Config.ParallelAttnMlp;
            void Check(Tensor stack, IReadOnlyList<string> labels, string what) =>
                Assert.That(labels, Has.Count.EqualTo(stack.Size(0)), what);
            Check(cache.AccumulatedResid(inclMid: !parallel), cache.AccumulatedResidLabels(inclMid: !parallel), "accumulated");
            Check(cache.DecomposeResid(), cache.DecomposeResidLabels(), "decompose");
            Check(cache.StackHeadResults(inclRemainder: true), cache.StackHeadResultsLabels(inclRemainder: true), "heads");
            Check(cache.StackNeuronResults(1, neuronSlice: 3), cache.StackNeuronResultsLabels(1, 3), "neurons");
            Check(cache.GetFullResidDecomposition(), cache.GetFullResidDecompositionLabels(), "full");
            Check(cache.GetFullResidDecomposition(expandNeurons: false), cache.GetFullResidDecompositionLabels(expandNeurons: false), "full, MLPs");
            if (parallel)
                Assert.That(cache.DecomposeResidLabels(), Is.EqualTo(new[] { "embed", "0_attn_out", "0_mlp_out", "1_attn_out", "1_mlp_out" }));
            else
            {
                Assert.That(cache.AccumulatedResidLabels(inclMid: true), Is.EqualTo(new[] { "0_pre", "0_mid", "1_pre", "1_mid", "final_post" }));
                Assert.That(cache.AccumulatedResidLabels(1, mlpInput: true), Is.EqualTo(new[] { "0_pre", "1_pre", "1_mid" }));
            }
            Assert.That(cache.GetFullResidDecompositionLabels(expandNeurons: false).TakeLast(3),
                Is.EqualTo(parallel ? new[] { "1_mlp_out", "embed", "bias" } : new[] { "embed", "pos_embed", "bias" }));
            Assert.That(cache.StackNeuronResultsLabels(1, 3), Is.EqualTo(new[] { "L0N3" }));
        }
    }
}
