using System.Buffers;
using System.Runtime.CompilerServices;

namespace SharpLens.Tokenization;

/// <summary>
/// A token matched verbatim in the input before the model runs (HuggingFace's "added tokens"), such as
/// <c>&lt;|endoftext|&gt;</c> or <c>&lt;start_of_turn&gt;</c>. Its text never reaches the BPE model, so it always
/// encodes to exactly <see cref="Id"/>.
/// </summary>
/// <param name="Id">The token id.</param>
/// <param name="Content">The exact text that stands for the token.</param>
/// <param name="Special">Special tokens (BOS, EOS, padding, ...) can be left out when decoding.</param>
/// <param name="LStrip">The match also swallows whitespace on its left.</param>
/// <param name="RStrip">The match also swallows whitespace on its right.</param>
/// <param name="SingleWord">Matches only when no word character (Unicode <c>\w</c>) touches it on either side.</param>
/// <param name="Normalized">Matched in the normalized text, its own content normalized likewise, rather than in the raw input.</param>
public sealed record AddedToken(int Id, string Content, bool Special, bool LStrip = false, bool RStrip = false, bool SingleWord = false,
    bool Normalized = false);

/// <summary>A stretch of text: an added token (with the exact text it matched, swallowed whitespace included) or ordinary text.</summary>
internal readonly record struct AddedSplit(int Start, int Length, AddedToken? Token);

/// <summary>
/// Finds added tokens in text as tokenizers' AddedVocabulary does: leftmost-longest matching of the token
/// patterns (its Aho-Corasick automaton, here a trie walked from candidate positions found with a vectorised
/// search for the patterns' first characters); a <c>single_word</c> token touching a word character is passed
/// over; <c>lstrip</c>/<c>rstrip</c> widen the match over adjacent whitespace.
/// </summary>
internal sealed class AddedTokenMatcher
{
    private readonly Dictionary<long, int> _children = [];   // (node << 16 | char) -> child node
    private readonly List<int> _terminal = [-1];              // node -> index into _tokens, or -1
    private readonly AddedToken[] _tokens;
    private readonly SearchValues<char> _firstChars;

    public bool IsEmpty => _tokens.Length == 0;

    /// <param name="patterns">Each token with the text to look for (its content, normalized for normalized tokens).</param>
    public AddedTokenMatcher(IEnumerable<(string Pattern, AddedToken Token)> patterns)
    {
        var tokens = new List<AddedToken>();
        var first = new HashSet<char>();
        foreach (var (pattern, token) in patterns)
        {
            if (pattern.Length == 0) continue;
            var node = 0;
            foreach (var c in pattern)
            {
                var key = ((long)node << 16) | c;
                if (!_children.TryGetValue(key, out var child))
                {
                    child = _terminal.Count;
                    _terminal.Add(-1);
                    _children[key] = child;
                }
                node = child;
            }
            if (_terminal[node] >= 0) continue;   // the same pattern twice: the first token keeps it
            _terminal[node] = tokens.Count;
            tokens.Add(token);
            first.Add(pattern[0]);
        }
        _tokens = [.. tokens];
        _firstChars = SearchValues.Create([.. first]);
    }

    /// <summary>
    /// Appends the stretches of <paramref name="text"/> in order: added tokens and the ordinary text between them
    /// (never empty). As in tokenizers, matching resumes after a match's own end even when rstrip widened it.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Split(ReadOnlySpan<char> text, List<AddedSplit> output)
    {
        var startOffset = 0;
        var position = 0;
        while (position < text.Length)
        {
            var found = text[position..].IndexOfAny(_firstChars);
            if (found < 0) break;
            var start = position + found;
            var (tokenIndex, length) = LongestAt(text, start);
            if (tokenIndex < 0)
            {
                position = start + 1;
                continue;
            }
            position = start + length;
            var token = _tokens[tokenIndex];
            var stop = start + length;
            if (token.SingleWord)
            {
                var wordBefore = start > 0 && UnicodeText.IsWordChar(UnicodeText.CodePointBefore(text, start));
                var wordAfter = stop < text.Length && UnicodeText.IsWordChar(UnicodeText.CodePointAt(text, stop, out _));
                if (wordBefore || wordAfter) continue;
            }
            if (token.LStrip)
            {
                var newStart = start;
                while (newStart > 0)
                {
                    var c = UnicodeText.CodePointBefore(text, newStart);
                    if (!UnicodeText.IsWhiteSpace(c)) break;
                    newStart -= c > 0xFFFF ? 2 : 1;
                }
                start = Math.Max(newStart, startOffset);
            }
            if (token.RStrip)
                while (stop < text.Length)
                {
                    var c = UnicodeText.CodePointAt(text, stop, out var n);
                    if (!UnicodeText.IsWhiteSpace(c)) break;
                    stop += n;
                }
            if (startOffset < start) output.Add(new AddedSplit(startOffset, start - startOffset, null));
            output.Add(new AddedSplit(start, stop - start, token));
            startOffset = stop;
        }
        if (startOffset < text.Length) output.Add(new AddedSplit(startOffset, text.Length - startOffset, null));
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private (int Token, int Length) LongestAt(ReadOnlySpan<char> text, int start)
    {
        int node = 0, best = -1, bestLength = 0;
        for (var i = start; i < text.Length; i++)
        {
            if (!_children.TryGetValue(((long)node << 16) | text[i], out node)) break;
            if (_terminal[node] >= 0)
            {
                best = _terminal[node];
                bestLength = i - start + 1;
            }
        }
        return (best, bestLength);
    }
}
