// Fused causal attention on CPU: scores and pattern are never materialised beyond one tile.
#pragma once

#include <ATen/ATen.h>

#include "kernels/attention_rule.h"

namespace sl::kernels {

// True when the fused kernel handles these inputs with these options (float32/float64 CPU tensors of matching
// dtype take every option; CUDA tensors go to the CUDA kernel, which judges them itself).
bool fused_attention_supported(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const AttentionOptions& options);

// q [b, p_q, h, d], k and v [b, p_k, h_kv, d] with h % h_kv == 0 (grouped-query attention), key_mask [b, p_k]
// (non-zero = real key) or undefined. Returns z [b, p_q, h, d]. Differentiable w.r.t. q, k and v. Which keys a
// query sees is kernels/attention_rule.h's rule (causal, optional sliding window); a query with no visible key
// gets z = 0 (TransformerLens's NaN-to-zero pattern). Scores are scaled, then soft-capped when options.softcap > 0.
at::Tensor fused_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& key_mask,
                           const AttentionOptions& options);

}  // namespace sl::kernels
