// GPT-NeoX rotary embeddings (rotate-half form) as one autograd op per tensor: one pass over x reading it through
// its strides (q and k usually arrive as views into the fused QKV GEMM output, which the composition would copy
// several times: narrow, neg, cat, two multiplies, add, cat), writing a contiguous result. The backward is the
// rotation by the opposite angles, so it needs only the cos/sin table, never x.
//
// For row r = (batch, pos) and i < rotary_dim / 2, with theta = positions[r] * base^(-2i / rotary_dim) in float64,
// c = cos(theta) and s = sin(theta) cast to x's dtype, and half = rotary_dim / 2:
//   out[.., i]        = x[.., i] * c - x[.., i + half] * s
//   out[.., i + half] = x[.., i + half] * c + x[.., i] * s
//   out[.., j]        = x[.., j]                      for j >= rotary_dim
// which is x * cos(emb) + rotate_half(x) * sin(emb) with emb = cat(theta, theta).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <utility>

namespace sl::kernels {

// True when the kernel handles x with these positions: x a 4-D strided float32/float64 CPU tensor and positions a
// CPU tensor of a real or integer dtype. Otherwise the caller uses the ATen composition.
bool rotary_supported(const at::Tensor& x, const at::Tensor& positions);

// The argument checks every rotary path shares, the composition included: x [b, p, h, d], rotary_dim even and in
// (0, d], positions [b, p]. name is the tensor's parameter name in messages (x, q or k). Throws
// std::invalid_argument naming the tensor and its shape.
void check_rotary_args(const at::Tensor& x, const char* name, const at::Tensor& positions, int64_t rotary_dim);

// x [b, p, h, d] (any strides), positions [b, p] -> rotated x [b, p, h, d], contiguous; differentiable w.r.t. x
// (positions get no gradient), also twice (the backward is the same op with the angles negated). Inputs the kernel
// does not handle (see rotary_supported) are an error here: the caller falls back. Throws std::invalid_argument
// when rotary_dim is not even and in (0, d] or positions is not [b, p].
at::Tensor rotary(const at::Tensor& x, const at::Tensor& positions, int64_t rotary_dim, double base);

// rotary(q, ...) and rotary(k, ...) sharing one cos/sin table: q [b, p, h_q, d_q] and k [b, p, h_k, d_k] of one
// dtype, both with rotary_dim <= their d. Same errors as rotary, and also when q and k disagree on b, p or dtype.
std::pair<at::Tensor, at::Tensor> rotary_qk(const at::Tensor& q, const at::Tensor& k, const at::Tensor& positions,
                                            int64_t rotary_dim, double base);

// The same rotation from a precomputed table, so the caller owns the angles (HuggingFace's float32 recipe, rope
// scaling, an attention factor folded into cos and sin): table [rows, 2, half] holds cos then sin of each row's
// angles, rows = pos (every batch row at the same positions) or batch * pos, and 2 * half <= d_head features
// rotate. Throws std::invalid_argument naming the shapes when the table does not fit x.
void check_rotary_table(const at::Tensor& x, const char* name, const at::Tensor& table);

// True when rotary_with_table's kernel takes x and the table: a float32/float64 CPU x and a CPU table of any float
// dtype, or in a CUDA build (SHARPLENS_WITH_CUDA) a float32/float64/float16/bfloat16 CUDA x and a table on its device
// (native/cuda/rotary_cuda.cu, which rounds as the ATen composition does, op by op).
bool rotary_table_supported(const at::Tensor& x, const at::Tensor& table);

// x [b, p, h, d] (any strides) rotated by the table (cast to x's dtype) -> contiguous [b, p, h, d]; differentiable
// w.r.t. x (the table is a constant), also twice.
at::Tensor rotary_with_table(const at::Tensor& x, const at::Tensor& table);

}  // namespace sl::kernels
