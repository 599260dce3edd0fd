using System.Runtime.CompilerServices;
using SharpLens.Tensors.Native;

namespace SharpLens.Tensors.Tests;

/// <summary>
/// The libtorch version checks of the native loader: what the library says it was compiled against and what the
/// loaded libtorch reports, and the messages for a missing libtorch or another release. The failures themselves,
/// end to end in an app built from the NuGet package, are in SharpLens.Tests' PackageTests.
/// </summary>
public class LibtorchVersionTests
{
    /// <summary>build/native/libtorch-version.txt: CMake's own reading of torch/version.h, the headers the library was compiled with.</summary>
    private static string CMakeRecordedVersion([CallerFilePath] string source = "")
    {
        foreach (var start in new[] { TestContext.CurrentContext.TestDirectory, Path.GetDirectoryName(source) })
            for (var dir = string.IsNullOrEmpty(start) ? null : new DirectoryInfo(start); dir is not null; dir = dir.Parent)
                if (File.Exists(Path.Combine(dir.FullName, "Engine.sln")))
                {
                    var file = Path.Combine(dir.FullName, "build", "native", "libtorch-version.txt");
                    Assert.That(File.Exists(file), $"{file} is written by CMake (./build.sh)");
                    return File.ReadAllText(file).Trim();
                }
        Assert.Fail("no Engine.sln above the tests");
        return null!;
    }

    [Test]
    public void CompiledAndLoadedVersionsAgreeWithTheBuild()
    {
        var compiled = Torch.CompiledLibtorchVersion;
        TestContext.Out.WriteLine($"compiled against libtorch {compiled}, loaded {Torch.LibtorchVersion}");
        Assert.That(compiled, Does.Match(@"^\d+\.\d+\.\d+"));
        Assert.That(compiled, Is.EqualTo(CMakeRecordedVersion()), "the C macro and CMake's reading of the same header");
        Assert.That(NativeLibraryLoader.RecordedLibtorchVersion, Is.EqualTo(compiled), "the version the assembly recorded for load failures");
        // This build runs on the libtorch it was built against, so the loaded one reports the same release.
        Assert.That(Torch.LibtorchVersion, Is.EqualTo(compiled));
    }

    [TestCase("1.13.0", "1.13.0")]
    [TestCase("1.13.0", "1.13.1")]
    [TestCase("2.1.0", "2.1.2+cpu")]
    [TestCase("1.13.0", "")]
    public void SameMinorReleaseOrUnknownIsAccepted(string compiled, string loaded) =>
        Assert.That(NativeLibraryLoader.LibtorchVersionProblem(compiled, loaded), Is.Null);

    [TestCase("1.13.0", "2.1.0")]
    [TestCase("1.13.0", "1.12.1")]
    [TestCase("2.1.0+cpu", "2.2.0+cu121")]
    public void AnotherReleaseIsRefusedNamingBothAndTheFix(string compiled, string loaded)
    {
        var problem = NativeLibraryLoader.LibtorchVersionProblem(compiled, loaded);
        Assert.That(problem, Does.Contain($"compiled against libtorch {compiled}").And.Contain($"loaded in this process is {loaded}"));
        Assert.That(problem, Does.Contain("apt install libtorch-dev").And.Contain("SHARPLENS_LIBTORCH"));
    }

    [Test]
    public void LoaderMessagesAreExplained()
    {
        // dlerror texts as glibc writes them (the first as .NET wraps it).
        var missing = NativeLibraryLoader.DiagnoseLoadFailure(
            "Unable to load shared library '/app/runtimes/linux-x64/native/libsharplens.so' or one of its dependencies. ...: \n" +
            "libc10.so.1.13: cannot open shared object file: No such file or directory", "1.13.0");
        Assert.That(missing, Does.StartWith("libsharplens.so needs libc10.so.1.13 from libtorch 1.13.0, and it was not found"));
        Assert.That(missing, Does.Contain("apt install libtorch-dev").And.Contain("SHARPLENS_LIBTORCH"));

        var symbol = NativeLibraryLoader.DiagnoseLoadFailure(
            "/app/libsharplens.so: undefined symbol: _ZN2at4_ops3add4callERKNS_6TensorES4_RKN3c106ScalarE", "1.13.0");
        Assert.That(symbol, Does.Contain("compiled against libtorch 1.13.0").And.Contain("_ZN2at4_ops3add4call").And.Contain("another version"));

        Assert.That(NativeLibraryLoader.DiagnoseLoadFailure("/app/libsharplens.so: wrong ELF class: ELFCLASS32", "1.13.0"), Is.Null,
            "not a libtorch problem: the generic message stays");
        Assert.That(NativeLibraryLoader.DiagnoseLoadFailure("libtorch_cpu.so: cannot open shared object file: No such file or directory", null),
            Does.StartWith("libsharplens.so needs libtorch_cpu.so from libtorch, and"));
    }
}
