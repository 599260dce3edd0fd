namespace SharpLens.Tensors.Optim;

/// <summary>
/// Stochastic gradient descent, optionally with momentum, dampening, Nesterov momentum, L2 weight decay
/// and maximisation: torch.optim.SGD (PyTorch 1.13 single-tensor semantics). Per parameter with gradient g:
/// <code>
/// g = maximize ? -g : g
/// g = g + weightDecay * p                           (if weightDecay != 0)
/// b = first step ? g : momentum * b + (1 - dampening) * g   (if momentum != 0)
/// g = nesterov ? g + momentum * b : b                (if momentum != 0)
/// p = p - lr * g
/// </code>
/// Note that the first momentum step copies the gradient undamped, as torch does.
/// </summary>
public sealed class SGD : Optimizer
{
    private const GroupOption Supported =
        GroupOption.Lr | GroupOption.Momentum | GroupOption.Dampening | GroupOption.WeightDecay |
        GroupOption.Nesterov | GroupOption.Maximize;

    /// <summary>Optimizes <paramref name="parameters"/> as one group.</summary>
    /// <param name="parameters">Floating-point leaf tensors (enumerated once). The optimizer keeps its own references.</param>
    /// <param name="lr">Learning rate (required, as in torch).</param>
    /// <param name="momentum">Momentum factor; 0 disables momentum.</param>
    /// <param name="dampening">Dampening applied to the gradient in the momentum update (not on the first step).</param>
    /// <param name="weightDecay">L2 penalty added to the gradient.</param>
    /// <param name="nesterov">Nesterov momentum; needs momentum &gt; 0 and zero dampening.</param>
    /// <param name="maximize">Ascend the objective instead of descending it.</param>
    /// <exception cref="ArgumentException">
    /// An empty parameter list, an invalid option, or a parameter that is not a floating-point leaf or appears twice.
    /// </exception>
    public SGD(IEnumerable<Tensor> parameters, double lr, double momentum = 0, double dampening = 0,
        double weightDecay = 0, bool nesterov = false, bool maximize = false)
        : this(SingleGroup(parameters), lr, momentum, dampening, weightDecay, nesterov, maximize)
    {
    }

    /// <summary>
    /// Optimizes several groups with their own options (torch's list of dicts); an option a group leaves null
    /// takes the value given here. <paramref name="lr"/> may be omitted only if every group sets its own.
    /// </summary>
    /// <exception cref="ArgumentException">
    /// No groups, a group without lr when there is no default, an option SGD does not use, an invalid option,
    /// a group already owned by an optimizer, or a parameter that is not a floating-point leaf or is in two groups.
    /// </exception>
    public SGD(IEnumerable<ParamGroup> groups, double? lr = null, double momentum = 0, double dampening = 0,
        double weightDecay = 0, bool nesterov = false, bool maximize = false)
        : base(0 /* SL_OPTIM_SGD */, Supported,
            new ParamGroup([])
            {
                Lr = lr, Momentum = momentum, Dampening = dampening, WeightDecay = weightDecay,
                Nesterov = nesterov, Maximize = maximize,
            },
            groups)
    {
    }

    private protected override string Name => "SGD";
}
