using SharpLens.Tokenization;

namespace SharpLens.Generation;

/// <summary>
/// Autoregressive generation from a hooked model, with every hook registered on the model active on every step.
/// <para>
/// By default a bridge keeps a key/value cache (TransformerLens's <c>use_past_kv_cache=True</c>): the first step runs the
/// prompt, each later step only the new position, and hooks fire on the new positions' activations (<c>hook_embed</c> as
/// [1, 1, d_model] after the first step). With <c>useKeyValueCache: false</c> (or backward hooks attached, or the reference
/// HookedTransformer) every step recomputes the whole sequence, and a hook sees the full activation of every step, as in a
/// plain <see cref="HookedModel.Forward"/>. Greedy decoding gives the same tokens either way.
/// </para>
/// <para>
/// Sampling follows HuggingFace's logits processors, in their order: divide by the temperature, keep the
/// top-k (ties with the k-th value kept), then keep the nucleus (top-p: drop the tokens whose ascending
/// cumulative probability is at most <c>1 - p</c>, always keeping the most likely one). Temperature 0 is
/// greedy argmax (the first maximum on ties, as <c>torch.argmax</c>). The draw itself happens on the CPU in
/// managed code: softmax of the filtered logits in float64 and one uniform number from a SplitMix64 stream
/// seeded with <c>seed</c>, so a seed gives the same tokens on every machine and runtime for the same logits.
/// </para>
/// </summary>
public static class TextGenerator
{
    /// <summary>
    /// Extends <paramref name="promptTokens"/> (int64 [1, n], n ≥ 1) by up to <paramref name="maxNewTokens"/> tokens
    /// and returns int64 [1, n + generated] on the prompt's device. Generation stops early after emitting
    /// <paramref name="stopTokenId"/> (which is kept, as HuggingFace keeps EOS).
    /// </summary>
    /// <param name="model">The model; its forward (and backward, if any are attached) hooks stay active.</param>
    /// <param name="promptTokens">int64 [1, n] prompt ids.</param>
    /// <param name="maxNewTokens">At most this many new tokens (0 returns a copy of the prompt).</param>
    /// <param name="temperature">0 for greedy argmax; otherwise logits are divided by it before sampling.</param>
    /// <param name="topK">Keep only the k most likely tokens (k ≥ 1).</param>
    /// <param name="topP">Keep the smallest set of most likely tokens whose probability reaches p, 0 &lt; p ≤ 1.</param>
    /// <param name="seed">Seed of the sampler; null draws a random seed.</param>
    /// <param name="stopTokenId">Stop after this token is generated.</param>
    /// <param name="useKeyValueCache">A bridge keeps a <see cref="KeyValueCache"/> so each step after the first runs only the new
    /// position (hooks fire on it); false reruns the whole sequence every step (hooks see every position each time). Ignored
    /// (whole sequence) for the reference HookedTransformer and while backward hooks are attached.</param>
    /// <exception cref="ArgumentOutOfRangeException">A negative <paramref name="maxNewTokens"/> or one that overruns the context,
    /// a negative or non-finite temperature, <paramref name="topK"/> below 1, <paramref name="topP"/> outside (0, 1], or a stop token outside the vocabulary.</exception>
    /// <exception cref="ArgumentException">The prompt is not int64 [1, n] with n ≥ 1.</exception>
    public static Tensor Generate(this HookedModel model, Tensor promptTokens, int maxNewTokens, double temperature = 1.0,
        int? topK = null, double? topP = null, ulong? seed = null, int? stopTokenId = null, bool useKeyValueCache = true)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(promptTokens);
        if (promptTokens.Dim != 2 || promptTokens.Size(0) != 1 || promptTokens.Size(1) < 1 || promptTokens.DType != ScalarType.Int64)
            throw new ArgumentException(
                $"the prompt must be int64 [1, n] with n >= 1, got {promptTokens.DType.ToTorchName()} {Tensor.FormatShape(promptTokens.Shape)}",
                nameof(promptTokens));
        ValidateSampling(temperature, topK, topP);
        var config = model.Config;
        if (stopTokenId is { } stop && (stop < 0 || stop >= config.DVocab))
            throw new ArgumentOutOfRangeException(nameof(stopTokenId), stop, $"the stop token must be an id in [0, {config.DVocab})");
        var promptLength = (int)promptTokens.Size(1);
        if (maxNewTokens < 0)
            throw new ArgumentOutOfRangeException(nameof(maxNewTokens), maxNewTokens, "the number of new tokens must be 0 or more");
        if ((long)promptLength + maxNewTokens > config.NCtx)
            throw new ArgumentOutOfRangeException(nameof(maxNewTokens), maxNewTokens,
                $"a prompt of {promptLength} tokens plus {maxNewTokens} new ones exceeds the model's context of {config.NCtx} positions");

        var device = promptTokens.Device;
        List<long> ids;
        using (var cpu = promptTokens.To(Device.CPU)) ids = [.. cpu.ToArray<long>()];
        var rng = new SplitMix64(seed ?? (ulong)Random.Shared.NextInt64());
        // Backward hooks need a graph (they throw under no-grad); otherwise nothing here needs one.
        var needGraph = model.HookDict.Values.Any(h => h.BackwardHookCount > 0);

        // The key/value cache: each step after the first runs one new position. Backward hooks need each step's whole graph,
        // so with any attached (or when asked) every step reruns the whole sequence instead.
        using var cache = useKeyValueCache && !needGraph && model is TransformerBridge cached ? cached.NewKeyValueCache() : null;
        for (var step = 0; step < maxNewTokens; step++)
        {
            GradModeScope? mode = needGraph ? null : Torch.NoGrad();
            long next;
            try
            {
                using var scope = Torch.NewScope();
                Tensor logits;
                if (cache is null)
                {
                    logits = model.Forward(Torch.FromArray(ids.ToArray(), 1, ids.Count).To(device));
                }
                else
                {
                    var fresh = ids.Skip((int)cache.Length).ToArray();
                    logits = ((TransformerBridge)model).Forward(Torch.FromArray(fresh, 1, fresh.Length).To(device), cache);
                }
                var last = logits.Select(0, 0).Select(0, -1).To(Device.CPU, ScalarType.Float64).ToArray<double>();
                next = temperature == 0 ? Argmax(last) : Sample(FilterLogits(last, temperature, topK, topP), rng);
            }
            finally
            {
                mode?.Dispose();
            }
            ids.Add(next);
            if (stopTokenId is { } s && next == s) break;
        }
        using var result = Torch.FromArray(ids.ToArray(), 1, ids.Count);
        var onDevice = result.To(device, copy: true);
        return onDevice;
    }

    /// <summary>
    /// Generates from text: encodes <paramref name="prompt"/> with <paramref name="tokenizer"/> (BOS first when
    /// <paramref name="prependBos"/>), generates as <see cref="Generate(HookedModel, Tensor, int, double, int?, double?, ulong?, int?)"/>,
    /// and returns the prompt followed by the decoded new tokens.
    /// </summary>
    /// <exception cref="ArgumentException">The prompt encodes to no tokens.</exception>
    public static string Generate(this HookedModel model, BpeTokenizer tokenizer, string prompt, int maxNewTokens, double temperature = 1.0,
        int? topK = null, double? topP = null, ulong? seed = null, int? stopTokenId = null, bool prependBos = false)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentNullException.ThrowIfNull(prompt);
        var ids = tokenizer.Encode(prompt, prependBos);
        if (ids.Length == 0) throw new ArgumentException("the prompt encodes to no tokens; give some text or prepend BOS", nameof(prompt));
        using var scope = Torch.NewScope();
        var promptTokens = Torch.FromArray(ids.Select(i => (long)i).ToArray(), 1, ids.Length);
        var output = model.Generate(promptTokens, maxNewTokens, temperature, topK, topP, seed, stopTokenId);
        var all = output.ToArray<long>();
        return prompt + tokenizer.Decode(all.Skip(ids.Length).Select(i => (int)i));
    }

    /// <summary>Throws <see cref="ArgumentOutOfRangeException"/> for sampling settings HuggingFace would refuse.</summary>
    public static void ValidateSampling(double temperature, int? topK, double? topP)
    {
        if (!(temperature >= 0) || double.IsInfinity(temperature))
            throw new ArgumentOutOfRangeException(nameof(temperature), temperature, "the temperature must be a finite number >= 0 (0 means greedy)");
        if (topK is { } k && k < 1)
            throw new ArgumentOutOfRangeException(nameof(topK), k, "top-k must be at least 1");
        if (topP is { } p && !(p > 0 && p <= 1))
            throw new ArgumentOutOfRangeException(nameof(topP), p, "top-p must lie in (0, 1]");
    }

    /// <summary>
    /// The logits after HuggingFace's warpers, in their order: divided by <paramref name="temperature"/>, then
    /// top-k, then top-p; removed tokens hold negative infinity. <paramref name="temperature"/> must be &gt; 0 here.
    /// </summary>
    public static double[] FilterLogits(ReadOnlySpan<double> logits, double temperature, int? topK = null, double? topP = null)
    {
        ValidateSampling(temperature, topK, topP);
        if (temperature == 0) throw new ArgumentOutOfRangeException(nameof(temperature), temperature, "filtering needs a temperature > 0 (0 is greedy argmax)");
        if (logits.Length == 0) throw new ArgumentException("no logits", nameof(logits));
        var scores = new double[logits.Length];
        for (var i = 0; i < scores.Length; i++) scores[i] = logits[i] / temperature;

        if (topK is { } k && k < scores.Length)
        {
            // TopKLogitsWarper: drop every score below the k-th largest (ties with it stay).
            var sorted = (double[])scores.Clone();
            Array.Sort(sorted, (a, b) => b.CompareTo(a));
            var threshold = sorted[k - 1];
            for (var i = 0; i < scores.Length; i++)
                if (scores[i] < threshold) scores[i] = double.NegativeInfinity;
        }

        if (topP is { } p && p < 1)
        {
            // TopPLogitsWarper: sort ascending, drop the tokens whose cumulative probability is <= 1 - p; the most likely always stays.
            var order = Enumerable.Range(0, scores.Length).ToArray();
            Array.Sort(order, (a, b) => scores[a] != scores[b] ? scores[a].CompareTo(scores[b]) : a.CompareTo(b));
            var probs = Softmax(scores);
            double cumulative = 0;
            for (var j = 0; j < order.Length - 1; j++)
            {
                cumulative += probs[order[j]];
                if (cumulative <= 1 - p) scores[order[j]] = double.NegativeInfinity;
            }
        }
        return scores;
    }

    /// <summary>The sampling distribution: softmax of <see cref="FilterLogits"/> (zeros where filtered out).</summary>
    public static double[] SamplingProbabilities(ReadOnlySpan<double> logits, double temperature, int? topK = null, double? topP = null) =>
        Softmax(FilterLogits(logits, temperature, topK, topP));

    private static double[] Softmax(double[] scores)
    {
        var max = double.NegativeInfinity;
        foreach (var s in scores) if (s > max) max = s;
        var result = new double[scores.Length];
        if (double.IsNegativeInfinity(max)) throw new ArgumentException("every token was filtered out");
        double sum = 0;
        for (var i = 0; i < scores.Length; i++) sum += result[i] = double.IsNegativeInfinity(scores[i]) ? 0 : Math.Exp(scores[i] - max);
        for (var i = 0; i < result.Length; i++) result[i] /= sum;
        return result;
    }

    private static long Argmax(double[] values)
    {
        var best = 0;
        for (var i = 1; i < values.Length; i++)
            if (values[i] > values[best] || (double.IsNaN(values[i]) && !double.IsNaN(values[best]))) best = i;
        return best;
    }

    private static long Sample(double[] filteredLogits, SplitMix64 rng)
    {
        var probs = Softmax(filteredLogits);
        var u = rng.NextDouble();
        double cumulative = 0;
        var lastPossible = 0;
        for (var i = 0; i < probs.Length; i++)
        {
            if (probs[i] <= 0) continue;
            lastPossible = i;
            cumulative += probs[i];
            if (u < cumulative) return i;
        }
        return lastPossible;  // rounding left the total just under u
    }

    /// <summary>SplitMix64 (Steele, Lea and Flood 2014): tiny, fast, and the same stream everywhere for a seed.</summary>
    private sealed class SplitMix64(ulong seed)
    {
        private ulong _state = seed;

        public ulong Next()
        {
            var z = _state += 0x9E3779B97F4A7C15UL;
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
            return z ^ (z >> 31);
        }

        /// <summary>A uniform double in [0, 1) with 53 random bits.</summary>
        public double NextDouble() => (Next() >> 11) * (1.0 / (1UL << 53));
    }
}
