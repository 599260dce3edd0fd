using System.Reflection;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text.RegularExpressions;

namespace SharpLens.Tensors.Native;

/// <summary>
/// Finds libsharplens for every [LibraryImport] of this assembly: <c>SHARPLENS_NATIVE</c> (a file or a
/// folder), next to the assembly, or <c>runtimes/linux-x64/native/</c> (where the NuGet package puts it).
/// Before that, loads libtorch from <c>SHARPLENS_LIBTORCH</c> when it is set, so that libsharplens's
/// dependencies resolve to that installation. Fails with the list of places searched, and when libtorch is
/// missing or another version, with which one it needs and how to get it. Checks the ABI version and the
/// libtorch version and initialises threads and callbacks once.
/// </summary>
internal static unsafe partial class NativeLibraryLoader
{
    internal const int ExpectedAbiVersion = 3;
    private const string FileName = "libsharplens.so";

    /// <summary>
    /// The libtorch version the native library was compiled against, as the build recorded it in this assembly
    /// (build/native/libtorch-version.txt); null when the assembly was built without the native library. Lets a
    /// load failure name the version before the native library can be asked.
    /// </summary>
    internal static string? RecordedLibtorchVersion =>
        typeof(NativeLibraryLoader).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>()
            .FirstOrDefault(a => a.Key == "SharpLens.LibtorchVersion")?.Value;

    [ModuleInitializer]
    internal static void Register()
    {
        NativeLibrary.SetDllImportResolver(typeof(NativeLibraryLoader).Assembly, Resolve);
    }

    private static nint Resolve(string libraryName, Assembly assembly, DllImportSearchPath? searchPath)
    {
        if (libraryName != NativeMethods.Library) return 0;
        DefaultToShortOpenMpSpinning();
        PreloadLibtorch();
        var failures = new List<string>();
        string? diagnosis = null;
        foreach (var path in Candidates())
        {
            if (!File.Exists(path)) { failures.Add($"{path} (not found)"); continue; }
            try
            {
                return NativeLibrary.Load(path);
            }
            catch (Exception e) when (e is DllNotFoundException or BadImageFormatException)
            {
                failures.Add($"{path} (exists but failed to load: {e.Message})");
                diagnosis ??= DiagnoseLoadFailure(e.Message, RecordedLibtorchVersion);
            }
        }
        throw new DllNotFoundException(
            (diagnosis is null ? "" : diagnosis + "\n") +
            "SharpLens could not load its native engine libsharplens.so. Searched:\n  " +
            string.Join("\n  ", failures) +
            (diagnosis is null ? "\nRun ./build.sh to build it, or set SHARPLENS_NATIVE to the file or its folder." : ""));
    }

    [LibraryImport("libc", EntryPoint = "setenv", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int SetEnv(string name, string value, int overwrite);

    /// <summary>
    /// How long idle OpenMP threads (libtorch's and OpenBLAS's, one libgomp pool) spin before they sleep. libgomp's default
    /// spins long; on a shared machine the spinning fights every other process for the cores. Measured on this project's
    /// 2-core machine, GPT-2-small shape at [1, 128], forward only (median of 7, three interleaved rounds), with two busy
    /// processes beside it / idle: libgomp's default (GOMP_SPINCOUNT=300000) 2.46–3.33 s / 0.29–0.30 s, GOMP_SPINCOUNT=20000
    /// 1.19–1.57 s / 0.29–0.32 s, OMP_WAIT_POLICY=PASSIVE 1.38–1.66 s / 0.30–0.31 s (one thread: 0.80–0.94 s / 0.51–0.60 s).
    /// A short spin keeps the idle speed and halves the time under load, so that is the default. (Passes too small to
    /// split run on one thread anyway: <c>HookedModel</c>.)
    /// libgomp reads these once, when it is loaded with libtorch, so they are set here, in the native environment (.NET's
    /// Environment.SetEnvironmentVariable does not reach native code), before libsharplens loads; a value the user set wins.
    /// </summary>
    private static void DefaultToShortOpenMpSpinning()
    {
        try
        {
            if (Environment.GetEnvironmentVariable("OMP_WAIT_POLICY") is null)
                _ = SetEnv("GOMP_SPINCOUNT", "20000", overwrite: 0);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            // Not a glibc system: libgomp's default stays.
        }
    }

    /// <summary>
    /// With <c>SHARPLENS_LIBTORCH</c> set, loads its lib/libc10.so, lib/libtorch_cpu.so and lib/libtorch.so first:
    /// the dynamic linker then resolves libsharplens's dependencies of the same names to these instead of searching.
    /// </summary>
    private static void PreloadLibtorch()
    {
        var root = Environment.GetEnvironmentVariable("SHARPLENS_LIBTORCH");
        if (string.IsNullOrEmpty(root)) return;
        var lib = Path.Combine(root, "lib");
        string[] names = ["libc10.so", "libtorch_cpu.so", "libtorch.so"];
        if (!names.Any(n => File.Exists(Path.Combine(lib, n))))
            throw new DllNotFoundException(
                $"SHARPLENS_LIBTORCH is '{root}', but {lib} holds none of {string.Join(", ", names)}: set it to the folder of a " +
                "libtorch installation (the one with lib/ and include/), or unset it to use the system's libtorch.");
        foreach (var name in names)
        {
            var file = Path.Combine(lib, name);
            if (!File.Exists(file)) continue;
            try
            {
                NativeLibrary.Load(file);
            }
            catch (Exception e) when (e is DllNotFoundException or BadImageFormatException)
            {
                throw new DllNotFoundException($"SHARPLENS_LIBTORCH is '{root}', but {file} failed to load: {e.Message}", e);
            }
        }
    }

    /// <summary>
    /// Explains a dynamic-linker failure to load libsharplens when libtorch is its cause: a missing libtorch
    /// library (not installed) or a missing symbol (another libtorch version than the one compiled against).
    /// Null when the failure is something else.
    /// </summary>
    /// <param name="loaderMessage">The loader's message (dlerror text).</param>
    /// <param name="compiledAgainst">The libtorch version libsharplens was compiled against, if known.</param>
    internal static string? DiagnoseLoadFailure(string loaderMessage, string? compiledAgainst)
    {
        var version = compiledAgainst is null ? "libtorch" : $"libtorch {compiledAgainst}";
        var missing = Regex.Match(loaderMessage, @"(lib(?:torch\w*|c10\w*)\.so[^\s:]*): cannot open shared object file");
        if (missing.Success)
            return $"libsharplens.so needs {missing.Groups[1].Value} from {version}, and it was not found: install it " +
                   "(Debian 12: `apt install libtorch-dev`, which brings libtorch 1.13), or set SHARPLENS_LIBTORCH to the folder " +
                   $"of a {version} installation (the one holding lib/libtorch_cpu.so).";
        var symbol = Regex.Match(loaderMessage, @"undefined symbol: (\S+)");
        if (symbol.Success && Regex.IsMatch(loaderMessage, @"libsharplens|libtorch|libc10"))
            return $"libsharplens.so was compiled against {version}, but the libtorch this process loaded lacks the symbol " +
                   $"{symbol.Groups[1].Value}: it is another version. Install {version} (Debian 12: `apt install libtorch-dev`) " +
                   "or point SHARPLENS_LIBTORCH at one, or rebuild SharpLens against the libtorch you have (SHARPLENS_LIBTORCH=... ./build.sh).";
        return null;
    }

    /// <summary>
    /// Why a libsharplens compiled against libtorch <paramref name="compiled"/> cannot run on the loaded libtorch
    /// <paramref name="loaded"/>, or null when it can. libtorch's C++ ABI is kept within a minor release
    /// (1.13.0 and 1.13.1), not across them; an unknown loaded version (an empty string) is not refused.
    /// </summary>
    internal static string? LibtorchVersionProblem(string compiled, string loaded)
    {
        if (string.IsNullOrEmpty(loaded)) return null;
        if (MajorMinor(compiled) == MajorMinor(loaded)) return null;
        var where = LoadedLibtorchPath();
        return $"libsharplens.so was compiled against libtorch {compiled}, but the libtorch loaded in this process is {loaded}" +
               (where is null ? "" : $" ({where})") + ": libtorch's C++ ABI differs between releases. Install libtorch " +
               $"{MajorMinor(compiled)} (Debian 12: `apt install libtorch-dev`) or set SHARPLENS_LIBTORCH to one, or rebuild " +
               "SharpLens against this libtorch (SHARPLENS_LIBTORCH=/path/to/libtorch ./build.sh).";
    }

    /// <summary>"1.13" of "1.13.0", "2.1" of "2.1.0+cpu": the part of a libtorch version that fixes its ABI.</summary>
    private static string MajorMinor(string version)
    {
        var parts = version.Split('+')[0].Split('.');
        return parts.Length >= 2 ? parts[0] + "." + parts[1] : version;
    }

    /// <summary>The file of the libtorch_cpu this process mapped (from /proc/self/maps), if it can tell.</summary>
    private static string? LoadedLibtorchPath()
    {
        try
        {
            return File.ReadLines("/proc/self/maps")
                .Select(line => line.IndexOf('/') is var i and >= 0 ? line[i..] : null)
                .FirstOrDefault(path => path is not null && Path.GetFileName(path).StartsWith("libtorch_cpu.so", StringComparison.Ordinal));
        }
        catch (IOException)
        {
            return null;
        }
        catch (UnauthorizedAccessException)
        {
            return null;
        }
    }

    private static IEnumerable<string> Candidates()
    {
        var env = Environment.GetEnvironmentVariable("SHARPLENS_NATIVE");
        if (!string.IsNullOrEmpty(env))
            yield return Directory.Exists(env) ? Path.Combine(env, FileName) : env;
        var here = Path.GetDirectoryName(typeof(NativeLibraryLoader).Assembly.Location);
        if (string.IsNullOrEmpty(here)) here = AppContext.BaseDirectory;
        yield return Path.Combine(here, FileName);
        yield return Path.Combine(here, "runtimes", "linux-x64", "native", FileName);
    }

    private static int _initialized;

    /// <summary>Checks the ABI and libtorch versions and initialises the engine; runs once, on first use of <see cref="Torch"/>.</summary>
    internal static void EnsureInitialized()
    {
        if (Volatile.Read(ref _initialized) == 1) return;
        lock (typeof(NativeLibraryLoader))
        {
            if (_initialized == 1) return;
            var version = NativeMethods.sl_abi_version();
            if (version != ExpectedAbiVersion)
                throw new InvalidOperationException(
                    $"libsharplens.so has ABI version {version} but this SharpLens.Torch expects {ExpectedAbiVersion}: " +
                    "rebuild the native library with ./build.sh so both come from the same source.");
            var problem = LibtorchVersionProblem(CompiledLibtorchVersion(), LoadedLibtorchVersion());
            if (problem is not null) throw new InvalidOperationException(problem);
            NativeStatus.Check(NativeMethods.sl_init(&Callbacks.Release, Torch.DefaultThreadCount()));
            Volatile.Write(ref _initialized, 1);
        }
    }

    /// <summary>TORCH_VERSION of the libtorch headers libsharplens was compiled with.</summary>
    internal static string CompiledLibtorchVersion() => Marshal.PtrToStringUTF8((nint)NativeMethods.sl_torch_version_compiled()) ?? "";

    /// <summary>The version the loaded libtorch reports about itself; "" when it does not say.</summary>
    internal static string LoadedLibtorchVersion()
    {
        NativeStatus.Check(NativeMethods.sl_torch_version_loaded(out var text));
        return Marshal.PtrToStringUTF8((nint)text) ?? "";
    }
}

/// <summary>Entry points native code calls back into.</summary>
internal static unsafe class Callbacks
{
    /// <summary>Frees a GCHandle that native code held (hook state, owner of borrowed memory).</summary>
    [UnmanagedCallersOnly]
    internal static void Release(nint userData)
    {
        try
        {
            var handle = GCHandle.FromIntPtr(userData);
            if (handle.Target is IDisposable d) d.Dispose();
            handle.Free();
        }
        catch
        {
            // Never let an exception unwind into native frames; a failed release only leaks.
        }
    }
}
