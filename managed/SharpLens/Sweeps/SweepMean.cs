using System.Globalization;
using SharpLens.Tensors.IO;

namespace SharpLens.Sweeps;

/// <summary>
/// <c>--aggregate mean</c>: <c>mean.safetensors</c> beside the chunks, the mean over all pairs of each per-pair row of the
/// sweep: <c>logit_diff_clean</c>, <c>logit_diff_corrupted</c> (scalars) and <c>attr.&lt;site&gt;</c> [layer, pos(, head)]
/// (positions past a pair's length count as the 0 its row holds there), float64, with <c>pairs</c> (int64 [1]).
/// Across ranks each sums the chunk files c with c mod world = rank, in float64, and one all_reduce (sum) over the process
/// group combines them; rank 0 writes the file.
/// </summary>
public static class SweepMean
{
    /// <summary>The file name.</summary>
    public const string FileName = "mean.safetensors";

    /// <summary>
    /// Computes and (on rank 0, or without a group) writes the mean. Every chunk must be complete; every rank of
    /// <paramref name="group"/> must call this.
    /// </summary>
    internal static void Write(SweepPlan plan, ProcessGroup? group, TextWriter output)
    {
        var (rank, world) = group is null ? (0, 1) : (group.Rank, group.WorldSize);
        var heads = plan.Patcher.Model.Config.NHeads;
        var sites = plan.Patcher.Sites;
        // Layout of one flat float64 buffer: [pairs, logit_diff_clean, logit_diff_corrupted, site 0 values..., site 1 ...].
        var offsets = new Dictionary<string, int>();
        var length = 3;
        foreach (var site in sites)
        {
            offsets[site.Key] = length;
            length += site.ValuesPerPair(plan.Positions, heads);
        }
        var totals = new double[length];
        for (var c = rank; c < plan.Chunks; c += world)
        {
            var chunk = SweepChunk.Load(Path.Combine(plan.Directory, AttributionSweep.ChunkName(c)));
            totals[0] += chunk.Count;
            for (var i = 0; i < chunk.Count; i++)
            {
                totals[1] += chunk.LogitDiffClean[i];
                totals[2] += chunk.LogitDiffCorrupted[i];
            }
            foreach (var site in sites)
            {
                var per = site.ValuesPerPair(plan.Positions, heads);
                var data = chunk.Estimates[site.Key].Data;
                var o = offsets[site.Key];
                for (var i = 0; i < chunk.Count; i++)
                    for (var j = 0; j < per; j++) totals[o + j] += data[i * per + j];
            }
        }

        using var scope = Torch.NewScope();
        var buffer = Torch.FromArray(totals);
        group?.AllReduce(buffer);
        var sum = buffer.ToArray<double>();
        var pairs = (long)Math.Round(sum[0]);
        if (pairs != plan.Pairs.Count)
            throw new SweepException($"the mean covers {pairs} pair(s) but the sweep has {plan.Pairs.Count}: a chunk file is missing or foreign");
        if (rank != 0) return;

        var tensors = new List<KeyValuePair<string, Tensor>>
        {
            new("pairs", Torch.FromArray(new[] { pairs })),
            new("logit_diff_clean", Torch.FromSpan<double>([sum[1] / pairs], [])),
            new("logit_diff_corrupted", Torch.FromSpan<double>([sum[2] / pairs], [])),
        };
        foreach (var site in sites)
        {
            var per = site.ValuesPerPair(plan.Positions, heads);
            var mean = new double[per];
            for (var j = 0; j < per; j++) mean[j] = sum[offsets[site.Key] + j] / pairs;
            tensors.Add(new("attr." + site.Key, Torch.FromArray(mean, site.Shape(1, plan.Positions, heads)[1..])));
        }
        var metadata = AttributionSweep.ChunkMetadata(plan);
        metadata["reduction"] = $"mean over {pairs} pairs of the chunk files' rows: float64 sums per rank, all_reduce(sum) over {world} rank(s)";
        metadata["sites"] = string.Join(",", sites.Select(s => s.Key));
        metadata["positions"] = plan.Positions.ToString(CultureInfo.InvariantCulture);
        SafeTensors.Save(Path.Combine(plan.Directory, FileName), tensors, metadata);
        output.WriteLine($"wrote {FileName}: the mean over {pairs} pair(s){(world > 1 ? $", all-reduced over {world} ranks" : "")}");
        output.Flush();
    }
}
