using System.Text.Json;
using SharpLens.Cli;
using SharpLens.Demo;
using SharpLens.Tensors.IO;

namespace SharpLens.Tests;

/// <summary>
/// The head detectors on hand-made attention patterns, whose scores are worked out by hand from the pattern's
/// definition (never from the detector itself).
/// </summary>
public class HeadDetectorTests
{
    // Layout [BOS, r1..r4, r1..r4]: L = 4, 9 positions; the second copy is positions 5..8.
    private const int L = 4;
    private const int N = 1 + 2 * L;

    /// <summary>A [1, 1, N, N] pattern where row q puts all its attention on key <paramref name="key"/>(q).</summary>
    private static Tensor OneHot(Func<int, int> key)
    {
        var p = new float[N * N];
        for (var q = 0; q < N; q++) p[q * N + key(q)] = 1;
        return Torch.FromArray(p, 1, 1, N, N);
    }

    private static bool SecondCopy(int q) => q >= 1 + L;

    // Exact patterns: second-copy rows on the named offset, every other row on BOS.
    private static Tensor Induction() => OneHot(q => SecondCopy(q) ? q - (L - 1) : 0);
    private static Tensor Duplicate() => OneHot(q => SecondCopy(q) ? q - L : 0);
    private static Tensor Previous() => OneHot(q => Math.Max(q - 1, 0));

    private static Tensor Uniform()
    {
        var p = new float[N * N];
        for (var q = 0; q < N; q++)
            for (var k = 0; k <= q; k++) p[q * N + k] = 1f / (q + 1);
        return Torch.FromArray(p, 1, 1, N, N);
    }

    [Test]
    public void ExactInductionPatternScoresOne()
    {
        using var scope = Torch.NewScope();
        var p = Induction();
        Assert.That(HeadDetectors.InductionScores(p, L)[0], Is.EqualTo(1.0));
        // Only row 1 (whose previous token is BOS, where the pattern parks first-copy rows) is previous-token: 1 of 8 rows.
        Assert.That(HeadDetectors.PreviousTokenScores(p)[0], Is.EqualTo(1.0 / 8).Within(1e-12));
        Assert.That(HeadDetectors.DuplicateTokenScores(p, L)[0], Is.EqualTo(0.0));
    }

    [Test]
    public void ExactPreviousTokenPatternScoresOne()
    {
        using var scope = Torch.NewScope();
        var p = Previous();
        Assert.That(HeadDetectors.PreviousTokenScores(p)[0], Is.EqualTo(1.0));
        Assert.That(HeadDetectors.InductionScores(p, L)[0], Is.EqualTo(0.0));  // L - 1 = 3 back, not 1
        Assert.That(HeadDetectors.DuplicateTokenScores(p, L)[0], Is.EqualTo(0.0));
    }

    [Test]
    public void ExactDuplicatePatternScoresOne()
    {
        using var scope = Torch.NewScope();
        var p = Duplicate();
        Assert.That(HeadDetectors.DuplicateTokenScores(p, L)[0], Is.EqualTo(1.0));
        Assert.That(HeadDetectors.InductionScores(p, L)[0], Is.EqualTo(0.0));
        Assert.That(HeadDetectors.PreviousTokenScores(p)[0], Is.EqualTo(1.0 / 8).Within(1e-12));
    }

    [Test]
    public void UniformCausalPatternScoresTheMeanOfOneOverRowLength()
    {
        using var scope = Torch.NewScope();
        var p = Uniform();
        // Second-copy rows 5..8 give each key 1/(q + 1); all rows 1..8 for previous-token.
        var secondCopy = (1.0 / 6 + 1.0 / 7 + 1.0 / 8 + 1.0 / 9) / 4;
        var allRows = (1.0 / 2 + 1.0 / 3 + 1.0 / 4 + 1.0 / 5 + 1.0 / 6 + 1.0 / 7 + 1.0 / 8 + 1.0 / 9) / 8;
        Assert.That(HeadDetectors.InductionScores(p, L)[0], Is.EqualTo(secondCopy).Within(1e-7));
        Assert.That(HeadDetectors.DuplicateTokenScores(p, L)[0], Is.EqualTo(secondCopy).Within(1e-7));
        Assert.That(HeadDetectors.PreviousTokenScores(p)[0], Is.EqualTo(allRows).Within(1e-7));
    }

    [Test]
    public void ScoresArePerHeadAndAveragedOverTheBatch()
    {
        using var scope = Torch.NewScope();
        // Batch 0: heads (induction, previous); batch 1: heads (uniform, previous).
        var b0 = Torch.Cat([Induction(), Previous()], 1);
        var b1 = Torch.Cat([Uniform(), Previous()], 1);
        var p = Torch.Cat([b0, b1], 0);  // [2, 2, N, N]
        var induction = HeadDetectors.InductionScores(p, L);
        var secondCopy = (1.0 / 6 + 1.0 / 7 + 1.0 / 8 + 1.0 / 9) / 4;
        Assert.That(induction, Has.Length.EqualTo(2));
        Assert.That(induction[0], Is.EqualTo((1.0 + secondCopy) / 2).Within(1e-7));
        Assert.That(induction[1], Is.EqualTo(0.0));
        Assert.That(HeadDetectors.PreviousTokenScores(p)[1], Is.EqualTo(1.0));
    }

    [Test]
    public void HalfAndHalfSplitsTheScore()
    {
        using var scope = Torch.NewScope();
        var p = (Induction() + Duplicate()) * 0.5;
        Assert.That(HeadDetectors.InductionScores(p, L)[0], Is.EqualTo(0.5));
        Assert.That(HeadDetectors.DuplicateTokenScores(p, L)[0], Is.EqualTo(0.5));
    }

    [Test]
    public void APrefixShiftsTheCopies()
    {
        using var scope = Torch.NewScope();
        // [BOS, x, r1..r4, r1..r4]: 10 positions, second copy at 6..9, prefix 2.
        const int n = 10;
        var a = new float[n * n];
        for (var q = 0; q < n; q++) a[q * n + (q >= 6 ? q - (L - 1) : 0)] = 1;
        var p = Torch.FromArray(a, 1, 1, n, n);
        Assert.That(HeadDetectors.InductionScores(p, L, prefix: 2)[0], Is.EqualTo(1.0));
        Assert.That(HeadDetectors.InductionScores(p, L, prefix: 1)[0], Is.LessThan(1.0));
    }

    [Test]
    public void CacheScoresComeBackAsALayerByHeadGrid()
    {
        using var scope = Torch.NewScope();
        var config = new TransformerConfig
        {
            ModelType = "gpt2", NLayers = 2, DModel = 8, NHeads = 2, DMlp = 8, DVocab = 16, NCtx = N,
            ActFn = ActivationFunction.GeluNew, NormEps = 1e-5, Positional = PositionalEmbedding.Learned,
        };
        using var cache = new ActivationCache(config, hookPoints: 0);
        cache.Store("blocks.0.attn.hook_pattern", Torch.Cat([Previous(), Uniform()], 1));
        cache.Store("blocks.1.attn.hook_pattern", Torch.Cat([Uniform(), Induction()], 1));
        var scores = HeadDetectors.ScoreAll(cache, L);
        Assert.That(scores.Induction[1, 1], Is.EqualTo(1.0));
        Assert.That(scores.PreviousToken[0, 0], Is.EqualTo(1.0));
        Assert.That(scores.Induction[0, 0], Is.EqualTo(0.0));
        var ranked = HeadScores.Ranked(scores.Induction);
        Assert.That((ranked[0].Layer, ranked[0].Head), Is.EqualTo((1, 1)));
    }

    [Test]
    public void MalformedPatternsAreRefused()
    {
        using var scope = Torch.NewScope();
        Assert.Throws<ArgumentException>(() => HeadDetectors.InductionScores(Torch.Zeros(1, N, N), L));           // 3-D
        Assert.Throws<ArgumentException>(() => HeadDetectors.InductionScores(Torch.Zeros(1, 1, N, N), 5));        // 1 + 2*5 > 9
        Assert.Throws<ArgumentException>(() => HeadDetectors.PreviousTokenScores(Torch.Zeros(1, 1, N, N - 1)));   // not square
    }
}

/// <summary>The demo's pieces: checkpoint writing, data, ablation, determinism.</summary>
public class DemoPieceTests
{
    private string _dir = null!;

    [OneTimeSetUp]
    public void CreateDir()
    {
        _dir = Path.Combine(Path.GetTempPath(), "sharplens-demo-pieces-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(_dir);
    }

    [OneTimeTearDown]
    public void DeleteDir()
    {
        if (Directory.Exists(_dir)) Directory.Delete(_dir, recursive: true);
    }

    private static readonly TinyModelConfig Small = new() { NLayers = 2, NHeads = 2, DModel = 16, DMlp = 32, VocabSize = 40, NPositions = 48 };

    [Test]
    public void InitialModelIsAGptNeoXCheckpointInitialisedLikeHuggingFace()
    {
        var dir = Path.Combine(_dir, "init");
        var config = new TinyModelConfig();  // the demo's own shape, so the statistics have enough samples
        TinyCheckpoint.WriteInitialModel(dir, config, seed: 7);

        using (var json = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "config.json"))))
        {
            var c = json.RootElement;
            Assert.That(c.GetProperty("model_type").GetString(), Is.EqualTo("gpt_neox"));
            Assert.That(c.GetProperty("num_hidden_layers").GetInt32(), Is.EqualTo(config.NLayers));
            Assert.That(c.GetProperty("intermediate_size").GetInt32(), Is.EqualTo(config.DMlp));
            Assert.That(c.GetProperty("rotary_pct").GetDouble(), Is.EqualTo(config.RotaryPct));
            Assert.That(c.GetProperty("tie_word_embeddings").GetBoolean(), Is.False);
            Assert.That(c.GetProperty("bos_token_id").GetInt32(), Is.EqualTo(config.VocabSize - 1));
        }

        using var file = SafeTensorsFile.Open(Path.Combine(dir, "model.safetensors"));
        Assert.That(file.Metadata["format"], Is.EqualTo("pt"), "HuggingFace refuses safetensors without format=pt");
        using var scope = Torch.NewScope();
        double Std(string name) => file.Load(name).To(ScalarType.Float64).Std().ToDouble();
        double Mean(string name) => file.Load(name).To(ScalarType.Float64).Mean().ToDouble();
        // GPT-NeoX's _init_weights: every Linear and Embedding normal(0, initializer_range), biases 0, LayerNorm weights 1.
        Assert.That(Std("gpt_neox.embed_in.weight"), Is.EqualTo(0.02).Within(0.002));
        Assert.That(Std("embed_out.weight"), Is.EqualTo(0.02).Within(0.002));
        Assert.That(Std("gpt_neox.layers.0.attention.query_key_value.weight"), Is.EqualTo(0.02).Within(0.002));
        Assert.That(Std("gpt_neox.layers.1.mlp.dense_4h_to_h.weight"), Is.EqualTo(0.02).Within(0.002));
        Assert.That(Mean("gpt_neox.layers.0.input_layernorm.weight"), Is.EqualTo(1.0));
        Assert.That(Std("gpt_neox.layers.0.input_layernorm.weight"), Is.EqualTo(0.0));
        Assert.That(file.Load("gpt_neox.layers.1.attention.query_key_value.bias").Abs().Max().ToDouble(), Is.EqualTo(0.0));

        using var bridge = TransformerBridge.Load(dir);
        Assert.That(bridge.Config.NLayers, Is.EqualTo(config.NLayers));
        Assert.That(bridge.Config.TiedEmbeddings, Is.False);
        Assert.That(bridge.NamedParameters(), Has.Count.EqualTo(2 + 12 * config.NLayers + 2));
    }

    [Test]
    public void SavingAnotherShapeIsRefusedWithBothShapesNamed()
    {
        var dir = Path.Combine(_dir, "shape");
        TinyCheckpoint.WriteInitialModel(dir, Small, 1);
        using var bridge = TransformerBridge.Load(dir);
        var ex = Assert.Throws<ArgumentException>(() => TinyCheckpoint.Save(bridge, Path.Combine(_dir, "shape-out"), new TinyModelConfig()));
        Assert.That(ex!.Message, Does.Contain("2 layers x 2 heads, d_model 16"));
    }

    [Test]
    public void SameSeedWritesTheSameBytes()
    {
        var a = Path.Combine(_dir, "seed-a");
        var b = Path.Combine(_dir, "seed-b");
        var c = Path.Combine(_dir, "seed-c");
        TinyCheckpoint.WriteInitialModel(a, Small, 3);
        TinyCheckpoint.WriteInitialModel(b, Small, 3);
        TinyCheckpoint.WriteInitialModel(c, Small, 4);
        var bytes = File.ReadAllBytes(Path.Combine(a, "model.safetensors"));
        Assert.That(File.ReadAllBytes(Path.Combine(b, "model.safetensors")), Is.EqualTo(bytes));
        Assert.That(File.ReadAllBytes(Path.Combine(c, "model.safetensors")), Is.Not.EqualTo(bytes));
    }

    [Test]
    public void RepeatedBatchesHaveBosThenTheSameDistinctTokensTwice()
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(1);
        const int len = 7, prefix = 3;
        var t = RepeatedSequences.Batch(g, 5, len, prefix, Small);
        Assert.That(t.Shape, Is.EqualTo(new long[] { 5, 1 + prefix + 2 * len }));
        var n = (int)t.Size(1);
        var flat = t.ToArray<long>();
        for (var b = 0; b < 5; b++)
        {
            var row = flat.AsSpan(b * n, n).ToArray();
            Assert.That(row[0], Is.EqualTo(Small.BosTokenId));
            var firstPart = row.Skip(1).Take(prefix + len).ToArray();
            Assert.That(firstPart.Distinct().Count(), Is.EqualTo(prefix + len), "prefix and copy tokens are distinct");
            Assert.That(firstPart.All(x => x >= 0 && x < Small.BosTokenId), Is.True);
            Assert.That(row.Skip(1 + prefix + len).ToArray(), Is.EqualTo(row.Skip(1 + prefix).Take(len).ToArray()));
        }
    }

    [Test]
    public void AblatingAHeadZeroesOnlyItsZ()
    {
        var dir = Path.Combine(_dir, "ablate");
        TinyCheckpoint.WriteInitialModel(dir, Small, 5);
        using var bridge = TransformerBridge.Load(dir);
        using var scope = Torch.NewScope();
        using var g = new Generator(2);
        var tokens = RepeatedSequences.Batch(g, 2, 6, Small);
        Tensor Z(bool ablate)
        {
            using var handle = ablate ? HeadAblation.Ablate(bridge, [new HeadRef(1, 0)]) : null;
            var (logits, cache) = bridge.RunWithCache(tokens, n => n == "blocks.1.attn.hook_z");
            using (cache)
                return cache["z", 1].Clone();
        }
        var plain = Z(false);
        var ablated = Z(true);
        Assert.That(ablated.Select(2, 0).Abs().Max().ToDouble(), Is.EqualTo(0.0));
        Assert.That(ablated.Select(2, 1).ValueEquals(plain.Select(2, 1)), Is.True);
        Assert.That(plain.Select(2, 0).Abs().Max().ToDouble(), Is.GreaterThan(0.0));
        // The scope removed the hook again.
        Assert.That(Z(false).ValueEquals(plain), Is.True);
        Assert.Throws<ArgumentException>(() => HeadAblation.Ablate(bridge, [new HeadRef(2, 0)]));
    }

    [Test]
    public void SameSeedGivesTheSameTrainingRun()
    {
        var dir = Path.Combine(_dir, "repro");
        TinyCheckpoint.WriteInitialModel(dir, Small, 9);
        var options = new TrainingOptions { Steps = 25, BatchSize = 8, MinSegment = 4, MaxSegment = 10, MaxPrefix = 4, WarmupSteps = 5, Seed = 11 };
        float[] Run(ulong seed)
        {
            using var bridge = TransformerBridge.Load(dir);
            return InductionTrainer.Train(bridge, Small, options with { Seed = seed }).RepeatedLosses;
        }
        var first = Run(11);
        Assert.That(Run(11), Is.EqualTo(first), "same seed, same losses bit for bit");
        Assert.That(Run(12), Is.Not.EqualTo(first));
        Assert.That(first.TakeLast(5).Average(), Is.LessThan(first.Take(5).Average()), "training lowers the trained (repeated-half) loss");
    }
}

/// <summary>
/// The demo end to end at reduced length: it must still find induction heads, its saved model must reload with
/// identical logits, and the command line must report the finding and exit 0.
/// </summary>
[NonParallelizable]
public class DemoEndToEndTests
{
    /// <summary>The default run, so the test proves what <c>./build.sh demo</c> does.</summary>
    private const int Steps = TrainingOptions.DefaultSteps;

    private string _dir = null!;
    private int _threads;

    [OneTimeSetUp]
    public void SetUp()
    {
        _dir = Path.Combine(Path.GetTempPath(), "sharplens-demo-e2e-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(_dir);
        // The CLI runs the demo on one thread; the library run must match it for identical numbers.
        _threads = Torch.NumThreads;
        Torch.NumThreads = 1;
    }

    [OneTimeTearDown]
    public void TearDown()
    {
        Torch.NumThreads = _threads;
        if (Directory.Exists(_dir)) Directory.Delete(_dir, recursive: true);
    }

    [Test]
    public void DemoFindsInductionHeadsAndItsSavedModelReloadsExactly()
    {
        var outDir = Path.Combine(_dir, "lib");
        var options = new DemoOptions { OutputDirectory = outDir, Training = new TrainingOptions { Steps = Steps } };
        using var run = InductionDemo.Run(options);
        var r = run.Result;

        Assert.That(r.Passed, Is.True, string.Join("\n", r.Criteria.Select(c => $"{c.Name}: {c.Observed} (needs {c.Requirement})")));
        var best = HeadScores.Ranked(r.Scores.Induction)[0];
        Assert.That(best.Score, Is.GreaterThanOrEqualTo(DemoOptions.DefaultInductionThreshold));
        Assert.That(best.Layer, Is.GreaterThan(0), "an induction head needs a previous-token head in an earlier layer");
        Assert.That(r.Ablations[0].Losses.RepeatedHalf - r.Baseline.RepeatedHalf, Is.GreaterThanOrEqualTo(DemoOptions.DefaultAblationMargin));
        // The other half of the circuit: a previous-token head in layer 0 whose ablation breaks induction as well (K-composition).
        var previous = r.Ablations.Single(a => a.Label.StartsWith("top previous-token head", StringComparison.Ordinal));
        Assert.That(previous.Heads[0].Layer, Is.EqualTo(0));
        Assert.That(r.Scores.PreviousToken[0, previous.Heads[0].Head], Is.GreaterThan(0.5));
        Assert.That(previous.Losses.RepeatedHalf - r.Baseline.RepeatedHalf, Is.GreaterThanOrEqualTo(DemoOptions.DefaultAblationMargin));

        var html = File.ReadAllText(r.ReportPath);
        Assert.That(html, Does.Contain("<svg"));
        Assert.That(html, Does.Not.Contain("<script"));
        // Self-contained: the only URL is the SVG namespace name, which is never fetched.
        Assert.That(html.Replace("http://www.w3.org/2000/svg", ""), Does.Not.Contain("http:").And.Not.Contain("https:"));
        Assert.That(File.Exists(r.ResultsPath), Is.True);

        // The saved checkpoint: HF names, every leaf parameter once; loads back to the very same logits.
        using (var file = SafeTensorsFile.Open(Path.Combine(r.ModelDirectory, "model.safetensors")))
        {
            Assert.That(file.Names, Does.Contain("gpt_neox.embed_in.weight").And.Contain("embed_out.weight"));
            Assert.That(file.Names, Has.Count.EqualTo(run.Model.NamedParameters().Count));
        }
        using var reloaded = TransformerBridge.Load(r.ModelDirectory);
        using var scope = Torch.NewScope();
        using var g = new Generator(123);
        var tokens = RepeatedSequences.Batch(g, 4, 20, 3, options.Model);
        using (Torch.NoGrad())
        {
            var expected = run.Model.Forward(tokens);
            var actual = reloaded.Forward(tokens);
            Assert.That((expected - actual).Abs().Max().ToDouble(), Is.EqualTo(0.0));
        }

        // The command line with the same seed and steps: exit 0, the finding printed, the same training run.
        var cliOut = Path.Combine(_dir, "cli");
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        var code = Program.Run(["demo", "--steps", Steps.ToString(System.Globalization.CultureInfo.InvariantCulture), "--out", cliOut], stdout, stderr);
        var text = stdout.ToString();
        Assert.That(code, Is.EqualTo(0), $"{stderr}\n{text}");
        Assert.That(text, Does.Contain("PASS: found induction head(s)"));
        Assert.That(text, Does.Contain($"induction score >= {DemoOptions.DefaultInductionThreshold:F2}"));
        Assert.That(text, Does.Contain("step 1/"), "plain progress lines when the output is redirected");
        Assert.That(File.ReadAllText(Path.Combine(cliOut, "report.html")), Does.Contain("<svg"));
        using var results = JsonDocument.Parse(File.ReadAllText(Path.Combine(cliOut, "results.json")));
        Assert.That(results.RootElement.GetProperty("final_loss").GetDouble(), Is.EqualTo(r.Training.FinalLoss),
            "same seed, same final loss");
        using var cliModel = TransformerBridge.Load(Path.Combine(cliOut, "model"));
        using (Torch.NoGrad())
            Assert.That((cliModel.Forward(tokens) - run.Model.Forward(tokens)).Abs().Max().ToDouble(), Is.EqualTo(0.0));
    }

    [Test]
    public void BadOptionsAreUserErrors()
    {
        var stderr = new StringWriter();
        Assert.That(Program.Run(["demo", "--steps", "0", "--out", Path.Combine(_dir, "bad")], new StringWriter(), stderr), Is.EqualTo(1));
        Assert.That(stderr.ToString(), Does.Contain("--steps"));
        var file = Path.Combine(_dir, "a-file");
        File.WriteAllText(file, "");
        stderr = new StringWriter();
        Assert.That(Program.Run(["demo", "--out", file], new StringWriter(), stderr), Is.EqualTo(1));
        Assert.That(stderr.ToString(), Does.Contain("is a file"));
    }

    [Test]
    public void TooFewStepsFailWithTheCriterionNamed()
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        var code = Program.Run(["demo", "--steps", "3", "--out", Path.Combine(_dir, "short")], stdout, stderr);
        Assert.That(code, Is.EqualTo(1), stdout.ToString());
        Assert.That(stderr.ToString(), Does.Contain("the induction score criterion was not met"));
        Assert.That(File.ReadAllText(Path.Combine(_dir, "short", "report.html")), Does.Contain("FAIL"));
    }
}
