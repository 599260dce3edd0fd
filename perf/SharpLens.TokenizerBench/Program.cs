using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using SharpLens.Tests;
using SharpLens.Tokenization;

namespace SharpLens.TokenizerBench;

/// <summary>
/// Tokenizer throughput, single-threaded, against HuggingFace's tokenizers (the npm package, run with
/// RAYON_NUM_THREADS=1) on the same ~10 MB mixed-language text, for GPT-2, Llama 2, Llama 3, Qwen 3 and Gemma 3;
/// Microsoft.ML.Tokenizers 3.0.0 too where it can load the tokenizer. Each repetition loads a fresh tokenizer
/// (empty word cache), encodes 1 MB of other text of the same kind (so the .NET JIT and both word caches are
/// warm, as in a running process), then times a first pass over the benchmark text and a repeat pass;
/// repetitions alternate between the oracle and the contestants, and the median is reported. Every contestant's
/// ids are compared with the oracle's, line by line, on the benchmark text and on the test corpus
/// (tests/SharpLens.Tests/TokenizerCorpus.cs). Writes a markdown table (--out).
///
///   dotnet run -c Release --project perf/SharpLens.TokenizerBench -- [--out FILE] [--mb 10] [--reps 3] [--only gpt2,llama3]
/// </summary>
public static class Program
{
    private sealed record Contestant(string Label, Func<Func<string, IReadOnlyList<int>>>? Create, string? WhyNot);

    private sealed class Measurements
    {
        public List<double> Load { get; } = [];
        public List<double> First { get; } = [];
        public List<double> Repeat { get; } = [];
        public int? LinesDiffering { get; set; }
        public int? CorpusDiffering { get; set; }
    }

    public static int Main(string[] args)
    {
        string? outPath = null;
        double mb = 10;
        var reps = 3;
        string[]? only = null;
        for (var i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--out": outPath = args[++i]; break;
                case "--mb": mb = double.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--reps": reps = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--only": only = args[++i].Split(','); break;
                default: Console.Error.WriteLine($"unknown argument {args[i]}"); return 2;
            }
        }

        var root = FindRoot();
        var npm = Path.Combine(root, "tests", "SharpLens.Tests", "npm");
        Run("bash", [Path.Combine(root, "tests", "SharpLens.Tests", "tokenizer-oracle", "fetch.sh"), npm], null);

        var lines = BenchText.Generate(seed: 7, bytes: (long)(mb * 1_000_000));
        var warmup = BenchText.Generate(seed: 8, bytes: 1_000_000);
        var corpus = TokenizerCorpus.Generate(20240613, 2400);
        var bytes = lines.Sum(l => (long)Encoding.UTF8.GetByteCount(l));
        var work = Path.Combine(Path.GetTempPath(), "sharplens-tokenizer-bench-" + Environment.ProcessId);
        Directory.CreateDirectory(work);
        var linesPath = Path.Combine(work, "lines.json");
        var warmupPath = Path.Combine(work, "warmup.json");
        var corpusPath = Path.Combine(work, "corpus.json");
        var emptyPath = Path.Combine(work, "empty.json");
        File.WriteAllText(linesPath, JsonSerializer.Serialize(lines));
        File.WriteAllText(warmupPath, JsonSerializer.Serialize(warmup));
        File.WriteAllText(emptyPath, "[]");
        var corpusJson = new StringBuilder("[");
        for (var i = 0; i < corpus.Count; i++)
        {
            if (i > 0) corpusJson.Append(',');
            TokenizerCorpus.WriteJsonString(corpusJson, corpus[i]);
        }
        File.WriteAllText(corpusPath, corpusJson.Append(']').ToString());
        Console.WriteLine($"{lines.Count} lines, {bytes / 1e6:F2} MB of UTF-8; {reps} repetitions; corpus {corpus.Count} texts");

        var script = Path.Combine(AppContext.BaseDirectory, "oracle-bench.js");
        var modules = Path.Combine(npm, "node_modules");
        var rows = new List<string>();
        var failed = false;
        foreach (var name in new[] { "gpt2", "llama2", "llama3", "qwen3", "gemma3" })
        {
            if (only is not null && !only.Contains(name)) continue;
            var dir = Path.Combine(npm, "models", name);
            var tokenizerJson = Path.Combine(dir, "tokenizer.json");

            var contestants = new List<Contestant>
            {
                new("SharpLens BpeTokenizer", () => { var t = BpeTokenizer.FromDirectory(dir); return s => t.Encode(s); }, null),
            };
            contestants.AddRange(MlTokenizers.For(tokenizerJson).Select(c => new Contestant(c.Label, c.Create, c.WhyNot)));

            // Exactness on the test corpus.
            var corpusIdsPath = Path.Combine(work, name + ".corpus.ids");
            Run("node", [script, modules, tokenizerJson, emptyPath, corpusPath, "1", corpusIdsPath], new() { ["RAYON_NUM_THREADS"] = "1" });
            var corpusIds = ReadIds(corpusIdsPath, corpus.Count);

            var oracle = new Measurements();
            var results = contestants.Select(_ => new Measurements()).ToList();
            var idsPath = Path.Combine(work, name + ".ids");
            for (var rep = 0; rep < reps; rep++)
            {
                var json = Run("node", [script, modules, tokenizerJson, warmupPath, linesPath, "2", idsPath], new() { ["RAYON_NUM_THREADS"] = "1" });
                using (var doc = JsonDocument.Parse(json.Trim().Split('\n')[^1]))
                {
                    oracle.Load.Add(doc.RootElement.GetProperty("load").GetDouble());
                    var passes = doc.RootElement.GetProperty("passes").EnumerateArray().Select(e => e.GetDouble()).ToArray();
                    oracle.First.Add(passes[0]);
                    oracle.Repeat.Add(passes[1]);
                }
                for (var c = 0; c < contestants.Count; c++)
                {
                    if (contestants[c].Create is not { } create) continue;
                    var sw = Stopwatch.StartNew();
                    var encode = create();
                    results[c].Load.Add(sw.Elapsed.TotalSeconds);
                    foreach (var w in warmup) encode(w);
                    results[c].First.Add(Pass(lines, encode));
                    results[c].Repeat.Add(Pass(lines, encode));
                    if (rep == reps - 1)
                    {
                        var oracleIds = ReadIds(idsPath, lines.Count);
                        results[c].LinesDiffering = Enumerable.Range(0, lines.Count).Count(i => !encode(lines[i]).SequenceEqual(oracleIds[i]));
                        results[c].CorpusDiffering = Enumerable.Range(0, corpus.Count).Count(i => !SafeEncode(encode, corpus[i]).SequenceEqual(corpusIds[i]));
                    }
                }
            }

            rows.Add(Row(name, "HuggingFace tokenizers 0.23.2 (Rust via node, RAYON_NUM_THREADS=1)", oracle, bytes, null, corpus.Count));
            for (var c = 0; c < contestants.Count; c++)
            {
                if (contestants[c].Create is null) rows.Add($"| {name} | {contestants[c].Label} | | | | | {contestants[c].WhyNot} | |");
                else
                {
                    rows.Add(Row(name, contestants[c].Label, results[c], bytes, oracle, corpus.Count));
                    if (c == 0) failed |= results[c].LinesDiffering != 0 || results[c].CorpusDiffering != 0;
                }
            }
            foreach (var r in rows.TakeLast(1 + contestants.Count)) Console.WriteLine(r);
        }
        Directory.Delete(work, recursive: true);

        var md = new StringBuilder();
        md.AppendLine("# Tokenizer throughput");
        md.AppendLine();
        md.AppendLine($"Run {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC on {Environment.ProcessorCount} cores (shared), .NET {Environment.Version}, node {Run("node", ["--version"], null).Trim()}, " +
                      "by `dotnet run -c Release --project perf/SharpLens.TokenizerBench -- --out perf/results/tokenizers.md`. " +
                      $"Benchmark text: {lines.Count} generated mixed-language lines, {bytes / 1e6:F2} MB of UTF-8 (BenchText.cs, seed 7: English-like prose, " +
                      "German, Russian, Greek, Chinese, Japanese, Korean, Arabic, Hindi, code, numbers, emoji; Zipf-distributed words), each line encoded " +
                      "without special tokens on one thread. MB/s = 10^6 UTF-8 bytes per second, median of " +
                      $"{reps} repetitions, oracle and contestants alternating; each repetition loads a fresh tokenizer and first encodes 1 MB of other " +
                      "text (seed 8), so JIT and word caches are warm. *First pass*: the first time the benchmark text is encoded; *repeat*: the second. " +
                      "The oracle runs in node (one `encodeBatch` call per pass), so its times include building the JavaScript encoding objects. " +
                      $"The last two columns count lines of the benchmark text, and texts of the test corpus ({corpus.Count} texts: lone surrogates, " +
                      "astral letters and digits, special tokens, ...), whose ids differ from the oracle's.");
        md.AppendLine();
        md.AppendLine("| tokenizer | implementation | load s | first pass MB/s | repeat MB/s | first pass vs oracle | benchmark lines differing | corpus texts differing |");
        md.AppendLine("|---|---|---|---|---|---|---|---|");
        foreach (var r in rows) md.AppendLine(r);
        Console.WriteLine(md);
        if (outPath is not null)
        {
            Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(outPath))!);
            File.WriteAllText(outPath, md.ToString());
            Console.WriteLine($"written to {outPath}");
        }
        return failed ? 1 : 0;
    }

    private static IReadOnlyList<int> SafeEncode(Func<string, IReadOnlyList<int>> encode, string text)
    {
        try
        {
            return encode(text);
        }
        catch (Exception)
        {
            return [-1];   // a contestant that throws on a text differs from the oracle on it
        }
    }

    private static double Pass(List<string> lines, Func<string, IReadOnlyList<int>> encode)
    {
        var sw = Stopwatch.StartNew();
        foreach (var line in lines) encode(line);
        return sw.Elapsed.TotalSeconds;
    }

    private static double Median(List<double> values) => values.Order().ElementAt(values.Count / 2);

    private static string Row(string name, string label, Measurements m, long bytes, Measurements? oracle, int corpusSize)
    {
        string F(double v) => v.ToString("F2", CultureInfo.InvariantCulture);
        var first = bytes / 1e6 / Median(m.First);
        var repeat = bytes / 1e6 / Median(m.Repeat);
        var ratio = oracle is null ? "1.00×" : F(Median(oracle.First) / Median(m.First)) + "×";
        var lines = m.LinesDiffering is { } l ? l.ToString(CultureInfo.InvariantCulture) : "(oracle)";
        var corpus = m.CorpusDiffering is { } c ? $"{c} of {corpusSize}" : "(oracle)";
        return $"| {name} | {label} | {F(Median(m.Load))} | {F(first)} | {F(repeat)} | {ratio} | {lines} | {corpus} |";
    }

    private static int[][] ReadIds(string path, int lineCount)
    {
        var data = File.ReadAllBytes(path);
        var result = new int[lineCount][];
        var offset = 0;
        for (var i = 0; i < lineCount; i++)
        {
            var n = BitConverter.ToInt32(data, offset);
            offset += 4;
            result[i] = new int[n];
            Buffer.BlockCopy(data, offset, result[i], 0, 4 * n);
            offset += 4 * n;
        }
        return result;
    }

    private static string Run(string file, string[] args, Dictionary<string, string>? env)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        foreach (var (k, v) in env ?? []) psi.Environment[k] = v;
        using var p = Process.Start(psi) ?? throw new InvalidOperationException($"cannot start {file}");
        var err = p.StandardError.ReadToEndAsync();
        var output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0) throw new InvalidOperationException($"{file} {string.Join(' ', args)} failed ({p.ExitCode}): {err.Result}");
        return output;
    }

    private static string FindRoot()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "Engine.sln"))) dir = dir.Parent;
        return dir?.FullName ?? throw new DirectoryNotFoundException("no Engine.sln above " + AppContext.BaseDirectory);
    }
}
