namespace SharpLens;

/// <summary>The axes a patching index runs over (TransformerLens's <c>AxisNames</c>); the first is always the layer.</summary>
public enum PatchAxis
{
    /// <summary>The layer (which hook point).</summary>
    Layer,
    /// <summary>A position of a [batch, pos, ...] activation.</summary>
    Pos,
    /// <summary>A head (TransformerLens's <c>head_index</c> and <c>head</c>).</summary>
    Head,
    /// <summary>A query position of an attention pattern.</summary>
    DestPos,
    /// <summary>A key position of an attention pattern.</summary>
    SrcPos,
}

/// <summary>
/// Which part of an activation one patch replaces with the clean run's (TransformerLens's patch setters): the index
/// components after the layer select, in order, the activation dimensions <see cref="IndexedDims"/> (counted with the
/// batch as dimension 0); every other dimension is patched whole, for every batch row. Because a patch is a selection,
/// many patches run in one forward pass as rows of one batch.
/// </summary>
/// <param name="Name">TransformerLens's name of the setter.</param>
/// <param name="IndexedDims">The activation dimension each index component after the layer selects.</param>
public sealed record PatchSetter(string Name, IReadOnlyList<int> IndexedDims)
{
    /// <summary>[layer, pos] on a [batch, pos, ...] activation (<c>layer_pos_patch_setter</c>).</summary>
    public static PatchSetter LayerPos { get; } = new("layer_pos_patch_setter", [1]);

    /// <summary>[layer, pos, head] on [batch, pos, head, d_head] (<c>layer_pos_head_vector_patch_setter</c>).</summary>
    public static PatchSetter LayerPosHeadVector { get; } = new("layer_pos_head_vector_patch_setter", [1, 2]);

    /// <summary>[layer, head] on [batch, pos, head, d_head], every position (<c>layer_head_vector_patch_setter</c>).</summary>
    public static PatchSetter LayerHeadVector { get; } = new("layer_head_vector_patch_setter", [2]);

    /// <summary>[layer, head] on a [batch, head, dest, src] pattern (<c>layer_head_pattern_patch_setter</c>).</summary>
    public static PatchSetter LayerHeadPattern { get; } = new("layer_head_pattern_patch_setter", [1]);

    /// <summary>[layer, head, dest] on a pattern (<c>layer_head_pos_pattern_patch_setter</c>).</summary>
    public static PatchSetter LayerHeadPosPattern { get; } = new("layer_head_pos_pattern_patch_setter", [1, 2]);

    /// <summary>[layer, head, dest, src] on a pattern (<c>layer_head_dest_src_pos_pattern_patch_setter</c>).</summary>
    public static PatchSetter LayerHeadDestSrcPosPattern { get; } = new("layer_head_dest_src_pos_pattern_patch_setter", [1, 2, 3]);
}
