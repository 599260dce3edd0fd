using System.Text.Json;
using SharpLens.Conversions;
using SharpLens.Tensors;

namespace SharpLens.Adapters;

/// <summary>A TransformerLens weight declared as a conversion of one HF parameter (or zeros when it has none).</summary>
public sealed record TlWeight(string TlName, string? HfName, WeightConversion Conversion, long[]? ZerosShape = null);

/// <summary>
/// The tensor names of one architecture by role (llama.cpp's <c>LLM_TENSOR_NAMES</c>): a module path per role, without the
/// <c>.weight</c>/<c>.bias</c> suffix; <c>{i}</c> stands for the block index. A role the architecture lacks stays null.
/// Everything else (expected tensors and shapes, the component mapping, the TransformerLens conversions) is derived from this
/// table and the <see cref="TransformerConfig"/>.
/// </summary>
public sealed record TensorNames
{
    /// <summary>Token embedding [vocab, d_model].</summary>
    public required string Embed { get; init; }
    /// <summary>Learned position embedding [n_ctx, d_model] (GPT-2).</summary>
    public string? PosEmbed { get; init; }
    /// <summary>The norm before attention.</summary>
    public required string Ln1 { get; init; }
    /// <summary>The norm of the attention output (Gemma 2's <c>post_attention_layernorm</c>), with <see cref="TransformerConfig.UsePostNorms"/>.</summary>
    public string? Ln1Post { get; init; }
    /// <summary>The norm before the MLP.</summary>
    public required string Ln2 { get; init; }
    /// <summary>The norm of the MLP output (Gemma 2's <c>post_feedforward_layernorm</c>), with <see cref="TransformerConfig.UsePostNorms"/>.</summary>
    public string? Ln2Post { get; init; }
    /// <summary>One weight fusing q, k and v (its part order is <see cref="ArchitectureAdapter.QkvOrder"/>); else <see cref="Q"/>, <see cref="K"/>, <see cref="V"/>.</summary>
    public string? Qkv { get; init; }
    /// <summary>The query projection.</summary>
    public string? Q { get; init; }
    /// <summary>The key projection.</summary>
    public string? K { get; init; }
    /// <summary>The value projection.</summary>
    public string? V { get; init; }
    /// <summary>The attention output projection.</summary>
    public required string O { get; init; }
    /// <summary>The MLP input (up) projection; unused when <see cref="MlpGateUp"/> is set.</summary>
    public string? MlpIn { get; init; }
    /// <summary>The gate projection of a gated MLP.</summary>
    public string? MlpGate { get; init; }
    /// <summary>One weight fusing gate (first half) and up (second half) of a gated MLP (Phi-3's <c>gate_up_proj</c>).</summary>
    public string? MlpGateUp { get; init; }
    /// <summary>The MLP output (down) projection.</summary>
    public required string MlpOut { get; init; }
    /// <summary>The final norm.</summary>
    public required string LnFinal { get; init; }
    /// <summary>The unembedding [vocab, d_model] when it is not tied to <see cref="Embed"/>.</summary>
    public required string Unembed { get; init; }
}

/// <summary>The order of the parts in a fused QKV weight's outputs.</summary>
public enum QkvPartOrder
{
    /// <summary>All of q, then all of k, then all of v (GPT-2's <c>c_attn</c>, Phi-3's <c>qkv_proj</c>).</summary>
    PartMajor,
    /// <summary>Per head: q_h, k_h, v_h (GPT-NeoX's <c>query_key_value</c>).</summary>
    HeadMajor,
}

/// <summary>
/// Everything SharpLens knows about one HuggingFace architecture, in one file per architecture: how to read its config, and
/// one table of tensor names by role (<see cref="Names"/>) with the weights' orientation. The expected-parameter check, the
/// component mapping (<see cref="Describe"/>) and the TransformerLens weight conversions (<see cref="TlWeights"/>) are derived
/// here from that table, once for every architecture.
/// </summary>
public abstract class ArchitectureAdapter
{
    /// <summary>The HF <c>model_type</c> this adapter reads.</summary>
    public abstract string ModelType { get; }

    /// <summary>Reads config.json into a <see cref="TransformerConfig"/>; missing fields raise errors naming the file.</summary>
    public abstract TransformerConfig ReadConfig(JsonElement config, string configPath);

    /// <summary>The architecture's tensor names by role.</summary>
    protected abstract TensorNames Names { get; }

    /// <summary>How the linear weights are stored: [out, in] (nn.Linear, the default) or [in, out] (GPT-2's Conv1D).</summary>
    protected virtual LinearWeightLayout WeightLayout => LinearWeightLayout.OutIn;

    /// <summary>The part order of a fused QKV weight (<see cref="TensorNames.Qkv"/>).</summary>
    protected internal virtual QkvPartOrder QkvOrder => QkvPartOrder.PartMajor;

    /// <summary>Checkpoint tensors that are known and deliberately not parameters (buffers). A tied unembedding's copy is not
    /// one of them: the loader compares it with the embedding (<see cref="TiedUnembedding"/>).</summary>
    public virtual bool IsIgnorableTensor(string name) => name.EndsWith(".rotary_emb.inv_freq");

    /// <summary>Every adapter SharpLens has, one per HF <c>model_type</c>.</summary>
    public static IReadOnlyList<ArchitectureAdapter> All { get; } =
    [
        new Gpt2Adapter(), new GptNeoXAdapter(), new LlamaAdapter(), new MistralAdapter(), new Qwen2Adapter(),
        new GemmaAdapter(), new Gemma2Adapter(), new Phi3Adapter(),
    ];

    /// <summary>The adapter for a <c>model_type</c>, or an exception listing the supported ones.</summary>
    public static ArchitectureAdapter For(string modelType, string configPath) =>
        All.FirstOrDefault(a => a.ModelType == modelType)
        ?? throw new ModelLoadException(configPath,
            $"model_type '{modelType}' is not supported; supported: {string.Join(", ", All.Select(a => a.ModelType))}");

    // ------------------------------------------------------------------ derived from the names table

    private static string Weight(string module, int i) => module.Replace("{i}", i.ToString()) + ".weight";
    private static string Bias(string module, int i) => module.Replace("{i}", i.ToString()) + ".bias";

    private static string Need(string? module, string role) =>
        module ?? throw new InvalidOperationException($"the adapter's tensor names have no {role}");

    /// <summary>The HF name of the unembedding weight (the embedding's, when tied).</summary>
    private string UnembedName(TransformerConfig cfg) => cfg.TiedEmbeddings ? Weight(Names.Embed, 0) : Weight(Names.Unembed, 0);

    /// <summary>
    /// With tied embeddings (<see cref="TransformerConfig.TiedEmbeddings"/>): the name the unembedding weight has in an
    /// untied checkpoint (<c>lm_head.weight</c> for most architectures), and the embedding weight it is tied to. Some tied
    /// checkpoints (a state dict saved as it is) still hold that tensor, as a copy of the embedding; the loader accepts it
    /// only when it equals the embedding, since a different one would be silently dropped. Null without tied embeddings.
    /// </summary>
    public (string Copy, string Embedding)? TiedUnembedding(TransformerConfig cfg)
    {
        ArgumentNullException.ThrowIfNull(cfg);
        return cfg.TiedEmbeddings ? (Weight(Names.Unembed, 0), Weight(Names.Embed, 0)) : null;
    }

    /// <summary>The component mapping, derived from <see cref="Names"/>.</summary>
    public ModelSpec Describe(TransformerConfig cfg)
    {
        var n = Names;
        long q = (long)cfg.NHeads * cfg.DHead, kv = (long)cfg.NKeyValueHeads * cfg.DHead;
        LinearSpec Linear(string module, int i, bool bias, OutputSlice? slice = null) =>
            new(Weight(module, i), bias ? Bias(module, i) : null, WeightLayout, slice);
        NormSpec Norm(string module, int i) => new(cfg.Norm, Weight(module, i), cfg.Norm == NormKind.LayerNorm ? Bias(module, i) : null);

        QkvSpec Qkv(int i)
        {
            if (n.Qkv is not { } fused)
                return new SeparateQkvSpec(Linear(Need(n.Q, "Q"), i, cfg.QkvBias), Linear(Need(n.K, "K"), i, cfg.QkvBias), Linear(Need(n.V, "V"), i, cfg.QkvBias));
            // The native QKV op splits the two layouts it knows (equal heads); any other fused weight is read as three slices.
            if (!cfg.IsGroupedQueryAttention && QkvOrder == QkvPartOrder.PartMajor && WeightLayout == LinearWeightLayout.InOut)
                return new FusedQkvSpec(Linear(fused, i, cfg.QkvBias), QkvLayout.PartMajorInOut);
            if (!cfg.IsGroupedQueryAttention && QkvOrder == QkvPartOrder.HeadMajor && WeightLayout == LinearWeightLayout.OutIn)
                return new FusedQkvSpec(Linear(fused, i, cfg.QkvBias), QkvLayout.HeadMajorOutIn);
            if (QkvOrder == QkvPartOrder.HeadMajor)
                throw new InvalidOperationException("a head-major fused QKV weight needs as many key/value heads as query heads");
            return new SeparateQkvSpec(Linear(fused, i, cfg.QkvBias, new(0, q)), Linear(fused, i, cfg.QkvBias, new(q, kv)),
                Linear(fused, i, cfg.QkvBias, new(q + kv, kv))) { Fused = Linear(fused, i, cfg.QkvBias) };
        }

        MlpSpec Mlp(int i)
        {
            var down = Linear(n.MlpOut, i, cfg.MlpBias);
            if (cfg.Mlp == MlpKind.Plain) return new MlpSpec(MlpKind.Plain, Linear(Need(n.MlpIn, "MlpIn"), i, cfg.MlpBias), null, down);
            if (n.MlpGateUp is { } gateUp)
                return new MlpSpec(MlpKind.Gated, Linear(gateUp, i, cfg.MlpBias, new(cfg.DMlp, cfg.DMlp)),
                    Linear(gateUp, i, cfg.MlpBias, new(0, cfg.DMlp)), down) { Fused = Linear(gateUp, i, cfg.MlpBias) };
            return new MlpSpec(MlpKind.Gated, Linear(Need(n.MlpIn, "MlpIn"), i, cfg.MlpBias), Linear(Need(n.MlpGate, "MlpGate"), i, cfg.MlpBias), down);
        }

        var blocks = Enumerable.Range(0, cfg.NLayers).Select(i => new BlockSpec(
            Norm(n.Ln1, i),
            new AttentionSpec(Qkv(i), Linear(n.O, i, cfg.AttentionOutBias)),
            cfg.UsePostNorms ? Norm(Need(n.Ln1Post, "Ln1Post"), i) : null,
            Norm(n.Ln2, i),
            Mlp(i),
            cfg.UsePostNorms ? Norm(Need(n.Ln2Post, "Ln2Post"), i) : null)).ToList();
        return new ModelSpec(Weight(n.Embed, 0), cfg.Positional == PositionalEmbedding.Learned ? Weight(Need(n.PosEmbed, "PosEmbed"), 0) : null,
            blocks, Norm(n.LnFinal, 0), UnembedName(cfg), null);
    }

    /// <summary>Every parameter the checkpoint must hold, HF names with shapes, in a stable order (each once, tied weights once).</summary>
    public IReadOnlyList<(string Name, long[] Shape)> ExpectedParameters(TransformerConfig cfg)
    {
        var spec = Describe(cfg);
        var shapes = new Dictionary<string, long[]>();
        var order = new List<string>();
        void Add(string name, long[] shape)
        {
            if (shapes.TryGetValue(name, out var known))
            {
                if (!known.SequenceEqual(shape))
                    throw new InvalidOperationException($"tensor '{name}' is declared as {Tensor.FormatShape(known)} and as {Tensor.FormatShape(shape)}");
                return;
            }
            shapes[name] = shape;
            order.Add(name);
        }
        // A linear spec's full weight: its own outputs, or the whole fused weight its slice reads (the fused size is known
        // from the slices: the largest offset + length of any spec reading that weight).
        var fusedOut = new Dictionary<string, long>();
        void NoteOut(LinearSpec l, long outFeatures) =>
            fusedOut[l.Weight] = Math.Max(fusedOut.GetValueOrDefault(l.Weight), l.Slice is { } s ? s.Offset + s.Length : outFeatures);
        void AddLinear(LinearSpec l, long inFeatures)
        {
            var outFeatures = fusedOut[l.Weight];
            Add(l.Weight, l.Layout == LinearWeightLayout.OutIn ? [outFeatures, inFeatures] : [inFeatures, outFeatures]);
            if (l.Bias is { } b) Add(b, [outFeatures]);
        }
        void AddNorm(NormSpec? norm)
        {
            if (norm is null) return;
            Add(norm.Weight, [cfg.DModel]);
            if (norm.Bias is { } b) Add(b, [cfg.DModel]);
        }
        long m = cfg.DModel, q = (long)cfg.NHeads * cfg.DHead, kv = (long)cfg.NKeyValueHeads * cfg.DHead;
        foreach (var b in spec.Blocks)
        {
            switch (b.Attention.Qkv)
            {
                case FusedQkvSpec f: NoteOut(f.Linear, q + 2 * kv); break;
                case SeparateQkvSpec s: NoteOut(s.Q, q); NoteOut(s.K, kv); NoteOut(s.V, kv); break;
            }
            NoteOut(b.Attention.Out, m);
            NoteOut(b.Mlp.In, cfg.DMlp);
            if (b.Mlp.Gate is { } g) NoteOut(g, cfg.DMlp);
            NoteOut(b.Mlp.Out, m);
        }
        Add(spec.Embed, [cfg.DVocab, m]);
        if (spec.PosEmbed is { } pos) Add(pos, [cfg.NCtx, m]);
        foreach (var b in spec.Blocks)
        {
            AddNorm(b.Ln1);
            switch (b.Attention.Qkv)
            {
                case FusedQkvSpec f: AddLinear(f.Linear, m); break;
                case SeparateQkvSpec s: AddLinear(s.Q, m); AddLinear(s.K, m); AddLinear(s.V, m); break;
            }
            AddLinear(b.Attention.Out, q);
            AddNorm(b.Ln1Post);
            AddNorm(b.Ln2);
            if (b.Mlp.Gate is { } gate) AddLinear(gate, m);
            AddLinear(b.Mlp.In, m);
            AddLinear(b.Mlp.Out, cfg.DMlp);
            AddNorm(b.Ln2Post);
        }
        AddNorm(spec.LnFinal);
        Add(spec.Unembed, [cfg.DVocab, m]);
        return order.Select(name => (name, shapes[name])).ToList();
    }

    /// <summary>
    /// The TransformerLens weights and how each derives from an HF parameter, from the component mapping: views (slices,
    /// transposes, rearranges) wherever the layout allows; computed where TransformerLens stores a processed value (Gemma's
    /// scaled W_E and 1 + w norm weights). Grouped-query key/value weights carry TransformerLens's <c>_W_K</c>/<c>_W_V</c> names.
    /// </summary>
    public IReadOnlyList<TlWeight> TlWeights(TransformerConfig cfg)
    {
        var spec = Describe(cfg);
        var id = WeightConversion.Identity;
        long nh = cfg.NHeads, nkv = cfg.NKeyValueHeads, dh = cfg.DHead;
        var list = new List<TlWeight>
        {
            new("embed.W_E", spec.Embed, cfg.EmbeddingScale == 1 ? id : WeightConversion.Scale(cfg.EmbeddingScale)),
        };
        if (spec.PosEmbed is { } pos) list.Add(new("pos_embed.W_pos", pos, id));

        void Norm(string tl, NormSpec? norm)
        {
            if (norm is null) return;
            list.Add(new($"{tl}.w", norm.Weight, norm.Kind == NormKind.RmsNormPlusOne ? WeightConversion.AddScalar(1) : id));
            if (norm.Bias is { } b) list.Add(new($"{tl}.b", b, id));
        }
        // A linear layer's weight as TransformerLens's [in, out] matrix, and its bias, each through `then`.
        // A missing bias is TransformerLens's zeros of biasShape.
        void Linear(string tlWeight, string? tlBias, LinearSpec l, long[] biasShape, WeightConversion? weightThen, WeightConversion? biasThen)
        {
            var steps = new List<WeightConversion>();
            var outDim = l.Layout == LinearWeightLayout.OutIn ? 0 : 1;
            if (l.Slice is { } s) steps.Add(WeightConversion.Narrow(outDim, s.Offset, s.Length));
            if (l.Layout == LinearWeightLayout.OutIn) steps.Add(WeightConversion.Rearrange("out in -> in out"));
            if (weightThen is not null) steps.Add(weightThen);
            list.Add(new(tlWeight, l.Weight, steps.Count == 0 ? id : steps.Count == 1 ? steps[0] : WeightConversion.Chain([.. steps])));
            if (tlBias is null) return;
            if (l.Bias is null)
            {
                list.Add(new(tlBias, null, id, biasShape));
                return;
            }
            var bias = new List<WeightConversion>();
            if (l.Slice is { } bs) bias.Add(WeightConversion.Narrow(0, bs.Offset, bs.Length));
            if (biasThen is not null) bias.Add(biasThen);
            list.Add(new(tlBias, l.Bias, bias.Count == 0 ? id : bias.Count == 1 ? bias[0] : WeightConversion.Chain([.. bias])));
        }
        void Heads(string tlWeight, string tlBias, LinearSpec l, long heads) =>
            Linear(tlWeight, tlBias, l, [heads, dh],
                WeightConversion.Rearrange("d_model (head d_head) -> head d_model d_head", ("head", heads)),
                WeightConversion.Rearrange("(head d_head) -> head d_head", ("head", heads)));

        for (var i = 0; i < cfg.NLayers; i++)
        {
            var b = spec.Blocks[i];
            var t = $"blocks.{i}";
            Norm($"{t}.ln1", b.Ln1);
            var kvPrefix = cfg.IsGroupedQueryAttention ? "_" : "";
            switch (b.Attention.Qkv)
            {
                case FusedQkvSpec { Layout: QkvLayout.PartMajorInOut } f:
                    for (var j = 0; j < 3; j++)
                    {
                        var x = "QKV"[j];
                        list.Add(new($"{t}.attn.W_{x}", f.Linear.Weight, WeightConversion.Chain(WeightConversion.Split(1, j, 3),
                            WeightConversion.Rearrange("d_model (head d_head) -> head d_model d_head", ("head", nh)))));
                        list.Add(f.Linear.Bias is { } fb
                            ? new($"{t}.attn.b_{x}", fb, WeightConversion.Chain(WeightConversion.Split(0, j, 3),
                                WeightConversion.Rearrange("(head d_head) -> head d_head", ("head", nh))))
                            : new($"{t}.attn.b_{x}", null, id, [nh, dh]));
                    }
                    break;
                case FusedQkvSpec { Layout: QkvLayout.HeadMajorOutIn } f:
                    for (var j = 0; j < 3; j++)
                    {
                        var x = "QKV"[j];
                        list.Add(new($"{t}.attn.W_{x}", f.Linear.Weight, WeightConversion.Chain(
                            WeightConversion.Rearrange("(head three d_head) d_model -> three head d_model d_head", ("head", nh), ("three", 3)),
                            WeightConversion.Select(0, j))));
                        list.Add(f.Linear.Bias is { } fb
                            ? new($"{t}.attn.b_{x}", fb, WeightConversion.Chain(
                                WeightConversion.Rearrange("(head three d_head) -> three head d_head", ("head", nh), ("three", 3)),
                                WeightConversion.Select(0, j)))
                            : new($"{t}.attn.b_{x}", null, id, [nh, dh]));
                    }
                    break;
                case SeparateQkvSpec s:
                    Heads($"{t}.attn.W_Q", $"{t}.attn.b_Q", s.Q, nh);
                    Heads($"{t}.attn.{kvPrefix}W_K", $"{t}.attn.{kvPrefix}b_K", s.K, nkv);
                    Heads($"{t}.attn.{kvPrefix}W_V", $"{t}.attn.{kvPrefix}b_V", s.V, nkv);
                    break;
                default:
                    throw new InvalidOperationException($"no TransformerLens conversion for {b.Attention.Qkv}");
            }
            Linear($"{t}.attn.W_O", $"{t}.attn.b_O", b.Attention.Out, [cfg.DModel],
                WeightConversion.Rearrange("(head d_head) d_model -> head d_head d_model", ("head", nh)), null);
            Norm($"{t}.ln1_post", b.Ln1Post);
            Norm($"{t}.ln2", b.Ln2);
            Linear($"{t}.mlp.W_in", $"{t}.mlp.b_in", b.Mlp.In, [cfg.DMlp], null, null);
            // TransformerLens's gated MLP has no b_gate; a checkpoint with a gate bias (mlp_bias) gets one of its own.
            if (b.Mlp.Gate is { } gate) Linear($"{t}.mlp.W_gate", gate.Bias is null ? null : $"{t}.mlp.b_gate", gate, [cfg.DMlp], null, null);
            Linear($"{t}.mlp.W_out", $"{t}.mlp.b_out", b.Mlp.Out, [cfg.DModel], null, null);
            Norm($"{t}.ln2_post", b.Ln2Post);
        }
        Norm("ln_final", spec.LnFinal);
        list.Add(new("unembed.W_U", spec.Unembed, WeightConversion.Rearrange("vocab d_model -> d_model vocab")));
        list.Add(new("unembed.b_U", spec.UnembedBias, id, spec.UnembedBias is null ? [cfg.DVocab] : null));
        return list;
    }

    // ------------------------------------------------------------------ config helpers shared by adapters

    /// <summary>A required integer field.</summary>
    protected static int RequireInt(JsonElement config, string field, string path) =>
        config.TryGetProperty(field, out var v) && v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out var i)
            ? i
            : throw new ModelLoadException(path, $"config field '{field}' is missing or not an integer");

    /// <summary>A required size (layers, widths, heads, vocabulary, context): an integer of at least 1.</summary>
    protected static int RequireSize(JsonElement config, string field, string path)
    {
        var value = RequireInt(config, field, path);
        return value >= 1 ? value : throw new ModelLoadException(path, $"config field '{field}' must be a positive integer, got {value}");
    }

    /// <summary>An optional size field (absent or null gives null; otherwise an integer of at least 1).</summary>
    protected static int? OptionalSize(JsonElement config, string field, string path)
    {
        if (!config.TryGetProperty(field, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt32(out var i))
            throw new ModelLoadException(path, $"config field '{field}' must be an integer, got {(v.ValueKind == JsonValueKind.Number ? v.GetRawText() : v.ValueKind)}");
        return i >= 1 ? i : throw new ModelLoadException(path, $"config field '{field}' must be a positive integer, got {i}");
    }

    /// <summary>An optional number field (absent or null gives <paramref name="fallback"/>); a number no double holds finitely (1e400) is refused.</summary>
    protected static double OptionalDouble(JsonElement config, string field, double fallback, string path)
    {
        if (!config.TryGetProperty(field, out var v) || v.ValueKind == JsonValueKind.Null) return fallback;
        return v.ValueKind == JsonValueKind.Number ? FiniteNumber(v, $"config field '{field}'", path)
            : throw new ModelLoadException(path, $"config field '{field}' must be a number, got {v.ValueKind}");
    }

    /// <summary>A JSON number as a finite double; <paramref name="what"/> names it in the error.</summary>
    protected static double FiniteNumber(JsonElement number, string what, string path) =>
        number.TryGetDouble(out var d) && double.IsFinite(d)
            ? d
            : throw new ModelLoadException(path, $"{what} holds {number.GetRawText()}, which is not a finite number");

    /// <summary>An optional positive number (a rotary base, a scale); zero or negative is refused.</summary>
    protected static double OptionalPositive(JsonElement config, string field, double fallback, string path)
    {
        var value = OptionalDouble(config, field, fallback, path);
        return value > 0 ? value : throw new ModelLoadException(path, $"config field '{field}' must be positive, got {value}");
    }

    /// <summary>An optional non-negative number (a norm epsilon); negative is refused.</summary>
    protected static double OptionalNonNegative(JsonElement config, string field, double fallback, string path)
    {
        var value = OptionalDouble(config, field, fallback, path);
        return value >= 0 ? value : throw new ModelLoadException(path, $"config field '{field}' must not be negative, got {value}");
    }

    /// <summary>
    /// The rotary dimension from the fraction of a head it covers (transformers: int(head_dim × fraction)): the fraction must
    /// be in (0, 1] and the dimension even and positive.
    /// </summary>
    protected static int RotaryDimension(JsonElement config, string field, double fallback, int dHead, string path)
    {
        var fraction = OptionalDouble(config, field, fallback, path);
        var rotaryDim = fraction is > 0 and <= 1 ? (int)(dHead * fraction) : 0;
        if (rotaryDim <= 0 || rotaryDim % 2 != 0)
            throw new ModelLoadException(path, $"config field '{field}' is {fraction}, which gives rotary dimension {rotaryDim} of head dimension {dHead}; " +
                                               "it must be in (0, 1] and give an even, positive rotary dimension");
        return rotaryDim;
    }

    /// <summary>True when the config names the field at all (null included): an absent field takes transformers' default, a null one means None.</summary>
    protected static bool Has(JsonElement config, string field) => config.TryGetProperty(field, out _);

    /// <summary>An optional boolean field.</summary>
    protected static bool OptionalBool(JsonElement config, string field, bool fallback, string path)
    {
        if (!config.TryGetProperty(field, out var v) || v.ValueKind == JsonValueKind.Null) return fallback;
        return v.ValueKind is JsonValueKind.True or JsonValueKind.False
            ? v.GetBoolean()
            : throw new ModelLoadException(path, $"config field '{field}' must be true or false, got {v.ValueKind}");
    }

    /// <summary>An optional string field.</summary>
    protected static string? OptionalString(JsonElement config, string field, string path)
    {
        if (!config.TryGetProperty(field, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        return v.ValueKind == JsonValueKind.String
            ? v.GetString()
            : throw new ModelLoadException(path, $"config field '{field}' must be a string, got {v.ValueKind}");
    }

    /// <summary>
    /// The config's <c>rope_scaling</c> (null when absent or null), validated against the types this family supports in
    /// transformers 4.44.2; any other type is refused by name.
    /// </summary>
    protected static RopeScaling? ReadRopeScaling(JsonElement c, string path, int maxPositions, int rotaryDim, IReadOnlyCollection<RopeType> allowed)
    {
        if (!c.TryGetProperty("rope_scaling", out var rs) || rs.ValueKind == JsonValueKind.Null) return null;
        if (rs.ValueKind != JsonValueKind.Object) throw new ModelLoadException(path, $"config field 'rope_scaling' must be an object, got {rs.ValueKind}");
        var name = OptionalString(rs, "rope_type", path) ?? OptionalString(rs, "type", path)
                   ?? throw new ModelLoadException(path, "rope_scaling has no 'rope_type' (or 'type')");
        RopeType? type = name switch
        {
            "default" => null,
            "linear" => RopeType.Linear,
            "dynamic" => RopeType.Dynamic,
            "llama3" => RopeType.Llama3,
            "longrope" or "su" => RopeType.LongRope,
            _ => throw new ModelLoadException(path, $"rope_scaling type '{name}' is not supported; supported here: " +
                                                    Supported(allowed)),
        };
        if (type is null) return null;
        if (!allowed.Contains(type.Value))
            throw new ModelLoadException(path, $"rope_scaling type '{name}' is not supported for this model type; supported here: " +
                                               Supported(allowed));
        double Factor() => rs.TryGetProperty("factor", out var f) && f.ValueKind == JsonValueKind.Number && FiniteNumber(f, "rope_scaling 'factor'", path) > 0
            ? f.GetDouble()
            : throw new ModelLoadException(path, $"rope_scaling '{name}' needs a positive 'factor'");
        IReadOnlyList<double> Factors(string field)
        {
            if (!rs.TryGetProperty(field, out var a) || a.ValueKind != JsonValueKind.Array)
                throw new ModelLoadException(path, $"rope_scaling '{name}' needs an array '{field}'");
            var values = a.EnumerateArray().Select(v => v.ValueKind == JsonValueKind.Number ? FiniteNumber(v, $"rope_scaling '{field}'", path)
                : throw new ModelLoadException(path, $"rope_scaling '{field}' holds a {v.ValueKind}, not a number")).ToList();
            if (values.Count != rotaryDim / 2)
                throw new ModelLoadException(path, $"rope_scaling '{field}' has {values.Count} entries; rotary dimension {rotaryDim} needs {rotaryDim / 2}");
            return values;
        }
        return type.Value switch
        {
            RopeType.Linear or RopeType.Dynamic => new RopeScaling { Type = type.Value, Factor = Factor() },
            RopeType.Llama3 => new RopeScaling
            {
                Type = RopeType.Llama3,
                Factor = Factor(),
                LowFreqFactor = OptionalDouble(rs, "low_freq_factor", 1, path),
                HighFreqFactor = OptionalDouble(rs, "high_freq_factor", 4, path),
                OriginalMaxPositionEmbeddings = OptionalSize(rs, "original_max_position_embeddings", path)
                    ?? throw new ModelLoadException(path, "rope_scaling 'llama3' needs 'original_max_position_embeddings'"),
            },
            _ => new RopeScaling
            {
                Type = RopeType.LongRope,
                ShortFactor = Factors("short_factor"),
                LongFactor = Factors("long_factor"),
                OriginalMaxPositionEmbeddings = OptionalSize(c, "original_max_position_embeddings", path)
                    ?? OptionalSize(rs, "original_max_position_embeddings", path) ?? maxPositions,
            },
        };
    }

    private static string Supported(IReadOnlyCollection<RopeType> allowed) =>
        allowed.Count == 0 ? "none (this model type has no rope scaling)" : string.Join(", ", allowed.Select(a => a.ToString().ToLowerInvariant()));

    /// <summary>Maps an HF activation name.</summary>
    protected static ActivationFunction ParseActivation(string name, string field, string path) => name switch
    {
        "gelu" => ActivationFunction.Gelu,
        "gelu_new" or "gelu_pytorch_tanh" or "gelu_fast" => ActivationFunction.GeluNew,
        "relu" => ActivationFunction.Relu,
        "silu" or "swish" => ActivationFunction.Silu,
        _ => throw new ModelLoadException(path, $"config field '{field}' names activation '{name}', which is not supported"),
    };
}

/// <summary>A model directory or file that cannot be loaded; the message names the file and the fault.</summary>
public sealed class ModelLoadException(string path, string fault, Exception? inner = null)
    : Exception($"{path}: {fault}", inner)
{
    /// <summary>The file (or directory) at fault.</summary>
    public string Path { get; } = path;

    /// <summary>What is wrong with it.</summary>
    public string Fault { get; } = fault;
}
