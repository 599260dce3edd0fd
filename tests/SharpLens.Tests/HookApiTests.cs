using SharpLens.Testing;
using System.Text.RegularExpressions;
using SharpLens.Tensors.IO;

namespace SharpLens.Tests;

/// <summary>
/// The forward hook API of <see cref="TransformerBridge"/>: hook names (TransformerLens's), what a hook
/// receives, replacements, registration by name / predicate / regex, removal, permanence, ordering, the
/// optional-hook switches, errors, RunWithHooks / RunWithCache and the ActivationCache shorthand.
/// </summary>
public class HookApiTests
{
    private const string Gpt2 = "tiny-gpt2";
    private const string Pythia = "tiny-pythia";

    private readonly Dictionary<string, Dictionary<string, Tensor>> _reference = new();
    private readonly List<Tensor> _kept = new();

    [OneTimeSetUp]
    public void LoadReferences()
    {
        foreach (var m in new[] { Gpt2, Pythia })
            _reference[m] = SafeTensors.Load(Path.Combine(Fixtures.Path(m), "reference.safetensors"));
    }

    [OneTimeTearDown]
    public void FreeReferences()
    {
        foreach (var t in _reference.Values.SelectMany(r => r.Values)) t.Dispose();
    }

    [TearDown]
    public void FreeKept()
    {
        foreach (var t in _kept) t.Dispose();
        _kept.Clear();
    }

    private Tensor Tokens(string model = Gpt2) => _reference[model]["input_ids"];

    private static TransformerBridge Load(string model = Gpt2) => TransformerBridge.Load(Fixtures.Path(model));

    /// <summary>A copy of an activation that outlives the forward pass (freed in TearDown).</summary>
    private Tensor Keep(Tensor activation)
    {
        using var detached = activation.Detach();
        var copy = detached.Clone().DetachFromScope();
        _kept.Add(copy);
        return copy;
    }

    private static double MaxAbsDiff(Tensor a, Tensor b)
    {
        using var scope = Torch.NewScope();
        Assert.That(b.Shape, Is.EqualTo(a.Shape), "shape");
        return (a.To(ScalarType.Float64) - b.To(ScalarType.Float64)).Abs().Max().ToDouble();
    }

    private static int TotalHookCount(TransformerBridge bridge) => bridge.HookDict.Values.Sum(h => h.HookCount);

    private static void ForceFinalizers()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
    }

    /// <summary>
    /// TransformerLens's <c>hook_dict</c> for a 2-layer model (HookedTransformer 2.x): the optional hook points
    /// (hook_tokens, hook_attn_in, hook_q/k/v_input, attn.hook_result, hook_mlp_in) always exist;
    /// hook_pos_embed only with learned positions, attn.hook_rot_q/k only with rotary, hook_resid_mid only
    /// without parallel attention and MLP.
    /// </summary>
    private static List<string> TransformerLensHookNames(bool rotary, bool parallel, int layers = 2)
    {
        var names = new List<string> { "hook_tokens", "hook_embed" };
        if (!rotary) names.Add("hook_pos_embed");
        for (var l = 0; l < layers; l++)
        {
            var p = $"blocks.{l}.";
            names.AddRange([
                p + "hook_resid_pre", p + "ln1.hook_scale", p + "ln1.hook_normalized",
                p + "hook_attn_in", p + "hook_q_input", p + "hook_k_input", p + "hook_v_input",
                p + "attn.hook_q", p + "attn.hook_k", p + "attn.hook_v",
            ]);
            if (rotary) names.AddRange([p + "attn.hook_rot_q", p + "attn.hook_rot_k"]);
            names.AddRange([p + "attn.hook_attn_scores", p + "attn.hook_pattern", p + "attn.hook_z", p + "attn.hook_result", p + "hook_attn_out"]);
            if (!parallel) names.Add(p + "hook_resid_mid");
            names.AddRange([
                p + "hook_mlp_in", p + "ln2.hook_scale", p + "ln2.hook_normalized",
                p + "mlp.hook_pre", p + "mlp.hook_post", p + "hook_mlp_out", p + "hook_resid_post",
            ]);
        }
        names.AddRange(["ln_final.hook_scale", "ln_final.hook_normalized"]);
        return names;
    }

    private static readonly string[] OptionalSuffixes = ["hook_tokens", "hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input", "attn.hook_result", "hook_mlp_in"];

    private static bool IsOptional(string name) => OptionalSuffixes.Any(name.EndsWith);

    // ------------------------------------------------------------------ hook names

    [Test]
    public void HookDictHoldsEveryTransformerLensHookPoint()
    {
        using var bridge = Load();
        var expected = TransformerLensHookNames(rotary: false, parallel: false);
        Assert.That(expected, Has.Count.EqualTo(51));
        Assert.That(bridge.HookDict.Keys, Is.SupersetOf(expected));
        Assert.Multiple(() =>
        {
            foreach (var name in new[]
                     {
                         "hook_embed", "hook_pos_embed", "blocks.0.hook_resid_pre", "blocks.0.hook_resid_mid", "blocks.1.hook_resid_post",
                         "blocks.0.ln1.hook_scale", "blocks.1.ln2.hook_normalized", "blocks.0.attn.hook_q", "blocks.1.attn.hook_k",
                         "blocks.0.attn.hook_v", "blocks.1.attn.hook_attn_scores", "blocks.0.attn.hook_pattern", "blocks.1.attn.hook_z",
                         "blocks.0.hook_attn_out", "blocks.1.mlp.hook_pre", "blocks.0.mlp.hook_post", "blocks.1.hook_mlp_out",
                         "ln_final.hook_scale", "ln_final.hook_normalized",
                     })
            {
                Assert.That(bridge.HookDict, Does.ContainKey(name));
                if (name is not ("hook_pos_embed" or "blocks.0.hook_resid_mid"))  // these two depend on the architecture
                    Assert.That(bridge.HookDict[name].SwitchName, Is.Null, $"{name} always fires");
            }
            foreach (var name in expected)
                Assert.That(bridge.HookDict[name].Name, Is.EqualTo(name));
            foreach (var name in expected.Where(IsOptional))
                Assert.That(bridge.HookDict[name].SwitchName, Is.Not.Null, $"{name} is optional");
            Assert.That(bridge.HookDict.Keys.Where(k => k.Contains("blocks.2.")), Is.Empty, "2 layers only");
        });
    }

    /// <summary>
    /// TransformerLens creates hook_pos_embed only for non-rotary models, attn.hook_rot_q/k only for rotary ones and
    /// hook_resid_mid only without parallel attention and MLP; the bridge registers all of them in HookDict for every
    /// architecture (55 names for both fixtures instead of 51 for GPT-2 and 52 for Pythia), as points that can never fire.
    /// </summary>
    [TestCase(Gpt2, false, false, 51)]
    [TestCase(Pythia, true, true, 52)]
    public void HookDictHoldsExactlyTheHookPointsOfTheArchitecture(string model, bool rotary, bool parallel, int count)
    {
        using var bridge = Load(model);
        var expected = TransformerLensHookNames(rotary, parallel);
        Assert.That(expected, Has.Count.EqualTo(count));
        Assert.That(bridge.HookDict.Keys, Is.EquivalentTo(expected));
    }

    [TestCase(Gpt2)]
    [TestCase(Pythia)]
    public void HookReceivesTheActivationAndItsHookPointWithTransformerLensShapes(string model)
    {
        using var bridge = Load(model);
        var shapes = new Dictionary<string, long[]>();
        var calls = new Dictionary<string, int>();
        var points = new List<(HookPoint Received, HookPoint Registered)>();
        Tensor? embed = null;
        using var handle = bridge.AddHook(_ => true, (activation, hp) =>
        {
            shapes[hp.Name] = activation.Shape;
            calls[hp.Name] = calls.GetValueOrDefault(hp.Name) + 1;
            points.Add((hp, bridge.HookDict[hp.Name]));
            if (hp.Name == "hook_embed") embed = Keep(activation);
            return null;
        });
        using var scope = Torch.NewScope();
        bridge.Forward(Tokens(model));

        var reference = _reference[model];
        var alwaysOn = reference.Keys.Where(k => k.StartsWith("act.")).Select(k => k[4..]).Where(n => !IsOptional(n)).ToList();
        Assert.That(shapes.Keys, Is.EquivalentTo(alwaysOn), "every always-on TransformerLens hook fires, and nothing else");
        Assert.That(handle.HookNames, Is.EquivalentTo(alwaysOn));
        Assert.Multiple(() =>
        {
            foreach (var name in alwaysOn)
            {
                Assert.That(shapes[name], Is.EqualTo(reference["act." + name].Shape), $"{name} has TransformerLens's shape");
                // As in TransformerLens, ln1 normalises the query, key and value inputs separately: its hooks fire 3 times.
                var expectedCalls = name.Contains(".ln1.") ? 3 : 1;
                Assert.That(calls[name], Is.EqualTo(expectedCalls), $"{name} fires {expectedCalls} time(s) per forward pass");
            }
            foreach (var (received, registered) in points) Assert.That(received, Is.SameAs(registered));
        });
        Assert.That(MaxAbsDiff(reference["act.hook_embed"], embed!), Is.LessThanOrEqualTo(1e-6), "hook_embed receives the embedding");
    }

    // ------------------------------------------------------------------ replacements

    [Test]
    public void ZeroAblatingHookZChangesDownstreamResults()
    {
        using var bridge = Load();
        using var scope = Torch.NewScope();
        var baseline = bridge.Forward(Tokens());
        var handle = bridge.AddHook("blocks.0.attn.hook_z", (z, _) => Torch.Zeros(z.Shape, z.DType, z.Device));
        var (logits, cache) = bridge.RunWithCache(Tokens(), n => n.StartsWith("blocks.0.") && (n.EndsWith("hook_z") || n.EndsWith("hook_attn_out")));
        using (cache)
        {
            Assert.That(MaxAbsDiff(baseline, logits), Is.GreaterThan(1e-3), "ablating layer 0's heads changes the logits");
            Assert.That(cache["z", 0].Eq(0).All().ToBoolean(), Is.True, "later hooks see the replacement");
            // With z = 0 the attention output is exactly the output projection's bias.
            var bias = bridge.Parameter("transformer.h.0.attn.c_proj.bias");
            Assert.That(cache["attn_out", 0].ValueEquals(bias.Expand(2, 12, 64)), Is.True, "attn_out = b_O exactly");
        }
        handle.Remove();
        Assert.That(bridge.Forward(Tokens()).ValueEquals(baseline), Is.True, "removing the hook restores the model");
    }

    /// <summary>
    /// resid_post of the last block replaced by zeros: ln_final centres 0 to 0, divides by sqrt(eps) and gives
    /// exactly its bias b; the logits are then b @ W_U at every position, computed here in float64 from the parameters.
    /// </summary>
    [TestCase(Gpt2, "transformer.ln_f.bias", "transformer.wte.weight")]
    [TestCase(Pythia, "gpt_neox.final_layer_norm.bias", "embed_out.weight")]
    public void ZeroFinalResidualGivesTheUnembeddedLnFinalBias(string model, string lnBias, string unembed)
    {
        using var bridge = Load(model);
        using var scope = Torch.NewScope();
        using var handle = bridge.AddHook($"blocks.{bridge.Config.NLayers - 1}.hook_resid_post", (r, _) => Torch.Zeros(r.Shape, r.DType, r.Device));
        var (logits, cache) = bridge.RunWithCache(Tokens(model), n => n.StartsWith("ln_final."));
        using (cache)
        {
            var b = bridge.Parameter(lnBias);
            Assert.That(cache["ln_final.hook_normalized"].ValueEquals(b.Expand(2, 12, 64)), Is.True, "ln_final(0) is exactly its bias");
            var expectedScale = MathF.Sqrt((float)bridge.Config.NormEps);
            Assert.That(cache["ln_final.hook_scale"].ToArray<float>(), Has.All.EqualTo(expectedScale), "scale = sqrt(0 + eps)");
        }
        var row = bridge.Parameter(unembed).To(ScalarType.Float64).Matmul(bridge.Parameter(lnBias).To(ScalarType.Float64));  // [vocab]
        var diff = (logits.To(ScalarType.Float64) - row).Abs().Max().ToDouble();
        Assert.That(logits.Shape, Is.EqualTo(new long[] { 2, 12, bridge.Config.DVocab }));
        Assert.That(diff, Is.LessThanOrEqualTo(1e-6), "logits = ln_final.b @ W_U at every position");
        Assert.That(row.Abs().Max().ToDouble(), Is.GreaterThan(1e-3), "the expectation is not trivially zero");
    }

    [Test]
    public void ReplacementOfTheWrongShapeThrowsNamingHookAndShapes()
    {
        using var bridge = Load();
        using var scope = Torch.NewScope();
        var baseline = bridge.Forward(Tokens());
        ForceFinalizers();
        var live = LiveTensorCount.Settled();
        var handle = bridge.AddHook("blocks.0.attn.hook_z", (z, _) => Torch.Zeros(2, 12, 4, 15));
        var e = Assert.Throws<HookException>(() => bridge.Forward(Tokens()))!;
        Assert.That(e.HookName, Is.EqualTo("blocks.0.attn.hook_z"));
        Assert.That(e.Message, Does.Contain("blocks.0.attn.hook_z").And.Contain("[2, 12, 4, 15]").And.Contain("[2, 12, 4, 16]"));
        Assert.That(Torch.LiveTensors, Is.EqualTo(live), "the failed forward pass frees its tensors");
        handle.Remove();
        Assert.That(bridge.Forward(Tokens()).ValueEquals(baseline), Is.True);
    }

    /// <summary>
    /// A replacement of the right shape but another dtype passes HookPoint's check and fails later, deep in the
    /// forward pass, as a bare TorchException ("expected scalar type Double but found Float") that names no hook.
    /// </summary>
    [Test]
    public void ReplacementOfTheWrongDtypeThrowsNamingTheHook()
    {
        using var bridge = Load();
        using var scope = Torch.NewScope();
        using var handle = bridge.AddHook("blocks.0.attn.hook_z", (z, _) => Torch.Zeros(z.Shape, ScalarType.Float64));
        var e = Assert.Throws<HookException>(() => bridge.Forward(Tokens()))!;
        Assert.That(e.HookName, Is.EqualTo("blocks.0.attn.hook_z"));
        Assert.That(e.Message, Does.Contain("float64").And.Contain("float32"));
    }

    // ------------------------------------------------------------------ adding and removing

    [Test]
    public void AddHookByName()
    {
        using var bridge = Load();
        using var scope = Torch.NewScope();
        var fired = new List<string>();
        var handle = bridge.AddHook("blocks.1.hook_mlp_out", (_, hp) => { fired.Add(hp.Name); return null; });
        Assert.That(handle.HookNames, Is.EqualTo(new[] { "blocks.1.hook_mlp_out" }));
        Assert.That(bridge.HookDict["blocks.1.hook_mlp_out"].HookCount, Is.EqualTo(1));
        Assert.That(TotalHookCount(bridge), Is.EqualTo(1));
        bridge.Forward(Tokens());
        bridge.Forward(Tokens());
        Assert.That(fired, Is.EqualTo(new[] { "blocks.1.hook_mlp_out", "blocks.1.hook_mlp_out" }));
    }

    [Test]
    public void AddHookByPredicate()
    {
        using var bridge = Load();
        using var scope = Torch.NewScope();
        var fired = new List<string>();
        var handle = bridge.AddHook((Func<string, bool>)(n => n.EndsWith(".hook_resid_pre")), (_, hp) => { fired.Add(hp.Name); return null; });
        Assert.That(handle.HookNames, Is.EquivalentTo(new[] { "blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre" }));
        bridge.Forward(Tokens());
        Assert.That(fired, Is.EqualTo(new[] { "blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre" }), "in forward order");
    }

    [Test]
    public void AddHookByRegex()
    {
        using var bridge = Load();
        using var scope = Torch.NewScope();
        var fired = new List<string>();
        var handle = bridge.AddHook(new Regex(@"^blocks\.1\.attn\.hook_[qkv]$"), (_, hp) => { fired.Add(hp.Name); return null; });
        var expected = new[] { "blocks.1.attn.hook_q", "blocks.1.attn.hook_k", "blocks.1.attn.hook_v" };
        Assert.That(handle.HookNames, Is.EquivalentTo(expected));
        bridge.Forward(Tokens());
        Assert.That(fired, Is.EquivalentTo(expected));
    }

    [Test]
    public void PredicateCoversExactlyTheHookPointsThatFire()
    {
        using var bridge = Load();
        using var scope = Torch.NewScope();
        var fired = new HashSet<string>();
        var all = bridge.AddHook(_ => true, (_, hp) => { fired.Add(hp.Name); return null; });
        var expected = TransformerLensHookNames(rotary: false, parallel: false).Where(n => !IsOptional(n)).ToList();
        Assert.That(expected, Has.Count.EqualTo(38));
        Assert.That(all.HookNames, Is.EquivalentTo(expected), "switched-off optional points are skipped, not refused");
        bridge.Forward(Tokens());
        Assert.That(fired, Is.EquivalentTo(expected));
        var none = bridge.AddHook(n => n.EndsWith("attn.hook_result"), (_, _) => null);
        Assert.That(none.HookNames, Is.Empty);
    }

    [Test]
    public void UnknownHookNameIsRefused()
    {
        using var bridge = Load();
        var e = Assert.Throws<KeyNotFoundException>(() => bridge.AddHook("blocks.2.hook_resid_pre", (_, _) => null))!;
        Assert.That(e.Message, Does.Contain("'blocks.2.hook_resid_pre'").And.Contain("HookDict"));
        Assert.That(TotalHookCount(bridge), Is.Zero);
    }

    [Test]
    public void RemovingByHandleIsIdempotent()
    {
        using var bridge = Load();
        using var scope = Torch.NewScope();
        var fired = 0;
        var other = 0;
        var handle = bridge.AddHook("hook_embed", (_, _) => { fired++; return null; });
        using var keep = bridge.AddHook("hook_embed", (_, _) => { other++; return null; });
        Assert.That(bridge.HookDict["hook_embed"].HookCount, Is.EqualTo(2));
        handle.Remove();
        Assert.DoesNotThrow(handle.Remove);
        Assert.DoesNotThrow(handle.Dispose);
        Assert.That(handle.HookNames, Is.Empty);
        Assert.That(bridge.HookDict["hook_embed"].HookCount, Is.EqualTo(1), "only this handle's hook goes");
        bridge.Forward(Tokens());
        Assert.That((fired, other), Is.EqualTo((0, 1)));
    }

    [Test]
    public void HooksScopeRemovesItsHooksOnDispose()
    {
        using var bridge = Load();
        using var scope = Torch.NewScope();
        var baseline = bridge.Forward(Tokens());
        var fired = new List<string>();
        ForwardHook record = (_, hp) => { fired.Add(hp.Name); return null; };
        ForwardHook ablate = (z, _) => Torch.Zeros(z.Shape);
        using (bridge.Hooks(("hook_embed", record), ("blocks.0.attn.hook_z", ablate)))
        {
            Assert.That(TotalHookCount(bridge), Is.EqualTo(2));
            Assert.That(MaxAbsDiff(baseline, bridge.Forward(Tokens())), Is.GreaterThan(1e-3));
        }
        Assert.That(TotalHookCount(bridge), Is.Zero);
        Assert.That(bridge.Forward(Tokens()).ValueEquals(baseline), Is.True);
        Assert.That(fired, Is.EqualTo(new[] { "hook_embed" }));
    }

    [Test]
    public void HooksScopeThatFailsToRegisterLeavesNoHook()
    {
        using var bridge = Load();
        Assert.Throws<InvalidOperationException>(() => bridge.Hooks(("hook_embed", (_, _) => null), ("blocks.0.attn.hook_result", (_, _) => null)));
        Assert.Throws<KeyNotFoundException>(() => bridge.Hooks(("hook_embed", (_, _) => null), ("no_such_hook", (_, _) => null)));
        Assert.That(TotalHookCount(bridge), Is.Zero);
    }

    [Test]
    public void ResetHooksKeepsPermanentHooksUnlessAskedToRemoveThem()
    {
        using var bridge = Load();
        using var scope = Torch.NewScope();
        var normal = 0;
        var permanent = 0;
        bridge.AddHook("hook_embed", (_, _) => { normal++; return null; });
        bridge.AddHook(n => n.EndsWith("hook_resid_post"), (_, _) => { normal++; return null; });
        bridge.AddHook("hook_embed", (_, _) => { permanent++; return null; }, permanent: true);
        bridge.ResetHooks();
        Assert.That(TotalHookCount(bridge), Is.EqualTo(1));
        Assert.That(bridge.HookDict["hook_embed"].HookCount, Is.EqualTo(1));
        bridge.Forward(Tokens());
        Assert.That((normal, permanent), Is.EqualTo((0, 1)));
        bridge.ResetHooks(includingPermanent: true);
        Assert.That(TotalHookCount(bridge), Is.Zero);
        bridge.Forward(Tokens());
        Assert.That((normal, permanent), Is.EqualTo((0, 1)));
    }

    [Test]
    public void SeveralHooksOnOnePointRunInRegistrationOrderEachSeeingThePreviousReplacement()
    {
        const string name = "blocks.0.hook_resid_mid";
        using var bridge = Load();
        using var scope = Torch.NewScope();
        var order = new List<int>();
        Tensor seen1 = null!, seen2 = null!, seen3 = null!;
        bridge.AddHook(name, (a, _) => { order.Add(1); seen1 = Keep(a); return a + 1; });
        bridge.AddHook(name, (a, _) => { order.Add(2); seen2 = Keep(a); return a * 2; });
        bridge.AddHook(name, (a, _) => { order.Add(3); seen3 = Keep(a); return null; });
        var (_, cache) = bridge.RunWithCache(Tokens(), n => n == name);
        using (cache)
        {
            Assert.That(order, Is.EqualTo(new[] { 1, 2, 3 }));
            Assert.That(seen2.ValueEquals(seen1 + 1), Is.True, "the second hook sees the first one's replacement");
            Assert.That(seen3.ValueEquals((seen1 + 1) * 2), Is.True, "the third sees the second's");
            Assert.That(cache[name].ValueEquals(seen3), Is.True, "a hook returning null keeps the activation");
        }
    }

    // ------------------------------------------------------------------ optional hook points

    [TestCase("blocks.0.attn.hook_result", nameof(TransformerConfig.UseAttnResult), new long[] { 2, 12, 4, 64 })]
    [TestCase("blocks.1.hook_q_input", nameof(TransformerConfig.UseSplitQkvInput), new long[] { 2, 12, 4, 64 })]
    [TestCase("blocks.0.hook_v_input", nameof(TransformerConfig.UseSplitQkvInput), new long[] { 2, 12, 4, 64 })]
    [TestCase("blocks.0.hook_attn_in", nameof(TransformerConfig.UseAttnIn), new long[] { 2, 12, 4, 64 })]
    [TestCase("blocks.1.hook_mlp_in", nameof(TransformerConfig.UseHookMlpIn), new long[] { 2, 12, 64 })]
    [TestCase("hook_tokens", nameof(TransformerConfig.UseHookTokens), new long[] { 2, 12 })]
    public void OptionalHookPointRefusesHooksUntilItsSwitchIsOn(string name, string switchName, long[] shape)
    {
        using var bridge = Load();
        using var scope = Torch.NewScope();
        var baseline = bridge.Forward(Tokens());
        Assert.That(bridge.HookDict[name].SwitchName, Is.EqualTo(switchName));
        var e = Assert.Throws<InvalidOperationException>(() => bridge.AddHook(name, (_, _) => null))!;
        Assert.That(e.Message, Does.Contain($"'{name}'").And.Contain(switchName));
        Assert.That(bridge.HookDict[name].HookCount, Is.Zero);

        typeof(TransformerConfig).GetProperty(switchName)!.SetValue(bridge.Config, true);
        long[]? received = null;
        using var handle = bridge.AddHook(name, (a, _) => { received = a.Shape; return null; });
        var logits = bridge.Forward(Tokens());
        Assert.That(received, Is.EqualTo(shape), $"{name} fires with TransformerLens's shape");
        Assert.That(MaxAbsDiff(baseline, logits), Is.LessThanOrEqualTo(1e-4), "switching the hook point on does not change the model");
    }

    // ------------------------------------------------------------------ errors in hooks

    [Test]
    public void ExceptionInAHookSurfacesAsHookExceptionWithTheOriginalInside()
    {
        using var bridge = Load();
        using var scope = Torch.NewScope();
        var baseline = bridge.Forward(Tokens());
        var original = new ArithmeticException("boom in the hook");
        var handle = bridge.AddHook("blocks.1.mlp.hook_post", (_, _) => throw original);
        ForceFinalizers();
        var live = LiveTensorCount.Settled();
        var e = Assert.Throws<HookException>(() => bridge.Forward(Tokens()))!;
        Assert.That(e.HookName, Is.EqualTo("blocks.1.mlp.hook_post"));
        Assert.That(e.InnerException, Is.SameAs(original));
        Assert.That(e.Message, Does.Contain("blocks.1.mlp.hook_post").And.Contain("boom in the hook"));
        Assert.That(Torch.LiveTensors, Is.EqualTo(live), "the failed forward pass frees its tensors");
        handle.Remove();
        Assert.That(bridge.Forward(Tokens()).ValueEquals(baseline), Is.True, "the bridge works on after the failure");
    }

    [Test]
    public void HookExceptionThrownByAHookIsNotWrappedAgain()
    {
        using var bridge = Load();
        var mine = new HookException("custom", "my own failure");
        using var handle = bridge.AddHook("hook_embed", (_, _) => throw mine);
        var e = Assert.Throws<HookException>(() => bridge.Forward(Tokens()).Dispose());
        Assert.That(e, Is.SameAs(mine));
    }

    // ------------------------------------------------------------------ RunWithHooks / RunWithCache

    [Test]
    public void RunWithHooksRemovesItsHooksAfterwards()
    {
        using var bridge = Load();
        using var scope = Torch.NewScope();
        var baseline = bridge.Forward(Tokens());
        ForwardHook ablate = (z, _) => Torch.Zeros(z.Shape);
        var hooked = bridge.RunWithHooks(Tokens(), [("blocks.1.attn.hook_z", ablate)]);
        Assert.That(TotalHookCount(bridge), Is.Zero);
        using (bridge.Hooks(("blocks.1.attn.hook_z", ablate)))
            Assert.That(bridge.Forward(Tokens()).ValueEquals(hooked), Is.True, "same as adding the hook by hand");
        Assert.That(MaxAbsDiff(baseline, hooked), Is.GreaterThan(1e-3));
        Assert.That(bridge.Forward(Tokens()).ValueEquals(baseline), Is.True);

        ForwardHook boom = (_, _) => throw new InvalidOperationException("x");
        Assert.Throws<HookException>(() => bridge.RunWithHooks(Tokens(), [("hook_embed", boom)]));
        Assert.That(TotalHookCount(bridge), Is.Zero, "also when the run fails");
    }

    [Test]
    public void RunWithCacheWithANamesFilterCachesOnlyThoseNames()
    {
        using var bridge = Load();
        using var scope = Torch.NewScope();
        var baseline = bridge.Forward(Tokens());
        var (logits, cache) = bridge.RunWithCache(Tokens(), n => n.EndsWith("attn.hook_pattern") || n == "hook_embed");
        using (cache)
        {
            Assert.That(cache.Keys, Is.EquivalentTo(new[] { "hook_embed", "blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern" }));
            Assert.That(cache.Count, Is.EqualTo(3));
            Assert.That(cache["pattern", 1].Shape, Is.EqualTo(new long[] { 2, 4, 12, 12 }));
            var rowSums = cache["pattern", 1].Sum(-1);
            Assert.That((rowSums - 1).Abs().Max().ToDouble(), Is.LessThan(1e-5), "pattern rows are distributions");
            Assert.That(MaxAbsDiff(_reference[Gpt2]["act.blocks.0.attn.hook_pattern"], cache["pattern", 0]), Is.LessThan(1e-5));
        }
        Assert.That(TotalHookCount(bridge), Is.Zero, "the cache's hooks are removed");
        Assert.That(MaxAbsDiff(baseline, logits), Is.LessThan(1e-5));

        var (_, empty) = bridge.RunWithCache(Tokens(), n => n == "blocks.0.attn.hook_result");
        using (empty) Assert.That(empty.Count, Is.Zero, "a switched-off hook point records nothing");

        var (_, full) = bridge.RunWithCache(Tokens());
        using (full)
            Assert.That(full.Keys, Is.EquivalentTo(TransformerLensHookNames(rotary: false, parallel: false).Where(n => !IsOptional(n))));
    }

    // ------------------------------------------------------------------ ActivationCache shorthand

    [TestCase("resid_pre", 0, null, "blocks.0.hook_resid_pre")]
    [TestCase("resid_mid", 1, null, "blocks.1.hook_resid_mid")]
    [TestCase("resid_post", 1, null, "blocks.1.hook_resid_post")]
    [TestCase("attn_out", 0, null, "blocks.0.hook_attn_out")]
    [TestCase("mlp_out", 1, null, "blocks.1.hook_mlp_out")]
    [TestCase("q", 0, null, "blocks.0.attn.hook_q")]
    [TestCase("k", 1, null, "blocks.1.attn.hook_k")]
    [TestCase("v", 0, null, "blocks.0.attn.hook_v")]
    [TestCase("z", 1, null, "blocks.1.attn.hook_z")]
    [TestCase("attn_scores", 0, null, "blocks.0.attn.hook_attn_scores")]
    [TestCase("pattern", 1, null, "blocks.1.attn.hook_pattern")]
    [TestCase("attn", 0, null, "blocks.0.attn.hook_pattern")]
    [TestCase("pre", 0, null, "blocks.0.mlp.hook_pre")]
    [TestCase("post", 1, null, "blocks.1.mlp.hook_post")]
    [TestCase("scale", 0, "ln2", "blocks.0.ln2.hook_scale")]
    [TestCase("scale", 1, "ln1", "blocks.1.ln1.hook_scale")]
    [TestCase("normalized", 1, "ln2", "blocks.1.ln2.hook_normalized")]
    [TestCase("scale", 0, null, "blocks.0.ln1.hook_scale")]
    public void CacheShorthandResolvesToTheFullName(string shortName, int layer, string? layerType, string fullName)
    {
        using var bridge = Load();
        var (logits, cache) = bridge.RunWithCache(Tokens());
        using (logits)
        using (cache)
        {
            Assert.That(ActivationCache.ActName(shortName, layer, layerType), Is.EqualTo(fullName));
            Assert.That(cache[shortName, layer, layerType], Is.SameAs(cache[fullName]));
        }
    }

    [TestCase("embed", "hook_embed")]
    [TestCase("pos_embed", "hook_pos_embed")]
    [TestCase("scale", "ln_final.hook_scale")]
    [TestCase("normalized", "ln_final.hook_normalized")]
    [TestCase("blocks.0.hook_resid_pre", "blocks.0.hook_resid_pre")]
    public void ActNameWithoutALayer(string shortName, string fullName) =>
        Assert.That(ActivationCache.ActName(shortName), Is.EqualTo(fullName));

    /// <summary>
    /// TransformerLens's <c>cache["embed"]</c> goes through get_act_name; the bridge's one-argument indexer only looks up
    /// full names, so the documented shorthand for layer-less activations (embed, pos_embed, scale, normalized) fails.
    /// </summary>
    [TestCase("embed", "hook_embed")]
    [TestCase("pos_embed", "hook_pos_embed")]
    [TestCase("scale", "ln_final.hook_scale")]
    [TestCase("normalized", "ln_final.hook_normalized")]
    public void CacheShorthandWithoutALayer(string shortName, string fullName)
    {
        using var bridge = Load();
        var (logits, cache) = bridge.RunWithCache(Tokens());
        using (logits)
        using (cache)
            Assert.That(cache[shortName], Is.SameAs(cache[fullName]));
    }

    /// <summary>TransformerLens's ActivationCache maps a negative layer to n_layers + layer (<c>cache["resid_post", -1]</c>).</summary>
    [Test]
    public void CacheShorthandWithANegativeLayerCountsFromTheEnd()
    {
        using var bridge = Load();
        var (logits, cache) = bridge.RunWithCache(Tokens());
        using (logits)
        using (cache)
        {
            Assert.That(cache["resid_post", -1], Is.SameAs(cache["blocks.1.hook_resid_post"]));
            Assert.That(cache["pattern", -2], Is.SameAs(cache["blocks.0.attn.hook_pattern"]));
        }
    }

    [Test]
    public void UnknownCacheNamesThrowHelpfully()
    {
        using var bridge = Load();
        var (logits, cache) = bridge.RunWithCache(Tokens(), n => n.EndsWith("hook_resid_pre"));
        using (logits)
        using (cache)
        {
            var e = Assert.Throws<KeyNotFoundException>(() => _ = cache["blocks.0.hook_nope"])!;
            Assert.That(e.Message, Does.Contain("'blocks.0.hook_nope'").And.Contain("holds 2 activations").And.Contain("blocks.0.hook_resid_pre"));
            e = Assert.Throws<KeyNotFoundException>(() => _ = cache["resid_pre", 5])!;
            Assert.That(e.Message, Does.Contain("'blocks.5.hook_resid_pre'"));
            e = Assert.Throws<KeyNotFoundException>(() => _ = cache["pattern", 0])!;
            Assert.That(e.Message, Does.Contain("'blocks.0.attn.hook_pattern'"), "filtered out of this cache");
            var a = Assert.Throws<ArgumentException>(() => _ = cache["bogus", 0])!;
            Assert.That(a.Message, Does.Contain("'bogus'"));
            Assert.That(cache.TryGetValue("blocks.0.hook_nope", out _), Is.False);
            Assert.That(cache.ContainsKey("blocks.1.hook_resid_pre"), Is.True);
        }
        var (l2, empty) = bridge.RunWithCache(Tokens(), _ => false);
        using (l2)
        using (empty)
            Assert.That(Assert.Throws<KeyNotFoundException>(() => _ = empty["hook_embed"])!.Message, Does.Contain("empty"));
    }

    // ------------------------------------------------------------------ architecture-specific hook points

    [Test]
    public void ParallelResidualPythiaHasNoResidMidButHasRotaryHooks()
    {
        using var bridge = Load(Pythia);
        using var scope = Torch.NewScope();
        var baseline = bridge.Forward(Tokens(Pythia));
        var (_, cache) = bridge.RunWithCache(Tokens(Pythia));
        using (cache)
        {
            Assert.That(cache.Keys.Where(k => k.Contains("hook_resid_mid")), Is.Empty);
            Assert.That(() => _ = cache["resid_mid", 0], Throws.InstanceOf<KeyNotFoundException>());
            Assert.That(cache.ContainsKey("hook_pos_embed"), Is.False);
            Assert.That(cache.ContainsKey("blocks.0.attn.hook_rot_q") && cache.ContainsKey("blocks.1.attn.hook_rot_k"), Is.True);
            Assert.That(cache["rot_q", 0].Shape, Is.EqualTo(new long[] { 2, 12, 4, 16 }));
            Assert.That(MaxAbsDiff(_reference[Pythia]["act.blocks.0.attn.hook_rot_q"], cache["rot_q", 0]), Is.LessThan(1e-5));
        }
        Assert.That(() => bridge.AddHook("blocks.0.hook_resid_mid", (_, _) => null),
            Throws.InstanceOf<InvalidOperationException>().Or.InstanceOf<KeyNotFoundException>());
        Assert.That(bridge.HookDict, Does.ContainKey("blocks.0.attn.hook_rot_q"));

        using var handle = bridge.AddHook("blocks.0.attn.hook_rot_q", (q, _) => Torch.Zeros(q.Shape));
        Assert.That(MaxAbsDiff(baseline, bridge.Forward(Tokens(Pythia))), Is.GreaterThan(1e-4), "replacing rotated queries changes the logits");

        using var gpt2 = Load(Gpt2);
        Assert.That(() => gpt2.AddHook("blocks.0.attn.hook_rot_q", (_, _) => null),
            Throws.InstanceOf<InvalidOperationException>().Or.InstanceOf<KeyNotFoundException>(), "GPT-2 has no rotary hook points");
    }
}
