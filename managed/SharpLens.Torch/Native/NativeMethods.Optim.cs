using System.Runtime.InteropServices;

namespace SharpLens.Tensors.Native;

/// <summary>Mirror of sl_optim_options in sharplens.h; the layout must match it field for field.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct OptimOptions
{
    public double Lr;
    public double Momentum;
    public double Dampening;
    public double WeightDecay;
    public double Beta1;
    public double Beta2;
    public double Eps;
    public int Nesterov;
    public int Amsgrad;
    public int Maximize;
    public int Reserved;
}

internal static unsafe partial class NativeMethods
{
    [LibraryImport(Library)] internal static partial int sl_optim_new(int kind, out nint optimizer);
    [LibraryImport(Library)] internal static partial int sl_optim_free(nint optimizer);
    [LibraryImport(Library)] internal static partial int sl_optim_add_group(nint optimizer, nint* parameters, int count, in OptimOptions options);
    [LibraryImport(Library)] internal static partial int sl_optim_set_group_options(nint optimizer, int group, in OptimOptions options);
    [LibraryImport(Library)] internal static partial int sl_optim_get_group_options(nint optimizer, int group, out OptimOptions options);
    [LibraryImport(Library)] internal static partial int sl_optim_step(nint optimizer);
    [LibraryImport(Library)] internal static partial int sl_optim_zero_grad(nint optimizer, int setToNone);
    [LibraryImport(Library, StringMarshalling = StringMarshalling.Utf8)] internal static partial int sl_optim_state(nint optimizer, int group, int index, string name, out nint result);
}
