namespace SharpLens;

/// <summary>
/// Steering vectors: add a direction, scaled by a coefficient, to an activation at chosen positions. The hooks are ordinary
/// forward hooks, so they act in every forward pass the model runs while attached: <see cref="HookedModel.Forward"/>,
/// caching, patching and generation alike (positions are resolved against each pass's own length, so -1 is always the
/// newest token).
/// </summary>
public static class Steering
{
    /// <summary>
    /// A forward hook adding <c>coefficient · direction</c> to a [batch, pos, ...] activation at <paramref name="positions"/>
    /// (null: every position; negative: from the end). <paramref name="direction"/> has the activation's trailing shape
    /// ([d_model] for the residual stream, [head, d_head] for <c>hook_z</c>, ...) or that shape's element count, and is
    /// converted to the activation's dtype and device. The hook reads <paramref name="direction"/> each time it fires: keep
    /// it alive while the hook is attached (<see cref="AddSteeringVector"/> keeps its own reference).
    /// </summary>
    public static ForwardHook SteeringHook(Tensor direction, double coefficient = 1.0, IReadOnlyList<long>? positions = null)
    {
        ArgumentNullException.ThrowIfNull(direction);
        var chosen = positions?.ToArray();
        return (activation, hookPoint) =>
        {
            if (hookPoint.Name.EndsWith("hook_pattern", StringComparison.Ordinal) || hookPoint.Name.EndsWith("hook_attn_scores", StringComparison.Ordinal) || activation.Dim < 3)
                throw new ArgumentException($"steering adds a vector to [batch, pos, ...] activations; '{hookPoint.Name}' has shape {Tensor.FormatShape(activation.Shape)}");
            var trailing = activation.Shape[2..];
            var count = trailing.Aggregate(1L, (a, b) => a * b);
            if (direction.NumEl != count)
                throw new ArgumentException($"the steering direction has {direction.NumEl} elements ({Tensor.FormatShape(direction.Shape)}) but '{hookPoint.Name}' needs {Tensor.FormatShape(trailing)}");
            var add = direction.Detach().To(activation.Device, activation.DType).Reshape(trailing) * coefficient;
            if (chosen is null) return activation + add;
            var pos = activation.Size(1);
            var mask = new bool[pos];
            foreach (var p in chosen)
            {
                var r = p < 0 ? p + pos : p;
                if (r < 0 || r >= pos) throw new ArgumentOutOfRangeException(nameof(positions), p, $"position {p} is outside the {pos} positions of '{hookPoint.Name}'");
                mask[r] = true;
            }
            var shape = new long[activation.Dim];
            Array.Fill(shape, 1L);
            shape[1] = pos;
            return activation + Torch.FromArray(mask, shape).To(activation.Device).To(activation.DType) * add;
        };
    }

    /// <summary>
    /// Attaches <see cref="SteeringHook"/> at <paramref name="hookName"/> with its own reference to <paramref name="direction"/>
    /// (the caller may dispose theirs); dispose the handle to stop steering and free it.
    /// </summary>
    public static HookHandle AddSteeringVector(this HookedModel model, string hookName, Tensor direction, double coefficient = 1.0, IReadOnlyList<long>? positions = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(direction);
        var kept = direction.Detach().DetachFromScope();
        try
        {
            return Owning(model, hookName, model.AddHook(hookName, SteeringHook(kept, coefficient, positions)), kept);
        }
        catch
        {
            kept.Dispose();
            throw;
        }
    }

    /// <summary>A handle that removes <paramref name="handle"/>'s hooks and then frees <paramref name="owned"/>.</summary>
    internal static HookHandle Owning(HookedModel model, string hookName, HookHandle handle, IDisposable owned) =>
        new([(model.HookDict[hookName], () =>
        {
            handle.Dispose();
            owned.Dispose();
        })]);
}

/// <summary>
/// Mean and resample ablation: replace an activation (or selected heads and positions of it) by its mean over a reference
/// batch, or by its value on randomly drawn rows of a reference batch. Head and position dimensions follow
/// <see cref="HookAction.Ablate"/>: [batch, pos, head, ...] for per-head activations, [batch, head, query, key] for patterns.
/// </summary>
public static class Ablation
{
    /// <summary>
    /// The activation at <paramref name="hookName"/> averaged over the rows of <paramref name="referenceTokens"/>: [pos, ...],
    /// or also over positions with <paramref name="overPositions"/>: [...] (positions are dimension 2 of patterns).
    /// </summary>
    public static Tensor MeanActivation(HookedModel model, string hookName, Tensor referenceTokens, bool overPositions = false)
    {
        ArgumentNullException.ThrowIfNull(model);
        using var scope = Torch.NewScope();
        var reference = ReferenceActivation(model, hookName, referenceTokens);
        var dims = overPositions ? new long[] { 0, PositionDim(hookName, reference) } : [0];
        return reference.Mean(dims).MoveToOuterScope();
    }

    /// <summary>
    /// Mean ablation: attaches a hook replacing the selected <paramref name="heads"/> and <paramref name="positions"/> (null: all)
    /// of the activation at <paramref name="hookName"/> by its mean over <paramref name="referenceTokens"/>
    /// (see <see cref="MeanActivation"/>). Runs with other batch sizes; per-position means need the same length. Dispose the handle to undo.
    /// </summary>
    public static HookHandle AddMeanAblation(this HookedModel model, string hookName, Tensor referenceTokens, IReadOnlyList<long>? heads = null,
        IReadOnlyList<long>? positions = null, bool overPositions = false)
    {
        using var scope = Torch.NewScope();
        var mean = MeanActivation(model, hookName, referenceTokens, overPositions);
        if (overPositions) mean = mean.Unsqueeze(PositionDim(hookName, mean.Unsqueeze(0)) - 1);  // broadcast over positions
        var action = HookAction.Ablate(heads, positions, mean);
        return Steering.Owning(model, hookName, model.AddHook(hookName, action), action);
    }

    /// <summary>
    /// Resample ablation: attaches a hook replacing the selected heads and positions of each row's activation by the activation
    /// of a row drawn uniformly (with replacement) from <paramref name="referenceTokens"/>'s run, a new draw per forward pass
    /// from a generator seeded with <paramref name="seed"/>. The reference run must have at least the positions of the runs ablated.
    /// </summary>
    public static HookHandle AddResampleAblation(this HookedModel model, string hookName, Tensor referenceTokens, ulong seed,
        IReadOnlyList<long>? heads = null, IReadOnlyList<long>? positions = null)
    {
        Tensor reference;
        using (var scope = Torch.NewScope()) reference = ReferenceActivation(model, hookName, referenceTokens).DetachFromScope();
        var rng = new Random(unchecked((int)seed ^ (int)(seed >> 32)));
        var (headDim, posDim) = HookAction.AblationDims(hookName, reference, heads is not null);
        var handle = model.AddHook(hookName, (activation, _) =>
        {
            var rows = activation.Size(0);
            var pos = activation.Size(posDim);
            if (reference.Size(posDim) < pos)
                throw new ArgumentException($"the resample reference has {reference.Size(posDim)} positions at '{hookName}' but the run has {pos}");
            var draw = Enumerable.Range(0, (int)rows).Select(_ => (long)rng.Next((int)reference.Size(0))).ToArray();
            var drawn = reference.IndexSelect(0, Torch.FromArray(draw).To(reference.Device)).Narrow(posDim, 0, pos);
            if (posDim == 2) drawn = drawn.Narrow(3, 0, activation.Size(3));  // patterns: keys too
            return TransformerOps.Ablate(activation, headDim, heads, posDim, positions, drawn.To(activation.DType));
        });
        return Steering.Owning(model, hookName, handle, reference);
    }

    private static Tensor ReferenceActivation(HookedModel model, string hookName, Tensor referenceTokens)
    {
        ArgumentNullException.ThrowIfNull(referenceTokens);
        if (!model.HookDict.ContainsKey(hookName)) throw new KeyNotFoundException($"no hook point '{hookName}' in this {model.Config.ModelType} model");
        using var noGrad = Torch.NoGrad();
        var (_, cache) = model.RunWithCache(referenceTokens, n => n == hookName);
        using (cache) return cache[hookName].Clone();
    }

    private static int PositionDim(string hookName, Tensor activation) => HookAction.AblationDims(hookName, activation, headsGiven: false).PosDim;
}
