namespace SharpLens.Tokenization;

/// <summary>
/// GPT-2's <c>bytes_to_unicode</c> table: every byte 0..255 gets a printable, non-whitespace character so
/// that byte-level BPE vocabularies can be stored as ordinary JSON strings. Printable Latin-1 bytes
/// ('!'..'~', '¡'..'¬', '®'..'ÿ') map to themselves; the remaining 68 bytes (controls, space, DEL,
/// 0x80..0xA0, soft hyphen) map, in byte order, to U+0100, U+0101, ... — hence space becomes 'Ġ' (U+0120)
/// and newline 'Ċ' (U+010A), the familiar characters in GPT-2 token strings.
/// </summary>
internal static class ByteLevelAlphabet
{
    /// <summary>The character standing for each byte.</summary>
    public static readonly char[] ByteToChar = BuildByteToChar();

    /// <summary>The byte each table character stands for, indexed by character; -1 for characters outside the table.</summary>
    private static readonly short[] CharToByteTable = BuildCharToByte();

    /// <summary>The byte <paramref name="c"/> stands for, or -1 when <paramref name="c"/> is not in the table.</summary>
    public static int CharToByte(char c) => c < CharToByteTable.Length ? CharToByteTable[c] : -1;

    /// <summary>The UTF-8 bytes of <paramref name="text"/>, each written as its alphabet character.</summary>
    public static string Spell(ReadOnlySpan<char> text)
    {
        var bytes = System.Text.Encoding.UTF8.GetBytes(text.ToArray());
        return string.Create(bytes.Length, bytes, static (span, b) =>
        {
            for (var i = 0; i < b.Length; i++) span[i] = ByteToChar[b[i]];
        });
    }

    private static bool IsPrintableAsItself(int b) =>
        (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);

    private static char[] BuildByteToChar()
    {
        var table = new char[256];
        var n = 0;
        for (var b = 0; b < 256; b++)
            table[b] = IsPrintableAsItself(b) ? (char)b : (char)(256 + n++);
        return table;
    }

    private static short[] BuildCharToByte()
    {
        var byteToChar = ByteToChar;
        var max = 0;
        foreach (var c in byteToChar) max = Math.Max(max, c);
        var table = new short[max + 1];
        Array.Fill(table, (short)-1);
        for (var b = 0; b < 256; b++) table[byteToChar[b]] = (short)b;
        return table;
    }
}
