using System.Runtime.CompilerServices;

namespace SharpLens.Tests;

/// <summary>Locates the reference fixtures copied into tests/fixtures (real HuggingFace and TransformerLens numbers).</summary>
internal static class Fixtures
{
    /// <summary>Max absolute difference in float64, shapes asserted equal; -inf entries (masked scores) must match exactly.</summary>
    public static double MaxAbsDiff(Tensor expected, Tensor actual)
    {
        Assert.That(actual.Shape, Is.EqualTo(expected.Shape), "shape");
        using var scope = Torch.NewScope();
        var e = expected.To(ScalarType.Float64);
        var a = actual.To(ScalarType.Float64);
        var bothInf = e.IsFinite().LogicalNot().LogicalAnd(e.Eq(a));
        return (e - a).Abs().MaskedFill(bothInf, 0).Max().ToDouble();
    }

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

    /// <summary>Every fixture model (a <c>TestFixtureSource</c> for tests that hold for all eight).</summary>
    public static readonly string[] AllModels =
        ["tiny-gpt2", "tiny-pythia", "tiny-llama", "tiny-qwen2", "tiny-mistral", "tiny-gemma", "tiny-gemma2", "tiny-phi3"];

    /// <summary>The six Llama-family fixtures.</summary>
    public static readonly string[] LlamaFamily = AllModels[2..];

    /// <summary>tests/fixtures/NAME.</summary>
    public static string Path(string name) => System.IO.Path.Combine(RepoRoot, "tests", "fixtures", name);
}

/// <summary>
/// Base of the test classes that run one fixture model against its reference.safetensors (HuggingFace and
/// TransformerLens numbers): loads the reference once and compares tensors the same way everywhere.
/// </summary>
public abstract class FixtureTest(string model)
{
    /// <summary>The fixture's name (tiny-gpt2, tiny-pythia).</summary>
    protected string Model { get; } = model;

    /// <summary>The reference tensors by key.</summary>
    protected Dictionary<string, Tensor> Reference { get; private set; } = null!;

    /// <summary>The reference input_ids [2, 12].</summary>
    protected Tensor Tokens => Reference["input_ids"];

    /// <summary>The fixture's model directory.</summary>
    protected string ModelDir => Fixtures.Path(Model);

    [OneTimeSetUp]
    public void LoadReference() => Reference = SharpLens.Tensors.IO.SafeTensors.Load(System.IO.Path.Combine(ModelDir, "reference.safetensors"));

    [OneTimeTearDown]
    public void FreeReference()
    {
        foreach (var t in Reference.Values) t.Dispose();
    }

    /// <summary>See <see cref="Fixtures.MaxAbsDiff"/>.</summary>
    protected static double MaxAbsDiff(Tensor expected, Tensor actual) => Fixtures.MaxAbsDiff(expected, actual);
}
