using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Serialization;
using SharpLens.Adapters;

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
    /// <summary>The same forward's GEMMs alone (every linear layer and the unembedding on inputs of the pass's shape).</summary>
    [JsonPropertyName("gemm_s")]
    public double GemmSeconds { get; init; }

    /// <summary>
    /// Floating-point operations of the forward's matrix products: 2 · tokens · (every linear layer's weight elements and the
    /// unembedding's) plus causal attention, 2 · 2 · batch · heads · d_head · pos (pos + 1) / 2 for the scores and their
    /// weighted sum (keys a query cannot see are not counted, as FlashAttention counts). Elementwise work is not counted.
    /// </summary>
    [JsonPropertyName("forward_matmul_flop")]
    public double ForwardMatmulFlop { get; init; }

    /// <summary><see cref="ForwardMatmulFlop"/> over the median forward time, in TFLOP/s: what fraction of a device's matrix peak the forward reached.</summary>
    [JsonPropertyName("forward_tflop_per_s")]
    public double ForwardTflopPerSecond => ForwardSeconds > 0 ? ForwardMatmulFlop / ForwardSeconds / 1e12 : 0;

    /// <summary>Where the passes ran.</summary>
    [JsonPropertyName("device")]
    public string Device { get; init; } = "cpu";

    /// <summary>The parameters' dtype.</summary>
    [JsonPropertyName("dtype")]
    public string DType { get; init; } = "float32";

    /// <summary>The figures as indented JSON (the keys <c>lens bench --json</c> documents).</summary>
    public string ToJson() => JsonSerializer.Serialize(this, new JsonSerializerOptions { WriteIndented = true });
}

/// <summary>
/// Times what interpretability work repeats thousands of times on one model: a plain forward pass,
/// RunWithCache of every hook point, a forward pass with a no-op managed hook on every hook point, forward + backward of <c>logits[:, -1, :].sum()</c>, and the same with
/// a backward hook on every hook point capturing its gradient. Each pass runs once untimed, then
/// <c>reps</c> rounds of every pass in turn; each pass's median is reported. Autograd records as it does by default (as in TransformerLens).
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
        var backwardHookCount = 0;
        var captured = new List<Tensor>();
        using var gemms = new GemmWorkload(bridge, tokens.NumEl);
        // Every pass ends by waiting for the device (a no-op on the CPU), so GPU timings are of finished work. Hooks a pass
        // needs are added before its timer starts and removed after it stops.
        var passes = new Pass[]
        {
            new("forward", null, () =>
            {
                using var scope = Torch.NewScope();
                Torch.Synchronize(bridge.Forward(tokens));
            }),
            new("run_with_cache", null, () =>
            {
                using var scope = Torch.NewScope();
                var (l, c) = bridge.RunWithCache(tokens);
                Torch.Synchronize(l);
                hookCount = c.Count;
                c.Dispose();
            }),
            new("forward_noop_hooks", () => bridge.AddHook(_ => true, (_, _) => null), () =>
            {
                using var scope = Torch.NewScope();
                Torch.Synchronize(bridge.Forward(tokens));
            }),
            new("fwd_bwd", null, () =>
            {
                using var scope = Torch.NewScope();
                bridge.Forward(tokens).Select(1, -1).Sum().Backward();
                Torch.Synchronize(bridge.Parameters()[0].Grad!);
                ClearGrads(bridge);
            }),
            new("fwd_bwd_all_bwd_hooks", () => bridge.AddBackwardHook(_ => true, (g, _) =>
            {
                captured.Add(g.Detach().DetachFromScope());
                return null;
            }), () =>
            {
                using var scope = Torch.NewScope();
                bridge.Forward(tokens).Select(1, -1).Sum().Backward();
                Torch.Synchronize(bridge.Parameters()[0].Grad!);
                backwardHookCount = captured.Count;
                foreach (var t in captured) t.Dispose();
                captured.Clear();
                ClearGrads(bridge);
            }),
            new("gemm_only", null, gemms.Run),
        };

        // Warm-up (allocator pools, OpenMP threads, first-call dispatch), then the repetitions round-robin: a slow spell of
        // the machine (another process, a neighbour on the host) then falls on every pass of a round alike instead of on
        // whichever pass happened to be running, so the ratios between passes hold even where absolute times drift.
        foreach (var pass in passes) pass.Time();
        var times = passes.Select(_ => new double[reps]).ToArray();
        for (var r = 0; r < reps; r++)
            for (var i = 0; i < passes.Length; i++)
            {
                times[i][r] = passes[i].Time();
                progress?.Invoke($"{passes[i].Name} {r + 1}/{reps}: {times[i][r]:F3} s");
            }
        if (profile is not null)
            foreach (var pass in passes.Where(p => p.Name != "gemm_only"))
            {
                using var hooks = pass.Hooks?.Invoke();
                using var session = Profiler.Start();
                pass.Body();
                profile(pass.Name, session.Stop());
            }
        var m = times.Select(Median).ToArray();
        return new PassTimings(m[0], m[1], m[2], m[3], m[4], tokens.NumEl, Torch.NumThreads, reps, hookCount, backwardHookCount)
        {
            GemmSeconds = m[5],
            ForwardMatmulFlop = gemms.Flop + AttentionFlop(bridge.Config, tokens.Size(0), tokens.Size(1)),
            Device = bridge.Config.Device.ToString(),
            DType = bridge.Config.DType.ToTorchName(),
        };
    }

    /// <summary>Causal attention's two matrix products over every layer: scores q·kᵀ and pattern·v, visible pairs only.</summary>
    private static double AttentionFlop(TransformerConfig config, long batch, long pos) =>
        2.0 * 2.0 * config.NLayers * batch * config.NHeads * config.DHead * (pos * (pos + 1) / 2.0);

    /// <summary>One timed pass: the hooks it needs (added outside the timed region) and its body.</summary>
    private sealed record Pass(string Name, Func<IDisposable>? Hooks, Action Body)
    {
        public double Time()
        {
            using var hooks = Hooks?.Invoke();
            var sw = Stopwatch.StartNew();
            Body();
            return sw.Elapsed.TotalSeconds;
        }
    }

    /// <summary>
    /// The forward pass's matrix products and nothing else: every linear layer of the component mapping (q, k, v or the fused
    /// QKV, the output projection, the MLP's) and the unembedding, each on a [tokens, in] input, as one GEMM per layer. What a
    /// forward pass could cost if everything but its GEMMs were free: the baseline the forward time is reported against.
    /// </summary>
    public static void GemmOnly(TransformerBridge bridge, long tokens)
    {
        using var gemms = new GemmWorkload(bridge, tokens);
        gemms.Run();
    }

    /// <summary>
    /// <see cref="GemmOnly"/>'s GEMMs with the weights looked up and the inputs made once, so that a timed repetition is the
    /// GEMMs alone.
    /// </summary>
    private sealed class GemmWorkload : IDisposable
    {
        private readonly List<(Tensor Weight, LinearWeightLayout Layout, Tensor Input)> _gemms = [];
        private readonly Dictionary<long, Tensor> _inputs = [];

        /// <summary>2 · tokens · weight elements, summed over the GEMMs.</summary>
        public double Flop { get; private set; }

        public GemmWorkload(TransformerBridge bridge, long tokens)
        {
            var spec = bridge.Adapter.Describe(bridge.Config);
            var (device, dtype) = (bridge.Config.Device, bridge.Config.DType);
            Tensor Input(long features) =>
                _inputs.TryGetValue(features, out var x) ? x : _inputs[features] = Torch.Ones([tokens, features], dtype, device).DetachFromScope();
            void Gemm(LinearSpec l)
            {
                var w = bridge.Parameter(l.Weight);
                _gemms.Add((w, l.Layout, Input(l.Layout == LinearWeightLayout.OutIn ? w.Size(1) : w.Size(0))));
                Flop += 2.0 * tokens * w.NumEl;
            }
            foreach (var b in spec.Blocks)
            {
                switch (b.Attention.Qkv)
                {
                    case FusedQkvSpec f: Gemm(f.Linear with { Slice = null }); break;
                    case SeparateQkvSpec { Fused: { } fused }: Gemm(fused); break;  // one fused weight read as views
                    case SeparateQkvSpec q: Gemm(q.Q); Gemm(q.K); Gemm(q.V); break;
                }
                Gemm(b.Attention.Out);
                if (b.Mlp.Fused is { } gateUp) Gemm(gateUp);
                else
                {
                    if (b.Mlp.Gate is { } g) Gemm(g);
                    Gemm(b.Mlp.In);
                }
                Gemm(b.Mlp.Out);
            }
            var unembed = bridge.Parameter(spec.Unembed);
            _gemms.Add((unembed, LinearWeightLayout.OutIn, Input(bridge.Config.DModel)));
            Flop += 2.0 * tokens * unembed.NumEl;
        }

        public void Run()
        {
            using var scope = Torch.NewScope();
            using var noGrad = Torch.NoGrad();
            Tensor? last = null;
            foreach (var (w, layout, x) in _gemms) last = Functional.Linear(x, w, null, layout);
            Torch.Synchronize(last!);
        }

        public void Dispose()
        {
            foreach (var x in _inputs.Values) x.Dispose();
            _inputs.Clear();
        }
    }

    private static void ClearGrads(TransformerBridge bridge)
    {
        foreach (var p in bridge.Parameters()) p.Grad = null;
    }

    private static double Median(double[] values)
    {
        var sorted = values.OrderBy(v => v).ToArray();
        var n = sorted.Length;
        return n % 2 == 1 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
    }
}
