using System.Diagnostics;
using System.Globalization;

namespace SharpLens.Tensors;

/// <summary>
/// A rank that another rank of its <see cref="DistributedSession"/> considers gone (see
/// <see cref="DistributedSession.FindUnresponsive"/>).
/// </summary>
/// <param name="Rank">The rank.</param>
/// <param name="Left">True when it closed its session (it will not come back); false when its heartbeat went silent.</param>
/// <param name="Silence">How long the observer has seen no heartbeat from it (zero when it left).</param>
/// <param name="Timeout">The session's timeout the silence exceeded.</param>
public sealed record UnresponsiveRank(int Rank, bool Left, TimeSpan Silence, TimeSpan Timeout)
{
    /// <summary>A sentence naming the rank and what happened to it.</summary>
    public override string ToString() => Left
        ? $"rank {Rank} left the job (closed its session)"
        : string.Create(CultureInfo.InvariantCulture,
            $"rank {Rank} sent no heartbeat for {Silence.TotalSeconds:0.#} s (the distributed timeout is {Timeout.TotalSeconds:0.#} s): its process died, was stopped or frozen, or lost the store");
}

/// <summary>
/// A rank's sign of life: a background thread bumps the counter <c>sharplens/{restart}/alive/{rank}</c> every
/// <see cref="Interval"/> for as long as the session is open, whatever the rank's main thread is doing, so work that takes
/// longer than the timeout does not silence it, while a process that is killed, stopped, frozen or cut off from the store
/// falls silent. It talks to the store over a connection of its own: libtorch 1.13's TCPStore client has no lock, and the
/// session's connection belongs to the main thread. Disposing stops it and sets <c>sharplens/{restart}/left/{rank}</c>, so
/// the others tell a rank that closed its session at once from one that went silent.
/// </summary>
internal sealed class DistributedHeartbeat : IDisposable
{
    private readonly DistributedStore _connection;
    private readonly DistributedStore _keys;
    private readonly string _aliveKey;
    private readonly string _leftKey;
    private readonly ManualResetEventSlim _stop = new();
    private readonly Thread _thread;
    private bool _disposed;

    /// <summary>Starts beating for <paramref name="rank"/> on a new connection to <paramref name="store"/>'s server.</summary>
    public DistributedHeartbeat(DistributedStore store, int restartCount, int rank, TimeSpan timeout)
    {
        Interval = IntervalFor(timeout);
        // At least one second: libtorch 1.13 counts the connect timeout in whole seconds.
        _connection = DistributedStore.Connect(store.HostName, store.Port, timeout < TimeSpan.FromSeconds(1) ? TimeSpan.FromSeconds(1) : timeout);
        _keys = _connection.WithPrefix(Prefix(restartCount));
        (_aliveKey, _leftKey) = (AliveKey(rank), LeftKey(rank));
        _thread = new Thread(Beat) { IsBackground = true, Name = $"sharplens heartbeat (rank {rank})" };
        _thread.Start();
    }

    /// <summary>Time between beats: a fifth of the timeout (four may be missed before it runs out), at most 5 s.</summary>
    public TimeSpan Interval { get; }

    internal static TimeSpan IntervalFor(TimeSpan timeout) =>
        TimeSpan.FromTicks(Math.Clamp(timeout.Ticks / 5, TimeSpan.FromMilliseconds(10).Ticks, TimeSpan.FromSeconds(5).Ticks));

    internal static string Prefix(int restartCount) => $"sharplens/{restartCount}";
    internal static string AliveKey(int rank) => $"alive/{rank}";
    internal static string LeftKey(int rank) => $"left/{rank}";

    private void Beat()
    {
        do
        {
            try
            {
                _keys.Add(_aliveKey, 1);
            }
            catch (Exception)
            {
                // One failed beat (a store timeout, a store that is gone) is skipped, not the end of beating: a transient
                // error must not silence a live rank for good. Nothing escapes: an exception left unhandled on a
                // background thread would end the whole process.
            }
        }
        while (!_stop.Wait(Interval));
    }

    /// <summary>Stops beating and marks the rank as having left.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _stop.Set();
        // A beat blocked on a store that no longer answers is abandoned (the connection then stays open) rather than waited for.
        var stopped = _thread.Join(TimeSpan.FromSeconds(10));
        if (stopped)
        {
            try
            {
                _keys.Set(_leftKey, "1");
            }
            catch (Exception e) when (e is TorchException or ArgumentException)
            {
                // The store is gone: nobody is left to tell.
            }
            _keys.Dispose();
            _connection.Dispose();
        }
        _stop.Dispose();
    }
}

/// <summary>
/// The ranks' heartbeats as a process that is not a rank sees them (torchrun-style launchers, which host the job's store):
/// <see cref="Find"/> answers as <see cref="DistributedSession.FindUnresponsive"/> does, so a launcher can stop exactly the
/// workers that are stopped or hung, never one that is alive but busy.
/// </summary>
public sealed class DistributedHeartbeatMonitor
{
    private readonly HeartbeatWatch _watch;

    /// <summary>Watches the <paramref name="worldSize"/> ranks of attempt <paramref name="restartCount"/> through <paramref name="store"/>.</summary>
    /// <param name="store">A connection to the job's store (the launcher's own host, say); used only from the calling thread.</param>
    /// <param name="restartCount">torchrun's restart count of the attempt whose ranks to watch.</param>
    /// <param name="worldSize">Number of ranks.</param>
    /// <param name="timeout">How long a heartbeat may stay unchanged before its rank counts as silent.</param>
    public DistributedHeartbeatMonitor(DistributedStore store, int restartCount, int worldSize, TimeSpan timeout)
    {
        ArgumentNullException.ThrowIfNull(store);
        ArgumentOutOfRangeException.ThrowIfLessThan(worldSize, 1);
        _watch = new HeartbeatWatch(store, restartCount, self: -1, worldSize, timeout);
    }

    /// <summary>
    /// The first of <paramref name="ranks"/> that left the job or whose heartbeat this monitor has seen unchanged for longer than
    /// the timeout; null when all are alive. Call it repeatedly: silence is measured between this monitor's own looks.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">A rank is outside 0 to worldSize - 1.</exception>
    public UnresponsiveRank? Find(IEnumerable<int> ranks) => _watch.Find(ranks);
}

/// <summary>
/// What one rank has seen of the others' heartbeats: for each rank, the last counter value and when (on this process's clock)
/// it last changed. Silence is measured between this process's own looks, so clocks of different machines never meet,
/// and a look after a long pause of the observer that finds the counter moved counts the rank as alive.
/// </summary>
internal sealed class HeartbeatWatch(DistributedStore store, int restartCount, int self, int worldSize, TimeSpan timeout)
{
    private readonly string _prefix = DistributedHeartbeat.Prefix(restartCount) + "/";
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private readonly Dictionary<int, (long Beats, TimeSpan ChangedAt)> _seen = [];
    private readonly Lock _lock = new();

    public UnresponsiveRank? Find(IEnumerable<int> ranks)
    {
        ArgumentNullException.ThrowIfNull(ranks);
        lock (_lock)
        {
            foreach (var rank in ranks)
            {
                if (rank < 0 || rank >= worldSize) throw new ArgumentOutOfRangeException(nameof(ranks), rank, $"ranks are 0 to {worldSize - 1}");
                if (rank == self) continue;
                if (store.Check(_prefix + DistributedHeartbeat.LeftKey(rank))) return new UnresponsiveRank(rank, true, TimeSpan.Zero, timeout);
                var beats = store.Add(_prefix + DistributedHeartbeat.AliveKey(rank), 0);
                var now = _clock.Elapsed;
                if (!_seen.TryGetValue(rank, out var seen) || seen.Beats != beats)
                {
                    _seen[rank] = (beats, now);
                    continue;
                }
                if (now - seen.ChangedAt > timeout) return new UnresponsiveRank(rank, false, now - seen.ChangedAt, timeout);
            }
            return null;
        }
    }
}
