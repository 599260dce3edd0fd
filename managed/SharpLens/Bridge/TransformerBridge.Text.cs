using SharpLens.Adapters;
using SharpLens.Tokenization;

namespace SharpLens;

public sealed partial class TransformerBridge
{
    private BpeTokenizer? _tokenizer;
    private bool _tokenizerLoaded;

    /// <summary>True when the model directory holds a tokenizer (tokenizer.json, or vocab.json + merges.txt).</summary>
    public bool HasTokenizer => TryTokenizer() is not null;

    /// <summary>The model directory's tokenizer; throws, naming the directory and the files looked for, when there is none.</summary>
    public BpeTokenizer Tokenizer => TryTokenizer() ?? BpeTokenizer.FromDirectory(ModelDirectory);

    private BpeTokenizer? TryTokenizer()
    {
        if (_tokenizerLoaded) return _tokenizer;
        var dir = ModelDirectory;
        if (File.Exists(Path.Combine(dir, "tokenizer.json")) || (File.Exists(Path.Combine(dir, "vocab.json")) && File.Exists(Path.Combine(dir, "merges.txt"))))
        {
            _tokenizer = BpeTokenizer.FromDirectory(dir);
            if (_tokenizer.VocabSize > Config.DVocab)
                throw new ModelLoadException(dir, $"the tokenizer has {_tokenizer.VocabSize} tokens but the model's vocabulary has {Config.DVocab}");
        }
        _tokenizerLoaded = true;
        return _tokenizer;
    }

    /// <summary>Token ids [1, n] for a text; BOS is prepended by the architecture's default (GPT-2 yes, Pythia no) unless stated.</summary>
    public Tensor ToTokens(string text, bool? prependBos = null) => Tokenizer.ToTokens(text, prependBos ?? Config.DefaultPrependBos);

    /// <summary>
    /// Token ids [batch, max_len] and an attention mask for several texts, padded on the given side. Pass both to
    /// <see cref="HookedModel.Forward"/>: positions and attention honour the mask, so each text's logits are those it gets alone.
    /// </summary>
    public TokenBatch ToTokens(IReadOnlyList<string> texts, bool? prependBos = null, PaddingSide side = PaddingSide.Right) =>
        Tokenizer.EncodeBatch(texts, prependBos ?? Config.DefaultPrependBos, side);

    /// <summary>Each token of a text as a string (<c>" world"</c>), with the architecture's BOS default.</summary>
    public string[] ToStrTokens(string text, bool? prependBos = null) => Tokenizer.ToStrTokens(text, prependBos ?? Config.DefaultPrependBos);

    /// <summary>Each token id as its string.</summary>
    public string[] ToStrTokens(Tensor tokens) => Tokenizer.ToStrTokens(TokenIds(tokens));

    /// <summary>The text of token ids ([n] or [1, n]).</summary>
    public string TokensToString(Tensor tokens) => Tokenizer.Decode(tokens);

    /// <summary>Logits [1, n, vocab] of a text.</summary>
    public Tensor Forward(string text, bool? prependBos = null)
    {
        using var tokens = ToTokens(text, prependBos);
        return Forward(tokens);
    }

    /// <summary>Mean next-token loss of a text.</summary>
    public Tensor Loss(string text, bool? prependBos = null)
    {
        using var tokens = ToTokens(text, prependBos);
        return Loss(tokens);
    }

    private static IEnumerable<int> TokenIds(Tensor tokens)
    {
        if (tokens.Dim > 2 || (tokens.Dim == 2 && tokens.Size(0) != 1))
            throw new ArgumentException($"expected token ids [n] or [1, n], got {Tensor.FormatShape(tokens.Shape)}");
        using var flat = tokens.Reshape(-1).To(ScalarType.Int64);
        return flat.ToArray<long>().Select(v => checked((int)v)).ToArray();
    }
}
