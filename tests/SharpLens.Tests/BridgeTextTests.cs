using System.Text.Json;
using SharpLens.Tokenization;

namespace SharpLens.Tests;

/// <summary>
/// Text through the bridge: a tiny byte-level tokenizer (256 byte tokens, a few merges, an end-of-text token,
/// all ids below the fixture's vocabulary of 1000) placed in a copy of the tiny GPT-2 and Pythia fixtures.
/// </summary>
[TestFixture("tiny-gpt2", true)]
[TestFixture("tiny-pythia", false)]
public class BridgeTextTests(string model, bool prependsBos)
{
    private string _dir = null!;

    [OneTimeSetUp]
    public void MakeModelWithTokenizer()
    {
        _dir = Directory.CreateTempSubdirectory("sharplens-text").FullName;
        foreach (var f in new[] { "config.json", "model.safetensors" }) File.Copy(Path.Combine(Fixtures.Path(model), f), Path.Combine(_dir, f));
        // GPT-2's byte-to-unicode alphabet: printable ASCII and Latin-1 map to themselves, other bytes to U+0100 on.
        var alphabet = new List<char>();
        var shifted = 0;
        for (var b = 0; b < 256; b++)
        {
            var printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
            alphabet.Add(printable ? (char)b : (char)(256 + shifted++));
        }
        var vocab = new Dictionary<string, int>();
        for (var b = 0; b < 256; b++) vocab[alphabet[b].ToString()] = b;
        string[] merges = ["h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o"];
        foreach (var m in merges) vocab[m.Replace(" ", "")] = vocab.Count;
        vocab["<|endoftext|>"] = vocab.Count;
        File.WriteAllText(Path.Combine(_dir, "vocab.json"), JsonSerializer.Serialize(vocab));
        File.WriteAllLines(Path.Combine(_dir, "merges.txt"), ["#version: 0.2", .. merges]);
    }

    [OneTimeTearDown]
    public void Clean() => Directory.Delete(_dir, recursive: true);

    [Test]
    public void ToTokensUsesTheArchitectureBosDefault()
    {
        using var bridge = TransformerBridge.Load(_dir);
        Assert.That(bridge.HasTokenizer, Is.True);
        using var scope = Torch.NewScope();
        var ids = bridge.ToTokens("hello wo").ToArray<long>();
        // "hello" merges to one token (id 256+3 = 259); " wo" to "Ġwo" (id 261); end-of-text is 262.
        long[] body = [259, 261];
        Assert.That(ids, Is.EqualTo(prependsBos ? new long[] { 262 }.Concat(body).ToArray() : body));
        Assert.That(bridge.ToTokens("hello wo", prependBos: false).ToArray<long>(), Is.EqualTo(body));
        Assert.That(bridge.ToStrTokens("hello wo", prependBos: false), Is.EqualTo(new[] { "hello", " wo" }));
        Assert.That(bridge.TokensToString(bridge.ToTokens("héllo, wörld! 😀", prependBos: false)), Is.EqualTo("héllo, wörld! 😀"));
    }

    [Test]
    public void TextForwardEqualsTokenForward()
    {
        using var bridge = TransformerBridge.Load(_dir);
        using var scope = Torch.NewScope();
        var byText = bridge.Forward("hello world");
        var byIds = bridge.Forward(bridge.ToTokens("hello world"));
        Assert.That((byText - byIds).Abs().Max().ToDouble(), Is.EqualTo(0));
        Assert.That(bridge.Loss("hello world").ToDouble(), Is.EqualTo(bridge.Loss(bridge.ToTokens("hello world")).ToDouble()));
    }

    [TestCase(PaddingSide.Right)]
    [TestCase(PaddingSide.Left)]
    public void PaddedTextBatchGivesEachTextItsOwnLogits(PaddingSide side)
    {
        using var bridge = TransformerBridge.Load(_dir, new BridgeOptions { DType = ScalarType.Float64 });
        using var scope = Torch.NewScope();
        string[] texts = ["hello", "hello world, a longer one"];
        using var batch = bridge.ToTokens(texts, side: side);
        var logits = bridge.Forward(batch.Tokens, batch.AttentionMask);
        for (var i = 0; i < texts.Length; i++)
        {
            var alone = bridge.Forward(texts[i]);
            var n = batch.Lengths[i];
            var start = side == PaddingSide.Left ? logits.Size(1) - n : 0;
            var mine = logits.Narrow(0, i, 1).Narrow(1, start, n);
            Assert.That((mine - alone).Abs().Max().ToDouble(), Is.LessThan(1e-10), $"text {i} padded on the {side}");
        }
    }

    [Test]
    public void ModelWithoutTokenizerSaysWhereItLooked()
    {
        using var bridge = TransformerBridge.Load(Fixtures.Path(model));
        Assert.That(bridge.HasTokenizer, Is.False);
        var ex = Assert.Throws<FileNotFoundException>(() => bridge.ToTokens("hi"));
        Assert.That(ex!.Message, Does.Contain("tokenizer.json").And.Contain("merges.txt"));
    }
}
