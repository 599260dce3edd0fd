using System.Collections;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using SharpLens.Tensors.Native;

namespace SharpLens.Tensors;

/// <summary>A distributed job cannot start: no distributed support in this build, or a bad torchrun-style environment.</summary>
public sealed class DistributedException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>The reduction of a collective (torch.distributed.ReduceOp; named apart from the tensor reductions).</summary>
public enum CollectiveOp
{
    /// <summary>Sum over ranks.</summary>
    Sum = 0,
    /// <summary>Product over ranks.</summary>
    Product = 1,
    /// <summary>Minimum over ranks.</summary>
    Min = 2,
    /// <summary>Maximum over ranks.</summary>
    Max = 3,
}

/// <summary>The c10d backend of a <see cref="ProcessGroup"/>.</summary>
public enum DistributedBackend
{
    /// <summary>Gloo: CPU tensors, any network.</summary>
    Gloo = 0,
    /// <summary>NCCL: CUDA tensors (builds with a CUDA libtorch and NCCL only).</summary>
    Nccl = 1,
}

/// <summary>
/// One process's place in a job, in torchrun's environment contract: <c>MASTER_ADDR</c>, <c>MASTER_PORT</c>,
/// <c>RANK</c>, <c>WORLD_SIZE</c>, <c>LOCAL_RANK</c>, <c>LOCAL_WORLD_SIZE</c>, and
/// <c>TORCHELASTIC_USE_AGENT_STORE</c> (<c>True</c>: the launcher hosts the TCPStore at MASTER_ADDR:MASTER_PORT;
/// otherwise rank 0 hosts it, as <c>init_process_group("env://")</c> does).
/// </summary>
/// <param name="MasterAddress">Host of the TCPStore.</param>
/// <param name="MasterPort">Port of the TCPStore.</param>
/// <param name="Rank">This process's rank, 0 ≤ Rank &lt; WorldSize.</param>
/// <param name="WorldSize">Number of processes in the job.</param>
/// <param name="LocalRank">Rank among the processes on this machine (the GPU index with one process per GPU).</param>
/// <param name="LocalWorldSize">Processes on this machine (they share its cores).</param>
/// <param name="AgentHostsStore">The launcher (torchrun's agent, <c>lens --nproc</c>) hosts the store; no rank does.</param>
/// <param name="RestartCount">torchrun's <c>TORCHELASTIC_RESTART_COUNT</c> (0 when unset): keys of a restarted job do not meet the old ones.</param>
public sealed record DistributedEnvironment(string MasterAddress, int MasterPort, int Rank, int WorldSize, int LocalRank, int LocalWorldSize,
    bool AgentHostsStore, int RestartCount = 0)
{
    /// <summary>True when the environment describes a job (<c>WORLD_SIZE</c> or <c>RANK</c> is set).</summary>
    public static bool IsPresent(IDictionary? variables = null)
    {
        variables ??= Environment.GetEnvironmentVariables();
        return variables.Contains("WORLD_SIZE") || variables.Contains("RANK");
    }

    /// <summary>
    /// Reads the job from environment variables (the process's, or <paramref name="variables"/>). Returns null when neither
    /// <c>WORLD_SIZE</c> nor <c>RANK</c> is set; throws <see cref="DistributedException"/> naming the variable when one is
    /// missing or malformed. <c>LOCAL_WORLD_SIZE</c> defaults to 1 and <c>LOCAL_RANK</c> to 0 (launchers other than torchrun).
    /// </summary>
    public static DistributedEnvironment? FromEnvironment(IDictionary? variables = null)
    {
        variables ??= Environment.GetEnvironmentVariables();
        if (!IsPresent(variables)) return null;
        string? Get(string name) => variables[name] as string;
        string Required(string name) =>
            string.IsNullOrWhiteSpace(Get(name))
                ? throw new DistributedException($"{name} is not set, but {(variables.Contains("RANK") ? "RANK" : "WORLD_SIZE")} is: a torchrun-style job needs " +
                                                 "MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE")
                : Get(name)!.Trim();
        int Integer(string name, int min, int max, string? fallback = null)
        {
            var text = fallback is not null && string.IsNullOrWhiteSpace(Get(name)) ? fallback : Required(name);
            if (!int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var v) || v < min || v > max)
                throw new DistributedException($"{name} must be an integer in [{min}, {max}], got '{text}'");
            return v;
        }
        var worldSize = Integer("WORLD_SIZE", 1, 1 << 20);
        var rank = Integer("RANK", 0, worldSize - 1);
        var localWorldSize = Integer("LOCAL_WORLD_SIZE", 1, worldSize, fallback: "1");
        var localRank = Integer("LOCAL_RANK", 0, localWorldSize - 1, fallback: "0");
        var address = Required("MASTER_ADDR");
        var port = Integer("MASTER_PORT", 1, 65535);
        var agent = string.Equals(Get("TORCHELASTIC_USE_AGENT_STORE"), "True", StringComparison.OrdinalIgnoreCase);
        var restart = Integer("TORCHELASTIC_RESTART_COUNT", 0, int.MaxValue, fallback: "0");
        return new DistributedEnvironment(address, port, rank, worldSize, localRank, localWorldSize, agent, restart);
    }

    /// <summary>The variables a launcher sets for local worker <paramref name="rank"/> of <paramref name="worldSize"/> on one machine.</summary>
    public static IReadOnlyDictionary<string, string> ForLocalWorker(string address, int port, int rank, int worldSize) => new Dictionary<string, string>
    {
        ["MASTER_ADDR"] = address,
        ["MASTER_PORT"] = port.ToString(CultureInfo.InvariantCulture),
        ["RANK"] = rank.ToString(CultureInfo.InvariantCulture),
        ["WORLD_SIZE"] = worldSize.ToString(CultureInfo.InvariantCulture),
        ["LOCAL_RANK"] = rank.ToString(CultureInfo.InvariantCulture),
        ["LOCAL_WORLD_SIZE"] = worldSize.ToString(CultureInfo.InvariantCulture),
        ["GROUP_RANK"] = "0",
        ["TORCHELASTIC_USE_AGENT_STORE"] = "True",
    };
}

/// <summary>
/// torch.distributed over libtorch's c10d: whether this build has it, and <see cref="Init"/>, which joins a job
/// (store + process group) as <c>init_process_group("env://")</c> does.
/// </summary>
public static unsafe class Distributed
{
    static Distributed() => NativeLibraryLoader.EnsureInitialized();

    /// <summary>True when libsharplens was built with distributed support (c10d with Gloo).</summary>
    public static bool IsAvailable => Query().Available;

    /// <summary>Why distributed support is missing ("" when it is available).</summary>
    public static string UnavailableReason => Query().Reason;

    private static (bool Available, string Reason) Query()
    {
        NativeStatus.Check(NativeMethods.sl_dist_available(out var available, out var reason));
        return (available != 0, Marshal.PtrToStringUTF8((nint)reason) ?? "");
    }

    /// <summary>Throws <see cref="DistributedException"/> with the build's reason when distributed support is missing.</summary>
    public static void EnsureAvailable()
    {
        var (available, reason) = Query();
        if (!available)
            throw new DistributedException($"SharpLens was built without distributed support (torch.distributed c10d): {reason}. " +
                                           "Install libgloo-dev (./build.sh does) or use a libtorch with distributed support, then rebuild.");
    }

    /// <summary>
    /// Joins the job <paramref name="environment"/> describes: connects to (or, as rank 0 without an agent store, hosts) the
    /// TCPStore at MASTER_ADDR:MASTER_PORT and creates the process group of all ranks. Every wait is bounded by
    /// <paramref name="timeout"/>: a rank that cannot reach the store fails with a message naming the address and the timeout.
    /// </summary>
    public static DistributedSession Init(DistributedEnvironment environment, TimeSpan timeout, DistributedBackend backend = DistributedBackend.Gloo)
    {
        ArgumentNullException.ThrowIfNull(environment);
        EnsureAvailable();
        var e = environment;
        var hosts = !e.AgentHostsStore && e.Rank == 0;
        // Without an agent, every rank waits for all to connect (as env:// does); an agent's store counts no workers.
        var store = hosts
            ? DistributedStore.Host(e.MasterAddress, e.MasterPort, timeout, e.WorldSize)
            : DistributedStore.Connect(e.MasterAddress, e.MasterPort, timeout, e.AgentHostsStore ? 0 : e.WorldSize);
        try
        {
            using var groupStore = store.WithPrefix($"sharplens/{e.RestartCount}/pg");
            var group = ProcessGroup.Create(groupStore, e.Rank, e.WorldSize, timeout, backend);
            try
            {
                return new DistributedSession(e, store, group, timeout);
            }
            catch
            {
                group.Dispose();
                throw;
            }
        }
        catch
        {
            store.Dispose();
            throw;
        }
    }

    /// <summary><see cref="Init"/> from the process's torchrun-style environment variables.</summary>
    /// <exception cref="DistributedException">The variables are missing or malformed, or distributed support is missing.</exception>
    public static DistributedSession InitFromEnvironment(TimeSpan timeout, DistributedBackend backend = DistributedBackend.Gloo) =>
        Init(DistributedEnvironment.FromEnvironment() ?? throw new DistributedException(
            "no distributed job in the environment: set MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE (torchrun does)"), timeout, backend);
}

/// <summary>
/// This process's membership of a job: its <see cref="Rank"/> in <see cref="WorldSize"/>, the job's <see cref="Store"/>
/// and its <see cref="Group"/>. While it is open, a background thread sends this rank's heartbeat through the store, so the
/// other ranks can tell a rank that is alive but busy (however long its work takes) from one that died or hangs
/// (<see cref="FindUnresponsive"/>). Dispose it to leave (heartbeat first, then the process group, then the store).
/// </summary>
public sealed class DistributedSession : IDisposable
{
    private readonly DistributedHeartbeat _heartbeat;
    private readonly HeartbeatWatch _watch;

    internal DistributedSession(DistributedEnvironment environment, DistributedStore store, ProcessGroup group, TimeSpan timeout)
    {
        Environment = environment;
        Store = store;
        Group = group;
        Timeout = timeout;
        _heartbeat = new DistributedHeartbeat(store, environment.RestartCount, environment.Rank, timeout);
        _watch = new HeartbeatWatch(store, environment.RestartCount, environment.Rank, environment.WorldSize, timeout);
    }

    /// <summary>Where this process stands in the job.</summary>
    public DistributedEnvironment Environment { get; }
    /// <summary>The job's TCPStore (keys under <c>sharplens/</c> are the session's own: the group's and the heartbeats).</summary>
    public DistributedStore Store { get; }
    /// <summary>The process group of all ranks.</summary>
    public ProcessGroup Group { get; }
    /// <summary>The bound on every wait of this session, and on how long a rank's heartbeat may stay silent.</summary>
    public TimeSpan Timeout { get; }
    /// <summary>How often this rank's heartbeat is sent: a fifth of <see cref="Timeout"/>, at most 5 s.</summary>
    public TimeSpan HeartbeatInterval => _heartbeat.Interval;
    /// <summary>This process's rank.</summary>
    public int Rank => Environment.Rank;
    /// <summary>Number of ranks.</summary>
    public int WorldSize => Environment.WorldSize;

    /// <summary>
    /// The first of <paramref name="ranks"/> (this rank is skipped) that has left the job or whose heartbeat this process has
    /// seen unchanged for longer than <see cref="Timeout"/>; null when all are alive. Call it repeatedly while waiting for
    /// other ranks: silence is measured on this process's clock from the first call that saw a rank's current heartbeat, so
    /// a rank is declared silent only after at least <see cref="Timeout"/> of calls. A rank whose process runs keeps beating
    /// whatever it computes; a rank whose process was killed, stopped (SIGSTOP), frozen or cut off from the store does not.
    /// (A process that is alive but loops forever is indistinguishable from a slow one and is not reported.) Costs two
    /// store requests per rank: poll it every <see cref="HeartbeatInterval"/>, not in a tight loop. Uses <see cref="Store"/>.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">A rank is outside 0 to <see cref="WorldSize"/> - 1.</exception>
    public UnresponsiveRank? FindUnresponsive(IEnumerable<int> ranks) => _watch.Find(ranks);

    /// <summary>Leaves the job: stops the heartbeat (marking this rank as left), destroys the process group, then closes the store.</summary>
    public void Dispose()
    {
        _heartbeat.Dispose();
        Group.Dispose();
        Store.Dispose();
    }
}

/// <summary>
/// A c10d key-value store (torch.distributed.TCPStore, or a prefixed view of one): shared by every rank of a job for
/// rendezvous, counters (atomic <see cref="Add"/>) and claims (<see cref="CompareSet"/>). Values are bytes; the string
/// overloads use UTF-8.
/// </summary>
public sealed unsafe class DistributedStore : IDisposable
{
    private readonly StoreHandle _handle;

    private DistributedStore(nint handle, string host)
    {
        _handle = new StoreHandle(handle);
        HostName = host;
    }

    /// <summary>The host the store was opened with.</summary>
    public string HostName { get; }

    /// <summary>The store's port (the one the OS picked when hosted on port 0).</summary>
    public int Port
    {
        get
        {
            NativeStatus.Check(NativeMethods.sl_dist_store_port(_handle, out var port));
            return port;
        }
    }

    /// <summary>
    /// Hosts a TCPStore on <paramref name="host"/>:<paramref name="port"/> (0: a free port; read <see cref="Port"/>) and
    /// connects to it. With <paramref name="worldSize"/> &gt; 0 it returns once that many processes (this one included)
    /// have connected, failing after <paramref name="timeout"/>.
    /// </summary>
    public static DistributedStore Host(string host, int port, TimeSpan timeout, int worldSize = 0) => Open(host, port, true, worldSize, timeout);

    /// <summary>Connects to the TCPStore at <paramref name="host"/>:<paramref name="port"/>, retrying until <paramref name="timeout"/>
    /// (libtorch 1.13 counts it in whole seconds: give at least one).</summary>
    public static DistributedStore Connect(string host, int port, TimeSpan timeout, int worldSize = 0) => Open(host, port, false, worldSize, timeout);

    private static DistributedStore Open(string host, int port, bool server, int worldSize, TimeSpan timeout)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(host);
        Distributed.EnsureAvailable();
        NativeStatus.Check(NativeMethods.sl_dist_store_tcp(host, port, server ? 1 : 0, worldSize, Milliseconds(timeout), out var h));
        return new DistributedStore(h, host);
    }

    internal static long Milliseconds(TimeSpan timeout)
    {
        if (timeout <= TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(timeout), timeout, "a timeout must be positive");
        return Math.Max(1, (long)Math.Ceiling(timeout.TotalMilliseconds));
    }

    internal StoreHandle Handle => _handle.IsClosed ? throw new ObjectDisposedException(nameof(DistributedStore)) : _handle;

    /// <summary>A view of this store in which key <c>k</c> is <c>prefix/k</c> (c10d's PrefixStore); dispose it separately.</summary>
    public DistributedStore WithPrefix(string prefix)
    {
        ArgumentNullException.ThrowIfNull(prefix);
        NativeStatus.Check(NativeMethods.sl_dist_store_prefix(Handle, prefix, out var h));
        return new DistributedStore(h, HostName);
    }

    /// <summary>Sets <paramref name="key"/> to <paramref name="value"/>.</summary>
    public void Set(string key, ReadOnlySpan<byte> value)
    {
        fixed (byte* p = value) NativeStatus.Check(NativeMethods.sl_dist_store_set(Handle, key, p, value.Length));
    }

    /// <summary>Sets <paramref name="key"/> to the UTF-8 bytes of <paramref name="value"/>.</summary>
    public void Set(string key, string value) => Set(key, Encoding.UTF8.GetBytes(value));

    /// <summary>The value of <paramref name="key"/>, waiting for it up to the store's timeout.</summary>
    public byte[] Get(string key)
    {
        NativeStatus.Check(NativeMethods.sl_dist_store_get(Handle, key, out var value, out var length));
        return TakeBuffer(value, length);
    }

    /// <summary><see cref="Get"/> as UTF-8 text.</summary>
    public string GetString(string key) => Encoding.UTF8.GetString(Get(key));

    /// <summary>Atomically adds <paramref name="delta"/> to the counter at <paramref name="key"/> (missing: 0); returns the new value.</summary>
    public long Add(string key, long delta)
    {
        NativeStatus.Check(NativeMethods.sl_dist_store_add(Handle, key, delta, out var v));
        return v;
    }

    /// <summary>
    /// Atomically sets <paramref name="key"/> to <paramref name="desired"/> if it holds <paramref name="expected"/> (or is
    /// missing and <paramref name="expected"/> is empty). Returns what the key holds afterwards: <paramref name="desired"/>
    /// when the swap happened, the current value otherwise.
    /// </summary>
    public byte[] CompareSet(string key, ReadOnlySpan<byte> expected, ReadOnlySpan<byte> desired)
    {
        byte* value;
        long length;
        fixed (byte* e = expected)
        fixed (byte* d = desired)
            NativeStatus.Check(NativeMethods.sl_dist_store_compare_set(Handle, key, e, expected.Length, d, desired.Length, out value, out length));
        return TakeBuffer(value, length);
    }

    /// <summary><see cref="CompareSet(string, ReadOnlySpan{byte}, ReadOnlySpan{byte})"/> on UTF-8 text.</summary>
    public string CompareSet(string key, string expected, string desired) =>
        Encoding.UTF8.GetString(CompareSet(key, Encoding.UTF8.GetBytes(expected), Encoding.UTF8.GetBytes(desired)));

    /// <summary>Waits until every key exists, at most <paramref name="timeout"/> (null: the store's timeout).</summary>
    public void Wait(IReadOnlyList<string> keys, TimeSpan? timeout = null) =>
        WithKeys(keys, (p, n) => NativeMethods.sl_dist_store_wait(Handle, p, n, timeout is { } t ? Milliseconds(t) : -1));

    /// <summary>True when every key exists now (does not wait).</summary>
    public bool Check(params string[] keys)
    {
        var all = 0;
        WithKeys(keys, (p, n) => NativeMethods.sl_dist_store_check(Handle, p, n, out all));
        return all != 0;
    }

    /// <summary>Deletes <paramref name="key"/>; true when it existed.</summary>
    public bool Delete(string key)
    {
        NativeStatus.Check(NativeMethods.sl_dist_store_delete(Handle, key, out var deleted));
        return deleted != 0;
    }

    private delegate int KeysCall(byte** keys, int count);

    private static void WithKeys(IReadOnlyList<string> keys, KeysCall call)
    {
        ArgumentNullException.ThrowIfNull(keys);
        var pinned = keys.Select(k => GCHandle.Alloc(Encoding.UTF8.GetBytes((k ?? throw new ArgumentException("a key is null")) + "\0"), GCHandleType.Pinned)).ToArray();
        try
        {
            var pointers = pinned.Select(h => (nint)h.AddrOfPinnedObject()).ToArray();
            fixed (nint* p = pointers) NativeStatus.Check(call((byte**)p, pointers.Length));
        }
        finally
        {
            foreach (var h in pinned) h.Free();
        }
    }

    private static byte[] TakeBuffer(byte* value, long length)
    {
        try
        {
            return length == 0 ? [] : new ReadOnlySpan<byte>(value, checked((int)length)).ToArray();
        }
        finally
        {
            NativeMethods.sl_dist_buffer_free(value);
        }
    }

    /// <summary>Closes this handle (a hosted store stops serving once every handle on it is closed).</summary>
    public void Dispose() => _handle.Dispose();
}

/// <summary>
/// A c10d process group (Gloo on CPU, NCCL on CUDA): collectives over the tensors of every rank. Each collective
/// blocks until all ranks have called it, or fails after the group's timeout naming the operation and the rank.
/// </summary>
public sealed unsafe class ProcessGroup : IDisposable
{
    private readonly ProcessGroupHandle _handle;

    private ProcessGroup(nint handle, int rank, int worldSize, DistributedBackend backend)
    {
        _handle = new ProcessGroupHandle(handle);
        Rank = rank;
        WorldSize = worldSize;
        Backend = backend;
    }

    /// <summary>This process's rank in the group.</summary>
    public int Rank { get; }
    /// <summary>Number of ranks.</summary>
    public int WorldSize { get; }
    /// <summary>The backend.</summary>
    public DistributedBackend Backend { get; }

    /// <summary>
    /// Creates the group: every one of <paramref name="worldSize"/> ranks calls this with a store holding the same keys
    /// (use a fresh <see cref="DistributedStore.WithPrefix"/> per group); it returns once all have joined, or fails after
    /// <paramref name="timeout"/>, which also bounds every later collective.
    /// </summary>
    public static ProcessGroup Create(DistributedStore store, int rank, int worldSize, TimeSpan timeout, DistributedBackend backend = DistributedBackend.Gloo)
    {
        ArgumentNullException.ThrowIfNull(store);
        NativeStatus.Check(NativeMethods.sl_dist_process_group_new(store.Handle, (int)backend, rank, worldSize, DistributedStore.Milliseconds(timeout), out var h));
        return new ProcessGroup(h, rank, worldSize, backend);
    }

    private ProcessGroupHandle Handle => _handle.IsClosed ? throw new ObjectDisposedException(nameof(ProcessGroup)) : _handle;

    /// <summary>Returns once every rank has called it.</summary>
    public void Barrier() => NativeStatus.Check(NativeMethods.sl_dist_barrier(Handle));

    /// <summary>Reduces <paramref name="tensor"/> over all ranks, in place (same shape and dtype on every rank).</summary>
    public void AllReduce(Tensor tensor, CollectiveOp op = CollectiveOp.Sum)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        NativeStatus.Check(NativeMethods.sl_dist_all_reduce(Handle, tensor.Handle, (int)op));
    }

    /// <summary>Reduces several tensors of one dtype in one collective (one flat buffer), in place, as DDP buckets gradients.</summary>
    public void AllReduce(IReadOnlyList<Tensor> tensors, CollectiveOp op = CollectiveOp.Sum)
    {
        ArgumentNullException.ThrowIfNull(tensors);
        var status = Torch.WithHandleArray(tensors, h =>
        {
            fixed (nint* p = h) return NativeMethods.sl_dist_all_reduce_many(Handle, p, h.Length, (int)op);
        });
        NativeStatus.Check(status);
    }

    /// <summary>Every rank's <paramref name="input"/> (same shape and dtype everywhere), stacked in rank order: [WorldSize, ...].</summary>
    public Tensor AllGather(Tensor input)
    {
        ArgumentNullException.ThrowIfNull(input);
        return Tensor.Wrap(NativeMethods.sl_dist_all_gather(Handle, input.Handle, out var r), r);
    }

    /// <summary>Gives every rank's <paramref name="tensor"/> the values of rank <paramref name="root"/>'s, in place.</summary>
    public void Broadcast(Tensor tensor, int root = 0)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        NativeStatus.Check(NativeMethods.sl_dist_broadcast(Handle, tensor.Handle, root));
    }

    /// <summary>Destroys the group (its connections to the other ranks).</summary>
    public void Dispose() => _handle.Dispose();
}
