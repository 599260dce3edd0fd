using System.CommandLine;
using SharpLens.Sweeps;

namespace SharpLens.Cli;

/// <summary><c>lens sweep</c>: a resumable attribution-patching sweep over prompt pairs (see <see cref="AttributionSweep"/>).</summary>
internal static class SweepCommand
{
    public static Command Build(CliContext context)
    {
        var modelDir = new Argument<string>("MODEL_DIR") { Description = "HuggingFace model folder (config.json + model.safetensors)" };
        var prompts = new Option<string>("--prompts")
        {
            Description = "JSONL file, one pair per line: {\"clean\": \"...\" | [ids], \"corrupted\": \"...\" | [ids], \"answer\": \"...\" | id, \"wrong\": \"...\" | id} " +
                          "(text needs the model folder's tokenizer; clean and corrupted must have the same number of tokens)",
            Required = true, HelpName = "FILE.jsonl",
        };
        var output = new Option<string>("--out") { Description = "Output folder (created if missing; an existing sweep there is continued)", Required = true, HelpName = "DIR" };
        var batchSize = new Option<int>("--batch-size")
        {
            Description = "Pairs per forward/backward pass (and patched copies per forward pass with --exact)", DefaultValueFactory = _ => 8,
        };
        var chunkSize = new Option<int>("--chunk-size") { Description = "Pairs per chunk file, the unit of resumption", DefaultValueFactory = _ => 64 };
        var exact = new Option<int>("--exact")
        {
            Description = "Also run exact activation patching (every site, layer, position and head separately) for the first K pairs and write exact.* next to attr.*",
            DefaultValueFactory = _ => 0, HelpName = "K",
        };
        var onError = new Option<string>("--on-error") { Description = "A bad prompt line is reported and skipped, or fails the run", DefaultValueFactory = _ => "skip" };
        onError.AcceptOnlyFromAmong("skip", "fail");
        var prependBos = new Option<bool?>("--prepend-bos")
        {
            Description = "Put the tokenizer's BOS before prompts given as text (default: when the tokenizer has one); ids are used as given",
        };
        var dtype = new Option<string>("--dtype") { Description = "Parameter dtype (results are stored in it)", DefaultValueFactory = _ => "float32" };
        dtype.AcceptOnlyFromAmong("float32", "float64");
        var aggregate = new Option<string?>("--aggregate")
        {
            Description = "Also write DIR/mean.safetensors: the mean over all pairs of every site's estimates (all-reduced across ranks)", HelpName = "mean",
        };
        aggregate.AcceptOnlyFromAmong("mean");
        var distributed = new DistributedOptions();
        var command = new Command("sweep",
            "Attribution patching over prompt pairs with the metric logit[answer] - logit[wrong] at the last real position: for every head (attn.hook_z), " +
            "resid_pre, attn_out and mlp_out at every layer and position, the estimate grad(clean) . (corrupted - clean). Streams DIR/chunk-NNNNN.safetensors " +
            "(pair_index, line, length, logit_diff_clean, logit_diff_corrupted, attr.z [n, layer, pos, head], attr.resid_pre|attn_out|mlp_out [n, layer, pos], " +
            "with --exact also exact.* and has_exact) and DIR/summary.csv; prints pairs/s and ETA. Killed and restarted with the same arguments, it continues " +
            "where it stopped; other arguments are refused. With --nproc N (or under torchrun) ranks claim chunks one by one through a c10d TCPStore " +
            "and write them to the shared DIR; rank 0 writes summary.csv when all are done.")
        {
            modelDir, prompts, output, batchSize, chunkSize, exact, onError, prependBos, dtype, aggregate,
        };
        distributed.AddTo(command);
        command.SetAction(parse => context.Execute(() =>
        {
            var model = parse.GetValue(modelDir)!;
            var options = new SweepOptions
            {
                ModelDirectory = model,
                PromptsPath = parse.GetValue(prompts)!,
                OutputDirectory = parse.GetValue(output)!,
                BatchSize = parse.GetValue(batchSize),
                ChunkSize = parse.GetValue(chunkSize),
                Exact = parse.GetValue(exact),
                FailOnBadLines = parse.GetValue(onError) == "fail",
                PrependBos = parse.GetValue(prependBos),
                AggregateMean = parse.GetValue(aggregate) == "mean",
            };
            var (nproc, timeout) = distributed.Read(parse);
            return Run(context, options, CliSupport.ParseDType(parse.GetValue(dtype)), nproc, timeout);
        }));
        return command;
    }

    private static int Run(CliContext context, SweepOptions options, ScalarType dtype, int nproc, TimeSpan timeout)
    {
        if (options.BatchSize < 1) throw new CliException($"--batch-size must be at least 1, got {options.BatchSize}");
        if (options.ChunkSize < 1) throw new CliException($"--chunk-size must be at least 1, got {options.ChunkSize}");
        if (options.Exact < 0) throw new CliException($"--exact must be 0 or more, got {options.Exact}");
        if (!File.Exists(options.PromptsPath)) throw new CliException($"prompts file '{options.PromptsPath}' does not exist");
        var job = DistributedCli.Environment();
        if (job is null && nproc > 1) return DistributedCli.Launch(context, nproc, timeout);
        // A worker joins before loading the model: a rank that then fails is reported to the others through the launcher,
        // instead of leaving them waiting for it to join.
        using var session = job is null ? null : DistributedCli.Join(job, nproc, timeout);
        var tokenizer = GenerateCommand.TryLoadTokenizer(options.ModelDirectory);
        using var bridge = CliSupport.LoadBridge(options.ModelDirectory, new BridgeOptions { DType = dtype });
        try
        {
            if (session is null) AttributionSweep.Run(bridge, tokenizer, options, context.Out, context.Error);
            else DistributedSweep.Run(bridge, tokenizer, options, session, context.Out, context.Error, ChunkDelay());
        }
        catch (SweepException e)
        {
            throw new CliException(e.Message, e);
        }
        return Program.Success;
    }

    /// <summary>SHARPLENS_SWEEP_CHUNK_DELAY_MS: a pause after computing each chunk and before writing it, in distributed runs
    /// (tests use it to kill a rank mid-chunk deterministically; it changes no result).</summary>
    private static TimeSpan ChunkDelay()
    {
        var text = Environment.GetEnvironmentVariable("SHARPLENS_SWEEP_CHUNK_DELAY_MS");
        if (string.IsNullOrWhiteSpace(text)) return TimeSpan.Zero;
        return int.TryParse(text, out var ms) && ms >= 0
            ? TimeSpan.FromMilliseconds(ms)
            : throw new CliException($"SHARPLENS_SWEEP_CHUNK_DELAY_MS must be a non-negative integer, got '{text}'");
    }
}
