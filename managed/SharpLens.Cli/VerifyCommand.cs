using System.CommandLine;
using SharpLens.Verification;

namespace SharpLens.Cli;

/// <summary>
/// <c>lens verify</c>: the verification suite, the <see cref="TransformerBridge"/> against the independent
/// <see cref="HookedTransformer"/> (logits, every forward and backward hook, parameter gradients, weight processing,
/// AdamW parity), printed as a table and optionally written as JSON. Exit code 0 when every check passes, 1 otherwise.
/// </summary>
internal static class VerifyCommand
{
    public static Command Build(CliContext context)
    {
        var modelDir = new Argument<string>("MODEL_DIR") { Description = "HuggingFace model folder (config.json + model.safetensors)" };
        var dtype = new Option<string>("--dtype")
        {
            Description = "Parameter and activation dtype of both models (tolerance 1e-4 for float32, 1e-10 for float64, " +
                          "scaled by the magnitude of the compared values where it exceeds 1)",
            DefaultValueFactory = _ => "float32",
        };
        dtype.AcceptOnlyFromAmong("float32", "float64");
        var tokens = new Option<string?>("--tokens")
        {
            Description = "Tokens file {\"batches\": [[[ids...], ...], ...]}: batch 0 is the input of every check " +
                          "(default: a fixed-seed random [2, 12] batch)",
            HelpName = "T.json",
        };
        var json = new Option<string?>("--json") { Description = "Also write the report as JSON to this file", HelpName = "OUT.json" };
        var command = new Command("verify",
            "Run the verification suite: the bridge against the independent HookedTransformer reference on the same weights " +
            "(logits, every forward hook, every backward hook and parameter gradient for two objectives, weight processing, " +
            "AdamW after 1 and 10 steps), with every optional hook point on. Prints one row per check; the last line names " +
            "the failing checks. Exit code 0 when every check passes, 1 when any fails.")
        {
            modelDir, dtype, tokens, json,
        };
        command.SetAction(parse => context.Execute(() => Run(context, parse.GetValue(modelDir)!,
            CliSupport.ParseDType(parse.GetValue(dtype)), parse.GetValue(tokens), parse.GetValue(json))));
        return command;
    }

    private static int Run(CliContext context, string modelDir, ScalarType dtype, string? tokensPath, string? jsonPath)
    {
        var tokensFile = tokensPath is null ? null : TokensFile.Read(tokensPath);
        var jsonFull = jsonPath is null ? null : CliSupport.CheckOutPath(jsonPath);

        using var scope = Torch.NewScope();
        using var bridge = VerificationSuite.Prepare(CliSupport.LoadBridge(modelDir, new BridgeOptions { DType = dtype, AllOptionalHooks = true }));
        tokensFile?.CheckAgainst(bridge.Config, [0]);
        var tokens = tokensFile?.ToTensor(0) ?? VerificationSuite.DefaultTokens(bridge.Config);
        VerificationReport report;
        using (var reference = HookedTransformer.FromBridge(bridge))
        {
            context.PerturbReference?.Invoke(reference);
            report = VerificationSuite.Run(bridge, reference, tokens, modelDir);
        }

        context.Out.WriteLine(report.ToTable());
        if (jsonFull is not null)
        {
            try
            {
                File.WriteAllText(jsonFull, report.ToJson() + Environment.NewLine);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw new CliException($"cannot write '{jsonPath}': {e.Message}", e);
            }
            context.Out.WriteLine($"wrote the report to {jsonPath}");
        }
        if (report.Passed) return Program.Success;
        var failed = report.Results.Where(r => !r.Passed).Select(r => r.Name).ToList();
        context.Error.WriteLine($"verification failed: {failed.Count} of {report.Results.Count} checks ({string.Join(", ", failed)})");
        return Program.VerificationFailed;
    }
}
