// CUDA kernels of SharpLens over raw device pointers and a stream: fused causal attention (forward and
// backward), the split of fused QKV projections, table-driven rotary embeddings and the two LayerNorm steps. Nothing here knows libtorch, so the kernels can be tested
// standalone (tests/attention_cuda_test.cu); glue_cuda.cpp adapts them to at::Tensor.
//
// This header is plain C++ apart from the CUDA runtime types, so host compilers can include it too.
// Every launcher only enqueues work on `stream` (no synchronisation); it throws std::invalid_argument for
// shapes it cannot handle and std::runtime_error naming the kernel and the CUDA error when a launch fails.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

#include "rotary_element.cuh"

namespace sl::cuda {

// Half-precision inputs accumulate (and keep the log-sum-exp) in float; float and double accumulate in
// their own type, so float64 results can be checked to ~1e-12 against a double reference (exact_arith.cuh).
template <typename T>
using accum_t = exact::acc<T>;

// Layouts (all contiguous, row-major):
//   q, out, dq, dout   [batch, heads, q_len, head_dim]
//   k, v, dk, dv       [batch, kv_heads, k_len, head_dim]; heads % kv_heads == 0 and query head h reads
//                      kv head h / (heads / kv_heads) (grouped-query attention; kv_heads == heads is plain MHA)
//   key_valid          [batch, k_len] bytes, 0 = padded key, or nullptr when every key is real
//   lse                [batch, heads, q_len] in accum_t<T>
// Query i sits at key position i + (k_len - q_len) (the keys before the queries are a cached prefix) and sees
// the valid keys j <= i + k_len - q_len.
struct AttentionShape {
  int64_t batch = 0, heads = 0, kv_heads = 0, q_len = 0, k_len = 0, head_dim = 0;
  int64_t window = 0;  // > 0: sliding window (native/src/kernels/attention_rule.h); 0: plain causal
};

// The largest head_dim the attention kernels take.
constexpr int64_t kMaxAttentionHeadDim = 256;

// Empty when the attention kernels can run this shape for element type T on `device` (a CUDA device
// ordinal); otherwise why not (bad shape, head_dim too large, more shared memory than the device has).
// Queries the device, so call it on the host with the device's context available.
template <typename T>
std::string attention_unsupported_reason(const AttentionShape& shape, int device);

// out = softmax(scale * q kᵀ, masked) v per (batch, head); lse = log-sum-exp of the masked scaled scores per
// row. A query row that sees no key gets out = 0 and lse = -inf. Scores never reach global memory.
template <typename T>
void attention_forward(const AttentionShape& shape, const T* q, const T* k, const T* v, const uint8_t* key_valid,
                       double scale, T* out, accum_t<T>* lse, cudaStream_t stream);

// Gradients of attention_forward from the saved out and lse; P is recomputed tile by tile. dq, dk and dv are
// overwritten (not accumulated into); dk and dv sum over the query heads that share a kv head.
template <typename T>
void attention_backward(const AttentionShape& shape, const T* q, const T* k, const T* v, const uint8_t* key_valid,
                        const T* out, const accum_t<T>* lse, const T* dout, double scale, T* dq, T* dk, T* dv,
                        cudaStream_t stream);

// Fused QKV projection outputs, qkv [batch * pos, 3 * heads * head_dim] row-major, by the column order
// of the HF checkpoint that produced them:
enum class QkvLayout {
  PartMajor,  // column = which * heads * head_dim + head * head_dim + x   (which: 0 q, 1 k, 2 v; e.g. GPT-2 c_attn)
  HeadMajor,  // interleaved per head: column = head * 3 * head_dim + which * head_dim + x (e.g. GPT-NeoX)
};

struct QkvShape {
  int64_t batch = 0, pos = 0, heads = 0, head_dim = 0;
};

// qkv -> q, k, v, each [batch, heads, pos, head_dim].
template <typename T>
void qkv_split_forward(QkvLayout layout, const QkvShape& shape, const T* qkv, T* q, T* k, T* v, cudaStream_t stream);

// The adjoint: dq, dk, dv [batch, heads, pos, head_dim] -> dqkv [batch * pos, 3 * heads * head_dim] in the same
// column order, so one GEMM with the layer input gives the gradient of the fused HF weight.
template <typename T>
void qkv_split_backward(QkvLayout layout, const QkvShape& shape, const T* dq, const T* dk, const T* dv, T* dqkv,
                        cudaStream_t stream);

// Empty when rotary_forward takes this shape (see RotaryShape in rotary_element.cuh); otherwise why not.
std::string rotary_shape_error(const RotaryShape& shape);

// out [batch, pos, heads, head_dim] contiguous = x rotated by the table's angles (their negatives when inverse), one
// element per thread by rotary_element (rotary_element.cuh). x and table must not overlap out.
template <typename T>
void rotary_forward(const RotaryShape& shape, const T* x, const T* table, bool inverse, T* out, cudaStream_t stream);

// The two LayerNorm steps of native/src/kernels/layer_norm.h over `rows` contiguous rows of d elements, one warp per
// row (per-lane work in layer_norm_rows.cuh, whose host emulation computes the same values bit for bit). Half types
// accumulate in float. Scales and scale gradients are one value per row.
struct RowsShape {
  int64_t rows = 0, d = 0;
};

// centred = x - mean(x) (per row), scale = sqrt(mean(centred^2) + eps).
template <typename T>
void layer_norm_centre_scale(const RowsShape& shape, const T* x, double eps, T* centred, T* scale, cudaStream_t stream);

// RMSNorm's scale = sqrt(mean(x^2) + eps) per row. Its backward is layer_norm_centre_scale_backward with x as the
// centred rows and no gc: dx = gs x / (d scale).
template <typename T>
void rms_norm_scale(const RowsShape& shape, const T* x, double eps, T* scale, cudaStream_t stream);

// dx = gc - mean(gc) + gs centred / (d scale); gc or gs may be null (no gradient there).
template <typename T>
void layer_norm_centre_scale_backward(const RowsShape& shape, const T* centred, const T* scale, const T* gc, const T* gs,
                                      T* dx, cudaStream_t stream);

// y = centred (1 / scale) w + b; w or b may be null (1, 0).
template <typename T>
void layer_norm_apply_scale(const RowsShape& shape, const T* centred, const T* scale, const T* w, const T* b, T* y,
                            cudaStream_t stream);

// gc = gy w / scale, gs = -sum(gy w centred) / scale^2 per row; w may be null (1). The weight and bias gradients
// (column sums over rows) are left to the caller.
template <typename T>
void layer_norm_apply_scale_backward(const RowsShape& shape, const T* gy, const T* centred, const T* scale, const T* w,
                                     T* gc, T* gs, cudaStream_t stream);

// Instantiated in attention_cuda.cu, qkv_split_cuda.cu, rotary_cuda.cu and layer_norm_cuda.cu for these element types only.
#define SL_CUDA_DECLARE_KERNELS(T)                                                                                  \
  extern template std::string attention_unsupported_reason<T>(const AttentionShape&, int);                           \
  extern template void attention_forward<T>(const AttentionShape&, const T*, const T*, const T*, const uint8_t*,   \
                                            double, T*, accum_t<T>*, cudaStream_t);                                  \
  extern template void attention_backward<T>(const AttentionShape&, const T*, const T*, const T*, const uint8_t*,  \
                                             const T*, const accum_t<T>*, const T*, double, T*, T*, T*,             \
                                             cudaStream_t);                                                          \
  extern template void qkv_split_forward<T>(QkvLayout, const QkvShape&, const T*, T*, T*, T*, cudaStream_t);       \
  extern template void qkv_split_backward<T>(QkvLayout, const QkvShape&, const T*, const T*, const T*, T*,         \
                                             cudaStream_t);                                                          \
  extern template void rotary_forward<T>(const RotaryShape&, const T*, const T*, bool, T*, cudaStream_t);          \
  extern template void layer_norm_centre_scale<T>(const RowsShape&, const T*, double, T*, T*, cudaStream_t);        \
  extern template void rms_norm_scale<T>(const RowsShape&, const T*, double, T*, cudaStream_t);                     \
  extern template void layer_norm_centre_scale_backward<T>(const RowsShape&, const T*, const T*, const T*,          \
                                                           const T*, T*, cudaStream_t);                            \
  extern template void layer_norm_apply_scale<T>(const RowsShape&, const T*, const T*, const T*, const T*, T*,     \
                                                 cudaStream_t);                                                    \
  extern template void layer_norm_apply_scale_backward<T>(const RowsShape&, const T*, const T*, const T*,          \
                                                          const T*, T*, T*, cudaStream_t);
SL_CUDA_DECLARE_KERNELS(float)
SL_CUDA_DECLARE_KERNELS(double)
SL_CUDA_DECLARE_KERNELS(__half)
SL_CUDA_DECLARE_KERNELS(__nv_bfloat16)
#undef SL_CUDA_DECLARE_KERNELS

}  // namespace sl::cuda
