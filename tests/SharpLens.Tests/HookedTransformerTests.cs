using SharpLens.Reference;
using SharpLens.Tensors.IO;

namespace SharpLens.Tests;

/// <summary>The reference HookedTransformer against TransformerLens (fixtures), and its weight processing.</summary>
[TestFixture("tiny-gpt2")]
[TestFixture("tiny-pythia")]
public class HookedTransformerTests(string model) : FixtureTest(model)
{
    [Test]
    public void LogitsActivationsAndHookGradientsMatchTransformerLens()
    {
        using var ht = HookedTransformer.FromDirectory(Fixtures.Path(model), new BridgeOptions { AllOptionalHooks = false });
        using var scope = Torch.NewScope();
        var (logits, cache) = ht.RunWithCache(Tokens, null, null, l => l.Select(1, -1).Sum());
        using (cache)
        {
            Assert.Multiple(() =>
            {
                Assert.That(MaxAbsDiff(Reference["logits"], logits), Is.LessThan(1e-4), "logits");
                foreach (var key in Reference.Keys.Where(k => k.StartsWith("act.")))
                {
                    var name = key[4..];
                    if (!cache.ContainsKey(name)) continue;  // optional hooks are checked below
                    Assert.That(MaxAbsDiff(Reference[key], cache[name]), Is.LessThan(1e-4), name);
                }
                foreach (var key in Reference.Keys.Where(k => k.StartsWith("grad.last_logits_sum.") && !k.Contains(".param.")))
                {
                    var name = key["grad.last_logits_sum.".Length..];
                    var magnitude = Math.Max(1, Reference[key].Abs().Max().ToDouble());
                    Assert.That(MaxAbsDiff(Reference[key], cache[name + "_grad"]), Is.LessThan(1e-4 * magnitude), name + " gradient");
                }
            });
        }
    }

    [Test]
    public void OptionalHooksMatchTransformerLens()
    {
        using var ht = HookedTransformer.FromDirectory(Fixtures.Path(model), new BridgeOptions { AllOptionalHooks = true });
        using var scope = Torch.NewScope();
        string[] optional = ["attn.hook_result", "hook_q_input", "hook_k_input", "hook_v_input", "hook_mlp_in"];
        var (logits, cache) = ht.RunWithCache(Tokens, n => optional.Any(n.EndsWith));
        using (cache)
        {
            Assert.That(MaxAbsDiff(Reference["logits"], logits), Is.LessThan(1e-4));
            foreach (var name in cache.Keys) Assert.That(MaxAbsDiff(Reference["act." + name], cache[name]), Is.LessThan(1e-4), name);
            Assert.That(cache.Count, Is.EqualTo(optional.Length * 2));
        }
    }

    [Test]
    public void DefaultProcessingMatchesTransformerLens()
    {
        using var ht = HookedTransformer.FromDirectory(Fixtures.Path(model), processing: WeightProcessing.Default);
        using var scope = Torch.NewScope();
        var expected = Reference.Keys.Where(k => k.StartsWith("tl_processed.") && !k.Contains("rotary_")).Select(k => k["tl_processed.".Length..]).ToList();
        Assert.That(ht.NamedWeights().Select(p => p.Name), Is.EquivalentTo(expected), "LayerNorm weights are gone once folded");
        Assert.Multiple(() =>
        {
            foreach (var name in expected) Assert.That(MaxAbsDiff(Reference["tl_processed." + name], ht.W(name)), Is.LessThan(1e-5), name);
            Assert.That(MaxAbsDiff(Reference["processed.logits"], ht.Forward(Tokens)), Is.LessThan(1e-4), "processed logits");
        });
    }

    private static readonly WeightProcessing[] Options =
    [
        new() { FoldLn = true },
        new() { FoldLn = true, CenterWritingWeights = true },
        new() { CenterUnembed = true },
        new() { FoldValueBiases = true },
        WeightProcessing.Default,
    ];

    [TestCaseSource(nameof(Options))]
    public void EachProcessingIsExactInFloat64(WeightProcessing processing)
    {
        var options = new BridgeOptions { DType = ScalarType.Float64 };
        using var plain = HookedTransformer.FromDirectory(Fixtures.Path(model), options);
        using var processed = HookedTransformer.FromDirectory(Fixtures.Path(model), options, processing);
        using var scope = Torch.NewScope();
        // Centering the unembedding shifts each position's logits by a constant: compare log-probabilities.
        var a = plain.Forward(Tokens).LogSoftmax(-1);
        var b = processed.Forward(Tokens).LogSoftmax(-1);
        Assert.That((a - b).Abs().Max().ToDouble(), Is.LessThan(1e-10));
        if (!processing.CenterUnembed)
            Assert.That((plain.Forward(Tokens) - processed.Forward(Tokens)).Abs().Max().ToDouble(), Is.LessThan(1e-10), "raw logits unchanged");
    }

    [Test]
    public void CenteringWithoutFoldingIsRefused()
    {
        var ex = Assert.Throws<ArgumentException>(() => HookedTransformer.FromDirectory(Fixtures.Path(model), processing: new WeightProcessing { CenterWritingWeights = true }));
        Assert.That(ex!.Message, Does.Contain("FoldLn"));
    }
}
