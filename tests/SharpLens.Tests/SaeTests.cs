using SharpLens.Testing;
using System.Text.Json.Nodes;
using SharpLens.Saes;
using SharpLens.Tensors.IO;

namespace SharpLens.Tests;

/// <summary>
/// Sparse autoencoders in SAELens's on-disk format, written here (cfg.json + sae_weights.safetensors), against a forward pass
/// computed by hand in plain C# double loops from the same numbers: every architecture (standard ReLU and tanh-ReLU, JumpReLU,
/// top-k, gated), every run-time normalisation, without <c>apply_b_dec_to_input</c>, and on hook_z. Then spliced into the
/// fixture models: reconstruction plus error equals the activation the SAE read, the logits are those of the model without it
/// while the error term is kept, ablating a feature equals subtracting its decoder direction, feature gradients equal central
/// differences, and attribution patching is exact where the metric is linear in the features.
/// </summary>
public class SaeTests : TempFolderTest
{
    /// <summary>Plain weights of an SAE, row-major, as the hand-written forward pass reads them.</summary>
    private sealed class Weights
    {
        public required int DIn, DSae;
        public required double[] WEnc, BEnc, WDec, BDec, Threshold, BGate, RMag, BMag;

        public static Weights Random(int dIn, int dSae, int seed)
        {
            var rng = new Random(seed);
            double[] R(int n, double scale, double shift = 0) => Enumerable.Range(0, n).Select(_ => shift + scale * (rng.NextDouble() * 2 - 1)).ToArray();
            return new Weights
            {
                DIn = dIn, DSae = dSae, WEnc = R(dIn * dSae, 0.3), BEnc = R(dSae, 0.2), WDec = R(dSae * dIn, 0.3), BDec = R(dIn, 0.2),
                Threshold = R(dSae, 0.1, 0.1), BGate = R(dSae, 0.2), RMag = R(dSae, 0.3), BMag = R(dSae, 0.2),
            };
        }
    }

    /// <summary>Writes an SAE folder the way SAELens does (cfg.json and sae_weights.safetensors), float64 weights.</summary>
    private string WriteSae(string name, Weights w, JsonObject cfg)
    {
        var dir = Path.Combine(Tmp, name);
        Directory.CreateDirectory(dir);
        cfg["d_in"] = w.DIn;
        cfg["d_sae"] = w.DSae;
        cfg["dtype"] ??= "float64";
        File.WriteAllText(Path.Combine(dir, "cfg.json"), cfg.ToJsonString());
        using var scope = Torch.NewScope();
        var tensors = new Dictionary<string, Tensor>
        {
            ["W_enc"] = Torch.FromArray(w.WEnc, w.DIn, w.DSae), ["W_dec"] = Torch.FromArray(w.WDec, w.DSae, w.DIn), ["b_dec"] = Torch.FromArray(w.BDec),
        };
        var architecture = (string?)cfg["architecture"] ?? "standard";
        if (architecture == "gated")
        {
            tensors["b_gate"] = Torch.FromArray(w.BGate);
            tensors["r_mag"] = Torch.FromArray(w.RMag);
            tensors["b_mag"] = Torch.FromArray(w.BMag);
        }
        else tensors["b_enc"] = Torch.FromArray(w.BEnc);
        if (architecture == "jumprelu") tensors["threshold"] = Torch.FromArray(w.Threshold);
        SafeTensors.Save(Path.Combine(dir, "sae_weights.safetensors"), tensors);
        return dir;
    }

    /// <summary>SAELens's forward pass for one input vector, by hand: returns (feature activations, reconstruction).</summary>
    private static (double[] Acts, double[] Recons) HandForward(Weights w, double[] x, string architecture, string activation, int k,
        string normalization, bool applyBDec, double scalingFactor = 1)
    {
        int n = w.DIn, m = w.DSae;
        var xs = (double[])x.Clone();
        double coeff = 1, mu = 0, std = 1;
        switch (normalization)
        {
            case "constant_norm_rescale":
                coeff = Math.Sqrt(n) / Math.Sqrt(xs.Sum(v => v * v));
                for (var i = 0; i < n; i++) xs[i] *= coeff;
                break;
            case "layer_norm":
                mu = xs.Average();
                std = Math.Sqrt(xs.Sum(v => (v - mu) * (v - mu)) / (n - 1));
                for (var i = 0; i < n; i++) xs[i] = (xs[i] - mu) / (std + 1e-5);
                break;
            case "expected_average_only_in":
                for (var i = 0; i < n; i++) xs[i] *= scalingFactor;
                break;
        }
        var sIn = xs.Select((v, i) => applyBDec ? v - w.BDec[i] : v).ToArray();
        double Dot(int j, Func<int, int, double> weight) => Enumerable.Range(0, n).Sum(i => sIn[i] * weight(i, j));
        var acts = new double[m];
        if (architecture == "gated")
        {
            for (var j = 0; j < m; j++)
            {
                var gate = Dot(j, (i, jj) => w.WEnc[i * m + jj]) + w.BGate[j] > 0 ? 1.0 : 0.0;
                var magnitude = Math.Max(0, Dot(j, (i, jj) => w.WEnc[i * m + jj] * Math.Exp(w.RMag[jj])) + w.BMag[j]);
                acts[j] = gate * magnitude;
            }
        }
        else
        {
            var pre = Enumerable.Range(0, m).Select(j => Dot(j, (i, jj) => w.WEnc[i * m + jj]) + w.BEnc[j]).ToArray();
            for (var j = 0; j < m; j++)
                acts[j] = architecture switch
                {
                    "jumprelu" => pre[j] > w.Threshold[j] ? Math.Max(0, pre[j]) : 0,
                    "topk" => 0,
                    _ => activation == "tanh-relu" ? Math.Tanh(Math.Max(0, pre[j])) : Math.Max(0, pre[j]),
                };
            if (architecture == "topk")
                foreach (var j in Enumerable.Range(0, m).OrderByDescending(j => pre[j]).Take(k))
                    acts[j] = Math.Max(0, pre[j]);
        }
        var recons = new double[n];
        for (var i = 0; i < n; i++)
        {
            var v = w.BDec[i] + Enumerable.Range(0, m).Sum(j => acts[j] * w.WDec[j * n + i]);
            recons[i] = normalization switch
            {
                "constant_norm_rescale" => v / coeff,
                "layer_norm" => v * std + mu,
                "expected_average_only_in" => v / scalingFactor,
                _ => v,
            };
        }
        return (acts, recons);
    }

    public static IEnumerable<TestCaseData> Variants()
    {
        // architecture, activation, k, normalization, apply_b_dec_to_input
        yield return new TestCaseData("standard", "relu", 0, "none", true);
        yield return new TestCaseData("standard", "tanh-relu", 0, "none", false);
        yield return new TestCaseData("jumprelu", "relu", 0, "none", true);
        yield return new TestCaseData("topk", "topk", 5, "none", true);
        yield return new TestCaseData("gated", "relu", 0, "none", true);
        yield return new TestCaseData("standard", "relu", 0, "constant_norm_rescale", true);
        yield return new TestCaseData("standard", "relu", 0, "layer_norm", true);
        yield return new TestCaseData("standard", "relu", 0, "expected_average_only_in", true);
    }

    [TestCaseSource(nameof(Variants))]
    public void ForwardMatchesTheHandComputedOne(string architecture, string activation, int k, string normalization, bool applyBDec)
    {
        var w = Weights.Random(8, 12, seed: architecture.Length * 31 + normalization.Length);
        var cfg = new JsonObject
        {
            ["architecture"] = architecture, ["activation_fn_str"] = activation, ["hook_name"] = "blocks.0.hook_resid_pre",
            ["apply_b_dec_to_input"] = applyBDec, ["normalize_activations"] = normalization,
        };
        if (k > 0) cfg["activation_fn_kwargs"] = new JsonObject { ["k"] = k };
        const double factor = 1.7;
        if (normalization == "expected_average_only_in") cfg["norm_scaling_factor"] = factor;
        var dir = WriteSae($"{architecture}-{activation}-{normalization}-{applyBDec}", w, cfg);

        var live = LiveTensorCount.Settled();
        using (var sae = Sae.Load(dir))
        using (var scope = Torch.NewScope())
        {
            Assert.That(sae.DType, Is.EqualTo(ScalarType.Float64));
            var rng = new Random(5);
            var inputs = Enumerable.Range(0, 2 * 3 * 8).Select(_ => rng.NextDouble() * 2 - 1).ToArray();
            var x = Torch.FromArray(inputs, 2, 3, 8);
            var acts = sae.Encode(x).ToArray<double>();
            var output = sae.Forward(x).ToArray<double>();
            Assert.That(sae.Decode(sae.Encode(x), x).ToArray<double>(), Is.EqualTo(output).Within(1e-13), "decode(encode(x)) is the forward pass");
            for (var r = 0; r < 6; r++)
            {
                var (handActs, handRecons) = HandForward(w, inputs.Skip(r * 8).Take(8).ToArray(), architecture, activation, k, normalization, applyBDec, factor);
                for (var j = 0; j < 12; j++) Assert.That(acts[r * 12 + j], Is.EqualTo(handActs[j]).Within(1e-12), $"row {r} feature {j}");
                for (var i = 0; i < 8; i++) Assert.That(output[r * 8 + i], Is.EqualTo(handRecons[i]).Within(1e-12), $"row {r} reconstruction {i}");
            }
            if (architecture == "topk") Assert.That(acts.Chunk(12).All(row => row.Count(a => a != 0) <= k), "at most k features active");
        }
        Assert.That(Torch.LiveTensors, Is.EqualTo(live), "tensors leaked");
    }

    [Test]
    public void HookZSaeReadsHeadsFlattened()
    {
        var w = Weights.Random(64, 10, seed: 3);
        var dir = WriteSae("hook-z", w, new JsonObject { ["architecture"] = "standard", ["hook_name"] = "blocks.1.attn.hook_z" });
        using var sae = Sae.Load(dir);
        using var scope = Torch.NewScope();
        var rng = new Random(8);
        var inputs = Enumerable.Range(0, 3 * 4 * 16).Select(_ => rng.NextDouble() - 0.5).ToArray();
        var x = Torch.FromArray(inputs, 3, 4, 16);
        var output = sae.Forward(x);
        Assert.That(output.Shape, Is.EqualTo(new long[] { 3, 4, 16 }));
        var values = output.ToArray<double>();
        for (var r = 0; r < 3; r++)
        {
            var (_, recons) = HandForward(w, inputs.Skip(r * 64).Take(64).ToArray(), "standard", "relu", 0, "none", true);
            for (var i = 0; i < 64; i++) Assert.That(values[r * 64 + i], Is.EqualTo(recons[i]).Within(1e-12));
        }
    }

    private string SaeOn(string hook, int dIn, int dSae, int seed, string dtype = "float64") =>
        WriteSae($"{hook}-{dSae}-{seed}-{dtype}", Weights.Random(dIn, dSae, seed), new JsonObject { ["hook_name"] = hook, ["architecture"] = "standard", ["dtype"] = dtype });

    [TestCase("tiny-gpt2", ScalarType.Float64, 1e-12, 1e-10)]
    [TestCase("tiny-pythia", ScalarType.Float64, 1e-12, 1e-10)]
    [TestCase("tiny-gpt2", ScalarType.Float32, 1e-6, 1e-5)]
    public void SplicedWithTheErrorTermTheModelIsUnchanged(string model, ScalarType dtype, double activationBound, double logitBound)
    {
        // float32 bounds: recons + (x − recons) rounds to x within an ulp of the larger term (|x|, |recons| < 4: 4.8e-7), below 1e-6;
        // an ulp-level change of the residual moves float32 logits (|logit| < 3) by a few ulps more through two layers: 1e-5.
        var dir = SaeOn("blocks.1.hook_resid_pre", 64, 32, seed: 7, dtype.ToTorchName());
        using var fx = new AnalysisFixture(model);
        using var bridge = TransformerBridge.Load(Fixtures.Path(model), new BridgeOptions { DType = dtype });
        using var sae = Sae.Load(dir);
        using var scope = Torch.NewScope();
        var tokens = fx["input_ids"];
        var plainForward = bridge.Forward(tokens);
        var (plainLogits, plain) = bridge.RunWithCache(tokens);
        using (plain)
        using (var splice = bridge.Splice(sae, useErrorTerm: true))
        {
            var (logits, cache) = splice.RunWithCache(tokens);
            using (cache)
            {
                var original = plain["blocks.1.hook_resid_pre"];
                var sum = cache["blocks.1.hook_resid_pre.hook_sae_recons"] + cache["blocks.1.hook_resid_pre.hook_sae_error"];
                Assert.That(Fixtures.MaxAbsDiff(original, sum), Is.LessThanOrEqualTo(activationBound), "recons + error = the activation");
                Assert.That(Fixtures.MaxAbsDiff(original, cache["blocks.1.hook_resid_pre.hook_sae_input"]), Is.EqualTo(0), "the SAE read the activation");
                Assert.That(Fixtures.MaxAbsDiff(plainLogits, logits), Is.LessThanOrEqualTo(logitBound), "logits unchanged with the error term");
                Assert.That(cache["blocks.1.hook_resid_pre.hook_sae_acts_post"].Shape, Is.EqualTo(new long[] { 2, 12, 32 }));
            }
            splice.UseErrorTerm = false;
            Assert.That(Fixtures.MaxAbsDiff(plainForward, bridge.Forward(tokens)), Is.GreaterThan(1e-3), "without the error term the reconstruction shows");
        }
        Assert.That(Fixtures.MaxAbsDiff(plainForward, bridge.Forward(tokens)), Is.EqualTo(0), "unspliced again");
    }

    [Test]
    public void GradientCachingWithTheErrorTermSkipsOnlyTheErrorTerm()
    {
        // SAELens computes the error term without a graph, so a gradient hook there never fires; every other hook point's
        // gradient is cached as usual.
        using var rig = new Rig(this, "tiny-gpt2", "blocks.0.hook_resid_post", 24, 11);
        using var scope = Torch.NewScope();
        using var splice = rig.Bridge.Splice(rig.Sae, useErrorTerm: true);
        var (_, cache) = splice.RunWithCache(rig.Fixture["input_ids"], null, l => l.Select(1, -1).Sum());
        using (cache)
        {
            Assert.That(cache.Keys, Does.Contain("blocks.0.hook_resid_post.hook_sae_acts_post_grad"));
            Assert.That(cache.Keys, Does.Contain("blocks.0.hook_resid_post.hook_sae_error"));
            Assert.That(cache.Keys, Does.Not.Contain("blocks.0.hook_resid_post.hook_sae_error_grad"));
        }
    }

    [Test]
    public void AnSaeGoesToTheModelsDeviceOrIsRefusedByName()
    {
        var dir = SaeOn("blocks.0.hook_resid_post", 64, 16, 5);
        using var bridge = TransformerBridge.Load(Fixtures.Path("tiny-gpt2")).To(Device.Meta);
        using (var onCpu = Sae.Load(dir))
            Assert.That(() => bridge.Splice(onCpu), Throws.ArgumentException.With.Message.Contain("cpu").And.Message.Contain("meta"));
        using var onMeta = Sae.Load(dir, device: Device.Meta);
        Assert.That(onMeta.WDec.Device, Is.EqualTo(Device.Meta));
        // Splicing is accepted; a forward on meta is not run here (libtorch 1.13 has no meta kernel for the SAE's ReLU).
        using var splice = bridge.Splice(onMeta, useErrorTerm: true);
        Assert.That(splice.Sae, Is.SameAs(onMeta));
    }

    [Test]
    public void AblatingAFeatureSubtractsItsDecoderDirection()
    {
        using var rig = new Rig(this, "tiny-gpt2", "blocks.0.hook_resid_post", 24, 11);
        var (fx, bridge, sae) = (rig.Fixture, rig.Bridge, rig.Sae);
        using var scope = Torch.NewScope();
        var tokens = fx["input_ids"];
        using var splice = bridge.Splice(sae, useErrorTerm: true);
        var (_, cache) = splice.RunWithCache(tokens, n => n.EndsWith("hook_sae_acts_post"));
        using (cache)
        {
            var acts = cache["blocks.0.hook_resid_post.hook_sae_acts_post"];
            // Feature with the largest total activation, zeroed at every position through the SAE's hook point.
            var feature = (int)acts.Sum([0, 1]).Argmax().ToInt64();
            Tensor ablated;
            using (sae.AddHook("hook_sae_acts_post", (a, _) => TransformerOps.Ablate(a, 2, [feature], 1, null)))
                ablated = bridge.Forward(tokens);
            splice.Dispose();
            var delta = acts.Select(2, feature).Unsqueeze(-1) * sae.WDec.Select(0, feature);  // [batch, pos, d_model]
            var expected = bridge.RunWithHooks(tokens, [("blocks.0.hook_resid_post", (a, _) => a - delta)]);
            Assert.That(Fixtures.MaxAbsDiff(expected, ablated), Is.LessThan(1e-10));
        }
    }

    [Test]
    public void FeatureGradientsEqualCentralDifferences()
    {
        using var rig = new Rig(this, "tiny-pythia", "blocks.0.hook_resid_post", 16, 13);
        var (fx, bridge, sae) = (rig.Fixture, rig.Bridge, rig.Sae);
        using var scope = Torch.NewScope();
        var tokens = fx["input_ids"];
        var metric = Patching.LogitDiff(Torch.FromArray(new long[] { 3, 5 }), Torch.FromArray(new long[] { 7, 9 }));
        using var splice = bridge.Splice(sae, useErrorTerm: true);
        var (acts, grads) = SaeAttribution.FeatureGradients(splice, tokens, metric);
        Assert.That(bridge.Parameters().All(p => p.RequiresGrad && p.Grad is null), "parameters restored, no gradient computed for them");
        const double eps = 1e-5;
        double Metric(int b, int p, int f, double step)
        {
            using var s = Torch.NewScope();
            using (sae.AddHook("hook_sae_acts_post", (a, _) =>
            {
                var bump = Torch.Zeros(a.Shape, a.DType);
                bump.Select(0, b).Select(0, p).Select(0, f).Fill(step);
                return a + bump;
            }))
                return metric(bridge.Forward(tokens)).Sum().ToDouble();
        }
        // Central differences: error O(eps² f''') + rounding 1e-16 / eps, far below 1e-7.
        foreach (var (b, p, f) in new[] { (0, 11, 0), (1, 11, 5), (0, 4, 9), (1, 0, 15), (1, 7, 3) })
        {
            var numeric = (Metric(b, p, f, eps) - Metric(b, p, f, -eps)) / (2 * eps);
            var analytic = grads.Select(0, b).Select(0, p).Select(0, f).ToDouble();
            Assert.That(analytic, Is.EqualTo(numeric).Within(1e-7), $"d metric / d feature {f} at ({b}, {p})");
        }
        Assert.That(acts.Shape, Is.EqualTo(new long[] { 2, 12, 16 }));
    }

    [Test]
    public void AttributionPatchingIsExactWhereTheMetricIsLinearInTheFeatures()
    {
        // The logits are affine in ln_final.hook_normalized, so through an SAE there (error term kept) the metric is linear in the
        // features: the estimate must equal exact patching of one feature's clean activation into the corrupted run.
        using var rig = new Rig(this, "tiny-gpt2", "ln_final.hook_normalized", 16, 17);
        var (fx, bridge, sae) = (rig.Fixture, rig.Bridge, rig.Sae);
        using var scope = Torch.NewScope();
        var clean = fx["input_ids"];
        var corrupted = PatchingTests.Roll(clean);
        var metric = Patching.LogitDiff(Torch.FromArray(new long[] { 3 }), Torch.FromArray(new long[] { 7 }));
        using var splice = bridge.Splice(sae, useErrorTerm: true);
        var estimate = SaeAttribution.AttributionPatching(splice, clean, corrupted, metric);
        var (_, cleanCache) = splice.RunWithCache(clean, n => n.EndsWith("acts_post"));
        using (cleanCache)
        {
            var cleanActs = cleanCache["ln_final.hook_normalized.hook_sae_acts_post"];
            var baseline = metric(bridge.Forward(corrupted));
            foreach (var f in new[] { 0, 3, 8, 15 })
            {
                Tensor patched;
                using (sae.AddHook("hook_sae_acts_post", (a, _) =>
                {
                    var mask = Torch.Zeros([1, 1, 16], ScalarType.Float64);
                    mask.Select(2, f).Fill(1);
                    return Torch.Where(mask.Gt(0), cleanActs, a);
                }))
                    patched = metric(bridge.Forward(corrupted));
                var exact = patched - baseline;  // [batch]
                Assert.That(Fixtures.MaxAbsDiff(exact, estimate.Select(2, f).Sum(1)), Is.LessThan(1e-10), $"feature {f}");
            }
            var ablation = SaeAttribution.AblationAttribution(splice, clean, metric);
            Assert.That(ablation.Shape, Is.EqualTo(new long[] { 2, 12, 16 }));
        }
    }

    [Test]
    public void SteeringByAFeatureAddsItsDecoderDirection()
    {
        using var rig = new Rig(this, "tiny-gpt2", "blocks.0.hook_resid_pre", 8, 19);
        var (fx, bridge, sae) = (rig.Fixture, rig.Bridge, rig.Sae);
        using var scope = Torch.NewScope();
        var tokens = fx["input_ids"];
        using var splice = bridge.Splice(sae, useErrorTerm: true);
        Tensor steered;
        using (splice.Steer(2, 4.0, [-1])) steered = bridge.Forward(tokens);
        splice.Dispose();
        // resid_pre of layer 0 is embed + pos_embed: the same vector added to the embedding at the last position.
        var vector = sae.WDec.Select(0, 2) * 4.0;
        var expected = bridge.RunWithHooks(tokens, [("hook_embed", (a, _) =>
        {
            var add = Torch.Zeros(a.Shape, a.DType);
            add.Narrow(1, 11, 1).CopyFrom(vector.Expand(2, 1, 64));
            return a + add;
        })]);
        Assert.That(Fixtures.MaxAbsDiff(expected, steered), Is.LessThan(1e-10));
    }

    [Test]
    public void BadSaesAreRefusedWithAReason()
    {
        var w = Weights.Random(8, 4, seed: 1);
        var missing = Path.Combine(Tmp, "empty");
        Directory.CreateDirectory(missing);
        Assert.That(Assert.Throws<FormatException>(() => Sae.Load(missing))!.Message, Does.Contain("cfg.json"));
        var bad = WriteSae("bad-arch", w, new JsonObject { ["architecture"] = "matryoshka", ["hook_name"] = "blocks.0.hook_resid_pre" });
        Assert.That(Assert.Throws<FormatException>(() => Sae.Load(bad))!.Message, Does.Contain("matryoshka"));
        var jump = WriteSae("jump-missing", w, new JsonObject { ["architecture"] = "standard", ["hook_name"] = "blocks.0.hook_resid_pre" });
        File.WriteAllText(Path.Combine(jump, "cfg.json"), File.ReadAllText(Path.Combine(jump, "cfg.json")).Replace("standard", "jumprelu"));
        Assert.That(Assert.Throws<FormatException>(() => Sae.Load(jump))!.Message, Does.Contain("threshold"));
        Assert.Throws<FormatException>(() => SaeConfig.Parse("{\"d_in\": 8, \"d_sae\": 4}"));

        // d_in 8 on a 64-wide stream: the splice's forward pass names the SAE and the shapes.
        using var sae = Sae.Load(WriteSae("narrow", w, new JsonObject { ["architecture"] = "standard", ["hook_name"] = "blocks.0.hook_resid_pre" }));
        using var bridge = TransformerBridge.Load(Fixtures.Path("tiny-gpt2"));
        using var splice = bridge.Splice(sae);
        using var scope = Torch.NewScope();
        var e = Assert.Throws<HookException>(() => bridge.Forward(Torch.FromArray(new long[] { 1, 2, 3 }, 1, 3)));
        Assert.That(e!.Message, Does.Contain("d_in = 8"));
        using var nowhere = Sae.Load(WriteSae("nowhere", w, new JsonObject { ["hook_name"] = "blocks.7.hook_resid_pre" }));
        Assert.That(Assert.Throws<ArgumentException>(() => bridge.Splice(nowhere))!.Message, Does.Contain("blocks.7.hook_resid_pre"));
    }

    /// <summary>What most splice tests start from: the fixture's tokens, the float64 model and an SAE written for the test.</summary>
    private sealed class Rig : IDisposable
    {
        public Rig(SaeTests owner, string model, string hook, int dSae, int seed)
        {
            Fixture = new AnalysisFixture(model);
            Bridge = TransformerBridge.Load(Fixtures.Path(model), new BridgeOptions { DType = ScalarType.Float64 });
            Sae = Sae.Load(owner.SaeOn(hook, 64, dSae, seed));
        }

        public AnalysisFixture Fixture { get; }
        public TransformerBridge Bridge { get; }
        public Sae Sae { get; }

        public void Dispose()
        {
            Sae.Dispose();
            Bridge.Dispose();
            Fixture.Dispose();
        }
    }
}
