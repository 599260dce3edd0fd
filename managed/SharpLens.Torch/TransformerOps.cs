using System.Runtime.InteropServices;
using SharpLens.Tensors.Native;

namespace SharpLens.Tensors;

/// <summary>How one weight fuses the query, key and value projections (described generically: the order of the parts and the weight's orientation).</summary>
public enum QkvLayout
{
    /// <summary>Part-major, in-out: weight [d_model, 3 * n_heads * d_head], y = x W + b, outputs q | k | v (GPT-2's Conv1D <c>c_attn</c>).</summary>
    PartMajorInOut = 0,
    /// <summary>Head-major, out-in: weight [n_heads * 3 * d_head, d_model], y = x Wᵀ + b, outputs per head q_h k_h v_h (GPT-NeoX's <c>query_key_value</c>).</summary>
    HeadMajorOutIn = 1,
}

/// <summary>
/// The one attention contract every attention path shares (the C ABI's <c>sl_attention_options</c>): query i of p_q sits at
/// key position i + p_k − p_q and sees key j when j ≤ i + p_k − p_q and, with a <see cref="Window"/>, j &gt; i + p_k − p_q − window.
/// Scores are q·k × <see cref="Scale"/>, then <c>softcap · tanh(scores / softcap)</c> with a <see cref="SoftCap"/>, then masked.
/// </summary>
[StructLayout(LayoutKind.Sequential)]
public readonly record struct AttentionOptions
{
    /// <summary>Options with the given scale, no soft-cap and no window.</summary>
    public AttentionOptions(double scale, double softCap = 0, long window = 0, bool softmaxInFloat32 = false)
    {
        Scale = scale;
        SoftCap = softCap;
        Window = window;
        Flags = softmaxInFloat32 ? 1 : 0;
    }

    /// <summary>Multiplies q·k (finite).</summary>
    public double Scale { get; init; }
    /// <summary>0 for none; otherwise the soft-cap of the scaled scores (Gemma 2's <c>attn_logit_softcapping</c>).</summary>
    public double SoftCap { get; init; }
    /// <summary>0 for plain causal attention; otherwise a sliding window of this many keys, the query's own included.</summary>
    public long Window { get; init; }
    private long Flags { get; init; }

    /// <summary>
    /// The softmax in float32 even for float64 scores, cast back: what HuggingFace's eager attention does for the Llama family,
    /// so float64 runs reproduce its float64 numbers (float64 inputs then take the composition).
    /// </summary>
    public bool SoftmaxInFloat32
    {
        get => (Flags & 1) != 0;
        init => Flags = value ? Flags | 1 : Flags & ~1L;
    }
}

/// <summary>Which attention implementation <see cref="TransformerOps.Attention(Tensor, Tensor, Tensor, Tensor?, double, AttentionImplementation)"/> runs.</summary>
public enum AttentionImplementation
{
    /// <summary>The fused kernel where it applies (float32/float64 on CPU), the composition otherwise.</summary>
    Auto = 0,
    /// <summary>The fused CPU kernel: blocked over queries, online softmax, scores never materialised; fails where it does not apply.</summary>
    Fused = 1,
    /// <summary>The plain libtorch composition: matmul, mask, softmax, matmul.</summary>
    Composed = 2,
}

/// <summary>Which rotary implementation <see cref="TransformerOps.Rotary(Tensor, Tensor, long, double, RotaryImplementation)"/> runs.</summary>
public enum RotaryImplementation
{
    /// <summary>The kernel where it applies (float32/float64 on CPU), the composition otherwise.</summary>
    Auto = 0,
    /// <summary>The CPU kernel: one pass over x read through its strides, backward from a saved cos/sin table; fails where it does not apply.</summary>
    Fused = 1,
    /// <summary>The plain libtorch composition: narrow, rotate_half, multiply by cos and sin tables, add, concatenate.</summary>
    Composed = 2,
}

/// <summary>
/// Transformer building blocks that run as one native call each: QKV splitting, the attention core
/// (in one call, or in three stages when hooks need the scores or the pattern) and rotary embeddings.
/// All are differentiable; shapes follow TransformerLens ([batch, pos, head, d_head] for q, k, v, z).
/// </summary>
public static class TransformerOps
{
    /// <summary>
    /// Projects x [batch, pos, d_model] through a fused QKV weight into q, k, v [batch, pos, head, d_head], each a transposed
    /// view of a contiguous [batch, head, pos, d_head] tensor (the fused attention's layout, so it reads them without a copy).
    /// One GEMM, then one split pass (a CUDA kernel on CUDA tensors in a CUDA build); differentiable twice.
    /// </summary>
    public static (Tensor Q, Tensor K, Tensor V) QkvSplit(QkvLayout layout, Tensor x, Tensor weight, Tensor? bias, long nHeads)
    {
        NativeStatus.Check(NativeMethods.sl_qkv_split((int)layout, x.Handle, weight.Handle, Tensor.HandleOrNull(bias), nHeads, out var q, out var k, out var v));
        return (new Tensor(q), new Tensor(k), new Tensor(v));
    }

    /// <summary>
    /// As <see cref="QkvSplit"/> with its own input per part (TransformerLens normalises ln1 separately for q, k and v
    /// when its hooks listen): q from <paramref name="xq"/> through the q part of the fused weight, and so on. One
    /// native autograd op; the backward writes each part's block of the fused weight's gradient once.
    /// </summary>
    public static (Tensor Q, Tensor K, Tensor V) QkvProject(QkvLayout layout, Tensor xq, Tensor xk, Tensor xv, Tensor weight, Tensor? bias, long nHeads)
    {
        NativeStatus.Check(NativeMethods.sl_qkv_project((int)layout, xq.Handle, xk.Handle, xv.Handle, weight.Handle, Tensor.HandleOrNull(bias), nHeads,
            out var q, out var k, out var v));
        return (new Tensor(q), new Tensor(k), new Tensor(v));
    }

    /// <summary>Causal scores q·k × scale as [batch, head, q_pos, k_pos], -inf where masked (future keys, keys whose <paramref name="keyMask"/> is 0).</summary>
    public static Tensor AttentionScores(Tensor q, Tensor k, Tensor? keyMask, double scale) => AttentionScores(q, k, keyMask, new AttentionOptions(scale));

    /// <summary>Scores as [batch, head, q_pos, k_pos] under <paramref name="options"/> (scaled, soft-capped), -inf where the visibility rule or <paramref name="keyMask"/> hides a key.</summary>
    public static Tensor AttentionScores(Tensor q, Tensor k, Tensor? keyMask, in AttentionOptions options) =>
        Tensor.Wrap(NativeMethods.sl_attention_scores(q.Handle, k.Handle, Tensor.HandleOrNull(keyMask), options, out var r), r);

    /// <summary>Softmax over keys in at least float32, cast back to the scores' dtype; fully masked rows give 0.</summary>
    public static Tensor AttentionPattern(Tensor scores) => AttentionPattern(scores, new AttentionOptions(1));

    /// <summary>As <see cref="AttentionPattern(Tensor)"/>, in exactly float32 with <see cref="AttentionOptions.SoftmaxInFloat32"/> (other options are not used).</summary>
    public static Tensor AttentionPattern(Tensor scores, in AttentionOptions options) =>
        Tensor.Wrap(NativeMethods.sl_attention_pattern(scores.Handle, options, out var r), r);

    /// <summary>Weighted values: pattern [batch, head, q, k] and v [batch, k, head, d_head] give z [batch, q, head, d_head].</summary>
    public static Tensor AttentionApply(Tensor pattern, Tensor v) => Tensor.Wrap(NativeMethods.sl_attention_apply(pattern.Handle, v.Handle, out var r), r);

    /// <summary>
    /// <see cref="AttentionApply"/> over the causal part of the pattern only (key j ≤ i + k_pos − q_pos): entries
    /// above the diagonal count as zero whatever they hold, and the kernel skips those tiles. For a pattern that no
    /// hook replaced, where they are zero anyway.
    /// </summary>
    public static Tensor AttentionApplyCausal(Tensor pattern, Tensor v) =>
        Tensor.Wrap(NativeMethods.sl_attention_apply_causal(pattern.Handle, v.Handle, out var r), r);

    /// <summary>
    /// <c>AttentionPattern(AttentionScores(q, k, keyMask, scale))</c> in one call that never stores the scores, for
    /// when a hook needs the pattern but not the scores.
    /// </summary>
    public static Tensor AttentionCausalPattern(Tensor q, Tensor k, Tensor? keyMask, double scale) =>
        AttentionCausalPattern(q, k, keyMask, new AttentionOptions(scale));

    /// <summary><c>AttentionPattern(AttentionScores(q, k, keyMask, options))</c> in one call (see <see cref="AttentionCausalPattern(Tensor, Tensor, Tensor?, double)"/>).</summary>
    public static Tensor AttentionCausalPattern(Tensor q, Tensor k, Tensor? keyMask, in AttentionOptions options) =>
        Tensor.Wrap(NativeMethods.sl_attention_causal_pattern(q.Handle, k.Handle, Tensor.HandleOrNull(keyMask), options, out var r), r);

    /// <summary>
    /// Scores, pattern and weighted values in one call, when nothing needs the intermediate tensors: causal attention
    /// of q [batch, q_pos, head, d_head] over k, v [batch, k_pos, kv_head, d_head] (grouped-query when kv_head divides head),
    /// with keys whose <paramref name="keyMask"/> is 0 hidden. Returns z [batch, q_pos, head, d_head].
    /// </summary>
    public static Tensor Attention(Tensor q, Tensor k, Tensor v, Tensor? keyMask, double scale) =>
        Attention(q, k, v, keyMask, new AttentionOptions(scale), AttentionImplementation.Auto);

    /// <summary>As <see cref="Attention(Tensor, Tensor, Tensor, Tensor?, double)"/>, with a chosen implementation.</summary>
    public static Tensor Attention(Tensor q, Tensor k, Tensor v, Tensor? keyMask, double scale, AttentionImplementation implementation) =>
        Attention(q, k, v, keyMask, new AttentionOptions(scale), implementation);

    /// <summary>
    /// Attention under <paramref name="options"/> (scale, soft-cap, sliding window) in one call: the fused kernel where it applies
    /// (float32/float64 CPU take every option; CUDA takes windows), the composition otherwise.
    /// </summary>
    public static Tensor Attention(Tensor q, Tensor k, Tensor v, Tensor? keyMask, in AttentionOptions options,
        AttentionImplementation implementation = AttentionImplementation.Auto) =>
        Tensor.Wrap(NativeMethods.sl_attention_with((int)implementation, q.Handle, k.Handle, v.Handle, Tensor.HandleOrNull(keyMask), options, out var r), r);

    /// <summary>
    /// LayerNorm's first step: x [..., d] gives centred = x - mean(x) and scale = sqrt(mean(centred²) + eps) [..., 1],
    /// one pass per row (float32/float64 on CPU; float32/float64/float16/bfloat16 on CUDA in a CUDA build, one warp per row;
    /// the libtorch composition elsewhere). The scale is an ordinary tensor of the graph, so a hook can read or
    /// replace it and a backward hook sees its gradient, as at TransformerLens's <c>hook_scale</c>.
    /// </summary>
    public static (Tensor Centred, Tensor Scale) LayerNormCentreScale(Tensor x, double eps)
    {
        NativeStatus.Check(NativeMethods.sl_layer_norm_centre_scale(x.Handle, eps, out var centred, out var scale));
        return (new Tensor(centred), new Tensor(scale));
    }

    /// <summary>
    /// RMSNorm's scale, sqrt(mean(x²) + eps) [..., 1] of x [..., d] (TransformerLens's <c>hook_scale</c>); differentiable. One row
    /// kernel on CUDA tensors in a CUDA build (float32/float64/float16/bfloat16, half types summed in float); elsewhere the
    /// libtorch composition square, mean, add, sqrt.
    /// </summary>
    public static Tensor RmsNormScale(Tensor x, double eps) =>
        Tensor.Wrap(NativeMethods.sl_rms_norm_scale(x.Handle, eps, out var r), r);

    /// <summary>LayerNorm's second step: centred / scale × weight + bias (weight and bias [d], either may be null).</summary>
    public static Tensor LayerNormApplyScale(Tensor centred, Tensor scale, Tensor? weight, Tensor? bias) =>
        Tensor.Wrap(NativeMethods.sl_layer_norm_apply_scale(centred.Handle, scale.Handle, Tensor.HandleOrNull(weight), Tensor.HandleOrNull(bias), out var r), r);

    /// <summary>
    /// GPT-NeoX rotary embedding (rotate-half form) on the first <paramref name="rotaryDim"/> features of x
    /// [batch, pos, head, d_head] (any strides, e.g. a view into a fused QKV output) at int64 positions [batch, pos];
    /// the other features pass through. Angles pos × base^(−2i / rotaryDim) and their cos and sin are computed in
    /// float64 and cast to x's dtype. Returns a contiguous tensor; differentiable w.r.t. x. float32/float64 on CPU
    /// take the one-pass kernel, other dtypes and devices the libtorch composition.
    /// </summary>
    public static Tensor Rotary(Tensor x, Tensor positions, long rotaryDim, double rotaryBase) =>
        Tensor.Wrap(NativeMethods.sl_rotary(x.Handle, positions.Handle, rotaryDim, rotaryBase, out var r), r);

    /// <summary>As <see cref="Rotary(Tensor, Tensor, long, double)"/>, with a chosen implementation (for tests and benchmarks).</summary>
    public static Tensor Rotary(Tensor x, Tensor positions, long rotaryDim, double rotaryBase, RotaryImplementation implementation) =>
        Tensor.Wrap(NativeMethods.sl_rotary_with((int)implementation, x.Handle, positions.Handle, rotaryDim, rotaryBase, out var r), r);

    /// <summary>
    /// Rotary embedding (rotate-half form) from the caller's table: <paramref name="table"/> [rows, 2, half] holds cos then sin
    /// of each row's angles, rows = pos (every batch row at the same positions) or batch × pos; the first 2·half features of
    /// x [batch, pos, head, d_head] rotate. The caller owns the angles (HuggingFace's float32 recipe, rope scaling, an attention
    /// factor folded into cos and sin); the table is cast to x's dtype and gets no gradient. float32/float64 CPU x takes the
    /// one-pass kernel, as does a float32/float64/float16/bfloat16 CUDA x in a CUDA build (rounded op by op as the composition
    /// rounds, so equal to it); other dtypes and devices take the composition.
    /// </summary>
    public static Tensor Rotary(Tensor x, Tensor table, RotaryImplementation implementation = RotaryImplementation.Auto) =>
        Tensor.Wrap(NativeMethods.sl_rotary_table((int)implementation, x.Handle, table.Handle, out var r), r);

    /// <summary>
    /// <see cref="Rotary(Tensor, Tensor, long, double)"/> on q [batch, pos, q_head, d_head] and k [batch, pos, k_head, d_head]
    /// at the same positions in one native call that computes the cos/sin table once for both.
    /// </summary>
    public static (Tensor Q, Tensor K) RotaryQk(Tensor q, Tensor k, Tensor positions, long rotaryDim, double rotaryBase)
    {
        NativeStatus.Check(NativeMethods.sl_rotary_qk(q.Handle, k.Handle, positions.Handle, rotaryDim, rotaryBase, out var qOut, out var kOut));
        return (new Tensor(qOut), new Tensor(kOut));
    }

    /// <summary>
    /// x with the entries at the selected <paramref name="heads"/> (indices along <paramref name="headDim"/>) and
    /// <paramref name="positions"/> (along <paramref name="posDim"/>) replaced by <paramref name="value"/>: zero when
    /// null, otherwise a tensor of x's dtype and device that broadcasts to x (a mean over the batch, say). A null index
    /// list selects every index of that dimension; negative indices count from the end. One native call; the
    /// gradient is zero at the replaced entries.
    /// </summary>
    public static unsafe Tensor Ablate(Tensor x, int headDim, IReadOnlyList<long>? heads, int posDim, IReadOnlyList<long>? positions, Tensor? value = null)
    {
        var h = heads?.ToArray();
        var p = positions?.ToArray();
        fixed (long* hp = h)
        fixed (long* pp = p)
        {
            return Tensor.Wrap(NativeMethods.sl_ablate(x.Handle, headDim, hp, h?.Length ?? -1, posDim, pp, p?.Length ?? -1,
                Tensor.HandleOrNull(value), out var r), r);
        }
    }
}
