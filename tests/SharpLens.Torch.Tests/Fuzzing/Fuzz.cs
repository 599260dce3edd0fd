using FsCheck;
using FsCheck.Fluent;
using Microsoft.FSharp.Core;

namespace SharpLens.Testing.Fuzzing;

/// <summary>A property that does not hold for one generated case; FsCheck reports the case (its description) with it.</summary>
internal sealed class FuzzFailure(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>
/// Runs FsCheck properties the same way everywhere: a bounded number of cases from a fixed seed, so a run is deterministic
/// and a failure replays exactly (the report names the case, the seed and the test number), and each case under a deadline,
/// so a hang fails its case instead of stalling the suite. Shared by SharpLens.Torch.Tests and SharpLens.Tests (linked).
/// </summary>
internal static class Fuzz
{
    /// <summary>
    /// How long one case may run before it counts as a hang. Not a timing claim: every case is milliseconds of work, so
    /// only a loop that never ends (or a machine stalled for minutes) can reach it.
    /// </summary>
    public static readonly TimeSpan HangDeadline = TimeSpan.FromMinutes(2);

    /// <summary>Checks <paramref name="property"/> on <paramref name="cases"/> values of <paramref name="gen"/> drawn from <paramref name="seed"/>.</summary>
    public static void Check<T>(Gen<T> gen, int cases, ulong seed, Action<T> property)
    {
        (cases, seed) = Exploration(cases, seed);
        var config = Config.QuickThrowOnFailure
            .WithMaxTest(cases)
            .WithQuietOnSuccess(true)
            .WithReplay(FSharpOption<Replay>.Some(new Replay(new Rnd(seed), FSharpOption<int>.None)));
        // No shrinker: the cases are descriptions of edits, and the first failing one is already small.
        FsCheck.Check.One(config, Prop.ForAll(Arb.From(gen), (T value) => WithinDeadline(() => property(value), value)));
    }

    /// <summary>
    /// The suite's runs are fixed; to explore further, <c>SHARPLENS_FUZZ_SEED</c> replaces every property's seed and
    /// <c>SHARPLENS_FUZZ_SCALE</c> multiplies its number of cases (e.g. 20 for a long hunt). Unset, nothing changes.
    /// </summary>
    private static (int Cases, ulong Seed) Exploration(int cases, ulong seed)
    {
        if (ulong.TryParse(Environment.GetEnvironmentVariable("SHARPLENS_FUZZ_SEED"), out var s)) seed = s;
        if (int.TryParse(Environment.GetEnvironmentVariable("SHARPLENS_FUZZ_SCALE"), out var k) && k > 0) cases *= k;
        return (cases, seed);
    }

    /// <summary>The first <paramref name="count"/> values <see cref="Check"/> would draw from <paramref name="seed"/> (same order).</summary>
    public static IReadOnlyList<T> Sample<T>(Gen<T> gen, int count, ulong seed) =>
        gen.Sample(10, new Rnd(seed), count);

    private static void WithinDeadline<T>(Action body, T value)
    {
        var task = Task.Run(body);
        if (Task.WhenAny(task, Task.Delay(HangDeadline)).GetAwaiter().GetResult() != task)
            throw new FuzzFailure($"{value}: still running after {HangDeadline.TotalSeconds} s (a hang)");
        task.GetAwaiter().GetResult();  // rethrows the case's own exception as it is
    }
}
