namespace SharpLens.Sweeps;

/// <summary>
/// A family of hook points measured by a sweep: one hook point per layer (or a single one, such as
/// <c>ln_final.hook_normalized</c>), measured at every position and, for <c>attn.hook_z</c>, per head. Values of a
/// site are laid out [layer, pos] or [layer, pos, head] (with a leading pair dimension when batched), where
/// "layer" indexes <see cref="HookNames"/>.
/// </summary>
/// <param name="Key">Short name used in file keys (<c>attr.&lt;Key&gt;</c>, <c>exact.&lt;Key&gt;</c>).</param>
/// <param name="HookNames">The hook point of each layer of the site, in order.</param>
/// <param name="PerHead">The activation is [batch, pos, head, d_head] and is measured per head; otherwise [batch, pos, d].</param>
public sealed record AttributionSite(string Key, IReadOnlyList<string> HookNames, bool PerHead)
{
    /// <summary>Every head's output <c>blocks.{l}.attn.hook_z</c>, per layer, position and head.</summary>
    public static AttributionSite Z(TransformerConfig config) => PerLayer("z", config, l => $"blocks.{l}.attn.hook_z", perHead: true);

    /// <summary>The residual stream entering each block, <c>blocks.{l}.hook_resid_pre</c>.</summary>
    public static AttributionSite ResidPre(TransformerConfig config) => PerLayer("resid_pre", config, l => $"blocks.{l}.hook_resid_pre");

    /// <summary>Each block's attention output, <c>blocks.{l}.hook_attn_out</c>.</summary>
    public static AttributionSite AttnOut(TransformerConfig config) => PerLayer("attn_out", config, l => $"blocks.{l}.hook_attn_out");

    /// <summary>Each block's MLP output, <c>blocks.{l}.hook_mlp_out</c>.</summary>
    public static AttributionSite MlpOut(TransformerConfig config) => PerLayer("mlp_out", config, l => $"blocks.{l}.hook_mlp_out");

    /// <summary>
    /// The final LayerNorm's output <c>ln_final.hook_normalized</c> (one "layer"): the logits are an affine function
    /// of it, so attribution patching is exact there; a useful check of a sweep.
    /// </summary>
    public static AttributionSite LnFinalNormalized() => new("ln_final_normalized", ["ln_final.hook_normalized"], false);

    /// <summary>The sites of <c>lens sweep</c>: z, resid_pre, attn_out, mlp_out.</summary>
    public static IReadOnlyList<AttributionSite> Defaults(TransformerConfig config) => [Z(config), ResidPre(config), AttnOut(config), MlpOut(config)];

    private static AttributionSite PerLayer(string key, TransformerConfig config, Func<int, string> name, bool perHead = false) =>
        new(key, Enumerable.Range(0, config.NLayers).Select(name).ToArray(), perHead);

    /// <summary>Number of layers (hook points).</summary>
    public int Layers => HookNames.Count;

    /// <summary>The shape of this site's values for <paramref name="pairs"/> pairs padded to <paramref name="positions"/>: [pairs, layer, pos(, head)].</summary>
    public long[] Shape(int pairs, int positions, int heads) => PerHead ? [pairs, Layers, positions, heads] : [pairs, Layers, positions];

    /// <summary>Values per pair: layer × pos (× head).</summary>
    public int ValuesPerPair(int positions, int heads) => Layers * positions * (PerHead ? heads : 1);

    /// <summary>A readable name of one value: <c>blocks.1.attn.hook_z head=2 pos=5</c>.</summary>
    public string Describe(int layer, int position, int head) =>
        PerHead ? $"{HookNames[layer]} head={head} pos={position}" : $"{HookNames[layer]} pos={position}";
}

/// <summary>Values of one site laid out row-major with the given shape.</summary>
public sealed class SiteValues(AttributionSite site, long[] shape)
{
    /// <summary>The site.</summary>
    public AttributionSite Site { get; } = site;

    /// <summary>[pairs, layer, pos(, head)] or, for one pair, [layer, pos(, head)].</summary>
    public long[] Shape { get; } = shape;

    /// <summary>The values, row-major.</summary>
    public double[] Data { get; } = new double[shape.Aggregate(1L, (a, b) => a * b)];
}

/// <summary>Attribution-patching estimates for a batch of pairs.</summary>
public sealed class AttributionResult
{
    internal AttributionResult(IReadOnlyList<PromptPair> pairs, int positions, double[] clean, double[] corrupted, Dictionary<string, SiteValues> estimates)
    {
        Pairs = pairs;
        Positions = positions;
        MetricClean = clean;
        MetricCorrupted = corrupted;
        Estimates = estimates;
    }

    /// <summary>The pairs, in order.</summary>
    public IReadOnlyList<PromptPair> Pairs { get; }

    /// <summary>The position dimension of <see cref="Estimates"/> (positions at or beyond a pair's length hold 0).</summary>
    public int Positions { get; }

    /// <summary>The logit difference of each clean prompt.</summary>
    public double[] MetricClean { get; }

    /// <summary>The logit difference of each corrupted prompt.</summary>
    public double[] MetricCorrupted { get; }

    /// <summary>Per site key, the estimates [pair, layer, pos(, head)].</summary>
    public IReadOnlyDictionary<string, SiteValues> Estimates { get; }
}

/// <summary>Exact activation-patching effects for one pair.</summary>
public sealed class ExactPatchingResult
{
    internal ExactPatchingResult(PromptPair pair, int positions, double clean, double corrupted, Dictionary<string, SiteValues> effects)
    {
        Pair = pair;
        Positions = positions;
        MetricClean = clean;
        MetricCorrupted = corrupted;
        Effects = effects;
    }

    /// <summary>The pair.</summary>
    public PromptPair Pair { get; }

    /// <summary>The position dimension of <see cref="Effects"/>.</summary>
    public int Positions { get; }

    /// <summary>The clean logit difference (no patch).</summary>
    public double MetricClean { get; }

    /// <summary>The corrupted logit difference.</summary>
    public double MetricCorrupted { get; }

    /// <summary>
    /// Per site key, [layer, pos(, head)]: the clean run's logit difference with that one activation (one
    /// layer's hook, one position, one head for z) replaced by the corrupted run's, minus the clean logit difference.
    /// </summary>
    public IReadOnlyDictionary<string, SiteValues> Effects { get; }
}

/// <summary>
/// Attribution patching (Nanda 2023; Syed, Rager and Conmy 2023) with the logit-difference metric
/// <c>logit[answer] - logit[wrong]</c> at the last real position: for every site, layer, position (and head)
/// the estimate <c>∂metric/∂a(clean) · (a(corrupted) - a(clean))</c>, summed over the feature dimension,
/// from one clean run with gradients and one corrupted run; and, for comparison, exact activation patching.
/// <para>
/// Pairs are batched with right padding and an attention mask, so every row's positions are those of an
/// unpadded run and the metric reads position <c>length - 1</c>. The gradient of the batch-summed metric gives
/// each row its own gradient, because rows do not interact. While estimating, the model's parameters are
/// frozen (their gradients would be thrown away) and restored afterwards.
/// </para>
/// </summary>
public sealed class AttributionPatcher
{
    /// <summary>A patcher for <paramref name="model"/> over <paramref name="sites"/> (default: <see cref="AttributionSite.Defaults"/>).</summary>
    public AttributionPatcher(TransformerBridge model, IReadOnlyList<AttributionSite>? sites = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        Model = model;
        Sites = sites ?? AttributionSite.Defaults(model.Config);
        if (Sites.Count == 0) throw new ArgumentException("no sites to measure", nameof(sites));
        if (Sites.Select(s => s.Key).Distinct().Count() != Sites.Count) throw new ArgumentException("two sites share a key", nameof(sites));
        foreach (var name in Sites.SelectMany(s => s.HookNames))
            if (!model.HookDict.ContainsKey(name)) throw new ArgumentException($"no hook point '{name}' in this {model.Config.ModelType} model", nameof(sites));
        _hookNames = Sites.SelectMany(s => s.HookNames).ToHashSet(StringComparer.Ordinal);
    }

    private readonly HashSet<string> _hookNames;

    /// <summary>The model.</summary>
    public TransformerBridge Model { get; }

    /// <summary>The sites measured.</summary>
    public IReadOnlyList<AttributionSite> Sites { get; }

    private int Heads => Model.Config.NHeads;

    private Device ModelDevice => Model.Parameters()[0].Device;

    /// <summary>
    /// The logit difference <c>logit[answer] - logit[wrong]</c> at <paramref name="lastPositions"/> of each row:
    /// logits [batch, pos, vocab], the others int64 [batch]; returns [batch] (differentiable).
    /// </summary>
    public static Tensor LogitDiff(Tensor logits, Tensor lastPositions, Tensor answers, Tensor wrongs)
    {
        var (batch, vocab) = (logits.Size(0), logits.Size(2));
        var last = logits.Gather(1, lastPositions.View(batch, 1, 1).Expand(batch, 1, vocab)).Squeeze(1);  // [batch, vocab]
        return last.Gather(1, answers.View(batch, 1)).Squeeze(1) - last.Gather(1, wrongs.View(batch, 1)).Squeeze(1);
    }

    /// <summary>
    /// Attribution-patching estimates for <paramref name="pairs"/> in one batch, padded to <paramref name="positions"/>
    /// (default: the longest pair). Runs the clean batch with gradients of the summed metric and the corrupted batch
    /// without, caching only the sites' hook points.
    /// </summary>
    public AttributionResult Attribute(IReadOnlyList<PromptPair> pairs, int? positions = null)
    {
        ArgumentNullException.ThrowIfNull(pairs);
        if (pairs.Count == 0) throw new ArgumentException("no pairs", nameof(pairs));
        foreach (var p in pairs) p.Validate(Model.Config);
        var n = pairs.Count;
        var batchLen = pairs.Max(p => p.Length);
        var P = positions ?? batchLen;
        if (P < batchLen) throw new ArgumentOutOfRangeException(nameof(positions), P, $"a pair has {batchLen} positions, more than {P}");

        var estimates = Sites.ToDictionary(s => s.Key, s => new SiteValues(s, s.Shape(n, P, Heads)));
        var metricClean = new double[n];
        var metricCorrupted = new double[n];
        var device = ModelDevice;

        using var scope = Torch.NewScope();
        var (cleanIds, corruptedIds, maskIds) = (new long[n * batchLen], new long[n * batchLen], new long[n * batchLen]);
        for (var i = 0; i < n; i++)
        {
            var pair = pairs[i];
            for (var j = 0; j < pair.Length; j++)
            {
                cleanIds[i * batchLen + j] = pair.Clean[j];
                corruptedIds[i * batchLen + j] = pair.Corrupted[j];
                maskIds[i * batchLen + j] = 1;
            }
        }
        var clean = Torch.FromArray(cleanIds, n, batchLen).To(device);
        var corrupted = Torch.FromArray(corruptedIds, n, batchLen).To(device);
        var mask = pairs.All(p => p.Length == batchLen) ? null : Torch.FromArray(maskIds, n, batchLen).To(device);
        var last = Torch.FromArray(pairs.Select(p => (long)p.Length - 1).ToArray()).To(device);
        var answers = Torch.FromArray(pairs.Select(p => p.Answer).ToArray()).To(device);
        var wrongs = Torch.FromArray(pairs.Select(p => p.Wrong).ToArray()).To(device);

        // Clean run with gradients. The parameters are frozen and the embedding made a leaf instead, so backward
        // computes only activation gradients; the parameters' RequiresGrad is restored afterwards.
        var frozen = Model.Parameters().Where(p => p.RequiresGrad).ToList();
        ActivationCache? cleanCache = null, corruptedCache = null;
        try
        {
            foreach (var p in frozen) p.RequiresGrad = false;
            using (Torch.EnableGrad())
            using (Model.AddHook("hook_embed", (a, _) => a.Detach().RequiresGrad_()))
            {
                (_, cleanCache) = Model.RunWithCache(clean, _hookNames.Contains, mask, logits =>
                {
                    var metric = LogitDiff(logits, last, answers, wrongs);
                    CopyVector(metric, metricClean);
                    return metric.Sum();
                });
            }
        }
        finally
        {
            foreach (var p in frozen) p.RequiresGrad = true;
        }

        try
        {
            using (Torch.NoGrad())
            {
                Tensor logits;
                (logits, corruptedCache) = Model.RunWithCache(corrupted, _hookNames.Contains, mask);
                CopyVector(LogitDiff(logits, last, answers, wrongs), metricCorrupted);

                foreach (var site in Sites)
                {
                    var values = estimates[site.Key];
                    for (var layer = 0; layer < site.Layers; layer++)
                    {
                        var name = site.HookNames[layer];
                        var a = cleanCache[name];
                        var c = corruptedCache[name];
                        // A hook point the metric does not depend on gets no gradient: its estimate is 0.
                        if (!cleanCache.TryGetValue(name + "_grad", out var g)) continue;
                        var attr = (g * (c - a)).Sum(-1).To(Device.CPU, ScalarType.Float64).Contiguous().ToArray<double>();
                        Scatter(values, site, attr, pairs, batchLen, P, layer);
                    }
                }
            }
        }
        finally
        {
            cleanCache?.Dispose();
            corruptedCache?.Dispose();
        }
        return new AttributionResult(pairs, P, metricClean, metricCorrupted, estimates);
    }

    /// <summary>Copies [batch, batchLen(, head)] values into [pair, layer, P(, head)] for each pair's real positions.</summary>
    private void Scatter(SiteValues values, AttributionSite site, double[] attr, IReadOnlyList<PromptPair> pairs, int batchLen, int P, int layer)
    {
        var h = site.PerHead ? Heads : 1;
        var perPair = site.ValuesPerPair(P, Heads);
        for (var i = 0; i < pairs.Count; i++)
        {
            var src = i * batchLen * h;
            var dst = i * perPair + layer * P * h;
            Array.Copy(attr, src, values.Data, dst, pairs[i].Length * h);
        }
    }

    private static void CopyVector(Tensor t, double[] into)
    {
        using var cpu = t.Detach().To(Device.CPU, ScalarType.Float64);
        cpu.ToArray<double>().CopyTo(into, 0);
    }

    /// <summary>
    /// Exact activation patching for one pair: for every site, layer, position (and head for z) separately, runs the
    /// clean prompt with that activation replaced by the corrupted run's and records the change of the metric.
    /// Patched runs are batched, <paramref name="rowsPerForward"/> variants per forward pass. Positions at or beyond the
    /// pair's length (up to <paramref name="positions"/>) hold 0.
    /// </summary>
    public ExactPatchingResult PatchExact(PromptPair pair, int? positions = null, int rowsPerForward = 32)
    {
        ArgumentNullException.ThrowIfNull(pair);
        pair.Validate(Model.Config);
        if (rowsPerForward < 1) throw new ArgumentOutOfRangeException(nameof(rowsPerForward), rowsPerForward, "at least one row per forward pass");
        var n = pair.Length;
        var P = positions ?? n;
        if (P < n) throw new ArgumentOutOfRangeException(nameof(positions), P, $"the pair has {n} positions, more than {P}");
        var effects = Sites.ToDictionary(s => s.Key, s => new SiteValues(s, s.Shape(1, P, Heads)[1..]));
        var device = ModelDevice;

        using var scope = Torch.NewScope();
        using var noGrad = Torch.NoGrad();
        var clean = Torch.FromArray(pair.Clean, 1, n).To(device);
        var corrupted = Torch.FromArray(pair.Corrupted, 1, n).To(device);
        var (corruptedLogits, corruptedCache) = Model.RunWithCache(corrupted, _hookNames.Contains);
        using (corruptedCache)
        {
            var metricCorrupted = Metrics(corruptedLogits, pair)[0];
            var metricClean = Metrics(Model.Forward(clean), pair)[0];

            // Every single patch: (site, layer, position, head).
            var variants = new List<(AttributionSite Site, int Layer, int Pos, int Head)>();
            foreach (var site in Sites)
                for (var layer = 0; layer < site.Layers; layer++)
                    for (var pos = 0; pos < n; pos++)
                        for (var head = 0; head < (site.PerHead ? Heads : 1); head++)
                            variants.Add((site, layer, pos, head));

            for (var start = 0; start < variants.Count; start += rowsPerForward)
            {
                using var batchScope = Torch.NewScope();
                var rows = Math.Min(rowsPerForward, variants.Count - start);
                var batch = variants.GetRange(start, rows);
                var hooks = new List<(string, ForwardHook)>();
                foreach (var group in batch.Select((v, r) => (v, r)).GroupBy(x => x.v.Site.HookNames[x.v.Layer]))
                {
                    var site = group.First().v.Site;
                    var h = site.PerHead ? Heads : 1;
                    var maskData = new bool[rows * n * h];
                    foreach (var (v, r) in group) maskData[(r * n + v.Pos) * h + v.Head] = true;
                    var mask = Torch.FromArray(maskData, site.PerHead ? new long[] { rows, n, h, 1 } : new long[] { rows, n, 1 }).To(device);
                    var replacement = corruptedCache[group.Key];
                    hooks.Add((group.Key, (activation, _) => Torch.Where(mask, replacement, activation)));
                }
                var tokens = clean.Expand(rows, n).Contiguous();
                Tensor logits;
                using (Model.Hooks(hooks.ToArray())) logits = Model.Forward(tokens);
                var metrics = Metrics(logits, pair);
                for (var r = 0; r < rows; r++)
                {
                    var (site, layer, pos, head) = batch[r];
                    var h = site.PerHead ? Heads : 1;
                    effects[site.Key].Data[(layer * P + pos) * h + head] = metrics[r] - metricClean;
                }
            }
            return new ExactPatchingResult(pair, P, metricClean, metricCorrupted, effects);
        }
    }

    /// <summary>The logit difference at the last position of every row of logits [rows, n, vocab] for one pair.</summary>
    private static double[] Metrics(Tensor logits, PromptPair pair)
    {
        using var scope = Torch.NewScope();
        var last = logits.Select(1, logits.Size(1) - 1);
        var diff = last.Select(1, pair.Answer) - last.Select(1, pair.Wrong);
        return diff.To(Device.CPU, ScalarType.Float64).ToArray<double>();
    }
}
