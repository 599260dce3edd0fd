using System.Globalization;
using SharpLens.Tensors.Native;

namespace SharpLens.Tensors;

/// <summary>One operator's or autograd node's share of a profiled stretch of work.</summary>
/// <param name="Op">ATen operator (<c>aten::mm</c>) or autograd node (<c>MmBackward0</c>, <c>CppNode&lt;…&gt;</c>).</param>
/// <param name="Calls">How many times it ran.</param>
/// <param name="SelfMs">Milliseconds in it, less the operators it called.</param>
/// <param name="TotalMs">Milliseconds in it, including the operators it called.</param>
public sealed record ProfiledOp(string Op, long Calls, double SelfMs, double TotalMs);

/// <summary>
/// libtorch's CPU operator profiler on the calling thread: <see cref="Start"/>, run the work, then dispose the
/// returned session to read per-operator totals. Time inside parallel regions is charged to the operator that
/// started them. Profiling adds a little cost to every operator call, so profile and time in separate runs.
/// </summary>
public static class Profiler
{
    /// <summary>Starts profiling the calling thread; throws when a profile is already running on it.</summary>
    public static ProfileSession Start()
    {
        NativeStatus.Check(NativeMethods.sl_profiler_start());
        return new ProfileSession();
    }
}

/// <summary>A running profile; <see cref="Stop"/> ends it and returns the totals, sorted by self time.</summary>
public sealed class ProfileSession : IDisposable
{
    private bool _stopped;

    internal ProfileSession() { }

    /// <summary>Stops the profiler and returns one row per operator, largest self time first.</summary>
    public IReadOnlyList<ProfiledOp> Stop()
    {
        ObjectDisposedException.ThrowIf(_stopped, this);
        _stopped = true;
        var path = Path.Combine(Path.GetTempPath(), $"sharplens-profile-{Environment.ProcessId}-{Guid.NewGuid():N}.tsv");
        try
        {
            NativeStatus.Check(NativeMethods.sl_profiler_stop(path));
            return File.ReadLines(path).Skip(1).Select(Parse).ToList();
        }
        finally
        {
            File.Delete(path);
        }
    }

    /// <summary>Stops the profiler if <see cref="Stop"/> has not, discarding the totals.</summary>
    public void Dispose()
    {
        if (_stopped) return;
        _stopped = true;
        NativeStatus.Check(NativeMethods.sl_profiler_stop(null));
    }

    private static ProfiledOp Parse(string line)
    {
        var f = line.Split('\t');
        return new ProfiledOp(f[0], long.Parse(f[1], CultureInfo.InvariantCulture),
            double.Parse(f[2], CultureInfo.InvariantCulture), double.Parse(f[3], CultureInfo.InvariantCulture));
    }
}
