using System.Text.Json;

namespace SharpLens.Tokenization;

public sealed partial class BpeTokenizer
{
    /// <summary>GPT-2's and GPT-NeoX's end-of-text token, which both models also use as BOS.</summary>
    private const string EndOfText = "<|endoftext|>";

    /// <summary>
    /// Loads a HuggingFace <c>tokenizer.json</c> with a BPE model (see the class summary for the parts it may
    /// use). Special tokens written in the text and the post-processor behave as in tokenizers. As the file does not
    /// say which tokens are BOS and EOS, <c>&lt;|endoftext|&gt;</c> is taken as both when it is an added token
    /// (the GPT-2/NeoX convention); <see cref="FromDirectory"/> reads them from tokenizer_config.json instead.
    /// </summary>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="TokenizerFormatException">The file is not valid JSON (truncated, say) or not a well-formed tokenizer; the message names the file and the place.</exception>
    /// <exception cref="UnsupportedTokenizerException">The tokenizer uses a model or component this class does not implement.</exception>
    public static BpeTokenizer FromTokenizerJson(string path)
    {
        var def = LoadTokenizerJson(path);
        def.ApplyEndOfTextConvention();
        return def.Build();
    }

    /// <summary>
    /// Loads GPT-2's original pair of files: <paramref name="vocabJsonPath"/> (token → id) and
    /// <paramref name="mergesTxtPath"/> (one "left right" merge per line, highest priority first, after a
    /// "#version" line), with GPT-2's pipeline (ByteLevel pre-tokenizer and decoder, no normalizer).
    /// <paramref name="specialTokens"/> are matched verbatim before BPE; by default that is
    /// <c>&lt;|endoftext|&gt;</c> when the vocabulary has it, as HuggingFace's GPT2Tokenizer does (pass an empty
    /// list for none). A special token missing from the vocabulary gets the next free id.
    /// <c>&lt;|endoftext|&gt;</c>, when special, is BOS and EOS.
    /// </summary>
    /// <exception cref="TokenizerFormatException">A file is malformed; the message names it (and the line, for merges).</exception>
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
    /// Which special tokens go around a text follows transformers 4.44.2's <c>AutoTokenizer</c>, by the tokenizer class
    /// (tokenizer_config.json's <c>tokenizer_class</c>, else config.json's <c>tokenizer_class</c> or <c>model_type</c>):
    /// the Llama, Code Llama, Gemma, Cohere and GPT-NeoX classes replace the tokenizer.json post-processor with BOS in
    /// front and EOS behind as <c>add_bos_token</c>/<c>add_eos_token</c> say (defaults: BOS only, or nothing for
    /// GPT-NeoX), and take their class's BOS/EOS when no file names one; every other class (Qwen2, GPT-2,
    /// <c>PreTrainedTokenizerFast</c> as Llama 3 uses, ...) ignores the two flags and keeps the post-processor, except
    /// that GPT-2's vocab.json/merges.txt get BOS in front when add_bos_token is true, as transformers' conversion does.
    /// </summary>
    /// <exception cref="DirectoryNotFoundException">The folder does not exist.</exception>
    /// <exception cref="FileNotFoundException">The folder holds neither tokenizer.json nor vocab.json with merges.txt; the message names the folder and the files.</exception>
    /// <exception cref="TokenizerFormatException">A file is malformed; the message names it.</exception>
    /// <exception cref="UnsupportedTokenizerException">The tokenizer uses something this class does not implement.</exception>
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

        var config = new TokenizerConfig();
        config.Read(Path.Combine(modelDir, "tokenizer_config.json"), def, isTokenizerConfig: true);
        config.Read(Path.Combine(modelDir, "special_tokens_map.json"), def, isTokenizerConfig: false);
        var rule = TokenizerClassRule.For(modelDir, config.TokenizerClass);
        // A role no file names takes the class's constructor default, as in transformers (Llama's "<s>", ...).
        def.Bos = config.Get("bos_token", rule.DefaultBos ?? def.Bos);
        def.Eos = config.Get("eos_token", rule.DefaultEos ?? def.Eos);
        def.Pad = config.Get("pad_token", def.Pad);
        var unk = config.Get("unk_token", defaultUnk);
        foreach (var (token, where) in new[] { (def.Bos, "bos_token"), (def.Eos, "eos_token"), (unk, "unk_token"), (def.Pad, "pad_token") })
            if (token is not null) def.EnsureSpecial(token, config.SourceOf(where) ?? def.Source);
        foreach (var (token, source) in config.Additional) def.EnsureSpecial(token, source);
        var flagSource = config.FlagSource ?? Path.Combine(modelDir, "tokenizer_config.json");
        if (rule.FlagsDecide)
            def.UseBosEosTemplate(config.AddBos ?? rule.DefaultAddBos, config.AddEos ?? rule.DefaultAddEos, flagSource, rule.ClassName!);
        else if (rule.IsGpt2 && !File.Exists(tokenizerJson) && config.AddBos == true)
            def.UseBosEosTemplate(addBos: true, addEos: false, flagSource, rule.ClassName!);
        return def.Build();
    }

    private static IEnumerable<string> DefaultGpt2Specials(Definition def) =>
        def.Vocab.ContainsKey(EndOfText) ? [EndOfText] : [];

    // ------------------------------------------------------------------ file formats

    private static Definition LoadTokenizerJson(string path)
    {
        using var doc = TokenizerJson.Parse(path);
        var json = new TokenizerJson(path);
        var root = doc.RootElement;
        if (root.ValueKind != JsonValueKind.Object) throw json.Invalid("the top level is not a JSON object");
        if (!root.TryGetProperty("model", out var model) || model.ValueKind != JsonValueKind.Object)
            throw json.Invalid("there is no \"model\" object");

        var type = json.OptionalString(model, "type", "model");
        // Old files leave out model.type; a vocab with merges can only be BPE.
        if (type is null && !model.TryGetProperty("merges", out _)) throw json.Invalid("model has no \"type\" and no \"merges\"");
        if (type is not null && type != "BPE")
            throw json.Unsupported($"model type '{type}' (only BPE models are implemented: GPT-2, Llama, Mistral, Qwen, Gemma, ...)");
        if (!model.TryGetProperty("vocab", out var vocabElement)) throw json.Invalid("model has no \"vocab\"");

        var def = new Definition
        {
            Source = path,
            Vocab = json.ReadVocab(vocabElement, "model.vocab"),
            Merges = json.ReadMerges(model),
            DescribeMerge = i => $"model.merges[{i}]",
            Options = json.ReadBpeOptions(model),
        };

        if (root.TryGetProperty("added_tokens", out var added) && added.ValueKind != JsonValueKind.Null)
        {
            if (added.ValueKind != JsonValueKind.Array) throw json.Invalid("\"added_tokens\" is not an array");
            var i = 0;
            foreach (var t in added.EnumerateArray()) def.AddAsTokenizers(json.ReadAddedToken(t, $"added_tokens[{i++}]", id: null));
        }

        def.Normalizer = root.TryGetProperty("normalizer", out var normalizer) ? json.ReadNormalizer(normalizer, "normalizer") : null;
        def.PreTokenizer = root.TryGetProperty("pre_tokenizer", out var pre) ? json.ReadPreTokenizer(pre, "pre_tokenizer") : null;
        def.Template = root.TryGetProperty("post_processor", out var post) ? json.ReadPostProcessor(post, "post_processor") : SpecialTokenTemplate.None;
        def.Decoder = root.TryGetProperty("decoder", out var decoder) ? json.ReadDecoder(decoder, "decoder") : null;
        return def;
    }

    private static Definition LoadVocabAndMerges(string vocabJsonPath, string mergesTxtPath)
    {
        ArgumentNullException.ThrowIfNull(vocabJsonPath);
        ArgumentNullException.ThrowIfNull(mergesTxtPath);
        Dictionary<string, int> vocab;
        using (var doc = TokenizerJson.Parse(vocabJsonPath)) vocab = new TokenizerJson(vocabJsonPath).ReadVocab(doc.RootElement, "the top level");

        if (!File.Exists(mergesTxtPath)) throw new FileNotFoundException($"tokenizer file '{mergesTxtPath}' does not exist", mergesTxtPath);
        var merges = new List<(string, string)>();
        var lines = new List<int>();
        var lineNumber = 0;
        foreach (var raw in File.ReadLines(mergesTxtPath))
        {
            lineNumber++;
            var line = raw.TrimEnd('\r');
            // Only "#version" is a comment: "# #" is a real merge of GPT-2.
            if (line.Length == 0 || line.StartsWith("#version", StringComparison.Ordinal)) continue;
            var parts = line.Split(' ');
            if (parts.Length != 2 || parts[0].Length == 0 || parts[1].Length == 0)
                throw new TokenizerFormatException(mergesTxtPath, $"line {lineNumber}: expected two tokens separated by one space, got \"{line}\"");
            merges.Add((parts[0], parts[1]));
            lines.Add(lineNumber);
        }

        // GPT-2's pipeline, as its tokenizer.json spells it: no normalizer, ByteLevel without prefix space.
        return new Definition
        {
            Source = vocabJsonPath,
            Vocab = vocab,
            Merges = merges,
            DescribeMerge = i => $"{mergesTxtPath}:{lines[i]}",
            PreTokenizer = new ByteLevelPreTokenizer(addPrefixSpace: false, useRegex: true),
            Decoder = new ByteLevelDecoder(),
        };
    }

    // ------------------------------------------------------------------ assembling

    /// <summary>Everything read from the files, gathered before the immutable tokenizer is built.</summary>
    private sealed class Definition
    {
        public required string Source { get; init; }
        public required Dictionary<string, int> Vocab { get; init; }
        public required List<(string Left, string Right)> Merges { get; init; }
        public required Func<int, string> DescribeMerge { get; init; }
        public BpeOptions Options { get; init; } = new();
        public List<AddedToken> Added { get; } = [];
        public Normalizer? Normalizer { get; set; }
        public PreTokenizer? PreTokenizer { get; set; }
        public SpecialTokenTemplate Template { get; set; } = SpecialTokenTemplate.None;
        public Decoder? Decoder { get; set; }
        public string? Bos { get; set; }
        public string? Eos { get; set; }
        public string? Pad { get; set; }

        /// <summary>
        /// An added token of tokenizer.json, given the id tokenizers gives it (the id written in the file is
        /// only checked by tokenizers, not used): an existing added token's, else the vocabulary's, else the
        /// next after the vocabulary and the added tokens so far. A repeated content updates the token's flags.
        /// </summary>
        public void AddAsTokenizers(AddedToken token)
        {
            var existing = Added.FindIndex(t => t.Content == token.Content);
            if (existing >= 0)
            {
                Added[existing] = token with { Id = Added[existing].Id };
                return;
            }
            int id;
            if (Vocab.TryGetValue(token.Content, out var vocabId)) id = vocabId;
            else if (Added.Count == 0) id = Vocab.Count;
            else
            {
                var max = Added.Max(t => t.Id);
                id = max >= Vocab.Count || Vocab.Count == 0 ? max + 1 : Vocab.Count;
            }
            Added.Add(token with { Id = id });
        }

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
            if (string.IsNullOrEmpty(content)) throw new TokenizerFormatException(source, "a special token is empty");
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

        /// <summary>
        /// transformers' <c>update_post_processor</c>: BOS before the text if asked, EOS after it if asked, replacing
        /// the post-processor. <paramref name="className"/> names the tokenizer class in errors, since a flag may be
        /// that class's default rather than written in <paramref name="source"/>.
        /// </summary>
        public void UseBosEosTemplate(bool addBos, bool addEos, string source, string className)
        {
            string[] prefix = [], suffix = [];
            if (addBos) prefix = [Bos ?? throw new TokenizerFormatException(source, $"add_bos_token is true for {className} but there is no bos_token")];
            if (addEos) suffix = [Eos ?? throw new TokenizerFormatException(source, $"add_eos_token is true for {className} but there is no eos_token")];
            Template = new SpecialTokenTemplate(prefix.Select(IdOf).ToArray(), prefix, suffix.Select(IdOf).ToArray(), suffix);

            int IdOf(string token) => Added.FirstOrDefault(t => t.Content == token)?.Id ??
                                      (Vocab.TryGetValue(token, out var id) ? id : throw new TokenizerFormatException(source, $"special token '{token}' has no id"));
        }

        /// <summary>added_tokens.json of slow tokenizers: {"text": id, ...}, ordinary (not special) until a config names them.</summary>
        public void AddFromAddedTokensJson(string path)
        {
            using var doc = TokenizerJson.Parse(path);
            foreach (var (token, id) in new TokenizerJson(path).ReadVocab(doc.RootElement, "the top level"))
                if (token.Length > 0) AddToken(new AddedToken(id, token, Special: false));
        }

        public BpeTokenizer Build()
        {
            // The last ByteLevel pre-tokenizer leaves the byte spelling to the model when the vocabulary allows;
            // any other ByteLevel spells its pieces itself, since later pre-tokenizers see the spelled text.
            var byteLevels = new List<ByteLevelPreTokenizer>();
            CollectByteLevels(PreTokenizer, byteLevels);
            var last = LastStep(PreTokenizer) as ByteLevelPreTokenizer;
            var byteInput = last is not null && BpeModel.CanReadBytes(Vocab, Options);
            foreach (var b in byteLevels) b.MapToAlphabet = !(byteInput && ReferenceEquals(b, last));

            var model = new BpeModel(Vocab, Merges, Options, byteInput, Source, DescribeMerge);
            string PatternOf(AddedToken t) => t.Normalized && Normalizer is not null ? Normalizer.Normalize(t.Content) : t.Content;
            var decodeText = new Dictionary<int, string>();
            foreach (var t in Added) decodeText[t.Id] = PatternOf(t);
            var byContent = new Dictionary<string, AddedToken>(StringComparer.Ordinal);
            foreach (var t in Added) byContent.TryAdd(t.Content, t);
            var byId = new Dictionary<int, AddedToken>();
            foreach (var t in Added) byId[t.Id] = t;

            var pipeline = new Pipeline
            {
                Model = model,
                Normalizer = Normalizer,
                PreTokenizer = PreTokenizer,
                RawAdded = new AddedTokenMatcher(Added.Where(t => !t.Normalized).Select(t => (t.Content, t))),
                NormalizedAdded = new AddedTokenMatcher(Added.Where(t => t.Normalized).Select(t => (PatternOf(t), t))),
                Added = Added.ToArray(),
                AddedById = byId,
                AddedByContent = byContent,
                AddedDecodeText = decodeText,
                Template = Template,
                Decoder = Decoder,
                AddPrefixSpace = byteLevels.Any(b => b.AddPrefixSpace),
            };
            return new BpeTokenizer(pipeline, Bos, Eos, Pad);
        }

        private static void CollectByteLevels(PreTokenizer? p, List<ByteLevelPreTokenizer> into)
        {
            if (p is ByteLevelPreTokenizer b) into.Add(b);
            else if (p is SequencePreTokenizer s) foreach (var step in s.Steps) CollectByteLevels(step, into);
        }

        private static PreTokenizer? LastStep(PreTokenizer? p) => p is SequencePreTokenizer s ? LastStep(s.Steps[^1]) : p;
    }

    /// <summary>The settings of tokenizer_config.json and special_tokens_map.json, later files overriding earlier ones.</summary>
    private sealed class TokenizerConfig
    {
        private static readonly string[] Roles = ["bos_token", "eos_token", "unk_token", "pad_token"];
        private readonly Dictionary<string, (string? Value, string Source)> _values = [];

        public List<(string Token, string Source)> Additional { get; } = [];

        /// <summary>add_bos_token: null when no file has it; an explicit null is false (transformers passes None, which is falsy).</summary>
        public bool? AddBos { get; private set; }

        /// <summary>add_eos_token, as <see cref="AddBos"/>.</summary>
        public bool? AddEos { get; private set; }

        /// <summary>tokenizer_config.json's tokenizer_class (AutoTokenizer reads it from that file only).</summary>
        public string? TokenizerClass { get; private set; }

        /// <summary>The file that set add_bos_token/add_eos_token.</summary>
        public string? FlagSource { get; private set; }

        /// <summary>The configured token for a role, or <paramref name="fallback"/> when no file mentions the role (an explicit null means none).</summary>
        public string? Get(string role, string? fallback) => _values.TryGetValue(role, out var v) ? v.Value : fallback;

        public string? SourceOf(string role) => _values.TryGetValue(role, out var v) ? v.Source : null;

        /// <summary>Reads one file if it exists; <paramref name="isTokenizerConfig"/>: tokenizer_config.json, whose added_tokens_decoder and tokenizer_class are read too.</summary>
        public void Read(string path, Definition def, bool isTokenizerConfig)
        {
            if (!File.Exists(path)) return;
            using var doc = TokenizerJson.Parse(path);
            var json = new TokenizerJson(path);
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object) throw json.Invalid("the top level is not a JSON object");

            // Newer transformers list every added token here, keyed by id; tokenizer.json usually has them too.
            if (isTokenizerConfig && root.TryGetProperty("added_tokens_decoder", out var decoder) && decoder.ValueKind == JsonValueKind.Object)
            {
                foreach (var p in decoder.EnumerateObject())
                {
                    if (!int.TryParse(p.Name, out var id) || id < 0) throw json.Invalid($"added_tokens_decoder key '{p.Name}' is not an id");
                    def.AddToken(json.ReadAddedToken(p.Value, $"added_tokens_decoder[\"{p.Name}\"]", id));
                }
            }

            foreach (var role in Roles)
                if (root.TryGetProperty(role, out var v))
                    _values[role] = (TokenText(json, v, role), path);

            if (root.TryGetProperty("additional_special_tokens", out var extra) && extra.ValueKind != JsonValueKind.Null)
            {
                if (extra.ValueKind != JsonValueKind.Array) throw json.Invalid("additional_special_tokens is not an array");
                foreach (var e in extra.EnumerateArray())
                    if (TokenText(json, e, "additional_special_tokens") is { } token) Additional.Add((token, path));
            }

            if (isTokenizerConfig) TokenizerClass = json.OptionalString(root, "tokenizer_class", "the top level");

            if (root.TryGetProperty("add_bos_token", out _))
            {
                AddBos = json.OptionalBool(root, "add_bos_token", "the top level");
                FlagSource = path;
            }
            if (root.TryGetProperty("add_eos_token", out _))
            {
                AddEos = json.OptionalBool(root, "add_eos_token", "the top level");
                FlagSource = path;
            }
        }

        /// <summary>A special token written as "text", as {"content": "text", ...} (a serialized AddedToken), or null.</summary>
        private static string? TokenText(TokenizerJson json, JsonElement v, string where) => v.ValueKind switch
        {
            JsonValueKind.Null => null,
            JsonValueKind.String => json.ReadString(v, where),
            JsonValueKind.Object => json.OptionalString(v, "content", where)
                                    ?? throw json.Invalid($"{where} is an object without \"content\""),
            _ => throw json.Invalid($"{where} is neither a string nor {{\"content\": ...}}: {TokenizerJson.Short(v)}"),
        };
    }
}
