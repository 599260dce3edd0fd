using SharpLens.Adapters;

namespace SharpLens.Tests;

/// <summary>
/// The Llama family through the bridge against HuggingFace transformers 4.44.2 (eager attention), from the fixtures'
/// reference.safetensors: logits and loss in float32 and float64, every hidden state, every query head's attention
/// pattern (sliding windows and soft-caps applied), every submodule's output, and the gradients of both scalars
/// w.r.t. every parameter and hidden state.
///
/// Tolerances. float32: 1e-4 absolute (1e-4 × max(1, max|ref|) for gradients), as for GPT-2 and Pythia: two float32
/// implementations of the same math differ by a few float32 roundings (2^-24 relative) per accumulated term, about 1e-6
/// here, so 1e-4 leaves two orders of magnitude. float64: HuggingFace's "float64" run is not float64 throughout: its
/// Llama-family code computes RMSNorm, the attention softmax, the rotary angles and the loss in float32 and returns
/// <c>logits.float()</c>. The bridge reproduces those islands (<see cref="TransformerConfig.Float32Islands"/>), so the
/// float64 logits agree before that last cast to float64 rounding; the reference holds them rounded to float32, so each
/// of ours must lie within half a float32 ulp of the reference value (plus 1e-12 for float64 rounding), and the loss,
/// computed in float32 from those logits, equals the reference's.
/// </summary>
[TestFixtureSource(typeof(Fixtures), nameof(Fixtures.LlamaFamily))]
public class FamilyFixtureTests(string model) : FixtureTest(model)
{
    private const double Tolerance = 1e-4;

    private TransformerBridge LoadBridge(ScalarType dtype = ScalarType.Float32) =>
        TransformerBridge.Load(ModelDir, new BridgeOptions { DType = dtype });

    private static void AssertClose(Tensor expected, Tensor actual, string what, double tol = Tolerance)
    {
        var d = MaxAbsDiff(expected, actual);
        Assert.That(d, Is.LessThanOrEqualTo(tol), $"{what}: max abs difference {d:G3}");
    }

    /// <summary>Gradients: 1e-4 × max(1, max|ref|), the bound for gradients whose scale exceeds 1.</summary>
    private static void AssertGradientClose(Tensor expected, Tensor actual, string what)
    {
        using var scope = Torch.NewScope();
        var magnitude = Math.Max(1, expected.Abs().Max().ToDouble());
        AssertClose(expected, actual, what, Tolerance * magnitude);
    }

    [Test]
    public void LogitsAndLossMatchHuggingFaceInFloat32()
    {
        using var bridge = LoadBridge();
        using var scope = Torch.NewScope();
        AssertClose(Reference["logits"], bridge.Forward(Tokens), "logits");
        Assert.That(bridge.Loss(Tokens).ToDouble(), Is.EqualTo(Reference["loss"].ToDouble()).Within(Tolerance), "loss");
    }

    [Test]
    public void LogitsAndLossMatchHuggingFaceInFloat64()
    {
        using var bridge = LoadBridge(ScalarType.Float64);
        using var scope = Torch.NewScope();
        var logits = bridge.Forward(Tokens);
        var expected = Reference["f64.logits"];
        // Half a float32 ulp of each reference value: 2^-24 × 2^floor(log2|x|), at least half the smallest normal's ulp.
        var halfUlp = expected.Abs().Clamp(min: 1e-30).Log().Div(Math.Log(2)).Floor().Mul(Math.Log(2)).Exp().Mul(Math.Pow(2, -24));
        var excess = ((logits - expected).Abs() - halfUlp - 1e-12).Max().ToDouble();
        Assert.That(excess, Is.LessThanOrEqualTo(0), "float64 logits must round to HuggingFace's float32-cast float64 logits");
        var loss = bridge.Loss(Tokens).ToDouble();
        // Equal float32 logits give the same float32 cross-entropy; one float32 ulp of the loss allows for a logit whose
        // rounding falls the other way (it moves the mean loss by far less).
        Assert.That(loss, Is.EqualTo(Reference["f64.loss"].ToDouble()).Within(Math.Abs(loss) * Math.Pow(2, -23)),
            "the loss is HuggingFace's float32 cross-entropy of those logits");
    }

    [Test]
    public void HiddenStatesAttentionPatternsAndSubmodulesMatchHuggingFace()
    {
        using var bridge = LoadBridge();
        using var scope = Torch.NewScope();
        var cfg = bridge.Config;
        var spec = bridge.Adapter.Describe(cfg);
        var (logits, cache) = bridge.RunWithCache(Tokens);
        using (cache)
        {
            Tensor NormOut(string normalized, NormSpec norm)
            {
                var w = bridge.Parameter(norm.Weight).Detach();
                return cache[normalized] * (norm.Kind == NormKind.RmsNormPlusOne ? w + 1 : w);
            }
            Tensor Flat(string hook) => cache[hook].Reshape(cache[hook].Size(0), cache[hook].Size(1), -1);
            Tensor Act(Tensor x) => cfg.ActFn == ActivationFunction.Silu ? x * x.Sigmoid() : x.Gelu(tanhApproximation: true);
            var compared = 0;
            void Check(string hf, Tensor actual)
            {
                Assert.That(Reference.ContainsKey(hf), Is.True, $"reference has no {hf}");
                AssertClose(Reference[hf], actual, hf);
                compared++;
            }
            Assert.Multiple(() =>
            {
                for (var l = 0; l < cfg.NLayers; l++)
                {
                    var b = $"blocks.{l}.";
                    var hf = $"hf.act.model.layers.{l}";
                    var block = spec.Blocks[l];
                    Check($"hf.hidden_states.{l}", cache[b + "hook_resid_pre"]);
                    Check($"hf.attentions.{l}", cache[b + "attn.hook_pattern"]);
                    Check(hf + ".input_layernorm", NormOut(b + "ln1.hook_normalized", block.Ln1));
                    if (Model == "tiny-phi3")
                    {
                        Check(hf + ".self_attn.qkv_proj", Torch.Cat([Flat(b + "attn.hook_q"), Flat(b + "attn.hook_k"), Flat(b + "attn.hook_v")], -1));
                        Check(hf + ".mlp.gate_up_proj", Torch.Cat([cache[b + "mlp.hook_pre"], cache[b + "mlp.hook_pre_linear"]], -1));
                        Check(hf + ".mlp.activation_fn", Act(cache[b + "mlp.hook_pre"]));
                    }
                    else
                    {
                        Check(hf + ".self_attn.q_proj", Flat(b + "attn.hook_q"));
                        Check(hf + ".self_attn.k_proj", Flat(b + "attn.hook_k"));
                        Check(hf + ".self_attn.v_proj", Flat(b + "attn.hook_v"));
                        Check(hf + ".mlp.gate_proj", cache[b + "mlp.hook_pre"]);
                        Check(hf + ".mlp.up_proj", cache[b + "mlp.hook_pre_linear"]);
                        Check(hf + ".mlp.act_fn", Act(cache[b + "mlp.hook_pre"]));
                    }
                    if (cfg.UsePostNorms)
                    {
                        // Gemma 2: the attention and MLP outputs are normalised again before they join the residual.
                        Check(hf + ".post_attention_layernorm", cache[b + "hook_attn_out"]);
                        Check(hf + ".pre_feedforward_layernorm", NormOut(b + "ln2.hook_normalized", block.Ln2));
                        Check(hf + ".post_feedforward_layernorm", cache[b + "hook_mlp_out"]);
                    }
                    else
                    {
                        Check(hf + ".self_attn.o_proj", cache[b + "hook_attn_out"]);
                        Check(hf + ".self_attn", cache[b + "hook_attn_out"]);
                        Check(hf + ".post_attention_layernorm", NormOut(b + "ln2.hook_normalized", block.Ln2));
                        Check(hf + ".mlp.down_proj", cache[b + "hook_mlp_out"]);
                        Check(hf + ".mlp", cache[b + "hook_mlp_out"]);
                    }
                    Check(hf, cache[b + "hook_resid_post"]);
                }
                Check($"hf.hidden_states.{cfg.NLayers}", NormOut("ln_final.hook_normalized", spec.LnFinal));
                Check("hf.act.model.norm", NormOut("ln_final.hook_normalized", spec.LnFinal));
                using (var scale = Torch.Scalar(cfg.EmbeddingScale, ScalarType.Float32))
                    Check("hf.act.model.embed_tokens", cache["hook_embed"] / scale);
                var lmHead = Reference["hf.act.lm_head"];
                var cap = cfg.FinalLogitSoftCap;
                AssertClose(cap > 0 ? (lmHead / cap).Tanh() * cap : lmHead, logits, "lm_head (soft-capped where the model caps)");
            });
            Assert.That(compared, Is.GreaterThanOrEqualTo(cfg.NLayers * 12 + 3));
        }
    }

    [TestCase("loss")]
    [TestCase("last_logits_sum")]
    public void GradientsOfEveryParameterAndHiddenStateMatchPyTorch(string objective)
    {
        using var bridge = LoadBridge();
        using var scope = Torch.NewScope();
        Func<Tensor, Tensor> scalar = objective == "loss" ? l => bridge.LossOf(l, Tokens) : l => l.Select(1, -1).Sum();
        var (_, cache) = bridge.RunWithCache(Tokens, n => n.EndsWith("hook_resid_pre"), null, scalar);
        using (cache)
        {
            var named = bridge.NamedParameters();
            var expected = Reference.Keys.Where(k => k.StartsWith($"grad.{objective}.param.")).ToList();
            Assert.That(named.Select(p => $"grad.{objective}.param.{p.Name}"), Is.EquivalentTo(expected), "one gradient per HF parameter");
            Assert.Multiple(() =>
            {
                foreach (var (name, p) in named) AssertGradientClose(Reference[$"grad.{objective}.param.{name}"], p.Grad!, name);
                // hidden_states[l] for l < n_layers is the input of block l: the gradient a backward hook on resid_pre receives.
                for (var l = 0; l < bridge.Config.NLayers; l++)
                    AssertGradientClose(Reference[$"grad.{objective}.hidden_states.{l}"], cache[$"blocks.{l}.hook_resid_pre_grad"], $"hidden state {l}");
            });
        }
    }

    /// <summary>The reference HookedTransformer (its own einsum math over TL-layout weights) against HuggingFace too.</summary>
    [Test]
    public void ReferenceHookedTransformerMatchesHuggingFace()
    {
        using var ht = HookedTransformer.FromDirectory(ModelDir);
        using var scope = Torch.NewScope();
        AssertClose(Reference["logits"], ht.Forward(Tokens), "reference logits");
        Assert.That(ht.Loss(Tokens).ToDouble(), Is.EqualTo(Reference["loss"].ToDouble()).Within(Tolerance), "reference loss");
    }
}

/// <summary>
/// Phi-3 against TransformerLens 2.15.4, the one new family it builds from a local folder (the fixture carries its hook
/// activations, hook gradients and weights). Same tolerances as <see cref="FamilyFixtureTests"/>.
/// </summary>
public class Phi3TransformerLensTests() : FixtureTest("tiny-phi3")
{
    private static void Close(Tensor expected, Tensor actual, string what, double tol = 1e-4)
    {
        var d = MaxAbsDiff(expected, actual);
        Assert.That(d, Is.LessThanOrEqualTo(tol), $"{what}: max abs difference {d:G3}");
    }

    private static void GradientClose(Tensor expected, Tensor actual, string what)
    {
        using var scope = Torch.NewScope();
        Close(expected, actual, what, 1e-4 * Math.Max(1, expected.Abs().Max().ToDouble()));
    }

    /// <summary>
    /// Phi-3 is the one family TransformerLens 2.15.4 builds from a local folder: its hook activations, hook gradients and
    /// weights are in the fixture, and the bridge and the reference must both reproduce every one (RMSNorm's hook_normalized
    /// before the weight, hook_pre_linear, fused qkv_proj and gate_up_proj read as views).
    /// </summary>
    [Test]
    public void Phi3MatchesTransformerLensHookForHook()
    {
        using var bridge = TransformerBridge.Load(ModelDir);
        using var ht = HookedTransformer.FromDirectory(ModelDir);
        using var scope = Torch.NewScope();
        const string grad = "grad.last_logits_sum.";
        var acts = Reference.Keys.Where(k => k.StartsWith("act.")).Select(k => k[4..]).ToList();
        var grads = Reference.Keys.Where(k => k.StartsWith(grad) && !k.StartsWith(grad + "param.") && !k.StartsWith(grad + "hidden_states."))
            .Select(k => k[grad.Length..]).ToList();
        Assert.That(acts, Has.Count.GreaterThan(40));
        foreach (var (name, model) in new (string, HookedModel)[] { ("bridge", bridge), ("reference", ht) })
        {
            var (_, cache) = model.RunWithCache(Tokens, null, null, l => l.Select(1, -1).Sum());
            using (cache)
                Assert.Multiple(() =>
                {
                    foreach (var hook in acts) Close(Reference["act." + hook], cache[hook], $"{name} {hook}");
                    foreach (var hook in grads) GradientClose(Reference[grad + hook], cache[hook + "_grad"], $"{name} {hook} gradient");
                });
        }
        var tl = bridge.TlNamedParameters().ToDictionary(p => p.Name, p => p.Weight);
        var expected = Reference.Keys.Where(k => k.StartsWith("tl.") && !k.Contains("rotary_")).Select(k => k[3..]).ToList();
        Assert.That(tl.Keys, Is.EquivalentTo(expected), "TransformerLens's weight names");
        Assert.Multiple(() =>
        {
            foreach (var name in expected) Close(Reference["tl." + name], tl[name], name, 0);
        });
    }
}
