using SharpLens.Tensors.Native;

namespace SharpLens.Tensors;

/// <summary>An error raised by libtorch or by the native engine (bad shape, dtype, index, ...).</summary>
public sealed class TorchException : Exception
{
    internal TorchException(Status status, string message) : base(message)
    {
        NativeStatus = (int)status;
    }

    /// <summary>The native status code (see sharplens.h).</summary>
    public int NativeStatus { get; }
}
