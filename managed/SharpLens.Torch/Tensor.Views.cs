using SharpLens.Tensors.Native;

namespace SharpLens.Tensors;

public sealed unsafe partial class Tensor
{
    /// <summary>Same data in a new shape (a view when possible, a copy otherwise). One entry may be -1.</summary>
    public Tensor Reshape(params long[] shape)
    {
        fixed (long* p = shape) return Wrap(NativeMethods.sl_tensor_reshape(Handle, p, shape.Length, out var r), r);
    }

    /// <summary>A view with a new shape; fails when the strides do not allow one (then use <see cref="Reshape"/>).</summary>
    public Tensor View(params long[] shape)
    {
        fixed (long* p = shape) return Wrap(NativeMethods.sl_tensor_view(Handle, p, shape.Length, out var r), r);
    }

    /// <summary>A view with the dimensions reordered.</summary>
    public Tensor Permute(params long[] dims)
    {
        fixed (long* p = dims) return Wrap(NativeMethods.sl_tensor_permute(Handle, p, dims.Length, out var r), r);
    }

    /// <summary>A view with two dimensions swapped.</summary>
    public Tensor Transpose(long dim0, long dim1) => Wrap(NativeMethods.sl_tensor_transpose(Handle, dim0, dim1, out var r), r);

    /// <summary>A view of <paramref name="length"/> entries from <paramref name="start"/> along a dimension.</summary>
    public Tensor Narrow(long dim, long start, long length) => Wrap(NativeMethods.sl_tensor_narrow(Handle, dim, start, length, out var r), r);

    /// <summary>A view of one index along a dimension, which is removed.</summary>
    public Tensor Select(long dim, long index) => Wrap(NativeMethods.sl_tensor_select(Handle, dim, index, out var r), r);

    /// <summary>Python's <c>t[start:end:step]</c> along a dimension (negative bounds count from the end, clamped like Python).</summary>
    public Tensor Slice(long dim, long start, long end, long step = 1)
    {
        if (step <= 0) throw new ArgumentOutOfRangeException(nameof(step), step, "slice step must be positive");
        return Wrap(NativeMethods.sl_tensor_slice(Handle, dim, start, end, step, out var r), r);
    }

    /// <summary>A view with a new dimension of size 1 at <paramref name="dim"/>.</summary>
    public Tensor Unsqueeze(long dim) => Wrap(NativeMethods.sl_tensor_unsqueeze(Handle, dim, out var r), r);

    /// <summary>A view without size-1 dimensions (all of them, or just <paramref name="dim"/>).</summary>
    public Tensor Squeeze(long? dim = null) =>
        Wrap(NativeMethods.sl_tensor_squeeze(Handle, dim.HasValue ? 1 : 0, dim ?? 0, out var r), r);

    /// <summary>A broadcast view to a larger shape (-1 keeps a size).</summary>
    public Tensor Expand(params long[] shape)
    {
        fixed (long* p = shape) return Wrap(NativeMethods.sl_tensor_expand(Handle, p, shape.Length, out var r), r);
    }

    /// <summary>This tensor in row-major layout (itself, as a new handle, when it already is).</summary>
    public Tensor Contiguous() => Wrap(NativeMethods.sl_tensor_contiguous(Handle, out var r), r);

    /// <summary>Dimensions <paramref name="startDim"/>..<paramref name="endDim"/> merged into one.</summary>
    public Tensor Flatten(long startDim = 0, long endDim = -1) => Wrap(NativeMethods.sl_tensor_flatten(Handle, startDim, endDim, out var r), r);

    /// <summary>Entries at the given int64 indices along a dimension.</summary>
    public Tensor IndexSelect(long dim, Tensor index) => Wrap(NativeMethods.sl_tensor_index_select(Handle, dim, index.Handle, out var r), r);

    /// <summary><c>out[i][j] = self[index[i][j]][j]</c> for dim 0, and so on (torch.gather).</summary>
    public Tensor Gather(long dim, Tensor index) => Wrap(NativeMethods.sl_tensor_gather(Handle, dim, index.Handle, out var r), r);

    /// <summary>A copy of this tensor with <paramref name="src"/> written at <paramref name="index"/> along a dimension (torch.scatter).</summary>
    public Tensor Scatter(long dim, Tensor index, Tensor src) =>
        Wrap(NativeMethods.sl_tensor_scatter(Handle, dim, index.Handle, src.Handle, out var r), r);

    /// <summary>A copy with <paramref name="value"/> where the boolean mask (broadcast) is true.</summary>
    public Tensor MaskedFill(Tensor mask, double value) => Wrap(NativeMethods.sl_tensor_masked_fill(Handle, mask.Handle, value, out var r), r);

    /// <summary>Pieces of <paramref name="splitSize"/> along a dimension (the last may be smaller).</summary>
    public Tensor[] Split(long splitSize, long dim = 0)
    {
        if (splitSize <= 0) throw new ArgumentOutOfRangeException(nameof(splitSize), splitSize, "split size must be positive");
        var total = Size(dim);
        var sizes = new List<long>();
        for (long at = 0; at < total; at += splitSize) sizes.Add(Math.Min(splitSize, total - at));
        if (sizes.Count == 0) sizes.Add(0);
        return Split(sizes.ToArray(), dim);
    }

    /// <summary>Pieces of the given sizes along a dimension; the sizes must add up to the dimension's size.</summary>
    public Tensor[] Split(long[] sizes, long dim = 0)
    {
        var outs = new nint[sizes.Length];
        fixed (long* s = sizes)
        fixed (nint* o = outs)
            NativeStatus.Check(NativeMethods.sl_tensor_split_sizes(Handle, s, sizes.Length, dim, o));
        return outs.Select(h => new Tensor(h)).ToArray();
    }

    /// <summary>At most <paramref name="chunks"/> pieces of equal size (the last may be smaller), as torch.chunk.</summary>
    public Tensor[] Chunk(long chunks, long dim = 0)
    {
        if (chunks <= 0) throw new ArgumentOutOfRangeException(nameof(chunks), chunks, "chunk count must be positive");
        var size = Size(dim);
        return Split(Math.Max(1, (size + chunks - 1) / chunks), dim);
    }

    /// <summary>
    /// Python-style indexing: integers select (and drop) a dimension, ranges slice, <see cref="TensorIndex.NewAxis"/>
    /// inserts one, <see cref="TensorIndex.Ellipsis"/> stands for the remaining dimensions.
    /// Example: <c>t[.., 0, 1..^1]</c>.
    /// </summary>
    public Tensor this[params TensorIndex[] indices] => TensorIndex.Apply(this, indices);
}

/// <summary>One entry of a <see cref="Tensor"/> indexer: an integer, a range, a new axis or an ellipsis.</summary>
public readonly struct TensorIndex
{
    private enum Kind { Single, Range, NewAxis, Ellipsis }

    private readonly Kind _kind;
    private readonly Index _index;
    private readonly Range _range;

    private TensorIndex(Kind kind, Index index = default, Range range = default)
    {
        _kind = kind;
        _index = index;
        _range = range;
    }

    /// <summary>Inserts a dimension of size 1 (Python's <c>None</c>).</summary>
    public static readonly TensorIndex NewAxis = new(Kind.NewAxis);

    /// <summary>Every remaining dimension (Python's <c>...</c>).</summary>
    public static readonly TensorIndex Ellipsis = new(Kind.Ellipsis);

    /// <summary>Selects one position (negative counts from the end).</summary>
    public static implicit operator TensorIndex(long index) =>
        new(Kind.Single, index < 0 ? Index.FromEnd((int)-index) : Index.FromStart((int)index));

    /// <summary>Selects one position.</summary>
    public static implicit operator TensorIndex(Index index) => new(Kind.Single, index);

    /// <summary>Slices a range (<c>^1</c> counts from the end).</summary>
    public static implicit operator TensorIndex(Range range) => new(Kind.Range, range: range);

    private static long Resolve(Index i, long size) => i.IsFromEnd ? size - i.Value : i.Value;

    internal static Tensor Apply(Tensor source, TensorIndex[] indices)
    {
        var consuming = indices.Count(i => i._kind is Kind.Single or Kind.Range);
        if (indices.Count(i => i._kind == Kind.Ellipsis) > 1) throw new ArgumentException("an index may hold at most one Ellipsis");
        if (consuming > source.Dim)
            throw new ArgumentException($"too many indices ({consuming}) for a tensor of {source.Dim} dimensions");
        var current = source.Alias();
        long dim = 0;        // position in the tensor being built
        long sourceDim = 0;  // the dimension of the source tensor the next index refers to
        try
        {
            foreach (var idx in indices)
            {
                Tensor next;
                switch (idx._kind)
                {
                    case Kind.Single:
                    {
                        var size = current.Size(dim);
                        var pos = Resolve(idx._index, size);
                        if (pos < 0 || pos >= size)
                            throw new IndexOutOfRangeException($"index {idx._index} is out of range for dimension {sourceDim} of size {size}");
                        next = current.Select(dim, pos);
                        sourceDim++;
                        break;
                    }
                    case Kind.Range:
                    {
                        var size = current.Size(dim);
                        var start = Math.Clamp(Resolve(idx._range.Start, size), 0, size);
                        var end = Math.Clamp(Resolve(idx._range.End, size), start, size);
                        next = current.Slice(dim, start, end);
                        dim++;
                        sourceDim++;
                        break;
                    }
                    case Kind.NewAxis:
                        next = current.Unsqueeze(dim);
                        dim++;
                        break;
                    default:
                        var skipped = current.Dim - dim - (consuming - CountConsumedBefore(indices, idx));
                        dim += skipped;
                        sourceDim += skipped;
                        continue;
                }
                current.Dispose();
                current = next;
            }
            return current;
        }
        catch
        {
            current.Dispose();
            throw;
        }
    }

    private static int CountConsumedBefore(TensorIndex[] indices, TensorIndex ellipsis)
    {
        var n = 0;
        foreach (var i in indices)
        {
            if (i._kind == Kind.Ellipsis) break;
            if (i._kind is Kind.Single or Kind.Range) n++;
        }
        return n;
    }
}
