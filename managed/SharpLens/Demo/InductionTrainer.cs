using System.Diagnostics;
using SharpLens.Tensors.Optim;

namespace SharpLens.Demo;

/// <summary>Hyper-parameters of <see cref="InductionTrainer"/>.</summary>
public sealed record TrainingOptions
{
    /// <summary>The default number of steps: the induction heads formed by step 600 in every run we made with the default shape.</summary>
    public const int DefaultSteps = 1000;

    /// <summary>Optimizer steps.</summary>
    public int Steps { get; init; } = DefaultSteps;
    /// <summary>Sequences per step.</summary>
    public int BatchSize { get; init; } = 32;
    /// <summary>Peak AdamW learning rate.</summary>
    public double LearningRate { get; init; } = 1e-3;
    /// <summary>Steps of linear warm-up to the peak rate; Adam's first steps are otherwise erratic.</summary>
    public int WarmupSteps { get; init; } = 50;
    /// <summary>AdamW's decoupled weight decay.</summary>
    public double WeightDecay { get; init; } = 0.01;
    /// <summary>Shortest copy length drawn for a training batch.</summary>
    public int MinSegment { get; init; } = 8;
    /// <summary>Longest copy length drawn for a training batch.</summary>
    public int MaxSegment { get; init; } = 30;
    /// <summary>Longest random prefix before the first copy (each batch draws its own length from [0, MaxPrefix]); see <see cref="RepeatedSequences.Batch(Generator, int, int, int, TinyModelConfig)"/>.</summary>
    public int MaxPrefix { get; init; } = 16;
    /// <summary>
    /// Train on the second copy's predictions only (the part induction can predict; on by default) instead of every
    /// next-token prediction. The first copy's targets are unpredictable: their gradients are noise that Adam's
    /// normalisation spreads over every step, and with them the induction heads formed several times later in our runs
    /// (not within 1,000 steps, against about 600 without).
    /// </summary>
    public bool RepeatedHalfLossOnly { get; init; } = true;
    /// <summary>Seed of the data stream (batch contents and copy lengths).</summary>
    public ulong Seed { get; init; } = 1;

    /// <summary>Final learning rate as a fraction of the peak, reached by cosine decay at the last step.</summary>
    public double FinalLearningRateFraction { get; init; } = 0.1;

    /// <summary>
    /// The learning rate of a step (1-based): linear warm-up to the peak, then cosine decay to
    /// <see cref="FinalLearningRateFraction"/> of it. The decay keeps the late, low-loss phase from being knocked out
    /// of its basin by steps sized for the early plateau.
    /// </summary>
    public double LearningRateAt(int step)
    {
        if (WarmupSteps > 0 && step <= WarmupSteps) return LearningRate * step / WarmupSteps;
        var span = Math.Max(1, Steps - WarmupSteps);
        var t = Math.Clamp((step - WarmupSteps) / (double)span, 0, 1);
        var floor = FinalLearningRateFraction;
        return LearningRate * (floor + (1 - floor) * 0.5 * (1 + Math.Cos(Math.PI * t)));
    }

    /// <summary>Throws <see cref="ArgumentException"/> for options that cannot train.</summary>
    public void Validate(TinyModelConfig model)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (Steps < 1) throw new ArgumentException($"steps must be at least 1, got {Steps}");
        if (BatchSize < 1) throw new ArgumentException($"batch size must be at least 1, got {BatchSize}");
        if (!(LearningRate > 0) || double.IsInfinity(LearningRate)) throw new ArgumentException($"learning rate must be a positive number, got {LearningRate}");
        if (!(FinalLearningRateFraction >= 0 && FinalLearningRateFraction <= 1))
            throw new ArgumentException($"the final learning-rate fraction must lie in [0, 1], got {FinalLearningRateFraction}");
        if (WarmupSteps < 0) throw new ArgumentException($"warm-up steps must be non-negative, got {WarmupSteps}");
        if (!(WeightDecay >= 0) || double.IsInfinity(WeightDecay)) throw new ArgumentException($"weight decay must be a non-negative number, got {WeightDecay}");
        if (MinSegment < 2 || MaxSegment < MinSegment)
            throw new ArgumentException($"segment lengths must satisfy 2 <= min <= max, got [{MinSegment}, {MaxSegment}]");
        if (MaxPrefix < 0) throw new ArgumentException($"the maximum prefix must be non-negative, got {MaxPrefix}");
        if (MaxSegment + MaxPrefix > model.VocabSize - 1)
            throw new ArgumentException($"{MaxSegment} + {MaxPrefix} distinct tokens need a vocabulary of more than {MaxSegment + MaxPrefix} tokens");
        if (1 + MaxPrefix + 2 * MaxSegment > model.NPositions)
            throw new ArgumentException($"sequences of 1 + {MaxPrefix} + 2*{MaxSegment} tokens exceed the context of {model.NPositions}");
    }
}

/// <summary>A snapshot of training, reported after every step.</summary>
/// <param name="Step">Steps done (1-based).</param>
/// <param name="TotalSteps">Steps planned.</param>
/// <param name="Loss">Mean next-token loss of this step's batch (before the update).</param>
/// <param name="RepeatedLoss">Of that, the mean over the second copy's predictable tokens (see <see cref="HeadAblation.RepeatedLosses"/>).</param>
/// <param name="TokensPerSecond">Training throughput so far.</param>
/// <param name="Elapsed">Time since training started.</param>
public readonly record struct TrainingProgress(int Step, int TotalSteps, double Loss, double RepeatedLoss, double TokensPerSecond, TimeSpan Elapsed)
{
    /// <summary>Estimated time to finish at the average pace so far.</summary>
    public TimeSpan Eta => Step == 0 ? TimeSpan.Zero : TimeSpan.FromTicks(Elapsed.Ticks / Step * (TotalSteps - Step));
}

/// <summary>What a training run produced.</summary>
/// <param name="Losses">The loss of every step (before its update).</param>
/// <param name="RepeatedLosses">The second-copy loss of every step: where the induction "phase change" shows.</param>
/// <param name="Tokens">Tokens processed.</param>
/// <param name="Elapsed">Wall time of the loop.</param>
public sealed record TrainingResult(float[] Losses, float[] RepeatedLosses, long Tokens, TimeSpan Elapsed)
{
    /// <summary>The last step's loss.</summary>
    public double FinalLoss => Losses[^1];
    /// <summary>Training throughput.</summary>
    public double TokensPerSecond => Elapsed.TotalSeconds > 0 ? Tokens / Elapsed.TotalSeconds : 0;
}

/// <summary>
/// Trains a model on <see cref="RepeatedSequences"/> with AdamW over <see cref="TransformerBridge.Parameters"/>, the HF
/// leaf tensors themselves, so the trained weights are the bridge's and can be saved or analysed directly.
/// </summary>
/// <remarks>
/// Each batch draws its own copy length from [MinSegment, MaxSegment]. With one fixed length a head could predict the
/// second copy from positions alone (attend exactly L - 1 back, via the learned position embeddings) without reading
/// tokens; varying the length leaves content-based induction (previous-token head + induction head) as the only
/// general solution, which is the circuit the demo sets out to find. The whole run is a function of the initial
/// weights and <see cref="TrainingOptions.Seed"/>: the data comes from a seeded generator and every CPU kernel used is
/// deterministic for a fixed thread count.
/// </remarks>
public static class InductionTrainer
{
    /// <summary>Trains <paramref name="model"/> in place; <paramref name="progress"/> (optional) hears about every step.</summary>
    /// <exception cref="ArgumentException">Invalid options.</exception>
    /// <exception cref="InvalidOperationException">The loss diverged (NaN or infinite).</exception>
    public static TrainingResult Train(TransformerBridge model, TinyModelConfig config, TrainingOptions options, Action<TrainingProgress>? progress = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate(config);
        var losses = new float[options.Steps];
        var repeated = new float[options.Steps];
        long tokens = 0;
        using var generator = new Generator(options.Seed);
        using var optimizer = new AdamW(model.Parameters(), lr: options.LearningRate, weightDecay: options.WeightDecay);
        var group = optimizer.ParamGroups[0];
        var clock = Stopwatch.StartNew();
        for (var step = 1; step <= options.Steps; step++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            using var scope = Torch.NewScope();
            group.Lr = options.LearningRateAt(step);
            using var lengthDraw = Torch.RandInt(options.MinSegment, options.MaxSegment + 1, [1], generator);
            var segment = (int)lengthDraw.ToInt64();
            using var prefixDraw = Torch.RandInt(0, options.MaxPrefix + 1, [1], generator);
            var prefix = (int)prefixDraw.ToInt64();
            var batch = RepeatedSequences.Batch(generator, options.BatchSize, segment, prefix, config);
            var mask = RepeatedMask(options.BatchSize, prefix, segment);

            optimizer.ZeroGrad();
            var perToken = model.Loss(batch, perToken: true);
            var weights = mask.Expand(perToken.Shape);
            var repeatedPart = (perToken * weights).Sum() / weights.Sum();
            var objective = options.RepeatedHalfLossOnly ? repeatedPart : perToken.Mean();
            var loss = perToken.Mean();
            var value = loss.ToDouble();
            if (!double.IsFinite(value))
                throw new InvalidOperationException($"the loss became {value} at step {step}; lower the learning rate");
            objective.Backward();
            optimizer.Step();

            double repeatedValue;
            using (Torch.NoGrad())
                repeatedValue = repeatedPart.ToDouble();
            losses[step - 1] = (float)value;
            repeated[step - 1] = (float)repeatedValue;
            tokens += batch.NumEl;
            if (progress is not null)
            {
                var elapsed = clock.Elapsed;
                progress(new TrainingProgress(step, options.Steps, value, repeatedValue,
                    elapsed.TotalSeconds > 0 ? tokens / elapsed.TotalSeconds : 0, elapsed));
            }
        }
        optimizer.ZeroGrad();
        return new TrainingResult(losses, repeated, tokens, clock.Elapsed);
    }

    /// <summary>
    /// A [batch, length - 1] float mask over next-token predictions that is 1 where induction can predict the target:
    /// prediction t predicts token t + 1, so the second copy's tokens after its first one are predictions
    /// 1 + prefix + L .. prefix + 2L - 1.
    /// </summary>
    private static Tensor RepeatedMask(int rows, int prefix, int segment)
    {
        var width = RepeatedSequences.Prefix + prefix + 2 * segment - 1;
        var m = new float[rows * width];
        for (var b = 0; b < rows; b++)
            for (var t = RepeatedSequences.Prefix + prefix + segment; t < width; t++) m[b * width + t] = 1;
        return Torch.FromArray(m, rows, width);
    }
}
