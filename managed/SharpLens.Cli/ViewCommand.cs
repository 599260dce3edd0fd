using System.CommandLine;
using System.Globalization;
using SharpLens.Saes;
using SharpLens.Sweeps;
using SharpLens.Tensors.IO;
using SharpLens.Tokenization;
using SharpLens.Views;

namespace SharpLens.Cli;

/// <summary><c>lens view</c>: self-contained HTML views (see <see cref="HtmlViews"/>): attention, logit lens, patching results, SAE features.</summary>
internal static class ViewCommand
{
    public static Command Build(CliContext context)
    {
        var command = new Command("view",
            "Write a self-contained HTML view (inline styles, no script, no link): attention patterns, a logit lens, a heat map of lens patch results, SAE feature activations");
        command.Subcommands.Add(Attention(context));
        command.Subcommands.Add(LogitLens(context));
        command.Subcommands.Add(Patch(context));
        command.Subcommands.Add(Features(context));
        return command;
    }

    /// <summary>The options every view of a prompt shares.</summary>
    private sealed class PromptOptions
    {
        public readonly Argument<string> Model = new("MODEL_DIR") { Description = "HuggingFace model folder (config.json + model.safetensors)" };
        public readonly Option<string?> Text = new("--text") { Description = "The text (needs the model folder's tokenizer)" };
        public readonly Option<string?> Tokens = new("--tokens") { Description = "Token ids, comma-separated: \"1,2,3\"", HelpName = "IDS" };
        public readonly Option<bool?> PrependBos = new("--prepend-bos") { Description = "With --text: put BOS first (default: the architecture's default)" };
        public readonly Option<string> Out = new("--out") { Description = "The HTML file to write", Required = true, HelpName = "FILE.html" };
        public readonly Option<string> DType = new("--dtype") { Description = "Parameter dtype", DefaultValueFactory = _ => "float32" };

        public PromptOptions() => DType.AcceptOnlyFromAmong("float32", "float64");

        public void AddTo(Command c)
        {
            c.Arguments.Add(Model);
            foreach (var o in new Option[] { Text, Tokens, PrependBos, Out, DType }) c.Options.Add(o);
        }

        /// <summary>Loads the model and the prompt; returns the bridge, the ids [1, n], the tokens as strings and a decoder of ids.</summary>
        public (TransformerBridge Bridge, Tensor Ids, string[] TokenTexts, Func<long, string> Decode) Load(ParseResult parse)
        {
            var modelDir = parse.GetValue(Model)!;
            var (text, tokens) = (parse.GetValue(Text), parse.GetValue(Tokens));
            if ((text is null) == (tokens is null)) throw new CliException("give the prompt with either --text \"...\" or --tokens \"1,2,3\"");
            CliSupport.CheckOutPath(parse.GetValue(Out));
            var tokenizer = GenerateCommand.TryLoadTokenizer(modelDir);
            var bridge = CliSupport.LoadBridge(modelDir, new BridgeOptions { DType = CliSupport.ParseDType(parse.GetValue(DType)) });
            try
            {
                long[] ids;
                if (text is not null)
                {
                    if (tokenizer is null) throw new CliException($"--text needs a tokenizer, but '{modelDir}' has none; pass token ids with --tokens");
                    ids = tokenizer.Encode(text, parse.GetValue(PrependBos) ?? bridge.Config.DefaultPrependBos).Select(i => (long)i).ToArray();
                    if (ids.Length == 0) throw new CliException("--text encodes to no tokens");
                }
                else ids = GenerateCommand.ParseIds(tokens!);
                foreach (var id in ids)
                    if (id < 0 || id >= bridge.Config.DVocab) throw new CliException($"token id {id} is outside the vocabulary [0, {bridge.Config.DVocab})");
                if (ids.Length > bridge.Config.NCtx) throw new CliException($"{ids.Length} tokens exceed the model's context of {bridge.Config.NCtx}");
                Func<long, string> decode = tokenizer is null ? id => "#" + id.ToString(CultureInfo.InvariantCulture) : id => Decoded(tokenizer, id);
                return (bridge, Torch.FromArray(ids, 1, ids.Length).DetachFromScope(), ids.Select(decode).ToArray(), decode);
            }
            catch
            {
                bridge.Dispose();
                throw;
            }
        }

        private static string Decoded(BpeTokenizer tokenizer, long id) => tokenizer.Decode([(int)id]);
    }

    private static Command Attention(CliContext context)
    {
        var o = new PromptOptions();
        var heads = new Option<string>("--heads") { Description = "Heads as LAYER.HEAD, comma-separated: \"0.1,1.3\"", Required = true };
        var c = new Command("attention", "Attention patterns of chosen heads over the prompt: one query-by-key grid per head");
        o.AddTo(c);
        c.Options.Add(heads);
        c.SetAction(parse => context.Execute(() =>
        {
            var chosen = ParseHeads(parse.GetValue(heads)!);
            var (bridge, ids, texts, _) = o.Load(parse);
            using (bridge)
            using (ids)
            using (var scope = Torch.NewScope())
            {
                foreach (var h in chosen)
                    if (h.Layer >= bridge.Config.NLayers || h.Head >= bridge.Config.NHeads)
                        throw new CliException($"--heads: {h} is not a head of a model with {bridge.Config.NLayers} layers of {bridge.Config.NHeads} heads");
                var (_, cache) = bridge.RunWithCache(ids, n => n.EndsWith("hook_pattern"));
                using (cache) return Write(context, parse.GetValue(o.Out)!, HtmlViews.AttentionPatterns(cache, texts, chosen));
            }
        }));
        return c;
    }

    private static Command LogitLens(CliContext context)
    {
        var o = new PromptOptions();
        var top = new Option<int>("--top") { Description = "Tokens per cell in the tooltip", DefaultValueFactory = _ => 5 };
        var c = new Command("logit-lens", "A token-by-layer table of what each layer's residual stream predicts next (final norm and unembedding applied)");
        o.AddTo(c);
        c.Options.Add(top);
        c.SetAction(parse => context.Execute(() =>
        {
            if (parse.GetValue(top) < 1) throw new CliException("--top must be at least 1");
            var (bridge, ids, texts, decode) = o.Load(parse);
            using (bridge)
            using (ids)
            using (var scope = Torch.NewScope())
            {
                var (_, cache) = bridge.RunWithCache(ids, n => n.EndsWith("hook_resid_pre") || n.EndsWith("hook_resid_post") || n.StartsWith("ln_final"));
                using (cache) return Write(context, parse.GetValue(o.Out)!, HtmlViews.LogitLens(cache, texts, decode, topK: parse.GetValue(top)));
            }
        }));
        return c;
    }

    private static Command Patch(CliContext context)
    {
        var input = new Argument<string>("RESULTS") { Description = "A lens patch output folder, or its patch.safetensors" };
        var pair = new Option<int?>("--pair") { Description = "Show this pair (index among the file's pairs); default: the mean over all pairs" };
        var output = new Option<string>("--out") { Description = "The HTML file to write", Required = true, HelpName = "FILE.html" };
        var c = new Command("patch", "A heat map of lens patch results (layer x position, or layer x head for head_out)") { input, pair, output };
        c.SetAction(parse => context.Execute(() =>
        {
            var path = parse.GetValue(input)!;
            if (Directory.Exists(path)) path = Path.Combine(path, PatchSweep.ResultName);
            if (!File.Exists(path)) throw new CliException($"'{path}' does not exist; give a lens patch output folder or its {PatchSweep.ResultName}");
            CliSupport.CheckOutPath(parse.GetValue(output));
            using var scope = Torch.NewScope();
            SafeTensorsFile file;
            try
            {
                file = SafeTensorsFile.Open(path);
            }
            catch (SafeTensorsFormatException e)
            {
                throw new CliException(e.Message, e);
            }
            using (file)
            {
                if (!file.Metadata.TryGetValue("kind", out var kind) || !file.Contains(kind))
                    throw new CliException($"'{path}' is not a lens patch result (no 'kind' in its metadata)");
                var values = file.Load(kind).To(ScalarType.Float64);
                var clean = file.Load("clean_metric").To(ScalarType.Float64);
                var corrupted = file.Load("corrupted_metric").To(ScalarType.Float64);
                var n = values.Size(0);
                string title;
                if (parse.GetValue(pair) is { } p)
                {
                    if (p < 0 || p >= n) throw new CliException($"--pair {p} is outside the {n} pair(s) of '{path}'");
                    (values, clean, corrupted) = (values.Select(0, p), clean.Select(0, p), corrupted.Select(0, p));
                    title = $"Patching {kind}, pair {p}";
                }
                else
                {
                    (values, clean, corrupted) = (values.Mean(0), clean.Mean(), corrupted.Mean());
                    title = $"Patching {kind}, mean over {n} pair(s)";
                }
                var grid = HtmlViews.Matrix(values);
                var rows = Enumerable.Range(0, grid.GetLength(0)).Select(l => $"L{l}").ToList();
                var cols = Enumerable.Range(0, grid.GetLength(1)).Select(j => kind == "head_out" ? $"H{j}" : j.ToString(CultureInfo.InvariantCulture)).ToList();
                return Write(context, parse.GetValue(output)!, HtmlViews.PatchingHeatmap(grid, rows, cols, title, clean.ToDouble(), corrupted.ToDouble()));
            }
        }));
        return c;
    }

    private static Command Features(CliContext context)
    {
        var o = new PromptOptions();
        var sae = new Option<string>("--sae") { Description = "An SAE folder in SAELens's format (cfg.json + sae_weights.safetensors)", Required = true, HelpName = "DIR" };
        var features = new Option<string?>("--features") { Description = "Feature indices, comma-separated; default: the --top most active on the text" };
        var top = new Option<int>("--top") { Description = "Without --features: how many of the most active features to show", DefaultValueFactory = _ => 8 };
        var c = new Command("features", "SAE feature activations over the prompt, the SAE spliced in at its hook point (with the error term, so upstream SAE-free)");
        o.AddTo(c);
        c.Options.Add(sae);
        c.Options.Add(features);
        c.Options.Add(top);
        c.SetAction(parse => context.Execute(() =>
        {
            var (bridge, ids, texts, _) = o.Load(parse);
            using (bridge)
            using (ids)
            {
                Sae loaded;
                try
                {
                    loaded = Sae.Load(parse.GetValue(sae)!, device: bridge.Config.Device);  // on the model's device
                }
                catch (FormatException e)
                {
                    throw new CliException(e.Message, e);
                }
                using (loaded)
                using (var scope = Torch.NewScope())
                {
                    if (!bridge.HookDict.ContainsKey(loaded.Config.HookName))
                        throw new CliException($"the SAE reads '{loaded.Config.HookName}', which this {bridge.Config.ModelType} model does not have");
                    var name = loaded.HookName("hook_sae_acts_post");
                    Tensor acts;
                    using (var splice = bridge.Splice(loaded, useErrorTerm: true))
                    {
                        var (_, cache) = splice.RunWithCache(ids, n => n == name);
                        using (cache) acts = cache[name].Select(0, 0).To(ScalarType.Float64).Contiguous();  // [pos, d_sae]
                    }
                    int[] chosen;
                    if (parse.GetValue(features) is { } list)
                    {
                        chosen = GenerateCommand.ParseIds(list).Select(f => f >= 0 && f < loaded.Config.DSae
                            ? (int)f
                            : throw new CliException($"--features: {f} is not a feature of an SAE with {loaded.Config.DSae}")).ToArray();
                    }
                    else
                    {
                        if (parse.GetValue(top) < 1) throw new CliException("--top must be at least 1");
                        var (_, order) = acts.Amax([0]).TopK(Math.Min(parse.GetValue(top), loaded.Config.DSae));
                        chosen = order.ToArray<long>().Select(f => (int)f).ToArray();
                    }
                    var rows = chosen.Select(f => ($"feature {f}", acts.Select(1, f).Contiguous().ToArray<double>())).ToList();
                    return Write(context, parse.GetValue(o.Out)!, HtmlViews.FeatureActivations(texts, rows, $"SAE features at {loaded.Config.HookName}"));
                }
            }
        }));
        return c;
    }

    private static List<HeadIndex> ParseHeads(string text)
    {
        var heads = new List<HeadIndex>();
        foreach (var part in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            var lh = part.Split('.');
            if (lh.Length != 2 || !int.TryParse(lh[0], NumberStyles.None, CultureInfo.InvariantCulture, out var l) ||
                !int.TryParse(lh[1], NumberStyles.None, CultureInfo.InvariantCulture, out var h))
                throw new CliException($"--heads: '{part}' is not LAYER.HEAD (e.g. 1.3)");
            heads.Add(new HeadIndex(l, h));
        }
        return heads.Count > 0 ? heads : throw new CliException("--heads names no head");
    }

    private static int Write(CliContext context, string path, string html)
    {
        try
        {
            HtmlViews.Write(path, html);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CliException($"cannot write '{path}': {e.Message}", e);
        }
        context.Out.WriteLine($"wrote {path} ({html.Length} characters)");
        return Program.Success;
    }
}
