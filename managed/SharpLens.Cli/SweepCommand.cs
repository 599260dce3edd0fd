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
        var command = new Command("sweep",
            "Attribution patching over prompt pairs with the metric logit[answer] - logit[wrong] at the last real position: for every head (attn.hook_z), " +
            "resid_pre, attn_out and mlp_out at every layer and position, the estimate grad(clean) . (corrupted - clean). Streams DIR/chunk-NNNNN.safetensors " +
            "(pair_index, line, length, logit_diff_clean, logit_diff_corrupted, attr.z [n, layer, pos, head], attr.resid_pre|attn_out|mlp_out [n, layer, pos], " +
            "with --exact also exact.* and has_exact) and DIR/summary.csv; prints pairs/s and ETA. Killed and restarted with the same arguments, it continues " +
            "where it stopped; other arguments are refused.")
        {
            modelDir, prompts, output, batchSize, chunkSize, exact, onError, prependBos, dtype,
        };
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
            };
            return Run(context, options, CliSupport.ParseDType(parse.GetValue(dtype)));
        }));
        return command;
    }

    private static int Run(CliContext context, SweepOptions options, ScalarType dtype)
    {
        if (options.BatchSize < 1) throw new CliException($"--batch-size must be at least 1, got {options.BatchSize}");
        if (options.ChunkSize < 1) throw new CliException($"--chunk-size must be at least 1, got {options.ChunkSize}");
        if (options.Exact < 0) throw new CliException($"--exact must be 0 or more, got {options.Exact}");
        if (!File.Exists(options.PromptsPath)) throw new CliException($"prompts file '{options.PromptsPath}' does not exist");
        var tokenizer = GenerateCommand.TryLoadTokenizer(options.ModelDirectory);
        using var bridge = CliSupport.LoadBridge(options.ModelDirectory, new BridgeOptions { DType = dtype });
        try
        {
            AttributionSweep.Run(bridge, tokenizer, options, context.Out, context.Error);
        }
        catch (SweepException e)
        {
            throw new CliException(e.Message, e);
        }
        return Program.Success;
    }
}
