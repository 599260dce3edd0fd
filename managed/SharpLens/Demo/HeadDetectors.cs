namespace SharpLens.Demo;

/// <summary>
/// Scores every attention head by how much of its attention follows a known pattern, like TransformerLens's
/// head detectors and the induction-score recipe of "In-context learning and induction heads", on repeated
/// sequences laid out as <c>[prefix, r_1 .. r_L, r_1 .. r_L]</c> (<see cref="RepeatedSequences"/>; the prefix is BOS).
/// A score is the mean, over the batch and the query positions concerned, of the attention weight on the one
/// key position the pattern names, so it lies in [0, 1] and a head that puts all its attention there scores 1.
/// </summary>
/// <remarks>
/// The positions are found by offset rather than by comparing token ids, which is exact when the tokens within a
/// copy are distinct (as <see cref="RepeatedSequences.Batch"/> makes them): then the previous occurrence of the token
/// at a second-copy position i is at i - L, and the token after it at i - L + 1.
/// <list type="bullet">
/// <item>induction: queries in the second copy, key i - (L - 1): the token after the previous occurrence, the
/// prediction an induction head copies;</item>
/// <item>previous-token: every query with a predecessor (i ≥ 1), key i - 1;</item>
/// <item>duplicate-token: queries in the second copy, key i - L: the previous occurrence itself.</item>
/// </list>
/// </remarks>
public static class HeadDetectors
{
    /// <summary>Induction score of each head of one layer from its pattern [batch, head, q, k]: one value per head.</summary>
    /// <param name="pattern">Attention probabilities [batch, head, query, key] (TransformerLens <c>hook_pattern</c>).</param>
    /// <param name="seqLen">Length L of one copy.</param>
    /// <param name="prefix">Positions before the first copy (1 for BOS).</param>
    public static double[] InductionScores(Tensor pattern, int seqLen, int prefix = RepeatedSequences.Prefix)
    {
        CheckLayout(pattern, seqLen, prefix);
        return DiagonalMeans(pattern, seqLen - 1, prefix + seqLen, prefix + 2 * seqLen);
    }

    /// <summary>Previous-token score of each head of one layer from its pattern [batch, head, q, k].</summary>
    /// <param name="pattern">Attention probabilities [batch, head, query, key].</param>
    public static double[] PreviousTokenScores(Tensor pattern)
    {
        ArgumentNullException.ThrowIfNull(pattern);
        CheckPattern(pattern);
        return DiagonalMeans(pattern, 1, 1, pattern.Size(2));
    }

    /// <summary>Duplicate-token score of each head of one layer from its pattern [batch, head, q, k].</summary>
    /// <param name="pattern">Attention probabilities [batch, head, query, key].</param>
    /// <param name="seqLen">Length L of one copy.</param>
    /// <param name="prefix">Positions before the first copy (1 for BOS).</param>
    public static double[] DuplicateTokenScores(Tensor pattern, int seqLen, int prefix = RepeatedSequences.Prefix)
    {
        CheckLayout(pattern, seqLen, prefix);
        return DiagonalMeans(pattern, seqLen, prefix + seqLen, prefix + 2 * seqLen);
    }

    /// <summary>Induction scores [layer, head] from a cache holding every layer's <c>hook_pattern</c> on repeated sequences.</summary>
    public static double[,] InductionScores(ActivationCache cache, int seqLen, int prefix = RepeatedSequences.Prefix) =>
        PerLayer(cache, p => InductionScores(p, seqLen, prefix));

    /// <summary>Previous-token scores [layer, head] from a cache holding every layer's <c>hook_pattern</c>.</summary>
    public static double[,] PreviousTokenScores(ActivationCache cache) => PerLayer(cache, PreviousTokenScores);

    /// <summary>Duplicate-token scores [layer, head] from a cache holding every layer's <c>hook_pattern</c> on repeated sequences.</summary>
    public static double[,] DuplicateTokenScores(ActivationCache cache, int seqLen, int prefix = RepeatedSequences.Prefix) =>
        PerLayer(cache, p => DuplicateTokenScores(p, seqLen, prefix));

    /// <summary>All three scores from one cache.</summary>
    public static HeadScores ScoreAll(ActivationCache cache, int seqLen, int prefix = RepeatedSequences.Prefix) =>
        new(InductionScores(cache, seqLen, prefix), PreviousTokenScores(cache), DuplicateTokenScores(cache, seqLen, prefix));

    private static double[,] PerLayer(ActivationCache cache, Func<Tensor, double[]> score)
    {
        ArgumentNullException.ThrowIfNull(cache);
        var layers = cache.Config.NLayers;
        var heads = cache.Config.NHeads;
        var result = new double[layers, heads];
        for (var l = 0; l < layers; l++)
        {
            var perHead = score(cache["pattern", l]);
            for (var h = 0; h < heads; h++) result[l, h] = perHead[h];
        }
        return result;
    }

    private static void CheckPattern(Tensor pattern)
    {
        if (pattern.Dim != 4 || pattern.Size(2) != pattern.Size(3))
            throw new ArgumentException($"an attention pattern is [batch, head, query, key] with query = key length, got {Tensor.FormatShape(pattern.Shape)}");
        if (!pattern.DType.IsFloatingPoint())
            throw new ArgumentException($"an attention pattern holds probabilities, got dtype {pattern.DType.ToTorchName()}");
    }

    private static void CheckLayout(Tensor pattern, int seqLen, int prefix)
    {
        ArgumentNullException.ThrowIfNull(pattern);
        CheckPattern(pattern);
        if (seqLen < 2) throw new ArgumentException($"the repeated segment must have at least 2 tokens, got {seqLen}");
        if (prefix < 0) throw new ArgumentException($"prefix must be non-negative, got {prefix}");
        if (pattern.Size(2) < prefix + 2L * seqLen)
            throw new ArgumentException(
                $"a pattern over {pattern.Size(2)} positions cannot hold {prefix} prefix position(s) and two copies of {seqLen} tokens");
    }

    /// <summary>Per head: mean over batch and queries q in [from, to) of pattern[b, h, q, q - offset].</summary>
    private static double[] DiagonalMeans(Tensor pattern, long offset, long from, long to)
    {
        long batch = pattern.Size(0), heads = pattern.Size(1), n = pattern.Size(2);
        // Patterns here are small ([batch, head, 2L+1, 2L+1]); one copy to managed memory keeps the arithmetic obvious.
        double[] values;
        using (Torch.NoGrad())
        using (var cpu = pattern.Detach().To(Device.CPU, ScalarType.Float64))
            values = cpu.ToArray<double>();
        var result = new double[heads];
        for (long h = 0; h < heads; h++)
        {
            double sum = 0;
            long count = 0;
            for (long b = 0; b < batch; b++)
            {
                var head = (b * heads + h) * n * n;
                for (var q = from; q < to; q++)
                {
                    sum += values[head + q * n + (q - offset)];
                    count++;
                }
            }
            result[h] = count == 0 ? 0 : sum / count;
        }
        return result;
    }
}

/// <summary>The three head-detector scores of every head, each [layer, head].</summary>
/// <param name="Induction">Attention from the second copy to the token after the previous occurrence.</param>
/// <param name="PreviousToken">Attention to the immediately preceding position.</param>
/// <param name="DuplicateToken">Attention from the second copy to the previous occurrence of the same token.</param>
public sealed record HeadScores(double[,] Induction, double[,] PreviousToken, double[,] DuplicateToken)
{
    /// <summary>Heads sorted by a score, highest first (ties by layer, then head).</summary>
    public static IReadOnlyList<(int Layer, int Head, double Score)> Ranked(double[,] scores)
    {
        ArgumentNullException.ThrowIfNull(scores);
        var list = new List<(int, int, double)>();
        for (var l = 0; l < scores.GetLength(0); l++)
            for (var h = 0; h < scores.GetLength(1); h++)
                list.Add((l, h, scores[l, h]));
        return list.OrderByDescending(x => x.Item3).ThenBy(x => x.Item1).ThenBy(x => x.Item2).ToList();
    }
}
