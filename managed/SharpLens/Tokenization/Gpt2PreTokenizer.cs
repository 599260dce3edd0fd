using System.Globalization;
using System.Text.RegularExpressions;

namespace SharpLens.Tokenization;

/// <summary>
/// GPT-2's pre-tokenization: splits text into the pieces BPE runs on independently (words with their
/// leading space, number runs, punctuation runs, whitespace runs), using the regex from OpenAI's
/// encoder.py that HuggingFace's ByteLevel pre-tokenizer also uses.
/// </summary>
internal static partial class Gpt2PreTokenizer
{
    /// <summary>
    /// The GPT-2 pattern. <c>\s+(?!\S)</c> leaves the last space of a whitespace run for the following
    /// word, so " hello" keeps its space-prefixed form. .NET's <c>\s</c> is exactly Unicode White_Space,
    /// like the regex engines used by encoder.py and HuggingFace.
    /// </summary>
    [GeneratedRegex(@"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+", RegexOptions.CultureInvariant)]
    private static partial Regex Pattern();

    /// <summary>Appends the (start, length) of each piece of <paramref name="text"/> to <paramref name="pieces"/>, covering the text in order.</summary>
    public static void Split(string text, List<(int Start, int Length)> pieces)
    {
        // .NET regexes see UTF-16 code units, so \p{L} and \p{N} never match a letter or digit outside the
        // BMP (CJK extension B, mathematical alphanumerics, ...): both halves of its surrogate pair are
        // category Cs. Python and HuggingFace match code points. Running the regex on a shadow string of
        // the same length in which such pairs become two ASCII letters ('A') or digits ('0') gives the
        // code-point split, whose indices then apply to the original text. Other astral characters
        // (emoji, ...) are neither letters, digits nor whitespace, and neither are surrogates, so they stay.
        // 'A' is uppercase so it can never complete one of the lowercase contractions ('s, 't, ...).
        var subject = NeedsShadow(text) ? Shadow(text) : text;
        foreach (var m in Pattern().EnumerateMatches(subject))
            pieces.Add((m.Index, m.Length));
    }

    private static bool NeedsShadow(string text)
    {
        for (var i = 0; i < text.Length - 1; i++)
        {
            if (!char.IsHighSurrogate(text[i]) || !char.IsLowSurrogate(text[i + 1])) continue;
            if (ClassOf(char.ConvertToUtf32(text[i], text[i + 1])) != '\0') return true;
            i++;
        }
        return false;
    }

    private static string Shadow(string text) => string.Create(text.Length, text, static (span, source) =>
    {
        source.AsSpan().CopyTo(span);
        for (var i = 0; i < span.Length - 1; i++)
        {
            if (!char.IsHighSurrogate(span[i]) || !char.IsLowSurrogate(span[i + 1])) continue;
            var replacement = ClassOf(char.ConvertToUtf32(span[i], span[i + 1]));
            if (replacement != '\0') span[i] = span[i + 1] = replacement;
            i++;
        }
    });

    /// <summary>'A' for a letter, '0' for a number, '\0' for anything else.</summary>
    private static char ClassOf(int codePoint) => CharUnicodeInfo.GetUnicodeCategory(codePoint) switch
    {
        UnicodeCategory.UppercaseLetter or UnicodeCategory.LowercaseLetter or UnicodeCategory.TitlecaseLetter
            or UnicodeCategory.ModifierLetter or UnicodeCategory.OtherLetter => 'A',
        UnicodeCategory.DecimalDigitNumber or UnicodeCategory.LetterNumber or UnicodeCategory.OtherNumber => '0',
        _ => '\0',
    };
}
