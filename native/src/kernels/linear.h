// A linear layer as one autograd node whose backward skips the rows of the incoming gradient that are exactly
// zero. Interpretability losses usually read a few positions (a logit difference at the last token, a probe on
// one position), so the gradient reaching the unembedding and the last block's MLP is zero on every other row:
// for GPT-2 small at 4 x 128 tokens with a last-position loss, 508 of 512 rows of the [512, 50257] logit
// gradient. ATen's matmul backward multiplies those zeros anyway (2 x 39.5 GFLOP at the unembedding alone).
//
// The result is the one the dense backward gives: a skipped row contributes 0 * x and 0 * w, which is exactly
// zero when x's skipped rows and w are finite. When they are not (0 * inf is NaN), the dense backward runs, so
// NaNs propagate as PyTorch would propagate them.
//
// Weight layouts: 0 = [in, out] (y = x w, Hugging Face Conv1D), 1 = [out, in] (y = x wᵀ, nn.Linear).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Optional.h>  // c10::optional by name: 2.x headers reach it only indirectly (an alias of std::optional since 2.2)

#include <cstdint>

namespace sl::kernels {

// x [..., in], w in the given layout, b [out] or undefined -> y [..., out]. Differentiable w.r.t. x, w and b
// (any of which may not require grad). Any dtype and device ATen's addmm supports; the zero-row scan is a
// kernel on CPU floating tensors and an ATen reduction elsewhere. Throws std::invalid_argument naming the
// tensors and their shapes when they do not fit or the layout is unknown.
at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int layout);

// The rows of a 2-D gradient that hold a nonzero (or NaN) entry, as int64 indices in increasing order.
// The backward of linear() decides with it.
at::Tensor nonzero_rows(const at::Tensor& g);

}  // namespace sl::kernels
