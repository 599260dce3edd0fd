namespace SharpLens.Tensors.Tests;

/// <summary>Assertions shared by the torch-layer tests.</summary>
internal static class Expect
{
    /// <summary>Asserts two float64 arrays agree elementwise within an absolute tolerance, naming the first bad index.</summary>
    public static void Close(double[] expected, double[] actual, double atol, string what = "values")
    {
        Assert.That(actual.Length, Is.EqualTo(expected.Length), $"{what}: length");
        for (var i = 0; i < expected.Length; i++)
        {
            var e = expected[i];
            var a = actual[i];
            if (double.IsNaN(e) && double.IsNaN(a)) continue;
            if (double.IsInfinity(e) && e == a) continue;
            Assert.That(Math.Abs(a - e), Is.LessThanOrEqualTo(atol), $"{what}[{i}]: expected {e}, got {a}");
        }
    }

    /// <summary>Float32 variant.</summary>
    public static void Close(float[] expected, float[] actual, double atol, string what = "values") =>
        Close(expected.Select(v => (double)v).ToArray(), actual.Select(v => (double)v).ToArray(), atol, what);

    /// <summary>Values of a tensor as float64, whatever its dtype.</summary>
    public static double[] Values(Tensor t)
    {
        using var d = t.To(ScalarType.Float64);
        return d.ToArray<double>();
    }
}
