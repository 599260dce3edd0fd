using System.CommandLine;
using SharpLens.Tensors.Optim;

namespace SharpLens.Cli;

/// <summary><c>lens train</c>: a few optimizer steps on one batch's next-token loss, over <c>Parameters()</c>.</summary>
internal static class TrainCommand
{
    public static Command Build(CliContext context)
    {
        var modelDir = new Argument<string>("MODEL_DIR") { Description = "HuggingFace model folder (config.json + model.safetensors)" };
        var tokens = new Option<string>("--tokens")
        {
            Description = "Tokens file {\"batches\": [[[ids...], ...], ...]}", Required = true, HelpName = "T.json",
        };
        var batch = new Option<int>("--batch") { Description = "Which batch of the tokens file to train on", DefaultValueFactory = _ => 0 };
        var steps = new Option<int>("--steps") { Description = "Number of optimizer steps", Required = true, HelpName = "N" };
        var lr = new Option<double>("--lr") { Description = "Learning rate", DefaultValueFactory = _ => 1e-3 };
        var weightDecay = new Option<double>("--weight-decay")
        {
            Description = "Weight decay (decoupled for AdamW, an L2 term for SGD)", DefaultValueFactory = _ => 0.01,
        };
        var optimizer = new Option<string>("--optimizer") { Description = "Optimizer (torch.optim semantics)", DefaultValueFactory = _ => "adamw" };
        optimizer.AcceptOnlyFromAmong("adamw", "sgd");
        var momentum = new Option<double>("--momentum") { Description = "SGD momentum", DefaultValueFactory = _ => 0 };
        var dtype = new Option<string>("--dtype") { Description = "Parameter dtype", DefaultValueFactory = _ => "float32" };
        dtype.AcceptOnlyFromAmong("float32", "float64");
        var output = new Option<string>("--out") { Description = "Output safetensors file", Required = true, HelpName = "OUT.safetensors" };
        var command = new Command("train",
            "Train on one batch of the tokens file for N steps on the mean next-token loss, over every HF leaf parameter; " +
            "write 'losses' [N] (float32, the loss before each step) and every parameter after N steps by HF name. Prints one line per step.")
        {
            modelDir, tokens, batch, steps, lr, weightDecay, optimizer, momentum, dtype, output,
        };
        command.SetAction(parse => context.Execute(() => Run(context, new Settings(
            parse.GetValue(modelDir)!, parse.GetValue(tokens)!, parse.GetValue(batch), parse.GetValue(steps), parse.GetValue(lr),
            parse.GetValue(weightDecay), parse.GetValue(optimizer)!, parse.GetValue(momentum),
            CliSupport.ParseDType(parse.GetValue(dtype)), parse.GetValue(output)!))));
        return command;
    }

    private sealed record Settings(string ModelDir, string TokensPath, int Batch, int Steps, double Lr, double WeightDecay,
        string Optimizer, double Momentum, ScalarType DType, string Out);

    private static int Run(CliContext context, Settings s)
    {
        if (s.Steps < 1) throw new CliException($"--steps must be at least 1, got {s.Steps}");
        if (!(s.Lr > 0) || double.IsInfinity(s.Lr)) throw new CliException($"--lr must be a positive number, got {s.Lr}");
        if (!(s.WeightDecay >= 0) || double.IsInfinity(s.WeightDecay)) throw new CliException($"--weight-decay must be a non-negative number, got {s.WeightDecay}");
        if (!(s.Momentum >= 0) || double.IsInfinity(s.Momentum)) throw new CliException($"--momentum must be a non-negative number, got {s.Momentum}");
        if (s.Momentum != 0 && s.Optimizer != "sgd") throw new CliException("--momentum applies only to --optimizer sgd");
        var tokensFile = TokensFile.Read(s.TokensPath);
        if (s.Batch < 0 || s.Batch >= tokensFile.Batches.Count)
            throw new CliException($"--batch {s.Batch} is out of range: {s.TokensPath} holds {tokensFile.Batches.Count} batch(es)");
        var outPath = CliSupport.CheckOutPath(s.Out);

        using var scope = Torch.NewScope();
        using var bridge = CliSupport.LoadBridge(s.ModelDir, new BridgeOptions { DType = s.DType });
        tokensFile.CheckAgainst(bridge.Config, [s.Batch]);
        var tokens = tokensFile.ToTensor(s.Batch);
        var losses = new float[s.Steps];
        using (Optimizer optimizer = s.Optimizer == "sgd"
                   ? new SGD(bridge.Parameters(), lr: s.Lr, momentum: s.Momentum, weightDecay: s.WeightDecay)
                   : new AdamW(bridge.Parameters(), lr: s.Lr, weightDecay: s.WeightDecay))
        {
            for (var step = 1; step <= s.Steps; step++)
            {
                using var stepScope = Torch.NewScope();
                optimizer.ZeroGrad();
                var loss = bridge.Loss(tokens);
                var value = loss.ToDouble();
                if (!double.IsFinite(value))
                    throw new CliException($"the loss became {value} before step {step}; lower --lr");
                losses[step - 1] = (float)value;
                loss.Backward();
                optimizer.Step();
                context.Out.WriteLine($"step {step} loss {CliSupport.Format(value)}");
            }
            optimizer.ZeroGrad();
        }

        var tensors = new List<KeyValuePair<string, Tensor>> { new("losses", Torch.FromArray(losses)) };
        using (Torch.NoGrad())
            foreach (var (name, p) in bridge.NamedParameters()) tensors.Add(new(name, p.Detach()));
        CliSupport.Save(outPath, tensors, CliSupport.Metadata("train", s.ModelDir, s.DType));
        context.Out.WriteLine($"wrote losses and {tensors.Count - 1} parameters to {s.Out}");
        return Program.Success;
    }
}
