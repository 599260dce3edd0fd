using SharpLens.Adapters;

namespace SharpLens;

public sealed partial class TransformerBridge
{
    /// <summary>The forward pass; every tensor it creates lands in the caller's scope.</summary>
    protected override Tensor RunModel(Tensor tokens, Tensor? attentionMask)
    {
        ValidateInputs(tokens, attentionMask);
        if (Config.UseHookTokens) tokens = _hookTokens.Fire(tokens);
        var (batch, pos) = (tokens.Size(0), tokens.Size(1));
        var positions = Positions(batch, pos, attentionMask);

        var embed = _hookEmbed.Fire(Parameter(_spec.Embed).IndexSelect(0, tokens.Reshape(-1)).View(batch, pos, Config.DModel));
        var resid = embed;
        if (_spec.PosEmbed is { } posName)
        {
            var posEmbed = _hookPosEmbed.Fire(Parameter(posName).IndexSelect(0, positions.Reshape(-1)).View(batch, pos, Config.DModel));
            resid = embed + posEmbed;
        }

        for (var i = 0; i < Config.NLayers; i++)
            resid = RunBlock(i, resid, positions, attentionMask);

        var normed = LayerNorm(resid, _spec.LnFinal, _lnFinalScale, _lnFinalNormalized);
        var logits = normed.Matmul(Parameter(_spec.Unembed).Transpose(0, 1));
        if (_spec.UnembedBias is { } ub) logits = logits + Parameter(ub);
        return logits;
    }

    /// <summary>
    /// TransformerLens's LayerNorm: centre, scale (fires <c>hook_scale</c>), divide, apply weight and bias,
    /// then fire <c>hook_normalized</c> on the affine result, exactly where TransformerLens fires it.
    /// </summary>
    private Tensor LayerNorm(Tensor x, NormSpec spec, HookPoint scaleHook, HookPoint normalizedHook)
    {
        var centred = x - x.Mean(-1, keepDim: true);
        var scale = scaleHook.Fire((centred.Square().Mean(-1, keepDim: true) + Config.NormEps).Sqrt());
        var y = centred / scale * Parameter(spec.Weight);
        if (spec.Bias is not null) y = y + Parameter(spec.Bias);
        return normalizedHook.Fire(y);
    }

    private Tensor Linear(Tensor x, LinearSpec spec)
    {
        var w = Parameter(spec.Weight);
        var y = x.Matmul(spec.Layout == LinearLayout.InOut ? w : w.Transpose(0, 1));
        return spec.Bias is null ? y : y + Parameter(spec.Bias);
    }

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
        resid = h.ResidPre.Fire(resid);

        var attnOut = h.AttnOut.Fire(Attention(i, resid, positions, attentionMask));

        Tensor residMid, mlpSource;
        if (Config.ParallelAttnMlp)
        {
            residMid = resid;
            mlpSource = resid;
        }
        else
        {
            residMid = h.ResidMid.Fire(resid + attnOut);
            mlpSource = residMid;
        }
        var mlpIn = Config.UseHookMlpIn ? h.MlpIn.Fire(mlpSource.Clone()) : mlpSource;
        var normed = LayerNorm(mlpIn, spec.Ln2, h.Ln2Scale, h.Ln2Normalized);
        var pre = h.MlpPre.Fire(Linear(normed, spec.Mlp.In));
        var post = h.MlpPost.Fire(Activation(pre));
        var mlpOut = h.MlpOut.Fire(Linear(post, spec.Mlp.Out));

        var residPost = Config.ParallelAttnMlp ? resid + attnOut + mlpOut : residMid + mlpOut;
        return h.ResidPost.Fire(residPost);
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
                qIn = h.QInput.Fire(perHead.Clone());
                kIn = h.KInput.Fire(perHead.Clone());
                vIn = h.VInput.Fire(perHead.Clone());
            }
            else
            {
                qIn = kIn = vIn = h.AttnIn.Fire(perHead.Clone());
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
            // its own. Reproduce that whenever someone is listening; the result is the same as below.
            var qkv = spec.Attention.Qkv;
            Tensor Normed() => LayerNorm(resid, spec.Ln1, h.Ln1Scale, h.Ln1Normalized);
            (Tensor, Tensor, Tensor) Split(Tensor x) => TransformerOps.QkvSplit(spec.Attention.QkvLayout, x, Parameter(qkv.Weight),
                qkv.Bias is null ? null : Parameter(qkv.Bias), Config.NHeads);
            q = Split(Normed()).Item1;
            k = Split(Normed()).Item2;
            v = Split(Normed()).Item3;
        }
        else
        {
            var normed = LayerNorm(resid, spec.Ln1, h.Ln1Scale, h.Ln1Normalized);
            var qkv = spec.Attention.Qkv;
            (q, k, v) = TransformerOps.QkvSplit(spec.Attention.QkvLayout, normed, Parameter(qkv.Weight),
                qkv.Bias is null ? null : Parameter(qkv.Bias), Config.NHeads);
        }
        q = h.Q.Fire(q);
        k = h.K.Fire(k);
        v = h.V.Fire(v);
        if (Config.Positional == PositionalEmbedding.Rotary)
        {
            q = h.RotQ.Fire(TransformerOps.Rotary(q, positions, Config.RotaryDim, Config.RotaryBase));
            k = h.RotK.Fire(TransformerOps.Rotary(k, positions, Config.RotaryDim, Config.RotaryBase));
        }

        var scale = Config.EffectiveAttentionScale;
        Tensor z;
        if (h.AttnScores.HasHooks || h.Pattern.HasHooks)
        {
            var scores = h.AttnScores.Fire(TransformerOps.AttentionScores(q, k, attentionMask, scale));
            var pattern = h.Pattern.Fire(TransformerOps.AttentionPattern(scores));
            z = TransformerOps.AttentionApply(pattern, v);
        }
        else
        {
            z = TransformerOps.Attention(q, k, v, attentionMask, scale);
        }
        z = h.Z.Fire(z);

        var outSpec = spec.Attention.Out;
        if (Config.UseAttnResult)
        {
            var wO = OutputWeightPerHead(outSpec);  // [head, d_head, d_model]
            var result = h.Result.Fire(Torch.Einsum("bphd,hdm->bphm", z, wO));
            var summed = result.Sum(2);
            return outSpec.Bias is null ? summed : summed + Parameter(outSpec.Bias);
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
        var w = Parameter(attention.Qkv.Weight);
        var b = attention.Qkv.Bias is null ? null : Parameter(attention.Qkv.Bias);
        long nh = Config.NHeads, dh = Config.DHead, m = Config.DModel;
        Tensor[] ws, bs;
        if (attention.QkvLayout == QkvLayout.Gpt2Conv1D)
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
        var w = Parameter(spec.Weight);
        var inOut = spec.Layout == LinearLayout.InOut ? w : w.Transpose(0, 1);  // [head * d_head, d_model]
        return inOut.View(Config.NHeads, Config.DHead, Config.DModel);
    }
}
