using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Exporters;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Loggers;
using BenchmarkDotNet.Running;
using BenchmarkDotNet.Toolchains.InProcess.Emit;

namespace SharpLens.Perf;

/// <summary>
/// Runs the BenchmarkDotNet suite. Every benchmark class has a baseline measured in the same run, so
/// the summary reports ratios. <c>--summary FILE</c> writes all result tables to one markdown file.
/// Other arguments go to BenchmarkDotNet (e.g. <c>--filter *LayerNorm*</c>).
/// </summary>
public static class Program
{
    public static int Main(string[] args)
    {
        string? summaryPath = null;
        var rest = new List<string>();
        for (var i = 0; i < args.Length; i++)
        {
            if (args[i] == "--summary" && i + 1 < args.Length) summaryPath = args[++i];
            else rest.Add(args[i]);
        }
        if (!rest.Contains("--filter")) rest.AddRange(["--filter", "*"]);

        // In-process: the native library is already next to this assembly, and short runs keep
        // ./build.sh bench to a few minutes on two cores.
        var job = Job.Default.WithToolchain(InProcessEmitToolchain.Instance)
            .WithLaunchCount(1).WithWarmupCount(3).WithIterationCount(10);
        var config = ManualConfig.Create(DefaultConfig.Instance).AddJob(job);
        var summaries = BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(rest.ToArray(), config).ToList();

        if (summaryPath is not null && summaries.Count > 0)
        {
            Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(summaryPath))!);
            using var writer = new StreamWriter(summaryPath);
            writer.WriteLine("# SharpLens benchmark summary");
            writer.WriteLine();
            writer.WriteLine($"Run {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC, {Environment.ProcessorCount} cores, " +
                             $"libtorch intra-op threads {SharpLens.Tensors.Torch.NumThreads}. Ratios are against the baseline row of the same run.");
            writer.WriteLine();
            var logger = new StreamLogger(writer);
            foreach (var s in summaries) MarkdownExporter.GitHub.ExportToLog(s, logger);
            Console.WriteLine($"summary written to {summaryPath}");
        }
        return summaries.Any(s => s.HasCriticalValidationErrors || s.Reports.Any(r => !r.Success)) ? 1 : 0;
    }
}
