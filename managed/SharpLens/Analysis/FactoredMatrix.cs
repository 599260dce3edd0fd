namespace SharpLens.Analysis;

/// <summary>
/// TransformerLens's <c>FactoredMatrix</c>: the product <c>A·B</c> of <see cref="A"/> [..., m, r] and
/// <see cref="B"/> [..., r, n] kept in factored form, so that low-rank circuits such as a head's OV
/// (d_model × d_head × d_model) are analysed without building the [m, n] matrix. Leading (batch)
/// dimensions broadcast, as in <c>torch.matmul</c>; a per-head matrix has shape [head, m, n].
/// </summary>
/// <remarks>
/// <para>
/// Ownership: the factored matrix holds its own tensor handles on broadcast views of the factors
/// (no copy; the caller keeps ownership of the tensors it passed in and may dispose them). Dispose the
/// factored matrix to release its handles and the cached SVD. Tensors returned by its methods are new
/// tensors registered with the caller's current <see cref="DisposeScope"/>, like any other tensor op.
/// Methods returning a <see cref="FactoredMatrix"/> return a new one that must be disposed as well.
/// </para>
/// <para>
/// Autograd: nothing is detached, so a factored matrix of parameters stays differentiable; run
/// analysis under <see cref="Torch.NoGrad"/> when no gradient is wanted.
/// </para>
/// </remarks>
public sealed class FactoredMatrix : IDisposable
{
    private readonly Tensor _a;
    private readonly Tensor _b;
    private readonly long[] _shape;
    private (Tensor U, Tensor S, Tensor Vh)? _svd;
    private bool _disposed;

    /// <summary>
    /// Represents <c>a·b</c> with <paramref name="a"/> [..., m, r] and <paramref name="b"/> [..., r, n].
    /// Leading dimensions are broadcast against each other (both factors are expanded to the common
    /// leading shape, as views).
    /// </summary>
    /// <exception cref="ArgumentException">A factor has fewer than 2 dimensions, the inner dimensions differ,
    /// or the leading dimensions do not broadcast.</exception>
    public FactoredMatrix(Tensor a, Tensor b)
    {
        ArgumentNullException.ThrowIfNull(a);
        ArgumentNullException.ThrowIfNull(b);
        if (a.Dim < 2 || b.Dim < 2)
            throw new ArgumentException($"both factors need at least 2 dimensions, shapes were A: {Tensor.FormatShape(a.Shape)}, B: {Tensor.FormatShape(b.Shape)}");
        var aShape = a.Shape;
        var bShape = b.Shape;
        if (aShape[^1] != bShape[^2])
            throw new ArgumentException($"factored matrix must match on inner dimension, shapes were A: {Tensor.FormatShape(aShape)}, B: {Tensor.FormatShape(bShape)}");
        var lead = BroadcastShapes(aShape[..^2], bShape[..^2])
                   ?? throw new ArgumentException($"cannot broadcast the leading dimensions of A: {Tensor.FormatShape(aShape)} and B: {Tensor.FormatShape(bShape)}");
        LeftDim = aShape[^2];
        MiddleDim = aShape[^1];
        RightDim = bShape[^1];
        _shape = [.. lead, LeftDim, RightDim];
        // Expand gives both a fresh handle (so we own it, independent of the caller's tensor) and the
        // common leading shape (so batched SVD and indexing see matching factors, as TL's broadcast_to).
        _a = a.Expand([.. lead, LeftDim, MiddleDim]).DetachFromScope();
        _b = b.Expand([.. lead, MiddleDim, RightDim]).DetachFromScope();
    }

    /// <summary>The left factor [..., m, r] (owned by this object: do not dispose; valid until it is disposed).</summary>
    public Tensor A => Live(_a);

    /// <summary>The right factor [..., r, n] (owned by this object: do not dispose; valid until it is disposed).</summary>
    public Tensor B => Live(_b);

    /// <summary>The shape of the product A·B: the broadcast leading dimensions, then [m, n].</summary>
    public long[] Shape => (long[])_shape.Clone();

    /// <summary>Number of dimensions of the product (leading dimensions + 2).</summary>
    public int Dim => _shape.Length;

    /// <summary>m: rows of the product (TL <c>ldim</c>).</summary>
    public long LeftDim { get; }

    /// <summary>r: the inner (hidden) dimension of the factorisation, an upper bound on the rank (TL <c>mdim</c>).</summary>
    public long MiddleDim { get; }

    /// <summary>n: columns of the product (TL <c>rdim</c>).</summary>
    public long RightDim { get; }

    /// <summary>Materialises the product A·B [..., m, n] (may be large: this is what the class exists to avoid).</summary>
    public Tensor AB() => Live(_a).Matmul(_b);

    /// <summary>
    /// The reverse product B·A [..., r, r]. Only defined for square products (m == n), where it has the
    /// same non-zero eigenvalues as A·B at a fraction of the size.
    /// </summary>
    /// <exception cref="InvalidOperationException">m != n.</exception>
    public Tensor BA()
    {
        if (LeftDim != RightDim)
            throw new InvalidOperationException($"B·A needs a square product (m == n), shape was {Tensor.FormatShape(_shape)}");
        return Live(_b).Matmul(_a);
    }

    /// <summary>The transpose (A·B)ᵀ = Bᵀ·Aᵀ, still factored, with inner dimension r. A new object: dispose it.</summary>
    public FactoredMatrix T
    {
        get
        {
            using var scope = Torch.NewScope();
            return new FactoredMatrix(Live(_b).Transpose(-2, -1), _a.Transpose(-2, -1));
        }
    }

    /// <summary>
    /// Singular value decomposition of A·B without materialising it, as TransformerLens does: with
    /// A = Ua·diag(Sa)·Vaᴴ and B = Ub·diag(Sb)·Vbᴴ, the small core M = diag(Sa)·Vaᴴ·Ub·diag(Sb)
    /// (at most r × r) is decomposed as Um·diag(S)·Vmᴴ, so A·B = (Ua·Um)·diag(S)·(Vmᴴ·Vbᴴ).
    /// </summary>
    /// <returns>
    /// U [..., m, k], S [..., k] (descending) and Vh [..., k, n] with k = min(m, r, n), such that
    /// A·B = U·diag(S)·Vh. The rows of Vh are the right singular vectors. Note the convention differs
    /// from TL: TL's <c>FactoredMatrix.svd()</c> (built on the deprecated <c>torch.svd</c>) returns V
    /// [..., n, k] under the name <c>Vh</c>; this method returns the true Vh = Vᵀ, i.e. TL's <c>Vh.T</c>.
    /// Signs of singular-vector pairs are arbitrary (LAPACK's choice).
    /// </returns>
    /// <remarks>
    /// The decomposition is computed once and cached (as TL's <c>lru_cache</c>); each call returns new
    /// handles on the cached tensors, which the caller may dispose freely.
    /// </remarks>
    public (Tensor U, Tensor S, Tensor Vh) Svd()
    {
        if (_svd is null)
        {
            using var scope = Torch.NewScope();
            var (ua, sa, vha) = Live(_a).Svd();          // [.., m, ka], [.., ka], [.., ka, r]
            var (ub, sb, vhb) = _b.Svd();                // [.., r, kb], [.., kb], [.., kb, n]
            // diag(Sa)·Vaᴴ scales rows, Ub·diag(Sb) scales columns: broadcasting avoids building diagonals.
            var left = sa.Unsqueeze(-1).Mul(vha);        // [.., ka, r]
            var right = ub.Mul(sb.Unsqueeze(-2));        // [.., r, kb]
            var (um, s, vhm) = left.Matmul(right).Svd(); // [.., ka, k], [.., k], [.., k, kb]
            var u = ua.Matmul(um);
            var vh = vhm.Matmul(vhb);
            _svd = (u.DetachFromScope(), s.DetachFromScope(), vh.DetachFromScope());
        }
        var (cu, cs, cvh) = _svd.Value;
        return (cu.Alias(), cs.Alias(), cvh.Alias());
    }

    /// <summary>The singular values [..., k] (see <see cref="Svd"/>).</summary>
    public Tensor S()
    {
        var (u, s, vh) = Svd();
        u.Dispose();
        vh.Dispose();
        return s;
    }

    /// <summary>
    /// The Frobenius norm of A·B per leading index [...]: sqrt(Σ S²), from the factored SVD (as TL).
    /// </summary>
    public Tensor Norm()
    {
        using var scope = Torch.NewScope();
        return S().Square().Sum(-1).Sqrt().MoveToOuterScope();
    }

    /// <summary>
    /// The top-left corner of A·B: [..., min(k, m), min(k, n)], computed from the first k rows of A and the
    /// first k columns of B only. Unlike TL's <c>get_corner</c> (a printing helper that also truncates every
    /// leading dimension to k), the leading dimensions are kept whole.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">k &lt; 1.</exception>
    public Tensor GetCorner(int k = 3)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(k, 1);
        using var scope = Torch.NewScope();
        var rows = Live(_a).Narrow(-2, 0, Math.Min(k, LeftDim));
        var cols = _b.Narrow(-1, 0, Math.Min(k, RightDim));
        return rows.Matmul(cols).MoveToOuterScope();
    }

    /// <summary>
    /// (A·B)·M for a matrix <paramref name="m"/> [..., n, p], kept factored with TL's rule: if n &gt; r the
    /// result is A·(B·M) (inner dimension r), otherwise (A·B)·M with inner dimension n, whichever keeps the
    /// inner dimension smaller. A new object: dispose it.
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="m"/> has fewer than 2 dimensions (use <see cref="MatVec"/>) or its rows differ from n.</exception>
    public FactoredMatrix Matmul(Tensor m)
    {
        ArgumentNullException.ThrowIfNull(m);
        if (m.Dim < 2) throw new ArgumentException($"Matmul takes a matrix; use MatVec for a vector (shape was {Tensor.FormatShape(m.Shape)})", nameof(m));
        if (m.Size(-2) != RightDim)
            throw new ArgumentException($"right matrix must match on inner dimension, shapes were self: {Tensor.FormatShape(_shape)}, other: {Tensor.FormatShape(m.Shape)}", nameof(m));
        using var scope = Torch.NewScope();
        return RightDim > MiddleDim ? new FactoredMatrix(Live(_a), _b.Matmul(m)) : new FactoredMatrix(AB(), m);
    }

    /// <summary>
    /// (A·B)·(C·D) for another factored matrix, as TL: ((A·B)·C)·D, each step kept factored by
    /// <see cref="Matmul(Tensor)"/>. A new object: dispose it.
    /// </summary>
    public FactoredMatrix Matmul(FactoredMatrix other)
    {
        ArgumentNullException.ThrowIfNull(other);
        using var left = Matmul(other.A);
        return left.Matmul(other.B);
    }

    /// <summary>
    /// M·(A·B) for a matrix <paramref name="m"/> [..., p, m], kept factored with TL's rule: if m &gt; r the
    /// result is (M·A)·B (inner dimension r), otherwise M·(A·B) with inner dimension m. A new object: dispose it.
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="m"/> has fewer than 2 dimensions (use <see cref="VecMat"/>) or its columns differ from m.</exception>
    public FactoredMatrix LeftMatmul(Tensor m)
    {
        ArgumentNullException.ThrowIfNull(m);
        if (m.Dim < 2) throw new ArgumentException($"LeftMatmul takes a matrix; use VecMat for a vector (shape was {Tensor.FormatShape(m.Shape)})", nameof(m));
        if (m.Size(-1) != LeftDim)
            throw new ArgumentException($"left matrix must match on inner dimension, shapes were self: {Tensor.FormatShape(_shape)}, other: {Tensor.FormatShape(m.Shape)}", nameof(m));
        using var scope = Torch.NewScope();
        return LeftDim > MiddleDim ? new FactoredMatrix(m.Matmul(Live(_a)), _b) : new FactoredMatrix(m, AB());
    }

    /// <summary>(A·B)·v for a vector v [n]: A·(B·v) [..., m], never materialising A·B (TL's <c>@</c> with a vector).</summary>
    public Tensor MatVec(Tensor v)
    {
        ArgumentNullException.ThrowIfNull(v);
        if (v.Dim != 1 || v.Size(0) != RightDim)
            throw new ArgumentException($"MatVec takes a vector of length {RightDim}, shape was {Tensor.FormatShape(v.Shape)}", nameof(v));
        using var scope = Torch.NewScope();
        // As a column [n, 1] so that the leading dimensions of A and B broadcast through matmul.
        return Live(_a).Matmul(_b.Matmul(v.Unsqueeze(-1))).Squeeze(-1).MoveToOuterScope();
    }

    /// <summary>v·(A·B) for a vector v [m]: (v·A)·B [..., n], never materialising A·B (TL's <c>@</c> with a vector on the left).</summary>
    public Tensor VecMat(Tensor v)
    {
        ArgumentNullException.ThrowIfNull(v);
        if (v.Dim != 1 || v.Size(0) != LeftDim)
            throw new ArgumentException($"VecMat takes a vector of length {LeftDim}, shape was {Tensor.FormatShape(v.Shape)}", nameof(v));
        using var scope = Torch.NewScope();
        return v.Unsqueeze(-2).Matmul(Live(_a)).Matmul(_b).Squeeze(-2).MoveToOuterScope();
    }

    /// <summary>The product scaled by <paramref name="scalar"/>: (s·A)·B. A new object: dispose it.</summary>
    public FactoredMatrix Mul(double scalar)
    {
        using var scope = Torch.NewScope();
        return new FactoredMatrix(Live(_a).Mul(scalar), _b);
    }

    /// <summary>Scalar multiplication (see <see cref="Mul"/>).</summary>
    public static FactoredMatrix operator *(FactoredMatrix m, double scalar) => m.Mul(scalar);

    /// <summary>Scalar multiplication (see <see cref="Mul"/>).</summary>
    public static FactoredMatrix operator *(double scalar, FactoredMatrix m) => m.Mul(scalar);

    /// <summary>
    /// Indexes the first leading dimension, e.g. one head of a per-head [head, m, n] matrix (TL's
    /// <c>fm[head]</c>): a factored [..., m, n] of views. A new object: dispose it.
    /// </summary>
    /// <exception cref="InvalidOperationException">There is no leading dimension.</exception>
    /// <exception cref="ArgumentOutOfRangeException">The index is outside the first dimension.</exception>
    public FactoredMatrix Select(long index)
    {
        if (Dim < 3) throw new InvalidOperationException($"a factored matrix of shape {Tensor.FormatShape(_shape)} has no leading dimension to index");
        if (index < 0 || index >= _shape[0]) throw new ArgumentOutOfRangeException(nameof(index), index, $"must be in [0, {_shape[0]})");
        using var scope = Torch.NewScope();
        return new FactoredMatrix(Live(_a).Select(0, index), _b.Select(0, index));
    }

    /// <summary>Shape and inner dimension, as TL's repr.</summary>
    public override string ToString() => $"FactoredMatrix: Shape({Tensor.FormatShape(_shape)}), Hidden Dim({MiddleDim})";

    /// <summary>Releases the factor handles and the cached SVD (not the caller's tensors).</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _a.Dispose();
        _b.Dispose();
        if (_svd is { } svd)
        {
            svd.U.Dispose();
            svd.S.Dispose();
            svd.Vh.Dispose();
            _svd = null;
        }
    }

    // ------------------------------------------------------------------ transformer circuits

    /// <summary>
    /// The OV circuit of every head of a layer, TL's <c>model.OV[layer]</c>: W_V [head, d_model, d_head] ·
    /// W_O [head, d_head, d_model], a factored [head, d_model, d_model] with inner dimension d_head. The
    /// factors are views of the bridge's current weights.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="layer"/> is not a layer of the model.</exception>
    public static FactoredMatrix OV(TransformerBridge bridge, int layer)
    {
        using var scope = Torch.NewScope();
        var w = TlWeights(bridge, layer, $"blocks.{layer}.attn.W_V", $"blocks.{layer}.attn.W_O");
        return new FactoredMatrix(w[0], w[1]);
    }

    /// <summary>
    /// The QK circuit of every head of a layer, TL's <c>model.QK[layer]</c>: W_Q [head, d_model, d_head] ·
    /// W_Kᵀ [head, d_head, d_model], a factored [head, d_model, d_model] (query side × key side) with inner
    /// dimension d_head. Rotary embeddings and the attention scale are not included (as TL).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="layer"/> is not a layer of the model.</exception>
    public static FactoredMatrix QK(TransformerBridge bridge, int layer)
    {
        using var scope = Torch.NewScope();
        var w = TlWeights(bridge, layer, $"blocks.{layer}.attn.W_Q", $"blocks.{layer}.attn.W_K");
        return new FactoredMatrix(w[0], w[1].Transpose(-2, -1));
    }

    /// <summary>
    /// Fetches TL-named weights of one layer through <see cref="TransformerBridge.TlNamedParameters"/> (the
    /// bridge's single definition of TL names), disposing the ones not asked for. The returned tensors
    /// are registered with the caller's current scope.
    /// </summary>
    internal static Tensor[] TlWeights(TransformerBridge bridge, int layer, params string[] names)
    {
        ArgumentNullException.ThrowIfNull(bridge);
        if (layer < 0 || layer >= bridge.Config.NLayers)
            throw new ArgumentOutOfRangeException(nameof(layer), layer, $"must be in [0, {bridge.Config.NLayers})");
        return TlWeights(bridge, names).Select(t => t!).ToArray();
    }

    /// <summary>Like <see cref="TlWeights(TransformerBridge, int, string[])"/> without a layer check; missing names give null.</summary>
    internal static Tensor?[] TlWeights(TransformerBridge bridge, string[] names)
    {
        using var scope = Torch.NewScope();
        var all = bridge.TlNamedParameters().ToDictionary(p => p.Name, p => p.Weight);
        return names.Select(n => all.TryGetValue(n, out var t) ? t.MoveToOuterScope() : null).ToArray();
    }

    // ------------------------------------------------------------------ helpers

    private Tensor Live(Tensor t) => _disposed ? throw new ObjectDisposedException(nameof(FactoredMatrix)) : t;

    /// <summary>torch.broadcast_shapes for two shapes, or null when they do not broadcast.</summary>
    private static long[]? BroadcastShapes(long[] x, long[] y)
    {
        var n = Math.Max(x.Length, y.Length);
        var result = new long[n];
        for (var i = 0; i < n; i++)
        {
            var dx = i < n - x.Length ? 1 : x[i - (n - x.Length)];
            var dy = i < n - y.Length ? 1 : y[i - (n - y.Length)];
            if (dx != dy && dx != 1 && dy != 1) return null;
            result[i] = dx == 1 ? dy : dx;
        }
        return result;
    }
}
