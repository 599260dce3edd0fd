using System.Buffers;
using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using System.Text;

namespace SharpLens.Tokenization;

/// <summary>The settings of a tokenizer.json BPE model besides its vocabulary and merges.</summary>
/// <param name="UnkToken">The token for characters the vocabulary lacks (null: such characters are dropped).</param>
/// <param name="FuseUnk">Consecutive unknown characters become one unknown token.</param>
/// <param name="ByteFallback">A character the vocabulary lacks becomes its UTF-8 bytes as &lt;0xXX&gt; tokens (SentencePiece style).</param>
/// <param name="IgnoreMerges">A word that is itself in the vocabulary is that token, whatever the merges would make of it (Llama 3).</param>
/// <param name="ContinuingSubwordPrefix">Prefix of every symbol that does not start a word (e.g. "##").</param>
/// <param name="EndOfWordSuffix">Suffix of the symbol that ends a word (e.g. "&lt;/w&gt;").</param>
internal sealed record BpeOptions(string? UnkToken = null, bool FuseUnk = false, bool ByteFallback = false, bool IgnoreMerges = false,
    string? ContinuingSubwordPrefix = null, string? EndOfWordSuffix = null);

/// <summary>
/// The BPE model of HuggingFace's tokenizers: vocabulary, ranked merges and the per-word merge loop, with a
/// cache. A word becomes one symbol per character (looked up with the continuing-subword prefix and end-of-word
/// suffix where they apply; unknown characters become &lt;0xXX&gt; byte tokens under byte_fallback, else the
/// unknown token, fused when fuse_unk), then the adjacent pair with the lowest merge rank is merged, leftmost
/// first, until no pair has a merge. With <see cref="ByteInput"/> a word is read as UTF-8 bytes, each byte one
/// symbol spelled in GPT-2's byte alphabet (what the ByteLevel pre-tokenizer would produce), without building
/// that spelling. Immutable apart from the cache, so one instance serves many threads.
/// </summary>
internal sealed class BpeModel
{
    /// <summary>Words longer than this (in UTF-16 units) are not cached: they are rare and would pin memory.</summary>
    private const int MaxCachedWordLength = 256;

    /// <summary>The cache stops growing here, so tokenizing a huge corpus cannot exhaust memory.</summary>
    private const int MaxCacheEntries = 200_000;

    /// <summary>Up to this many symbols a word is merged by scanning an array of pair ranks; longer words use a heap.</summary>
    private const int MaxScanMergeSymbols = 48;

    private readonly PairTable _merges;
    private readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> _vocabLookup;
    private readonly int[] _bmpCharIds;
    private readonly int[] _byteSymbolIds;
    private readonly int[]? _byteFallbackIds;
    private readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>>? _wholeWordByText;
    private readonly string _source;
    private readonly ConcurrentDictionary<string, int[]> _cache = new();
    private readonly ConcurrentDictionary<string, int[]>.AlternateLookup<ReadOnlySpan<char>> _cacheLookup;
    private int _cacheCount;

    /// <summary>Token string to id.</summary>
    public IReadOnlyDictionary<string, int> Vocab { get; }

    /// <summary>Id to token string, null where no token has that id.</summary>
    public string?[] IdToToken { get; }

    public BpeOptions Options { get; }

    /// <summary>Words are read as UTF-8 bytes in GPT-2's byte alphabet (see the class summary).</summary>
    public bool ByteInput { get; }

    /// <summary>
    /// Whether <paramref name="vocab"/> can take words as bytes: every byte-alphabet character is a token and no
    /// prefix or suffix changes how a symbol is spelled. Otherwise the ByteLevel pre-tokenizer spells the words.
    /// </summary>
    public static bool CanReadBytes(IReadOnlyDictionary<string, int> vocab, BpeOptions options) =>
        string.IsNullOrEmpty(options.ContinuingSubwordPrefix) && string.IsNullOrEmpty(options.EndOfWordSuffix) &&
        ByteLevelAlphabet.ByteToChar.All(c => vocab.ContainsKey(c.ToString()));

    /// <summary>
    /// Builds the model. Each merge's parts and result must be in the vocabulary (the result of "a b" is a
    /// followed by b without the continuing-subword prefix, as in tokenizers); a repeated pair takes its last
    /// rank, as tokenizers' map does. <paramref name="describeMerge"/> names a merge (file and place) for errors.
    /// </summary>
    /// <exception cref="TokenizerFormatException">A token has a negative id, two tokens share an id, or a merge names a token the vocabulary lacks.</exception>
    public BpeModel(Dictionary<string, int> vocab, IReadOnlyList<(string Left, string Right)> merges, BpeOptions options,
        bool byteInput, string source, Func<int, string> describeMerge)
    {
        Vocab = vocab;
        Options = options;
        _source = source;
        _vocabLookup = vocab.GetAlternateLookup<ReadOnlySpan<char>>();
        var maxId = -1;
        foreach (var (token, id) in vocab)
        {
            if (id < 0) throw new TokenizerFormatException(source, $"token '{token}' has negative id {id}");
            maxId = Math.Max(maxId, id);
        }
        IdToToken = new string?[maxId + 1];
        foreach (var (token, id) in vocab)
        {
            if (IdToToken[id] is { } other)
                throw new TokenizerFormatException(source, $"tokens '{other}' and '{token}' share id {id}");
            IdToToken[id] = token;
        }

        var prefixLength = options.ContinuingSubwordPrefix?.Length ?? 0;
        _merges = new PairTable(merges.Count);
        for (var rank = 0; rank < merges.Count; rank++)
        {
            var (left, right) = merges[rank];
            if (right.Length < prefixLength)
                throw new TokenizerFormatException(source, $"merge \"{left} {right}\" ({describeMerge(rank)}): '{right}' is shorter than the continuing-subword prefix");
            var merged = left + right[prefixLength..];
            if (!vocab.TryGetValue(left, out var l)) throw MergeError(left);
            if (!vocab.TryGetValue(right, out var r)) throw MergeError(right);
            if (!vocab.TryGetValue(merged, out var m)) throw MergeError(merged);
            _merges.Set(Pair(l, r), ((long)rank << 32) | (uint)m);

            Exception MergeError(string token) => new TokenizerFormatException(source,
                $"merge \"{left} {right}\" ({describeMerge(rank)}) needs token '{token}', which is not in the vocabulary");
        }

        _bmpCharIds = new int[char.MaxValue + 1];
        Array.Fill(_bmpCharIds, -1);
        foreach (var (token, id) in vocab)
            if (token.Length == 1 && !char.IsSurrogate(token[0])) _bmpCharIds[token[0]] = id;

        _byteSymbolIds = new int[256];
        for (var b = 0; b < 256; b++) _byteSymbolIds[b] = _bmpCharIds[ByteLevelAlphabet.ByteToChar[b]];

        if (options.ByteFallback)
        {
            _byteFallbackIds = new int[256];
            for (var b = 0; b < 256; b++) _byteFallbackIds[b] = vocab.TryGetValue($"<0x{b:X2}>", out var id) ? id : -1;
        }

        if (byteInput && !CanReadBytes(vocab, options))
            throw new ArgumentException("the vocabulary cannot read words as bytes (see CanReadBytes)", nameof(byteInput));
        ByteInput = byteInput;
        if (byteInput && options.IgnoreMerges) _wholeWordByText = BuildWholeWordIndex(vocab).GetAlternateLookup<ReadOnlySpan<char>>();
        _cacheLookup = _cache.GetAlternateLookup<ReadOnlySpan<char>>();
    }

    /// <summary>For ignore_merges on byte input: the text each token spells (tokens that spell valid UTF-8) to its id.</summary>
    private static Dictionary<string, int> BuildWholeWordIndex(Dictionary<string, int> vocab)
    {
        var strict = new UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);
        var index = new Dictionary<string, int>(vocab.Count, StringComparer.Ordinal);
        var bytes = new List<byte>();
        foreach (var (token, id) in vocab)
        {
            bytes.Clear();
            var spelled = true;
            foreach (var c in token)
            {
                var b = ByteLevelAlphabet.CharToByte(c);
                if (b < 0) { spelled = false; break; }
                bytes.Add((byte)b);
            }
            if (!spelled) continue;
            try { index.TryAdd(strict.GetString(bytes.ToArray()), id); }
            catch (DecoderFallbackException) { }
        }
        return index;
    }

    private static long Pair(int left, int right) => ((long)left << 32) | (uint)right;

    /// <summary>Appends the ids of one pre-tokenized word.</summary>
    // The encoding hot path (here, the merges, the added-token scan, the pre-tokenizers) is marked
    // AggressiveOptimization: compiled optimized at first call rather than after tiering up, which made the first
    // megabytes a process encodes about 1.4x faster in perf/SharpLens.TokenizerBench, and later ones no slower.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Encode(ReadOnlySpan<char> word, List<int> output)
    {
        if (word.IsEmpty) return;
        if (_cacheLookup.TryGetValue(word, out var cached))
        {
            output.AddRange(cached);
            return;
        }
        var ids = ByteInput ? EncodeBytes(word) : EncodeChars(word);
        output.AddRange(ids);
        // ConcurrentDictionary.Count takes every lock, so the size is tracked separately.
        if (word.Length <= MaxCachedWordLength && Volatile.Read(ref _cacheCount) < MaxCacheEntries && _cacheLookup.TryAdd(word, ids))
            Interlocked.Increment(ref _cacheCount);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private int[] EncodeBytes(ReadOnlySpan<char> word)
    {
        if (_wholeWordByText is { } whole && whole.TryGetValue(word, out var wholeId)) return [wholeId];
        var byteCount = Encoding.UTF8.GetByteCount(word);
        var rented = ArrayPool<byte>.Shared.Rent(byteCount);
        try
        {
            var bytes = rented.AsSpan(0, Encoding.UTF8.GetBytes(word, rented));
            var symbols = new int[bytes.Length];
            for (var i = 0; i < bytes.Length; i++) symbols[i] = _byteSymbolIds[bytes[i]];
            return Merge(symbols, symbols.Length);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(rented);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private int[] EncodeChars(ReadOnlySpan<char> word)
    {
        if (Options.IgnoreMerges && _vocabLookup.TryGetValue(word, out var wholeId)) return [wholeId];

        var prefix = Options.ContinuingSubwordPrefix;
        var suffix = Options.EndOfWordSuffix;
        var plain = string.IsNullOrEmpty(prefix) && string.IsNullOrEmpty(suffix);
        var symbols = new List<int>(word.Length);
        var pendingUnk = -1;   // the unknown token waiting to be added, so that fuse_unk can extend it
        Span<byte> utf8 = stackalloc byte[4];

        for (var i = 0; i < word.Length;)
        {
            UnicodeText.CodePointAt(word, i, out var length);
            var isFirst = i == 0;
            var isLast = i + length == word.Length;
            int id;
            string? symbol = null;
            if (plain)
                id = length == 1 ? _bmpCharIds[word[i]] : (_vocabLookup.TryGetValue(word.Slice(i, length), out var astral) ? astral : -1);
            else
            {
                symbol = string.Concat(isFirst ? "" : prefix, word.Slice(i, length), isLast ? suffix : "");
                id = Vocab.TryGetValue(symbol, out var found) ? found : -1;
            }

            if (id >= 0)
            {
                if (pendingUnk >= 0) { symbols.Add(pendingUnk); pendingUnk = -1; }
                symbols.Add(id);
            }
            else if (_byteFallbackIds is not null && TryByteFallback(symbol ?? word.Slice(i, length).ToString(), symbols))
            {
                // As in tokenizers, byte tokens are added without first flushing a pending unknown token.
            }
            else if (Options.UnkToken is { } unk)
            {
                var unkId = Vocab.TryGetValue(unk, out var u) ? u
                    : throw new InvalidOperationException($"{_source}: the unknown token '{unk}' is not in the vocabulary, and '{word.ToString()}' needs it");
                if (pendingUnk >= 0 && !Options.FuseUnk) symbols.Add(pendingUnk);
                pendingUnk = unkId;
            }
            // else: no unknown token, so the character is dropped, as tokenizers does.
            i += length;
        }
        if (pendingUnk >= 0) symbols.Add(pendingUnk);
        var array = symbols.ToArray();
        return Merge(array, array.Length);

        bool TryByteFallback(string s, List<int> into)
        {
            var bytes = Encoding.UTF8.GetBytes(s);
            foreach (var b in bytes)
                if (_byteFallbackIds![b] < 0) return false;
            foreach (var b in bytes) into.Add(_byteFallbackIds![b]);
            return true;
        }
    }

    private int[] Merge(int[] symbols, int n)
    {
        if (n < 2) return symbols;
        return n <= MaxScanMergeSymbols ? MergeByScan(symbols, n) : MergeByHeap(symbols, n);
    }

    /// <summary>
    /// Short words: the rank of every adjacent pair in an array, the smallest (leftmost on ties) merged and its
    /// two neighbours' ranks refreshed, until none is left. Same result as the heap, fewer allocations.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private int[] MergeByScan(int[] symbols, int n)
    {
        Span<long> ranks = stackalloc long[MaxScanMergeSymbols];   // rank << 32 | new id; long.MaxValue: no merge
        for (var i = 0; i + 1 < n; i++) ranks[i] = MergeOf(symbols[i], symbols[i + 1]);
        while (n > 1)
        {
            var best = 0;
            for (var i = 1; i + 1 < n; i++)
                if (ranks[i] < ranks[best]) best = i;   // strict: the leftmost of equal ranks wins
            if (ranks[best] == long.MaxValue) break;
            symbols[best] = (int)(uint)ranks[best];
            Array.Copy(symbols, best + 2, symbols, best + 1, n - best - 2);
            // Pair j > best is now the old pair j + 1 (pairs run 0..n-2 before the merge).
            if (best + 2 < n - 1) ranks.Slice(best + 2, n - best - 3).CopyTo(ranks[(best + 1)..]);
            n--;
            if (best > 0) ranks[best - 1] = MergeOf(symbols[best - 1], symbols[best]);
            if (best + 1 < n) ranks[best] = MergeOf(symbols[best], symbols[best + 1]);
        }
        return n == symbols.Length ? symbols : symbols[..n];
    }

    private long MergeOf(int left, int right) => _merges.TryGetValue(Pair(left, right), out var m) ? m : long.MaxValue;

    /// <summary>
    /// Long words, as tokenizers' <c>Word::merge_all</c>: a doubly linked list of symbols and a priority queue of
    /// candidate pairs ordered by (rank, position), O(n log n). A queue entry is stale when the pair now at its
    /// position merges into a different token; such entries are skipped.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private int[] MergeByHeap(int[] symbols, int n)
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

        var queue = new PriorityQueue<long, long>(n);   // element: position << 32 | new id; priority: rank << 32 | position
        for (var i = 0; i + 1 < n; i++) Enqueue(i, symbols[i], symbols[i + 1]);

        var count = n;
        while (queue.TryDequeue(out var entry, out _))
        {
            var pos = (int)(entry >> 32);
            var newId = (int)(uint)entry;
            if (!alive[pos]) continue;
            var right = next[pos];
            if (right < 0) continue;
            if (!_merges.TryGetValue(Pair(symbols[pos], symbols[right]), out var m) || (int)(uint)m != newId) continue;

            symbols[pos] = newId;
            alive[right] = false;
            next[pos] = next[right];
            if (next[pos] >= 0) prev[next[pos]] = pos;
            count--;

            if (prev[pos] >= 0) Enqueue(prev[pos], symbols[prev[pos]], symbols[pos]);
            if (next[pos] >= 0) Enqueue(pos, symbols[pos], symbols[next[pos]]);
        }

        var result = new int[count];
        var k = 0;
        for (var i = 0; i >= 0; i = next[i]) result[k++] = symbols[i];
        return result;

        void Enqueue(int position, int left, int rightSymbol)
        {
            if (_merges.TryGetValue(Pair(left, rightSymbol), out var merge))
                queue.Enqueue(((long)position << 32) | (uint)merge, (merge & ~0xFFFFFFFFL) | (uint)position);
        }
    }
}

/// <summary>
/// The merge table: pair key (left id &lt;&lt; 32 | right id) to (rank &lt;&lt; 32 | merged id), open addressing with
/// linear probing in one array of interleaved keys and values, at most half full. Merging is dominated by these
/// lookups; a Dictionary with a custom comparer pays an interface call per lookup, and with the default one
/// <c>long.GetHashCode</c> (left ^ right) folds half a million of Gemma's merges onto a quarter million values.
/// </summary>
internal sealed class PairTable
{
    private const long Empty = -1;   // no pair key is negative: ids are non-negative
    private readonly long[] _slots;  // key at 2i, value at 2i + 1
    private readonly int _mask;

    public PairTable(int count)
    {
        var capacity = 16;
        while (capacity < 2 * count) capacity <<= 1;
        _mask = capacity - 1;
        _slots = new long[2 * capacity];
        for (var i = 0; i < _slots.Length; i += 2) _slots[i] = Empty;
    }

    /// <summary>Fibonacci hashing: the top bits of key × 2^64/φ spread structured keys evenly.</summary>
    private int Home(long key) => (int)((ulong)(key * -7046029254386353131L) >> 32) & _mask;

    /// <summary>Adds or replaces (a repeated merge takes its last rank, as in tokenizers).</summary>
    public void Set(long key, long value)
    {
        for (var i = Home(key); ; i = (i + 1) & _mask)
        {
            var k = _slots[2 * i];
            if (k == Empty || k == key)
            {
                _slots[2 * i] = key;
                _slots[2 * i + 1] = value;
                return;
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public bool TryGetValue(long key, out long value)
    {
        var slots = _slots;
        for (var i = Home(key); ; i = (i + 1) & _mask)
        {
            var k = slots[2 * i];
            if (k == key)
            {
                value = slots[2 * i + 1];
                return true;
            }
            if (k == Empty)
            {
                value = 0;
                return false;
            }
        }
    }
}
