using SharpLens.Testing;
using System.Text.Json;
using SharpLens.Cli;
using SharpLens.Tensors.IO;

namespace SharpLens.Tests;

/// <summary>Runs the <c>lens</c> command line in-process and holds a fresh temporary folder for its files.</summary>
public abstract class CliTestBase
{
    protected string TempDir { get; private set; } = null!;

    [OneTimeSetUp]
    public void CreateTempDir()
    {
        TempDir = Path.Combine(Path.GetTempPath(), "sharplens-cli-tests-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(TempDir);
    }

    [OneTimeTearDown]
    public void DeleteTempDir()
    {
        if (Directory.Exists(TempDir)) Directory.Delete(TempDir, recursive: true);
    }

    protected sealed record CliResult(int ExitCode, string Out, string Error);

    protected static CliResult Lens(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        var code = Program.Run(args, stdout, stderr);
        return new CliResult(code, stdout.ToString(), stderr.ToString());
    }

    /// <summary>A user error: exit code 1, "error: " and each fragment on stderr, no stack trace.</summary>
    protected static void AssertUserError(CliResult r, params string[] fragments)
    {
        Assert.Multiple(() =>
        {
            Assert.That(r.ExitCode, Is.EqualTo(1), $"exit code; stderr:\n{r.Error}");
            Assert.That(r.Error, Does.StartWith("error: "));
            foreach (var f in fragments) Assert.That(r.Error, Does.Contain(f));
            Assert.That(r.Error, Does.Not.Contain("   at "), "no stack trace");
        });
    }

    /// <summary>stderr is one line.</summary>
    protected static void AssertOneLine(CliResult r) =>
        Assert.That(r.Error.TrimEnd().Split('\n'), Has.Length.EqualTo(1), $"one line naming the file and the fault:\n{r.Error}");

    protected static void AssertSuccess(CliResult r) =>
        Assert.That(r.ExitCode, Is.EqualTo(0), $"lens failed with code {r.ExitCode}:\n{r.Error}\n{r.Out}");

    protected string TempPath(string name) => Path.Combine(TempDir, name);

    /// <summary>Writes a tokens file {"batches": ...} and returns its path.</summary>
    protected string WriteTokens(string name, object batches)
    {
        var path = TempPath(name);
        File.WriteAllText(path, JsonSerializer.Serialize(new { batches }));
        return path;
    }

    /// <summary>The rows of an int64 [batch, pos] tensor.</summary>
    protected static long[][] Rows(Tensor tokens)
    {
        var (b, p) = ((int)tokens.Size(0), (int)tokens.Size(1));
        var flat = tokens.ToArray<long>();
        return Enumerable.Range(0, b).Select(r => flat.AsSpan(r * p, p).ToArray()).ToArray();
    }

    /// <summary>Loads an output file; the caller disposes the tensors (see <see cref="Free"/>).</summary>
    protected static Dictionary<string, Tensor> Load(string path) => SafeTensors.Load(path);

    protected static void Free(Dictionary<string, Tensor> tensors)
    {
        foreach (var t in tensors.Values) t.Dispose();
    }

    protected static double MaxAbsDiff(Tensor expected, Tensor actual) => Fixtures.MaxAbsDiff(expected, actual);

    protected static void AssertClose(Tensor expected, Tensor actual, string what, double tol = 1e-4)
    {
        var d = MaxAbsDiff(expected, actual);
        Assert.That(d, Is.LessThanOrEqualTo(tol), $"{what}: max abs difference {d:G3}");
    }

    /// <summary>Within <paramref name="tol"/> × max(1, max |expected|) (gradients can be large).</summary>
    protected static void AssertCloseScaled(Tensor expected, Tensor actual, string what, double tol = 1e-4)
    {
        double magnitude;
        using (var scope = Torch.NewScope())
        {
            var e = expected.To(ScalarType.Float64);
            magnitude = Math.Max(1, e.Abs().MaskedFill(e.IsFinite().LogicalNot(), 0).Max().ToDouble());
        }
        var d = MaxAbsDiff(expected, actual);
        Assert.That(d, Is.LessThanOrEqualTo(tol * magnitude), $"{what}: max abs difference {d:G3} at magnitude {magnitude:G3}");
    }
}

/// <summary>
/// <c>lens cache</c>, <c>params</c> and <c>train</c> against the fixtures' real HuggingFace, TransformerLens and
/// PyTorch numbers.
/// </summary>
[TestFixture("tiny-gpt2")]
[TestFixture("tiny-pythia")]
public class CliTests(string model) : CliTestBase
{
    private const double Tolerance = 1e-4;
    private Dictionary<string, Tensor> _reference = null!;
    private string ModelDir => Fixtures.Path(model);
    private string _tokens = null!;

    [OneTimeSetUp]
    public void LoadReference()
    {
        _reference = SafeTensors.Load(Path.Combine(ModelDir, "reference.safetensors"));
        _tokens = WriteTokens("tokens.json", new[] { Rows(_reference["input_ids"]) });
    }

    [OneTimeTearDown]
    public void FreeReference() => Free(_reference);

    private IEnumerable<string> ReferenceKeys(string prefix) =>
        _reference.Keys.Where(k => k.StartsWith(prefix, StringComparison.Ordinal)).Select(k => k[prefix.Length..]);

    private static bool IsOptional(string hook) =>
        hook.EndsWith("hook_result") || hook.EndsWith("_input") || hook.EndsWith("hook_attn_in") || hook.EndsWith("hook_mlp_in") || hook == "hook_tokens";

    [Test]
    public void CacheWritesLogitsLossAndEveryActivation()
    {
        // Two batches: the reference batch, and its second row alone.
        var rows = Rows(_reference["input_ids"]);
        var tokens = WriteTokens("two-batches.json", new[] { rows, new[] { rows[1] } });
        var outPath = TempPath($"cache-{model}.safetensors");
        var r = Lens("cache", ModelDir, "--tokens", tokens, "--out", outPath);
        AssertSuccess(r);
        var output = Load(outPath);
        try
        {
            Assert.Multiple(() =>
            {
                AssertClose(_reference["logits"], output["b0.logits"], "b0.logits");
                Assert.That(output["b0.loss"].NumEl, Is.EqualTo(1));
                Assert.That(output["b0.loss"].ToDouble(), Is.EqualTo(_reference["loss"].ToDouble()).Within(Tolerance), "b0.loss");
                AssertClose(_reference["act.blocks.0.attn.hook_pattern"], output["b0.act.blocks.0.attn.hook_pattern"], "hook_pattern");
                foreach (var hook in ReferenceKeys("act.").Where(h => !IsOptional(h)))
                {
                    Assert.That(output.ContainsKey("b0.act." + hook), $"b0.act.{hook} is missing");
                    if (output.ContainsKey("b0.act." + hook)) AssertClose(_reference["act." + hook], output["b0.act." + hook], hook);
                }
                using var scope = Torch.NewScope();
                AssertClose(_reference["logits"].Narrow(0, 1, 1), output["b1.logits"], "b1.logits (second row alone)");
                AssertClose(_reference["act.blocks.1.hook_resid_post"].Narrow(0, 1, 1), output["b1.act.blocks.1.hook_resid_post"], "b1 resid_post");
                Assert.That(output.Keys.Where(k => k.Contains(".grad.")), Is.Empty, "no gradients without --backward");
            });
        }
        finally
        {
            Free(output);
        }
    }

    [Test]
    public void CacheNamesFilterKeepsOnlyMatchingHooks()
    {
        var outPath = TempPath($"cache-names-{model}.safetensors");
        AssertSuccess(Lens("cache", ModelDir, "--tokens", _tokens, "--names", @"attn\.hook_pattern$", "--out", outPath));
        var output = Load(outPath);
        try
        {
            Assert.That(output.Keys, Is.EquivalentTo(new[]
            {
                "b0.logits", "b0.loss", "b0.act.blocks.0.attn.hook_pattern", "b0.act.blocks.1.attn.hook_pattern",
            }));
            AssertClose(_reference["act.blocks.1.attn.hook_pattern"], output["b0.act.blocks.1.attn.hook_pattern"], "blocks.1 pattern");
        }
        finally
        {
            Free(output);
        }
    }

    [Test]
    public void CacheInFloat64()
    {
        var outPath = TempPath($"cache-f64-{model}.safetensors");
        AssertSuccess(Lens("cache", ModelDir, "--tokens", _tokens, "--dtype", "float64", "--names", "hook_pattern", "--out", outPath));
        var output = Load(outPath);
        try
        {
            Assert.Multiple(() =>
            {
                Assert.That(output["b0.logits"].DType, Is.EqualTo(ScalarType.Float64));
                Assert.That(output["b0.act.blocks.0.attn.hook_pattern"].DType, Is.EqualTo(ScalarType.Float64));
                AssertClose(_reference["logits"], output["b0.logits"], "float64 logits");
                AssertClose(_reference["act.blocks.0.attn.hook_pattern"], output["b0.act.blocks.0.attn.hook_pattern"], "float64 pattern");
                Assert.That(output["b0.loss"].ToDouble(), Is.EqualTo(_reference["loss"].ToDouble()).Within(Tolerance));
            });
        }
        finally
        {
            Free(output);
        }
    }

    [Test]
    public void CacheAllHooksAddsTheOptionalHookPoints()
    {
        var outPath = TempPath($"cache-all-{model}.safetensors");
        AssertSuccess(Lens("cache", ModelDir, "--tokens", _tokens, "--all-hooks", "--out", outPath));
        var output = Load(outPath);
        try
        {
            var optional = ReferenceKeys("act.").Where(IsOptional).ToList();
            Assert.That(optional, Has.Count.GreaterThanOrEqualTo(8));
            Assert.Multiple(() =>
            {
                foreach (var hook in optional)
                {
                    Assert.That(output.ContainsKey("b0.act." + hook), $"b0.act.{hook} is missing");
                    if (output.ContainsKey("b0.act." + hook)) AssertClose(_reference["act." + hook], output["b0.act." + hook], hook);
                }
                AssertClose(_reference["logits"], output["b0.logits"], "logits with every optional hook on");
            });
        }
        finally
        {
            Free(output);
        }
    }

    [TestCase("loss", "loss")]
    [TestCase("last-logits-sum", "last_logits_sum")]
    public void CacheBackwardWritesParameterGradients(string objective, string referenceName)
    {
        var outPath = TempPath($"cache-grad-{objective}-{model}.safetensors");
        AssertSuccess(Lens("cache", ModelDir, "--tokens", _tokens, "--names", "hook_embed", "--backward", objective, "--out", outPath));
        var output = Load(outPath);
        try
        {
            var expected = ReferenceKeys($"grad.{referenceName}.param.").ToList();
            var actual = output.Keys.Where(k => k.StartsWith("b0.grad.param.")).Select(k => k["b0.grad.param.".Length..]).ToList();
            Assert.That(actual, Is.EquivalentTo(expected), "one gradient per HF parameter");
            var hooks = output.Keys.Where(k => k.StartsWith("b0.grad.") && !k.StartsWith("b0.grad.param.")).ToList();
            Assert.That(hooks, Is.EqualTo(new[] { "b0.grad.hook_embed" }), "--names selects the hook gradients too");
            Assert.Multiple(() =>
            {
                foreach (var name in expected)
                    AssertClose(_reference[$"grad.{referenceName}.param.{name}"], output["b0.grad.param." + name], name);
                AssertClose(_reference["logits"], output["b0.logits"], "logits with --backward");
                if (_reference.TryGetValue($"grad.{referenceName}.hook_embed", out var embedGrad))
                    AssertCloseScaled(embedGrad, output["b0.grad.hook_embed"], "grad.hook_embed");
            });
        }
        finally
        {
            Free(output);
        }
    }

    /// <summary>Every backward-hook gradient TransformerLens recorded for logits[:, -1, :].sum(), hook by hook.</summary>
    [Test]
    public void CacheBackwardWritesHookGradients()
    {
        var outPath = TempPath($"cache-hook-grad-{model}.safetensors");
        AssertSuccess(Lens("cache", ModelDir, "--tokens", _tokens, "--backward", "last-logits-sum", "--out", outPath));
        var output = Load(outPath);
        try
        {
            var expected = ReferenceKeys("grad.last_logits_sum.").Where(k => !k.StartsWith("param.")).ToList();
            Assert.That(expected, Has.Count.GreaterThanOrEqualTo(30));
            var written = GradientHooks(output);
            Assert.That(written, Is.SupersetOf(expected), "a gradient for every hook TransformerLens has one for");
            Assert.Multiple(() =>
            {
                foreach (var hook in written)
                    Assert.That(output.TryGetValue("b0.act." + hook, out var act) ? act.Shape : null, Is.EqualTo(output["b0.grad." + hook].Shape),
                        $"b0.grad.{hook} has the shape of b0.act.{hook}");
                foreach (var hook in expected)
                    AssertCloseScaled(_reference["grad.last_logits_sum." + hook], output["b0.grad." + hook], "grad." + hook);
            });
        }
        finally
        {
            Free(output);
        }
    }

    /// <summary>
    /// The loss's hook gradients (the fixture holds none to compare with): the same hooks as for last-logits-sum, and
    /// consistent with each other: the embedding feeds the first residual stream unchanged, so their gradients agree.
    /// </summary>
    [Test]
    public void CacheBackwardLossWritesConsistentHookGradients()
    {
        var outPath = TempPath($"cache-hook-grad-loss-{model}.safetensors");
        AssertSuccess(Lens("cache", ModelDir, "--tokens", _tokens, "--backward", "loss", "--out", outPath));
        var output = Load(outPath);
        try
        {
            var expected = ReferenceKeys("grad.last_logits_sum.").Where(k => !k.StartsWith("param.")).ToList();
            Assert.That(GradientHooks(output), Is.SupersetOf(expected));
            Assert.Multiple(() =>
            {
                AssertClose(output["b0.grad.blocks.0.hook_resid_pre"], output["b0.grad.hook_embed"], "grad.hook_embed vs grad.blocks.0.hook_resid_pre", 1e-6);
                if (output.ContainsKey("b0.grad.hook_pos_embed"))
                    AssertClose(output["b0.grad.blocks.0.hook_resid_pre"], output["b0.grad.hook_pos_embed"], "grad.hook_pos_embed", 1e-6);
                using var scope = Torch.NewScope();
                Assert.That(output["b0.grad.ln_final.hook_normalized"].Abs().Sum().ToDouble(), Is.GreaterThan(0), "a non-zero gradient");
            });
        }
        finally
        {
            Free(output);
        }
    }

    private static List<string> GradientHooks(Dictionary<string, Tensor> output) =>
        output.Keys.Where(k => k.StartsWith("b0.grad.") && !k.StartsWith("b0.grad.param.")).Select(k => k["b0.grad.".Length..]).ToList();

    /// <summary>All four processing flags: TransformerLens's processed state dict, less the rotary buffers SharpLens does not export.</summary>
    [Test]
    public void ParamsWithEveryProcessingFlagReproducesTransformerLens()
    {
        var outPath = TempPath($"params-processed-{model}.safetensors");
        var r = Lens("params", ModelDir, "--fold-ln", "--center-writing-weights", "--center-unembed", "--fold-value-biases", "--out", outPath);
        AssertSuccess(r);
        Assert.That(r.Out, Does.Contain("processed TransformerLens weights"));
        var output = Load(outPath);
        try
        {
            var expected = ReferenceKeys("tl_processed.").Where(k => !k.EndsWith(".rotary_cos") && !k.EndsWith(".rotary_sin")).ToList();
            Assert.That(output.Keys, Is.EquivalentTo(expected));
            Assert.Multiple(() =>
            {
                foreach (var name in expected)
                {
                    Assert.That(output[name].DType, Is.EqualTo(ScalarType.Float32), name);
                    AssertClose(_reference["tl_processed." + name], output[name], name, 1e-5);
                }
            });
        }
        finally
        {
            Free(output);
        }
    }

    /// <summary>One processing flag implies TL names; --center-unembed changes only the unembedding, by its mean over the vocabulary.</summary>
    [Test]
    public void ParamsCenterUnembedAloneImpliesTlNames()
    {
        var outPath = TempPath($"params-center-unembed-{model}.safetensors");
        AssertSuccess(Lens("params", ModelDir, "--center-unembed", "--out", outPath));
        var output = Load(outPath);
        try
        {
            var expected = ReferenceKeys("tl.").Where(k => !k.Contains("rotary_")).ToList();
            Assert.That(output.Keys, Is.EquivalentTo(expected));
            Assert.Multiple(() =>
            {
                using var scope = Torch.NewScope();
                foreach (var name in expected.Where(n => !n.StartsWith("unembed.")))
                    AssertClose(_reference["tl." + name], output[name], name, 1e-6);
                var wU = _reference["tl.unembed.W_U"].To(ScalarType.Float64);
                AssertClose(wU - wU.Mean(-1, keepDim: true), output["unembed.W_U"], "centred W_U", 1e-5);
                var mean = output["unembed.W_U"].To(ScalarType.Float64).Mean(-1);
                Assert.That(mean.Abs().Max().ToDouble(), Is.LessThan(1e-6), "W_U has zero mean over the vocabulary");
            });
        }
        finally
        {
            Free(output);
        }
    }

    [Test]
    public void ParamsWritesEveryHfParameter()
    {
        var outPath = TempPath($"params-{model}.safetensors");
        AssertSuccess(Lens("params", ModelDir, "--out", outPath));
        var output = Load(outPath);
        var checkpoint = Load(Path.Combine(ModelDir, "model.safetensors"));
        try
        {
            Assert.That(output.Keys, Is.EquivalentTo(checkpoint.Keys));
            Assert.Multiple(() =>
            {
                foreach (var (name, t) in checkpoint) AssertClose(t, output[name], name, 0);
            });
        }
        finally
        {
            Free(output);
            Free(checkpoint);
        }
    }

    [Test]
    public void ParamsTlWritesTransformerLensWeights()
    {
        var outPath = TempPath($"params-tl-{model}.safetensors");
        AssertSuccess(Lens("params", ModelDir, "--tl", "--out", outPath));
        var output = Load(outPath);
        try
        {
            AssertClose(_reference["tl.blocks.0.attn.W_Q"], output["blocks.0.attn.W_Q"], "blocks.0.attn.W_Q", 0);
            var expected = ReferenceKeys("tl.").Where(k => !k.Contains("rotary_")).ToList();
            Assert.That(output.Keys, Is.EquivalentTo(expected));
            Assert.Multiple(() =>
            {
                foreach (var name in expected) AssertClose(_reference["tl." + name], output[name], name, 0);
            });
        }
        finally
        {
            Free(output);
        }
    }

    [Test]
    public void TrainReproducesTorchAdamW()
    {
        var outPath = TempPath($"train-{model}.safetensors");
        var r = Lens("train", ModelDir, "--tokens", _tokens, "--steps", "10", "--lr", "1e-3", "--weight-decay", "0.01", "--out", outPath);
        AssertSuccess(r);
        var lines = r.Out.Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => l.StartsWith("step ")).ToList();
        Assert.That(lines, Has.Count.EqualTo(10), "one line per step");
        var output = Load(outPath);
        try
        {
            Assert.That(output["losses"].DType, Is.EqualTo(ScalarType.Float32));
            AssertClose(_reference["adamw.losses"], output["losses"], "losses");
            var names = ReferenceKeys("adamw.step10.param.").ToList();
            Assert.That(output.Keys.Where(k => k != "losses"), Is.EquivalentTo(names));
            Assert.Multiple(() =>
            {
                foreach (var name in names) AssertClose(_reference["adamw.step10.param." + name], output[name], name);
            });
        }
        finally
        {
            Free(output);
        }
    }

    /// <summary>One plain SGD step (no weight decay, no momentum) is p - lr g, with g PyTorch's gradient of the loss.</summary>
    [Test]
    public void TrainOneSgdStepIsParameterMinusLrTimesGradient()
    {
        const double lr = 0.1;
        var outPath = TempPath($"train-sgd-{model}.safetensors");
        AssertSuccess(Lens("train", ModelDir, "--tokens", _tokens, "--steps", "1", "--optimizer", "sgd", "--lr", "0.1",
            "--weight-decay", "0", "--out", outPath));
        var output = Load(outPath);
        var checkpoint = Load(Path.Combine(ModelDir, "model.safetensors"));
        try
        {
            Assert.That(output["losses"].ToArray<float>().Single(), Is.EqualTo(_reference["loss"].ToDouble()).Within(Tolerance));
            Assert.Multiple(() =>
            {
                foreach (var (name, p0) in checkpoint)
                {
                    using var scope = Torch.NewScope();
                    var expected = p0.To(ScalarType.Float64) - lr * _reference["grad.loss.param." + name].To(ScalarType.Float64);
                    AssertClose(expected, output[name], name, 1e-5);
                }
            });
        }
        finally
        {
            Free(output);
            Free(checkpoint);
        }
    }
}

/// <summary>User errors: exit code 1 and <c>error: &lt;message&gt;</c> on stderr, never a stack trace.</summary>
public class CliErrorTests : CliTestBase
{
    private static string ModelDir => Fixtures.Path("tiny-gpt2");

    private string GoodTokens => WriteTokens("good.json", new[] { new[] { new long[] { 1, 2, 3, 4 }, new long[] { 5, 6, 7, 8 } } });

    /// <summary>A copy of tiny-gpt2 in the temp folder, to break.</summary>
    private string CopyModel(string name)
    {
        var dir = TempPath(name);
        Directory.CreateDirectory(dir);
        foreach (var f in new[] { "config.json", "model.safetensors" }) File.Copy(Path.Combine(ModelDir, f), Path.Combine(dir, f));
        return dir;
    }

    [Test]
    public void PickleOnlyFolderIsRefusedWithHowToConvert()
    {
        var dir = CopyModel("pickle-only");
        File.Delete(Path.Combine(dir, "model.safetensors"));
        File.WriteAllBytes(Path.Combine(dir, "pytorch_model.bin"), [0x80, 0x02, 0x7d, 0x71]);  // a pickle's first bytes
        var r = Lens("cache", dir, "--tokens", GoodTokens, "--out", TempPath("x.safetensors"));
        AssertUserError(r, "pytorch_model.bin", "safetensors", "save_pretrained");
        AssertOneLine(r);
    }

    [Test]
    public void ShardedCheckpointNamingAMissingShard()
    {
        var dir = CopyModel("sharded");
        File.Move(Path.Combine(dir, "model.safetensors"), Path.Combine(dir, "model-00001-of-00002.safetensors"));
        using (var file = SharpLens.Tensors.IO.SafeTensorsFile.Open(Path.Combine(dir, "model-00001-of-00002.safetensors")))
        {
            var map = file.Names.ToDictionary(n => n, n => n == "transformer.ln_f.bias" ? "model-00002-of-00002.safetensors" : "model-00001-of-00002.safetensors");
            File.WriteAllText(Path.Combine(dir, "model.safetensors.index.json"), JsonSerializer.Serialize(new { metadata = new { }, weight_map = map }));
        }
        var r = Lens("params", dir, "--out", TempPath("x.safetensors"));
        AssertUserError(r, "model.safetensors.index.json", "model-00002-of-00002.safetensors", "does not exist");
        AssertOneLine(r);
    }

    [Test]
    public void UnknownModelTypeListsTheSupportedOnes()
    {
        var dir = CopyModel("mamba");
        var config = Path.Combine(dir, "config.json");
        File.WriteAllText(config, File.ReadAllText(config).Replace("\"model_type\": \"gpt2\"", "\"model_type\": \"mamba\""));
        var r = Lens("cache", dir, "--tokens", GoodTokens, "--out", TempPath("x.safetensors"));
        AssertUserError(r, config, "'mamba'", "gpt2", "gpt_neox", "llama", "mistral", "qwen2", "gemma", "gemma2", "phi3");
        AssertOneLine(r);
    }

    [Test]
    public void NegativeTokenId()
    {
        var path = WriteTokens("negative.json", new[] { new[] { new long[] { 1, -3, 2 } } });
        var r = Lens("cache", ModelDir, "--tokens", path, "--out", TempPath("x.safetensors"));
        AssertUserError(r, path, "-3", "vocabulary");
        AssertOneLine(r);
    }

    [Test]
    public void EmptyBatch()
    {
        var path = TempPath("empty-batch.json");
        File.WriteAllText(path, """{"batches": [[]]}""");
        var r = Lens("cache", ModelDir, "--tokens", path, "--out", TempPath("x.safetensors"));
        AssertUserError(r, path, "batch 0 has no rows");
        AssertOneLine(r);
    }

    /// <summary>Batches of [3, 9], [1, 1] and [2, 40] in one file: all three are written; the one-token batch's loss is NaN, as HuggingFace's.</summary>
    [Test]
    public void OneTokenBatchesAreRunNotRefused()
    {
        long[] Row(int n, int seed) => Enumerable.Range(0, n).Select(i => (long)((seed * 37 + i * 11) % 1000)).ToArray();
        var path = WriteTokens("mixed.json", new[]
        {
            Enumerable.Range(0, 3).Select(r => Row(9, r)).ToArray(),
            new[] { Row(1, 7) },
            Enumerable.Range(0, 2).Select(r => Row(40, r + 3)).ToArray(),
        });
        var outPath = TempPath("mixed.safetensors");
        var r = Lens("cache", ModelDir, "--tokens", path, "--backward", "last-logits-sum", "--out", outPath);
        AssertSuccess(r);
        var results = Load(outPath);
        try
        {
            Assert.That(results["b0.logits"].Shape, Is.EqualTo(new long[] { 3, 9, 1000 }));
            Assert.That(results["b1.logits"].Shape, Is.EqualTo(new long[] { 1, 1, 1000 }));
            Assert.That(results["b2.logits"].Shape, Is.EqualTo(new long[] { 2, 40, 1000 }));
            Assert.That(double.IsNaN(results["b1.loss"].ToDouble()), Is.True, "a one-token row predicts nothing: NaN, as HuggingFace");
            Assert.That(double.IsFinite(results["b0.loss"].ToDouble()) && double.IsFinite(results["b2.loss"].ToDouble()), Is.True);
            // The one-token batch's logits are the first position of a longer run of the same token (causality).
            using var bridge = TransformerBridge.Load(ModelDir);
            using var scope = Torch.NewScope();
            var longer = bridge.Forward(Torch.FromArray(Row(1, 7).Concat(Row(5, 2)).ToArray(), 1, 6)).Narrow(1, 0, 1);
            Assert.That(MaxAbsDiff(longer, results["b1.logits"]), Is.LessThan(1e-5));
            Assert.That(results.Keys, Does.Contain("b1.grad.param.transformer.wte.weight").And.Contain("b1.grad.blocks.0.hook_resid_pre"));
        }
        finally
        {
            Free(results);
        }
    }

    [Test]
    public void BackwardLossOnAOneTokenBatchNamesTheBatch()
    {
        var path = WriteTokens("one.json", new[] { new[] { new long[] { 1, 2 } }, new[] { new long[] { 5 } } });
        var r = Lens("cache", ModelDir, "--tokens", path, "--backward", "loss", "--out", TempPath("x.safetensors"));
        AssertUserError(r, "batch 1", "1 token", "last-logits-sum");
        AssertOneLine(r);
    }

    [Test]
    public void TrainOnAOneTokenBatchSaysWhy()
    {
        var path = WriteTokens("one.json", new[] { new[] { new long[] { 5 } } });
        var r = Lens("train", ModelDir, "--tokens", path, "--steps", "1", "--out", TempPath("x.safetensors"));
        AssertUserError(r, path, "batch 0", "1 token", "at least 2");
    }

    [Test]
    public void VerifyOnAOneTokenBatchRunsTheChecksThatApply()
    {
        var path = WriteTokens("one.json", new[] { new[] { new long[] { 5 }, new long[] { 9 } } });
        var r = Lens("verify", ModelDir, "--tokens", path);
        AssertSuccess(r);
        Assert.That(r.Out, Does.Contain("n/a").And.Contain("forward_logits").And.Contain("all checks passed"));
    }

    [Test]
    public void MissingModelDirectory()
    {
        var missing = TempPath("no-such-model");
        var r = Lens("cache", missing, "--tokens", GoodTokens, "--out", TempPath("x.safetensors"));
        AssertUserError(r, missing, "does not exist");
        Assert.That(File.Exists(TempPath("x.safetensors")), Is.False);
    }

    [Test]
    public void ModelDirectoryWithoutConfig()
    {
        var empty = TempPath("empty-model");
        Directory.CreateDirectory(empty);
        AssertUserError(Lens("params", empty, "--out", TempPath("x.safetensors")), "config.json");
    }

    [Test]
    public void RaggedRows()
    {
        var path = WriteTokens("ragged.json", new[] { new[] { new long[] { 1, 2, 3 }, new long[] { 4, 5 } } });
        AssertUserError(Lens("cache", ModelDir, "--tokens", path, "--out", TempPath("x.safetensors")), path, "ragged", "row 1");
    }

    [Test]
    public void NonIntegerTokenId()
    {
        var path = TempPath("float-ids.json");
        File.WriteAllText(path, """{"batches": [[[1, 2.5, 3]]]}""");
        AssertUserError(Lens("cache", ModelDir, "--tokens", path, "--out", TempPath("x.safetensors")), path, "not an integer", "2.5");
    }

    [Test]
    public void TokensFileNotJson()
    {
        var path = TempPath("broken.json");
        File.WriteAllText(path, """{"batches": [[[1, 2""");
        AssertUserError(Lens("train", ModelDir, "--tokens", path, "--steps", "1", "--out", TempPath("x.safetensors")), path, "not valid JSON");
    }

    [Test]
    public void TokenIdOutsideVocabulary()
    {
        var path = WriteTokens("big-ids.json", new[] { new[] { new long[] { 1, 2, 100000 } } });
        AssertUserError(Lens("cache", ModelDir, "--tokens", path, "--out", TempPath("x.safetensors")), path, "100000", "vocabulary");
    }

    [Test]
    public void RegexMatchingNoHook()
    {
        AssertUserError(Lens("cache", ModelDir, "--tokens", GoodTokens, "--names", "no_such_hook", "--out", TempPath("x.safetensors")),
            "no_such_hook", "matches no hook point");
    }

    [Test]
    public void RegexMatchingOnlyOptionalHooksNeedsAllHooks()
    {
        AssertUserError(Lens("cache", ModelDir, "--tokens", GoodTokens, "--names", "hook_result", "--out", TempPath("x.safetensors")),
            "--all-hooks");
    }

    [Test]
    public void InvalidRegex()
    {
        AssertUserError(Lens("cache", ModelDir, "--tokens", GoodTokens, "--names", "(", "--out", TempPath("x.safetensors")),
            "not a valid regular expression");
    }

    [Test]
    public void OutputDirectoryMissing()
    {
        var outPath = Path.Combine(TempDir, "no-such-dir", "out.safetensors");
        AssertUserError(Lens("params", ModelDir, "--out", outPath), "cannot write", "does not exist");
    }

    [Test]
    public void OutputPathIsADirectory() => AssertUserError(Lens("params", ModelDir, "--out", TempDir), "is a directory");

    [Test]
    public void TextWithoutTokenizer() =>
        AssertUserError(Lens("cache", ModelDir, "--text", "hello world", "--out", TempPath("x.safetensors")), "needs a tokenizer", "--tokens");

    [Test]
    public void BatchOutOfRange() =>
        AssertUserError(Lens("train", ModelDir, "--tokens", GoodTokens, "--batch", "3", "--steps", "1", "--out", TempPath("x.safetensors")),
            "--batch 3", "1 batch");

    [Test]
    public void UnknownOptionIsAParseError()
    {
        var r = Lens("params", ModelDir, "--fold-everything", "--out", TempPath("x.safetensors"));
        AssertUserError(r, "--fold-everything");
    }

    [Test]
    public void CenterWritingWeightsWithoutFoldLn()
    {
        var outPath = TempPath("center-without-fold.safetensors");
        AssertUserError(Lens("params", ModelDir, "--center-writing-weights", "--out", outPath), "--center-writing-weights", "--fold-ln");
        Assert.That(File.Exists(outPath), Is.False);
    }

    [Test]
    public void MissingRequiredOption() => AssertUserError(Lens("train", ModelDir, "--tokens", GoodTokens, "--out", TempPath("x.safetensors")), "--steps");

    [Test]
    public void CommandsFreeEveryTensorTheyCreate()
    {
        var tokens = GoodTokens;
        // Tensors other tests left to their finalizers must not be freed in the middle of this count.
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
        var before = LiveTensorCount.Settled();
        AssertSuccess(Lens("cache", ModelDir, "--tokens", tokens, "--backward", "loss", "--all-hooks", "--out", TempPath("leak-cache.safetensors")));
        AssertSuccess(Lens("params", ModelDir, "--tl", "--out", TempPath("leak-params.safetensors")));
        AssertSuccess(Lens("params", ModelDir, "--fold-ln", "--center-writing-weights", "--center-unembed", "--fold-value-biases",
            "--out", TempPath("leak-params-processed.safetensors")));
        AssertSuccess(Lens("train", ModelDir, "--tokens", tokens, "--steps", "2", "--out", TempPath("leak-train.safetensors")));
        Assert.That(Lens("cache", ModelDir, "--tokens", tokens, "--names", "hook_result", "--out", TempPath("x.safetensors")).ExitCode, Is.EqualTo(1));
        Assert.That(Torch.LiveTensors, Is.EqualTo(before), "live native tensors after the commands");
    }

    [Test]
    public void HelpListsTheCommands()
    {
        var r = Lens("--help");
        Assert.That(r.ExitCode, Is.EqualTo(0), r.Error);
        Assert.That(r.Out, Does.Contain("cache").And.Contain("params").And.Contain("train").And.Contain("verify"));
        var cache = Lens("cache", "--help");
        Assert.That(cache.ExitCode, Is.EqualTo(0), cache.Error);
        Assert.That(cache.Out, Does.Contain("--backward").And.Contain("b{i}.grad.<hook>").And.Not.Contain("not produced"));
        var parameters = Lens("params", "--help");
        Assert.That(parameters.ExitCode, Is.EqualTo(0), parameters.Error);
        Assert.That(parameters.Out, Does.Contain("--fold-ln").And.Contain("--center-writing-weights").And.Contain("--center-unembed")
            .And.Contain("--fold-value-biases").And.Not.Contain("not available"));
        var verify = Lens("verify", "--help");
        Assert.That(verify.ExitCode, Is.EqualTo(0), verify.Error);
        Assert.That(verify.Out, Does.Contain("--dtype").And.Contain("--tokens").And.Contain("--json"));
    }
}

/// <summary><c>lens cache --text</c> on the tiny GPT-2 with a byte-level vocabulary (one id per byte, no merges) added beside it.</summary>
public class CliTextTests : CliTestBase
{
    private string _modelDir = null!;

    [OneTimeSetUp]
    public void CreateModelWithTokenizer()
    {
        _modelDir = TempPath("tiny-gpt2-bytes");
        Directory.CreateDirectory(_modelDir);
        foreach (var f in new[] { "config.json", "model.safetensors" })
            File.Copy(Path.Combine(Fixtures.Path("tiny-gpt2"), f), Path.Combine(_modelDir, f));
        File.WriteAllText(Path.Combine(_modelDir, "vocab.json"), JsonSerializer.Serialize(ByteVocabulary()));
        File.WriteAllText(Path.Combine(_modelDir, "merges.txt"), "#version: 0.2\n");
    }

    /// <summary>GPT-2's byte alphabet: each byte's character, with the byte as its id.</summary>
    private static Dictionary<string, int> ByteVocabulary()
    {
        var printable = Enumerable.Range('!', '~' - '!' + 1).Concat(Enumerable.Range(0xA1, 0xAC - 0xA1 + 1)).Concat(Enumerable.Range(0xAE, 0xFF - 0xAE + 1)).ToHashSet();
        var vocab = new Dictionary<string, int>();
        var n = 0;
        for (var b = 0; b < 256; b++)
            vocab[((char)(printable.Contains(b) ? b : 256 + n++)).ToString()] = b;
        return vocab;
    }

    [Test]
    public void TextIsTokenizedPaddedAndMatchesTheSameIdsGivenAsTokens()
    {
        var textOut = TempPath("text.safetensors");
        AssertSuccess(Lens("cache", _modelDir, "--text", "hello world", "--text", "hi", "--names", "hook_embed", "--out", textOut));
        var text = Load(textOut);
        try
        {
            var ids = Rows(text["b0.input_ids"]);
            Assert.That(ids[0], Is.EqualTo("hello world".Select(c => (long)c).ToArray()), "one id per byte");
            Assert.That(Rows(text["b0.attention_mask"])[1], Is.EqualTo(new long[] { 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0 }));
            // The same rows given as ids, unpadded, one batch each: the real positions' logits agree.
            var tokens = WriteTokens("text-ids.json", new[] { new[] { ids[0] }, new[] { ids[1][..2] } });
            var idsOut = TempPath("text-ids.safetensors");
            AssertSuccess(Lens("cache", _modelDir, "--tokens", tokens, "--names", "hook_embed", "--out", idsOut));
            var byIds = Load(idsOut);
            try
            {
                using var scope = Torch.NewScope();
                AssertClose(byIds["b0.logits"], text["b0.logits"].Narrow(0, 0, 1), "row 0 logits");
                AssertClose(byIds["b1.logits"], text["b0.logits"].Narrow(0, 1, 1).Narrow(1, 0, 2), "row 1 logits (real positions)");
            }
            finally
            {
                Free(byIds);
            }
        }
        finally
        {
            Free(text);
        }
    }

    [Test]
    public void TextAndTokensTogetherIsAnError()
    {
        var tokens = WriteTokens("t.json", new[] { new[] { new long[] { 1, 2 } } });
        var r = Lens("cache", _modelDir, "--text", "hi", "--tokens", tokens, "--out", TempPath("x.safetensors"));
        Assert.That(r.ExitCode, Is.EqualTo(1));
        Assert.That(r.Error, Does.StartWith("error: ").And.Contain("not both"));
    }
}
