using System.CommandLine;
using System.Globalization;
using SharpLens.Benchmarks;
using SharpLens.Loading;
using SharpLens.Tensors;

namespace SharpLens.Cli;

/// <summary>
/// <c>lens bench</c>: end-to-end timings on a model with random weights of a real model's shape (GPT-2 small by
/// default, Pythia-160m with <c>--arch gpt_neox</c>): plain forward, RunWithCache of every hook point,
/// forward + backward of <c>logits[:, -1, :].sum()</c>, and the same with a backward hook on every hook point.
/// </summary>
internal static class BenchCommand
{
    public static Command Build(CliContext context)
    {
        var arch = new Option<string>("--arch")
        {
            Description = "Model shape: gpt2 (GPT-2 small), gpt_neox (Pythia-160m) or llama (12 layers, d_model 768, 12/4 heads, d_mlp 2048, vocab 32000)",
            DefaultValueFactory = _ => "gpt2",
        };
        arch.AcceptOnlyFromAmong("gpt2", "gpt_neox", "llama");
        var dtype = new Option<string>("--dtype") { Description = "Parameter dtype", DefaultValueFactory = _ => "float32" };
        dtype.AcceptOnlyFromAmong("float32", "float64", "bfloat16", "float16");
        var modelDir = new Option<string?>("--model")
        {
            Description = "Time this HuggingFace model folder instead of a random one of --arch's shape", HelpName = "MODEL_DIR",
        };
        var batch = new Option<int>("--batch") { Description = "Sequences per batch", DefaultValueFactory = _ => 4 };
        var seq = new Option<int>("--seq") { Description = "Tokens per sequence", DefaultValueFactory = _ => 128 };
        var reps = new Option<int>("--reps") { Description = "Timed repetitions of each pass (the median is reported)", DefaultValueFactory = _ => 3 };
        var json = new Option<string?>("--json") { Description = "Also write the timings as JSON", HelpName = "OUT.json" };
        var profile = new Option<string?>("--profile")
        {
            Description = "Also run each pass once under libtorch's operator profiler and write DIR/<pass>.tsv (op, calls, self_ms, total_ms)",
            HelpName = "DIR",
        };
        var command = new Command("bench",
            "Time forward, RunWithCache of every hook point, forward+backward, and forward+backward with a backward hook on " +
            "every hook point, on a random model of GPT-2 small's (or Pythia-160m's) shape. Prints a table; --json writes " +
            "forward_s, run_with_cache_s, fwd_bwd_s, fwd_bwd_all_bwd_hooks_s, gemm_s, forward_matmul_flop, forward_tflop_per_s, tokens, threads; --profile writes where each " +
            "pass spends its time, per operator.")
        {
            arch, modelDir, dtype, batch, seq, reps, json, profile,
        };
        command.SetAction(parse => context.Execute(() => Run(context, parse.GetValue(arch)!, parse.GetValue(modelDir), parse.GetValue(dtype)!, parse.GetValue(batch),
            parse.GetValue(seq), parse.GetValue(reps), parse.GetValue(json), parse.GetValue(profile))));
        return command;
    }

    private static int Run(CliContext context, string arch, string? modelDir, string dtypeName, int batch, int seq, int reps, string? jsonPath, string? profileDir)
    {
        var device = CliSupport.ParseDevice(CliSupport.RequestedDevice);
        var dtype = dtypeName switch
        {
            "float64" => ScalarType.Float64,
            "bfloat16" => ScalarType.BFloat16,
            "float16" => ScalarType.Float16,
            _ => ScalarType.Float32,
        };
        if (batch < 1 || seq < 2 || reps < 1) throw new CliException("--batch and --reps must be at least 1, --seq at least 2");
        var jsonFull = jsonPath is null ? null : CliSupport.CheckOutPath(jsonPath);
        Action<string, IReadOnlyList<ProfiledOp>>? writeProfile = null;
        if (profileDir is not null)
        {
            var profileFull = Path.GetFullPath(profileDir);
            if (File.Exists(profileFull)) throw new CliException($"--profile {profileDir} is a file; give a directory");
            Directory.CreateDirectory(profileFull);
            writeProfile = (pass, ops) =>
            {
                var file = Path.Combine(profileFull, pass + ".tsv");
                File.WriteAllLines(file, ops.Select(o => string.Create(CultureInfo.InvariantCulture,
                    $"{o.Op}\t{o.Calls}\t{o.SelfMs:F3}\t{o.TotalMs:F3}")).Prepend("op\tcalls\tself_ms\ttotal_ms"));
                context.Out.WriteLine($"  profile of {pass}: {file}; most self time: " +
                    string.Join(", ", ops.Take(4).Select(o => string.Create(CultureInfo.InvariantCulture, $"{o.Op} {o.SelfMs:F0} ms"))));
            };
        }
        var dir = Directory.CreateTempSubdirectory("sharplens-bench").FullName;
        try
        {
            var (shape, config) = arch switch
            {
                "gpt2" => ("GPT-2 small", RandomCheckpoint.Gpt2Small()),
                "gpt_neox" => ("Pythia-160m", RandomCheckpoint.Pythia160m()),
                _ => ("Llama (12 x 768, 12/4 heads)", RandomCheckpoint.Llama160m()),
            };
            if (modelDir is null)
            {
                context.Out.WriteLine($"writing a random {shape}-shaped model to {dir}");
                RandomCheckpoint.Write(dir, config, seed: 0);
            }
            else
            {
                arch = Path.GetFileName(Path.GetFullPath(modelDir).TrimEnd('/'));
            }
            using var scope = Torch.NewScope();
            using var bridge = CliSupport.LoadBridge(modelDir ?? dir, new BridgeOptions { DType = dtype, Device = device });
            if (seq > bridge.Config.NCtx) throw new CliException($"--seq {seq} exceeds the model's context of {bridge.Config.NCtx}");
            using var generator = new Generator(1);
            var tokens = Torch.RandInt(0, bridge.Config.DVocab, [batch, seq], generator).To(device);
            var t = PassBenchmark.Run(bridge, tokens, reps, line => context.Out.WriteLine("  " + line), writeProfile);
            context.Out.WriteLine();
            context.Out.WriteLine($"{arch} {t.DType} on {t.Device}, {batch} x {seq} = {t.Tokens} tokens, {t.Threads} threads, median of {t.Reps}");
            context.Out.WriteLine($"{"pass",-40} {"seconds",10} {"vs forward",11}");
            void Row(string name, double s) => context.Out.WriteLine($"{name,-40} {s,10:F3} {s / t.ForwardSeconds,10:F2}x");
            Row("forward", t.ForwardSeconds);
            Row($"run_with_cache ({t.HooksCached} hooks)", t.RunWithCacheSeconds);
            Row("forward, no-op hook on every hook point", t.ForwardNoOpHooksSeconds);
            Row("forward + backward", t.ForwardBackwardSeconds);
            Row($"fwd + bwd, {t.BackwardHooks} backward hooks", t.ForwardBackwardAllBackwardHooksSeconds);
            Row("the forward's GEMMs alone", t.GemmSeconds);
            context.Out.WriteLine($"ratios: run_with_cache / forward {t.RunWithCacheSeconds / t.ForwardSeconds:F2}, " +
                                  $"hooked fwd+bwd / fwd+bwd {t.ForwardBackwardAllBackwardHooksSeconds / t.ForwardBackwardSeconds:F2}, " +
                                  $"forward / GEMMs {t.ForwardSeconds / t.GemmSeconds:F2}");
            context.Out.WriteLine($"forward matrix work {t.ForwardMatmulFlop / 1e9:F1} GFLOP (linear layers, unembedding, causal attention): " +
                                  $"{t.ForwardTflopPerSecond:F3} TFLOP/s");
            if (jsonFull is not null)
            {
                File.WriteAllText(jsonFull, t.ToJson() + Environment.NewLine);
                context.Out.WriteLine($"wrote {jsonPath}");
            }
            return Program.Success;
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
