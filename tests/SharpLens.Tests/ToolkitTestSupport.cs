using SharpLens.Cli;
using SharpLens.Tensors.IO;

namespace SharpLens.Tests;

/// <summary>A fixture's analysis.safetensors (TransformerLens 2.15.4's analysis and patching results), disposed with the test.</summary>
internal sealed class AnalysisFixture(string model) : IDisposable
{
    private readonly Dictionary<string, Tensor> _tensors = SafeTensors.Load(Path.Combine(Fixtures.Path(model), "analysis.safetensors"));

    /// <summary>One tensor by key (input_ids, answer, wrong, patch.*, ...).</summary>
    public Tensor this[string key] => _tensors[key];

    public void Dispose()
    {
        foreach (var t in _tensors.Values) t.Dispose();
    }
}

/// <summary>A test class with a temporary folder of its own, deleted after its tests.</summary>
public abstract class TempFolderTest
{
    /// <summary>The folder.</summary>
    protected string Tmp { get; private set; } = null!;

    [OneTimeSetUp]
    public void CreateTemp()
    {
        Tmp = Path.Combine(Path.GetTempPath(), $"sharplens-{GetType().Name}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(Tmp);
    }

    [OneTimeTearDown]
    public void DeleteTemp()
    {
        if (Directory.Exists(Tmp)) Directory.Delete(Tmp, recursive: true);
    }

    /// <summary>Runs the lens CLI in process; returns its exit code and what it printed.</summary>
    protected static (int Code, string Out, string Err) Lens(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        var code = Program.Run(args, o, e);
        return (code, o.ToString(), e.ToString());
    }
}
