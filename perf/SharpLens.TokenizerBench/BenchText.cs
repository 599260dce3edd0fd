using System.Text;

namespace SharpLens.TokenizerBench;

/// <summary>
/// The benchmark text: about 10 MB of mixed-language lines, generated from a seed so every run and both
/// contestants see the same bytes. Words are drawn with a Zipf law from per-language vocabularies of generated
/// words (so, as in real text, most words repeat and a long tail does not, and word caches see a realistic hit
/// rate); lines mix English-like prose, German, Russian, Greek, Chinese, Japanese, Korean, Arabic, Hindi, code,
/// numbers, whitespace runs and emoji.
/// </summary>
internal static class BenchText
{
    private sealed class Language(string name, Func<Random, string> makeWord, string separator, string[] punctuation)
    {
        public string Name => name;
        public string Separator => separator;
        public string[] Punctuation => punctuation;
        public string[] Words { get; private set; } = [];

        public void Build(Random rng, int size)
        {
            var words = new HashSet<string>();
            while (words.Count < size) words.Add(makeWord(rng));
            Words = [.. words];
        }
    }

    private static string Syllables(Random rng, string[] onsets, string[] vowels, int min, int max)
    {
        var sb = new StringBuilder();
        var n = rng.Next(min, max + 1);
        for (var i = 0; i < n; i++) sb.Append(onsets[rng.Next(onsets.Length)]).Append(vowels[rng.Next(vowels.Length)]);
        return sb.ToString();
    }

    private static string Range(Random rng, int from, int to, int min, int max)
    {
        var sb = new StringBuilder();
        var n = rng.Next(min, max + 1);
        for (var i = 0; i < n; i++) sb.Append(char.ConvertFromUtf32(rng.Next(from, to + 1)));
        return sb.ToString();
    }

    private static readonly string[] LatinOnsets = ["", "b", "c", "d", "f", "g", "h", "l", "m", "n", "p", "r", "s", "t", "v", "w", "th", "st", "pr", "ch", "sh", "tr"];
    private static readonly string[] LatinVowels = ["a", "e", "i", "o", "u", "ea", "ou", "y", "er", "in", "on", "ed"];
    private static readonly string[] GermanVowels = ["a", "e", "i", "o", "u", "ä", "ö", "ü", "ei", "en", "er", "ß"];
    private static readonly string[] CyrillicOnsets = ["", "б", "в", "г", "д", "ж", "з", "к", "л", "м", "н", "п", "р", "с", "т", "х", "ч", "ш"];
    private static readonly string[] CyrillicVowels = ["а", "е", "и", "о", "у", "ы", "я", "ю", "ой", "ей"];
    private static readonly string[] GreekOnsets = ["", "β", "γ", "δ", "κ", "λ", "μ", "ν", "π", "ρ", "σ", "τ", "φ", "χ"];
    private static readonly string[] GreekVowels = ["α", "ε", "η", "ι", "ο", "υ", "ω", "ά", "έ", "ί", "ό"];
    private static readonly string[] DevanagariOnsets = ["क", "ख", "ग", "च", "ज", "त", "द", "न", "प", "ब", "म", "य", "र", "ल", "व", "स", "ह"];
    private static readonly string[] DevanagariVowels = ["", "ा", "ि", "ी", "ु", "ू", "े", "ै", "ो", "ं", "्"];

    private static readonly Language[] Languages =
    [
        new("english", r => Syllables(r, LatinOnsets, LatinVowels, 1, 4), " ", [".", ",", "!", "?", ";", ":"]),
        new("german", r => { var w = Syllables(r, LatinOnsets, GermanVowels, 1, 5); return r.Next(3) == 0 ? char.ToUpperInvariant(w[0]) + w[1..] : w; }, " ", [".", ",", "!"]),
        new("russian", r => Syllables(r, CyrillicOnsets, CyrillicVowels, 1, 4), " ", [".", ",", "—", "!"]),
        new("greek", r => Syllables(r, GreekOnsets, GreekVowels, 1, 4), " ", [".", ",", ";"]),
        new("chinese", r => Range(r, 0x4E00, 0x62FF, 1, 3), "", ["。", "，", "！", "？"]),
        new("japanese", r => Range(r, 0x3041, 0x3093, 1, 3) + (r.Next(2) == 0 ? Range(r, 0x4E00, 0x5FFF, 1, 2) : Range(r, 0x30A1, 0x30F3, 1, 4)), "", ["。", "、"]),
        new("korean", r => Range(r, 0xAC00, 0xD7A3, 1, 4), " ", [".", ",", "?"]),
        new("arabic", r => Range(r, 0x0627, 0x064A, 2, 7), " ", [".", "،", "؟"]),
        new("hindi", r => Syllables(r, DevanagariOnsets, DevanagariVowels, 1, 4), " ", ["।", ",", "?"]),
    ];

    private static readonly string[] CodeLines =
    [
        "    for (var i = 0; i < {0}.Length; i++) total += {0}[i] * {1};",
        "def {0}({1}, *args, **kwargs):\n        return {1} + len(args)",
        "if ({0} != null && {0}.Count > {2}) {{ return {1}; }}",
        "const {0} = await fetch(`/api/{1}/${{id}}`).then(r => r.json());",
        "SELECT {0}, COUNT(*) FROM {1} WHERE id > {2} GROUP BY {0};",
        "\t\t{0}_{1} = {{\"key\": {2}, \"values\": [{2}, {2}, {2}]}}",
    ];

    private static readonly string[] Emoji = ["😀", "👍🏽", "👨‍👩‍👧", "🇯🇵", "✨", "🔥", "❤️", "🤖"];

    /// <summary>Lines of about <paramref name="bytes"/> UTF-8 bytes in total.</summary>
    public static List<string> Generate(int seed, long bytes)
    {
        var rng = new Random(seed);
        foreach (var l in Languages) l.Build(rng, 20_000);
        var lines = new List<string>();
        long total = 0;
        while (total < bytes)
        {
            var line = Line(rng);
            lines.Add(line);
            total += Encoding.UTF8.GetByteCount(line) + 1;
        }
        return lines;
    }

    /// <summary>An index in [0, n) drawn with Zipf's law (exponent 1): rank r has weight 1/(r+1).</summary>
    private static int Zipf(Random rng, int n) => Math.Min(n - 1, (int)Math.Floor(Math.Exp(rng.NextDouble() * Math.Log(n + 1)) - 1));

    private static string Line(Random rng)
    {
        var kind = rng.Next(20);
        if (kind == 0) return string.Format(CodeLines[rng.Next(CodeLines.Length)], Word(rng, Languages[0]), Word(rng, Languages[0]), rng.Next(100000));
        if (kind == 1) return string.Join(rng.Next(2) == 0 ? " " : ", ", Enumerable.Range(0, rng.Next(3, 12)).Select(_ => Number(rng)));
        // English is the most common language, as in most corpora.
        var lang = kind < 10 ? Languages[0] : Languages[rng.Next(Languages.Length)];
        var sb = new StringBuilder();
        var sentences = rng.Next(1, 6);
        for (var s = 0; s < sentences; s++)
        {
            var n = rng.Next(4, 20);
            for (var w = 0; w < n; w++)
            {
                if (w > 0) sb.Append(lang.Separator);
                var word = Word(rng, lang);
                sb.Append(w == 0 && lang.Separator == " " && char.IsLower(word[0]) ? char.ToUpperInvariant(word[0]) + word[1..] : word);
                if (rng.Next(40) == 0) sb.Append(Emoji[rng.Next(Emoji.Length)]);
                if (rng.Next(30) == 0) sb.Append(lang.Separator).Append(Number(rng));
            }
            sb.Append(lang.Punctuation[rng.Next(lang.Punctuation.Length)]);
            if (s + 1 < sentences) sb.Append(rng.Next(15) == 0 ? "  " : lang.Separator.Length == 0 ? "" : " ");
        }
        return sb.ToString();
    }

    private static string Word(Random rng, Language lang) => lang.Words[Zipf(rng, lang.Words.Length)];

    private static string Number(Random rng) => rng.Next(4) switch
    {
        0 => rng.Next(1000).ToString(System.Globalization.CultureInfo.InvariantCulture),
        1 => (rng.NextDouble() * 10000).ToString("F2", System.Globalization.CultureInfo.InvariantCulture),
        2 => $"{rng.Next(1990, 2030)}-{rng.Next(1, 13):D2}-{rng.Next(1, 29):D2}",
        _ => rng.NextInt64(1_000_000_000_000, 9_999_999_999_999).ToString(System.Globalization.CultureInfo.InvariantCulture),
    };
}
