using SharpLens.Adapters;
using SharpLens.Tensors;

namespace SharpLens;

public sealed partial class TransformerBridge
{
    /// <summary>The forward pass; every tensor it creates lands in the caller's scope.</summary>
    protected override Tensor RunModel(Tensor tokens, Tensor? attentionMask)
    {
        ValidateInputs(tokens, attentionMask);
        _computeCasts = NeedsFloat32Compute ? new Dictionary<string, Tensor>() : null;
        try
        {
            var logits = RunModelCore(tokens, attentionMask);
            return _computeCasts is null ? logits : logits.To(Config.DType);
        }
        finally
        {
            _computeCasts = null;
        }
    }

    /// <summary>
    /// libtorch 1.13 has no CPU kernels for float16 sqrt or matmul, so a float16 model on CPU computes in float32
    /// between hook points and rounds every activation to float16 where it is hooked: hooks and caches see float16,
    /// as they would on a GPU that stores half activations and accumulates in float32.
    /// </summary>
    private bool NeedsFloat32Compute => Config.DType == ScalarType.Float16 && Config.Device.Type == DeviceType.CPU;

    private Dictionary<string, Tensor>? _computeCasts;

    /// <summary>A parameter in the dtype the forward pass computes in (a differentiable cast for float16 on CPU).</summary>
    private Tensor P(string hfName)
    {
        var p = Parameter(hfName);
        if (_computeCasts is null) return p;
        if (!_computeCasts.TryGetValue(hfName, out var cast)) _computeCasts[hfName] = cast = p.To(ScalarType.Float32);
        return cast;
    }

    /// <summary>Fires a hook point, in the model's dtype when the forward pass computes in float32.</summary>
    private Tensor Fire(HookPoint hookPoint, Tensor activation) => Fire(hookPoint, activation, out _);

    private Tensor Fire(HookPoint hookPoint, Tensor activation, out bool replaced)
    {
        if (_computeCasts is null || !activation.DType.IsFloatingPoint()) return hookPoint.Fire(activation, out replaced);
        return hookPoint.Fire(activation.To(Config.DType), out replaced).To(ScalarType.Float32);
    }

    private Tensor RunModelCore(Tensor tokens, Tensor? attentionMask)
    {
        if (Config.UseHookTokens) tokens = Fire(_hookTokens, tokens);
        var (batch, pos) = (tokens.Size(0), tokens.Size(1));
        var positions = Positions(batch, pos, attentionMask);

        var embed = Fire(_hookEmbed, P(_spec.Embed).IndexSelect(0, tokens.Reshape(-1)).View(batch, pos, Config.DModel));
        var resid = embed;
        if (_spec.PosEmbed is { } posName)
        {
            var posEmbed = Fire(_hookPosEmbed, P(posName).IndexSelect(0, positions.Reshape(-1)).View(batch, pos, Config.DModel));
            resid = embed + posEmbed;
        }

        for (var i = 0; i < Config.NLayers; i++)
            resid = RunBlock(i, resid, positions, attentionMask);

        var normed = LayerNorm(resid, _spec.LnFinal, _lnFinalScale, _lnFinalNormalized);
        // The unembedding takes the linear op whose backward skips zero gradient rows: a loss on the last
        // position leaves all but batch rows of the [batch * pos, vocab] logit gradient zero.
        return Functional.Linear(normed, P(_spec.Unembed), _spec.UnembedBias is { } ub ? P(ub) : null, LinearWeightLayout.OutIn);
    }

    /// <summary>
    /// TransformerLens's LayerNorm: centre, scale (fires <c>hook_scale</c>), divide, apply weight and bias,
    /// then fire <c>hook_normalized</c> on the affine result, exactly where TransformerLens fires it.
    /// </summary>
    private Tensor LayerNorm(Tensor x, NormSpec spec, HookPoint scaleHook, HookPoint normalizedHook)
    {
        // Two native row passes with the scale between them, where the hook can read or replace it.
        var (centred, scale) = TransformerOps.LayerNormCentreScale(x, Config.NormEps);
        scale = scaleHook.Fire(scale);
        var y = TransformerOps.LayerNormApplyScale(centred, scale, P(spec.Weight), spec.Bias is null ? null : P(spec.Bias));
        return normalizedHook.Fire(y);
    }

    private Tensor Linear(Tensor x, LinearSpec spec) =>
        Functional.Linear(x, P(spec.Weight), spec.Bias is null ? null : P(spec.Bias), spec.Layout);

    private Tensor Activation(Tensor x) => Config.ActFn switch
    {
        ActivationFunction.Gelu => x.Gelu(),
        ActivationFunction.GeluNew => x.Gelu(tanhApproximation: true),
        ActivationFunction.Relu => x.Relu(),
        ActivationFunction.Silu => x.Silu(),
        _ => throw new InvalidOperationException($"unknown activation {Config.ActFn}"),
    };

    private Tensor RunBlock(int i, Tensor resid, Tensor positions, Tensor? attentionMask)
    {
        var spec = _spec.Blocks[i];
        var h = _blocks[i];
        resid = Fire(h.ResidPre, resid);

        var attnOut = Fire(h.AttnOut, Attention(i, resid, positions, attentionMask));

        Tensor residMid, mlpSource;
        if (Config.ParallelAttnMlp)
        {
            residMid = resid;
            mlpSource = resid;
        }
        else
        {
            residMid = Fire(h.ResidMid, resid + attnOut);
            mlpSource = residMid;
        }
        var mlpIn = Config.UseHookMlpIn ? Fire(h.MlpIn, mlpSource.Clone()) : mlpSource;
        var normed = LayerNorm(mlpIn, spec.Ln2, h.Ln2Scale, h.Ln2Normalized);
        var pre = Fire(h.MlpPre, Linear(normed, spec.Mlp.In));
        var post = Fire(h.MlpPost, Activation(pre));
        var mlpOut = Fire(h.MlpOut, Linear(post, spec.Mlp.Out));

        var residPost = Config.ParallelAttnMlp ? resid + attnOut + mlpOut : residMid + mlpOut;
        return Fire(h.ResidPost, residPost);
    }

    private Tensor Attention(int i, Tensor resid, Tensor positions, Tensor? attentionMask)
    {
        var spec = _spec.Blocks[i];
        var h = _blocks[i];
        Tensor q, k, v;
        if (Config.UseSplitQkvInput || Config.UseAttnIn)
        {
            // One input per head (and per q/k/v), as TransformerLens: repeat resid_pre over heads, hook, normalise, project per head.
            var perHead = resid.Unsqueeze(2).Expand(-1, -1, Config.NHeads, -1);
            Tensor qIn, kIn, vIn;
            if (Config.UseSplitQkvInput)
            {
                qIn = Fire(h.QInput, perHead.Clone());
                kIn = Fire(h.KInput, perHead.Clone());
                vIn = Fire(h.VInput, perHead.Clone());
            }
            else
            {
                qIn = kIn = vIn = Fire(h.AttnIn, perHead.Clone());
            }
            var (wq, wk, wv, bq, bk, bv) = SplitQkvWeights(spec.Attention);
            q = Project(LayerNorm(qIn, spec.Ln1, h.Ln1Scale, h.Ln1Normalized), wq, bq);
            k = Project(LayerNorm(kIn, spec.Ln1, h.Ln1Scale, h.Ln1Normalized), wk, bk);
            v = Project(LayerNorm(vIn, spec.Ln1, h.Ln1Scale, h.Ln1Normalized), wv, bv);
        }
        else if (h.Ln1Scale.HasAnyHooks || h.Ln1Normalized.HasAnyHooks)
        {
            // TransformerLens applies ln1 to the query, key and value inputs separately, so ln1's hooks fire
            // three times per block (q, k, v order) and a backward hook there sees each path's gradient on
            // its own. Reproduce that whenever someone is listening; the result is the same as below. One native
            // op projects each copy through its own part of the fused weight.
            var qkv = spec.Attention.Qkv;
            var xq = LayerNorm(resid, spec.Ln1, h.Ln1Scale, h.Ln1Normalized);
            var xk = LayerNorm(resid, spec.Ln1, h.Ln1Scale, h.Ln1Normalized);
            var xv = LayerNorm(resid, spec.Ln1, h.Ln1Scale, h.Ln1Normalized);
            (q, k, v) = TransformerOps.QkvProject(spec.Attention.QkvLayout, xq, xk, xv, P(qkv.Weight), qkv.Bias is null ? null : P(qkv.Bias), Config.NHeads);
        }
        else
        {
            var normed = LayerNorm(resid, spec.Ln1, h.Ln1Scale, h.Ln1Normalized);
            var qkv = spec.Attention.Qkv;
            (q, k, v) = TransformerOps.QkvSplit(spec.Attention.QkvLayout, normed, P(qkv.Weight),
                qkv.Bias is null ? null : P(qkv.Bias), Config.NHeads);
        }
        q = Fire(h.Q, q);
        k = Fire(h.K, k);
        v = Fire(h.V, v);
        if (Config.Positional == PositionalEmbedding.Rotary)
        {
            q = Fire(h.RotQ, TransformerOps.Rotary(q, positions, Config.RotaryDim, Config.RotaryBase));
            k = Fire(h.RotK, TransformerOps.Rotary(k, positions, Config.RotaryDim, Config.RotaryBase));
        }

        var scale = Config.EffectiveAttentionScale;
        Tensor z;
        if (h.AttnScores.HasAnyHooks || h.Pattern.HasAnyHooks)
        {
            // Materialised for the hooks. While no forward hook replaces scores or pattern, the pattern is zero above
            // the causal diagonal and the weighted sum skips those tiles; a replaced one is used in full.
            Tensor pattern;
            bool scoresReplaced = false, patternReplaced;
            if (h.AttnScores.HasAnyHooks)
            {
                var scores = Fire(h.AttnScores, TransformerOps.AttentionScores(q, k, attentionMask, scale), out scoresReplaced);
                pattern = Fire(h.Pattern, TransformerOps.AttentionPattern(scores), out patternReplaced);
            }
            else
            {
                pattern = Fire(h.Pattern, TransformerOps.AttentionCausalPattern(q, k, attentionMask, scale), out patternReplaced);
            }
            z = scoresReplaced || patternReplaced ? TransformerOps.AttentionApply(pattern, v) : TransformerOps.AttentionApplyCausal(pattern, v);
        }
        else
        {
            z = TransformerOps.Attention(q, k, v, attentionMask, scale);
        }
        z = Fire(h.Z, z);

        var outSpec = spec.Attention.Out;
        if (Config.UseAttnResult)
        {
            var wO = OutputWeightPerHead(outSpec);  // [head, d_head, d_model]
            var result = Fire(h.Result, Torch.Einsum("bphd,hdm->bphm", z, wO));
            var summed = result.Sum(2);
            return outSpec.Bias is null ? summed : summed + P(outSpec.Bias);
        }
        return Linear(z.Reshape(z.Size(0), z.Size(1), Config.DModel), outSpec);
    }

    private Tensor Project(Tensor perHeadInput, Tensor w, Tensor? b)
    {
        var y = Torch.Einsum("bphm,hmd->bphd", perHeadInput, w);
        return b is null ? y : y + b;
    }

    /// <summary>The TL-layout q/k/v weights [head, d_model, d_head] and biases [head, d_head], as views of the fused HF weight.</summary>
    private (Tensor Wq, Tensor Wk, Tensor Wv, Tensor? Bq, Tensor? Bk, Tensor? Bv) SplitQkvWeights(AttentionSpec attention)
    {
        var w = P(attention.Qkv.Weight);
        var b = attention.Qkv.Bias is null ? null : P(attention.Qkv.Bias);
        long nh = Config.NHeads, dh = Config.DHead, m = Config.DModel;
        Tensor[] ws, bs;
        if (attention.QkvLayout == QkvLayout.PartMajorInOut)
        {
            ws = w.View(m, 3, nh, dh).Permute(1, 2, 0, 3).Split(1, 0);   // [3][1, h, m, d]
            bs = b?.View(3, nh, dh).Split(1, 0) ?? [];
        }
        else
        {
            ws = w.View(nh, 3, dh, m).Permute(1, 0, 3, 2).Split(1, 0);
            bs = b?.View(nh, 3, dh).Permute(1, 0, 2).Split(1, 0) ?? [];
        }
        Tensor? Bias(int j) => bs.Length == 0 ? null : bs[j].Squeeze(0);
        return (ws[0].Squeeze(0), ws[1].Squeeze(0), ws[2].Squeeze(0), Bias(0), Bias(1), Bias(2));
    }

    /// <summary>The output projection as [head, d_head, d_model], a view of the HF weight.</summary>
    private Tensor OutputWeightPerHead(LinearSpec spec)
    {
        var w = P(spec.Weight);
        var inOut = spec.Layout == LinearWeightLayout.InOut ? w : w.Transpose(0, 1);  // [head * d_head, d_model]
        return inOut.View(Config.NHeads, Config.DHead, Config.DModel);
    }
}
