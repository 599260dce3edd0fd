using SharpLens.Testing;
using SharpLens.Tensors.Optim;

namespace SharpLens.Tensors.Tests;

/// <summary>
/// SGD and AdamW against trajectories worked out by hand from torch.optim's update rules (PyTorch 1.13
/// single-tensor semantics), in float64; plus parameter groups, skipped parameters, zero_grad, validation
/// and lifetime. No expected value comes from the code under test.
/// </summary>
public class OptimizerTests
{
    private const double Tight = 1e-12;

    // Fixed gradients for three steps of a two-element parameter, shared by the SGD trajectories below.
    private static readonly double[] P0 = [1.0, -2.0];
    private static readonly double[] G1 = [0.5, -1.0];
    private static readonly double[] G2 = [-0.25, 2.0];
    private static readonly double[] G3 = [1.5, 0.75];

    private static Tensor Param(params double[] values) => Torch.FromArray(values).RequiresGrad_();

    /// <summary>Installs a gradient by hand, as backward would leave it.</summary>
    private static void SetGrad(Tensor p, params double[] grad)
    {
        using var g = Torch.FromArray(grad);
        p.Grad = g;
    }

    private static double[] Values(Tensor t) => t.ToArray<double>();

    /// <summary>Runs steps with G1, G2, G3 and returns the parameter after each step.</summary>
    private static double[][] ThreeSgdSteps(Func<Tensor, SGD> make)
    {
        using var scope = Torch.NewScope();
        var p = Param(P0);
        using var opt = make(p);
        var trajectory = new double[3][];
        double[][] grads = [G1, G2, G3];
        for (var i = 0; i < 3; i++)
        {
            SetGrad(p, grads[i]);
            opt.Step();
            trajectory[i] = Values(p);
        }
        return trajectory;
    }

    private static void ExpectTrajectory(double[][] expected, double[][] actual)
    {
        for (var i = 0; i < expected.Length; i++) Expect.Close(expected[i], actual[i], Tight, $"after step {i + 1}");
    }

    // ================================================================== SGD

    [Test]
    public void SgdPlainFollowsPMinusLrG()
    {
        // p <- p - 0.1 g
        //   step 1: [1 - 0.05,     -2 + 0.1 ]  = [0.95,  -1.9  ]
        //   step 2: [0.95 + 0.025, -1.9 - 0.2] = [0.975, -2.1  ]
        //   step 3: [0.975 - 0.15, -2.1 - 0.075] = [0.825, -2.175]
        var t = ThreeSgdSteps(p => new SGD([p], lr: 0.1));
        ExpectTrajectory([[0.95, -1.9], [0.975, -2.1], [0.825, -2.175]], t);
    }

    [Test]
    public void SgdWeightDecayAddsL2TermToTheGradient()
    {
        // d = g + 0.5 p; p <- p - 0.1 d
        //   step 1: d = [0.5 + 0.5,     -1 - 1.0  ] = [1.0, -2.0 ]; p = [0.9,  -1.8 ]
        //   step 2: d = [-0.25 + 0.45,  2 - 0.9   ] = [0.2,  1.1 ]; p = [0.88, -1.91]
        //   step 3: d = [1.5 + 0.44,    0.75 - 0.955] = [1.94, -0.205]; p = [0.686, -1.8895]
        var t = ThreeSgdSteps(p => new SGD([p], lr: 0.1, weightDecay: 0.5));
        ExpectTrajectory([[0.9, -1.8], [0.88, -1.91], [0.686, -1.8895]], t);
    }

    [Test]
    public void SgdMomentumFirstStepCopiesTheGradient()
    {
        // b1 = g1 (torch: the buffer starts as a copy of the gradient; with dampening that differs from
        // starting at zero, which the dampening test checks)
        // b <- 0.9 b + g; p <- p - 0.1 b
        //   step 1: b = [0.5, -1.0];                         p = [0.95, -1.9 ]
        //   step 2: b = [0.45 - 0.25, -0.9 + 2.0] = [0.2, 1.1];   p = [0.93, -2.01]
        //   step 3: b = [0.18 + 1.5, 0.99 + 0.75] = [1.68, 1.74]; p = [0.762, -2.184]
        using var scope = Torch.NewScope();
        var p = Param(P0);
        using var opt = new SGD([p], lr: 0.1, momentum: 0.9);
        Assert.That(opt.State(0, 0, "momentum_buffer"), Is.Null, "no buffer before the first step");
        SetGrad(p, G1);
        opt.Step();
        Expect.Close([0.5, -1.0], Values(opt.State(0, 0, "momentum_buffer")!), Tight, "buffer after step 1");
        Expect.Close([0.95, -1.9], Values(p), Tight, "after step 1");
        SetGrad(p, G2);
        opt.Step();
        Expect.Close([0.93, -2.01], Values(p), Tight, "after step 2");
        SetGrad(p, G3);
        opt.Step();
        Expect.Close([0.762, -2.184], Values(p), Tight, "after step 3");
        Expect.Close([1.68, 1.74], Values(opt.State(0, 0, "momentum_buffer")!), Tight, "buffer after step 3");
    }

    [Test]
    public void SgdDampeningScalesTheGradientAfterTheFirstStep()
    {
        // b <- 0.9 b + (1 - 0.5) g, except b1 = g1 undamped
        //   step 1: b = [0.5, -1.0];                                   p = [0.95, -1.9]
        //   step 2: b = [0.45 - 0.125, -0.9 + 1.0] = [0.325, 0.1];          p = [0.9175, -1.91]
        //   step 3: b = [0.2925 + 0.75, 0.09 + 0.375] = [1.0425, 0.465];    p = [0.81325, -1.9565]
        var t = ThreeSgdSteps(p => new SGD([p], lr: 0.1, momentum: 0.9, dampening: 0.5));
        ExpectTrajectory([[0.95, -1.9], [0.9175, -1.91], [0.81325, -1.9565]], t);
    }

    [Test]
    public void SgdNesterovStepsAlongGradientPlusMomentumTimesBuffer()
    {
        // b as in the momentum test; d = g + 0.9 b; p <- p - 0.1 d
        //   step 1: b = [0.5, -1];   d = [0.95, -1.9];           p = [0.905, -1.81]
        //   step 2: b = [0.2, 1.1];  d = [-0.25 + 0.18, 2 + 0.99] = [-0.07, 2.99];   p = [0.912, -2.109]
        //   step 3: b = [1.68, 1.74]; d = [1.5 + 1.512, 0.75 + 1.566] = [3.012, 2.316]; p = [0.6108, -2.3406]
        var t = ThreeSgdSteps(p => new SGD([p], lr: 0.1, momentum: 0.9, nesterov: true));
        ExpectTrajectory([[0.905, -1.81], [0.912, -2.109], [0.6108, -2.3406]], t);
    }

    [Test]
    public void SgdMaximizeAscends()
    {
        // p <- p + 0.1 g
        //   [1.05, -2.1], [1.025, -1.9], [1.175, -1.825]
        var t = ThreeSgdSteps(p => new SGD([p], lr: 0.1, maximize: true));
        ExpectTrajectory([[1.05, -2.1], [1.025, -1.9], [1.175, -1.825]], t);
    }

    [Test]
    public void SgdMaximizeNegatesTheGradientBeforeWeightDecayAndMomentum()
    {
        // d = -g + 0.25 p; b <- 0.9 b + d (b1 = d1); p <- p - 0.1 b
        //   step 1: d = [-0.5 + 0.25, 1.0 - 0.5] = [-0.25, 0.5]; b = d;     p = [1.025, -2.05]
        //   step 2: d = [0.25 + 0.25625, -2.0 - 0.5125] = [0.50625, -2.5125]
        //           b = [-0.225 + 0.50625, 0.45 - 2.5125] = [0.28125, -2.0625]; p = [0.996875, -1.84375]
        var t = ThreeSgdSteps(p => new SGD([p], lr: 0.1, momentum: 0.9, weightDecay: 0.25, maximize: true));
        Expect.Close([1.025, -2.05], t[0], Tight, "after step 1");
        Expect.Close([0.996875, -1.84375], t[1], Tight, "after step 2");
    }

    [Test]
    public void SgdWithGradientsFromBackwardAndZeroGradBetweenSteps()
    {
        // loss = sum(c * p) so dL/dp = c = [2, -3] every step; p <- p - 0.5 b, b <- 0.5 b + c (b1 = c)
        //   step 1: b = [2, -3];              p = [1 - 1, -2 + 1.5]       = [0, -0.5]
        //   step 2: b = [1 + 2, -1.5 - 3] = [3, -4.5]; p = [0 - 1.5, -0.5 + 2.25] = [-1.5, 1.75]
        using var scope = Torch.NewScope();
        var p = Param(P0);
        var c = Torch.FromArray([2.0, -3.0]);
        using var opt = new SGD([p], lr: 0.5, momentum: 0.5);
        for (var i = 0; i < 2; i++)
        {
            opt.ZeroGrad();
            (p * c).Sum().Backward();
            opt.Step();
        }
        Expect.Close([-1.5, 1.75], Values(p), Tight);
        Assert.That(p.IsLeaf && p.RequiresGrad, Is.True, "the step must not turn the parameter into a graph node");
    }

    // ================================================================== AdamW

    /// <summary>
    /// Three AdamW steps on one element, written out step by step from the torch.optim.AdamW algorithm
    /// (decoupled decay first, then the moments, bias corrections 1 - beta^t, optional AMSGrad maximum).
    /// Returns the parameter after each step and the final m, v and max v.
    /// </summary>
    private static (double[] P, double M3, double V3, double VMax3) AdamWByHand(double p0, double[] g, double lr,
        double b1, double b2, double eps, double wd, bool amsgrad, bool maximize)
    {
        var sign = maximize ? -1.0 : 1.0;

        // step 1
        var g1 = sign * g[0];
        var q1 = p0 * (1 - lr * wd);
        var m1 = b1 * 0 + (1 - b1) * g1;
        var v1 = b2 * 0 + (1 - b2) * g1 * g1;
        var vmax1 = Math.Max(0, v1);
        var d1 = Math.Sqrt(amsgrad ? vmax1 : v1) / Math.Sqrt(1 - b2) + eps;
        var p1 = q1 - lr / (1 - b1) * m1 / d1;

        // step 2
        var g2 = sign * g[1];
        var q2 = p1 * (1 - lr * wd);
        var m2 = b1 * m1 + (1 - b1) * g2;
        var v2 = b2 * v1 + (1 - b2) * g2 * g2;
        var vmax2 = Math.Max(vmax1, v2);
        var d2 = Math.Sqrt(amsgrad ? vmax2 : v2) / Math.Sqrt(1 - b2 * b2) + eps;
        var p2 = q2 - lr / (1 - b1 * b1) * m2 / d2;

        // step 3
        var g3 = sign * g[2];
        var q3 = p2 * (1 - lr * wd);
        var m3 = b1 * m2 + (1 - b1) * g3;
        var v3 = b2 * v2 + (1 - b2) * g3 * g3;
        var vmax3 = Math.Max(vmax2, v3);
        var d3 = Math.Sqrt(amsgrad ? vmax3 : v3) / Math.Sqrt(1 - b2 * b2 * b2) + eps;
        var p3 = q3 - lr / (1 - b1 * b1 * b1) * m3 / d3;

        return ([p1, p2, p3], m3, v3, vmax3);
    }

    /// <summary>Runs AdamW for three steps on [P0] with gradients [G1, G2, G3] and checks every step against the hand computation.</summary>
    private static void CheckAdamWAgainstHand(Func<Tensor, AdamW> make, double lr, double b1, double b2, double eps, double wd,
        bool amsgrad, bool maximize, double[] p0, double[][] grads)
    {
        using var scope = Torch.NewScope();
        var p = Param(p0);
        using var opt = make(p);
        var byHand = Enumerable.Range(0, p0.Length)
            .Select(j => AdamWByHand(p0[j], [grads[0][j], grads[1][j], grads[2][j]], lr, b1, b2, eps, wd, amsgrad, maximize))
            .ToArray();
        for (var step = 0; step < 3; step++)
        {
            SetGrad(p, grads[step]);
            opt.Step();
            Expect.Close(byHand.Select(h => h.P[step]).ToArray(), Values(p), Tight, $"after step {step + 1}");
            Assert.That(opt.State(0, 0, "step")!.ToDouble(), Is.EqualTo(step + 1));
        }
        Expect.Close(byHand.Select(h => h.M3).ToArray(), Values(opt.State(0, 0, "exp_avg")!), Tight, "exp_avg");
        Expect.Close(byHand.Select(h => h.V3).ToArray(), Values(opt.State(0, 0, "exp_avg_sq")!), Tight, "exp_avg_sq");
        var max = opt.State(0, 0, "max_exp_avg_sq");
        if (amsgrad) Expect.Close(byHand.Select(h => h.VMax3).ToArray(), Values(max!), Tight, "max_exp_avg_sq");
        else Assert.That(max, Is.Null, "no max_exp_avg_sq without amsgrad");
    }

    [Test]
    public void AdamWDefaultsMatchHandComputation()
    {
        // torch defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 1e-2
        CheckAdamWAgainstHand(p => new AdamW([p]), 1e-3, 0.9, 0.999, 1e-8, 1e-2, false, false, P0, [G1, G2, G3]);
    }

    [Test]
    public void AdamWCustomOptionsMatchHandComputation()
    {
        CheckAdamWAgainstHand(p => new AdamW([p], lr: 0.1, betas: (0.8, 0.99), eps: 1e-3, weightDecay: 0.1),
            0.1, 0.8, 0.99, 1e-3, 0.1, false, false, P0, [G1, G2, G3]);
    }

    [Test]
    public void AdamWAmsgradUsesTheRunningMaximumOfTheSecondMoment()
    {
        // Gradients that shrink, so v falls below its earlier maximum and AMSGrad differs from Adam.
        double[][] grads = [[1.0, -2.0], [0.01, 0.5], [0.01, -0.1]];
        double[] p0 = [0.5, 1.5];
        CheckAdamWAgainstHand(p => new AdamW([p], lr: 0.1, weightDecay: 0, amsgrad: true),
            0.1, 0.9, 0.999, 1e-8, 0, true, false, p0, grads);
        // The test is only meaningful if AMSGrad's answer differs from plain Adam's here by far more than the
        // tolerance (it does, by about 8e-5 against 1e-12).
        var ams = AdamWByHand(p0[0], [1.0, 0.01, 0.01], 0.1, 0.9, 0.999, 1e-8, 0, true, false).P[2];
        var plain = AdamWByHand(p0[0], [1.0, 0.01, 0.01], 0.1, 0.9, 0.999, 1e-8, 0, false, false).P[2];
        Assert.That(Math.Abs(ams - plain), Is.GreaterThan(1e-5));
    }

    [Test]
    public void AdamWMaximizeMatchesHandComputation()
    {
        CheckAdamWAgainstHand(p => new AdamW([p], lr: 0.1, weightDecay: 0.05, maximize: true),
            0.1, 0.9, 0.999, 1e-8, 0.05, false, true, P0, [G1, G2, G3]);
    }

    [Test]
    public void AdamWBiasCorrectionMakesAConstantGradientMoveExactlyLrPerStep()
    {
        // Closed form: with a constant gradient g, m_t = (1 - b1^t) g and v_t = (1 - b2^t) g^2, so after bias
        // correction the step is lr * g / |g| = lr * sign(g) whatever |g| is (eps = 0, no decay). Without the
        // correction the first step would be lr * 0.1 / sqrt(0.001), about 3.16 lr.
        using var scope = Torch.NewScope();
        var p = Param(1.0, 1.0, 1.0);
        using var opt = new AdamW([p], lr: 0.01, eps: 0, weightDecay: 0);
        for (var step = 1; step <= 3; step++)
        {
            SetGrad(p, 1e-3, -50.0, 2.0);
            opt.Step();
            Expect.Close([1 - 0.01 * step, 1 + 0.01 * step, 1 - 0.01 * step], Values(p), Tight, $"after step {step}");
        }
    }

    [Test]
    public void AdamWMaximizeMovesExactlyLrUpTheConstantGradient()
    {
        using var scope = Torch.NewScope();
        var p = Param(1.0, 1.0);
        using var opt = new AdamW([p], lr: 0.01, eps: 0, weightDecay: 0, maximize: true);
        for (var step = 1; step <= 3; step++)
        {
            SetGrad(p, 4.0, -0.5);
            opt.Step();
            Expect.Close([1 + 0.01 * step, 1 - 0.01 * step], Values(p), Tight, $"after step {step}");
        }
    }

    [Test]
    public void AdamWWeightDecayIsDecoupledFromTheGradient()
    {
        // Closed form: with zero gradients m = v = 0, so the Adam term is 0 / (0 + eps) = 0 and only the
        // decoupled decay acts: p_t = p0 * (1 - lr*wd)^t = p0 * 0.95^t. (Adam's L2 decay would instead feed
        // wd*p into the moments and move p by about lr per step.)
        using var scope = Torch.NewScope();
        var p = Param(2.0, -4.0);
        using var opt = new AdamW([p], lr: 0.1, weightDecay: 0.5);
        double[][] expected = [[1.9, -3.8], [1.805, -3.61], [1.71475, -3.4295]];
        for (var step = 0; step < 3; step++)
        {
            SetGrad(p, 0.0, 0.0);
            opt.Step();
            Expect.Close(expected[step], Values(p), Tight, $"after step {step + 1}");
        }
    }

    [Test]
    public void AdamWFloat32TracksTheFloat64HandComputation()
    {
        using var scope = Torch.NewScope();
        var p = Torch.FromArray(P0.Select(v => (float)v).ToArray()).RequiresGrad_();
        using var opt = new AdamW([p], lr: 0.1);
        double[][] grads = [G1, G2, G3];
        var byHand = Enumerable.Range(0, 2)
            .Select(j => AdamWByHand(P0[j], [G1[j], G2[j], G3[j]], 0.1, 0.9, 0.999, 1e-8, 1e-2, false, false)).ToArray();
        for (var step = 0; step < 3; step++)
        {
            using var g = Torch.FromArray(grads[step].Select(v => (float)v).ToArray());
            p.Grad = g;
            opt.Step();
        }
        Assert.That(p.DType, Is.EqualTo(ScalarType.Float32));
        Assert.That(opt.State(0, 0, "exp_avg")!.DType, Is.EqualTo(ScalarType.Float32), "state follows the parameter's dtype");
        Expect.Close(byHand.Select(h => h.P[2]).ToArray(), Expect.Values(p), 1e-6);
    }

    // ================================================================== skipped parameters, state

    [Test]
    public void AdamWSkipsParametersWithoutGradientAndTheirStateDoesNotAdvance()
    {
        using var scope = Torch.NewScope();
        var a = Param(1.0);
        var b = Param(5.0);
        using var opt = new AdamW([a, b], lr: 0.1);
        for (var i = 0; i < 2; i++)
        {
            SetGrad(a, 1.0);
            opt.Step();
        }
        Assert.Multiple(() =>
        {
            Assert.That(Values(b), Is.EqualTo(new[] { 5.0 }), "a parameter without gradient is not touched, not even decayed");
            Assert.That(opt.State(0, 1, "step"), Is.Null);
            Assert.That(opt.State(0, 1, "exp_avg"), Is.Null);
            Assert.That(opt.State(0, 1, "exp_avg_sq"), Is.Null);
            Assert.That(opt.State(0, 0, "step")!.ToDouble(), Is.EqualTo(2.0));
        });

        // Once b has a gradient it takes its own first step: bias-corrected, so it moves lr*sign(g) (plus decay).
        SetGrad(b, 3.0);
        opt.Step();
        Assert.That(opt.State(0, 0, "step")!.ToDouble(), Is.EqualTo(3.0));
        Assert.That(opt.State(0, 1, "step")!.ToDouble(), Is.EqualTo(1.0));
        // p = 5 * (1 - 0.1 * 0.01) - 0.1 * 3 / (3 + 1e-8)
        Expect.Close([5.0 * (1 - 0.1 * 0.01) - 0.1 * 3.0 / (3.0 + 1e-8)], Values(b), Tight);
    }

    [Test]
    public void SgdSkipsParametersWithoutGradient()
    {
        using var scope = Torch.NewScope();
        var a = Param(1.0);
        var b = Param(5.0);
        using var opt = new SGD([a, b], lr: 0.1, momentum: 0.9, weightDecay: 0.1);
        SetGrad(a, 1.0);
        opt.Step();
        Assert.That(Values(b), Is.EqualTo(new[] { 5.0 }));
        Assert.That(opt.State(0, 1, "momentum_buffer"), Is.Null);
        Assert.That(opt.State(0, 0, "momentum_buffer"), Is.Not.Null);
    }

    [Test]
    public void StateRejectsUnknownNamesAndIndices()
    {
        using var scope = Torch.NewScope();
        using var opt = new SGD([Param(1.0)], lr: 0.1);
        Assert.That(Assert.Throws<ArgumentException>(() => opt.State(0, 0, "nope"))!.Message, Does.Contain("unknown optimizer state"));
        Assert.That(Assert.Throws<ArgumentException>(() => opt.State(1, 0, "step"))!.Message, Does.Contain("no parameter group 1"));
        Assert.That(Assert.Throws<ArgumentException>(() => opt.State(0, 3, "step"))!.Message, Does.Contain("has no parameter 3"));
    }

    // ================================================================== parameter groups

    [Test]
    public void GroupsWithDifferentLrAndLrChangesBetweenSteps()
    {
        using var scope = Torch.NewScope();
        var a = Param(1.0);
        var b = Param(1.0);
        using var opt = new SGD([new ParamGroup([a]), new ParamGroup([b]) { Lr = 0.01 }], lr: 0.1);
        Assert.That(opt.ParamGroups[0].Lr, Is.EqualTo(0.1), "an unset lr takes the default");
        Assert.That(opt.ParamGroups[1].Lr, Is.EqualTo(0.01));

        // p <- p - lr * 1
        SetGrad(a, 1.0);
        SetGrad(b, 1.0);
        opt.Step();
        Expect.Close([0.9], Values(a), Tight, "group 0, step 1");
        Expect.Close([0.99], Values(b), Tight, "group 1, step 1");

        // A scheduler's move: takes effect at the next step, for that group only.
        opt.ParamGroups[1].Lr = 0.5;
        opt.ParamGroups[0].Lr *= 2;  // 0.2
        opt.Step();
        Expect.Close([0.7], Values(a), Tight, "group 0, step 2");
        Expect.Close([0.49], Values(b), Tight, "group 1, step 2");
        Assert.That(opt.NativeGroupOptions(0).Lr, Is.EqualTo(0.2), "the new lr reached the native optimizer");
        Assert.That(opt.NativeGroupOptions(1).Lr, Is.EqualTo(0.5));
    }

    [Test]
    public void GroupOptionsFallBackToTheOptimizerDefaults()
    {
        using var scope = Torch.NewScope();
        var g0 = new ParamGroup([Param(1.0)]) { Momentum = 0.5 };
        var g1 = new ParamGroup([Param(1.0)]);
        using var opt = new SGD([g0, g1], lr: 0.1, momentum: 0.9, nesterov: true);
        Assert.Multiple(() =>
        {
            Assert.That(g0.Momentum, Is.EqualTo(0.5));
            Assert.That(g1.Momentum, Is.EqualTo(0.9));
            Assert.That(g0.Nesterov, Is.True);
            Assert.That(g1.Dampening, Is.EqualTo(0));
            Assert.That(g0.Betas, Is.Null, "SGD has no betas");
            Assert.That(opt.NativeGroupOptions(0).Momentum, Is.EqualTo(0.5));
            Assert.That(opt.NativeGroupOptions(1).Momentum, Is.EqualTo(0.9));
            Assert.That(opt.NativeGroupOptions(1).Nesterov, Is.EqualTo(1));
            Assert.That(g0.Owner, Is.SameAs(opt));
        });
    }

    [Test]
    public void AdamWGroupsUseTheirOwnBetasAndWeightDecay()
    {
        using var scope = Torch.NewScope();
        var a = Param(1.0);
        var b = Param(1.0);
        using var opt = new AdamW([new ParamGroup([a]), new ParamGroup([b]) { Betas = (0.5, 0.9), WeightDecay = 0 }], lr: 0.1);
        Assert.That(opt.ParamGroups[0].Betas, Is.EqualTo((0.9, 0.999)));
        Assert.That(opt.ParamGroups[0].WeightDecay, Is.EqualTo(1e-2));
        Assert.That(opt.ParamGroups[1].Betas, Is.EqualTo((0.5, 0.9)));
        double[] gs = [2.0, -1.0, 0.5];
        var ha = AdamWByHand(1.0, gs, 0.1, 0.9, 0.999, 1e-8, 1e-2, false, false);
        var hb = AdamWByHand(1.0, gs, 0.1, 0.5, 0.9, 1e-8, 0, false, false);
        foreach (var g in gs)
        {
            SetGrad(a, g);
            SetGrad(b, g);
            opt.Step();
        }
        Expect.Close([ha.P[2]], Values(a), Tight, "group 0");
        Expect.Close([hb.P[2]], Values(b), Tight, "group 1");
    }

    [Test]
    public void AddParamGroupTakesDefaultsAndStepsTheNewParameters()
    {
        using var scope = Torch.NewScope();
        var a = Param(1.0);
        var b = Param(1.0);
        using var opt = new SGD([a], lr: 0.1);
        var added = new ParamGroup([b]) { Lr = 0.25 };
        opt.AddParamGroup(added);
        Assert.That(opt.ParamGroups, Has.Count.EqualTo(2));
        Assert.That(opt.ParamGroups[1], Is.SameAs(added));
        SetGrad(a, 1.0);
        SetGrad(b, 1.0);
        opt.Step();
        Expect.Close([0.9], Values(a), Tight);
        Expect.Close([0.75], Values(b), Tight);
    }

    [Test]
    public void SettingAnInvalidOptionOnAnOwnedGroupThrowsAndKeepsTheOldValue()
    {
        using var scope = Torch.NewScope();
        using var opt = new SGD([Param(1.0)], lr: 0.1);
        var g = opt.ParamGroups[0];
        var ex = Assert.Throws<ArgumentException>(() => g.Lr = -1);
        Assert.That(ex!.Message, Does.Contain("lr must be >= 0"));
        Assert.That(g.Lr, Is.EqualTo(0.1));
        Assert.That(opt.NativeGroupOptions(0).Lr, Is.EqualTo(0.1));

        var foreign = Assert.Throws<ArgumentException>(() => g.Betas = (0.9, 0.99));
        Assert.That(foreign!.Message, Does.Contain("SGD has no option Betas"));

        // null restores the optimizer's default
        g.Lr = 0.3;
        g.Lr = null;
        Assert.That(g.Lr, Is.EqualTo(0.1));
    }

    [Test]
    public void SgdGroupWithoutLrNeedsADefault()
    {
        using var scope = Torch.NewScope();
        var ex = Assert.Throws<ArgumentException>(() => new SGD([new ParamGroup([Param(1.0)])]));
        Assert.That(ex!.Message, Does.Contain("has no lr"));
        using var ok = new SGD([new ParamGroup([Param(1.0)]) { Lr = 0.1 }]);
        Assert.That(ok.ParamGroups[0].Lr, Is.EqualTo(0.1));
    }

    [Test]
    public void AGroupSettingAnOptionTheOptimizerDoesNotUseIsRejected()
    {
        using var scope = Torch.NewScope();
        var ex = Assert.Throws<ArgumentException>(() => new AdamW([new ParamGroup([Param(1.0)]) { Momentum = 0.9 }]));
        Assert.That(ex!.Message, Does.Contain("AdamW has no option Momentum"));
    }

    [Test]
    public void AGroupBelongsToOneOptimizerOnly()
    {
        using var scope = Torch.NewScope();
        var group = new ParamGroup([Param(1.0)]);
        using var first = new SGD([group], lr: 0.1);
        var ex = Assert.Throws<ArgumentException>(() => new SGD([group], lr: 0.1));
        Assert.That(ex!.Message, Does.Contain("already belongs to another optimizer"));
        var again = Assert.Throws<ArgumentException>(() => first.AddParamGroup(group));
        Assert.That(again!.Message, Does.Contain("already added to this optimizer"));
    }

    [Test]
    public void AFailedConstructionLeavesTheGroupsReusable()
    {
        using var scope = Torch.NewScope();
        var good = new ParamGroup([Param(1.0)]);
        var bad = new ParamGroup([Param(2.0)]) { Lr = -1 };
        Assert.Throws<ArgumentException>(() => new SGD([good, bad], lr: 0.1));
        Assert.That(good.Owner, Is.Null);
        Assert.That(good.Lr, Is.Null, "the default was not written into the caller's group");
        using var opt = new SGD([good], lr: 0.1);
        Assert.That(good.Owner, Is.SameAs(opt));
    }

    // ================================================================== zero_grad

    [Test]
    public void ZeroGradSetsGradientsToNoneByDefault()
    {
        using var scope = Torch.NewScope();
        var p = Param(1.0, 2.0);
        using var opt = new SGD([p], lr: 0.1);
        SetGrad(p, 3.0, 4.0);
        opt.ZeroGrad();
        Assert.That(p.Grad, Is.Null);
        opt.Step();  // nothing to do: the parameter is skipped
        Assert.That(Values(p), Is.EqualTo(new[] { 1.0, 2.0 }));
    }

    [Test]
    public void ZeroGradWithoutSetToNoneFillsZeros()
    {
        using var scope = Torch.NewScope();
        var p = Param(1.0, 2.0);
        using var opt = new SGD([p], lr: 0.1);
        (p * p).Sum().Backward();
        opt.ZeroGrad(setToNone: false);
        var grad = p.Grad;
        Assert.That(grad, Is.Not.Null);
        Assert.That(Values(grad!), Is.EqualTo(new[] { 0.0, 0.0 }));
        Assert.That(grad!.RequiresGrad, Is.False);
        // Backward accumulates into the zeroed gradient: d(3p)/dp = 3
        (p * 3).Sum().Backward();
        Assert.That(Values(p.Grad!), Is.EqualTo(new[] { 3.0, 3.0 }));
    }

    [Test]
    public void ZeroGradWithoutSetToNoneDetachesAGradientThatHasHistory()
    {
        using var scope = Torch.NewScope();
        var p = Param(2.0);
        using var opt = new SGD([p], lr: 0.1);
        (p * p * p).Sum().Backward(createGraph: true);  // p.Grad = 3p^2 with a graph
        Assert.That(p.Grad!.RequiresGrad, Is.True);
        opt.ZeroGrad(setToNone: false);
        Assert.That(p.Grad!.RequiresGrad, Is.False);
        Assert.That(Values(p.Grad!), Is.EqualTo(new[] { 0.0 }));
    }

    // ================================================================== validation

    [Test]
    public void NonLeafParameterIsRejected()
    {
        using var scope = Torch.NewScope();
        var x = Param(1.0, 2.0);
        var y = x * 2;
        var ex = Assert.Throws<ArgumentException>(() => new SGD([y], lr: 0.1));
        Assert.That(ex!.Message, Does.Contain("not a leaf tensor"));
        Assert.That(ex.Message, Does.Contain("parameter group 0"));
    }

    [Test]
    public void NegativeLrIsRejected()
    {
        using var scope = Torch.NewScope();
        var ex = Assert.Throws<ArgumentException>(() => new SGD([Param(1.0)], lr: -0.1));
        Assert.That(ex!.Message, Does.Contain("invalid optimizer option: lr must be >= 0"));
        var adam = Assert.Throws<ArgumentException>(() => new AdamW([Param(1.0)], lr: -0.1));
        Assert.That(adam!.Message, Does.Contain("lr must be >= 0"));
    }

    [Test]
    public void NanLrIsRejected()
    {
        using var scope = Torch.NewScope();
        Assert.Throws<ArgumentException>(() => new SGD([Param(1.0)], lr: double.NaN));
    }

    [Test]
    public void NesterovWithoutMomentumIsRejected()
    {
        using var scope = Torch.NewScope();
        var ex = Assert.Throws<ArgumentException>(() => new SGD([Param(1.0)], lr: 0.1, nesterov: true));
        Assert.That(ex!.Message, Does.Contain("nesterov momentum requires a momentum and zero dampening"));
        var damped = Assert.Throws<ArgumentException>(() => new SGD([Param(1.0)], lr: 0.1, momentum: 0.9, dampening: 0.1, nesterov: true));
        Assert.That(damped!.Message, Does.Contain("zero dampening"));
    }

    [Test]
    public void AdamWBetasOutsideZeroOneAreRejected()
    {
        using var scope = Torch.NewScope();
        var ex = Assert.Throws<ArgumentException>(() => new AdamW([Param(1.0)], betas: (1.0, 0.999)));
        Assert.That(ex!.Message, Does.Contain("beta1 must be in [0, 1)"));
        var ex2 = Assert.Throws<ArgumentException>(() => new AdamW([Param(1.0)], betas: (0.9, -0.1)));
        Assert.That(ex2!.Message, Does.Contain("beta2 must be in [0, 1)"));
        var ex3 = Assert.Throws<ArgumentException>(() => new AdamW([Param(1.0)], eps: -1));
        Assert.That(ex3!.Message, Does.Contain("eps must be >= 0"));
    }

    [Test]
    public void SameTensorInTwoGroupsIsRejected()
    {
        using var scope = Torch.NewScope();
        var p = Param(1.0);
        var ex = Assert.Throws<ArgumentException>(() => new SGD([new ParamGroup([p]), new ParamGroup([p])], lr: 0.1));
        Assert.That(ex!.Message, Does.Contain("parameter group 1: parameter 0 already belongs to another parameter group"));

        // Identity is the tensor's, not the managed object's: an alias is the same parameter.
        var alias = p.Alias();
        using var opt = new SGD([p], lr: 0.1);
        var viaAdd = Assert.Throws<ArgumentException>(() => opt.AddParamGroup(new ParamGroup([alias])));
        Assert.That(viaAdd!.Message, Does.Contain("already belongs to another parameter group"));
        Assert.That(opt.ParamGroups, Has.Count.EqualTo(1), "a rejected group is not added");
    }

    [Test]
    public void SameTensorTwiceInOneGroupIsRejected()
    {
        using var scope = Torch.NewScope();
        var p = Param(1.0);
        var ex = Assert.Throws<ArgumentException>(() => new SGD([p, p], lr: 0.1));
        Assert.That(ex!.Message, Does.Contain("appears twice in the group"));
    }

    [Test]
    public void EmptyParameterListIsRejected()
    {
        var ex = Assert.Throws<ArgumentException>(() => new SGD(new List<Tensor>(), lr: 0.1));
        Assert.That(ex!.Message, Does.StartWith("optimizer got an empty parameter list"));
        var ex2 = Assert.Throws<ArgumentException>(() => new AdamW(new List<ParamGroup>()));
        Assert.That(ex2!.Message, Does.StartWith("optimizer got an empty parameter list"));
    }

    [Test]
    public void NonFloatingPointParameterIsRejected()
    {
        using var scope = Torch.NewScope();
        var ex = Assert.Throws<ArgumentException>(() => new SGD([Torch.FromArray(new long[] { 1, 2 })], lr: 0.1));
        Assert.That(ex!.Message, Does.Contain("optimizers need floating point"));
    }

    // ================================================================== lifetime

    [Test]
    public void OptimizerKeepsWorkingAfterTheParameterObjectsAreDisposed()
    {
        using var scope = Torch.NewScope();
        var p = Param(P0);
        var alias = p.Alias();  // another handle to the same tensor, to read the values
        using var opt = new SGD([p], lr: 0.1, momentum: 0.9);
        p.Dispose();

        (alias * Torch.FromArray(G1)).Sum().Backward();
        opt.Step();
        opt.ZeroGrad();
        (alias * Torch.FromArray(G2)).Sum().Backward();
        opt.Step();
        // Same as the momentum test's first two steps.
        Expect.Close([0.93, -2.01], Values(alias), Tight);
        Assert.That(opt.ParamGroups[0].Parameters[0].IsDisposed, Is.True, "the group still lists the caller's (disposed) object");
    }

    [Test]
    public void StepAndZeroGradCreateNoHandles()
    {
        using var p = Param(1.0, 2.0);
        using var opt = new AdamW([p], amsgrad: true);
        SetGrad(p, 1.0, 1.0);
        var start = LiveTensorCount.Settled();
        for (var i = 0; i < 100; i++) opt.Step();
        opt.ZeroGrad();
        Assert.That(Torch.LiveTensors, Is.EqualTo(start));
    }

    [Test]
    public void ADisposedOptimizerThrowsObjectDisposed()
    {
        using var scope = Torch.NewScope();
        var opt = new SGD([Param(1.0)], lr: 0.1);
        var group = opt.ParamGroups[0];
        opt.Dispose();
        opt.Dispose();  // idempotent
        Assert.That(opt.IsDisposed, Is.True);
        Assert.Throws<ObjectDisposedException>(() => opt.Step());
        Assert.Throws<ObjectDisposedException>(() => opt.ZeroGrad());
        Assert.Throws<ObjectDisposedException>(() => opt.State(0, 0, "step"));
        Assert.Throws<ObjectDisposedException>(() => group.Lr = 0.5);
        Assert.That(group.Lr, Is.EqualTo(0.1));
    }
}
