using System.Buffers;
using System.Collections.Concurrent;
using System.Text;

namespace SharpLens.Tokenization;

/// <summary>
/// The byte-level BPE model proper: vocabulary, ranked merges and the per-word merge loop with its cache.
/// Immutable apart from the cache, so one instance is shared by every <see cref="BpeTokenizer"/> derived
/// from the same files, and safe to use from several threads.
/// </summary>
internal sealed class BpeModel
{
    /// <summary>Words longer than this (in UTF-16 units) are not cached: they are rare and would pin memory.</summary>
    private const int MaxCachedWordLength = 256;

    /// <summary>The cache stops growing here, so tokenizing a huge corpus cannot exhaust memory.</summary>
    private const int MaxCacheEntries = 200_000;

    private readonly Dictionary<long, Merge> _merges;
    private readonly int[] _byteIds;
    private readonly int? _unkId;
    private readonly bool _ignoreMerges;
    private readonly ConcurrentDictionary<string, int[]> _cache = new();
    private readonly ConcurrentDictionary<string, int[]>.AlternateLookup<ReadOnlySpan<char>> _cacheLookup;
    private int _cacheCount;

    private readonly record struct Merge(int Rank, int NewId);

    /// <summary>Token string (in byte-level characters) to id.</summary>
    public IReadOnlyDictionary<string, int> Vocab { get; }

    /// <summary>Id to token string, null where no token has that id.</summary>
    public string?[] IdToToken { get; }

    /// <summary>
    /// Builds the model, checking that every merge's parts and result are in the vocabulary.
    /// <paramref name="source"/> (the file name) goes into every error message.
    /// </summary>
    public BpeModel(Dictionary<string, int> vocab, IReadOnlyList<(string Left, string Right, string Where)> merges,
        string source, string? unkToken = null, bool ignoreMerges = false)
    {
        Vocab = vocab;
        var maxId = -1;
        foreach (var (token, id) in vocab)
        {
            if (id < 0) throw new InvalidDataException($"{source}: token '{token}' has negative id {id}");
            maxId = Math.Max(maxId, id);
        }
        IdToToken = new string?[maxId + 1];
        foreach (var (token, id) in vocab)
        {
            if (IdToToken[id] is { } other)
                throw new InvalidDataException($"{source}: tokens '{other}' and '{token}' share id {id}");
            IdToToken[id] = token;
        }

        _merges = new Dictionary<long, Merge>(merges.Count);
        for (var rank = 0; rank < merges.Count; rank++)
        {
            var (left, right, where) = merges[rank];
            var merged = left + right;
            if (!vocab.TryGetValue(left, out var l)) throw MergeError(left);
            if (!vocab.TryGetValue(right, out var r)) throw MergeError(right);
            if (!vocab.TryGetValue(merged, out var m)) throw MergeError(merged);
            // A repeated pair takes its last rank, as in encoder.py's dict(zip(merges, range(...))) and HuggingFace.
            _merges[Key(l, r)] = new Merge(rank, m);

            Exception MergeError(string token) =>
                new InvalidDataException($"{source}: merge \"{left} {right}\" ({where}) needs token '{token}', which is not in the vocabulary");
        }

        _byteIds = new int[256];
        for (var b = 0; b < 256; b++)
            _byteIds[b] = vocab.TryGetValue(ByteLevelAlphabet.ByteToChar[b].ToString(), out var id) ? id : -1;

        if (unkToken is not null)
        {
            if (!vocab.TryGetValue(unkToken, out var unk))
                throw new InvalidDataException($"{source}: unk_token '{unkToken}' is not in the vocabulary");
            _unkId = unk;
        }
        _ignoreMerges = ignoreMerges;
        _cacheLookup = _cache.GetAlternateLookup<ReadOnlySpan<char>>();
    }

    private static long Key(int left, int right) => ((long)left << 32) | (uint)right;

    /// <summary>Appends the ids of one pre-tokenized piece of text.</summary>
    public void EncodeWord(ReadOnlySpan<char> word, List<int> output)
    {
        if (word.IsEmpty) return;
        if (_cacheLookup.TryGetValue(word, out var cached))
        {
            output.AddRange(cached);
            return;
        }
        var ids = Bpe(word);
        output.AddRange(ids);
        // ConcurrentDictionary.Count takes every lock, so the size is tracked separately.
        if (word.Length <= MaxCachedWordLength && Volatile.Read(ref _cacheCount) < MaxCacheEntries && _cacheLookup.TryAdd(word, ids))
            Interlocked.Increment(ref _cacheCount);
    }

    private int[] Bpe(ReadOnlySpan<char> word)
    {
        // Lone surrogates (not valid text) become EF BF BD, U+FFFD, like Python's and Rust's UTF-8 encoders.
        var byteCount = Encoding.UTF8.GetByteCount(word);
        var rented = ArrayPool<byte>.Shared.Rent(byteCount);
        try
        {
            var bytes = rented.AsSpan(0, Encoding.UTF8.GetBytes(word, rented));

            if (_ignoreMerges && Vocab.TryGetValue(ToByteLevel(bytes), out var whole)) return [whole];

            // One symbol per byte. A byte missing from the vocabulary becomes the unknown token, or is
            // dropped when there is none, as HuggingFace's BPE does; real byte-level vocabularies have all 256.
            var symbols = new int[bytes.Length];
            var n = 0;
            foreach (var b in bytes)
            {
                var id = _byteIds[b];
                if (id >= 0) symbols[n++] = id;
                else if (_unkId is { } unk) symbols[n++] = unk;
            }
            return n < 2 ? symbols[..n] : MergeAll(symbols, n);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(rented);
        }
    }

    private static string ToByteLevel(ReadOnlySpan<byte> bytes)
    {
        var chars = new char[bytes.Length];
        for (var i = 0; i < bytes.Length; i++) chars[i] = ByteLevelAlphabet.ByteToChar[bytes[i]];
        return new string(chars);
    }

    /// <summary>
    /// Applies merges lowest rank first, leftmost first among equal ranks, as HuggingFace's BPE does: a
    /// doubly linked list of symbols and a priority queue of candidate pairs make it O(n log n) in the
    /// word's length rather than encoder.py's O(n²) rescans. Stale queue entries (a side already merged
    /// into something else) are recognised because the pair now at that position has a different rank.
    /// </summary>
    private int[] MergeAll(int[] symbols, int n)
    {
        var next = new int[n];
        var prev = new int[n];
        var alive = new bool[n];
        for (var i = 0; i < n; i++)
        {
            next[i] = i + 1 < n ? i + 1 : -1;
            prev[i] = i - 1;
            alive[i] = true;
        }

        var queue = new PriorityQueue<int, long>();
        for (var i = 0; i + 1 < n; i++) TryEnqueue(i, symbols[i + 1]);

        var count = n;
        while (queue.TryDequeue(out var pos, out var priority))
        {
            if (!alive[pos]) continue;
            var right = next[pos];
            if (right < 0) continue;
            if (!_merges.TryGetValue(Key(symbols[pos], symbols[right]), out var merge) || merge.Rank != (int)(priority >> 32))
                continue;

            symbols[pos] = merge.NewId;
            alive[right] = false;
            next[pos] = next[right];
            if (next[pos] >= 0) prev[next[pos]] = pos;
            count--;

            if (prev[pos] >= 0) TryEnqueue(prev[pos], symbols[pos]);
            if (next[pos] >= 0) TryEnqueue(pos, symbols[next[pos]]);
        }

        var result = new int[count];
        var k = 0;
        for (var i = 0; i >= 0; i = next[i]) result[k++] = symbols[i];
        return result;

        void TryEnqueue(int left, int rightSymbol)
        {
            if (_merges.TryGetValue(Key(symbols[left], rightSymbol), out var m))
                queue.Enqueue(left, ((long)m.Rank << 32) | (uint)left);
        }
    }
}
