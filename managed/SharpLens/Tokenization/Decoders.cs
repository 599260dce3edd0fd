using System.Text;

namespace SharpLens.Tokenization;

/// <summary>
/// A tokenizer.json decoder: turns the token strings of some ids into the strings that, concatenated, are the
/// text (tokenizers' <c>decode_chain</c>). Every token goes through it, added tokens included.
/// </summary>
internal abstract class Decoder
{
    public abstract List<string> DecodeChain(List<string> tokens);
}

/// <summary>
/// ByteLevel: each token spelled in GPT-2's byte alphabet becomes its bytes (a token with any character outside
/// the alphabet, such as an added token "€x", contributes its own UTF-8 instead); all bytes are decoded as UTF-8
/// at once, invalid sequences becoming U+FFFD as in Rust's <c>from_utf8_lossy</c>.
/// </summary>
internal sealed class ByteLevelDecoder : Decoder
{
    public override List<string> DecodeChain(List<string> tokens)
    {
        var bytes = new List<byte>();
        foreach (var token in tokens) AppendBytes(token, bytes);
        return [Encoding.UTF8.GetString(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(bytes))];
    }

    public static void AppendBytes(string token, List<byte> bytes)
    {
        var mark = bytes.Count;
        foreach (var c in token)
        {
            var b = ByteLevelAlphabet.CharToByte(c);
            if (b < 0)
            {
                bytes.RemoveRange(mark, bytes.Count - mark);
                bytes.AddRange(Encoding.UTF8.GetBytes(token));
                return;
            }
            bytes.Add((byte)b);
        }
    }
}

/// <summary>
/// ByteFallback: runs of &lt;0xXX&gt; tokens become the text of their bytes, or one U+FFFD per byte when the run
/// is not valid UTF-8; other tokens pass unchanged.
/// </summary>
internal sealed class ByteFallbackDecoder : Decoder
{
    private static readonly UTF8Encoding Strict = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    public override List<string> DecodeChain(List<string> tokens)
    {
        var result = new List<string>(tokens.Count);
        var pending = new List<byte>();
        foreach (var token in tokens)
        {
            if (token.Length == 6 && token.StartsWith("<0x", StringComparison.Ordinal) && token[5] == '>' &&
                byte.TryParse(token.AsSpan(3, 2), System.Globalization.NumberStyles.AllowHexSpecifier, null, out var b))
            {
                pending.Add(b);
                continue;
            }
            Flush();
            result.Add(token);
        }
        Flush();
        return result;

        void Flush()
        {
            if (pending.Count == 0) return;
            try
            {
                result.Add(Strict.GetString(pending.ToArray()));
            }
            catch (DecoderFallbackException)
            {
                for (var i = 0; i < pending.Count; i++) result.Add("\uFFFD");
            }
            pending.Clear();
        }
    }
}

/// <summary>Fuse: all tokens become one string.</summary>
internal sealed class FuseDecoder : Decoder
{
    public override List<string> DecodeChain(List<string> tokens) => [string.Concat(tokens)];
}

/// <summary>Strip: removes up to <c>start</c> leading and <c>stop</c> trailing occurrences of one character from each token.</summary>
internal sealed class StripDecoder(int content, int start, int stop) : Decoder
{
    public override List<string> DecodeChain(List<string> tokens)
    {
        var result = new List<string>(tokens.Count);
        foreach (var token in tokens)
        {
            var runes = token.EnumerateRunes().ToArray();
            var startCut = 0;
            while (startCut < start && startCut < runes.Length && runes[startCut].Value == content) startCut++;
            var stopCut = 0;
            while (stopCut < stop && stopCut < runes.Length && runes[runes.Length - 1 - stopCut].Value == content) stopCut++;
            var keep = Math.Max(0, runes.Length - startCut - stopCut);
            var sb = new StringBuilder();
            foreach (var r in runes.AsSpan(startCut, keep)) sb.Append(r.ToString());
            result.Add(sb.ToString());
        }
        return result;
    }
}

/// <summary>Replace: in each token, every match of the pattern becomes <c>content</c>.</summary>
internal sealed class ReplaceDecoder(TextPattern pattern, string content) : Decoder
{
    public override List<string> DecodeChain(List<string> tokens) => tokens.Select(t => pattern.ReplaceAll(t, content)).ToList();
}

/// <summary>
/// Metaspace: the replacement character becomes a space, except in the first token, where (unless the
/// prepend_scheme is "never") it is dropped, as tokenizers does.
/// </summary>
internal sealed class MetaspaceDecoder(string replacement, MetaspacePrepend prepend) : Decoder
{
    public override List<string> DecodeChain(List<string> tokens)
    {
        var result = new List<string>(tokens.Count);
        for (var i = 0; i < tokens.Count; i++)
            result.Add(tokens[i].Replace(replacement, i == 0 && prepend != MetaspacePrepend.Never ? "" : " ", StringComparison.Ordinal));
        return result;
    }
}

/// <summary>BPEDecoder: the end-of-word suffix becomes a space, and disappears from the last token.</summary>
internal sealed class SuffixDecoder(string suffix) : Decoder
{
    public override List<string> DecodeChain(List<string> tokens)
    {
        var result = new List<string>(tokens.Count);
        for (var i = 0; i < tokens.Count; i++)
            result.Add(suffix.Length == 0 ? tokens[i] : tokens[i].Replace(suffix, i == tokens.Count - 1 ? "" : " ", StringComparison.Ordinal));
        return result;
    }
}

/// <summary>Sequence: the decoders in order.</summary>
internal sealed class SequenceDecoder(Decoder[] decoders) : Decoder
{
    public override List<string> DecodeChain(List<string> tokens)
    {
        foreach (var d in decoders) tokens = d.DecodeChain(tokens);
        return tokens;
    }
}

/// <summary>
/// The special tokens a post-processor puts around a single sequence (TemplateProcessing, RobertaProcessing,
/// BertProcessing, Sequences of them; ByteLevel adds none), with the token strings tokenizers reports for them.
/// </summary>
internal sealed record SpecialTokenTemplate(int[] PrefixIds, string[] PrefixTokens, int[] SuffixIds, string[] SuffixTokens)
{
    public static readonly SpecialTokenTemplate None = new([], [], [], []);

    /// <summary>This template applied inside <paramref name="outer"/> (a Sequence of processors: the later one wraps the earlier).</summary>
    public SpecialTokenTemplate WrappedBy(SpecialTokenTemplate outer) => new(
        [.. outer.PrefixIds, .. PrefixIds], [.. outer.PrefixTokens, .. PrefixTokens],
        [.. SuffixIds, .. outer.SuffixIds], [.. SuffixTokens, .. outer.SuffixTokens]);
}
