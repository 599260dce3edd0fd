namespace SharpLens.Tensors.Tests;

public class SmokeTests
{
    [Test]
    public void AddsTwoTensorsOnCpu()
    {
        using var scope = Torch.NewScope();
        var a = Torch.FromArray(new float[] { 1, 2, 3 });
        var b = Torch.FromArray(new float[] { 10, 20, 30 });
        Assert.That((a + b).ToArray<float>(), Is.EqualTo(new float[] { 11, 22, 33 }));
    }
}
