// Causal attention in stages for CPU, with the scores and/or the pattern materialised so that hooks
// (hook_attn_scores, hook_pattern) can read or replace them: the same results as the libtorch composition
// (matmul, masked_fill, softmax, NaN-to-zero, matmul) with the GEMMs restricted to the tiles on and below the
// causal diagonal and scale + mask + softmax fused into one pass over each row block while it is in cache.
#pragma once

#include <ATen/ATen.h>

#include "kernels/attention_rule.h"

namespace sl::kernels {

// True when causal_scores / causal_pattern (and apply_pattern with this v) handle these inputs: float32 or
// float64 CPU tensors of one dtype, q [b, p_q, h, d], k [b, p_k, h_kv, d] with h % h_kv == 0, p_q, p_k, d >= 1,
// and v (may be undefined) of k's shape, and plain causal options (no sliding window, no soft-cap). Otherwise use
// the composition.
bool materialised_attention_supported(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      const AttentionOptions& options);

// True when pattern_from_scores handles these scores: a 4-D float32/float64 CPU tensor.
bool materialised_pattern_supported(const at::Tensor& scores);

// True when apply_pattern handles these inputs: pattern [b, h, p_q, p_k] and v [b, p_k, h_kv, d], float32 or
// float64 CPU tensors of one dtype, h % h_kv == 0, all sizes >= 1.
bool materialised_apply_supported(const at::Tensor& pattern, const at::Tensor& v);

// q [b, p_q, h, d], k [b, p_k, h_kv, d] (any strides; query head h reads kv head h / (h / h_kv)); key_mask
// [b, p_k] (non-zero = real key) or undefined. Query i sits at key position i + (p_k - p_q). Returns scores
// [b, h, p_q, p_k] (contiguous) = scale * q.k, -inf where the key is in the future or padded. Differentiable
// w.r.t. q and k; masked entries are constants (no gradient flows through them, as with masked_fill).
at::Tensor causal_scores(const at::Tensor& q, const at::Tensor& k, const at::Tensor& key_mask, double scale);

// scores [b, h, p_q, p_k], any values -> softmax over the last dim (contiguous result). A row the composition's
// softmax turns into NaN (all -inf, or holding a NaN or +inf) gives 0 (TransformerLens's NaN-to-zero), and its
// gradient is 0 too (the composition's is NaN there). Differentiable w.r.t. scores.
at::Tensor pattern_from_scores(const at::Tensor& scores);

// Fused causal_scores + pattern_from_scores: q, k -> pattern [b, h, p_q, p_k] (contiguous) without storing the
// scores; exactly 0 above the diagonal, at padded keys, and on rows with no visible key. Differentiable w.r.t.
// q and k (backward from the saved pattern).
at::Tensor causal_pattern(const at::Tensor& q, const at::Tensor& k, const at::Tensor& key_mask, double scale);

// pattern [b, h, p_q, p_k], v [b, p_k, h_kv, d] (any strides) -> z [b, p_q, h, d] (contiguous). With
// assume_causal the caller guarantees the pattern is 0 above the diagonal (key j > i + p_k - p_q; e.g. the
// unreplaced output of causal_pattern, or of pattern_from_scores(causal_scores(...))): z = P v and dv = Pᵀ dz
// skip the tiles above it. The pattern's gradient dz vᵀ is always computed in full. Differentiable w.r.t.
// pattern and v (dv sums over the query heads of a group).
at::Tensor apply_pattern(const at::Tensor& pattern, const at::Tensor& v, bool assume_causal);

}  // namespace sl::kernels
