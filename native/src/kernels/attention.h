// Fused causal attention on CPU: scores and pattern are never materialised beyond one tile.
#pragma once

#include <ATen/ATen.h>

namespace sl::kernels {

// True when the fused kernel handles these inputs (float32/float64 CPU tensors of matching dtype).
bool fused_attention_supported(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

// q [b, p_q, h, d], k and v [b, p_k, h_kv, d] with h % h_kv == 0 (grouped-query attention), key_mask [b, p_k]
// (non-zero = real key) or undefined. Returns z [b, p_q, h, d]. Differentiable w.r.t. q, k and v. Query i sits
// at key position i + (p_k - p_q); a query with no visible key gets z = 0 (TransformerLens's NaN-to-zero pattern).
at::Tensor fused_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& key_mask,
                           double scale);

}  // namespace sl::kernels
