namespace SharpLens.Reference;

/// <summary>
/// TransformerLens's weight processing options. Each transformation is exact: the processed model
/// computes the same logits (up to a per-position constant with <see cref="CenterUnembed"/>, which
/// softmax ignores) while making the weights easier to read.
/// </summary>
public sealed record WeightProcessing
{
    /// <summary>Fold each LayerNorm's weight and bias into the layer that reads it (ln1 into W_Q/W_K/W_V, ln2 into W_in, ln_final into W_U); the norms become weightless (TL's LayerNormPre).</summary>
    public bool FoldLn { get; init; }
    /// <summary>Remove the mean over d_model from everything that writes to the residual stream (W_E, W_pos, W_O, b_O, W_out, b_out): LayerNorm centres anyway. Needs <see cref="FoldLn"/>.</summary>
    public bool CenterWritingWeights { get; init; }
    /// <summary>Remove the mean over the vocabulary from W_U and b_U (softmax is shift-invariant).</summary>
    public bool CenterUnembed { get; init; }
    /// <summary>Fold b_V through W_O into b_O (attention patterns sum to 1, so the value bias contributes a constant).</summary>
    public bool FoldValueBiases { get; init; }

    /// <summary>No processing.</summary>
    public static readonly WeightProcessing None = new();

    /// <summary>TransformerLens's default: all four.</summary>
    public static readonly WeightProcessing Default = new() { FoldLn = true, CenterWritingWeights = true, CenterUnembed = true, FoldValueBiases = true };

    /// <summary>True when any option is set.</summary>
    public bool Any => FoldLn || CenterWritingWeights || CenterUnembed || FoldValueBiases;
}
