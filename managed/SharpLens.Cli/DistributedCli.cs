using System.CommandLine;
using System.Diagnostics;
using System.Globalization;

namespace SharpLens.Cli;

/// <summary>The options every multi-process command shares: <c>--nproc</c> and <c>--dist-timeout</c>.</summary>
internal sealed class DistributedOptions
{
    public Option<int> Nproc { get; } = new("--nproc")
    {
        Description = "Worker processes on this machine (the cores are divided between them), coordinated through a c10d TCPStore. " +
                      "Under torchrun (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set) the process joins that job instead; --nproc may then be left out.",
        DefaultValueFactory = _ => 1, HelpName = "N",
    };

    public Option<double> Timeout { get; } = new("--dist-timeout")
    {
        Description = "Seconds any distributed wait may take (reaching the store, joining the group, a collective), and how long a rank's heartbeat " +
                      "may stay silent before the others declare it dead (a live rank keeps beating however long its work takes)",
        DefaultValueFactory = _ => 300, HelpName = "SECONDS",
    };

    public void AddTo(Command command)
    {
        command.Options.Add(Nproc);
        command.Options.Add(Timeout);
    }

    public (int Nproc, TimeSpan Timeout) Read(ParseResult parse)
    {
        var nproc = parse.GetValue(Nproc);
        var seconds = parse.GetValue(Timeout);
        if (nproc < 1) throw new CliException($"--nproc must be at least 1, got {nproc}");
        if (!(seconds > 0) || double.IsInfinity(seconds)) throw new CliException($"--dist-timeout must be a positive number of seconds, got {seconds}");
        return (nproc, TimeSpan.FromSeconds(seconds));
    }
}

/// <summary>
/// How a command runs across processes: as a launcher (<c>--nproc N</c> with no job in the environment) that hosts a
/// TCPStore and starts N copies of the same command line as workers, or as one worker of a job described by torchrun's
/// environment variables (set by that launcher, by torchrun, or by any launcher that follows the contract).
/// </summary>
internal static class DistributedCli
{
    /// <summary>The job this process belongs to, or null when it runs alone.</summary>
    public static DistributedEnvironment? Environment()
    {
        try
        {
            return DistributedEnvironment.FromEnvironment();
        }
        catch (DistributedException e)
        {
            throw new CliException(e.Message, e);
        }
    }

    /// <summary>
    /// Joins the job as one worker: intra-op threads default to the cores divided by the local processes, then the store
    /// and the Gloo process group. Failures (unreachable store, a rank that never joins) become a <see cref="CliException"/>
    /// naming the rank.
    /// </summary>
    public static DistributedSession Join(DistributedEnvironment env, int nproc, TimeSpan timeout)
    {
        if (nproc != 1 && nproc != env.LocalWorldSize)
            throw new CliException($"--nproc {nproc} disagrees with the job in the environment (LOCAL_WORLD_SIZE {env.LocalWorldSize}): " +
                                   "under torchrun leave --nproc out");
        if (string.IsNullOrWhiteSpace(System.Environment.GetEnvironmentVariable("SHARPLENS_NUM_THREADS")))
            Torch.NumThreads = Math.Max(1, System.Environment.ProcessorCount / env.LocalWorldSize);
        try
        {
            return Distributed.Init(env, timeout);
        }
        catch (DistributedException e)
        {
            throw new CliException(e.Message, e);
        }
        catch (TorchException e)
        {
            throw new CliException($"rank {env.Rank} of {env.WorldSize}: {e.Message}", e);
        }
    }

    /// <summary>
    /// Launches <paramref name="nproc"/> workers running this same command line on this machine, each with torchrun's
    /// variables, <c>TORCHELASTIC_USE_AGENT_STORE=True</c> (this launcher hosts the store, so any worker may die without taking
    /// it down) and a share of the intra-op threads. Relays their output; when one fails, records it in the store under
    /// <see cref="Sweeps.DistributedSweep.FailedKey"/> so the others stop waiting for it. Once one has failed, a worker whose
    /// heartbeat then stays silent for <paramref name="timeout"/> (a stopped or frozen process, which never exits by itself) is
    /// killed and named, so the launcher always ends; a worker that is alive, however long its work takes, is waited for.
    /// Returns 0 when every worker succeeded.
    /// </summary>
    public static int Launch(CliContext context, int nproc, TimeSpan timeout)
    {
        try
        {
            Distributed.EnsureAvailable();
        }
        catch (DistributedException e)
        {
            throw new CliException(e.Message, e);
        }
        using var store = DistributedStore.Host("127.0.0.1", 0, timeout);
        var threads = Math.Max(1, Torch.NumThreads / nproc);
        context.Out.WriteLine($"launching {nproc} worker processes ({threads} intra-op thread(s) each), store at 127.0.0.1:{store.Port}");
        context.Out.Flush();
        var relay = new object();
        var workers = new List<Process>();
        try
        {
            for (var rank = 0; rank < nproc; rank++)
            {
                var psi = SelfCommand(context.Arguments);
                foreach (var (k, v) in DistributedEnvironment.ForLocalWorker("127.0.0.1", store.Port, rank, nproc)) psi.Environment[k] = v;
                psi.Environment["SHARPLENS_NUM_THREADS"] = threads.ToString(CultureInfo.InvariantCulture);
                var p = new Process { StartInfo = psi };
                p.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (relay) { context.Out.WriteLine(e.Data); context.Out.Flush(); } };
                p.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (relay) { context.Error.WriteLine(e.Data); context.Error.Flush(); } };
                p.Start();
                p.BeginOutputReadLine();
                p.BeginErrorReadLine();
                workers.Add(p);
            }
            var reported = new bool[nproc];
            var failures = new List<string>();
            // Watched only after a failure: until then the ranks watch each other (and fail on a silent one themselves).
            DistributedHeartbeatMonitor? heartbeats = null;
            var lastLook = Stopwatch.StartNew();
            var lookEvery = TimeSpan.FromTicks(Math.Max(TimeSpan.FromMilliseconds(50).Ticks, timeout.Ticks / 5));  // two store requests per rank a look
            while (true)
            {
                var running = 0;
                for (var rank = 0; rank < nproc; rank++)
                {
                    var p = workers[rank];
                    if (!p.HasExited)
                    {
                        running++;
                        continue;
                    }
                    if (reported[rank]) continue;
                    reported[rank] = true;
                    p.WaitForExit();  // drains the relayed output
                    if (p.ExitCode == 0) continue;
                    var what = $"rank {rank} (pid {p.Id}) {Describe(p.ExitCode)}";
                    failures.Add(what);
                    heartbeats ??= new DistributedHeartbeatMonitor(store, 0, nproc, timeout);
                    if (!store.Check(Sweeps.DistributedSweep.FailedKey)) store.Set(Sweeps.DistributedSweep.FailedKey, what);
                }
                if (running == 0) break;
                // The job has failed. A worker whose heartbeat is silent for the timeout is stopped or frozen and will never end by
                // itself: kill it and say so. A live one is waited for (it writes what it can and ends).
                if (heartbeats is not null && lastLook.Elapsed >= lookEvery)
                {
                    lastLook.Restart();
                    var alive = Enumerable.Range(0, nproc).Where(r => !reported[r] && !workers[r].HasExited);
                    if (heartbeats.Find(alive) is { Left: false } silent)
                    {
                        var p = workers[silent.Rank];
                        KillQuietly(p);
                        p.WaitForExit(TimeSpan.FromSeconds(30));
                        reported[silent.Rank] = true;
                        failures.Add($"rank {silent.Rank} (pid {p.Id}) was killed by the launcher: {silent}");
                        continue;
                    }
                }
                Thread.Sleep(50);
            }
            if (failures.Count == 0) return Program.Success;
            throw new CliException($"{failures.Count} of {nproc} worker(s) failed: {string.Join("; ", failures)}");
        }
        finally
        {
            foreach (var p in workers)
            {
                KillQuietly(p);
                p.Dispose();
            }
        }
    }

    private static void KillQuietly(Process p)
    {
        try
        {
            if (!p.HasExited) p.Kill(entireProcessTree: true);
        }
        catch (InvalidOperationException)
        {
            // exited meanwhile
        }
    }

    private static string Describe(int code) =>
        code > 128 && code < 160 ? $"was killed by signal {code - 128}" : $"exited with code {code}";

    /// <summary>This program, as a new process with <paramref name="args"/>: the <c>lens</c> apphost, or the dotnet host running lens.dll.</summary>
    private static ProcessStartInfo SelfCommand(IReadOnlyList<string> args)
    {
        var processPath = System.Environment.ProcessPath;
        ProcessStartInfo psi;
        if (processPath is not null && Path.GetFileNameWithoutExtension(processPath) == "lens")
        {
            psi = new ProcessStartInfo(processPath);
        }
        else
        {
            var host = processPath is not null && Path.GetFileNameWithoutExtension(processPath) == "dotnet" ? processPath
                : System.Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } h && File.Exists(h) ? h : "dotnet";
            psi = new ProcessStartInfo(host);
            psi.ArgumentList.Add("exec");
            psi.ArgumentList.Add(typeof(Program).Assembly.Location);
        }
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.UseShellExecute = false;
        psi.RedirectStandardOutput = true;
        psi.RedirectStandardError = true;
        return psi;
    }
}
