using SharpLens.Tensors.IO;

namespace SharpLens.Tests;

/// <summary>
/// The bridge against the fixtures: logits from real HuggingFace, hook activations and TL weights from
/// real TransformerLens, parameter gradients and AdamW trajectories from real PyTorch.
/// </summary>
[TestFixture("tiny-gpt2")]
[TestFixture("tiny-pythia")]
public class BridgeFixtureTests(string model) : FixtureTest(model)
{
    private const double Tolerance = 1e-4;
    private TransformerBridge LoadBridge(BridgeOptions? options = null) => TransformerBridge.Load(Fixtures.Path(model), options);

    private static void AssertClose(Tensor expected, Tensor actual, string what, double tol = Tolerance)
    {
        var d = MaxAbsDiff(expected, actual);
        Assert.That(d, Is.LessThanOrEqualTo(tol), $"{what}: max abs difference {d:G3}");
    }

    [Test]
    public void LogitsMatchHuggingFace()
    {
        using var bridge = LoadBridge();
        using var scope = Torch.NewScope();
        AssertClose(Reference["logits"], bridge.Forward(Tokens), "logits");
    }

    [Test]
    public void LossMatchesHuggingFace()
    {
        using var bridge = LoadBridge();
        using var scope = Torch.NewScope();
        var loss = bridge.Loss(Tokens);
        Assert.That(loss.ToDouble(), Is.EqualTo(Reference["loss"].ToDouble()).Within(Tolerance));
    }

    [Test]
    public void EveryAlwaysOnHookMatchesTransformerLens()
    {
        using var bridge = LoadBridge();
        using var scope = Torch.NewScope();
        var (_, cache) = bridge.RunWithCache(Tokens);
        using (cache)
        {
            var expectedKeys = Reference.Keys.Where(k => k.StartsWith("act.")).Select(k => k[4..]).Where(cache.ContainsKey).ToList();
            Assert.That(expectedKeys, Has.Count.GreaterThan(20));
            Assert.Multiple(() =>
            {
                foreach (var name in expectedKeys) AssertClose(Reference["act." + name], cache[name], name);
            });
            var missing = Reference.Keys.Where(k => k.StartsWith("act.")).Select(k => k[4..])
                .Where(k => !cache.ContainsKey(k) && !IsOptional(k)).ToList();
            Assert.That(missing, Is.Empty, "always-on hooks the bridge did not fire");
        }
    }

    private static bool IsOptional(string name) =>
        name.EndsWith("hook_result") || name.EndsWith("_input") || name.EndsWith("hook_attn_in") || name.EndsWith("hook_mlp_in") || name == "hook_tokens";

    [Test]
    public void OptionalHooksMatchTransformerLensWhenSwitchedOn()
    {
        using var bridge = LoadBridge(new BridgeOptions { AllOptionalHooks = true });
        using var scope = Torch.NewScope();
        var optional = Reference.Keys.Where(k => k.StartsWith("act.")).Select(k => k[4..]).Where(IsOptional).ToList();
        Assert.That(optional, Has.Count.GreaterThanOrEqualTo(8));
        var (logits, cache) = bridge.RunWithCache(Tokens, optional.Contains);
        using (cache)
        {
            Assert.Multiple(() =>
            {
                foreach (var name in optional) AssertClose(Reference["act." + name], cache[name], name);
                AssertClose(Reference["logits"], logits, "logits with every optional hook on");
            });
        }
    }

    [Test]
    public void TlParametersEqualTransformerLensWeights()
    {
        using var bridge = LoadBridge();
        using var scope = Torch.NewScope();
        var tl = bridge.TlNamedParameters().ToDictionary(p => p.Name, p => p.Weight);
        var expected = Reference.Keys.Where(k => k.StartsWith("tl.") && !k.Contains("rotary_")).Select(k => k[3..]).ToList();
        Assert.That(tl.Keys, Is.EquivalentTo(expected));
        Assert.Multiple(() =>
        {
            foreach (var name in expected) AssertClose(Reference["tl." + name], tl[name], name, 0);
        });
    }

    [TestCase("loss")]
    [TestCase("last_logits_sum")]
    public void ParameterGradientsMatchPyTorch(string objective)
    {
        using var bridge = LoadBridge();
        using var scope = Torch.NewScope();
        var output = objective == "loss" ? bridge.Loss(Tokens) : bridge.Forward(Tokens).Select(1, -1).Sum();
        Assert.That(output.ToDouble(), Is.EqualTo(Reference[objective].ToDouble()).Within(Tolerance));
        output.Backward();
        var named = bridge.NamedParameters();
        var expected = Reference.Keys.Where(k => k.StartsWith($"grad.{objective}.param.")).ToList();
        Assert.That(named.Select(p => $"grad.{objective}.param.{p.Name}"), Is.EquivalentTo(expected), "one gradient per HF parameter");
        Assert.Multiple(() =>
        {
            foreach (var (name, p) in named) AssertClose(Reference[$"grad.{objective}.param.{name}"], p.Grad!, name);
        });
    }
}
