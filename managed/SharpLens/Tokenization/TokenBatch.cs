using SharpLens.Tensors;

namespace SharpLens.Tokenization;

/// <summary>Which end of a row <see cref="BpeTokenizer.EncodeBatch"/> pads.</summary>
public enum PaddingSide
{
    /// <summary>Tokens first, padding after: positions line up with an unpadded run.</summary>
    Right,

    /// <summary>Padding first, tokens last: the final position of every row is its last real token, as generation wants.</summary>
    Left,
}

/// <summary>
/// A padded batch of token ids for the model, with its attention mask. Owns both tensors: dispose the
/// batch (or create it inside a <see cref="Torch.NewScope"/> scope) to free them.
/// </summary>
/// <param name="Tokens">int64 [batch, maxLen] token ids; padding positions hold the pad id.</param>
/// <param name="AttentionMask">int64 [batch, maxLen]: 1 at real tokens, 0 at padding.</param>
/// <param name="Lengths">The number of real tokens in each row (BOS included when it was prepended).</param>
public sealed record TokenBatch(Tensor Tokens, Tensor AttentionMask, int[] Lengths) : IDisposable
{
    /// <summary>Disposes <see cref="Tokens"/> and <see cref="AttentionMask"/>.</summary>
    public void Dispose()
    {
        Tokens.Dispose();
        AttentionMask.Dispose();
    }
}
