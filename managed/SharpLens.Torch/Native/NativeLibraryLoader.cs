using System.Reflection;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace SharpLens.Tensors.Native;

/// <summary>
/// Finds libsharplens for every [LibraryImport] of this assembly: <c>SHARPLENS_NATIVE</c> (a file or a
/// folder), next to the assembly, or <c>runtimes/linux-x64/native/</c>. Fails with the list of places
/// searched and how to fix it. Also checks the ABI version and initialises threads and callbacks once.
/// </summary>
internal static unsafe class NativeLibraryLoader
{
    internal const int ExpectedAbiVersion = 2;
    private const string FileName = "libsharplens.so";

    [ModuleInitializer]
    internal static void Register()
    {
        NativeLibrary.SetDllImportResolver(typeof(NativeLibraryLoader).Assembly, Resolve);
    }

    private static nint Resolve(string libraryName, Assembly assembly, DllImportSearchPath? searchPath)
    {
        if (libraryName != NativeMethods.Library) return 0;
        var candidates = Candidates().ToList();
        var failures = new List<string>();
        foreach (var path in candidates)
        {
            if (!File.Exists(path)) { failures.Add($"{path} (not found)"); continue; }
            if (NativeLibrary.TryLoad(path, out var handle)) return handle;
            failures.Add($"{path} (exists but failed to load: are libtorch's shared libraries installed?)");
        }
        throw new DllNotFoundException(
            "SharpLens could not load its native engine libsharplens.so. Searched:\n  " +
            string.Join("\n  ", failures) +
            "\nRun ./build.sh to build it, or set SHARPLENS_NATIVE to the file or its folder.");
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

    /// <summary>Checks the ABI version and initialises the engine; runs once, on first use of <see cref="Torch"/>.</summary>
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
            NativeStatus.Check(NativeMethods.sl_init(&Callbacks.Release, Torch.DefaultThreadCount()));
            Volatile.Write(ref _initialized, 1);
        }
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
