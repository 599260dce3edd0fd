using System.Text;
using System.Text.Json;

namespace SharpLens.Tests;

/// <summary>
/// <c>lens tokenize</c> end to end. Ground truth: the oracle's ids, token strings and decoded texts
/// (HuggingFace's tokenizers, see <see cref="TokenizerOracle"/>) for the real tokenizers' corpus texts, which
/// include lone surrogates escaped in the JSON input and special tokens written in the text.
/// </summary>
[TestFixture]
[NonParallelizable]
public class CliTokenizeTests : CliTestBase
{
    /// <summary>The first 300 corpus texts and the special-token texts after them (the last 300 of the case).</summary>
    private static List<int> Sample(TokenizerOracle.Case c) =>
        Enumerable.Range(0, 300).Concat(Enumerable.Range(Math.Max(300, c.Texts.Count - 300), Math.Min(300, c.Texts.Count - 300))).ToList();

    private string WriteLines(string name, IEnumerable<string> jsonLines)
    {
        var path = TempPath(name);
        File.WriteAllText(path, string.Join("\n", jsonLines) + "\n");
        return path;
    }

    private static string TextLine(string text)
    {
        var sb = new StringBuilder("{\"text\": ");
        TokenizerCorpus.WriteJsonString(sb, text);   // lone surrogates stay escaped, as a JavaScript or Python writer leaves them
        return sb.Append('}').ToString();
    }

    private static List<JsonElement> ReadLines(string path) =>
        File.ReadLines(path).Select(l => JsonDocument.Parse(l).RootElement.Clone()).ToList();

    [TestCase("gpt2")]
    [TestCase("llama2")]
    [TestCase("qwen3")]
    public void EncodeMatchesTheOracle(string name)
    {
        var c = TokenizerOracle.GetCase(name);
        var results = TokenizerOracle.GetResults(name);
        var sample = Sample(c);
        var input = WriteLines($"{name}-in.jsonl", sample.Select(i => TextLine(c.Texts[i])));

        foreach (var special in new[] { true, false })
        {
            var output = TempPath($"{name}-out-{special}.jsonl");
            string[] args = special ? ["tokenize", c.Dir, "--input", input, "--out", output]
                : ["tokenize", c.Dir, "--input", input, "--out", output, "--add-special-tokens", "false"];
            var r = Lens(args);
            AssertSuccess(r);
            Assert.That(r.Out, Does.Contain($"encoded {sample.Count} lines"));
            var lines = ReadLines(output);
            Assert.That(lines, Has.Count.EqualTo(sample.Count));
            for (var k = 0; k < sample.Count; k++)
            {
                var expected = results[sample[k]];
                var ids = lines[k].GetProperty("ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
                var tokens = lines[k].GetProperty("tokens").EnumerateArray().Select(e => e.GetString()).ToArray();
                Assert.That(ids, Is.EqualTo(special ? expected.IdsSpecial : expected.Ids), $"{name} text {sample[k]}, special tokens {special}: ids");
                Assert.That(tokens, Is.EqualTo(special ? expected.TokensSpecial : expected.Tokens), $"{name} text {sample[k]}, special tokens {special}: tokens");
            }
        }
    }

    [TestCase("llama2")]
    [TestCase("gemma3")]
    public void DecodeMatchesTheOracle(string name)
    {
        var c = TokenizerOracle.GetCase(name);
        var results = TokenizerOracle.GetResults(name);
        var sample = Sample(c);
        var input = WriteLines($"{name}-ids.jsonl", sample.Select(i => "{\"ids\": [" + string.Join(", ", results[i].IdsSpecial!) + "]}"));
        var output = TempPath($"{name}-text.jsonl");
        AssertSuccess(Lens("tokenize", c.Dir, "--input", input, "--out", output, "--decode"));
        var lines = ReadLines(output);
        Assert.That(lines, Has.Count.EqualTo(sample.Count));
        for (var k = 0; k < sample.Count; k++)
            Assert.That(lines[k].GetProperty("text").GetString(), Is.EqualTo(results[sample[k]].Decoded), $"{name} text {sample[k]}");
    }

    [Test]
    public void BadInputIsAUserErrorNamingTheFileAndLine()
    {
        var dir = TokenizerOracle.ModelDir("gpt2");
        var output = TempPath("bad-out.jsonl");

        var notJson = WriteLines("not-json.jsonl", ["{\"text\": \"fine\"}", "{\"text\": oops}"]);
        var r = Lens("tokenize", dir, "--input", notJson, "--out", output);
        Assert.That(r.ExitCode, Is.EqualTo(1), r.Error);
        Assert.That(r.Error, Does.Contain(notJson + ":2").And.Contain("not valid JSON"));
        Assert.That(File.Exists(output), Is.False, "no partial output");

        var noText = WriteLines("no-text.jsonl", ["{\"txt\": \"a\"}"]);
        r = Lens("tokenize", dir, "--input", noText, "--out", output);
        Assert.That(r.ExitCode, Is.EqualTo(1));
        Assert.That(r.Error, Does.Contain(noText + ":1").And.Contain("\"text\""));

        var negative = WriteLines("negative.jsonl", ["{\"ids\": [1, -2]}"]);
        r = Lens("tokenize", dir, "--input", negative, "--out", output, "--decode");
        Assert.That(r.ExitCode, Is.EqualTo(1));
        Assert.That(r.Error, Does.Contain(negative + ":1").And.Contain("-2"));

        var blank = WriteLines("blank.jsonl", ["{\"text\": \"a\"}", "", "{\"text\": \"b\"}"]);
        r = Lens("tokenize", dir, "--input", blank, "--out", output);
        Assert.That(r.ExitCode, Is.EqualTo(1));
        Assert.That(r.Error, Does.Contain(blank + ":2").And.Contain("empty line"));

        r = Lens("tokenize", dir, "--input", TempPath("missing.jsonl"), "--out", output);
        Assert.That(r.ExitCode, Is.EqualTo(1));
        Assert.That(r.Error, Does.Contain("missing.jsonl").And.Contain("does not exist"));

        r = Lens("tokenize", dir, "--input", noText, "--out", output, "--add-special-tokens", "maybe");
        Assert.That(r.ExitCode, Is.EqualTo(1));
    }

    [Test]
    public void BadTokenizerFolderIsAUserError()
    {
        var input = WriteLines("in.jsonl", ["{\"text\": \"a\"}"]);
        var empty = Path.Combine(TempDir, "no-tokenizer");
        Directory.CreateDirectory(empty);
        var r = Lens("tokenize", empty, "--input", input, "--out", TempPath("o.jsonl"));
        Assert.That(r.ExitCode, Is.EqualTo(1));
        Assert.That(r.Error, Does.Contain(empty).And.Contain("tokenizer.json"));

        var broken = Path.Combine(TempDir, "broken-tokenizer");
        Directory.CreateDirectory(broken);
        File.WriteAllText(Path.Combine(broken, "tokenizer.json"), "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [");
        r = Lens("tokenize", broken, "--input", input, "--out", TempPath("o.jsonl"));
        Assert.That(r.ExitCode, Is.EqualTo(1));
        Assert.That(r.Error, Does.Contain(Path.Combine(broken, "tokenizer.json")).And.Contain("not valid JSON"));
    }
}
