using SharpLens.Adapters;
using SharpLens.Components;
using SharpLens.Generation;
using SharpLens.Tensors;

namespace SharpLens;

public sealed partial class TransformerBridge
{
    /// <summary>The forward pass; every tensor it creates lands in the caller's scope.</summary>
    protected override Tensor RunModel(Tensor tokens, Tensor? attentionMask) => RunModel(tokens, attentionMask, null);

    private Tensor RunModel(Tensor tokens, Tensor? attentionMask, KeyValueCache? cache)
    {
        ValidateInputs(tokens, attentionMask, cache?.Length ?? 0);
        if (cache is not null && attentionMask is not null)
            throw new ArgumentException("a key/value cache continues unpadded rows; an attention mask is not supported with it");
        cache?.CheckContinuation(tokens.Size(0), tokens.Size(1), Config.NCtx);
        _computeCasts = NeedsFloat32Compute ? new Dictionary<string, Tensor>() : null;
        _kvCache = cache;
        try
        {
            var logits = RunModelCore(tokens, attentionMask);
            cache?.Advance(tokens.Size(0), tokens.Size(1));
            return _computeCasts is null ? logits : logits.To(Config.DType);
        }
        catch
        {
            cache?.Rollback();  // layers before the failure already appended this pass's positions
            throw;
        }
        finally
        {
            _computeCasts = null;
            _kvCache = null;
        }
    }

    /// <summary>The key/value cache of the forward pass in progress (null for an ordinary pass).</summary>
    private KeyValueCache? _kvCache;

    /// <summary>An empty key/value cache for this model (see <see cref="Forward(Tensor, KeyValueCache)"/>); dispose it.</summary>
    public KeyValueCache NewKeyValueCache()
    {
        ThrowIfDisposed();
        return new KeyValueCache(Config.NLayers);
    }

    /// <summary>
    /// Logits [batch, new, vocab] of the <paramref name="tokens"/> [batch, new] that follow the positions already in
    /// <paramref name="cache"/>, computing only the new positions: their keys and values are appended to the cache and
    /// attention runs over everything cached (TransformerLens's <c>use_past_kv_cache</c>). Hooks fire on the new positions'
    /// activations (scores and pattern [batch, head, new, cached + new]). Rows are unpadded.
    /// </summary>
    public Tensor Forward(Tensor tokens, KeyValueCache cache)
    {
        ThrowIfDisposed();
        ArgumentNullException.ThrowIfNull(cache);
        var outer = DisposeScope.Current;
        using var threads = ThreadsFor(tokens);
        using var scope = Torch.NewScope();
        var logits = RunModel(OnModelDevice(tokens), null, cache);
        return outer is null ? logits.DetachFromScope() : logits.MoveToOuterScope();
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
        var positions = Positions(batch, pos, attentionMask, tokens.Device);
        // The new positions follow the cached ones (an int64 offset: a double scalar would promote the ids to floating point).
        if (_kvCache is { Length: > 0 } kv) positions = positions + Torch.Full([], kv.Length, ScalarType.Int64, tokens.Device);
        // One cos/sin table per forward, shared by every layer (one row per position unless a mask shifts them).
        var rotary = Config.Positional == PositionalEmbedding.Rotary ? RotaryTables.Table(Config, positions, shared: attentionMask is null) : null;

        var embedded = P(_spec.Embed).IndexSelect(0, tokens.Reshape(-1)).View(batch, pos, Config.DModel);
        if (Config.EmbeddingScale != 1) embedded = embedded * ConstantInModelDType(Config.EmbeddingScale, embedded);
        var resid = Fire(_hookEmbed, embedded);
        if (_spec.PosEmbed is { } posName)
        {
            var posEmbed = Fire(_hookPosEmbed, P(posName).IndexSelect(0, positions.Reshape(-1)).View(batch, pos, Config.DModel));
            resid = resid + posEmbed;
        }

        for (var i = 0; i < Config.NLayers; i++)
            resid = RunBlock(i, resid, rotary, attentionMask);

        var normed = Norm(resid, _spec.LnFinal, _lnFinalScale, _lnFinalNormalized);
        // The unembedding takes the linear op whose backward skips zero gradient rows: a loss on the last
        // position leaves all but batch rows of the [batch * pos, vocab] logit gradient zero.
        var logits = Functional.Linear(normed, P(_spec.Unembed), _spec.UnembedBias is { } ub ? P(ub) : null, LinearWeightLayout.OutIn);
        return Config.FinalLogitSoftCap > 0 ? SoftCap(logits, Config.FinalLogitSoftCap) : logits;
    }

    /// <summary>cap · tanh(x / cap) (Gemma 2's final-logit soft-cap).</summary>
    private static Tensor SoftCap(Tensor x, double cap) => x.Div(cap).Tanh().Mul(cap);

    /// <summary>
    /// A constant rounded to the model's dtype, in the dtype <paramref name="like"/> computes in: HuggingFace builds Gemma's
    /// embedding normaliser as a tensor of the hidden states' dtype, so sqrt(3072) is rounded to bfloat16 in a bfloat16 model.
    /// </summary>
    private Tensor ConstantInModelDType(double value, Tensor like)
    {
        var constant = Torch.Scalar(value, Config.DType, like.Device);
        return constant.DType == like.DType ? constant : constant.To(like.DType);
    }

    /// <summary>The normalisation of one norm slot, by kind, with its two hook points.</summary>
    private Tensor Norm(Tensor x, NormSpec spec, HookPoint scaleHook, HookPoint normalizedHook) => spec.Kind switch
    {
        NormKind.LayerNorm => LayerNorm(x, spec, scaleHook, normalizedHook),
        NormKind.RmsNorm or NormKind.RmsNormPlusOne => RmsNorm(x, spec, scaleHook, normalizedHook),
        _ => throw new InvalidOperationException($"unknown norm kind {spec.Kind}"),
    };

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

    /// <summary>
    /// RMSNorm as TransformerLens hooks it: <c>hook_scale</c> on sqrt(mean(x²) + eps), <c>hook_normalized</c> on the normalised
    /// x (before the weight, unlike LayerNorm), then times w (or 1 + w for Gemma's stored w − 1). The arithmetic is
    /// HuggingFace's, step for step: in float32 for half precision and, with <see cref="TransformerConfig.Float32Islands"/>, for
    /// float64 too; x · (1 / scale) (its rsqrt); Llama's weight multiplies after the cast back, Gemma's (1 + w) in float32 before it.
    /// </summary>
    private Tensor RmsNorm(Tensor x, NormSpec spec, HookPoint scaleHook, HookPoint normalizedHook)
    {
        var computeType = x.DType is ScalarType.Float16 or ScalarType.BFloat16 || Config.Float32Islands ? ScalarType.Float32 : x.DType;
        var wide = x.To(computeType);
        if (computeType != x.DType && !scaleHook.HasAnyHooks && !normalizedHook.HasAnyHooks)
        {
            // Nobody listens: HuggingFace's own op sequence, so that the float32 island's backward rounds as HuggingFace's
            // autograd does too (a float64 model's AdamW steps then follow HuggingFace's float64 run to float64 rounding).
            var normedHf = wide * wide.Pow(2).Mean(-1, keepDim: true).Add(Config.NormEps).Rsqrt();
            return spec.Kind == NormKind.RmsNormPlusOne
                ? (normedHf * P(spec.Weight).To(computeType).Add(1)).To(x.DType)
                : P(spec.Weight) * normedHf.To(x.DType);
        }
        var scale = TransformerOps.RmsNormScale(wide, Config.NormEps);
        // Hooks see the model's dtype; a float32 value survives the round trip through float64 exactly.
        scale = scale.DType == x.DType ? Fire(scaleHook, scale) : Fire(scaleHook, scale.To(x.DType)).To(computeType);
        var plusOne = spec.Kind == NormKind.RmsNormPlusOne;
        var weight = P(spec.Weight);
        if (plusOne) weight = weight.To(computeType) + 1;     // Gemma: output * (1 + w.float()), then the cast back
        if (!normalizedHook.HasAnyHooks && (plusOne || computeType == x.DType))
            return TransformerOps.LayerNormApplyScale(wide, scale, weight, null).To(x.DType);  // x · (1 / scale) · w in one pass
        var normalized = TransformerOps.LayerNormApplyScale(wide, scale, null, null).To(x.DType);
        normalized = Fire(normalizedHook, normalized);
        return plusOne ? (normalized.To(computeType) * weight).To(x.DType) : weight * normalized;
    }

    /// <summary>A linear layer (a slice of a fused weight's outputs when the spec says so: a view, so gradients reach the fused leaf).</summary>
    private Tensor Linear(Tensor x, LinearSpec spec)
    {
        var (w, b) = LinearParameters(spec);
        return Functional.Linear(x, w, b, spec.Layout);
    }

    private (Tensor Weight, Tensor? Bias) LinearParameters(LinearSpec spec)
    {
        var w = P(spec.Weight);
        var b = spec.Bias is null ? null : P(spec.Bias);
        if (spec.Slice is not { } s) return (w, b);
        var outDim = spec.Layout == LinearWeightLayout.OutIn ? 0 : 1;
        return (w.Narrow(outDim, s.Offset, s.Length), b?.Narrow(0, s.Offset, s.Length));
    }

    private Tensor Activation(Tensor x) => Config.ActFn switch
    {
        ActivationFunction.Gelu => x.Gelu(),
        ActivationFunction.GeluNew => x.Gelu(tanhApproximation: true),
        ActivationFunction.Relu => x.Relu(),
        ActivationFunction.Silu => x.Silu(),
        _ => throw new InvalidOperationException($"unknown activation {Config.ActFn}"),
    };

    private Tensor RunBlock(int i, Tensor resid, Tensor? rotary, Tensor? attentionMask)
    {
        var spec = _spec.Blocks[i];
        var h = _blocks[i];
        resid = Fire(h.ResidPre, resid);

        var attn = Attention(i, resid, rotary, attentionMask);
        if (spec.Ln1Post is { } ln1Post) attn = Norm(attn, ln1Post, h.Ln1PostScale, h.Ln1PostNormalized);
        var attnOut = Fire(h.AttnOut, attn);

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
        var normed = Norm(mlpIn, spec.Ln2, h.Ln2Scale, h.Ln2Normalized);
        var mlp = Mlp(spec.Mlp, h, normed);
        if (spec.Ln2Post is { } ln2Post) mlp = Norm(mlp, ln2Post, h.Ln2PostScale, h.Ln2PostNormalized);
        var mlpOut = Fire(h.MlpOut, mlp);

        var residPost = Config.ParallelAttnMlp ? resid + attnOut + mlpOut : residMid + mlpOut;
        return Fire(h.ResidPost, residPost);
    }

    /// <summary>The MLP by kind: plain act(x W_in) W_out, or gated (act(x W_gate) ∘ x W_in) W_out with TransformerLens's hook_pre_linear.</summary>
    private Tensor Mlp(MlpSpec spec, BlockHooks h, Tensor x)
    {
        if (spec.Kind == MlpKind.Plain)
        {
            var pre = Fire(h.MlpPre, Linear(x, spec.In));
            return Linear(Fire(h.MlpPost, Activation(pre)), spec.Out);
        }
        var (gate, up) = spec.Fused is { } fused
            ? Parts(Linear(x, fused), spec.Gate!, spec.In)
            : (Linear(x, spec.Gate!), Linear(x, spec.In));
        gate = Fire(h.MlpPre, gate);
        up = Fire(h.MlpPreLinear, up);
        return Linear(Fire(h.MlpPost, Activation(gate) * up), spec.Out);
    }

    /// <summary>q, k, v [batch, pos, heads, d_head] from separate q/k/v linear layers, or one GEMM on the weight they slice.</summary>
    private (Tensor Q, Tensor K, Tensor V) SeparateQkv(Tensor x, SeparateQkvSpec s)
    {
        Tensor q, k, v;
        if (s.Fused is { } fused)
        {
            var y = Linear(x, fused);
            (q, k) = Parts(y, s.Q, s.K);
            v = y.Narrow(-1, s.V.Slice!.Offset, s.V.Slice.Length);
        }
        else (q, k, v) = (Linear(x, s.Q), Linear(x, s.K), Linear(x, s.V));
        return (Heads(q, Config.NHeads), Heads(k, Config.NKeyValueHeads), Heads(v, Config.NKeyValueHeads));
    }

    /// <summary>Two slices' columns of a fused layer's output (views).</summary>
    private static (Tensor, Tensor) Parts(Tensor y, LinearSpec a, LinearSpec b) =>
        (y.Narrow(-1, a.Slice!.Offset, a.Slice.Length), y.Narrow(-1, b.Slice!.Offset, b.Slice.Length));

    /// <summary>Key/value heads as the hooks see them: repeated per query head with <see cref="TransformerConfig.UngroupGroupedQueryAttention"/>.</summary>
    private int KvHeadsAtHooks => Config.UngroupGroupedQueryAttention ? Config.NHeads : Config.NKeyValueHeads;

    /// <summary>Repeats each key/value head for the query heads of its group (torch.repeat_interleave over the head dimension).</summary>
    private Tensor Ungroup(Tensor kv) => HeadGroups.RepeatInterleave(kv, 2, Config.NHeads / Config.NKeyValueHeads);

    private Tensor Attention(int i, Tensor resid, Tensor? rotary, Tensor? attentionMask)
    {
        var spec = _spec.Blocks[i];
        var h = _blocks[i];
        var qkv = spec.Attention.Qkv;
        Tensor q, k, v;
        if (Config.UseSplitQkvInput || Config.UseAttnIn)
        {
            // One input per head (and per q/k/v), as TransformerLens: repeat resid_pre over heads, hook, normalise, project per head.
            Tensor PerHead(int heads) => resid.Unsqueeze(2).Expand(-1, -1, heads, -1).Clone();
            Tensor qIn, kIn, vIn;
            if (Config.UseSplitQkvInput)
            {
                qIn = Fire(h.QInput, PerHead(Config.NHeads));
                kIn = Fire(h.KInput, PerHead(KvHeadsAtHooks));
                vIn = Fire(h.VInput, PerHead(KvHeadsAtHooks));
            }
            else
            {
                if (KvHeadsAtHooks != Config.NHeads)
                    throw new InvalidOperationException("hook_attn_in gives one input per query head; with grouped-query attention turn on " +
                                                        "UngroupGroupedQueryAttention or use UseSplitQkvInput instead");
                qIn = kIn = vIn = Fire(h.AttnIn, PerHead(Config.NHeads));
            }
            var (wq, wk, wv, bq, bk, bv) = QkvWeightsPerHead(qkv);
            if (KvHeadsAtHooks != Config.NKeyValueHeads)
            {
                (wk, wv) = (UngroupWeight(wk), UngroupWeight(wv));
                (bk, bv) = (bk is null ? null : UngroupWeight(bk), bv is null ? null : UngroupWeight(bv));
            }
            q = Project(Norm(qIn, spec.Ln1, h.Ln1Scale, h.Ln1Normalized), wq, bq);
            k = Project(Norm(kIn, spec.Ln1, h.Ln1Scale, h.Ln1Normalized), wk, bk);
            v = Project(Norm(vIn, spec.Ln1, h.Ln1Scale, h.Ln1Normalized), wv, bv);
        }
        else if (h.Ln1Scale.HasAnyHooks || h.Ln1Normalized.HasAnyHooks)
        {
            // TransformerLens applies ln1 to the query, key and value inputs separately, so ln1's hooks fire
            // three times per block (q, k, v order) and a backward hook there sees each path's gradient on
            // its own. Reproduce that whenever someone is listening; the result is the same as below.
            var xq = Norm(resid, spec.Ln1, h.Ln1Scale, h.Ln1Normalized);
            var xk = Norm(resid, spec.Ln1, h.Ln1Scale, h.Ln1Normalized);
            var xv = Norm(resid, spec.Ln1, h.Ln1Scale, h.Ln1Normalized);
            (q, k, v) = qkv switch
            {
                // One native op projects each copy through its own part of the fused weight.
                FusedQkvSpec f => TransformerOps.QkvProject(f.Layout, xq, xk, xv, P(f.Linear.Weight), f.Linear.Bias is null ? null : P(f.Linear.Bias), Config.NHeads),
                SeparateQkvSpec s => (Heads(Linear(xq, s.Q), Config.NHeads), Heads(Linear(xk, s.K), Config.NKeyValueHeads), Heads(Linear(xv, s.V), Config.NKeyValueHeads)),
                _ => throw new InvalidOperationException($"unknown QKV spec {qkv}"),
            };
        }
        else
        {
            var normed = Norm(resid, spec.Ln1, h.Ln1Scale, h.Ln1Normalized);
            (q, k, v) = qkv switch
            {
                FusedQkvSpec f => TransformerOps.QkvSplit(f.Layout, normed, P(f.Linear.Weight), f.Linear.Bias is null ? null : P(f.Linear.Bias), Config.NHeads),
                SeparateQkvSpec s => SeparateQkv(normed, s),
                _ => throw new InvalidOperationException($"unknown QKV spec {qkv}"),
            };
        }
        if (k.Size(2) != KvHeadsAtHooks)
        {
            k = Ungroup(k);
            v = Ungroup(v);
        }
        q = Fire(h.Q, q);
        k = Fire(h.K, k);
        v = Fire(h.V, v);
        if (rotary is not null)
        {
            q = Fire(h.RotQ, TransformerOps.Rotary(q, rotary));
            k = Fire(h.RotK, TransformerOps.Rotary(k, rotary));
        }
        // With a key/value cache the new queries attend over the cached keys too (query i sits at key position
        // cached + i, the attention contract's offset), and the new keys and values join the cache.
        if (_kvCache is { } cache) (k, v) = cache.Append(i, k, v);

        var options = Config.AttentionOptionsFor(i);
        Tensor z;
        if (h.AttnScores.HasAnyHooks || h.Pattern.HasAnyHooks)
        {
            // Materialised for the hooks. While no forward hook replaces scores or pattern, the pattern is zero above
            // the causal diagonal and the weighted sum skips those tiles; a replaced one is used in full.
            Tensor pattern;
            bool scoresReplaced = false, patternReplaced;
            if (h.AttnScores.HasAnyHooks)
            {
                var scores = Fire(h.AttnScores, TransformerOps.AttentionScores(q, k, attentionMask, options), out scoresReplaced);
                pattern = Fire(h.Pattern, TransformerOps.AttentionPattern(scores, options), out patternReplaced);
            }
            else
            {
                pattern = Fire(h.Pattern, TransformerOps.AttentionCausalPattern(q, k, attentionMask, options), out patternReplaced);
            }
            z = scoresReplaced || patternReplaced ? TransformerOps.AttentionApply(pattern, v) : TransformerOps.AttentionApplyCausal(pattern, v);
        }
        else
        {
            z = TransformerOps.Attention(q, k, v, attentionMask, options);
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
        return Linear(z.Reshape(z.Size(0), z.Size(1), (long)Config.NHeads * Config.DHead), outSpec);
    }

    /// <summary>[batch, pos, heads * d_head] viewed as [batch, pos, heads, d_head].</summary>
    private Tensor Heads(Tensor x, int heads) => x.View(x.Size(0), x.Size(1), heads, Config.DHead);

    private Tensor Project(Tensor perHeadInput, Tensor w, Tensor? b)
    {
        var y = Torch.Einsum("bphm,hmd->bphd", perHeadInput, w);
        return b is null ? y : y + b;
    }

    /// <summary>Repeats a per-head weight [kv_head, ...] for the query heads of each group.</summary>
    private Tensor UngroupWeight(Tensor w) => HeadGroups.RepeatInterleave(w, 0, Config.NHeads / Config.NKeyValueHeads);

    /// <summary>
    /// The TL-layout q/k/v weights [head, d_model, d_head] (k and v with the key/value heads) and biases [head, d_head], as
    /// views of the HF weights.
    /// </summary>
    private (Tensor Wq, Tensor Wk, Tensor Wv, Tensor? Bq, Tensor? Bk, Tensor? Bv) QkvWeightsPerHead(QkvSpec qkv)
    {
        long nh = Config.NHeads, dh = Config.DHead, m = Config.DModel;
        if (qkv is SeparateQkvSpec s)
        {
            (Tensor W, Tensor? B) PerHead(LinearSpec spec, long heads)
            {
                var (w, b) = LinearParameters(spec);
                var inOut = spec.Layout == LinearWeightLayout.InOut ? w : w.Transpose(0, 1);     // [d_model, heads * d_head]
                return (inOut.View(m, heads, dh).Permute(1, 0, 2), b?.View(heads, dh));
            }
            var (q, bq) = PerHead(s.Q, nh);
            var (k, bk) = PerHead(s.K, Config.NKeyValueHeads);
            var (v, bv) = PerHead(s.V, Config.NKeyValueHeads);
            return (q, k, v, bq, bk, bv);
        }
        var f = (FusedQkvSpec)qkv;
        var fw = P(f.Linear.Weight);
        var fb = f.Linear.Bias is null ? null : P(f.Linear.Bias);
        Tensor[] ws, bs;
        if (f.Layout == QkvLayout.PartMajorInOut)
        {
            ws = fw.View(m, 3, nh, dh).Permute(1, 2, 0, 3).Split(1, 0);   // [3][1, h, m, d]
            bs = fb?.View(3, nh, dh).Split(1, 0) ?? [];
        }
        else
        {
            ws = fw.View(nh, 3, dh, m).Permute(1, 0, 3, 2).Split(1, 0);
            bs = fb?.View(nh, 3, dh).Permute(1, 0, 2).Split(1, 0) ?? [];
        }
        Tensor? Bias(int j) => bs.Length == 0 ? null : bs[j].Squeeze(0);
        return (ws[0].Squeeze(0), ws[1].Squeeze(0), ws[2].Squeeze(0), Bias(0), Bias(1), Bias(2));
    }

    /// <summary>The output projection as [head, d_head, d_model], a view of the HF weight.</summary>
    private Tensor OutputWeightPerHead(LinearSpec spec)
    {
        var (w, _) = LinearParameters(spec);
        var inOut = spec.Layout == LinearWeightLayout.InOut ? w : w.Transpose(0, 1);  // [head * d_head, d_model]
        return inOut.View(Config.NHeads, Config.DHead, Config.DModel);
    }
}
