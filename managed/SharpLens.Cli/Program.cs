using System.CommandLine;
using System.CommandLine.Invocation;

namespace SharpLens.Cli;

/// <summary>
/// The <c>lens</c> command line: <c>cache</c>, <c>params</c> and <c>train</c> over a HuggingFace model folder,
/// writing safetensors files, and <c>verify</c>, the verification suite. Exit codes: 0 success, 1 a user error
/// (printed as <c>error: &lt;message&gt;</c>) or a failed verification, 2 an unexpected failure (its message and exception type).
/// </summary>
public static class Program
{
    /// <summary>Exit code of success.</summary>
    public const int Success = 0;
    /// <summary>Exit code of a user error: bad arguments, a bad model folder or tokens file, an unwritable output.</summary>
    public const int UserError = 1;
    /// <summary>Exit code of <c>lens verify</c> when a check fails (the same as a user error).</summary>
    public const int VerificationFailed = 1;
    /// <summary>Exit code of an unexpected failure.</summary>
    public const int InternalError = 2;

    /// <summary>The process entry point.</summary>
    public static int Main(string[] args) => Run(args, Console.Out, Console.Error);

    /// <summary>Runs <c>lens</c> with <paramref name="args"/>, writing to the given streams; returns the exit code.</summary>
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr) => Run(args, stdout, stderr, perturbReference: null);

    /// <summary>
    /// Test seam: as <see cref="Run(string[], TextWriter, TextWriter)"/>, with <paramref name="perturbReference"/> applied to
    /// the reference model of <c>lens verify</c> before the checks run, so a test can make a check fail on purpose.
    /// </summary>
    internal static int Run(string[] args, TextWriter stdout, TextWriter stderr, Action<HookedTransformer>? perturbReference)
    {
        ArgumentNullException.ThrowIfNull(args);
        ArgumentNullException.ThrowIfNull(stdout);
        ArgumentNullException.ThrowIfNull(stderr);
        var context = new CliContext(stdout, stderr) { PerturbReference = perturbReference, Arguments = args };
        var root = BuildRootCommand(context);
        ParseResult parsed;
        try
        {
            parsed = root.Parse(args);
        }
        catch (Exception e)
        {
            return context.Fail(e);
        }
        if (parsed.Action is ParseErrorAction)
        {
            foreach (var error in parsed.Errors) stderr.WriteLine($"error: {error.Message}");
            stderr.WriteLine($"run '{string.Join(' ', CommandPath(parsed))} --help' for usage");
            stderr.Flush();
            return UserError;
        }
        var config = new InvocationConfiguration { Output = stdout, Error = stderr, EnableDefaultExceptionHandler = false };
        var previousDevice = CliSupport.RequestedDevice;
        try
        {
            CliSupport.RequestedDevice = parsed.GetValue(DeviceOption);
            return parsed.Invoke(config);
        }
        catch (Exception e)
        {
            return context.Fail(e);
        }
        finally
        {
            CliSupport.RequestedDevice = previousDevice;
            stdout.Flush();
            stderr.Flush();
        }
    }

    /// <summary>
    /// <c>--device cpu|cuda|cuda:N</c>, given before or after the sub-command: where every command that runs a model puts it
    /// (and its inputs). A clear error when CUDA is asked for and this build of libsharplens or libtorch has none.
    /// </summary>
    internal static readonly Option<string> DeviceOption = new("--device")
    {
        Description = "Where the model runs: cpu, cuda or cuda:N",
        DefaultValueFactory = _ => "cpu",
        Recursive = true,
        HelpName = "cpu|cuda|cuda:N",
    };

    private static IEnumerable<string> CommandPath(ParseResult parsed)
    {
        var names = new List<string>();
        for (var r = parsed.CommandResult; r is not null; r = r.Parent as System.CommandLine.Parsing.CommandResult)
            names.Insert(0, r.Command is RootCommand ? "lens" : r.Command.Name);
        return names;
    }

    /// <summary>The command tree (exposed for tests and documentation).</summary>
    public static RootCommand BuildRootCommand(CliContext context)
    {
        var root = new RootCommand(
            "lens: SharpLens, a mechanistic-interpretability engine over libtorch (TransformerLens for .NET). " +
            "Every command reads a HuggingFace model folder (config.json + model.safetensors); cache, params and train write " +
            "a safetensors file, verify prints a table of checks (and JSON with --json).");
        root.Subcommands.Add(CacheCommand.Build(context));
        root.Subcommands.Add(ParamsCommand.Build(context));
        root.Subcommands.Add(TrainCommand.Build(context));
        root.Subcommands.Add(GenerateCommand.Build(context));
        root.Subcommands.Add(SweepCommand.Build(context));
        root.Subcommands.Add(PatchCommand.Build(context));
        root.Subcommands.Add(ViewCommand.Build(context));
        root.Subcommands.Add(DemoCommand.Build(context));
        root.Subcommands.Add(VerifyCommand.Build(context));
        root.Subcommands.Add(BenchCommand.Build(context));
        root.Subcommands.Add(TokenizeCommand.Build(context));
        root.Options.Add(DeviceOption);
        return root;
    }
}

/// <summary>The output streams of one run, and the mapping of exceptions to exit codes.</summary>
public sealed class CliContext(TextWriter stdout, TextWriter stderr)
{
    /// <summary>Where results and progress go.</summary>
    public TextWriter Out { get; } = stdout;

    /// <summary>Where errors go.</summary>
    public TextWriter Error { get; } = stderr;

    /// <summary>The command line of this run (a launcher starts its workers with the same one).</summary>
    public IReadOnlyList<string> Arguments { get; init; } = [];

    /// <summary>Test seam: applied to <c>lens verify</c>'s reference model before the checks run.</summary>
    internal Action<HookedTransformer>? PerturbReference { get; init; }

    /// <summary>Runs a command body, mapping a <see cref="CliException"/> to exit code 1 and anything else to 2.</summary>
    public int Execute(Func<int> body)
    {
        try
        {
            return body();
        }
        catch (Exception e)
        {
            return Fail(e);
        }
    }

    /// <summary>
    /// A message on one line: messages quote names from the user's files (tensor names, dtypes), which JSON lets hold line
    /// breaks and other control characters; those are printed escaped (\n, \u0007), so an error is always one line.
    /// </summary>
    internal static string OneLine(string message)
    {
        if (!message.Any(char.IsControl)) return message;
        var b = new System.Text.StringBuilder(message.Length + 8);
        foreach (var c in message)
            b.Append(c switch
            {
                '\n' => "\\n",
                '\r' => "\\r",
                '\t' => "\\t",
                _ when char.IsControl(c) => $"\\u{(int)c:x4}",
                _ => c.ToString(),
            });
        return b.ToString();
    }

    /// <summary>Prints an exception as an error and returns its exit code.</summary>
    public int Fail(Exception e)
    {
        if (e is CliException)
        {
            Error.WriteLine($"error: {OneLine(e.Message)}");
            Error.Flush();
            return Program.UserError;
        }
        Error.WriteLine($"error: {OneLine(e.Message)} ({e.GetType().FullName})");
        Error.Flush();
        return Program.InternalError;
    }
}
