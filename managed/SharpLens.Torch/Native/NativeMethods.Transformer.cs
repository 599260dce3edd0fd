using System.Runtime.InteropServices;

namespace SharpLens.Tensors.Native;

internal static unsafe partial class NativeMethods
{
    [LibraryImport(Library)] internal static partial int sl_qkv_split(int layout, TensorHandle x, TensorHandle weight, TensorHandle bias, long nHeads, out nint q, out nint k, out nint v);
    [LibraryImport(Library)] internal static partial int sl_qkv_project(int layout, TensorHandle xq, TensorHandle xk, TensorHandle xv, TensorHandle weight, TensorHandle bias, long nHeads, out nint q, out nint k, out nint v);
    [LibraryImport(Library)] internal static partial int sl_attention_scores(TensorHandle q, TensorHandle k, TensorHandle keyMask, in AttentionOptions options, out nint scores);
    [LibraryImport(Library)] internal static partial int sl_attention_pattern(TensorHandle scores, in AttentionOptions options, out nint pattern);
    [LibraryImport(Library)] internal static partial int sl_attention_apply(TensorHandle pattern, TensorHandle v, out nint z);
    [LibraryImport(Library)] internal static partial int sl_attention_apply_causal(TensorHandle pattern, TensorHandle v, out nint z);
    [LibraryImport(Library)] internal static partial int sl_attention_causal_pattern(TensorHandle q, TensorHandle k, TensorHandle keyMask, in AttentionOptions options, out nint pattern);
    [LibraryImport(Library)] internal static partial int sl_attention(TensorHandle q, TensorHandle k, TensorHandle v, TensorHandle keyMask, in AttentionOptions options, out nint z);
    [LibraryImport(Library)] internal static partial int sl_attention_with(int implementation, TensorHandle q, TensorHandle k, TensorHandle v, TensorHandle keyMask, in AttentionOptions options, out nint z);
    [LibraryImport(Library)] internal static partial int sl_layer_norm_centre_scale(TensorHandle x, double eps, out nint centred, out nint scale);
    [LibraryImport(Library)] internal static partial int sl_rms_norm_scale(TensorHandle x, double eps, out nint scale);
    [LibraryImport(Library)] internal static partial int sl_layer_norm_apply_scale(TensorHandle centred, TensorHandle scale, TensorHandle weight, TensorHandle bias, out nint result);
    [LibraryImport(Library)] internal static partial int sl_rotary(TensorHandle x, TensorHandle positions, long rotaryDim, double rotaryBase, out nint result);
    [LibraryImport(Library)] internal static partial int sl_rotary_with(int implementation, TensorHandle x, TensorHandle positions, long rotaryDim, double rotaryBase, out nint result);
    [LibraryImport(Library)] internal static partial int sl_rotary_table(int implementation, TensorHandle x, TensorHandle table, out nint result);
    [LibraryImport(Library)] internal static partial int sl_rotary_qk(TensorHandle q, TensorHandle k, TensorHandle positions, long rotaryDim, double rotaryBase, out nint qOut, out nint kOut);
}
