using SharpLens.Tensors.Native;

namespace SharpLens.Tensors;

/// <summary>
/// Entry point of the torch layer: tensor creation, scopes, grad mode, threads and functions over
/// several tensors. Mirrors PyTorch's <c>torch</c> namespace in .NET casing.
/// </summary>
public static unsafe class Torch
{
    static Torch() => NativeLibraryLoader.EnsureInitialized();

    // ------------------------------------------------------------------ engine

    /// <summary>Number of native tensor handles alive now. Tests compare it before and after work to prove there are no leaks.</summary>
    public static long LiveTensors => NativeMethods.sl_live_tensors();

    /// <summary>The libtorch version the native engine was compiled against (TORCH_VERSION of its headers, e.g. "1.13.0").</summary>
    public static string CompiledLibtorchVersion => NativeLibraryLoader.CompiledLibtorchVersion();

    /// <summary>
    /// The version of the libtorch loaded in this process, as it reports itself (e.g. "1.13.0"); "" when it does
    /// not. Loading refuses a libtorch whose major.minor differs from <see cref="CompiledLibtorchVersion"/>.
    /// </summary>
    public static string LibtorchVersion => NativeLibraryLoader.LoadedLibtorchVersion();

    /// <summary>Opens a scope that disposes every tensor created on this thread until it is disposed.</summary>
    public static DisposeScope NewScope() => new();

    /// <summary>Intra-op threads libtorch uses. Defaults to the machine's cores, or <c>SHARPLENS_NUM_THREADS</c>.</summary>
    public static int NumThreads
    {
        get
        {
            NativeStatus.Check(NativeMethods.sl_get_num_threads(out var n));
            return n;
        }
        set => NativeStatus.Check(NativeMethods.sl_set_num_threads(value));
    }

    /// <summary>
    /// Sets this thread's parallel width (the OpenMP team size of libtorch's and OpenBLAS's parallel regions) until the
    /// returned scope is disposed, which restores the previous width. Unlike <see cref="NumThreads"/> it does not rebuild
    /// libtorch's other thread pools, so it is cheap enough to wrap a single small pass.
    /// </summary>
    public static IDisposable ParallelWidth(int threads)
    {
        NativeStatus.Check(NativeMethods.sl_set_parallel_width(threads, out var previous));
        return new ParallelWidthScope(previous);
    }

    private sealed class ParallelWidthScope(int previous) : IDisposable
    {
        private bool _disposed;

        public void Dispose()
        {
            if (_disposed) return;
            _disposed = true;
            NativeStatus.Check(NativeMethods.sl_set_parallel_width(previous, out _));
        }
    }

    /// <summary>The thread count the engine starts with: <c>SHARPLENS_NUM_THREADS</c> if set, else the core count.</summary>
    internal static int DefaultThreadCount()
    {
        var env = Environment.GetEnvironmentVariable("SHARPLENS_NUM_THREADS");
        if (string.IsNullOrWhiteSpace(env)) return Environment.ProcessorCount;
        if (int.TryParse(env, out var n) && n > 0) return n;
        throw new InvalidOperationException($"SHARPLENS_NUM_THREADS must be a positive integer, got '{env}'");
    }

    /// <summary>Seeds the global generator.</summary>
    public static void ManualSeed(ulong seed) => NativeStatus.Check(NativeMethods.sl_manual_seed(seed));

    /// <summary>
    /// Waits until the work queued on <paramref name="t"/>'s device (its current stream) has finished, by reading one value of
    /// it back to the host; nothing to wait for on the CPU. For timing GPU work.
    /// </summary>
    public static void Synchronize(Tensor t)
    {
        if (t.Device.Type != DeviceType.CUDA || t.NumEl == 0) return;
        using var one = t.Reshape(-1).Narrow(0, 0, 1);
        using var host = one.To(Device.CPU, ScalarType.Float64);
        _ = host.ToDouble();
    }

    /// <summary>True when libtorch was built with CUDA and sees a GPU.</summary>
    public static bool CudaIsAvailable
    {
        get
        {
            NativeStatus.Check(NativeMethods.sl_cuda_is_available(out var v));
            return v != 0;
        }
    }

    /// <summary>Whether autograd records operations on this thread.</summary>
    public static bool IsGradEnabled
    {
        get
        {
            NativeStatus.Check(NativeMethods.sl_grad_mode_is_enabled(out var v));
            return v != 0;
        }
    }

    /// <summary>Disables gradient recording on this thread until disposed (<c>using (Torch.NoGrad()) { ... }</c>).</summary>
    public static GradModeScope NoGrad() => new(false);

    /// <summary>Enables gradient recording on this thread until disposed.</summary>
    public static GradModeScope EnableGrad() => new(true);

    // ------------------------------------------------------------------ creation

    private static Tensor Filled(long[] shape, double value, ScalarType dtype, Device? device, bool requiresGrad)
    {
        var d = device ?? Device.CPU;
        Tensor t;
        fixed (long* p = shape) t = Tensor.Wrap(NativeMethods.sl_tensor_full(p, shape.Length, value, (int)dtype, (int)d.Type, d.Index, out var r), r);
        if (requiresGrad) t.RequiresGrad = true;
        return t;
    }

    /// <summary>A tensor of zeros.</summary>
    public static Tensor Zeros(long[] shape, ScalarType dtype = ScalarType.Float32, Device? device = null, bool requiresGrad = false) =>
        Filled(shape, 0, dtype, device, requiresGrad);

    /// <summary>A float32 CPU tensor of zeros.</summary>
    public static Tensor Zeros(params long[] shape) => Zeros(shape, ScalarType.Float32);

    /// <summary>A tensor of ones.</summary>
    public static Tensor Ones(long[] shape, ScalarType dtype = ScalarType.Float32, Device? device = null, bool requiresGrad = false) =>
        Filled(shape, 1, dtype, device, requiresGrad);

    /// <summary>A float32 CPU tensor of ones.</summary>
    public static Tensor Ones(params long[] shape) => Ones(shape, ScalarType.Float32);

    /// <summary>A tensor filled with <paramref name="value"/>.</summary>
    public static Tensor Full(long[] shape, double value, ScalarType dtype = ScalarType.Float32, Device? device = null, bool requiresGrad = false) =>
        Filled(shape, value, dtype, device, requiresGrad);

    /// <summary>An uninitialised tensor.</summary>
    public static Tensor Empty(long[] shape, ScalarType dtype = ScalarType.Float32, Device? device = null)
    {
        var d = device ?? Device.CPU;
        fixed (long* p = shape) return Tensor.Wrap(NativeMethods.sl_tensor_empty(p, shape.Length, (int)dtype, (int)d.Type, d.Index, out var r), r);
    }

    /// <summary>A zero-dimensional tensor holding <paramref name="value"/>.</summary>
    public static Tensor Scalar(double value, ScalarType dtype = ScalarType.Float32, Device? device = null, bool requiresGrad = false) =>
        Filled([], value, dtype, device, requiresGrad);

    /// <summary>0, 1, ..., end-1 as int64.</summary>
    public static Tensor Arange(long end) => Arange(0, end, 1, ScalarType.Int64);

    /// <summary>Values from start (inclusive) to end (exclusive) by step.</summary>
    public static Tensor Arange(double start, double end, double step = 1, ScalarType dtype = ScalarType.Int64, Device? device = null)
    {
        if (step == 0) throw new ArgumentOutOfRangeException(nameof(step), "step must not be zero");
        var d = device ?? Device.CPU;
        return Tensor.Wrap(NativeMethods.sl_tensor_arange(start, end, step, (int)dtype, (int)d.Type, d.Index, out var r), r);
    }

    private static Tensor Random(int kind, long[] shape, Generator? generator, ScalarType dtype, Device? device)
    {
        var d = device ?? Device.CPU;
        try
        {
            fixed (long* p = shape)
                return Tensor.Wrap(NativeMethods.sl_tensor_random(kind, p, shape.Length, (int)dtype, (int)d.Type, d.Index, generator?.Handle ?? 0, out var r), r);
        }
        finally
        {
            GC.KeepAlive(generator);
        }
    }

    /// <summary>Standard normal samples, from <paramref name="generator"/> when given (reproducible), else the global generator.</summary>
    public static Tensor Randn(long[] shape, Generator? generator = null, ScalarType dtype = ScalarType.Float32, Device? device = null) =>
        Random(0, shape, generator, dtype, device);

    /// <summary>Standard normal float32 samples from the global generator.</summary>
    public static Tensor Randn(params long[] shape) => Randn(shape, null);

    /// <summary>Uniform samples in [0, 1).</summary>
    public static Tensor Rand(long[] shape, Generator? generator = null, ScalarType dtype = ScalarType.Float32, Device? device = null) =>
        Random(1, shape, generator, dtype, device);

    /// <summary>Uniform integers in [low, high).</summary>
    public static Tensor RandInt(long low, long high, long[] shape, Generator? generator = null, ScalarType dtype = ScalarType.Int64, Device? device = null)
    {
        if (high <= low) throw new ArgumentException($"RandInt needs low < high, got [{low}, {high})");
        var d = device ?? Device.CPU;
        try
        {
            fixed (long* p = shape)
                return Tensor.Wrap(NativeMethods.sl_tensor_randint(low, high, p, shape.Length, (int)dtype, (int)d.Type, d.Index, generator?.Handle ?? 0, out var r), r);
        }
        finally
        {
            GC.KeepAlive(generator);
        }
    }

    /// <summary>A CPU tensor holding a copy of <paramref name="data"/>, of the given shape (default: one dimension).</summary>
    public static Tensor FromArray<T>(T[] data, params long[] shape) where T : unmanaged =>
        FromSpan<T>(data, shape.Length == 0 ? [data.Length] : shape);

    /// <summary>A CPU tensor holding a copy of a span's values, of the given shape.</summary>
    public static Tensor FromSpan<T>(ReadOnlySpan<T> data, ReadOnlySpan<long> shape) where T : unmanaged
    {
        var dtype = ScalarTypeInfo.Of<T>();
        long count = 1;
        foreach (var s in shape)
        {
            if (s < 0) throw new ArgumentException($"shape {Tensor.FormatShape(shape.ToArray())} has a negative size");
            count *= s;
        }
        if (count != data.Length)
            throw new ArgumentException($"shape {Tensor.FormatShape(shape.ToArray())} holds {count} elements but {data.Length} were given");
        fixed (T* d = data)
        fixed (long* p = shape)
            return Tensor.Wrap(NativeMethods.sl_tensor_from_data(d, (long)data.Length * sizeof(T), p, shape.Length, (int)dtype, out var r), r);
    }

    /// <summary>A CPU tensor from a rectangular 2-D array.</summary>
    public static Tensor FromArray<T>(T[,] data) where T : unmanaged
    {
        var flat = new T[data.Length];
        var k = 0;
        foreach (var v in data) flat[k++] = v;
        return FromArray(flat, data.GetLength(0), data.GetLength(1));
    }

    /// <summary>
    /// Wraps native memory without copying. <paramref name="owner"/> is kept alive until libtorch frees the
    /// storage, then disposed if it is <see cref="IDisposable"/>. The memory must be aligned to the element size.
    /// </summary>
    public static Tensor FromBlob(nint data, long[] shape, ScalarType dtype, object owner)
    {
        ArgumentNullException.ThrowIfNull(owner);
        var gc = System.Runtime.InteropServices.GCHandle.Alloc(owner);
        int status;
        nint r;
        fixed (long* p = shape) status = NativeMethods.sl_tensor_from_blob(data, p, shape.Length, (int)dtype, System.Runtime.InteropServices.GCHandle.ToIntPtr(gc), out r);
        if (status != 0) gc.Free();  // native code never took the owner
        return Tensor.Wrap(status, r);
    }

    // ------------------------------------------------------------------ functions over several tensors

    private static T WithHandles<T>(IReadOnlyList<Tensor> tensors, Func<nint[], T> call)
    {
        var handles = new nint[tensors.Count];
        var refs = new bool[tensors.Count];
        try
        {
            for (var i = 0; i < tensors.Count; i++)
            {
                var h = tensors[i].Handle;
                h.DangerousAddRef(ref refs[i]);
                handles[i] = h.DangerousGetHandle();
            }
            return call(handles);
        }
        finally
        {
            for (var i = 0; i < tensors.Count; i++)
                if (refs[i]) tensors[i].Handle.DangerousRelease();
        }
    }

    /// <summary>Concatenates along an existing dimension.</summary>
    public static Tensor Cat(IReadOnlyList<Tensor> tensors, long dim = 0) => WithHandles(tensors, h =>
    {
        fixed (nint* p = h) return Tensor.Wrap(NativeMethods.sl_tensor_cat(p, h.Length, dim, out var r), r);
    });

    /// <summary>Stacks along a new dimension.</summary>
    public static Tensor Stack(IReadOnlyList<Tensor> tensors, long dim = 0) => WithHandles(tensors, h =>
    {
        fixed (nint* p = h) return Tensor.Wrap(NativeMethods.sl_tensor_stack(p, h.Length, dim, out var r), r);
    });

    /// <summary>Elements of <paramref name="a"/> where <paramref name="condition"/> holds, else of <paramref name="b"/> (broadcasting).</summary>
    public static Tensor Where(Tensor condition, Tensor a, Tensor b) =>
        Tensor.Wrap(NativeMethods.sl_tensor_where(condition.Handle, a.Handle, b.Handle, out var r), r);

    /// <summary>Einstein summation, e.g. <c>Einsum("bhqd,bhkd->bhqk", q, k)</c>.</summary>
    public static Tensor Einsum(string equation, params Tensor[] tensors) => WithHandles(tensors, h =>
    {
        fixed (nint* p = h) return Tensor.Wrap(NativeMethods.sl_tensor_einsum(equation, p, h.Length, out var r), r);
    });

    /// <summary>Helpers that pass several tensor handles to one native call.</summary>
    internal static T WithHandleArray<T>(IReadOnlyList<Tensor?> tensors, Func<nint[], T> call)
    {
        var handles = new nint[tensors.Count];
        var refs = new bool[tensors.Count];
        try
        {
            for (var i = 0; i < tensors.Count; i++)
            {
                if (tensors[i] is null) continue;
                var h = tensors[i]!.Handle;
                h.DangerousAddRef(ref refs[i]);
                handles[i] = h.DangerousGetHandle();
            }
            return call(handles);
        }
        finally
        {
            for (var i = 0; i < tensors.Count; i++)
                if (refs[i]) tensors[i]!.Handle.DangerousRelease();
        }
    }

    /// <summary>Autograd entry points beyond <see cref="Tensor.Backward"/>.</summary>
    public static class Autograd
    {
        /// <summary>
        /// Gradients of <paramref name="outputs"/> w.r.t. <paramref name="inputs"/> without touching any <c>.Grad</c>
        /// (torch.autograd.grad). An input the outputs do not depend on yields null when <paramref name="allowUnused"/> is set.
        /// </summary>
        public static Tensor?[] Grad(IReadOnlyList<Tensor> outputs, IReadOnlyList<Tensor> inputs, IReadOnlyList<Tensor?>? gradOutputs = null,
            bool retainGraph = false, bool createGraph = false, bool allowUnused = false)
        {
            if (gradOutputs is not null && gradOutputs.Count != outputs.Count)
                throw new ArgumentException($"{gradOutputs.Count} grad outputs given for {outputs.Count} outputs");
            var grads = new nint[inputs.Count];
            int status = WithHandleArray(outputs, o => WithHandleArray(inputs, i => WithHandleArray(gradOutputs ?? [], g =>
            {
                fixed (nint* po = o)
                fixed (nint* pi = i)
                fixed (nint* pg = g)
                fixed (nint* pr = grads)
                    return NativeMethods.sl_autograd_grad(po, o.Length, gradOutputs is null ? null : pg, pi, i.Length,
                        retainGraph || createGraph ? 1 : 0, createGraph ? 1 : 0, allowUnused ? 1 : 0, pr);
            })));
            NativeStatus.Check(status);
            return grads.Select(h => h == 0 ? null : new Tensor(h)).ToArray();
        }
    }
}

/// <summary>Restores the previous grad mode when disposed. See <see cref="Torch.NoGrad"/>.</summary>
public readonly struct GradModeScope : IDisposable
{
    private readonly bool _previous;

    internal GradModeScope(bool enabled)
    {
        NativeStatus.Check(NativeMethods.sl_grad_mode_set(enabled ? 1 : 0, out var previous));
        _previous = previous != 0;
    }

    /// <inheritdoc/>
    public void Dispose() => NativeStatus.Check(NativeMethods.sl_grad_mode_set(_previous ? 1 : 0, out _));
}
