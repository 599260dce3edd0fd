namespace SharpLens.Analysis;

/// <summary>Which weight matrix <see cref="SvdInterpreter.GetSingularVectors"/> decomposes (TL's <c>vector_type</c>).</summary>
public enum VectorType
{
    /// <summary>A head's OV circuit W_V[head]·W_O[head] [d_model, d_model] (TL <c>"OV"</c>).</summary>
    OV,
    /// <summary>The MLP input weight, as TL: W_inᵀ [d_mlp, d_model], scaled by ln2.w when the model has one (TL <c>"w_in"</c>).</summary>
    WIn,
    /// <summary>The MLP output weight W_out [d_mlp, d_model] (TL <c>"w_out"</c>).</summary>
    WOut,
}

/// <summary>A token and its score in one projected singular vector (see <see cref="SvdInterpreter.TopTokens"/>).</summary>
/// <param name="TokenId">Vocabulary index.</param>
/// <param name="Value">The singular vector's projection onto the token's unembedding direction.</param>
public readonly record struct TokenScore(long TokenId, double Value);

/// <summary>
/// TransformerLens's <c>SVDInterpreter</c> (after Millidge &amp; Black, "The singular value decompositions
/// of transformer weight matrices are highly interpretable"): the top singular vectors of a weight
/// matrix that live in the residual stream (d_model), read out through the unembedding W_U to see
/// which tokens each direction writes to or reads from.
/// </summary>
/// <remarks>
/// Which vectors are used, exactly as TL (each is a direction in d_model space, and is then multiplied by
/// <c>unembed.W_U</c> [d_model, vocab]):
/// <list type="bullet">
/// <item><see cref="VectorType.OV"/>: the matrix is the head's factored OV circuit W_V[h]·W_O[h], which maps a
/// source residual (row vector) to what the head writes. The vectors are its <b>right</b> singular vectors
/// (rows of Vh from <see cref="FactoredMatrix.Svd"/>, i.e. TL's <c>FactoredMatrix.Vh.T</c>): the output
/// directions the head writes into the residual stream.</item>
/// <item><see cref="VectorType.WIn"/>: the matrix is W_inᵀ [d_mlp, d_model] (each row scaled elementwise by
/// <c>blocks.{l}.ln2.w</c> when the model has that weight, as TL does for models without folded layer norm; the
/// bridge never folds, so it always does); the vectors are its <b>right</b> singular vectors (rows of Vh), i.e. the
/// left singular vectors of diag(ln2.w)·W_in [d_model, d_mlp]: the residual directions the MLP reads.</item>
/// <item><see cref="VectorType.WOut"/>: the matrix is W_out [d_mlp, d_model]; the vectors are its <b>right</b>
/// singular vectors (rows of Vh): the residual directions the MLP writes.</item>
/// </list>
/// Singular vectors are ordered by decreasing singular value; each one's sign is arbitrary (LAPACK's choice),
/// so a direction's meaning is carried by both its top and its bottom tokens (see <see cref="TopTokens"/>'s
/// <c>largest</c> argument). The SVD is the reduced one.
/// </remarks>
public sealed class SvdInterpreter
{
    private const string OutputEmbedding = "unembed.W_U";

    /// <summary>Interprets the weights of <paramref name="bridge"/>, read afresh on every call (so they reflect training).</summary>
    public SvdInterpreter(TransformerBridge bridge)
    {
        ArgumentNullException.ThrowIfNull(bridge);
        Bridge = bridge;
    }

    /// <summary>The model whose weights are decomposed.</summary>
    public TransformerBridge Bridge { get; }

    /// <summary>
    /// The top <paramref name="numVectors"/> singular vectors of a weight matrix (see the class remarks for which
    /// ones), each projected to the vocabulary through W_U: a [d_vocab, numVectors] tensor whose column j is
    /// <c>v_j · W_U</c> for the j-th singular vector v_j. TL returns the same numbers as [d_vocab, 1, numVectors]
    /// (a singleton middle dimension for PySvelte); <c>Unsqueeze(1)</c> gives that layout.
    /// </summary>
    /// <param name="type">Which matrix.</param>
    /// <param name="layer">Layer index in [0, n_layers).</param>
    /// <param name="numVectors">How many singular vectors, in [1, k] where k is the number of singular values
    /// (d_head for OV when d_head ≤ d_model; min(d_model, d_mlp) for the MLP weights).</param>
    /// <param name="head">The head, required for <see cref="VectorType.OV"/>; ignored for the MLP weights (as TL).</param>
    /// <returns>
    /// A new tensor in the model's dtype (float32 when the model is float16/bfloat16: TL projects in float32, and
    /// the SVD needs it), computed without autograd.
    /// </returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="layer"/>, <paramref name="head"/> or
    /// <paramref name="numVectors"/> is out of range.</exception>
    /// <exception cref="ArgumentNullException"><paramref name="head"/> is null for <see cref="VectorType.OV"/>.</exception>
    public Tensor GetSingularVectors(VectorType type, int layer, int numVectors = 10, int? head = null)
    {
        var cfg = Bridge.Config;
        if (layer < 0 || layer >= cfg.NLayers)
            throw new ArgumentOutOfRangeException(nameof(layer), layer, $"must be in [0, {cfg.NLayers})");
        long available;
        switch (type)
        {
            case VectorType.OV:
                if (head is null) throw new ArgumentNullException(nameof(head), "the OV circuit is per head: give a head index (it is optional only for WIn and WOut)");
                if (head < 0 || head >= cfg.NHeads)
                    throw new ArgumentOutOfRangeException(nameof(head), head, $"must be in [0, {cfg.NHeads})");
                available = Math.Min(cfg.DModel, cfg.DHead);
                break;
            case VectorType.WIn:
            case VectorType.WOut:
                available = Math.Min(cfg.DModel, cfg.DMlp);
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(type), type, "not a VectorType");
        }
        if (numVectors < 1 || numVectors > available)
            throw new ArgumentOutOfRangeException(nameof(numVectors), numVectors, $"must be in [1, {available}]: the {type} matrix has {available} singular vectors");

        using var scope = Torch.NewScope();
        using var noGrad = Torch.NoGrad();
        Tensor vh; // [k, d_model], rows = the singular vectors used
        switch (type)
        {
            case VectorType.OV:
            {
                using var perHead = FactoredMatrix.OV(Bridge, layer);
                using var fm = SvdReady(perHead, head!.Value);
                (_, _, vh) = fm.Svd();
                break;
            }
            case VectorType.WIn:
            {
                var w = FactoredMatrix.TlWeights(Bridge, [$"blocks.{layer}.mlp.W_in", $"blocks.{layer}.ln2.w"]);
                var matrix = Upcast(w[0]!).Transpose(0, 1); // [d_mlp, d_model]
                // TL folds the (unfolded) layer-norm scale into the input weight: the MLP actually reads diag(ln2.w)·x.
                if (w[1] is { } ln2) matrix = matrix.Mul(Upcast(ln2));
                (_, _, vh) = matrix.Svd();
                break;
            }
            default:
            {
                var w = FactoredMatrix.TlWeights(Bridge, layer, $"blocks.{layer}.mlp.W_out");
                (_, _, vh) = Upcast(w[0]).Svd();
                break;
            }
        }
        var wU = Upcast(FactoredMatrix.TlWeights(Bridge, [OutputEmbedding])[0]
                        ?? throw new InvalidOperationException($"the model has no {OutputEmbedding}"));
        // [numVectors, d_model]·[d_model, vocab], then vocab first: TL stacks the projections along dim 1.
        var projected = vh.Narrow(0, 0, numVectors).To(wU.DType).Matmul(wU).Transpose(0, 1).Contiguous();
        return projected.MoveToOuterScope();
    }

    /// <summary>
    /// For each projected singular vector (each column of <paramref name="projected"/> [d_vocab, n], as returned
    /// by <see cref="GetSingularVectors"/>), the <paramref name="k"/> tokens with the highest values (or the lowest,
    /// with <paramref name="largest"/> false: singular-vector signs are arbitrary, so both ends matter), best first.
    /// </summary>
    /// <returns>result[j][i]: the i-th best token of vector j.</returns>
    /// <exception cref="ArgumentException"><paramref name="projected"/> is not 2-D.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="k"/> is not in [1, d_vocab].</exception>
    public static TokenScore[][] TopTokens(Tensor projected, int k, bool largest = true)
    {
        ArgumentNullException.ThrowIfNull(projected);
        if (projected.Dim != 2)
            throw new ArgumentException($"expected [d_vocab, n_vectors], shape was {Tensor.FormatShape(projected.Shape)}", nameof(projected));
        var vocab = projected.Size(0);
        var n = (int)projected.Size(1);
        if (k < 1 || k > vocab) throw new ArgumentOutOfRangeException(nameof(k), k, $"must be in [1, {vocab}]");
        using var scope = Torch.NewScope();
        var (values, indices) = projected.TopK(k, dim: 0, largest: largest, sorted: true); // [k, n]
        var v = values.To(ScalarType.Float64).Contiguous().ToArray<double>();
        var ids = indices.Contiguous().ToArray<long>();
        var result = new TokenScore[n][];
        for (var j = 0; j < n; j++)
        {
            result[j] = new TokenScore[k];
            for (var i = 0; i < k; i++) result[j][i] = new TokenScore(ids[i * n + j], v[i * n + j]);
        }
        return result;
    }

    /// <summary>One head of a per-head factored matrix, in a dtype the SVD supports.</summary>
    private static FactoredMatrix SvdReady(FactoredMatrix perHead, int head)
    {
        using var scope = Torch.NewScope();
        var a = Upcast(perHead.A.Select(0, head));
        var b = Upcast(perHead.B.Select(0, head));
        return new FactoredMatrix(a, b);
    }

    /// <summary>Half-precision weights go to float32: libtorch's SVD has no 16-bit kernels, and TL projects in float32.</summary>
    private static Tensor Upcast(Tensor t) =>
        t.DType is ScalarType.Float16 or ScalarType.BFloat16 ? t.To(ScalarType.Float32) : t;
}
