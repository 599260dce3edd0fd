using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using SharpLens.Tokenization;

namespace SharpLens.TokenizerBench;

/// <summary>
/// Tokenizer throughput, single-threaded, against HuggingFace's tokenizers (the npm package, run with
/// RAYON_NUM_THREADS=1) on the same ~10 MB mixed-language text, for GPT-2, Llama 2, Llama 3, Qwen 3 and Gemma 3;
/// Microsoft.ML.Tokenizers 3.0.0 too where it can load the tokenizer. Every contestant's ids are compared with
/// the oracle's, line by line. Writes a markdown table (--out), MB/s as UTF-8 megabytes (10^6 bytes) per second.
///
///   dotnet run -c Release --project perf/SharpLens.TokenizerBench -- [--out FILE] [--mb 10] [--runs 3] [--only gpt2,llama3]
/// </summary>
public static class Program
{
    public static int Main(string[] args)
    {
        string? outPath = null;
        double mb = 10;
        var runs = 3;
        string[]? only = null;
        for (var i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--out": outPath = args[++i]; break;
                case "--mb": mb = double.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--runs": runs = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--only": only = args[++i].Split(','); break;
                default: Console.Error.WriteLine($"unknown argument {args[i]}"); return 2;
            }
        }

        var root = FindRoot();
        var npm = Path.Combine(root, "tests", "SharpLens.Tests", "npm");
        Run("bash", [Path.Combine(root, "tests", "SharpLens.Tests", "tokenizer-oracle", "fetch.sh"), npm], null);

        var lines = BenchText.Generate(seed: 7, bytes: (long)(mb * 1_000_000));
        var bytes = lines.Sum(l => (long)Encoding.UTF8.GetByteCount(l));
        var work = Path.Combine(Path.GetTempPath(), "sharplens-tokenizer-bench-" + Environment.ProcessId);
        Directory.CreateDirectory(work);
        var linesPath = Path.Combine(work, "lines.json");
        File.WriteAllText(linesPath, JsonSerializer.Serialize(lines));
        Console.WriteLine($"{lines.Count} lines, {bytes / 1e6:F2} MB of UTF-8; {runs} timed runs each, the first (cold cache) reported apart");

        var rows = new List<string>();
        var failed = false;
        foreach (var name in new[] { "gpt2", "llama2", "llama3", "qwen3", "gemma3" })
        {
            if (only is not null && !only.Contains(name)) continue;
            var dir = Path.Combine(npm, "models", name);
            var tokenizerJson = Path.Combine(dir, "tokenizer.json");

            var idsPath = Path.Combine(work, name + ".ids");
            var script = Path.Combine(AppContext.BaseDirectory, "oracle-bench.js");
            var json = Run("node", [script, Path.Combine(npm, "node_modules"), tokenizerJson, linesPath, runs.ToString(CultureInfo.InvariantCulture), idsPath],
                new() { ["RAYON_NUM_THREADS"] = "1" });
            using var oracleDoc = JsonDocument.Parse(json.Trim().Split('\n')[^1]);
            var oracleRuns = oracleDoc.RootElement.GetProperty("runs").EnumerateArray().Select(e => e.GetDouble()).ToArray();
            var oracleIds = ReadIds(idsPath, lines.Count);
            rows.Add(Row(name, "HuggingFace tokenizers 0.23.2 (Rust, RAYON_NUM_THREADS=1)", oracleDoc.RootElement.GetProperty("load").GetDouble(), oracleRuns, bytes, null, null));

            var sw = Stopwatch.StartNew();
            var ours = BpeTokenizer.FromDirectory(dir);
            var load = sw.Elapsed.TotalSeconds;
            var (ourRuns, ourDiff) = Time(lines, runs, oracleIds, t => ours.Encode(t));
            failed |= ourDiff != 0;
            rows.Add(Row(name, "SharpLens BpeTokenizer", load, ourRuns, bytes, oracleRuns, ourDiff));

            foreach (var c in MlTokenizers.For(tokenizerJson))
            {
                if (c.Encode is null)
                {
                    rows.Add($"| {name} | {c.Label} | | | | | {c.WhyNot} |");
                    continue;
                }
                var (mlRuns, mlDiff) = Time(lines, runs, oracleIds, c.Encode);
                rows.Add(Row(name, c.Label, null, mlRuns, bytes, oracleRuns, mlDiff));
            }
            Console.WriteLine(string.Join("\n", rows.TakeLast(4)));
        }
        Directory.Delete(work, recursive: true);

        var md = new StringBuilder();
        md.AppendLine("# Tokenizer throughput");
        md.AppendLine();
        md.AppendLine($"Run {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC on {Environment.ProcessorCount} cores, .NET {Environment.Version}, node {Run("node", ["--version"], null).Trim()}. " +
                      $"Text: {lines.Count} generated mixed-language lines, {bytes / 1e6:F2} MB of UTF-8 (perf/SharpLens.TokenizerBench/BenchText.cs, seed 7), " +
                      "each line encoded without special tokens, one thread. MB/s = 10^6 UTF-8 bytes per second. " +
                      $"Cold: the first of {runs} runs (word caches empty); warm: the median of the others. " +
                      "The oracle runs in node (`encodeBatch` of all lines, RAYON_NUM_THREADS=1), so its times include building the JavaScript encoding objects. " +
                      "Lines differing: lines whose ids are not exactly the oracle's.");
        md.AppendLine();
        md.AppendLine("| tokenizer | implementation | load s | cold MB/s | warm MB/s | warm vs oracle | lines differing from the oracle |");
        md.AppendLine("|---|---|---|---|---|---|---|");
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

    private static (double[] Runs, int Differing) Time(List<string> lines, int runs, int[][] oracle, Func<string, IReadOnlyList<int>> encode)
    {
        var times = new double[runs];
        var differing = 0;
        for (var r = 0; r < runs; r++)
        {
            var sw = Stopwatch.StartNew();
            foreach (var line in lines) encode(line);
            times[r] = sw.Elapsed.TotalSeconds;
        }
        for (var i = 0; i < lines.Count; i++)
            if (!encode(lines[i]).SequenceEqual(oracle[i])) differing++;
        return (times, differing);
    }

    private static string Row(string name, string label, double? load, double[] runs, long bytes, double[]? baseline, int? differing)
    {
        static double Warm(double[] r) => r.Length == 1 ? r[0] : r.Skip(1).Order().ElementAt((r.Length - 1) / 2);
        var cold = bytes / 1e6 / runs[0];
        var warm = bytes / 1e6 / Warm(runs);
        var ratio = baseline is null ? "1.00" : (Warm(baseline) / Warm(runs)).ToString("F2", CultureInfo.InvariantCulture) + "×";
        return $"| {name} | {label} | {(load is { } l ? l.ToString("F2", CultureInfo.InvariantCulture) : "")} | {cold:F2} | {warm:F2} | {ratio} | {(differing is { } d ? $"{d}" : "(oracle)")} |";
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
