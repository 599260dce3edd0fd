namespace SharpLens.Cli;

/// <summary>
/// A fault of the user's input (a path, a file's contents, an option value): the CLI prints
/// <c>error: &lt;message&gt;</c> without a stack trace and exits with code 1.
/// </summary>
public sealed class CliException(string message, Exception? inner = null) : Exception(message, inner);
