using static SharpLens.Tensors.Tests.GradCheck;

namespace SharpLens.Tensors.Tests;

/// <summary>One gradient check: a factory for the float64 inputs and the function of them to differentiate.</summary>
public sealed class GradCase(Func<Tensor[]> inputs, Func<Tensor[], Tensor> f)
{
    public Func<Tensor[]> Inputs { get; } = inputs;
    public Func<Tensor[], Tensor> F { get; } = f;

    internal void Run()
    {
        using var scope = Torch.NewScope();
        GradCheck.Verify(F, Inputs());
    }
}

/// <summary>
/// Autograd of every differentiable op of the API against float64 central finite differences
/// (<see cref="GradCheck"/>). Inputs come from System.Random with fixed seeds, kept away from kinks,
/// poles and ties by construction.
/// </summary>
public class GradCheckTests
{
    private static TestCaseData Case(string name, Func<Tensor[]> inputs, Func<Tensor[], Tensor> f) =>
        new TestCaseData(new GradCase(inputs, f)).SetArgDisplayNames(name);

    private static Tensor Longs(long[] values, params long[] shape) => Torch.FromArray(values, shape);
    private static Tensor Bools(bool[] values, params long[] shape) => Torch.FromArray(values, shape);

    // ------------------------------------------------------------------ elementwise unary

    public static IEnumerable<TestCaseData> UnaryCases()
    {
        yield return Case("Neg", () => [Uniform(1, -2, 2, 3, 4)], x => x[0].Neg());
        yield return Case("NegOperator", () => [Uniform(2, -2, 2, 3, 4)], x => -x[0]);
        yield return Case("Abs", () => [AwayFromZero(3, 0.1, 2, 3, 4)], x => x[0].Abs());
        yield return Case("Exp", () => [Uniform(4, -2, 2, 3, 4)], x => x[0].Exp());
        yield return Case("Log", () => [Uniform(5, 0.2, 3, 3, 4)], x => x[0].Log());
        yield return Case("Log1p", () => [Uniform(6, -0.5, 2, 3, 4)], x => x[0].Log1p());
        yield return Case("Sqrt", () => [Uniform(7, 0.2, 3, 3, 4)], x => x[0].Sqrt());
        yield return Case("Rsqrt", () => [Uniform(8, 0.2, 3, 3, 4)], x => x[0].Rsqrt());
        yield return Case("Square", () => [Uniform(9, -2, 2, 3, 4)], x => x[0].Square());
        yield return Case("Tanh", () => [Uniform(10, -3, 3, 3, 4)], x => x[0].Tanh());
        yield return Case("Sigmoid", () => [Uniform(11, -3, 3, 3, 4)], x => x[0].Sigmoid());
        yield return Case("Relu", () => [AwayFromZero(12, 0.05, 2, 3, 4)], x => x[0].Relu());
        yield return Case("GeluExact", () => [Uniform(13, -3, 3, 3, 4)], x => x[0].Gelu());
        yield return Case("GeluTanh", () => [Uniform(14, -3, 3, 3, 4)], x => x[0].Gelu(tanhApproximation: true));
        yield return Case("FunctionalGelu", () => [Uniform(15, -3, 3, 3, 4)], x => Functional.Gelu(x[0], true));
        yield return Case("Silu", () => [Uniform(16, -3, 3, 3, 4)], x => x[0].Silu());
        yield return Case("FunctionalSilu", () => [Uniform(17, -3, 3, 3, 4)], x => Functional.Silu(x[0]));
        yield return Case("Sin", () => [Uniform(18, -3, 3, 3, 4)], x => x[0].Sin());
        yield return Case("Cos", () => [Uniform(19, -3, 3, 3, 4)], x => x[0].Cos());
        yield return Case("Erf", () => [Uniform(20, -2, 2, 3, 4)], x => x[0].Erf());
        yield return Case("Reciprocal", () => [AwayFromZero(21, 0.3, 2, 3, 4)], x => x[0].Reciprocal());
        yield return Case("Clone", () => [Uniform(22, -2, 2, 3, 4)], x => x[0].Clone());
        yield return Case("ZeroDimensional", () => [Uniform(23, 0.5, 1.5)], x => x[0].Exp() * x[0]);
        yield return Case("Composite(tanh(x)*exp(-x^2)+log1p(x^2))", () => [Uniform(24, -2, 2, 5)],
            x => x[0].Tanh() * x[0].Square().Neg().Exp() + x[0].Square().Log1p());
    }

    [TestCaseSource(nameof(UnaryCases))]
    public void Unary(GradCase c) => c.Run();

    // ------------------------------------------------------------------ elementwise binary, scalar forms and operators

    public static IEnumerable<TestCaseData> BinaryCases()
    {
        // tensor-tensor with broadcasting
        yield return Case("Add[3,4]+[4]", () => [Uniform(30, -2, 2, 3, 4), Uniform(31, -2, 2, 4)], x => x[0].Add(x[1]));
        yield return Case("Add[3,1]+[1,4]", () => [Uniform(32, -2, 2, 3, 1), Uniform(33, -2, 2, 1, 4)], x => x[0] + x[1]);
        yield return Case("Sub[2,3,4]-[3,1]", () => [Uniform(34, -2, 2, 2, 3, 4), Uniform(35, -2, 2, 3, 1)], x => x[0].Sub(x[1]));
        yield return Case("SubOperator[4]-[3,4]", () => [Uniform(36, -2, 2, 4), Uniform(37, -2, 2, 3, 4)], x => x[0] - x[1]);
        yield return Case("Mul[3,4]*[3,1]", () => [Uniform(38, -2, 2, 3, 4), Uniform(39, -2, 2, 3, 1)], x => x[0].Mul(x[1]));
        yield return Case("MulOperatorSameTensor", () => [Uniform(40, -2, 2, 3, 4)], x => x[0] * x[0]);
        yield return Case("Div[3,4]/[4]", () => [Uniform(41, -2, 2, 3, 4), AwayFromZero(42, 0.5, 2, 4)], x => x[0].Div(x[1]));
        yield return Case("DivOperator[3,1]/[3,4]", () => [Uniform(43, -2, 2, 3, 1), AwayFromZero(44, 0.5, 2, 3, 4)], x => x[0] / x[1]);
        yield return Case("Add[3,4]+scalar0d", () => [Uniform(45, -2, 2, 3, 4), Uniform(46, -2, 2)], x => x[0] + x[1]);
        // tensor-scalar
        yield return Case("AddScalar", () => [Uniform(47, -2, 2, 3, 4)], x => x[0].Add(1.5));
        yield return Case("SubScalar", () => [Uniform(48, -2, 2, 3, 4)], x => x[0].Sub(0.25) * x[0]);
        yield return Case("MulScalar", () => [Uniform(49, -2, 2, 3, 4)], x => x[0].Mul(-2.5));
        yield return Case("DivScalar", () => [Uniform(50, -2, 2, 3, 4)], x => x[0].Div(3.0) * x[0]);
        yield return Case("t+2.0", () => [Uniform(51, -2, 2, 3, 4)], x => (x[0] + 2.0) * x[0]);
        yield return Case("t-2.0", () => [Uniform(52, -2, 2, 3, 4)], x => (x[0] - 2.0) * x[0]);
        yield return Case("t*2.0", () => [Uniform(53, -2, 2, 3, 4)], x => x[0] * 2.0);
        yield return Case("t/2.0", () => [Uniform(54, -2, 2, 3, 4)], x => x[0] / 2.0);
        // scalar-tensor operators
        yield return Case("2.0+t", () => [Uniform(55, -2, 2, 3, 4)], x => (2.0 + x[0]) * x[0]);
        yield return Case("2.0-t", () => [Uniform(56, -2, 2, 3, 4)], x => (2.0 - x[0]) * x[0]);
        yield return Case("2.0*t", () => [Uniform(57, -2, 2, 3, 4)], x => 2.0 * x[0]);
        yield return Case("2.0/t", () => [AwayFromZero(58, 0.3, 2, 3, 4)], x => 2.0 / x[0]);
        // powers
        yield return Case("PowTensor", () => [Uniform(59, 0.5, 2, 3, 4), Uniform(60, -1.5, 2, 3, 4)], x => x[0].Pow(x[1]));
        yield return Case("PowTensorBroadcast[3,4]^[4]", () => [Uniform(61, 0.5, 2, 3, 4), Uniform(62, -1.5, 2, 4)], x => x[0].Pow(x[1]));
        yield return Case("PowScalar3", () => [Uniform(63, -2, 2, 3, 4)], x => x[0].Pow(3.0));
        yield return Case("PowScalarHalf", () => [Uniform(64, 0.2, 3, 3, 4)], x => x[0].Pow(0.5));
        yield return Case("PowScalarMinus2", () => [AwayFromZero(65, 0.4, 2, 3, 4)], x => x[0].Pow(-2.0));
        // maximum / minimum, no ties
        yield return Case("Maximum", () => TwoApart(66, 3, 4), x => x[0].Maximum(x[1]));
        yield return Case("Minimum", () => TwoApart(67, 3, 4), x => x[0].Minimum(x[1]));
        yield return Case("MaximumBroadcast[3,4],[4]", () => [Distinct(68, -2, 2, 3, 4), Build([-1.01, -0.03, 0.52, 1.37], [4])],
            x => x[0].Maximum(x[1]));
        yield return Case("MinimumBroadcast[3,1],[3,4]", () => [Build([-0.51, 0.02, 0.93], [3, 1]), Distinct(69, -2, 2, 3, 4)],
            x => x[0].Minimum(x[1]));
        // clamp, away from the bounds
        yield return Case("ClampMinMax", () => [UniformAvoiding(70, -2, 2, [-0.5, 0.7], 0.01, 4, 5)], x => x[0].Clamp(-0.5, 0.7));
        yield return Case("ClampMin", () => [UniformAvoiding(71, -2, 2, [-0.5], 0.01, 4, 5)], x => x[0].Clamp(min: -0.5));
        yield return Case("ClampMax", () => [UniformAvoiding(72, -2, 2, [0.7], 0.01, 4, 5)], x => x[0].Clamp(max: 0.7));
    }

    /// <summary>Two same-shape inputs that differ by at least 0.05 everywhere (no ties for maximum/minimum).</summary>
    private static Tensor[] TwoApart(int seed, params long[] shape)
    {
        var a = Uniform(seed, -2, 2, shape);
        var gap = AwayFromZero(seed + 1000, 0.05, 1, shape);
        using (Torch.NoGrad()) return [a, a + gap];
    }

    [TestCaseSource(nameof(BinaryCases))]
    public void Binary(GradCase c) => c.Run();

    // ------------------------------------------------------------------ linear algebra

    public static IEnumerable<TestCaseData> LinearAlgebraCases()
    {
        yield return Case("Matmul[3,4]x[4,2]", () => [Uniform(80, -1, 1, 3, 4), Uniform(81, -1, 1, 4, 2)], x => x[0].Matmul(x[1]));
        yield return Case("MatmulBatched[2,3,4]x[4,5]", () => [Uniform(82, -1, 1, 2, 3, 4), Uniform(83, -1, 1, 4, 5)], x => x[0].Matmul(x[1]));
        yield return Case("MatmulBatched[2,1,3,4]x[3,4,2]", () => [Uniform(84, -1, 1, 2, 1, 3, 4), Uniform(85, -1, 1, 3, 4, 2)],
            x => x[0].Matmul(x[1]));
        yield return Case("MatmulMatrixVector[3,4]x[4]", () => [Uniform(86, -1, 1, 3, 4), Uniform(87, -1, 1, 4)], x => x[0].Matmul(x[1]));
        yield return Case("MatmulVectorVector[4]x[4]", () => [Uniform(88, -1, 1, 4), Uniform(89, -1, 1, 4)], x => x[0].Matmul(x[1]));
        yield return Case("Bmm[2,3,4]x[2,4,2]", () => [Uniform(90, -1, 1, 2, 3, 4), Uniform(91, -1, 1, 2, 4, 2)], x => x[0].Bmm(x[1]));
        yield return Case("Einsum(bij,bjk->bik)", () => [Uniform(92, -1, 1, 2, 3, 4), Uniform(93, -1, 1, 2, 4, 2)],
            x => Torch.Einsum("bij,bjk->bik", x[0], x[1]));
        yield return Case("Einsum(ij->ji)", () => [Uniform(94, -1, 1, 3, 4)], x => Torch.Einsum("ij->ji", x[0]));
        yield return Case("Einsum(i,i->)", () => [Uniform(95, -1, 1, 5), Uniform(96, -1, 1, 5)], x => Torch.Einsum("i,i->", x[0], x[1]));
        yield return Case("SvdSingularValues[4,3]", () => [WellConditioned(97, 4, 3)], x => x[0].Svd().S);
        yield return Case("SvdSumOfSingularValues[3,3]", () => [WellConditioned(98, 3, 3)], x => x[0].Svd().S.Sum());
        yield return Case("SvdSingularValuesWide[2,4]", () => [WellConditioned(99, 2, 4)], x => x[0].Svd().S);
    }

    /// <summary>A matrix with well separated singular values: a diagonal of 1, 2.5, 4, ... plus small noise.</summary>
    private static Tensor WellConditioned(int seed, long m, long n)
    {
        var noise = Uniform(seed, -0.2, 0.2, m, n).ToArray<double>();
        for (var i = 0; i < Math.Min(m, n); i++) noise[i * n + i] += 1 + 1.5 * i;
        return Build(noise, [m, n]);
    }

    [TestCaseSource(nameof(LinearAlgebraCases))]
    public void LinearAlgebra(GradCase c) => c.Run();

    // ------------------------------------------------------------------ reductions

    public static IEnumerable<TestCaseData> ReductionCases()
    {
        yield return Case("SumAll", () => [Uniform(100, -2, 2, 3, 4)], x => x[0].Sum());
        yield return Case("SumDim1", () => [Uniform(101, -2, 2, 3, 4)], x => x[0].Sum(1));
        yield return Case("SumDimNegKeepDim", () => [Uniform(102, -2, 2, 2, 3, 4)], x => x[0].Sum(-1, keepDim: true));
        yield return Case("SumDims{0,2}KeepDim", () => [Uniform(103, -2, 2, 2, 3, 4)], x => x[0].Sum([0, 2], keepDim: true));
        yield return Case("SumDims{0,2}", () => [Uniform(104, -2, 2, 2, 3, 4)], x => x[0].Sum([0, 2]));
        yield return Case("MeanAll", () => [Uniform(105, -2, 2, 3, 4)], x => x[0].Mean());
        yield return Case("MeanDim0", () => [Uniform(106, -2, 2, 3, 4)], x => x[0].Mean(0));
        yield return Case("MeanDims{1,2}KeepDim", () => [Uniform(107, -2, 2, 2, 3, 4)], x => x[0].Mean([1, 2], keepDim: true));
        yield return Case("ProdAll", () => [AwayFromZero(108, 0.5, 1.5, 3, 4)], x => x[0].Prod());
        yield return Case("ProdDim1", () => [AwayFromZero(109, 0.5, 1.5, 3, 4)], x => x[0].Prod(1));
        yield return Case("ProdDim0KeepDim", () => [AwayFromZero(110, 0.5, 1.5, 3, 4)], x => x[0].Prod(0, keepDim: true));
        yield return Case("LogSumExpDim1", () => [Uniform(111, -2, 2, 3, 4)], x => x[0].LogSumExp(1));
        yield return Case("LogSumExpDim0KeepDim", () => [Uniform(112, -2, 2, 3, 4)], x => x[0].LogSumExp(0, keepDim: true));
        yield return Case("LogSumExpAll", () => [Uniform(113, -2, 2, 3, 4)], x => x[0].LogSumExp(Array.Empty<long>()));
        yield return Case("LogSumExpDims{0,2}KeepDim", () => [Uniform(114, -2, 2, 2, 3, 4)], x => x[0].LogSumExp([0, 2], keepDim: true));
        yield return Case("MaxAll", () => [Distinct(115, -2, 2, 3, 4)], x => x[0].Max());
        yield return Case("MinAll", () => [Distinct(116, -2, 2, 3, 4)], x => x[0].Min());
        yield return Case("AmaxDim1", () => [Distinct(117, -2, 2, 3, 4)], x => x[0].Amax([1]));
        yield return Case("AmaxDims{0,2}KeepDim", () => [Distinct(118, -2, 2, 2, 3, 4)], x => x[0].Amax([0, 2], keepDim: true));
        yield return Case("AminDim0", () => [Distinct(119, -2, 2, 3, 4)], x => x[0].Amin([0]));
        yield return Case("MaxDim1Values", () => [Distinct(120, -2, 2, 3, 4)], x => x[0].Max(1).Values);
        yield return Case("MaxDim0KeepDimValues", () => [Distinct(121, -2, 2, 3, 4)], x => x[0].Max(0, keepDim: true).Values);
        yield return Case("MinDim1Values", () => [Distinct(122, -2, 2, 3, 4)], x => x[0].Min(1).Values);
        yield return Case("VarAllCorrection0", () => [Uniform(123, -2, 2, 3, 4)], x => x[0].Var(correction: 0));
        yield return Case("VarAllCorrection1", () => [Uniform(124, -2, 2, 3, 4)], x => x[0].Var(correction: 1));
        yield return Case("VarDim1Correction1KeepDim", () => [Uniform(125, -2, 2, 3, 4)], x => x[0].Var([1], 1, keepDim: true));
        yield return Case("VarDim0Correction0", () => [Uniform(126, -2, 2, 3, 4)], x => x[0].Var([0], 0));
        yield return Case("StdAllCorrection0", () => [Uniform(127, -2, 2, 3, 4)], x => x[0].Std(correction: 0));
        yield return Case("StdAllCorrection1", () => [Uniform(128, -2, 2, 3, 4)], x => x[0].Std(correction: 1));
        yield return Case("StdDim1Correction1", () => [Uniform(129, -2, 2, 3, 4)], x => x[0].Std([1], 1));
        yield return Case("StdDims{0,2}Correction0KeepDim", () => [Uniform(130, -2, 2, 2, 3, 4)], x => x[0].Std([0, 2], 0, keepDim: true));
        yield return Case("Norm2All", () => [Uniform(131, -2, 2, 3, 4)], x => x[0].Norm());
        yield return Case("Norm1All", () => [AwayFromZero(132, 0.1, 2, 3, 4)], x => x[0].Norm(1));
        yield return Case("Norm2Dim1", () => [Uniform(133, -2, 2, 3, 4)], x => x[0].Norm(2, [1]));
        yield return Case("Norm1Dim0KeepDim", () => [AwayFromZero(134, 0.1, 2, 3, 4)], x => x[0].Norm(1, [0], keepDim: true));
        yield return Case("Norm3Dims{1,2}", () => [AwayFromZero(135, 0.1, 2, 2, 3, 4)], x => x[0].Norm(3, [1, 2]));
    }

    [TestCaseSource(nameof(ReductionCases))]
    public void Reductions(GradCase c) => c.Run();

    // ------------------------------------------------------------------ neural-network functions

    public static IEnumerable<TestCaseData> NeuralNetworkCases()
    {
        yield return Case("SoftmaxDim1", () => [Uniform(140, -2, 2, 3, 4)], x => x[0].Softmax(1));
        yield return Case("SoftmaxDim0", () => [Uniform(141, -2, 2, 3, 4)], x => x[0].Softmax(0));
        yield return Case("SoftmaxDim1Of3D", () => [Uniform(142, -2, 2, 2, 3, 4)], x => Functional.Softmax(x[0], 1));
        yield return Case("LogSoftmaxDimNeg1", () => [Uniform(143, -2, 2, 3, 4)], x => x[0].LogSoftmax(-1));
        yield return Case("LogSoftmaxDim0", () => [Uniform(144, -2, 2, 3, 4)], x => Functional.LogSoftmax(x[0], 0));
        yield return Case("LayerNormPlain", () => [Uniform(145, -2, 2, 2, 3, 4)], x => Functional.LayerNorm(x[0], [4]));
        yield return Case("LayerNormWeightBias", () => [Uniform(146, -2, 2, 2, 3, 4), Uniform(147, 0.5, 1.5, 4), Uniform(148, -1, 1, 4)],
            x => Functional.LayerNorm(x[0], [4], x[1], x[2]));
        yield return Case("LayerNormTwoDimsWeightBias", () => [Uniform(149, -2, 2, 2, 3, 4), Uniform(150, 0.5, 1.5, 3, 4), Uniform(151, -1, 1, 3, 4)],
            x => Functional.LayerNorm(x[0], [3, 4], x[1], x[2]));
        yield return Case("LayerNormWeightOnly", () => [Uniform(152, -2, 2, 3, 5), Uniform(153, 0.5, 1.5, 5)],
            x => Functional.LayerNorm(x[0], [5], x[1]));
        yield return Case("LayerNormLargeEps", () => [Uniform(154, -2, 2, 3, 5)], x => Functional.LayerNorm(x[0], [5], eps: 0.5));

        var targets = new long[] { 2, 0, 3, 1, 3 };
        yield return Case("CrossEntropyMean", () => [Uniform(160, -2, 2, 5, 4)],
            x => Functional.CrossEntropy(x[0], Longs(targets, 5)));
        yield return Case("CrossEntropySum", () => [Uniform(161, -2, 2, 5, 4)],
            x => Functional.CrossEntropy(x[0], Longs(targets, 5), reduction: Reduction.Sum));
        yield return Case("CrossEntropyNone", () => [Uniform(162, -2, 2, 5, 4)],
            x => Functional.CrossEntropy(x[0], Longs(targets, 5), reduction: Reduction.None));
        yield return Case("CrossEntropyIgnoreIndexDefault", () => [Uniform(163, -2, 2, 5, 4)],
            x => Functional.CrossEntropy(x[0], Longs([2, -100, 3, -100, 0], 5)));
        yield return Case("CrossEntropyIgnoreIndex3", () => [Uniform(164, -2, 2, 5, 4)],
            x => Functional.CrossEntropy(x[0], Longs(targets, 5), ignoreIndex: 3));
        yield return Case("CrossEntropyLabelSmoothingMean", () => [Uniform(165, -2, 2, 5, 4)],
            x => Functional.CrossEntropy(x[0], Longs(targets, 5), labelSmoothing: 0.1));
        yield return Case("CrossEntropyLabelSmoothingNone", () => [Uniform(166, -2, 2, 5, 4)],
            x => Functional.CrossEntropy(x[0], Longs(targets, 5), reduction: Reduction.None, labelSmoothing: 0.25));
        yield return Case("CrossEntropyClassWeights", () => [Uniform(167, -2, 2, 5, 4)],
            x => Functional.CrossEntropy(x[0], Longs(targets, 5), weight: Build([0.5, 1, 2, 1.5], [4])));
        yield return Case("CrossEntropySpatial[N,C,d]", () => [Uniform(168, -2, 2, 2, 3, 4)],
            x => Functional.CrossEntropy(x[0], Longs([0, 2, 1, 1, 2, 0, 0, 1], 2, 4)));
    }

    [TestCaseSource(nameof(NeuralNetworkCases))]
    public void NeuralNetwork(GradCase c) => c.Run();

    // ------------------------------------------------------------------ views

    public static IEnumerable<TestCaseData> ViewCases()
    {
        Func<Tensor[]> x234 = () => [Uniform(170, -2, 2, 2, 3, 4)];
        // Each view is followed by a non-linear op so the gradient depends on which element went where.
        yield return Case("Reshape(4,6)", x234, x => x[0].Reshape(4, 6).Sin());
        yield return Case("Reshape(-1)", x234, x => x[0].Reshape(-1).Square());
        yield return Case("ReshapeOfPermuted(copy)", x234, x => x[0].Permute(2, 0, 1).Reshape(4, 6).Sin());
        yield return Case("View(6,4)", x234, x => x[0].View(6, 4).Sin());
        yield return Case("Permute(2,0,1)", x234, x => x[0].Permute(2, 0, 1).Matmul(Build([1, 2, -1], [3, 1])).Sin());
        yield return Case("Transpose(0,2)", x234, x => x[0].Transpose(0, 2).Sin());
        yield return Case("Narrow(2,1,2)", x234, x => x[0].Narrow(2, 1, 2).Sin());
        yield return Case("Select(1,2)", x234, x => x[0].Select(1, 2).Square());
        yield return Case("Select(0,-1)", x234, x => x[0].Select(0, -1).Square());
        yield return Case("SliceStep2(2,1,4,2)", x234, x => x[0].Slice(2, 1, 4, 2).Sin());
        yield return Case("SliceStep2Dim1NegativeStart", x234, x => x[0].Slice(1, -3, 3, 2).Sin());
        yield return Case("Unsqueeze(1)", x234, x => x[0].Unsqueeze(1).Sin());
        yield return Case("SqueezeAll", () => [Uniform(171, -2, 2, 2, 1, 3, 1)], x => x[0].Squeeze().Sin());
        yield return Case("SqueezeDim1", () => [Uniform(172, -2, 2, 2, 1, 3)], x => x[0].Squeeze(1).Sin());
        yield return Case("Expand[3,1]->[2,3,4]", () => [Uniform(173, -2, 2, 3, 1)], x => x[0].Expand(2, 3, 4).Sin() * Uniform(174, -1, 1, 2, 3, 4));
        yield return Case("ExpandKeep(-1,5)", () => [Uniform(175, -2, 2, 3, 1)], x => x[0].Expand(-1, 5).Square());
        yield return Case("Flatten", x234, x => x[0].Flatten().Sin());
        yield return Case("Flatten(1)", x234, x => x[0].Flatten(1).Sin());
        yield return Case("Flatten(0,1)", x234, x => x[0].Flatten(0, 1).Sin());
        yield return Case("Indexer[..,1..3]", x234, x => x[0][.., 1..3].Sin());
        yield return Case("Indexer[1]", x234, x => x[0][1].Sin());
        yield return Case("Indexer[^1,..,0]", x234, x => x[0][^1, .., 0].Sin());
        yield return Case("Indexer[Ellipsis,2]", x234, x => x[0][TensorIndex.Ellipsis, 2].Sin());
        yield return Case("Indexer[NewAxis,..,1..^1]", x234, x => x[0][TensorIndex.NewAxis, .., 1..^1].Sin());
        yield return Case("ContiguousOfPermuted", x234, x => x[0].Permute(1, 2, 0).Contiguous().Sin());
        yield return Case("ViewOfContiguousOfTransposed", x234, x => x[0].Transpose(1, 2).Contiguous().View(2, 12).Sin());
    }

    [TestCaseSource(nameof(ViewCases))]
    public void Views(GradCase c) => c.Run();

    // ------------------------------------------------------------------ indexing, selection, joining

    public static IEnumerable<TestCaseData> IndexingCases()
    {
        yield return Case("IndexSelectDim1WithRepeats", () => [Uniform(180, -2, 2, 3, 4)],
            x => x[0].IndexSelect(1, Longs([2, 0, 2], 3)).Sin());
        yield return Case("IndexSelectDim0", () => [Uniform(181, -2, 2, 3, 4)],
            x => x[0].IndexSelect(0, Longs([1, 1, 0, 2], 4)).Square());
        yield return Case("GatherDim1", () => [Uniform(182, -2, 2, 3, 4)],
            x => x[0].Gather(1, Longs([0, 2, 1, 1, 3, 0], 3, 2)).Sin());
        yield return Case("GatherDim0", () => [Uniform(183, -2, 2, 3, 4)],
            x => x[0].Gather(0, Longs([2, 0, 1, 2, 0, 0, 2, 1], 2, 4)).Sin());
        yield return Case("ScatterDim1(self,src)", () => [Uniform(184, -2, 2, 3, 4), Uniform(185, -2, 2, 3, 2)],
            x => x[0].Scatter(1, Longs([0, 2, 1, 3, 3, 0], 3, 2), x[1]).Sin());
        yield return Case("ScatterDim0(self,src)", () => [Uniform(186, -2, 2, 3, 4), Uniform(187, -2, 2, 2, 4)],
            x => x[0].Scatter(0, Longs([2, 0, 1, 1, 0, 2, 0, 0], 2, 4), x[1]).Square());
        yield return Case("MaskedFill", () => [Uniform(188, -2, 2, 3, 4)],
            x => x[0].MaskedFill(Bools([true, false, false, true, false, true, true, false, false, false, true, false], 3, 4), 0.5).Sin());
        yield return Case("MaskedFillBroadcastMask", () => [Uniform(189, -2, 2, 3, 4)],
            x => x[0].MaskedFill(Bools([false, true, false, true], 4), -1).Square());
        yield return Case("WhereBothBranches", () => [Uniform(190, -2, 2, 3, 4), Uniform(191, -2, 2, 3, 4)],
            x => Torch.Where(Bools([true, false, true, true, false, false, true, false, true, false, false, true], 3, 4), x[0].Sin(), x[1].Square()));
        yield return Case("WhereBroadcast[3,4],[4]", () => [Uniform(192, -2, 2, 3, 4), Uniform(193, -2, 2, 4)],
            x => Torch.Where(Bools([true, false, false, true, true, false, true, false, false, true, false, true], 3, 4), x[0], x[1]).Sin());
        yield return Case("CatDim0", () => [Uniform(194, -2, 2, 2, 3), Uniform(195, -2, 2, 1, 3)],
            x => Torch.Cat([x[0], x[1]], 0).Sin());
        yield return Case("CatDim1ThreeInputs", () => [Uniform(196, -2, 2, 2, 3), Uniform(197, -2, 2, 2, 1), Uniform(198, -2, 2, 2, 2)],
            x => Torch.Cat([x[0], x[1], x[2]], 1).Sin());
        yield return Case("CatSameTensorTwice", () => [Uniform(199, -2, 2, 2, 3)], x => Torch.Cat([x[0], x[0].Square()], -1));
        yield return Case("StackDim0", () => [Uniform(200, -2, 2, 2, 3), Uniform(201, -2, 2, 2, 3)],
            x => Torch.Stack([x[0], x[1]]).Sin());
        yield return Case("StackDim1", () => [Uniform(202, -2, 2, 2, 3), Uniform(203, -2, 2, 2, 3), Uniform(204, -2, 2, 2, 3)],
            x => Torch.Stack([x[0], x[1], x[2]], 1).Sin());
        yield return Case("SplitBySize(2,dim1)", () => [Uniform(205, -2, 2, 3, 5)],
            x => { var p = x[0].Split(2, 1); return Torch.Cat([p[0].Sin(), p[2] * 3.0], 1); });
        yield return Case("SplitBySizes([1,3],dim0)", () => [Uniform(206, -2, 2, 4, 3)],
            x => x[0].Split([1, 3], 0)[1].Square());
        yield return Case("Chunk(3,dim0)", () => [Uniform(207, -2, 2, 5, 2)],
            x => { var c = x[0].Chunk(3, 0); return Torch.Cat([c[2].Sin(), c[0].Square()], 0); });
        yield return Case("TopKLargestValues", () => [Distinct(208, -2, 2, 3, 5)], x => x[0].TopK(2).Values);
        yield return Case("TopKSmallestDim0Values", () => [Distinct(209, -2, 2, 4, 3)], x => x[0].TopK(2, dim: 0, largest: false).Values);
        yield return Case("SortValues", () => [Distinct(210, -2, 2, 3, 5)], x => x[0].Sort().Values);
        yield return Case("SortDescendingDim0Values", () => [Distinct(211, -2, 2, 4, 3)], x => x[0].Sort(0, descending: true).Values);
    }

    [TestCaseSource(nameof(IndexingCases))]
    public void Indexing(GradCase c) => c.Run();
}

/// <summary>The checker itself: it must pass exact gradients and catch a wrong one.</summary>
public class GradCheckSelfTests
{
    [Test]
    public void AcceptsAnExactGradient()
    {
        using var scope = Torch.NewScope();
        var r = GradCheck.Verify(x => x[0] * x[0] * x[0], [GradCheck.Uniform(1, -2, 2, 2, 3)]);
        Assert.That(r.Evaluations, Is.EqualTo(12), "two evaluations per element");
        Expect.Close(r.Numeric[0], r.Analytic[0], 1e-7, "numeric vs analytic");
    }

    [Test]
    public void CatchesAGradientCorruptedByAHook()
    {
        using var scope = Torch.NewScope();
        var hooks = new List<GradHookHandle>();
        var r = GradCheck.Compare(x =>
        {
            var y = x[0] * 2.0;
            if (y.RequiresGrad) hooks.Add(y.RegisterHook(g => g * 3.0));  // autograd now reports 6 instead of 2
            return y;
        }, [GradCheck.Uniform(2, -2, 2, 4)]);
        foreach (var h in hooks) h.Dispose();
        Assert.That(r.Mismatches, Has.Count.EqualTo(4));
        Assert.That(r.Mismatches[0].Analytic / r.Mismatches[0].Numeric, Is.EqualTo(3.0).Within(1e-6));
    }

    [Test]
    public void CatchesAGradientOfTheWrongSign()
    {
        using var scope = Torch.NewScope();
        var r = GradCheck.Compare(x =>
        {
            var y = x[0].Sin();
            return x[0].RequiresGrad ? y : y.Neg();  // numeric side sees -sin, analytic side sin
        }, [GradCheck.Uniform(3, 0.5, 1.0, 3)]);
        Assert.That(r.Mismatches, Has.Count.EqualTo(3));
    }

    [Test]
    public void ReportsUnusedInputsAsZeroGradient()
    {
        using var scope = Torch.NewScope();
        var r = GradCheck.Verify(x => x[0].Exp(), [GradCheck.Uniform(4, -1, 1, 3), GradCheck.Uniform(5, -1, 1, 2)]);
        Assert.That(r.Analytic[1], Is.EqualTo(new double[2]));
    }

    [Test]
    public void RejectsNonFloat64Inputs()
    {
        using var scope = Torch.NewScope();
        var ex = Assert.Throws<ArgumentException>(() => GradCheck.Compare(x => x[0], [Torch.Ones(3)]));
        Assert.That(ex!.Message, Does.Contain("float64").And.Contain("float32"));
    }

    [Test]
    public void KeepsNativeMemoryBounded()
    {
        using var outer = Torch.NewScope();
        var input = GradCheck.Uniform(6, -1, 1, 4, 4);
        var before = outer.Count;
        GradCheck.Verify(x => x[0].Matmul(x[0]).Tanh(), [input]);
        Assert.That(outer.Count, Is.EqualTo(before), "every tensor the check made was disposed by its own scopes");
    }
}
