using System.CommandLine;
using System.Text.RegularExpressions;
using SharpLens.Tokenization;

namespace SharpLens.Cli;

/// <summary>
/// <c>lens cache</c>: logits, loss and hook activations of every batch of a tokens file (or of texts), and with
/// <c>--backward</c> the hook-point and parameter gradients of an objective.
/// </summary>
internal static class CacheCommand
{
    public static Command Build(CliContext context)
    {
        var modelDir = new Argument<string>("MODEL_DIR") { Description = "HuggingFace model folder (config.json + model.safetensors)" };
        var tokens = new Option<string?>("--tokens")
        {
            Description = "Tokens file {\"batches\": [[[ids...], ...], ...]}: a list of batches, each a list of equal-length rows of int token ids",
            HelpName = "T.json",
        };
        var text = new Option<string[]>("--text")
        {
            Description = "Instead of --tokens: text to tokenize with the model folder's tokenizer (tokenizer.json, or vocab.json + merges.txt); " +
                          "repeat for several rows of one batch b0 (shorter rows are right-padded and masked); also writes b0.input_ids and b0.attention_mask",
            AllowMultipleArgumentsPerToken = false,
        };
        var prependBos = new Option<bool>("--prepend-bos") { Description = "With --text: put the tokenizer's BOS token before each text" };
        var names = new Option<string?>("--names")
        {
            Description = "Cache only the hook points whose name matches this regular expression (e.g. 'hook_pattern|resid_post')",
            HelpName = "REGEX",
        };
        var dtype = new Option<string>("--dtype") { Description = "Parameter and activation dtype", DefaultValueFactory = _ => "float32" };
        dtype.AcceptOnlyFromAmong("float32", "float64");
        var allHooks = new Option<bool>("--all-hooks")
        {
            Description = "Turn on the optional hook points (attn.hook_result, hook_q_input/k_input/v_input, hook_mlp_in, hook_tokens)",
        };
        var backward = new Option<string?>("--backward")
        {
            Description = "Run this objective backward: 'loss' (mean next-token loss) or 'last-logits-sum' (logits[:, -1, :].sum()); " +
                          "write the gradient at every cached hook point the backward pass reaches, b{i}.grad.<hook> " +
                          "(TransformerLens's backward-hook gradient, the shape of b{i}.act.<hook>), and every parameter gradient, b{i}.grad.param.<hf name>",
        };
        backward.AcceptOnlyFromAmong("loss", "last-logits-sum");
        var output = new Option<string>("--out") { Description = "Output safetensors file", Required = true, HelpName = "OUT.safetensors" };

        var command = new Command("cache",
            "Run the model on each batch and write b{i}.logits [batch, pos, vocab], b{i}.loss (mean next-token loss) and " +
            "b{i}.act.<hook> for every cached hook point (TransformerLens names); with --backward also b{i}.grad.<hook> and b{i}.grad.param.<hf name>.")
        {
            modelDir, tokens, text, prependBos, names, dtype, allHooks, backward, output,
        };
        command.SetAction(parse => context.Execute(() => Run(context, new Settings(
            parse.GetValue(modelDir)!, parse.GetValue(tokens), parse.GetValue(text) ?? [], parse.GetValue(prependBos),
            parse.GetValue(names), CliSupport.ParseDType(parse.GetValue(dtype)), parse.GetValue(allHooks),
            parse.GetValue(backward), parse.GetValue(output)!))));
        return command;
    }

    private sealed record Settings(string ModelDir, string? TokensPath, string[] Texts, bool PrependBos, string? Names,
        ScalarType DType, bool AllHooks, string? Backward, string Out);

    /// <summary>One batch to run: token ids and, for padded text batches, the attention mask.</summary>
    private sealed record Batch(Tensor Tokens, Tensor? AttentionMask, bool WriteInputs);

    private static int Run(CliContext context, Settings s)
    {
        if (s.TokensPath is null && s.Texts.Length == 0) throw new CliException("give the input with --tokens T.json or --text \"...\"");
        if (s.TokensPath is not null && s.Texts.Length > 0) throw new CliException("give either --tokens or --text, not both");
        if (s.PrependBos && s.Texts.Length == 0) throw new CliException("--prepend-bos applies only to --text");
        Regex? filter = null;
        if (s.Names is not null)
        {
            try
            {
                filter = new Regex(s.Names, RegexOptions.CultureInvariant, TimeSpan.FromSeconds(1));
            }
            catch (ArgumentException e)
            {
                throw new CliException($"--names '{s.Names}' is not a valid regular expression: {e.Message}", e);
            }
        }
        var tokensFile = s.TokensPath is null ? null : TokensFile.Read(s.TokensPath);
        var outPath = CliSupport.CheckOutPath(s.Out);

        using var scope = Torch.NewScope();
        using var bridge = CliSupport.LoadBridge(s.ModelDir, new BridgeOptions { DType = s.DType, AllOptionalHooks = s.AllHooks });
        var batches = new List<Func<Batch>>();
        if (tokensFile is not null)
        {
            tokensFile.CheckAgainst(bridge.Config);
            for (var i = 0; i < tokensFile.Batches.Count; i++)
            {
                var index = i;
                batches.Add(() => new Batch(tokensFile.ToTensor(index), null, false));
            }
        }
        else
        {
            var batch = TokenizeTexts(bridge, s.ModelDir, s.Texts, s.PrependBos);
            batches.Add(() => batch);
        }

        if (filter is not null && !bridge.HookDict.Keys.Any(filter.IsMatch))
            throw new CliException($"--names '{s.Names}' matches no hook point of this {bridge.Config.ModelType} model; " +
                                   $"hook points are named like {string.Join(", ", bridge.HookDict.Keys.Take(4))}, ...");

        var results = new List<KeyValuePair<string, Tensor>>();
        for (var i = 0; i < batches.Count; i++)
        {
            using var batchScope = Torch.NewScope();
            var batch = batches[i]();
            var prefix = $"b{i}.";
            if (s.Backward == "loss" && batch.Tokens.Size(1) < 2)
                throw new CliException($"batch {i} has rows of 1 token: its next-token loss is undefined (NaN, as HuggingFace's), so " +
                                       "--backward loss has nothing to differentiate; use --backward last-logits-sum, or rows of 2 tokens or more");
            foreach (var p in bridge.Parameters()) p.Grad = null;
            Tensor logits;
            ActivationCache cache;
            Tensor loss;
            using (s.Backward is null ? Torch.NoGrad() : Torch.EnableGrad())
            {
                Func<Tensor, Tensor>? objective = s.Backward switch
                {
                    null => null,
                    "loss" => l => bridge.LossOf(l, batch.Tokens, batch.AttentionMask),
                    _ => l => l.Select(1, -1).Sum(),
                };
                // With an objective, the bridge backpropagates it and caches each reached hook's gradient as <hook>_grad.
                (logits, cache) = bridge.RunWithCache(batch.Tokens, filter is null ? null : filter.IsMatch, batch.AttentionMask, objective);
            }
            using (Torch.NoGrad()) loss = bridge.LossOf(logits, batch.Tokens, batch.AttentionMask);
            using (cache)
            {
                var gradients = cache.Keys.Where(k => IsGradient(bridge, k)).ToHashSet();
                if (cache.Count == gradients.Count) throw NothingCached(bridge, s.Names!, filter!);
                Keep(results, prefix + "logits", logits.Detach());
                Keep(results, prefix + "loss", loss.Detach());
                if (batch.WriteInputs)
                {
                    Keep(results, prefix + "input_ids", batch.Tokens.Alias());
                    Keep(results, prefix + "attention_mask", batch.AttentionMask?.Alias() ?? Torch.Ones(batch.Tokens.Shape, ScalarType.Int64));
                }
                foreach (var (name, activation) in cache.Where(kv => !gradients.Contains(kv.Key)).OrderBy(kv => kv.Key, StringComparer.Ordinal))
                    Keep(results, prefix + "act." + name, activation.Alias());
                foreach (var name in gradients.Order(StringComparer.Ordinal))
                    Keep(results, prefix + "grad." + name[..^GradSuffix.Length], cache[name].Alias());
            }
            if (s.Backward is not null)
            {
                foreach (var (name, p) in bridge.NamedParameters())
                {
                    using var grad = p.Grad;
                    var g = grad is null ? Torch.Zeros(p.Shape, p.DType, p.Device) : grad.Clone();
                    Keep(results, prefix + "grad.param." + name, g);
                    p.Grad = null;
                }
            }
            context.Out.WriteLine($"batch {i}: {Tensor.FormatShape(batch.Tokens.Shape)} tokens, loss {CliSupport.Format(loss.ToDouble())}");
        }

        CliSupport.Save(outPath, results, CliSupport.Metadata("cache", s.ModelDir, s.DType));
        context.Out.WriteLine($"wrote {results.Count} tensors to {s.Out}");
        return Program.Success;
    }

    private const string GradSuffix = "_grad";

    /// <summary>A cache entry <c>&lt;hook&gt;_grad</c> holding the backward-hook gradient of the cached hook point <c>&lt;hook&gt;</c>.</summary>
    private static bool IsGradient(TransformerBridge bridge, string key) =>
        key.EndsWith(GradSuffix, StringComparison.Ordinal) && bridge.HookDict.ContainsKey(key[..^GradSuffix.Length])
        && !bridge.HookDict.ContainsKey(key);

    /// <summary>Moves a result out of the batch scope into the command's scope, which lives until the file is written.</summary>
    private static void Keep(List<KeyValuePair<string, Tensor>> results, string key, Tensor tensor) =>
        results.Add(new(key, tensor.MoveToOuterScope()));

    private static CliException NothingCached(TransformerBridge bridge, string names, Regex filter)
    {
        var matched = bridge.HookDict.Values.Where(h => filter.IsMatch(h.Name)).ToList();
        var switches = matched.Select(h => h.SwitchName).Where(n => n is not null).Distinct().ToList();
        return new CliException($"--names '{names}' matches only hook points that do not fire in this model " +
                                $"({string.Join(", ", matched.Take(4).Select(h => h.Name))}{(matched.Count > 4 ? ", ..." : "")}; " +
                                $"they need {string.Join(" / ", switches)}; --all-hooks turns the optional ones on)");
    }

    private static Batch TokenizeTexts(TransformerBridge bridge, string modelDir, string[] texts, bool prependBos)
    {
        BpeTokenizer tokenizer;
        try
        {
            tokenizer = BpeTokenizer.FromDirectory(modelDir);
        }
        catch (FileNotFoundException)
        {
            throw new CliException($"--text needs a tokenizer, but model directory '{modelDir}' has none " +
                                   "(expected tokenizer.json, or vocab.json with merges.txt); pass token ids with --tokens instead");
        }
        catch (Exception e) when (e is InvalidDataException or NotSupportedException or IOException or ArgumentException)
        {
            throw new CliException($"cannot load the tokenizer of '{modelDir}': {e.Message}", e);
        }
        TokenBatch encoded;
        try
        {
            encoded = tokenizer.EncodeBatch(texts, prependBos, PaddingSide.Right);
        }
        catch (InvalidOperationException e)
        {
            throw new CliException(e.Message, e);
        }
        var lengths = encoded.Lengths;
        var maxLength = lengths.Max();
        if (lengths.Min() < 1)
            throw new CliException($"--text '{texts[Array.IndexOf(lengths, lengths.Min())]}' gives no tokens; give some text or --prepend-bos");
        if (maxLength > bridge.Config.NCtx)
            throw new CliException($"--text gives {maxLength} tokens, more than the model's context of {bridge.Config.NCtx}");
        using (var hi = encoded.Tokens.Max())
            if (hi.ToInt64() >= bridge.Config.DVocab)
                throw new CliException($"the tokenizer produced id {hi.ToInt64()}, outside the model's vocabulary [0, {bridge.Config.DVocab})");
        var padded = lengths.Any(l => l != maxLength);
        if (!padded) encoded.AttentionMask.Dispose();
        return new Batch(encoded.Tokens, padded ? encoded.AttentionMask : null, true);
    }
}
