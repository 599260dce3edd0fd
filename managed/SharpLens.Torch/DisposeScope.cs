namespace SharpLens.Tensors;

/// <summary>
/// Owns every tensor created on this thread while it is the innermost scope, and disposes them with
/// itself: the main memory discipline of SharpLens (finalizers are only a safety net). Results that
/// must outlive the scope are moved out with <see cref="Tensor.MoveToOuterScope"/> or
/// <see cref="Tensor.DetachFromScope"/>. Create one with <see cref="Torch.NewScope"/>.
/// </summary>
public sealed class DisposeScope : IDisposable
{
    [ThreadStatic] private static DisposeScope? _current;

    private readonly HashSet<Tensor> _tensors = new(ReferenceEqualityComparer.Instance);
    private readonly DisposeScope? _outer;
    private readonly int _threadId;
    private bool _disposed;

    internal DisposeScope()
    {
        _outer = _current;
        _threadId = Environment.CurrentManagedThreadId;
        _current = this;
    }

    /// <summary>The innermost scope of the calling thread, or null.</summary>
    public static DisposeScope? Current => _current;

    /// <summary>The scope that was current when this one was created.</summary>
    public DisposeScope? Outer => _outer;

    /// <summary>How many tensors this scope owns now.</summary>
    public int Count => _tensors.Count;

    internal void Attach(Tensor tensor)
    {
        if (_disposed) throw new ObjectDisposedException(nameof(DisposeScope), "cannot attach a tensor to a disposed scope");
        _tensors.Add(tensor);
        tensor.OwningScope = this;
    }

    internal void Detach(Tensor tensor)
    {
        if (!_disposed) _tensors.Remove(tensor);
        tensor.OwningScope = null;
    }

    /// <summary>Takes ownership of a tensor created elsewhere (e.g. moved out of another scope).</summary>
    public Tensor Include(Tensor tensor)
    {
        tensor.OwningScope?.Detach(tensor);
        Attach(tensor);
        return tensor;
    }

    /// <summary>Disposes every tensor the scope still owns and makes the outer scope current again.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        if (Environment.CurrentManagedThreadId != _threadId)
            throw new InvalidOperationException("a DisposeScope must be disposed on the thread that created it");
        if (_current != this)
            throw new InvalidOperationException("DisposeScopes must be disposed in reverse order of creation (an inner scope is still open)");
        _disposed = true;
        _current = _outer;
        foreach (var t in _tensors)
        {
            t.OwningScope = null;
            t.Dispose();
        }
        _tensors.Clear();
    }
}
