using System.Runtime.CompilerServices;

namespace SharpLens.Tests;

/// <summary>Locates the reference fixtures copied into tests/fixtures (real HuggingFace and TransformerLens numbers).</summary>
internal static class Fixtures
{
    /// <summary>The repository root: the nearest folder holding Engine.sln above the test binaries, or above this source file.</summary>
    public static string RepoRoot => FindRoot(TestContext.CurrentContext.TestDirectory) ?? FindRoot(SourceDirectory())
        ?? throw new DirectoryNotFoundException("no Engine.sln above " + TestContext.CurrentContext.TestDirectory);

    private static string SourceDirectory([CallerFilePath] string path = "") => System.IO.Path.GetDirectoryName(path)!;

    private static string? FindRoot(string start)
    {
        var dir = new DirectoryInfo(start);
        while (dir is not null && !File.Exists(System.IO.Path.Combine(dir.FullName, "Engine.sln"))) dir = dir.Parent;
        return dir?.FullName;
    }

    /// <summary>tests/fixtures/NAME.</summary>
    public static string Path(string name) => System.IO.Path.Combine(RepoRoot, "tests", "fixtures", name);
}
