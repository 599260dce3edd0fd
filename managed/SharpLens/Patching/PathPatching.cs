namespace SharpLens;

/// <summary>One attention head: its layer and index.</summary>
public readonly record struct HeadIndex(int Layer, int Head)
{
    /// <inheritdoc/>
    public override string ToString() => $"L{Layer}H{Head}";
}

/// <summary>
/// Where path patching delivers the senders' effect: a hook point, and optionally the heads (dimension 2 of a
/// [batch, pos, head, ...] activation such as <c>attn.hook_q</c>) whose values are patched; null patches all of it.
/// </summary>
public sealed record PathReceiver(string HookName, IReadOnlyList<int>? Heads = null)
{
    /// <summary>The query (<c>'q'</c>), key (<c>'k'</c>) or value (<c>'v'</c>) input of one head.</summary>
    public static PathReceiver HeadInput(int layer, int head, char qkv) => qkv switch
    {
        'q' or 'k' or 'v' => new($"blocks.{layer}.attn.hook_{qkv}", [head]),
        _ => throw new ArgumentException($"a head's input is 'q', 'k' or 'v', not '{qkv}'", nameof(qkv)),
    };

    /// <summary>The residual stream entering the final norm (<c>resid_post</c> of the last block): the senders' direct effect on the logits.</summary>
    public static PathReceiver FinalResidual(TransformerConfig config) => new($"blocks.{config.NLayers - 1}.hook_resid_post");
}

public static partial class Patching
{
    /// <summary>
    /// Path patching (Wang et al. 2022; Goldowsky-Dill et al. 2023) in TransformerLens's direction: the effect on the metric
    /// of the paths from each sender set to the receivers, run on the corrupted tokens with the clean values sent.
    /// <list type="number">
    /// <item>Run the corrupted tokens with every head's output (<c>hook_z</c>) frozen at its corrupted value except the
    /// senders', which take their clean value, and (with <paramref name="freezeMlps"/>) every MLP output frozen too; record
    /// the receivers' activations. Only paths that go from a sender straight through the residual stream reach them.</item>
    /// <item>Run the corrupted tokens again with the receivers (their selected heads) replaced by the recorded values, nothing
    /// frozen, and measure the metric.</item>
    /// </list>
    /// Sender sets run side by side as copies of the corrupted batch in both steps. Returns [sender sets, metric...].
    /// </summary>
    /// <param name="model">The model.</param>
    /// <param name="corruptedTokens">int64 [batch, pos].</param>
    /// <param name="cleanCache">The clean run's cache (needs <c>hook_z</c> of every layer).</param>
    /// <param name="corruptedCache">The corrupted run's cache (needs <c>hook_z</c>, and <c>hook_mlp_out</c> with <paramref name="freezeMlps"/>).</param>
    /// <param name="patchingMetric">Logits of one patched run to the metric.</param>
    /// <param name="senderSets">Each a set of heads patched together.</param>
    /// <param name="receivers">The hook points (and heads) the senders' effect is delivered to.</param>
    /// <param name="freezeMlps">Freeze MLP outputs in step 1, so paths through MLPs do not count (the usual choice).</param>
    /// <param name="options">Batching and progress.</param>
    public static Tensor PathPatch(HookedModel model, Tensor corruptedTokens, ActivationCache cleanCache, ActivationCache corruptedCache,
        PatchingMetric patchingMetric, IReadOnlyList<IReadOnlyList<HeadIndex>> senderSets, IReadOnlyList<PathReceiver> receivers,
        bool freezeMlps = true, PatchingOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(corruptedTokens);
        ArgumentNullException.ThrowIfNull(cleanCache);
        ArgumentNullException.ThrowIfNull(corruptedCache);
        ArgumentNullException.ThrowIfNull(patchingMetric);
        ArgumentNullException.ThrowIfNull(senderSets);
        ArgumentNullException.ThrowIfNull(receivers);
        options ??= new PatchingOptions();
        if (senderSets.Count == 0) throw new ArgumentException("no sender sets", nameof(senderSets));
        if (receivers.Count == 0) throw new ArgumentException("no receivers", nameof(receivers));
        var config = model.Config;
        foreach (var head in senderSets.SelectMany(s => s))
            if (head.Layer < 0 || head.Layer >= config.NLayers || head.Head < 0 || head.Head >= config.NHeads)
                throw new ArgumentOutOfRangeException(nameof(senderSets), $"sender {head} is not a head of a model with {config.NLayers} layers of {config.NHeads} heads");
        foreach (var r in receivers)
        {
            if (!model.HookDict.ContainsKey(r.HookName)) throw new ArgumentException($"receiver '{r.HookName}' is not a hook point of this model", nameof(receivers));
            if (receivers.Count(x => x.HookName == r.HookName) > 1) throw new ArgumentException($"receiver '{r.HookName}' is listed twice; list its heads once", nameof(receivers));
        }

        var batch = corruptedTokens.Size(0);
        var perForward = options.CopiesPerForward(corruptedTokens);
        var results = new List<Tensor>();
        try
        {
            using var noGrad = Torch.NoGrad();
            for (var start = 0; start < senderSets.Count; start += perForward)
            {
                using var scope = Torch.NewScope();
                var sets = senderSets.Skip(start).Take(perForward).ToList();
                var copies = sets.Count;
                var tokens = Repeat(corruptedTokens, copies);

                // Step 1: senders clean, every other head (and MLP) frozen at the corrupted run; record the receivers.
                var recorded = new Dictionary<string, Tensor>();
                var step1 = new List<(string, ForwardHook)>();
                foreach (var r in receivers)
                    step1.Add((r.HookName, (a, _) =>
                    {
                        // Hooks run inside the forward pass's own scope: the copy must outlive it (disposed below).
                        if (recorded.Remove(r.HookName, out var old)) old.Dispose();
                        recorded[r.HookName] = a.Clone().DetachFromScope();
                        return null;
                    }));
                for (var l = 0; l < config.NLayers; l++)
                {
                    var layer = l;
                    var zName = ActivationCache.ActName("z", l);
                    var cleanZ = cleanCache[zName];
                    var corruptedZ = corruptedCache[zName];
                    var heads = cleanZ.Size(2);
                    var mask = new bool[copies * heads];
                    for (var v = 0; v < copies; v++)
                        foreach (var h in sets[v].Where(h => h.Layer == layer))
                            mask[v * heads + h.Head] = true;
                    var maskTensor = Torch.FromArray(mask, copies, 1, 1, heads, 1).To(cleanZ.Device);
                    var frozen = Torch.Where(maskTensor, cleanZ.Unsqueeze(0), corruptedZ.Unsqueeze(0));  // [copies, batch, pos, head, d_head]
                    step1.Add((zName, (a, _) => frozen.Reshape(a.Shape)));
                    if (freezeMlps)
                    {
                        var mlpName = ActivationCache.ActName("mlp_out", l);
                        var corruptedMlp = corruptedCache[mlpName];
                        step1.Add((mlpName, (a, _) => corruptedMlp.Unsqueeze(0).Expand([copies, .. corruptedMlp.Shape]).Reshape(a.Shape)));
                    }
                }
                try
                {
                    using (model.Hooks(step1.ToArray())) model.Forward(tokens);
                    RunReceivers(model, tokens, receivers, recorded, patchingMetric, batch, copies, results);
                }
                finally
                {
                    foreach (var t in recorded.Values) t.Dispose();
                }
                options.Progress?.Invoke(start + copies, senderSets.Count);
            }
            return Torch.Stack(results);
        }
        finally
        {
            foreach (var t in results) t.Dispose();
        }
    }

    /// <summary>Step 2 of path patching: the corrupted run with the receivers (their selected heads) replaced by what step 1 recorded.</summary>
    private static void RunReceivers(HookedModel model, Tensor tokens, IReadOnlyList<PathReceiver> receivers, Dictionary<string, Tensor> recorded,
        PatchingMetric patchingMetric, long batch, int copies, List<Tensor> results)
    {
        // The receivers take what they received; everything else runs freely.
        var step2 = receivers.Select(r => (r.HookName, (ForwardHook)((a, _) =>
        {
            var value = recorded.TryGetValue(r.HookName, out var v)
                ? v
                : throw new InvalidOperationException($"receiver '{r.HookName}' did not fire in the first run");
            if (r.Heads is null) return value;
            if (a.Dim < 3) throw new ArgumentException($"receiver '{r.HookName}' has shape {Tensor.FormatShape(a.Shape)}: no head dimension to select heads from");
            var select = new bool[a.Size(2)];
            foreach (var h in r.Heads)
                select[h >= 0 && h < select.Length ? h : throw new ArgumentOutOfRangeException(nameof(receivers), $"receiver '{r.HookName}' has {select.Length} heads, not {h}")] = true;
            var shape = new long[a.Dim];
            Array.Fill(shape, 1L);
            shape[2] = select.Length;
            return Torch.Where(Torch.FromArray(select, shape).To(a.Device), value, a);
        }))).ToArray();
        Tensor logits;
        using (model.Hooks(step2)) logits = model.Forward(tokens);
        for (var v = 0; v < copies; v++)
            results.Add(Evaluate(patchingMetric, logits.Narrow(0, v * batch, batch), results.Count == 0 ? null : results[0]));
    }

    /// <summary>
    /// <see cref="PathPatch"/> with every head alone as a sender: [n_layers, n_heads, metric...]. Heads at or after the
    /// receivers' layer reach them by no path, so they leave the corrupted metric.
    /// </summary>
    public static Tensor PathPatchEachHead(HookedModel model, Tensor corruptedTokens, ActivationCache cleanCache, ActivationCache corruptedCache,
        PatchingMetric patchingMetric, IReadOnlyList<PathReceiver> receivers, bool freezeMlps = true, PatchingOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        var (layers, heads) = (model.Config.NLayers, model.Config.NHeads);
        var sets = new List<IReadOnlyList<HeadIndex>>();
        for (var l = 0; l < layers; l++)
            for (var h = 0; h < heads; h++)
                sets.Add([new HeadIndex(l, h)]);
        using var scope = Torch.NewScope();
        var flat = PathPatch(model, corruptedTokens, cleanCache, corruptedCache, patchingMetric, sets, receivers, freezeMlps, options);
        return flat.Reshape([layers, heads, .. flat.Shape[1..]]).MoveToOuterScope();
    }
}
