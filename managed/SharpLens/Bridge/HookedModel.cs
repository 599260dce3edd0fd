using System.Text.RegularExpressions;

namespace SharpLens;

/// <summary>
/// What every hooked model shares: the TransformerLens hook points, forward and backward hooks, caching,
/// and the loss. <see cref="TransformerBridge"/> (over HF weights) and <see cref="HookedTransformer"/>
/// (over TL-layout weights) derive from it with independent forward passes, so the verification suite
/// can compare them hook by hook.
/// </summary>
public abstract class HookedModel : IDisposable
{
    private readonly Dictionary<string, HookPoint> _hooks = new();
    private protected readonly HookPoint _hookEmbed, _hookPosEmbed, _hookTokens, _lnFinalScale, _lnFinalNormalized;
    private protected readonly BlockHooks[] _blocks;

    /// <summary>Creates every hook point of a model with this configuration, in TransformerLens order.</summary>
    protected HookedModel(TransformerConfig config)
    {
        Config = config;
        _hookTokens = NewHook("hook_tokens", c => c.UseHookTokens, nameof(TransformerConfig.UseHookTokens), differentiable: false);
        _hookEmbed = NewHook("hook_embed");
        _hookPosEmbed = NewHook("hook_pos_embed", exists: config.Positional == PositionalEmbedding.Learned);
        _blocks = Enumerable.Range(0, config.NLayers).Select(i => new BlockHooks(this, i)).ToArray();
        _lnFinalScale = NewHook("ln_final.hook_scale");
        _lnFinalNormalized = NewHook("ln_final.hook_normalized");
    }

    /// <summary>The model's configuration, including the switches for optional hook points.</summary>
    public TransformerConfig Config { get; }

    /// <summary>The hook points of one block, created in TransformerLens order.</summary>
    protected sealed class BlockHooks
    {
        public readonly HookPoint ResidPre, Ln1Scale, Ln1Normalized, QInput, KInput, VInput, AttnIn, Q, K, V, RotQ, RotK,
            AttnScores, Pattern, Z, Result, Ln1PostScale, Ln1PostNormalized, AttnOut, ResidMid, MlpIn, Ln2Scale, Ln2Normalized,
            MlpPre, MlpPreLinear, MlpPost, Ln2PostScale, Ln2PostNormalized, MlpOut, ResidPost;

        public BlockHooks(HookedModel b, int i)
        {
            var p = $"blocks.{i}.";
            ResidPre = b.NewHook(p + "hook_resid_pre");
            Ln1Scale = b.NewHook(p + "ln1.hook_scale");
            Ln1Normalized = b.NewHook(p + "ln1.hook_normalized");
            QInput = b.NewHook(p + "hook_q_input", c => c.UseSplitQkvInput, nameof(TransformerConfig.UseSplitQkvInput));
            KInput = b.NewHook(p + "hook_k_input", c => c.UseSplitQkvInput, nameof(TransformerConfig.UseSplitQkvInput));
            VInput = b.NewHook(p + "hook_v_input", c => c.UseSplitQkvInput, nameof(TransformerConfig.UseSplitQkvInput));
            AttnIn = b.NewHook(p + "hook_attn_in", c => c.UseAttnIn && !c.UseSplitQkvInput, nameof(TransformerConfig.UseAttnIn));
            Q = b.NewHook(p + "attn.hook_q");
            K = b.NewHook(p + "attn.hook_k");
            V = b.NewHook(p + "attn.hook_v");
            var rotary = b.Config.Positional == PositionalEmbedding.Rotary;
            RotQ = b.NewHook(p + "attn.hook_rot_q", exists: rotary);
            RotK = b.NewHook(p + "attn.hook_rot_k", exists: rotary);
            AttnScores = b.NewHook(p + "attn.hook_attn_scores");
            Pattern = b.NewHook(p + "attn.hook_pattern");
            Z = b.NewHook(p + "attn.hook_z");
            Result = b.NewHook(p + "attn.hook_result", c => c.UseAttnResult, nameof(TransformerConfig.UseAttnResult));
            var post = b.Config.UsePostNorms;
            Ln1PostScale = b.NewHook(p + "ln1_post.hook_scale", exists: post);
            Ln1PostNormalized = b.NewHook(p + "ln1_post.hook_normalized", exists: post);
            AttnOut = b.NewHook(p + "hook_attn_out");
            ResidMid = b.NewHook(p + "hook_resid_mid", exists: !b.Config.ParallelAttnMlp);
            MlpIn = b.NewHook(p + "hook_mlp_in", c => c.UseHookMlpIn, nameof(TransformerConfig.UseHookMlpIn));
            Ln2Scale = b.NewHook(p + "ln2.hook_scale");
            Ln2Normalized = b.NewHook(p + "ln2.hook_normalized");
            MlpPre = b.NewHook(p + "mlp.hook_pre");
            MlpPreLinear = b.NewHook(p + "mlp.hook_pre_linear", exists: b.Config.Mlp == MlpKind.Gated);
            MlpPost = b.NewHook(p + "mlp.hook_post");
            Ln2PostScale = b.NewHook(p + "ln2_post.hook_scale", exists: post);
            Ln2PostNormalized = b.NewHook(p + "ln2_post.hook_normalized", exists: post);
            MlpOut = b.NewHook(p + "hook_mlp_out");
            ResidPost = b.NewHook(p + "hook_resid_post");
        }
    }

    // ------------------------------------------------------------------ hooks

    /// <summary>Every hook point by TransformerLens name (optional ones included; they fire when their switch is on).</summary>
    public IReadOnlyDictionary<string, HookPoint> HookDict => _hooks;

    /// <summary>
    /// Creates a hook point. One the architecture does not have (<paramref name="exists"/> false: rotary hooks on
    /// GPT-2, resid_mid with a parallel residual) is kept out of <see cref="HookDict"/>, so it can never be hooked.
    /// </summary>
    protected HookPoint NewHook(string name, Func<TransformerConfig, bool>? enabledWhen = null, string? switchName = null,
        bool differentiable = true, bool exists = true)
    {
        var hp = new HookPoint(name, enabledWhen, switchName, differentiable);
        if (exists) _hooks.Add(name, hp);
        return hp;
    }

    protected HookPoint Hook(string name) =>
        _hooks.TryGetValue(name, out var hp)
            ? hp
            : throw new KeyNotFoundException($"no hook point '{name}' in this {Config.ModelType} model (see HookDict for the {_hooks.Count} names)");

    /// <summary>Adds a forward hook by hook-point name. Permanent hooks survive <see cref="ResetHooks"/>.</summary>
    public HookHandle AddHook(string name, ForwardHook hook, bool permanent = false) => AddHooks([Hook(name)], hook, permanent);

    /// <summary>Adds a forward hook to every hook point whose name satisfies <paramref name="filter"/>.</summary>
    public HookHandle AddHook(Func<string, bool> filter, ForwardHook hook, bool permanent = false) =>
        AddHooks(_hooks.Values.Where(h => filter(h.Name) && IsEnabled(h)).ToList(), hook, permanent);

    /// <summary>Adds a forward hook to every hook point whose name matches <paramref name="pattern"/>.</summary>
    public HookHandle AddHook(Regex pattern, ForwardHook hook, bool permanent = false) => AddHook(pattern.IsMatch, hook, permanent);

    private bool IsEnabled(HookPoint hp) => hp.EnabledWhen is null || hp.EnabledWhen(Config);

    private HookHandle AddHooks(IReadOnlyList<HookPoint> points, ForwardHook? hook, bool permanent, HookAction? action = null)
    {
        if (hook is null && action is null) throw new ArgumentNullException(nameof(hook));
        foreach (var hp in points)
            if (!IsEnabled(hp))
                throw new InvalidOperationException($"hook point '{hp.Name}' fires only with {hp.SwitchName}; turn it on in Config first");
        return new HookHandle(points.Select(hp =>
        {
            var r = hp.Add(hook, permanent, action);
            return (hp, (Action)(() => hp.Remove(r)));
        }).ToList());
    }

    /// <summary>
    /// Adds a built-in hook action by hook-point name: <see cref="HookAction.Cache"/>, <see cref="HookAction.Replace"/>
    /// and <see cref="HookAction.Ablate"/> act on the activation in the forward pass without calling a delegate;
    /// <see cref="HookAction.CacheGradient"/> captures the gradient natively during backward. Actions and callbacks on
    /// one hook point run in registration order.
    /// </summary>
    public HookHandle AddHook(string name, HookAction action, bool permanent = false) => AddActions([Hook(name)], action, permanent);

    /// <summary>Adds a built-in hook action to every enabled hook point whose name satisfies <paramref name="filter"/> (gradient actions: the differentiable ones).</summary>
    public HookHandle AddHook(Func<string, bool> filter, HookAction action, bool permanent = false)
    {
        ArgumentNullException.ThrowIfNull(action);
        return AddActions(_hooks.Values.Where(h => filter(h.Name) && IsEnabled(h) && (!action.IsBackward || h.IsDifferentiable)).ToList(), action, permanent);
    }

    private HookHandle AddActions(IReadOnlyList<HookPoint> points, HookAction action, bool permanent)
    {
        ArgumentNullException.ThrowIfNull(action);
        return action is HookAction.CacheGradientAction gradient
            ? AddBackwardHooks(points, null, permanent, gradient.Cache)
            : AddHooks(points, null, permanent, action);
    }

    /// <summary>
    /// Adds a backward hook by hook-point name: it receives the gradient of whatever objective is
    /// backpropagated w.r.t. that activation and may return a replacement. Hooks on one point run in
    /// registration order. Integer hook points (hook_tokens) refuse backward hooks.
    /// </summary>
    public HookHandle AddBackwardHook(string name, BackwardHook hook, bool permanent = false) => AddBackwardHooks([Hook(name)], hook, permanent);

    /// <summary>Adds a backward hook to every enabled, differentiable hook point whose name satisfies <paramref name="filter"/>.</summary>
    public HookHandle AddBackwardHook(Func<string, bool> filter, BackwardHook hook, bool permanent = false) =>
        AddBackwardHooks(_hooks.Values.Where(h => filter(h.Name) && IsEnabled(h) && h.IsDifferentiable).ToList(), hook, permanent);

    /// <summary>Adds a backward hook to every enabled, differentiable hook point whose name matches <paramref name="pattern"/>.</summary>
    public HookHandle AddBackwardHook(Regex pattern, BackwardHook hook, bool permanent = false) => AddBackwardHook(pattern.IsMatch, hook, permanent);

    /// <summary>Adds a user backward hook, or (with <paramref name="gradientCache"/>) the native gradient capture, to every point; all or none.</summary>
    private HookHandle AddBackwardHooks(IReadOnlyList<HookPoint> points, BackwardHook? hook, bool permanent, ActivationCache? gradientCache = null)
    {
        if (hook is null && gradientCache is null) throw new ArgumentNullException(nameof(hook));
        foreach (var hp in points)
            if (!IsEnabled(hp))
                throw new InvalidOperationException($"hook point '{hp.Name}' fires only with {hp.SwitchName}; turn it on in Config first");
        var entries = new List<(HookPoint, Action)>();
        try
        {
            foreach (var hp in points)
            {
                var r = hp.AddBackward(hook, permanent, gradientCache);
                entries.Add((hp, () => hp.Remove(r)));
            }
        }
        catch
        {
            foreach (var (_, remove) in entries) remove();
            throw;
        }
        return new HookHandle(entries);
    }

    /// <summary>Adds several hooks and removes them all when the returned scope is disposed: <c>using (bridge.Hooks(("hook_embed", h))) { ... }</c>.</summary>
    public IDisposable Hooks(params (string Name, ForwardHook Hook)[] hooks) => Hooks(hooks, []);

    /// <summary>Adds forward and backward hooks and removes them all when the returned scope is disposed.</summary>
    public IDisposable Hooks(IEnumerable<(string Name, ForwardHook Hook)> forward, IEnumerable<(string Name, BackwardHook Hook)> backward)
    {
        var handles = new List<HookHandle>();
        try
        {
            foreach (var (name, hook) in forward) handles.Add(AddHook(name, hook));
            foreach (var (name, hook) in backward) handles.Add(AddBackwardHook(name, hook));
        }
        catch
        {
            foreach (var h in handles) h.Dispose();
            throw;
        }
        return new CompositeDisposable(handles);
    }

    /// <summary>Removes every hook except permanent ones (or all, with <paramref name="includingPermanent"/>).</summary>
    public void ResetHooks(bool includingPermanent = false)
    {
        foreach (var hp in _hooks.Values) hp.Reset(includingPermanent);
    }

    private sealed class CompositeDisposable(List<HookHandle> handles) : IDisposable
    {
        public void Dispose()
        {
            foreach (var h in handles) h.Dispose();
        }
    }

    // ------------------------------------------------------------------ running

    /// <summary>The forward pass proper; every tensor it creates lands in the caller's scope.</summary>
    protected abstract Tensor RunModel(Tensor tokens, Tensor? attentionMask);

    /// <summary>Logits [batch, pos, vocab] for int64 token ids [batch, pos]; <paramref name="attentionMask"/> [batch, pos] marks real tokens with 1.</summary>
    public Tensor Forward(Tensor tokens, Tensor? attentionMask = null)
    {
        ThrowIfDisposed();
        var outer = DisposeScope.Current;
        using var threads = ThreadsFor(tokens);
        using var scope = Torch.NewScope();
        var logits = RunModel(OnModelDevice(tokens), attentionMask is null ? null : OnModelDevice(attentionMask));
        return outer is null ? logits.DetachFromScope() : logits.MoveToOuterScope();
    }

    /// <summary>
    /// Mean next-token cross-entropy as HuggingFace computes it; with a mask, predictions from or of padding
    /// are skipped. Per token [batch, pos - 1] with <paramref name="perToken"/> (skipped entries give 0).
    /// </summary>
    public Tensor Loss(Tensor tokens, Tensor? attentionMask = null, bool perToken = false)
    {
        ThrowIfDisposed();
        var outer = DisposeScope.Current;
        using var threads = ThreadsFor(tokens);
        using var scope = Torch.NewScope();
        (tokens, attentionMask) = (OnModelDevice(tokens), attentionMask is null ? null : OnModelDevice(attentionMask));
        var logits = RunModel(tokens, attentionMask);
        var loss = LossOf(logits, tokens, attentionMask, perToken);
        return outer is null ? loss.DetachFromScope() : loss.MoveToOuterScope();
    }

    /// <summary>
    /// The next-token loss of this model's <paramref name="logits"/> as HuggingFace computes it for the family: with
    /// <see cref="TransformerConfig.Float32Islands"/> a float64 model's logits are cast to float32 first (the Llama family's
    /// <c>logits.float()</c>), so the loss and its gradient are HuggingFace's; otherwise <see cref="LossFromLogits"/>.
    /// </summary>
    public Tensor LossOf(Tensor logits, Tensor tokens, Tensor? attentionMask = null, bool perToken = false)
    {
        if (!Config.Float32Islands || logits.DType != ScalarType.Float64) return LossFromLogits(logits, tokens, attentionMask, perToken);
        using var scope = Torch.NewScope();
        return LossFromLogits(logits.To(ScalarType.Float32), tokens, attentionMask, perToken).MoveToOuterScope();
    }

    /// <summary>
    /// Below this many floating-point operations a forward pass runs on one intra-op thread. Measured on this project's
    /// 2-core machine (tiny-gpt2, lens bench --model): idle, [1, 64] tokens (about 26 MFLOP) took 1.17 ms on one thread and
    /// 1.55 ms on two, [4, 128] (about 200 MFLOP) 6.6 ms and 5.8 ms. With two other processes busy on both cores, [1, 64]
    /// on two threads took 27.8–27.9 ms (every parallel region waits for a descheduled thread; idle 1.22–1.51 ms), and
    /// with this rule 1.16–1.66 ms (idle 1.20–1.25 ms).
    /// </summary>
    public const double SmallPassFlops = 100e6;

    /// <summary>
    /// For a pass too small to split (about 2 × tokens × parameters below <see cref="SmallPassFlops"/>), drops libtorch's
    /// intra-op threads (and so OpenBLAS's, one OpenMP pool) to one until disposed; null otherwise. On a shared machine a
    /// small pass then never waits on another thread.
    /// </summary>
    private protected IDisposable? ThreadsFor(Tensor tokens)
    {
        if (Config.Device.Type != DeviceType.CPU) return null;
        var threads = Torch.NumThreads;
        // The parameter set is fixed once loaded (moves keep every shape), so it is counted once, not per forward.
        _parameterCount ??= CountParameters();
        if (threads <= 1 || 2.0 * tokens.NumEl * _parameterCount.Value >= SmallPassFlops) return null;
        return Torch.ParallelWidth(1);
    }

    private long? _parameterCount;

    /// <summary>The number of parameters (elements), for sizing a pass's work; called once.</summary>
    private protected abstract long CountParameters();

    /// <summary>
    /// Inputs on the model's device: token ids and masks given on another device (the CPU, typically) are copied there, in
    /// the caller's scope, so every tensor of a pass follows the parameters' device.
    /// </summary>
    protected Tensor OnModelDevice(Tensor t) => t.Device == Config.Device ? t : t.To(Config.Device);

    /// <summary>
    /// Next-token cross-entropy of given logits (see <see cref="Loss"/>). A one-token sequence predicts nothing: its mean loss
    /// is NaN (0 / 0, as HuggingFace returns), per token it is [batch, 0], and the loss still has a graph whose backward gives
    /// zero gradients. Logits and tokens must agree on [batch, pos].
    /// </summary>
    public static Tensor LossFromLogits(Tensor logits, Tensor tokens, Tensor? attentionMask = null, bool perToken = false)
    {
        if (logits.Dim != 3 || tokens.Dim != 2 || logits.Size(0) != tokens.Size(0) || logits.Size(1) != tokens.Size(1))
            throw new ArgumentException($"logits [batch, pos, vocab] {Tensor.FormatShape(logits.Shape)} do not fit tokens [batch, pos] {Tensor.FormatShape(tokens.Shape)}");
        var (batch, pos, vocab) = (logits.Size(0), logits.Size(1), logits.Size(2));
        if (pos == 0) throw new ArgumentException("a next-token loss needs at least one position, got an empty sequence");
        using var scope = Torch.NewScope();
        if (tokens.Device != logits.Device) tokens = tokens.To(logits.Device);
        if (attentionMask is not null && attentionMask.Device != logits.Device) attentionMask = attentionMask.To(logits.Device);
        // Half-precision logits are upcast: log-softmax over a large vocabulary in 8 or 11 bits loses the loss,
        // and libtorch 1.13 has no float16 CPU kernel for it anyway. The loss is then float32.
        var wide = logits.DType is ScalarType.Float16 or ScalarType.BFloat16 ? logits.To(ScalarType.Float32) : logits;
        var predictions = wide.Narrow(1, 0, pos - 1).Reshape(-1, vocab);
        var targets = tokens.Narrow(1, 1, pos - 1).Reshape(-1);
        // The unmasked mean is libtorch's own reduction, as HuggingFace's CrossEntropyLoss computes it (summing the
        // per-token losses another way can differ in the last bits).
        if (attentionMask is null && !perToken)
            return Functional.CrossEntropy(predictions, targets, reduction: Reduction.Mean).MoveToOuterScope();
        var perPosition = Functional.CrossEntropy(predictions, targets, reduction: Reduction.None).View(batch, pos - 1);
        Tensor result;
        if (attentionMask is null)
        {
            result = perPosition;
        }
        else
        {
            // A prediction counts only when both the predicting and the predicted token are real: with left
            // padding, the pad before the first real token must not "predict" it.
            var valid = attentionMask.Narrow(1, 1, pos - 1).Ne(0).LogicalAnd(attentionMask.Narrow(1, 0, pos - 1).Ne(0)).To(perPosition.DType);
            var masked = perPosition * valid;
            result = perToken ? masked : masked.Sum() / valid.Sum();
        }
        return result.MoveToOuterScope();
    }

    /// <summary>Runs the model with hooks recording activations; returns logits and the cache (dispose both).</summary>
    public (Tensor Logits, ActivationCache Cache) RunWithCache(Tensor tokens, Func<string, bool>? namesFilter = null, Tensor? attentionMask = null) =>
        RunWithCache(tokens, namesFilter, attentionMask, backwardObjective: null);

    /// <summary>
    /// Runs the model recording activations and, when <paramref name="backwardObjective"/> is given, backpropagates
    /// the scalar it computes from the logits and records the gradient at every selected hook point under
    /// <c>&lt;name&gt;_grad</c> (TransformerLens's <c>incl_bwd</c>). Parameter gradients accumulate in <c>.Grad</c> as usual.
    /// </summary>
    public (Tensor Logits, ActivationCache Cache) RunWithCache(Tensor tokens, Func<string, bool>? namesFilter, Tensor? attentionMask,
        Func<Tensor, Tensor>? backwardObjective) =>
        RunWithCache(tokens, namesFilter, attentionMask, backwardObjective, new ActivationCache(this));

    /// <summary>As the public overload, recording into <paramref name="cache"/> (which it disposes if the run fails).</summary>
    internal (Tensor Logits, ActivationCache Cache) RunWithCache(Tensor tokens, Func<string, bool>? namesFilter, Tensor? attentionMask,
        Func<Tensor, Tensor>? backwardObjective, ActivationCache cache)
    {
        var points = _hooks.Values.Where(h => IsEnabled(h) && (namesFilter is null || namesFilter(h.Name))).ToList();
        // Built-in actions: no delegate per hook point forward, and gradients captured natively backward.
        using var handle = AddActions(points, HookAction.Cache(cache), permanent: false);
        using var backwardHandle = backwardObjective is null
            ? null
            : AddActions(points.Where(p => p.IsDifferentiable).ToList(), HookAction.CacheGradient(cache), permanent: false);
        try
        {
            var logits = Forward(tokens, attentionMask);
            if (backwardObjective is not null)
            {
                using var scope = Torch.NewScope();
                backwardObjective(logits).Backward();
            }
            return (logits, cache);
        }
        catch
        {
            cache.Dispose();
            throw;
        }
    }

    /// <summary>Runs the model with extra hooks that are removed afterwards; returns logits.</summary>
    public Tensor RunWithHooks(Tensor tokens, IEnumerable<(string Name, ForwardHook Hook)> hooks, Tensor? attentionMask = null)
    {
        using (Hooks(hooks.ToArray())) return Forward(tokens, attentionMask);
    }

    protected void ValidateInputs(Tensor tokens, Tensor? attentionMask, long cachedPositions = 0)
    {
        if (tokens.Dim != 2 || tokens.DType != ScalarType.Int64)
            throw new ArgumentException($"tokens must be int64 [batch, pos], got {tokens.DType.ToTorchName()} {Tensor.FormatShape(tokens.Shape)}");
        // One behaviour for the library and the CLI: an empty batch or an empty sequence has nothing to run.
        if (tokens.Size(0) == 0 || tokens.Size(1) == 0)
            throw new ArgumentException($"tokens must have at least one row and one position, got {Tensor.FormatShape(tokens.Shape)}");
        if (tokens.Size(1) + cachedPositions > Config.NCtx)
            throw new ArgumentException($"{tokens.Size(1) + cachedPositions} positions exceed the model's context of {Config.NCtx}");
        // Token values can be read only where tensors hold data (not on the meta device).
        if (tokens.NumEl > 0 && tokens.Device.Type != DeviceType.Meta)
        {
            using var lo = tokens.Min();
            using var hi = tokens.Max();
            if (lo.ToInt64() < 0 || hi.ToInt64() >= Config.DVocab)
                throw new ArgumentException($"token ids must lie in [0, {Config.DVocab}), got values from {lo.ToInt64()} to {hi.ToInt64()}");
        }
        if (attentionMask is not null && !attentionMask.Shape.SequenceEqual(tokens.Shape))
            throw new ArgumentException($"attention mask has shape {Tensor.FormatShape(attentionMask.Shape)} but tokens have {Tensor.FormatShape(tokens.Shape)}");
    }

    /// <summary>
    /// Position ids on <paramref name="device"/>: 0..pos-1, or with a mask the count of real tokens before each one (so left
    /// padding does not shift positions).
    /// </summary>
    protected static Tensor Positions(long batch, long pos, Tensor? attentionMask, Device device)
    {
        if (attentionMask is null) return Torch.Arange(0, pos, 1, ScalarType.Int64, device).Unsqueeze(0).Expand(batch, pos).Contiguous();
        // max(0, (real tokens up to and including this one) - 1), on the mask's own device (no copy to the host), in int64
        // throughout (a double scalar would promote the ids to floating point).
        using var real = attentionMask.Ne(0).To(ScalarType.Int64);
        using var count = real.Cumsum(1);
        using var one = Torch.Ones([], ScalarType.Int64, attentionMask.Device);
        using var zero = Torch.Zeros([], ScalarType.Int64, attentionMask.Device);
        using var shifted = count.Sub(one);
        return shifted.Maximum(zero);
    }

    /// <summary>Releases the model's weights.</summary>
    public abstract void Dispose();

    /// <summary>True once <see cref="Dispose"/> has run.</summary>
    public bool IsDisposed { get; protected set; }

    /// <summary>Throws <see cref="ObjectDisposedException"/> after <see cref="Dispose"/>.</summary>
    protected void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(IsDisposed, this);

    /// <summary>Returns <paramref name="value"/> unless the model is disposed.</summary>
    protected T ThrowIfDisposed<T>(T value)
    {
        ThrowIfDisposed();
        return value;
    }
}
