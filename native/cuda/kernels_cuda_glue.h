// at::Tensor entry points of the CUDA kernels (native/cuda/*.cu). Built only with -DSHARPLENS_CUDA=ON, which
// defines SHARPLENS_WITH_CUDA. Each function validates its tensors (CUDA, same device, float32/float64/float16/
// bfloat16, contiguous, consistent shapes) and throws std::invalid_argument naming the tensor and its shape
// otherwise; it runs on the tensors' device and the current CUDA stream of that device and does not synchronise.
// Launch failures throw std::runtime_error naming the kernel and the CUDA error.
//
// Layouts match the CPU kernel (kernels/attention_cpu.cpp): qh [b, h, p_q, d], kh and vh [b, h_kv, p_k, d] with
// h % h_kv == 0, p_k >= p_q (query i sits at key position i + p_k - p_q), and head_dim <= 256.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Optional.h>  // c10::optional by name: 2.x headers reach it only indirectly (an alias of std::optional since 2.2)

#include "../src/kernels/attention_rule.h"  // relative: the glue also compiles without native/src on the path (check.sh)

#include <string>
#include <tuple>
#include <utility>

namespace sl::kernels::cuda {

// Empty when the fused attention kernels (forward and backward) can run on these tensors; otherwise why not:
// not CUDA, unsupported dtype, bad shape, or a tile that needs more shared memory than the device has
// (float64 with head_dim > 128 needs an H100-class device).
// The options follow kernels/attention_rule.h; the kernel takes the sliding window, not (yet) the soft-cap.
std::string fused_attention_unsupported_reason(const at::Tensor& qh, const at::Tensor& kh, const at::Tensor& vh,
                                               const AttentionOptions& options);

inline bool fused_attention_supported(const at::Tensor& qh, const at::Tensor& kh, const at::Tensor& vh,
                                      const AttentionOptions& options) {
  return fused_attention_unsupported_reason(qh, kh, vh, options).empty();
}

// Returns (out [b, h, p_q, d], lse [b, h, p_q]). valid: [b, p_k] uint8 or bool (0 = padded key), or undefined /
// empty for none. lse is float32 for float16/bfloat16 inputs, else the input dtype; it is -inf (and the out row
// 0) for a query that sees no key.
std::pair<at::Tensor, at::Tensor> fused_attention_forward(const at::Tensor& qh, const at::Tensor& kh,
                                                          const at::Tensor& vh, const at::Tensor& valid,
                                                          const AttentionOptions& options);

// Returns (dq, dk, dv) from the forward's out and lse and the incoming gradient dout [b, h, p_q, d]; dk and dv
// are summed over the query heads of each kv group.
std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_attention_backward(const at::Tensor& qh, const at::Tensor& kh,
                                                                        const at::Tensor& vh, const at::Tensor& valid,
                                                                        const at::Tensor& out, const at::Tensor& lse,
                                                                        const at::Tensor& dout,
                                                                        const AttentionOptions& options);

// Column order of a fused QKV projection output (see native/cuda/kernels_cuda.cuh).
enum class QkvLayout {
  PartMajor,  // which * heads * d_head + head * d_head + x
  HeadMajor,  // head * 3 * d_head + which * d_head + x
};

// qkv [batch * pos, 3 * heads * d_head] (or any contiguous shape with that many elements and last dimension
// 3 * heads * d_head) -> (q, k, v), each [batch, heads, pos, d_head].
std::tuple<at::Tensor, at::Tensor, at::Tensor> qkv_split_forward(QkvLayout layout, const at::Tensor& qkv,
                                                                 int64_t batch, int64_t pos, int64_t heads,
                                                                 int64_t d_head);

// dq, dk, dv [batch, heads, pos, d_head] -> dqkv [batch * pos, 3 * heads * d_head] in the given layout.
at::Tensor qkv_split_backward(QkvLayout layout, const at::Tensor& dq, const at::Tensor& dk, const at::Tensor& dv);

// True when rotary_table_forward takes x and the table: both CUDA tensors on one device, x of float32, float64,
// float16 or bfloat16, the table of any floating dtype (cast to x's).
bool rotary_table_supported(const at::Tensor& x, const at::Tensor& table);

// x [b, p, h, d] (any strides) rotated by table [rows, 2, half] (rows = p or b * p; cos then sin,
// already in x's dtype, contiguous) into a new contiguous tensor; by the opposite angles when inverse. Not autograd
// aware: native/src/kernels/rotary_cpu.cpp's RotaryFunction wraps it as it wraps the CPU kernel.
at::Tensor rotary_table_forward(const at::Tensor& x, const at::Tensor& table, bool inverse);

// True when t is a CUDA tensor of a dtype the kernels take (float32, float64, float16, bfloat16): the element-wise and
// row kernels (QKV split, LayerNorm, RMSNorm) need nothing else.
bool kernel_dtype_supported(const at::Tensor& t);

// The two LayerNorm steps of native/src/kernels/layer_norm.h on CUDA rows (layer_norm_cuda.cu), not autograd aware:
// layer_norm_cpu.cpp's functions wrap them as they wrap the CPU rows. Every tensor contiguous, on one device, of one
// dtype; x, centred, gc, gy [..., d]; scale and gs [..., 1].
std::pair<at::Tensor, at::Tensor> layer_norm_centre_scale_forward(const at::Tensor& x, double eps);
// RMSNorm's scale sqrt(mean(x^2) + eps) [..., 1]; its backward is layer_norm_centre_scale_backward(x, scale, {}, gs).
at::Tensor rms_norm_scale_forward(const at::Tensor& x, double eps);
// gc or gs may be undefined (no gradient there).
at::Tensor layer_norm_centre_scale_backward(const at::Tensor& centred, const at::Tensor& scale, const at::Tensor& gc,
                                            const at::Tensor& gs);
// weight and bias [d] may be undefined (1, 0).
at::Tensor layer_norm_apply_scale_forward(const at::Tensor& centred, const at::Tensor& scale, const at::Tensor& weight,
                                          const at::Tensor& bias);
// (gc, gs); the weight and bias gradients (sums over rows) are the caller's.
std::pair<at::Tensor, at::Tensor> layer_norm_apply_scale_backward(const at::Tensor& gy, const at::Tensor& centred,
                                                                  const at::Tensor& scale, const at::Tensor& weight);

}  // namespace sl::kernels::cuda
