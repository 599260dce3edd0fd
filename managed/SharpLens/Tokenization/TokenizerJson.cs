using System.Text.Json;
using System.Text.RegularExpressions;
using System.Text;

namespace SharpLens.Tokenization;

/// <summary>
/// Reads the parts of a HuggingFace tokenizer.json (normalizer, pre-tokenizer, post-processor, decoder, BPE
/// settings) into the pipeline's objects. Every error names the file and the JSON path of the offending value:
/// <see cref="TokenizerFormatException"/> for malformed content, <see cref="UnsupportedTokenizerException"/> for
/// well-formed content this implementation does not have.
/// </summary>
internal sealed class TokenizerJson(string path)
{
    public string Path => path;

    // ------------------------------------------------------------------ primitives

    public TokenizerFormatException Invalid(string what, Exception? inner = null) => new(path, what, inner);

    public UnsupportedTokenizerException Unsupported(string what, Exception? inner = null) => new(path, what, inner);

    public static JsonDocument Parse(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (!File.Exists(path)) throw new FileNotFoundException($"tokenizer file '{path}' does not exist", path);
        byte[] bytes;
        try
        {
            bytes = File.ReadAllBytes(path);
        }
        catch (IOException ex)
        {
            throw new TokenizerFormatException(path, $"cannot be read ({ex.Message})", ex);
        }
        try
        {
            // Tokenizer files are a few levels deep; the default depth limit (64) is plenty and bounds recursion.
            return JsonDocument.Parse(bytes);
        }
        catch (JsonException ex)
        {
            throw new TokenizerFormatException(path, $"not valid JSON ({ex.Message})", ex);
        }
    }

    public string? OptionalString(JsonElement obj, string name, string where)
    {
        if (!obj.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        return v.ValueKind == JsonValueKind.String ? ReadString(v, $"{where}.{name}") : throw Invalid($"{where}.{name} is not a string: {Short(v)}");
    }

    public string RequiredString(JsonElement obj, string name, string where) =>
        OptionalString(obj, name, where) ?? throw Invalid($"{where} has no string \"{name}\"");

    public bool OptionalBool(JsonElement obj, string name, string where, bool defaultValue = false)
    {
        if (!obj.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return defaultValue;
        return v.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw Invalid($"{where}.{name} is not true or false: {Short(v)}"),
        };
    }

    public int OptionalInt(JsonElement obj, string name, string where, int defaultValue)
    {
        if (!obj.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return defaultValue;
        return v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out var i) && i >= 0 ? i : throw Invalid($"{where}.{name} is not a non-negative integer: {Short(v)}");
    }

    public JsonElement RequiredArray(JsonElement obj, string name, string where)
    {
        if (!obj.TryGetProperty(name, out var v) || v.ValueKind != JsonValueKind.Array)
            throw Invalid($"{where} has no array \"{name}\"");
        return v;
    }

    /// <summary>A JSON string; unpaired surrogates (which JSON can escape but System.Text.Json refuses) are a format error.</summary>
    public string ReadString(JsonElement v, string where)
    {
        try
        {
            return v.GetString()!;
        }
        catch (InvalidOperationException ex)
        {
            throw Invalid($"{where} is not valid UTF-16 text ({ex.Message})", ex);
        }
    }

    private string TypeOf(JsonElement element, string where)
    {
        if (element.ValueKind != JsonValueKind.Object) throw Invalid($"{where} is not an object: {Short(element)}");
        return RequiredString(element, "type", where);
    }

    public static string Short(JsonElement v)
    {
        var raw = v.GetRawText();
        return raw.Length <= 80 ? raw : raw[..80] + "...";
    }

    // ------------------------------------------------------------------ patterns

    /// <summary>{"String": "..."} or {"Regex": "..."}.</summary>
    public TextPattern ReadPattern(JsonElement obj, string where)
    {
        if (!obj.TryGetProperty("pattern", out var p) || p.ValueKind != JsonValueKind.Object)
            throw Invalid($"{where} has no \"pattern\" object");
        if (p.TryGetProperty("String", out var s) && s.ValueKind == JsonValueKind.String)
            return TextPattern.Literal(ReadString(s, $"{where}.pattern.String"));
        if (p.TryGetProperty("Regex", out var r) && r.ValueKind == JsonValueKind.String)
            return TextPattern.FromRegex(CompileRegex(ReadString(r, $"{where}.pattern.Regex"), $"{where}.pattern.Regex"));
        throw Invalid($"{where}.pattern is neither {{\"String\": ...}} nor {{\"Regex\": ...}}: {Short(p)}");
    }

    private static readonly Dictionary<string, Regex> RegexCache = [];

    /// <summary>
    /// Compiles an Oniguruma pattern as a .NET regex. The patterns tokenizers ship (GPT-2's, Llama 3's, Qwen's,
    /// single characters) mean the same in both; syntax .NET lacks (possessive quantifiers, \p{Han}-style scripts)
    /// is reported as unsupported, naming the pattern, rather than matched differently.
    /// </summary>
    public CodePointRegex CompileRegex(string pattern, string where)
    {
        Regex regex;
        lock (RegexCache)
        {
            if (!RegexCache.TryGetValue(pattern, out regex!))
            {
                try
                {
                    // Compiled: the same few patterns run over every word of every text; compiling once pays back fast.
                    regex = new Regex(pattern, RegexOptions.CultureInvariant | RegexOptions.Compiled);
                }
                catch (ArgumentException ex)
                {
                    throw Unsupported($"{where}: the regex \"{pattern}\" is not valid .NET regex syntax ({ex.Message})", ex);
                }
                RegexCache[pattern] = regex;
            }
        }
        return new CodePointRegex(regex, pattern);
    }

    // ------------------------------------------------------------------ normalizer

    public Normalizer? ReadNormalizer(JsonElement element, string where)
    {
        if (element.ValueKind == JsonValueKind.Null) return null;
        var type = TypeOf(element, where);
        switch (type)
        {
            case "NFC": return new UnicodeNormalizer(NormalizationForm.FormC);
            case "NFD": return new UnicodeNormalizer(NormalizationForm.FormD);
            case "NFKC": return new UnicodeNormalizer(NormalizationForm.FormKC);
            case "NFKD": return new UnicodeNormalizer(NormalizationForm.FormKD);
            case "Lowercase": return new LowercaseNormalizer();
            case "StripAccents": return new StripAccentsNormalizer();
            case "Strip":
                return new StripNormalizer(OptionalBool(element, "strip_left", where, true), OptionalBool(element, "strip_right", where, true));
            case "Prepend": return new PrependNormalizer(RequiredString(element, "prepend", where));
            case "Replace": return new ReplaceNormalizer(ReadPattern(element, where), RequiredString(element, "content", where));
            case "ByteLevel": return new ByteLevelNormalizer();
            case "Precompiled":
                // An empty charsmap (some converted files) changes nothing; a real one is SentencePiece's trie.
                if (!element.TryGetProperty("precompiled_charsmap", out var map) || map.ValueKind == JsonValueKind.Null ||
                    (map.ValueKind == JsonValueKind.String && map.GetString()!.Length == 0))
                    return null;
                throw Unsupported($"{where}: normalizer type 'Precompiled' with a SentencePiece charsmap");
            case "Sequence":
            {
                var items = ReadSequence(element, "normalizers", where, ReadNormalizer);
                return items.Count == 0 ? null : items.Count == 1 ? items[0] : new SequenceNormalizer([.. items]);
            }
            default:
                throw Unsupported($"{where}: normalizer type '{type}' (implemented: NFC, NFD, NFKC, NFKD, Lowercase, Strip, StripAccents, " +
                                  "Prepend, Replace, ByteLevel, Sequence)");
        }
    }

    // ------------------------------------------------------------------ pre-tokenizer

    public PreTokenizer? ReadPreTokenizer(JsonElement element, string where)
    {
        if (element.ValueKind == JsonValueKind.Null) return null;
        var type = TypeOf(element, where);
        switch (type)
        {
            case "ByteLevel":
                // tokenizers' defaults: add_prefix_space and use_regex are both true.
                return new ByteLevelPreTokenizer(OptionalBool(element, "add_prefix_space", where, true), OptionalBool(element, "use_regex", where, true));
            case "Split":
                return new SplitPreTokenizer(ReadPattern(element, where), ReadBehavior(element, where, null), OptionalBool(element, "invert", where));
            case "Metaspace":
                return new MetaspacePreTokenizer(ReadReplacement(element, where), ReadPrependScheme(element, where), OptionalBool(element, "split", where, true));
            case "Digits":
                return new CharClassPreTokenizer(UnicodeText.IsNumeric,
                    OptionalBool(element, "individual_digits", where) ? SplitBehavior.Isolated : SplitBehavior.Contiguous);
            case "Whitespace": return new WhitespacePreTokenizer();
            case "WhitespaceSplit": return new CharClassPreTokenizer(UnicodeText.IsWhiteSpace, SplitBehavior.Removed);
            case "Punctuation": return new CharClassPreTokenizer(UnicodeText.IsPunctuation, ReadBehavior(element, where, SplitBehavior.Isolated));
            case "CharDelimiterSplit":
            {
                var d = char.ConvertToUtf32(OneCharacter(element, "delimiter", where, null), 0);
                return new CharClassPreTokenizer(c => c == d, SplitBehavior.Removed);
            }
            case "BertPreTokenizer":
                return new SequencePreTokenizer([
                    new CharClassPreTokenizer(UnicodeText.IsWhiteSpace, SplitBehavior.Removed),
                    new CharClassPreTokenizer(UnicodeText.IsPunctuation, SplitBehavior.Isolated)]);
            case "Sequence":
            {
                var items = ReadSequence(element, "pretokenizers", where, ReadPreTokenizer);
                return items.Count == 0 ? null : items.Count == 1 ? items[0] : new SequencePreTokenizer([.. items]);
            }
            default:
                throw Unsupported($"{where}: pre-tokenizer type '{type}' (implemented: ByteLevel, Split, Metaspace, Digits, Whitespace, " +
                                  "WhitespaceSplit, Punctuation, CharDelimiterSplit, BertPreTokenizer, Sequence)");
        }
    }

    private SplitBehavior ReadBehavior(JsonElement element, string where, SplitBehavior? defaultValue)
    {
        var behavior = OptionalString(element, "behavior", where);
        if (behavior is null)
            return defaultValue ?? throw Invalid($"{where} has no \"behavior\"");
        return behavior switch
        {
            "Removed" => SplitBehavior.Removed,
            "Isolated" => SplitBehavior.Isolated,
            "MergedWithPrevious" => SplitBehavior.MergedWithPrevious,
            "MergedWithNext" => SplitBehavior.MergedWithNext,
            "Contiguous" => SplitBehavior.Contiguous,
            _ => throw Invalid($"{where}.behavior '{behavior}' is not one of Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous"),
        };
    }

    private string ReadReplacement(JsonElement element, string where) => OneCharacter(element, "replacement", where, "\u2581");

    /// <summary>A string field that must hold exactly one character (one code point), or <paramref name="defaultValue"/> when absent.</summary>
    private string OneCharacter(JsonElement element, string name, string where, string? defaultValue)
    {
        var value = (defaultValue is null ? RequiredString(element, name, where) : OptionalString(element, name, where)) ?? defaultValue!;
        if (value.EnumerateRunes().Count() != 1) throw Invalid($"{where}.{name} is not one character: \"{value}\"");
        return value;
    }

    /// <summary>The items of a Sequence's list (normalizers, pretokenizers, decoders), dropping those that do nothing.</summary>
    private List<T> ReadSequence<T>(JsonElement element, string name, string where, Func<JsonElement, string, T?> read) where T : class
    {
        var items = new List<T>();
        var i = 0;
        foreach (var e in RequiredArray(element, name, where).EnumerateArray())
            if (read(e, $"{where}.{name}[{i++}]") is { } item) items.Add(item);
        return items;
    }

    /// <summary>
    /// prepend_scheme (default "always"). Files from before it have add_prefix_space, which tokenizers still reads:
    /// false is accepted only together with "never" (tokenizers refuses the file otherwise, and so does this).
    /// </summary>
    private MetaspacePrepend ReadPrependScheme(JsonElement element, string where)
    {
        var scheme = OptionalString(element, "prepend_scheme", where) switch
        {
            null or "always" => MetaspacePrepend.Always,
            "first" => MetaspacePrepend.First,
            "never" => MetaspacePrepend.Never,
            var other => throw Invalid($"{where}.prepend_scheme '{other}' is not one of always, first, never"),
        };
        if (!OptionalBool(element, "add_prefix_space", where, true) && scheme != MetaspacePrepend.Never)
            throw Invalid($"{where}: add_prefix_space is false but prepend_scheme is not \"never\"");
        return scheme;
    }

    // ------------------------------------------------------------------ decoder

    public Decoder? ReadDecoder(JsonElement element, string where)
    {
        if (element.ValueKind == JsonValueKind.Null) return null;
        var type = TypeOf(element, where);
        switch (type)
        {
            case "ByteLevel": return new ByteLevelDecoder();
            case "ByteFallback": return new ByteFallbackDecoder();
            case "Fuse": return new FuseDecoder();
            case "Strip":
                return new StripDecoder(char.ConvertToUtf32(OneCharacter(element, "content", where, null), 0),
                    OptionalInt(element, "start", where, 0), OptionalInt(element, "stop", where, 0));
            case "Replace": return new ReplaceDecoder(ReadPattern(element, where), RequiredString(element, "content", where));
            case "Metaspace": return new MetaspaceDecoder(ReadReplacement(element, where), ReadPrependScheme(element, where));
            case "BPEDecoder": return new SuffixDecoder(OptionalString(element, "suffix", where) ?? "</w>");
            case "Sequence": return new SequenceDecoder([.. ReadSequence(element, "decoders", where, ReadDecoder)]);
            default:
                throw Unsupported($"{where}: decoder type '{type}' (implemented: ByteLevel, ByteFallback, Fuse, Strip, Replace, Metaspace, BPEDecoder, Sequence)");
        }
    }

    // ------------------------------------------------------------------ post-processor

    public SpecialTokenTemplate ReadPostProcessor(JsonElement element, string where)
    {
        if (element.ValueKind == JsonValueKind.Null) return SpecialTokenTemplate.None;
        var type = TypeOf(element, where);
        switch (type)
        {
            case "ByteLevel": return SpecialTokenTemplate.None;   // it only adjusts offsets
            case "TemplateProcessing": return ReadTemplate(element, where);
            case "RobertaProcessing":
            case "BertProcessing":
            {
                var (clsToken, clsId) = ReadTokenIdPair(element, "cls", where);
                var (sepToken, sepId) = ReadTokenIdPair(element, "sep", where);
                return new SpecialTokenTemplate([clsId], [clsToken], [sepId], [sepToken]);
            }
            case "Sequence":
            {
                var list = RequiredArray(element, "processors", where);
                var template = SpecialTokenTemplate.None;
                var i = 0;
                foreach (var p in list.EnumerateArray()) template = template.WrappedBy(ReadPostProcessor(p, $"{where}.processors[{i++}]"));
                return template;
            }
            default:
                throw Unsupported($"{where}: post-processor type '{type}' (implemented: TemplateProcessing, ByteLevel, RobertaProcessing, BertProcessing, Sequence)");
        }
    }

    private (string Token, int Id) ReadTokenIdPair(JsonElement element, string name, string where)
    {
        if (!element.TryGetProperty(name, out var pair) || pair.ValueKind != JsonValueKind.Array || pair.GetArrayLength() != 2 ||
            pair[0].ValueKind != JsonValueKind.String || !pair[1].TryGetInt32(out var id) || id < 0)
            throw Invalid($"{where}.{name} is not [\"token\", id]");
        return (ReadString(pair[0], $"{where}.{name}[0]"), id);
    }

    /// <summary>TemplateProcessing's "single" template: special tokens before and after the one "$A" sequence.</summary>
    private SpecialTokenTemplate ReadTemplate(JsonElement element, string where)
    {
        var single = RequiredArray(element, "single", where);
        var specials = new Dictionary<string, (int[] Ids, string[] Tokens)>(StringComparer.Ordinal);
        if (element.TryGetProperty("special_tokens", out var map) && map.ValueKind == JsonValueKind.Object)
        {
            foreach (var p in map.EnumerateObject())
            {
                var w = $"{where}.special_tokens[\"{p.Name}\"]";
                if (p.Value.ValueKind != JsonValueKind.Object) throw Invalid($"{w} is not an object");
                var ids = RequiredArray(p.Value, "ids", w).EnumerateArray()
                    .Select(v => v.TryGetInt32(out var id) && id >= 0 ? id : throw Invalid($"{w}.ids holds {Short(v)}, not a token id")).ToArray();
                var tokens = RequiredArray(p.Value, "tokens", w).EnumerateArray().Select(v => v.ValueKind == JsonValueKind.String
                    ? ReadString(v, $"{w}.tokens") : throw Invalid($"{w}.tokens holds {Short(v)}, not a string")).ToArray();
                if (ids.Length != tokens.Length) throw Invalid($"{w} has {ids.Length} ids but {tokens.Length} tokens");
                specials[p.Name] = (ids, tokens);
            }
        }

        List<int> prefixIds = [], suffixIds = [];
        List<string> prefixTokens = [], suffixTokens = [];
        var seenSequence = false;
        var i = 0;
        foreach (var piece in single.EnumerateArray())
        {
            var w = $"{where}.single[{i++}]";
            if (piece.ValueKind == JsonValueKind.Object && piece.TryGetProperty("Sequence", out var sequence))
            {
                var id = sequence.ValueKind == JsonValueKind.Object ? OptionalString(sequence, "id", w + ".Sequence") : null;
                if (id != "A") throw Unsupported($"{w}: a single-sequence template that uses sequence '{id}'");
                if (seenSequence) throw Unsupported($"{w}: a template that repeats the sequence");
                seenSequence = true;
            }
            else if (piece.ValueKind == JsonValueKind.Object && piece.TryGetProperty("SpecialToken", out var special))
            {
                var name = special.ValueKind == JsonValueKind.Object ? OptionalString(special, "id", w + ".SpecialToken") : null;
                if (name is null || !specials.TryGetValue(name, out var entry))
                    throw Invalid($"{w} names special token '{name}', which is not in {where}.special_tokens");
                (seenSequence ? suffixIds : prefixIds).AddRange(entry.Ids);
                (seenSequence ? suffixTokens : prefixTokens).AddRange(entry.Tokens);
            }
            else throw Invalid($"{w} is neither {{\"Sequence\": ...}} nor {{\"SpecialToken\": ...}}: {Short(piece)}");
        }
        if (!seenSequence) throw Invalid($"{where}.single has no {{\"Sequence\": {{\"id\": \"A\"}}}}");
        return new SpecialTokenTemplate([.. prefixIds], [.. prefixTokens], [.. suffixIds], [.. suffixTokens]);
    }

    // ------------------------------------------------------------------ model

    public Dictionary<string, int> ReadVocab(JsonElement element, string where)
    {
        if (element.ValueKind != JsonValueKind.Object) throw Invalid($"{where} is not an object of token → id");
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var p in element.EnumerateObject())
        {
            if (p.Value.ValueKind != JsonValueKind.Number || !p.Value.TryGetInt32(out var id) || id < 0)
                throw Invalid($"{where}: token '{p.Name}' has id {Short(p.Value)}, not a non-negative integer");
            vocab[p.Name] = id;
        }
        return vocab;
    }

    /// <summary>model.merges: "left right" strings (older files) or ["left", "right"] pairs (which allow spaces in tokens).</summary>
    public List<(string Left, string Right)> ReadMerges(JsonElement model)
    {
        var mergesElement = RequiredArray(model, "merges", "model");
        var merges = new List<(string, string)>(mergesElement.GetArrayLength());
        var i = 0;
        foreach (var m in mergesElement.EnumerateArray())
        {
            var where = $"model.merges[{i++}]";
            if (m.ValueKind == JsonValueKind.String)
            {
                var text = ReadString(m, where);
                var space = text.IndexOf(' ');
                if (space <= 0 || space == text.Length - 1 || text.IndexOf(' ', space + 1) >= 0)
                    throw Invalid($"{where} is \"{text}\", not two tokens separated by one space");
                merges.Add((text[..space], text[(space + 1)..]));
            }
            else if (m.ValueKind == JsonValueKind.Array && m.GetArrayLength() == 2 &&
                     m[0].ValueKind == JsonValueKind.String && m[1].ValueKind == JsonValueKind.String)
                merges.Add((ReadString(m[0], where), ReadString(m[1], where)));
            else throw Invalid($"{where} is neither \"left right\" nor [\"left\", \"right\"]: {Short(m)}");
        }
        return merges;
    }

    public BpeOptions ReadBpeOptions(JsonElement model)
    {
        if (model.TryGetProperty("dropout", out var dropout) && dropout.ValueKind == JsonValueKind.Number && dropout.GetDouble() > 0)
            throw Unsupported("model.dropout: BPE dropout (random merges are for training; its tokens cannot be reproduced)");
        return new BpeOptions(
            UnkToken: OptionalString(model, "unk_token", "model"),
            FuseUnk: OptionalBool(model, "fuse_unk", "model"),
            ByteFallback: OptionalBool(model, "byte_fallback", "model"),
            IgnoreMerges: OptionalBool(model, "ignore_merges", "model"),
            ContinuingSubwordPrefix: OptionalString(model, "continuing_subword_prefix", "model"),
            EndOfWordSuffix: OptionalString(model, "end_of_word_suffix", "model"));
    }

    /// <summary>An added token as tokenizer.json (added_tokens[i]) or tokenizer_config.json (added_tokens_decoder) writes it.</summary>
    public AddedToken ReadAddedToken(JsonElement t, string where, int? id)
    {
        if (t.ValueKind != JsonValueKind.Object) throw Invalid($"{where} is not an object");
        if (id is null)
        {
            if (!t.TryGetProperty("id", out var idElement) || !idElement.TryGetInt32(out var parsed) || parsed < 0)
                throw Invalid($"{where} has no non-negative integer \"id\"");
            id = parsed;
        }
        var content = OptionalString(t, "content", where);
        if (string.IsNullOrEmpty(content)) throw Invalid($"{where} has no \"content\"");
        var special = OptionalBool(t, "special", where);
        return new AddedToken(id.Value, content,
            Special: special,
            LStrip: OptionalBool(t, "lstrip", where),
            RStrip: OptionalBool(t, "rstrip", where),
            SingleWord: OptionalBool(t, "single_word", where),
            // tokenizers' default: normalized unless special.
            Normalized: OptionalBool(t, "normalized", where, !special));
    }
}

/// <summary>The ByteLevel normalizer: the text's UTF-8 bytes spelled in GPT-2's byte alphabet.</summary>
internal sealed class ByteLevelNormalizer : Normalizer
{
    public override string Normalize(string text) => ByteLevelAlphabet.Spell(text);
}
