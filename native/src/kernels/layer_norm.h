// LayerNorm in two differentiable steps, so the scale is a real tensor in the graph that a hook can read,
// replace, and receive a gradient at (TransformerLens's hook_scale), at the cost of two passes over the rows
// instead of the nine elementwise ops of the composition.
#pragma once

#include <ATen/ATen.h>

#include <utility>

namespace sl::kernels {

// x [..., d] -> (centred = x - mean(x), scale = sqrt(mean(centred^2) + eps) [..., 1]); differentiable w.r.t. x.
std::pair<at::Tensor, at::Tensor> layer_norm_centre_scale(const at::Tensor& x, double eps);

// centred [..., d], scale [..., 1], weight and bias [d] or undefined -> centred / scale * weight + bias;
// differentiable w.r.t. all four.
at::Tensor layer_norm_apply_scale(const at::Tensor& centred, const at::Tensor& scale, const at::Tensor& weight,
                                  const at::Tensor& bias);

// RMSNorm's scale: x [..., d] -> sqrt(mean(x^2) + eps) [..., 1]; differentiable w.r.t. x. On CUDA tensors in a CUDA
// build one warp per row (native/cuda/layer_norm_cuda.cu); elsewhere the ATen composition square, mean, add, sqrt (the
// op sequence the bridge ran itself before, so CPU results are unchanged bit for bit).
at::Tensor rms_norm_scale(const at::Tensor& x, double eps);

}  // namespace sl::kernels
