namespace SharpLens.Tokenization;

/// <summary>
/// Per-thread reusable lists for the encoding hot path, which otherwise would allocate a few lists per word.
/// Rent, use, return in the same method; nested rents get distinct lists.
/// </summary>
internal static class ListPool<T>
{
    [ThreadStatic] private static Stack<List<T>>? t_free;

    public static List<T> Rent()
    {
        var free = t_free;
        return free is { Count: > 0 } ? free.Pop() : new List<T>();
    }

    public static void Return(List<T> list)
    {
        list.Clear();
        // Huge lists (a pathological input) are dropped rather than pinned for the thread's lifetime.
        if (list.Capacity <= 1 << 16) (t_free ??= new Stack<List<T>>()).Push(list);
    }
}
