namespace SharpLens.Tests;

/// <summary><see cref="Slice"/> against Python's indexing rules, written out by hand for a 6-element dimension.</summary>
public class SliceTests
{
    private static long[] Apply(Slice s)
    {
        using var scope = Torch.NewScope();
        var t = Torch.Arange(6).View(1, 6);
        var r = s.Apply(t, -1);
        return r.Contiguous().ToArray<long>();
    }

    [Test]
    public void FollowsPythonIndexing()
    {
        Assert.Multiple(() =>
        {
            Assert.That(Apply(Slice.All), Is.EqualTo(new long[] { 0, 1, 2, 3, 4, 5 }));
            Assert.That(Apply(-1), Is.EqualTo(new long[] { 5 }));
            Assert.That(Apply(2), Is.EqualTo(new long[] { 2 }));
            Assert.That(Apply(1..^1), Is.EqualTo(new long[] { 1, 2, 3, 4 }));
            Assert.That(Apply(^2..), Is.EqualTo(new long[] { 4, 5 }));
            Assert.That(Apply(Slice.Range(null, null, 2)), Is.EqualTo(new long[] { 0, 2, 4 }));
            Assert.That(Apply(Slice.Range(-4, 100)), Is.EqualTo(new long[] { 2, 3, 4, 5 }));
            Assert.That(Apply(Slice.Range(4, 2)), Is.Empty);
            Assert.That(Apply(new long[] { 5, 0, -2 }), Is.EqualTo(new long[] { 5, 0, 4 }));
            Assert.That(Slice.Range(1, null, 2).Indices(6), Is.EqualTo(new long[] { 1, 3, 5 }));
            Assert.That(Slice.At(-1).Indices(6), Is.EqualTo(new long[] { 5 }));
        });
        using var scope = Torch.NewScope();
        var t = Torch.Zeros(3, 6, 4);
        Assert.That(Slice.At(-1).Apply(t, 1).Shape, Is.EqualTo(new long[] { 3, 4 }), "an index drops the dimension");
        Assert.That(Slice.At(-1).KeepingDimension().Apply(t, 1).Shape, Is.EqualTo(new long[] { 3, 1, 4 }));
        Assert.That(Slice.Of(1, 2).Apply(t, -2).Shape, Is.EqualTo(new long[] { 3, 2, 4 }));
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => Slice.At(6).Apply(t, 1));
        Assert.That(e!.Message, Does.Contain("[3, 6, 4]"));
        Assert.Throws<ArgumentOutOfRangeException>(() => Slice.Range(0, 3, 0));
    }
}
