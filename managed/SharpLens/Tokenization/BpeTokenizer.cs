using SharpLens.Tensors;
using System.Runtime.CompilerServices;
using System.Text;

namespace SharpLens.Tokenization;

/// <summary>The ids of a text and the token strings tokenizers reports for them (vocabulary spellings such as "Ġworld" or "▁Hello").</summary>
/// <param name="Ids">The token ids.</param>
/// <param name="Tokens">One string per id: the vocabulary's token, or for an added token the text it matched.</param>
public sealed record TokenizedText(int[] Ids, string[] Tokens);

/// <summary>
/// A HuggingFace <c>tokenizer.json</c> tokenizer with a BPE model, in managed code, producing the ids of
/// HuggingFace's <c>tokenizers</c> library: GPT-2 and GPT-NeoX/Pythia, Llama 2 and 3, Mistral, Qwen, Gemma and
/// others built from the same parts. Encoding: added tokens (special or not) are found in the raw text; each
/// stretch between them is normalized, split by the pre-tokenizer and merged by the BPE model; the
/// post-processor adds BOS/EOS when special tokens are asked for. Decoding runs the decoder chain.
/// Instances are immutable and thread-safe; load one with <see cref="FromDirectory"/> (tokenizer.json plus
/// tokenizer_config.json), <see cref="FromTokenizerJson"/> or <see cref="FromVocabAndMerges"/>.
/// </summary>
public sealed partial class BpeTokenizer
{
    /// <summary>Everything but the BOS/EOS/padding choice, shared by the tokenizers <see cref="WithSpecialTokens"/> derives.</summary>
    private sealed class Pipeline
    {
        public required BpeModel Model { get; init; }
        public required Normalizer? Normalizer { get; init; }
        public required PreTokenizer? PreTokenizer { get; init; }
        public required AddedTokenMatcher RawAdded { get; init; }
        public required AddedTokenMatcher NormalizedAdded { get; init; }
        public required IReadOnlyList<AddedToken> Added { get; init; }
        public required Dictionary<int, AddedToken> AddedById { get; init; }
        public required Dictionary<string, AddedToken> AddedByContent { get; init; }
        /// <summary>The string an added token decodes from (its content, normalized for normalized tokens, as tokenizers keeps it).</summary>
        public required Dictionary<int, string> AddedDecodeText { get; init; }
        public required SpecialTokenTemplate Template { get; init; }
        public required Decoder? Decoder { get; init; }
        public required bool AddPrefixSpace { get; init; }
    }

    private readonly Pipeline _p;

    private BpeTokenizer(Pipeline pipeline, string? bosToken, string? eosToken, string? padToken)
    {
        _p = pipeline;
        var size = pipeline.Model.IdToToken.Length;
        foreach (var t in pipeline.Added) size = Math.Max(size, t.Id + 1);
        VocabSize = size;

        BosToken = bosToken;
        EosToken = eosToken;
        PadToken = padToken;
        BosTokenId = ResolveSpecial(bosToken, "BOS");
        EosTokenId = ResolveSpecial(eosToken, "EOS");
        PadTokenId = ResolveSpecial(padToken, "padding");
        PrependsBos = _p.Template.PrefixIds.Length > 0;
    }

    private int? ResolveSpecial(string? token, string role)
    {
        if (token is null) return null;
        return TokenToId(token) ?? throw new ArgumentException($"the {role} token '{token}' is neither in the vocabulary nor an added token");
    }

    /// <summary>
    /// The number of ids the tokenizer can produce: one more than the largest id of the vocabulary and the
    /// added tokens. A model's embedding may be larger (Pythia pads it to a multiple of 128).
    /// </summary>
    public int VocabSize { get; }

    /// <summary>Tokens matched verbatim before BPE (special tokens and other added tokens), in the order they were defined.</summary>
    public IReadOnlyList<AddedToken> AddedTokens => _p.Added;

    /// <summary>Whether the ByteLevel pre-tokenizer puts a space before each stretch of text that does not start with one (add_prefix_space).</summary>
    public bool AddPrefixSpace => _p.AddPrefixSpace;

    /// <summary>The beginning-of-sequence token's text, or null when the tokenizer has none (Qwen).</summary>
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
    /// Whether encoding with special tokens puts tokens in front of the text, as the post-processors of Llama, Mistral and
    /// Gemma do; GPT-2's, Llama 3's ByteLevel-only and Qwen's do not. TransformerLens's <c>tokenizer_prepends_bos</c> tests
    /// <c>encode("")</c> instead, which agrees for all of these but is also true for a template that only appends EOS, where
    /// <c>prepend_bos=False</c> would then drop the text's first token; this looks at the template's prefix.
    /// </summary>
    public bool PrependsBos { get; }

    /// <summary>
    /// The same tokenizer with other BOS, EOS and padding tokens (null for none). Each must already be a
    /// vocabulary or added token; the vocabulary, merges and cache are shared, not copied. The post-processor
    /// (what <see cref="EncodeWithSpecialTokens"/> adds) is unchanged.
    /// </summary>
    public BpeTokenizer WithSpecialTokens(string? bosToken, string? eosToken, string? padToken) => new(_p, bosToken, eosToken, padToken);

    // ------------------------------------------------------------------ encoding

    /// <summary>The token ids of <paramref name="text"/> without special tokens from the post-processor (tokenizers' <c>add_special_tokens=False</c>); special tokens written in the text are still recognised.</summary>
    public int[] Encode(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var output = new List<int>(text.Length / 3 + 4);
        EncodeInto(text, output, null);
        return [.. output];
    }

    /// <summary>The token ids of <paramref name="text"/> with the post-processor's special tokens (tokenizers' <c>add_special_tokens=True</c>; BOS for Llama and Gemma, nothing for GPT-2 and Qwen).</summary>
    public int[] EncodeWithSpecialTokens(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var t = _p.Template;
        var output = new List<int>(text.Length / 3 + 4 + t.PrefixIds.Length + t.SuffixIds.Length);
        output.AddRange(t.PrefixIds);
        EncodeInto(text, output, null);
        output.AddRange(t.SuffixIds);
        return [.. output];
    }

    /// <summary>The ids of <paramref name="text"/> and their token strings, with or without the post-processor's special tokens (what <c>lens tokenize</c> writes).</summary>
    public TokenizedText Tokenize(string text, bool addSpecialTokens)
    {
        ArgumentNullException.ThrowIfNull(text);
        var ids = new List<int>();
        var tokens = new List<string>();
        var t = addSpecialTokens ? _p.Template : SpecialTokenTemplate.None;
        ids.AddRange(t.PrefixIds);
        tokens.AddRange(t.PrefixTokens);
        EncodeInto(text, ids, tokens);
        ids.AddRange(t.SuffixIds);
        tokens.AddRange(t.SuffixTokens);
        return new TokenizedText([.. ids], [.. tokens]);
    }

    /// <summary>
    /// The token ids of <paramref name="text"/> as TransformerLens's <c>to_tokens</c> makes them. With
    /// <paramref name="prependBos"/>: when the tokenizer puts BOS in front itself (<see cref="PrependsBos"/>), the
    /// text encoded with special tokens; otherwise the BOS text (or, as TransformerLens substitutes for tokenizers
    /// without one such as Qwen's, the EOS text) written before the text and that encoded with special tokens
    /// (a BOS that is a plain vocabulary token, not an added one, is put in front as an id instead).
    /// Without: the text encoded with special tokens, minus the first token when the tokenizer prepends one.
    /// For GPT-2 this is BOS + the text's tokens, or the text's tokens.
    /// </summary>
    /// <exception cref="InvalidOperationException">BOS was asked for and the tokenizer has neither a BOS nor an EOS token.</exception>
    public int[] Encode(string text, bool prependBos)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (prependBos)
        {
            if (PrependsBos) return EncodeWithSpecialTokens(text);
            var bos = BosToken ?? EosToken ?? throw new InvalidOperationException(
                "cannot prepend BOS: this tokenizer has neither a BOS nor an EOS token (set one with WithSpecialTokens)");
            if (_p.AddedByContent.ContainsKey(bos)) return EncodeWithSpecialTokens(bos + text);
            return [TokenToId(bos)!.Value, .. EncodeWithSpecialTokens(text)];
        }
        var ids = EncodeWithSpecialTokens(text);
        return PrependsBos && ids.Length > 0 ? ids[1..] : ids;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void EncodeInto(string text, List<int> ids, List<string>? tokens)
    {
        text = UnicodeText.ReplaceLoneSurrogates(text);
        var splits = ListPool<AddedSplit>.Rent();
        try
        {
            _p.RawAdded.Split(text, splits);
            foreach (var s in splits)
            {
                if (s.Token is { } token)
                {
                    ids.Add(token.Id);
                    tokens?.Add(text.Substring(s.Start, s.Length));
                }
                else EncodeStretch(text, s.Start, s.Length, ids, tokens);
            }
        }
        finally
        {
            ListPool<AddedSplit>.Return(splits);
        }
    }

    /// <summary>Text between raw added tokens: normalize, find normalized added tokens, pre-tokenize, BPE each piece.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void EncodeStretch(string text, int start, int length, List<int> ids, List<string>? tokens)
    {
        var piece = _p.Normalizer is null
            ? new Piece(text, start, length, start == 0)
            : Piece.Of(_p.Normalizer.Normalize(text.Substring(start, length)), start == 0);
        // Text the normalizer removed entirely (Strip between added tokens, a deleting Replace) gives no tokens, as in
        // tokenizers, which drops empty splits before pre-tokenizing: no prefix space or metaspace for nothing.
        if (piece.Span.Length == 0) return;
        if (_p.NormalizedAdded.IsEmpty)
        {
            PreTokenizeAndEncode(piece, ids, tokens);
            return;
        }
        var splits = ListPool<AddedSplit>.Rent();
        try
        {
            _p.NormalizedAdded.Split(piece.Span, splits);
            foreach (var s in splits)
            {
                if (s.Token is { } token)
                {
                    ids.Add(token.Id);
                    tokens?.Add(piece.Span.Slice(s.Start, s.Length).ToString());
                }
                else PreTokenizeAndEncode(piece.Slice(s.Start, s.Length), ids, tokens);
            }
        }
        finally
        {
            ListPool<AddedSplit>.Return(splits);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void PreTokenizeAndEncode(in Piece piece, List<int> ids, List<string>? tokens)
    {
        if (_p.PreTokenizer is null)
        {
            EncodeWord(piece.Span, ids, tokens);
            return;
        }
        var pieces = ListPool<Piece>.Rent();
        try
        {
            _p.PreTokenizer.Split(piece, pieces);
            foreach (var p in pieces) EncodeWord(p.Span, ids, tokens);
        }
        finally
        {
            ListPool<Piece>.Return(pieces);
        }
    }

    private void EncodeWord(ReadOnlySpan<char> word, List<int> ids, List<string>? tokens)
    {
        var before = ids.Count;
        _p.Model.Encode(word, ids);
        if (tokens is null) return;
        for (var i = before; i < ids.Count; i++) tokens.Add(_p.Model.IdToToken[ids[i]]!);
    }

    /// <summary>
    /// <paramref name="text"/> as an int64 tensor [1, n], encoded as <see cref="Encode(string, bool)"/> does
    /// (TransformerLens's <c>to_tokens</c>).
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
    /// The text of a sequence of ids, as tokenizers' <c>decode</c>: each id's token string (an added token's
    /// text, or the vocabulary's spelling) goes through the decoder chain (GPT-2's byte alphabet back to UTF-8,
    /// "▁" to space, &lt;0xXX&gt; byte tokens, ...). Ids the tokenizer does not know are skipped, as tokenizers
    /// does (a model's padded embedding can produce them).
    /// </summary>
    public string Decode(IEnumerable<int> ids) => Decode(ids, skipSpecialTokens: false);

    /// <summary>As <see cref="Decode(IEnumerable{int})"/>, leaving out special tokens when <paramref name="skipSpecialTokens"/> is set.</summary>
    public string Decode(IEnumerable<int> ids, bool skipSpecialTokens)
    {
        ArgumentNullException.ThrowIfNull(ids);
        var tokens = new List<string>();
        foreach (var id in ids)
        {
            if (_p.AddedById.TryGetValue(id, out var added))
            {
                if (!(skipSpecialTokens && added.Special)) tokens.Add(_p.AddedDecodeText[id]);
            }
            else if (id >= 0 && id < _p.Model.IdToToken.Length && _p.Model.IdToToken[id] is { } token) tokens.Add(token);
        }
        return _p.Decoder is null ? string.Join(' ', tokens) : string.Concat(_p.Decoder.DecodeChain(tokens));
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
    /// The token string of an id as the vocabulary spells it ("Ġworld", "▁Hello"), or an added token's text.
    /// Use <see cref="ToStrTokens(IEnumerable{int})"/> for readable text.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">No token has this id.</exception>
    public string IdToToken(int id)
    {
        if (_p.AddedDecodeText.TryGetValue(id, out var added)) return added;
        if (id >= 0 && id < _p.Model.IdToToken.Length && _p.Model.IdToToken[id] is { } token) return token;
        throw new ArgumentOutOfRangeException(nameof(id), id, $"no token has id {id} (vocabulary size {VocabSize})");
    }

    /// <summary>The id of a token given as an added token's text or as spelled in the vocabulary ("Ġworld"), or null.</summary>
    public int? TokenToId(string token)
    {
        ArgumentNullException.ThrowIfNull(token);
        if (_p.AddedByContent.TryGetValue(token, out var added)) return added.Id;
        return _p.Model.Vocab.TryGetValue(token, out var id) ? id : null;
    }
}
