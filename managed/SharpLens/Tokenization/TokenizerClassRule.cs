using System.Text.Json;

namespace SharpLens.Tokenization;

/// <summary>
/// Whether tokenizer_config.json's <c>add_bos_token</c>/<c>add_eos_token</c> decide the special tokens around a text,
/// which in HuggingFace transformers depends on the tokenizer class that <c>AutoTokenizer</c> picks.
/// <para>
/// The rule is that of transformers 4.44.2, the version every reference fixture of this project was made with
/// (tests/fixtures/README.md, <c>transformers_version</c> in each config.json):
/// </para>
/// <list type="bullet">
/// <item><c>LlamaTokenizerFast</c>, <c>CodeLlamaTokenizerFast</c>, <c>GemmaTokenizerFast</c> and <c>CohereTokenizerFast</c>
/// (defaults add_bos_token=True, add_eos_token=False) and <c>GPTNeoXTokenizerFast</c> (defaults False, False) call
/// <c>update_post_processor()</c> in their constructors, which always replaces tokenizer.json's post-processor with
/// "[BOS] $A [EOS]" built from the two flags: a flag the config leaves out takes the class default, and an explicit
/// null is None, which counts as false (models/llama/tokenization_llama_fast.py, code_llama/tokenization_code_llama_fast.py,
/// gemma/tokenization_gemma_fast.py, cohere/tokenization_cohere_fast.py, gpt_neox/tokenization_gpt_neox_fast.py).</item>
/// <item>Every other class — <c>PreTrainedTokenizerFast</c> itself (Llama 3), <c>Qwen2TokenizerFast</c>,
/// <c>GPT2TokenizerFast</c>, ... — ignores both flags when it loads tokenizer.json: its post-processor decides
/// (tokenization_utils_fast.py has no add_bos_token handling in 4.44; GPT2TokenizerFast only stores add_bos_token).</item>
/// <item>Without tokenizer.json, <c>GPT2TokenizerFast</c> converts the slow <c>GPT2Tokenizer</c> built from vocab.json and
/// merges.txt, and <c>GPT2Converter</c> (convert_slow_tokenizer.py) writes a "BOS $A" template when add_bos_token is true
/// (default false) and ignores add_eos_token; <c>Qwen2Converter</c> adds nothing.</item>
/// </list>
/// <para>
/// The class is found as <c>AutoTokenizer.from_pretrained</c> (models/auto/tokenization_auto.py) finds it with its default
/// <c>use_fast=True</c>: tokenizer_config.json's <c>tokenizer_class</c>, with "Fast" appended when it names the slow class;
/// failing that, config.json's <c>tokenizer_class</c>, then config.json's <c>model_type</c> through
/// <c>TOKENIZER_MAPPING_NAMES</c>. Where transformers would stop instead — a class it does not have (custom code named
/// by <c>auto_map</c>, which this library cannot run), or no class and no known model type — the tokenizer.json
/// post-processor is kept, which is what a class deriving from <c>PreTrainedTokenizerFast</c> without overriding it does.
/// </para>
/// <para>
/// Later versions differ: transformers 5's <c>TokenizersBackend</c> (tokenization_utils_tokenizers.py), the base of every
/// fast tokenizer there, rebuilds the template for any class whenever the config sets either flag. This follows 4.44.2
/// to match the fixtures.
/// </para>
/// </summary>
internal sealed record TokenizerClassRule(string? ClassName, bool FlagsDecide, bool DefaultAddBos, bool DefaultAddEos,
    string? DefaultBos, string? DefaultEos)
{
    /// <summary>The fast classes whose constructor rebuilds the post-processor from the flags, with their defaults.</summary>
    private static readonly Dictionary<string, TokenizerClassRule> FlagClasses = new(StringComparer.Ordinal)
    {
        ["LlamaTokenizerFast"] = new("LlamaTokenizerFast", true, true, false, "<s>", "</s>"),
        ["CodeLlamaTokenizerFast"] = new("CodeLlamaTokenizerFast", true, true, false, "<s>", "</s>"),
        ["GemmaTokenizerFast"] = new("GemmaTokenizerFast", true, true, false, "<bos>", "<eos>"),
        ["CohereTokenizerFast"] = new("CohereTokenizerFast", true, true, false, "<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>"),
        ["GPTNeoXTokenizerFast"] = new("GPTNeoXTokenizerFast", true, false, false, "<|endoftext|>", "<|endoftext|>"),
    };

    /// <summary>
    /// transformers 4.44.2's TOKENIZER_MAPPING_NAMES, model type → fast class, for the model types whose class matters
    /// here: those mapped to a class above, and GPT-2's (for vocab.json + merges.txt). Any other model type's class
    /// keeps the post-processor.
    /// </summary>
    private static readonly Dictionary<string, string> ModelTypeClasses = new(StringComparer.Ordinal)
    {
        ["llama"] = "LlamaTokenizerFast", ["mistral"] = "LlamaTokenizerFast", ["mixtral"] = "LlamaTokenizerFast",
        ["phi3"] = "LlamaTokenizerFast", ["persimmon"] = "LlamaTokenizerFast", ["jamba"] = "LlamaTokenizerFast",
        ["jetmoe"] = "LlamaTokenizerFast", ["chameleon"] = "LlamaTokenizerFast", ["idefics"] = "LlamaTokenizerFast",
        ["idefics2"] = "LlamaTokenizerFast", ["llava"] = "LlamaTokenizerFast", ["llava_next"] = "LlamaTokenizerFast",
        ["llava_next_video"] = "LlamaTokenizerFast", ["paligemma"] = "LlamaTokenizerFast", ["video_llava"] = "LlamaTokenizerFast",
        ["vipllava"] = "LlamaTokenizerFast",
        ["gemma"] = "GemmaTokenizerFast", ["gemma2"] = "GemmaTokenizerFast", ["recurrent_gemma"] = "GemmaTokenizerFast",
        ["cohere"] = "CohereTokenizerFast",
        ["gpt_neox"] = "GPTNeoXTokenizerFast", ["mamba"] = "GPTNeoXTokenizerFast", ["mamba2"] = "GPTNeoXTokenizerFast",
        ["mpt"] = "GPTNeoXTokenizerFast", ["olmo"] = "GPTNeoXTokenizerFast", ["rwkv"] = "GPTNeoXTokenizerFast",
        ["stablelm"] = "GPTNeoXTokenizerFast",
        ["gpt2"] = "GPT2TokenizerFast", ["gpt_neo"] = "GPT2TokenizerFast", ["gptj"] = "GPT2TokenizerFast",
        ["gpt_bigcode"] = "GPT2TokenizerFast", ["opt"] = "GPT2TokenizerFast", ["dbrx"] = "GPT2TokenizerFast",
        ["starcoder2"] = "GPT2TokenizerFast",
        ["qwen2"] = "Qwen2TokenizerFast", ["qwen2_moe"] = "Qwen2TokenizerFast",
    };

    /// <summary>Whether this is GPT-2's class, whose slow-to-fast conversion honours add_bos_token.</summary>
    public bool IsGpt2 => ClassName == "GPT2TokenizerFast";

    /// <summary>
    /// The rule for a folder: <paramref name="configuredClass"/> is tokenizer_config.json's <c>tokenizer_class</c>
    /// (null when it has none); without one, <c>config.json</c> in <paramref name="modelDir"/> is read.
    /// </summary>
    /// <exception cref="TokenizerFormatException">config.json had to be read and is not valid JSON.</exception>
    public static TokenizerClassRule For(string modelDir, string? configuredClass)
    {
        var name = configuredClass ?? FromModelConfig(Path.Combine(modelDir, "config.json"));
        return ForClass(name);
    }

    /// <summary>The rule for a class name as tokenizer_config.json writes it (slow or fast), or null for none.</summary>
    public static TokenizerClassRule ForClass(string? name)
    {
        if (name is null) return new TokenizerClassRule(null, false, false, false, null, null);
        // AutoTokenizer tries NAME + "Fast" first; every class that matters here has a fast version.
        var fast = name.EndsWith("Fast", StringComparison.Ordinal) ? name : name + "Fast";
        return FlagClasses.TryGetValue(fast, out var rule) ? rule : new TokenizerClassRule(fast, false, false, false, null, null);
    }

    /// <summary>config.json's <c>tokenizer_class</c>, else the fast class of its <c>model_type</c>; null when neither helps.</summary>
    private static string? FromModelConfig(string path)
    {
        if (!File.Exists(path)) return null;
        using var doc = TokenizerJson.Parse(path);
        var root = doc.RootElement;
        if (root.ValueKind != JsonValueKind.Object) return null;
        var json = new TokenizerJson(path);  // its string reads name the file on text JSON can escape but .NET cannot hold
        if (root.TryGetProperty("tokenizer_class", out var cls) && cls.ValueKind == JsonValueKind.String) return json.ReadString(cls, "tokenizer_class");
        if (root.TryGetProperty("model_type", out var type) && type.ValueKind == JsonValueKind.String &&
            ModelTypeClasses.TryGetValue(json.ReadString(type, "model_type"), out var fromType)) return fromType;
        return null;
    }
}
