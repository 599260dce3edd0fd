namespace SharpLens.Demo;

/// <summary>One attention head, by layer and index.</summary>
/// <param name="Layer">Block index.</param>
/// <param name="Head">Head index within the block.</param>
public readonly record struct HeadRef(int Layer, int Head)
{
    /// <summary>TransformerLens-style short name, e.g. <c>L1H3</c>.</summary>
    public override string ToString() => $"L{Layer}H{Head}";
}

/// <summary>
/// Zero-ablation of attention heads through hooks: the head's <c>z</c> (its attention-weighted values,
/// <c>blocks.L.attn.hook_z</c> [batch, pos, head, d_head]) is replaced by zeros, so the head writes nothing but
/// the shared output bias into the residual stream. Ablating at <c>hook_z</c> rather than at the pattern removes
/// the head's whole contribution while leaving every other head of the layer untouched.
/// </summary>
public static class HeadAblation
{
    /// <summary>
    /// Adds hooks that zero the given heads' <c>z</c> until the returned scope is disposed:
    /// <c>using (HeadAblation.Ablate(bridge, heads)) { ... }</c>.
    /// </summary>
    /// <exception cref="ArgumentException">A head outside the model.</exception>
    public static IDisposable Ablate(HookedModel model, IEnumerable<HeadRef> heads)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(heads);
        var cfg = model.Config;
        var byLayer = heads.Distinct().GroupBy(h => h.Layer).ToList();
        foreach (var h in byLayer.SelectMany(g => g))
            if (h.Layer < 0 || h.Layer >= cfg.NLayers || h.Head < 0 || h.Head >= cfg.NHeads)
                throw new ArgumentException($"head {h} is outside a model of {cfg.NLayers} layers of {cfg.NHeads} heads");
        var hooks = byLayer.Select(g =>
        {
            // One hook per layer multiplies z by a [1, 1, head, 1] keep-mask: 0 for the ablated heads, 1 elsewhere.
            var keep = new float[cfg.NHeads];
            Array.Fill(keep, 1f);
            foreach (var h in g) keep[h.Head] = 0f;
            ForwardHook hook = (z, _) =>
            {
                // Created per call, in the forward pass's scope, so the mask follows z's dtype and device and is freed with it.
                using var cpu = Torch.FromArray(keep, 1, 1, cfg.NHeads, 1);
                return z * cpu.To(z.Device, z.DType);
            };
            return (ActivationCache.ActName("z", g.Key), hook);
        }).ToArray();
        return model.Hooks(hooks);
    }

    /// <summary>
    /// Mean next-token losses on repeated sequences (<see cref="RepeatedSequences"/> layout, copies of length
    /// <paramref name="seqLen"/>), split by what is being predicted: the first copy's tokens r_2..r_L (unpredictable,
    /// and left out of the demo's training objective) and the second copy's r_2..r_L (predictable by induction). r_1 is left out of both: after BOS it is
    /// a blind guess, and at the start of the second copy it follows r_L, which never preceded it.
    /// </summary>
    /// <param name="model">The model; any hooks already on it (e.g. an <see cref="Ablate"/> scope) apply.</param>
    /// <param name="tokens">[batch, 1 + 2 seqLen] repeated sequences.</param>
    /// <param name="seqLen">Length of one copy.</param>
    public static HalfLosses RepeatedLosses(HookedModel model, Tensor tokens, int seqLen)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(tokens);
        if (tokens.Dim != 2 || tokens.Size(1) != RepeatedSequences.SequenceLength(seqLen))
            throw new ArgumentException($"repeated tokens with copies of {seqLen} are [batch, {RepeatedSequences.SequenceLength(seqLen)}], got {Tensor.FormatShape(tokens.Shape)}");
        using var scope = Torch.NewScope();
        using var noGrad = Torch.NoGrad();
        var perToken = model.Loss(tokens, perToken: true);  // [batch, pos - 1]; entry t predicts token t + 1
        // Targets r_2..r_L of copy c sit at positions prefix + c L + 1 .. prefix + c L + L - 1, predicted from one before.
        var first = perToken.Narrow(1, RepeatedSequences.Prefix, seqLen - 1).Mean().ToDouble();
        var second = perToken.Narrow(1, RepeatedSequences.Prefix + seqLen, seqLen - 1).Mean().ToDouble();
        return new HalfLosses(first, second);
    }
}

/// <summary>Mean next-token losses (nats) on the two copies of repeated sequences.</summary>
/// <param name="FirstHalf">Predicting the first copy's tokens (random: about ln of the token count for any model).</param>
/// <param name="RepeatedHalf">Predicting the second copy's tokens (near 0 for a model with working induction heads).</param>
public readonly record struct HalfLosses(double FirstHalf, double RepeatedHalf);
