using SharpLens.Testing;
using SharpLens.Tensors.IO;
using SharpLens.Tensors.Optim;

namespace SharpLens.Tests;

/// <summary>
/// The parameter views of <see cref="TransformerBridge"/>: HF leaves (each once, requiring grad) and the
/// TransformerLens-named weights built as views of them, checked element by element against the HF layouts,
/// live through in-place writes and optimizer steps; and that disposing the bridge frees the parameters.
/// </summary>
[TestFixtureSource(typeof(Fixtures), nameof(Fixtures.AllModels))]
public class ParameterViewTests(string model)
{
    // The fixture's sizes, from its config.json (Gemma's head_dim 24 is not d_model / n_heads).
    private long DModel, NHeads, NKv, DHead, DMlp, Vocab, NCtx;
    private bool Tied, Affine;

    private Dictionary<string, Tensor> _reference = null!;
    private Tensor Tokens => _reference["input_ids"];
    private bool IsGpt2 => model == "tiny-gpt2";
    private bool IsNeoX => model == "tiny-pythia";

    [OneTimeSetUp]
    public void LoadReference()
    {
        _reference = SafeTensors.Load(Path.Combine(Fixtures.Path(model), "reference.safetensors"));
        var (cfg, _) = SharpLens.Loading.ModelLoader.ReadConfig(Fixtures.Path(model));
        (DModel, NHeads, NKv, DHead, DMlp, Vocab, NCtx) = (cfg.DModel, cfg.NHeads, cfg.NKeyValueHeads, cfg.DHead, cfg.DMlp, cfg.DVocab, cfg.NCtx);
        Tied = cfg.TiedEmbeddings;
        // Gemma's TransformerLens W_E (× sqrt(d_model)) and norm weights (1 + w) are computed from their leaves, not views.
        Affine = cfg.EmbeddingScale != 1 || cfg.Norm == NormKind.RmsNormPlusOne;
    }

    /// <summary>TransformerLens's name of a key/value weight: <c>_W_K</c> with grouped-query attention.</summary>
    private string Kv(string name) => NKv != NHeads ? "_" + name : name;

    [OneTimeTearDown]
    public void Free()
    {
        foreach (var t in _reference.Values) t.Dispose();
    }

    private TransformerBridge Load() => TransformerBridge.Load(Fixtures.Path(model));

    private static void ForceFinalizers()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
    }

    /// <summary>HF name of the block prefix.</summary>
    private string Hf(int layer) => IsGpt2 ? $"transformer.h.{layer}" : IsNeoX ? $"gpt_neox.layers.{layer}" : $"model.layers.{layer}";

    /// <summary>
    /// The TL weights and where each element lives in its HF leaf: (TL name, HF name, view index → flat index
    /// into the HF tensor), written out by hand from the two layouts.
    /// </summary>
    private List<(string Tl, string HfName, Func<long[], long> Index)> Layout()
    {
        var list = new List<(string, string, Func<long[], long>)>();
        string[] qkv = ["Q", "K", "V"];
        if (IsGpt2)
        {
            list.Add(("embed.W_E", "transformer.wte.weight", i => i[0] * DModel + i[1]));
            list.Add(("pos_embed.W_pos", "transformer.wpe.weight", i => i[0] * DModel + i[1]));
            list.Add(("unembed.W_U", "transformer.wte.weight", i => i[1] * DModel + i[0]));  // W_U[m, v] = wte[v, m]
            list.Add(("ln_final.w", "transformer.ln_f.weight", i => i[0]));
            for (var l = 0; l < 2; l++)
            {
                var b = Hf(l);
                for (var j = 0; j < 3; j++)
                {
                    var part = j;
                    // c_attn.weight [d_model, 3 * d_model]: W_Q[h, m, d] = c_attn.weight[m, 0 * d_model + h * d_head + d]
                    list.Add(($"blocks.{l}.attn.W_{qkv[j]}", $"{b}.attn.c_attn.weight", i => i[1] * 3 * DModel + part * DModel + i[0] * DHead + i[2]));
                    list.Add(($"blocks.{l}.attn.b_{qkv[j]}", $"{b}.attn.c_attn.bias", i => part * DModel + i[0] * DHead + i[1]));
                }
                // c_proj.weight [(head d_head), d_model]: W_O[h, d, m] = c_proj.weight[h * d_head + d, m]
                list.Add(($"blocks.{l}.attn.W_O", $"{b}.attn.c_proj.weight", i => (i[0] * DHead + i[1]) * DModel + i[2]));
                list.Add(($"blocks.{l}.attn.b_O", $"{b}.attn.c_proj.bias", i => i[0]));
                list.Add(($"blocks.{l}.ln1.w", $"{b}.ln_1.weight", i => i[0]));
                list.Add(($"blocks.{l}.ln2.b", $"{b}.ln_2.bias", i => i[0]));
                list.Add(($"blocks.{l}.mlp.W_in", $"{b}.mlp.c_fc.weight", i => i[0] * DMlp + i[1]));
                list.Add(($"blocks.{l}.mlp.W_out", $"{b}.mlp.c_proj.weight", i => i[0] * DModel + i[1]));
            }
        }
        else if (!IsNeoX)
        {
            // The Llama family: nn.Linear [out, in] everywhere; Phi-3 fuses q|k|v and gate|up along the output rows.
            var phi3 = model == "tiny-phi3";
            long q = NHeads * DHead, kv = NKv * DHead;
            var unembed = Tied ? "model.embed_tokens.weight" : "lm_head.weight";
            list.Add(("unembed.W_U", unembed, i => i[1] * DModel + i[0]));  // W_U[m, v] = lm_head[v, m]
            if (!Affine)
            {
                list.Add(("embed.W_E", "model.embed_tokens.weight", i => i[0] * DModel + i[1]));
                list.Add(("ln_final.w", "model.norm.weight", i => i[0]));
            }
            for (var l = 0; l < 2; l++)
            {
                var b = Hf(l);
                // W_Q[h, m, d] = q_proj.weight[h * d_head + d, m]; Phi-3's k rows start at n_heads * d_head, v rows after k's.
                (string Hf, long Row0)[] sources = phi3
                    ? [($"{b}.self_attn.qkv_proj.weight", 0), ($"{b}.self_attn.qkv_proj.weight", q), ($"{b}.self_attn.qkv_proj.weight", q + kv)]
                    : [($"{b}.self_attn.q_proj.weight", 0), ($"{b}.self_attn.k_proj.weight", 0), ($"{b}.self_attn.v_proj.weight", 0)];
                string[] tlNames = [$"blocks.{l}.attn.W_Q", $"blocks.{l}.attn.{Kv("W_K")}", $"blocks.{l}.attn.{Kv("W_V")}"];
                for (var j = 0; j < 3; j++)
                {
                    var row0 = sources[j].Row0;
                    list.Add((tlNames[j], sources[j].Hf, i => (row0 + i[0] * DHead + i[2]) * DModel + i[1]));
                }
                // o_proj.weight [d_model, (head d_head)]: W_O[h, d, m] = o_proj.weight[m, h * d_head + d]
                list.Add(($"blocks.{l}.attn.W_O", $"{b}.self_attn.o_proj.weight", i => i[2] * q + i[0] * DHead + i[1]));
                if (!Affine) list.Add(($"blocks.{l}.ln1.w", $"{b}.input_layernorm.weight", i => i[0]));
                // W_gate[m, f] = gate_proj.weight[f, m]; W_in[m, f] = up_proj.weight[f, m] (Phi-3: gate_up_proj rows f and d_mlp + f)
                var (gate, up, upRow0) = phi3
                    ? ($"{b}.mlp.gate_up_proj.weight", $"{b}.mlp.gate_up_proj.weight", DMlp)
                    : ($"{b}.mlp.gate_proj.weight", $"{b}.mlp.up_proj.weight", 0L);
                list.Add(($"blocks.{l}.mlp.W_gate", gate, i => i[1] * DModel + i[0]));
                list.Add(($"blocks.{l}.mlp.W_in", up, i => (upRow0 + i[1]) * DModel + i[0]));
                list.Add(($"blocks.{l}.mlp.W_out", $"{b}.mlp.down_proj.weight", i => i[1] * DMlp + i[0]));
            }
        }
        else
        {
            list.Add(("embed.W_E", "gpt_neox.embed_in.weight", i => i[0] * DModel + i[1]));
            list.Add(("unembed.W_U", "embed_out.weight", i => i[1] * DModel + i[0]));  // W_U[m, v] = embed_out[v, m]
            list.Add(("ln_final.b", "gpt_neox.final_layer_norm.bias", i => i[0]));
            for (var l = 0; l < 2; l++)
            {
                var b = Hf(l);
                for (var j = 0; j < 3; j++)
                {
                    var part = j;
                    // query_key_value.weight [(head three d_head), d_model]: W_Q[h, m, d] = qkv.weight[h * 3 * d_head + 0 * d_head + d, m]
                    list.Add(($"blocks.{l}.attn.W_{qkv[j]}", $"{b}.attention.query_key_value.weight", i => (i[0] * 3 * DHead + part * DHead + i[2]) * DModel + i[1]));
                    list.Add(($"blocks.{l}.attn.b_{qkv[j]}", $"{b}.attention.query_key_value.bias", i => i[0] * 3 * DHead + part * DHead + i[1]));
                }
                // dense.weight [d_model (out), (head d_head) (in)]: W_O[h, d, m] = dense.weight[m, h * d_head + d]
                list.Add(($"blocks.{l}.attn.W_O", $"{b}.attention.dense.weight", i => i[2] * DModel + i[0] * DHead + i[1]));
                list.Add(($"blocks.{l}.ln1.b", $"{b}.input_layernorm.bias", i => i[0]));
                list.Add(($"blocks.{l}.ln2.w", $"{b}.post_attention_layernorm.weight", i => i[0]));
                // nn.Linear [out, in]: W_in[m, f] = dense_h_to_4h.weight[f, m]; W_out[f, m] = dense_4h_to_h.weight[m, f]
                list.Add(($"blocks.{l}.mlp.W_in", $"{b}.mlp.dense_h_to_4h.weight", i => i[1] * DModel + i[0]));
                list.Add(($"blocks.{l}.mlp.b_in", $"{b}.mlp.dense_h_to_4h.bias", i => i[0]));
                list.Add(($"blocks.{l}.mlp.W_out", $"{b}.mlp.dense_4h_to_h.weight", i => i[1] * DMlp + i[0]));
            }
        }
        return list;
    }

    /// <summary>Every element of <paramref name="view"/> holds the value <paramref name="index"/> says (the leaf was filled with 0, 1, 2, ...).</summary>
    private static void AssertHoldsLeafPositions(Tensor view, Func<long[], long> index, string what)
    {
        var values = view.ToArray<float>();
        var shape = view.Shape;
        var idx = new long[shape.Length];
        var wrong = 0;
        string? first = null;
        for (long k = 0; k < values.Length; k++)
        {
            var rest = k;
            for (var d = shape.Length - 1; d >= 0; d--)
            {
                idx[d] = rest % shape[d];
                rest /= shape[d];
            }
            var expected = index(idx);
            if (values[k] == expected) continue;
            wrong++;
            first ??= $"{Tensor.FormatShape(idx)} holds leaf element {values[k]}, expected {expected}";
        }
        Assert.That(wrong, Is.Zero, $"{what}: {wrong} of {values.Length} elements misplaced, first: {first}");
    }

    // ------------------------------------------------------------------ HF leaves

    [Test]
    public void NamedParametersAreTheHfLeavesEachOnce()
    {
        using var bridge = Load();
        var named = bridge.NamedParameters();
        var expectedNames = _reference.Keys.Where(k => k.StartsWith("grad.loss.param.")).Select(k => k["grad.loss.param.".Length..]).ToList();
        Assert.That(named.Select(p => p.Name), Is.EquivalentTo(expectedNames), "HF's named_parameters()");
        Assert.That(named.Select(p => p.Name), Is.Unique);
        Assert.That(named, Has.Count.EqualTo(expectedNames.Count));
        Assert.That(bridge.Parameters(), Is.EqualTo(named.Select(p => p.Parameter)).Using<Tensor>(ReferenceEquals), "Parameters() is NamedParameters() without names");
        if (IsGpt2)
        {
            Assert.That(named.Select(p => p.Name), Does.Contain("transformer.wte.weight"));
            Assert.That(named.Select(p => p.Name), Has.None.EqualTo("lm_head.weight"), "the tied unembedding is wte, listed once");
        }
        else if (IsNeoX)
        {
            Assert.That(named.Select(p => p.Name), Does.Contain("embed_out.weight"), "Pythia's unembedding is untied");
        }
        else
        {
            Assert.That(named.Select(p => p.Name).Contains("lm_head.weight"), Is.EqualTo(!Tied), "lm_head is a parameter exactly when untied");
        }
        var shapes = bridge.Adapter.ExpectedParameters(bridge.Config).ToDictionary(e => e.Name, e => e.Shape);
        Assert.Multiple(() =>
        {
            foreach (var (name, p) in named)
            {
                Assert.That(p.IsLeaf, Is.True, $"{name} is a leaf");
                Assert.That(p.RequiresGrad, Is.True, $"{name} requires grad");
                Assert.That(p.DType, Is.EqualTo(ScalarType.Float32), name);
                Assert.That(p.Shape, Is.EqualTo(shapes[name]), name);
                Assert.That(bridge.Parameter(name), Is.SameAs(p), name);
            }
            for (var i = 0; i < named.Count; i++)
                for (var j = i + 1; j < named.Count; j++)
                    Assert.That(named[i].Parameter.SharesStorageWith(named[j].Parameter), Is.False, $"{named[i].Name} and {named[j].Name} are distinct");
        });
        Assert.That(() => bridge.Parameter("lm_head.weight.nope"), Throws.InstanceOf<KeyNotFoundException>().With.Message.Contain("lm_head.weight.nope"));
    }

    // ------------------------------------------------------------------ TL views

    [Test]
    public void TlWeightsHaveTransformerLensShapes()
    {
        using var bridge = Load();
        using var scope = Torch.NewScope();
        var tl = bridge.TlNamedParameters().ToDictionary(p => p.Name, p => p.Weight);
        var expected = new Dictionary<string, long[]>
        {
            ["embed.W_E"] = [Vocab, DModel],
            ["blocks.0.attn.W_Q"] = [NHeads, DModel, DHead],
            [$"blocks.1.attn.{Kv("W_K")}"] = [NKv, DModel, DHead],
            [$"blocks.0.attn.{Kv("W_V")}"] = [NKv, DModel, DHead],
            ["blocks.1.attn.b_Q"] = [NHeads, DHead],
            [$"blocks.1.attn.{Kv("b_K")}"] = [NKv, DHead],
            ["blocks.0.attn.W_O"] = [NHeads, DHead, DModel],
            ["blocks.1.attn.b_O"] = [DModel],
            ["blocks.0.ln1.w"] = [DModel],
            ["blocks.1.mlp.W_in"] = [DModel, DMlp],
            ["blocks.0.mlp.b_in"] = [DMlp],
            ["blocks.1.mlp.W_out"] = [DMlp, DModel],
            ["ln_final.w"] = [DModel],
            ["unembed.W_U"] = [DModel, Vocab],
            ["unembed.b_U"] = [Vocab],
        };
        if (IsGpt2) expected["pos_embed.W_pos"] = [NCtx, DModel];
        else Assert.That(tl.Keys, Has.None.EqualTo("pos_embed.W_pos"), "rotary models have no positional table");
        if (!IsGpt2 && !IsNeoX) expected["blocks.0.mlp.W_gate"] = [DModel, DMlp];
        Assert.Multiple(() =>
        {
            foreach (var (name, shape) in expected) Assert.That(tl[name].Shape, Is.EqualTo(shape), name);
        });
    }

    [Test]
    public void TlWeightsAreViewsOfTheirHfLeaves()
    {
        using var bridge = Load();
        using var scope = Torch.NewScope();
        var tl = bridge.TlNamedParameters().ToDictionary(p => p.Name, p => p.Weight);
        // The ones the brief singles out (GPT-2's fused Conv1D split, NeoX's interleaved qkv and transposed Linear) ...
        string[] required = IsGpt2
            ? ["blocks.0.attn.W_Q", "blocks.0.attn.W_K", "blocks.1.attn.W_V", "blocks.0.attn.b_Q", "blocks.1.attn.W_O", "blocks.0.mlp.W_in",
               "blocks.1.mlp.W_out", "embed.W_E", "pos_embed.W_pos", "unembed.W_U"]
            : IsNeoX
                ? ["blocks.0.attn.W_Q", "blocks.1.attn.W_K", "blocks.0.attn.b_V", "blocks.1.attn.W_O", "blocks.0.mlp.W_in", "blocks.1.mlp.W_out",
                   "embed.W_E", "unembed.W_U"]
                : ["blocks.0.attn.W_Q", $"blocks.1.attn.{Kv("W_K")}", $"blocks.0.attn.{Kv("W_V")}", "blocks.1.attn.W_O", "blocks.0.mlp.W_in",
                   "blocks.0.mlp.W_gate", "blocks.1.mlp.W_out", "unembed.W_U"];
        var source = bridge.Adapter.TlWeights(bridge.Config).ToDictionary(w => w.TlName, w => w);
        Assert.Multiple(() =>
        {
            foreach (var name in required)
                Assert.That(tl[name].SharesStorageWith(bridge.Parameter(source[name].HfName!)), Is.True, $"{name} views {source[name].HfName}");
            // ... and in fact every TL weight with an HF source, except the affine ones (Gemma's scaled W_E and 1 + w norm
            // weights), which TransformerLens stores computed and so must be a computed tensor here too.
            foreach (var (name, w) in source.Where(s => s.Value.HfName is not null))
                Assert.That(tl[name].SharesStorageWith(bridge.Parameter(w.HfName!)), Is.EqualTo(w.Conversion.Affine is null),
                    $"{name} {(w.Conversion.Affine is null ? "views" : "is computed from")} {w.HfName}");
        });
    }

    [Test]
    public void UnembedBiasIsZerosOfVocabSize()
    {
        using var bridge = Load();
        using var scope = Torch.NewScope();
        var bU = bridge.TlNamedParameters().Single(p => p.Name == "unembed.b_U").Weight;
        Assert.That(bU.Shape, Is.EqualTo(new[] { Vocab }));
        Assert.That(bU.DType, Is.EqualTo(ScalarType.Float32));
        Assert.That(bU.ToArray<float>(), Has.All.EqualTo(0f));
        Assert.That(bridge.Parameters().Any(bU.SharesStorageWith), Is.False, "b_U is not part of any HF parameter");
    }

    [Test]
    public void InPlaceLeafWritesShowInEarlierTlViewsAtTheLayoutsPositions()
    {
        using var bridge = Load();
        using var scope = Torch.NewScope();
        var tl = bridge.TlNamedParameters().ToDictionary(p => p.Name, p => p.Weight);  // obtained before the writes
        var layout = Layout();
        using (Torch.NoGrad())
        {
            foreach (var hf in layout.Select(l => l.HfName).Distinct())
            {
                var leaf = bridge.Parameter(hf);
                leaf.CopyFrom(Torch.Arange(0, leaf.NumEl, 1, ScalarType.Float32).View(leaf.Shape));
            }
        }
        Assert.Multiple(() =>
        {
            foreach (var (tlName, hfName, index) in layout) AssertHoldsLeafPositions(tl[tlName], index, $"{tlName} <- {hfName}");
        });
    }

    [Test]
    public void AddingToTheFusedQkvLeafShiftsQKAndVViewsByExactlyThat()
    {
        using var bridge = Load();
        using var scope = Torch.NewScope();
        var tl = bridge.TlNamedParameters().ToDictionary(p => p.Name, p => p.Weight);
        // The leaf W_Q views: GPT-2's c_attn, NeoX's query_key_value and Phi-3's qkv_proj hold q, k and v; Llama's q_proj only q.
        var sources = bridge.Adapter.TlWeights(bridge.Config).ToDictionary(w => w.TlName, w => w.HfName);
        var leafName = sources["blocks.0.attn.W_Q"]!;
        var leaf = bridge.Parameter(leafName);
        var fused = leafName.Contains("c_attn") || leafName.Contains("query_key_value") || leafName.Contains("qkv_proj");
        string[] names = ["blocks.0.attn.W_Q", $"blocks.0.attn.{Kv("W_K")}", $"blocks.0.attn.{Kv("W_V")}", "blocks.1.attn.W_Q", "blocks.0.attn.W_O"];
        var before = names.ToDictionary(n => n, n => tl[n].ToArray<float>());
        using (Torch.NoGrad()) leaf.AddInPlace(1);
        Assert.Multiple(() =>
        {
            foreach (var n in names)
            {
                var moved = sources[n] == leafName;
                Assert.That(moved, Is.EqualTo(n == names[0] || (fused && Array.IndexOf(names, n) < 3)), $"{n} reads {leafName}");
                Assert.That(tl[n].ToArray<float>(), Is.EqualTo(moved ? before[n].Select(v => v + 1f).ToArray() : before[n]),
                    moved ? $"{n} moved by exactly 1" : $"{n} is another leaf and did not move");
            }
        });
    }

    [Test]
    public void AdamWStepOverParametersShowsInTlViewsObtainedBeforeIt()
    {
        using var bridge = Load();
        using var scope = Torch.NewScope();
        var views = bridge.TlNamedParameters().ToDictionary(p => p.Name, p => p.Weight);
        var before = views.ToDictionary(p => p.Key, p => p.Value.Detach().Clone());
        var sources = bridge.Adapter.TlWeights(bridge.Config).ToDictionary(w => w.TlName, w => w.HfName);
        var computed = bridge.Adapter.TlWeights(bridge.Config).Where(w => w.Conversion.Affine is not null).Select(w => w.TlName).ToHashSet();
        using var optimizer = new AdamW(bridge.Parameters(), lr: 1e-2, weightDecay: 0.01);
        var loss0 = bridge.Loss(Tokens).ToDouble();
        bridge.Loss(Tokens).Backward();
        optimizer.Step();
        var after = bridge.TlNamedParameters().ToDictionary(p => p.Name, p => p.Weight);
        Assert.Multiple(() =>
        {
            foreach (var (name, view) in views)
            {
                if (computed.Contains(name))
                {
                    // Gemma's scaled W_E and 1 + w norm weights are computed, as TransformerLens stores them: snapshots.
                    Assert.That(view.ValueEquals(before[name]), Is.True, $"{name} is a computed snapshot");
                    Assert.That(after[name].ValueEquals(before[name]), Is.False, $"{name} made after the step shows it");
                    continue;
                }
                Assert.That(view.ValueEquals(after[name]), Is.True, $"{name}: the earlier view shows the stepped weights");
                if (sources[name] is not null)
                    Assert.That(view.ValueEquals(before[name]), Is.False, $"{name} moved");
                else
                    Assert.That(view.ValueEquals(before[name]), Is.True, $"{name} has no HF parameter: zeros that stay zeros");
            }
        });
        Assert.That(bridge.Loss(Tokens).ToDouble(), Is.LessThan(loss0), "the step lowered the loss");
    }

    // ------------------------------------------------------------------ lifetime

    [Test]
    public void DisposingTheBridgeFreesItsParameters()
    {
        ForceFinalizers();
        var start = LiveTensorCount.Settled();
        var bridge = Load();
        var count = bridge.NamedParameters().Count;
        Assert.That(Torch.LiveTensors, Is.EqualTo(start + count), "one handle per parameter");
        var parameters = bridge.Parameters();
        using (Torch.NewScope())
        {
            _ = bridge.TlNamedParameters();
            bridge.Loss(Tokens).Backward();
            var (_, cache) = bridge.RunWithCache(Tokens);
            cache.Dispose();
            using var optimizer = new AdamW(bridge.Parameters());
            optimizer.Step();
        }
        Assert.That(Torch.LiveTensors, Is.EqualTo(start + count));
        bridge.Dispose();
        Assert.That(parameters.All(p => p.IsDisposed), Is.True);
        Assert.That(bridge.Parameters(), Is.Empty);
        ForceFinalizers();
        Assert.That(Torch.LiveTensors, Is.EqualTo(start));
        Assert.DoesNotThrow(bridge.Dispose, "disposing twice is harmless");
    }

    [Test]
    public void TlViewOutlivesTheBridgeAndIsFreedOnItsOwn()
    {
        ForceFinalizers();
        var start = LiveTensorCount.Settled();
        var bridge = Load();
        Tensor wq;
        float[] values;
        using (Torch.NewScope())
        {
            wq = bridge.TlNamedParameters().Single(p => p.Name == "blocks.1.attn.W_Q").Weight.DetachFromScope();
            values = wq.ToArray<float>();
        }
        bridge.Dispose();
        Assert.That(wq.ToArray<float>(), Is.EqualTo(values), "a view keeps its storage alive");
        wq.Dispose();
        ForceFinalizers();
        Assert.That(Torch.LiveTensors, Is.EqualTo(start));
    }

    /// <summary>
    /// After Dispose, _parameters is empty and Forward fails inside Parameter() with
    /// "KeyNotFoundException: no parameter 'transformer.wte.weight' in this gpt2 model", which reads like a broken
    /// checkpoint; Parameters() silently returns an empty list.
    /// </summary>
    [Test]
    public void UsingADisposedBridgeThrowsObjectDisposedException()
    {
        var bridge = Load();
        bridge.Dispose();
        Assert.That(() => bridge.Forward(Tokens), Throws.InstanceOf<ObjectDisposedException>());
        Assert.That(() => bridge.TlNamedParameters(), Throws.InstanceOf<ObjectDisposedException>());
    }
}
