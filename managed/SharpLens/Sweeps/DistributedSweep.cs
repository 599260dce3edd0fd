using System.Diagnostics;
using System.Globalization;
using SharpLens.Tokenization;

namespace SharpLens.Sweeps;

/// <summary>
/// One rank's part of an <see cref="AttributionSweep"/> run by many processes (on one machine or several) that share the
/// output folder and a c10d TCPStore:
/// <list type="number">
/// <item>Rank 0 checks the folder (the same manifest and argument checks as a single-process run), removes temporary
/// files of killed runs, and lists the chunks whose files are not on disk: a chunk file exists only once complete (it is
/// written under a temporary name and renamed), so the files on disk are the truth, and a rerun rebuilds the claims from
/// them. It publishes that list (and the argument hash, which every rank checks against its own) in the store.</item>
/// <item>Every rank claims the next missing chunk with the store's atomic add, computes it, writes it atomically (renamed
/// into place without replacing: a chunk is never written twice), and counts it done. Slow ranks just claim fewer.</item>
/// <item>When all claimed chunks are done, <c>--aggregate mean</c> runs its all_reduce, and rank 0 writes
/// <c>summary.csv</c> and the manifest from the chunk files, so the folder is the same as after a single-process run.</item>
/// </list>
/// A rank that dies leaves its claimed chunk unwritten: the others finish every other chunk, then stop with a message
/// naming the dead rank and the missing chunks (at once when the launcher reports the death under <see cref="FailedKey"/>,
/// else once the rank's session heartbeat has been silent for the session's timeout; see
/// <see cref="DistributedSession.FindUnresponsive"/>). Rerunning the same command computes only those. A rank that is alive
/// keeps beating however long a chunk takes, so no bound is put on the time a chunk may take.
/// </summary>
public static class DistributedSweep
{
    /// <summary>Key of the job's root store that a launcher sets (to a description) when a worker process died.</summary>
    public const string FailedKey = "lens/failed";

    /// <summary>
    /// Runs this rank's part. Every rank of <paramref name="session"/> calls it with the same options; progress goes to
    /// <paramref name="output"/>. <paramref name="chunkDelay"/> (a test and demonstration knob) sleeps after computing
    /// each chunk and before writing it, widening the window in which a kill lands mid-chunk.
    /// </summary>
    /// <exception cref="SweepException">The folder or arguments are refused (on rank 0, reported on every rank), ranks see
    /// different arguments, or the job ends with chunks missing (a rank died): rerun to complete them.</exception>
    public static SweepSummary Run(TransformerBridge model, BpeTokenizer? tokenizer, SweepOptions options, DistributedSession session,
        TextWriter output, TextWriter errors, TimeSpan chunkDelay = default)
    {
        ArgumentNullException.ThrowIfNull(session);
        ArgumentNullException.ThrowIfNull(output);
        var (rank, world) = (session.Rank, session.WorldSize);
        var me = $"rank {rank}/{world}";
        // Every rank reads the prompts and computes the arguments itself; only rank 0 reports bad lines.
        var plan = AttributionSweep.Prepare(model, tokenizer, options, rank == 0 ? errors : TextWriter.Null);
        using var store = session.Store.WithPrefix($"lens-sweep/{session.Environment.RestartCount}");

        IDisposable? folderLock = null;
        try
        {
            List<int> todo;
            int alreadyDone;
            if (rank == 0)
            {
                try
                {
                    folderLock = AttributionSweep.Lock(plan.Directory);
                    (todo, alreadyDone) = PlanChunks(plan, errors);
                }
                catch (Exception e) when (e is SweepException or IOException or UnauthorizedAccessException)
                {
                    store.Set("todo", "error:" + e.Message);
                    throw e as SweepException ?? new SweepException($"cannot write to output folder '{options.OutputDirectory}': {e.Message}", e);
                }
                store.Set("arguments", plan.ArgumentsHash);
                store.Set("todo", string.Join(",", todo));
            }
            else
            {
                var published = WaitForKey(session, store, "todo", me);
                if (published.StartsWith("error:", StringComparison.Ordinal))
                    throw new SweepException($"{me}: rank 0 could not start the sweep: {published["error:".Length..]}");
                var arguments = store.GetString("arguments");
                if (arguments != plan.ArgumentsHash)
                    throw new SweepException($"{me} sees other arguments than rank 0 (argument hash {plan.ArgumentsHash[..12]} vs {arguments[..12]}): " +
                                             "every rank needs the same model files, prompts file and options");
                todo = published.Length == 0 ? [] : published.Split(',').Select(x => int.Parse(x, CultureInfo.InvariantCulture)).ToList();
                alreadyDone = plan.Chunks - todo.Count;
            }
            if (rank == 0 && alreadyDone > 0)
                output.WriteLine(todo.Count == 0
                    ? $"all {plan.Chunks} chunk(s) of {plan.Pairs.Count} pair(s) are already complete in {options.OutputDirectory}"
                    : $"resuming: {alreadyDone} of {plan.Chunks} chunk(s) already complete; {todo.Count} to compute on {world} rank(s)");
            output.Flush();

            var computed = ComputeClaimed(plan, store, todo, me, output, chunkDelay);
            WaitForAll(plan, session, store, todo, me);

            if (options.AggregateMean) SweepMean.Write(plan, session.Group, output);
            if (rank == 0)
            {
                Finish(plan);
                if (todo.Count > 0)
                    output.WriteLine($"done: {plan.Pairs.Count} pair(s) in {plan.Chunks} chunk(s) under {options.OutputDirectory} (summary: {AttributionSweep.SummaryName}), {world} rank(s)");
                output.Flush();
            }
            return new SweepSummary(plan.Pairs.Count, plan.SkippedLines, plan.Chunks, alreadyDone, computed);
        }
        finally
        {
            folderLock?.Dispose();
        }
    }

    /// <summary>Rank 0: checks the folder and its manifest, removes temporary files, and lists the chunks not on disk.</summary>
    private static (List<int> Todo, int AlreadyDone) PlanChunks(SweepPlan plan, TextWriter errors)
    {
        AttributionSweep.RemoveTemporaryFiles(plan.Directory);
        AttributionSweep.OpenManifest(plan);
        var todo = new List<int>();
        for (var c = 0; c < plan.Chunks; c++)
        {
            var path = Path.Combine(plan.Directory, AttributionSweep.ChunkName(c));
            if (!File.Exists(path))
            {
                todo.Add(c);
                continue;
            }
            // Complete by construction (renamed into place whole); a file that does not read as this sweep's chunk was damaged
            // outside the sweep and is recomputed.
            string? problem = null;
            try
            {
                using var file = Tensors.IO.SafeTensorsFile.Open(path);
                if (!file.Metadata.TryGetValue("arguments_sha256", out var hash) || hash != plan.ArgumentsHash) problem = "it belongs to another sweep";
                else if (!file.Metadata.TryGetValue("chunk", out var index) || index != c.ToString(CultureInfo.InvariantCulture)) problem = "its metadata names another chunk";
            }
            catch (Exception e) when (e is Tensors.IO.SafeTensorsFormatException or IOException)
            {
                problem = e.Message;
            }
            if (problem is null) continue;
            errors.WriteLine($"warning: {AttributionSweep.ChunkName(c)} is unreadable as chunk {c} of this sweep ({problem}); recomputing it");
            File.Delete(path);
            todo.Add(c);
        }
        return (todo, plan.Chunks - todo.Count);
    }

    /// <summary>Claims chunks through the store's counter until none is left; returns how many this rank computed.</summary>
    private static int ComputeClaimed(SweepPlan plan, DistributedStore store, List<int> todo, string me, TextWriter output, TimeSpan chunkDelay)
    {
        var metadata = AttributionSweep.ChunkMetadata(plan);
        var clock = Stopwatch.StartNew();
        var (computed, pairs) = (0, 0);
        while (true)
        {
            var claim = store.Add("next", 1) - 1;  // atomic: each index goes to exactly one rank
            if (claim >= todo.Count) break;
            var c = todo[(int)claim];
            var chunkPairs = plan.ChunkPairs(c);
            var chunk = SweepChunk.Compute(plan.Patcher, c, chunkPairs, plan.Positions, plan.Options.BatchSize, plan.Options.Exact, plan.Storage);
            if (chunkDelay > TimeSpan.Zero) Thread.Sleep(chunkDelay);
            WriteOnce(plan, chunk, metadata);
            var done = store.Add("done", 1);
            computed++;
            pairs += chunkPairs.Count;
            var rate = pairs / Math.Max(clock.Elapsed.TotalSeconds, 1e-9);
            output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{me}: chunk {c + 1}/{plan.Chunks} ({done}/{todo.Count} of this run done), {rate:0.0} pairs/s on this rank"));
            output.Flush();
        }
        return computed;
    }

    /// <summary>Writes the chunk under a temporary name and renames it into place, refusing to replace an existing file.</summary>
    private static void WriteOnce(SweepPlan plan, SweepChunk chunk, Dictionary<string, string> metadata)
    {
        var name = AttributionSweep.ChunkName(chunk.Index);
        var path = Path.Combine(plan.Directory, name);
        var temp = Path.Combine(plan.Directory, $".{name}.{Guid.NewGuid():N}.tmp");
        try
        {
            chunk.Save(temp, metadata);
            File.Move(temp, path, overwrite: false);
        }
        catch (IOException e) when (File.Exists(path))
        {
            throw new SweepException($"{name} was already written by another process (two ranks claimed chunk {chunk.Index}, or two jobs share " +
                                     $"'{plan.Options.OutputDirectory}'): {e.Message}", e);
        }
        finally
        {
            if (File.Exists(temp)) File.Delete(temp);
        }
    }

    /// <summary>
    /// Waits until every chunk of <paramref name="todo"/> is done. Fails when the launcher reports a dead rank, or when
    /// another rank has left or its heartbeat has been silent for the session's timeout (a rank died or hangs without a
    /// launcher to say so). Time without a completed chunk is no failure: one chunk may take longer than the timeout.
    /// </summary>
    private static void WaitForAll(SweepPlan plan, DistributedSession session, DistributedStore store, List<int> todo, string me)
    {
        var others = Enumerable.Range(0, session.WorldSize).Where(r => r != session.Rank).ToList();
        var sinceLook = Stopwatch.StartNew();
        var first = true;
        while (store.Add("done", 0) < todo.Count)
        {
            string? failure = null;
            if (session.Store.Check(FailedKey)) failure = session.Store.GetString(FailedKey);
            else if (first || sinceLook.Elapsed >= session.HeartbeatInterval)
            {
                failure = session.FindUnresponsive(others)?.ToString();
                (first, sinceLook) = (false, Stopwatch.StartNew());
            }
            // A rank leaves only after every chunk is done, which this rank may not have seen yet when it looked.
            if (failure is not null && store.Add("done", 0) < todo.Count)
            {
                var missing = Enumerable.Range(0, plan.Chunks).Where(c => !File.Exists(Path.Combine(plan.Directory, AttributionSweep.ChunkName(c)))).ToList();
                throw new SweepException($"{me}: the sweep is incomplete: {failure}; {missing.Count} chunk(s) not written " +
                                         $"({string.Join(", ", missing.Take(10))}{(missing.Count > 10 ? ", ..." : "")}). " +
                                         "Every written chunk is complete: rerun the same command to compute the missing ones.");
            }
            Thread.Sleep(20);
        }
    }

    /// <summary>
    /// Waits for rank 0 to publish <paramref name="key"/>, failing at once when the launcher reports a dead rank, or when
    /// rank 0 has left or its heartbeat has been silent for the session's timeout (however long rank 0 takes to plan, it
    /// is waited for while it is alive).
    /// </summary>
    private static string WaitForKey(DistributedSession session, DistributedStore store, string key, string me)
    {
        var sinceLook = Stopwatch.StartNew();
        var first = true;
        while (!store.Check(key))
        {
            if (session.Store.Check(FailedKey))
                throw new SweepException($"{me}: the job failed before rank 0 published the work: {session.Store.GetString(FailedKey)}");
            if (first || sinceLook.Elapsed >= session.HeartbeatInterval)
            {
                if (session.FindUnresponsive([0]) is { } gone && !store.Check(key))
                    throw new SweepException($"{me}: rank 0 did not publish the work: {gone}");
                (first, sinceLook) = (false, Stopwatch.StartNew());
            }
            Thread.Sleep(20);
        }
        return store.GetString(key);
    }

    /// <summary>Rank 0, all chunks on disk: summary.csv and the manifest from the chunk files, as a single-process run leaves them.</summary>
    private static void Finish(SweepPlan plan)
    {
        var manifest = AttributionSweep.OpenManifest(plan);
        var entries = Enumerable.Range(0, plan.Chunks)
            .Select(c => new AttributionSweep.Manifest.Entry { Chunk = c, File = AttributionSweep.ChunkName(c), Rows = plan.ChunkPairs(c).Count })
            .ToList();
        AttributionSweep.RebuildCsv(plan.Directory, Path.Combine(plan.Directory, AttributionSweep.SummaryName), AttributionSweep.SummaryHeaderBytes, entries);
        manifest.Completed = entries;
        manifest.Write(Path.Combine(plan.Directory, AttributionSweep.ManifestName));
    }
}
