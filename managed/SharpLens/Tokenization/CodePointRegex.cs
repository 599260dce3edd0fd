using System.Buffers;
using System.Globalization;
using System.Runtime.CompilerServices;
using System.Text.RegularExpressions;

namespace SharpLens.Tokenization;

/// <summary>
/// A .NET regex that matches as Oniguruma (the regex engine of HuggingFace's tokenizers) does on code points.
/// .NET regexes see UTF-16 units: a character outside the BMP is two surrogates, neither of which is a letter,
/// a digit or anything else a pattern asks for, and <c>[^\p{L}]?</c> or <c>\p{N}{1,3}</c> would count it as
/// two characters. So text holding surrogate pairs is matched on a compacted copy in which every pair is one
/// BMP stand-in of the same general category (an astral letter becomes a BMP letter, an emoji a BMP symbol),
/// and the match positions are mapped back. Text without surrogates (nearly all) is matched directly.
/// Patterns that spell astral characters themselves are run on the UTF-16 text unchanged.
/// </summary>
internal sealed class CodePointRegex
{
    private readonly Regex _regex;
    private readonly bool _compactAstral;

    /// <summary>The pattern as written in the tokenizer file.</summary>
    public string Pattern { get; }

    public CodePointRegex(Regex regex, string pattern)
    {
        _regex = regex;
        Pattern = pattern;
        _compactAstral = !UnicodeText.HasSurrogates(pattern);
    }

    /// <summary>
    /// Appends the (start, length) of each match inside <paramref name="text"/>, positions relative to it, in
    /// order. Like Oniguruma's iterator (and unlike .NET's), an empty match right where the previous match
    /// ended is not reported.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Matches(ReadOnlySpan<char> text, List<(int Start, int Length)> matches)
    {
        if (!_compactAstral || !UnicodeText.HasSurrogates(text))
        {
            var lastEnd = -1;
            foreach (var m in _regex.EnumerateMatches(text))
            {
                if (m.Length == 0 && m.Index == lastEnd) continue;
                matches.Add((m.Index, m.Length));
                lastEnd = m.Index + m.Length;
            }
            return;
        }

        // compact[k] stands for the code point at text[map[k]]; map[count] = text.Length closes the last one.
        var compact = ArrayPool<char>.Shared.Rent(text.Length);
        var map = ArrayPool<int>.Shared.Rent(text.Length + 1);
        try
        {
            var count = 0;
            for (var i = 0; i < text.Length;)
            {
                map[count] = i;
                var c = UnicodeText.CodePointAt(text, i, out var n);
                compact[count++] = n == 2 ? StandIn(c) : text[i];
                i += n;
            }
            map[count] = text.Length;

            var lastEnd = -1;
            foreach (var m in _regex.EnumerateMatches(compact.AsSpan(0, count)))
            {
                if (m.Length == 0 && m.Index == lastEnd) continue;
                var start = map[m.Index];
                matches.Add((start, map[m.Index + m.Length] - start));
                lastEnd = m.Index + m.Length;
            }
        }
        finally
        {
            ArrayPool<char>.Shared.Return(compact);
            ArrayPool<int>.Shared.Return(map);
        }
    }

    /// <summary>
    /// A BMP character of the same general category as the astral <paramref name="codePoint"/>, chosen from
    /// blocks no tokenizer pattern names (Yi, Vai, Cyrillic Extended-B, ...), so only category classes such
    /// as \p{L}, \p{N}, \p{M}, \p{P}, \p{S} can tell it apart from the character it replaces.
    /// </summary>
    private static char StandIn(int codePoint) => CharUnicodeInfo.GetUnicodeCategory(codePoint) switch
    {
        UnicodeCategory.UppercaseLetter => '\uA640',        // CYRILLIC CAPITAL LETTER ZEMLYA
        UnicodeCategory.LowercaseLetter => '\uA641',        // CYRILLIC SMALL LETTER ZEMLYA
        UnicodeCategory.TitlecaseLetter => '\u01C5',        // LATIN CAPITAL LETTER D WITH SMALL LETTER Z WITH CARON
        UnicodeCategory.ModifierLetter => '\uA67F',         // CYRILLIC PAYEROK
        UnicodeCategory.OtherLetter => '\uA000',            // YI SYLLABLE IT
        UnicodeCategory.NonSpacingMark => '\uA66F',         // COMBINING CYRILLIC VZMET
        UnicodeCategory.SpacingCombiningMark => '\uA823',   // SYLOTI NAGRI VOWEL SIGN A
        UnicodeCategory.EnclosingMark => '\uA670',          // COMBINING CYRILLIC TEN MILLIONS SIGN
        UnicodeCategory.DecimalDigitNumber => '\uA620',     // VAI DIGIT ZERO
        UnicodeCategory.LetterNumber => '\uA6E6',           // BAMUM LETTER MO
        UnicodeCategory.OtherNumber => '\uA830',            // NORTH INDIC FRACTION ONE QUARTER
        UnicodeCategory.ConnectorPunctuation => '\uFE4D',   // DASHED LOW LINE
        UnicodeCategory.DashPunctuation => '\uFE58',        // SMALL EM DASH
        UnicodeCategory.OpenPunctuation => '\uFE59',        // SMALL LEFT PARENTHESIS
        UnicodeCategory.ClosePunctuation => '\uFE5A',       // SMALL RIGHT PARENTHESIS
        UnicodeCategory.InitialQuotePunctuation => '\u2E1C', // LEFT LOW PARAPHRASE BRACKET
        UnicodeCategory.FinalQuotePunctuation => '\u2E1D',  // RIGHT LOW PARAPHRASE BRACKET
        UnicodeCategory.OtherPunctuation => '\uA60D',       // VAI COMMA
        UnicodeCategory.MathSymbol => '\u2A1D',             // JOIN
        UnicodeCategory.CurrencySymbol => '\u20A0',         // EURO-CURRENCY SIGN
        UnicodeCategory.ModifierSymbol => '\uA700',         // MODIFIER LETTER CHINESE TONE YIN PING
        UnicodeCategory.OtherSymbol => '\uA490',            // YI RADICAL QOT
        UnicodeCategory.Format => '\u2064',                 // INVISIBLE PLUS
        UnicodeCategory.PrivateUse => '\uE000',
        _ => '\u0378',                                      // unassigned, like the astral code point
    };
}
