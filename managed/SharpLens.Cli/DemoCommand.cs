using System.CommandLine;
using System.Globalization;
using SharpLens.Demo;
using Spectre.Console;

namespace SharpLens.Cli;

/// <summary>
/// <c>lens demo</c>: train a small GPT-NeoX (Pythia layout) from scratch on repeated random sequences, find its induction heads with
/// the head detectors, confirm them by ablation, and write an HTML report. The work is done by
/// <see cref="InductionDemo"/>; this command parses options, shows progress and prints the findings.
/// </summary>
internal static class DemoCommand
{
    /// <summary>Default output folder.</summary>
    public const string DefaultOut = "demo-output";

    public static Command Build(CliContext context)
    {
        var defaults = new DemoOptions { OutputDirectory = DefaultOut };
        var steps = new Option<int>("--steps")
        {
            Description = $"Training steps (default {TrainingOptions.DefaultSteps}, chosen so induction heads form reliably)",
            DefaultValueFactory = _ => TrainingOptions.DefaultSteps, HelpName = "N",
        };
        var seed = new Option<ulong>("--seed")
        {
            Description = "Seed of the whole run (initial weights, training and evaluation data): the same seed gives the same run",
            DefaultValueFactory = _ => defaults.Seed,
        };
        var output = new Option<string>("--out")
        {
            Description = "Output folder: initial-model/, model/ (trained, HuggingFace format), report.html, results.json",
            DefaultValueFactory = _ => DefaultOut, HelpName = "DIR",
        };
        var lr = new Option<double>("--lr") { Description = "Peak AdamW learning rate", DefaultValueFactory = _ => defaults.Training.LearningRate };
        var batch = new Option<int>("--batch-size") { Description = "Sequences per training step", DefaultValueFactory = _ => defaults.Training.BatchSize };
        var threshold = new Option<double>("--induction-threshold")
        {
            Description = "Pass mark: some head's induction score must reach it", DefaultValueFactory = _ => DemoOptions.DefaultInductionThreshold,
        };
        var margin = new Option<double>("--ablation-margin")
        {
            Description = "Pass mark: ablating the induction heads must raise the repeated-half loss by this many nats",
            DefaultValueFactory = _ => DemoOptions.DefaultAblationMargin,
        };
        var threads = new Option<int>("--threads")
        {
            Description = "libtorch intra-op threads (default 1: the model is so small that more threads mostly add synchronisation, " +
                          "and one thread makes the run bit-for-bit reproducible on any machine)",
            DefaultValueFactory = _ => 1, HelpName = "N",
        };
        var command = new Command("demo",
            "Train a 2-layer GPT-NeoX (Pythia layout) from scratch (CPU, under a minute) on random token sequences repeated twice, then find induction heads: " +
            "score every head (induction, previous-token, duplicate-token), zero-ablate the induction heads and compare losses, " +
            "and write a self-contained HTML report. Exit code 0 only when a head passes the induction threshold and ablating " +
            "the induction heads raises the repeated-half loss by the margin; 1 otherwise.")
        {
            steps, seed, output, lr, batch, threshold, margin, threads,
        };
        command.SetAction(parse => context.Execute(() => Run(context, new Settings(parse.GetValue(steps), parse.GetValue(seed),
            parse.GetValue(output)!, parse.GetValue(lr), parse.GetValue(batch), parse.GetValue(threshold), parse.GetValue(margin),
            parse.GetValue(threads)))));
        return command;
    }

    private sealed record Settings(int Steps, ulong Seed, string Out, double Lr, int BatchSize, double Threshold, double Margin, int Threads);

    private static int Run(CliContext context, Settings s)
    {
        if (s.Threads < 1) throw new CliException($"--threads must be at least 1, got {s.Threads}");
        // The thread count is process-wide: restore it, so that running the command in-process (tests) leaves no trace.
        var previousThreads = Torch.NumThreads;
        Torch.NumThreads = s.Threads;
        try
        {
            return RunDemo(context, s);
        }
        finally
        {
            Torch.NumThreads = previousThreads;
        }
    }

    private static int RunDemo(CliContext context, Settings s)
    {
        if (s.Steps < 1) throw new CliException($"--steps must be at least 1, got {s.Steps}");
        if (s.BatchSize < 1) throw new CliException($"--batch-size must be at least 1, got {s.BatchSize}");
        if (!(s.Lr > 0) || double.IsInfinity(s.Lr)) throw new CliException($"--lr must be a positive number, got {s.Lr}");
        if (!(s.Threshold > 0 && s.Threshold <= 1)) throw new CliException($"--induction-threshold must lie in (0, 1], got {s.Threshold}");
        if (!(s.Margin >= 0) || double.IsInfinity(s.Margin)) throw new CliException($"--ablation-margin must be a non-negative number, got {s.Margin}");
        if (string.IsNullOrWhiteSpace(s.Out)) throw new CliException("--out is empty");
        if (File.Exists(s.Out)) throw new CliException($"--out '{s.Out}' is a file; give a folder");
        try
        {
            Directory.CreateDirectory(s.Out);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            throw new CliException($"cannot create output folder '{s.Out}': {e.Message}", e);
        }

        var defaults = new DemoOptions { OutputDirectory = s.Out };
        var options = defaults with
        {
            Seed = s.Seed,
            InductionThreshold = s.Threshold,
            AblationMargin = s.Margin,
            Training = defaults.Training with { Steps = s.Steps, LearningRate = s.Lr, BatchSize = s.BatchSize },
        };

        // A live progress bar only on a real terminal; redirected output (tests, CI, logs) gets plain periodic lines.
        var interactive = ReferenceEquals(context.Out, Console.Out) && !Console.IsOutputRedirected;
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(context.Out),
            Ansi = interactive ? AnsiSupport.Detect : AnsiSupport.No,
            ColorSystem = interactive ? ColorSystemSupport.Detect : ColorSystemSupport.NoColors,
            Interactive = interactive ? InteractionSupport.Detect : InteractionSupport.No,
        });
        var m = options.Model;
        console.WriteLine($"lens demo: a {m.NLayers}-layer, {m.NHeads}-head GPT-NeoX (d_model {m.DModel}, vocab {m.VocabSize}) trained from scratch on " +
                          $"[BOS, r, r] sequences of random tokens; seed {options.Seed}, {options.Training.Steps} steps, {Torch.NumThreads} thread(s)");
        console.WriteLine($"pass marks: induction score >= {Inv(options.InductionThreshold, 2)} for some head, and ablating the induction heads " +
                          $"raises the repeated-half loss by >= {Inv(options.AblationMargin, 2)} nats");

        DemoRun run;
        try
        {
            run = interactive ? RunWithProgressBar(console, options) : RunWithLines(context.Out, options);
        }
        catch (ArgumentException e)
        {
            throw new CliException(e.Message, e);
        }
        using (run)
        {
            var r = run.Result;
            PrintFindings(console, r);
            if (r.Passed)
            {
                var best = HeadScores.Ranked(r.Scores.Induction)[0];
                console.WriteLine($"PASS: found induction head(s) {InductionDemo.Heads(r.InductionHeads)} (best {new HeadRef(best.Layer, best.Head)}, " +
                                  $"induction score {Inv(best.Score, 3)}); ablating them raises the repeated-half loss " +
                                  $"{Inv(r.Baseline.RepeatedHalf, 3)} -> {Inv(r.Ablations[0].Losses.RepeatedHalf, 3)} nats");
                return Program.Success;
            }
            foreach (var c in r.Criteria.Where(c => !c.Passed))
                context.Error.WriteLine($"error: demo failed: the {c.Name} criterion was not met: required {c.Requirement}; observed {c.Observed}");
            context.Error.WriteLine("hint: train longer (--steps) or try another --seed");
            context.Error.Flush();
            return Program.UserError;
        }
    }

    private static DemoRun RunWithLines(TextWriter output, DemoOptions options)
    {
        var every = Math.Max(1, options.Training.Steps / 20);
        return InductionDemo.Run(options,
            p =>
            {
                if (p.Step % every != 0 && p.Step != p.TotalSteps && p.Step != 1) return;
                output.WriteLine($"step {p.Step}/{p.TotalSteps}  loss {Inv(p.Loss, 4)}  repeated-half {Inv(p.RepeatedLoss, 4)}  " +
                                 $"{p.TokensPerSecond.ToString("N0", CultureInfo.InvariantCulture)} tok/s  ETA {Duration(p.Eta)}");
                output.Flush();
            },
            status => output.WriteLine(status));
    }

    private static DemoRun RunWithProgressBar(IAnsiConsole console, DemoOptions options)
    {
        DemoRun? run = null;
        console.Progress()
            .AutoClear(false)
            .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn(),
                new RemainingTimeColumn(), new SpinnerColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask("training", maxValue: options.Training.Steps);
                run = InductionDemo.Run(options,
                    p =>
                    {
                        task.Value = p.Step;
                        task.Description = $"step {p.Step}/{p.TotalSteps} loss {Inv(p.Loss, 3)} rep {Inv(p.RepeatedLoss, 3)} " +
                                           $"{p.TokensPerSecond.ToString("N0", CultureInfo.InvariantCulture)} tok/s ETA {Duration(p.Eta)}";
                    },
                    status => console.MarkupLine($"[grey]{Markup.Escape(status)}[/]"));
            });
        return run!;
    }

    private static void PrintFindings(IAnsiConsole console, DemoResult r)
    {
        var heads = new Table().Title($"head scores on {r.Options.EvalBatch} fresh sequences (copy length {r.Options.EvalSeqLen})")
            .AddColumn("head").AddColumn(new TableColumn("induction").RightAligned())
            .AddColumn(new TableColumn("previous token").RightAligned()).AddColumn(new TableColumn("duplicate token").RightAligned());
        foreach (var (layer, head, score) in HeadScores.Ranked(r.Scores.Induction))
        {
            var mark = score >= r.Options.InductionThreshold ? " *" : "";
            heads.AddRow(Markup.Escape($"L{layer}H{head}{mark}"), Inv(score, 3), Inv(r.Scores.PreviousToken[layer, head], 3),
                Inv(r.Scores.DuplicateToken[layer, head], 3));
        }
        heads.Caption($"* induction score >= {Inv(r.Options.InductionThreshold, 2)}");
        console.Write(heads);

        var ablation = new Table().Title("zero-ablation at hook_z: mean loss (nats) predicting r2..rL")
            .AddColumn("heads zeroed").AddColumn(new TableColumn("first half (untrained)").RightAligned())
            .AddColumn(new TableColumn("repeated half").RightAligned()).AddColumn(new TableColumn("change").RightAligned());
        ablation.AddRow("none", Inv(r.Baseline.FirstHalf, 3), Inv(r.Baseline.RepeatedHalf, 3), "");
        foreach (var a in r.Ablations)
        {
            var d = a.Losses.RepeatedHalf - r.Baseline.RepeatedHalf;
            ablation.AddRow(Markup.Escape($"{a.Label}: {InductionDemo.Heads(a.Heads)}"), Inv(a.Losses.FirstHalf, 3), Inv(a.Losses.RepeatedHalf, 3),
                (d >= 0 ? "+" : "") + Inv(d, 3));
        }
        console.Write(ablation);

        console.WriteLine($"training: {r.Options.Training.Steps} steps in {Inv(r.Training.Elapsed.TotalSeconds, 1)} s " +
                          $"({r.Training.TokensPerSecond.ToString("N0", CultureInfo.InvariantCulture)} tok/s); final loss {Inv(r.Training.FinalLoss, 4)}, " +
                          $"repeated half {Inv(r.Training.RepeatedLosses[^1], 4)}");
        foreach (var c in r.Criteria)
            console.WriteLine($"[{(c.Passed ? "pass" : "FAIL")}] {c.Name}: {c.Requirement}; observed {c.Observed}");
        console.WriteLine($"trained model (HuggingFace format): {r.ModelDirectory}");
        console.WriteLine($"report: {r.ReportPath}");
        console.WriteLine($"results: {r.ResultsPath}");
    }

    private static string Inv(double v, int decimals) => InductionDemo.Fmt(v, decimals);

    private static string Duration(TimeSpan t) =>
        t.TotalHours >= 1 ? t.ToString(@"h\:mm\:ss", CultureInfo.InvariantCulture) : t.ToString(@"m\:ss", CultureInfo.InvariantCulture);
}
