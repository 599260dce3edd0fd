namespace SharpLens.Generation;

/// <summary>
/// The keys and values of the positions a model has already run, per layer, so the next forward pass computes only the new
/// positions (TransformerLens's <c>use_past_kv_cache</c>): <see cref="TransformerBridge.Forward(Tensor, KeyValueCache)"/> appends
/// what it computes and attends over everything cached. Hooks fire on the new positions' activations; the attention scores
/// and pattern they see are [batch, head, new, cached + new]. Keys are stored after the rotary embedding, as attention uses
/// them. The cache owns its tensors: dispose it.
/// </summary>
public sealed class KeyValueCache : IDisposable
{
    private readonly Tensor?[] _keys, _values;

    internal KeyValueCache(int layers)
    {
        _keys = new Tensor?[layers];
        _values = new Tensor?[layers];
    }

    /// <summary>Positions cached so far.</summary>
    public long Length { get; private set; }

    /// <summary>Rows of the batch the cache was filled with (0 while empty).</summary>
    public long Batch { get; private set; }

    /// <summary>True once disposed.</summary>
    public bool IsDisposed { get; private set; }

    /// <summary>The cached keys of one layer [batch, positions, kv_head, d_head] (null while empty); the cache keeps ownership.</summary>
    public Tensor? Keys(int layer) => _keys[layer];

    /// <summary>The cached values of one layer (see <see cref="Keys"/>).</summary>
    public Tensor? Values(int layer) => _values[layer];

    /// <summary>Appends one layer's new keys and values and returns everything cached for it (tensors of the caller's scope).</summary>
    internal (Tensor Keys, Tensor Values) Append(int layer, Tensor k, Tensor v)
    {
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        var (oldK, oldV) = (_keys[layer], _values[layer]);
        var allK = oldK is null ? k.Alias() : Torch.Cat([oldK, k], 1);
        var allV = oldV is null ? v.Alias() : Torch.Cat([oldV, v], 1);
        _keys[layer] = allK.Alias().DetachFromScope();
        _values[layer] = allV.Alias().DetachFromScope();
        oldK?.Dispose();
        oldV?.Dispose();
        return (allK, allV);
    }

    /// <summary>Records that a forward pass of <paramref name="positions"/> new positions over <paramref name="batch"/> rows completed.</summary>
    internal void Advance(long batch, long positions)
    {
        Batch = batch;
        Length += positions;
    }

    /// <summary>
    /// Undoes the appends of a forward pass that failed part-way (a hook threw at some layer): layers it already extended
    /// go back to the <see cref="Length"/> positions of the last completed pass, so the cache stays consistent and usable.
    /// </summary>
    internal void Rollback()
    {
        if (IsDisposed) return;
        for (var i = 0; i < _keys.Length; i++)
        {
            _keys[i] = Truncated(_keys[i]);
            _values[i] = Truncated(_values[i]);
        }
    }

    private Tensor? Truncated(Tensor? cached)
    {
        if (cached is null || cached.Size(1) == Length) return cached;
        using (cached)
            return Length == 0 ? null : cached.Narrow(1, 0, Length).Contiguous().DetachFromScope();
    }

    /// <summary>Checks that a forward pass of [batch, positions] may continue this cache in a model of <paramref name="context"/> positions.</summary>
    internal void CheckContinuation(long batch, long positions, long context)
    {
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        if (Length > 0 && batch != Batch)
            throw new ArgumentException($"the key/value cache holds {Batch} rows but the tokens have {batch}");
        if (Length + positions > context)
            throw new ArgumentException($"{Length} cached plus {positions} new positions exceed the model's context of {context}");
    }

    /// <summary>Releases the cached tensors.</summary>
    public void Dispose()
    {
        if (IsDisposed) return;
        IsDisposed = true;
        for (var i = 0; i < _keys.Length; i++)
        {
            _keys[i]?.Dispose();
            _values[i]?.Dispose();
            _keys[i] = _values[i] = null;
        }
    }
}
