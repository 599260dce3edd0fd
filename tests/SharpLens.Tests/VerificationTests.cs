using SharpLens.Verification;

namespace SharpLens.Tests;

/// <summary>The verification suite passes on both fixture models in float32 and float64, and fails, naming the check, when one weight of one implementation is perturbed.</summary>
public class VerificationTests
{
    [TestCase("tiny-gpt2", ScalarType.Float32)]
    [TestCase("tiny-gpt2", ScalarType.Float64)]
    [TestCase("tiny-pythia", ScalarType.Float32)]
    [TestCase("tiny-pythia", ScalarType.Float64)]
    [TestCase("tiny-llama", ScalarType.Float32)]
    [TestCase("tiny-llama", ScalarType.Float64)]
    [TestCase("tiny-qwen2", ScalarType.Float32)]
    [TestCase("tiny-qwen2", ScalarType.Float64)]
    [TestCase("tiny-mistral", ScalarType.Float32)]
    [TestCase("tiny-mistral", ScalarType.Float64)]
    [TestCase("tiny-gemma", ScalarType.Float32)]
    [TestCase("tiny-gemma", ScalarType.Float64)]
    [TestCase("tiny-gemma2", ScalarType.Float32)]
    [TestCase("tiny-gemma2", ScalarType.Float64)]
    [TestCase("tiny-phi3", ScalarType.Float32)]
    [TestCase("tiny-phi3", ScalarType.Float64)]
    public void EveryCheckPasses(string model, ScalarType dtype)
    {
        var report = VerificationSuite.Run(Fixtures.Path(model), dtype);
        TestContext.Out.WriteLine(report.ToTable());
        Assert.That(report.Passed, Is.True, report.ToTable());
        var names = report.Results.Select(r => r.Name).ToList();
        Assert.That(names, Is.SupersetOf(new[] { "forward_logits", "forward_hooks", "critical_hooks", "backward_hooks_last_logits_sum",
            "backward_hooks_loss", "parameter_gradients_loss", "parameter_gradients_last_logits_sum", "adamw_step1_weights", "adamw_step10_weights",
            "adamw_losses", "weight_processing_log_probs" }));
        var forward = report.Results.Single(r => r.Name == "forward_hooks");
        Assert.That(forward.HooksCompared, Is.GreaterThanOrEqualTo(2 * 20), "every hook point of both blocks, optional ones included");
        var backward = report.Results.Single(r => r.Name == "backward_hooks_loss");
        Assert.That(backward.HooksCompared, Is.EqualTo(forward.HooksCompared - 1), "a gradient for every forward hook but hook_tokens (integer ids have none): none excluded");
        Assert.That(report.ToJson(), Does.Contain("\"max_abs_diff\""));
    }

    [Test]
    public void PerturbingOneReferenceWeightFailsAndNamesTheChecks()
    {
        using var bridge = TransformerBridge.Load(Fixtures.Path("tiny-pythia"), new BridgeOptions { AllOptionalHooks = true });
        using var reference = HookedTransformer.FromBridge(bridge);
        using (Torch.NoGrad()) reference.W("blocks.1.mlp.b_out").Narrow(0, 3, 1).AddInPlace(0.5);
        using var scope = Torch.NewScope();
        var report = VerificationSuite.Run(bridge, reference, VerificationSuite.DefaultTokens(bridge.Config), "perturbed");
        Assert.That(report.Passed, Is.False);
        var failed = report.Results.Where(r => !r.Passed).Select(r => r.Name).ToList();
        Assert.That(failed, Does.Contain("forward_logits").And.Contain("forward_hooks"));
        Assert.That(report.Results.Single(r => r.Name == "forward_hooks").Detail, Does.Contain("blocks.1.hook_mlp_out"));
        Assert.That(report.ToTable(), Does.Contain("FAIL"));
    }
}
