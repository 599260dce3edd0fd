using SharpLens.Testing;
using System.Text.Json;
using System.Text.Json.Nodes;
using SharpLens.Adapters;
using SharpLens.Loading;
using SharpLens.Tensors.IO;

namespace SharpLens.Tests;

/// <summary>
/// Loading faults: each test copies a fixture model into a fresh temporary directory, breaks exactly one
/// thing, and checks that loading fails with an error naming the file, the tensor or field, and what was
/// expected (and that a failed load leaks no tensor). Also: a sharded checkpoint loads to the same model.
/// </summary>
public class ModelLoadingTests
{
    private const string Gpt2 = "tiny-gpt2";
    private const string Pythia = "tiny-pythia";
    private const string Shard1 = "model-00001-of-00002.safetensors";
    private const string Shard2 = "model-00002-of-00002.safetensors";

    private string _dir = null!;

    [SetUp]
    public void MakeTempDir()
    {
        _dir = Path.Combine(Path.GetTempPath(), "sharplens-loading-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(_dir);
    }

    [TearDown]
    public void RemoveTempDir()
    {
        try
        {
            Directory.Delete(_dir, recursive: true);
        }
        catch (IOException)
        {
            // a leftover temp directory must not fail the test
        }
    }

    // ------------------------------------------------------------------ helpers

    private string ConfigPath => Path.Combine(_dir, ModelLoader.ConfigFile);
    private string CheckpointPath => Path.Combine(_dir, ModelLoader.SafetensorsFile);
    private string IndexPath => Path.Combine(_dir, ModelLoader.IndexFile);

    /// <summary>Copies config.json and model.safetensors of a fixture into the temp directory.</summary>
    private string CopyFixture(string model)
    {
        foreach (var f in new[] { ModelLoader.ConfigFile, ModelLoader.SafetensorsFile })
            File.Copy(Path.Combine(Fixtures.Path(model), f), Path.Combine(_dir, f));
        return _dir;
    }

    private void EditConfig(Action<JsonObject> edit)
    {
        var node = JsonNode.Parse(File.ReadAllText(ConfigPath))!.AsObject();
        edit(node);
        File.WriteAllText(ConfigPath, node.ToJsonString());
    }

    /// <summary>Loads a safetensors file, lets <paramref name="edit"/> change the tensors, and writes it back (or to <paramref name="target"/>).</summary>
    private static void EditCheckpoint(string path, Action<Dictionary<string, Tensor>> edit, string? target = null)
    {
        using var scope = Torch.NewScope();
        var tensors = SafeTensors.Load(path);
        foreach (var t in tensors.Values) scope.Include(t);
        edit(tensors);
        SafeTensors.Save(target ?? path, tensors);
    }

    private static void ForceFinalizers()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
    }

    /// <summary>Loading fails with a ModelLoadException, and leaves no tensor behind.</summary>
    private static ModelLoadException LoadFails(string dir)
    {
        ForceFinalizers();
        var start = LiveTensorCount.Settled();
        var e = Assert.Throws<ModelLoadException>(() => TransformerBridge.Load(dir).Dispose())!;
        Assert.That(Torch.LiveTensors, Is.EqualTo(start), "a failed load must free every tensor it created");
        TestContext.Out.WriteLine(e.Message);
        return e;
    }

    /// <summary>Splits model.safetensors into two shards plus an index, and deletes model.safetensors.</summary>
    private Dictionary<string, string> Shard()
    {
        var weightMap = new Dictionary<string, string>();
        using (var scope = Torch.NewScope())
        {
            var all = SafeTensors.Load(CheckpointPath);
            foreach (var t in all.Values) scope.Include(t);
            var names = all.Keys.OrderBy(n => n, StringComparer.Ordinal).ToList();
            var first = names.Take(names.Count / 2).ToList();
            var second = names.Skip(names.Count / 2).ToList();
            SafeTensors.Save(Path.Combine(_dir, Shard1), first.Select(n => KeyValuePair.Create(n, all[n])));
            SafeTensors.Save(Path.Combine(_dir, Shard2), second.Select(n => KeyValuePair.Create(n, all[n])));
            foreach (var n in first) weightMap[n] = Shard1;
            foreach (var n in second) weightMap[n] = Shard2;
        }
        File.Delete(CheckpointPath);
        WriteIndex(weightMap);
        return weightMap;
    }

    private void WriteIndex(Dictionary<string, string> weightMap)
    {
        var index = new JsonObject
        {
            ["metadata"] = new JsonObject { ["total_size"] = 0 },
            ["weight_map"] = new JsonObject(weightMap.Select(p => KeyValuePair.Create(p.Key, (JsonNode?)JsonValue.Create(p.Value)))),
        };
        File.WriteAllText(IndexPath, index.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }

    private static void AssertMentions(Exception e, params string[] parts)
    {
        Assert.Multiple(() =>
        {
            foreach (var p in parts) Assert.That(e.Message, Does.Contain(p), $"the message should mention '{p}'");
        });
    }

    // ------------------------------------------------------------------ directory and config.json

    [Test]
    public void MissingDirectoryIsNamed()
    {
        var missing = Path.Combine(_dir, "no-such-model");
        var e = LoadFails(missing);
        Assert.That(e.Path, Is.EqualTo(missing));
        AssertMentions(e, missing, "does not exist");
    }

    [Test]
    public void MissingConfigIsNamed()
    {
        CopyFixture(Gpt2);
        File.Delete(ConfigPath);
        var e = LoadFails(_dir);
        Assert.That(e.Path, Is.EqualTo(ConfigPath));
        AssertMentions(e, ConfigPath, "config.json", "missing");
    }

    [Test]
    public void ConfigThatIsNotJsonIsNamed()
    {
        CopyFixture(Gpt2);
        File.WriteAllText(ConfigPath, "{ \"model_type\": \"gpt2\", \"n_embd\": 64,");
        var e = LoadFails(_dir);
        Assert.That(e.Path, Is.EqualTo(ConfigPath));
        Assert.That(e.InnerException, Is.InstanceOf<JsonException>());
        AssertMentions(e, ConfigPath, "not valid JSON");
    }

    [Test]
    public void ConfigThatIsNotAJsonObjectIsNamed()
    {
        CopyFixture(Gpt2);
        File.WriteAllText(ConfigPath, "[\"gpt2\"]");
        var e = LoadFails(_dir);
        AssertMentions(e, ConfigPath, "not a JSON object");
    }

    [Test]
    public void MissingModelTypeIsNamed()
    {
        CopyFixture(Gpt2);
        EditConfig(c => c.Remove("model_type"));
        var e = LoadFails(_dir);
        Assert.That(e.Path, Is.EqualTo(ConfigPath));
        AssertMentions(e, ConfigPath, "'model_type'", "missing");
    }

    [Test]
    public void ModelTypeOfTheWrongJsonTypeIsNamed()
    {
        CopyFixture(Gpt2);
        EditConfig(c => c["model_type"] = 2);
        var e = LoadFails(_dir);
        AssertMentions(e, ConfigPath, "'model_type'", "not a string");
    }

    [Test]
    public void UnknownModelTypeListsTheSupportedOnes()
    {
        CopyFixture(Gpt2);
        EditConfig(c => c["model_type"] = "mamba");
        var e = LoadFails(_dir);
        Assert.That(e.Path, Is.EqualTo(ConfigPath));
        AssertMentions(e, ConfigPath, "'mamba'", "not supported", "gpt2", "gpt_neox", "llama", "gemma2", "phi3");
    }

    [TestCase(Gpt2, "n_embd")]
    [TestCase(Gpt2, "n_head")]
    [TestCase(Gpt2, "n_layer")]
    [TestCase(Gpt2, "vocab_size")]
    [TestCase(Gpt2, "n_positions")]
    [TestCase(Pythia, "hidden_size")]
    [TestCase(Pythia, "num_attention_heads")]
    [TestCase(Pythia, "num_hidden_layers")]
    [TestCase(Pythia, "intermediate_size")]
    public void MissingRequiredConfigFieldIsNamed(string model, string field)
    {
        CopyFixture(model);
        EditConfig(c => Assert.That(c.Remove(field), Is.True, $"the fixture config has {field}"));
        var e = LoadFails(_dir);
        Assert.That(e.Path, Is.EqualTo(ConfigPath));
        AssertMentions(e, ConfigPath, $"'{field}'", "missing", "integer");
    }

    [TestCase(Gpt2, "n_layer", "\"2\"", "integer")]
    [TestCase(Gpt2, "n_embd", "64.5", "integer")]
    [TestCase(Gpt2, "n_inner", "\"256\"", "integer")]
    [TestCase(Gpt2, "layer_norm_epsilon", "\"1e-5\"", "number")]
    [TestCase(Gpt2, "activation_function", "3", "string")]
    [TestCase(Gpt2, "tie_word_embeddings", "1", "true or false")]
    [TestCase(Pythia, "hidden_size", "[64]", "integer")]
    [TestCase(Pythia, "rotary_pct", "\"0.25\"", "number")]
    [TestCase(Pythia, "use_parallel_residual", "\"yes\"", "true or false")]
    [TestCase(Pythia, "hidden_act", "{}", "string")]
    public void ConfigFieldOfTheWrongJsonTypeIsNamed(string model, string field, string valueJson, string expected)
    {
        CopyFixture(model);
        EditConfig(c => c[field] = JsonNode.Parse(valueJson));
        var e = LoadFails(_dir);
        Assert.That(e.Path, Is.EqualTo(ConfigPath));
        AssertMentions(e, ConfigPath, $"'{field}'", expected);
    }

    [TestCase(Gpt2, "activation_function", "swiglu")]
    [TestCase(Pythia, "hidden_act", "quick_gelu")]
    public void UnsupportedActivationIsNamed(string model, string field, string activation)
    {
        CopyFixture(model);
        EditConfig(c => c[field] = activation);
        var e = LoadFails(_dir);
        AssertMentions(e, ConfigPath, $"'{field}'", $"'{activation}'", "not supported");
    }

    [Test]
    public void HeadCountThatDoesNotDivideTheWidthIsNamed()
    {
        CopyFixture(Gpt2);
        EditConfig(c => c["n_head"] = 5);
        var e = LoadFails(_dir);
        AssertMentions(e, ConfigPath, "n_embd 64", "n_head 5", "divisible");
    }

    /// <summary>
    /// A negative layer count passes config reading; with a checkpoint that holds no block (so nothing is
    /// "unexpected"), ModelLoader.Load succeeds and the bridge constructor then fails in
    /// <c>Enumerable.Range(0, -1)</c> (HookedModel constructor, and Adapter.Describe) with an ArgumentOutOfRangeException,
    /// leaking every loaded parameter (TransformerBridge.Load has no try/catch around the constructor).
    /// </summary>
    [Test]
    public void NegativeLayerCountIsRefusedNamingTheField()
    {
        CopyFixture(Gpt2);
        EditConfig(c => c["n_layer"] = -1);
        EditCheckpoint(CheckpointPath, t =>
        {
            foreach (var name in t.Keys.Where(n => n.StartsWith("transformer.h.")).ToList()) t.Remove(name);
        });
        var e = LoadFails(_dir);
        AssertMentions(e, ConfigPath, "'n_layer'");
    }

    // ------------------------------------------------------------------ which checkpoint

    [Test]
    public void NoCheckpointAtAllIsNamed()
    {
        CopyFixture(Gpt2);
        File.Delete(CheckpointPath);
        var e = LoadFails(_dir);
        Assert.That(e.Path, Is.EqualTo(_dir));
        AssertMentions(e, _dir, "no checkpoint", ModelLoader.SafetensorsFile, ModelLoader.IndexFile);
    }

    [TestCase("pytorch_model.bin")]
    [TestCase("model.pt")]
    public void PickleCheckpointIsRefusedExplainingWhy(string pickleName)
    {
        CopyFixture(Gpt2);
        File.Delete(CheckpointPath);
        var pickle = Path.Combine(_dir, pickleName);
        File.WriteAllBytes(pickle, [0x80, 0x02, (byte)'c', (byte)'o', (byte)'s', (byte)'\n', (byte)'s', (byte)'y', (byte)'s', (byte)'t', (byte)'e', (byte)'m', (byte)'\n']);
        var e = LoadFails(_dir);
        Assert.That(e.Path, Is.EqualTo(pickle));
        AssertMentions(e, pickleName, "pickle", "arbitrary code", "safetensors");
    }

    [Test]
    public void SafetensorsIsPreferredOverAPickleBesideIt()
    {
        CopyFixture(Gpt2);
        File.WriteAllBytes(Path.Combine(_dir, "pytorch_model.bin"), [1, 2, 3]);
        using var bridge = TransformerBridge.Load(_dir);
        Assert.That(bridge.NamedParameters(), Has.Count.EqualTo(28));
    }

    // ------------------------------------------------------------------ tensors of model.safetensors

    [TestCase(Gpt2, "transformer.h.1.mlp.c_fc.bias", "[256]")]
    [TestCase(Gpt2, "transformer.wpe.weight", "[128, 64]")]
    [TestCase(Gpt2, "transformer.ln_f.weight", "[64]")]
    [TestCase(Pythia, "embed_out.weight", "[1000, 64]")]
    [TestCase(Pythia, "gpt_neox.layers.0.attention.query_key_value.weight", "[192, 64]")]
    public void MissingTensorIsNamedWithItsExpectedShape(string model, string tensor, string shape)
    {
        CopyFixture(model);
        EditCheckpoint(CheckpointPath, t => Assert.That(t.Remove(tensor), Is.True));
        var e = LoadFails(_dir);
        Assert.That(e.Path, Is.EqualTo(CheckpointPath));
        AssertMentions(e, CheckpointPath, $"'{tensor}'", "missing", $"expected shape {shape}");
    }

    [TestCase(Gpt2, "transformer.h.0.attn.c_attn.weight", new long[] { 192, 64 }, "[192, 64]", "[64, 192]")]
    [TestCase(Gpt2, "transformer.wte.weight", new long[] { 999, 64 }, "[999, 64]", "[1000, 64]")]
    [TestCase(Gpt2, "transformer.h.1.ln_2.bias", new long[] { 1, 64 }, "[1, 64]", "[64]")]
    [TestCase(Pythia, "gpt_neox.layers.1.mlp.dense_h_to_4h.weight", new long[] { 64, 256 }, "[64, 256]", "[256, 64]")]
    public void TensorOfTheWrongShapeNamesBothShapes(string model, string tensor, long[] shape, string actual, string expected)
    {
        CopyFixture(model);
        EditCheckpoint(CheckpointPath, t => t[tensor] = Torch.Zeros(shape));
        var e = LoadFails(_dir);
        Assert.That(e.Path, Is.EqualTo(CheckpointPath));
        AssertMentions(e, CheckpointPath, $"'{tensor}'", $"has shape {actual}", $"implies {expected}");
    }

    [TestCase(Gpt2, "transformer.h.0.attn.rogue")]
    [TestCase(Gpt2, "transformer.h.2.ln_1.weight")]  // a block the config does not have
    [TestCase(Pythia, "gpt_neox.emb_dropout.weight")]
    public void UnexpectedExtraTensorIsNamed(string model, string tensor)
    {
        CopyFixture(model);
        EditCheckpoint(CheckpointPath, t => t[tensor] = Torch.Zeros(64));
        var e = LoadFails(_dir);
        Assert.That(e.Path, Is.EqualTo(CheckpointPath));
        AssertMentions(e, CheckpointPath, $"'{tensor}'", "not part of");
    }

    /// <summary>Buffers HF writes into older checkpoints (causal masks, rotary frequencies, GPT-2's tied lm_head copy) are not parameters and are skipped.</summary>
    [TestCase(Gpt2, new[] { "transformer.h.0.attn.bias", "transformer.h.1.attn.masked_bias", "lm_head.weight" })]
    [TestCase(Pythia, new[] { "gpt_neox.layers.0.attention.bias", "gpt_neox.layers.1.attention.masked_bias", "gpt_neox.layers.0.attention.rotary_emb.inv_freq" })]
    public void KnownBuffersAreSkipped(string model, string[] buffers)
    {
        CopyFixture(model);
        EditCheckpoint(CheckpointPath, t =>
        {
            foreach (var b in buffers) t[b] = b == "lm_head.weight" ? t["transformer.wte.weight"].Clone() : Torch.Ones(1, 1, 4, 4);
        });
        using var bridge = TransformerBridge.Load(_dir);
        using var reference = TransformerBridge.Load(Fixtures.Path(model));
        Assert.That(bridge.NamedParameters().Select(p => p.Name), Is.EqualTo(reference.NamedParameters().Select(p => p.Name)));
        using var scope = Torch.NewScope();
        var tokens = Torch.FromArray(new long[] { 1, 2, 3, 4, 5 }, 1, 5);
        Assert.That(bridge.Forward(tokens).ValueEquals(reference.Forward(tokens)), Is.True, "the buffers change nothing (lm_head stays tied to wte)");
    }

    /// <summary>
    /// A tied model's checkpoint that still holds lm_head.weight (a state dict saved as it is), for every architecture that
    /// ties: a copy of the embedding, in any floating dtype that holds its values, is accepted and not loaded; anything else
    /// is refused naming the file and the tensor, since the tied model would silently drop it.
    /// </summary>
    [TestCase(Gpt2, "transformer.wte.weight")]
    [TestCase("tiny-gemma", "model.embed_tokens.weight")]
    [TestCase("tiny-qwen2", "model.embed_tokens.weight")]
    public void TiedUnembeddingCopyIsAcceptedOnlyWhenItEqualsTheEmbedding(string model, string embedding)
    {
        using var reference = TransformerBridge.Load(Fixtures.Path(model));
        Assert.That(reference.Config.TiedEmbeddings, Is.True, "the fixture ties its embeddings");
        using var scope = Torch.NewScope();
        var tokens = Torch.FromArray(new long[] { 1, 2, 3, 4, 5 }, 1, 5);
        var expected = reference.Forward(tokens);

        foreach (var dtype in new[] { (ScalarType?)null, ScalarType.Float64 })
        {
            CopyFixture(model);
            EditCheckpoint(CheckpointPath, t => t["lm_head.weight"] = dtype is { } d ? t[embedding].To(d) : t[embedding].Clone());
            using (var bridge = TransformerBridge.Load(_dir))
            {
                Assert.That(bridge.NamedParameters().Select(p => p.Name), Is.EqualTo(reference.NamedParameters().Select(p => p.Name)),
                    $"the copy ({dtype?.ToString() ?? "same dtype"}) is not a parameter");
                Assert.That(bridge.Forward(tokens).ValueEquals(expected), Is.True, "the unembedding stays tied to the embedding");
            }
            RemoveTempDir();
            Directory.CreateDirectory(_dir);
        }

        // One element off: refused, naming the file, the tensor and the embedding.
        CopyFixture(model);
        EditCheckpoint(CheckpointPath, t =>
        {
            var shape = t[embedding].Shape;
            var delta = new float[shape[0] * shape[1]];
            delta[delta.Length / 2] = 1e-3f;
            t["lm_head.weight"] = t[embedding] + Torch.FromArray(delta, shape);
        });
        var e = LoadFails(_dir);
        Assert.That(e.Path, Is.EqualTo(CheckpointPath));
        AssertMentions(e, "'lm_head.weight'", "differs from the embedding", $"'{embedding}'", "tie_word_embeddings");

        // Another shape: refused as well; in a sharded checkpoint the path is the copy's shard.
        EditCheckpoint(CheckpointPath, t => t["lm_head.weight"] = t[embedding].Narrow(0, 0, 10).Clone());
        var shards = Shard();
        e = LoadFails(_dir);
        Assert.That(e.Path, Is.EqualTo(Path.Combine(_dir, shards["lm_head.weight"])));
        AssertMentions(e, "'lm_head.weight'", "has shape [10, ", $"'{embedding}'");
    }

    [TestCase(ScalarType.Int64, "I64")]
    [TestCase(ScalarType.Int32, "I32")]
    [TestCase(ScalarType.Byte, "U8")]
    [TestCase(ScalarType.Bool, "BOOL")]
    public void IntegerParameterIsRefused(ScalarType dtype, string dtypeName)
    {
        const string tensor = "transformer.h.0.ln_1.weight";
        CopyFixture(Gpt2);
        EditCheckpoint(CheckpointPath, t => t[tensor] = Torch.Zeros([64], dtype));
        var e = LoadFails(_dir);
        Assert.That(e.Path, Is.EqualTo(CheckpointPath));
        AssertMentions(e, CheckpointPath, $"'{tensor}'", dtypeName, "floating point");
    }

    [Test]
    public void HalfPrecisionCheckpointLoadsAsFloat32()
    {
        CopyFixture(Gpt2);
        EditCheckpoint(CheckpointPath, t =>
        {
            foreach (var name in t.Keys.ToList()) t[name] = t[name].To(ScalarType.Float16);
        });
        using var bridge = TransformerBridge.Load(_dir);
        using var scope = Torch.NewScope();
        var halves = SafeTensors.Load(CheckpointPath);
        foreach (var t in halves.Values) scope.Include(t);
        Assert.Multiple(() =>
        {
            foreach (var (name, p) in bridge.NamedParameters())
            {
                Assert.That(p.DType, Is.EqualTo(ScalarType.Float32), name);
                Assert.That(p.IsLeaf && p.RequiresGrad, Is.True, name);
                Assert.That(p.ValueEquals(halves[name].To(ScalarType.Float32)), Is.True, $"{name}: float16 widens exactly");
            }
        });
    }

    [Test]
    public void UntiedGpt2NeedsItsLmHeadAndUsesIt()
    {
        CopyFixture(Gpt2);
        EditConfig(c => c["tie_word_embeddings"] = false);
        var e = LoadFails(_dir);
        AssertMentions(e, CheckpointPath, "'lm_head.weight'", "missing", "[1000, 64]");

        // With lm_head = 2 * wte the logits are ln_final(x) @ (2 wte)ᵀ: exactly twice the tied model's.
        EditCheckpoint(CheckpointPath, t => t["lm_head.weight"] = t["transformer.wte.weight"] * 2);
        using var untied = TransformerBridge.Load(_dir);
        using var tied = TransformerBridge.Load(Fixtures.Path(Gpt2));
        Assert.That(untied.NamedParameters().Select(p => p.Name), Does.Contain("lm_head.weight"));
        Assert.That(untied.NamedParameters(), Has.Count.EqualTo(29));
        using var scope = Torch.NewScope();
        var tokens = Torch.FromArray(new long[] { 5, 6, 7, 8, 9 }, 1, 5);
        Assert.That(untied.Forward(tokens).ValueEquals(tied.Forward(tokens) * 2), Is.True, "the unembedding is lm_head, not wte");
        var wU = untied.TlNamedParameters().Single(p => p.Name == "unembed.W_U").Weight;
        Assert.That(wU.SharesStorageWith(untied.Parameter("lm_head.weight")), Is.True, "W_U views lm_head");
    }

    [Test]
    public void LoadingAsFloat64ConvertsEveryParameter()
    {
        using var bridge = TransformerBridge.Load(Fixtures.Path(Pythia), new BridgeOptions { DType = ScalarType.Float64 });
        using var scope = Torch.NewScope();
        Assert.Multiple(() =>
        {
            foreach (var (name, p) in bridge.NamedParameters())
                Assert.That((p.DType, p.IsLeaf, p.RequiresGrad), Is.EqualTo((ScalarType.Float64, true, true)), name);
        });
        var reference = SafeTensors.Load(Path.Combine(Fixtures.Path(Pythia), "reference.safetensors"));
        foreach (var t in reference.Values) scope.Include(t);
        var logits = bridge.Forward(reference["input_ids"]);
        Assert.That(logits.DType, Is.EqualTo(ScalarType.Float64));
        Assert.That(logits.AllClose(reference["logits"].To(ScalarType.Float64), rtol: 0, atol: 1e-4), Is.True);
    }

    [Test]
    public void FailedLoadFreesTheParametersItAlreadyLoaded()
    {
        // The last expected parameter is broken, so every other one is loaded before the fault is found.
        CopyFixture(Gpt2);
        EditCheckpoint(CheckpointPath, t => t["transformer.ln_f.bias"] = Torch.Zeros([64], ScalarType.Int64));
        var e = LoadFails(_dir);  // LoadFails checks Torch.LiveTensors
        AssertMentions(e, "transformer.ln_f.bias");
    }

    // ------------------------------------------------------------------ malformed safetensors

    [TestCase("empty")]
    [TestCase("truncated header")]
    [TestCase("header length past the end")]
    [TestCase("truncated data")]
    [TestCase("header not JSON")]
    public void MalformedSafetensorsNamesTheFile(string fault)
    {
        CopyFixture(Gpt2);
        var bytes = File.ReadAllBytes(CheckpointPath);
        var headerLength = (int)BitConverter.ToUInt64(bytes, 0);
        byte[] broken = fault switch
        {
            "empty" => [],
            "truncated header" => bytes[..(8 + headerLength / 2)],
            "header length past the end" => [.. BitConverter.GetBytes((ulong)bytes.Length), .. bytes[8..]],
            "truncated data" => bytes[..^1000],
            "header not JSON" => [.. bytes[..8], .. Enumerable.Repeat((byte)'x', headerLength), .. bytes[(8 + headerLength)..]],
            _ => throw new ArgumentException(fault),
        };
        File.WriteAllBytes(CheckpointPath, broken);
        ForceFinalizers();
        var start = LiveTensorCount.Settled();
        var e = Assert.Throws<SafeTensorsFormatException>(() => TransformerBridge.Load(_dir).Dispose())!;
        TestContext.Out.WriteLine(e.Message);
        Assert.That(e.FilePath, Is.EqualTo(CheckpointPath));
        Assert.That(e.Message, Does.Contain(CheckpointPath));
        Assert.That(Torch.LiveTensors, Is.EqualTo(start));
    }

    // ------------------------------------------------------------------ sharded checkpoints

    [TestCase(Gpt2)]
    [TestCase(Pythia)]
    public void ShardedCheckpointLoadsTheSameModel(string model)
    {
        CopyFixture(model);
        var weightMap = Shard();
        Assert.That(weightMap.Values.Distinct().Count(), Is.EqualTo(2));
        Assert.That(File.Exists(CheckpointPath), Is.False);

        using var sharded = TransformerBridge.Load(_dir);
        using var single = TransformerBridge.Load(Fixtures.Path(model));
        using var scope = Torch.NewScope();
        var reference = SafeTensors.Load(Path.Combine(Fixtures.Path(model), "reference.safetensors"));
        foreach (var t in reference.Values) scope.Include(t);

        var expected = single.NamedParameters().ToDictionary(p => p.Name, p => p.Parameter);
        Assert.That(sharded.NamedParameters().Select(p => p.Name), Is.EquivalentTo(expected.Keys));
        Assert.Multiple(() =>
        {
            foreach (var (name, p) in sharded.NamedParameters())
            {
                Assert.That(p.ValueEquals(expected[name]), Is.True, name);
                Assert.That(p.IsLeaf && p.RequiresGrad, Is.True, name);
            }
        });
        var tokens = reference["input_ids"];
        var logits = sharded.Forward(tokens);
        Assert.That(logits.ValueEquals(single.Forward(tokens)), Is.True, "sharded and single-file logits are identical");
        Assert.That(logits.AllClose(reference["logits"], rtol: 0, atol: 1e-4), Is.True, "and match HuggingFace");
    }

    [Test]
    public void IndexIsPreferredOverASingleFileBesideIt()
    {
        CopyFixture(Gpt2);
        Shard();
        // A single file that would fail to load: the index must be what is read.
        File.WriteAllBytes(CheckpointPath, [1, 2, 3]);
        using var bridge = TransformerBridge.Load(_dir);
        Assert.That(bridge.NamedParameters(), Has.Count.EqualTo(28));
    }

    [Test]
    public void ShardIndexThatIsNotJsonIsNamed()
    {
        CopyFixture(Gpt2);
        Shard();
        File.WriteAllText(IndexPath, "{\"weight_map\": {\"transformer.wte.weight\": ");
        var e = LoadFails(_dir);
        Assert.That(e.Path, Is.EqualTo(IndexPath));
        Assert.That(e.InnerException, Is.InstanceOf<JsonException>());
        AssertMentions(e, IndexPath, "not valid JSON");
    }

    [Test]
    public void ShardIndexWithoutWeightMapIsNamed()
    {
        CopyFixture(Gpt2);
        Shard();
        File.WriteAllText(IndexPath, "{\"metadata\": {\"total_size\": 0}}");
        var e = LoadFails(_dir);
        Assert.That(e.Path, Is.EqualTo(IndexPath));
        AssertMentions(e, IndexPath, "'weight_map'");
    }

    [Test]
    public void ShardIndexWhoseWeightMapIsNotAnObjectIsNamed()
    {
        CopyFixture(Gpt2);
        Shard();
        File.WriteAllText(IndexPath, "{\"weight_map\": [\"model-00001-of-00002.safetensors\"]}");
        var e = LoadFails(_dir);
        AssertMentions(e, IndexPath, "'weight_map'");
    }

    /// <summary>
    /// ModelLoader.OpenSharded calls <c>doc.RootElement.TryGetProperty("weight_map", ...)</c> without checking that
    /// the root is an object; on an array System.Text.Json throws InvalidOperationException, which escapes
    /// (only JsonException is caught), so the user gets no file name.
    /// </summary>
    [Test]
    public void ShardIndexThatIsNotAJsonObjectIsNamed()
    {
        CopyFixture(Gpt2);
        Shard();
        File.WriteAllText(IndexPath, "[{\"weight_map\": {}}]");
        var e = LoadFails(_dir);
        Assert.That(e.Path, Is.EqualTo(IndexPath));
        AssertMentions(e, IndexPath);
    }

    [Test]
    public void ShardIndexEntryThatIsNotAFileNameIsNamed()
    {
        CopyFixture(Gpt2);
        var map = Shard();
        var index = JsonNode.Parse(File.ReadAllText(IndexPath))!;
        index["weight_map"]!["transformer.wte.weight"] = 1;
        File.WriteAllText(IndexPath, index.ToJsonString());
        var e = LoadFails(_dir);
        Assert.That(map, Does.ContainKey("transformer.wte.weight"));
        AssertMentions(e, IndexPath, "'transformer.wte.weight'", "not a file name");
    }

    [Test]
    public void MissingShardFileIsNamed()
    {
        CopyFixture(Gpt2);
        var map = Shard();
        File.Delete(Path.Combine(_dir, Shard2));
        var e = LoadFails(_dir);
        Assert.That(e.Path, Is.EqualTo(IndexPath));
        var aTensorOfShard2 = map.First(p => p.Value == Shard2).Key;
        AssertMentions(e, IndexPath, $"'{Shard2}'", "does not exist", $"'{aTensorOfShard2}'");
    }

    [Test]
    public void TensorListedInTheIndexButAbsentFromItsShardIsNamed()
    {
        CopyFixture(Gpt2);
        var map = Shard();
        var victim = map.Last(p => p.Value == Shard2).Key;
        var shard2 = Path.Combine(_dir, Shard2);
        EditCheckpoint(shard2, t => Assert.That(t.Remove(victim), Is.True));
        var e = LoadFails(_dir);
        Assert.That(e.Path, Is.EqualTo(shard2));
        AssertMentions(e, shard2, $"'{victim}'", ModelLoader.IndexFile, "missing from this shard");
    }

    [Test]
    public void TensorInAShardButNotListedInTheIndexIsNamed()
    {
        CopyFixture(Gpt2);
        var map = Shard();
        var victim = map.First(p => p.Value == Shard1).Key;
        map.Remove(victim);
        WriteIndex(map);
        var e = LoadFails(_dir);
        Assert.That(e.Path, Is.EqualTo(Path.Combine(_dir, Shard1)));
        AssertMentions(e, Shard1, $"'{victim}'", "not listed", ModelLoader.IndexFile);
    }

    [Test]
    public void ParameterInNeitherIndexNorShardsIsNamedWithItsShape()
    {
        CopyFixture(Gpt2);
        var map = Shard();
        const string victim = "transformer.h.0.mlp.c_proj.weight";
        var shard = Path.Combine(_dir, map[victim]);
        EditCheckpoint(shard, t => t.Remove(victim));
        map.Remove(victim);
        WriteIndex(map);
        var e = LoadFails(_dir);
        Assert.That(e.Path, Is.EqualTo(IndexPath));
        AssertMentions(e, IndexPath, $"'{victim}'", "missing", "[256, 64]");
    }

    [TestCase("sub/" + Shard2)]
    [TestCase("sub\\" + Shard2)]
    [TestCase("../" + Shard2)]
    [TestCase("/tmp/" + Shard2)]
    public void ShardNameWithAPathIsRefused(string shardName)
    {
        CopyFixture(Gpt2);
        var map = Shard();
        // Make the path resolvable, so the refusal cannot be a mere "file not found".
        Directory.CreateDirectory(Path.Combine(_dir, "sub"));
        File.Copy(Path.Combine(_dir, Shard2), Path.Combine(_dir, "sub", Shard2));
        foreach (var name in map.Where(p => p.Value == Shard2).Select(p => p.Key).ToList()) map[name] = shardName;
        WriteIndex(map);
        var e = LoadFails(_dir);
        Assert.That(e.Path, Is.EqualTo(IndexPath));
        AssertMentions(e, IndexPath, $"'{shardName}'", "plain file name");
    }

    [Test]
    public void MalformedShardNamesTheShard()
    {
        CopyFixture(Gpt2);
        Shard();
        var shard2 = Path.Combine(_dir, Shard2);
        var bytes = File.ReadAllBytes(shard2);
        File.WriteAllBytes(shard2, bytes[..^8]);
        var e = Assert.Throws<SafeTensorsFormatException>(() => TransformerBridge.Load(_dir).Dispose())!;
        Assert.That(e.FilePath, Is.EqualTo(shard2));
        Assert.That(e.Message, Does.Contain(shard2));
    }

    [Test]
    public void ShardedTensorOfTheWrongShapeNamesTheShard()
    {
        CopyFixture(Gpt2);
        var map = Shard();
        const string victim = "transformer.h.1.attn.c_proj.bias";
        var shard = Path.Combine(_dir, map[victim]);
        EditCheckpoint(shard, t => t[victim] = Torch.Zeros(65));
        var e = LoadFails(_dir);
        Assert.That(e.Path, Is.EqualTo(shard));
        AssertMentions(e, shard, $"'{victim}'", "[65]", "[64]");
    }
}
