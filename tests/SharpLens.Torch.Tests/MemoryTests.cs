using SharpLens.Testing;
using System.Runtime.CompilerServices;

namespace SharpLens.Tensors.Tests;

/// <summary>Deterministic memory: scopes dispose what they own, moved-out tensors survive, counts return to start.</summary>
[NonParallelizable]
public class MemoryTests
{
    [Test]
    public void TenThousandForwardBackwardIterationsLeakNoHandle()
    {
        using var w = Torch.Randn([8, 8], new Generator(1), ScalarType.Float32).RequiresGrad_();
        using var x = Torch.Randn([4, 8], new Generator(2), ScalarType.Float32);
        var start = LiveTensorCount.Settled();
        for (var i = 0; i < 10_000; i++)
        {
            using var scope = Torch.NewScope();
            var h = x.Matmul(w).Tanh();
            var loss = Functional.LayerNorm(h, [8]).Square().Mean();
            loss.Backward();
            using var grad = w.Grad!.DetachFromScope();
            if (i % 1000 == 0) w.Grad = null;
        }
        w.Grad = null;
        Assert.That(Torch.LiveTensors, Is.EqualTo(start));
    }

    [Test]
    public void ScopeDisposesEverythingItOwns()
    {
        var start = LiveTensorCount.Settled();
        Tensor a, b;
        using (Torch.NewScope())
        {
            a = Torch.Ones(3);
            b = a * 2;
            Assert.That(Torch.LiveTensors, Is.EqualTo(start + 2));
        }
        Assert.That(a.IsDisposed && b.IsDisposed, Is.True);
        Assert.That(Torch.LiveTensors, Is.EqualTo(start));
        Assert.Throws<ObjectDisposedException>(() => _ = a.Shape);
    }

    [Test]
    public void MoveToOuterScopeSurvivesTheInnerScopeOnly()
    {
        var start = LiveTensorCount.Settled();
        using (var outer = Torch.NewScope())
        {
            Tensor kept;
            using (Torch.NewScope())
            {
                kept = (Torch.Ones(2) * 3).MoveToOuterScope();
            }
            Assert.That(kept.IsDisposed, Is.False);
            Assert.That(kept.ToArray<float>(), Is.EqualTo(new float[] { 3, 3 }));
            Assert.That(outer.Count, Is.EqualTo(1));
        }
        Assert.That(Torch.LiveTensors, Is.EqualTo(start));
    }

    [Test]
    public void DetachFromScopeHandsOwnershipToTheCaller()
    {
        var start = LiveTensorCount.Settled();
        Tensor mine;
        using (Torch.NewScope()) mine = Torch.Zeros(2).DetachFromScope();
        Assert.That(mine.IsDisposed, Is.False);
        mine.Dispose();
        Assert.That(Torch.LiveTensors, Is.EqualTo(start));
    }

    [Test]
    public void DisposingInTheWrongOrderIsRefused()
    {
        var outer = Torch.NewScope();
        var inner = Torch.NewScope();
        Assert.Throws<InvalidOperationException>(() => outer.Dispose());
        inner.Dispose();
        outer.Dispose();
    }

    [Test]
    public void FinalizerFreesAbandonedTensors()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        var start = LiveTensorCount.Settled();
        Abandon();
        for (var i = 0; i < 5 && Torch.LiveTensors != start; i++)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
        }
        Assert.That(Torch.LiveTensors, Is.EqualTo(start));
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void Abandon()
    {
        for (var i = 0; i < 100; i++) _ = Torch.Ones(4);
    }

    [Test]
    public void ViewsKeepStorageAliveAfterTheBaseIsDisposed()
    {
        using var scope = Torch.NewScope();
        var baseTensor = Torch.FromArray(new float[] { 1, 2, 3, 4 });
        var view = baseTensor.Narrow(0, 1, 2);
        baseTensor.Dispose();
        Assert.That(view.ToArray<float>(), Is.EqualTo(new float[] { 2, 3 }));
    }
}
