namespace SharpLens.Saes;

/// <summary>
/// An SAE spliced into a model at its hook point (SAELens's <c>HookedSAETransformer.add_sae</c>): every forward pass of the
/// model replaces that activation by the SAE's output, firing the SAE's hook points, so feature activations can be cached,
/// hooked, patched and steered. Dispose to take the SAE out again.
/// </summary>
public sealed class SaeSplice : IDisposable
{
    private readonly HookHandle _handle;

    internal SaeSplice(HookedModel model, Sae sae, bool useErrorTerm)
    {
        if (!model.HookDict.ContainsKey(sae.Config.HookName))
            throw new ArgumentException($"the SAE reads '{sae.Config.HookName}', which is not a hook point of this {model.Config.ModelType} model");
        Model = model;
        Sae = sae;
        UseErrorTerm = useErrorTerm;
        _handle = model.AddHook(sae.Config.HookName, (activation, _) => Sae.Forward(activation, UseErrorTerm));
    }

    /// <summary>The model.</summary>
    public HookedModel Model { get; }

    /// <summary>The SAE.</summary>
    public Sae Sae { get; }

    /// <summary>Add the SAE's error term, so the model computes what it computes without the SAE until a hook changes the features.</summary>
    public bool UseErrorTerm { get; set; }

    /// <summary>
    /// Runs the model recording the activations of the model's and the SAE's hook points (filtered by <paramref name="namesFilter"/>),
    /// and, with <paramref name="backwardObjective"/>, their gradients under <c>&lt;name&gt;_grad</c>. The model's own entry for the
    /// SAE's hook point holds the SAE's output there.
    /// </summary>
    public (Tensor Logits, ActivationCache Cache) RunWithCache(Tensor tokens, Func<string, bool>? namesFilter = null, Func<Tensor, Tensor>? backwardObjective = null)
    {
        var cache = new ActivationCache(Model, Sae.HookDict.Count);
        var handles = new List<HookHandle>();
        try
        {
            foreach (var name in Sae.HookDict.Keys.Where(n => namesFilter is null || namesFilter(n)))
            {
                handles.Add(Sae.AddHook(name, HookAction.Cache(cache)));
                // The error term is computed without a graph (as SAELens does): its gradient hook would never fire there.
                if (backwardObjective is not null && !name.EndsWith(".hook_sae_error", StringComparison.Ordinal))
                    handles.Add(Sae.AddHook(name, HookAction.CacheGradient(cache)));
            }
            return Model.RunWithCache(tokens, namesFilter, null, backwardObjective, cache);
        }
        catch
        {
            cache.Dispose();
            throw;
        }
        finally
        {
            foreach (var h in handles) h.Dispose();
        }
    }

    /// <summary>
    /// Steers by feature <paramref name="feature"/>'s decoder direction (row of <c>W_dec</c>): adds <c>coefficient · W_dec[feature]</c>
    /// at the SAE's hook point, at <paramref name="positions"/> (null: all). Dispose the handle to stop.
    /// </summary>
    public HookHandle Steer(int feature, double coefficient, IReadOnlyList<long>? positions = null)
    {
        if (feature < 0 || feature >= Sae.Config.DSae) throw new ArgumentOutOfRangeException(nameof(feature), feature, $"the SAE has {Sae.Config.DSae} features");
        using var scope = Torch.NewScope();
        return Model.AddSteeringVector(Sae.Config.HookName, Sae.WDec.Select(0, feature), coefficient, positions);
    }

    /// <summary>Takes the SAE out of the model.</summary>
    public void Dispose() => _handle.Dispose();
}

/// <summary>Splicing SAEs into models.</summary>
public static class SaeModelExtensions
{
    /// <summary>
    /// Splices <paramref name="sae"/> into <paramref name="model"/> at its hook point; with <paramref name="useErrorTerm"/> (SAELens's
    /// <c>use_error_term</c>, default off as there) the model's output is unchanged until a hook changes the features.
    /// </summary>
    public static SaeSplice Splice(this HookedModel model, Sae sae, bool useErrorTerm = false)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(sae);
        if (sae.WDec.Device != model.Config.Device)
            throw new ArgumentException($"the SAE for '{sae.Config.HookName}' is on {sae.WDec.Device} but the model is on {model.Config.Device}: " +
                                        "load it with Sae.Load(directory, device: model.Config.Device)");
        return new SaeSplice(model, sae, useErrorTerm);
    }
}

/// <summary>
/// Attributing a metric to SAE features by gradients (attribution patching through the SAE, Syed et al. 2023; Marks et al.
/// 2024): the gradient of the metric with respect to the feature activations, which reaches the features through the
/// decoder (the error term carries none), times a change of the activations.
/// </summary>
public static class SaeAttribution
{
    /// <summary>
    /// The feature activations [batch, pos, d_sae] of the run on <paramref name="tokens"/> and the gradient of the metric
    /// (summed, if it has several values) with respect to them. Parameters are frozen meanwhile (their gradients are not
    /// computed) and restored afterwards.
    /// </summary>
    public static (Tensor Acts, Tensor Grads) FeatureGradients(SaeSplice splice, Tensor tokens, PatchingMetric metric)
    {
        ArgumentNullException.ThrowIfNull(splice);
        ArgumentNullException.ThrowIfNull(tokens);
        ArgumentNullException.ThrowIfNull(metric);
        var parameters = splice.Model switch
        {
            TransformerBridge b => b.Parameters(),
            HookedTransformer h => h.Parameters(),
            _ => [],
        };
        var frozen = parameters.Where(p => p.RequiresGrad).ToList();
        Tensor? leaf = null;
        try
        {
            foreach (var p in frozen) p.RequiresGrad = false;
            using var scope = Torch.NewScope();
            using var grad = Torch.EnableGrad();
            // The features become a leaf: the gradient stops there, and nothing upstream needs a graph.
            using (splice.Sae.AddHook("hook_sae_acts_post", (a, _) =>
            {
                leaf?.Dispose();
                leaf = a.Detach().RequiresGrad_().DetachFromScope();
                return leaf;
            }))
            {
                var logits = splice.Model.Forward(tokens);
                if (leaf is null) throw new InvalidOperationException($"the SAE's features never fired: is '{splice.Sae.Config.HookName}' reached by this forward pass?");
                metric(logits).Sum().Backward();
            }
            var g = leaf.Grad ?? throw new InvalidOperationException("the metric does not depend on the SAE's features");
            return (leaf.Detach().Clone().MoveToOuterScope(), g.Clone().MoveToOuterScope());
        }
        finally
        {
            foreach (var p in frozen) p.RequiresGrad = true;
            leaf?.Dispose();
        }
    }

    /// <summary>
    /// Attribution patching in <c>transformer_lens.patching</c>'s direction: the linear estimate of patching each feature's
    /// clean activation into the corrupted run, <c>∂metric/∂acts(corrupted) · (acts(clean) − acts(corrupted))</c>, [batch, pos, d_sae].
    /// Exact where the metric is linear in the features (an SAE on <c>ln_final.hook_normalized</c> with the error term, say).
    /// </summary>
    public static Tensor AttributionPatching(SaeSplice splice, Tensor cleanTokens, Tensor corruptedTokens, PatchingMetric metric)
    {
        ArgumentNullException.ThrowIfNull(splice);
        using var scope = Torch.NewScope();
        var name = splice.Sae.HookName("hook_sae_acts_post");
        Tensor cleanActs;
        using (Torch.NoGrad())
        {
            var (_, cache) = splice.RunWithCache(cleanTokens, n => n == name);
            using (cache) cleanActs = cache[name].Clone();
        }
        var (acts, grads) = FeatureGradients(splice, corruptedTokens, metric);
        return (grads * (cleanActs - acts)).MoveToOuterScope();
    }

    /// <summary>Zero-ablation attribution: <c>∂metric/∂acts · (0 − acts)</c>, the linear estimate of switching each feature off. [batch, pos, d_sae].</summary>
    public static Tensor AblationAttribution(SaeSplice splice, Tensor tokens, PatchingMetric metric)
    {
        using var scope = Torch.NewScope();
        var (acts, grads) = FeatureGradients(splice, tokens, metric);
        return (-(grads * acts)).MoveToOuterScope();
    }
}
