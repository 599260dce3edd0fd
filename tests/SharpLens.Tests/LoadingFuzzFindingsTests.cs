using SharpLens.Testing;
using System.Text;
using System.Text.Json.Nodes;
using SharpLens.Adapters;
using SharpLens.Loading;

namespace SharpLens.Tests;

/// <summary>
/// One test per loading fault that the property-based tests (<see cref="ModelFuzzTests"/>) found, each on a copy of a fixture
/// with exactly that fault. Where the fault was a config field left out, the ground truth is the default of transformers 4.44.2's
/// config class for the family (the version that wrote and ran the fixtures), cited per case.
/// </summary>
public class LoadingFuzzFindingsTests
{
    private string _dir = null!;

    [SetUp]
    public void MakeTempDir() => _dir = Directory.CreateTempSubdirectory("sharplens-fuzz-findings").FullName;

    [TearDown]
    public void RemoveTempDir() => Directory.Delete(_dir, recursive: true);

    private string ConfigPath => Path.Combine(_dir, ModelLoader.ConfigFile);

    private void CopyFixture(string model)
    {
        foreach (var f in new[] { ModelLoader.ConfigFile, ModelLoader.SafetensorsFile })
            File.Copy(Path.Combine(Fixtures.Path(model), f), Path.Combine(_dir, f));
    }

    private void EditConfig(Action<JsonObject> edit)
    {
        var node = JsonNode.Parse(File.ReadAllText(ConfigPath))!.AsObject();
        edit(node);
        File.WriteAllText(ConfigPath, node.ToJsonString());
    }

    /// <summary>Loading fails with a ModelLoadException naming the config file and each fragment, leaving no tensor behind.</summary>
    private ModelLoadException Refused(params string[] fragments)
    {
        var start = LiveTensorCount.Settled();
        var e = Assert.Throws<ModelLoadException>(() => TransformerBridge.Load(_dir).Dispose())!;
        Assert.That(Torch.LiveTensors, Is.EqualTo(start), "a failed load frees what it created");
        Assert.That(e.Message, Does.Contain(ConfigPath));
        foreach (var f in fragments) Assert.That(e.Message, Does.Contain(f));
        return e;
    }

    // ------------------------------------------------------------------ values no model has

    /// <summary>1e400 is a JSON number no double holds; it was read as infinity (an infinite epsilon or cap loads and gives NaN logits).</summary>
    [TestCase("tiny-gpt2", "layer_norm_epsilon")]
    [TestCase("tiny-llama", "rms_norm_eps")]
    [TestCase("tiny-pythia", "rotary_emb_base")]
    [TestCase("tiny-gemma2", "final_logit_softcapping")]
    public void NumberBeyondDoubleIsRefused(string model, string field)
    {
        CopyFixture(model);
        EditConfig(c => c[field] = JsonNode.Parse("1e400"));
        Refused($"'{field}'", "1e400", "not a finite number");
    }

    [Test]
    public void RopeScalingFactorBeyondDoubleIsRefused()
    {
        CopyFixture("tiny-llama");
        EditConfig(c => c["rope_scaling"] = JsonNode.Parse("""{"rope_type": "linear", "factor": 1e400}"""));
        Refused("rope_scaling 'factor'", "not a finite number");
    }

    /// <summary>rotary_pct 2 (or 64) gave a rotary dimension beyond the head; it loaded and failed in the forward pass's rotary op.</summary>
    [TestCase("2")]
    [TestCase("64")]
    public void RotaryFractionAboveOneIsRefused(string value)
    {
        CopyFixture("tiny-pythia");
        EditConfig(c => c["rotary_pct"] = JsonNode.Parse(value));
        Refused("'rotary_pct'", "(0, 1]");
    }

    /// <summary>A rotary base of zero or below loaded: its inverse frequencies are infinite or NaN.</summary>
    [TestCase("tiny-llama", "rope_theta", "0")]
    [TestCase("tiny-gemma", "rope_theta", "-1")]
    [TestCase("tiny-pythia", "rotary_emb_base", "-10000")]
    public void NonPositiveRotaryBaseIsRefused(string model, string field, string value)
    {
        CopyFixture(model);
        EditConfig(c => c[field] = JsonNode.Parse(value));
        Refused($"'{field}'", "must be positive");
    }

    /// <summary>A negative norm epsilon loaded: sqrt(mean(x²) + eps) is NaN wherever mean(x²) &lt; -eps.</summary>
    [TestCase("tiny-gpt2", "layer_norm_epsilon")]
    [TestCase("tiny-phi3", "rms_norm_eps")]
    public void NegativeNormEpsilonIsRefused(string model, string field)
    {
        CopyFixture(model);
        EditConfig(c => c[field] = -1e-6);
        Refused($"'{field}'", "must not be negative");
    }

    /// <summary>
    /// The loader built a window per claimed layer and a block spec per layer before comparing with the checkpoint: 2^31 - 1
    /// layers failed with an OutOfMemoryException ("Array dimensions exceeded supported range"), and 2^20 layers spent seconds
    /// building specs before the refusal. A layer count beyond the checkpoint's tensor count is now refused first.
    /// </summary>
    [TestCase("tiny-mistral", "num_hidden_layers")]
    [TestCase("tiny-gpt2", "n_layer")]
    public void HugeLayerCountIsRefusedAgainstTheCheckpoint(string model, string field)
    {
        CopyFixture(model);
        EditConfig(c => c[field] = int.MaxValue);
        Refused($"{int.MaxValue} layers", "holds only", Path.Combine(_dir, ModelLoader.SafetensorsFile));
    }

    /// <summary>Invalid UTF-8 inside a string of config.json surfaced as an InvalidOperationException naming no file.</summary>
    [Test]
    public void ConfigThatIsNotUtf8IsRefusedNamingTheFile()
    {
        CopyFixture("tiny-llama");
        var bytes = File.ReadAllBytes(ConfigPath);
        var at = Encoding.UTF8.GetString(bytes).IndexOf("LlamaForCausalLM", StringComparison.Ordinal);
        bytes[at] = 0xFF;  // inside the "architectures" string
        File.WriteAllBytes(ConfigPath, bytes);
        Refused("not valid UTF-8");
    }

    /// <summary>
    /// A lone surrogate escape ("\ud800") is valid JSON and valid UTF-8 bytes, but .NET cannot hold it as a string: it threw an
    /// InvalidOperationException naming no file at the first read of the string.
    /// </summary>
    [TestCase("model_type")]
    [TestCase("hidden_act")]
    public void ConfigStringWithALoneSurrogateIsRefusedNamingTheFile(string field)
    {
        CopyFixture("tiny-llama");
        var text = File.ReadAllText(ConfigPath);
        var value = field == "model_type" ? "\"llama\"" : "\"silu\"";
        Assert.That(text, Does.Contain($"\"{field}\": {value}"));
        File.WriteAllText(ConfigPath, text.Replace($"\"{field}\": {value}", $"\"{field}\": \"\\ud800\""));
        Refused("not valid UTF-16 text");
    }

    // ------------------------------------------------------------------ fields left out mean transformers' defaults

    /// <summary>
    /// A config without a field means what transformers makes of it: the config class's default. These differed (a model that
    /// loads, but not the one HuggingFace runs) or the field was required although it shapes no tensor.
    /// </summary>
    [TestCase("tiny-pythia", "rotary_pct", nameof(TransformerConfig.RotaryDim), "4")]                  // GPTNeoXConfig rotary_pct=0.25 of d_head 16
    [TestCase("tiny-pythia", "max_position_embeddings", nameof(TransformerConfig.NCtx), "2048")]     // GPTNeoXConfig max_position_embeddings=2048
    [TestCase("tiny-phi3", "rms_norm_eps", nameof(TransformerConfig.NormEps), "1E-05")]               // Phi3Config rms_norm_eps=1e-5
    [TestCase("tiny-llama", "max_position_embeddings", nameof(TransformerConfig.NCtx), "2048")]      // LlamaConfig max_position_embeddings=2048
    [TestCase("tiny-mistral", "max_position_embeddings", nameof(TransformerConfig.NCtx), "131072")]  // MistralConfig 4096 * 32
    [TestCase("tiny-qwen2", "max_position_embeddings", nameof(TransformerConfig.NCtx), "32768")]     // Qwen2Config
    [TestCase("tiny-phi3", "max_position_embeddings", nameof(TransformerConfig.NCtx), "4096")]       // Phi3Config
    [TestCase("tiny-mistral", "sliding_window", nameof(TransformerConfig.LayerWindows), "4096 4096")] // MistralConfig sliding_window=4096
    [TestCase("tiny-gemma2", "sliding_window", nameof(TransformerConfig.LayerWindows), "4096 0 4096")] // Gemma2Config sliding_window=4096, even layers
    [TestCase("tiny-gemma2", "attn_logit_softcapping", nameof(TransformerConfig.AttentionSoftCap), "50")]    // Gemma2Config
    [TestCase("tiny-gemma2", "final_logit_softcapping", nameof(TransformerConfig.FinalLogitSoftCap), "30")]  // Gemma2Config
    [TestCase("tiny-gemma2", "query_pre_attn_scalar", nameof(TransformerConfig.AttentionScale), "0.0668153104781061")] // 224^-1/2
    [TestCase("tiny-gemma", "head_dim", nameof(TransformerConfig.DHead), "256")]                     // GemmaConfig head_dim=256
    [TestCase("tiny-gemma2", "head_dim", nameof(TransformerConfig.DHead), "256")]                    // Gemma2Config head_dim=256
    public void AbsentFieldTakesTransformersDefault(string model, string field, string property, string expected)
    {
        CopyFixture(model);
        EditConfig(c => Assert.That(c.Remove(field), Is.True, $"the fixture has {field}"));
        Assert.That(ConfigProperty(property), Is.EqualTo(expected));
    }

    /// <summary>An explicit null is Python's None, not an absent field: for a soft-cap and a window that means none.</summary>
    [TestCase("tiny-gemma2", "attn_logit_softcapping", nameof(TransformerConfig.AttentionSoftCap), "0")]
    [TestCase("tiny-gemma2", "final_logit_softcapping", nameof(TransformerConfig.FinalLogitSoftCap), "0")]
    [TestCase("tiny-mistral", "sliding_window", nameof(TransformerConfig.LayerWindows), "")]
    public void NullFieldMeansNone(string model, string field, string property, string expected)
    {
        CopyFixture(model);
        EditConfig(c => c[field] = null);
        Assert.That(ConfigProperty(property), Is.EqualTo(expected));
    }

    /// <summary>One property of the config read from the folder, as text (a list as its items separated by spaces).</summary>
    private string ConfigProperty(string property)
    {
        var (config, _) = ModelLoader.ReadConfig(_dir);
        var value = typeof(TransformerConfig).GetProperty(property)!.GetValue(config);
        return value is IEnumerable<int> list ? string.Join(" ", list) : Convert.ToString(value, System.Globalization.CultureInfo.InvariantCulture) ?? "";
    }
}
