namespace SharpLens.Tensors;

/// <summary>Element types; the values are libtorch's c10::ScalarType codes, as in TorchSharp.</summary>
public enum ScalarType
{
    /// <summary>uint8</summary>
    Byte = 0,
    /// <summary>int8</summary>
    Int8 = 1,
    /// <summary>int16</summary>
    Int16 = 2,
    /// <summary>int32</summary>
    Int32 = 3,
    /// <summary>int64</summary>
    Int64 = 4,
    /// <summary>IEEE half precision</summary>
    Float16 = 5,
    /// <summary>float32</summary>
    Float32 = 6,
    /// <summary>float64</summary>
    Float64 = 7,
    /// <summary>bool, one byte per element</summary>
    Bool = 11,
    /// <summary>bfloat16 (8-bit exponent, 7-bit mantissa)</summary>
    BFloat16 = 15,
}

/// <summary>Facts about <see cref="ScalarType"/> values.</summary>
public static class ScalarTypeInfo
{
    /// <summary>Bytes per element.</summary>
    public static int ElementSize(this ScalarType type) => type switch
    {
        ScalarType.Byte or ScalarType.Int8 or ScalarType.Bool => 1,
        ScalarType.Int16 or ScalarType.Float16 or ScalarType.BFloat16 => 2,
        ScalarType.Int32 or ScalarType.Float32 => 4,
        ScalarType.Int64 or ScalarType.Float64 => 8,
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, "unsupported scalar type"),
    };

    /// <summary>True for float16, bfloat16, float32 and float64.</summary>
    public static bool IsFloatingPoint(this ScalarType type) =>
        type is ScalarType.Float16 or ScalarType.BFloat16 or ScalarType.Float32 or ScalarType.Float64;

    /// <summary>The <see cref="ScalarType"/> whose storage matches a .NET element type.</summary>
    public static ScalarType Of<T>() where T : unmanaged
    {
        if (typeof(T) == typeof(float)) return ScalarType.Float32;
        if (typeof(T) == typeof(double)) return ScalarType.Float64;
        if (typeof(T) == typeof(long)) return ScalarType.Int64;
        if (typeof(T) == typeof(int)) return ScalarType.Int32;
        if (typeof(T) == typeof(short)) return ScalarType.Int16;
        if (typeof(T) == typeof(sbyte)) return ScalarType.Int8;
        if (typeof(T) == typeof(byte)) return ScalarType.Byte;
        if (typeof(T) == typeof(bool)) return ScalarType.Bool;
        if (typeof(T) == typeof(Half)) return ScalarType.Float16;
        if (typeof(T) == typeof(BFloat16)) return ScalarType.BFloat16;
        throw new NotSupportedException($"{typeof(T).Name} has no tensor dtype; use float, double, long, int, short, sbyte, byte, bool, Half or BFloat16");
    }

    /// <summary>The lower-case PyTorch name (float32, int64, ...).</summary>
    public static string ToTorchName(this ScalarType type) => type switch
    {
        ScalarType.Byte => "uint8",
        ScalarType.Int8 => "int8",
        ScalarType.Int16 => "int16",
        ScalarType.Int32 => "int32",
        ScalarType.Int64 => "int64",
        ScalarType.Float16 => "float16",
        ScalarType.Float32 => "float32",
        ScalarType.Float64 => "float64",
        ScalarType.Bool => "bool",
        ScalarType.BFloat16 => "bfloat16",
        _ => type.ToString(),
    };
}
