using System.Diagnostics;

namespace SharpLens.Tests;

/// <summary>
/// The arithmetic of the CUDA rotary and LayerNorm kernels, checked on machines without nvcc or a GPU:
/// native/cuda/tests/host_emulation_test.cpp runs the kernels' own per-element and per-lane functions on the host (the
/// LayerNorm warp sums in the device's butterfly order) against their definitions in double, with bounds derived per
/// output (emulation_cases.h), in float64, float32, float16 and bfloat16. It needs a C++ compiler and CUDA's
/// cuda_fp16.h/cuda_bf16.h (Debian: nvidia-cuda-dev, which native/cuda/check.sh --install brings); without them the
/// test is reported as skipped, naming what is missing.
/// </summary>
public class CudaHostEmulationTests
{
    [Test]
    public void RotaryAndLayerNormKernelArithmeticMatchesItsDefinitionOnTheHost()
    {
        var compiler = Environment.GetEnvironmentVariable("CXX") is { Length: > 0 } cxx ? cxx : "g++";
        var cudaInclude = CudaIncludeDirectory();
        if (cudaInclude is null)
            Assert.Ignore("CUDA's cuda_fp16.h was found in none of $CUDA_HOME/include, /usr/local/cuda/include, /usr/include: not run");
        var root = Fixtures.RepoRoot;
        var output = Path.Combine(Path.GetTempPath(), "sharplens-host-emulation-" + Guid.NewGuid().ToString("N"));
        try
        {
            // -ffp-contract=off: the emulation rounds op by op as the device does; a compiler fusing a*b+c (aarch64, -mfma) would not.
            List<string> args = ["-std=c++17", "-O2", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror", "-I", Path.Combine(root, "native", "cuda")];
            // /usr/include is searched already; naming it with -isystem would move it behind libstdc++'s headers and break
            // their #include_next.
            if (cudaInclude != "/usr/include") args.AddRange(["-isystem", cudaInclude]);
            args.AddRange([Path.Combine(root, "native", "cuda", "tests", "host_emulation_test.cpp"), "-o", output]);
            var (built, buildLog) = Run(compiler, [.. args]);
            if (built is null) Assert.Ignore($"no C++ compiler '{compiler}' here: not run");
            Assert.That(built, Is.EqualTo(0), "compiling host_emulation_test.cpp:\n" + buildLog);
            var (ran, log) = Run(output, []);
            Assert.That(ran, Is.EqualTo(0), log);
            Assert.That(log, Does.Contain("host emulation PASS: 0 failures"), log);
            foreach (var kernel in new[] { "rotary", "layer norm" })
                foreach (var dtype in new[] { "float64", "float32", "float16", "bfloat16" })
                    Assert.That(log, Does.Contain($"ok   {kernel} {dtype}"), $"{kernel} ran in {dtype}:\n" + log);
        }
        finally
        {
            if (File.Exists(output)) File.Delete(output);
        }
    }

    private static string? CudaIncludeDirectory()
    {
        var candidates = new List<string>();
        if (Environment.GetEnvironmentVariable("CUDA_HOME") is { Length: > 0 } home) candidates.Add(Path.Combine(home, "include"));
        candidates.AddRange(["/usr/local/cuda/include", "/usr/include"]);
        return candidates.FirstOrDefault(d => File.Exists(Path.Combine(d, "cuda_fp16.h")) && File.Exists(Path.Combine(d, "cuda_bf16.h")));
    }

    /// <summary>Exit code and output of a program, or (null, why) when it cannot be started.</summary>
    private static (int? ExitCode, string Output) Run(string program, string[] args)
    {
        var info = new ProcessStartInfo(program) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) info.ArgumentList.Add(a);
        Process process;
        try
        {
            process = Process.Start(info)!;
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            return (null, e.Message);
        }
        using (process)
        {
            // Both streams asynchronously, so that the two-minute limit holds even if the program hangs with its pipes open.
            var stderr = process.StandardError.ReadToEndAsync();
            var stdout = process.StandardOutput.ReadToEndAsync();
            if (!process.WaitForExit(TimeSpan.FromMinutes(2))) { process.Kill(true); return (-1, "(killed after two minutes)"); }
            return (process.ExitCode, stdout.Result + stderr.Result);
        }
    }
}
