namespace SharpLens;

/// <summary>
/// TransformerLens's <c>utils.Slice</c>: how an analysis helper narrows one dimension (positions, batch rows,
/// neurons). Null or <see cref="All"/> keeps everything; an integer selects one index and drops the dimension
/// (negative counts from the end); a range (<c>2..^1</c>, or <see cref="Range(long?, long?, long)"/> with a step) keeps a
/// sub-range; an index list keeps those indices in that order. C# converts <c>int</c>, <c>long</c>, <see cref="System.Range"/>
/// and index arrays implicitly, so <c>posSlice: -1</c> reads as in Python.
/// </summary>
public sealed class Slice
{
    /// <summary>What the slice does.</summary>
    public enum SliceMode
    {
        /// <summary>Keeps every index (TL's "empty").</summary>
        All,
        /// <summary>Selects one index and drops the dimension (TL's "int").</summary>
        Index,
        /// <summary>A start/stop/step range (TL's "slice").</summary>
        Range,
        /// <summary>An explicit index list (TL's "array").</summary>
        Indices,
    }

    private readonly long _index;
    private readonly long? _start, _stop;
    private readonly long _step = 1;
    private readonly long[] _indices = [];

    private Slice(SliceMode mode) => Mode = mode;

    private Slice(long index) : this(SliceMode.Index) => _index = index;

    private Slice(long? start, long? stop, long step) : this(SliceMode.Range)
    {
        if (step < 1) throw new ArgumentOutOfRangeException(nameof(step), step, "a slice step must be at least 1");
        (_start, _stop, _step) = (start, stop, step);
    }

    private Slice(long[] indices) : this(SliceMode.Indices) => _indices = (long[])indices.Clone();

    /// <summary>The kind of slice.</summary>
    public SliceMode Mode { get; }

    /// <summary>Keeps everything.</summary>
    public static Slice All { get; } = new(SliceMode.All);

    /// <summary>Selects <paramref name="index"/> (negative from the end) and drops the dimension.</summary>
    public static Slice At(long index) => new(index);

    /// <summary>Python's <c>slice(start, stop, step)</c>: null bounds mean the ends; negative bounds count from the end.</summary>
    public static Slice Range(long? start, long? stop, long step = 1) => new(start, stop, step);

    /// <summary>Keeps these indices (negative from the end), in this order.</summary>
    public static Slice Of(params long[] indices) => new(indices ?? throw new ArgumentNullException(nameof(indices)));

    /// <summary>Null stands for <see cref="All"/>, as <c>None</c> does in TransformerLens.</summary>
    public static Slice Unwrap(Slice? slice) => slice ?? All;

    /// <summary>One index, dropping the dimension.</summary>
    public static implicit operator Slice(int index) => At(index);

    /// <summary>One index, dropping the dimension.</summary>
    public static implicit operator Slice(long index) => At(index);

    /// <summary>A range; <c>^k</c> counts from the end.</summary>
    public static implicit operator Slice(System.Range range) => Range(
        range.Start.IsFromEnd ? -range.Start.Value : range.Start.Value,
        range.End.IsFromEnd ? (range.End.Value == 0 ? null : -range.End.Value) : range.End.Value);

    /// <summary>An index list.</summary>
    public static implicit operator Slice(long[] indices) => Of(indices);

    /// <summary>An index list.</summary>
    public static implicit operator Slice(int[] indices) => Of(indices.Select(i => (long)i).ToArray());

    /// <summary>This slice, except that a single index becomes a one-element list, which keeps the dimension.</summary>
    public Slice KeepingDimension() => Mode == SliceMode.Index ? Of(_index) : this;

    /// <summary>True when the slice drops the dimension it is applied to.</summary>
    public bool DropsDimension => Mode == SliceMode.Index;

    /// <summary>
    /// Applies the slice to dimension <paramref name="dim"/> of <paramref name="tensor"/> (negative counts from the end);
    /// returns a view where the slice allows one (all modes but <see cref="SliceMode.Indices"/>).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">An index outside the dimension.</exception>
    public Tensor Apply(Tensor tensor, long dim = 0)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        var d = dim < 0 ? dim + tensor.Dim : dim;
        if (d < 0 || d >= tensor.Dim)
            throw new ArgumentOutOfRangeException(nameof(dim), dim, $"a tensor of shape {Tensor.FormatShape(tensor.Shape)} has no dimension {dim}");
        var size = tensor.Size(d);
        switch (Mode)
        {
            case SliceMode.All:
                return tensor.Alias();
            case SliceMode.Index:
                return tensor.Select(d, Resolve(_index, size, d, tensor));
            case SliceMode.Range:
                var (start, stop) = Bounds(size);
                return tensor.Slice(d, start, Math.Max(start, stop), _step);
            default:
                using (var index = Torch.FromArray(_indices.Select(i => Resolve(i, size, d, tensor)).ToArray()))
                using (var onDevice = index.To(tensor.Device))
                    return tensor.IndexSelect(d, onDevice);
        }
    }

    /// <summary>The indices this slice keeps out of a dimension of <paramref name="size"/> (TL's <c>Slice.indices</c>).</summary>
    public long[] Indices(long size)
    {
        switch (Mode)
        {
            case SliceMode.All:
                return Enumerable.Range(0, (int)size).Select(i => (long)i).ToArray();
            case SliceMode.Index:
                return [Resolve(_index, size, 0, null)];
            case SliceMode.Range:
                var (start, stop) = Bounds(size);
                var list = new List<long>();
                for (var i = start; i < stop; i += _step) list.Add(i);
                return list.ToArray();
            default:
                return _indices.Select(i => Resolve(i, size, 0, null)).ToArray();
        }
    }

    private (long Start, long Stop) Bounds(long size)
    {
        static long Clamp(long v, long size) => Math.Clamp(v < 0 ? v + size : v, 0, size);
        return (_start is { } s ? Clamp(s, size) : 0, _stop is { } e ? Clamp(e, size) : size);
    }

    private static long Resolve(long index, long size, long dim, Tensor? tensor)
    {
        var r = index < 0 ? index + size : index;
        if (r < 0 || r >= size)
            throw new ArgumentOutOfRangeException(nameof(index), index,
                $"index {index} is outside a dimension of size {size}" + (tensor is null ? "" : $" (dimension {dim} of shape {Tensor.FormatShape(tensor.Shape)})"));
        return r;
    }

    /// <inheritdoc/>
    public override string ToString() => Mode switch
    {
        SliceMode.All => "Slice(:)",
        SliceMode.Index => $"Slice({_index})",
        SliceMode.Range => $"Slice({_start}:{_stop}:{_step})",
        _ => $"Slice([{string.Join(", ", _indices)}])",
    };
}
