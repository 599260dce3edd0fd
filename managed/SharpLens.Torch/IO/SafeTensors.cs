using System.Buffers;
using System.Buffers.Binary;
using System.IO.MemoryMappedFiles;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;

namespace SharpLens.Tensors.IO;

/// <summary>
/// A file that is not a valid safetensors file. The message names the file and the fault, because a
/// model folder holds many shards and "invalid data" alone does not say which one to regenerate.
/// Derives from <see cref="FormatException"/> (<see cref="InvalidDataException"/> is sealed).
/// </summary>
public sealed class SafeTensorsFormatException : FormatException
{
    /// <summary>The file that failed to parse.</summary>
    public string FilePath { get; }

    /// <summary>What is wrong with it, without the file name.</summary>
    public string Fault { get; }

    /// <summary>Creates the exception for <paramref name="filePath"/> with a description of the fault.</summary>
    public SafeTensorsFormatException(string filePath, string fault, Exception? innerException = null)
        : base($"'{filePath}' is not a valid safetensors file: {fault}", innerException)
    {
        FilePath = filePath;
        Fault = fault;
    }
}

/// <summary>Where one tensor lies in a safetensors file and what it holds, as the header declares it.</summary>
public sealed class SafeTensorInfo
{
    internal SafeTensorInfo(string name, ScalarType dtype, long[] shape, long dataBegin, long dataEnd)
    {
        Name = name;
        DType = dtype;
        _shape = shape;
        DataBegin = dataBegin;
        DataEnd = dataEnd;
    }

    private readonly long[] _shape;

    /// <summary>The tensor's name (the header key).</summary>
    public string Name { get; }

    /// <summary>The element type.</summary>
    public ScalarType DType { get; }

    /// <summary>The safetensors spelling of <see cref="DType"/> (F32, BF16, ...).</summary>
    public string DTypeName => SafeTensors.DTypeName(DType);

    /// <summary>The sizes of the dimensions; empty for a 0-d scalar. A copy, so callers cannot corrupt the header.</summary>
    public long[] Shape => (long[])_shape.Clone();

    /// <summary>First byte of the data, relative to the start of the data section (the byte after the header).</summary>
    public long DataBegin { get; }

    /// <summary>One past the last byte of the data, relative to the start of the data section.</summary>
    public long DataEnd { get; }

    /// <summary>Bytes of data: <c>DataEnd - DataBegin</c>.</summary>
    public long ByteLength => DataEnd - DataBegin;

    /// <summary>Number of elements (the product of <see cref="Shape"/>; 1 for a scalar).</summary>
    public long NumEl
    {
        get
        {
            long n = 1;
            foreach (var s in _shape) n *= s;
            return n;
        }
    }

    internal long[] ShapeNoCopy => _shape;

    /// <inheritdoc/>
    public override string ToString() => $"{Name}: {DTypeName} {Tensor.FormatShape(_shape)} bytes [{DataBegin}, {DataEnd})";
}

/// <summary>
/// Reads and writes the safetensors format (https://github.com/huggingface/safetensors): an 8-byte
/// little-endian header length, a UTF-8 JSON header, then raw little-endian tensor data.
/// Use <see cref="SafeTensorsFile"/> to read lazily and without copying; these helpers cover the common
/// "load everything" and "save a dictionary" cases.
/// </summary>
public static class SafeTensors
{
    /// <summary>The reserved header key for free-form string metadata; no tensor may use it.</summary>
    public const string MetadataKey = "__metadata__";

    /// <summary>
    /// Largest header accepted, as in the reference implementation: a bound on what an untrusted file can make
    /// us allocate and parse before any tensor is touched.
    /// </summary>
    public const long MaxHeaderBytes = 100_000_000;

    /// <summary>The element types this implementation reads and writes.</summary>
    public static IReadOnlyList<ScalarType> SupportedDTypes { get; } =
    [
        ScalarType.Float64, ScalarType.Float32, ScalarType.Float16, ScalarType.BFloat16,
        ScalarType.Int64, ScalarType.Int32, ScalarType.Int16, ScalarType.Int8, ScalarType.Byte, ScalarType.Bool,
    ];

    /// <summary>The safetensors name of a dtype (F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL).</summary>
    /// <exception cref="ArgumentException">The dtype has no safetensors spelling here.</exception>
    public static string DTypeName(ScalarType dtype) => dtype switch
    {
        ScalarType.Float64 => "F64",
        ScalarType.Float32 => "F32",
        ScalarType.Float16 => "F16",
        ScalarType.BFloat16 => "BF16",
        ScalarType.Int64 => "I64",
        ScalarType.Int32 => "I32",
        ScalarType.Int16 => "I16",
        ScalarType.Int8 => "I8",
        ScalarType.Byte => "U8",
        ScalarType.Bool => "BOOL",
        _ => throw new ArgumentException($"dtype {dtype} cannot be stored in safetensors here; supported: {SupportedNames}", nameof(dtype)),
    };

    /// <summary>Maps a safetensors dtype name to a <see cref="ScalarType"/>; false for names we do not support (U16, F8_E4M3, ...).</summary>
    public static bool TryParseDType(string name, out ScalarType dtype)
    {
        switch (name)
        {
            case "F64": dtype = ScalarType.Float64; return true;
            case "F32": dtype = ScalarType.Float32; return true;
            case "F16": dtype = ScalarType.Float16; return true;
            case "BF16": dtype = ScalarType.BFloat16; return true;
            case "I64": dtype = ScalarType.Int64; return true;
            case "I32": dtype = ScalarType.Int32; return true;
            case "I16": dtype = ScalarType.Int16; return true;
            case "I8": dtype = ScalarType.Int8; return true;
            case "U8": dtype = ScalarType.Byte; return true;
            case "BOOL": dtype = ScalarType.Bool; return true;
            default: dtype = default; return false;
        }
    }

    internal static string SupportedNames => "F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL";

    /// <summary>
    /// Loads every tensor of a file. The tensors are the caller's to dispose; they view the file's memory
    /// mapping where alignment allows (copy-on-write, so writing to them never changes the file), and the
    /// mapping is released when the last of them is freed.
    /// </summary>
    /// <exception cref="SafeTensorsFormatException">The file is malformed.</exception>
    public static Dictionary<string, Tensor> Load(string path)
    {
        using var file = SafeTensorsFile.Open(path);
        return new Dictionary<string, Tensor>(file.LoadAll(), StringComparer.Ordinal);
    }

    /// <summary>
    /// Writes tensors (and optional string metadata) to <paramref name="path"/> in the safetensors format.
    /// Tensors may live on any device and have any layout: each is copied to contiguous CPU memory while it is
    /// written. The file is written beside the target under a temporary name and renamed over it only once
    /// complete, so readers never see a half-written file and a crash never destroys the previous version
    /// (even one that is currently memory-mapped by a <see cref="SafeTensorsFile"/>: its mapping keeps the old data).
    /// </summary>
    /// <param name="path">The file to create or replace.</param>
    /// <param name="tensors">Name/tensor pairs; names must be unique and not <see cref="MetadataKey"/>.</param>
    /// <param name="metadata">Optional free-form string pairs stored under <see cref="MetadataKey"/>.</param>
    /// <exception cref="ArgumentException">A duplicate or reserved name, a null tensor or metadata value, or an unsupported dtype.</exception>
    public static unsafe void Save(string path, IEnumerable<KeyValuePair<string, Tensor>> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        ArgumentNullException.ThrowIfNull(tensors);
        // The format is little-endian and we copy raw memory; a big-endian host would write garbage.
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("safetensors writing needs a little-endian host");

        // Validate everything before creating any file, so a bad argument leaves the disk untouched.
        var items = new List<(string Name, Tensor Tensor, ScalarType DType, long[] Shape, long Bytes)>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (name, tensor) in tensors)
        {
            if (name is null) throw new ArgumentException("a tensor name is null", nameof(tensors));
            if (name == MetadataKey) throw new ArgumentException($"'{MetadataKey}' is reserved for metadata and cannot name a tensor", nameof(tensors));
            if (tensor is null) throw new ArgumentException($"tensor '{name}' is null", nameof(tensors));
            if (!seen.Add(name)) throw new ArgumentException($"tensor name '{name}' appears more than once", nameof(tensors));
            var dtype = tensor.DType;
            if (!SupportedDTypes.Contains(dtype))
                throw new ArgumentException($"tensor '{name}' has dtype {dtype}, which safetensors cannot store here; supported: {SupportedNames}", nameof(tensors));
            var shape = tensor.Shape;
            items.Add((name, tensor, dtype, shape, checked(tensor.NumEl * dtype.ElementSize())));
        }
        if (metadata is not null)
            foreach (var (k, v) in metadata)
            {
                if (k is null || v is null) throw new ArgumentException($"metadata key '{k}' has a null key or value", nameof(metadata));
            }

        // Larger elements first, as the reference implementation orders them: the data section starts 8-aligned
        // and every tensor's byte length is a multiple of its element size, so this order puts every tensor
        // at an offset aligned to its element size and lets readers (ours included) map it without copying.
        items.Sort((a, b) =>
        {
            var bySize = b.DType.ElementSize().CompareTo(a.DType.ElementSize());
            return bySize != 0 ? bySize : string.CompareOrdinal(a.Name, b.Name);
        });

        var header = BuildHeader(items.Select(i => (i.Name, i.DType, i.Shape, i.Bytes)), metadata);

        var fullPath = System.IO.Path.GetFullPath(path);
        var folder = System.IO.Path.GetDirectoryName(fullPath) ?? ".";
        // Same folder, so the final rename stays on one file system and is atomic.
        var temp = System.IO.Path.Combine(folder, $".{System.IO.Path.GetFileName(fullPath)}.{Guid.NewGuid():N}.tmp");
        try
        {
            using (var stream = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20))
            {
                Span<byte> length = stackalloc byte[8];
                BinaryPrimitives.WriteUInt64LittleEndian(length, (ulong)header.Length);
                stream.Write(length);
                stream.Write(header);
                // No autograd graph for the copies made only to reach the bytes.
                using (Torch.NoGrad())
                {
                    foreach (var item in items)
                    {
                        if (item.Bytes == 0) continue;
                        using var onCpu = item.Tensor.To(Device.CPU);
                        using var dense = onCpu.Contiguous();
                        WriteMemory(stream, (byte*)dense.DataPointer, item.Bytes);
                    }
                }
                stream.Flush(flushToDisk: true);
            }
            File.Move(temp, fullPath, overwrite: true);
        }
        catch
        {
            try { File.Delete(temp); } catch { /* the original error matters more than a stray temp file */ }
            throw;
        }
    }

    private static unsafe void WriteMemory(Stream stream, byte* data, long bytes)
    {
        // Spans are int-sized; tensors over 2 GiB are written in pieces.
        const int chunk = 1 << 30;
        for (long done = 0; done < bytes; done += chunk)
        {
            var n = (int)Math.Min(chunk, bytes - done);
            stream.Write(new ReadOnlySpan<byte>(data + done, n));
        }
    }

    private static byte[] BuildHeader(IEnumerable<(string Name, ScalarType DType, long[] Shape, long Bytes)> items, IReadOnlyDictionary<string, string>? metadata)
    {
        var buffer = new ArrayBufferWriter<byte>();
        // Relaxed escaping writes names as plain UTF-8, like the reference writer; the default encoder would
        // escape '+', '<', non-ASCII and so on, which is still valid JSON but harder to read.
        using (var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            w.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                w.WriteStartObject(MetadataKey);
                // Sorted so that saving the same content twice gives identical bytes.
                foreach (var (k, v) in metadata.OrderBy(p => p.Key, StringComparer.Ordinal)) w.WriteString(k, v);
                w.WriteEndObject();
            }
            long offset = 0;
            foreach (var (name, dtype, shape, bytes) in items)
            {
                w.WriteStartObject(name);
                w.WriteString("dtype", DTypeName(dtype));
                w.WriteStartArray("shape");
                foreach (var s in shape) w.WriteNumberValue(s);
                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(offset);
                w.WriteNumberValue(offset + bytes);
                w.WriteEndArray();
                w.WriteEndObject();
                offset += bytes;
            }
            w.WriteEndObject();
        }
        // Pad with spaces (valid trailing JSON whitespace) so the data section starts at an 8-byte boundary,
        // as the reference implementation does: 8 + header is then a multiple of 8.
        var padding = (8 - buffer.WrittenCount % 8) % 8;
        var header = new byte[buffer.WrittenCount + padding];
        buffer.WrittenSpan.CopyTo(header);
        header.AsSpan(buffer.WrittenCount).Fill((byte)' ');
        return header;
    }
}

/// <summary>
/// An open safetensors file, memory-mapped copy-on-write. The header is parsed and fully validated by
/// <see cref="Open"/>; tensors are created on demand by <see cref="Load"/>. A tensor whose data is aligned to its
/// element size views the mapped file directly (no copy); others are copied. Because mappings are private
/// (copy-on-write), writing to a loaded tensor, e.g. an optimizer step, changes only this process's pages:
/// never the file, and never a fault on read-only memory. Tensors may outlive this object: the file is
/// unmapped only once this object is disposed and every tensor viewing it has been freed.
/// </summary>
public sealed unsafe class SafeTensorsFile : IDisposable
{
    private readonly MappedRegion _region;
    private readonly Dictionary<string, SafeTensorInfo> _infos;
    private readonly string[] _names;
    private readonly long _dataStart;
    // Names whose bytes in the shared mapping have been handed to a tensor and so may have been written.
    private readonly HashSet<string> _handedOut = new(StringComparer.Ordinal);
    private long _copiedLoads;
    private int _disposed;

    private SafeTensorsFile(string path, MappedRegion region, long dataStart, List<SafeTensorInfo> infos, Dictionary<string, string> metadata)
    {
        Path = path;
        _region = region;
        _dataStart = dataStart;
        _names = infos.Select(i => i.Name).ToArray();
        _infos = infos.ToDictionary(i => i.Name, StringComparer.Ordinal);
        Metadata = new System.Collections.ObjectModel.ReadOnlyDictionary<string, string>(metadata);
    }

    /// <summary>
    /// Maps and validates a safetensors file. Every fault (truncation, bad JSON, unknown dtype, bad offsets,
    /// overlapping tensors, size mismatches, duplicate names) is reported here, before any tensor is created,
    /// so a later <see cref="Load"/> cannot produce a silently wrong tensor.
    /// </summary>
    /// <exception cref="SafeTensorsFormatException">The file is malformed; the message names the file and the fault.</exception>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    public static SafeTensorsFile Open(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        // FileShare.Delete lets SafeTensors.Save rename a new version over a file that is open here.
        FileStream? stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read | FileShare.Delete);
        MappedRegion? region = null;
        try
        {
            var fileLength = stream.Length;
            // Checked before mapping: an empty file cannot be mapped at all.
            if (fileLength < 8)
                throw new SafeTensorsFormatException(path, $"the file is {fileLength} bytes long, shorter than the 8-byte header length");
            var s = stream;
            stream = null;  // the mapping owns it from here, also on failure
            region = MappedRegion.Map(s, fileLength);

            var headerLength = BinaryPrimitives.ReadUInt64LittleEndian(new ReadOnlySpan<byte>(region.Base, 8));
            if (headerLength > (ulong)(fileLength - 8))
                throw new SafeTensorsFormatException(path, $"the header length {headerLength} runs past the end of the file ({fileLength - 8} bytes follow the length field)");
            if (headerLength > SafeTensors.MaxHeaderBytes)
                throw new SafeTensorsFormatException(path, $"the header length {headerLength} exceeds the {SafeTensors.MaxHeaderBytes}-byte limit");
            var dataStart = 8 + (long)headerLength;
            var dataLength = fileLength - dataStart;

            var header = new ReadOnlySpan<byte>(region.Base + 8, (int)headerLength);
            var (infos, metadata) = HeaderParser.Parse(path, header);
            Validate(path, infos, dataLength);
            var file = new SafeTensorsFile(path, region, dataStart, infos, metadata);
            region = null;
            return file;
        }
        finally
        {
            region?.Release();
            stream?.Dispose();
        }
    }

    /// <summary>The path the file was opened with.</summary>
    public string Path { get; }

    /// <summary>Tensor names, in the order the header lists them (for files we write: data order).</summary>
    public IReadOnlyList<string> Names => _names;

    /// <summary>Number of tensors.</summary>
    public int Count => _names.Length;

    /// <summary>The <c>__metadata__</c> string pairs; empty when the file has none.</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>True when the file holds a tensor of this name.</summary>
    public bool Contains(string name) => _infos.ContainsKey(name);

    /// <summary>The declared dtype, shape and byte range of a tensor, without loading it.</summary>
    /// <exception cref="KeyNotFoundException">No tensor of that name.</exception>
    public SafeTensorInfo GetInfo(string name) =>
        _infos.TryGetValue(name, out var info)
            ? info
            : throw new KeyNotFoundException($"'{Path}' has no tensor named '{name}' (it holds {_names.Length} tensors)");

    /// <summary>
    /// Creates a CPU tensor holding the file's contents for <paramref name="name"/>. The caller owns it (or the
    /// current <see cref="DisposeScope"/> does). It views the mapped file when the data is aligned to the element
    /// size, else holds a copy; either way it stays valid after this file object is disposed, and writes to it
    /// reach neither the file nor any other tensor: loading the same name twice gives two independent tensors.
    /// </summary>
    /// <exception cref="KeyNotFoundException">No tensor of that name.</exception>
    /// <exception cref="SafeTensorsFormatException">A BOOL tensor holds bytes other than 0 and 1.</exception>
    /// <exception cref="ObjectDisposedException">This file was disposed.</exception>
    public Tensor Load(string name)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        var info = GetInfo(name);
        // Holding a reference for the duration keeps a concurrent Dispose from unmapping under us (tensors
        // may still hold the region, so TryAddRef alone would not notice that this object was disposed).
        if (!_region.TryAddRef()) throw new ObjectDisposedException(nameof(SafeTensorsFile), $"'{Path}' was disposed");
        var lease = new MappingLease(_region);
        try
        {
            var shape = (long[])info.ShapeNoCopy.Clone();
            if (info.ByteLength == 0)
                return Torch.Empty(shape, info.DType);  // nothing to view; also avoids a pointer at the very end of the mapping

            var offset = _dataStart + info.DataBegin;
            byte* data;
            bool first;
            lock (_handedOut) first = _handedOut.Add(name);
            if (first)
            {
                data = _region.Base + offset;
            }
            else
            {
                // The shared mapping's pages for this name went to an earlier tensor, which may have written them
                // (copy-on-write keeps such writes in the mapping even after that tensor dies). A fresh private
                // view of just this range sees the file again, still without copying.
                lease.AttachView(_region.MapPrivateView(offset, info.ByteLength, out data));
            }

            if (info.DType == ScalarType.Bool) CheckBoolBytes(info, data);
            if ((nuint)data % (nuint)info.DType.ElementSize() == 0)
            {
                // The tensor now owns the lease; libtorch disposes it when the storage dies.
                var t = Torch.FromBlob((nint)data, shape, info.DType, lease);
                lease = null;
                return t;
            }
            // libtorch needs element-aligned data, so a misaligned tensor is copied into fresh storage.
            var copy = Torch.Empty(shape, info.DType);
            Buffer.MemoryCopy(data, (void*)copy.DataPointer, info.ByteLength, info.ByteLength);
            Interlocked.Increment(ref _copiedLoads);
            return copy;
        }
        finally
        {
            lease?.Dispose();
        }
    }

    /// <summary>Loads every tensor, in header order (see <see cref="Load"/>). On failure the tensors already created are disposed.</summary>
    public IReadOnlyDictionary<string, Tensor> LoadAll()
    {
        var result = new Dictionary<string, Tensor>(_names.Length, StringComparer.Ordinal);
        try
        {
            foreach (var name in _names) result.Add(name, Load(name));
            return result;
        }
        catch
        {
            foreach (var t in result.Values) t.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Releases this object's hold on the file. Tensors already loaded stay valid; the file is unmapped when
    /// the last of them is freed.
    /// </summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 0) _region.Release();
    }

    /// <summary>Address of the first byte of the data section in the shared mapping; tests use it to prove loads do not copy.</summary>
    internal nint DataSectionAddress => (nint)(_region.Base + _dataStart);

    /// <summary>How many loads had to copy because the data was misaligned.</summary>
    internal long CopiedLoads => Interlocked.Read(ref _copiedLoads);

    /// <summary>Memory mappings not yet unmapped, process-wide; tests use it to prove the reference counting.</summary>
    internal static long LiveMappings => MappedRegion.LiveMappings;

    private void CheckBoolBytes(SafeTensorInfo info, byte* data)
    {
        // libtorch assumes bool bytes are 0 or 1; any other value makes comparisons and sums silently wrong.
        const int chunk = 1 << 30;
        for (long done = 0; done < info.ByteLength; done += chunk)
        {
            var span = new ReadOnlySpan<byte>(data + done, (int)Math.Min(chunk, info.ByteLength - done));
            var bad = span.IndexOfAnyExcept((byte)0, (byte)1);
            if (bad >= 0)
                throw new SafeTensorsFormatException(Path, $"BOOL tensor '{info.Name}' holds byte value {span[bad]} at element {done + bad}; only 0 and 1 are valid");
        }
    }

    private static void Validate(string path, List<SafeTensorInfo> infos, long dataLength)
    {
        foreach (var info in infos)
        {
            if (info.DataBegin > info.DataEnd)
                throw new SafeTensorsFormatException(path, $"tensor '{info.Name}' has data_offsets [{info.DataBegin}, {info.DataEnd}] whose begin is after its end");
            if (info.DataEnd > dataLength)
                throw new SafeTensorsFormatException(path, $"tensor '{info.Name}' has data_offsets [{info.DataBegin}, {info.DataEnd}] ending beyond the data section of {dataLength} bytes");
            long expected;
            try
            {
                expected = info.DType.ElementSize();
                foreach (var s in info.ShapeNoCopy) expected = checked(expected * s);
            }
            catch (OverflowException)
            {
                throw new SafeTensorsFormatException(path, $"tensor '{info.Name}' has shape {Tensor.FormatShape(info.ShapeNoCopy)} whose byte size overflows");
            }
            if (expected != info.ByteLength)
                throw new SafeTensorsFormatException(path,
                    $"tensor '{info.Name}' of shape {Tensor.FormatShape(info.ShapeNoCopy)} and dtype {info.DTypeName} needs {expected} bytes " +
                    $"but its data_offsets [{info.DataBegin}, {info.DataEnd}] span {info.ByteLength} bytes");
        }

        // Two tensors sharing bytes would alias each other's writes; the reference rejects it, and so do we.
        // Gaps (unused bytes) are accepted, unlike the reference, since they cannot produce a wrong tensor.
        SafeTensorInfo? furthest = null;
        foreach (var info in infos.Where(i => i.ByteLength > 0).OrderBy(i => i.DataBegin).ThenBy(i => i.DataEnd))
        {
            if (furthest is not null && info.DataBegin < furthest.DataEnd)
                throw new SafeTensorsFormatException(path,
                    $"tensors '{furthest.Name}' [{furthest.DataBegin}, {furthest.DataEnd}) and '{info.Name}' [{info.DataBegin}, {info.DataEnd}) overlap");
            if (furthest is null || info.DataEnd > furthest.DataEnd) furthest = info;
        }
    }

    /// <summary>
    /// Parses the header with <see cref="Utf8JsonReader"/> rather than <see cref="JsonDocument"/>, because the
    /// latter silently accepts duplicate keys and we must reject them (which entry would win is ambiguous).
    /// </summary>
    private static class HeaderParser
    {
        public static (List<SafeTensorInfo> Infos, Dictionary<string, string> Metadata) Parse(string path, ReadOnlySpan<byte> header)
        {
            var infos = new List<SafeTensorInfo>();
            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            var keys = new HashSet<string>(StringComparer.Ordinal);
            // The whole header must be UTF-8, as the format says; the reader below decodes only the strings it reads, so
            // invalid bytes inside a skipped value would otherwise pass.
            if (!System.Text.Unicode.Utf8.IsValid(header))
                throw new SafeTensorsFormatException(path, "the header is not valid UTF-8");
            var reader = new Utf8JsonReader(header, new JsonReaderOptions { CommentHandling = JsonCommentHandling.Disallow, MaxDepth = 16 });
            try
            {
                if (!reader.Read())
                    throw new SafeTensorsFormatException(path, "the header is empty, not a JSON object");
                if (reader.TokenType != JsonTokenType.StartObject)
                    throw new SafeTensorsFormatException(path, $"the header is not a JSON object (it holds a {Describe(reader.TokenType)})");
                while (reader.Read() && reader.TokenType != JsonTokenType.EndObject)
                {
                    var key = reader.GetString()!;
                    if (!keys.Add(key))
                        throw new SafeTensorsFormatException(path, $"the header has duplicate key '{key}'");
                    reader.Read();
                    if (key == SafeTensors.MetadataKey) ParseMetadata(path, ref reader, metadata);
                    else infos.Add(ParseEntry(path, key, ref reader));
                }
                // Anything but whitespace after the object makes Read throw; reaching the end means the header is exactly one object.
                while (reader.Read()) { }
            }
            catch (JsonException e)
            {
                throw new SafeTensorsFormatException(path, $"the header is not valid JSON: {e.Message}", e);
            }
            catch (InvalidOperationException e)
            {
                // Utf8JsonReader reports invalid UTF-8 inside strings this way.
                throw new SafeTensorsFormatException(path, $"the header is not valid UTF-8 JSON: {e.Message}", e);
            }
            return (infos, metadata);
        }

        private static void ParseMetadata(string path, ref Utf8JsonReader reader, Dictionary<string, string> metadata)
        {
            // The reference reads "__metadata__": null as no metadata (an Option in its header struct).
            if (reader.TokenType == JsonTokenType.Null) return;
            if (reader.TokenType != JsonTokenType.StartObject)
                throw new SafeTensorsFormatException(path, $"'{SafeTensors.MetadataKey}' must be a JSON object of strings, got a {Describe(reader.TokenType)}");
            while (reader.Read() && reader.TokenType != JsonTokenType.EndObject)
            {
                var key = reader.GetString()!;
                reader.Read();
                if (reader.TokenType != JsonTokenType.String)
                    throw new SafeTensorsFormatException(path, $"metadata value '{key}' must be a string, got a {Describe(reader.TokenType)}");
                if (!metadata.TryAdd(key, reader.GetString()!))
                    throw new SafeTensorsFormatException(path, $"'{SafeTensors.MetadataKey}' has duplicate key '{key}'");
            }
        }

        private static SafeTensorInfo ParseEntry(string path, string name, ref Utf8JsonReader reader)
        {
            if (reader.TokenType != JsonTokenType.StartObject)
                throw new SafeTensorsFormatException(path, $"entry '{name}' must be a JSON object with dtype, shape and data_offsets, got a {Describe(reader.TokenType)}");
            string? dtypeName = null;
            List<long>? shape = null;
            List<long>? offsets = null;
            while (reader.Read() && reader.TokenType != JsonTokenType.EndObject)
            {
                var field = reader.GetString()!;
                reader.Read();
                switch (field)
                {
                    case "dtype":
                        if (dtypeName is not null) throw Duplicate(path, name, field);
                        if (reader.TokenType != JsonTokenType.String)
                            throw new SafeTensorsFormatException(path, $"entry '{name}': dtype must be a string, got a {Describe(reader.TokenType)}");
                        dtypeName = reader.GetString()!;
                        break;
                    case "shape":
                        if (shape is not null) throw Duplicate(path, name, field);
                        shape = ReadIntegers(path, name, field, ref reader);
                        break;
                    case "data_offsets":
                        if (offsets is not null) throw Duplicate(path, name, field);
                        offsets = ReadIntegers(path, name, field, ref reader);
                        break;
                    default:
                        // Unknown fields cannot change how the bytes are read, so tolerate them for forward compatibility.
                        reader.Skip();
                        break;
                }
            }
            if (dtypeName is null) throw Missing(path, name, "dtype");
            if (shape is null) throw Missing(path, name, "shape");
            if (offsets is null) throw Missing(path, name, "data_offsets");
            if (!SafeTensors.TryParseDType(dtypeName, out var dtype))
                throw new SafeTensorsFormatException(path, $"tensor '{name}' has unknown or unsupported dtype '{dtypeName}' (supported: {SafeTensors.SupportedNames})");
            for (var i = 0; i < shape.Count; i++)
                if (shape[i] < 0)
                    throw new SafeTensorsFormatException(path, $"tensor '{name}' has shape {Tensor.FormatShape(shape)} with negative size {shape[i]} in dimension {i}");
            if (offsets.Count != 2)
                throw new SafeTensorsFormatException(path, $"tensor '{name}' has data_offsets with {offsets.Count} entries; it needs exactly [begin, end]");
            if (offsets[0] < 0 || offsets[1] < 0)
                throw new SafeTensorsFormatException(path, $"tensor '{name}' has negative data_offsets [{offsets[0]}, {offsets[1]}]");
            return new SafeTensorInfo(name, dtype, shape.ToArray(), offsets[0], offsets[1]);
        }

        private static List<long> ReadIntegers(string path, string name, string field, ref Utf8JsonReader reader)
        {
            if (reader.TokenType != JsonTokenType.StartArray)
                throw new SafeTensorsFormatException(path, $"entry '{name}': {field} must be an array of integers, got a {Describe(reader.TokenType)}");
            var values = new List<long>();
            while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
            {
                if (reader.TokenType != JsonTokenType.Number)
                    throw new SafeTensorsFormatException(path, $"entry '{name}': {field} must be an array of integers, but holds a {Describe(reader.TokenType)}");
                if (!reader.TryGetInt64(out var v))
                    throw new SafeTensorsFormatException(path, $"entry '{name}': {field} holds {Encoding.UTF8.GetString(reader.ValueSpan)}, which is not a 64-bit integer");
                values.Add(v);
            }
            return values;
        }

        private static SafeTensorsFormatException Missing(string path, string name, string field) =>
            new(path, $"entry '{name}' is missing '{field}'");

        private static SafeTensorsFormatException Duplicate(string path, string name, string field) =>
            new(path, $"entry '{name}' has duplicate key '{field}'");

        private static string Describe(JsonTokenType token) => token switch
        {
            JsonTokenType.StartObject => "object",
            JsonTokenType.StartArray => "array",
            JsonTokenType.String => "string",
            JsonTokenType.Number => "number",
            JsonTokenType.True or JsonTokenType.False => "boolean",
            JsonTokenType.Null => "null",
            _ => token.ToString(),
        };
    }
}

/// <summary>
/// A file mapped copy-on-write, with a reference count: one reference for the <see cref="SafeTensorsFile"/>,
/// one per live tensor viewing it. Everything is unmapped when the count reaches zero, so neither disposing
/// the file first nor freeing the tensors first can leave a tensor over unmapped memory.
/// </summary>
internal sealed unsafe class MappedRegion
{
    private static long _liveMappings;
    private readonly MemoryMappedFile _file;
    private readonly MemoryMappedViewAccessor _view;
    private int _refs = 1;

    internal static long LiveMappings => Interlocked.Read(ref _liveMappings);

    private MappedRegion(MemoryMappedFile file, MemoryMappedViewAccessor view, byte* basePointer)
    {
        _file = file;
        _view = view;
        Base = basePointer;
    }

    /// <summary>First byte of the file in the shared (whole-file) view.</summary>
    public byte* Base { get; }

    /// <summary>Maps <paramref name="stream"/>, which the region then owns (also when this throws).</summary>
    public static MappedRegion Map(FileStream stream, long length)
    {
        MemoryMappedFile? file = null;
        MemoryMappedViewAccessor? view = null;
        try
        {
            file = MemoryMappedFile.CreateFromFile(stream, null, 0, MemoryMappedFileAccess.CopyOnWrite, HandleInheritability.None, leaveOpen: false);
            view = CreateView(file, 0, length, out var p);
            return new MappedRegion(file, view, p);
        }
        catch
        {
            view?.Dispose();
            if (file is not null) file.Dispose();
            else stream.Dispose();
            throw;
        }
    }

    /// <summary>A further private view of part of the file: its pages are independent of every other view's.</summary>
    public MemoryMappedViewAccessor MapPrivateView(long offset, long length, out byte* data) => CreateView(_file, offset, length, out data);

    private static MemoryMappedViewAccessor CreateView(MemoryMappedFile file, long offset, long length, out byte* data)
    {
        // CopyOnWrite is a private, writable mapping: writes through tensors stay in this process.
        var view = file.CreateViewAccessor(offset, length, MemoryMappedFileAccess.CopyOnWrite);
        byte* p = null;
        try
        {
            view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
        }
        catch
        {
            view.Dispose();
            throw;
        }
        Interlocked.Increment(ref _liveMappings);
        // The OS maps whole pages; PointerOffset is where the requested offset lies inside them.
        data = p + view.PointerOffset;
        return view;
    }

    /// <summary>Unmaps a view made by <see cref="MapPrivateView"/>.</summary>
    public static void Unmap(MemoryMappedViewAccessor view)
    {
        view.SafeMemoryMappedViewHandle.ReleasePointer();
        view.Dispose();
        Interlocked.Decrement(ref _liveMappings);
    }

    /// <summary>Takes a reference unless the region is already released (or being released).</summary>
    public bool TryAddRef()
    {
        while (true)
        {
            var n = Volatile.Read(ref _refs);
            if (n <= 0) return false;
            if (Interlocked.CompareExchange(ref _refs, n + 1, n) == n) return true;
        }
    }

    /// <summary>Drops a reference; the last one unmaps. May run on any thread (libtorch frees storage wherever the last tensor dies).</summary>
    public void Release()
    {
        if (Interlocked.Decrement(ref _refs) != 0) return;
        Unmap(_view);
        _file.Dispose();
    }
}

/// <summary>
/// One reference to a <see cref="MappedRegion"/> (plus, for a repeated load, the tensor's own view), handed to
/// libtorch as a tensor storage's owner. Disposing it twice releases once.
/// </summary>
internal sealed class MappingLease(MappedRegion region) : IDisposable
{
    private MappedRegion? _region = region;
    private MemoryMappedViewAccessor? _view;

    /// <summary>Makes this lease unmap <paramref name="view"/> too.</summary>
    public void AttachView(MemoryMappedViewAccessor view) => _view = view;

    /// <inheritdoc/>
    public void Dispose()
    {
        var region = Interlocked.Exchange(ref _region, null);
        if (region is null) return;
        if (_view is not null) MappedRegion.Unmap(_view);
        region.Release();
    }
}
