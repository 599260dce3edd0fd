using System.Globalization;
using System.Net;
using System.Text;

namespace SharpLens.Views;

/// <summary>One cell of a logit-lens table: the top predicted tokens at one layer and position, most likely first.</summary>
/// <param name="Top">(token text, probability) pairs, most likely first.</param>
public sealed record LogitLensCell(IReadOnlyList<(string Token, double Probability)> Top);

/// <summary>
/// Self-contained HTML views: one file with its styles inline, no script, no link, no image and no address of any kind, so it
/// opens offline anywhere and can be mailed or archived as it is. Every number shown is also in the cell's tooltip at four
/// decimals. Views: attention patterns of chosen heads, a token-by-layer logit lens, a heat map of patching results, and SAE
/// feature activations over a text.
/// </summary>
public static class HtmlViews
{
    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    /// <summary>Writes <paramref name="html"/> to <paramref name="path"/> (UTF-8), creating the folder if needed.</summary>
    public static void Write(string path, string html)
    {
        var dir = Path.GetDirectoryName(Path.GetFullPath(path));
        if (dir is not null) Directory.CreateDirectory(dir);
        File.WriteAllText(path, html, new UTF8Encoding(false));
    }

    /// <summary>A number as the views print it: four decimals, invariant culture.</summary>
    public static string Number(double value) => double.IsNaN(value) ? "NaN" : value.ToString("0.0000", Inv);

    // ------------------------------------------------------------------ attention

    /// <summary>
    /// One grid per head: rows are query tokens, columns key tokens, each cell shaded by its attention weight (pattern
    /// [query, key] per head, rows summing to 1).
    /// </summary>
    public static string AttentionPatterns(IReadOnlyList<string> tokens, IReadOnlyList<(string Label, double[,] Pattern)> heads, string title = "Attention patterns")
    {
        ArgumentNullException.ThrowIfNull(tokens);
        ArgumentNullException.ThrowIfNull(heads);
        var body = new StringBuilder();
        foreach (var (label, pattern) in heads)
        {
            if (pattern.GetLength(0) != tokens.Count || pattern.GetLength(1) != tokens.Count)
                throw new ArgumentException($"head {label}: the pattern is {pattern.GetLength(0)}×{pattern.GetLength(1)} but there are {tokens.Count} tokens");
            body.Append("<section><h2>").Append(Esc(label)).Append("</h2><table class=\"grid\"><tr><th class=\"corner\">query \\ key</th>");
            foreach (var t in tokens) body.Append("<th class=\"col\">").Append(Token(t)).Append("</th>");
            body.Append("</tr>");
            for (var q = 0; q < tokens.Count; q++)
            {
                body.Append("<tr><th>").Append(Token(tokens[q])).Append("</th>");
                for (var k = 0; k < tokens.Count; k++)
                {
                    var v = pattern[q, k];
                    body.Append("<td style=\"background:").Append(Shade(v, 1)).Append("\" title=\"")
                        .Append(Esc($"{tokens[q]} → {tokens[k]}: ")).Append(Number(v)).Append("\"></td>");
                }
                body.Append("</tr>");
            }
            body.Append("</table></section>");
        }
        return Page(title, "Each row is a query position; shade is the weight it puts on each key position (hover for the value).", body.ToString());
    }

    /// <summary>The attention patterns of <paramref name="heads"/> for batch row <paramref name="batchIndex"/> of a cache holding <c>hook_pattern</c>.</summary>
    public static string AttentionPatterns(ActivationCache cache, IReadOnlyList<string> tokens, IReadOnlyList<HeadIndex> heads, int batchIndex = 0)
    {
        ArgumentNullException.ThrowIfNull(cache);
        ArgumentNullException.ThrowIfNull(heads);
        var grids = heads.Select(h =>
        {
            using var scope = Torch.NewScope();
            var pattern = cache["pattern", h.Layer];
            if (cache.HasBatchDim) pattern = pattern.Select(0, batchIndex);
            return (h.ToString(), Matrix(pattern.Select(0, h.Head)));
        }).ToList();
        return AttentionPatterns(tokens, grids);
    }

    // ------------------------------------------------------------------ logit lens

    /// <summary>
    /// A token-by-layer table: one row per layer label, one column per input token; each cell shows the most likely next
    /// token decoded from that layer's residual stream and its probability (shade), the top few in the tooltip.
    /// </summary>
    public static string LogitLens(IReadOnlyList<string> inputTokens, IReadOnlyList<string> layerLabels, LogitLensCell[,] cells, string title = "Logit lens")
    {
        ArgumentNullException.ThrowIfNull(inputTokens);
        ArgumentNullException.ThrowIfNull(layerLabels);
        ArgumentNullException.ThrowIfNull(cells);
        if (cells.GetLength(0) != layerLabels.Count || cells.GetLength(1) != inputTokens.Count)
            throw new ArgumentException($"cells are {cells.GetLength(0)}×{cells.GetLength(1)} but there are {layerLabels.Count} layers and {inputTokens.Count} tokens");
        var body = new StringBuilder("<table class=\"lens\"><tr><th class=\"corner\">layer \\ input</th>");
        foreach (var t in inputTokens) body.Append("<th>").Append(Token(t)).Append("</th>");
        body.Append("</tr>");
        for (var l = 0; l < layerLabels.Count; l++)
        {
            body.Append("<tr><th>").Append(Esc(layerLabels[l])).Append("</th>");
            for (var p = 0; p < inputTokens.Count; p++)
            {
                var top = cells[l, p].Top;
                if (top.Count == 0) throw new ArgumentException($"cell ({layerLabels[l]}, {p}) has no prediction");
                var tip = string.Join("\n", top.Select(x => $"{x.Token}: {Number(x.Probability)}"));
                body.Append("<td style=\"background:").Append(Shade(top[0].Probability, 1)).Append("\" title=\"").Append(Esc(tip)).Append("\">")
                    .Append(Token(top[0].Token)).Append("<small>").Append(Number(top[0].Probability)).Append("</small></td>");
            }
            body.Append("</tr>");
        }
        body.Append("</table>");
        return Page(title, "What each layer's residual stream predicts next: the final norm and the unembedding applied to it (hover for the top tokens).", body.ToString());
    }

    /// <summary>
    /// The logit lens of batch row <paramref name="batchIndex"/> of a cache (see <see cref="ActivationCache.LogitLens"/>), with
    /// token texts from <paramref name="decode"/> and the <paramref name="topK"/> most likely tokens per cell.
    /// </summary>
    public static string LogitLens(ActivationCache cache, IReadOnlyList<string> inputTokens, Func<long, string> decode, int batchIndex = 0, int topK = 5)
    {
        ArgumentNullException.ThrowIfNull(cache);
        ArgumentNullException.ThrowIfNull(decode);
        using var scope = Torch.NewScope();
        var lens = cache.LogitLens();  // [layers, batch, pos, vocab]
        if (cache.HasBatchDim) lens = lens.Select(1, batchIndex);
        var probs = lens.To(ScalarType.Float64).Softmax(-1);
        var (values, indices) = probs.TopK(Math.Min(topK, probs.Size(-1)), -1);
        var v = values.Contiguous().ToArray<double>();
        var ix = indices.Contiguous().ToArray<long>();
        var (layers, positions, k) = ((int)values.Size(0), (int)values.Size(1), (int)values.Size(2));
        var cells = new LogitLensCell[layers, positions];
        for (var l = 0; l < layers; l++)
            for (var p = 0; p < positions; p++)
                cells[l, p] = new LogitLensCell(Enumerable.Range(0, k).Select(j => (decode(ix[(l * positions + p) * k + j]), v[(l * positions + p) * k + j])).ToList());
        return LogitLens(inputTokens, cache.AccumulatedResidLabels(), cells);
    }

    // ------------------------------------------------------------------ patching

    /// <summary>
    /// A heat map of patching results [rows, columns] (layer × position, layer × head): blue where the metric is above
    /// <paramref name="center"/>, red below, deeper further away; with the clean and corrupted metrics, the share of the
    /// difference each patch restores is in the tooltip.
    /// </summary>
    public static string PatchingHeatmap(double[,] values, IReadOnlyList<string> rowLabels, IReadOnlyList<string> columnLabels, string title,
        double? cleanMetric = null, double? corruptedMetric = null, double? center = null)
    {
        ArgumentNullException.ThrowIfNull(values);
        ArgumentNullException.ThrowIfNull(rowLabels);
        ArgumentNullException.ThrowIfNull(columnLabels);
        var (rows, cols) = (values.GetLength(0), values.GetLength(1));
        if (rows != rowLabels.Count || cols != columnLabels.Count)
            throw new ArgumentException($"values are {rows}×{cols} but there are {rowLabels.Count} row and {columnLabels.Count} column labels");
        var mid = center ?? corruptedMetric ?? 0;
        var scale = 0.0;
        foreach (var v in values)
            if (!double.IsNaN(v)) scale = Math.Max(scale, Math.Abs(v - mid));
        var body = new StringBuilder();
        if (cleanMetric is { } c && corruptedMetric is { } k)
            body.Append("<p>clean metric <b>").Append(Number(c)).Append("</b>, corrupted metric <b>").Append(Number(k)).Append("</b></p>");
        body.Append("<table class=\"heat\"><tr><th class=\"corner\"></th>");
        foreach (var t in columnLabels) body.Append("<th>").Append(Token(t)).Append("</th>");
        body.Append("</tr>");
        for (var r = 0; r < rows; r++)
        {
            body.Append("<tr><th>").Append(Esc(rowLabels[r])).Append("</th>");
            for (var j = 0; j < cols; j++)
            {
                var v = values[r, j];
                var tip = $"{rowLabels[r]}, {columnLabels[j]}: {Number(v)}";
                if (cleanMetric is { } cm && corruptedMetric is { } km && cm != km) tip += $" (restores {Number((v - km) / (cm - km))})";
                body.Append("<td style=\"background:").Append(double.IsNaN(v) ? "#eee" : Diverging(v - mid, scale)).Append("\" title=\"").Append(Esc(tip)).Append("\">")
                    .Append(Number(v)).Append("</td>");
            }
            body.Append("</tr>");
        }
        body.Append("</table>");
        return Page(title, $"The metric after each patch; blue above {Number(mid)}, red below.", body.ToString());
    }

    // ------------------------------------------------------------------ features

    /// <summary>
    /// Feature activations over a text: one line per feature, each token shaded by the feature's activation there
    /// (relative to that feature's largest), the value in the tooltip and the line's maximum beside the label.
    /// </summary>
    public static string FeatureActivations(IReadOnlyList<string> tokens, IReadOnlyList<(string Label, double[] Activations)> features, string title = "Feature activations")
    {
        ArgumentNullException.ThrowIfNull(tokens);
        ArgumentNullException.ThrowIfNull(features);
        var body = new StringBuilder();
        foreach (var (label, acts) in features)
        {
            if (acts.Length != tokens.Count) throw new ArgumentException($"feature {label} has {acts.Length} activations for {tokens.Count} tokens");
            var max = acts.Where(a => !double.IsNaN(a)).Select(Math.Abs).DefaultIfEmpty(0).Max();
            body.Append("<div class=\"feature\"><span class=\"label\">").Append(Esc(label)).Append(" <small>max ").Append(Number(max)).Append("</small></span>");
            for (var i = 0; i < tokens.Count; i++)
                body.Append("<span class=\"tok\" style=\"background:").Append(Shade(acts[i], max)).Append("\" title=\"").Append(Esc($"{tokens[i]}: ")).Append(Number(acts[i]))
                    .Append("\">").Append(Token(tokens[i])).Append("</span>");
            body.Append("</div>");
        }
        return Page(title, "Each line is one feature; a token's shade is the feature's activation there relative to its maximum (hover for the value).", body.ToString());
    }

    // ------------------------------------------------------------------ page

    private static string Page(string title, string subtitle, string body) =>
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>" + Esc(title) + "</title><style>" + Style + "</style></head><body><h1>" +
        Esc(title) + "</h1><p class=\"sub\">" + Esc(subtitle) + "</p>\n" + body + "\n<p class=\"sub\">Made by SharpLens.</p></body></html>\n";

    private const string Style =
        "body{font:14px system-ui,sans-serif;margin:24px;color:#111}h1{font-size:20px}h2{font-size:15px;margin:16px 0 4px}" +
        ".sub{color:#555}table{border-collapse:collapse}th{font-weight:normal;color:#333;padding:2px 4px;text-align:right;white-space:pre}" +
        "th.col{writing-mode:vertical-rl;transform:rotate(180deg);text-align:left}.corner{color:#999;font-size:11px}" +
        ".grid td{width:18px;height:18px;border:1px solid #f3f3f3}.lens td,.heat td{border:1px solid #eee;padding:3px 6px;white-space:pre;font-size:12px}" +
        ".lens small{display:block;color:#444;font-size:10px}.feature{margin:6px 0;line-height:1.9}.label{display:inline-block;min-width:140px;color:#333}" +
        ".tok{padding:2px 1px;border-radius:2px;white-space:pre}";

    private static string Esc(string s) => WebUtility.HtmlEncode(s);

    /// <summary>A token as text: leading/trailing spaces visible, control characters escaped.</summary>
    private static string Token(string t) => Esc(t.Replace("\n", "\\n").Replace("\t", "\\t"));

    /// <summary>Blue with opacity |v| / max.</summary>
    private static string Shade(double v, double max) =>
        double.IsNaN(v) || max <= 0 ? "transparent" : string.Create(Inv, $"rgba(37,99,235,{Math.Clamp(Math.Abs(v) / max, 0, 1):0.###})");

    /// <summary>Blue for positive, red for negative, opacity |v| / scale.</summary>
    private static string Diverging(double v, double scale)
    {
        var a = scale <= 0 ? 0 : Math.Clamp(Math.Abs(v) / scale, 0, 1);
        return v >= 0 ? string.Create(Inv, $"rgba(37,99,235,{a:0.###})") : string.Create(Inv, $"rgba(220,38,38,{a:0.###})");
    }

    /// <summary>A 2-D tensor as a double matrix (what the grid views take), copied to the CPU in float64.</summary>
    public static double[,] Matrix(Tensor t)
    {
        if (t.Dim != 2) throw new ArgumentException($"expected a matrix, got shape {Tensor.FormatShape(t.Shape)}");
        using var cpu = t.Detach().To(Device.CPU, ScalarType.Float64).Contiguous();
        var flat = cpu.ToArray<double>();
        var (r, c) = ((int)t.Size(0), (int)t.Size(1));
        var m = new double[r, c];
        for (var i = 0; i < r; i++)
            for (var j = 0; j < c; j++) m[i, j] = flat[i * c + j];
        return m;
    }
}
