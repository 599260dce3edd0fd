using System.Text;
using System.Text.RegularExpressions;

namespace SharpLens.Tokenization;

/// <summary>
/// A token matched verbatim in the input before BPE runs (HuggingFace's "added tokens"), such as
/// <c>&lt;|endoftext|&gt;</c>. Its text never reaches the BPE model, so it always encodes to exactly <see cref="Id"/>.
/// </summary>
/// <param name="Id">The token id.</param>
/// <param name="Content">The exact text that stands for the token.</param>
/// <param name="Special">Special tokens (BOS, EOS, padding, ...) can be left out when decoding.</param>
/// <param name="LStrip">The match also swallows whitespace on its left.</param>
/// <param name="RStrip">The match also swallows whitespace on its right.</param>
/// <param name="SingleWord">Matches only when not inside a word (no letter, digit or underscore on either side).</param>
public sealed record AddedToken(int Id, string Content, bool Special, bool LStrip = false, bool RStrip = false, bool SingleWord = false);

/// <summary>Splits text on a set of added tokens: the longest token wins where several match at one place.</summary>
internal sealed class AddedTokenMatcher
{
    private readonly Regex? _regex;
    private readonly Dictionary<string, AddedToken> _byContent;

    public IReadOnlyList<AddedToken> Tokens { get; }

    /// <summary>The added token whose text is exactly <paramref name="content"/>.</summary>
    public bool TryGet(string content, out AddedToken token) => _byContent.TryGetValue(content, out token!);

    public AddedTokenMatcher(IReadOnlyList<AddedToken> tokens)
    {
        Tokens = tokens;
        _byContent = new Dictionary<string, AddedToken>(StringComparer.Ordinal);
        // Empty contents would match everywhere; loaders reject them, and they are skipped here as well.
        foreach (var t in tokens)
            if (t.Content.Length > 0) _byContent[t.Content] = t;
        if (_byContent.Count == 0) return;

        // A regex alternation tries its branches in order at each position, so sorting by length makes the
        // longest token win, as HuggingFace's leftmost-longest Aho-Corasick matcher does. The token text is
        // captured in a group so the swallowed whitespace (lstrip/rstrip) can be told apart from it.
        var pattern = new StringBuilder();
        foreach (var t in _byContent.Values.OrderByDescending(t => t.Content.Length).ThenBy(t => t.Content, StringComparer.Ordinal))
        {
            if (pattern.Length > 0) pattern.Append('|');
            pattern.Append("(?:");
            if (t.SingleWord) pattern.Append(@"(?<![\w])");
            if (t.LStrip) pattern.Append(@"\s*");
            pattern.Append("(?<t>").Append(Regex.Escape(t.Content)).Append(')');
            if (t.RStrip) pattern.Append(@"\s*");
            if (t.SingleWord) pattern.Append(@"(?![\w])");
            pattern.Append(')');
        }
        _regex = new Regex(pattern.ToString(), RegexOptions.CultureInvariant);
    }

    /// <summary>
    /// Calls <paramref name="onText"/> for each stretch of ordinary text (never empty) and
    /// <paramref name="onToken"/> for each added token, in order.
    /// </summary>
    public void Split(string text, Action<int, int> onText, Action<AddedToken> onToken)
    {
        if (_regex is null)
        {
            if (text.Length > 0) onText(0, text.Length);
            return;
        }
        var start = 0;
        for (var m = _regex.Match(text); m.Success; m = m.NextMatch())
        {
            if (m.Length == 0) continue;
            if (m.Index > start) onText(start, m.Index - start);
            onToken(_byContent[m.Groups["t"].Value]);
            start = m.Index + m.Length;
        }
        if (start < text.Length) onText(start, text.Length - start);
    }
}
