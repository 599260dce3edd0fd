using System.Buffers.Binary;
using System.Globalization;
using System.Numerics;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using FsCheck;
using FsCheck.Fluent;

namespace SharpLens.Testing.Fuzzing;

/// <summary>A safetensors file as its parts: the JSON header bytes exactly as stored (padding included) and the data section.</summary>
internal sealed class SafeTensorsImage
{
    private SafeTensorsImage(byte[] header, byte[] data)
    {
        Header = header;
        Data = data;
        var json = ParseHeader();
        Entries = json.Where(p => p.Key != "__metadata__").Select(p =>
        {
            var o = p.Value!.AsObject();
            var offsets = o["data_offsets"]!.AsArray();
            return new SpecEntry(p.Key, o["dtype"]!.GetValue<string>(), o["shape"]!.AsArray().Select(d => d!.GetValue<long>()).ToArray(),
                offsets[0]!.GetValue<long>(), offsets[1]!.GetValue<long>());
        }).ToList();
        HasMetadata = json.ContainsKey("__metadata__");
    }

    /// <summary>The header bytes (between the length prefix and the data).</summary>
    public byte[] Header { get; }

    /// <summary>The data section.</summary>
    public byte[] Data { get; }

    /// <summary>The tensors the (valid) original declares, in header order.</summary>
    public IReadOnlyList<SpecEntry> Entries { get; }

    /// <summary>Whether the original has a <c>__metadata__</c> entry.</summary>
    public bool HasMetadata { get; }

    /// <summary>A fresh, editable copy of the header.</summary>
    public JsonObject ParseHeader() => JsonNode.Parse(Header)!.AsObject();

    /// <summary>Splits a valid file.</summary>
    public static SafeTensorsImage Read(string path)
    {
        var bytes = File.ReadAllBytes(path);
        var n = checked((int)BinaryPrimitives.ReadUInt64LittleEndian(bytes));
        return new SafeTensorsImage(bytes[8..(8 + n)], bytes[(8 + n)..]);
    }

    /// <summary>Length prefix (the header's length unless <paramref name="lengthPrefix"/> says otherwise), header, data.</summary>
    public byte[] Compose(ReadOnlySpan<byte> header, ulong? lengthPrefix = null)
    {
        var file = new byte[8 + header.Length + Data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(file, lengthPrefix ?? (ulong)header.Length);
        header.CopyTo(file.AsSpan(8));
        Data.CopyTo(file.AsSpan(8 + header.Length));
        return file;
    }
}

/// <summary>One tensor as a header declares it.</summary>
internal sealed record SpecEntry(string Name, string DType, long[] Shape, long Begin, long End)
{
    /// <summary>Bytes of data.</summary>
    public long ByteLength => End - Begin;
}

/// <summary>What the safetensors rules say about a file: valid (with its tensors and metadata) or not (and why).</summary>
internal sealed record SpecVerdict(bool Valid, string Reason, IReadOnlyList<SpecEntry> Entries, IReadOnlyDictionary<string, string> Metadata, long DataStart)
{
    public static SpecVerdict Invalid(string reason) => new(false, reason, [], new Dictionary<string, string>(), 0);
}

/// <summary>
/// The test oracle: the safetensors format (https://github.com/huggingface/safetensors, "Format") checked independently of
/// <c>SafeTensorsFile</c>, over <see cref="JsonDocument"/> rather than its streaming parser, rule by rule as the format states
/// them: an 8-byte little-endian header length N no larger than the file after it (and at most 100 MB); N bytes of UTF-8 JSON
/// holding one object without duplicate keys; an optional <c>__metadata__</c> that is a string-to-string object (or null, which
/// the reference reads as none); every other key a tensor with exactly one string <c>dtype</c> of F64, F32, F16, BF16, I64, I32,
/// I16, I8, U8, BOOL, one <c>shape</c> array of non-negative 64-bit integers and one <c>data_offsets</c> array of exactly two
/// non-negative integers [begin, end], begin ≤ end ≤ data length, end − begin equal to the element size times the shape's
/// product (computed left to right from the element size without overflowing 64 bits, as the reference and libtorch do), and
/// no two non-empty tensors sharing a byte. Two leniences of SharpLens, which cannot produce a wrong tensor, are rules here too:
/// unknown fields inside an entry are ignored, and bytes no tensor covers (gaps, trailing data) are allowed.
/// BOOL bytes other than 0 and 1 are a separate, per-tensor fault (<see cref="HasInvalidBoolBytes"/>): they fail at load.
/// </summary>
internal static class SafeTensorsSpec
{
    /// <summary>Element sizes of the dtypes the format names that SharpLens supports.</summary>
    public static readonly IReadOnlyDictionary<string, int> ElementSizes = new Dictionary<string, int>
    {
        ["F64"] = 8, ["F32"] = 4, ["F16"] = 2, ["BF16"] = 2, ["I64"] = 8, ["I32"] = 4, ["I16"] = 2, ["I8"] = 1, ["U8"] = 1, ["BOOL"] = 1,
    };

    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    /// <summary>Judges a whole file.</summary>
    public static SpecVerdict Check(byte[] file)
    {
        if (file.Length < 8) return SpecVerdict.Invalid("shorter than the length prefix");
        var n = BinaryPrimitives.ReadUInt64LittleEndian(file);
        if (n > (ulong)(file.Length - 8)) return SpecVerdict.Invalid($"header length {n} past the end");
        if (n > 100_000_000) return SpecVerdict.Invalid("header over 100 MB");
        var header = file.AsMemory(8, (int)n);
        var dataLength = file.Length - 8 - (long)n;
        try
        {
            StrictUtf8.GetString(header.Span);
        }
        catch (DecoderFallbackException)
        {
            return SpecVerdict.Invalid("header not UTF-8");
        }
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(header, new JsonDocumentOptions { AllowTrailingCommas = false, CommentHandling = JsonCommentHandling.Disallow });
        }
        catch (JsonException e)
        {
            return SpecVerdict.Invalid("header not JSON: " + e.Message);
        }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object) return SpecVerdict.Invalid("header not an object");
            var keys = new HashSet<string>(StringComparer.Ordinal);
            var entries = new List<SpecEntry>();
            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var p in doc.RootElement.EnumerateObject())
            {
                if (!keys.Add(p.Name)) return SpecVerdict.Invalid($"duplicate key '{p.Name}'");
                if (p.Name == "__metadata__")
                {
                    if (p.Value.ValueKind == JsonValueKind.Null) continue;
                    if (p.Value.ValueKind != JsonValueKind.Object) return SpecVerdict.Invalid("metadata not an object");
                    foreach (var m in p.Value.EnumerateObject())
                    {
                        if (m.Value.ValueKind != JsonValueKind.String) return SpecVerdict.Invalid($"metadata '{m.Name}' not a string");
                        if (!metadata.TryAdd(m.Name, m.Value.GetString()!)) return SpecVerdict.Invalid($"duplicate metadata key '{m.Name}'");
                    }
                    continue;
                }
                var entry = ParseEntry(p.Name, p.Value, dataLength, out var fault);
                if (entry is null) return SpecVerdict.Invalid(fault!);
                entries.Add(entry);
            }
            var nonEmpty = entries.Where(e => e.ByteLength > 0).OrderBy(e => e.Begin).ToList();
            for (var i = 1; i < nonEmpty.Count; i++)
                if (nonEmpty[i].Begin < nonEmpty.Take(i).Max(e => e.End))
                    return SpecVerdict.Invalid($"'{nonEmpty[i].Name}' overlaps an earlier tensor");
            return new SpecVerdict(true, "valid", entries, metadata, 8 + (long)n);
        }
    }

    private static SpecEntry? ParseEntry(string name, JsonElement value, long dataLength, out string? fault)
    {
        fault = null;
        if (value.ValueKind != JsonValueKind.Object) return Fail(out fault, $"'{name}' not an object");
        var fields = value.EnumerateObject().ToList();
        if (fields.GroupBy(f => f.Name).Any(g => g.Count() > 1)) return Fail(out fault, $"'{name}' has a duplicate field");
        var byName = fields.ToDictionary(f => f.Name, f => f.Value);
        if (!byName.TryGetValue("dtype", out var dtype) || !byName.TryGetValue("shape", out var shape) || !byName.TryGetValue("data_offsets", out var offsets))
            return Fail(out fault, $"'{name}' misses a field");
        if (dtype.ValueKind != JsonValueKind.String || !ElementSizes.TryGetValue(dtype.GetString()!, out var elementSize))
            return Fail(out fault, $"'{name}' has a bad dtype");
        var dims = Integers(shape);
        var ends = Integers(offsets);
        if (dims is null || dims.Any(d => d < 0)) return Fail(out fault, $"'{name}' has a bad shape");
        if (ends is null || ends.Length != 2 || ends[0] < 0 || ends[1] < 0) return Fail(out fault, $"'{name}' has bad data_offsets");
        if (ends[0] > ends[1] || ends[1] > dataLength) return Fail(out fault, $"'{name}' has data_offsets out of range");
        BigInteger bytes = elementSize;
        foreach (var d in dims)
        {
            bytes *= d;
            if (bytes > long.MaxValue) return Fail(out fault, $"'{name}' has a byte size over 64 bits");
        }
        if (bytes != ends[1] - ends[0]) return Fail(out fault, $"'{name}' has a byte size that does not match its data_offsets");
        return new SpecEntry(name, dtype.GetString()!, dims, ends[0], ends[1]);
    }

    private static SpecEntry? Fail(out string? fault, string why)
    {
        fault = why;
        return null;
    }

    /// <summary>An array of 64-bit integers (JSON numbers without fraction or exponent), or null.</summary>
    private static long[]? Integers(JsonElement array)
    {
        if (array.ValueKind != JsonValueKind.Array) return null;
        var values = new List<long>();
        foreach (var v in array.EnumerateArray())
        {
            if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt64(out var x)) return null;
            values.Add(x);
        }
        return values.ToArray();
    }

    /// <summary>True when a BOOL tensor's bytes hold a value other than 0 or 1.</summary>
    public static bool HasInvalidBoolBytes(byte[] file, SpecVerdict verdict, SpecEntry entry) =>
        entry.DType == "BOOL" && file.AsSpan((int)(verdict.DataStart + entry.Begin), (int)entry.ByteLength).IndexOfAnyExcept((byte)0, (byte)1) >= 0;

    /// <summary>The raw bytes of one tensor.</summary>
    public static ReadOnlySpan<byte> Bytes(byte[] file, SpecVerdict verdict, SpecEntry entry) =>
        file.AsSpan((int)(verdict.DataStart + entry.Begin), (int)entry.ByteLength);

    /// <summary>The values of a floating-point tensor's bytes, widened exactly to double (F64, F32, F16, BF16, little-endian).</summary>
    public static double[] FloatValues(ReadOnlySpan<byte> bytes, string dtype)
    {
        var size = ElementSizes[dtype];
        var values = new double[bytes.Length / size];
        for (var i = 0; i < values.Length; i++)
        {
            var b = bytes.Slice(i * size, size);
            values[i] = dtype switch
            {
                "F64" => BinaryPrimitives.ReadDoubleLittleEndian(b),
                "F32" => BinaryPrimitives.ReadSingleLittleEndian(b),
                "F16" => (double)BinaryPrimitives.ReadHalfLittleEndian(b),
                "BF16" => BitConverter.UInt32BitsToSingle((uint)BinaryPrimitives.ReadUInt16LittleEndian(b) << 16),
                _ => throw new ArgumentException($"{dtype} is not a floating-point dtype"),
            };
        }
        return values;
    }
}

/// <summary>An edit of a valid safetensors file; <see cref="ToString"/> is its description, which FsCheck reports for a failing case.</summary>
internal sealed class HeaderMutation(string description, Func<SafeTensorsImage, byte[]> apply)
{
    public byte[] Apply(SafeTensorsImage image) => apply(image);

    public override string ToString() => description;
}

/// <summary>
/// Generators of edits to a valid safetensors file: the JSON header (dtypes, shapes, data_offsets, entries, metadata, the
/// root, duplicate keys, trailing bytes) and the raw bytes (the 8-byte length prefix, truncation, flipped, inserted and
/// deleted bytes). Each edit is drawn from the image's own tensors, so most stay close to valid and probe one rule at a time;
/// some combine two or three. Whether a result is valid is decided afterwards by <see cref="SafeTensorsSpec"/>, not here.
/// </summary>
internal static class HeaderMutations
{
    private delegate void JsonEdit(JsonObject header);

    private sealed record EditStep(string Description, JsonEdit? Json = null, Func<string, string>? Text = null, Func<byte[], byte[]>? Bytes = null);

    /// <summary>Edits of <paramref name="image"/>: one to three steps, applied JSON first, then text, then bytes.</summary>
    public static Gen<HeaderMutation> For(SafeTensorsImage image)
    {
        var one = AnyStep(image);
        return Gen.Frequency((6, one.Select(s => new[] { s })), (3, Gen.Two(one).Select(t => new[] { t.Item1, t.Item2 })),
                (1, Gen.Three(one).Select(t => new[] { t.Item1, t.Item2, t.Item3 })))
            .Select(steps => new HeaderMutation(string.Join("; then ", steps.Select(s => s.Description)), img => Apply(img, steps)));
    }

    private static byte[] Apply(SafeTensorsImage image, EditStep[] steps)
    {
        byte[] header;
        if (steps.Any(s => s.Json is not null))
        {
            var json = image.ParseHeader();
            foreach (var s in steps) s.Json?.Invoke(json);
            header = Encoding.UTF8.GetBytes(json.ToJsonString());
        }
        else
        {
            header = image.Header;
        }
        if (steps.Any(s => s.Text is not null))
        {
            var text = Encoding.UTF8.GetString(header);
            foreach (var s in steps) text = s.Text?.Invoke(text) ?? text;
            header = Encoding.UTF8.GetBytes(text);
        }
        var file = image.Compose(header);
        foreach (var s in steps) file = s.Bytes?.Invoke(file) ?? file;
        return file;
    }

    // ------------------------------------------------------------------ values

    /// <summary>JSON literals of every kind, including numbers just past 64 bits and numbers no double holds.</summary>
    private static readonly string[] Garbage =
    [
        "null", "true", "false", "0", "-1", "1", "2.5", "1e2", "-0", "1e400", "-1e400", "9223372036854775807", "9223372036854775808",
        "18446744073709551616", "-9223372036854775809", "\"\"", "\"F32\"", "\"x\"", "[]", "[1]", "[-1]", "[1,2,3]", "[[1]]", "{}", "{\"a\":1}",
    ];

    private static readonly string[] DTypeNames =
    [
        "F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "U16", "U32", "U64", "F8_E4M3", "F8_E5M2", "f32", "float32", "", "F32 ",
    ];

    private static JsonNode? Literal(string json) => JsonNode.Parse(json);

    private static Gen<string> GarbageLiteral => Gen.Elements(Garbage);

    /// <summary>Integers around the interesting edges of <paramref name="around"/> and of 32/64 bits, as JSON literals.</summary>
    private static Gen<string> IntegerNear(long around, long dataLength) => Gen.Elements(
        new[]
        {
            -1L, 0, 1, 2, around - 1, around + 1, around + 2, around + 4, around * 2, around / 2, dataLength, dataLength + 1,
            int.MaxValue, 1L << 32, 1L << 62, long.MaxValue, long.MinValue,
        }.Select(v => v.ToString(CultureInfo.InvariantCulture)).Concat(["1.5", "18446744073709551615", "1e3", "\"3\""]).ToArray());

    private static Gen<int> Index(int count) => Gen.Choose(0, count - 1);

    // ------------------------------------------------------------------ steps

    private static Gen<EditStep> AnyStep(SafeTensorsImage image)
    {
        var original = image.ParseHeader();
        var entry = Gen.Elements(image.Entries.ToArray());
        var pair = Gen.Two(entry).Where(p => p.Item1.Name != p.Item2.Name);
        var dataLength = image.Data.LongLength;
        var flips = Gen.Choose(1, 4).SelectMany(k => Gen.ListOf(Gen.Zip(Gen.Choose(0, 1_000_000), Gen.Choose(0, 255)), k));
        var steps = new List<(int, Gen<EditStep>)>
        {
            // dtype
            (4, entry.SelectMany(e => Gen.Elements(DTypeNames).Select(d => new EditStep($"'{e.Name}'.dtype = \"{d}\"", h => Edit(h, e.Name, o => o["dtype"] = d))))),
            (1, entry.SelectMany(e => GarbageLiteral.Select(v => new EditStep($"'{e.Name}'.dtype = {v}", h => Edit(h, e.Name, o => o["dtype"] = Literal(v)))))),
            // shape
            (4, entry.Where(e => e.Shape.Length > 0).SelectMany(e => Index(e.Shape.Length).SelectMany(i => IntegerNear(e.Shape[i], dataLength).Select(v =>
                new EditStep($"'{e.Name}'.shape[{i}] = {v}", h => Edit(h, e.Name, o => SetItem(o, "shape", i, v))))))),
            (2, entry.SelectMany(e => Gen.Elements("append 1", "append 0", "drop last", "scalar", "reverse").Select(how =>
                new EditStep($"'{e.Name}'.shape: {how}", h => Edit(h, e.Name, o => o["shape"] = ReshapeEdit(e.Shape, how)))))),
            (1, entry.SelectMany(e => GarbageLiteral.Select(v => new EditStep($"'{e.Name}'.shape = {v}", h => Edit(h, e.Name, o => o["shape"] = Literal(v)))))),
            // data_offsets
            (4, entry.SelectMany(e => Gen.Choose(0, 1).SelectMany(i => IntegerNear(i == 0 ? e.Begin : e.End, dataLength).Select(v =>
                new EditStep($"'{e.Name}'.data_offsets[{i}] = {v}", h => Edit(h, e.Name, o => SetItem(o, "data_offsets", i, v))))))),
            (2, entry.SelectMany(e => Gen.Elements("swap", "one", "three", "empty").Select(how =>
                new EditStep($"'{e.Name}'.data_offsets: {how}", h => Edit(h, e.Name, o => o["data_offsets"] = OffsetsEdit(e, how)))))),
            (2, entry.SelectMany(e => Gen.Elements(-8L, -4L, -2L, -1L, 1L, 2L, 4L, 8L, e.ByteLength / 2, -e.ByteLength / 2).Select(by =>
                new EditStep($"'{e.Name}'.data_offsets shifted by {by}", h => Edit(h, e.Name, o => o["data_offsets"] = Offsets(e.Begin + by, e.End + by)))))),
            (1, entry.SelectMany(e => GarbageLiteral.Select(v => new EditStep($"'{e.Name}'.data_offsets = {v}", h => Edit(h, e.Name, o => o["data_offsets"] = Literal(v)))))),
            // whole entries
            (2, pair.Select(p => new EditStep($"'{p.Item1.Name}' and '{p.Item2.Name}' swap data_offsets", h =>
            {
                Edit(h, p.Item1.Name, o => o["data_offsets"] = Offsets(p.Item2.Begin, p.Item2.End));
                Edit(h, p.Item2.Name, o => o["data_offsets"] = Offsets(p.Item1.Begin, p.Item1.End));
            }))),
            (2, pair.Select(p => new EditStep($"'{p.Item2.Name}' becomes a copy of '{p.Item1.Name}' (the same bytes)",
                h => h[p.Item2.Name] = original[p.Item1.Name]!.DeepClone()))),
            (2, entry.SelectMany(e => Gen.Elements("dtype", "shape", "data_offsets").Select(f =>
                new EditStep($"'{e.Name}' loses {f}", h => Edit(h, e.Name, o => o.Remove(f)))))),
            (2, entry.SelectMany(e => GarbageLiteral.Select(v => new EditStep($"'{e.Name}' gains \"extra\": {v}", h => Edit(h, e.Name, o => o["extra"] = Literal(v)))))),
            (2, entry.Select(e => new EditStep($"'{e.Name}' removed", h => h.Remove(e.Name)))),
            (1, entry.SelectMany(e => GarbageLiteral.Select(v => new EditStep($"'{e.Name}' = {v}", h => h[e.Name] = Literal(v))))),
            (2, Gen.Elements(
                    ("{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}", "empty"),
                    ("{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}", "one byte over the first tensor"),
                    ($"{{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[{dataLength},{dataLength + 8}]}}", "past the end"),
                    ("{\"dtype\":\"BOOL\",\"shape\":[2],\"data_offsets\":[0,2]}", "a BOOL over float bytes"))
                .SelectMany(spec => Gen.Elements("zz.extra", "", "\u540d\u524d", "model.layers.99.extra.weight").Select(name =>
                    new EditStep($"added '{name}' ({spec.Item2})", h => h[name] = Literal(spec.Item1))))),
            (1, entry.SelectMany(e => Gen.Elements("", "zz.renamed", "__metadata__").Select(n => new EditStep($"'{e.Name}' renamed '{n}'", h =>
            {
                if (h[e.Name] is not { } value) return;
                h.Remove(e.Name);
                h.Remove(n);
                h[n] = value;
            })))),
            // metadata
            (2, Gen.Elements("null", "{}", "{\"format\":\"pt\",\"note\":\"x\"}", "{\"format\":1}", "{\"a\":null}", "{\"a\":{\"b\":\"c\"}}", "[]", "\"pt\"", "5")
                .Select(v => new EditStep($"__metadata__ = {v}", h => h["__metadata__"] = Literal(v)))),
            (1, Gen.Constant(new EditStep("__metadata__ removed", h => h.Remove("__metadata__")))),
            // the text of the header
            (2, Gen.Elements("[]", "\"x\"", "1", "null", "", "{", "}", "{}", "{}{}", " {} ", "[{}]").Select(t => new EditStep($"header text = '{t}'", Text: _ => t))),
            (2, entry.Select(e => new EditStep($"duplicate key '{e.Name}'", Text: t => Insert(t, 1, $"\"{e.Name}\":{original[e.Name]!.ToJsonString()},")))),
            (1, entry.SelectMany(e => Gen.Elements("dtype", "shape", "data_offsets").Select(f => new EditStep($"'{e.Name}' has {f} twice",
                Text: t => DuplicateField(t, e.Name, f))))),
            (1, Gen.Constant(new EditStep("duplicate metadata key", Text: t => t.Replace("\"__metadata__\":{", "\"__metadata__\":{\"format\":\"pt\",")))),
            (2, Gen.Elements(("    ", "trailing spaces"), ("x", "trailing garbage"), ("{}", "a second object"), ("\0", "a trailing NUL"), (",", "a trailing comma"))
                .Select(s => new EditStep($"header + {s.Item2}", Text: t => t.TrimEnd() + s.Item1))),
            (1, Gen.Elements((" ", "a leading space"), ("\uFEFF", "a byte-order mark"), ("/*c*/", "a comment")).Select(s => new EditStep($"{s.Item2} + header", Text: t => s.Item1 + t))),
            (1, Gen.Constant(new EditStep("a trailing comma inside the object", Text: t => Insert(t, t.TrimEnd().Length - 1, ",")))),
            // raw bytes
            (3, Gen.Elements(LengthPrefixes).Select(lp => new EditStep($"length prefix = {lp.Description}", Bytes: f => SetLengthPrefix(f, lp.Value)))),
            (3, Gen.Choose(0, 1_000_000).Select(at => new EditStep($"truncated at {at}/1e6 of the file", Bytes: f => f[..(int)((long)f.Length * at / 1_000_000)]))),
            (1, Gen.Choose(0, 8).Select(at => new EditStep($"truncated to {at} bytes", Bytes: f => f[..Math.Min(at, f.Length)]))),
            (4, flips.Select(fl => new EditStep($"header bytes set ({Describe(fl)})", Bytes: f => SetHeaderBytes(f, fl)))),
            (1, flips.Select(fl => new EditStep($"data bytes set ({Describe(fl)})", Bytes: f => SetDataBytes(f, fl)))),
            (2, Gen.Zip(Gen.Choose(0, 1_000_000), Gen.Elements(-1, 1, 2)).Select(p => new EditStep(
                p.Item2 < 0 ? $"header byte at {p.Item1}/1e6 deleted" : $"{p.Item2} byte(s) inserted at {p.Item1}/1e6 of the header", Bytes: f => Splice(f, p.Item1, p.Item2)))),
            (1, Gen.Elements(1, 8, 4096).Select(k => new EditStep($"{k} bytes appended to the file", Bytes: f => [.. f, .. new byte[k]]))),
        };
        return Gen.Frequency(steps.ToArray());
    }

    /// <summary>Edits an entry that is still an object (an earlier step may have replaced or removed it).</summary>
    private static void Edit(JsonObject header, string name, Action<JsonObject> edit)
    {
        if (header[name] is JsonObject o) edit(o);
    }

    private static void SetItem(JsonObject entry, string field, int index, string literal)
    {
        if (entry[field] is JsonArray a && index < a.Count) a[index] = Literal(literal);
    }

    private static string Describe(IEnumerable<(int, int)> flips) => string.Join(", ", flips.Select(p => $"{p.Item1}/1e6 = 0x{p.Item2:x2}"));

    /// <summary>Length prefixes, each a function of the header's true length N and the file's length.</summary>
    private static readonly (string Description, Func<ulong, ulong, ulong> Value)[] LengthPrefixes =
    [
        ("0", (_, _) => 0), ("1", (_, _) => 1), ("N - 1", (n, _) => n - 1), ("N + 1", (n, _) => n + 1), ("N + 7", (n, _) => n + 7),
        ("N + 8", (n, _) => n + 8), ("file length - 8", (_, f) => f - 8), ("file length - 7", (_, f) => f - 7), ("N + 2^32", (n, _) => n + (1UL << 32)),
        ("2^63", (_, _) => 1UL << 63), ("2^64 - 1", (_, _) => ulong.MaxValue), ("100000001", (_, _) => 100_000_001),
    ];

    private static byte[] SetLengthPrefix(byte[] file, Func<ulong, ulong, ulong> value)
    {
        if (file.Length < 8) return file;
        var copy = (byte[])file.Clone();
        BinaryPrimitives.WriteUInt64LittleEndian(copy, unchecked(value(BinaryPrimitives.ReadUInt64LittleEndian(copy), (ulong)copy.Length)));
        return copy;
    }

    private static JsonArray Offsets(long begin, long end) => new(JsonValue.Create(begin), JsonValue.Create(end));

    private static JsonNode ReshapeEdit(long[] shape, string how) => how switch
    {
        "append 1" => new JsonArray([.. shape.Append(1).Select(d => (JsonNode)JsonValue.Create(d))]),
        "append 0" => new JsonArray([.. shape.Append(0).Select(d => (JsonNode)JsonValue.Create(d))]),
        "drop last" => new JsonArray([.. shape.SkipLast(1).Select(d => (JsonNode)JsonValue.Create(d))]),
        "scalar" => new JsonArray(),
        _ => new JsonArray([.. shape.Reverse().Select(d => (JsonNode)JsonValue.Create(d))]),
    };

    private static JsonNode OffsetsEdit(SpecEntry e, string how) => how switch
    {
        "swap" => Offsets(e.End, e.Begin),
        "one" => new JsonArray(JsonValue.Create(e.Begin)),
        "three" => new JsonArray(JsonValue.Create(e.Begin), JsonValue.Create(e.End), JsonValue.Create(e.End)),
        _ => new JsonArray(),
    };

    private static string Insert(string text, int at, string what) =>
        at < 0 || at > text.Length ? text + what : text.Insert(at, what);

    private static string DuplicateField(string text, string entry, string field)
    {
        var at = text.IndexOf($"\"{entry}\":{{", StringComparison.Ordinal);
        if (at < 0) return text;
        var value = field == "dtype" ? "\"F32\"" : "[0]";
        return text.Insert(at + entry.Length + 4, $"\"{field}\":{value},");
    }

    private static int HeaderEnd(byte[] file) => (int)Math.Min((ulong)file.Length, 8 + BinaryPrimitives.ReadUInt64LittleEndian(file));

    private static byte[] SetHeaderBytes(byte[] file, IEnumerable<(int, int)> flips)
    {
        if (file.Length < 8) return file;
        var copy = (byte[])file.Clone();
        var end = HeaderEnd(copy);
        foreach (var (at, value) in flips) copy[(int)((long)(end - 1) * at / 1_000_000)] = (byte)value;
        return copy;
    }

    private static byte[] SetDataBytes(byte[] file, IEnumerable<(int, int)> flips)
    {
        if (file.Length < 8) return file;
        var copy = (byte[])file.Clone();
        var start = HeaderEnd(copy);
        if (start >= copy.Length) return copy;
        foreach (var (at, value) in flips) copy[start + (int)((long)(copy.Length - 1 - start) * at / 1_000_000)] = (byte)value;
        return copy;
    }

    private static byte[] Splice(byte[] file, int at, int count)
    {
        if (file.Length < 8) return file;
        var end = HeaderEnd(file);
        var pos = 8 + (int)((long)(end - 8) * at / 1_000_000);
        return count < 0
            ? [.. file.AsSpan(0, pos), .. file.AsSpan(Math.Min(pos + 1, file.Length))]
            : [.. file.AsSpan(0, pos), .. Enumerable.Repeat((byte)'"', count), .. file.AsSpan(pos)];
    }
}
