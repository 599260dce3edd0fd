using System.Globalization;
using SharpLens.Adapters;
using SharpLens.Tensors.IO;

namespace SharpLens.Cli;

/// <summary>Helpers shared by the sub-commands: loading the model, checking and writing the output file.</summary>
internal static class CliSupport
{
    public static readonly CultureInfo Invariant = CultureInfo.InvariantCulture;

    /// <summary>The dtype named by <c>--dtype</c>.</summary>
    public static ScalarType ParseDType(string? name) => name switch
    {
        null or "float32" => ScalarType.Float32,
        "float64" => ScalarType.Float64,
        _ => throw new CliException($"--dtype must be float32 or float64, got '{name}'"),
    };

    private static readonly AsyncLocal<string?> RequestedDeviceName = new();

    /// <summary>The <c>--device</c> of the command being run (set by <see cref="Program"/> for the run).</summary>
    internal static string? RequestedDevice
    {
        get => RequestedDeviceName.Value;
        set => RequestedDeviceName.Value = value;
    }

    /// <summary>The device <c>--device</c> names, checked: CUDA only where this build of libsharplens and libtorch has it.</summary>
    public static Device ParseDevice(string? name)
    {
        Device device;
        try
        {
            device = Device.Parse(name ?? "cpu");
        }
        catch (FormatException e)
        {
            throw new CliException($"--device: {e.Message}", e);
        }
        if (device.Type == DeviceType.Meta)
            throw new CliException("--device meta holds shapes without values, so no command could write a result; use cpu or cuda");
        if (device.Type == DeviceType.CUDA && !Torch.CudaIsAvailable)
            throw new CliException($"--device {name}: CUDA is not available here (this libsharplens and its libtorch see no CUDA device); " +
                                   "build against a CUDA libtorch (SHARPLENS_LIBTORCH, ./build.sh gpu-check) on a machine with a GPU, or use --device cpu");
        return device;
    }

    /// <summary>Loads the bridge on the <c>--device</c> of the run, turning every fault of the model directory into a <see cref="CliException"/>.</summary>
    public static TransformerBridge LoadBridge(string modelDir, BridgeOptions options)
    {
        if (options.Device is null) options = options with { Device = ParseDevice(RequestedDevice) };
        if (string.IsNullOrWhiteSpace(modelDir)) throw new CliException("MODEL_DIR is empty");
        if (File.Exists(modelDir)) throw new CliException($"model directory '{modelDir}' is a file, not a directory");
        if (!Directory.Exists(modelDir)) throw new CliException($"model directory '{modelDir}' does not exist");
        try
        {
            return TransformerBridge.Load(modelDir, options);
        }
        catch (ModelLoadException e)
        {
            throw new CliException(e.Message, e);
        }
        catch (SafeTensorsFormatException e)
        {
            throw new CliException(e.Message, e);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CliException($"cannot read model directory '{modelDir}': {e.Message}", e);
        }
    }

    /// <summary>
    /// Checks, before any work is done, that <paramref name="outPath"/> can be written: its folder exists and
    /// accepts a new file, and the path itself is not a folder. Returns the full path.
    /// </summary>
    public static string CheckOutPath(string? outPath)
    {
        if (string.IsNullOrWhiteSpace(outPath)) throw new CliException("--out is empty");
        string full;
        try
        {
            full = Path.GetFullPath(outPath);
        }
        catch (Exception e) when (e is ArgumentException or NotSupportedException or PathTooLongException)
        {
            throw new CliException($"output path '{outPath}' is not valid: {e.Message}", e);
        }
        if (Directory.Exists(full)) throw new CliException($"output path '{outPath}' is a directory; give a file name");
        var dir = Path.GetDirectoryName(full)!;
        if (!Directory.Exists(dir)) throw new CliException($"cannot write '{outPath}': directory '{dir}' does not exist");
        var probe = Path.Combine(dir, $".lens-probe-{Environment.ProcessId}-{Guid.NewGuid():N}");
        try
        {
            using (new FileStream(probe, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1, FileOptions.DeleteOnClose)) { }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CliException($"cannot write '{outPath}': directory '{dir}' is not writable ({e.Message})", e);
        }
        if (File.Exists(full) && new FileInfo(full).IsReadOnly)
            throw new CliException($"cannot write '{outPath}': the file is read-only");
        return full;
    }

    /// <summary>Writes the tensors with <see cref="SafeTensors.Save"/>, reporting a failure to write as a <see cref="CliException"/>.</summary>
    public static void Save(string path, IEnumerable<KeyValuePair<string, Tensor>> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        try
        {
            using (Torch.NoGrad()) SafeTensors.Save(path, tensors, metadata);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CliException($"cannot write '{path}': {e.Message}", e);
        }
    }

    /// <summary>Metadata recorded in every output file.</summary>
    public static Dictionary<string, string> Metadata(string command, string modelDir, ScalarType dtype) => new()
    {
        ["producer"] = "SharpLens lens",
        ["command"] = command,
        ["model_dir"] = Path.GetFullPath(modelDir),
        ["dtype"] = dtype.ToTorchName(),
    };

    public static string Format(double value) => value.ToString("0.000000", Invariant);
}
