using System.Buffers;
using System.Globalization;
using System.Text;

namespace SharpLens.Tokenization;

/// <summary>
/// The character classes HuggingFace's tokenizers (Rust) uses, defined on code points rather than UTF-16
/// units, and the few text transformations whose Rust semantics differ from the obvious .NET call.
/// </summary>
internal static class UnicodeText
{
    /// <summary>
    /// Unicode's White_Space property (Rust's <c>char::is_whitespace</c>, Oniguruma's <c>\s</c>): exactly these
    /// 25 code points. Written out because <see cref="char.IsWhiteSpace(char)"/> is defined by categories and
    /// the property is stable, so no runtime's Unicode version can change the answer.
    /// </summary>
    public static bool IsWhiteSpace(int c) => c switch
    {
        >= 0x09 and <= 0x0D => true,
        0x20 or 0x85 or 0xA0 or 0x1680 => true,
        >= 0x2000 and <= 0x200A => true,
        0x2028 or 0x2029 or 0x202F or 0x205F or 0x3000 => true,
        _ => false,
    };

    /// <summary>Rust's <c>char::is_numeric</c>: general category Nd, Nl or No.</summary>
    public static bool IsNumeric(int c) => CharUnicodeInfo.GetUnicodeCategory(c) is
        UnicodeCategory.DecimalDigitNumber or UnicodeCategory.LetterNumber or UnicodeCategory.OtherNumber;

    /// <summary>
    /// The Unicode <c>\w</c> of Rust's regex crate, which tokenizers uses for added tokens' <c>single_word</c>
    /// and the Whitespace pre-tokenizer: Alphabetic, any mark, Nd, Pc, and the joiners U+200C/U+200D.
    /// Alphabetic is the letters, Nl, and Other_Alphabetic, which is marks (already in) and the circled and
    /// squared Latin letters below. .NET's own <c>\w</c> differs (no Mc, Me, Nl), hence this function.
    /// </summary>
    public static bool IsWordChar(int c)
    {
        switch (CharUnicodeInfo.GetUnicodeCategory(c))
        {
            case UnicodeCategory.UppercaseLetter or UnicodeCategory.LowercaseLetter or UnicodeCategory.TitlecaseLetter
                or UnicodeCategory.ModifierLetter or UnicodeCategory.OtherLetter or UnicodeCategory.LetterNumber
                or UnicodeCategory.NonSpacingMark or UnicodeCategory.SpacingCombiningMark or UnicodeCategory.EnclosingMark
                or UnicodeCategory.DecimalDigitNumber or UnicodeCategory.ConnectorPunctuation:
                return true;
            default:
                return c is 0x200C or 0x200D or (>= 0x24B6 and <= 0x24E9) or (>= 0x1F130 and <= 0x1F149)
                    or (>= 0x1F150 and <= 0x1F169) or (>= 0x1F170 and <= 0x1F189);
        }
    }

    /// <summary>Rust's <c>is_ascii_punctuation() || is_punctuation()</c> (the Punctuation and Bert pre-tokenizers).</summary>
    public static bool IsPunctuation(int c)
    {
        if (c < 0x80) return c is (>= 0x21 and <= 0x2F) or (>= 0x3A and <= 0x40) or (>= 0x5B and <= 0x60) or (>= 0x7B and <= 0x7E);
        return CharUnicodeInfo.GetUnicodeCategory(c) is UnicodeCategory.ConnectorPunctuation or UnicodeCategory.DashPunctuation
            or UnicodeCategory.OpenPunctuation or UnicodeCategory.ClosePunctuation or UnicodeCategory.InitialQuotePunctuation
            or UnicodeCategory.FinalQuotePunctuation or UnicodeCategory.OtherPunctuation;
    }

    /// <summary>The code point at <paramref name="i"/> and its length in UTF-16 units (a lone surrogate counts as itself, length 1).</summary>
    public static int CodePointAt(ReadOnlySpan<char> s, int i, out int length)
    {
        var c = s[i];
        if (char.IsHighSurrogate(c) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1]))
        {
            length = 2;
            return char.ConvertToUtf32(c, s[i + 1]);
        }
        length = 1;
        return c;
    }

    /// <summary>The code point that ends just before <paramref name="end"/>.</summary>
    public static int CodePointBefore(ReadOnlySpan<char> s, int end)
    {
        var c = s[end - 1];
        if (char.IsLowSurrogate(c) && end >= 2 && char.IsHighSurrogate(s[end - 2])) return char.ConvertToUtf32(s[end - 2], c);
        return c;
    }

    private static readonly SearchValues<char> Surrogates = SearchValues.Create([.. Enumerable.Range(0xD800, 0x800).Select(i => (char)i)]);

    /// <summary>True when <paramref name="s"/> holds any surrogate (a pair or a lone one).</summary>
    public static bool HasSurrogates(ReadOnlySpan<char> s) => s.IndexOfAny(Surrogates) >= 0;

    /// <summary>
    /// <paramref name="text"/> with every lone surrogate replaced by U+FFFD. A .NET (or JavaScript) string can
    /// hold them, Rust's cannot: the Node binding of tokenizers turns them into U+FFFD when it converts the
    /// string to UTF-8, and so does this. Returns the same instance when there is nothing to replace.
    /// </summary>
    public static string ReplaceLoneSurrogates(string text)
    {
        var first = text.AsSpan().IndexOfAny(Surrogates);
        if (first < 0) return text;
        char[]? copy = null;
        for (var i = first; i < text.Length; i++)
        {
            var c = text[i];
            if (!char.IsSurrogate(c)) continue;
            if (char.IsHighSurrogate(c) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
            {
                i++;
                continue;
            }
            copy ??= text.ToCharArray();
            copy[i] = '\uFFFD';
        }
        return copy is null ? text : new string(copy);
    }

    /// <summary>
    /// Rust's per-character <c>char::to_lowercase</c>, as tokenizers' Lowercase normalizer applies it: the
    /// full mapping, in which U+0130 (İ) becomes two characters "i̇", and no context rules (final sigma stays σ).
    /// </summary>
    public static string Lowercase(string text)
    {
        if (Ascii.IsValid(text)) return text.ToLowerInvariant();
        var sb = new StringBuilder(text.Length + 4);
        Span<char> buffer = stackalloc char[2];
        foreach (var rune in text.EnumerateRunes())
        {
            if (rune.Value == 0x130)
            {
                sb.Append('i').Append('\u0307');
                continue;
            }
            var lower = Rune.ToLowerInvariant(rune);
            sb.Append(buffer[..lower.EncodeToUtf16(buffer)]);
        }
        return sb.ToString();
    }

    /// <summary>Removes leading and/or trailing White_Space (tokenizers' Strip normalizer).</summary>
    public static string Strip(string text, bool left, bool right)
    {
        var start = 0;
        var end = text.Length;
        if (left)
            while (start < end)
            {
                var c = CodePointAt(text, start, out var n);
                if (!IsWhiteSpace(c)) break;
                start += n;
            }
        if (right)
            while (end > start)
            {
                var c = CodePointBefore(text, end);
                if (!IsWhiteSpace(c)) break;
                end -= c > 0xFFFF ? 2 : 1;
            }
        return start == 0 && end == text.Length ? text : text[start..end];
    }

    /// <summary>Removes combining marks (general category M), as tokenizers' StripAccents normalizer does.</summary>
    public static string StripMarks(string text)
    {
        var sb = new StringBuilder(text.Length);
        for (var i = 0; i < text.Length;)
        {
            var c = CodePointAt(text, i, out var n);
            if (CharUnicodeInfo.GetUnicodeCategory(c) is not (UnicodeCategory.NonSpacingMark or UnicodeCategory.SpacingCombiningMark or UnicodeCategory.EnclosingMark))
                sb.Append(text, i, n);
            i += n;
        }
        return sb.Length == text.Length ? text : sb.ToString();
    }
}
