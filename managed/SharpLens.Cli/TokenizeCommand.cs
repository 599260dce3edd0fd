using System.CommandLine;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using SharpLens.Tokenization;

namespace SharpLens.Cli;

/// <summary>
/// <c>lens tokenize</c>: encodes JSONL texts to ids and token strings with a model folder's tokenizer, or (with
/// <c>--decode</c>) decodes ids back to text. Only the tokenizer files are read (tokenizer.json and
/// tokenizer_config.json, or vocab.json and merges.txt), so a folder without weights works too.
/// </summary>
internal static class TokenizeCommand
{
    public static Command Build(CliContext context)
    {
        var modelDir = new Argument<string>("MODEL_DIR") { Description = "Folder with tokenizer.json (+ tokenizer_config.json), or vocab.json + merges.txt" };
        var input = new Option<string>("--input") { Description = "JSONL input: {\"text\": \"...\"} per line (with --decode: {\"ids\": [...]})", Required = true, HelpName = "IN.jsonl" };
        var output = new Option<string>("--out") { Description = "JSONL output: {\"ids\": [...], \"tokens\": [...]} per line (with --decode: {\"text\": \"...\"})", Required = true, HelpName = "OUT.jsonl" };
        var addSpecial = new Option<bool>("--add-special-tokens")
        {
            Description = "Add the post-processor's special tokens (BOS for Llama and Gemma), as HuggingFace's add_special_tokens",
            DefaultValueFactory = _ => true,
            Arity = ArgumentArity.ExactlyOne,
        };
        var decode = new Option<bool>("--decode") { Description = "Decode {\"ids\": [...]} lines to {\"text\": \"...\"} instead of encoding" };
        var command = new Command("tokenize",
            "Encode texts to token ids and token strings with the folder's HuggingFace tokenizer (the ids of HuggingFace's tokenizers), " +
            "or decode ids back to text with --decode. One JSON object per line in, one per line out, in the same order.")
        {
            modelDir, input, output, addSpecial, decode,
        };
        command.SetAction(parse => context.Execute(() => Run(context,
            parse.GetValue(modelDir)!, parse.GetValue(input)!, parse.GetValue(output)!, parse.GetValue(addSpecial), parse.GetValue(decode))));
        return command;
    }

    private static readonly JsonWriterOptions WriterOptions = new()
    {
        // Readable output: non-ASCII text as itself; quotes, backslashes and control characters still escaped.
        Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
    };

    private static int Run(CliContext context, string modelDir, string inputPath, string outputPath, bool addSpecialTokens, bool decode)
    {
        var tokenizer = Load(modelDir);
        if (!File.Exists(inputPath)) throw new CliException($"--input '{inputPath}' does not exist");
        var outFull = CliSupport.CheckOutPath(outputPath);
        if (Path.GetFullPath(inputPath) == outFull) throw new CliException("--out must not be the --input file");

        var count = 0;
        var buffer = new ArrayBufferWriterStream();
        // Written to a temporary file and moved into place, so a failure halfway leaves no truncated output.
        var temp = outFull + $".tmp-{Environment.ProcessId}";
        try
        {
            using (var writer = new FileStream(temp, FileMode.Create, FileAccess.Write))
            {
                var lineNumber = 0;
                foreach (var line in File.ReadLines(inputPath))
                {
                    lineNumber++;
                    if (string.IsNullOrWhiteSpace(line)) throw new CliException($"{inputPath}:{lineNumber}: empty line (one JSON object per line)");
                    buffer.Reset();
                    using (var json = new Utf8JsonWriter(buffer, WriterOptions))
                    {
                        if (decode) DecodeLine(tokenizer, line, inputPath, lineNumber, json);
                        else EncodeLine(tokenizer, line, inputPath, lineNumber, addSpecialTokens, json);
                    }
                    buffer.WriteByte((byte)'\n');
                    buffer.WriteTo(writer);
                    count++;
                }
            }
            File.Move(temp, outFull, overwrite: true);
        }
        catch (IOException e) when (e is not TokenizerFormatException)
        {
            throw new CliException($"cannot read '{inputPath}' or write '{outputPath}': {e.Message}", e);
        }
        finally
        {
            if (File.Exists(temp)) File.Delete(temp);
        }
        context.Out.WriteLine($"{(decode ? "decoded" : "encoded")} {count} lines to {outputPath}");
        return Program.Success;
    }

    private static BpeTokenizer Load(string modelDir)
    {
        if (!Directory.Exists(modelDir)) throw new CliException($"model directory '{modelDir}' does not exist");
        try
        {
            return BpeTokenizer.FromDirectory(modelDir);
        }
        catch (Exception e) when (e is IOException or NotSupportedException or ArgumentException)
        {
            // FileNotFoundException (no tokenizer files), TokenizerFormatException, UnsupportedTokenizerException.
            throw new CliException($"cannot load the tokenizer of '{modelDir}': {e.Message}", e);
        }
    }

    private static JsonElement ParseObject(string line, string path, int lineNumber, out JsonDocument doc)
    {
        try
        {
            doc = JsonDocument.Parse(line);
        }
        catch (JsonException e)
        {
            throw new CliException($"{path}:{lineNumber}: not valid JSON ({e.Message})", e);
        }
        if (doc.RootElement.ValueKind != JsonValueKind.Object)
        {
            doc.Dispose();
            throw new CliException($"{path}:{lineNumber}: expected a JSON object, got {doc.RootElement.ValueKind}");
        }
        return doc.RootElement;
    }

    private static void EncodeLine(BpeTokenizer tokenizer, string line, string path, int lineNumber, bool addSpecialTokens, Utf8JsonWriter json)
    {
        var root = ParseObject(line, path, lineNumber, out var doc);
        using (doc)
        {
            if (!root.TryGetProperty("text", out var textElement) || textElement.ValueKind != JsonValueKind.String)
                throw new CliException($"{path}:{lineNumber}: expected {{\"text\": \"...\"}}");
            var result = tokenizer.Tokenize(JsonText.ReadString(textElement), addSpecialTokens);
            json.WriteStartObject();
            json.WriteStartArray("ids");
            foreach (var id in result.Ids) json.WriteNumberValue(id);
            json.WriteEndArray();
            json.WriteStartArray("tokens");
            foreach (var token in result.Tokens) json.WriteStringValue(token);
            json.WriteEndArray();
            json.WriteEndObject();
        }
    }

    private static void DecodeLine(BpeTokenizer tokenizer, string line, string path, int lineNumber, Utf8JsonWriter json)
    {
        var root = ParseObject(line, path, lineNumber, out var doc);
        using (doc)
        {
            if (!root.TryGetProperty("ids", out var idsElement) || idsElement.ValueKind != JsonValueKind.Array)
                throw new CliException($"{path}:{lineNumber}: expected {{\"ids\": [...]}}");
            var ids = new List<int>(idsElement.GetArrayLength());
            foreach (var e in idsElement.EnumerateArray())
            {
                if (e.ValueKind != JsonValueKind.Number || !e.TryGetInt32(out var id) || id < 0)
                    throw new CliException($"{path}:{lineNumber}: ids must be non-negative integers, got {e.GetRawText()}");
                ids.Add(id);
            }
            json.WriteStartObject();
            json.WriteString("text", tokenizer.Decode(ids));
            json.WriteEndObject();
        }
    }

    /// <summary>A reusable in-memory buffer for one output line.</summary>
    private sealed class ArrayBufferWriterStream : MemoryStream
    {
        public void Reset() => SetLength(0);
    }
}

/// <summary>Reading JSON strings as JavaScript does.</summary>
internal static class JsonText
{
    /// <summary>
    /// A JSON string's value. JSON may escape unpaired surrogates ("\ud800"), which JavaScript and Python accept
    /// and System.Text.Json refuses; such strings are unescaped here by hand, keeping the lone surrogate (the
    /// tokenizer then reads it as U+FFFD, as HuggingFace's tokenizers do).
    /// </summary>
    public static string ReadString(JsonElement element)
    {
        try
        {
            return element.GetString()!;
        }
        catch (InvalidOperationException)
        {
            return Unescape(element.GetRawText());
        }
    }

    private static string Unescape(string raw)
    {
        var sb = new StringBuilder(raw.Length);
        for (var i = 1; i < raw.Length - 1; i++)   // inside the quotes; the parser has already validated the syntax
        {
            var c = raw[i];
            if (c != '\\')
            {
                sb.Append(c);
                continue;
            }
            var e = raw[++i];
            switch (e)
            {
                case 'b': sb.Append('\b'); break;
                case 'f': sb.Append('\f'); break;
                case 'n': sb.Append('\n'); break;
                case 'r': sb.Append('\r'); break;
                case 't': sb.Append('\t'); break;
                case 'u':
                    sb.Append((char)Convert.ToUInt16(raw.Substring(i + 1, 4), 16));
                    i += 4;
                    break;
                default: sb.Append(e); break;   // \" \\ \/
            }
        }
        return sb.ToString();
    }
}
