using System.Text;
using System.Text.Json;

namespace SharpLens.Tokenization;

public sealed partial class BpeTokenizer
{
    /// <summary>GPT-2's and GPT-NeoX's end-of-text token, which both models also use as BOS.</summary>
    private const string EndOfText = "<|endoftext|>";

    /// <summary>
    /// Loads a HuggingFace <c>tokenizer.json</c> whose model is BPE with a ByteLevel pre-tokenizer (GPT-2,
    /// GPT-NeoX/Pythia, ...). Added tokens are honoured; a NFC/NFD/NFKC/NFKD normalizer is applied; the
    /// post-processor is ignored because BOS is added explicitly (<see cref="Encode(string, bool)"/>).
    /// When <c>&lt;|endoftext|&gt;</c> is an added token it becomes BOS and EOS, the GPT-2/NeoX convention,
    /// since tokenizer.json itself does not say which tokens play those roles
    /// (<see cref="FromDirectory"/> reads them from tokenizer_config.json).
    /// </summary>
    /// <exception cref="InvalidDataException">The file is not valid JSON or not a well-formed tokenizer; the message names the file.</exception>
    /// <exception cref="NotSupportedException">The tokenizer uses a model, normalizer, pre-tokenizer or decoder this class does not implement.</exception>
    public static BpeTokenizer FromTokenizerJson(string path)
    {
        var def = LoadTokenizerJson(path);
        def.ApplyEndOfTextConvention();
        return def.Build();
    }

    /// <summary>
    /// Loads GPT-2's original pair of files: <paramref name="vocabJsonPath"/> (token → id) and
    /// <paramref name="mergesTxtPath"/> (one "left right" merge per line, highest priority first, after a
    /// "#version" line). <paramref name="specialTokens"/> are matched verbatim before BPE; by default that is
    /// <c>&lt;|endoftext|&gt;</c> when the vocabulary has it, as HuggingFace's GPT2Tokenizer does (pass an
    /// empty list for none). A special token missing from the vocabulary gets the next free id.
    /// <c>&lt;|endoftext|&gt;</c>, when special, is BOS and EOS.
    /// </summary>
    /// <exception cref="InvalidDataException">A file is malformed; the message names it (and the line, for merges).</exception>
    public static BpeTokenizer FromVocabAndMerges(string vocabJsonPath, string mergesTxtPath, IEnumerable<string>? specialTokens = null)
    {
        var def = LoadVocabAndMerges(vocabJsonPath, mergesTxtPath);
        foreach (var token in specialTokens ?? DefaultGpt2Specials(def)) def.EnsureSpecial(token, vocabJsonPath);
        def.ApplyEndOfTextConvention();
        return def.Build();
    }

    /// <summary>
    /// Loads the tokenizer of a HuggingFace model folder: <c>tokenizer.json</c> when present, else
    /// <c>vocab.json</c> with <c>merges.txt</c> (plus <c>added_tokens.json</c> if there). BOS, EOS, padding
    /// and other special tokens are then taken from <c>tokenizer_config.json</c> and
    /// <c>special_tokens_map.json</c> (the latter wins, as in transformers), each given as a string or as
    /// <c>{"content": ...}</c>; a special token the vocabulary lacks is appended as transformers does.
    /// </summary>
    /// <exception cref="DirectoryNotFoundException">The folder does not exist.</exception>
    /// <exception cref="FileNotFoundException">The folder holds neither tokenizer.json nor vocab.json with merges.txt; the message names the folder and the files.</exception>
    public static BpeTokenizer FromDirectory(string modelDir)
    {
        ArgumentNullException.ThrowIfNull(modelDir);
        if (!Directory.Exists(modelDir))
            throw new DirectoryNotFoundException($"tokenizer folder '{modelDir}' does not exist");

        var tokenizerJson = Path.Combine(modelDir, "tokenizer.json");
        var vocabJson = Path.Combine(modelDir, "vocab.json");
        var mergesTxt = Path.Combine(modelDir, "merges.txt");
        Definition def;
        string? defaultUnk = null;
        if (File.Exists(tokenizerJson))
        {
            def = LoadTokenizerJson(tokenizerJson);
            def.ApplyEndOfTextConvention();
        }
        else if (File.Exists(vocabJson) && File.Exists(mergesTxt))
        {
            def = LoadVocabAndMerges(vocabJson, mergesTxt);
            var addedTokensJson = Path.Combine(modelDir, "added_tokens.json");
            if (File.Exists(addedTokensJson)) def.AddFromAddedTokensJson(addedTokensJson);
            // GPT2Tokenizer's constructor defaults: <|endoftext|> is BOS, EOS and UNK unless the config says otherwise.
            if (def.Vocab.ContainsKey(EndOfText)) def.Bos = def.Eos = defaultUnk = EndOfText;
        }
        else
        {
            var missing = new[] { "tokenizer.json", "vocab.json", "merges.txt" }.Where(f => !File.Exists(Path.Combine(modelDir, f)));
            throw new FileNotFoundException(
                $"no tokenizer in '{modelDir}': looked for tokenizer.json, or vocab.json together with merges.txt " +
                $"(missing: {string.Join(", ", missing)})", tokenizerJson);
        }

        var config = new SpecialTokenConfig();
        config.Read(Path.Combine(modelDir, "tokenizer_config.json"), def, readAddedTokensDecoder: true);
        config.Read(Path.Combine(modelDir, "special_tokens_map.json"), def, readAddedTokensDecoder: false);
        def.Bos = config.Get("bos_token", def.Bos);
        def.Eos = config.Get("eos_token", def.Eos);
        def.Pad = config.Get("pad_token", def.Pad);
        var unk = config.Get("unk_token", defaultUnk);
        foreach (var (token, where) in new[] { (def.Bos, "bos_token"), (def.Eos, "eos_token"), (unk, "unk_token"), (def.Pad, "pad_token") })
            if (token is not null) def.EnsureSpecial(token, config.SourceOf(where) ?? def.Source);
        foreach (var (token, source) in config.Additional) def.EnsureSpecial(token, source);
        return def.Build();
    }

    private static IEnumerable<string> DefaultGpt2Specials(Definition def) =>
        def.Vocab.ContainsKey(EndOfText) ? [EndOfText] : [];

    // ------------------------------------------------------------------ file formats

    private static JsonDocument ReadJson(string path)
    {
        RequireFile(path);
        var bytes = File.ReadAllBytes(path);
        try
        {
            return JsonDocument.Parse(bytes);
        }
        catch (JsonException ex)
        {
            throw new InvalidDataException($"{path}: not valid JSON ({ex.Message})", ex);
        }
    }

    /// <summary>A missing file (or folder) is reported as FileNotFoundException naming the file, whichever part of the path is missing.</summary>
    private static void RequireFile(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (!File.Exists(path)) throw new FileNotFoundException($"tokenizer file '{path}' does not exist", path);
    }

    private static Definition LoadTokenizerJson(string path)
    {
        using var doc = ReadJson(path);
        var root = doc.RootElement;
        if (root.ValueKind != JsonValueKind.Object) throw Invalid(path, "the top level is not a JSON object");
        if (!root.TryGetProperty("model", out var model) || model.ValueKind != JsonValueKind.Object)
            throw Invalid(path, "there is no \"model\" object");

        var type = OptionalString(model, "type", path, "model.type");
        // Old files leave out model.type; a vocab with merges can only be BPE.
        if (type is null && !model.TryGetProperty("merges", out _)) throw Invalid(path, "model has no \"type\" and no \"merges\"");
        if (type is not null && type != "BPE")
            throw Unsupported(path, $"model type '{type}' (only byte-level BPE, as in GPT-2 and GPT-NeoX/Pythia, is implemented)");

        if (model.TryGetProperty("dropout", out var dropout) && dropout.ValueKind == JsonValueKind.Number && dropout.GetDouble() > 0)
            throw Unsupported(path, "BPE dropout (random merges are for training, not for reproducing a model's tokens)");
        foreach (var affix in new[] { "continuing_subword_prefix", "end_of_word_suffix" })
            if (OptionalString(model, affix, path, "model." + affix) is { Length: > 0 } value)
                throw Unsupported(path, $"model.{affix} '{value}' (byte-level BPE uses none)");
        if (OptionalBool(model, "byte_fallback", path, "model.byte_fallback"))
            throw Unsupported(path, "model.byte_fallback (SentencePiece-style BPE, as in Llama, is not implemented)");

        if (!model.TryGetProperty("vocab", out var vocabElement)) throw Invalid(path, "model has no \"vocab\"");
        var def = new Definition
        {
            Source = path,
            Vocab = ReadVocab(vocabElement, path, "model.vocab"),
            Merges = ReadJsonMerges(model, path),
            UnkToken = OptionalString(model, "unk_token", path, "model.unk_token"),
            IgnoreMerges = OptionalBool(model, "ignore_merges", path, "model.ignore_merges"),
        };

        if (root.TryGetProperty("added_tokens", out var added) && added.ValueKind != JsonValueKind.Null)
        {
            if (added.ValueKind != JsonValueKind.Array) throw Invalid(path, "\"added_tokens\" is not an array");
            var i = 0;
            foreach (var t in added.EnumerateArray()) def.AddToken(ReadAddedToken(t, path, $"added_tokens[{i++}]", id: null));
        }

        def.Normalizers = root.TryGetProperty("normalizer", out var normalizer) ? ReadNormalizer(normalizer, path) : [];

        if (!root.TryGetProperty("pre_tokenizer", out var pre) || pre.ValueKind != JsonValueKind.Object)
            throw Unsupported(path, "a missing pre_tokenizer (a ByteLevel pre-tokenizer is required)");
        var preType = OptionalString(pre, "type", path, "pre_tokenizer.type");
        if (preType != "ByteLevel") throw Unsupported(path, $"pre_tokenizer type '{preType}' (only ByteLevel is implemented)");
        // ByteLevel's defaults in tokenizers: add_prefix_space and use_regex are both true.
        def.AddPrefixSpace = OptionalBool(pre, "add_prefix_space", path, "pre_tokenizer.add_prefix_space", defaultValue: true);
        def.UseRegex = OptionalBool(pre, "use_regex", path, "pre_tokenizer.use_regex", defaultValue: true);

        if (root.TryGetProperty("decoder", out var decoder) && decoder.ValueKind != JsonValueKind.Null)
        {
            var decoderType = decoder.ValueKind == JsonValueKind.Object ? OptionalString(decoder, "type", path, "decoder.type") : null;
            if (decoderType != "ByteLevel") throw Unsupported(path, $"decoder type '{decoderType}' (only ByteLevel is implemented)");
        }
        return def;
    }

    private static Definition LoadVocabAndMerges(string vocabJsonPath, string mergesTxtPath)
    {
        ArgumentNullException.ThrowIfNull(vocabJsonPath);
        ArgumentNullException.ThrowIfNull(mergesTxtPath);
        Dictionary<string, int> vocab;
        using (var doc = ReadJson(vocabJsonPath)) vocab = ReadVocab(doc.RootElement, vocabJsonPath, "the top level");

        RequireFile(mergesTxtPath);
        var merges = new List<(string, string, string)>();
        var lineNumber = 0;
        foreach (var raw in File.ReadLines(mergesTxtPath))
        {
            lineNumber++;
            var line = raw.TrimEnd('\r');
            // Only "#version" is a comment: "# #" is a real merge of GPT-2.
            if (line.Length == 0 || line.StartsWith("#version", StringComparison.Ordinal)) continue;
            var parts = line.Split(' ');
            if (parts.Length != 2 || parts[0].Length == 0 || parts[1].Length == 0)
                throw new InvalidDataException($"{mergesTxtPath}:{lineNumber}: expected two tokens separated by one space, got \"{line}\"");
            merges.Add((parts[0], parts[1], $"{mergesTxtPath}:{lineNumber}"));
        }

        // GPT-2's files carry no settings: no normalizer, no prefix space, the regex on.
        return new Definition { Source = vocabJsonPath, Vocab = vocab, Merges = merges, AddPrefixSpace = false, UseRegex = true };
    }

    private static Dictionary<string, int> ReadVocab(JsonElement element, string path, string where)
    {
        if (element.ValueKind != JsonValueKind.Object) throw Invalid(path, $"{where} is not an object of token → id");
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var p in element.EnumerateObject())
        {
            if (p.Value.ValueKind != JsonValueKind.Number || !p.Value.TryGetInt32(out var id) || id < 0)
                throw Invalid(path, $"{where}: token '{p.Name}' has id {p.Value.GetRawText()}, not a non-negative integer");
            vocab[p.Name] = id;
        }
        return vocab;
    }

    private static List<(string, string, string)> ReadJsonMerges(JsonElement model, string path)
    {
        if (!model.TryGetProperty("merges", out var mergesElement) || mergesElement.ValueKind != JsonValueKind.Array)
            throw Invalid(path, "model.merges is missing or not an array");
        var merges = new List<(string, string, string)>(mergesElement.GetArrayLength());
        var i = 0;
        foreach (var m in mergesElement.EnumerateArray())
        {
            var where = $"model.merges[{i++}]";
            // Older files write "left right"; newer ones ["left", "right"], which allows spaces inside tokens.
            if (m.ValueKind == JsonValueKind.String)
            {
                var parts = m.GetString()!.Split(' ');
                if (parts.Length != 2 || parts[0].Length == 0 || parts[1].Length == 0)
                    throw Invalid(path, $"{where} is \"{m.GetString()}\", not two tokens separated by one space");
                merges.Add((parts[0], parts[1], where));
            }
            else if (m.ValueKind == JsonValueKind.Array && m.GetArrayLength() == 2 &&
                     m[0].ValueKind == JsonValueKind.String && m[1].ValueKind == JsonValueKind.String)
            {
                merges.Add((m[0].GetString()!, m[1].GetString()!, where));
            }
            else throw Invalid(path, $"{where} is neither \"left right\" nor [\"left\", \"right\"]: {m.GetRawText()}");
        }
        return merges;
    }

    private static NormalizationForm[] ReadNormalizer(JsonElement element, string path)
    {
        if (element.ValueKind == JsonValueKind.Null) return [];
        if (element.ValueKind != JsonValueKind.Object) throw Invalid(path, "normalizer is not an object");
        var type = OptionalString(element, "type", path, "normalizer.type");
        switch (type)
        {
            case "NFC": return [NormalizationForm.FormC];
            case "NFD": return [NormalizationForm.FormD];
            case "NFKC": return [NormalizationForm.FormKC];
            case "NFKD": return [NormalizationForm.FormKD];
            case "Sequence":
                if (!element.TryGetProperty("normalizers", out var list) || list.ValueKind != JsonValueKind.Array)
                    throw Invalid(path, "a Sequence normalizer has no \"normalizers\" array");
                return list.EnumerateArray().SelectMany(n => ReadNormalizer(n, path)).ToArray();
            default:
                throw Unsupported(path, $"normalizer type '{type}' (only NFC, NFD, NFKC, NFKD and Sequences of them are implemented)");
        }
    }

    private static AddedToken ReadAddedToken(JsonElement t, string path, string where, int? id)
    {
        if (t.ValueKind != JsonValueKind.Object) throw Invalid(path, $"{where} is not an object");
        if (id is null)
        {
            if (!t.TryGetProperty("id", out var idElement) || !idElement.TryGetInt32(out var parsed) || parsed < 0)
                throw Invalid(path, $"{where} has no non-negative integer \"id\"");
            id = parsed;
        }
        var content = OptionalString(t, "content", path, where + ".content");
        if (string.IsNullOrEmpty(content)) throw Invalid(path, $"{where} has no \"content\"");
        return new AddedToken(id.Value, content,
            Special: OptionalBool(t, "special", path, where + ".special"),
            LStrip: OptionalBool(t, "lstrip", path, where + ".lstrip"),
            RStrip: OptionalBool(t, "rstrip", path, where + ".rstrip"),
            SingleWord: OptionalBool(t, "single_word", path, where + ".single_word"));
    }

    private static string? OptionalString(JsonElement obj, string name, string path, string where)
    {
        if (!obj.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        return v.ValueKind == JsonValueKind.String ? v.GetString() : throw Invalid(path, $"{where} is not a string: {v.GetRawText()}");
    }

    private static bool OptionalBool(JsonElement obj, string name, string path, string where, bool defaultValue = false)
    {
        if (!obj.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return defaultValue;
        return v.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw Invalid(path, $"{where} is not true or false: {v.GetRawText()}"),
        };
    }

    private static InvalidDataException Invalid(string path, string what) => new($"{path}: {what}");

    private static NotSupportedException Unsupported(string path, string what) => new($"{path}: unsupported tokenizer: {what}");

    // ------------------------------------------------------------------ assembling

    /// <summary>Everything read from the files, gathered before the immutable tokenizer is built.</summary>
    private sealed class Definition
    {
        public required string Source { get; init; }
        public required Dictionary<string, int> Vocab { get; init; }
        public required List<(string Left, string Right, string Where)> Merges { get; init; }
        public List<AddedToken> Added { get; } = [];
        public NormalizationForm[] Normalizers { get; set; } = [];
        public bool AddPrefixSpace { get; set; }
        public bool UseRegex { get; set; } = true;
        public string? UnkToken { get; init; }
        public bool IgnoreMerges { get; init; }
        public string? Bos { get; set; }
        public string? Eos { get; set; }
        public string? Pad { get; set; }

        /// <summary>Adds a token unless one with the same text is already there (the first definition wins).</summary>
        public void AddToken(AddedToken token)
        {
            if (Added.Any(t => t.Content == token.Content)) return;
            Added.Add(token);
        }

        /// <summary>
        /// Makes <paramref name="content"/> a special added token: an existing added token is marked special,
        /// a vocabulary token keeps its id, anything else is appended with the next free id (as transformers'
        /// add_special_tokens does).
        /// </summary>
        public void EnsureSpecial(string content, string source)
        {
            if (string.IsNullOrEmpty(content)) throw new InvalidDataException($"{source}: a special token is empty");
            var i = Added.FindIndex(t => t.Content == content);
            if (i >= 0)
            {
                if (!Added[i].Special) Added[i] = Added[i] with { Special = true };
                return;
            }
            Added.Add(new AddedToken(Vocab.TryGetValue(content, out var id) ? id : NextId(), content, Special: true));
        }

        private int NextId()
        {
            var max = -1;
            foreach (var id in Vocab.Values) max = Math.Max(max, id);
            foreach (var t in Added) max = Math.Max(max, t.Id);
            return max + 1;
        }

        /// <summary>GPT-2 and GPT-NeoX both use &lt;|endoftext|&gt; as BOS and EOS.</summary>
        public void ApplyEndOfTextConvention()
        {
            if (Added.Any(t => t.Content == EndOfText)) Bos = Eos = EndOfText;
        }

        /// <summary>added_tokens.json of slow tokenizers: {"text": id, ...}, ordinary (not special) until a config names them.</summary>
        public void AddFromAddedTokensJson(string path)
        {
            using var doc = ReadJson(path);
            foreach (var (token, id) in ReadVocab(doc.RootElement, path, "the top level"))
                if (token.Length > 0) AddToken(new AddedToken(id, token, Special: false));
        }

        public BpeTokenizer Build()
        {
            var model = new BpeModel(Vocab, Merges, Source, UnkToken, IgnoreMerges);
            return new BpeTokenizer(model, new AddedTokenMatcher(Added.ToArray()), Normalizers, AddPrefixSpace, UseRegex, Bos, Eos, Pad);
        }
    }

    /// <summary>The special-token settings of tokenizer_config.json and special_tokens_map.json, later files overriding earlier ones.</summary>
    private sealed class SpecialTokenConfig
    {
        private static readonly string[] Roles = ["bos_token", "eos_token", "unk_token", "pad_token"];
        private readonly Dictionary<string, (string? Value, string Source)> _values = [];

        public List<(string Token, string Source)> Additional { get; } = [];

        /// <summary>The configured token for a role, or <paramref name="fallback"/> when no file mentions the role (an explicit null means none).</summary>
        public string? Get(string role, string? fallback) => _values.TryGetValue(role, out var v) ? v.Value : fallback;

        public string? SourceOf(string role) => _values.TryGetValue(role, out var v) ? v.Source : null;

        public void Read(string path, Definition def, bool readAddedTokensDecoder)
        {
            if (!File.Exists(path)) return;
            using var doc = ReadJson(path);
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object) throw Invalid(path, "the top level is not a JSON object");

            // Newer transformers list every added token here, keyed by id; tokenizer.json usually has them too.
            if (readAddedTokensDecoder && root.TryGetProperty("added_tokens_decoder", out var decoder) && decoder.ValueKind == JsonValueKind.Object)
            {
                foreach (var p in decoder.EnumerateObject())
                {
                    if (!int.TryParse(p.Name, out var id) || id < 0) throw Invalid(path, $"added_tokens_decoder key '{p.Name}' is not an id");
                    def.AddToken(ReadAddedToken(p.Value, path, $"added_tokens_decoder[{p.Name}]", id));
                }
            }

            foreach (var role in Roles)
                if (root.TryGetProperty(role, out var v))
                    _values[role] = (TokenText(v, path, role), path);

            if (root.TryGetProperty("additional_special_tokens", out var extra) && extra.ValueKind != JsonValueKind.Null)
            {
                if (extra.ValueKind != JsonValueKind.Array) throw Invalid(path, "additional_special_tokens is not an array");
                foreach (var e in extra.EnumerateArray())
                    if (TokenText(e, path, "additional_special_tokens") is { } token) Additional.Add((token, path));
            }
        }

        /// <summary>A special token written as "text", as {"content": "text", ...} (a serialized AddedToken), or null.</summary>
        private static string? TokenText(JsonElement v, string path, string where) => v.ValueKind switch
        {
            JsonValueKind.Null => null,
            JsonValueKind.String => v.GetString(),
            JsonValueKind.Object => OptionalString(v, "content", path, where + ".content")
                                    ?? throw Invalid(path, $"{where} is an object without \"content\""),
            _ => throw Invalid(path, $"{where} is neither a string nor {{\"content\": ...}}: {v.GetRawText()}"),
        };
    }
}
