using SharpLens.Components;
using SharpLens.Reference;

namespace SharpLens;

/// <summary>
/// The reference implementation: a second, independent forward pass over TransformerLens-layout leaf
/// weights (<c>blocks.0.attn.W_Q</c> [head, d_model, d_head], ...), written the way TransformerLens's
/// HookedTransformer computes (einsums, LayerNorm applied to q, k and v inputs separately, composed
/// attention with no fused kernel). It shares only the hook machinery with <see cref="TransformerBridge"/>,
/// so agreement between the two checks the bridge's adapters, views and native kernels. Supports
/// TransformerLens's weight processing (<see cref="WeightProcessing"/>).
/// </summary>
public sealed class HookedTransformer : HookedModel
{
    private readonly Dictionary<string, Tensor> _weights;

    private HookedTransformer(TransformerConfig config, Dictionary<string, Tensor> weights, WeightProcessing processing,
        Dictionary<string, (double Scale, double Offset)> affine) : base(config)
    {
        _weights = weights;
        _affine = affine;
        Processing = processing;
        // A tied model stays tied (W_U is W_Eᵀ, one leaf), so optimizer steps match the bridge's. Processing
        // changes W_U on its own, which unties it, as in TransformerLens.
        TiedEmbeddings = config.TiedEmbeddings && !processing.Any;
        if (TiedEmbeddings) _weights.Remove("unembed.W_U", out var untied).Then(untied);
    }

    /// <summary>True when W_U is the transposed W_E leaf rather than a weight of its own.</summary>
    public bool TiedEmbeddings { get; }

    /// <summary>
    /// TransformerLens weights that are an affine function of their HuggingFace parameter (Gemma's W_E = embedding × sqrt(d_model)
    /// and norm weights 1 + w): their leaf here holds the HF parameter itself and <see cref="W"/> computes the TL value, so an
    /// optimizer steps the same variable as HuggingFace's (AdamW's update and weight decay are not invariant to an affine
    /// reparametrisation). Empty once weights are processed (processing works on, and stores, TL values).
    /// </summary>
    private readonly Dictionary<string, (double Scale, double Offset)> _affine;

    /// <summary>
    /// The gradient of the last backward w.r.t. TransformerLens weight <paramref name="tlName"/> when that weight is a leaf here
    /// (null otherwise: a tied W_U's share is in W_E's leaf). For a leaf holding the HF parameter of an affine TL weight, the
    /// gradient is expressed in the TL weight's units (divided by the scale), so it maps back through the TL conversion.
    /// </summary>
    public Tensor? LeafGradient(string tlName)
    {
        if (TiedEmbeddings && tlName == "unembed.W_U") return null;
        var leaf = NamedParameters().FirstOrDefault(p => p.Name == tlName).Parameter;
        if (leaf?.Grad is not { } grad) return null;
        if (!_affine.TryGetValue(tlName, out var affine) || affine.Scale == 1) return grad;
        using var scale = Torch.Scalar(affine.Scale, grad.DType, grad.Device);
        return grad / scale;
    }

    /// <summary>A copy of a bridge's TL weights as independent leaves (float64 processing, then back to the bridge's dtype).</summary>
    public static HookedTransformer FromBridge(TransformerBridge bridge, WeightProcessing? processing = null)
    {
        processing ??= WeightProcessing.None;
        if (processing.CenterWritingWeights && !processing.FoldLn)
            throw new ArgumentException("CenterWritingWeights needs FoldLn: without folding, the LayerNorm weights would see uncentred inputs differently");
        var weights = new Dictionary<string, Tensor>();
        // Weights the HF model does not have (unembed.b_U) are constant zeros in the bridge; here they are
        // buffers, so both models train the same parameters.
        var buffers = bridge.Adapter.TlWeights(bridge.Config).Where(w => w.HfName is null).Select(w => w.TlName).ToHashSet();
        using (Torch.NoGrad())
        {
            foreach (var (name, w) in bridge.TlNamedParameters())
            {
                using (w) weights[name] = w.Contiguous().To(ScalarType.Float64, copy: true).DetachFromScope();
            }
            Process(weights, bridge.Config, processing);
        }
        // Affine TL weights of unprocessed models keep the HF parameter as their leaf (see _affine).
        var affine = new Dictionary<string, (double Scale, double Offset)>();
        if (!processing.Any)
            using (Torch.NoGrad())
                foreach (var w in bridge.Adapter.TlWeights(bridge.Config))
                {
                    if (w.HfName is null || w.Conversion.Affine is not { } a) continue;
                    var raw = bridge.Parameter(w.HfName).To(ScalarType.Float64, copy: true).DetachFromScope();
                    weights[w.TlName].Dispose();
                    weights[w.TlName] = raw;
                    affine[w.TlName] = a;
                }
        var dtype = bridge.Parameters()[0].DType;
        var device = bridge.Parameters()[0].Device;
        foreach (var name in weights.Keys.ToList())
        {
            var converted = weights[name].To(device, dtype, copy: true).DetachFromScope();
            weights[name].Dispose();
            converted.RequiresGrad = !buffers.Contains(name);
            weights[name] = converted;
        }
        return new HookedTransformer(bridge.Config.Clone(), weights, processing, affine);
    }

    /// <summary>Loads a HuggingFace model directory and converts it (see <see cref="FromBridge"/>).</summary>
    public static HookedTransformer FromDirectory(string modelDirectory, BridgeOptions? options = null, WeightProcessing? processing = null)
    {
        using var bridge = TransformerBridge.Load(modelDirectory, options);
        return FromBridge(bridge, processing);
    }

    /// <inheritdoc/>
    private protected override long CountParameters() => _weights.Values.Sum(w => w.NumEl);

    /// <summary>The weight processing applied.</summary>
    public WeightProcessing Processing { get; }

    /// <summary>
    /// The trainable leaf weights by TransformerLens name: LayerNorm weights are absent once folded, a tied W_U
    /// is not a leaf, and weights the HF model lacks (unembed.b_U) are buffers (see <see cref="NamedWeights"/>).
    /// </summary>
    public IReadOnlyList<(string Name, Tensor Parameter)> NamedParameters() =>
        ThrowIfDisposed(_weights).Where(p => p.Value.RequiresGrad).Select(p => (p.Key, p.Value)).ToList();

    /// <summary>The trainable leaf weights (see <see cref="NamedParameters"/>).</summary>
    public IReadOnlyList<Tensor> Parameters() => NamedParameters().Select(p => p.Parameter).ToList();

    /// <summary>Every stored weight by TransformerLens name, buffers included (TransformerLens's state dict; a scaled tied embedding is the unscaled leaf).</summary>
    public IReadOnlyList<(string Name, Tensor Weight)> NamedWeights() => ThrowIfDisposed(_weights).Select(p => (p.Key, p.Value)).ToList();

    /// <summary>
    /// One weight by TransformerLens name. With tied embeddings <c>unembed.W_U</c> is a transposed view of the embedding leaf,
    /// and with a scaled tied embedding <c>embed.W_E</c> is computed from it (leaf × scale); dispose those.
    /// </summary>
    public Tensor W(string name)
    {
        ThrowIfDisposed();
        if (_affine.TryGetValue(name, out var affine))
        {
            var leaf = _weights[name];
            using var scale = Torch.Scalar(affine.Scale, leaf.DType, leaf.Device);
            return affine.Offset == 0 ? leaf * scale : leaf * scale + affine.Offset;
        }
        if (_weights.TryGetValue(name, out var t)) return t;
        if (TiedEmbeddings && name == "unembed.W_U") return _weights["embed.W_E"].Transpose(0, 1);
        throw new KeyNotFoundException($"the HookedTransformer has no weight '{name}'");
    }

    private bool HasWeight(string name) => _weights.ContainsKey(name);

    // ------------------------------------------------------------------ weight processing (float64, exact)

    private static void Replace(Dictionary<string, Tensor> w, string name, Tensor value)
    {
        var old = w[name];
        w[name] = value.DetachFromScope();
        old.Dispose();
    }

    /// <summary>The names of a block's key and value weights: <c>_W_K</c>/<c>_b_K</c> with grouped-query attention, as TransformerLens stores them.</summary>
    private static string Kv(TransformerConfig cfg, string name) => cfg.IsGroupedQueryAttention ? "_" + name : name;

    private static void Process(Dictionary<string, Tensor> w, TransformerConfig cfg, WeightProcessing p)
    {
        using var scope = Torch.NewScope();
        var layerNorm = cfg.Norm == NormKind.LayerNorm;
        if (p.FoldLn)
        {
            // Each norm's weight (and LayerNorm's bias) moves into the layers that read the norm's output. LayerNorm's output
            // is centred, so TransformerLens also centres the folded weights over d_model; RMSNorm's is not, so it does not.
            void Fold(string ln, IEnumerable<(string Weight, string Bias, int ModelDim)> readers)
            {
                var lnW = w[ln + ".w"];
                var lnB = layerNorm ? w[ln + ".b"] : null;
                foreach (var (weightName, biasName, dim) in readers)
                {
                    var weight = w[weightName];
                    var shape = Enumerable.Repeat(1L, weight.Dim).ToArray();
                    shape[dim] = -1;
                    if (lnB is not null) Replace(w, biasName, w[biasName] + (weight * lnB.View(shape)).Sum(dim));
                    var scaled = weight * lnW.View(shape);
                    Replace(w, weightName, layerNorm ? scaled - scaled.Mean(dim, keepDim: true) : scaled);
                }
                w.Remove(ln + ".w", out var tw).Then(tw);
                if (layerNorm) w.Remove(ln + ".b", out var tb).Then(tb);
            }
            for (var l = 0; l < cfg.NLayers; l++)
            {
                var pre = $"blocks.{l}.";
                Fold(pre + "ln1", [(pre + "attn.W_Q", pre + "attn.b_Q", 1), (pre + "attn." + Kv(cfg, "W_K"), pre + "attn." + Kv(cfg, "b_K"), 1),
                    (pre + "attn." + Kv(cfg, "W_V"), pre + "attn." + Kv(cfg, "b_V"), 1)]);
                var mlpReaders = new List<(string, string, int)> { (pre + "mlp.W_in", pre + "mlp.b_in", 0) };
                if (w.ContainsKey(pre + "mlp.W_gate")) mlpReaders.Add((pre + "mlp.W_gate", pre + "mlp.b_gate", 0));
                Fold(pre + "ln2", mlpReaders);
            }
            Fold("ln_final", [("unembed.W_U", "unembed.b_U", 0)]);
        }
        // TransformerLens centres writing weights only for LayerNorm models: RMSNorm does not remove the mean.
        if (p.CenterWritingWeights && layerNorm)
        {
            Replace(w, "embed.W_E", w["embed.W_E"] - w["embed.W_E"].Mean(-1, keepDim: true));
            if (w.ContainsKey("pos_embed.W_pos")) Replace(w, "pos_embed.W_pos", w["pos_embed.W_pos"] - w["pos_embed.W_pos"].Mean(-1, keepDim: true));
            for (var l = 0; l < cfg.NLayers; l++)
            {
                var pre = $"blocks.{l}.";
                Replace(w, pre + "attn.W_O", w[pre + "attn.W_O"] - w[pre + "attn.W_O"].Mean(-1, keepDim: true));
                Replace(w, pre + "attn.b_O", w[pre + "attn.b_O"] - w[pre + "attn.b_O"].Mean());
                Replace(w, pre + "mlp.W_out", w[pre + "mlp.W_out"] - w[pre + "mlp.W_out"].Mean(-1, keepDim: true));
                Replace(w, pre + "mlp.b_out", w[pre + "mlp.b_out"] - w[pre + "mlp.b_out"].Mean());
            }
        }
        // Soft-capped logits are not invariant to a per-position shift, so TransformerLens skips centring the unembedding
        // when the model caps its logits (Gemma 2); so does this.
        if (p.CenterUnembed && cfg.FinalLogitSoftCap == 0)
        {
            Replace(w, "unembed.W_U", w["unembed.W_U"] - w["unembed.W_U"].Mean(-1, keepDim: true));
            Replace(w, "unembed.b_U", w["unembed.b_U"] - w["unembed.b_U"].Mean());
        }
        if (p.FoldValueBiases)
        {
            for (var l = 0; l < cfg.NLayers; l++)
            {
                var pre = $"blocks.{l}.";
                var bV = pre + "attn." + Kv(cfg, "b_V");
                var perQueryHead = RepeatKvHeads(w[bV], cfg);                                   // [head, d_head]
                var folded = Torch.Einsum("hd,hdm->m", perQueryHead, w[pre + "attn.W_O"]);
                Replace(w, pre + "attn.b_O", w[pre + "attn.b_O"] + folded);
                Replace(w, bV, w[bV] * 0);
            }
        }
    }

    /// <summary>Repeats each key/value head's rows for the query heads of its group (torch.repeat_interleave along dim 0).</summary>
    private static Tensor RepeatKvHeads(Tensor perKvHead, TransformerConfig cfg) =>
        HeadGroups.RepeatInterleave(perKvHead, 0, cfg.NHeads / cfg.NKeyValueHeads);

    // ------------------------------------------------------------------ forward

    /// <inheritdoc/>
    protected override Tensor RunModel(Tensor tokens, Tensor? attentionMask)
    {
        ValidateInputs(tokens, attentionMask);
        if (Config.UseHookTokens) tokens = _hookTokens.Fire(tokens);
        var (batch, pos) = (tokens.Size(0), tokens.Size(1));
        var positions = Positions(batch, pos, attentionMask, tokens.Device);
        var resid = _hookEmbed.Fire(W("embed.W_E").IndexSelect(0, tokens.Reshape(-1)).View(batch, pos, Config.DModel));
        if (Config.Positional == PositionalEmbedding.Learned)
            resid = resid + _hookPosEmbed.Fire(W("pos_embed.W_pos").IndexSelect(0, positions.Reshape(-1)).View(batch, pos, Config.DModel));
        for (var l = 0; l < Config.NLayers; l++) resid = Block(l, resid, positions, AttentionMask(pos, attentionMask, Config.WindowFor(l), tokens.Device));
        var normed = Norm(resid, "ln_final", _lnFinalScale, _lnFinalNormalized);
        var logits = Torch.Einsum("bpm,mv->bpv", normed, W("unembed.W_U")) + W("unembed.b_U");
        var cap = Config.FinalLogitSoftCap;
        return cap > 0 ? (logits / cap).Tanh() * cap : logits;
    }

    /// <summary>
    /// True where a query may not attend: the future, keys at or beyond <paramref name="window"/> positions back (when
    /// positive, as HuggingFace's and TransformerLens's local attention), and padded keys. [batch or 1, 1, q, k].
    /// </summary>
    private static Tensor AttentionMask(long pos, Tensor? attentionMask, int window, Device device)
    {
        var query = Torch.Arange(0, pos, 1, ScalarType.Int64, device).Unsqueeze(1);
        var key = Torch.Arange(0, pos, 1, ScalarType.Int64, device).Unsqueeze(0);
        var hidden = query.Lt(key);
        if (window > 0) hidden = hidden.LogicalOr((query - key).Ge(window));
        hidden = hidden.View(1, 1, pos, pos);
        if (attentionMask is null) return hidden;
        return hidden.LogicalOr(attentionMask.Eq(0).View(attentionMask.Size(0), 1, 1, pos));
    }

    /// <summary>
    /// TransformerLens's norms: LayerNorm (or LayerNormPre once folded) fires hook_normalized on the affine output; RMSNorm
    /// (or RMSNormPre) on x / scale, before the weight.
    /// </summary>
    private Tensor Norm(Tensor x, string prefix, HookPoint scaleHook, HookPoint normalizedHook)
    {
        if (Config.Norm == NormKind.LayerNorm)
        {
            var centred = x - x.Mean(-1, keepDim: true);
            var scale = scaleHook.Fire((centred.Pow(2).Mean(-1, keepDim: true) + Config.NormEps).Sqrt());
            var y = centred / scale;
            if (HasWeight(prefix + ".w")) y = y * W(prefix + ".w") + W(prefix + ".b");
            return normalizedHook.Fire(y);
        }
        var rms = scaleHook.Fire((x.Pow(2).Mean(-1, keepDim: true) + Config.NormEps).Sqrt());
        var normalized = normalizedHook.Fire(x / rms);
        return HasWeight(prefix + ".w") ? normalized * W(prefix + ".w") : normalized;
    }

    private Tensor Block(int l, Tensor resid, Tensor positions, Tensor mask)
    {
        var h = _blocks[l];
        var pre = $"blocks.{l}.";
        resid = h.ResidPre.Fire(resid);
        var ungroup = Config.UngroupGroupedQueryAttention;
        var kvHeadsAtHooks = ungroup ? Config.NHeads : Config.NKeyValueHeads;

        Tensor qIn, kIn, vIn;
        if (Config.UseSplitQkvInput || Config.UseAttnIn)
        {
            Tensor PerHead(int heads) => resid.Unsqueeze(2).Expand(-1, -1, heads, -1).Clone();
            if (Config.UseSplitQkvInput)
            {
                qIn = h.QInput.Fire(PerHead(Config.NHeads));
                kIn = h.KInput.Fire(PerHead(kvHeadsAtHooks));
                vIn = h.VInput.Fire(PerHead(kvHeadsAtHooks));
            }
            else
            {
                qIn = kIn = vIn = h.AttnIn.Fire(PerHead(Config.NHeads));
            }
        }
        else
        {
            qIn = kIn = vIn = resid;
        }
        // As TransformerLens: ln1 is applied to each input separately.
        var xq = Norm(qIn, pre + "ln1", h.Ln1Scale, h.Ln1Normalized);
        var xk = Norm(kIn, pre + "ln1", h.Ln1Scale, h.Ln1Normalized);
        var xv = Norm(vIn, pre + "ln1", h.Ln1Scale, h.Ln1Normalized);
        Tensor KvWeight(string name) => ungroup ? RepeatKvHeads(W(pre + "attn." + Kv(Config, name)), Config) : W(pre + "attn." + Kv(Config, name));
        Tensor Linear(Tensor x, Tensor weight, Tensor bias) => Torch.Einsum(x.Dim == 4 ? "bphm,hmd->bphd" : "bpm,hmd->bphd", x, weight) + bias;
        var q = h.Q.Fire(Linear(xq, W(pre + "attn.W_Q"), W(pre + "attn.b_Q")));
        var k = h.K.Fire(Linear(xk, KvWeight("W_K"), KvWeight("b_K")));
        var v = h.V.Fire(Linear(xv, KvWeight("W_V"), KvWeight("b_V")));
        if (Config.Positional == PositionalEmbedding.Rotary)
        {
            q = h.RotQ.Fire(ApplyRotary(q, positions));
            k = h.RotK.Fire(ApplyRotary(k, positions));
        }
        // Grouped-query attention: each key/value head serves its group of query heads.
        if (k.Size(2) != Config.NHeads)
        {
            k = HeadGroups.RepeatInterleave(k, 2, Config.NHeads / Config.NKeyValueHeads);
            v = HeadGroups.RepeatInterleave(v, 2, Config.NHeads / Config.NKeyValueHeads);
        }
        var scores = Torch.Einsum("bqhd,bkhd->bhqk", q, k) * Config.EffectiveAttentionScale;
        if (Config.AttentionSoftCap > 0) scores = (scores / Config.AttentionSoftCap).Tanh() * Config.AttentionSoftCap;
        scores = h.AttnScores.Fire(scores.MaskedFill(mask, double.NegativeInfinity));
        var computeType = scores.DType is ScalarType.Float16 or ScalarType.BFloat16 ? ScalarType.Float32 : scores.DType;
        var softmax = scores.Softmax(-1, computeType);
        var pattern = h.Pattern.Fire(Torch.Where(softmax.IsNan(), Torch.Zeros([], softmax.DType, softmax.Device), softmax).To(v.DType));
        var z = h.Z.Fire(Torch.Einsum("bkhd,bhqk->bqhd", v, pattern));
        var result = Torch.Einsum("bqhd,hdm->bqhm", z, W(pre + "attn.W_O"));
        if (Config.UseAttnResult) result = h.Result.Fire(result);
        var attn = result.Sum(2) + W(pre + "attn.b_O");
        if (Config.UsePostNorms) attn = Norm(attn, pre + "ln1_post", h.Ln1PostScale, h.Ln1PostNormalized);
        var attnOut = h.AttnOut.Fire(attn);

        Tensor mlpSource, residMid;
        if (Config.ParallelAttnMlp)
        {
            mlpSource = residMid = resid;
        }
        else
        {
            mlpSource = residMid = h.ResidMid.Fire(resid + attnOut);
        }
        if (Config.UseHookMlpIn) mlpSource = h.MlpIn.Fire(mlpSource.Clone());
        var x = Norm(mlpSource, pre + "ln2", h.Ln2Scale, h.Ln2Normalized);
        Tensor post;
        if (Config.Mlp == MlpKind.Gated)
        {
            // HuggingFace's gated MLP: act(x W_gate + b_gate) ∘ (x W_in + b_in). (TransformerLens adds b_in after the product;
            // the two agree for every checkpoint TransformerLens loads, whose b_in is zero.)
            var gate = Torch.Einsum("bpm,mf->bpf", x, W(pre + "mlp.W_gate"));
            if (HasWeight(pre + "mlp.b_gate")) gate = gate + W(pre + "mlp.b_gate");
            var preAct = h.MlpPre.Fire(gate);
            var preLinear = h.MlpPreLinear.Fire(Torch.Einsum("bpm,mf->bpf", x, W(pre + "mlp.W_in")) + W(pre + "mlp.b_in"));
            post = h.MlpPost.Fire(Activate(preAct) * preLinear);
        }
        else
        {
            var preAct = h.MlpPre.Fire(Torch.Einsum("bpm,mf->bpf", x, W(pre + "mlp.W_in")) + W(pre + "mlp.b_in"));
            post = h.MlpPost.Fire(Activate(preAct));
        }
        var mlp = Torch.Einsum("bpf,fm->bpm", post, W(pre + "mlp.W_out")) + W(pre + "mlp.b_out");
        if (Config.UsePostNorms) mlp = Norm(mlp, pre + "ln2_post", h.Ln2PostScale, h.Ln2PostNormalized);
        var mlpOut = h.MlpOut.Fire(mlp);
        return h.ResidPost.Fire(Config.ParallelAttnMlp ? resid + attnOut + mlpOut : residMid + mlpOut);
    }

    private Tensor Activate(Tensor x) => Config.ActFn switch
    {
        ActivationFunction.Gelu => x.Gelu(),
        ActivationFunction.GeluNew => GeluNew(x),
        ActivationFunction.Relu => x.Relu(),
        _ => x * x.Sigmoid(),
    };

    /// <summary>GPT-2's gelu_new written out: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).</summary>
    private static Tensor GeluNew(Tensor x) => 0.5 * x * (1.0 + (Math.Sqrt(2.0 / Math.PI) * (x + 0.044715 * x.Pow(3))).Tanh());

    /// <summary>
    /// Rotate-half rotary embeddings written out (narrow, negate, concatenate, multiply, add) from the model's angle table
    /// (<see cref="RotaryTables"/>: the frequencies are part of what the config means, shared with the bridge).
    /// </summary>
    private Tensor ApplyRotary(Tensor x, Tensor positions)
    {
        var (batch, pos) = (positions.Size(0), positions.Size(1));
        var table = RotaryTables.Table(Config, positions, shared: false).View(batch, pos, 1, 2, -1);  // [b, p, 1, 2, half]
        var half = table.Size(4);
        var rot = 2 * half;
        var (c, s) = (table.Select(3, 0).To(x.DType), table.Select(3, 1).To(x.DType));
        var (cos, sin) = (Torch.Cat([c, c], -1), Torch.Cat([s, s], -1));
        var xr = x.Narrow(3, 0, rot);
        var rotated = Torch.Cat([-xr.Narrow(3, half, half), xr.Narrow(3, 0, half)], 3);
        var applied = xr * cos + rotated * sin;
        return rot == x.Size(3) ? applied : Torch.Cat([applied, x.Narrow(3, rot, x.Size(3) - rot)], 3);
    }

    /// <summary>Releases the weights; the model is unusable afterwards.</summary>
    public override void Dispose()
    {
        IsDisposed = true;
        foreach (var t in _weights.Values) t.Dispose();
        _weights.Clear();
    }
}

internal static class DisposeExtensions
{
    /// <summary>Disposes a tensor removed from a dictionary (used as <c>dict.Remove(k, out var t).Then(t)</c>).</summary>
    public static void Then(this bool removed, Tensor? tensor)
    {
        if (removed) tensor?.Dispose();
    }
}
