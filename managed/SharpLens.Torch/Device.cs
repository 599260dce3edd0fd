namespace SharpLens.Tensors;

/// <summary>Where a tensor lives.</summary>
public enum DeviceType
{
    /// <summary>Host memory.</summary>
    CPU = 0,
    /// <summary>An NVIDIA GPU.</summary>
    CUDA = 1,
    /// <summary>libtorch's meta device: shapes and dtypes without data. Every op checks device placement as on a GPU, so a
    /// forward and backward on meta catch a tensor left on the CPU on any machine.</summary>
    Meta = 2,
}

/// <summary>A device: a type and, for CUDA, an index.</summary>
public readonly record struct Device(DeviceType Type, int Index = -1)
{
    /// <summary>The host.</summary>
    public static readonly Device CPU = new(DeviceType.CPU);

    /// <summary>The meta device (shapes without data).</summary>
    public static readonly Device Meta = new(DeviceType.Meta);

    /// <summary>The first (or the given) CUDA device.</summary>
    public static Device CUDA(int index = 0) => new(DeviceType.CUDA, index);

    /// <summary>Parses "cpu", "cuda" or "cuda:N".</summary>
    public static Device Parse(string text)
    {
        var s = text.Trim().ToLowerInvariant();
        if (s == "cpu") return CPU;
        if (s == "meta") return Meta;
        if (s == "cuda") return CUDA();
        if (s.StartsWith("cuda:") && int.TryParse(s.AsSpan(5), out var i) && i >= 0) return CUDA(i);
        throw new FormatException($"'{text}' is not a device; use cpu, cuda, cuda:N or meta");
    }

    /// <inheritdoc/>
    public override string ToString() => Type switch
    {
        DeviceType.CPU => "cpu",
        DeviceType.Meta => "meta",
        _ => Index < 0 ? "cuda" : $"cuda:{Index}",
    };
}
