namespace SharpLens;

/// <summary>Which sublayer outputs <see cref="ActivationCache.DecomposeResid"/> returns (TransformerLens's <c>mode</c>).</summary>
public enum ResidDecompositionMode
{
    /// <summary>Attention and MLP outputs ("all").</summary>
    All,
    /// <summary>MLP outputs only ("mlp").</summary>
    Mlp,
    /// <summary>Attention outputs only ("attn").</summary>
    Attn,
}

/// <summary>
/// TransformerLens's <c>ActivationCache</c> analysis helpers (2.x semantics and argument names, in .NET casing):
/// accumulated and decomposed residual streams, per-head and per-neuron results, the full residual decomposition,
/// LayerNorm applied to a stack with the cached scales, logit attributions and a logit lens. Helpers that need
/// weights (<c>W_O</c>, <c>W_out</c>, <c>b_O</c>, <c>b_out</c>, <c>W_U</c>) read them from <see cref="Model"/>, the model
/// that filled the cache. Every result is a new tensor in the caller's scope; the cache keeps ownership of its own.
/// <para>
/// Where a TransformerLens helper takes <c>return_labels=True</c>, the labels come from the matching <c>...Labels</c>
/// method called with the same arguments, so the tensor methods keep one return type.
/// </para>
/// </summary>
public sealed partial class ActivationCache
{
    /// <summary>The model whose run filled this cache (null for a cache built without one); the analysis helpers read its weights.</summary>
    public HookedModel? Model { get; private set; }

    /// <summary>False after <see cref="RemoveBatchDim"/>: activations are then [pos, ...] instead of [batch, pos, ...].</summary>
    public bool HasBatchDim { get; private set; } = true;

    /// <summary>
    /// Whether the model's normalisation subtracts the mean before dividing by the scale (LayerNorm) or only divides
    /// (RMSNorm). TransformerLens's <c>apply_ln_to_stack</c> centres only for LayerNorm, and the logit lens recomputes the
    /// final norm the same way. Every architecture SharpLens loads today uses LayerNorm; when <see cref="TransformerConfig"/>
    /// gains a norm kind, this is the one place that reads it.
    /// </summary>
    internal static bool NormalizationCentres(TransformerConfig config) => true;

    private readonly record struct Component(string Label, Func<Tensor> Value);

    private int ResolveLayer(int? layer, string argument = "layer")
    {
        var l = layer is null or -1 ? Config.NLayers : layer.Value;
        if (l < 0 || l > Config.NLayers)
            throw new ArgumentOutOfRangeException(argument, layer, $"a layer must lie in [0, {Config.NLayers}] (or be -1/null for all {Config.NLayers} layers)");
        return l;
    }

    // ------------------------------------------------------------------ accumulated residual stream

    /// <summary>
    /// The residual stream accumulated up to the input of <paramref name="layer"/> (TransformerLens <c>accumulated_resid</c>):
    /// <c>resid_pre</c> of every layer before it (and <c>resid_mid</c> with <paramref name="inclMid"/>), ending with
    /// <c>resid_pre</c> of <paramref name="layer"/> itself, or the final <c>resid_post</c> when <paramref name="layer"/> is
    /// null, -1 or n_layers. Shape [components, batch, pos, d_model] (dims dropped by <paramref name="posSlice"/> go).
    /// </summary>
    /// <param name="layer">Stop at the input of this layer; null or -1 for the whole stream.</param>
    /// <param name="inclMid">Also <c>resid_mid</c> of every layer before <paramref name="layer"/>.</param>
    /// <param name="applyLn">Divide by the cached scale of the norm that reads <paramref name="layer"/>'s input (see <see cref="ApplyLnToStack"/>).</param>
    /// <param name="posSlice">Positions to keep.</param>
    /// <param name="mlpInput">End with <c>resid_mid</c> of <paramref name="layer"/> (the MLP's input) and use ln2's scale.</param>
    public Tensor AccumulatedResid(int? layer = null, bool inclMid = false, bool applyLn = false, Slice? posSlice = null, bool mlpInput = false)
    {
        var l = ResolveLayer(layer);
        var pos = Slice.Unwrap(posSlice);
        using var scope = Torch.NewScope();
        var stack = Stack(AccumulatedResidParts(l, inclMid, mlpInput), c => pos.Apply(c, -2));
        if (applyLn) stack = ApplyLnToStack(stack, l, mlpInput, pos);
        return stack.MoveToOuterScope();
    }

    /// <summary>The labels of <see cref="AccumulatedResid"/>'s components (<c>0_pre</c>, <c>0_mid</c>, ..., <c>final_post</c>).</summary>
    public IReadOnlyList<string> AccumulatedResidLabels(int? layer = null, bool inclMid = false, bool mlpInput = false) =>
        AccumulatedResidParts(ResolveLayer(layer), inclMid, mlpInput).Select(c => c.Label).ToList();

    private List<Component> AccumulatedResidParts(int layer, bool inclMid, bool mlpInput)
    {
        var parts = new List<Component>();
        for (var l = 0; l <= layer; l++)
        {
            var i = l;
            if (l == Config.NLayers)
            {
                parts.Add(new("final_post", () => this["resid_post", Config.NLayers - 1]));
                continue;
            }
            parts.Add(new($"{l}_pre", () => this["resid_pre", i]));
            if ((inclMid && l < layer) || (mlpInput && l == layer))
                parts.Add(new($"{l}_mid", () => this["resid_mid", i]));
        }
        return parts;
    }

    /// <summary>
    /// A logit lens: every component of <see cref="AccumulatedResid"/> put through the final norm, with its statistics
    /// recomputed for that component and its weight and bias applied, then through the unembedding (<c>W_U</c>, <c>b_U</c>).
    /// Shape [components, batch, pos, d_vocab]; the last component (<c>final_post</c>) reproduces the model's logits.
    /// Labels: <see cref="AccumulatedResidLabels"/>.
    /// </summary>
    public Tensor LogitLens(Slice? posSlice = null, bool inclMid = false)
    {
        using var scope = Torch.NewScope();
        var stack = AccumulatedResid(null, inclMid, applyLn: false, posSlice);
        // LayerNorm: centre, scale, weight and bias; RMSNorm: scale and weight only.
        var centres = NormalizationCentres(Config);
        var w = TlWeights(centres ? ["ln_final.w", "unembed.W_U", "unembed.b_U", "ln_final.b"] : ["ln_final.w", "unembed.W_U", "unembed.b_U"]);
        var x = centres ? stack - stack.Mean(-1, keepDim: true) : stack;
        var normed = x / (x.Square().Mean(-1, keepDim: true) + Config.NormEps).Sqrt() * w[0];
        if (centres) normed = normed + w[3];
        return (normed.Matmul(w[1]) + w[2]).MoveToOuterScope();
    }

    // ------------------------------------------------------------------ residual decomposition

    /// <summary>
    /// The residual stream entering <paramref name="layer"/> split into what wrote it (TransformerLens <c>decompose_resid</c>):
    /// <c>embed</c>, <c>pos_embed</c> (when the model has them), then each earlier layer's <c>attn_out</c> and <c>mlp_out</c>.
    /// Shape [components, batch, pos, d_model].
    /// </summary>
    /// <param name="layer">The layer whose input is decomposed; null or -1 for the final residual stream.</param>
    /// <param name="mlpInput">Decompose the input of <paramref name="layer"/>'s MLP: adds that layer's <c>attn_out</c>.</param>
    /// <param name="mode">Attention outputs, MLP outputs, or both.</param>
    /// <param name="applyLn">Divide by the cached scale of the norm that reads this input.</param>
    /// <param name="posSlice">Positions to keep.</param>
    /// <param name="inclEmbeds">Include <c>embed</c> and <c>pos_embed</c>.</param>
    public Tensor DecomposeResid(int? layer = null, bool mlpInput = false, ResidDecompositionMode mode = ResidDecompositionMode.All,
        bool applyLn = false, Slice? posSlice = null, bool inclEmbeds = true)
    {
        var l = ResolveLayer(layer);
        var pos = Slice.Unwrap(posSlice);
        using var scope = Torch.NewScope();
        var stack = Stack(DecomposeResidParts(l, mlpInput, mode, inclEmbeds), c => pos.Apply(c, -2));
        if (applyLn) stack = ApplyLnToStack(stack, l, mlpInput, pos);
        return stack.MoveToOuterScope();
    }

    /// <summary>The labels of <see cref="DecomposeResid"/>'s components (<c>embed</c>, <c>pos_embed</c>, <c>0_attn_out</c>, <c>0_mlp_out</c>, ...).</summary>
    public IReadOnlyList<string> DecomposeResidLabels(int? layer = null, bool mlpInput = false, ResidDecompositionMode mode = ResidDecompositionMode.All,
        bool inclEmbeds = true) =>
        DecomposeResidParts(ResolveLayer(layer), mlpInput, mode, inclEmbeds).Select(c => c.Label).ToList();

    private List<Component> DecomposeResidParts(int layer, bool mlpInput, ResidDecompositionMode mode, bool inclEmbeds)
    {
        var inclAttn = mode != ResidDecompositionMode.Mlp;
        var inclMlp = mode != ResidDecompositionMode.Attn;
        var parts = new List<Component>();
        if (inclEmbeds)
        {
            if (ContainsKey("hook_embed")) parts.Add(new("embed", () => this["hook_embed"]));
            if (ContainsKey("hook_pos_embed")) parts.Add(new("pos_embed", () => this["hook_pos_embed"]));
        }
        for (var l = 0; l < layer; l++)
        {
            var i = l;
            if (inclAttn) parts.Add(new($"{l}_attn_out", () => this["attn_out", i]));
            if (inclMlp) parts.Add(new($"{l}_mlp_out", () => this["mlp_out", i]));
        }
        if (mlpInput && inclAttn)
        {
            if (layer >= Config.NLayers) throw new ArgumentException("mlpInput needs a layer below n_layers: the final residual stream feeds no MLP");
            parts.Add(new($"{layer}_attn_out", () => this["attn_out", layer]));
        }
        return parts;
    }

    // ------------------------------------------------------------------ heads

    /// <summary>
    /// Computes every head's output into the residual stream, <c>blocks.{l}.attn.hook_result</c> = <c>z · W_O</c>
    /// [batch, pos, head, d_model], and stores it in the cache (TransformerLens <c>compute_head_results</c>); layers that
    /// already have it (a run with <see cref="TransformerConfig.UseAttnResult"/>) keep theirs.
    /// </summary>
    public void ComputeHeadResults()
    {
        for (var l = 0; l < Config.NLayers; l++)
        {
            var name = $"blocks.{l}.attn.hook_result";
            if (ContainsKey(name)) continue;
            using var scope = Torch.NewScope();
            var wO = TlWeights($"blocks.{l}.attn.W_O")[0];
            Store(name, Torch.Einsum("...hd,hdm->...hm", this["z", l], wO));
        }
    }

    /// <summary>
    /// Every head's result for the layers before <paramref name="layer"/>, stacked as [layer·head, batch, pos, d_model]
    /// (TransformerLens <c>stack_head_results</c>; labels <c>L0H0</c>, ...). Computes the head results first when missing.
    /// </summary>
    /// <param name="layer">Heads of the layers strictly before this one; -1 or null for all.</param>
    /// <param name="inclRemainder">Add a last component: the rest of the residual stream (<c>resid_post</c> of layer − 1 minus the heads).</param>
    /// <param name="posSlice">Positions to keep.</param>
    /// <param name="applyLn">Divide by the cached scale of the norm that reads <paramref name="layer"/>'s input.</param>
    public Tensor StackHeadResults(int? layer = -1, bool inclRemainder = false, Slice? posSlice = null, bool applyLn = false)
    {
        var l = ResolveLayer(layer);
        var pos = Slice.Unwrap(posSlice);
        ComputeHeadResults();
        using var scope = Torch.NewScope();
        var perLayer = Enumerable.Range(0, l).Select(i => pos.Apply(this["result", i], -3)).ToList();
        return FinishStack(perLayer, l, pos, inclRemainder, applyLn).MoveToOuterScope();
    }

    /// <summary>The labels of <see cref="StackHeadResults"/> (<c>L0H0</c>, ..., and <c>remainder</c>).</summary>
    public IReadOnlyList<string> StackHeadResultsLabels(int? layer = -1, bool inclRemainder = false)
    {
        var l = ResolveLayer(layer);
        var labels = Enumerable.Range(0, l).SelectMany(i => Enumerable.Range(0, Config.NHeads).Select(h => $"L{i}H{h}")).ToList();
        if (inclRemainder) labels.Add("remainder");
        return labels;
    }

    /// <summary>One activation of every layer before <paramref name="layer"/>, stacked on a new first dimension (TransformerLens <c>stack_activation</c>).</summary>
    public Tensor StackActivation(string activationName, int? layer = -1, string? sublayerType = null)
    {
        var l = ResolveLayer(layer);
        using var scope = Torch.NewScope();
        return Torch.Stack(Enumerable.Range(0, l).Select(i => this[activationName, i, sublayerType]).ToList()).MoveToOuterScope();
    }

    // ------------------------------------------------------------------ neurons

    /// <summary>
    /// Each neuron's output into the residual stream at <paramref name="layer"/>: <c>mlp.hook_post</c> times its row of
    /// <c>W_out</c>, [batch, pos, neuron, d_model] (TransformerLens <c>get_neuron_results</c>).
    /// </summary>
    public Tensor GetNeuronResults(int layer, Slice? neuronSlice = null, Slice? posSlice = null)
    {
        if (layer < 0 || layer >= Config.NLayers) throw new ArgumentOutOfRangeException(nameof(layer), layer, $"a layer must lie in [0, {Config.NLayers})");
        var neurons = Slice.Unwrap(neuronSlice);
        using var scope = Torch.NewScope();
        var acts = Slice.Unwrap(posSlice).Apply(this["post", layer], -2);
        acts = neurons.Apply(acts, -1);
        var wOut = neurons.Apply(TlWeights($"blocks.{layer}.mlp.W_out")[0], 0);
        return (acts.Unsqueeze(-1) * wOut).MoveToOuterScope();
    }

    /// <summary>
    /// Every neuron's result for the layers before <paramref name="layer"/>, stacked as [layer·neuron, batch, pos, d_model]
    /// (TransformerLens <c>stack_neuron_results</c>; labels <c>L0N0</c>, ...). A single-index <paramref name="neuronSlice"/>
    /// keeps its dimension (one neuron per layer).
    /// </summary>
    public Tensor StackNeuronResults(int? layer, Slice? posSlice = null, Slice? neuronSlice = null, bool inclRemainder = false, bool applyLn = false)
    {
        var l = ResolveLayer(layer);
        var pos = Slice.Unwrap(posSlice);
        var neurons = KeepDimension(neuronSlice);
        using var scope = Torch.NewScope();
        var perLayer = Enumerable.Range(0, l).Select(i => GetNeuronResults(i, neurons, pos)).ToList();
        return FinishStack(perLayer, l, pos, inclRemainder, applyLn).MoveToOuterScope();
    }

    /// <summary>The labels of <see cref="StackNeuronResults"/> (<c>L0N0</c>, ..., and <c>remainder</c>).</summary>
    public IReadOnlyList<string> StackNeuronResultsLabels(int? layer, Slice? neuronSlice = null, bool inclRemainder = false)
    {
        var l = ResolveLayer(layer);
        var neurons = KeepDimension(neuronSlice).Indices(Config.DMlp);
        var labels = Enumerable.Range(0, l).SelectMany(i => neurons.Select(n => $"L{i}N{n}")).ToList();
        if (inclRemainder) labels.Add("remainder");
        return labels;
    }

    private static Slice KeepDimension(Slice? slice) => Slice.Unwrap(slice).KeepingDimension();

    // ------------------------------------------------------------------ full decomposition

    /// <summary>
    /// The residual stream entering <paramref name="layer"/> split into every head's result, every neuron's result (or
    /// each MLP's output without <paramref name="expandNeurons"/>), <c>embed</c>, <c>pos_embed</c> and the biases summed in
    /// one <c>bias</c> component (TransformerLens <c>get_full_resid_decomposition</c>). Shape [components, batch, pos, d_model].
    /// </summary>
    public Tensor GetFullResidDecomposition(int? layer = null, bool mlpInput = false, bool expandNeurons = true, bool applyLn = false, Slice? posSlice = null)
    {
        var l = ResolveLayer(layer);
        var pos = Slice.Unwrap(posSlice);
        using var scope = Torch.NewScope();
        var heads = StackHeadResults(l + (mlpInput ? 1 : 0), posSlice: pos);
        var components = new List<Tensor> { heads };
        if (l > 0)
            components.Add(expandNeurons
                ? StackNeuronResults(l, pos)
                : DecomposeResid(l, mlpInput, ResidDecompositionMode.Mlp, posSlice: pos, inclEmbeds: false));
        if (ContainsKey("hook_embed")) components.Add(pos.Apply(this["hook_embed"], -2).Unsqueeze(0));
        if (ContainsKey("hook_pos_embed")) components.Add(pos.Apply(this["hook_pos_embed"], -2).Unsqueeze(0));
        var bias = AccumulatedBias(l, mlpInput, includeMlpBiases: expandNeurons);
        components.Add(bias.Expand([1, .. heads.Shape[1..]]));
        var stack = Torch.Cat(components);
        if (applyLn) stack = ApplyLnToStack(stack, l, mlpInput, pos);
        return stack.MoveToOuterScope();
    }

    /// <summary>The labels of <see cref="GetFullResidDecomposition"/> (<c>L0H0</c>, ..., <c>L0N0</c> or <c>0_mlp_out</c>, ..., <c>embed</c>, <c>pos_embed</c>, <c>bias</c>).</summary>
    public IReadOnlyList<string> GetFullResidDecompositionLabels(int? layer = null, bool mlpInput = false, bool expandNeurons = true)
    {
        var l = ResolveLayer(layer);
        var labels = StackHeadResultsLabels(l + (mlpInput ? 1 : 0)).ToList();
        if (l > 0)
            labels.AddRange(expandNeurons ? StackNeuronResultsLabels(l) : DecomposeResidLabels(l, mlpInput, ResidDecompositionMode.Mlp, inclEmbeds: false));
        if (ContainsKey("hook_embed")) labels.Add("embed");
        if (ContainsKey("hook_pos_embed")) labels.Add("pos_embed");
        labels.Add("bias");
        return labels;
    }

    /// <summary>
    /// The sum of the biases written into the residual stream before <paramref name="layer"/>: every attention <c>b_O</c>
    /// and, with <paramref name="includeMlpBiases"/>, every MLP <c>b_out</c>; with <paramref name="mlpInput"/> also the
    /// <c>b_O</c> of <paramref name="layer"/> itself (TransformerLens <c>HookedTransformer.accumulated_bias</c>). [d_model].
    /// </summary>
    public Tensor AccumulatedBias(int layer, bool mlpInput = false, bool includeMlpBiases = true)
    {
        if (layer < 0 || layer > Config.NLayers) throw new ArgumentOutOfRangeException(nameof(layer), layer, $"a layer must lie in [0, {Config.NLayers}]");
        if (mlpInput && layer == Config.NLayers) throw new ArgumentException("mlpInput needs a layer below n_layers: there is no attention bias beyond the final layer");
        var names = new List<string>();
        for (var i = 0; i < layer; i++)
        {
            names.Add($"blocks.{i}.attn.b_O");
            if (includeMlpBiases) names.Add($"blocks.{i}.mlp.b_out");
        }
        if (mlpInput) names.Add($"blocks.{layer}.attn.b_O");
        using var scope = Torch.NewScope();
        var total = Torch.Zeros([Config.DModel], Config.DType, Config.Device);
        foreach (var b in TlWeights(names.ToArray())) total = total + b;
        return total.MoveToOuterScope();
    }

    // ------------------------------------------------------------------ norm and logits

    /// <summary>
    /// Treats <paramref name="residualStack"/> [components, batch, pos, d_model] as the input of the norm that reads layer
    /// <paramref name="layer"/> (ln1, ln2 with <paramref name="mlpInput"/>, ln_final for null, -1 or n_layers) and applies
    /// that norm's cached scale: centre each component (LayerNorm only) and divide by <c>hook_scale</c> of the run, which is
    /// shared by all components, so the result is linear in the stack (TransformerLens <c>apply_ln_to_stack</c>). The norm's
    /// weight and bias are not applied.
    /// </summary>
    /// <param name="residualStack">[components, batch, pos, d_model], with <paramref name="posSlice"/> already applied.</param>
    /// <param name="layer">The layer whose input the stack is.</param>
    /// <param name="mlpInput">The input of the MLP (ln2) rather than attention (ln1).</param>
    /// <param name="posSlice">The slice already applied to the stack's positions; applied here to the cached scale.</param>
    /// <param name="batchSlice">Batch rows to keep, applied to the stack (dimension 1) and to the scale.</param>
    /// <param name="hasBatchDim">Whether the stack has a batch dimension.</param>
    public Tensor ApplyLnToStack(Tensor residualStack, int? layer = null, bool mlpInput = false, Slice? posSlice = null, Slice? batchSlice = null,
        bool hasBatchDim = true)
    {
        ArgumentNullException.ThrowIfNull(residualStack);
        var l = ResolveLayer(layer);
        var batch = Slice.Unwrap(batchSlice);
        using var scope = Torch.NewScope();
        var stack = hasBatchDim ? batch.Apply(residualStack, 1) : residualStack.Alias();
        if (NormalizationCentres(Config)) stack = stack - stack.Mean(-1, keepDim: true);
        var scaleName = l == Config.NLayers ? "ln_final.hook_scale" : $"blocks.{l}.ln{(mlpInput ? 2 : 1)}.hook_scale";
        if (!ContainsKey(scaleName))
            throw new KeyNotFoundException($"applying the norm to a stack needs '{scaleName}' in the cache; run with it cached");
        var scale = Slice.Unwrap(posSlice).Apply(this[scaleName], -2);
        if (HasBatchDim) scale = batch.Apply(scale, 0);
        return (stack / scale).MoveToOuterScope();
    }

    /// <summary>
    /// The unembedding direction of each token: <c>W_U[:, tokens]</c> with d_model last, [..., d_model] for a tensor of several
    /// tokens and [d_model] for one (TransformerLens <c>tokens_to_residual_directions</c>).
    /// </summary>
    public Tensor TokensToResidualDirections(Tensor tokens)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        if (tokens.DType != ScalarType.Int64) throw new ArgumentException($"tokens must be int64, got {tokens.DType.ToTorchName()}", nameof(tokens));
        using var scope = Torch.NewScope();
        var wU = TlWeights("unembed.W_U")[0];
        using (var lo = tokens.Min())
        using (var hi = tokens.Max())
            if (tokens.NumEl > 0 && (lo.ToInt64() < 0 || hi.ToInt64() >= wU.Size(1)))
                throw new ArgumentOutOfRangeException(nameof(tokens), $"token ids must lie in [0, {wU.Size(1)}), got values from {lo.ToInt64()} to {hi.ToInt64()}");
        var flat = tokens.Reshape(-1).To(wU.Device);
        var directions = wU.IndexSelect(1, flat).Transpose(0, 1);  // [n, d_model]
        var result = tokens.NumEl == 1 ? directions.Reshape(wU.Size(0)) : directions.Reshape([.. tokens.Shape, wU.Size(0)]);
        return result.MoveToOuterScope();
    }

    /// <summary>The unembedding direction of one token, [d_model].</summary>
    public Tensor TokensToResidualDirections(long token)
    {
        using var scope = Torch.NewScope();
        return TokensToResidualDirections(Torch.FromArray([token])).MoveToOuterScope();
    }

    /// <summary>
    /// How much each component of <paramref name="residualStack"/> pushes the logit of <paramref name="tokens"/> (minus that
    /// of <paramref name="incorrectTokens"/>): the stack put through <see cref="ApplyLnToStack"/> for the final norm, dotted
    /// with the tokens' residual directions (TransformerLens <c>logit_attrs</c>). [components, batch(, pos)].
    /// </summary>
    /// <param name="residualStack">[components, batch, (pos,) d_model]; the final norm's cached scale is applied here.</param>
    /// <param name="tokens">One token (a 0-d or 1-element tensor), one per batch row [batch], or [batch, pos].</param>
    /// <param name="incorrectTokens">Tokens of the same shape whose direction is subtracted.</param>
    /// <param name="posSlice">The slice already applied to the stack's positions.</param>
    /// <param name="batchSlice">Batch rows to keep.</param>
    /// <param name="hasBatchDim">Whether the stack has a batch dimension.</param>
    public Tensor LogitAttrs(Tensor residualStack, Tensor tokens, Tensor? incorrectTokens = null, Slice? posSlice = null, Slice? batchSlice = null,
        bool hasBatchDim = true)
    {
        ArgumentNullException.ThrowIfNull(residualStack);
        ArgumentNullException.ThrowIfNull(tokens);
        if (incorrectTokens is not null && !incorrectTokens.Shape.SequenceEqual(tokens.Shape))
            throw new ArgumentException($"tokens and incorrectTokens must have the same shape, got {Tensor.FormatShape(tokens.Shape)} and {Tensor.FormatShape(incorrectTokens.Shape)}");
        using var scope = Torch.NewScope();
        var directions = TokensToResidualDirections(tokens);
        if (incorrectTokens is not null) directions = directions - TokensToResidualDirections(incorrectTokens);
        var scaled = ApplyLnToStack(residualStack, -1, posSlice: posSlice, batchSlice: batchSlice, hasBatchDim: hasBatchDim);
        // Per-row directions [batch, d_model] against a stack with positions [c, batch, pos, d]: broadcast over positions, not the batch.
        if (hasBatchDim && scaled.Dim == 4 && directions.Dim == 2 && directions.Size(0) == scaled.Size(1))
            directions = directions.Unsqueeze(-2);
        return (scaled * directions).Sum(-1).MoveToOuterScope();
    }

    /// <summary><see cref="LogitAttrs(Tensor, Tensor, Tensor?, Slice?, Slice?, bool)"/> for one token (and one incorrect token).</summary>
    public Tensor LogitAttrs(Tensor residualStack, long token, long? incorrectToken = null, Slice? posSlice = null, Slice? batchSlice = null, bool hasBatchDim = true)
    {
        using var scope = Torch.NewScope();
        var incorrect = incorrectToken is { } t ? Torch.FromArray([t]) : null;
        return LogitAttrs(residualStack, Torch.FromArray([token]), incorrect, posSlice, batchSlice, hasBatchDim).MoveToOuterScope();
    }

    // ------------------------------------------------------------------ batch dimension

    /// <summary>
    /// Drops the batch dimension of every activation of a batch-of-one cache, so activations are [pos, ...]
    /// (TransformerLens <c>remove_batch_dim</c>). Returns this cache.
    /// </summary>
    /// <exception cref="InvalidOperationException">The batch has more than one row.</exception>
    public ActivationCache RemoveBatchDim()
    {
        if (!HasBatchDim) return this;
        var batch = BatchSize();
        if (batch != 1) throw new InvalidOperationException($"cannot remove the batch dimension of a cache with batch size {batch}");
        foreach (var (name, t) in Collected.ToList())
            if (t.Dim > 0 && t.Size(0) == 1)
                Store(name, t.Select(0, 0));
        HasBatchDim = false;
        return this;
    }

    /// <summary>
    /// A new cache holding the batch rows <paramref name="batchSlice"/> selects of every activation (TransformerLens
    /// <c>apply_slice_to_batch_dim</c>); a single index drops the batch dimension. The new cache shares storage with this one
    /// where the slice allows and must be disposed on its own.
    /// </summary>
    public ActivationCache ApplySliceToBatchDim(Slice batchSlice)
    {
        ArgumentNullException.ThrowIfNull(batchSlice);
        if (!HasBatchDim && batchSlice.Mode != Slice.SliceMode.All) throw new InvalidOperationException("this cache has no batch dimension to slice");
        var batch = BatchSize();
        var result = new ActivationCache(Config, _slotCapacity) { Model = Model, HasBatchDim = HasBatchDim && !batchSlice.DropsDimension };
        foreach (var (name, t) in Collected)
            result.Store(name, t.Dim > 0 && t.Size(0) == batch ? batchSlice.Apply(t, 0) : t.Alias());
        return result;
    }

    /// <summary>The most common leading size among the cached tensors (TransformerLens's rule; broadcast entries do not count).</summary>
    private long BatchSize() =>
        Collected.Values.Where(t => t.Dim > 0).GroupBy(t => t.Size(0)).OrderByDescending(g => g.Count()).Select(g => g.Key).FirstOrDefault(1);

    // ------------------------------------------------------------------ helpers

    private static Tensor Stack(List<Component> parts, Func<Tensor, Tensor> slice)
    {
        if (parts.Count == 0) throw new ArgumentException("there is nothing to stack for these arguments");
        return Torch.Stack(parts.Select(c => slice(c.Value())).ToList());
    }

    /// <summary>
    /// Per-layer results [..., n_i, d_model] stacked as [Σn_i, ..., d_model], with the remainder of the residual stream entering
    /// <paramref name="layer"/> appended and the norm's cached scale applied on request (the tail of the head and neuron stacks).
    /// </summary>
    private Tensor FinishStack(List<Tensor> perLayer, int layer, Slice pos, bool inclRemainder, bool applyLn)
    {
        var components = ConcatToFront(perLayer, () => EmptyLike(pos));
        if (inclRemainder)
        {
            if (layer == 0) throw new ArgumentException("a remainder needs layer >= 1: before layer 0 there is no resid_post to fill up to");
            var resid = pos.Apply(this["resid_post", layer - 1], -2);
            var remainder = perLayer.Count == 0 ? resid : resid - components.Sum(0);
            components = Torch.Cat([components, remainder.Unsqueeze(0)]);
        }
        return applyLn ? ApplyLnToStack(components, layer, posSlice: pos) : components;
    }

    /// <summary>Concatenates [..., n_i, d] tensors along their second-to-last dimension and moves that dimension to the front.</summary>
    private static Tensor ConcatToFront(List<Tensor> parts, Func<Tensor> empty)
    {
        if (parts.Count == 0) return empty();
        var cat = Torch.Cat(parts, -2);
        var n = cat.Dim;
        var order = new long[n];
        order[0] = n - 2;
        for (var i = 1; i < n - 1; i++) order[i] = i - 1;
        order[n - 1] = n - 1;
        return cat.Permute(order);
    }

    /// <summary>An empty stack [0, batch, pos, d_model] shaped like the (sliced) embedding, as TransformerLens returns for layer 0.</summary>
    private Tensor EmptyLike(Slice pos) => Torch.Zeros([0, .. pos.Apply(this["hook_embed"], -2).Shape], Config.DType, Config.Device);

    /// <summary>TransformerLens-named weights of <see cref="Model"/>, detached (analysis needs no graph through the parameters).</summary>
    private Tensor[] TlWeights(params string[] names)
    {
        var model = Model ?? throw new InvalidOperationException("this analysis needs the model's weights, but the cache was not filled by a model (use RunWithCache or new ActivationCache(model))");
        var result = new Tensor[names.Length];
        switch (model)
        {
            case TransformerBridge bridge:
                var all = bridge.TlNamedParameters();
                for (var i = 0; i < names.Length; i++)
                {
                    var match = all.FirstOrDefault(p => p.Name == names[i]).Weight
                        ?? throw new KeyNotFoundException($"the {Config.ModelType} model has no weight '{names[i]}'");
                    result[i] = match.Detach();
                }
                foreach (var (_, w) in all) w.Dispose();
                break;
            case HookedTransformer reference:
                for (var i = 0; i < names.Length; i++) result[i] = reference.W(names[i]).Detach();
                break;
            default:
                throw new NotSupportedException($"reading weights from a {model.GetType().Name} is not supported");
        }
        return result;
    }
}
