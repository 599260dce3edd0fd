namespace SharpLens.Demo;

/// <summary>
/// Batches of the induction task: <c>[BOS, r_1 .. r_L, r_1 .. r_L]</c>, where r is L distinct tokens drawn uniformly
/// from the non-special ids. The first copy is unpredictable (loss about ln of the token count); the second copy is
/// perfectly predictable by a model that, at r_j, looks back for the previous r_j and copies the token after it,
/// which is exactly what an induction head does.
/// </summary>
/// <remarks>
/// Tokens within a copy are distinct so that "the previous occurrence of the current token" is unique and sits
/// exactly L positions back: the head detectors can then score by offset, and no second-half prediction is ambiguous.
/// </remarks>
public static class RepeatedSequences
{
    /// <summary>
    /// Layout of a repeated sequence: position 0 is BOS, the first copy occupies positions 1..L and the second
    /// L+1..2L. <see cref="HeadDetectors"/> and <see cref="HeadAblation"/> assume this layout.
    /// </summary>
    public const int Prefix = 1;

    /// <summary>
    /// A [batch, 1 + 2 <paramref name="segmentLength"/>] int64 batch drawn from <paramref name="generator"/>:
    /// BOS, then the same <paramref name="segmentLength"/> distinct random tokens twice.
    /// </summary>
    /// <param name="generator">Source of randomness; the same generator state gives the same batch.</param>
    /// <param name="batch">Sequences in the batch.</param>
    /// <param name="segmentLength">Length L of one copy; at most the number of non-special tokens.</param>
    /// <param name="config">The model's vocabulary: tokens are drawn from [0, VocabSize - 1), BOS is the last id.</param>
    public static Tensor Batch(Generator generator, int batch, int segmentLength, TinyModelConfig config) =>
        Batch(generator, batch, segmentLength, 0, config);

    /// <summary>
    /// A [batch, 1 + <paramref name="prefix"/> + 2L] int64 batch whose repeat starts later:
    /// <c>[BOS, x_1..x_P, r_1..r_L, r_1..r_L]</c>, with x and r all distinct random tokens. P = 0 gives <see cref="Batch"/>'s layout.
    /// </summary>
    /// <remarks>
    /// When every first copy starts at position 1, a model can get away with storing each token pair at a position tied to
    /// the sequence start (we saw "about twice the position": two layer-0 heads gather r_p and r_p+1 near position 2p)
    /// instead of using a previous-token head; a start that moves from batch to batch leaves the canonical circuit
    /// (previous-token head, then induction head) as the one that always works.
    /// </remarks>
    public static Tensor Batch(Generator generator, int batch, int segmentLength, int prefix, TinyModelConfig config)
    {
        ArgumentNullException.ThrowIfNull(generator);
        ArgumentNullException.ThrowIfNull(config);
        var tokens = config.VocabSize - 1;
        if (batch < 1) throw new ArgumentException($"batch must be at least 1, got {batch}");
        if (prefix < 0) throw new ArgumentException($"the prefix length must be non-negative, got {prefix}");
        if (segmentLength < 2 || segmentLength + prefix > tokens)
            throw new ArgumentException($"{segmentLength} + {prefix} distinct tokens do not fit in the {tokens} non-special tokens");
        var length = 1 + prefix + 2 * segmentLength;
        if (length > config.NPositions)
            throw new ArgumentException($"sequences of {length} tokens exceed the context of {config.NPositions}");
        var outer = DisposeScope.Current;
        using var scope = Torch.NewScope();
        // A random permutation per row (argsort of uniform noise): its first P + L entries are distinct, uniformly chosen tokens.
        using var noise = Torch.Rand([batch, tokens], generator);
        var (values, order) = noise.Sort(dim: 1);
        values.Dispose();
        var filler = order.Narrow(1, 0, prefix);
        var segment = order.Narrow(1, prefix, segmentLength);
        var bos = Torch.Full([batch, 1], config.BosTokenId, ScalarType.Int64);
        var result = Torch.Cat([bos, filler, segment, segment], 1);
        return outer is null ? result.DetachFromScope() : result.MoveToOuterScope();
    }

    /// <summary>Sequence length of a repeated batch with copies of length <paramref name="segmentLength"/>: 1 + 2L.</summary>
    public static int SequenceLength(int segmentLength) => Prefix + 2 * segmentLength;
}
