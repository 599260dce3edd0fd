using System.Globalization;
using System.Text;

namespace SharpLens.Tensors.Tests;

/// <summary>
/// Checks autograd against float64 central finite differences, like <c>torch.autograd.gradcheck</c>.
/// The output of <c>f</c> is projected onto a scalar with a fixed random weight, <c>L = sum(f(x) * w)</c>;
/// the analytic gradients of <c>L</c> come from <see cref="Torch.Autograd.Grad"/>, the numeric ones from
/// <c>(L(x + h e_k) - L(x - h e_k)) / 2h</c>, evaluated without autograd on inputs rebuilt from arrays.
/// </summary>
internal static class GradCheck
{
    /// <summary>Finite-difference step.</summary>
    public const double DefaultStep = 1e-6;

    /// <summary>Absolute tolerance of the comparison.</summary>
    public const double DefaultAtol = 1e-6;

    /// <summary>Relative tolerance of the comparison (relative to the numeric gradient).</summary>
    public const double DefaultRtol = 1e-5;

    /// <summary>Refuses inputs this large: every element costs two evaluations of <c>f</c>.</summary>
    public const long MaxElements = 4096;

    /// <summary>One gradient entry where analytic and numeric values disagree.</summary>
    public sealed record Mismatch(int Input, long[] Index, double Analytic, double Numeric)
    {
        public override string ToString() =>
            $"input {Input} at {Tensor.FormatShape(Index)}: analytic {Analytic.ToString("R", CultureInfo.InvariantCulture)}, " +
            $"numeric {Numeric.ToString("R", CultureInfo.InvariantCulture)}, difference {Math.Abs(Analytic - Numeric):E3}";
    }

    /// <summary>What <see cref="Compare"/> found.</summary>
    public sealed record Result(double[][] Analytic, double[][] Numeric, IReadOnlyList<Mismatch> Mismatches, int Evaluations);

    /// <summary>
    /// Asserts that autograd's gradients of <paramref name="f"/> at <paramref name="inputs"/> (float64; only their
    /// values are used) match central finite differences.
    /// </summary>
    public static Result Verify(Func<Tensor[], Tensor> f, Tensor[] inputs, double h = DefaultStep, double atol = DefaultAtol,
        double rtol = DefaultRtol, int seed = 20240607)
    {
        var result = Compare(f, inputs, h, atol, rtol, seed);
        if (result.Mismatches.Count > 0)
        {
            var sb = new StringBuilder();
            sb.Append(result.Mismatches.Count).Append(" gradient entries disagree with finite differences (atol ")
              .Append(atol).Append(", rtol ").Append(rtol).Append("):");
            foreach (var m in result.Mismatches.Take(10)) sb.Append("\n  ").Append(m);
            if (result.Mismatches.Count > 10) sb.Append("\n  ...");
            Assert.Fail(sb.ToString());
        }
        return result;
    }

    /// <summary>Computes analytic and numeric gradients and lists the entries that disagree; asserts nothing.</summary>
    public static Result Compare(Func<Tensor[], Tensor> f, Tensor[] inputs, double h = DefaultStep, double atol = DefaultAtol,
        double rtol = DefaultRtol, int seed = 20240607)
    {
        ArgumentNullException.ThrowIfNull(f);
        ArgumentNullException.ThrowIfNull(inputs);
        if (inputs.Length == 0) throw new ArgumentException("gradcheck needs at least one input");
        foreach (var t in inputs)
            if (t.DType != ScalarType.Float64)
                throw new ArgumentException($"gradcheck inputs must be float64, got {t.DType.ToTorchName()} {Tensor.FormatShape(t.Shape)}");
        var shapes = inputs.Select(t => t.Shape).ToArray();
        var values = inputs.Select(t => t.ToArray<double>()).ToArray();  // copies out, no graph involved
        var total = values.Sum(v => (long)v.Length);
        if (total > MaxElements) throw new ArgumentException($"gradcheck inputs hold {total} elements; keep it under {MaxElements}");

        using var scope = Torch.NewScope();

        // ---- analytic side: autograd through f on fresh leaves
        var leaves = values.Select((v, i) => Build(v, shapes[i]).RequiresGrad_()).ToArray();
        var output = f(leaves);
        if (output.DType != ScalarType.Float64)
            throw new ArgumentException($"gradcheck needs a float64 output, f returned {output.DType.ToTorchName()}");
        var outShape = output.Shape;
        var weights = RandomWeights(seed, output.NumEl);
        var loss = (output * Build(weights, outShape)).Sum();
        var grads = Torch.Autograd.Grad([loss], leaves, allowUnused: true);
        var analytic = new double[inputs.Length][];
        for (var i = 0; i < inputs.Length; i++)
        {
            if (grads[i] is null)
            {
                analytic[i] = new double[values[i].Length];
                continue;
            }
            var g = grads[i]!;
            Assert.That(g.Shape, Is.EqualTo(shapes[i]), $"gradient of input {i} has the wrong shape");
            Assert.That(g.DType, Is.EqualTo(ScalarType.Float64), $"gradient of input {i} has the wrong dtype");
            analytic[i] = g.ToArray<double>();
        }

        // ---- numeric side: central differences without autograd
        var numeric = new double[inputs.Length][];
        var evaluations = 0;
        using (Torch.NoGrad())
        {
            var fixedInputs = values.Select((v, i) => Build(v, shapes[i])).ToArray();
            for (var i = 0; i < inputs.Length; i++)
            {
                numeric[i] = new double[values[i].Length];
                var perturbed = (double[])values[i].Clone();
                for (var k = 0; k < perturbed.Length; k++)
                {
                    var original = perturbed[k];
                    perturbed[k] = original + h;
                    var plus = Evaluate(f, fixedInputs, i, perturbed, shapes[i], weights, outShape);
                    perturbed[k] = original - h;
                    var minus = Evaluate(f, fixedInputs, i, perturbed, shapes[i], weights, outShape);
                    perturbed[k] = original;
                    evaluations += 2;
                    numeric[i][k] = (plus - minus) / (2 * h);
                }
            }
        }

        var mismatches = new List<Mismatch>();
        for (var i = 0; i < inputs.Length; i++)
            for (var k = 0; k < values[i].Length; k++)
            {
                var a = analytic[i][k];
                var n = numeric[i][k];
                if (!(Math.Abs(a - n) <= atol + rtol * Math.Abs(n)))  // NaN counts as a mismatch
                    mismatches.Add(new Mismatch(i, Unravel(k, shapes[i]), a, n));
            }
        return new Result(analytic, numeric, mismatches, evaluations);
    }

    private static double Evaluate(Func<Tensor[], Tensor> f, Tensor[] fixedInputs, int which, double[] values, long[] shape,
        double[] weights, long[] outShape)
    {
        using var scope = Torch.NewScope();
        var args = (Tensor[])fixedInputs.Clone();
        args[which] = Build(values, shape);
        var output = f(args);
        if (!output.Shape.AsSpan().SequenceEqual(outShape))
            throw new InvalidOperationException(
                $"f changed its output shape under perturbation: {Tensor.FormatShape(output.Shape)} vs {Tensor.FormatShape(outShape)}");
        var y = output.ToArray<double>();
        double sum = 0, c = 0;  // Kahan: the differences of two nearby sums must not drown in rounding
        for (var k = 0; k < y.Length; k++)
        {
            var term = y[k] * weights[k] - c;
            var t = sum + term;
            c = t - sum - term;
            sum = t;
        }
        return sum;
    }

    /// <summary>A float64 CPU tensor from values, any shape (including zero-dimensional).</summary>
    public static Tensor Build(double[] values, long[] shape) => Torch.FromSpan<double>(values, shape);

    private static double[] RandomWeights(int seed, long count)
    {
        var rng = new Random(seed);
        var w = new double[count];
        for (var i = 0; i < w.Length; i++) w[i] = rng.NextDouble() * 2 - 1;
        return w;
    }

    private static long[] Unravel(long flat, long[] shape)
    {
        var index = new long[shape.Length];
        for (var d = shape.Length - 1; d >= 0; d--)
        {
            index[d] = flat % shape[d];
            flat /= shape[d];
        }
        return index;
    }

    // ------------------------------------------------------------------ input generators (System.Random, not the library's RNG)

    private static long Count(long[] shape) => shape.Aggregate(1L, (a, b) => a * b);

    /// <summary>Uniform float64 values in [lo, hi).</summary>
    public static Tensor Uniform(int seed, double lo, double hi, params long[] shape)
    {
        var rng = new Random(seed);
        var v = new double[Count(shape)];
        for (var i = 0; i < v.Length; i++) v[i] = lo + (hi - lo) * rng.NextDouble();
        return Build(v, shape);
    }

    /// <summary>Values with |x| in [lo, hi) and a random sign: away from a kink or pole at zero.</summary>
    public static Tensor AwayFromZero(int seed, double lo, double hi, params long[] shape)
    {
        var rng = new Random(seed);
        var v = new double[Count(shape)];
        for (var i = 0; i < v.Length; i++) v[i] = (lo + (hi - lo) * rng.NextDouble()) * (rng.Next(2) == 0 ? -1 : 1);
        return Build(v, shape);
    }

    /// <summary>Uniform values in [lo, hi) at least <paramref name="margin"/> away from each of <paramref name="avoid"/>.</summary>
    public static Tensor UniformAvoiding(int seed, double lo, double hi, double[] avoid, double margin, params long[] shape)
    {
        var rng = new Random(seed);
        var v = new double[Count(shape)];
        for (var i = 0; i < v.Length; i++)
        {
            double x;
            do x = lo + (hi - lo) * rng.NextDouble();
            while (avoid.Any(a => Math.Abs(x - a) < margin));
            v[i] = x;
        }
        return Build(v, shape);
    }

    /// <summary>
    /// Distinct values spread over [lo, hi) in random order, any two at least 0.6 (hi - lo) / n apart: no ties for
    /// max, sort and top-k, even under a finite-difference perturbation.
    /// </summary>
    public static Tensor Distinct(int seed, double lo, double hi, params long[] shape)
    {
        var rng = new Random(seed);
        var n = (int)Count(shape);
        var order = Enumerable.Range(0, n).OrderBy(_ => rng.Next()).ToArray();
        var v = new double[n];
        for (var i = 0; i < n; i++) v[i] = lo + (hi - lo) * (order[i] + 0.3 + 0.4 * rng.NextDouble()) / n;
        return Build(v, shape);
    }
}
