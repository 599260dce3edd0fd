using System.Diagnostics;
using System.IO.Compression;
using System.Text;
using System.Text.RegularExpressions;
using System.Xml.Linq;

namespace SharpLens.Tests;

/// <summary>
/// SharpLens as another .NET app gets it. Packs SharpLens.Torch and SharpLens from this build (<c>dotnet pack
/// --no-build</c>, what <c>./build.sh pack</c> runs) into a temporary feed; creates a console app outside the
/// repository with <c>dotnet new console</c>; adds SharpLens with <c>dotnet add package</c> (a nuget.config naming
/// that feed and nuget.org, and a private NUGET_PACKAGES folder so nothing comes from an older cache); makes
/// README.md's C# example, verbatim, its Program.cs; and runs it on the tiny GPT-2 fixture. The fixture has no
/// tokenizer, so the example runs on a copy with a byte-level one (256 byte tokens and end-of-text as 999, the
/// config's BOS; <see cref="GenerationTests.ModelWithTokenizer"/>): "The quick brown fox" becomes BOS and 18 tokens.
/// The numbers the app prints are checked against this test process running the same calls on the library it was
/// built with (which the fixture tests hold to HuggingFace), and every native tensor handle is freed at exit.
/// </summary>
[NonParallelizable]
public class PackageTests
{
    private string _tmp = null!;
    private string _feed = null!;
    private string _app = null!;
    private string _model = null!;
    private string _version = null!;

    private static string Repo => Fixtures.RepoRoot;

#if DEBUG
    private const string Configuration = "Debug";
#else
    private const string Configuration = "Release";
#endif

    [OneTimeSetUp]
    public void PackCreateAndBuildTheApp()
    {
        _tmp = Directory.CreateTempSubdirectory("sharplens-package-").FullName;
        _feed = Path.Combine(_tmp, "feed");
        _version = XDocument.Load(Path.Combine(Repo, "Directory.Build.props")).Descendants("Version").Single().Value;
        foreach (var project in new[] { "managed/SharpLens.Torch/SharpLens.Torch.csproj", "managed/SharpLens/SharpLens.csproj" })
            Dotnet(Repo, "pack", Path.Combine(Repo, project), "-c", Configuration, "--no-build", "-nologo", "-o", _feed);

        File.WriteAllText(Path.Combine(_tmp, "nuget.config"), $"""
            <?xml version="1.0" encoding="utf-8"?>
            <configuration>
              <packageSources>
                <clear />
                <add key="sharplens-local" value="{_feed}" />
                <add key="nuget.org" value="https://api.nuget.org/v3/index.json" />
              </packageSources>
              <!-- SharpLens packages only from the local feed, whatever nuget.org holds under these names. -->
              <packageSourceMapping>
                <packageSource key="sharplens-local"><package pattern="SharpLens" /><package pattern="SharpLens.*" /></packageSource>
                <packageSource key="nuget.org"><package pattern="*" /></packageSource>
              </packageSourceMapping>
            </configuration>
            """);
        _app = Path.Combine(_tmp, "app");
        Dotnet(_tmp, "new", "console", "-n", "ReadmeExample", "-o", _app);
        Dotnet(_app, "add", "package", "SharpLens");
        File.WriteAllText(Path.Combine(_app, "Program.cs"), ReadmeExample());
        // Not part of the example: reads Torch.LiveTensors before Main and after it returned (after every `using`
        // of the example has disposed), and counts garbage collections: with none, no finalizer freed a leaked tensor.
        File.WriteAllText(Path.Combine(_app, "LeakCheck.cs"), """
            using System.Runtime.CompilerServices;

            static class LeakCheck
            {
                [ModuleInitializer]
                internal static void Start()
                {
                    var start = SharpLens.Tensors.Torch.LiveTensors;
                    AppDomain.CurrentDomain.ProcessExit += (_, _) => Console.WriteLine(
                        $"live tensors: {start} at start, {SharpLens.Tensors.Torch.LiveTensors} at exit; {GC.CollectionCount(0)} garbage collections");
                }
            }
            """);
        Dotnet(_app, "build", "-c", "Release", "-nologo");
        _model = GenerationTests.ModelWithTokenizer(_tmp);
    }

    [OneTimeTearDown]
    public void DeleteTemp()
    {
        if (Directory.Exists(_tmp)) Directory.Delete(_tmp, recursive: true);
    }

    /// <summary>README.md's main C# example: the one block that is a whole Program.cs (later blocks are fragments).</summary>
    internal static string ReadmeExample()
    {
        var blocks = Regex.Matches(File.ReadAllText(Path.Combine(Repo, "README.md")), @"^```csharp\n(.*?)^```", RegexOptions.Singleline | RegexOptions.Multiline)
            .Where(m => m.Groups[1].Value.Contains("Program.cs of a console app")).ToList();
        Assert.That(blocks, Has.Count.EqualTo(1), "README.md has one whole-program C# example");
        return blocks[0].Groups[1].Value;
    }

    private string AppDll => Path.Combine(_app, "bin", "Release", "net10.0", "ReadmeExample.dll");

    [Test]
    public void PackagesCarryTheNativeLibraryDocsReadmeAndOneVersion()
    {
        Assert.That(Directory.GetFiles(_feed).Select(Path.GetFileName).Order(), Is.EqualTo(new[]
        {
            $"SharpLens.{_version}.nupkg", $"SharpLens.{_version}.snupkg", $"SharpLens.Torch.{_version}.nupkg", $"SharpLens.Torch.{_version}.snupkg",
        }));
        using (var torch = ZipFile.OpenRead(Path.Combine(_feed, $"SharpLens.Torch.{_version}.nupkg")))
        {
            var native = torch.GetEntry("runtimes/linux-x64/native/libsharplens.so");
            Assert.That(native, Is.Not.Null, "libsharplens.so in runtimes/linux-x64/native");
            Assert.That(Bytes(native!), Is.EqualTo(File.ReadAllBytes(Path.Combine(Repo, "build", "native", "libsharplens.so"))), "the library this build made");
            Assert.That(torch.GetEntry("lib/net10.0/SharpLens.Torch.dll"), Is.Not.Null);
            Assert.That(torch.GetEntry("lib/net10.0/SharpLens.Torch.xml"), Is.Not.Null, "XML docs");
            Assert.That(torch.GetEntry("README.md"), Is.Not.Null);
            var nuspec = Nuspec(torch);
            Assert.That(Meta(nuspec, "version"), Is.EqualTo(_version));
            Assert.That(Meta(nuspec, "readme"), Is.EqualTo("README.md"));
            // The version the library reports it was compiled against (TORCH_VERSION of the headers it saw).
            Assert.That(Meta(nuspec, "description"), Does.Contain($"compiled against libtorch {Torch.CompiledLibtorchVersion}."));
        }
        using (var lens = ZipFile.OpenRead(Path.Combine(_feed, $"SharpLens.{_version}.nupkg")))
        {
            Assert.That(lens.GetEntry("lib/net10.0/SharpLens.dll"), Is.Not.Null);
            Assert.That(lens.GetEntry("lib/net10.0/SharpLens.xml"), Is.Not.Null, "XML docs");
            var nuspec = Nuspec(lens);
            Assert.That(Meta(nuspec, "version"), Is.EqualTo(_version));
            var dependency = nuspec.Descendants().Single(e => e.Name.LocalName == "dependency");
            Assert.That(dependency.Attribute("id")!.Value, Is.EqualTo("SharpLens.Torch"));
            Assert.That(dependency.Attribute("version")!.Value, Is.EqualTo(_version));
        }
        Assert.That(File.ReadAllText(Path.Combine(_app, "ReadmeExample.csproj")), Does.Contain($"""<PackageReference Include="SharpLens" Version="{_version}" />"""));
    }

    [Test]
    public void ReadmeExampleRunsFromThePackageAndFreesEveryTensor()
    {
        // The app's native library is the package's, not the repository's.
        var bin = Path.GetDirectoryName(AppDll)!;
        Assert.That(Directory.GetFiles(bin, "libsharplens.so", SearchOption.AllDirectories).Select(f => Path.GetRelativePath(bin, f)),
            Is.EqualTo(new[] { "runtimes/linux-x64/native/libsharplens.so" }));
        var run = Run("dotnet", _app, [AppDll, _model]);
        Assert.That(run.Code, Is.EqualTo(0), run.Output);
        var output = run.Output;
        TestContext.Out.WriteLine(output);

        using var bridge = TransformerBridge.Load(_model);
        using var scope = Torch.NewScope();
        var tokens = bridge.ToTokens("The quick brown fox");
        var n = tokens.Size(1);
        Assert.That(n, Is.EqualTo(19), "BOS and 18 tokens: the bytes of \"The quick brown fox\", with \" b\" merged");
        Assert.That(output, Does.Contain($"logits [1, {n}, 1000], pattern [1, 4, {n}, {n}]"));
        // Printed with 4 decimals: rounding contributes at most 5e-5. Both processes run the same float32 operations in
        // the same library with the same thread count; 1e-5 more covers a different summation order (float32 epsilon
        // 6e-8 times a loss of 7 times a few dozen accumulated terms).
        const double printed = 5e-5 + 1e-5;
        var loss = bridge.Loss(tokens).ToDouble();
        Assert.That(Number(output, @"^loss ([\d.]+)$"), Is.EqualTo(loss).Within(printed));
        double ablated;
        using (bridge.Hooks(("blocks.0.attn.hook_z", (z, _) => z * 0))) ablated = bridge.Loss(tokens).ToDouble();
        Assert.That(Math.Abs(ablated - loss), Is.GreaterThan(1e-3), "the ablation changes the loss, so the check below can tell");
        Assert.That(Number(output, @"^loss with layer 0's heads ablated ([\d.]+)$"), Is.EqualTo(ablated).Within(printed));
        double norm = double.NaN;
        using (bridge.Hooks([], [("blocks.0.hook_resid_mid", (g, _) => { norm = g.Norm().ToDouble(); return null; })]))
            bridge.Loss(tokens).Backward();
        Assert.That(Regex.Matches(output, @"^blocks\.0\.hook_resid_mid grad norm ([\d.]+)$", RegexOptions.Multiline), Has.Count.EqualTo(2), "one line per backward pass");
        Assert.That(Number(output, @"^blocks\.0\.hook_resid_mid grad norm ([\d.]+)$"), Is.EqualTo(norm).Within(printed), "the first backward's gradient");
        // Adam's first step moves each parameter by lr * g / (|g| + eps), against its gradient: to first order the loss
        // falls by lr * ||g||_1, far more than the second-order term at lr 1e-3.
        Assert.That(Number(output, @"^loss after one AdamW step ([\d.]+)$"), Is.LessThan(loss - 1e-3));
        Assert.That(output, Does.Contain($"blocks.0.attn.hook_z grad tensor([1, {n}, 4, 16], float32, cpu) ["));

        var live = Regex.Match(output, @"^live tensors: (\d+) at start, (\d+) at exit; (\d+) garbage collections$", RegexOptions.Multiline);
        Assert.That(live.Success, output);
        Assert.That(live.Groups[3].Value, Is.EqualTo("0"), "no garbage collection, so no finalizer freed a tensor the example leaked");
        Assert.That(live.Groups[2].Value, Is.EqualTo(live.Groups[1].Value), "Torch.LiveTensors returns to its start value");
    }

    [Test]
    public void MissingLibtorchIsNamedWithHowToGetIt()
    {
        // As on a machine without libtorch 1.13: in a copy of the app, the packaged library's dependency on
        // libtorch_cpu.so.<version> is renamed to libtorch_cpX.so.<version>, which no machine has.
        var output = RunPatchedCopy("no-libtorch", Encoding.ASCII.GetBytes("libtorch_cpu.so"), Encoding.ASCII.GetBytes("libtorch_cpX.so"));
        Assert.That(output.Code, Is.Not.EqualTo(0));
        Assert.That(output.Output, Does.Contain("libsharplens.so needs libtorch_cpX.so"));
        Assert.That(output.Output, Does.Contain($"from libtorch {Torch.CompiledLibtorchVersion}"));
        Assert.That(output.Output, Does.Contain("apt install libtorch-dev").And.Contain("SHARPLENS_LIBTORCH"));
    }

    [Test]
    public void AnotherLibtorchVersionIsRefusedAtLoad()
    {
        // The library's compiled-against version string (the one TORCH_VERSION literal in the binary) changed from
        // 1.x to 9.x in a copy of the app: the libtorch it then loads reports a version of another release.
        var compiled = Torch.CompiledLibtorchVersion;
        var other = (compiled[0] == '9' ? "8" : "9") + compiled[1..];
        var output = RunPatchedCopy("other-version", Encoding.ASCII.GetBytes("\0" + compiled + "\0"), Encoding.ASCII.GetBytes("\0" + other + "\0"));
        Assert.That(output.Code, Is.Not.EqualTo(0));
        Assert.That(output.Output, Does.Contain($"compiled against libtorch {other}, but the libtorch loaded in this process is {Torch.LibtorchVersion}"));
        Assert.That(output.Output, Does.Contain("apt install libtorch-dev").And.Contain("SHARPLENS_LIBTORCH"));
    }

    /// <summary>Copies the built app, replaces one byte string (it must occur exactly once) in its libsharplens.so, runs it.</summary>
    private (int Code, string Output) RunPatchedCopy(string name, byte[] from, byte[] to)
    {
        Assert.That(to, Has.Length.EqualTo(from.Length), "an in-place patch keeps every offset of the ELF file");
        var bin = Path.Combine(_tmp, name);
        CopyDirectory(Path.GetDirectoryName(AppDll)!, bin);
        var library = Path.Combine(bin, "runtimes", "linux-x64", "native", "libsharplens.so");
        var bytes = File.ReadAllBytes(library);
        var at = bytes.AsSpan().IndexOf(from);
        Assert.That(at, Is.GreaterThanOrEqualTo(0), $"'{Encoding.ASCII.GetString(from)}' not in libsharplens.so");
        Assert.That(bytes.AsSpan(at + 1).IndexOf(from), Is.EqualTo(-1), $"'{Encoding.ASCII.GetString(from)}' occurs more than once in libsharplens.so");
        to.CopyTo(bytes, at);
        File.WriteAllBytes(library, bytes);
        var run = Run("dotnet", _tmp, [Path.Combine(bin, "ReadmeExample.dll"), _model]);
        TestContext.Out.WriteLine(run.Output);
        Assert.That(run.Output, Does.Not.Contain("Segmentation fault"));
        return run;
    }

    private static void CopyDirectory(string from, string to)
    {
        foreach (var dir in Directory.GetDirectories(from, "*", SearchOption.AllDirectories))
            Directory.CreateDirectory(Path.Combine(to, Path.GetRelativePath(from, dir)));
        Directory.CreateDirectory(to);
        foreach (var file in Directory.GetFiles(from, "*", SearchOption.AllDirectories))
            File.Copy(file, Path.Combine(to, Path.GetRelativePath(from, file)));
    }

    private static double Number(string output, string pattern)
    {
        var m = Regex.Match(output, pattern, RegexOptions.Multiline);
        Assert.That(m.Success, $"no line matching {pattern} in:\n{output}");
        return double.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
    }

    private static byte[] Bytes(ZipArchiveEntry entry)
    {
        using var s = entry.Open();
        using var m = new MemoryStream();
        s.CopyTo(m);
        return m.ToArray();
    }

    private static XElement Nuspec(ZipArchive package)
    {
        using var s = package.Entries.Single(e => e.FullName.EndsWith(".nuspec", StringComparison.Ordinal)).Open();
        return XElement.Load(s);
    }

    private static string? Meta(XElement nuspec, string name) =>
        nuspec.Descendants().FirstOrDefault(e => e.Name.LocalName == name && e.Parent?.Name.LocalName == "metadata")?.Value;

    /// <summary>Runs a dotnet command and fails the test with its output when it fails.</summary>
    private void Dotnet(string directory, params string[] args)
    {
        var r = Run("dotnet", directory, args);
        Assert.That(r.Code, Is.EqualTo(0), $"dotnet {string.Join(' ', args)} failed:\n{r.Output}");
    }

    /// <summary>
    /// Runs a process with an environment of its own: the private package folder, no telemetry or banners, invariant
    /// number formatting, and neither the MSBuild variables `dotnet test` sets nor SHARPLENS_NATIVE (so the app can
    /// only find the packaged library).
    /// </summary>
    private (int Code, string Output) Run(string file, string directory, IEnumerable<string> args)
    {
        var psi = new ProcessStartInfo(file) { WorkingDirectory = directory, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        foreach (var key in psi.Environment.Keys.Where(k => k.StartsWith("MSBuild", StringComparison.OrdinalIgnoreCase) || k == "SHARPLENS_NATIVE").ToList())
            psi.Environment.Remove(key);
        psi.Environment["NUGET_PACKAGES"] = Path.Combine(_tmp, "packages");
        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        psi.Environment["DOTNET_NOLOGO"] = "1";
        psi.Environment["DOTNET_SKIP_FIRST_TIME_EXPERIENCE"] = "1";
        psi.Environment["DOTNET_SYSTEM_GLOBALIZATION_INVARIANT"] = "1";
        using var p = Process.Start(psi)!;
        var output = new StringBuilder();
        p.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (output) output.AppendLine(e.Data); };
        p.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (output) output.AppendLine(e.Data); };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        if (!p.WaitForExit(TimeSpan.FromMinutes(4)))
        {
            p.Kill(entireProcessTree: true);
            Assert.Fail($"{file} {string.Join(' ', args)} did not finish in 4 minutes:\n{output}");
        }
        p.WaitForExit();
        lock (output) return (p.ExitCode, output.ToString());
    }
}
