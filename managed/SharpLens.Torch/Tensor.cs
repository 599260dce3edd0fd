using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using SharpLens.Tensors.Native;

namespace SharpLens.Tensors;

/// <summary>
/// A libtorch tensor. Owns one native handle; dispose it, or create it inside a
/// <see cref="Torch.NewScope"/> scope that disposes it for you. Method names follow PyTorch/TorchSharp
/// in .NET casing (<c>Matmul</c>, <c>Backward</c>, <c>Grad</c>, ...).
/// </summary>
public sealed unsafe partial class Tensor : IDisposable
{
    private readonly TensorHandle _handle;
    private long[]? _shape;
    private ScalarType? _dtype;

    static Tensor() => NativeLibraryLoader.EnsureInitialized();

    /// <summary>Takes ownership of a native handle and registers the tensor with the current scope.</summary>
    internal Tensor(nint handle)
    {
        if (handle == 0) throw new InvalidOperationException("the native engine returned a null tensor handle");
        _handle = new TensorHandle(handle);
        DisposeScope.Current?.Attach(this);
    }

    internal DisposeScope? OwningScope { get; set; }

    /// <summary>The handle for native calls; throws if the tensor was disposed.</summary>
    internal TensorHandle Handle =>
        _handle.IsClosed
            ? throw new ObjectDisposedException(nameof(Tensor), "this tensor was disposed (directly or by its DisposeScope)")
            : _handle;

    /// <summary>Wraps a handle returned through an out-parameter after checking the call's status.</summary>
    internal static Tensor Wrap(int status, nint handle)
    {
        NativeStatus.Check(status);
        return new Tensor(handle);
    }

    /// <summary>Wraps a handle that may be null (absent gradient, unused input).</summary>
    internal static Tensor? WrapOptional(int status, nint handle)
    {
        NativeStatus.Check(status);
        return handle == 0 ? null : new Tensor(handle);
    }

    internal static TensorHandle HandleOrNull(Tensor? t) => t is null ? TensorHandle.Null : t.Handle;

    /// <summary>True once the tensor has been disposed.</summary>
    public bool IsDisposed => _handle.IsClosed;

    /// <summary>Frees the native handle now. The storage lives on while other tensors (views) use it.</summary>
    public void Dispose()
    {
        OwningScope?.Detach(this);
        _handle.Dispose();
    }

    /// <summary>Moves this tensor from its scope to the enclosing one (or to no scope), so it survives the inner scope.</summary>
    public Tensor MoveToOuterScope()
    {
        var outer = OwningScope?.Outer;
        OwningScope?.Detach(this);
        outer?.Attach(this);
        return this;
    }

    /// <summary>Removes this tensor from every scope: the caller disposes it (or the finalizer does).</summary>
    public Tensor DetachFromScope()
    {
        OwningScope?.Detach(this);
        return this;
    }

    // ------------------------------------------------------------------ queries

    /// <summary>The sizes of the dimensions.</summary>
    public long[] Shape
    {
        get
        {
            if (_shape is not null) return (long[])_shape.Clone();
            var ndim = Dim;
            var shape = new long[ndim];
            fixed (long* p = shape) NativeStatus.Check(NativeMethods.sl_tensor_shape(Handle, p));
            _shape = shape;
            return (long[])shape.Clone();
        }
    }

    /// <summary>Size of one dimension (negative counts from the end).</summary>
    public long Size(long dim)
    {
        var shape = Shape;
        var d = dim < 0 ? dim + shape.Length : dim;
        if (d < 0 || d >= shape.Length)
            throw new ArgumentOutOfRangeException(nameof(dim), dim, $"tensor of shape {FormatShape(shape)} has {shape.Length} dimensions");
        return shape[d];
    }

    /// <summary>The strides, in elements.</summary>
    public long[] Strides
    {
        get
        {
            var strides = new long[Dim];
            fixed (long* p = strides) NativeStatus.Check(NativeMethods.sl_tensor_strides(Handle, p));
            return strides;
        }
    }

    /// <summary>Number of dimensions.</summary>
    public int Dim
    {
        get
        {
            if (_shape is not null) return _shape.Length;
            NativeStatus.Check(NativeMethods.sl_tensor_ndim(Handle, out var n));
            return (int)n;
        }
    }

    /// <summary>Number of elements.</summary>
    public long NumEl
    {
        get
        {
            NativeStatus.Check(NativeMethods.sl_tensor_numel(Handle, out var n));
            return n;
        }
    }

    /// <summary>The element type.</summary>
    public ScalarType DType
    {
        get
        {
            if (_dtype is { } d) return d;
            NativeStatus.Check(NativeMethods.sl_tensor_dtype(Handle, out var code));
            _dtype = (ScalarType)code;
            return _dtype.Value;
        }
    }

    /// <summary>The device holding the data.</summary>
    public Device Device
    {
        get
        {
            NativeStatus.Check(NativeMethods.sl_tensor_device(Handle, out var type, out var index));
            return new Device((DeviceType)type, index);
        }
    }

    /// <summary>True when the elements are laid out densely in row-major order.</summary>
    public bool IsContiguous
    {
        get
        {
            NativeStatus.Check(NativeMethods.sl_tensor_is_contiguous(Handle, out var v));
            return v != 0;
        }
    }

    /// <summary>True when both tensors view the same storage.</summary>
    public bool SharesStorageWith(Tensor other)
    {
        NativeStatus.Check(NativeMethods.sl_tensor_is_same_storage(Handle, other.Handle, out var v));
        return v != 0;
    }

    /// <summary>Address of the first element (CPU tensors). Valid while this tensor (or a view of its storage) lives.</summary>
    public nint DataPointer
    {
        get
        {
            NativeStatus.Check(NativeMethods.sl_tensor_data_ptr(Handle, out var p));
            return p;
        }
    }

    // ------------------------------------------------------------------ reading values

    /// <summary>Copies the values out (moving to CPU and making contiguous as needed). <typeparamref name="T"/> must match <see cref="DType"/>.</summary>
    public T[] ToArray<T>() where T : unmanaged
    {
        RequireElementType<T>();
        var result = new T[NumEl];
        fixed (T* p = result)
            NativeStatus.Check(NativeMethods.sl_tensor_copy_to_buffer(Handle, p, (long)result.Length * sizeof(T)));
        return result;
    }

    /// <summary>
    /// The values of a contiguous CPU tensor without copying. The span aliases native memory: do not use
    /// it after this tensor is disposed.
    /// </summary>
    public ReadOnlySpan<T> AsReadOnlySpan<T>() where T : unmanaged => AsSpan<T>();

    /// <summary>
    /// Writable view of a contiguous CPU tensor's values without copying (writes bypass autograd).
    /// Do not use it after this tensor is disposed.
    /// </summary>
    public Span<T> AsSpan<T>() where T : unmanaged
    {
        RequireElementType<T>();
        if (Device.Type != DeviceType.CPU)
            throw new InvalidOperationException($"a span needs a CPU tensor; this one is on {Device}: use ToArray or To(Device.CPU)");
        if (!IsContiguous)
            throw new InvalidOperationException($"a span needs a contiguous tensor; this {FormatShape(Shape)} view has strides {FormatShape(Strides)}: call Contiguous() first");
        var n = checked((int)NumEl);
        return n == 0 ? Span<T>.Empty : new Span<T>((void*)DataPointer, n);
    }

    private void RequireElementType<T>() where T : unmanaged
    {
        var wanted = ScalarTypeInfo.Of<T>();
        if (wanted != DType)
            throw new InvalidOperationException($"tensor has dtype {DType.ToTorchName()} but {typeof(T).Name} elements were requested; convert with To({wanted})");
    }

    /// <summary>The value of a one-element tensor as a double.</summary>
    public double ToDouble()
    {
        NativeStatus.Check(NativeMethods.sl_tensor_item_double(Handle, out var v));
        return v;
    }

    /// <summary>The value of a one-element tensor as a float.</summary>
    public float ToSingle() => (float)ToDouble();

    /// <summary>The value of a one-element tensor as a long.</summary>
    public long ToInt64()
    {
        NativeStatus.Check(NativeMethods.sl_tensor_item_int64(Handle, out var v));
        return v;
    }

    /// <summary>The value of a one-element tensor as a bool (non-zero, NaN included, is true, as Python's bool()).</summary>
    public bool ToBoolean() => ToDouble() != 0;

    // ------------------------------------------------------------------ conversion

    /// <summary>This tensor on another device and/or with another dtype (a new tensor; shares data when nothing changes and copy is false).</summary>
    public Tensor To(Device device, ScalarType? dtype = null, bool copy = false)
    {
        var type = dtype ?? DType;
        return Wrap(NativeMethods.sl_tensor_to(Handle, (int)type, (int)device.Type, device.Index, copy ? 1 : 0, out var r), r);
    }

    /// <summary>This tensor converted to another dtype, on its device.</summary>
    public Tensor To(ScalarType dtype, bool copy = false) => To(Device, dtype, copy);

    /// <summary>A copy with its own storage (differentiable).</summary>
    public Tensor Clone() => Wrap(NativeMethods.sl_tensor_clone(Handle, out var r), r);

    /// <summary>Another handle to the same tensor (same storage, same autograd identity), owned separately.</summary>
    public Tensor Alias() => Wrap(NativeMethods.sl_tensor_share(Handle, out var r), r);

    // ------------------------------------------------------------------ printing

    /// <summary>Shape, dtype, device and up to six leading values, e.g. <c>tensor([2, 3], float32, cpu) [0.1, 0.2, ...]</c>.</summary>
    public override string ToString()
    {
        if (IsDisposed) return "tensor(disposed)";
        var sb = new StringBuilder();
        sb.Append("tensor(").Append(FormatShape(Shape)).Append(", ").Append(DType.ToTorchName()).Append(", ").Append(Device);
        if (RequiresGrad) sb.Append(", requires_grad");
        sb.Append(')');
        const int shown = 6;
        var n = NumEl;
        using var flat = this.Flatten();
        using var head = n <= shown ? flat.Alias() : flat.Narrow(0, 0, shown);
        using (var asDouble = head.DType == ScalarType.Bool ? head.To(ScalarType.Byte) : head.To(ScalarType.Float64))
        {
            var values = asDouble.DType == ScalarType.Byte
                ? asDouble.ToArray<byte>().Select(b => b != 0 ? "true" : "false")
                : asDouble.ToArray<double>().Select(v => v.ToString("G6", CultureInfo.InvariantCulture));
            sb.Append(" [").Append(string.Join(", ", values));
            if (n > shown) sb.Append(", ...");
            sb.Append(']');
        }
        return sb.ToString();
    }

    /// <summary>Formats a shape as <c>[2, 3]</c>, the way every SharpLens message shows shapes.</summary>
    public static string FormatShape(IEnumerable<long> shape) => "[" + string.Join(", ", shape) + "]";
}
