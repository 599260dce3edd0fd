using SharpLens.Testing;
namespace SharpLens.Tensors.Tests;

/// <summary>
/// The native hook actions: <see cref="GradientSlots"/> (gradients stored by native hooks during backward) and
/// <see cref="TransformerOps.Ablate"/>, checked against values and gradients worked out by hand.
/// </summary>
public class HookActionKernelTests
{
    [Test]
    public void SlotsReceiveTheGradientDuringBackwardAndHandItOverOnce()
    {
        using var scope = Torch.NewScope();
        using var slots = new GradientSlots(2);
        var x = Torch.FromArray(new[] { 1.0, 2.0, 3.0 }, 3).RequiresGrad_();
        var y = x * 2;
        slots.Capture(y, 1);
        Assert.That(slots.Version, Is.EqualTo(0));
        (y * y).Sum().Backward();  // d/dy of sum(y²) = 2y = [4, 8, 12]
        Assert.That(slots.Version, Is.EqualTo(1), "one gradient stored");
        Assert.That(slots.Take(0), Is.Null, "nothing was captured in slot 0");
        var g = slots.Take(1);
        Assert.That(g, Is.Not.Null);
        Assert.That(g!.ToArray<double>(), Is.EqualTo(new[] { 4.0, 8.0, 12.0 }));
        Assert.That(g.RequiresGrad, Is.False, "a captured gradient is detached");
        Assert.That(slots.Take(1), Is.Null, "taking empties the slot");
        Assert.That(x.Grad!.ToArray<double>(), Is.EqualTo(new[] { 8.0, 16.0, 24.0 }), "the gradient flows on unchanged");
    }

    [Test]
    public void ALaterGradientReplacesTheEarlierOne()
    {
        using var scope = Torch.NewScope();
        using var slots = new GradientSlots(1);
        var x = Torch.FromArray(new[] { 1.0, -1.0 }, 2).RequiresGrad_();
        var a = x * 3;
        var b = x * 5;
        slots.Capture(a, 0);
        slots.Capture(b, 0);
        (a.Sum() + (b * 2).Sum()).Backward();
        var g = slots.Take(0)!;
        // Either a's ones or b's twos arrive last; the slot holds exactly one of them, whole.
        Assert.That(g.ToArray<double>(), Is.EqualTo(new[] { 1.0, 1.0 }).Or.EqualTo(new[] { 2.0, 2.0 }));
    }

    [Test]
    public void SlotsFreedBeforeBackwardStayValidForTheGraphAndLeakNothing()
    {
        var before = LiveTensorCount.Settled();
        using (var scope = Torch.NewScope())
        {
            var slots = new GradientSlots(1);
            var x = Torch.Ones([4], ScalarType.Float64).RequiresGrad_();
            var y = x * 3;
            slots.Capture(y, 0);
            slots.Dispose();
            y.Sum().Backward();  // the hook still holds the native table: no crash, no write to freed memory
            Assert.That(x.Grad!.ToArray<double>(), Is.EqualTo(new[] { 3.0, 3.0, 3.0, 3.0 }));
        }
        Assert.That(Torch.LiveTensors, Is.EqualTo(before));
    }

    [Test]
    public void BadSlotsAndTensorsAreArgumentErrors()
    {
        using var scope = Torch.NewScope();
        using var slots = new GradientSlots(2);
        var plain = Torch.Ones([2]);
        var e = Assert.Throws<ArgumentException>(() => slots.Capture(plain, 0))!;
        Assert.That(e.Message, Does.Contain("does not require grad"));
        var x = Torch.Ones([2]).RequiresGrad_();
        e = Assert.Throws<ArgumentException>(() => slots.Capture(x, 2))!;
        Assert.That(e.Message, Does.Contain("slot 2").And.Contain("table of 2"));
        Assert.Throws<ArgumentException>(() => slots.Take(-1));
    }

    [Test]
    public void AblateReplacesExactlyTheSelectedHeadsAndPositions()
    {
        using var scope = Torch.NewScope();
        // x [batch 2, pos 3, head 4, d 2] holding its own flat index, so every entry is recognisable.
        var x = Torch.Arange(0, 48, 1, ScalarType.Float64).View(2, 3, 4, 2);
        var zeroed = TransformerOps.Ablate(x, headDim: 2, heads: [1, -1], posDim: 1, positions: [0]).ToArray<double>();
        var mean = Torch.Full([4, 2], 0.5, ScalarType.Float64);  // broadcasts over batch and position
        var toMean = TransformerOps.Ablate(x, 2, [3], 1, null, mean).ToArray<double>();
        for (var b = 0; b < 2; b++)
            for (var p = 0; p < 3; p++)
                for (var h = 0; h < 4; h++)
                    for (var d = 0; d < 2; d++)
                    {
                        var i = ((b * 3 + p) * 4 + h) * 2 + d;
                        Assert.That(zeroed[i], Is.EqualTo((h is 1 or 3) && p == 0 ? 0.0 : i), $"zero-ablated [{b},{p},{h},{d}]");
                        Assert.That(toMean[i], Is.EqualTo(h == 3 ? 0.5 : i), $"mean-ablated [{b},{p},{h},{d}]");
                    }
    }

    [Test]
    public void AblationGradientIsZeroWhereReplacedAndReachesTheMean()
    {
        using var scope = Torch.NewScope();
        var x = Torch.Ones([1, 3, 2], ScalarType.Float64).RequiresGrad_();
        var mean = Torch.Zeros([3, 2], ScalarType.Float64).RequiresGrad_();
        var y = TransformerOps.Ablate(x, headDim: 2, heads: [0], posDim: 1, positions: [1, 2], mean);
        (y * 3).Sum().Backward();
        Assert.That(x.Grad!.ToArray<double>(), Is.EqualTo(new[] { 3.0, 3.0, 0.0, 3.0, 0.0, 3.0 }));
        Assert.That(mean.Grad!.ToArray<double>(), Is.EqualTo(new[] { 0.0, 0.0, 3.0, 0.0, 3.0, 0.0 }));
    }

    [Test]
    public void AblationErrorsNameTheIndexDimensionAndShape()
    {
        using var scope = Torch.NewScope();
        var x = Torch.Zeros([2, 3, 4, 2]);
        var e = Assert.Throws<ArgumentException>(() => TransformerOps.Ablate(x, 2, [4], 1, null))!;
        Assert.That(e.Message, Does.Contain("head index 4").And.Contain("size 4").And.Contain("[2, 3, 4, 2]"));
        e = Assert.Throws<ArgumentException>(() => TransformerOps.Ablate(x, 7, [0], 1, null))!;
        Assert.That(e.Message, Does.Contain("dimension 7"));
        e = Assert.Throws<ArgumentException>(() => TransformerOps.Ablate(x, 2, [0], 1, null, Torch.Zeros([5])))!;
        Assert.That(e.Message, Does.Contain("[5]"));
        e = Assert.Throws<ArgumentException>(() => TransformerOps.Ablate(x, 2, [0], 1, null, Torch.Zeros([4, 2], ScalarType.Float64)))!;
        Assert.That(e.Message, Does.Contain("Double").And.Contain("Float"));
    }
}
