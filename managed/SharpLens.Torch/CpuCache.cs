using SharpLens.Tensors.Native;

namespace SharpLens.Tensors;

/// <summary>
/// The caching CPU allocator the native library installs at load. Freed tensor buffers of 1 MiB and more are kept,
/// up to <see cref="LimitBytes"/>, and reused by the next tensor of about the same size, so the large tensors of a
/// repeated pass (logits, their gradient, embedding gradients) do not fault in fresh pages each time. The default
/// limit is 2 GiB, or an eighth of physical memory on a smaller machine; the environment variable
/// <c>SHARPLENS_CPU_CACHE_MB</c> sets it at load (0 turns caching off).
/// </summary>
public static class CpuCache
{
    /// <summary>Bytes of freed buffers parked in the cache now (not counting tensors alive).</summary>
    public static long CachedBytes
    {
        get
        {
            NativeStatus.Check(NativeMethods.sl_cpu_cache_stats(out var cached, out _));
            return cached;
        }
    }

    /// <summary>Most bytes the cache keeps; setting it lower frees parked buffers beyond it. 0 disables caching.</summary>
    public static long LimitBytes
    {
        get
        {
            NativeStatus.Check(NativeMethods.sl_cpu_cache_stats(out _, out var limit));
            return limit;
        }
        set => NativeStatus.Check(NativeMethods.sl_cpu_cache_set_limit(value));
    }

    /// <summary>Returns every parked buffer to the system. Tensors alive are untouched.</summary>
    public static void Release() => NativeStatus.Check(NativeMethods.sl_cpu_cache_release());
}
