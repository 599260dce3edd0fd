using SharpLens.Testing;
using SharpLens.Cli;
using SharpLens.Generation;
using SharpLens.Tokenization;

namespace SharpLens.Tests;

/// <summary>
/// <see cref="TextGenerator"/>: greedy decoding against an independent loop over <c>Forward</c> + <c>Argmax</c>,
/// HuggingFace's top-k / top-p filtering on hand-made distributions, seeded reproducibility, hooks firing on
/// every step, argument checks, the text overload and <c>lens generate</c>.
/// </summary>
public class GenerationTests
{
    private TransformerBridge _bridge = null!;
    private string _tmp = null!;

    [OneTimeSetUp]
    public void Load()
    {
        _bridge = TransformerBridge.Load(Fixtures.Path("tiny-gpt2"));
        _tmp = Path.Combine(Path.GetTempPath(), "sharplens-generation-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(_tmp);
    }

    [OneTimeTearDown]
    public void Free()
    {
        _bridge.Dispose();
        if (Directory.Exists(_tmp)) Directory.Delete(_tmp, recursive: true);
    }

    private static Tensor Prompt(params long[] ids) => Torch.FromArray(ids, 1, ids.Length);

    private static long[] Ids(Tensor t) => t.ToArray<long>();

    private static readonly long[] PromptIds = [17, 401, 5, 993, 250];

    /// <summary>Greedy continuation computed here, independently: full forward each step, argmax of the last position.</summary>
    private long[] ReferenceGreedy(long[] prompt, int steps)
    {
        var ids = prompt.ToList();
        for (var i = 0; i < steps; i++)
        {
            using var scope = Torch.NewScope();
            var logits = _bridge.Forward(Torch.FromArray(ids.ToArray(), 1, ids.Count));
            ids.Add(logits[0, ^1].Argmax().ToInt64());
        }
        return [.. ids];
    }

    [Test]
    public void GreedyEqualsAnIndependentArgmaxLoop()
    {
        using var scope = Torch.NewScope();
        var output = _bridge.Generate(Prompt(PromptIds), 15, temperature: 0);
        Assert.That(output.Shape, Is.EqualTo(new long[] { 1, PromptIds.Length + 15 }));
        Assert.That(output.DType, Is.EqualTo(ScalarType.Int64));
        Assert.That(Ids(output), Is.EqualTo(ReferenceGreedy(PromptIds, 15)));
    }

    [Test]
    public void TopKOfOneSamplesTheGreedyToken()
    {
        using var scope = Torch.NewScope();
        var greedy = Ids(_bridge.Generate(Prompt(PromptIds), 12, temperature: 0));
        foreach (var seed in new ulong[] { 1, 2, 3 })
            Assert.That(Ids(_bridge.Generate(Prompt(PromptIds), 12, temperature: 1.0, topK: 1, seed: seed)), Is.EqualTo(greedy), $"seed {seed}");
    }

    [Test]
    public void SameSeedSameTokensOtherSeedOtherTokens()
    {
        using var scope = Torch.NewScope();
        var a = Ids(_bridge.Generate(Prompt(PromptIds), 20, temperature: 1.0, seed: 42));
        var b = Ids(_bridge.Generate(Prompt(PromptIds), 20, temperature: 1.0, seed: 42));
        var c = Ids(_bridge.Generate(Prompt(PromptIds), 20, temperature: 1.0, seed: 43));
        Assert.That(b, Is.EqualTo(a));
        Assert.That(c, Is.Not.EqualTo(a));
        Assert.That(a.Take(PromptIds.Length), Is.EqualTo(PromptIds), "the prompt comes first");
        // A random tiny model is close to uniform over 1000 tokens: sampling must not collapse onto the argmax.
        Assert.That(a.Skip(PromptIds.Length), Is.Not.EqualTo(ReferenceGreedy(PromptIds, 20).Skip(PromptIds.Length)));
    }

    [Test]
    public void TopPKeepsTheSmallestSetReachingP()
    {
        double[] probs = [0.05, 0.4, 0.1, 0.3, 0.15];
        var logits = probs.Select(p => Math.Log(p)).ToArray();
        int[] Kept(double p) => TextGenerator.FilterLogits(logits, 1.0, topP: p).Select((x, i) => (x, i)).Where(t => !double.IsNegativeInfinity(t.x)).Select(t => t.i).ToArray();

        Assert.That(Kept(0.35), Is.EqualTo(new[] { 1 }), "0.4 alone reaches 0.35");
        Assert.That(Kept(0.6), Is.EqualTo(new[] { 1, 3 }), "0.4 + 0.3 = 0.7 is the first to reach 0.6");
        Assert.That(Kept(0.75), Is.EqualTo(new[] { 1, 3, 4 }), "0.4 + 0.3 + 0.15 = 0.85");
        Assert.That(Kept(0.96), Is.EqualTo(new[] { 0, 1, 2, 3, 4 }), "only all five reach 0.96");
        Assert.That(Kept(1.0), Is.EqualTo(new[] { 0, 1, 2, 3, 4 }));
        Assert.That(Kept(1e-9), Is.EqualTo(new[] { 1 }), "the most likely token always stays");

        var renormalised = TextGenerator.SamplingProbabilities(logits, 1.0, topP: 0.6);
        Assert.That(renormalised[1], Is.EqualTo(0.4 / 0.7).Within(1e-12));
        Assert.That(renormalised[3], Is.EqualTo(0.3 / 0.7).Within(1e-12));
        Assert.That(renormalised[0] + renormalised[2] + renormalised[4], Is.EqualTo(0));
    }

    [Test]
    public void TopKKeepsTiesAndRunsBeforeTopP()
    {
        double[] logits = [1.0, 3.0, 2.0, 3.0, 0.5];
        var k2 = TextGenerator.FilterLogits(logits, 1.0, topK: 2);
        Assert.That(k2.Select(x => double.IsNegativeInfinity(x)), Is.EqualTo(new[] { true, false, true, false, true }));
        var k3 = TextGenerator.FilterLogits(logits, 1.0, topK: 3);
        Assert.That(k3.Count(x => !double.IsNegativeInfinity(x)), Is.EqualTo(3));

        // top-k = 3 leaves {3, 3, 2}: probabilities e^3, e^3, e^2 over their sum, about 0.42, 0.42, 0.16. Top-p 0.8
        // is then reached by the two 3s; applied to the unfiltered distribution it would need the 2 as well.
        var both = TextGenerator.FilterLogits(logits, 1.0, topK: 3, topP: 0.8);
        Assert.That(both.Select(x => !double.IsNegativeInfinity(x)), Is.EqualTo(new[] { false, true, false, true, false }));

        // Temperature divides the logits first.
        Assert.That(TextGenerator.FilterLogits(logits, 2.0), Is.EqualTo(logits.Select(x => x / 2).ToArray()));
    }

    [Test]
    public void BadArgumentsThrowOutOfRangeWithAMessage()
    {
        using var scope = Torch.NewScope();
        var prompt = Prompt(PromptIds);
        void Check(TestDelegate call, string param)
        {
            var e = Assert.Throws<ArgumentOutOfRangeException>(call)!;
            Assert.That(e.ParamName, Is.EqualTo(param));
            Assert.That(e.Message, Is.Not.Empty);
        }
        Check(() => _bridge.Generate(prompt, -1), "maxNewTokens");
        Check(() => _bridge.Generate(prompt, 5, topK: 0), "topK");
        Check(() => _bridge.Generate(prompt, 5, topK: -3), "topK");
        Check(() => _bridge.Generate(prompt, 5, topP: 0), "topP");
        Check(() => _bridge.Generate(prompt, 5, topP: 1.5), "topP");
        Check(() => _bridge.Generate(prompt, 5, topP: -0.1), "topP");
        Check(() => _bridge.Generate(prompt, 5, topP: double.NaN), "topP");
        Check(() => _bridge.Generate(prompt, 5, temperature: -1), "temperature");
        Check(() => _bridge.Generate(prompt, 5, temperature: double.NaN), "temperature");
        Check(() => _bridge.Generate(prompt, 5, stopTokenId: 1000), "stopTokenId");
        Check(() => _bridge.Generate(prompt, _bridge.Config.NCtx), "maxNewTokens");
        Assert.That(Assert.Throws<ArgumentOutOfRangeException>(() => _bridge.Generate(prompt, 5, topP: 1.5))!.Message, Does.Contain("(0, 1]"));
        Assert.Throws<ArgumentException>(() => _bridge.Generate(Torch.FromArray(new long[] { 1, 2, 3, 4 }, 2, 2), 3));
        Assert.Throws<ArgumentException>(() => _bridge.Generate(Torch.FromArray(new[] { 1f, 2f }, 1, 2), 3));
        Assert.That(Ids(_bridge.Generate(prompt, 0)), Is.EqualTo(PromptIds), "zero new tokens returns the prompt");
    }

    [Test]
    public void HooksFireOnEveryStep()
    {
        using var scope = Torch.NewScope();
        var shapes = new List<long[]>();
        using (_bridge.AddHook("hook_embed", (a, _) => { shapes.Add(a.Shape); return null; }))
            _bridge.Generate(Prompt(PromptIds), 7, temperature: 0, useKeyValueCache: false);
        Assert.That(shapes, Has.Count.EqualTo(7), "one forward pass per generated token");
        for (var i = 0; i < shapes.Count; i++)
            Assert.That(shapes[i], Is.EqualTo(new long[] { 1, PromptIds.Length + i, _bridge.Config.DModel }), "each step reruns the whole sequence");
        // With the key/value cache (the default) the first step runs the prompt, every later one only the new position.
        shapes.Clear();
        using (_bridge.AddHook("hook_embed", (a, _) => { shapes.Add(a.Shape); return null; }))
            _bridge.Generate(Prompt(PromptIds), 7, temperature: 0);
        Assert.That(shapes, Has.Count.EqualTo(7));
        Assert.That(shapes[0], Is.EqualTo(new long[] { 1, PromptIds.Length, _bridge.Config.DModel }));
        for (var i = 1; i < shapes.Count; i++) Assert.That(shapes[i], Is.EqualTo(new long[] { 1, 1, _bridge.Config.DModel }), $"step {i}");
    }

    [Test]
    public void AReplacingHookChangesTheGeneratedTokens()
    {
        using var scope = Torch.NewScope();
        var plain = Ids(_bridge.Generate(Prompt(PromptIds), 8, temperature: 0));
        Assert.That(plain.Skip(PromptIds.Length), Has.Some.Not.EqualTo(0L), "the test needs an unhooked continuation that is not all zeros");

        // Zeroing the final LayerNorm's output makes every logit 0 (GPT-2 has no unembedding bias): argmax is token 0.
        long[] hooked;
        using (_bridge.AddHook("ln_final.hook_normalized", (a, _) => a * 0.0))
            hooked = Ids(_bridge.Generate(Prompt(PromptIds), 8, temperature: 0));
        Assert.That(hooked.Skip(PromptIds.Length), Is.All.EqualTo(0L));

        // A subtler intervention: add a fixed direction to the residual stream of the last block.
        using (var gen = new Generator(7))
        {
            var direction = Torch.Randn([_bridge.Config.DModel], gen) * 5.0;
            using (_bridge.AddHook("blocks.1.hook_resid_post", (a, _) => a + direction))
                hooked = Ids(_bridge.Generate(Prompt(PromptIds), 8, temperature: 0));
        }
        Assert.That(hooked, Is.Not.EqualTo(plain));
        Assert.That(Ids(_bridge.Generate(Prompt(PromptIds), 8, temperature: 0)), Is.EqualTo(plain), "removed hooks no longer act");
    }

    [Test]
    public void GenerationLeavesNoTensorBehind()
    {
        var live = LiveTensorCount.Settled();
        using (Torch.NewScope()) _bridge.Generate(Prompt(PromptIds), 5, temperature: 0.8, topK: 20, topP: 0.9, seed: 1);
        using (var prompt = Prompt(PromptIds))
        using (var output = _bridge.Generate(prompt, 5, temperature: 0)) Assert.That(output.Size(1), Is.EqualTo(PromptIds.Length + 5));
        Assert.That(Torch.LiveTensors, Is.LessThanOrEqualTo(live));
    }

    [Test]
    public void StopsAfterTheStopToken()
    {
        using var scope = Torch.NewScope();
        var full = Ids(_bridge.Generate(Prompt(PromptIds), 10, temperature: 0));
        var stop = full[PromptIds.Length + 2];
        var firstAt = Array.IndexOf(full, stop, PromptIds.Length);
        var stopped = Ids(_bridge.Generate(Prompt(PromptIds), 10, temperature: 0, stopTokenId: (int)stop));
        Assert.That(stopped, Is.EqualTo(full.Take(firstAt + 1).ToArray()), "the stop token is kept and nothing follows it");
    }

    [Test]
    public void BackwardHooksDoNotBreakGeneration()
    {
        using var scope = Torch.NewScope();
        var plain = Ids(_bridge.Generate(Prompt(PromptIds), 4, temperature: 0));
        using (_bridge.AddBackwardHook("blocks.0.hook_resid_pre", (g, _) => null))
            Assert.That(Ids(_bridge.Generate(Prompt(PromptIds), 4, temperature: 0)), Is.EqualTo(plain));
    }

    // ------------------------------------------------------------------ text

    /// <summary>tiny-gpt2's weights with a byte-level tokenizer whose ids fit its 1000-token vocabulary.</summary>
    internal static string ModelWithTokenizer(string root)
    {
        var dir = Path.Combine(root, "tiny-gpt2-with-tokenizer");
        if (Directory.Exists(dir)) return dir;
        Directory.CreateDirectory(dir);
        foreach (var f in new[] { "config.json", "model.safetensors" }) File.Copy(Path.Combine(Fixtures.Path("tiny-gpt2"), f), Path.Combine(dir, f));
        var vocab = new Dictionary<string, int>();
        for (var b = 0; b < 256; b++) vocab[ByteLevelAlphabet.ByteToChar[b].ToString()] = b;
        vocab["Ġa"] = 256;
        vocab["Ġb"] = 257;
        vocab["<|endoftext|>"] = 999;
        File.WriteAllText(Path.Combine(dir, "vocab.json"), System.Text.Json.JsonSerializer.Serialize(vocab));
        File.WriteAllText(Path.Combine(dir, "merges.txt"), "#version: 0.2\nĠ a\nĠ b\n");
        return dir;
    }

    [Test]
    public void TextOverloadEncodesGeneratesAndDecodes()
    {
        var dir = ModelWithTokenizer(_tmp);
        var tokenizer = BpeTokenizer.FromDirectory(dir);
        using var scope = Torch.NewScope();
        var ids = tokenizer.Encode("hi there").Select(i => (long)i).ToArray();
        var expected = _bridge.Generate(Prompt(ids), 6, temperature: 0).ToArray<long>().Skip(ids.Length).Select(i => (int)i);
        var text = _bridge.Generate(tokenizer, "hi there", 6, temperature: 0);
        Assert.That(text, Is.EqualTo("hi there" + tokenizer.Decode(expected)));
    }

    // ------------------------------------------------------------------ CLI

    private static (int Code, string Out, string Err) Lens(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        var code = Program.Run(args, o, e);
        return (code, o.ToString(), e.ToString());
    }

    [Test]
    public void CliGeneratePrintsTokensAndText()
    {
        var greedy = ReferenceGreedy(PromptIds, 5);
        var r = Lens("generate", Fixtures.Path("tiny-gpt2"), "--tokens", string.Join(",", PromptIds), "--max-new-tokens", "5", "--temperature", "0");
        Assert.That(r.Code, Is.EqualTo(0), r.Err);
        Assert.That(r.Out, Does.Contain("tokens: " + string.Join(",", greedy)));
        Assert.That(r.Out, Does.Contain("new_tokens: " + string.Join(",", greedy.Skip(PromptIds.Length))));
        Assert.That(r.Out, Does.Not.Contain("text:"), "tiny-gpt2 has no tokenizer");

        var s1 = Lens("generate", Fixtures.Path("tiny-gpt2"), "--tokens", "1,2,3", "--max-new-tokens", "10", "--seed", "9", "--top-k", "50", "--top-p", "0.9");
        var s2 = Lens("generate", Fixtures.Path("tiny-gpt2"), "--tokens", "1,2,3", "--max-new-tokens", "10", "--seed", "9", "--top-k", "50", "--top-p", "0.9");
        Assert.That(s1.Code, Is.EqualTo(0), s1.Err);
        Assert.That(s2.Out, Is.EqualTo(s1.Out));

        var dir = ModelWithTokenizer(_tmp);
        var t = Lens("generate", dir, "--text", "hi there", "--max-new-tokens", "4", "--temperature", "0");
        Assert.That(t.Code, Is.EqualTo(0), t.Err);
        Assert.That(t.Out, Does.Contain("text: hi there"));
    }

    [Test]
    public void CliGenerateRejectsBadArguments()
    {
        var model = Fixtures.Path("tiny-gpt2");
        foreach (var (args, expected) in new (string[], string)[]
                 {
                     (["--tokens", "1,2", "--max-new-tokens", "-1"], "--max-new-tokens"),
                     (["--tokens", "1,2", "--max-new-tokens", "3", "--top-k", "0"], "--top-k"),
                     (["--tokens", "1,2", "--max-new-tokens", "3", "--top-p", "1.5"], "--top-p"),
                     (["--tokens", "1,x", "--max-new-tokens", "3"], "'x'"),
                     (["--tokens", "1,5000", "--max-new-tokens", "3"], "5000"),
                     (["--max-new-tokens", "3"], "--text"),
                     (["--text", "hi", "--max-new-tokens", "3"], "tokenizer"),
                 })
        {
            var r = Lens(["generate", model, .. args]);
            Assert.That(r.Code, Is.EqualTo(1), string.Join(" ", args) + "\n" + r.Err);
            Assert.That(r.Err, Does.Contain(expected), string.Join(" ", args));
        }
    }
}
