using System.CommandLine;
using SharpLens.Sweeps;

namespace SharpLens.Cli;

/// <summary><c>lens patch</c>: activation patching over prompt pairs, streamed and resumable (see <see cref="PatchSweep"/>).</summary>
internal static class PatchCommand
{
    public static Command Build(CliContext context)
    {
        var modelDir = new Argument<string>("MODEL_DIR") { Description = "HuggingFace model folder (config.json + model.safetensors)" };
        var prompts = new Option<string>("--prompts")
        {
            Description = "JSONL file, one pair per line as for lens sweep: {\"clean\": \"...\" | [ids], \"corrupted\": \"...\" | [ids], \"answer\": \"...\" | id, \"wrong\": \"...\" | id}",
            Required = true, HelpName = "FILE.jsonl",
        };
        var kind = new Option<string>("--kind")
        {
            Description = "What to patch: resid_pre, resid_mid, resid_post, attn_out or mlp_out by layer and position; head_out (attn.hook_z) by layer and head at all positions",
            DefaultValueFactory = _ => "resid_pre",
        };
        kind.AcceptOnlyFromAmong(Enum.GetValues<PatchKind>().Select(PatchSweep.Key).ToArray());
        var output = new Option<string>("--out") { Description = "Output folder (created if missing; an unfinished run there is continued)", Required = true, HelpName = "DIR" };
        var dtype = new Option<string>("--dtype") { Description = "Parameter dtype (results are stored in it)", DefaultValueFactory = _ => "float32" };
        dtype.AcceptOnlyFromAmong("float32", "float64");
        var batchSize = new Option<int>("--batch-size") { Description = "Pairs of one length patched together", DefaultValueFactory = _ => 8 };
        var chunkSize = new Option<int>("--chunk-size") { Description = "Pairs per chunk file, the unit of resumption", DefaultValueFactory = _ => 64 };
        var maxTokens = new Option<int>("--max-tokens")
        {
            Description = "Tokens (rows x positions) per patched forward pass: patches run side by side as copies of the batch",
            DefaultValueFactory = _ => new PatchingOptions().MaxTokensPerForward,
        };
        var onError = new Option<string>("--on-error") { Description = "A bad prompt line is reported and skipped, or fails the run", DefaultValueFactory = _ => "skip" };
        onError.AcceptOnlyFromAmong("skip", "fail");
        var prependBos = new Option<bool?>("--prepend-bos") { Description = "Put the tokenizer's BOS before prompts given as text (default: when the tokenizer has one)" };
        var command = new Command("patch",
            "Activation patching as transformer_lens.patching does it: the corrupted prompt runs with one clean activation patched in, for every layer and " +
            "position (or head), metric logit[answer] - logit[wrong] at the last position. Writes DIR/patch.safetensors (pair_index, line, length, " +
            "clean_metric, corrupted_metric [n_pairs], <kind> [n_pairs, layer, pos] or, for head_out, [n_pairs, layer, head]; NaN past a pair's length) " +
            "and DIR/patch.csv; streams chunks to DIR/chunks and continues a killed run when restarted with the same arguments.")
        {
            modelDir, prompts, kind, output, dtype, batchSize, chunkSize, maxTokens, onError, prependBos,
        };
        command.SetAction(parse => context.Execute(() =>
        {
            var model = parse.GetValue(modelDir)!;
            var options = new PatchSweepOptions
            {
                ModelDirectory = model,
                PromptsPath = parse.GetValue(prompts)!,
                OutputDirectory = parse.GetValue(output)!,
                Kind = PatchSweep.ParseKind(parse.GetValue(kind)!),
                BatchSize = parse.GetValue(batchSize),
                ChunkSize = parse.GetValue(chunkSize),
                MaxTokensPerForward = parse.GetValue(maxTokens),
                FailOnBadLines = parse.GetValue(onError) == "fail",
                PrependBos = parse.GetValue(prependBos),
            };
            if (!File.Exists(options.PromptsPath)) throw new CliException($"prompts file '{options.PromptsPath}' does not exist");
            var tokenizer = GenerateCommand.TryLoadTokenizer(options.ModelDirectory);
            using var bridge = CliSupport.LoadBridge(options.ModelDirectory, new BridgeOptions { DType = CliSupport.ParseDType(parse.GetValue(dtype)) });
            try
            {
                PatchSweep.Run(bridge, tokenizer, options, context.Out, context.Error);
            }
            catch (SweepException e)
            {
                throw new CliException(e.Message, e);
            }
            return Program.Success;
        }));
        return command;
    }
}
