using SharpLens.Tensors.Native;

namespace SharpLens.Tensors;

/// <summary>A seeded CPU random number generator, for reproducible <see cref="Torch.Randn(long[], Generator?, ScalarType, Device?)"/>.</summary>
public sealed class Generator : IDisposable
{
    private nint _handle;

    static Generator() => NativeLibraryLoader.EnsureInitialized();

    /// <summary>A generator seeded with <paramref name="seed"/>: same seed, same numbers.</summary>
    public Generator(ulong seed)
    {
        NativeStatus.Check(NativeMethods.sl_generator_new(seed, out _handle));
        Seed = seed;
    }

    /// <summary>The seed it was created with.</summary>
    public ulong Seed { get; }

    internal nint Handle => _handle != 0 ? _handle : throw new ObjectDisposedException(nameof(Generator));

    /// <inheritdoc/>
    public void Dispose()
    {
        var h = Interlocked.Exchange(ref _handle, 0);
        if (h != 0) NativeMethods.sl_generator_free(h);
        GC.SuppressFinalize(this);
    }

    /// <summary>Safety net: frees the native generator.</summary>
    ~Generator()
    {
        var h = Interlocked.Exchange(ref _handle, 0);
        if (h != 0) NativeMethods.sl_generator_free(h);
    }
}
