using SharpLens.Verification;

namespace SharpLens.Tests;

/// <summary>
/// The bridge on a GPU against itself on the CPU in float64 (ground truth: the CPU path is held to HuggingFace by the fixture
/// tests). Marked <c>CUDA</c>; where libsharplens or libtorch sees no CUDA device each test is reported as skipped, never as
/// passed. <c>./build.sh gpu-check</c> runs them on a GPU machine. Bounds: float32 on CUDA within 1e-5 × max(1, |ref|) of
/// float64 (a few float32 roundings per accumulated term, TF32 off), float64 on CUDA within 1e-10 (summation order only).
/// </summary>
[Category("CUDA")]
[TestFixtureSource(typeof(Fixtures), nameof(Fixtures.AllModels))]
public class CudaTests(string model) : FixtureTest(model)
{
    [SetUp]
    public void RequireCuda()
    {
        if (!Torch.CudaIsAvailable) Assert.Ignore("no CUDA device here (Torch.CudaIsAvailable is false): not run");
    }

    private static void Close(Tensor expected, Tensor actual, string what, double relTol)
    {
        using var scope = Torch.NewScope();
        var magnitude = Math.Max(1, expected.To(ScalarType.Float64).Abs().MaskedFill(expected.To(ScalarType.Float64).IsFinite().LogicalNot(), 0).Max().ToDouble());
        var d = Fixtures.MaxAbsDiff(expected.To(Device.CPU), actual.To(Device.CPU));
        Assert.That(d, Is.LessThanOrEqualTo(relTol * magnitude), $"{what}: {d:G3} at magnitude {magnitude:G3}");
    }

    [TestCase(ScalarType.Float32, 1e-5)]
    [TestCase(ScalarType.Float64, 1e-10)]
    public void EveryHookForwardAndBackwardOnCudaMatchesTheCpu(ScalarType dtype, double tol)
    {
        using var cpu = VerificationSuite.Prepare(TransformerBridge.Load(ModelDir, new BridgeOptions { DType = ScalarType.Float64, AllOptionalHooks = true }));
        using var gpu = VerificationSuite.Prepare(TransformerBridge.Load(ModelDir, new BridgeOptions { DType = dtype, Device = Device.CUDA(), AllOptionalHooks = true }));
        using var scope = Torch.NewScope();
        Func<Tensor, Tensor> objective = l => l.Select(1, -1).Sum();
        var (cpuLogits, cpuCache) = cpu.RunWithCache(Tokens, null, null, objective);
        var (gpuLogits, gpuCache) = gpu.RunWithCache(Tokens, null, null, objective);
        using (cpuCache)
        using (gpuCache)
        {
            Assert.That(gpuLogits.Device.Type, Is.EqualTo(DeviceType.CUDA));
            Assert.That(gpuCache.Keys, Is.EquivalentTo(cpuCache.Keys));
            Assert.Multiple(() =>
            {
                Close(cpuLogits, gpuLogits, "logits", tol);
                foreach (var key in cpuCache.Keys) Close(cpuCache[key], gpuCache[key], key, tol);
                foreach (var (name, p) in cpu.NamedParameters()) Close(p.Grad!, gpu.Parameter(name).Grad!, name + " gradient", tol);
            });
        }
    }

    [TestCase(ScalarType.BFloat16, 0.05)]
    [TestCase(ScalarType.Float16, 0.005)]
    public void HalfPrecisionLogitsOnCudaWithinTheCpuPathsBounds(ScalarType dtype, double tol)
    {
        using var gpu = TransformerBridge.Load(ModelDir, new BridgeOptions { DType = dtype, Device = Device.CUDA() });
        using var scope = Torch.NewScope();
        var logits = gpu.Forward(Tokens).To(Device.CPU, ScalarType.Float32);
        Assert.That((logits - Reference["logits"]).Abs().Max().ToDouble(), Is.LessThan(tol));
    }

    [Test]
    public void VerificationSuitePassesOnCuda()
    {
        using var bridge = VerificationSuite.Prepare(TransformerBridge.Load(ModelDir, new BridgeOptions { Device = Device.CUDA(), AllOptionalHooks = true }));
        using var reference = HookedTransformer.FromBridge(bridge);
        using var scope = Torch.NewScope();
        var report = VerificationSuite.Run(bridge, reference, VerificationSuite.DefaultTokens(bridge.Config).To(Device.CUDA()), Model);
        Assert.That(report.Passed, Is.True, report.ToTable());
    }
}
