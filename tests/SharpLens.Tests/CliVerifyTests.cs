using SharpLens.Testing;
using System.Text.Json;
using SharpLens.Cli;
using SharpLens.Tensors.IO;

namespace SharpLens.Tests;

/// <summary><c>lens verify</c>: the verification suite from the command line, passing and failing.</summary>
public class CliVerifyTests : CliTestBase
{
    /// <summary>Every check the suite runs, in order.</summary>
    private static readonly string[] Checks =
    [
        "forward_logits", "forward_hooks", "critical_hooks", "backward_hooks_last_logits_sum", "parameter_gradients_last_logits_sum",
        "backward_hooks_loss", "parameter_gradients_loss", "weight_processing_log_probs", "adamw_step1_weights", "adamw_step10_weights",
        "adamw_losses",
    ];

    private static CliResult LensPerturbed(Action<HookedTransformer> perturb, params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        var code = Program.Run(args, stdout, stderr, perturb);
        return new CliResult(code, stdout.ToString(), stderr.ToString());
    }

    private static List<(string Name, bool Passed)> ReadJson(string path)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(path));
        return doc.RootElement.GetProperty("results").EnumerateArray()
            .Select(r => (r.GetProperty("name").GetString()!, r.GetProperty("passed").GetBoolean())).ToList();
    }

    [TestCase("tiny-gpt2", "float32")]
    [TestCase("tiny-gpt2", "float64")]
    [TestCase("tiny-pythia", "float32")]
    [TestCase("tiny-pythia", "float64")]
    [TestCase("tiny-llama", "float64")]
    [TestCase("tiny-qwen2", "float64")]
    [TestCase("tiny-mistral", "float64")]
    [TestCase("tiny-gemma", "float64")]
    [TestCase("tiny-gemma2", "float64")]
    [TestCase("tiny-phi3", "float64")]
    public void PassesOnTheFixtures(string model, string dtype)
    {
        var jsonPath = TempPath($"verify-{model}-{dtype}.json");
        var r = Lens("verify", Fixtures.Path(model), "--dtype", dtype, "--json", jsonPath);
        AssertSuccess(r);
        var lines = r.Out.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        Assert.Multiple(() =>
        {
            Assert.That(lines[0], Does.Contain(dtype), "the table's title names the dtype");
            foreach (var check in Checks)
                Assert.That(lines.SingleOrDefault(l => l.StartsWith(check + " ")), Does.Contain(" pass "), $"table row of {check}");
            Assert.That(r.Out, Does.Contain("all checks passed"));
            Assert.That(r.Out, Does.Not.Contain("FAIL"));
            Assert.That(r.Error, Is.Empty);
        });
        var results = ReadJson(jsonPath);
        Assert.That(results.Select(x => x.Name), Is.EquivalentTo(Checks), "every check in the JSON report");
        Assert.That(results.Where(x => !x.Passed), Is.Empty);
        using var doc = JsonDocument.Parse(File.ReadAllText(jsonPath));
        Assert.That(doc.RootElement.GetProperty("d_type").GetString(), Is.EqualTo(dtype));
    }

    /// <summary>
    /// Batch 0 of the tokens file is the input, and only it is checked against the model (batch 1's id would be out of
    /// the vocabulary); the command leaves no native tensor behind.
    /// </summary>
    [Test]
    public void TokensFileBatchZeroIsTheInputAndEveryTensorIsFreed()
    {
        var tokens = WriteTokens("verify-tokens.json", new[]
        {
            new[] { new long[] { 5, 9, 3, 7, 1, 2, 8, 4 }, new long[] { 6, 6, 2, 1, 0, 3, 9, 5 } },
            new[] { new long[] { 1, 2, 1_000_000 } },
        });
        var before = LiveTensorCount.Settled();
        var r = Lens("verify", Fixtures.Path("tiny-pythia"), "--tokens", tokens);
        AssertSuccess(r);
        Assert.That(r.Out, Does.Contain("all checks passed"));
        Assert.That(Torch.LiveTensors, Is.EqualTo(before), "live native tensors after lens verify");
    }

    [Test]
    public void TokenOutsideTheVocabularyIsAnErrorNotAFailedCheck()
    {
        var tokens = WriteTokens("verify-big-ids.json", new[] { new[] { new long[] { 1, 2, 100000 } } });
        var jsonPath = TempPath("verify-big-ids-report.json");
        var r = Lens("verify", Fixtures.Path("tiny-gpt2"), "--tokens", tokens, "--json", jsonPath);
        Assert.Multiple(() =>
        {
            Assert.That(r.ExitCode, Is.EqualTo(1));
            Assert.That(r.Error, Does.StartWith("error: ").And.Contain("100000").And.Contain("vocabulary").And.Not.Contain("   at "));
            Assert.That(r.Out, Does.Not.Contain("forward_logits"), "no checks ran");
            Assert.That(File.Exists(jsonPath), Is.False);
        });
    }

    [Test]
    public void MissingModelDirectoryIsAnError()
    {
        var missing = TempPath("no-such-model");
        var r = Lens("verify", missing);
        Assert.That(r.ExitCode, Is.EqualTo(1));
        Assert.That(r.Error, Does.StartWith("error: ").And.Contain(missing).And.Contain("does not exist"));
    }

    [Test]
    public void UnknownDtypeIsAParseError()
    {
        var r = Lens("verify", Fixtures.Path("tiny-gpt2"), "--dtype", "float16");
        Assert.That(r.ExitCode, Is.EqualTo(1));
        Assert.That(r.Error, Does.StartWith("error: ").And.Contain("float16"));
    }

    /// <summary>
    /// A genuine failure: one reference weight perturbed through the test seam (a broken checkpoint would change both
    /// models alike). Exit code 1; the table marks the failing checks and its last line names them; so does the JSON.
    /// </summary>
    [Test]
    public void PerturbedReferenceFailsAndNamesTheFailingChecks()
    {
        var jsonPath = TempPath("verify-perturbed.json");
        var r = LensPerturbed(reference =>
        {
            using (Torch.NoGrad()) reference.W("blocks.1.mlp.b_out").Narrow(0, 3, 1).AddInPlace(0.5);
        }, "verify", Fixtures.Path("tiny-pythia"), "--json", jsonPath);
        var lines = r.Out.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        var summary = lines.Single(l => l.Contains("checks failed"));
        Assert.Multiple(() =>
        {
            Assert.That(r.ExitCode, Is.EqualTo(1), r.Error);
            Assert.That(lines.Single(l => l.StartsWith("forward_logits ")), Does.Contain("FAIL"));
            Assert.That(lines.Single(l => l.StartsWith("forward_hooks ")), Does.Contain("FAIL"));
            Assert.That(summary, Does.Contain("forward_logits").And.Contain("forward_hooks"));
            Assert.That(r.Error, Does.Contain("verification failed").And.Contain("forward_logits").And.Not.Contain("   at "));
        });
        var results = ReadJson(jsonPath);
        Assert.That(results.Select(x => x.Name), Is.EquivalentTo(Checks));
        Assert.That(results.Single(x => x.Name == "forward_logits").Passed, Is.False);
    }
}
