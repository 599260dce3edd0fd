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
        var distributed = new DistributedOptions();
        var command = new Command("train",
            "Train on one batch of the tokens file for N steps on the mean next-token loss, over every HF leaf parameter; " +
            "write 'losses' [N] (float32, the loss before each step) and every parameter after N steps by HF name. Prints one line per step. " +
            "With --nproc N (or under torchrun): data-parallel, each rank a contiguous shard of the batch's rows, gradients weighted by the shard's " +
            "share and all-reduced before each step, so the parameters are those of one process on the whole batch; rank 0 writes --out.")
        {
            modelDir, tokens, batch, steps, lr, weightDecay, optimizer, momentum, dtype, output,
        };
        distributed.AddTo(command);
        command.SetAction(parse => context.Execute(() =>
        {
            var (nproc, timeout) = distributed.Read(parse);
            return Run(context, new Settings(
                parse.GetValue(modelDir)!, parse.GetValue(tokens)!, parse.GetValue(batch), parse.GetValue(steps), parse.GetValue(lr),
                parse.GetValue(weightDecay), parse.GetValue(optimizer)!, parse.GetValue(momentum),
                CliSupport.ParseDType(parse.GetValue(dtype)), parse.GetValue(output)!, nproc, timeout));
        }));
        return command;
    }

    private sealed record Settings(string ModelDir, string TokensPath, int Batch, int Steps, double Lr, double WeightDecay,
        string Optimizer, double Momentum, ScalarType DType, string Out, int Nproc, TimeSpan Timeout);

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
        var job = DistributedCli.Environment();
        if (job is null && s.Nproc > 1) return DistributedCli.Launch(context, s.Nproc, s.Timeout);
        var rows = tokensFile.Batches[s.Batch].Length;
        if (job is not null && job.WorldSize > rows)
            throw new CliException($"{job.WorldSize} ranks need at least as many rows, but batch {s.Batch} of {s.TokensPath} has {rows}");

        using var scope = Torch.NewScope();
        using var session = job is null ? null : DistributedCli.Join(job, s.Nproc, s.Timeout);
        using var bridge = CliSupport.LoadBridge(s.ModelDir, new BridgeOptions { DType = s.DType });
        tokensFile.CheckAgainst(bridge.Config, [s.Batch]);
        if (tokensFile.Batches[s.Batch][0].Length < 2)
            throw new CliException($"{tokensFile.Path}: batch {s.Batch} has rows of 1 token: its next-token loss is undefined (NaN), " +
                                   "so there is nothing to train on; lens train needs rows of at least 2 tokens");
        var tokens = tokensFile.ToTensor(s.Batch);
        var shard = session is null ? null : new DataParallel(session.Group, bridge.Parameters(), rows);
        if (shard is not null) tokens = shard.Rows(tokens);
        var leader = session is null || session.Rank == 0;
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
                if (shard is not null) loss = shard.Weighted(loss);
                loss.Backward();
                var value = shard is null ? loss.ToDouble() : shard.Total(loss);
                if (!double.IsFinite(value))
                    throw new CliException($"the loss became {value} before step {step}; lower --lr");
                losses[step - 1] = (float)value;
                shard?.AllReduceGradients();
                optimizer.Step();
                if (leader) context.Out.WriteLine($"step {step} loss {CliSupport.Format(value)}");
            }
            optimizer.ZeroGrad();
        }

        if (!leader) return Program.Success;  // every rank holds the same parameters; rank 0 writes them
        var tensors = new List<KeyValuePair<string, Tensor>> { new("losses", Torch.FromArray(losses)) };
        using (Torch.NoGrad())
            foreach (var (name, p) in bridge.NamedParameters()) tensors.Add(new(name, p.Detach()));
        CliSupport.Save(outPath, tensors, CliSupport.Metadata("train", s.ModelDir, s.DType));
        context.Out.WriteLine($"wrote losses and {tensors.Count - 1} parameters to {s.Out}");
        return Program.Success;
    }
}

/// <summary>
/// Data parallelism over a process group, as PyTorch's DDP does it: the same parameters on every rank (broadcast from
/// rank 0 at the start), each rank a contiguous shard of the batch's rows, and before each optimizer step the gradients
/// summed over ranks in one collective. Each rank's mean loss is weighted by its share of the rows (rows_r / rows), so the
/// summed gradient is the gradient of the mean loss over the whole batch (every row has the same number of tokens), even
/// when the rows do not divide evenly.
/// </summary>
internal sealed class DataParallel
{
    private readonly ProcessGroup _group;
    private readonly IReadOnlyList<Tensor> _parameters;
    private readonly long _start;
    private readonly long _count;
    private readonly double _share;

    public DataParallel(ProcessGroup group, IReadOnlyList<Tensor> parameters, int rows)
    {
        _group = group;
        _parameters = parameters;
        _start = (long)rows * group.Rank / group.WorldSize;
        _count = (long)rows * (group.Rank + 1) / group.WorldSize - _start;
        _share = (double)_count / rows;
        using (Torch.NoGrad())
            foreach (var p in parameters) group.Broadcast(p, root: 0);
    }

    /// <summary>This rank's rows of the batch.</summary>
    public Tensor Rows(Tensor tokens) => tokens.Narrow(0, _start, _count);

    /// <summary>This rank's mean loss times its share of the rows.</summary>
    public Tensor Weighted(Tensor loss) => loss * _share;

    /// <summary>The mean loss over the whole batch: the weighted losses summed over ranks.</summary>
    public double Total(Tensor weighted)
    {
        using var scope = Torch.NewScope();
        var value = weighted.Detach().Reshape(1).Clone();
        _group.AllReduce(value);
        return value.ToDouble();
    }

    /// <summary>Sums every parameter's gradient over ranks, in one flat collective per dtype.</summary>
    public void AllReduceGradients()
    {
        using var scope = Torch.NewScope();
        var grads = _parameters.Select(p => p.Grad).ToList();
        if (grads.Any(g => g is null))
            throw new InvalidOperationException($"{grads.Count(g => g is null)} parameter(s) got no gradient on rank {_group.Rank}; " +
                                                "data-parallel training needs every parameter in the loss on every rank");
        foreach (var sameType in grads.GroupBy(g => g!.DType)) _group.AllReduce(sameType.Select(g => g!).ToList());
    }
}
