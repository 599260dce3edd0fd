using System.Collections.Concurrent;
using System.Runtime.ExceptionServices;
using System.Runtime.InteropServices;
using System.Text.RegularExpressions;

namespace SharpLens.Tensors.Native;

/// <summary>Status codes of the C ABI (sl_status).</summary>
internal enum Status
{
    Ok = 0,
    Torch = 1,
    Std = 2,
    Unknown = 3,
    Argument = 4,
    ManagedCallback = 5,
}

/// <summary>
/// Turns native statuses into exceptions, and carries managed exceptions thrown inside callbacks
/// (gradient hooks) across the native frames back to the managed caller with their original type.
/// </summary>
internal static unsafe partial class NativeStatus
{
    private static readonly ConcurrentDictionary<long, ExceptionDispatchInfo> PendingExceptions = new();
    private static long _nextExceptionId;

    /// <summary>Throws the exception that a non-zero status stands for.</summary>
    internal static void Check(int status)
    {
        if (status != 0) Throw(status);
    }

    private static void Throw(int status)
    {
        // Read both thread-local values before any other native call can overwrite them.
        var message = Marshal.PtrToStringUTF8((nint)NativeMethods.sl_last_error()) ?? "";
        var managedId = NativeMethods.sl_last_managed_exception();
        switch ((Status)status)
        {
            case Status.ManagedCallback:
                if (managedId == 0)
                {
                    var m = ManagedMarker().Match(message);
                    if (m.Success) managedId = long.Parse(m.Groups[1].Value);
                }
                if (PendingExceptions.TryRemove(managedId, out var pending)) pending.Throw();
                throw new TorchException((Status)status, message);
            case Status.Argument:
                throw new ArgumentException(message);
            default:
                throw new TorchException((Status)status, message);
        }
    }

    /// <summary>Keeps a callback's exception until the native operation that ran the callback returns.</summary>
    internal static long Stash(Exception exception)
    {
        var id = Interlocked.Increment(ref _nextExceptionId);
        PendingExceptions[id] = ExceptionDispatchInfo.Capture(exception);
        return id;
    }

    [GeneratedRegex(@"\[sharplens-managed-exception:(\d+)\]")]
    private static partial Regex ManagedMarker();
}
