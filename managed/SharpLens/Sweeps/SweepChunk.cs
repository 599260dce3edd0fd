using System.Globalization;
using System.Text;
using SharpLens.Tensors.IO;

namespace SharpLens.Sweeps;

/// <summary>
/// The results of one chunk of consecutive pairs of a sweep, as written to <c>chunk-NNNNN.safetensors</c>:
/// <list type="bullet">
/// <item><c>pair_index</c>, <c>line</c>, <c>length</c>: int64 [n] (index among the valid pairs, 1-based line of the prompts file, number of tokens);</item>
/// <item><c>logit_diff_clean</c>, <c>logit_diff_corrupted</c>: [n];</item>
/// <item><c>attr.&lt;site&gt;</c>: attribution estimates [n, layer, pos] or, for <c>z</c>, [n, layer, pos, head];
/// positions at or past a pair's length hold 0;</item>
/// <item>with exact patching, <c>exact.&lt;site&gt;</c> of the same shapes (NaN rows for pairs not patched exactly) and
/// <c>has_exact</c> bool [n].</item>
/// </list>
/// Values are stored in the model's dtype; the metadata names each site's hook points (<c>site.&lt;key&gt;</c>).
/// </summary>
public sealed class SweepChunk
{
    /// <summary>Format tag in the metadata.</summary>
    public const string FormatTag = "lens-sweep-chunk/1";

    private SweepChunk(int index, int positions, int heads, ScalarType storage, IReadOnlyList<AttributionSite> sites, int count)
    {
        Index = index;
        Positions = positions;
        Heads = heads;
        StorageType = storage;
        Sites = sites;
        PairIndex = new long[count];
        Line = new long[count];
        Length = new long[count];
        LogitDiffClean = new double[count];
        LogitDiffCorrupted = new double[count];
        Estimates = sites.ToDictionary(s => s.Key, s => new SiteValues(s, s.Shape(count, positions, heads)));
    }

    /// <summary>The chunk number.</summary>
    public int Index { get; }
    /// <summary>The position dimension.</summary>
    public int Positions { get; }
    /// <summary>The head dimension of per-head sites.</summary>
    public int Heads { get; }
    /// <summary>float32 or float64: how values are stored (and rounded in memory to match).</summary>
    public ScalarType StorageType { get; }
    /// <summary>The sites.</summary>
    public IReadOnlyList<AttributionSite> Sites { get; }
    /// <summary>Number of pairs.</summary>
    public int Count => PairIndex.Length;
    /// <summary>Index of each pair among the valid pairs.</summary>
    public long[] PairIndex { get; }
    /// <summary>Line of each pair in the prompts file.</summary>
    public long[] Line { get; }
    /// <summary>Number of tokens of each pair.</summary>
    public long[] Length { get; }
    /// <summary>Clean logit difference.</summary>
    public double[] LogitDiffClean { get; }
    /// <summary>Corrupted logit difference.</summary>
    public double[] LogitDiffCorrupted { get; }
    /// <summary>Attribution estimates per site.</summary>
    public Dictionary<string, SiteValues> Estimates { get; }
    /// <summary>Exact patching effects per site, or null when no pair of the chunk was patched exactly.</summary>
    public Dictionary<string, SiteValues>? Exact { get; private set; }
    /// <summary>Which pairs have exact effects (null with <see cref="Exact"/>).</summary>
    public bool[]? HasExact { get; private set; }

    /// <summary>
    /// Computes a chunk: attribution estimates in batches of <paramref name="batchSize"/>, and exact patching for the
    /// pairs whose <see cref="PromptPair.Index"/> is below <paramref name="exactBelow"/>. Values are rounded to
    /// <paramref name="storage"/> so that what is in memory is exactly what the file holds.
    /// </summary>
    public static SweepChunk Compute(AttributionPatcher patcher, int index, IReadOnlyList<PromptPair> pairs, int positions, int batchSize,
        int exactBelow, ScalarType storage)
    {
        var heads = patcher.Model.Config.NHeads;
        var chunk = new SweepChunk(index, positions, heads, storage, patcher.Sites, pairs.Count);
        for (var i = 0; i < pairs.Count; i++)
        {
            chunk.PairIndex[i] = pairs[i].Index;
            chunk.Line[i] = pairs[i].Line;
            chunk.Length[i] = pairs[i].Length;
        }
        for (var start = 0; start < pairs.Count; start += batchSize)
        {
            var batch = pairs.Skip(start).Take(batchSize).ToList();
            var r = patcher.Attribute(batch, positions);
            r.MetricClean.CopyTo(chunk.LogitDiffClean, start);
            r.MetricCorrupted.CopyTo(chunk.LogitDiffCorrupted, start);
            foreach (var site in patcher.Sites)
            {
                var per = site.ValuesPerPair(positions, heads);
                Array.Copy(r.Estimates[site.Key].Data, 0, chunk.Estimates[site.Key].Data, start * per, batch.Count * per);
            }
        }
        if (pairs.Any(p => p.Index < exactBelow))
        {
            chunk.HasExact = new bool[pairs.Count];
            chunk.Exact = patcher.Sites.ToDictionary(s => s.Key, s =>
            {
                var v = new SiteValues(s, s.Shape(pairs.Count, positions, heads));
                Array.Fill(v.Data, double.NaN);
                return v;
            });
            for (var i = 0; i < pairs.Count; i++)
            {
                if (pairs[i].Index >= exactBelow) continue;
                chunk.HasExact[i] = true;
                var exact = patcher.PatchExact(pairs[i], positions, batchSize);
                foreach (var site in patcher.Sites)
                {
                    var per = site.ValuesPerPair(positions, heads);
                    Array.Copy(exact.Effects[site.Key].Data, 0, chunk.Exact[site.Key].Data, i * per, per);
                }
            }
        }
        chunk.RoundToStorage();
        return chunk;
    }

    private void RoundToStorage()
    {
        if (StorageType != ScalarType.Float32) return;
        static void Round(double[] a)
        {
            for (var i = 0; i < a.Length; i++) a[i] = (float)a[i];
        }
        Round(LogitDiffClean);
        Round(LogitDiffCorrupted);
        foreach (var v in Estimates.Values) Round(v.Data);
        foreach (var v in Exact?.Values ?? Enumerable.Empty<SiteValues>()) Round(v.Data);
    }

    private Tensor Values(double[] data, long[] shape) =>
        StorageType == ScalarType.Float32 ? Torch.FromArray(data.Select(x => (float)x).ToArray(), shape) : Torch.FromArray((double[])data.Clone(), shape);

    /// <summary>Writes the chunk (atomically: a temporary file renamed over <paramref name="path"/>).</summary>
    public void Save(string path, IReadOnlyDictionary<string, string>? extraMetadata = null)
    {
        using var scope = Torch.NewScope();
        var tensors = new List<KeyValuePair<string, Tensor>>
        {
            new("pair_index", Torch.FromArray(PairIndex)),
            new("line", Torch.FromArray(Line)),
            new("length", Torch.FromArray(Length)),
            new("logit_diff_clean", Values(LogitDiffClean, [Count])),
            new("logit_diff_corrupted", Values(LogitDiffCorrupted, [Count])),
        };
        foreach (var (key, v) in Estimates) tensors.Add(new("attr." + key, Values(v.Data, v.Shape)));
        if (Exact is not null)
        {
            foreach (var (key, v) in Exact) tensors.Add(new("exact." + key, Values(v.Data, v.Shape)));
            tensors.Add(new("has_exact", Torch.FromArray(HasExact!)));
        }
        var metadata = new Dictionary<string, string>(extraMetadata ?? new Dictionary<string, string>())
        {
            ["format"] = FormatTag,
            ["chunk"] = Index.ToString(CultureInfo.InvariantCulture),
            ["positions"] = Positions.ToString(CultureInfo.InvariantCulture),
            ["heads"] = Heads.ToString(CultureInfo.InvariantCulture),
            ["metric"] = "logit[answer] - logit[wrong] at the last real position",
        };
        metadata["sites"] = string.Join(",", Sites.Select(s => s.Key));
        foreach (var s in Sites) metadata["site." + s.Key] = string.Join(",", s.HookNames);
        SafeTensors.Save(path, tensors, metadata);
    }

    /// <summary>Reads a chunk written by <see cref="Save"/>.</summary>
    /// <exception cref="FormatException">The file is not a sweep chunk.</exception>
    public static SweepChunk Load(string path)
    {
        using var file = SafeTensorsFile.Open(path);
        string Meta(string key) => file.Metadata.TryGetValue(key, out var v) ? v : throw new FormatException($"'{path}' is not a lens sweep chunk: no '{key}' in its metadata");
        if (Meta("format") != FormatTag) throw new FormatException($"'{path}' is not a {FormatTag} file");
        var index = int.Parse(Meta("chunk"), CultureInfo.InvariantCulture);
        var positions = int.Parse(Meta("positions"), CultureInfo.InvariantCulture);
        var heads = int.Parse(Meta("heads"), CultureInfo.InvariantCulture);
        var sites = Meta("sites").Split(',')
            .Select(key => new AttributionSite(key, Meta("site." + key).Split(','), file.GetInfo("attr." + key).Shape.Length == 4))
            .ToList();
        using var scope = Torch.NewScope();
        long[] Longs(string name) => file.Load(name).ToArray<long>();
        double[] Doubles(string name) => file.Load(name).To(ScalarType.Float64).Contiguous().ToArray<double>();
        var storage = file.GetInfo("logit_diff_clean").DType;
        var pairIndex = Longs("pair_index");
        var chunk = new SweepChunk(index, positions, heads, storage, sites, pairIndex.Length);
        pairIndex.CopyTo(chunk.PairIndex, 0);
        Longs("line").CopyTo(chunk.Line, 0);
        Longs("length").CopyTo(chunk.Length, 0);
        Doubles("logit_diff_clean").CopyTo(chunk.LogitDiffClean, 0);
        Doubles("logit_diff_corrupted").CopyTo(chunk.LogitDiffCorrupted, 0);
        foreach (var s in sites) Doubles("attr." + s.Key).CopyTo(chunk.Estimates[s.Key].Data, 0);
        if (file.Contains("has_exact"))
        {
            chunk.HasExact = file.Load("has_exact").ToArray<bool>();
            chunk.Exact = sites.ToDictionary(s => s.Key, s =>
            {
                var v = new SiteValues(s, s.Shape(pairIndex.Length, positions, heads));
                Doubles("exact." + s.Key).CopyTo(v.Data, 0);
                return v;
            });
        }
        return chunk;
    }

    // ------------------------------------------------------------------ summary

    /// <summary>The header of <c>summary.csv</c>.</summary>
    public const string SummaryHeader =
        "pair_index,line,length,logit_diff_clean,logit_diff_corrupted,delta,estimate_total,top_component,top_estimate,top_exact,exact_top_component,exact_top_effect";

    /// <summary>
    /// One CSV row per pair: the metrics, <c>delta</c> = corrupted − clean, <c>estimate_total</c> (the estimates of
    /// <c>resid_pre</c> at layer 0 summed over positions: the linear estimate of <c>delta</c>), the component
    /// (a head at a position, or an MLP at a position) with the largest |estimate| and its estimate, its exact
    /// effect when computed, and the component with the largest |exact effect|. Empty cells where not applicable.
    /// </summary>
    public IEnumerable<string> SummaryRows()
    {
        var components = Sites.Where(s => s.Key is "z" or "mlp_out").ToList();
        if (components.Count == 0) components = Sites.ToList();
        for (var i = 0; i < Count; i++)
        {
            var sb = new StringBuilder();
            sb.Append(PairIndex[i].ToString(CultureInfo.InvariantCulture)).Append(',');
            sb.Append(Line[i].ToString(CultureInfo.InvariantCulture)).Append(',');
            sb.Append(Length[i].ToString(CultureInfo.InvariantCulture)).Append(',');
            sb.Append(Format(LogitDiffClean[i])).Append(',');
            sb.Append(Format(LogitDiffCorrupted[i])).Append(',');
            sb.Append(Format(LogitDiffCorrupted[i] - LogitDiffClean[i])).Append(',');
            if (Estimates.TryGetValue("resid_pre", out var resid))
            {
                double total = 0;
                var per = resid.Site.ValuesPerPair(Positions, Heads);
                for (var p = 0; p < Positions; p++) total += resid.Data[i * per + p];
                sb.Append(Format(total));
            }
            sb.Append(',');
            var top = Top(Estimates, components, i);
            var hasExact = Exact is not null && HasExact![i];
            if (top is { } t)
            {
                sb.Append(t.Name).Append(',').Append(Format(t.Value)).Append(',');
                if (hasExact) sb.Append(Format(Exact![t.Site].Data[t.Offset]));
            }
            else
            {
                sb.Append(",,");
            }
            sb.Append(',');
            if (hasExact && Top(Exact!, components, i) is { } e) sb.Append(e.Name).Append(',').Append(Format(e.Value));
            else sb.Append(',');
            yield return sb.ToString();
        }
    }

    private (string Name, double Value, string Site, int Offset)? Top(Dictionary<string, SiteValues> values, List<AttributionSite> sites, int pair)
    {
        (string, double, string, int)? best = null;
        var bestAbs = -1.0;
        foreach (var site in sites)
        {
            var v = values[site.Key];
            var h = site.PerHead ? Heads : 1;
            var per = site.ValuesPerPair(Positions, Heads);
            for (var layer = 0; layer < site.Layers; layer++)
                for (var pos = 0; pos < Length[pair]; pos++)
                    for (var head = 0; head < h; head++)
                    {
                        var offset = pair * per + (layer * Positions + pos) * h + head;
                        var x = v.Data[offset];
                        if (Math.Abs(x) > bestAbs)
                        {
                            bestAbs = Math.Abs(x);
                            best = (site.Describe(layer, pos, head), x, site.Key, offset);
                        }
                    }
        }
        return best;
    }

    /// <summary>Shortest round-trip text of a value at the storage precision.</summary>
    private string Format(double x) => StorageType == ScalarType.Float32
        ? ((float)x).ToString("R", CultureInfo.InvariantCulture)
        : x.ToString("R", CultureInfo.InvariantCulture);
}
