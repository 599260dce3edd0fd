using System.Text;

namespace SharpLens.Tests;

/// <summary>
/// The texts the tokenizers are compared on against the oracle, generated from a seed so every run (and the
/// oracle's cache) sees the same ones: English prose, code, numbers and long digit runs, runs of spaces, tabs
/// and newlines, CJK, Arabic and other scripts, emoji with skin tones, ZWJ sequences, flags and tag sequences,
/// combining marks and compatibility characters, letters and digits outside the BMP, lone surrogates, control
/// and invisible characters, the empty string; and, per tokenizer, every special token written in text.
/// </summary>
internal static class TokenizerCorpus
{
    private static readonly string[] Prose =
    [
        "The quick brown fox jumps over the lazy dog.",
        "It was the best of times, it was the worst of times, it was the age of wisdom.",
        "Mechanistic interpretability tries to reverse-engineer neural networks into human-understandable algorithms.",
        "I'm sure we'll find it; they've said it's there, haven't they? You'd think so.",
        "WE'LL SEE WHAT THEY'RE DOING. It'S fine, I'D say.",
        "Mr. Smith paid $1,234.56 on 2024-03-15 at 9:45 a.m. (about 30% more than expected).",
        "Attention heads in layer 5 compose with those in layer 1 to form induction circuits.",
        "\"Quoted text,\" she said — with an em dash… and an ellipsis.",
        "E-mail me at someone@example.com or visit https://example.org/path?query=1&b=2#frag.",
        "Hello world",
        " leading space",
        "trailing space ",
        "ALL CAPS SENTENCE WITH NUMBERS 123 AND SYMBOLS #@!",
        "naïve café résumé coöperate façade jalapeño",
        "Straße, Ärger, Öl, Übermut — Gruß aus München!",
        "İstanbul'da ılık bir gün; Iğdır ve İzmir.",
    ];

    private static readonly string[] Code =
    [
        "def f(x):\n    return x ** 2 + 1\n",
        "for (int i = 0; i < n; i++) {\n\tsum += a[i];\n}",
        "{\"key\": [1, 2, 3], \"nested\": {\"a\": null, \"b\": true}}",
        "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;",
        "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); return 0; }",
        "const add = (a, b) => a + b; // arrow function",
        "if [ -f \"$FILE\" ]; then echo \"ok\" >&2; fi",
        "x = [i for i in range(10) if i % 2 == 0]  # even numbers",
        "public static async Task<int> RunAsync(CancellationToken ct) => await Task.FromResult(0);",
        "<html><body><div class=\"a\">Text &amp; more</div></body></html>",
        "    indented_by_four = True\n\t\ttwo_tabs = False\n",
        "a_b_c __init__ __name__ == '__main__' snake_case camelCase PascalCase",
    ];

    private static readonly string[] Scripts =
    [
        "人工智能是计算机科学的一个分支，它企图了解智能的实质。",
        "我爱北京天安门。今天天气很好！",
        "日本語のテキストです。カタカナとひらがなと漢字。",
        "東京タワーは１９５８年に完成しました。",
        "한국어 문장입니다. 안녕하세요, 세계!",
        "الذكاء الاصطناعي هو سلوك وخصائص معينة تتسم بها البرامج الحاسوبية.",
        "مرحبا بالعالم! كيف حالك؟ ١٢٣٤٥",
        "שלום עולם, זהו משפט בעברית.",
        "Искусственный интеллект — свойство интеллектуальных систем.",
        "Γειά σου κόσμε! Ελληνικά γράμματα: αβγδε ΑΒΓΔΕ.",
        "नमस्ते दुनिया! यह हिंदी का वाक्य है। १२३",
        "สวัสดีชาวโลก ภาษาไทยไม่มีช่องว่างระหว่างคำ",
        "Tiếng Việt có dấu: Xin chào thế giới, cảm ơn bạn.",
        "ქართული ენა, Հայերեն լեզու, ᏣᎳᎩ ᎦᏬᏂᎯᏍᏗ",
        "ትግርኛ ኣማርኛ ፊደል። ᠮᠣᠩᠭᠣᠯ ᠪᠢᠴᠢᠭ",
    ];

    private static readonly string[] Emoji =
    [
        "😀", "😀😃😄", "👍🏽", "👨‍👩‍👧‍👦", "👩🏾‍💻", "🏳️‍🌈", "🇩🇪🇫🇷🇯🇵", "1️⃣#️⃣", "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "❤️‍🔥",
        "🧑‍🤝‍🧑", "🙂 smile", "I ❤ Unicode ☃ ★ ✓", "🤖🤖🤖", "👋hello", "emoji😀inside",
    ];

    private static readonly string[] Combining =
    [
        "e\u0301", "a\u0308\u0304", "Z\u0351\u036B\u0343\u036A\u0302\u036B\u033D\u034F\u0334\u0319\u0324\u031E\u0349", "n\u0303o\u0303",
        "\u0041\u030A vs \u00C5 vs \u212B", "ﬁ ﬂ ﬀ", "ＡＢＣ１２３ｱｲｳ", "x² y³ H₂O", "Ⅻ ⅻ ① ⑳ ½ ¾", "ǅ ǈ ǋ",
        "\u1E9B\u0323", "\uFB2C", "한\u1100\u1161", "\u0958\u0959",
    ];

    private static readonly string[] Astral =
    [
        "𝐀𝐁𝐂 𝑥𝑦𝑧", "𝟘𝟙𝟚𝟛𝟜𝟝", "𠀀𠀁𠀂 𪚥", "𐐷𐐸 𐌰𐌱𐌲", "𝄞 music", "𐍈 Gothic hwair", "a𝟙𝟚𝟛𝟜b", "𝒜𝓁𝓅𝒽𝒶",
    ];

    private static readonly string[] Invisible =
    [
        "\u0000", "a\u0000b", "\u001C\u001D\u001E\u001F", "\u0085", "\u00A0non\u00A0breaking", "line\u2028sep\u2029para", "\u3000ideographic\u3000",
        "zero\u200Bwidth", "\uFEFFbom", "soft\u00ADhyphen", "\u200E\u200Fmarks", "\u0007bell\u001Besc", "\u000Bvt\u000Cff",
    ];

    private static readonly string[] LoneSurrogates =
    [
        "\uD800", "abc\uDC00def", "\uDFFF\uD800", "x\uD83D", "\uDE00y", "\uD83D\uD83D\uDE00",
    ];

    private static readonly string[] Contractions =
    [
        "I'm", "don't", "WE'LL", "it'S", "they'Re", "'s", "'t", "'ſ", "you've", "'ll'd'm", "rock'n'roll", "’s curly",
    ];

    private static readonly string[] Whitespace =
    [
        " ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\n\n\n", "\r\n", " \n ", "  \t  \n", "\n \n", "\t \t", "        ",
    ];

    /// <summary>Generates <paramref name="count"/> texts (the empty string first) from <paramref name="seed"/>.</summary>
    public static List<string> Generate(int seed, int count)
    {
        var rng = new Random(seed);
        var texts = new List<string> { "" };
        foreach (var pool in new[] { Prose, Code, Scripts, Emoji, Combining, Astral, Invisible, LoneSurrogates, Contractions, Whitespace })
            texts.AddRange(pool);
        while (texts.Count < count)
        {
            var sb = new StringBuilder();
            var fragments = rng.Next(1, 7);
            for (var f = 0; f < fragments; f++)
            {
                sb.Append(Fragment(rng));
                sb.Append(rng.Next(6) switch { 0 => "", 1 => "\n", 2 => Pick(rng, Whitespace), _ => " " });
            }
            var text = sb.ToString();
            // Some texts start or end with whitespace, some not: the pre-tokenizers treat edges specially.
            if (rng.Next(3) == 0) text = text.TrimEnd();
            if (rng.Next(4) == 0) text = Pick(rng, Whitespace) + text;
            texts.Add(text);
        }
        // A few long texts, so long words (SentencePiece-style tokenizers see a whole line as one word) are merged too.
        for (var i = 0; i < 12; i++)
        {
            var sb = new StringBuilder();
            while (sb.Length < 2000 + 500 * i) sb.Append(Fragment(rng)).Append(rng.Next(4) == 0 ? "" : " ");
            texts.Add(sb.ToString());
        }
        return texts;
    }

    /// <summary>
    /// Texts that write each of <paramref name="tokens"/> in several contexts: alone, between words, touching
    /// letters, next to whitespace, twice, cut short, and next to another token.
    /// </summary>
    public static List<string> WithTokens(IReadOnlyList<string> tokens, int seed)
    {
        var rng = new Random(seed);
        var texts = new List<string>();
        for (var i = 0; i < tokens.Count; i++)
        {
            var t = tokens[i];
            var other = tokens[rng.Next(tokens.Count)];
            texts.Add(t);
            texts.Add($"Hello {t} world");
            texts.Add($"{t}Hello");
            texts.Add($"word{t}word");
            texts.Add($"  {t}  \n{t}\t");
            texts.Add($"{t}{other} {Fragment(rng)}");
            if (t.Length > 2) texts.Add(t[..^1] + " " + t[1..]);
        }
        return texts;
    }

    private static string Fragment(Random rng) => rng.Next(12) switch
    {
        0 or 1 => Pick(rng, Prose),
        2 => Pick(rng, Code),
        3 or 4 => Pick(rng, Scripts),
        5 => Pick(rng, Emoji),
        6 => Pick(rng, Combining),
        7 => Number(rng),
        8 => rng.Next(3) == 0 ? Pick(rng, LoneSurrogates) : Pick(rng, Astral),
        9 => rng.Next(2) == 0 ? Pick(rng, Invisible) : Pick(rng, Contractions),
        10 => Pick(rng, Whitespace) + Pick(rng, Prose),
        _ => RandomCodePoints(rng),
    };

    private static string Number(Random rng)
    {
        switch (rng.Next(6))
        {
            case 0: return rng.Next().ToString(System.Globalization.CultureInfo.InvariantCulture);
            case 1: return (rng.NextDouble() * 1e6).ToString("F4", System.Globalization.CultureInfo.InvariantCulture);
            case 2:
            {
                var digits = new StringBuilder();
                var n = rng.Next(20, 200);
                for (var i = 0; i < n; i++) digits.Append((char)('0' + rng.Next(10)));
                return digits.ToString();
            }
            case 3: return $"{rng.Next(1, 999)},{rng.Next(100, 999)},{rng.Next(100, 999)}";
            case 4: return $"+1 ({rng.Next(200, 999)}) {rng.Next(100, 999)}-{rng.Next(1000, 9999)}";
            default: return $"{rng.Next(1900, 2100)}-{rng.Next(1, 13):D2}-{rng.Next(1, 29):D2}T{rng.Next(24):D2}:{rng.Next(60):D2}";
        }
    }

    /// <summary>Code points drawn from many established blocks (Latin to CJK, symbols, astral letters and emoji).</summary>
    private static string RandomCodePoints(Random rng)
    {
        (int From, int To)[] ranges =
        [
            (0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x5FF), (0x600, 0x6FF), (0x900, 0x97F),
            (0xE00, 0xE7F), (0x1100, 0x11FF), (0x2000, 0x206F), (0x2190, 0x23FF), (0x2500, 0x27BF), (0x3000, 0x30FF),
            (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xFF00, 0xFFEF), (0x1D400, 0x1D7FF), (0x1F300, 0x1F64F), (0x20000, 0x2A6DF),
        ];
        var sb = new StringBuilder();
        var n = rng.Next(1, 12);
        for (var i = 0; i < n; i++)
        {
            var (from, to) = ranges[rng.Next(ranges.Length)];
            var cp = rng.Next(from, to + 1);
            if (cp is >= 0xD800 and <= 0xDFFF) cp = 'x';
            sb.Append(char.ConvertFromUtf32(cp));
        }
        return sb.ToString();
    }

    private static string Pick(Random rng, string[] pool) => pool[rng.Next(pool.Length)];

    /// <summary>A JSON string literal with every non-ASCII character escaped, so lone surrogates survive (System.Text.Json would refuse them).</summary>
    public static void WriteJsonString(StringBuilder sb, string s)
    {
        sb.Append('"');
        foreach (var c in s)
        {
            switch (c)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                default:
                    if (c < 0x20 || c > 0x7E) sb.Append("\\u").Append(((int)c).ToString("x4"));
                    else sb.Append(c);
                    break;
            }
        }
        sb.Append('"');
    }
}
