using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using SharpLens.Reference;
using SharpLens.Tensors.Optim;

namespace SharpLens.Verification;

/// <summary>How bad a failed check is.</summary>
[JsonConverter(typeof(JsonStringEnumConverter))]
public enum Severity
{
    /// <summary>Informational.</summary>
    Info,
    /// <summary>Worth a look.</summary>
    Warning,
    /// <summary>Results built on this are suspect.</summary>
    Danger,
    /// <summary>The model is wrong.</summary>
    Error,
}

/// <summary>One check: its figures and whether they are within tolerance.</summary>
public sealed record VerificationResult(
    string Name,
    Severity Severity,
    bool Passed,
    double MaxAbsDiff,
    double MaxRelDiff,
    int HooksCompared,
    double Tolerance,
    string Detail);

/// <summary>Every check's result; <see cref="Passed"/> only when all passed.</summary>
public sealed record VerificationReport(string Model, string DType, IReadOnlyList<VerificationResult> Results)
{
    /// <summary>True when every check passed.</summary>
    public bool Passed => Results.All(r => r.Passed);

    /// <summary>The report as indented JSON.</summary>
    public string ToJson() => JsonSerializer.Serialize(this, new JsonSerializerOptions { WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower });

    /// <summary>A fixed-width table, one row per check.</summary>
    public string ToTable()
    {
        var sb = new StringBuilder();
        sb.AppendLine($"verification of {Model} ({DType})");
        sb.AppendLine($"{"check",-36} {"severity",-8} {"result",-6} {"max abs",10} {"max rel",10} {"hooks",6} {"tolerance",10}");
        foreach (var r in Results)
            sb.AppendLine($"{r.Name,-36} {r.Severity.ToString().ToLowerInvariant(),-8} {(r.HooksCompared == 0 && r.Passed ? "n/a" : r.Passed ? "pass" : "FAIL"),-6} {r.MaxAbsDiff,10:G3} {r.MaxRelDiff,10:G3} {r.HooksCompared,6} {r.Tolerance,10:G3}");
        sb.Append(Passed ? "all checks passed" : $"{Results.Count(r => !r.Passed)} of {Results.Count} checks failed: {string.Join(", ", Results.Where(r => !r.Passed).Select(r => r.Name))}");
        return sb.ToString();
    }
}

/// <summary>
/// Compares the <see cref="TransformerBridge"/> with the independent <see cref="HookedTransformer"/>: logits,
/// every forward hook, every backward hook (for two objectives), parameter gradients (HF names against TL
/// names through the adapter's conversions), AdamW parity after 1 and 10 steps, and weight processing.
/// No hook is excluded.
/// </summary>
public static class VerificationSuite
{
    /// <summary>Tolerance per dtype: absolute, scaled by the magnitude of the compared values where it exceeds 1.</summary>
    public static double ToleranceFor(ScalarType dtype) => dtype == ScalarType.Float64 ? 1e-10 : 1e-4;

    /// <summary>Loads the model twice (bridge and reference) and runs every check on a deterministic random batch.</summary>
    public static VerificationReport Run(string modelDirectory, ScalarType dtype = ScalarType.Float32, Tensor? tokens = null)
    {
        var options = new BridgeOptions { DType = dtype, AllOptionalHooks = true };
        using var bridge = Prepare(TransformerBridge.Load(modelDirectory, options));
        using var reference = HookedTransformer.FromBridge(bridge);
        using var scope = Torch.NewScope();
        tokens ??= DefaultTokens(bridge.Config);
        return Run(bridge, reference, tokens, modelDirectory);
    }

    /// <summary>
    /// Readies a bridge for the suite (call before making the reference from it): both implementations then compute in the
    /// model's dtype throughout. The float32 islands that reproduce HuggingFace's own float64 runs of the Llama family
    /// (<see cref="TransformerConfig.Float32Islands"/>) are a property of HuggingFace's code, not of the math the two
    /// implementations are checked on, and they would hold a float64 comparison to float32 rounding.
    /// </summary>
    public static TransformerBridge Prepare(TransformerBridge bridge)
    {
        bridge.Config.Float32Islands = false;
        return bridge;
    }

    /// <summary>
    /// How far two correct float32 AdamW runs (betas 0.9, 0.999) may move one element apart in <paramref name="steps"/> steps:
    /// 2 · lr · Σ_t bound_t, where bound_t bounds |m̂_t / √v̂_t|. Where an element's gradient is at float32 rounding level (the
    /// key slice of a qkv bias has a mathematically zero gradient) rounding decides the sign of its update, so the two runs
    /// may step it in opposite directions each time. By Cauchy–Schwarz over Adam's exponential weights,
    /// bound_t = sqrt(Σ_i (1−β1)² β1^(2(t−i)) / ((1−β2) β2^(t−i))) · sqrt(1−β2^t) / (1−β1^t): 1 at t = 1, at most 1.05 up to
    /// t = 10. Weight decay adds lr · wd · |Δp| per step (1% allowed). So 2.0e-3 after one step at lr 1e-3, 2.1e-2 after ten.
    /// </summary>
    public static double AdamWFloat32Bound(int steps, double lr, double beta1 = 0.9, double beta2 = 0.999)
    {
        double total = 0;
        for (var t = 1; t <= steps; t++) total += AdamStepBound(t, beta1, beta2);
        return 2 * lr * total * 1.01;
    }

    /// <summary>The bound on |m̂_t / √v̂_t| of <see cref="AdamWFloat32Bound"/>.</summary>
    public static double AdamStepBound(int t, double beta1 = 0.9, double beta2 = 0.999)
    {
        double sum = 0;
        for (var i = 1; i <= t; i++)
            sum += Math.Pow(1 - beta1, 2) * Math.Pow(beta1, 2 * (t - i)) / ((1 - beta2) * Math.Pow(beta2, t - i));
        return Math.Sqrt(sum) * Math.Sqrt(1 - Math.Pow(beta2, t)) / (1 - Math.Pow(beta1, t));
    }

    /// <summary>A [2, 12] batch of token ids from a fixed seed.</summary>
    public static Tensor DefaultTokens(TransformerConfig config)
    {
        using var g = new Generator(1234);
        return Torch.RandInt(0, config.DVocab, [2, Math.Min(12, config.NCtx)], g);
    }

    /// <summary>Runs every check on given models (the reference is stepped by the optimizer check: pass fresh copies).</summary>
    public static VerificationReport Run(TransformerBridge bridge, HookedTransformer reference, Tensor tokens, string modelName)
    {
        if (bridge.Config.Float32Islands || reference.Config.Float32Islands)
            throw new ArgumentException("the verification suite compares float64 arithmetic: call VerificationSuite.Prepare(bridge) " +
                                        "before making the reference (Float32Islands is on)");
        var dtype = bridge.Parameters()[0].DType;
        var tol = ToleranceFor(dtype);
        var results = new List<VerificationResult>();
        using (var scope = Torch.NewScope())
        {
            var (bLogits, bCache) = bridge.RunWithCache(tokens, null, null, LastLogitsSum);
            var (rLogits, rCache) = reference.RunWithCache(tokens, null, null, LastLogitsSum);
            using (bCache)
            using (rCache)
            {
                results.Add(Compare("forward_logits", Severity.Error, [("logits", rLogits, bLogits)], tol, ""));
                var forward = bCache.Keys.Where(k => !k.EndsWith("_grad")).OrderBy(k => k).ToList();
                results.Add(Compare("forward_hooks", Severity.Danger, Pairs(forward, rCache, bCache), tol,
                    MissingDetail(forward, rCache)));
                var critical = forward.Where(IsCritical).ToList();
                results.Add(Compare("critical_hooks", Severity.Error, Pairs(critical, rCache, bCache), tol, ""));
                var backward = bCache.Keys.Where(k => k.EndsWith("_grad")).OrderBy(k => k).ToList();
                results.Add(Compare("backward_hooks_last_logits_sum", Severity.Danger, Pairs(backward, rCache, bCache), tol,
                    MissingDetail(backward, rCache)));
                results.Add(ParameterGradients("parameter_gradients_last_logits_sum", bridge, reference, tol));
            }
            ZeroGrads(bridge, reference);
        }
        // A one-token batch has no next-token loss (HuggingFace's is NaN): the checks built on it do not apply and say so.
        var hasLoss = tokens.Size(1) >= 2;
        if (hasLoss)
        {
            using (var scope = Torch.NewScope())
            {
                var (_, bCache) = bridge.RunWithCache(tokens, null, null, l => bridge.LossOf(l, tokens));
                var (_, rCache) = reference.RunWithCache(tokens, null, null, l => reference.LossOf(l, tokens));
                using (bCache)
                using (rCache)
                {
                    var backward = bCache.Keys.Where(k => k.EndsWith("_grad")).OrderBy(k => k).ToList();
                    results.Add(Compare("backward_hooks_loss", Severity.Danger, Pairs(backward, rCache, bCache), tol, MissingDetail(backward, rCache)));
                    results.Add(ParameterGradients("parameter_gradients_loss", bridge, reference, tol));
                }
                ZeroGrads(bridge, reference);
            }
        }
        else
        {
            results.AddRange(new[] { "backward_hooks_loss", "parameter_gradients_loss" }.Select(NotApplicable));
        }
        results.Add(WeightProcessingCheck(bridge, tokens, tol));
        if (hasLoss) results.AddRange(OptimizerParity(bridge, reference, tokens, tol));
        else results.AddRange(new[] { "adamw_step1_weights", "adamw_step10_weights", "adamw_losses" }.Select(NotApplicable));
        return new VerificationReport(modelName, dtype.ToTorchName(), results);
    }

    private static Tensor LastLogitsSum(Tensor logits) => logits.Select(1, -1).Sum();

    /// <summary>A check that does not apply to this batch: it compares nothing and is not counted as a failure.</summary>
    private static VerificationResult NotApplicable(string name) =>
        new(name, Severity.Info, true, 0, 0, 0, 0, "not applicable: a one-token batch has no next-token loss");

    private static bool IsCritical(string hook) =>
        hook.EndsWith("hook_resid_pre") || hook.EndsWith("hook_resid_post") || hook.EndsWith("hook_attn_out") || hook.EndsWith("hook_mlp_out")
        || hook.EndsWith("hook_pattern") || hook == "hook_embed" || hook == "ln_final.hook_normalized";

    private static IEnumerable<(string, Tensor, Tensor)> Pairs(IEnumerable<string> names, ActivationCache reference, ActivationCache bridge) =>
        names.Where(reference.ContainsKey).Select(n => (n, reference[n], bridge[n]));

    private static string MissingDetail(IEnumerable<string> names, ActivationCache reference)
    {
        var missing = names.Where(n => !reference.ContainsKey(n)).ToList();
        return missing.Count == 0 ? "" : "reference lacks: " + string.Join(", ", missing);
    }

    /// <summary>Max absolute and relative differences over pairs; -inf entries (masked scores) must match exactly.</summary>
    private static VerificationResult Compare(string name, Severity severity, IEnumerable<(string Name, Tensor Expected, Tensor Actual)> pairs, double tol,
        string detail, bool detailIsFailure = true)
    {
        double maxAbs = 0, maxRel = 0;
        var count = 0;
        var failures = new List<string>();
        foreach (var (what, expected, actual) in pairs)
        {
            count++;
            using var scope = Torch.NewScope();
            if (!expected.Shape.SequenceEqual(actual.Shape))
            {
                failures.Add($"{what}: shapes {Tensor.FormatShape(expected.Shape)} vs {Tensor.FormatShape(actual.Shape)}");
                maxAbs = double.PositiveInfinity;
                continue;
            }
            var e = expected.To(Device.CPU, ScalarType.Float64);  // one device for the comparison, whichever each side ran on
            var a = actual.To(Device.CPU, ScalarType.Float64);
            var sameInf = e.IsFinite().LogicalNot().LogicalAnd(e.Eq(a));
            var diff = (e - a).Abs().MaskedFill(sameInf, 0);
            var abs = diff.NumEl == 0 ? 0 : diff.Max().ToDouble();
            var magnitude = e.NumEl == 0 ? 1 : Math.Max(1, e.Abs().MaskedFill(sameInf, 0).Max().ToDouble());
            var rel = abs / magnitude;
            if (double.IsNaN(abs) || abs > tol * magnitude) failures.Add($"{what}: {abs:G3} at magnitude {magnitude:G3}");
            maxAbs = Math.Max(maxAbs, double.IsNaN(abs) ? double.PositiveInfinity : abs);
            maxRel = Math.Max(maxRel, double.IsNaN(rel) ? double.PositiveInfinity : rel);
        }
        var passed = failures.Count == 0 && count > 0 && (!detailIsFailure || detail.Length == 0);
        var text = string.Join("; ", new[] { count == 0 ? "nothing compared" : "", detail, failures.Count > 0 ? "failing: " + string.Join("; ", failures.Take(5)) : "" }.Where(s => s.Length > 0));
        return new VerificationResult(name, severity, passed, maxAbs, maxRel, count, tol, text);
    }

    /// <summary>
    /// The reference's TL-named gradients mapped to HF layout through the adjoint of the adapter's conversions
    /// (computed by autograd through the conversions themselves, so splits and tied weights add up correctly),
    /// against the bridge's HF leaf gradients.
    /// </summary>
    private static VerificationResult ParameterGradients(string name, TransformerBridge bridge, HookedTransformer reference, double tol)
    {
        using var scope = Torch.NewScope();
        var pairs = new List<(string, Tensor, Tensor)>();
        var tlWeights = bridge.Adapter.TlWeights(bridge.Config).Where(w => w.HfName is not null).ToList();
        foreach (var (hfName, param) in bridge.NamedParameters())
        {
            var probe = Torch.Zeros(param.Shape, param.DType, param.Device, requiresGrad: true);
            Tensor? total = null;
            foreach (var w in tlWeights.Where(w => w.HfName == hfName))
            {
                var refGrad = ReferenceGrad(reference, w.TlName);
                if (refGrad is null) continue;
                var term = (w.Conversion.Apply(probe) * refGrad).Sum();
                total = total is null ? term : total + term;
            }
            if (total is null)
            {
                pairs.Add((hfName, Torch.Full([1], double.NaN, ScalarType.Float64), Torch.Zeros([1], ScalarType.Float64)));
                continue;
            }
            var mapped = Torch.Autograd.Grad([total], [probe])[0]!;
            pairs.Add((hfName, mapped, param.Grad ?? Torch.Zeros(param.Shape, param.DType, param.Device)));
        }
        return Compare(name, Severity.Danger, pairs, tol, "");
    }

    /// <summary>The reference's gradient for a TL weight; a tied W_U's share is in W_E's leaf already.</summary>
    private static Tensor? ReferenceGrad(HookedTransformer reference, string tlName) => reference.LeafGradient(tlName);

    private static void ZeroGrads(TransformerBridge bridge, HookedTransformer reference)
    {
        foreach (var p in bridge.Parameters()) p.Grad = null;
        foreach (var p in reference.Parameters()) p.Grad = null;
    }

    /// <summary>TransformerLens's default processing keeps log-probabilities (centering the unembedding shifts logits by a per-position constant).</summary>
    private static VerificationResult WeightProcessingCheck(TransformerBridge bridge, Tensor tokens, double tol)
    {
        using var processed = HookedTransformer.FromBridge(bridge, WeightProcessing.Default);
        using var scope = Torch.NewScope();
        using var noGrad = Torch.NoGrad();
        var a = bridge.Forward(tokens).LogSoftmax(-1);
        var b = processed.Forward(tokens).LogSoftmax(-1);
        return Compare("weight_processing_log_probs", Severity.Warning, [("log_softmax(logits)", a, b)], tol, "");
    }

    /// <summary>AdamW (lr 1e-3, weight decay 0.01) on the bridge's Parameters() and on the reference's own leaves: losses and weights after 1 and 10 steps.</summary>
    private static IEnumerable<VerificationResult> OptimizerParity(TransformerBridge bridge, HookedTransformer reference, Tensor tokens, double tol)
    {
        var dtype = bridge.Parameters()[0].DType;
        // Step copies, so the caller's models are left as they were.
        var snapshot = bridge.NamedParameters().ToDictionary(p => p.Name, p => p.Parameter.Detach().Clone().DetachFromScope());
        using var refCopy = HookedTransformer.FromBridge(bridge);
        var results = new List<VerificationResult>();
        try
        {
            using var bridgeOpt = new AdamW(bridge.Parameters(), lr: 1e-3, weightDecay: 0.01);
            using var refOpt = new AdamW(refCopy.Parameters(), lr: 1e-3, weightDecay: 0.01);
            var bLosses = new List<double>();
            var rLosses = new List<double>();
            for (var step = 1; step <= 10; step++)
            {
                using var scope = Torch.NewScope();
                bridgeOpt.ZeroGrad();
                refOpt.ZeroGrad();
                var bl = bridge.Loss(tokens);
                var rl = refCopy.Loss(tokens);
                bLosses.Add(bl.ToDouble());
                rLosses.Add(rl.ToDouble());
                bl.Backward();
                rl.Backward();
                bridgeOpt.Step();
                refOpt.Step();
                if (step is 1 or 10)
                {
                    var tl = bridge.TlNamedParameters();
                    var pairs = tl.Where(t => refCopy.NamedWeights().Any(p => p.Name == t.Name))
                        .Select(t => (t.Name, refCopy.W(t.Name), t.Weight)).ToList();
                    // float64 holds both AdamW runs to rounding; float32 to the derived bound on how far rounding-level
                    // gradients can steer two correct runs apart (AdamWFloat32Bound).
                    var weightTol = dtype == ScalarType.Float64 ? tol : AdamWFloat32Bound(step, 1e-3);
                    results.Add(Compare($"adamw_step{step}_weights", Severity.Danger, pairs, weightTol,
                        dtype == ScalarType.Float64 ? "" : $"float32 bound 2·lr·Σ|m̂/√v̂| = {weightTol:G3}", detailIsFailure: false));
                }
            }
            using var scope2 = Torch.NewScope();
            results.Add(Compare("adamw_losses", Severity.Danger,
                [("losses", Torch.FromArray(rLosses.ToArray()), Torch.FromArray(bLosses.ToArray()))], tol, ""));
        }
        finally
        {
            using (Torch.NoGrad())
                foreach (var (name, p) in bridge.NamedParameters())
                {
                    p.CopyFrom(snapshot[name]);
                    p.Grad = null;
                    snapshot[name].Dispose();
                }
        }
        return results;
    }
}
