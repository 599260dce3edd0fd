namespace SharpLens;

/// <summary>
/// A patching metric: logits [batch, pos, d_vocab] of one patched run to a tensor of any fixed shape, e.g. a scalar
/// (TransformerLens: the logit difference averaged over the batch) or [batch] (one value per prompt).
/// </summary>
public delegate Tensor PatchingMetric(Tensor logits);

/// <summary>How <see cref="Patching"/> runs its patched forward passes.</summary>
public sealed record PatchingOptions
{
    /// <summary>
    /// Tokens (rows × positions) per forward pass: patches run side by side as copies of the corrupted batch, as many as
    /// fit in this many tokens (at least one patch per pass). Memory grows with it (the logits alone take
    /// tokens × d_vocab values: 2048 × 50257 float32 is 400 MB); throughput grows with it until the forward pass is
    /// compute-bound.
    /// </summary>
    public int MaxTokensPerForward { get; init; } = 2048;

    /// <summary>How many copies of a [batch, pos] run fit in one forward pass (at least one).</summary>
    internal int CopiesPerForward(Tensor tokens)
    {
        if (MaxTokensPerForward < 1) throw new ArgumentOutOfRangeException(nameof(MaxTokensPerForward), MaxTokensPerForward, "MaxTokensPerForward must be at least 1");
        return (int)Math.Max(1, MaxTokensPerForward / Math.Max(1, tokens.Size(0) * tokens.Size(1)));
    }

    /// <summary>Called after each forward pass with (patches done, patches in all).</summary>
    public Action<int, int>? Progress { get; init; }
}

/// <summary>
/// Activation patching as <c>transformer_lens.patching</c> does it: run the model on the corrupted tokens with one piece
/// of one activation replaced by the clean run's, measure the metric, for every index of a grid (layer × position,
/// layer × head, ...). Results have the grid's shape followed by the metric's shape.
/// <para>
/// Unlike TransformerLens's loop of one forward pass per patch, patches run as rows of one batch: the corrupted batch is
/// repeated once per patch, and one hook per layer replaces, in each copy, only the piece that copy's patch selects
/// (a boolean mask and one <c>where</c>). Rows never interact, so every copy is exactly the run TransformerLens makes.
/// </para>
/// </summary>
public static partial class Patching
{
    /// <summary>
    /// TransformerLens <c>generic_activation_patch</c> over a full grid: every combination of the axes
    /// <paramref name="indexAxisNames"/> (the first is the layer; the others are sized by the clean activation's dimension
    /// that <paramref name="patchSetter"/> assigns to them), in row-major order. Returns [axis sizes..., metric shape...].
    /// </summary>
    /// <param name="model">The model; hooks already on it stay active in every patched run.</param>
    /// <param name="corruptedTokens">int64 [batch, pos], the run that is patched.</param>
    /// <param name="cleanCache">The clean run's cache, holding <paramref name="activationName"/> at every layer ([batch, ...] as the corrupted run's).</param>
    /// <param name="patchingMetric">Logits of one patched run to the metric.</param>
    /// <param name="patchSetter">Which piece of the activation an index selects.</param>
    /// <param name="activationName">TransformerLens short name (<c>resid_pre</c>, <c>z</c>, <c>pattern</c>, ...) or a full name with <c>{0}</c> for the layer.</param>
    /// <param name="indexAxisNames">The grid's axes, starting with <see cref="PatchAxis.Layer"/>.</param>
    /// <param name="options">Batching and progress.</param>
    public static Tensor GenericActivationPatch(HookedModel model, Tensor corruptedTokens, ActivationCache cleanCache, PatchingMetric patchingMetric,
        PatchSetter patchSetter, string activationName, IReadOnlyList<PatchAxis> indexAxisNames, PatchingOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(cleanCache);
        ArgumentNullException.ThrowIfNull(patchSetter);
        ArgumentNullException.ThrowIfNull(indexAxisNames);
        if (indexAxisNames.Count != patchSetter.IndexedDims.Count + 1 || indexAxisNames[0] != PatchAxis.Layer)
            throw new ArgumentException(
                $"{patchSetter.Name} takes indices [layer, {patchSetter.IndexedDims.Count} more], so the axes must be Layer followed by {patchSetter.IndexedDims.Count} others; got [{string.Join(", ", indexAxisNames)}]",
                nameof(indexAxisNames));
        var first = cleanCache[HookName(activationName, 0)];
        var sizes = new long[indexAxisNames.Count];
        sizes[0] = model.Config.NLayers;
        for (var k = 1; k < sizes.Length; k++)
        {
            var dim = patchSetter.IndexedDims[k - 1];
            if (dim < 1 || dim >= first.Dim)
                throw new ArgumentException($"{patchSetter.Name} indexes dimension {dim} but '{HookName(activationName, 0)}' has shape {Tensor.FormatShape(first.Shape)}");
            sizes[k] = first.Size(dim);
        }
        var rows = new List<long[]>();
        var index = new long[sizes.Length];
        var total = sizes.Aggregate(1L, (a, b) => a * b);
        for (long r = 0; r < total; r++)
        {
            var rest = r;
            for (var k = sizes.Length - 1; k >= 0; k--)
            {
                index[k] = rest % sizes[k];
                rest /= sizes[k];
            }
            rows.Add((long[])index.Clone());
        }
        using var scope = Torch.NewScope();
        var flat = GenericActivationPatch(model, corruptedTokens, cleanCache, patchingMetric, patchSetter, activationName, rows, options);
        return flat.Reshape([.. sizes, .. flat.Shape[1..]]).MoveToOuterScope();
    }

    /// <summary>
    /// TransformerLens <c>generic_activation_patch</c> with an explicit index list (its <c>index_df</c>): one patch per
    /// index <c>[layer, ...]</c>; returns [indices, metric shape...].
    /// </summary>
    public static Tensor GenericActivationPatch(HookedModel model, Tensor corruptedTokens, ActivationCache cleanCache, PatchingMetric patchingMetric,
        PatchSetter patchSetter, string activationName, IReadOnlyList<long[]> indices, PatchingOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(corruptedTokens);
        ArgumentNullException.ThrowIfNull(cleanCache);
        ArgumentNullException.ThrowIfNull(patchingMetric);
        ArgumentNullException.ThrowIfNull(patchSetter);
        ArgumentNullException.ThrowIfNull(indices);
        if (indices.Count == 0) throw new ArgumentException("no patches to run", nameof(indices));
        options ??= new PatchingOptions();
        if (corruptedTokens.Dim != 2) throw new ArgumentException($"corrupted tokens must be [batch, pos], got {Tensor.FormatShape(corruptedTokens.Shape)}", nameof(corruptedTokens));
        var batch = corruptedTokens.Size(0);
        foreach (var index in indices)
        {
            if (index.Length != patchSetter.IndexedDims.Count + 1)
                throw new ArgumentException($"{patchSetter.Name} takes indices of {patchSetter.IndexedDims.Count + 1} numbers [layer, ...], got [{string.Join(", ", index)}]", nameof(indices));
            if (index[0] < 0 || index[0] >= model.Config.NLayers)
                throw new ArgumentOutOfRangeException(nameof(indices), $"layer {index[0]} of index [{string.Join(", ", index)}] is outside [0, {model.Config.NLayers})");
        }

        var perForward = options.CopiesPerForward(corruptedTokens);
        var results = new List<Tensor>();
        try
        {
            using var noGrad = Torch.NoGrad();
            for (var start = 0; start < indices.Count; start += perForward)
            {
                using var scope = Torch.NewScope();
                var chunk = indices.Skip(start).Take(perForward).ToList();
                var hooks = chunk.Select(i => i[0]).Distinct().Select(layer =>
                {
                    var name = HookName(activationName, (int)layer);
                    var clean = cleanCache[name];
                    var rows = chunk.Select((ix, v) => (ix, v)).Where(x => x.ix[0] == layer).Select(x => (x.v, x.ix[1..])).ToList();
                    return (name, PatchHook(name, clean, batch, chunk.Count, patchSetter, rows));
                }).ToArray();
                var tokens = Repeat(corruptedTokens, chunk.Count);
                Tensor logits;
                using (model.Hooks(hooks)) logits = model.Forward(tokens);
                for (var v = 0; v < chunk.Count; v++)
                    results.Add(Evaluate(patchingMetric, logits.Narrow(0, v * batch, batch), results.Count == 0 ? null : results[0]));
                options.Progress?.Invoke(start + chunk.Count, indices.Count);
            }
            return Torch.Stack(results);
        }
        finally
        {
            foreach (var t in results) t.Dispose();
        }
    }

    /// <summary>The corrupted batch repeated <paramref name="copies"/> times along the batch: [copies · batch, pos].</summary>
    internal static Tensor Repeat(Tensor tokens, int copies) =>
        copies == 1 ? tokens.Alias() : tokens.Unsqueeze(0).Expand(copies, tokens.Size(0), tokens.Size(1)).Reshape(copies * tokens.Size(0), tokens.Size(1));

    /// <summary>Runs the metric on one copy's logits and checks it returns the same shape every time; the result outlives every scope.</summary>
    internal static Tensor Evaluate(PatchingMetric metric, Tensor logits, Tensor? previous)
    {
        Tensor value;
        try
        {
            value = metric(logits);
        }
        catch (Exception e)
        {
            throw new InvalidOperationException($"the patching metric threw on logits of shape {Tensor.FormatShape(logits.Shape)}: {e.Message}", e);
        }
        if (value is null) throw new InvalidOperationException("the patching metric returned null");
        if (previous is not null && !previous.Shape.SequenceEqual(value.Shape))
            throw new InvalidOperationException($"the patching metric returned shape {Tensor.FormatShape(value.Shape)} after {Tensor.FormatShape(previous.Shape)}; it must return one shape");
        return value.Detach().Clone().DetachFromScope();
    }

    /// <summary>
    /// A hook replacing, in copy <c>v</c> of the batch, the piece selected by each (v, index) of <paramref name="rows"/> with
    /// the clean activation; copies without a row here pass through.
    /// </summary>
    private static ForwardHook PatchHook(string name, Tensor clean, long batch, int copies, PatchSetter setter, List<(int Copy, long[] Index)> rows)
    {
        if (clean.Size(0) != batch)
            throw new ArgumentException($"the clean cache's '{name}' has batch {clean.Size(0)} but the corrupted tokens have {batch} rows");
        var rest = clean.Shape[1..];
        var maskShape = new long[rest.Length + 2];
        maskShape[0] = copies;
        maskShape[1] = 1;
        for (var d = 0; d < rest.Length; d++) maskShape[d + 2] = setter.IndexedDims.Contains(d + 1) ? rest[d] : 1;
        var mask = new bool[maskShape.Aggregate(1L, (a, b) => a * b)];
        foreach (var (copy, index) in rows)
        {
            for (var k = 0; k < index.Length; k++)
                if (index[k] < 0 || index[k] >= rest[setter.IndexedDims[k] - 1])
                    throw new ArgumentOutOfRangeException(nameof(rows), $"index {index[k]} is outside dimension {setter.IndexedDims[k]} of '{name}' (shape {Tensor.FormatShape(clean.Shape)})");
            // Every mask cell whose indexed coordinates equal the patch's index, within copy `copy`.
            var perCopy = mask.Length / copies;
            for (var cell = 0; cell < perCopy; cell++)
            {
                var rem = cell;
                var hit = true;
                for (var d = maskShape.Length - 1; d >= 2; d--)
                {
                    var coordinate = rem % maskShape[d];
                    rem /= (int)maskShape[d];
                    var k = IndexOf(setter.IndexedDims, d - 1);
                    if (k >= 0 && coordinate != index[k]) hit = false;
                }
                if (hit) mask[copy * perCopy + cell] = true;
            }
        }
        var maskTensor = Torch.FromArray(mask, maskShape).To(clean.Device);
        var source = clean.Unsqueeze(0);
        return (activation, _) =>
        {
            if (!activation.Shape[1..].SequenceEqual(rest) || activation.Size(0) != copies * batch)
                throw new ArgumentException($"'{name}' has shape {Tensor.FormatShape(activation.Shape)} in the patched run but the clean cache holds {Tensor.FormatShape(clean.Shape)}");
            var grouped = activation.View([copies, batch, .. rest]);
            return Torch.Where(maskTensor, source, grouped).View(activation.Shape);
        };
    }

    private static int IndexOf(IReadOnlyList<int> dims, int dim)
    {
        for (var k = 0; k < dims.Count; k++)
            if (dims[k] == dim) return k;
        return -1;
    }

    /// <summary>The full hook name of <paramref name="activationName"/> at <paramref name="layer"/>.</summary>
    internal static string HookName(string activationName, int layer) =>
        activationName.Contains("{0}") ? string.Format(activationName, layer) : ActivationCache.ActName(activationName, layer);

    // ------------------------------------------------------------------ TransformerLens's specialisations

    /// <summary><c>get_act_patch_resid_pre</c>: the residual stream entering each block, per position. [n_layers, pos, metric...].</summary>
    public static Tensor GetActPatchResidPre(HookedModel model, Tensor corruptedTokens, ActivationCache cleanCache, PatchingMetric patchingMetric, PatchingOptions? options = null) =>
        GenericActivationPatch(model, corruptedTokens, cleanCache, patchingMetric, PatchSetter.LayerPos, "resid_pre", [PatchAxis.Layer, PatchAxis.Pos], options);

    /// <summary><c>get_act_patch_resid_mid</c>: the residual stream between attention and MLP, per position. [n_layers, pos, metric...].</summary>
    public static Tensor GetActPatchResidMid(HookedModel model, Tensor corruptedTokens, ActivationCache cleanCache, PatchingMetric patchingMetric, PatchingOptions? options = null) =>
        GenericActivationPatch(model, corruptedTokens, cleanCache, patchingMetric, PatchSetter.LayerPos, "resid_mid", [PatchAxis.Layer, PatchAxis.Pos], options);

    /// <summary>The residual stream leaving each block, per position (not in TransformerLens; same setter). [n_layers, pos, metric...].</summary>
    public static Tensor GetActPatchResidPost(HookedModel model, Tensor corruptedTokens, ActivationCache cleanCache, PatchingMetric patchingMetric, PatchingOptions? options = null) =>
        GenericActivationPatch(model, corruptedTokens, cleanCache, patchingMetric, PatchSetter.LayerPos, "resid_post", [PatchAxis.Layer, PatchAxis.Pos], options);

    /// <summary><c>get_act_patch_attn_out</c>: each attention layer's output, per position. [n_layers, pos, metric...].</summary>
    public static Tensor GetActPatchAttnOut(HookedModel model, Tensor corruptedTokens, ActivationCache cleanCache, PatchingMetric patchingMetric, PatchingOptions? options = null) =>
        GenericActivationPatch(model, corruptedTokens, cleanCache, patchingMetric, PatchSetter.LayerPos, "attn_out", [PatchAxis.Layer, PatchAxis.Pos], options);

    /// <summary><c>get_act_patch_mlp_out</c>: each MLP's output, per position. [n_layers, pos, metric...].</summary>
    public static Tensor GetActPatchMlpOut(HookedModel model, Tensor corruptedTokens, ActivationCache cleanCache, PatchingMetric patchingMetric, PatchingOptions? options = null) =>
        GenericActivationPatch(model, corruptedTokens, cleanCache, patchingMetric, PatchSetter.LayerPos, "mlp_out", [PatchAxis.Layer, PatchAxis.Pos], options);

    private static Tensor HeadVectorByPos(string name, HookedModel model, Tensor corruptedTokens, ActivationCache cleanCache, PatchingMetric metric, PatchingOptions? options) =>
        GenericActivationPatch(model, corruptedTokens, cleanCache, metric, PatchSetter.LayerPosHeadVector, name, [PatchAxis.Layer, PatchAxis.Pos, PatchAxis.Head], options);

    private static Tensor HeadVectorAllPos(string name, HookedModel model, Tensor corruptedTokens, ActivationCache cleanCache, PatchingMetric metric, PatchingOptions? options) =>
        GenericActivationPatch(model, corruptedTokens, cleanCache, metric, PatchSetter.LayerHeadVector, name, [PatchAxis.Layer, PatchAxis.Head], options);

    /// <summary><c>get_act_patch_attn_head_out_by_pos</c>: each head's output (<c>hook_z</c>) per position. [n_layers, pos, n_heads, metric...].</summary>
    public static Tensor GetActPatchAttnHeadOutByPos(HookedModel model, Tensor corruptedTokens, ActivationCache cleanCache, PatchingMetric patchingMetric, PatchingOptions? options = null) =>
        HeadVectorByPos("z", model, corruptedTokens, cleanCache, patchingMetric, options);

    /// <summary><c>get_act_patch_attn_head_q_by_pos</c>: each head's queries per position. [n_layers, pos, n_heads, metric...].</summary>
    public static Tensor GetActPatchAttnHeadQByPos(HookedModel model, Tensor corruptedTokens, ActivationCache cleanCache, PatchingMetric patchingMetric, PatchingOptions? options = null) =>
        HeadVectorByPos("q", model, corruptedTokens, cleanCache, patchingMetric, options);

    /// <summary><c>get_act_patch_attn_head_k_by_pos</c>: each (key/value) head's keys per position. [n_layers, pos, heads, metric...].</summary>
    public static Tensor GetActPatchAttnHeadKByPos(HookedModel model, Tensor corruptedTokens, ActivationCache cleanCache, PatchingMetric patchingMetric, PatchingOptions? options = null) =>
        HeadVectorByPos("k", model, corruptedTokens, cleanCache, patchingMetric, options);

    /// <summary><c>get_act_patch_attn_head_v_by_pos</c>: each (key/value) head's values per position. [n_layers, pos, heads, metric...].</summary>
    public static Tensor GetActPatchAttnHeadVByPos(HookedModel model, Tensor corruptedTokens, ActivationCache cleanCache, PatchingMetric patchingMetric, PatchingOptions? options = null) =>
        HeadVectorByPos("v", model, corruptedTokens, cleanCache, patchingMetric, options);

    /// <summary><c>get_act_patch_attn_head_pattern_by_pos</c>: each head's pattern row per query position. [n_layers, n_heads, dest_pos, metric...].</summary>
    public static Tensor GetActPatchAttnHeadPatternByPos(HookedModel model, Tensor corruptedTokens, ActivationCache cleanCache, PatchingMetric patchingMetric, PatchingOptions? options = null) =>
        GenericActivationPatch(model, corruptedTokens, cleanCache, patchingMetric, PatchSetter.LayerHeadPosPattern, "pattern",
            [PatchAxis.Layer, PatchAxis.Head, PatchAxis.DestPos], options);

    /// <summary><c>get_act_patch_attn_head_pattern_dest_src_pos</c>: each pattern entry. [n_layers, n_heads, dest_pos, src_pos, metric...].</summary>
    public static Tensor GetActPatchAttnHeadPatternDestSrcPos(HookedModel model, Tensor corruptedTokens, ActivationCache cleanCache, PatchingMetric patchingMetric, PatchingOptions? options = null) =>
        GenericActivationPatch(model, corruptedTokens, cleanCache, patchingMetric, PatchSetter.LayerHeadDestSrcPosPattern, "pattern",
            [PatchAxis.Layer, PatchAxis.Head, PatchAxis.DestPos, PatchAxis.SrcPos], options);

    /// <summary><c>get_act_patch_attn_head_out_all_pos</c>: each head's output at every position at once. [n_layers, n_heads, metric...].</summary>
    public static Tensor GetActPatchAttnHeadOutAllPos(HookedModel model, Tensor corruptedTokens, ActivationCache cleanCache, PatchingMetric patchingMetric, PatchingOptions? options = null) =>
        HeadVectorAllPos("z", model, corruptedTokens, cleanCache, patchingMetric, options);

    /// <summary><c>get_act_patch_attn_head_q_all_pos</c>. [n_layers, n_heads, metric...].</summary>
    public static Tensor GetActPatchAttnHeadQAllPos(HookedModel model, Tensor corruptedTokens, ActivationCache cleanCache, PatchingMetric patchingMetric, PatchingOptions? options = null) =>
        HeadVectorAllPos("q", model, corruptedTokens, cleanCache, patchingMetric, options);

    /// <summary><c>get_act_patch_attn_head_k_all_pos</c>. [n_layers, heads, metric...].</summary>
    public static Tensor GetActPatchAttnHeadKAllPos(HookedModel model, Tensor corruptedTokens, ActivationCache cleanCache, PatchingMetric patchingMetric, PatchingOptions? options = null) =>
        HeadVectorAllPos("k", model, corruptedTokens, cleanCache, patchingMetric, options);

    /// <summary><c>get_act_patch_attn_head_v_all_pos</c>. [n_layers, heads, metric...].</summary>
    public static Tensor GetActPatchAttnHeadVAllPos(HookedModel model, Tensor corruptedTokens, ActivationCache cleanCache, PatchingMetric patchingMetric, PatchingOptions? options = null) =>
        HeadVectorAllPos("v", model, corruptedTokens, cleanCache, patchingMetric, options);

    /// <summary><c>get_act_patch_attn_head_pattern_all_pos</c>: each head's whole pattern. [n_layers, n_heads, metric...].</summary>
    public static Tensor GetActPatchAttnHeadPatternAllPos(HookedModel model, Tensor corruptedTokens, ActivationCache cleanCache, PatchingMetric patchingMetric, PatchingOptions? options = null) =>
        GenericActivationPatch(model, corruptedTokens, cleanCache, patchingMetric, PatchSetter.LayerHeadPattern, "pattern", [PatchAxis.Layer, PatchAxis.Head], options);

    /// <summary>
    /// <c>get_act_patch_attn_head_all_pos_every</c>: output, query, key, value and pattern of every head at all positions,
    /// stacked [5, n_layers, n_heads, metric...] (needs as many key/value heads as query heads).
    /// </summary>
    public static Tensor GetActPatchAttnHeadAllPosEvery(HookedModel model, Tensor corruptedTokens, ActivationCache cleanCache, PatchingMetric patchingMetric, PatchingOptions? options = null)
    {
        using var scope = Torch.NewScope();
        return Torch.Stack(
        [
            GetActPatchAttnHeadOutAllPos(model, corruptedTokens, cleanCache, patchingMetric, options),
            GetActPatchAttnHeadQAllPos(model, corruptedTokens, cleanCache, patchingMetric, options),
            GetActPatchAttnHeadKAllPos(model, corruptedTokens, cleanCache, patchingMetric, options),
            GetActPatchAttnHeadVAllPos(model, corruptedTokens, cleanCache, patchingMetric, options),
            GetActPatchAttnHeadPatternAllPos(model, corruptedTokens, cleanCache, patchingMetric, options),
        ]).MoveToOuterScope();
    }

    /// <summary>
    /// <c>get_act_patch_attn_head_by_pos_every</c>: output, query, key, value and pattern (by query position) of every head
    /// per position, stacked [5, n_layers, pos, n_heads, metric...] (the pattern's [layer, head, pos] moved to [layer, pos, head]).
    /// </summary>
    public static Tensor GetActPatchAttnHeadByPosEvery(HookedModel model, Tensor corruptedTokens, ActivationCache cleanCache, PatchingMetric patchingMetric, PatchingOptions? options = null)
    {
        using var scope = Torch.NewScope();
        var pattern = GetActPatchAttnHeadPatternByPos(model, corruptedTokens, cleanCache, patchingMetric, options).Transpose(1, 2);
        return Torch.Stack(
        [
            GetActPatchAttnHeadOutByPos(model, corruptedTokens, cleanCache, patchingMetric, options),
            GetActPatchAttnHeadQByPos(model, corruptedTokens, cleanCache, patchingMetric, options),
            GetActPatchAttnHeadKByPos(model, corruptedTokens, cleanCache, patchingMetric, options),
            GetActPatchAttnHeadVByPos(model, corruptedTokens, cleanCache, patchingMetric, options),
            pattern,
        ]).MoveToOuterScope();
    }

    /// <summary><c>get_act_patch_block_every</c>: resid_pre, attn_out and mlp_out per layer and position, stacked [3, n_layers, pos, metric...].</summary>
    public static Tensor GetActPatchBlockEvery(HookedModel model, Tensor corruptedTokens, ActivationCache cleanCache, PatchingMetric patchingMetric, PatchingOptions? options = null)
    {
        using var scope = Torch.NewScope();
        return Torch.Stack(
        [
            GetActPatchResidPre(model, corruptedTokens, cleanCache, patchingMetric, options),
            GetActPatchAttnOut(model, corruptedTokens, cleanCache, patchingMetric, options),
            GetActPatchMlpOut(model, corruptedTokens, cleanCache, patchingMetric, options),
        ]).MoveToOuterScope();
    }

    /// <summary>
    /// The logit difference <c>logit[answer] − logit[wrong]</c> at the last position of each row, [batch], with one answer
    /// and wrong token per row (int64 [batch]) or one for all (int64 [1]). Average it for TransformerLens's scalar metric.
    /// </summary>
    public static PatchingMetric LogitDiff(Tensor answers, Tensor wrongs) => logits =>
    {
        var last = logits.Select(1, logits.Size(1) - 1);  // [batch, vocab]
        var batch = last.Size(0);
        var a = answers.Reshape(-1, 1).To(last.Device).Expand(batch, 1);
        var w = wrongs.Reshape(-1, 1).To(last.Device).Expand(batch, 1);
        return (last.Gather(1, a) - last.Gather(1, w)).Squeeze(1);
    };
}
