using System.Runtime.InteropServices;

namespace SharpLens.Tensors.Native;

/// <summary>
/// The flat C ABI of libsharplens (native/include/sharplens.h). One partial class, split per area.
/// Every function returns a status that <see cref="NativeStatus.Check"/> turns into an exception.
/// Tensor handles are passed as raw <c>nint</c> (at::Tensor*); callers keep the owning objects alive.
/// </summary>
internal static unsafe partial class NativeMethods
{
    internal const string Library = "sharplens";

    [LibraryImport(Library)] internal static partial int sl_abi_version();
    [LibraryImport(Library)] internal static partial byte* sl_torch_version_compiled();
    [LibraryImport(Library)] internal static partial int sl_torch_version_loaded(out byte* version);
    [LibraryImport(Library)] internal static partial byte* sl_last_error();
    [LibraryImport(Library)] internal static partial long sl_last_managed_exception();
    [LibraryImport(Library)] internal static partial int sl_init(delegate* unmanaged<nint, void> release, int numThreads);
    [LibraryImport(Library)] internal static partial int sl_set_num_threads(int numThreads);
    [LibraryImport(Library)] internal static partial int sl_get_num_threads(out int value);
    [LibraryImport(Library)] internal static partial long sl_live_tensors();
    [LibraryImport(Library)] internal static partial int sl_manual_seed(ulong seed);
    [LibraryImport(Library)] internal static partial int sl_cuda_is_available(out int value);
    [LibraryImport(Library)] internal static partial int sl_set_parallel_width(int threads, out int previous);
    [LibraryImport(Library)] internal static partial int sl_grad_mode_set(int enabled, out int previous);
    [LibraryImport(Library)] internal static partial int sl_grad_mode_is_enabled(out int value);
    [LibraryImport(Library)] internal static partial int sl_generator_new(ulong seed, out nint generator);
    [LibraryImport(Library)] internal static partial int sl_generator_free(nint generator);
    [LibraryImport(Library)] internal static partial int sl_cpu_cache_stats(out long cachedBytes, out long limitBytes);
    [LibraryImport(Library)] internal static partial int sl_cpu_cache_set_limit(long limitBytes);
    [LibraryImport(Library)] internal static partial int sl_cpu_cache_release();
    [LibraryImport(Library)] internal static partial int sl_profiler_start();
    [LibraryImport(Library, StringMarshalling = StringMarshalling.Utf8)] internal static partial int sl_profiler_stop(string? path);
}
