using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

namespace SharpLens.TokenizerBench;

/// <summary>
/// The closest Microsoft.ML.Tokenizers 3.0.0 offers for each tokenizer.json, built from the file's own
/// vocabulary, merges, split regex and special tokens, so its ids can be compared with the oracle's.
/// Llama 2 and Gemma (BPE with byte_fallback) have no counterpart: the package reads SentencePiece BPE only
/// from a tokenizer.model protobuf, and from tokenizer.json only Unigram models.
/// </summary>
internal static class MlTokenizers
{
    /// <summary>A contestant: its label and a factory for a fresh encoder (empty caches), or why it cannot be built.</summary>
    public sealed record Candidate(string Label, Func<Func<string, IReadOnlyList<int>>>? Create, string? WhyNot);

    private const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    public static List<Candidate> For(string tokenizerJson)
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(tokenizerJson));
        var root = doc.RootElement;
        var model = root.GetProperty("model");
        if (model.TryGetProperty("byte_fallback", out var bf) && bf.ValueKind == JsonValueKind.True)
            return [new Candidate("ML.Tokenizers", null,
                "no counterpart: SentencePiece BPE (byte_fallback) loads only from tokenizer.model; CreateFromTokenizerJson reads Unigram models only")];

        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var p in model.GetProperty("vocab").EnumerateObject()) vocab[p.Name] = p.Value.GetInt32();
        var merges = model.GetProperty("merges").EnumerateArray()
            .Select(m => m.ValueKind == JsonValueKind.String ? m.GetString()! : m[0].GetString() + " " + m[1].GetString()).ToList();
        var specials = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var t in root.GetProperty("added_tokens").EnumerateArray()) specials[t.GetProperty("content").GetString()!] = t.GetProperty("id").GetInt32();
        var pattern = FindSplitRegex(root.GetProperty("pre_tokenizer")) ?? Gpt2Pattern;
        var nfc = root.TryGetProperty("normalizer", out var n) && n.ValueKind == JsonValueKind.Object && n.GetProperty("type").GetString() == "NFC";
        Normalizer? normalizer = nfc ? new NfcNormalizer() : null;
        var regex = new Regex(pattern, RegexOptions.Compiled | RegexOptions.CultureInvariant);

        Func<string, IReadOnlyList<int>> CreateBpe()
        {
            var bpe = BpeTokenizer.Create(new BpeOptions(vocab)
            {
                Merges = merges,
                ByteLevel = true,
                PreTokenizer = new RegexPreTokenizer(regex, specials),
                Normalizer = normalizer,
                SpecialTokens = specials,
            });
            return t => bpe.EncodeToIds(t);
        }
        var candidates = new List<Candidate> { new("ML.Tokenizers BpeTokenizer (ByteLevel)", CreateBpe, null) };

        // Tiktoken: byte-level vocabularies are tiktoken ranks spelled in GPT-2's byte alphabet; merges follow the ranks.
        var tiktoken = new StringBuilder();
        foreach (var (token, id) in vocab.OrderBy(kv => kv.Value))
        {
            var bytes = token.Select(c => SharpLens.Tokenization.ByteLevelAlphabet.CharToByte(c)).ToArray();
            if (bytes.All(b => b >= 0)) tiktoken.Append(Convert.ToBase64String(bytes.Select(b => (byte)b).ToArray())).Append(' ').Append(id).Append('\n');
        }
        var tiktokenBytes = Encoding.UTF8.GetBytes(tiktoken.ToString());
        Func<string, IReadOnlyList<int>> CreateTiktoken()
        {
            using var stream = new MemoryStream(tiktokenBytes);
            var tik = TiktokenTokenizer.Create(stream, new RegexPreTokenizer(regex, specials), normalizer, specials);
            return t => tik.EncodeToIds(t);
        }
        candidates.Add(new Candidate("ML.Tokenizers TiktokenTokenizer", CreateTiktoken, null));
        return candidates;
    }

    private static string? FindSplitRegex(JsonElement pre)
    {
        if (pre.ValueKind != JsonValueKind.Object) return null;
        var type = pre.GetProperty("type").GetString();
        if (type == "Split" && pre.GetProperty("pattern").TryGetProperty("Regex", out var r)) return r.GetString();
        if (type == "Sequence")
            foreach (var p in pre.GetProperty("pretokenizers").EnumerateArray())
                if (FindSplitRegex(p) is { } found) return found;
        return null;
    }

    /// <summary>
    /// Qwen's NFC normalizer, which the package does not ship. string.Normalize refuses text with lone
    /// surrogates; such text is passed on unchanged, so the comparison measures the package, not this adapter.
    /// </summary>
    private sealed class NfcNormalizer : Normalizer
    {
        public override string Normalize(string original)
        {
            try
            {
                return original.Normalize(NormalizationForm.FormC);
            }
            catch (ArgumentException)
            {
                return original;
            }
        }

        public override string Normalize(ReadOnlySpan<char> original) => Normalize(original.ToString());
    }
}
