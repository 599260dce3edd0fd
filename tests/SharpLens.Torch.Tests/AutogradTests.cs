namespace SharpLens.Tensors.Tests;

/// <summary>Autograd against analytic derivatives: backward, autograd.grad, leaves, detach, no-grad, gradient hooks.</summary>
public class AutogradTests
{
    private static Tensor Leaf(params double[] values) => Torch.FromArray(values).RequiresGrad_();

    [Test]
    public void BackwardOfCubeGivesThreeXSquared()
    {
        using var scope = Torch.NewScope();
        var x = Leaf(1, -2, 0.5);
        (x * x * x).Sum().Backward();
        Assert.That(x.Grad!.ToArray<double>(), Is.EqualTo(new[] { 3.0, 12.0, 0.75 }));
    }

    [Test]
    public void BackwardAccumulatesAcrossCallsLikePyTorch()
    {
        using var scope = Torch.NewScope();
        var x = Leaf(2);
        (x * 3).Sum().Backward();
        (x * 3).Sum().Backward();
        Assert.That(x.Grad!.ToDouble(), Is.EqualTo(6.0));
    }

    [Test]
    public void BackwardWithExplicitGradientWeightsTheOutputs()
    {
        using var scope = Torch.NewScope();
        var x = Leaf(1, 2);
        var y = x * x;  // dy/dx = 2x
        y.Backward(Torch.FromArray(new double[] { 10, 100 }));
        Assert.That(x.Grad!.ToArray<double>(), Is.EqualTo(new[] { 20.0, 400.0 }));
    }

    [Test]
    public void LeafAndNonLeafAreTold()
    {
        using var scope = Torch.NewScope();
        var x = Leaf(1);
        var y = x * 2;
        Assert.Multiple(() =>
        {
            Assert.That(x.IsLeaf, Is.True);
            Assert.That(y.IsLeaf, Is.False);
            Assert.That(y.RequiresGrad, Is.True);
            Assert.That(x.Grad, Is.Null, "no gradient before backward");
        });
    }

    [Test]
    public void DetachSharesStorageAndDropsHistory()
    {
        using var scope = Torch.NewScope();
        var x = Leaf(1, 2);
        var d = x.Detach();
        Assert.That(d.RequiresGrad, Is.False);
        Assert.That(d.SharesStorageWith(x), Is.True);
    }

    [Test]
    public void NoGradScopeStopsRecordingAndRestores()
    {
        using var scope = Torch.NewScope();
        var x = Leaf(1);
        using (Torch.NoGrad())
        {
            Assert.That(Torch.IsGradEnabled, Is.False);
            Assert.That((x * 2).RequiresGrad, Is.False);
        }
        Assert.That(Torch.IsGradEnabled, Is.True);
        Assert.That((x * 2).RequiresGrad, Is.True);
    }

    [Test]
    public void AutogradGradLeavesDotGradAlone()
    {
        using var scope = Torch.NewScope();
        var x = Leaf(3);
        var g = Torch.Autograd.Grad([x.Pow(3).Sum()], [x]);
        Assert.That(g[0]!.ToDouble(), Is.EqualTo(27.0).Within(1e-12));
        Assert.That(x.Grad, Is.Null);
    }

    [Test]
    public void AutogradGradWithCreateGraphGivesSecondDerivative()
    {
        using var scope = Torch.NewScope();
        var x = Leaf(2);
        var first = Torch.Autograd.Grad([x.Pow(3).Sum()], [x], createGraph: true)[0]!;  // 3x^2
        var second = Torch.Autograd.Grad([first.Sum()], [x])[0]!;                      // 6x
        Assert.That(first.ToDouble(), Is.EqualTo(12.0).Within(1e-12));
        Assert.That(second.ToDouble(), Is.EqualTo(12.0).Within(1e-12));
    }

    [Test]
    public void AutogradGradReportsUnusedInputsAsNullOnlyWhenAllowed()
    {
        using var scope = Torch.NewScope();
        var x = Leaf(1);
        var unused = Leaf(5);
        var y = (x * 4).Sum();
        var g = Torch.Autograd.Grad([y], [x, unused], retainGraph: true, allowUnused: true);
        Assert.That(g[0]!.ToDouble(), Is.EqualTo(4.0));
        Assert.That(g[1], Is.Null);
        var ex = Assert.Throws<TorchException>(() => Torch.Autograd.Grad([y], [x, unused]));
        Assert.That(ex!.Message, Does.Contain("not have been used"));
    }

    [Test]
    public void AutogradGradHonoursGradOutputs()
    {
        using var scope = Torch.NewScope();
        var x = Leaf(1, 2);
        var g = Torch.Autograd.Grad([x * 5], [x], [Torch.FromArray(new double[] { 1, -1 })]);
        Assert.That(g[0]!.ToArray<double>(), Is.EqualTo(new[] { 5.0, -5.0 }));
    }

    [Test]
    public void HookSeesTheGradientFlowingIntoATensor()
    {
        using var scope = Torch.NewScope();
        var x = Leaf(1, 2);
        var h = x * 3;          // dL/dh = 2h = 6x for L = sum(h^2)
        double[]? seen = null;
        using var hook = h.RegisterHook(g => { seen = g.ToArray<double>(); });
        (h * h).Sum().Backward();
        Assert.That(seen, Is.EqualTo(new[] { 6.0, 12.0 }));
        Assert.That(x.Grad!.ToArray<double>(), Is.EqualTo(new[] { 18.0, 36.0 }));
    }

    [Test]
    public void HookReplacementChangesUpstreamGradients()
    {
        using var scope = Torch.NewScope();
        var x = Leaf(1, 2);
        var h = x * 3;
        using var hook = h.RegisterHook(g => g * 0 + 1);  // pretend dL/dh = 1
        (h * h).Sum().Backward();
        Assert.That(x.Grad!.ToArray<double>(), Is.EqualTo(new[] { 3.0, 3.0 }));
    }

    [Test]
    public void HooksOnALeafRunInRegistrationOrderAndCompose()
    {
        using var scope = Torch.NewScope();
        var x = Leaf(1);
        var order = new List<string>();
        using var a = x.RegisterHook(g => { order.Add("a"); return g * 2; });
        using var b = x.RegisterHook(g => { order.Add("b"); return g + 1; });
        (x * 5).Sum().Backward();
        Assert.That(order, Is.EqualTo(new[] { "a", "b" }));
        Assert.That(x.Grad!.ToDouble(), Is.EqualTo(11.0));  // (5 * 2) + 1
    }

    [Test]
    public void RemovedHookNoLongerRuns()
    {
        using var scope = Torch.NewScope();
        var x = Leaf(1);
        var calls = 0;
        var hook = x.RegisterHook(_ => { calls++; });
        (x * 2).Sum().Backward();
        hook.Dispose();
        hook.Dispose();  // idempotent
        (x * 2).Sum().Backward();
        Assert.That(calls, Is.EqualTo(1));
    }

    private sealed class HookFailure(string message) : Exception(message);

    [Test]
    public void ExceptionInHookReachesBackwardCallerWithItsType()
    {
        using var scope = Torch.NewScope();
        var x = Leaf(1, 2);
        using var hook = x.RegisterHook(ThrowingHook);
        var ex = Assert.Throws<HookFailure>(() => (x * 2).Sum().Backward());
        Assert.That(ex!.Message, Is.EqualTo("boom from hook"));
        Assert.That(ex.StackTrace, Does.Contain(nameof(ThrowingHook)), "the original stack is kept");
        // The engine is still usable afterwards.
        hook.Dispose();
        (x * 2).Sum().Backward();
        Assert.That(x.Grad!.ToArray<double>(), Is.EqualTo(new[] { 2.0, 2.0 }));
    }

    private static Tensor? ThrowingHook(Tensor g) => throw new HookFailure("boom from hook");

    [Test]
    public void ExceptionInHookReachesAutogradGradCaller()
    {
        using var scope = Torch.NewScope();
        var x = Leaf(1);
        var y = x * 2;
        using var hook = y.RegisterHook(_ => throw new InvalidTimeZoneException("odd type on purpose"));
        Assert.Throws<InvalidTimeZoneException>(() => Torch.Autograd.Grad([y.Sum()], [x]));
    }

    [Test]
    public void HookReturningWrongShapeFailsNamingBothShapes()
    {
        using var scope = Torch.NewScope();
        var x = Leaf(1, 2, 3);
        using var hook = x.RegisterHook(_ => Torch.Zeros([2], ScalarType.Float64));
        var ex = Assert.Throws<InvalidOperationException>(() => (x * 2).Sum().Backward());
        Assert.That(ex!.Message, Does.Contain("[2]").And.Contain("[3]"));
    }

    [Test]
    public void HookOnTensorWithoutGradIsRefused()
    {
        using var scope = Torch.NewScope();
        var x = Torch.FromArray(new double[] { 1 });
        var ex = Assert.Throws<ArgumentException>(() => x.RegisterHook(_ => { }));
        Assert.That(ex!.Message, Does.Contain("does not require grad"));
    }

    [Test]
    public void HookStateIsReleasedWhenTheGraphDies()
    {
        var before = GradHookState.Live;
        using (Torch.NewScope())
        {
            var x = Leaf(1);
            for (var i = 0; i < 20; i++)
            {
                var y = x * 2;
                y.RegisterHook(_ => { });  // never removed: released with y's autograd state
                y.Sum().Backward();
            }
        }
        Assert.That(GradHookState.Live, Is.EqualTo(before));
    }

    [Test]
    public void GradSetterReplacesAndClears()
    {
        using var scope = Torch.NewScope();
        var x = Leaf(1, 2);
        x.Grad = Torch.FromArray(new double[] { 7, 8 });
        Assert.That(x.Grad!.ToArray<double>(), Is.EqualTo(new[] { 7.0, 8.0 }));
        x.Grad = null;
        Assert.That(x.Grad, Is.Null);
    }
}
