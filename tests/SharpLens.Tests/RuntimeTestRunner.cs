using NUnit.Framework.Api;
using NUnit.Framework.Interfaces;
using NUnit.Framework.Internal;

namespace SharpLens.Tests;

/// <summary>
/// Runs this assembly's tests with only a .NET runtime: <c>dotnet SharpLens.Tests.dll [--category NAME]... [--test REGEX]...</c>. The GPU
/// machines <c>./build.sh gpu-check</c> runs on may have no .NET SDK, so no <c>dotnet test</c> (a runtime arrives there in
/// build/gpu-bundle, see <c>./build.sh gpu-bundle</c>); this entry point drives NUnit's own runner instead. <c>dotnet test</c> does not use it.
/// Prints every failure with its message and ends with one line "N passed, N failed, N skipped"; the exit status is 0
/// only when at least one test passed and none failed.
/// </summary>
public static class RuntimeTestRunner
{
    /// <summary>
    /// Runs the tests in any of the given categories or whose full name matches any of the given regular expressions
    /// (every test when neither is given).
    /// </summary>
    public static int Main(string[] args)
    {
        var terms = new List<string>();
        for (var i = 0; i < args.Length; i++)
        {
            if (args[i] == "--category" && i + 1 < args.Length) terms.Add($"<cat>{System.Security.SecurityElement.Escape(args[++i])}</cat>");
            else if (args[i] == "--test" && i + 1 < args.Length) terms.Add($"<test re=\"1\">{System.Security.SecurityElement.Escape(args[++i])}</test>");
            else
            {
                Console.Error.WriteLine($"unknown argument '{args[i]}'; usage: dotnet SharpLens.Tests.dll [--category NAME]... [--test REGEX]...");
                return 2;
            }
        }
        var runner = new NUnitTestAssemblyRunner(new DefaultTestAssemblyBuilder());
        runner.Load(typeof(RuntimeTestRunner).Assembly, new Dictionary<string, object>());
        var filter = terms.Count == 0 ? TestFilter.Empty : TestFilter.FromXml("<filter><or>" + string.Concat(terms) + "</or></filter>");
        var listener = new FailurePrinter();
        var result = runner.Run(listener, filter);
        var skipped = result.SkipCount + result.InconclusiveCount;
        Console.WriteLine($"{result.PassCount} passed, {result.FailCount} failed, {skipped} skipped");
        // Success needs a test that passed: a GPU run where every CUDA test skipped (no device seen) must not look like one
        // that checked the GPU.
        return result.FailCount == 0 && result.PassCount > 0 ? 0 : 1;
    }

    /// <summary>Writes each failed or errored test (not its suites) with its message and stack trace.</summary>
    private sealed class FailurePrinter : ITestListener
    {
        public void TestStarted(ITest test) { }

        public void TestFinished(ITestResult result)
        {
            if (result.Test.IsSuite && result.ResultState.Site != FailureSite.SetUp && result.ResultState.Site != FailureSite.TearDown) return;
            var status = result.ResultState.Status;
            if (status == TestStatus.Failed)
                Console.WriteLine($"FAILED {result.FullName}: {result.Message}\n{result.StackTrace}");
            else if (status == TestStatus.Skipped && !result.Test.IsSuite)
                Console.WriteLine($"skipped {result.FullName}: {result.Message}");
        }

        public void TestOutput(TestOutput output) { }

        public void SendMessage(TestMessage message) { }
    }
}
