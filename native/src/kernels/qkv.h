// The fused query/key/value projection of the two Hugging Face layouts as one autograd node over BLAS calls on the
// fused weight: no per-part weight views in the graph, and a backward that writes each part's block of the fused
// weight (and bias) gradient once, with no zero-filled buffers. The weight is read in place through leading
// dimensions and offsets, except NeoX with separate inputs, whose forward gathers each part's rows into a scratch
// (one GEMM per part measured faster than one per head; see qkv_cpu.cpp).
//
// Layouts (h = n_heads, d = d_head, m = d_model):
//   0, part-major in-out (e.g. GPT-2 Conv1D c_attn):        w [m, 3*h*d], y = x w + b,   output column = part*h*d + head*d + j
//   1, head-major out-in (e.g. GPT-NeoX query_key_value):   w [h*3*d, m], y = x wᵀ + b,  output row    = head*3*d + part*d + j
// b [3*h*d] in the same order as the weight's output dimension; part 0 = q, 1 = k, 2 = v.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Optional.h>  // c10::optional by name: 2.x headers reach it only indirectly (an alias of std::optional since 2.2)

#include <cstdint>
#include <tuple>

namespace sl::kernels {

// True when the kernel handles these (float32/float64 CPU tensors of one dtype, layout 0 or 1, shapes consistent
// as qkv_project requires); otherwise the caller uses ATen. b may be undefined.
bool qkv_project_supported(int layout, const at::Tensor& xq, const at::Tensor& xk, const at::Tensor& xv,
                           const at::Tensor& w, const at::Tensor& b, int64_t n_heads);

// xq, xk, xv [batch, pos, m], all of one shape (they may be the same tensor), w and b (undefined = no bias) in the
// given layout -> (q, k, v), each [batch, pos, h, d] contiguous: q = xq through the q part of w plus the q part of
// b, and so on. Differentiable w.r.t. xq, xk, xv, w and b; an unused output contributes nothing. When xq, xk and
// xv are the same tensor, its whole gradient comes back through the xq slot. Inputs the kernel does not handle
// (see qkv_project_supported: other dtypes or devices) take the same math as ATen ops. Throws
// std::invalid_argument naming the tensor and its shape when shapes are inconsistent or the layout is unknown.
std::tuple<at::Tensor, at::Tensor, at::Tensor> qkv_project(int layout, const at::Tensor& xq, const at::Tensor& xk,
                                                           const at::Tensor& xv, const at::Tensor& w,
                                                           const at::Tensor& b, int64_t n_heads);

}  // namespace sl::kernels

namespace sl::kernels {

// The fused QKV projection's output split into per-head q, k, v in the attention kernels' layout: qkv
// [batch * pos, 3 * h * d] in the given layout (0 part-major, 1 head-major, as above) -> (q, k, v), each
// [batch, pos, h, d] as a transposed view of a contiguous [batch, h, pos, d] tensor, so the fused attention takes
// them without a copy. One pass over qkv (the CUDA kernel native/cuda/qkv_split_cuda.cu for CUDA tensors of
// float32/float64/float16/bfloat16, an ATen copy per part elsewhere), and one pass back in the backward (the
// kernel's adjoint, writing the fused gradient once). Differentiable twice: split and merge are each other's
// backward. Throws std::invalid_argument naming the shapes when qkv does not hold batch * pos rows of 3 * h * d.
std::tuple<at::Tensor, at::Tensor, at::Tensor> qkv_split_heads(int layout, const at::Tensor& qkv, int64_t batch,
                                                               int64_t pos, int64_t n_heads, int64_t d_head);

}  // namespace sl::kernels
