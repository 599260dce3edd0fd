using System.Runtime.CompilerServices;
using System.Text.RegularExpressions;

namespace SharpLens.Tokenization;

/// <summary>
/// A stretch of text on its way to the BPE model: <see cref="Length"/> characters of <see cref="Text"/> from
/// <see cref="Start"/>. Splitting only narrows the window, so most pre-tokenizers allocate nothing.
/// <see cref="AtOrigin"/>: the stretch begins where the input text begins (Metaspace's prepend_scheme "first").
/// </summary>
internal readonly record struct Piece(string Text, int Start, int Length, bool AtOrigin)
{
    public ReadOnlySpan<char> Span => Text.AsSpan(Start, Length);

    /// <summary>The sub-piece at <paramref name="offset"/> (relative to this piece); only one at offset 0 keeps <see cref="AtOrigin"/>.</summary>
    public Piece Slice(int offset, int length) => new(Text, Start + offset, length, AtOrigin && offset == 0);

    public static Piece Of(string text, bool atOrigin) => new(text, 0, text.Length, atOrigin);
}

/// <summary>What a Split-like pre-tokenizer does with the matches of its pattern (tokenizers' SplitDelimiterBehavior).</summary>
internal enum SplitBehavior
{
    Removed,
    Isolated,
    MergedWithPrevious,
    MergedWithNext,
    Contiguous,
}

/// <summary>A tokenizer.json pre-tokenizer: splits (and for some types rewrites) one piece into the pieces BPE runs on.</summary>
internal abstract class PreTokenizer
{
    /// <summary>Appends the non-empty pieces <paramref name="piece"/> becomes, in order.</summary>
    public abstract void Split(in Piece piece, List<Piece> output);

    protected static List<(int Start, int Length)> RentMatches() => ListPool<(int Start, int Length)>.Rent();

    protected static void Return(List<(int Start, int Length)> list) => ListPool<(int Start, int Length)>.Return(list);

    protected static List<Piece> RentPieces() => ListPool<Piece>.Rent();

    protected static void Return(List<Piece> list) => ListPool<Piece>.Return(list);

    /// <summary>
    /// Turns the matches of a pattern in <paramref name="piece"/> into pieces as tokenizers'
    /// <c>NormalizedString::split</c> does: the piece is cut into alternating non-match and match stretches
    /// (<paramref name="invert"/> swaps which is which), <paramref name="behavior"/> decides what becomes of the
    /// matches, and empty pieces are dropped.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    protected static void SplitByMatches(Piece piece, List<(int Start, int Length)> matches, SplitBehavior behavior, bool invert, List<Piece> output)
    {
        var prev = 0;
        var pending = (Start: -1, End: -1);   // the stretch being merged (MergedWithPrevious/Next, Contiguous)
        var previousMatch = false;
        var n = matches.Count;
        // Walks stretches in order; MergedWithNext needs to know whether the *next* stretch is a match, which is
        // handled by keeping a pending match stretch until the following stretch arrives.
        for (var i = 0; i <= n; i++)
        {
            int gapStart = prev, gapEnd = i < n ? matches[i].Start : piece.Length;
            if (gapEnd > gapStart) Stretch(gapStart, gapEnd, invert);
            if (i < n)
            {
                Stretch(matches[i].Start, matches[i].Start + matches[i].Length, !invert);
                prev = matches[i].Start + matches[i].Length;
            }
        }
        if (pending.Start >= 0) Emit(pending.Start, pending.End);
        return;

        void Stretch(int start, int end, bool isMatch)
        {
            switch (behavior)
            {
                case SplitBehavior.Isolated:
                    Emit(start, end);
                    break;
                case SplitBehavior.Removed:
                    if (!isMatch) Emit(start, end);
                    break;
                case SplitBehavior.MergedWithPrevious:
                    // A match joins the stretch before it, unless that stretch was a match itself.
                    if (isMatch && !previousMatch && pending.Start >= 0) pending.End = end;
                    else
                    {
                        if (pending.Start >= 0) Emit(pending.Start, pending.End);
                        pending = (start, end);
                    }
                    break;
                case SplitBehavior.MergedWithNext:
                    // A match joins the stretch after it, unless that stretch is a match itself: tokenizers folds
                    // from the right, so a match stays pending until the next stretch is known.
                    if (pending.Start >= 0)
                    {
                        if (!isMatch) { pending.End = end; Emit(pending.Start, pending.End); pending = (-1, -1); }
                        else { Emit(pending.Start, pending.End); pending = (start, end); }
                    }
                    else if (isMatch) pending = (start, end);
                    else Emit(start, end);
                    break;
                case SplitBehavior.Contiguous:
                    if (pending.Start >= 0 && isMatch == previousMatch) pending.End = end;
                    else
                    {
                        if (pending.Start >= 0) Emit(pending.Start, pending.End);
                        pending = (start, end);
                    }
                    break;
            }
            previousMatch = isMatch;
        }

        void Emit(int start, int end)
        {
            if (end > start) output.Add(piece.Slice(start, end - start));
        }
    }

    /// <summary>Appends one match per code point satisfying <paramref name="predicate"/> (tokenizers' <c>Fn(char) -> bool</c> patterns).</summary>
    protected static void CharMatches(ReadOnlySpan<char> text, Func<int, bool> predicate, List<(int Start, int Length)> matches)
    {
        for (var i = 0; i < text.Length;)
        {
            var c = UnicodeText.CodePointAt(text, i, out var len);
            if (predicate(c)) matches.Add((i, len));
            i += len;
        }
    }
}

/// <summary>
/// ByteLevel: optionally puts a space before a piece that does not start with one, splits it with GPT-2's
/// regex (use_regex), and spells it in GPT-2's byte alphabet. When it is the last pre-tokenizer the spelling is
/// left to the BPE model, which reads the UTF-8 bytes directly (<see cref="MapToAlphabet"/> false).
/// </summary>
internal sealed partial class ByteLevelPreTokenizer(bool addPrefixSpace, bool useRegex) : PreTokenizer
{
    /// <summary>
    /// GPT-2's pattern (OpenAI's encoder.py, HuggingFace's ByteLevel). <c>\s+(?!\S)</c> leaves the last space of a
    /// run for the next word, so " hello" keeps its space. .NET's <c>\s</c> is Unicode White_Space, like Oniguruma's.
    /// </summary>
    [GeneratedRegex(@"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+", RegexOptions.CultureInvariant)]
    private static partial Regex Gpt2Regex();

    private static readonly CodePointRegex Gpt2 = new(Gpt2Regex(), Gpt2Regex().ToString());

    public bool AddPrefixSpace => addPrefixSpace;

    public bool UseRegex => useRegex;

    /// <summary>Spell the pieces in the byte alphabet here (another pre-tokenizer follows) instead of in the model.</summary>
    public bool MapToAlphabet { get; set; }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public override void Split(in Piece piece, List<Piece> output)
    {
        var p = piece;
        if (addPrefixSpace && (p.Length == 0 || p.Text[p.Start] != ' '))
            p = Piece.Of(" " + p.Span.ToString(), piece.AtOrigin);
        if (!useRegex)
        {
            Add(p, output);
            return;
        }
        var matches = RentMatches();
        Gpt2.Matches(p.Span, matches);
        if (!MapToAlphabet) SplitByMatches(p, matches, SplitBehavior.Isolated, invert: false, output);
        else
        {
            var pieces = RentPieces();
            SplitByMatches(p, matches, SplitBehavior.Isolated, invert: false, pieces);
            foreach (var q in pieces) Add(q, output);
            Return(pieces);
        }
        Return(matches);
    }

    private void Add(in Piece p, List<Piece> output)
    {
        if (p.Length == 0) return;
        output.Add(MapToAlphabet ? Piece.Of(ByteLevelAlphabet.Spell(p.Span), p.AtOrigin) : p);
    }
}

/// <summary>Split: splits on a literal or regex pattern with a behaviour, optionally inverted (Llama 3's and Qwen's regexes).</summary>
internal sealed class SplitPreTokenizer(TextPattern pattern, SplitBehavior behavior, bool invert) : PreTokenizer
{
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public override void Split(in Piece piece, List<Piece> output)
    {
        var matches = RentMatches();
        pattern.Matches(piece.Span, matches);
        SplitByMatches(piece, matches, behavior, invert, output);
        Return(matches);
    }
}

/// <summary>
/// Metaspace: spaces become the replacement character (▁), which is also put in front per prepend_scheme
/// ("always"; "first": only at the start of the input; "never"), then optionally splits before each ▁.
/// </summary>
internal sealed class MetaspacePreTokenizer(string replacement, MetaspacePrepend prepend, bool split) : PreTokenizer
{
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public override void Split(in Piece piece, List<Piece> output)
    {
        var text = piece.Span.Contains(' ') ? piece.Span.ToString().Replace(" ", replacement, StringComparison.Ordinal) : null;
        var startsWithReplacement = text is not null ? text.StartsWith(replacement, StringComparison.Ordinal) : piece.Span.StartsWith(replacement, StringComparison.Ordinal);
        var addPrefix = !startsWithReplacement && (prepend == MetaspacePrepend.Always || (prepend == MetaspacePrepend.First && piece.AtOrigin));
        if (addPrefix) text = replacement + (text ?? piece.Span.ToString());
        var p = text is null ? piece : Piece.Of(text, piece.AtOrigin);
        if (!split)
        {
            if (p.Length > 0) output.Add(p);
            return;
        }
        var matches = RentMatches();
        var span = p.Span;
        for (var i = span.IndexOf(replacement, StringComparison.Ordinal); i >= 0;)
        {
            matches.Add((i, replacement.Length));
            var next = span[(i + replacement.Length)..].IndexOf(replacement, StringComparison.Ordinal);
            i = next < 0 ? -1 : i + replacement.Length + next;
        }
        SplitByMatches(p, matches, SplitBehavior.MergedWithNext, invert: false, output);
        Return(matches);
    }
}

/// <summary>Metaspace's prepend_scheme.</summary>
internal enum MetaspacePrepend
{
    Always,
    First,
    Never,
}

/// <summary>
/// Splits on the code points a predicate picks, each a match of its own: Digits (numeric characters, isolated or
/// contiguous), Punctuation, CharDelimiterSplit, WhitespaceSplit.
/// </summary>
internal sealed class CharClassPreTokenizer(Func<int, bool> predicate, SplitBehavior behavior) : PreTokenizer
{
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public override void Split(in Piece piece, List<Piece> output)
    {
        var matches = RentMatches();
        CharMatches(piece.Span, predicate, matches);
        SplitByMatches(piece, matches, behavior, invert: false, output);
        Return(matches);
    }
}

/// <summary>Whitespace: the regex <c>\w+|[^\w\s]+</c> (Rust's Unicode \w), keeping the matches and dropping the rest.</summary>
internal sealed class WhitespacePreTokenizer : PreTokenizer
{
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public override void Split(in Piece piece, List<Piece> output)
    {
        // Maximal runs of word characters and of "other" characters (neither word nor White_Space).
        var span = piece.Span;
        var runStart = -1;
        var runIsWord = false;
        for (var i = 0; i < span.Length;)
        {
            var c = UnicodeText.CodePointAt(span, i, out var len);
            var isSpace = UnicodeText.IsWhiteSpace(c);
            var isWord = !isSpace && UnicodeText.IsWordChar(c);
            if (runStart >= 0 && (isSpace || isWord != runIsWord))
            {
                output.Add(piece.Slice(runStart, i - runStart));
                runStart = -1;
            }
            if (!isSpace && runStart < 0)
            {
                runStart = i;
                runIsWord = isWord;
            }
            i += len;
        }
        if (runStart >= 0) output.Add(piece.Slice(runStart, span.Length - runStart));
    }
}

/// <summary>Sequence: each pre-tokenizer in turn on every piece the previous ones produced.</summary>
internal sealed class SequencePreTokenizer(PreTokenizer[] steps) : PreTokenizer
{
    public IReadOnlyList<PreTokenizer> Steps => steps;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public override void Split(in Piece piece, List<Piece> output) => Apply(0, piece, output);

    private void Apply(int step, in Piece piece, List<Piece> output)
    {
        if (step == steps.Length - 1)
        {
            steps[step].Split(piece, output);
            return;
        }
        var pieces = RentPieces();
        steps[step].Split(piece, pieces);
        foreach (var p in pieces) Apply(step + 1, p, output);
        Return(pieces);
    }
}
