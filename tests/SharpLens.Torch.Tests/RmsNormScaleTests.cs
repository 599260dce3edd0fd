namespace SharpLens.Tensors.Tests;

/// <summary>
/// <see cref="TransformerOps.RmsNormScale"/> on the CPU is the composition square, mean, add, sqrt (the op sequence the bridge
/// ran itself before it became one native call), so it must equal that composition bit for bit, forward and backward; on
/// meta it gives the shape; a row without features is an argument error naming the shape. (On CUDA it is a row kernel:
/// CudaKernelTests.)
/// </summary>
public class RmsNormScaleTests
{
    [TestCase(ScalarType.Float32)]
    [TestCase(ScalarType.Float64)]
    public void EqualsTheCompositionBitForBitOnTheCpu(ScalarType dtype)
    {
        using var scope = Torch.NewScope();
        using var g = new Generator(3);
        var x = (Torch.Randn([3, 5, 64], g, ScalarType.Float64) * 2).To(dtype).RequiresGrad_();
        var upstream = Torch.Randn([3, 5, 1], g, ScalarType.Float64).To(dtype);
        var got = TransformerOps.RmsNormScale(x, 1e-6);
        var want = x.Square().Mean(-1, keepDim: true).Add(1e-6).Sqrt();
        Assert.That(got.Shape, Is.EqualTo(new long[] { 3, 5, 1 }));
        Assert.That((got - want).Abs().Max().ToDouble(), Is.EqualTo(0.0));
        var gGot = Torch.Autograd.Grad([(got * upstream).Sum()], [x])[0]!;
        var gWant = Torch.Autograd.Grad([(want * upstream).Sum()], [x])[0]!;
        Assert.That((gGot - gWant).Abs().Max().ToDouble(), Is.EqualTo(0.0));
    }

    [Test]
    public void GivesTheShapeOnMetaAndRefusesAnEmptyRow()
    {
        using var scope = Torch.NewScope();
        var meta = TransformerOps.RmsNormScale(Torch.Zeros([2, 7, 16], ScalarType.Float32, Device.Meta), 1e-5);
        Assert.That(meta.Shape, Is.EqualTo(new long[] { 2, 7, 1 }));
        Assert.That(meta.Device, Is.EqualTo(Device.Meta));
        var e = Assert.Throws<ArgumentException>(() => TransformerOps.RmsNormScale(Torch.Zeros([2, 0], ScalarType.Float32), 1e-5))!;
        Assert.That(e.Message, Does.Contain("[2, 0]"));
    }
}
