using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace SharpLens.Benchmarks;

/// <summary>Median wall-clock seconds of the four end-to-end passes, with the workload they ran on.</summary>
public sealed record PassTimings(
    [property: JsonPropertyName("forward_s")] double ForwardSeconds,
    [property: JsonPropertyName("run_with_cache_s")] double RunWithCacheSeconds,
    [property: JsonPropertyName("forward_noop_hooks_s")] double ForwardNoOpHooksSeconds,
    [property: JsonPropertyName("fwd_bwd_s")] double ForwardBackwardSeconds,
    [property: JsonPropertyName("fwd_bwd_all_bwd_hooks_s")] double ForwardBackwardAllBackwardHooksSeconds,
    [property: JsonPropertyName("tokens")] long Tokens,
    [property: JsonPropertyName("threads")] int Threads,
    [property: JsonPropertyName("reps")] int Reps,
    [property: JsonPropertyName("hooks_cached")] int HooksCached,
    [property: JsonPropertyName("backward_hooks")] int BackwardHooks)
{
    /// <summary>The figures as indented JSON (the keys <c>lens bench --json</c> documents).</summary>
    public string ToJson() => JsonSerializer.Serialize(this, new JsonSerializerOptions { WriteIndented = true });
}

/// <summary>
/// Times what interpretability work repeats thousands of times on one model: a plain forward pass,
/// RunWithCache of every hook point, a forward pass with a no-op managed hook on every hook point, forward + backward of <c>logits[:, -1, :].sum()</c>, and the same with
/// a backward hook on every hook point capturing its gradient. Each pass runs once untimed, then
/// <c>reps</c> times; the median is reported. Autograd records as it does by default (as in TransformerLens).
/// </summary>
public static class PassBenchmark
{
    /// <summary>
    /// Runs the passes on <paramref name="tokens"/> ([batch, pos] int64). With <paramref name="profile"/>, each pass
    /// then runs once more, untimed, under libtorch's operator profiler, and its per-operator totals go there.
    /// </summary>
    public static PassTimings Run(TransformerBridge bridge, Tensor tokens, int reps, Action<string>? progress = null,
        Action<string, IReadOnlyList<ProfiledOp>>? profile = null)
    {
        if (reps < 1) throw new ArgumentOutOfRangeException(nameof(reps), reps, "reps must be at least 1");
        var hookCount = 0;
        var forward = Median(reps, progress, profile, "forward", () =>
        {
            using var scope = Torch.NewScope();
            bridge.Forward(tokens);
        });
        var cache = Median(reps, progress, profile, "run_with_cache", () =>
        {
            using var scope = Torch.NewScope();
            var (_, c) = bridge.RunWithCache(tokens);
            hookCount = c.Count;
            c.Dispose();
        });
        double noOp;
        using (bridge.AddHook(_ => true, (_, _) => null))
            noOp = Median(reps, progress, profile, "forward_noop_hooks", () =>
            {
                using var scope = Torch.NewScope();
                bridge.Forward(tokens);
            });
        var fwdBwd = Median(reps, progress, profile, "fwd_bwd", () =>
        {
            using var scope = Torch.NewScope();
            bridge.Forward(tokens).Select(1, -1).Sum().Backward();
            ClearGrads(bridge);
        });
        var captured = new List<Tensor>();
        using var hooks = bridge.AddBackwardHook(_ => true, (g, _) =>
        {
            captured.Add(g.Detach().DetachFromScope());
            return null;
        });
        var backwardHookCount = 0;
        var fwdBwdHooks = Median(reps, progress, profile, "fwd_bwd_all_bwd_hooks", () =>
        {
            using var scope = Torch.NewScope();
            bridge.Forward(tokens).Select(1, -1).Sum().Backward();
            backwardHookCount = captured.Count;
            foreach (var t in captured) t.Dispose();
            captured.Clear();
            ClearGrads(bridge);
        });
        return new PassTimings(forward, cache, noOp, fwdBwd, fwdBwdHooks, tokens.NumEl, Torch.NumThreads, reps, hookCount, backwardHookCount);
    }

    private static void ClearGrads(TransformerBridge bridge)
    {
        foreach (var p in bridge.Parameters()) p.Grad = null;
    }

    private static double Median(int reps, Action<string>? progress, Action<string, IReadOnlyList<ProfiledOp>>? profile,
        string name, Action pass)
    {
        pass();  // warm-up: allocator pools, OpenMP threads, first-call dispatch
        var times = new double[reps];
        for (var i = 0; i < reps; i++)
        {
            var sw = Stopwatch.StartNew();
            pass();
            times[i] = sw.Elapsed.TotalSeconds;
            progress?.Invoke($"{name} {i + 1}/{reps}: {times[i]:F3} s");
        }
        if (profile is not null)
        {
            using var session = Profiler.Start();
            pass();
            profile(name, session.Stop());
        }
        Array.Sort(times);
        return reps % 2 == 1 ? times[reps / 2] : (times[reps / 2 - 1] + times[reps / 2]) / 2;
    }
}
