using System.Runtime.InteropServices;

namespace SharpLens.Tensors.Native;

internal static unsafe partial class NativeMethods
{
    [LibraryImport(Library)] internal static partial int sl_dist_available(out int available, out byte* reason);
    [LibraryImport(Library, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int sl_dist_store_tcp(string host, int port, int isServer, int worldSize, long timeoutMs, out nint store);
    [LibraryImport(Library, StringMarshalling = StringMarshalling.Utf8)] internal static partial int sl_dist_store_prefix(StoreHandle store, string prefix, out nint view);
    [LibraryImport(Library)] internal static partial int sl_dist_store_free(nint store);
    [LibraryImport(Library)] internal static partial int sl_dist_store_port(StoreHandle store, out int port);
    [LibraryImport(Library, StringMarshalling = StringMarshalling.Utf8)] internal static partial int sl_dist_store_set(StoreHandle store, string key, byte* value, long length);
    [LibraryImport(Library, StringMarshalling = StringMarshalling.Utf8)] internal static partial int sl_dist_store_get(StoreHandle store, string key, out byte* value, out long length);
    [LibraryImport(Library, StringMarshalling = StringMarshalling.Utf8)] internal static partial int sl_dist_store_add(StoreHandle store, string key, long delta, out long value);
    [LibraryImport(Library, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int sl_dist_store_compare_set(StoreHandle store, string key, byte* expected, long expectedLength, byte* desired, long desiredLength,
        out byte* value, out long length);
    [LibraryImport(Library)] internal static partial int sl_dist_store_wait(StoreHandle store, byte** keys, int count, long timeoutMs);
    [LibraryImport(Library)] internal static partial int sl_dist_store_check(StoreHandle store, byte** keys, int count, out int all);
    [LibraryImport(Library, StringMarshalling = StringMarshalling.Utf8)] internal static partial int sl_dist_store_delete(StoreHandle store, string key, out int deleted);
    [LibraryImport(Library)] internal static partial int sl_dist_buffer_free(byte* buffer);
    [LibraryImport(Library)] internal static partial int sl_dist_process_group_new(StoreHandle store, int backend, int rank, int worldSize, long timeoutMs, out nint group);
    [LibraryImport(Library)] internal static partial int sl_dist_process_group_free(nint group);
    [LibraryImport(Library)] internal static partial int sl_dist_barrier(ProcessGroupHandle group);
    [LibraryImport(Library)] internal static partial int sl_dist_all_reduce(ProcessGroupHandle group, TensorHandle tensor, int op);
    [LibraryImport(Library)] internal static partial int sl_dist_all_reduce_many(ProcessGroupHandle group, nint* tensors, int count, int op);
    [LibraryImport(Library)] internal static partial int sl_dist_all_gather(ProcessGroupHandle group, TensorHandle input, out nint result);
    [LibraryImport(Library)] internal static partial int sl_dist_broadcast(ProcessGroupHandle group, TensorHandle tensor, int root);
}

/// <summary>Owns one native sl_store (a c10d store, or a prefixed view of one).</summary>
internal sealed class StoreHandle : SafeHandle
{
    internal StoreHandle(nint handle) : base(0, ownsHandle: true) => SetHandle(handle);
    public override bool IsInvalid => handle == 0;
    protected override bool ReleaseHandle() => NativeMethods.sl_dist_store_free(handle) == 0;
}

/// <summary>Owns one native sl_process_group.</summary>
internal sealed class ProcessGroupHandle : SafeHandle
{
    internal ProcessGroupHandle(nint handle) : base(0, ownsHandle: true) => SetHandle(handle);
    public override bool IsInvalid => handle == 0;
    protected override bool ReleaseHandle() => NativeMethods.sl_dist_process_group_free(handle) == 0;
}
