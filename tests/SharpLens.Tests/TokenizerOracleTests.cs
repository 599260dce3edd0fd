using System.Text;
using SharpLens.Tokenization;

namespace SharpLens.Tests;

/// <summary>
/// Every tokenizer against the oracle (HuggingFace's tokenizers, see <see cref="TokenizerOracle"/>) on the
/// generated corpus: ids and token strings with and without special tokens must be equal, and decoding the
/// oracle's ids must give the oracle's text, with and without skipping special tokens. Exact equality, no
/// tolerance: tokenization is discrete.
/// </summary>
[TestFixture]
[NonParallelizable]
public class TokenizerOracleTests
{
    public static IEnumerable<string> Cases => TokenizerOracle.CaseNames;

    private static string Escape(string s)
    {
        var sb = new StringBuilder("\"");
        foreach (var c in s.Length > 160 ? s[..160] : s)
            sb.Append(c is < ' ' or > '~' ? $"\\u{(int)c:x4}" : c.ToString());
        return sb.Append(s.Length > 160 ? "\"..." : "\"").ToString();
    }

    private static string Show<T>(IEnumerable<T>? items) => items is null ? "null" : "[" + string.Join(", ", items.Take(40)) + "]";

    [TestCaseSource(nameof(Cases))]
    public void MatchesOracle(string name)
    {
        var c = TokenizerOracle.GetCase(name);
        var results = TokenizerOracle.GetResults(name);
        Assert.That(results, Has.Length.EqualTo(c.Texts.Count), "one oracle result per text");
        var tok = c.FromDirectory ? BpeTokenizer.FromDirectory(c.Dir) : BpeTokenizer.FromTokenizerJson(Path.Combine(c.Dir, "tokenizer.json"));

        var failures = new List<string>();
        var rejected = 0;
        for (var i = 0; i < c.Texts.Count; i++)
        {
            var text = c.Texts[i];
            var r = results[i];
            var plain = tok.Tokenize(text, addSpecialTokens: false);
            var special = tok.Tokenize(text, addSpecialTokens: true);
            if (r.Error is not null)
            {
                rejected++;   // the oracle refused the text (an error, not ids): ours must still encode it, checked above
                continue;
            }
            void Check<T>(string what, IEnumerable<T>? expected, IEnumerable<T> actual)
            {
                if (expected is not null && expected.SequenceEqual(actual)) return;
                if (failures.Count < 8) failures.Add($"text {i} {Escape(text)}: {what}\n    oracle {Show(expected)}\n    ours   {Show(actual)}");
                else failures.Add("");
            }
            Check("ids", r.Ids, plain.Ids);
            Check("tokens", r.Tokens, plain.Tokens);
            Check("ids with special tokens", r.IdsSpecial, special.Ids);
            Check("tokens with special tokens", r.TokensSpecial, special.Tokens);
            Check("Encode", r.Ids, tok.Encode(text));
            Check("EncodeWithSpecialTokens", r.IdsSpecial, tok.EncodeWithSpecialTokens(text));
            Check("decoded oracle ids", [r.Decoded], [tok.Decode(r.IdsSpecial!)]);
            Check("decoded oracle ids, special tokens skipped", [r.DecodedSkipSpecial], [tok.Decode(r.IdsSpecial!, skipSpecialTokens: true)]);
        }
        var decodes = TokenizerOracle.GetDecodeResults(name);
        for (var i = 0; i < c.IdLists.Count; i++)
        {
            var ids = c.IdLists[i];
            if (decodes.Decoded[i] != tok.Decode(ids) && failures.Count < 8)
                failures.Add($"id list {i} {Show(ids)}: decoded\n    oracle {Escape(decodes.Decoded[i])}\n    ours   {Escape(tok.Decode(ids))}");
            else if (decodes.Decoded[i] != tok.Decode(ids)) failures.Add("");
            if (decodes.DecodedSkipSpecial[i] != tok.Decode(ids, skipSpecialTokens: true))
                failures.Add(failures.Count < 8 ? $"id list {i} {Show(ids)}: decoded, special tokens skipped\n    oracle {Escape(decodes.DecodedSkipSpecial[i])}\n    ours   {Escape(tok.Decode(ids, skipSpecialTokens: true))}" : "");
        }
        TestContext.Out.WriteLine($"{name}: {c.Texts.Count} texts and {c.IdLists.Count} id lists against {TokenizerOracle.OracleVersion}, {rejected} rejected by the oracle");
        Assert.That(rejected, Is.LessThanOrEqualTo(c.Texts.Count / 100), "the oracle should accept nearly every text");
        Assert.That(failures, Is.Empty, $"{failures.Count} differences from the oracle; the first ones:\n" + string.Join("\n", failures.Take(8)));
    }

    /// <summary>
    /// <c>Encode(text, prependBos)</c> follows TransformerLens's <c>to_tokens</c>: where the post-processor puts BOS
    /// first (Llama 2, Gemma) the text is encoded with special tokens, and without BOS that first token is dropped;
    /// elsewhere TransformerLens writes the BOS text (EOS where there is no BOS: Qwen) before the text and encodes
    /// that, which, the BOS text being an added token matched first, is the BOS id followed by the text's own ids.
    /// Expected values are assembled from the oracle's ids by those rules.
    /// </summary>
    [TestCase("gpt2", "<|endoftext|>")]
    [TestCase("llama2", "<s>")]
    [TestCase("llama3", "<|begin_of_text|>")]
    [TestCase("qwen3", "<|im_end|>")]
    [TestCase("gemma3", "<bos>")]
    public void PrependBosFollowsTransformerLens(string name, string prepended)
    {
        var c = TokenizerOracle.GetCase(name);
        var results = TokenizerOracle.GetResults(name);
        var tok = BpeTokenizer.FromDirectory(c.Dir);
        var bos = tok.TokenToId(prepended)!.Value;
        var templateHasBos = name is "llama2" or "gemma3";
        Assert.That(tok.PrependsBos, Is.EqualTo(templateHasBos), "TransformerLens's tokenizer_prepends_bos: encode(\"\") is not empty");
        for (var i = 0; i < 400; i++)
        {
            var r = results[i];
            int[] with = templateHasBos ? r.IdsSpecial! : [bos, .. r.IdsSpecial!];
            int[] without = templateHasBos ? r.IdsSpecial![1..] : r.IdsSpecial!;
            Assert.That(tok.Encode(c.Texts[i], prependBos: true), Is.EqualTo(with), $"{name} text {i} with BOS");
            Assert.That(tok.Encode(c.Texts[i], prependBos: false), Is.EqualTo(without), $"{name} text {i} without BOS");
        }
    }

    [Test]
    public void CorpusCoversWhatTheComparisonNeeds()
    {
        foreach (var name in TokenizerOracle.RealTokenizers)
        {
            var c = TokenizerOracle.GetCase(name);
            Assert.That(c.Texts, Has.Count.GreaterThanOrEqualTo(2000), name);
            Assert.That(c.Texts, Does.Contain(""), name);
            Assert.That(c.Texts.Any(t => t.Contains('\uD800') && !t.Contains("\uD800\uDC00")), "a lone surrogate");
            Assert.That(c.Texts.Any(t => t.Contains("👨‍👩‍👧‍👦")), "a ZWJ sequence");
            Assert.That(c.Texts.Any(t => t.Any(ch => ch >= 0x4E00 && ch <= 0x9FFF)), "CJK");
            Assert.That(c.Texts.Any(t => t.Any(ch => ch >= 0x600 && ch <= 0x6FF)), "Arabic");
            Assert.That(c.Texts.Any(t => t.Count(char.IsAsciiDigit) >= 100), "a long digit run");
            Assert.That(c.Texts.Any(t => t.Contains("  \t  \n")), "a whitespace run");
            var tok = BpeTokenizer.FromDirectory(c.Dir);
            foreach (var special in tok.AddedTokens.Where(t => t.Special))
                Assert.That(c.Texts.Any(t => t.Contains(special.Content)), $"{name}: special token {special.Content} written in a text");
        }
    }
}
