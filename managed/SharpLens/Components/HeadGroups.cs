namespace SharpLens.Components;

/// <summary>Grouped-query attention's one tensor operation: each key/value head serves the query heads of its group.</summary>
internal static class HeadGroups
{
    /// <summary>
    /// torch.repeat_interleave(x, repeats, dim): each slice along <paramref name="dim"/> repeated <paramref name="repeats"/> times
    /// in place, as unsqueeze + expand + reshape (one copy, and a kernel on every device; libtorch 1.13's meta device has
    /// none for repeat_interleave).
    /// </summary>
    public static Tensor RepeatInterleave(Tensor x, int dim, int repeats)
    {
        if (repeats == 1) return x;
        var shape = x.Shape;
        var expanded = new List<long>(shape);
        expanded.Insert(dim + 1, repeats);
        var merged = (long[])shape.Clone();
        merged[dim] *= repeats;
        return x.Unsqueeze(dim + 1).Expand([.. expanded]).Reshape(merged);
    }
}
