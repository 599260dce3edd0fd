using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using FsCheck;
using FsCheck.Fluent;

namespace SharpLens.Testing.Fuzzing;

/// <summary>What an edited config.json must lead to.</summary>
internal enum Expect
{
    /// <summary>A named refusal.</summary>
    Refuse,
    /// <summary>A load (and a forward pass with finite logits): the edit leaves a valid config.</summary>
    Load,
    /// <summary>A load with exactly the unedited config's <see cref="TransformerConfig"/>: the edit touches nothing that matters.</summary>
    LoadAsOriginal,
    /// <summary>A named refusal, or a load with exactly the unedited config (an inert field: a strict reader may refuse its garbage).</summary>
    RefuseOrAsOriginal,
    /// <summary>The same outcome as <see cref="ConfigEdit.Reference"/>: both refused, or both loaded with identical configs.</summary>
    SameAsReference,
    /// <summary>Either a named refusal or a load whose forward pass gives finite logits (or refuses by name).</summary>
    Either,
}

/// <summary>An edited config.json: its bytes, what it must lead to, and (for <see cref="Expect.SameAsReference"/>) the config it must equal.</summary>
internal sealed record ConfigEdit(string Description, byte[] Bytes, Expect Expect, byte[]? Reference = null)
{
    public override string ToString() => $"{Description} (expect {Expect})";
}

/// <summary>
/// Generators of edits to a fixture's config.json, each with the outcome it must have, derived from what the field means
/// (<see cref="HfConfigDefaults"/>) rather than from what the loader does: deleted fields (must load as the field set to
/// transformers' default), values of the wrong JSON type, zero, negative, fractional, overflowing and huge sizes, numbers no
/// double holds, NaN and Infinity literals, activation names, unknown and other model types, rope_scaling objects right and
/// wrong, duplicate keys (the last wins, as in Python), unknown fields, and the file itself truncated, corrupted or not an object.
/// </summary>
internal static class ConfigEdits
{
    /// <summary>Literals of every JSON kind, for "a value of the wrong type".</summary>
    private static readonly string[] WrongTypes = ["\"x\"", "\"64\"", "\"1e-5\"", "\"NaN\"", "true", "false", "[]", "[64]", "{}", "{\"a\":1}", "64", "0.5"];

    /// <summary>Sizes that are not positive 32-bit integers.</summary>
    private static readonly string[] BadSizes = ["0", "-1", "-0", "-2147483648", "2147483648", "9223372036854775808", "1e30", "1.5", "64.0", "1e2", "1e400"];

    /// <summary>Valid but huge sizes.</summary>
    private static readonly string[] HugeSizes = ["65537", "1048576", "2147483647"];

    /// <summary>Every edit of one config.</summary>
    public static Gen<ConfigEdit> For(JsonObject original)
    {
        var modelType = original["model_type"]!.GetValue<string>();
        var table = HfConfigDefaults.Fields[modelType];
        var fields = original.Select(p => p.Key).Where(k => k != "model_type").Select(k => table[k]).ToArray();
        var field = Gen.Elements(fields);
        // A field of one of these kinds (null when the config has none: that family of edits is left out).
        Gen<HfField>? Of(params FieldKind[] kinds) => fields.Where(f => kinds.Contains(f.Kind)).ToArray() is { Length: > 0 } some ? Gen.Elements(some) : null;
        byte[] With(Action<JsonObject> edit)
        {
            var copy = original.DeepClone().AsObject();
            edit(copy);
            return Encoding.UTF8.GetBytes(copy.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        }
        byte[] Set(string name, string literal) => With(c => c[name] = JsonNode.Parse(literal));
        var text = Encoding.UTF8.GetString(With(_ => { }));

        var edits = new List<(int, Gen<ConfigEdit>?)>
        {
            (3, Deletions(original, fields)),
            // a value of the wrong JSON type: a field that matters must be refused; an inert one may be read or ignored
            (4, field.SelectMany(f => Gen.Elements(WrongTypes.Where(v => !IsNatural(f, v)).ToArray()).Select(v => new ConfigEdit(
                $"{f.Name} = {v}", Set(f.Name, v), f.Kind == FieldKind.Inert ? Expect.RefuseOrAsOriginal : Expect.Refuse)))),
            (2, field.Select(f => new ConfigEdit($"{f.Name} = null", Set(f.Name, "null"),
                f.Default == "null" ? Expect.SameAsReference : f.Kind == FieldKind.Inert ? Expect.RefuseOrAsOriginal : Expect.Either,
                With(c => c.Remove(f.Name))))),
            // sizes
            (3, Of(FieldKind.ShapeSize, FieldKind.HeadCount, FieldKind.FreeSize)?.SelectMany(f => Gen.Elements(BadSizes).Select(v =>
                new ConfigEdit($"{f.Name} = {v}", Set(f.Name, v), Expect.Refuse)))),
            (3, Of(FieldKind.ShapeSize, FieldKind.HeadCount, FieldKind.FreeSize)?.SelectMany(f => Gen.Elements(HugeSizes).Select(v =>
                new ConfigEdit($"{f.Name} = {v}", Set(f.Name, v), f.Kind == FieldKind.FreeSize ? Expect.Load : Expect.Refuse)))),
            // numbers
            (3, Of(FieldKind.Positive, FieldKind.NonNegative, FieldKind.SoftCap)?.SelectMany(f => Gen.Elements(NumberCases(f.Kind)).Select(c =>
                new ConfigEdit($"{f.Name} = {c.Literal}", Set(f.Name, c.Literal), c.Expect)))),
            (2, Of(FieldKind.Fraction)?.SelectMany(f => Gen.Elements("1.0", "0.5", "0.25", "0.125", "0.3", "0.1", "0", "-0.25", "1.5", "2", "1e-9", "1e400")
                .Select(v => new ConfigEdit($"{f.Name} = {v}", Set(f.Name, v), FractionExpectation(original, v))))),
            (2, Of(FieldKind.Positive, FieldKind.NonNegative, FieldKind.SoftCap, FieldKind.Fraction, FieldKind.ShapeSize, FieldKind.FreeSize)?
                .SelectMany(f => Gen.Elements("NaN", "Infinity", "-Infinity", "nan").Select(v => new ConfigEdit($"{f.Name} = {v} (a Python json literal)",
                    Encoding.UTF8.GetBytes(ReplaceValue(text, f.Name, v)), Expect.Refuse)))),
            // switches, activations, model types
            (1, Of(FieldKind.Bool)?.Select(f => new ConfigEdit($"{f.Name} toggled", With(c => c[f.Name] = !(c[f.Name]?.GetValue<bool>() ?? false)), Expect.Either))),
            (2, Of(FieldKind.Activation)?.SelectMany(f => Gen.Elements(HfConfigDefaults.Activations.Concat(["tanh", "quick_gelu", "", "GELU", "gelu "]).ToArray())
                .Select(v => new ConfigEdit($"{f.Name} = \"{v}\"", Set(f.Name, JsonSerializer.Serialize(v)),
                    HfConfigDefaults.Activations.Contains(v) ? Expect.Load : Expect.Either)))),
            (2, Gen.Elements("mamba", "", "GPT2", "llama ", "bert", "gpt-neox", "gpt2", "gpt_neox", "llama", "mistral", "qwen2", "gemma", "gemma2", "phi3")
                .Where(t => t != modelType).Select(t => new ConfigEdit($"model_type = \"{t}\"", Set("model_type", JsonSerializer.Serialize(t)),
                    HfConfigDefaults.Fields.ContainsKey(t) ? Expect.Either : Expect.Refuse))),
            // unknown fields, duplicate keys
            (1, Gen.Elements(WrongTypes.Append("null").ToArray()).Select(v => new ConfigEdit($"unknown field zz_extra = {v}", Set("zz_extra", v), Expect.LoadAsOriginal))),
            (2, field.SelectMany(f => Gen.Elements(WrongTypes.Append(f.Default).ToArray()).Select(v => new ConfigEdit($"{f.Name} repeated last as {v}",
                Encoding.UTF8.GetBytes(text.TrimEnd()[..^1].TrimEnd() + $",\n  \"{f.Name}\": {v}\n}}"), Expect.SameAsReference, Set(f.Name, v))))),
            // the file itself
            (2, Gen.Choose(0, 999).Select(at => new ConfigEdit($"truncated at {at}/1000", Encoding.UTF8.GetBytes(text)[..(text.Length * at / 1000)],
                // Shorter than the text up to its closing brace: not a JSON object any more, so never loadable.
                at * text.Length / 1000 >= text.TrimEnd().Length ? Expect.LoadAsOriginal : Expect.Refuse))),
            (2, Gen.Choose(1, 3).SelectMany(k => Gen.ListOf(Gen.Zip(Gen.Choose(0, 999), Gen.Choose(0, 255)), k)).Select(flips => new ConfigEdit(
                $"bytes set ({string.Join(", ", flips.Select(p => $"{p.Item1}/1000 = 0x{p.Item2:x2}"))})", SetBytes(Encoding.UTF8.GetBytes(text), flips), Expect.Either))),
            (1, Gen.Elements("", " ", "[]", "\"gpt2\"", "1", "null", "{}", "{", "[{\"model_type\":\"gpt2\"}]").Select(t => new ConfigEdit(
                $"config.json = '{t}'", Encoding.UTF8.GetBytes(t), Expect.Refuse))),
            (1, Gen.Elements(("\uFEFF", "", "a byte-order mark"), ("// c\n", "", "a comment"), ("", "x", "trailing garbage"), ("", "{}", "a second object"))
                .Select(s => new ConfigEdit($"config.json with {s.Item3}", Encoding.UTF8.GetBytes(s.Item1 + text + s.Item2), Expect.Refuse))),
        };
        if (HfConfigDefaults.RopeTypes[modelType] is var ropeTypes && modelType != "gpt2")
            edits.Add((3, RopeScalings(original, ropeTypes, With)));
        return Gen.Frequency(edits.Where(e => e.Item2 is not null).Select(e => (e.Item1, e.Item2!)).ToArray());
    }

    /// <summary>
    /// Deleting one to three fields must give the outcome of setting them to transformers' defaults (both refused, or both loaded
    /// with the same config); deleting model_type, or a field SharpLens requires (<see cref="HfConfigDefaults.Required"/>), must
    /// be refused.
    /// </summary>
    public static Gen<ConfigEdit> Deletions(JsonObject original, HfField[] fields)
    {
        var required = HfConfigDefaults.Required[original["model_type"]!.GetValue<string>()];
        return Gen.Frequency(
            (9, Gen.Choose(1, 3).SelectMany(k => Gen.Shuffle(fields).Select(s => s.Take(k).ToArray())).Select(gone =>
            {
                var deleted = original.DeepClone().AsObject();
                var defaulted = original.DeepClone().AsObject();
                foreach (var f in gone)
                {
                    deleted.Remove(f.Name);
                    defaulted[f.Name] = JsonNode.Parse(f.Default);
                }
                var description = $"deleted {string.Join(", ", gone.Select(f => f.Name))} (as {string.Join(", ", gone.Select(f => $"{f.Name} = {f.Default}"))})";
                return gone.Any(f => required.Contains(f.Name))
                    ? new ConfigEdit(description, Encoding.UTF8.GetBytes(deleted.ToJsonString()), Expect.Refuse)
                    : new ConfigEdit(description, Encoding.UTF8.GetBytes(deleted.ToJsonString()), Expect.SameAsReference, Encoding.UTF8.GetBytes(defaulted.ToJsonString()));
            })),
            (1, Gen.Constant(new ConfigEdit("deleted model_type", Encoding.UTF8.GetBytes(Without(original, "model_type").ToJsonString()), Expect.Refuse))));
    }

    private static JsonObject Without(JsonObject o, string name)
    {
        var copy = o.DeepClone().AsObject();
        copy.Remove(name);
        return copy;
    }

    /// <summary>Whether a literal is a value of the kind the field holds (so not a wrong type).</summary>
    private static bool IsNatural(HfField f, string literal)
    {
        var kind = JsonDocument.Parse(literal).RootElement.ValueKind;
        return f.Kind switch
        {
            FieldKind.Inert => false,
            FieldKind.Bool => kind is JsonValueKind.True or JsonValueKind.False,
            FieldKind.Activation or FieldKind.ModelType => kind == JsonValueKind.String,
            FieldKind.RopeScaling => kind == JsonValueKind.Object,
            _ => kind == JsonValueKind.Number,
        };
    }

    private static (string Literal, Expect Expect)[] NumberCases(FieldKind kind) => kind switch
    {
        FieldKind.Positive => [("0.5", Expect.Load), ("2", Expect.Load), ("1000000", Expect.Load), ("0", Expect.Refuse), ("-1", Expect.Refuse), ("-1e-9", Expect.Refuse), ("1e400", Expect.Refuse)],
        FieldKind.NonNegative => [("0", Expect.Load), ("1e-12", Expect.Load), ("0.5", Expect.Load), ("-1e-06", Expect.Refuse), ("-1", Expect.Refuse), ("1e400", Expect.Refuse)],
        _ => [("0.5", Expect.Load), ("100", Expect.Load), ("0", Expect.Either), ("-1", Expect.Refuse), ("1e400", Expect.Refuse)],
    };

    /// <summary>rotary_pct / partial_rotary_factor: valid when in (0, 1] and int(d_head × it) is even and positive (transformers' rotary dimension).</summary>
    private static Expect FractionExpectation(JsonObject original, string literal)
    {
        if (!double.TryParse(literal, NumberStyles.Float, CultureInfo.InvariantCulture, out var v) || double.IsInfinity(v)) return Expect.Refuse;
        var dHead = original["hidden_size"]!.GetValue<int>() / original["num_attention_heads"]!.GetValue<int>();
        var rotary = (int)(dHead * v);
        return v > 0 && v <= 1 && rotary > 0 && rotary % 2 == 0 ? Expect.Load : Expect.Refuse;
    }

    /// <summary>rope_scaling objects: a type SharpLens does not implement for the model type must be refused by name; others may load.</summary>
    private static Gen<ConfigEdit> RopeScalings(JsonObject original, string[] supported, Func<Action<JsonObject>, byte[]> with)
    {
        var types = new[] { "linear", "dynamic", "llama3", "longrope", "su", "yarn", "default", "", "LINEAR" };
        var keys = new[] { "rope_type", "type" };
        var factor = new[] { "2.0", "1.0", "0.5", "0", "-1", "\"2\"", "null", "1e400", "4" };
        var integer = new[] { "64", "0", "-5", "\"x\"", "1e10", "8192" };
        var dHead = original["head_dim"]?.GetValue<int>() ?? original["hidden_size"]!.GetValue<int>() / original["num_attention_heads"]!.GetValue<int>();
        var rotaryHalf = (int)(dHead * (original["rotary_pct"]?.GetValue<double>() ?? 1.0)) / 2;
        var factors = Gen.Elements(0, rotaryHalf, rotaryHalf + 1).SelectMany(n => Gen.Elements("1.0", "2.5", "\"x\"", "null", "1e400").Select(v =>
            "[" + string.Join(",", Enumerable.Range(0, n).Select(i => i == n - 1 ? v : "1.0")) + "]"));
        var obj = from key in Gen.Elements(keys)
                  from type in Gen.Elements(types)
                  from f in Gen.Elements(factor).Select(v => v == "4" ? null : v)
                  from low in Gen.Elements("1", "4", "0", "\"x\"", "1e400")
                  from high in Gen.Elements("4", "1", "0", "\"x\"")
                  from omp in Gen.Elements(integer)
                  from shortF in factors
                  from longF in factors
                  select (type, $"{{\"{key}\": \"{type}\"" + (f is null ? "" : $", \"factor\": {f}") + $", \"low_freq_factor\": {low}, \"high_freq_factor\": {high}" +
                                $", \"original_max_position_embeddings\": {omp}, \"short_factor\": {shortF}, \"long_factor\": {longF}}}");
        return Gen.Frequency(
            (8, obj.Select(o => new ConfigEdit($"rope_scaling = {o.Item2}", with(c => c["rope_scaling"] = JsonNode.Parse(o.Item2)),
                o.type == "default" || supported.Contains(o.type) ? Expect.Either : Expect.Refuse))),
            (1, Gen.Elements("[]", "\"linear\"", "2", "true", "{}", "{\"factor\": 2.0}", "{\"rope_type\": 5}").Select(v => new ConfigEdit($"rope_scaling = {v}",
                with(c => c["rope_scaling"] = JsonNode.Parse(v)), Expect.Refuse))));
    }

    private static string ReplaceValue(string indentedJson, string field, string literal)
    {
        var lines = indentedJson.Split('\n');
        for (var i = 0; i < lines.Length; i++)
        {
            var key = $"\"{field}\":";
            var at = lines[i].IndexOf(key, StringComparison.Ordinal);
            if (at < 0) continue;
            var comma = lines[i].TrimEnd().EndsWith(',') ? "," : "";
            lines[i] = lines[i][..(at + key.Length)] + " " + literal + comma;
        }
        return string.Join('\n', lines);
    }

    private static byte[] SetBytes(byte[] bytes, IEnumerable<(int, int)> flips)
    {
        var copy = (byte[])bytes.Clone();
        foreach (var (at, value) in flips) copy[(int)((long)(copy.Length - 1) * at / 1000)] = (byte)value;
        return copy;
    }
}
