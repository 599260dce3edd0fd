using System.CommandLine;

namespace SharpLens.Cli;

/// <summary><c>lens params</c>: the model's HF leaf parameters by HF name, or its TransformerLens weights by TL name.</summary>
internal static class ParamsCommand
{
    public static Command Build(CliContext context)
    {
        var modelDir = new Argument<string>("MODEL_DIR") { Description = "HuggingFace model folder (config.json + model.safetensors)" };
        var tl = new Option<bool>("--tl")
        {
            Description = "Write the TransformerLens weights by TL name (blocks.0.attn.W_Q [head, d_model, d_head], ...), without weight processing",
        };
        var dtype = new Option<string>("--dtype") { Description = "Parameter dtype", DefaultValueFactory = _ => "float32" };
        dtype.AcceptOnlyFromAmong("float32", "float64");
        var output = new Option<string>("--out") { Description = "Output safetensors file", Required = true, HelpName = "OUT.safetensors" };
        var command = new Command("params",
            "Write the HF leaf parameters by HF name (tied weights once), or with --tl the TransformerLens weights by TL name. " +
            "Weight processing (--fold-ln, --center-writing-weights, --center-unembed, --fold-value-biases) is not available yet.")
        {
            modelDir, tl, dtype, output,
        };
        command.SetAction(parse => context.Execute(() => Run(context, parse.GetValue(modelDir)!, parse.GetValue(tl),
            CliSupport.ParseDType(parse.GetValue(dtype)), parse.GetValue(output)!)));
        return command;
    }

    private static int Run(CliContext context, string modelDir, bool tl, ScalarType dtype, string outPath)
    {
        var fullOut = CliSupport.CheckOutPath(outPath);
        using var scope = Torch.NewScope();
        using var bridge = CliSupport.LoadBridge(modelDir, new BridgeOptions { DType = dtype });
        var tensors = new List<KeyValuePair<string, Tensor>>();
        using (Torch.NoGrad())
        {
            if (tl)
                foreach (var (name, weight) in bridge.TlNamedParameters()) tensors.Add(new(name, weight.Contiguous()));
            else
                foreach (var (name, p) in bridge.NamedParameters()) tensors.Add(new(name, p.Detach()));
        }
        CliSupport.Save(fullOut, tensors, CliSupport.Metadata(tl ? "params --tl" : "params", modelDir, dtype));
        context.Out.WriteLine($"wrote {tensors.Count} {(tl ? "TransformerLens weights" : "HF parameters")} to {outPath}");
        return Program.Success;
    }
}
