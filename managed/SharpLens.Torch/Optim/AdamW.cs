namespace SharpLens.Tensors.Optim;

/// <summary>
/// Adam with decoupled weight decay: torch.optim.AdamW (PyTorch 1.13 single-tensor semantics). Per parameter
/// with gradient g, at step t (counted per parameter, from 1):
/// <code>
/// g = maximize ? -g : g
/// p = p * (1 - lr * weightDecay)                      (decoupled: before, and apart from, the gradient)
/// m = beta1 * m + (1 - beta1) * g
/// v = beta2 * v + (1 - beta2) * g * g
/// vmax = max(vmax, v)                                  (amsgrad; the denominator then uses vmax)
/// denom = sqrt(v) / sqrt(1 - beta2^t) + eps
/// p = p - lr / (1 - beta1^t) * m / denom
/// </code>
/// </summary>
public sealed class AdamW : Optimizer
{
    private const GroupOption Supported =
        GroupOption.Lr | GroupOption.Betas | GroupOption.Eps | GroupOption.WeightDecay |
        GroupOption.Amsgrad | GroupOption.Maximize;

    /// <summary>Optimizes <paramref name="parameters"/> as one group.</summary>
    /// <param name="parameters">Floating-point leaf tensors (enumerated once). The optimizer keeps its own references.</param>
    /// <param name="lr">Learning rate.</param>
    /// <param name="betas">Decay rates of the moment estimates, each in [0, 1); null means (0.9, 0.999).</param>
    /// <param name="eps">Added to the denominator for numerical stability.</param>
    /// <param name="weightDecay">Decoupled weight decay coefficient (torch's default 1e-2).</param>
    /// <param name="amsgrad">Use the running maximum of the second moment estimate.</param>
    /// <param name="maximize">Ascend the objective instead of descending it.</param>
    /// <exception cref="ArgumentException">
    /// An empty parameter list, an invalid option, or a parameter that is not a floating-point leaf or appears twice.
    /// </exception>
    public AdamW(IEnumerable<Tensor> parameters, double lr = 1e-3, (double, double)? betas = null, double eps = 1e-8,
        double weightDecay = 1e-2, bool amsgrad = false, bool maximize = false)
        : this(SingleGroup(parameters), lr, betas, eps, weightDecay, amsgrad, maximize)
    {
    }

    /// <summary>
    /// Optimizes several groups with their own options (torch's list of dicts); an option a group leaves null
    /// takes the value given here.
    /// </summary>
    /// <exception cref="ArgumentException">
    /// No groups, an option AdamW does not use, an invalid option, a group already owned by an optimizer, or a
    /// parameter that is not a floating-point leaf or is in two groups.
    /// </exception>
    public AdamW(IEnumerable<ParamGroup> groups, double lr = 1e-3, (double, double)? betas = null, double eps = 1e-8,
        double weightDecay = 1e-2, bool amsgrad = false, bool maximize = false)
        : base(1 /* SL_OPTIM_ADAMW */, Supported,
            new ParamGroup([])
            {
                Lr = lr, Betas = betas ?? (0.9, 0.999), Eps = eps, WeightDecay = weightDecay,
                Amsgrad = amsgrad, Maximize = maximize,
            },
            groups)
    {
    }

    private protected override string Name => "AdamW";
}
