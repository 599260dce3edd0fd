using System.Text;
using SharpLens.Tensors;

namespace SharpLens.Tokenization;

/// <summary>
/// The byte-level BPE tokenizer of GPT-2 and GPT-NeoX/Pythia, in managed code, producing the same ids as
/// HuggingFace's <c>tokenizers</c>. Text is split on added tokens (such as <c>&lt;|endoftext|&gt;</c>),
/// each remaining stretch is normalized (when the tokenizer says so), pre-tokenized with GPT-2's regex,
/// turned into UTF-8 bytes spelled with GPT-2's byte alphabet, and merged by rank. Instances are
/// immutable and thread-safe; load one with <see cref="FromDirectory"/>, <see cref="FromTokenizerJson"/>
/// or <see cref="FromVocabAndMerges"/>.
/// </summary>
public sealed partial class BpeTokenizer
{
    private readonly BpeModel _model;
    private readonly AddedTokenMatcher _added;
    private readonly Dictionary<int, AddedToken> _addedById;
    private readonly NormalizationForm[] _normalizers;
    private readonly bool _useRegex;
    private readonly byte[]?[] _idBytes;

    private BpeTokenizer(BpeModel model, AddedTokenMatcher added, NormalizationForm[] normalizers, bool addPrefixSpace,
        bool useRegex, string? bosToken, string? eosToken, string? padToken, byte[]?[]? idBytes = null)
    {
        _model = model;
        _added = added;
        _addedById = [];
        foreach (var t in added.Tokens) _addedById[t.Id] = t;
        _normalizers = normalizers;
        _useRegex = useRegex;
        AddPrefixSpace = addPrefixSpace;

        var size = model.IdToToken.Length;
        foreach (var t in added.Tokens) size = Math.Max(size, t.Id + 1);
        VocabSize = size;
        _idBytes = idBytes ?? BuildIdBytes();

        BosToken = bosToken;
        EosToken = eosToken;
        PadToken = padToken;
        BosTokenId = ResolveSpecial(bosToken, "BOS");
        EosTokenId = ResolveSpecial(eosToken, "EOS");
        PadTokenId = ResolveSpecial(padToken, "padding");
    }

    private int? ResolveSpecial(string? token, string role)
    {
        if (token is null) return null;
        return TokenToId(token) ?? throw new ArgumentException($"the {role} token '{token}' is neither in the vocabulary nor an added token");
    }

    /// <summary>
    /// The bytes each id decodes to, computed once so decoding is a table lookup. Vocabulary tokens map their
    /// characters back through GPT-2's byte alphabet; a character outside the alphabet (possible only in a
    /// hand-made vocabulary) stands for its own UTF-8, as in HuggingFace's ByteLevel decoder. Added tokens
    /// decode to their text as written, so text containing them round-trips.
    /// </summary>
    private byte[]?[] BuildIdBytes()
    {
        var table = new byte[]?[VocabSize];
        var buffer = new List<byte>();
        Span<byte> utf8 = stackalloc byte[4];
        for (var id = 0; id < _model.IdToToken.Length; id++)
        {
            if (_model.IdToToken[id] is not { } token) continue;
            buffer.Clear();
            foreach (var rune in token.EnumerateRunes())
            {
                var b = rune.IsBmp ? ByteLevelAlphabet.CharToByte((char)rune.Value) : -1;
                if (b >= 0) buffer.Add((byte)b);
                else buffer.AddRange(utf8[..rune.EncodeToUtf8(utf8)]);
            }
            table[id] = [.. buffer];
        }
        foreach (var t in _added.Tokens) table[t.Id] = Encoding.UTF8.GetBytes(t.Content);
        return table;
    }

    /// <summary>
    /// The number of ids the tokenizer can produce: one more than the largest id of the vocabulary and the
    /// added tokens. A model's embedding may be larger (Pythia pads it to a multiple of 128).
    /// </summary>
    public int VocabSize { get; }

    /// <summary>Tokens matched verbatim before BPE (special tokens and other added tokens).</summary>
    public IReadOnlyList<AddedToken> AddedTokens => _added.Tokens;

    /// <summary>Whether a space is put before each stretch of text that does not start with one (ByteLevel's add_prefix_space), so a first word encodes like a later one.</summary>
    public bool AddPrefixSpace { get; }

    /// <summary>The beginning-of-sequence token's text, or null when the tokenizer has none.</summary>
    public string? BosToken { get; }

    /// <summary>The end-of-sequence token's text, or null when the tokenizer has none.</summary>
    public string? EosToken { get; }

    /// <summary>The padding token's text, or null when the tokenizer has none (GPT-2 and Pythia pad with EOS).</summary>
    public string? PadToken { get; }

    /// <summary>The id of <see cref="BosToken"/>, or null.</summary>
    public int? BosTokenId { get; }

    /// <summary>The id of <see cref="EosToken"/>, or null.</summary>
    public int? EosTokenId { get; }

    /// <summary>The id of <see cref="PadToken"/>, or null.</summary>
    public int? PadTokenId { get; }

    /// <summary>
    /// The same tokenizer with other BOS, EOS and padding tokens (null for none). Each must already be a
    /// vocabulary or added token; the vocabulary, merges and cache are shared, not copied.
    /// </summary>
    public BpeTokenizer WithSpecialTokens(string? bosToken, string? eosToken, string? padToken) =>
        new(_model, _added, _normalizers, AddPrefixSpace, _useRegex, bosToken, eosToken, padToken, _idBytes);

    // ------------------------------------------------------------------ encoding

    /// <summary>The token ids of <paramref name="text"/>, without any BOS.</summary>
    public int[] Encode(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var output = new List<int>(text.Length / 3 + 4);
        EncodeInto(text, output);
        return [.. output];
    }

    /// <summary>The token ids of <paramref name="text"/>, preceded by <see cref="BosTokenId"/> when <paramref name="prependBos"/> is set.</summary>
    /// <exception cref="InvalidOperationException">BOS was asked for and the tokenizer has none.</exception>
    public int[] Encode(string text, bool prependBos)
    {
        ArgumentNullException.ThrowIfNull(text);
        var output = new List<int>(text.Length / 3 + 5);
        if (prependBos) output.Add(RequireBos());
        EncodeInto(text, output);
        return [.. output];
    }

    private int RequireBos() => BosTokenId ??
        throw new InvalidOperationException("cannot prepend BOS: this tokenizer has no BOS token (set one with WithSpecialTokens)");

    private void EncodeInto(string text, List<int> output) =>
        _added.Split(text, (start, length) => EncodeOrdinary(text.Substring(start, length), output), t => output.Add(t.Id));

    /// <summary>Encodes text holding no added tokens: normalize, add the prefix space, pre-tokenize, BPE each piece.</summary>
    private void EncodeOrdinary(string text, List<int> output)
    {
        foreach (var form in _normalizers)
        {
            // string.Normalize rejects lone surrogates, which are not valid text; such input is left as it
            // is (its surrogates become U+FFFD bytes later) rather than failing the whole call.
            try { text = text.Normalize(form); }
            catch (ArgumentException) { break; }
        }
        if (AddPrefixSpace && !text.StartsWith(' ')) text = " " + text;
        if (!_useRegex)
        {
            _model.EncodeWord(text, output);
            return;
        }
        var pieces = new List<(int Start, int Length)>();
        Gpt2PreTokenizer.Split(text, pieces);
        foreach (var (start, length) in pieces) _model.EncodeWord(text.AsSpan(start, length), output);
    }

    /// <summary>
    /// <paramref name="text"/> as an int64 tensor [1, n], preceded by <see cref="BosTokenId"/> when
    /// <paramref name="prependBos"/> is set (TransformerLens's <c>to_tokens</c>).
    /// </summary>
    /// <exception cref="InvalidOperationException">BOS was asked for and the tokenizer has none.</exception>
    public Tensor ToTokens(string text, bool prependBos)
    {
        var ids = Encode(text, prependBos);
        var data = new long[ids.Length];
        for (var i = 0; i < ids.Length; i++) data[i] = ids[i];
        return MakeInt64(data, 1, ids.Length);
    }

    /// <summary>
    /// Encodes several texts into one padded batch. Rows shorter than the longest are filled with
    /// <paramref name="padTokenId"/> (default: <see cref="PadTokenId"/>, else <see cref="EosTokenId"/>, else 0)
    /// on the given side, and the attention mask marks the real tokens.
    /// </summary>
    /// <exception cref="InvalidOperationException">BOS was asked for and the tokenizer has none.</exception>
    public TokenBatch EncodeBatch(IReadOnlyList<string> texts, bool prependBos, PaddingSide side, int? padTokenId = null)
    {
        ArgumentNullException.ThrowIfNull(texts);
        if (texts.Count == 0) throw new ArgumentException("the batch holds no texts", nameof(texts));
        var pad = padTokenId ?? PadTokenId ?? EosTokenId ?? 0;

        var rows = new int[texts.Count][];
        var maxLen = 0;
        for (var i = 0; i < rows.Length; i++)
        {
            rows[i] = Encode(texts[i] ?? throw new ArgumentException($"text {i} of the batch is null", nameof(texts)), prependBos);
            maxLen = Math.Max(maxLen, rows[i].Length);
        }

        var tokens = new long[rows.Length * maxLen];
        var mask = new long[rows.Length * maxLen];
        var lengths = new int[rows.Length];
        for (var i = 0; i < rows.Length; i++)
        {
            var row = rows[i];
            lengths[i] = row.Length;
            var offset = i * maxLen + (side == PaddingSide.Left ? maxLen - row.Length : 0);
            tokens.AsSpan(i * maxLen, maxLen).Fill(pad);
            for (var j = 0; j < row.Length; j++)
            {
                tokens[offset + j] = row[j];
                mask[offset + j] = 1;
            }
        }

        var tokenTensor = MakeInt64(tokens, rows.Length, maxLen);
        try
        {
            return new TokenBatch(tokenTensor, MakeInt64(mask, rows.Length, maxLen), lengths);
        }
        catch
        {
            tokenTensor.Dispose();
            throw;
        }
    }

    private static Tensor MakeInt64(long[] data, params long[] shape) =>
        // An empty array has no address to copy from, so empty shapes are allocated instead.
        data.Length == 0 ? Torch.Zeros(shape, ScalarType.Int64) : Torch.FromArray(data, shape);

    // ------------------------------------------------------------------ decoding

    /// <summary>
    /// The text of a sequence of ids. Bytes are gathered across tokens before UTF-8 decoding, so a character
    /// split over several tokens comes back whole; invalid UTF-8 becomes U+FFFD, like HuggingFace's
    /// <c>errors="replace"</c>. Ids the tokenizer does not know are skipped, as HuggingFace does (a model's
    /// padded embedding can produce them).
    /// </summary>
    public string Decode(IEnumerable<int> ids) => Decode(ids, skipSpecialTokens: false);

    /// <summary>As <see cref="Decode(IEnumerable{int})"/>, leaving out special tokens when <paramref name="skipSpecialTokens"/> is set.</summary>
    public string Decode(IEnumerable<int> ids, bool skipSpecialTokens)
    {
        ArgumentNullException.ThrowIfNull(ids);
        var bytes = new List<byte>();
        foreach (var id in ids)
        {
            if (id < 0 || id >= _idBytes.Length || _idBytes[id] is not { } b) continue;
            if (skipSpecialTokens && _addedById.TryGetValue(id, out var t) && t.Special) continue;
            bytes.AddRange(b);
        }
        return Encoding.UTF8.GetString(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(bytes));
    }

    /// <summary>Decodes an int64 or int32 tensor of ids of shape [n] or [1, n].</summary>
    public string Decode(Tensor tokens)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        var shape = tokens.Shape;
        if (shape.Length > 2 || (shape.Length == 2 && shape[0] != 1))
            throw new ArgumentException($"expected token ids of shape [n] or [1, n], got {Tensor.FormatShape(shape)}", nameof(tokens));
        return tokens.DType switch
        {
            ScalarType.Int64 => Decode(tokens.ToArray<long>().Select(v => v is < int.MinValue or > int.MaxValue ? -1 : (int)v)),
            ScalarType.Int32 => Decode(tokens.ToArray<int>()),
            var other => throw new ArgumentException($"token ids must be int64 or int32, not {other}", nameof(tokens)),
        };
    }

    /// <summary>Each id decoded on its own (TransformerLens's <c>to_str_tokens</c>): " world", not "Ġworld".</summary>
    public string[] ToStrTokens(IEnumerable<int> ids)
    {
        ArgumentNullException.ThrowIfNull(ids);
        return ids.Select(id => Decode([id])).ToArray();
    }

    /// <summary>The tokens of <paramref name="text"/> as strings, each decoded on its own.</summary>
    public string[] ToStrTokens(string text, bool prependBos) => ToStrTokens(Encode(text, prependBos));

    // ------------------------------------------------------------------ vocabulary

    /// <summary>
    /// The token string of an id as the vocabulary spells it (byte alphabet: "Ġworld"), or an added token's
    /// text. Use <see cref="ToStrTokens(IEnumerable{int})"/> for readable text.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">No token has this id.</exception>
    public string IdToToken(int id)
    {
        if (_addedById.TryGetValue(id, out var added)) return added.Content;
        if (id >= 0 && id < _model.IdToToken.Length && _model.IdToToken[id] is { } token) return token;
        throw new ArgumentOutOfRangeException(nameof(id), id, $"no token has id {id} (vocabulary size {VocabSize})");
    }

    /// <summary>The id of a token given as an added token's text or as spelled in the vocabulary ("Ġworld"), or null.</summary>
    public int? TokenToId(string token)
    {
        ArgumentNullException.ThrowIfNull(token);
        if (_added.TryGet(token, out var added)) return added.Id;
        return _model.Vocab.TryGetValue(token, out var id) ? id : null;
    }
}
