using System.Globalization;
using System.Text.Json;

namespace SharpLens.Demo;

/// <summary>Everything <see cref="InductionDemo.Run"/> needs; the defaults are the demo's.</summary>
public sealed record DemoOptions
{
    /// <summary>Default pass mark of the induction score.</summary>
    public const double DefaultInductionThreshold = 0.4;
    /// <summary>Default rise of the repeated-half loss (nats) that ablating the induction heads must cause.</summary>
    public const double DefaultAblationMargin = 1.0;

    /// <summary>Where the models, the report and the results go (created if missing).</summary>
    public required string OutputDirectory { get; init; }
    /// <summary>The model's shape.</summary>
    public TinyModelConfig Model { get; init; } = new();
    /// <summary>Training hyper-parameters; its <see cref="TrainingOptions.Seed"/> is replaced by one derived from <see cref="Seed"/>.</summary>
    public TrainingOptions Training { get; init; } = new();
    /// <summary>The one seed of the run: initial weights, training data and evaluation data all derive from it.</summary>
    public ulong Seed { get; init; } = 20240501;
    /// <summary>Copy length of the evaluation sequences (inside the training range, so the model has seen such lengths).</summary>
    public int EvalSeqLen { get; init; } = 20;
    /// <summary>Evaluation sequences.</summary>
    public int EvalBatch { get; init; } = 64;
    /// <summary>At least one head must reach this induction score.</summary>
    public double InductionThreshold { get; init; } = DefaultInductionThreshold;
    /// <summary>Ablating the induction heads must raise the repeated-half loss by at least this many nats.</summary>
    public double AblationMargin { get; init; } = DefaultAblationMargin;
}

/// <summary>One ablation experiment: which heads were zeroed and the losses that followed.</summary>
/// <param name="Label">What the set is (e.g. "top induction heads").</param>
/// <param name="Heads">The zeroed heads.</param>
/// <param name="Losses">Losses with those heads ablated.</param>
public sealed record AblationResult(string Label, IReadOnlyList<HeadRef> Heads, HalfLosses Losses);

/// <summary>An attention pattern of one head on one example, for the report's heatmaps.</summary>
/// <param name="Head">The head.</param>
/// <param name="Why">Why it is shown (e.g. "top induction head").</param>
/// <param name="Pattern">Attention [query, key].</param>
public sealed record PatternExample(HeadRef Head, string Why, float[,] Pattern);

/// <summary>One pass/fail criterion of the demo.</summary>
/// <param name="Name">Short name.</param>
/// <param name="Requirement">What is required, with the numbers.</param>
/// <param name="Observed">What was measured.</param>
/// <param name="Passed">Whether the requirement holds.</param>
public sealed record Criterion(string Name, string Requirement, string Observed, bool Passed);

/// <summary>The findings of a demo run.</summary>
public sealed record DemoResult
{
    /// <summary>The options the run used (with the derived training seed).</summary>
    public required DemoOptions Options { get; init; }
    /// <summary>The training run.</summary>
    public required TrainingResult Training { get; init; }
    /// <summary>Head-detector scores on the evaluation batch.</summary>
    public required HeadScores Scores { get; init; }
    /// <summary>Losses of the intact model on the evaluation batch.</summary>
    public required HalfLosses Baseline { get; init; }
    /// <summary>Ablation experiments; the first is the one the ablation criterion judges.</summary>
    public required IReadOnlyList<AblationResult> Ablations { get; init; }
    /// <summary>The example sequence of the heatmaps (token ids).</summary>
    public required long[] ExampleTokens { get; init; }
    /// <summary>Attention patterns of the most notable heads on <see cref="ExampleTokens"/>.</summary>
    public required IReadOnlyList<PatternExample> Examples { get; init; }
    /// <summary>The pass/fail criteria.</summary>
    public required IReadOnlyList<Criterion> Criteria { get; init; }
    /// <summary>Where the trained model was saved.</summary>
    public required string ModelDirectory { get; init; }
    /// <summary>Where the initial model was written.</summary>
    public required string InitialModelDirectory { get; init; }
    /// <summary>The HTML report.</summary>
    public required string ReportPath { get; init; }
    /// <summary>The machine-readable results (JSON).</summary>
    public required string ResultsPath { get; init; }
    /// <summary>True when every criterion passed.</summary>
    public bool Passed => Criteria.All(c => c.Passed);
    /// <summary>The heads whose ablation the criterion judges (the first ablation's).</summary>
    public IReadOnlyList<HeadRef> InductionHeads => Ablations[0].Heads;
}

/// <summary>A finished demo run: its findings and the trained model, still in memory (dispose it).</summary>
public sealed class DemoRun : IDisposable
{
    internal DemoRun(TransformerBridge model, DemoResult result)
    {
        Model = model;
        Result = result;
    }

    /// <summary>The trained model (the same weights that were saved to <see cref="DemoResult.ModelDirectory"/>).</summary>
    public TransformerBridge Model { get; }
    /// <summary>The findings.</summary>
    public DemoResult Result { get; }

    /// <summary>Frees the model.</summary>
    public void Dispose() => Model.Dispose();
}

/// <summary>
/// The demo end to end: write a freshly initialised GPT-NeoX as a HuggingFace checkpoint, load it with
/// <see cref="TransformerBridge.Load"/>, train it on repeated random sequences, save it, then look for induction heads
/// with the head detectors and confirm them causally by ablation, and write an HTML report.
/// </summary>
public static class InductionDemo
{
    /// <summary>Sub-folder of the output holding the initial checkpoint.</summary>
    public const string InitialModelFolder = "initial-model";
    /// <summary>Sub-folder of the output holding the trained checkpoint.</summary>
    public const string ModelFolder = "model";
    /// <summary>The report's file name.</summary>
    public const string ReportFile = "report.html";
    /// <summary>The results' file name.</summary>
    public const string ResultsFile = "results.json";

    // Distinct, fixed offsets keep the three random streams apart for any seed.
    private const ulong TrainingSeedOffset = 0x9E3779B97F4A7C15;
    private const ulong EvalSeedOffset = 0xC2B2AE3D27D4EB4F;

    /// <summary>The seed of the training data for a run seed.</summary>
    public static ulong TrainingSeed(ulong seed) => unchecked(seed + TrainingSeedOffset);

    /// <summary>Runs the demo. Phases are announced through <paramref name="status"/>; training steps through <paramref name="progress"/>.</summary>
    /// <exception cref="ArgumentException">Invalid options.</exception>
    public static DemoRun Run(DemoOptions options, Action<TrainingProgress>? progress = null, Action<string>? status = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        var modelConfig = options.Model;
        modelConfig.Validate();
        var training = options.Training with { Seed = TrainingSeed(options.Seed) };
        training.Validate(modelConfig);
        if (options.EvalSeqLen < 2 || options.EvalSeqLen > modelConfig.VocabSize - 1 ||
            RepeatedSequences.SequenceLength(options.EvalSeqLen) > modelConfig.NPositions)
            throw new ArgumentException($"evaluation copy length {options.EvalSeqLen} does not fit the model");
        if (options.EvalBatch < 1) throw new ArgumentException($"evaluation batch must be at least 1, got {options.EvalBatch}");
        options = options with { Training = training };

        var outDir = Path.GetFullPath(options.OutputDirectory);
        Directory.CreateDirectory(outDir);
        var initialDir = Path.Combine(outDir, InitialModelFolder);
        var modelDir = Path.Combine(outDir, ModelFolder);

        status?.Invoke($"writing a freshly initialised GPT-NeoX (HF layout) to {initialDir}");
        TinyCheckpoint.WriteInitialModel(initialDir, modelConfig, options.Seed);
        var model = TransformerBridge.Load(initialDir);
        try
        {
            status?.Invoke($"training {training.Steps} steps of AdamW on repeated random sequences");
            var trained = InductionTrainer.Train(model, modelConfig, training, progress);

            status?.Invoke($"saving the trained model to {modelDir}");
            TinyCheckpoint.Save(model, modelDir, modelConfig);

            status?.Invoke("scoring heads and ablating the induction heads");
            var result = Analyze(model, modelConfig, options, trained, initialDir, modelDir, outDir);
            DemoReport.Write(result.ReportPath, result);
            WriteResults(result.ResultsPath, result);
            return new DemoRun(model, result);
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    private static DemoResult Analyze(TransformerBridge model, TinyModelConfig modelConfig, DemoOptions options, TrainingResult trained,
        string initialDir, string modelDir, string outDir)
    {
        using var scope = Torch.NewScope();
        using var evalGenerator = new Generator(unchecked(options.Seed + EvalSeedOffset));
        var seqLen = options.EvalSeqLen;
        var tokens = RepeatedSequences.Batch(evalGenerator, options.EvalBatch, seqLen, modelConfig);

        HeadScores scores;
        List<PatternExample> examples;
        using (Torch.NoGrad())
        {
            var (logits, cache) = model.RunWithCache(tokens, name => name.EndsWith(".attn.hook_pattern", StringComparison.Ordinal));
            using (cache)
            {
                logits.Dispose();
                scores = HeadDetectors.ScoreAll(cache, seqLen);
                examples = PickExamples(cache, scores, options.InductionThreshold);
            }
        }

        var baseline = HeadAblation.RepeatedLosses(model, tokens, seqLen);
        var rankedInduction = HeadScores.Ranked(scores.Induction);
        // The heads the criterion ablates: every head past the threshold (induction is often split over several
        // heads, and ablating one leaves the others to do the job), or the single best head when none passes.
        var inductionHeads = rankedInduction.Where(h => h.Score >= options.InductionThreshold).Select(h => new HeadRef(h.Layer, h.Head)).ToList();
        if (inductionHeads.Count == 0) inductionHeads.Add(new HeadRef(rankedInduction[0].Layer, rankedInduction[0].Head));

        var sets = new List<(string, IReadOnlyList<HeadRef>)> { (inductionHeads.Count == 1 ? "top induction head" : "top induction heads", inductionHeads) };
        if (inductionHeads.Count > 1) sets.Add(("top induction head alone", [inductionHeads[0]]));
        // The other half of the circuit: induction heads find "the token after the previous occurrence" by K-composition
        // with a previous-token head in an earlier layer, so ablating that head should break induction too.
        var firstInductionLayer = inductionHeads.Min(h => h.Layer);
        var earlier = HeadScores.Ranked(scores.PreviousToken).Where(h => h.Layer < firstInductionLayer).ToList();
        if (earlier.Count > 0) sets.Add(("top previous-token head (earlier layer)", [new HeadRef(earlier[0].Layer, earlier[0].Head)]));

        var ablations = new List<AblationResult>();
        foreach (var (label, heads) in sets)
            using (HeadAblation.Ablate(model, heads))
                ablations.Add(new AblationResult(label, heads, HeadAblation.RepeatedLosses(model, tokens, seqLen)));

        var best = rankedInduction[0];
        var rise = ablations[0].Losses.RepeatedHalf - baseline.RepeatedHalf;
        var criteria = new List<Criterion>
        {
            new("induction score",
                $"some head's induction score >= {Fmt(options.InductionThreshold, 2)}",
                $"best: {new HeadRef(best.Layer, best.Head)} at {Fmt(best.Score, 3)}",
                best.Score >= options.InductionThreshold),
            new("ablation effect",
                $"zero-ablating {Heads(inductionHeads)} raises the repeated-half loss by >= {Fmt(options.AblationMargin, 2)} nats",
                $"{Fmt(baseline.RepeatedHalf, 3)} -> {Fmt(ablations[0].Losses.RepeatedHalf, 3)} nats ({(rise >= 0 ? "+" : "")}{Fmt(rise, 3)})",
                rise >= options.AblationMargin),
        };

        return new DemoResult
        {
            Options = options,
            Training = trained,
            Scores = scores,
            Baseline = baseline,
            Ablations = ablations,
            ExampleTokens = tokens.Select(0, 0).ToArray<long>(),
            Examples = examples,
            Criteria = criteria,
            ModelDirectory = modelDir,
            InitialModelDirectory = initialDir,
            ReportPath = Path.Combine(outDir, ReportFile),
            ResultsPath = Path.Combine(outDir, ResultsFile),
        };
    }

    /// <summary>
    /// The example patterns: the best head by each score (each head once), from the first sequence. A head is called the
    /// "top" head of a kind only when its score reaches <paramref name="threshold"/> (the induction threshold); otherwise
    /// the caption says that no head qualifies and gives the best score.
    /// </summary>
    private static List<PatternExample> PickExamples(ActivationCache cache, HeadScores scores, double threshold)
    {
        var picks = new List<PatternExample>();
        void Add(double[,] s, string kind)
        {
            var top = HeadScores.Ranked(s)[0];
            var head = new HeadRef(top.Layer, top.Head);
            var score = s[top.Layer, top.Head];
            var why = score >= threshold
                ? $"top {kind} head"
                : $"highest {kind} score, though no head reaches {Fmt(threshold, 2)}";
            if (picks.Any(p => p.Head == head)) return;
            using var scope = Torch.NewScope();
            var p = cache["pattern", head.Layer].Select(0, 0).Select(0, head.Head).To(Device.CPU, ScalarType.Float32).Contiguous();
            var n = (int)p.Size(0);
            var flat = p.ToArray<float>();
            var m = new float[n, n];
            for (var i = 0; i < n; i++)
                for (var j = 0; j < n; j++)
                    m[i, j] = flat[i * n + j];
            picks.Add(new PatternExample(head, why, m));
        }
        Add(scores.Induction, "induction");
        Add(scores.PreviousToken, "previous-token");
        Add(scores.DuplicateToken, "duplicate-token");
        return picks;
    }

    /// <summary>Formats a number invariantly with <paramref name="decimals"/> decimals.</summary>
    public static string Fmt(double value, int decimals) => value.ToString("F" + decimals, CultureInfo.InvariantCulture);

    /// <summary>Heads as "L1H2, L1H3".</summary>
    public static string Heads(IEnumerable<HeadRef> heads) => string.Join(", ", heads);

    private static void WriteResults(string path, DemoResult r)
    {
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteBoolean("passed", r.Passed);
            w.WriteNumber("seed", r.Options.Seed);
            w.WriteNumber("steps", r.Options.Training.Steps);
            w.WriteNumber("final_loss", r.Training.FinalLoss);
            w.WriteNumber("final_repeated_loss", r.Training.RepeatedLosses[^1]);
            w.WriteNumber("training_seconds", r.Training.Elapsed.TotalSeconds);
            w.WriteNumber("tokens_per_second", r.Training.TokensPerSecond);
            w.WriteNumber("eval_seq_len", r.Options.EvalSeqLen);
            w.WriteNumber("induction_threshold", r.Options.InductionThreshold);
            w.WriteNumber("ablation_margin_nats", r.Options.AblationMargin);
            WriteGrid(w, "induction_scores", r.Scores.Induction);
            WriteGrid(w, "previous_token_scores", r.Scores.PreviousToken);
            WriteGrid(w, "duplicate_token_scores", r.Scores.DuplicateToken);
            w.WriteStartObject("baseline");
            w.WriteNumber("first_half_loss", r.Baseline.FirstHalf);
            w.WriteNumber("repeated_half_loss", r.Baseline.RepeatedHalf);
            w.WriteEndObject();
            w.WriteStartArray("ablations");
            foreach (var a in r.Ablations)
            {
                w.WriteStartObject();
                w.WriteString("label", a.Label);
                w.WriteStartArray("heads");
                foreach (var h in a.Heads) w.WriteStringValue(h.ToString());
                w.WriteEndArray();
                w.WriteNumber("first_half_loss", a.Losses.FirstHalf);
                w.WriteNumber("repeated_half_loss", a.Losses.RepeatedHalf);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteStartArray("criteria");
            foreach (var c in r.Criteria)
            {
                w.WriteStartObject();
                w.WriteString("name", c.Name);
                w.WriteString("requirement", c.Requirement);
                w.WriteString("observed", c.Observed);
                w.WriteBoolean("passed", c.Passed);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteEndObject();
        }
        File.WriteAllBytes(path, stream.ToArray());
    }

    private static void WriteGrid(Utf8JsonWriter w, string name, double[,] grid)
    {
        w.WriteStartArray(name);
        for (var l = 0; l < grid.GetLength(0); l++)
        {
            w.WriteStartArray();
            for (var h = 0; h < grid.GetLength(1); h++) w.WriteNumberValue(Math.Round(grid[l, h], 6));
            w.WriteEndArray();
        }
        w.WriteEndArray();
    }
}
