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

    private HookedTransformer(TransformerConfig config, Dictionary<string, Tensor> weights, WeightProcessing processing) : base(config)
    {
        _weights = weights;
        Processing = processing;
        // A tied model stays tied (W_U is W_Eᵀ, one leaf), so optimizer steps match the bridge's. Processing
        // changes W_U on its own, which unties it, as in TransformerLens.
        TiedEmbeddings = config.TiedEmbeddings && !processing.Any;
        if (TiedEmbeddings) _weights.Remove("unembed.W_U", out var untied).Then(untied);
    }

    /// <summary>True when W_U is the transposed W_E leaf rather than a weight of its own.</summary>
    public bool TiedEmbeddings { get; }

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
        var dtype = bridge.Parameters()[0].DType;
        var device = bridge.Parameters()[0].Device;
        foreach (var name in weights.Keys.ToList())
        {
            var converted = weights[name].To(device, dtype, copy: true).DetachFromScope();
            weights[name].Dispose();
            converted.RequiresGrad = !buffers.Contains(name);
            weights[name] = converted;
        }
        return new HookedTransformer(bridge.Config.Clone(), weights, processing);
    }

    /// <summary>Loads a HuggingFace model directory and converts it (see <see cref="FromBridge"/>).</summary>
    public static HookedTransformer FromDirectory(string modelDirectory, BridgeOptions? options = null, WeightProcessing? processing = null)
    {
        using var bridge = TransformerBridge.Load(modelDirectory, options);
        return FromBridge(bridge, processing);
    }

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

    /// <summary>Every stored weight by TransformerLens name, buffers included (TransformerLens's state dict).</summary>
    public IReadOnlyList<(string Name, Tensor Weight)> NamedWeights() => ThrowIfDisposed(_weights).Select(p => (p.Key, p.Value)).ToList();

    /// <summary>One weight by TransformerLens name (with tied embeddings, <c>unembed.W_U</c> is a transposed view of <c>embed.W_E</c>; dispose it).</summary>
    public Tensor W(string name)
    {
        ThrowIfDisposed();
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

    private static void Process(Dictionary<string, Tensor> w, TransformerConfig cfg, WeightProcessing p)
    {
        using var scope = Torch.NewScope();
        if (p.FoldLn)
        {
            for (var l = 0; l < cfg.NLayers; l++)
            {
                var pre = $"blocks.{l}.";
                var (lnW, lnB) = (w[pre + "ln1.w"], w[pre + "ln1.b"]);
                foreach (var x in new[] { "Q", "K", "V" })
                {
                    var weight = w[pre + $"attn.W_{x}"];                                   // [head, d_model, d_head]
                    Replace(w, pre + $"attn.b_{x}", w[pre + $"attn.b_{x}"] + (weight * lnB.View(1, -1, 1)).Sum(-2));
                    var scaled = weight * lnW.View(1, -1, 1);
                    Replace(w, pre + $"attn.W_{x}", scaled - scaled.Mean(-2, keepDim: true));
                }
                var (ln2W, ln2B, wIn) = (w[pre + "ln2.w"], w[pre + "ln2.b"], w[pre + "mlp.W_in"]);  // W_in [d_model, d_mlp]
                Replace(w, pre + "mlp.b_in", w[pre + "mlp.b_in"] + (wIn * ln2B.View(-1, 1)).Sum(-2));
                var scaledIn = wIn * ln2W.View(-1, 1);
                Replace(w, pre + "mlp.W_in", scaledIn - scaledIn.Mean(-2, keepDim: true));
                foreach (var n in new[] { "ln1.w", "ln1.b", "ln2.w", "ln2.b" }) w.Remove(pre + n, out var t).Then(t);
            }
            var (lnfW, lnfB, wU) = (w["ln_final.w"], w["ln_final.b"], w["unembed.W_U"]);  // W_U [d_model, vocab]
            Replace(w, "unembed.b_U", w["unembed.b_U"] + (wU * lnfB.View(-1, 1)).Sum(-2));
            var scaledU = wU * lnfW.View(-1, 1);
            Replace(w, "unembed.W_U", scaledU - scaledU.Mean(-2, keepDim: true));
            foreach (var n in new[] { "ln_final.w", "ln_final.b" }) w.Remove(n, out var t).Then(t);
        }
        if (p.CenterWritingWeights)
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
        if (p.CenterUnembed)
        {
            Replace(w, "unembed.W_U", w["unembed.W_U"] - w["unembed.W_U"].Mean(-1, keepDim: true));
            Replace(w, "unembed.b_U", w["unembed.b_U"] - w["unembed.b_U"].Mean());
        }
        if (p.FoldValueBiases)
        {
            for (var l = 0; l < cfg.NLayers; l++)
            {
                var pre = $"blocks.{l}.";
                var folded = Torch.Einsum("hd,hdm->m", w[pre + "attn.b_V"], w[pre + "attn.W_O"]);
                Replace(w, pre + "attn.b_O", w[pre + "attn.b_O"] + folded);
                Replace(w, pre + "attn.b_V", w[pre + "attn.b_V"] * 0);
            }
        }
    }

    // ------------------------------------------------------------------ forward

    /// <inheritdoc/>
    protected override Tensor RunModel(Tensor tokens, Tensor? attentionMask)
    {
        ValidateInputs(tokens, attentionMask);
        if (Config.UseHookTokens) tokens = _hookTokens.Fire(tokens);
        var (batch, pos) = (tokens.Size(0), tokens.Size(1));
        var positions = Positions(batch, pos, attentionMask);
        var resid = _hookEmbed.Fire(W("embed.W_E").IndexSelect(0, tokens.Reshape(-1)).View(batch, pos, Config.DModel));
        if (Config.Positional == PositionalEmbedding.Learned)
            resid = resid + _hookPosEmbed.Fire(W("pos_embed.W_pos").IndexSelect(0, positions.Reshape(-1)).View(batch, pos, Config.DModel));
        var mask = AttentionMask(pos, attentionMask);
        for (var l = 0; l < Config.NLayers; l++) resid = Block(l, resid, positions, mask);
        var normed = Norm(resid, "ln_final", _lnFinalScale, _lnFinalNormalized);
        return Torch.Einsum("bpm,mv->bpv", normed, W("unembed.W_U")) + W("unembed.b_U");
    }

    /// <summary>True where a query may not attend: the future, and padded keys. [batch or 1, 1, q, k].</summary>
    private static Tensor AttentionMask(long pos, Tensor? attentionMask)
    {
        var future = Torch.Arange(pos).Unsqueeze(1).Lt(Torch.Arange(pos).Unsqueeze(0)).View(1, 1, pos, pos);
        if (attentionMask is null) return future;
        return future.LogicalOr(attentionMask.Eq(0).View(attentionMask.Size(0), 1, 1, pos));
    }

    /// <summary>TransformerLens's LayerNorm (or LayerNormPre once folded): hook_normalized fires on the output.</summary>
    private Tensor Norm(Tensor x, string prefix, HookPoint scaleHook, HookPoint normalizedHook)
    {
        var centred = x - x.Mean(-1, keepDim: true);
        var scale = scaleHook.Fire((centred.Pow(2).Mean(-1, keepDim: true) + Config.NormEps).Sqrt());
        var y = centred / scale;
        if (HasWeight(prefix + ".w")) y = y * W(prefix + ".w") + W(prefix + ".b");
        return normalizedHook.Fire(y);
    }

    private Tensor Block(int l, Tensor resid, Tensor positions, Tensor mask)
    {
        var h = _blocks[l];
        var pre = $"blocks.{l}.";
        resid = h.ResidPre.Fire(resid);

        Tensor qIn, kIn, vIn;
        if (Config.UseSplitQkvInput || Config.UseAttnIn)
        {
            var perHead = resid.Unsqueeze(2).Expand(-1, -1, Config.NHeads, -1);
            if (Config.UseSplitQkvInput)
            {
                qIn = h.QInput.Fire(perHead.Clone());
                kIn = h.KInput.Fire(perHead.Clone());
                vIn = h.VInput.Fire(perHead.Clone());
            }
            else
            {
                qIn = kIn = vIn = h.AttnIn.Fire(perHead.Clone());
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
        var equation = xq.Dim == 4 ? "bphm,hmd->bphd" : "bpm,hmd->bphd";
        var q = h.Q.Fire(Torch.Einsum(equation, xq, W(pre + "attn.W_Q")) + W(pre + "attn.b_Q"));
        var k = h.K.Fire(Torch.Einsum(equation, xk, W(pre + "attn.W_K")) + W(pre + "attn.b_K"));
        var v = h.V.Fire(Torch.Einsum(equation, xv, W(pre + "attn.W_V")) + W(pre + "attn.b_V"));
        if (Config.Positional == PositionalEmbedding.Rotary)
        {
            q = h.RotQ.Fire(ApplyRotary(q, positions));
            k = h.RotK.Fire(ApplyRotary(k, positions));
        }
        var scores = h.AttnScores.Fire((Torch.Einsum("bqhd,bkhd->bhqk", q, k) * Config.EffectiveAttentionScale).MaskedFill(mask, double.NegativeInfinity));
        var computeType = scores.DType is ScalarType.Float16 or ScalarType.BFloat16 ? ScalarType.Float32 : scores.DType;
        var softmax = scores.Softmax(-1, computeType);
        var pattern = h.Pattern.Fire(Torch.Where(softmax.IsNan(), Torch.Zeros([], softmax.DType), softmax).To(v.DType));
        var z = h.Z.Fire(Torch.Einsum("bkhd,bhqk->bqhd", v, pattern));
        var result = Torch.Einsum("bqhd,hdm->bqhm", z, W(pre + "attn.W_O"));
        if (Config.UseAttnResult) result = h.Result.Fire(result);
        var attnOut = h.AttnOut.Fire(result.Sum(2) + W(pre + "attn.b_O"));

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
        var preAct = h.MlpPre.Fire(Torch.Einsum("bpm,mf->bpf", x, W(pre + "mlp.W_in")) + W(pre + "mlp.b_in"));
        var post = h.MlpPost.Fire(Config.ActFn switch
        {
            ActivationFunction.Gelu => preAct.Gelu(),
            ActivationFunction.GeluNew => GeluNew(preAct),
            ActivationFunction.Relu => preAct.Relu(),
            _ => preAct * preAct.Sigmoid(),
        });
        var mlpOut = h.MlpOut.Fire(Torch.Einsum("bpf,fm->bpm", post, W(pre + "mlp.W_out")) + W(pre + "mlp.b_out"));
        return h.ResidPost.Fire(Config.ParallelAttnMlp ? resid + attnOut + mlpOut : residMid + mlpOut);
    }

    /// <summary>GPT-2's gelu_new written out: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).</summary>
    private static Tensor GeluNew(Tensor x) => 0.5 * x * (1.0 + (Math.Sqrt(2.0 / Math.PI) * (x + 0.044715 * x.Pow(3))).Tanh());

    /// <summary>Rotate-half rotary embeddings from sin/cos tables built here, at the given positions.</summary>
    private Tensor ApplyRotary(Tensor x, Tensor positions)
    {
        var rot = Config.RotaryDim;
        var half = rot / 2;
        var freqs = Enumerable.Range(0, half).Select(i => Math.Pow(Config.RotaryBase, -2.0 * i / rot)).ToArray();
        var angles = positions.To(ScalarType.Float64).Unsqueeze(-1) * Torch.FromArray(freqs);   // [b, p, half]
        var both = Torch.Cat([angles, angles], -1).Unsqueeze(2);                                 // [b, p, 1, rot]
        var (cos, sin) = (both.Cos().To(x.DType), both.Sin().To(x.DType));
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
