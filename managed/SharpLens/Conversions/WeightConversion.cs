using System.Text.RegularExpressions;

namespace SharpLens.Conversions;

/// <summary>
/// A declared transformation from a HuggingFace parameter to a TransformerLens weight. Conversions are
/// built from views (view, permute, narrow, select) so the result shares storage with the HF leaf
/// wherever the layout allows, and always reflects the current weights.
/// </summary>
public abstract record WeightConversion
{
    /// <summary>Applies the conversion to a HF tensor.</summary>
    public abstract Tensor Apply(Tensor source);

    /// <summary>Readable form, e.g. <c>rearrange('(head d_head) d_model -> head d_model d_head')</c>.</summary>
    public abstract string Describe();

    /// <summary>
    /// For a conversion that is x · scale + offset of the whole tensor (scale rounded to the weight's dtype), those two numbers;
    /// null for every other conversion. A TransformerLens weight that is an affine function of its HF parameter (Gemma's
    /// scaled W_E and 1 + w norm weights) is not the variable HuggingFace's optimizer steps.
    /// </summary>
    public virtual (double Scale, double Offset)? Affine => null;

    /// <summary>The identity.</summary>
    public static readonly WeightConversion Identity = new IdentityConversion();

    /// <summary>An einops-style rearrangement with known axis sizes.</summary>
    public static WeightConversion Rearrange(string pattern, params (string Axis, long Size)[] sizes) => new RearrangeConversion(pattern, sizes);

    /// <summary>Picks part <paramref name="index"/> of <paramref name="parts"/> equal pieces along <paramref name="dim"/>.</summary>
    public static WeightConversion Split(int dim, int index, int parts) => new SplitConversion(dim, index, parts);

    /// <summary>Selects one index along a dimension, which disappears.</summary>
    public static WeightConversion Select(int dim, int index) => new SelectConversion(dim, index);

    /// <summary>Entries [<paramref name="start"/>, start + <paramref name="length"/>) along <paramref name="dim"/> (a view; e.g. one part of a fused weight).</summary>
    public static WeightConversion Narrow(int dim, long start, long length) => new NarrowConversion(dim, start, length);

    /// <summary>
    /// Times a constant rounded to the weight's dtype, as HuggingFace rounds Gemma's embedding normaliser (a computed tensor,
    /// not a view: it reflects the weights at the time it is made).
    /// </summary>
    public static WeightConversion Scale(double factor) => new ScaleConversion(factor);

    /// <summary>Plus a constant (Gemma's norm weights are stored as w − 1; TransformerLens holds 1 + w). A computed tensor, not a view.</summary>
    public static WeightConversion AddScalar(double value) => new AddScalarConversion(value);

    /// <summary>Applies conversions in order.</summary>
    public static WeightConversion Chain(params WeightConversion[] steps) => new ChainConversion(steps);

    private sealed record IdentityConversion : WeightConversion
    {
        public override Tensor Apply(Tensor source) => source.Alias();
        public override string Describe() => "identity";
    }

    private sealed record SplitConversion(int Dim, int Index, int Parts) : WeightConversion
    {
        public override Tensor Apply(Tensor source)
        {
            var size = source.Size(Dim);
            if (size % Parts != 0)
                throw new InvalidOperationException($"cannot split dimension {Dim} of size {size} into {Parts} equal parts");
            var part = size / Parts;
            return source.Narrow(Dim, Index * part, part);
        }

        public override string Describe() => $"split(dim {Dim}, part {Index} of {Parts})";
    }

    private sealed record NarrowConversion(int Dim, long Start, long Length) : WeightConversion
    {
        public override Tensor Apply(Tensor source)
        {
            var size = source.Size(Dim);
            if (Start < 0 || Length < 1 || Start + Length > size)
                throw new InvalidOperationException($"cannot take [{Start}, {Start + Length}) of dimension {Dim} of size {size}");
            return source.Narrow(Dim, Start, Length);
        }

        public override string Describe() => $"narrow(dim {Dim}, {Start}..{Start + Length})";
    }

    private sealed record ScaleConversion(double Factor) : WeightConversion
    {
        public override Tensor Apply(Tensor source)
        {
            using var factor = Torch.Scalar(Factor, source.DType, source.Device);
            return source * factor;
        }

        public override string Describe() => $"times {Factor:R} (in the weight's dtype)";
        public override (double Scale, double Offset)? Affine => (Factor, 0);
    }

    private sealed record AddScalarConversion(double Value) : WeightConversion
    {
        public override Tensor Apply(Tensor source) => source + Value;
        public override string Describe() => $"plus {Value:R}";
        public override (double Scale, double Offset)? Affine => (1, Value);
    }

    private sealed record SelectConversion(int Dim, int Index) : WeightConversion
    {
        public override Tensor Apply(Tensor source) => source.Select(Dim, Index);
        public override string Describe() => $"select(dim {Dim}, {Index})";
    }

    private sealed record ChainConversion(WeightConversion[] Steps) : WeightConversion
    {
        public override Tensor Apply(Tensor source)
        {
            var current = source.Alias();
            foreach (var step in Steps)
            {
                var next = step.Apply(current);
                current.Dispose();
                current = next;
            }
            return current;
        }

        public override string Describe() => string.Join(" then ", Steps.Select(s => s.Describe()));
    }
}

/// <summary>
/// einops <c>rearrange</c> for patterns of named axes and parenthesised groups, e.g.
/// <c>(head d_head) d_model -> head d_model d_head</c>: the input is viewed as its atomic axes, permuted,
/// and viewed as the output groups (a copy only when the strides make a view impossible).
/// </summary>
internal sealed record RearrangeConversion : WeightConversion
{
    private readonly string _pattern;
    private readonly List<List<string>> _lhs, _rhs;
    private readonly Dictionary<string, long> _sizes;

    public RearrangeConversion(string pattern, (string Axis, long Size)[] sizes)
    {
        _pattern = pattern;
        var sides = pattern.Split("->");
        if (sides.Length != 2) throw new FormatException($"rearrange pattern '{pattern}' needs exactly one '->'");
        _lhs = ParseSide(sides[0], pattern);
        _rhs = ParseSide(sides[1], pattern);
        var left = _lhs.SelectMany(g => g).ToList();
        var right = _rhs.SelectMany(g => g).ToList();
        if (left.Count != left.Distinct().Count() || right.Count != right.Distinct().Count())
            throw new FormatException($"rearrange pattern '{pattern}' repeats an axis");
        if (!left.OrderBy(a => a).SequenceEqual(right.OrderBy(a => a)))
            throw new FormatException($"rearrange pattern '{pattern}' must use the same axes on both sides");
        _sizes = sizes.ToDictionary(s => s.Axis, s => s.Size);
    }

    private static List<List<string>> ParseSide(string side, string pattern)
    {
        var groups = new List<List<string>>();
        foreach (Match m in Regex.Matches(side, @"\(([^()]*)\)|([A-Za-z_][A-Za-z0-9_]*)|(\S)"))
        {
            if (m.Groups[1].Success) groups.Add(m.Groups[1].Value.Split(' ', StringSplitOptions.RemoveEmptyEntries).ToList());
            else if (m.Groups[2].Success) groups.Add([m.Groups[2].Value]);
            else throw new FormatException($"unexpected '{m.Value}' in rearrange pattern '{pattern}'");
        }
        return groups;
    }

    public override Tensor Apply(Tensor source)
    {
        var shape = source.Shape;
        if (shape.Length != _lhs.Count)
            throw new InvalidOperationException($"rearrange '{_pattern}' expects {_lhs.Count} dimensions, got shape {Tensor.FormatShape(shape)}");
        var axisSize = new Dictionary<string, long>(_sizes);
        for (var i = 0; i < _lhs.Count; i++)
        {
            var group = _lhs[i];
            var unknown = group.Where(a => !axisSize.ContainsKey(a)).ToList();
            var known = group.Where(axisSize.ContainsKey).Aggregate(1L, (p, a) => p * axisSize[a]);
            if (unknown.Count > 1)
                throw new InvalidOperationException($"rearrange '{_pattern}': axes {string.Join(", ", unknown)} of one group need sizes");
            if (unknown.Count == 1)
            {
                if (known == 0 || shape[i] % known != 0)
                    throw new InvalidOperationException($"rearrange '{_pattern}': dimension {i} of size {shape[i]} is not divisible by {known}");
                axisSize[unknown[0]] = shape[i] / known;
            }
            else if (known != shape[i])
                throw new InvalidOperationException($"rearrange '{_pattern}': dimension {i} has size {shape[i]}, the pattern says {known}");
        }
        var atoms = _lhs.SelectMany(g => g).ToList();
        var order = _rhs.SelectMany(g => g).Select(a => (long)atoms.IndexOf(a)).ToArray();
        var outShape = _rhs.Select(g => g.Aggregate(1L, (p, a) => p * axisSize[a])).ToArray();
        using var atomic = source.View(atoms.Select(a => axisSize[a]).ToArray());
        using var permuted = atomic.Permute(order);
        try
        {
            return permuted.View(outShape);
        }
        catch (TorchException)
        {
            return permuted.Reshape(outShape);  // the strides allow no view: this weight is a copy
        }
    }

    public override string Describe() => $"rearrange('{_pattern}')";
}
