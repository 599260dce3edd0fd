using System.CommandLine;
using SharpLens.Reference;

namespace SharpLens.Cli;

/// <summary>
/// <c>lens params</c>: the model's HF leaf parameters by HF name, or its TransformerLens weights by TL name,
/// optionally with TransformerLens's weight processing (through <see cref="HookedTransformer.FromBridge"/>).
/// </summary>
internal static class ParamsCommand
{
    public static Command Build(CliContext context)
    {
        var modelDir = new Argument<string>("MODEL_DIR") { Description = "HuggingFace model folder (config.json + model.safetensors)" };
        var tl = new Option<bool>("--tl")
        {
            Description = "Write the TransformerLens weights by TL name (blocks.0.attn.W_Q [head, d_model, d_head], ...); " +
                          "without a processing option below, unprocessed",
        };
        var foldLn = new Option<bool>("--fold-ln")
        {
            Description = "Fold each LayerNorm's weight and bias into the weights that read it (implies --tl; the LayerNorm weights are then absent)",
        };
        var centerWriting = new Option<bool>("--center-writing-weights")
        {
            Description = "Remove the mean over d_model from every weight that writes to the residual stream (implies --tl; needs --fold-ln)",
        };
        var centerUnembed = new Option<bool>("--center-unembed")
        {
            Description = "Remove the mean over the vocabulary from W_U and b_U (implies --tl)",
        };
        var foldValueBiases = new Option<bool>("--fold-value-biases")
        {
            Description = "Fold b_V through W_O into b_O (implies --tl)",
        };
        var dtype = new Option<string>("--dtype") { Description = "Parameter dtype", DefaultValueFactory = _ => "float32" };
        dtype.AcceptOnlyFromAmong("float32", "float64");
        var output = new Option<string>("--out") { Description = "Output safetensors file", Required = true, HelpName = "OUT.safetensors" };
        var command = new Command("params",
            "Write the HF leaf parameters by HF name (tied weights once), or with --tl the TransformerLens weights by TL name. " +
            "Any of --fold-ln, --center-writing-weights, --center-unembed, --fold-value-biases writes the TL weights after " +
            "TransformerLens's weight processing (computed in float64; all four together are TransformerLens's default), " +
            "buffers such as unembed.b_U included.")
        {
            modelDir, tl, foldLn, centerWriting, centerUnembed, foldValueBiases, dtype, output,
        };
        command.SetAction(parse => context.Execute(() => Run(context, parse.GetValue(modelDir)!, parse.GetValue(tl),
            new WeightProcessing
            {
                FoldLn = parse.GetValue(foldLn),
                CenterWritingWeights = parse.GetValue(centerWriting),
                CenterUnembed = parse.GetValue(centerUnembed),
                FoldValueBiases = parse.GetValue(foldValueBiases),
            },
            CliSupport.ParseDType(parse.GetValue(dtype)), parse.GetValue(output)!)));
        return command;
    }

    private static int Run(CliContext context, string modelDir, bool tl, WeightProcessing processing, ScalarType dtype, string outPath)
    {
        if (processing.CenterWritingWeights && !processing.FoldLn)
            throw new CliException("--center-writing-weights needs --fold-ln: without folding, the LayerNorm weights would read the centred " +
                                   "residual stream differently");
        tl |= processing.Any;
        var fullOut = CliSupport.CheckOutPath(outPath);
        using var scope = Torch.NewScope();
        using var bridge = CliSupport.LoadBridge(modelDir, new BridgeOptions { DType = dtype });
        var tensors = new List<KeyValuePair<string, Tensor>>();
        string what;
        if (processing.Any)
        {
            using var processed = HookedTransformer.FromBridge(bridge, processing);
            using (Torch.NoGrad())
                foreach (var (name, weight) in processed.NamedWeights())
                    tensors.Add(new(name, weight.Detach().Contiguous()));
            what = $"processed TransformerLens weights ({Describe(processing)})";
            CliSupport.Save(fullOut, tensors, CliSupport.Metadata($"params {Describe(processing)}", modelDir, dtype));
        }
        else
        {
            using (Torch.NoGrad())
            {
                if (tl)
                    foreach (var (name, weight) in bridge.TlNamedParameters()) tensors.Add(new(name, weight.Contiguous()));
                else
                    foreach (var (name, p) in bridge.NamedParameters()) tensors.Add(new(name, p.Detach()));
            }
            what = tl ? "TransformerLens weights" : "HF parameters";
            CliSupport.Save(fullOut, tensors, CliSupport.Metadata(tl ? "params --tl" : "params", modelDir, dtype));
        }
        context.Out.WriteLine($"wrote {tensors.Count} {what} to {outPath}");
        return Program.Success;
    }

    private static string Describe(WeightProcessing p) => string.Join(' ', new[]
    {
        p.FoldLn ? "--fold-ln" : null,
        p.CenterWritingWeights ? "--center-writing-weights" : null,
        p.CenterUnembed ? "--center-unembed" : null,
        p.FoldValueBiases ? "--fold-value-biases" : null,
    }.Where(f => f is not null));
}
