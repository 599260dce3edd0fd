using System.Globalization;
using System.Net;
using System.Text;

namespace SharpLens.Demo;

/// <summary>
/// Writes the demo's findings as one self-contained HTML page: inline SVG charts and inline CSS, no scripts, no
/// fonts or images from anywhere, so the file can be mailed, archived or opened offline and shows the same thing.
/// </summary>
public static class DemoReport
{
    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    /// <summary>Writes the report for <paramref name="result"/> to <paramref name="path"/>.</summary>
    public static void Write(string path, DemoResult result)
    {
        ArgumentNullException.ThrowIfNull(result);
        File.WriteAllText(path, Render(result), new UTF8Encoding(false));
    }

    /// <summary>The report's HTML.</summary>
    public static string Render(DemoResult r)
    {
        ArgumentNullException.ThrowIfNull(r);
        var o = r.Options;
        var m = o.Model;
        var t = o.Training;
        var sb = new StringBuilder();
        sb.Append("""
            <!DOCTYPE html>
            <html lang="en"><head><meta charset="utf-8">
            <meta name="viewport" content="width=device-width, initial-scale=1">
            <title>SharpLens demo: induction heads</title>
            <style>
            body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#1b1f24;line-height:1.45}
            h1{margin-bottom:.2em} h2{margin-top:1.8em;border-bottom:1px solid #d0d7de;padding-bottom:.2em}
            table{border-collapse:collapse;margin:.6em 0} td,th{border:1px solid #d0d7de;padding:.3em .7em;text-align:left}
            th{background:#f6f8fa} td.num{text-align:right;font-variant-numeric:tabular-nums}
            .pass{color:#1a7f37;font-weight:600} .fail{color:#cf222e;font-weight:600}
            .verdict{font-size:1.2em;padding:.6em 1em;border-radius:6px;display:inline-block}
            .verdict.pass{background:#dafbe1} .verdict.fail{background:#ffebe9}
            .row{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start} figure{margin:0} figcaption{font-size:.9em;color:#57606a;max-width:420px}
            code{background:#f6f8fa;padding:0 .25em;border-radius:3px} .muted{color:#57606a}
            svg text{font-family:inherit}
            </style></head><body>
            <h1>Induction heads, found and confirmed</h1>
            <p class="muted">SharpLens <code>lens demo</code>: a GPT-NeoX-layout (Pythia) transformer trained from scratch on repeated random tokens,
            analysed with TransformerLens-style hooks.</p>

            """);
        sb.Append(CultureInfo.InvariantCulture, $"<p class=\"verdict {(r.Passed ? "pass" : "fail")}\">{(r.Passed ? "PASS: induction heads found and causally confirmed" : "FAIL: " + Esc(string.Join("; ", r.Criteria.Where(c => !c.Passed).Select(c => c.Name + " criterion not met"))))}</p>\n");

        sb.Append("<h2>Criteria</h2>\n<table><tr><th>criterion</th><th>requirement</th><th>observed</th><th>result</th></tr>\n");
        foreach (var c in r.Criteria)
            sb.Append(Inv, $"<tr><td>{Esc(c.Name)}</td><td>{Esc(c.Requirement)}</td><td>{Esc(c.Observed)}</td><td class=\"{(c.Passed ? "pass" : "fail")}\">{(c.Passed ? "pass" : "FAIL")}</td></tr>\n");
        sb.Append("</table>\n");

        sb.Append("<h2>Setup</h2>\n<table>\n");
        Row(sb, "model", $"GPT-NeoX layout: {m.NLayers} layers × {m.NHeads} heads, d_model {m.DModel}, d_mlp {m.DMlp}, vocab {m.VocabSize} (BOS = {m.BosTokenId}), n_ctx {m.NPositions}, rotary on {m.RotaryPct:P0} of each head, {(m.ParallelResidual ? "parallel" : "sequential")} residual, untied unembedding");
        Row(sb, "data", $"[BOS, r₁…r_L, r₁…r_L] with L distinct random tokens, L drawn per batch from [{t.MinSegment}, {t.MaxSegment}] (so positions alone cannot solve the task)");
        Row(sb, "training", $"{t.Steps} steps of AdamW over Parameters(), batch {t.BatchSize}, lr {t.LearningRate.ToString(Inv)} (warm-up {t.WarmupSteps} steps), weight decay {t.WeightDecay.ToString(Inv)}");
        Row(sb, "seed", o.Seed.ToString(Inv));
        Row(sb, "time", $"{F(r.Training.Elapsed.TotalSeconds, 1)} s, {F(r.Training.TokensPerSecond, 0)} tokens/s ({r.Training.Tokens.ToString("N0", Inv)} tokens), {Torch.NumThreads} intra-op thread(s)");
        Row(sb, "final loss", $"{F(r.Training.FinalLoss, 4)} nats (last batch); repeated half {F(r.Training.RepeatedLosses[^1], 4)}");
        Row(sb, "evaluation", $"{o.EvalBatch} fresh sequences with L = {o.EvalSeqLen} (length {RepeatedSequences.SequenceLength(o.EvalSeqLen)})");
        Row(sb, "outputs", $"trained model: {r.ModelDirectory}; initial model: {r.InitialModelDirectory}");
        sb.Append("</table>\n");

        sb.Append("<h2>Training loss</h2>\n<div class=\"row\"><figure>");
        sb.Append(LossChart(r.Training));
        sb.Append("<figcaption>Mean next-token loss per step (thin) and its moving average (thick). Red: the repeated half, the training " +
                  "objective; it drops sharply once induction heads form. Blue: every position. Training leaves the first copy's predictions out " +
                  "(its tokens are random, so nothing can predict them) and never asks them to stay near uniform: as the model grows confident " +
                  "they get worse than uniform guessing, so the all-positions curve, which averages both halves, rises again while the red one " +
                  "falls. On the evaluation batch the first half's loss ends at " + F(r.Baseline.FirstHalf, 2) + " nats against ln(" +
                  (m.VocabSize - 1).ToString(Inv) + ") ≈ " + F(Math.Log(m.VocabSize - 1), 2) + " for uniform guessing, the repeated half's at " +
                  F(r.Baseline.RepeatedHalf, 2) + ".</figcaption></figure></div>\n");

        sb.Append("<h2>Head scores</h2>\n<p>Mean attention, over the evaluation batch, from each query to the key the pattern names. " +
                  "<b>Induction</b>: from r_j in the second copy to the token after its previous occurrence (L − 1 back). " +
                  "<b>Previous token</b>: to the position just before. <b>Duplicate token</b>: to the previous occurrence itself (L back). " +
                  $"The induction threshold is {F(o.InductionThreshold, 2)}.</p>\n<div class=\"row\">");
        sb.Append(ScoreGrid("induction", r.Scores.Induction, o.InductionThreshold));
        sb.Append(ScoreGrid("previous token", r.Scores.PreviousToken, null));
        sb.Append(ScoreGrid("duplicate token", r.Scores.DuplicateToken, null));
        sb.Append("</div>\n");

        sb.Append("<h2>Attention patterns</h2>\n<p>One evaluation sequence; rows are queries (destination), columns keys (source), darker is more attention. " +
                  "The dashed diagonals mark where an induction head (L − 1 back, red) and a previous-token head (1 back, grey) should look.</p>\n<div class=\"row\">");
        foreach (var e in r.Examples)
            sb.Append("<figure>").Append(Heatmap(e, r.ExampleTokens, o.EvalSeqLen))
              .Append(Inv, $"<figcaption><b>{e.Head}</b>, {Esc(e.Why)}: induction {F(r.Scores.Induction[e.Head.Layer, e.Head.Head], 3)}, previous token {F(r.Scores.PreviousToken[e.Head.Layer, e.Head.Head], 3)}, duplicate {F(r.Scores.DuplicateToken[e.Head.Layer, e.Head.Head], 3)}</figcaption></figure>");
        sb.Append("</div>\n");

        sb.Append("<h2>Ablation</h2>\n<p>Zero-ablation of heads at <code>blocks.L.attn.hook_z</code>; mean next-token loss (nats) on the evaluation batch, " +
                  "predicting r₂…r_L of each copy. The first copy is random, so nothing can predict it; training therefore leaves its predictions out " +
                  "(its loss here is shown for completeness, not as a control: chance is ln of the token count). " +
                  $"The ablation criterion needs the first row to raise the repeated-half loss by at least {F(o.AblationMargin, 2)} nats.</p>\n");
        sb.Append("<table><tr><th>heads zeroed</th><th>first half (untrained)</th><th>repeated half</th><th>change on repeated half</th></tr>\n");
        sb.Append(Inv, $"<tr><td>none (intact model)</td><td class=\"num\">{F(r.Baseline.FirstHalf, 3)}</td><td class=\"num\">{F(r.Baseline.RepeatedHalf, 3)}</td><td class=\"num\">—</td></tr>\n");
        foreach (var a in r.Ablations)
        {
            var d = a.Losses.RepeatedHalf - r.Baseline.RepeatedHalf;
            sb.Append(Inv, $"<tr><td>{Esc(a.Label)}: {Esc(InductionDemo.Heads(a.Heads))}</td><td class=\"num\">{F(a.Losses.FirstHalf, 3)}</td><td class=\"num\">{F(a.Losses.RepeatedHalf, 3)}</td><td class=\"num\">{(d >= 0 ? "+" : "")}{F(d, 3)}</td></tr>\n");
        }
        sb.Append("</table>\n");
        sb.Append(Inv, $"<p class=\"muted\">For reference: a uniform guess over the {m.VocabSize - 1} tokens costs ln({m.VocabSize - 1}) = {F(Math.Log(m.VocabSize - 1), 3)} nats.</p>\n");
        sb.Append("</body></html>\n");
        return sb.ToString();
    }

    private static void Row(StringBuilder sb, string key, string value) =>
        sb.Append(Inv, $"<tr><th>{Esc(key)}</th><td>{Esc(value)}</td></tr>\n");

    private static string Esc(string s) => WebUtility.HtmlEncode(s);

    private static string F(double v, int decimals) => v.ToString("F" + decimals, Inv);

    private static string N(double v) => v.ToString("0.##", Inv);

    /// <summary>The loss curve: raw losses thin, a moving average thick, for the total and the repeated half.</summary>
    private static string LossChart(TrainingResult tr)
    {
        const double W = 760, H = 320, L = 56, R = 150, T = 16, B = 44;
        double pw = W - L - R, ph = H - T - B;
        var n = tr.Losses.Length;
        var yMax = Math.Ceiling(Math.Max(1e-9, Math.Max(tr.Losses.Max(), tr.RepeatedLosses.Max())));
        double X(int i) => L + (n <= 1 ? 0 : pw * i / (n - 1));
        double Y(double v) => T + ph * (1 - Math.Clamp(v / yMax, 0, 1));
        var sb = new StringBuilder();
        sb.Append(Inv, $"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{N(W)}\" height=\"{N(H)}\" viewBox=\"0 0 {N(W)} {N(H)}\" role=\"img\" aria-label=\"training loss curve\">");
        sb.Append(Inv, $"<rect x=\"{N(L)}\" y=\"{N(T)}\" width=\"{N(pw)}\" height=\"{N(ph)}\" fill=\"#fff\" stroke=\"#d0d7de\"/>");
        var yStep = yMax <= 2 ? 0.5 : yMax <= 6 ? 1 : 2;
        for (var v = 0.0; v <= yMax + 1e-9; v += yStep)
        {
            sb.Append(Inv, $"<line x1=\"{N(L)}\" x2=\"{N(L + pw)}\" y1=\"{N(Y(v))}\" y2=\"{N(Y(v))}\" stroke=\"#eaeef2\"/>");
            sb.Append(Inv, $"<text x=\"{N(L - 6)}\" y=\"{N(Y(v) + 4)}\" font-size=\"11\" text-anchor=\"end\" fill=\"#57606a\">{v.ToString("0.#", Inv)}</text>");
        }
        var xTicks = NiceTicks(n, 6);
        foreach (var s in xTicks)
        {
            var x = X(Math.Max(0, s - 1));
            sb.Append(Inv, $"<line x1=\"{N(x)}\" x2=\"{N(x)}\" y1=\"{N(T + ph)}\" y2=\"{N(T + ph + 4)}\" stroke=\"#57606a\"/>");
            sb.Append(Inv, $"<text x=\"{N(x)}\" y=\"{N(T + ph + 17)}\" font-size=\"11\" text-anchor=\"middle\" fill=\"#57606a\">{s}</text>");
        }
        sb.Append(Inv, $"<text x=\"{N(L + pw / 2)}\" y=\"{N(H - 6)}\" font-size=\"12\" text-anchor=\"middle\">step</text>");
        sb.Append(Inv, $"<text transform=\"translate(14 {N(T + ph / 2)}) rotate(-90)\" font-size=\"12\" text-anchor=\"middle\">loss (nats)</text>");

        void Series(float[] values, string color, string label, int index)
        {
            sb.Append(Inv, $"<polyline fill=\"none\" stroke=\"{color}\" stroke-opacity=\"0.3\" stroke-width=\"1\" points=\"{Points(values, X, Y, n)}\"/>");
            sb.Append(Inv, $"<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2.2\" points=\"{Points(MovingAverage(values, Math.Max(1, n / 50)), X, Y, n)}\"/>");
            var ly = T + 14 + index * 20;
            sb.Append(Inv, $"<line x1=\"{N(L + pw + 12)}\" x2=\"{N(L + pw + 32)}\" y1=\"{N(ly)}\" y2=\"{N(ly)}\" stroke=\"{color}\" stroke-width=\"2.2\"/>");
            sb.Append(Inv, $"<text x=\"{N(L + pw + 38)}\" y=\"{N(ly + 4)}\" font-size=\"12\">{Esc(label)}</text>");
        }
        Series(tr.Losses, "#0969da", "all tokens", 0);
        Series(tr.RepeatedLosses, "#cf222e", "repeated half", 1);
        sb.Append("</svg>");
        return sb.ToString();
    }

    private static string Points(float[] values, Func<int, double> x, Func<double, double> y, int n)
    {
        // At most ~800 points: more cannot be seen at this width and only make the file bigger.
        var stride = Math.Max(1, n / 800);
        var sb = new StringBuilder();
        for (var i = 0; i < n; i += stride) sb.Append(Inv, $"{x(i):0.#},{y(values[i]):0.#} ");
        if ((n - 1) % stride != 0) sb.Append(Inv, $"{x(n - 1):0.#},{y(values[n - 1]):0.#}");
        return sb.ToString().TrimEnd();
    }

    private static float[] MovingAverage(float[] v, int window)
    {
        var r = new float[v.Length];
        double sum = 0;
        for (var i = 0; i < v.Length; i++)
        {
            sum += v[i];
            if (i >= window) sum -= v[i - window];
            r[i] = (float)(sum / Math.Min(i + 1, window));
        }
        return r;
    }

    private static List<int> NiceTicks(int n, int count)
    {
        var raw = Math.Max(1, n / (double)count);
        var mag = Math.Pow(10, Math.Floor(Math.Log10(raw)));
        var step = (int)(new[] { 1, 2, 5, 10 }.Select(k => k * mag).First(s => s >= raw));
        step = Math.Max(1, step);
        var ticks = new List<int> { 1 };
        for (var s = step; s <= n; s += step) ticks.Add(s);
        return ticks.Distinct().ToList();
    }

    /// <summary>White to dark blue (a "Blues" ramp) for a value in [0, 1].</summary>
    private static string Blue(double v)
    {
        v = Math.Clamp(v, 0, 1);
        (double r, double g, double b) lo = (247, 251, 255), hi = (8, 48, 107);
        int C(double a, double b2) => (int)Math.Round(a + (b2 - a) * v);
        return $"#{C(lo.r, hi.r):x2}{C(lo.g, hi.g):x2}{C(lo.b, hi.b):x2}";
    }

    /// <summary>A layers × heads grid of one score, cells coloured by value and labelled with it.</summary>
    private static string ScoreGrid(string title, double[,] scores, double? threshold)
    {
        int layers = scores.GetLength(0), heads = scores.GetLength(1);
        const int cell = 54, left = 34, top = 36;
        int w = left + heads * cell + 8, h = top + layers * cell + 8;
        var sb = new StringBuilder("<figure>");
        sb.Append(Inv, $"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"{Esc(title)} scores\">");
        sb.Append(Inv, $"<text x=\"{left}\" y=\"13\" font-size=\"13\" font-weight=\"600\">{Esc(title)}</text>");
        for (var hd = 0; hd < heads; hd++)
            sb.Append(Inv, $"<text x=\"{left + hd * cell + cell / 2}\" y=\"{top - 6}\" font-size=\"11\" text-anchor=\"middle\" fill=\"#57606a\">H{hd}</text>");
        for (var l = 0; l < layers; l++)
        {
            sb.Append(Inv, $"<text x=\"{left - 6}\" y=\"{top + l * cell + cell / 2 + 4}\" font-size=\"11\" text-anchor=\"end\" fill=\"#57606a\">L{l}</text>");
            for (var hd = 0; hd < heads; hd++)
            {
                var v = scores[l, hd];
                var x = left + hd * cell;
                var y = top + l * cell;
                var strong = threshold is { } th && v >= th;
                sb.Append(Inv, $"<rect x=\"{x}\" y=\"{y}\" width=\"{cell - 2}\" height=\"{cell - 2}\" fill=\"{Blue(v)}\" stroke=\"{(strong ? "#cf222e" : "#d0d7de")}\" stroke-width=\"{(strong ? 3 : 1)}\"><title>L{l}H{hd} {Esc(title)}: {F(v, 4)}</title></rect>");
                sb.Append(Inv, $"<text x=\"{x + (cell - 2) / 2}\" y=\"{y + (cell - 2) / 2 + 4}\" font-size=\"12\" text-anchor=\"middle\" fill=\"{(v > 0.5 ? "#fff" : "#1b1f24")}\">{F(v, 2)}</text>");
            }
        }
        sb.Append("</svg>");
        sb.Append(threshold is { } t2 ? $"<figcaption>red outline: ≥ {F(t2, 2)}</figcaption>" : "");
        sb.Append("</figure>");
        return sb.ToString();
    }

    /// <summary>A query × key heatmap of one head's attention, tokens on both axes, the expected diagonals dashed.</summary>
    private static string Heatmap(PatternExample e, long[] tokens, int seqLen)
    {
        var n = e.Pattern.GetLength(0);
        var cell = n <= 48 ? 9 : Math.Max(3, 430 / n);
        const int left = 30, top = 30;
        int size = n * cell, w = left + size + 6, h = top + size + 6;
        var sb = new StringBuilder();
        sb.Append(Inv, $"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"attention pattern of {e.Head}\">");
        sb.Append(Inv, $"<rect x=\"{left}\" y=\"{top}\" width=\"{size}\" height=\"{size}\" fill=\"{Blue(0)}\"/>");
        for (var q = 0; q < n; q++)
            for (var k = 0; k <= q; k++)
            {
                var v = e.Pattern[q, k];
                if (v < 0.005) continue;  // indistinguishable from the background; skipping keeps the file small
                sb.Append(Inv, $"<rect x=\"{left + k * cell}\" y=\"{top + q * cell}\" width=\"{cell}\" height=\"{cell}\" fill=\"{Blue(Math.Sqrt(v))}\"><title>q{q} ({TokenLabel(tokens, q)}) → k{k} ({TokenLabel(tokens, k)}): {F(v, 3)}</title></rect>");
            }
        // Upper triangle is masked (causal attention): grey it so it does not read as "no attention".
        sb.Append(Inv, $"<path d=\"M{left + cell} {top} H{left + size} V{top + size - cell} Z\" fill=\"#f6f8fa\" opacity=\"0.85\"/>");
        Diagonal(sb, left, top, cell, n, seqLen - 1, RepeatedSequences.Prefix + seqLen, "#cf222e");
        Diagonal(sb, left, top, cell, n, 1, 1, "#6e7781");
        sb.Append(Inv, $"<rect x=\"{left}\" y=\"{top}\" width=\"{size}\" height=\"{size}\" fill=\"none\" stroke=\"#d0d7de\"/>");
        var labelEvery = n > 24 ? 5 : 1;
        for (var i = 0; i < n; i += labelEvery)
        {
            var c = left + i * cell + cell / 2.0;
            sb.Append(Inv, $"<text x=\"{c:0.#}\" y=\"{top - 5}\" font-size=\"9\" text-anchor=\"middle\" fill=\"#57606a\">{i}</text>");
            sb.Append(Inv, $"<text x=\"{left - 4}\" y=\"{top + i * cell + cell / 2.0 + 3:0.#}\" font-size=\"9\" text-anchor=\"end\" fill=\"#57606a\">{i}</text>");
        }
        sb.Append(Inv, $"<text x=\"{left + size / 2}\" y=\"10\" font-size=\"10\" text-anchor=\"middle\" fill=\"#57606a\">key position</text>");
        sb.Append("</svg>");
        return sb.ToString();
    }

    private static void Diagonal(StringBuilder sb, int left, int top, int cell, int n, int offset, int fromQuery, string color)
    {
        var q0 = Math.Max(fromQuery, offset);
        var q1 = n - 1;
        if (q0 > q1) return;
        double x0 = left + (q0 - offset) * cell + cell / 2.0, y0 = top + q0 * cell + cell / 2.0;
        double x1 = left + (q1 - offset) * cell + cell / 2.0, y1 = top + q1 * cell + cell / 2.0;
        // A white halo under the dashes keeps the guide visible over dark (high-attention) cells.
        sb.Append(Inv, $"<line x1=\"{x0:0.#}\" y1=\"{y0:0.#}\" x2=\"{x1:0.#}\" y2=\"{y1:0.#}\" stroke=\"#ffffff\" stroke-width=\"3\" opacity=\"0.8\"/>");
        sb.Append(Inv, $"<line x1=\"{x0:0.#}\" y1=\"{y0:0.#}\" x2=\"{x1:0.#}\" y2=\"{y1:0.#}\" stroke=\"{color}\" stroke-width=\"1.5\" stroke-dasharray=\"3 3\"/>");
    }

    private static string TokenLabel(long[] tokens, int i) => i < tokens.Length ? (i == 0 ? "BOS" : tokens[i].ToString(Inv)) : "?";
}
