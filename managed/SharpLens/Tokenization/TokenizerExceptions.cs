namespace SharpLens.Tokenization;

/// <summary>
/// A tokenizer file (tokenizer.json, tokenizer_config.json, vocab.json, merges.txt, ...) is malformed: not
/// JSON, truncated, a required field missing or of the wrong type, a merge naming a token the vocabulary
/// lacks. The message names the file and the place in it; <see cref="FilePath"/> holds the file.
/// </summary>
public sealed class TokenizerFormatException : IOException
{
    /// <summary>The file that could not be read.</summary>
    public string FilePath { get; }

    /// <summary>Creates the exception; the message becomes "<paramref name="filePath"/>: <paramref name="what"/>".</summary>
    public TokenizerFormatException(string filePath, string what, Exception? inner = null)
        : base($"{filePath}: {what}", inner)
    {
        FilePath = filePath;
    }
}

/// <summary>
/// A well-formed tokenizer file asks for something this implementation does not have (an unknown model,
/// normalizer, pre-tokenizer, post-processor or decoder type, BPE dropout, a regex .NET cannot compile).
/// Raised when the file is loaded, never halfway through encoding; the message names the file and the feature.
/// </summary>
public sealed class UnsupportedTokenizerException : NotSupportedException
{
    /// <summary>The file that asks for the unsupported feature.</summary>
    public string FilePath { get; }

    /// <summary>Creates the exception; the message becomes "<paramref name="filePath"/>: unsupported tokenizer: <paramref name="what"/>".</summary>
    public UnsupportedTokenizerException(string filePath, string what, Exception? inner = null)
        : base($"{filePath}: unsupported tokenizer: {what}", inner)
    {
        FilePath = filePath;
    }
}
