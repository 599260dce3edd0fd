using SharpLens.Tensors.IO;

namespace SharpLens.Tests;

/// <summary>
/// Backward hooks: every hook point's gradient against PyTorch/TransformerLens (fixture
/// <c>grad.last_logits_sum.&lt;hook&gt;</c>), replacement semantics, ordering, removal and refusals.
/// </summary>
[TestFixture("tiny-gpt2")]
[TestFixture("tiny-pythia")]
[TestFixture("tiny-phi3")]
public class BackwardHookTests(string model) : FixtureTest(model)
{
    private static Tensor LastLogitsSum(Tensor logits) => logits.Select(1, -1).Sum();

    [Test]
    public void EveryHookGradientMatchesPyTorch()
    {
        using var bridge = TransformerBridge.Load(Fixtures.Path(model));
        using var scope = Torch.NewScope();
        var (_, cache) = bridge.RunWithCache(Tokens, null, null, LastLogitsSum);
        using (cache)
        {
            const string prefix = "grad.last_logits_sum.";
            var hooks = Reference.Keys.Where(k => k.StartsWith(prefix) && !k.StartsWith(prefix + "param.") && !k.StartsWith(prefix + "hidden_states.")).Select(k => k[prefix.Length..]).ToList();
            Assert.That(hooks, Has.Count.GreaterThan(20));
            Assert.Multiple(() =>
            {
                foreach (var hook in hooks)
                {
                    Assert.That(cache.ContainsKey(hook + "_grad"), $"no gradient cached for {hook}");
                    if (!cache.ContainsKey(hook + "_grad")) continue;
                    // 1e-4 absolute, scaled by the gradient's magnitude where it exceeds 1 (hook_scale gradients
                    // reach ~50, where float32 rounding alone is ~1e-5 relative).
                    var expected = Reference[prefix + hook];
                    var magnitude = Math.Max(1, expected.Abs().Max().ToDouble());
                    var d = MaxAbsDiff(expected, cache[hook + "_grad"]);
                    Assert.That(d, Is.LessThanOrEqualTo(1e-4 * magnitude), $"{hook}: max abs difference {d:G3} at magnitude {magnitude:G3}");
                }
            });
        }
    }

    /// <summary>
    /// Backward hooks alone, with no forward hook anywhere: the forward pass must still route every hooked
    /// activation (attention scores and pattern included) through its hook point, or the hook silently never fires.
    /// </summary>
    [Test]
    public void BackwardHooksAloneFireAtEveryHookPointWithPyTorchGradients()
    {
        using var bridge = TransformerBridge.Load(Fixtures.Path(model));
        using var scope = Torch.NewScope();
        var seen = new Dictionary<string, Tensor>();
        bridge.AddBackwardHook(_ => true, (g, hp) =>
        {
            // ln1's hook points fire once per q/k/v path (TransformerLens); like the fixture's dict, the last one wins.
            seen[hp.Name] = g.Detach();
            return null;
        });
        LastLogitsSum(bridge.Forward(Tokens)).Backward();
        const string prefix = "grad.last_logits_sum.";
        var hooks = Reference.Keys.Where(k => k.StartsWith(prefix) && !k.StartsWith(prefix + "param.") && !k.StartsWith(prefix + "hidden_states.")).Select(k => k[prefix.Length..]).ToList();
        Assert.That(hooks, Does.Contain("blocks.0.attn.hook_pattern").And.Contain("blocks.1.attn.hook_attn_scores"));
        Assert.Multiple(() =>
        {
            foreach (var hook in hooks)
            {
                Assert.That(seen.ContainsKey(hook), $"the backward hook on {hook} never fired");
                if (!seen.TryGetValue(hook, out var got)) continue;
                var expected = Reference[prefix + hook];
                var magnitude = Math.Max(1, expected.Abs().Max().ToDouble());
                Assert.That(MaxAbsDiff(expected, got), Is.LessThanOrEqualTo(1e-4 * magnitude), hook);
            }
        });
    }

    [Test]
    public void DownstreamReplacementReachesUpstreamHooks()
    {
        using var bridge = TransformerBridge.Load(Fixtures.Path(model));
        using var scope = Torch.NewScope();
        Tensor? seenAtResidPost0 = null, original = null;
        bridge.AddBackwardHook("blocks.1.hook_resid_pre", (g, _) => { original = g.Detach(); return g * 2; });
        bridge.AddBackwardHook("blocks.0.hook_resid_post", (g, _) => { seenAtResidPost0 = g.Detach(); return null; });
        LastLogitsSum(bridge.Forward(Tokens)).Backward();
        Assert.That(MaxAbsDiff(original! * 2, seenAtResidPost0!), Is.EqualTo(0), "resid_post of block 0 sees the doubled gradient of resid_pre of block 1");
    }

    [Test]
    public void HooksOnOnePointRunInRegistrationOrderAndCanBeRemoved()
    {
        using var bridge = TransformerBridge.Load(Fixtures.Path(model));
        using var scope = Torch.NewScope();
        var order = new List<string>();
        var a = bridge.AddBackwardHook("blocks.0.attn.hook_z", (g, _) => { order.Add("a"); return g + 1; });
        Tensor? seenByB = null, seenByA = null;
        bridge.AddBackwardHook("blocks.0.attn.hook_z", (g, _) => { order.Add("b"); seenByB = g.Detach(); return null; });
        a.Dispose();
        a = bridge.AddBackwardHook("blocks.0.attn.hook_z", (g, _) => { order.Add("c"); seenByA = g.Detach(); return null; });
        LastLogitsSum(bridge.Forward(Tokens)).Backward();
        Assert.That(order, Is.EqualTo(new[] { "b", "c" }));
        Assert.That(MaxAbsDiff(seenByB!, seenByA!), Is.EqualTo(0));
        bridge.ResetHooks();
        order.Clear();
        LastLogitsSum(bridge.Forward(Tokens)).Backward();
        Assert.That(order, Is.Empty);
    }

    [Test]
    public void WrongShapeFromABackwardHookNamesTheHookAndShapes()
    {
        using var bridge = TransformerBridge.Load(Fixtures.Path(model));
        using var scope = Torch.NewScope();
        bridge.AddBackwardHook("blocks.0.hook_attn_out", (g, _) => g.Narrow(1, 0, 3));
        var ex = Assert.Throws<HookException>(() => LastLogitsSum(bridge.Forward(Tokens)).Backward());
        Assert.That(ex!.Message, Does.Contain("blocks.0.hook_attn_out").And.Contain("[2, 3, 64]").And.Contain("[2, 12, 64]"));
    }

    [Test]
    public void ExceptionInABackwardHookReachesTheCallerOfBackward()
    {
        using var bridge = TransformerBridge.Load(Fixtures.Path(model));
        using var scope = Torch.NewScope();
        bridge.AddBackwardHook("blocks.1.mlp.hook_post", (_, _) => throw new TimeoutException("deliberate"));
        var ex = Assert.Throws<HookException>(() => LastLogitsSum(bridge.Forward(Tokens)).Backward());
        Assert.That(ex!.HookName, Is.EqualTo("blocks.1.mlp.hook_post"));
        Assert.That(ex.InnerException, Is.TypeOf<TimeoutException>());
    }

    [Test]
    public void TokenHookPointRefusesBackwardHooks()
    {
        using var bridge = TransformerBridge.Load(Fixtures.Path(model), new BridgeOptions { AllOptionalHooks = true });
        var ex = Assert.Throws<InvalidOperationException>(() => bridge.AddBackwardHook("hook_tokens", (_, _) => null));
        Assert.That(ex!.Message, Does.Contain("no gradient"));
    }

    [Test]
    public void BackwardHookUnderNoGradSaysWhyItCannotFire()
    {
        using var bridge = TransformerBridge.Load(Fixtures.Path(model));
        using var scope = Torch.NewScope();
        bridge.AddBackwardHook("hook_embed", (_, _) => null);
        using var noGrad = Torch.NoGrad();
        var ex = Assert.Throws<HookException>(() => bridge.Forward(Tokens));
        Assert.That(ex!.Message, Does.Contain("does not require grad"));
    }
}

/// <summary>
/// Zeroing GPT-2's <c>blocks.0.hook_resid_mid</c> gradient: every parameter that reaches the logits only
/// through resid_mid of block 0 (embeddings, block 0's ln1 and attention) gets exactly zero gradient, and
/// every other parameter keeps PyTorch's gradient from the fixture (their paths do not pass through it).
/// </summary>
public class GradientReplacementTests
{
    [Test]
    public void ZeroingResidMidGradientCutsExactlyTheUpstreamParameters()
    {
        using var reference = new DisposableDictionary(SafeTensors.Load(Path.Combine(Fixtures.Path("tiny-gpt2"), "reference.safetensors")));
        using var bridge = TransformerBridge.Load(Fixtures.Path("tiny-gpt2"));
        using var scope = Torch.NewScope();
        bridge.AddBackwardHook("blocks.0.hook_resid_mid", (g, _) => g * 0);
        bridge.Forward(reference["input_ids"]).Select(1, -1).Sum().Backward();
        string[] cut = ["transformer.wpe.weight", "transformer.h.0.ln_1.weight", "transformer.h.0.ln_1.bias",
            "transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_attn.bias", "transformer.h.0.attn.c_proj.weight", "transformer.h.0.attn.c_proj.bias"];
        Assert.Multiple(() =>
        {
            foreach (var (name, p) in bridge.NamedParameters())
            {
                if (cut.Contains(name))
                {
                    Assert.That(p.Grad!.Abs().Max().ToDouble(), Is.EqualTo(0), $"{name} is upstream of resid_mid 0 only");
                }
                else if (name == "transformer.wte.weight")
                {
                    // Tied: its embedding share is cut, its unembedding share remains. The unembedding share
                    // alone is ln_final's output summed over the last positions, scattered to every vocab row.
                    Assert.That(p.Grad!.Abs().Max().ToDouble(), Is.GreaterThan(0));
                }
                else
                {
                    var expected = reference[$"grad.last_logits_sum.param.{name}"];
                    var d = (expected - p.Grad!).Abs().Max().ToDouble();
                    Assert.That(d, Is.LessThanOrEqualTo(1e-4), $"{name} does not depend on resid_mid 0's gradient: {d:G3}");
                }
            }
        });
    }

    private sealed class DisposableDictionary(Dictionary<string, Tensor> inner) : IDisposable
    {
        public Tensor this[string key] => inner[key];
        public void Dispose()
        {
            foreach (var t in inner.Values) t.Dispose();
        }
    }
}
