namespace SharpLens.Tensors.Tests;

/// <summary>
/// The native layer's meta-device stand-ins for ops libtorch 1.13 has no meta kernel for (where, index_select): on meta they
/// must give the shape and dtype the real op gives on the CPU, for every operand kind the real op takes.
/// </summary>
public class MetaFallbackTests
{
    private static void AssertSameShapeAndType(Tensor onMeta, Tensor onCpu)
    {
        Assert.That(onMeta.Device, Is.EqualTo(Device.Meta));
        Assert.That(onMeta.Shape, Is.EqualTo(onCpu.Shape));
        Assert.That(onMeta.DType, Is.EqualTo(onCpu.DType));
    }

    [TestCase(ScalarType.Float32, ScalarType.Float32)]
    [TestCase(ScalarType.Float64, ScalarType.Float32)]
    [TestCase(ScalarType.Int64, ScalarType.Int64)]
    [TestCase(ScalarType.Bool, ScalarType.Bool)]
    public void WhereOnMetaMatchesTheCpu(ScalarType a, ScalarType b)
    {
        using var scope = Torch.NewScope();
        Tensor Make(ScalarType t, Device d, long[] shape) => Torch.Zeros(shape, t, d);
        var cpu = Torch.Where(Make(ScalarType.Bool, Device.CPU, [3, 1]), Make(a, Device.CPU, [3, 4]), Make(b, Device.CPU, [4]));
        var meta = Torch.Where(Make(ScalarType.Bool, Device.Meta, [3, 1]), Make(a, Device.Meta, [3, 4]), Make(b, Device.Meta, [4]));
        AssertSameShapeAndType(meta, cpu);
    }

    [TestCase(0)]
    [TestCase(1)]
    public void IndexSelectOnMetaMatchesTheCpuFor1DAnd0DIndices(int indexRank)
    {
        using var scope = Torch.NewScope();
        long[] indexShape = indexRank == 0 ? [] : [2];
        var x = Torch.Zeros([5, 3], ScalarType.Float32);
        var cpu = x.IndexSelect(0, Torch.Zeros(indexShape, ScalarType.Int64));
        var meta = Torch.Zeros([5, 3], ScalarType.Float32, Device.Meta).IndexSelect(0, Torch.Zeros(indexShape, ScalarType.Int64, Device.Meta));
        AssertSameShapeAndType(meta, cpu);
    }
}
