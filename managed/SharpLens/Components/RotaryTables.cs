namespace SharpLens.Components;

/// <summary>
/// The rotary angles of a model, computed the way transformers 4.44.2 computes them, so that float32 and float64 runs
/// reproduce HuggingFace's to rounding: inv_freq = 1 / base^(arange(0, dim, 2) / dim), angles = position × inv_freq, and
/// cos / sin of those, each step with libtorch's own ops, then cast to the model's dtype by the rotary op. The Llama family
/// computes all of it in float32 even for a float64 model (<see cref="TransformerConfig.Float32Islands"/>), and so does
/// this; otherwise (GPT-NeoX, whose float64 reference these match to 1e-15) in float64. Rope scaling changes only inv_freq
/// and, for LongRoPE, multiplies cos and sin by an attention factor.
/// </summary>
public static class RotaryTables
{
    /// <summary>inv_freq [rotary_dim / 2] (in <see cref="TableType"/>) for sequences of <paramref name="seqLen"/> positions (dynamic and LongRoPE depend on it).</summary>
    public static Tensor InvFreq(TransformerConfig cfg, long seqLen, Device device)
    {
        var type = TableType(cfg);
        var dim = cfg.RotaryDim;
        if (dim <= 0 || dim % 2 != 0) throw new InvalidOperationException($"rotary dimension {dim} must be even and positive");
        using var scope = Torch.NewScope();
        var exponents = Torch.Arange(0, dim, 2, ScalarType.Int64, device).To(type).Div(dim);  // arange(0, dim, 2).float() / dim
        Tensor BasePow(double @base) => Torch.Scalar(@base, type, device).Pow(exponents);    // base ** exponents
        var invFreq = BasePow(cfg.RotaryBase).Reciprocal();
        if (cfg.RopeScaling is { } rs)
        {
            switch (rs.Type)
            {
                case RopeType.Linear:
                    invFreq = invFreq.Div(rs.Factor);
                    break;
                case RopeType.Dynamic:
                    // Beyond the trained context the base grows: base * (factor * len / max - (factor - 1))^(dim / (dim - 2)).
                    if (seqLen > cfg.NCtx)
                    {
                        var grown = cfg.RotaryBase * Math.Pow(rs.Factor * seqLen / cfg.NCtx - (rs.Factor - 1), dim / (dim - 2.0));
                        invFreq = BasePow(grown).Reciprocal();
                    }
                    break;
                case RopeType.Llama3:
                    invFreq = Llama3(invFreq, rs);
                    break;
                case RopeType.LongRope:
                    var factors = seqLen > rs.OriginalMaxPositionEmbeddings ? rs.LongFactor! : rs.ShortFactor!;
                    using (var f = Torch.FromArray(factors.Select(x => (float)x).ToArray()))
                    using (var onDevice = f.To(device, type))
                        invFreq = onDevice.Mul(BasePow(cfg.RotaryBase)).Reciprocal();
                    break;
            }
        }
        return invFreq.MoveToOuterScope();
    }

    /// <summary>
    /// Llama 3.1's scaling: wavelengths longer than original / low_freq_factor are divided by the factor, shorter than
    /// original / high_freq_factor kept, and those between interpolated.
    /// </summary>
    private static Tensor Llama3(Tensor invFreq, RopeScaling rs)
    {
        var old = (double)rs.OriginalMaxPositionEmbeddings;
        var lowWavelen = old / rs.LowFreqFactor;
        var highWavelen = old / rs.HighFreqFactor;
        var wavelen = invFreq.Reciprocal().Mul(2 * Math.PI);
        var scaled = Torch.Where(wavelen.Gt(lowWavelen), invFreq.Div(rs.Factor), invFreq);
        var smooth = wavelen.Reciprocal().Mul(old).Sub(rs.LowFreqFactor).Div(rs.HighFreqFactor - rs.LowFreqFactor);
        var smoothed = smooth.Neg().Add(1).Mul(scaled).Div(rs.Factor).Add(smooth.Mul(scaled));
        var medium = wavelen.Lt(highWavelen).LogicalNot().LogicalAnd(wavelen.Gt(lowWavelen).LogicalNot());
        return Torch.Where(medium, smoothed, scaled);
    }

    /// <summary>The dtype the angles and their cos/sin are computed in (see the class summary).</summary>
    public static ScalarType TableType(TransformerConfig cfg) => cfg.Float32Islands ? ScalarType.Float32 : ScalarType.Float64;

    /// <summary>The factor LongRoPE multiplies cos and sin by: sqrt(1 + ln(max / original) / ln(original)) beyond the original context, else 1.</summary>
    public static double AttentionFactor(TransformerConfig cfg)
    {
        if (cfg.RopeScaling is not { Type: RopeType.LongRope } rs) return 1;
        var scale = (double)cfg.NCtx / rs.OriginalMaxPositionEmbeddings;
        return scale <= 1 ? 1 : Math.Sqrt(1 + Math.Log(scale) / Math.Log(rs.OriginalMaxPositionEmbeddings));
    }

    /// <summary>
    /// The cos/sin table [rows, 2, rotary_dim / 2] (in <see cref="TableType"/>) that <see cref="TransformerOps.Rotary(Tensor, Tensor, RotaryImplementation)"/>
    /// takes, for int64 <paramref name="positions"/> [batch, pos]: one row per position when <paramref name="shared"/> (every
    /// batch row at positions 0..pos-1), else one per (batch, pos) row.
    /// </summary>
    public static Tensor Table(TransformerConfig cfg, Tensor positions, bool shared)
    {
        using var scope = Torch.NewScope();
        var (batch, pos) = (positions.Size(0), positions.Size(1));
        var rows = shared ? positions.Select(0, 0) : positions.Reshape(batch * pos);  // [rows]
        // The longest position seen, which only dynamic and LongRoPE scaling depend on: read from the positions (a sync with
        // the device) only for them; meta tensors hold no values, so there the unpadded length stands in.
        var dependsOnLength = cfg.RopeScaling?.Type is RopeType.Dynamic or RopeType.LongRope;
        var seqLen = !dependsOnLength || pos == 0 || positions.Device.Type == DeviceType.Meta ? pos : positions.Max().ToInt64() + 1;
        var invFreq = InvFreq(cfg, seqLen, positions.Device);
        var angles = rows.To(TableType(cfg)).Unsqueeze(1).Mul(invFreq.Unsqueeze(0));     // [rows, half], one rounding each
        Tensor cos = angles.Cos(), sin = angles.Sin();
        var factor = AttentionFactor(cfg);
        if (factor != 1)
        {
            cos = cos.Mul(factor);
            sin = sin.Mul(factor);
        }
        return Torch.Stack([cos, sin], 1).MoveToOuterScope();
    }
}
