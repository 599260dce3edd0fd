using System.Text.Json;
using System.Text.Json.Nodes;
using SharpLens.Adapters;
using SharpLens.Components;
using SharpLens.Tensors.IO;

namespace SharpLens.Tests;

/// <summary>
/// Real checkpoints of the Llama family: sharded and half-precision files, configs with fields SharpLens does not use, rope
/// scaling (each type against its formula from transformers 4.44.2, written out here in float64), and refusals by name.
/// </summary>
public class LlamaFamilyLoadingTests
{
    private string _dir = null!;

    [SetUp]
    public void CreateDir() => _dir = Directory.CreateTempSubdirectory("sharplens-family").FullName;

    [TearDown]
    public void DeleteDir() => Directory.Delete(_dir, recursive: true);

    private string CopyFixture(string model, string name)
    {
        var dir = Path.Combine(_dir, name);
        Directory.CreateDirectory(dir);
        foreach (var f in Directory.GetFiles(Fixtures.Path(model)).Where(f => !f.EndsWith("reference.safetensors") && !f.EndsWith("analysis.safetensors")))
            File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        return dir;
    }

    private static void EditConfig(string dir, Action<JsonObject> edit)
    {
        var path = Path.Combine(dir, "config.json");
        var config = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        edit(config);
        File.WriteAllText(path, config.ToJsonString());
    }

    /// <summary>
    /// The checkpoint split into two bfloat16 shards with an index, as save_pretrained writes large models: loading it into
    /// float32 gives exactly the parameters (and so the logits) of the float32 file rounded to bfloat16 and back.
    /// </summary>
    [TestCase("tiny-llama")]
    [TestCase("tiny-qwen2")]
    [TestCase("tiny-mistral")]
    [TestCase("tiny-gemma")]
    [TestCase("tiny-gemma2")]
    [TestCase("tiny-phi3")]
    public void TwoBfloat16ShardsLoadAsTheRoundedFloat32File(string model)
    {
        var dir = CopyFixture(model, "sharded");
        var single = Path.Combine(dir, "model.safetensors");
        var weightMap = new Dictionary<string, string>();
        using (var scope = Torch.NewScope())
        {
            var tensors = SafeTensors.Load(single);
            var names = tensors.Keys.Order(StringComparer.Ordinal).ToList();
            for (var shard = 0; shard < 2; shard++)
            {
                var file = $"model-{shard + 1:00000}-of-00002.safetensors";
                var part = names.Where((_, i) => i % 2 == shard).ToList();
                SafeTensors.Save(Path.Combine(dir, file), part.Select(n => KeyValuePair.Create(n, tensors[n].To(ScalarType.BFloat16))));
                foreach (var n in part) weightMap[n] = file;
            }
        }
        File.Delete(single);
        File.WriteAllText(Path.Combine(dir, "model.safetensors.index.json"), JsonSerializer.Serialize(new { metadata = new { total_size = 0 }, weight_map = weightMap }));

        using var sharded = TransformerBridge.Load(dir);
        using var original = TransformerBridge.Load(Fixtures.Path(model));
        using var scope2 = Torch.NewScope();
        using (Torch.NoGrad())
            foreach (var (name, p) in original.NamedParameters()) p.CopyFrom(p.To(ScalarType.BFloat16).To(ScalarType.Float32));
        Assert.That(sharded.Parameters().All(p => p.DType == ScalarType.Float32), Is.True, "bfloat16 files load into the asked dtype");
        var tokens = Torch.FromArray(Enumerable.Range(0, 24).Select(i => (long)(i * 37 % 1000)).ToArray(), 2, 12);
        Assert.That(Fixtures.MaxAbsDiff(original.Forward(tokens), sharded.Forward(tokens)), Is.EqualTo(0),
            "the same bfloat16-rounded weights give the same logits, bit for bit");
    }

    [Test]
    public void UnknownConfigFieldsAndGenerationConfigAreIgnored()
    {
        var dir = CopyFixture("tiny-llama", "extra");
        EditConfig(dir, c =>
        {
            c["some_future_field"] = new JsonObject { ["nested"] = 3 };
            c["quantization_hint"] = "none";
        });
        File.WriteAllText(Path.Combine(dir, "generation_config.json"), """{"do_sample": true, "temperature": 0.7, "bos_token_id": 1}""");
        using var bridge = TransformerBridge.Load(dir);
        using var reference = TransformerBridge.Load(Fixtures.Path("tiny-llama"));
        using var scope = Torch.NewScope();
        var tokens = Torch.FromArray(new long[] { 3, 14, 15, 92, 65 }, 1, 5);
        Assert.That(Fixtures.MaxAbsDiff(reference.Forward(tokens), bridge.Forward(tokens)), Is.EqualTo(0));
    }

    [TestCase("tiny-llama", """{"rope_type": "yarn", "factor": 4.0}""", "'yarn'")]
    [TestCase("tiny-mistral", """{"type": "linear", "factor": 2.0}""", "'linear'")]
    [TestCase("tiny-llama", """{"rope_type": "llama3", "factor": 8.0}""", "original_max_position_embeddings")]
    [TestCase("tiny-llama", """{"rope_type": "linear"}""", "'factor'")]
    [TestCase("tiny-phi3", """{"type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}""", "short_factor")]
    public void UnsupportedOrMalformedRopeScalingIsRefusedByName(string model, string ropeScaling, string named)
    {
        var dir = CopyFixture(model, "rope");
        EditConfig(dir, c => c["rope_scaling"] = JsonNode.Parse(ropeScaling));
        var e = Assert.Throws<ModelLoadException>(() => TransformerBridge.Load(dir).Dispose());
        Assert.That(e!.Message, Does.Contain("config.json").And.Contain("rope_scaling").And.Contain(named));
    }

    [Test]
    public void GroupedQueryHeadsThatDoNotDivideAreRefused()
    {
        var dir = CopyFixture("tiny-llama", "gqa");
        EditConfig(dir, c => c["num_key_value_heads"] = 3);
        var e = Assert.Throws<ModelLoadException>(() => TransformerBridge.Load(dir).Dispose());
        Assert.That(e!.Message, Does.Contain("num_key_value_heads 3"));
    }

    // ------------------------------------------------------------------ rope scaling against its formulas

    private static TransformerConfig Rotary(RopeScaling? scaling, int nCtx = 128, int dim = 16, double @base = 10000) => new()
    {
        ModelType = "llama", NLayers = 1, DModel = 64, NHeads = 4, DMlp = 8, DVocab = 10, NCtx = nCtx, ActFn = ActivationFunction.Silu,
        NormEps = 1e-5, Positional = PositionalEmbedding.Rotary, RotaryDim = dim, RotaryBase = @base, RopeScaling = scaling, Float32Islands = true,
    };

    private static double[] InvFreq(TransformerConfig cfg, long seqLen)
    {
        using var f = RotaryTables.InvFreq(cfg, seqLen, Device.CPU);
        return f.To(ScalarType.Float64).ToArray<double>();
    }

    private static double[] Plain(int dim, double @base) => Enumerable.Range(0, dim / 2).Select(i => 1 / Math.Pow(@base, 2.0 * i / dim)).ToArray();

    /// <summary>The tables are float32 (HuggingFace's): equal to the float64 formula to a few float32 roundings.</summary>
    private static void AssertFloat32Close(double[] expected, double[] actual)
    {
        Assert.That(actual, Has.Length.EqualTo(expected.Length));
        for (var i = 0; i < expected.Length; i++)
            Assert.That(actual[i], Is.EqualTo(expected[i]).Within(4e-7 * Math.Abs(expected[i])), $"inv_freq[{i}]");
    }

    [Test]
    public void LinearScalingDividesEveryFrequency() =>
        AssertFloat32Close(Plain(16, 1e4).Select(f => f / 4).ToArray(), InvFreq(Rotary(new RopeScaling { Type = RopeType.Linear, Factor = 4 }), 12));

    [Test]
    public void DynamicScalingGrowsTheBaseOnlyBeyondTheContext()
    {
        var cfg = Rotary(new RopeScaling { Type = RopeType.Dynamic, Factor = 2 }, nCtx: 64);
        AssertFloat32Close(Plain(16, 1e4), InvFreq(cfg, 64));
        var grown = 1e4 * Math.Pow(2.0 * 100 / 64 - 1, 16 / 14.0);  // base · (factor · len / max − (factor − 1))^(dim / (dim − 2))
        AssertFloat32Close(Plain(16, grown), InvFreq(cfg, 100));
    }

    [Test]
    public void Llama3ScalingKeepsHighFrequenciesDividesLowOnesAndInterpolatesBetween()
    {
        var rs = new RopeScaling { Type = RopeType.Llama3, Factor = 8, LowFreqFactor = 1, HighFreqFactor = 4, OriginalMaxPositionEmbeddings = 64 };
        var expected = Plain(16, 1e4).Select(f =>
        {
            var wavelen = 2 * Math.PI / f;
            if (wavelen < 64 / 4.0) return f;        // high frequency: kept
            if (wavelen > 64 / 1.0) return f / 8;    // low frequency: divided by the factor
            var smooth = (64 / wavelen - 1) / (4 - 1.0);
            return (1 - smooth) * f / 8 + smooth * f;
        }).ToArray();
        Assert.That(expected.Distinct().Count(), Is.EqualTo(8));
        Assert.That(expected.Count(f => 2 * Math.PI / f is > 16 and < 64), Is.GreaterThan(0), "the test covers the interpolated band");
        AssertFloat32Close(expected, InvFreq(Rotary(rs), 12));
    }

    [Test]
    public void LongRopeUsesShortThenLongFactorsAndScalesCosAndSin()
    {
        double[] shortF = [1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5], longF = [2, 3, 4, 5, 6, 7, 8, 9];
        var rs = new RopeScaling { Type = RopeType.LongRope, ShortFactor = shortF, LongFactor = longF, OriginalMaxPositionEmbeddings = 32 };
        var cfg = Rotary(rs, nCtx: 128);
        var plain = Plain(16, 1e4);
        AssertFloat32Close(plain.Select((f, i) => f / shortF[i]).ToArray(), InvFreq(cfg, 32));
        AssertFloat32Close(plain.Select((f, i) => f / longF[i]).ToArray(), InvFreq(cfg, 33));
        var factor = Math.Sqrt(1 + Math.Log(128.0 / 32) / Math.Log(32));
        Assert.That(RotaryTables.AttentionFactor(cfg), Is.EqualTo(factor).Within(1e-15));
        using var scope = Torch.NewScope();
        var table = RotaryTables.Table(cfg, Torch.Arange(5).Unsqueeze(0), shared: true).To(ScalarType.Float64).ToArray<double>();  // [5, 2, 8]
        for (var p = 0; p < 5; p++)
            for (var i = 0; i < 8; i++)
            {
                var angle = p * plain[i] / shortF[i];
                Assert.That(table[(p * 2 + 0) * 8 + i], Is.EqualTo(Math.Cos(angle) * factor).Within(1e-6), $"cos at {p}, {i}");
                Assert.That(table[(p * 2 + 1) * 8 + i], Is.EqualTo(Math.Sin(angle) * factor).Within(1e-6), $"sin at {p}, {i}");
            }
    }
}
