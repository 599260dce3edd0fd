using System.Text;

namespace SharpLens.Tokenization;

/// <summary>
/// A tokenizer.json normalizer: rewrites each stretch of text between added tokens before pre-tokenization.
/// Offsets are not tracked (nothing here reports them), so a normalizer is a plain string function.
/// </summary>
internal abstract class Normalizer
{
    public abstract string Normalize(string text);
}

/// <summary>NFC, NFD, NFKC or NFKD.</summary>
internal sealed class UnicodeNormalizer(NormalizationForm form) : Normalizer
{
    // Lone surrogates were replaced by U+FFFD on the way in, so string.Normalize never sees invalid text.
    public override string Normalize(string text) => text.Normalize(form);
}

/// <summary>Lowercase: Rust's per-character full lowercase mapping.</summary>
internal sealed class LowercaseNormalizer : Normalizer
{
    public override string Normalize(string text) => UnicodeText.Lowercase(text);
}

/// <summary>Strip: removes White_Space on the left and/or right.</summary>
internal sealed class StripNormalizer(bool left, bool right) : Normalizer
{
    public override string Normalize(string text) => UnicodeText.Strip(text, left, right);
}

/// <summary>StripAccents: removes combining marks (meant to follow NFD or NFKD).</summary>
internal sealed class StripAccentsNormalizer : Normalizer
{
    public override string Normalize(string text) => UnicodeText.StripMarks(text);
}

/// <summary>Prepend: puts a string before non-empty text (Llama 2's legacy "▁").</summary>
internal sealed class PrependNormalizer(string prefix) : Normalizer
{
    public override string Normalize(string text) => text.Length == 0 ? text : prefix + text;
}

/// <summary>Replace: every occurrence of a literal string, or every match of a regex, becomes <c>content</c> (taken literally).</summary>
internal sealed class ReplaceNormalizer(TextPattern pattern, string content) : Normalizer
{
    public override string Normalize(string text) => pattern.ReplaceAll(text, content);
}

/// <summary>Sequence: the normalizers in order.</summary>
internal sealed class SequenceNormalizer(Normalizer[] normalizers) : Normalizer
{
    public override string Normalize(string text)
    {
        foreach (var n in normalizers) text = n.Normalize(text);
        return text;
    }
}

/// <summary>
/// The pattern of a Replace normalizer or decoder and of a Split pre-tokenizer: tokenizer.json's
/// <c>{"String": "..."}</c> (matched literally) or <c>{"Regex": "..."}</c>.
/// </summary>
internal sealed class TextPattern
{
    private readonly string? _literal;
    private readonly CodePointRegex? _regex;

    private TextPattern(string? literal, CodePointRegex? regex)
    {
        _literal = literal;
        _regex = regex;
    }

    public static TextPattern Literal(string literal) => new(literal, null);

    public static TextPattern FromRegex(CodePointRegex regex) => new(null, regex);

    /// <summary>Appends the non-overlapping matches in <paramref name="text"/>, left to right (none for an empty literal).</summary>
    public void Matches(ReadOnlySpan<char> text, List<(int Start, int Length)> matches)
    {
        if (_regex is not null)
        {
            _regex.Matches(text, matches);
            return;
        }
        if (string.IsNullOrEmpty(_literal)) return;
        for (var start = 0; start <= text.Length - _literal.Length;)
        {
            var i = text[start..].IndexOf(_literal, StringComparison.Ordinal);
            if (i < 0) break;
            matches.Add((start + i, _literal.Length));
            start += i + _literal.Length;
        }
    }

    public string ReplaceAll(string text, string content)
    {
        if (_literal is not null)
            return _literal.Length == 0 ? text : text.Replace(_literal, content, StringComparison.Ordinal);
        var matches = new List<(int Start, int Length)>();
        Matches(text, matches);
        if (matches.Count == 0) return text;
        var sb = new StringBuilder(text.Length);
        var last = 0;
        foreach (var (start, length) in matches)
        {
            sb.Append(text, last, start - last).Append(content);
            last = start + length;
        }
        return sb.Append(text, last, text.Length - last).ToString();
    }
}
