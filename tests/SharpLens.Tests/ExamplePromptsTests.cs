using System.Text.Json;
using System.Text.RegularExpressions;
using SharpLens.Cli;
using SharpLens.Loading;
using SharpLens.Sweeps;

namespace SharpLens.Tests;

/// <summary>
/// The prompt files shipped in examples/ (see examples/README.md): IOI pairs as GPT-2 text, and the same sentences as
/// token ids of a made-up word-level vocabulary for the tiny fixtures. Ground truth is each line's sentence: the ids
/// are re-derived from it here, the GPT-2 file is read with GPT-2's real vocabulary (fetched like the tokenizer
/// tests'), and `lens sweep` runs on the ids file as README.md shows.
/// </summary>
public class ExamplePromptsTests
{
    private static string Examples => Path.Combine(Fixtures.RepoRoot, "examples");
    private static string IdsFile => Path.Combine(Examples, "prompts.jsonl");
    private static string TextFile => Path.Combine(Examples, "ioi-gpt2.jsonl");

    private static List<JsonElement> Lines(string path) =>
        File.ReadAllLines(path).Where(l => !string.IsNullOrWhiteSpace(l)).Select(l => JsonDocument.Parse(l).RootElement.Clone()).ToList();

    private static long[] Ids(JsonElement line, string key) => line.GetProperty(key).EnumerateArray().Select(e => e.GetInt64()).ToArray();

    [Test]
    public void IdsAreTheWordVocabularyEncodingOfEachSentenceAndFormIoiPairs()
    {
        var lines = Lines(IdsFile);
        Assert.That(lines, Has.Count.EqualTo(12));
        // The vocabulary examples/README.md describes: words and , . numbered from 1 in order of first appearance.
        var vocabulary = new Dictionary<string, long>();
        long[] Encode(string text) => Regex.Matches(text, "[A-Za-z]+|[,.]")
            .Select(m => vocabulary.TryGetValue(m.Value, out var id) ? id : vocabulary[m.Value] = vocabulary.Count + 1).ToArray();
        foreach (var (line, i) in lines.Select((l, i) => (l, i)))
        {
            var sentence = line.GetProperty("sentence").GetString()!;
            var clean = Ids(line, "clean");
            var corrupted = Ids(line, "corrupted");
            var (answer, wrong) = (line.GetProperty("answer").GetInt64(), line.GetProperty("wrong").GetInt64());
            Assert.That(clean, Is.EqualTo(Encode(sentence)), $"line {i + 1}: clean is the sentence's encoding");
            // IOI: the indirect object (answer) once and the subject (wrong) twice in the clean prompt; the corrupted one
            // differs only at the subject's second mention, which becomes the indirect object.
            Assert.That(clean.Count(t => t == answer), Is.EqualTo(1), $"line {i + 1}: the answer once");
            Assert.That(clean.Count(t => t == wrong), Is.EqualTo(2), $"line {i + 1}: the subject twice");
            var differ = Enumerable.Range(0, clean.Length).Where(p => clean[p] != corrupted[p]).ToList();
            Assert.That(corrupted, Has.Length.EqualTo(clean.Length), $"line {i + 1}");
            Assert.That(differ, Has.Count.EqualTo(1), $"line {i + 1}: one position differs");
            Assert.That(differ[0], Is.EqualTo(Array.LastIndexOf(clean, wrong)), $"line {i + 1}: the subject's second mention");
            Assert.That(corrupted[differ[0]], Is.EqualTo(answer), $"line {i + 1}");
        }
        Assert.That(vocabulary.Values.Max(), Is.LessThan(1000), "ids fit the tiny fixtures' vocabulary of 1000");
    }

    [Test]
    public void Gpt2FileHasTheSameSentencesAndEveryPairIsValidForGpt2()
    {
        var ids = Lines(IdsFile);
        var text = Lines(TextFile);
        Assert.That(text.Select(l => l.GetProperty("clean").GetString()), Is.EqualTo(ids.Select(l => l.GetProperty("sentence").GetString())));

        var tokenizer = TokenizerTests.Gpt2();  // ignores the test when GPT-2's vocabulary cannot be fetched
        // GPT-2 small's config.json (the values of HuggingFace's gpt2): the reader needs its vocabulary and context.
        var dir = Directory.CreateTempSubdirectory("sharplens-gpt2-config").FullName;
        try
        {
            File.WriteAllText(Path.Combine(dir, "config.json"), """
                {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 50257, "n_positions": 1024, "n_embd": 768,
                 "n_layer": 12, "n_head": 12, "n_inner": null, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-05,
                 "bos_token_id": 50256, "eos_token_id": 50256}
                """);
            var (config, _) = ModelLoader.ReadConfig(dir);
            var file = PromptFileReader.Read(TextFile, config, tokenizer, prependBos: true);
            Assert.That(file.Errors, Is.Empty, string.Join("\n", file.Errors));
            Assert.That(file.Pairs, Has.Count.EqualTo(text.Count));
            foreach (var (pair, line) in file.Pairs.Zip(text))
            {
                Assert.That(pair.Answer, Is.EqualTo(tokenizer.Encode(line.GetProperty("answer").GetString()!).Single()));
                Assert.That(pair.Clean[0], Is.EqualTo(50256), "BOS");
                Assert.That(pair.Clean.Zip(pair.Corrupted).Count(p => p.First != p.Second), Is.EqualTo(1), "one token differs");
            }
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [TestCase("tiny-gpt2")]
    [TestCase("tiny-pythia")]
    public void LensSweepRunsOnTheIdsFile(string model)
    {
        var outDir = Path.Combine(Path.GetTempPath(), "sharplens-example-sweep-" + Guid.NewGuid().ToString("N"));
        try
        {
            var o = new StringWriter();
            var e = new StringWriter();
            var code = Program.Run(["sweep", Fixtures.Path(model), "--prompts", IdsFile, "--out", outDir, "--on-error", "fail"], o, e);
            Assert.That(code, Is.EqualTo(0), e.ToString());
            var rows = File.ReadAllLines(Path.Combine(outDir, "summary.csv")).Skip(1).Select(l => l.Split(',')).ToList();
            Assert.That(rows.Select(r => r[1]), Is.EqualTo(Enumerable.Range(1, 12).Select(i => i.ToString())), "one row per line, in order");

            // The file's metric for line 1 is the model's logit difference at the last position.
            var first = Lines(IdsFile)[0];
            using var bridge = TransformerBridge.Load(Fixtures.Path(model));
            using var scope = Torch.NewScope();
            var clean = Ids(first, "clean");
            var logits = bridge.Forward(Torch.FromArray(clean, 1, clean.Length));
            var expected = logits[0, ^1, first.GetProperty("answer").GetInt64()].ToDouble() - logits[0, ^1, first.GetProperty("wrong").GetInt64()].ToDouble();
            // The sweep runs the pairs in padded batches: the last real position's math is the same, but float32 matmuls of
            // other shapes may block differently; logits of order 1 from 64-term dot products differ by about 64 * 6e-8.
            Assert.That(double.Parse(rows[0][3], System.Globalization.CultureInfo.InvariantCulture), Is.EqualTo(expected).Within(1e-5));
        }
        finally
        {
            if (Directory.Exists(outDir)) Directory.Delete(outDir, recursive: true);
        }
    }
}
