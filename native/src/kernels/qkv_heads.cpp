// qkv_split_heads (kernels/qkv.h): the split of a fused QKV output into [batch, heads, pos, d_head] tensors and its
// adjoint, as two autograd functions that are each other's backward. The CUDA kernels do each direction in one
// launch; elsewhere (CPU, meta) the same permutation is three ATen copies, which the CPU test suite runs on every
// GPT-2 and Pythia forward and backward, so the autograd wiring the CUDA path shares is checked without a GPU.
#include "kernels/qkv.h"

#include <torch/csrc/autograd/custom_function.h>

#include <string>

#ifdef SHARPLENS_WITH_CUDA
#include "kernels_cuda_glue.h"  // native/cuda
#endif

namespace sl::kernels {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Dimension of the part index (q, k, v) in the fused row viewed as [batch, pos, 3, h, d] (part-major) or
// [batch, pos, h, 3, d] (head-major).
int64_t part_dim(int64_t layout) { return layout == 0 ? 2 : 3; }

std::vector<int64_t> fused_view(int64_t layout, int64_t batch, int64_t pos, int64_t heads, int64_t d) {
  return layout == 0 ? std::vector<int64_t>{batch, pos, 3, heads, d} : std::vector<int64_t>{batch, pos, heads, 3, d};
}

#ifdef SHARPLENS_WITH_CUDA
cuda::QkvLayout cuda_layout(int64_t layout) { return layout == 0 ? cuda::QkvLayout::PartMajor : cuda::QkvLayout::HeadMajor; }
#endif

// qkv [batch * pos, 3 * h * d] -> three contiguous [batch, h, pos, d].
variable_list split_raw(int64_t layout, const at::Tensor& qkv, int64_t batch, int64_t pos, int64_t heads, int64_t d) {
#ifdef SHARPLENS_WITH_CUDA
  if (cuda::kernel_dtype_supported(qkv)) {
    auto [q, k, v] = cuda::qkv_split_forward(cuda_layout(layout), qkv.contiguous(), batch, pos, heads, d);
    return {q, k, v};
  }
#endif
  const auto fused = qkv.reshape(fused_view(layout, batch, pos, heads, d));
  variable_list parts;
  for (int64_t which = 0; which < 3; ++which)
    parts.push_back(fused.select(part_dim(layout), which).permute({0, 2, 1, 3}).contiguous());
  return parts;
}

// Gradients [batch, h, pos, d] of q, k, v -> the fused gradient [batch * pos, 3 * h * d]. Autograd materialises the
// gradient of an unused output as zeros (AutogradContext's default), so all three are defined.
at::Tensor merge_raw(int64_t layout, const at::Tensor& dq, const at::Tensor& dk, const at::Tensor& dv, int64_t batch,
                     int64_t pos, int64_t heads, int64_t d) {
#ifdef SHARPLENS_WITH_CUDA
  if (cuda::kernel_dtype_supported(dq))
    return cuda::qkv_split_backward(cuda_layout(layout), dq.contiguous(), dk.contiguous(), dv.contiguous());
#endif
  auto fused = at::empty(fused_view(layout, batch, pos, heads, d), dq.options());
  const at::Tensor* parts[3] = {&dq, &dk, &dv};
  for (int64_t which = 0; which < 3; ++which) fused.select(part_dim(layout), which).copy_(parts[which]->permute({0, 2, 1, 3}));
  return fused.view({batch * pos, 3 * heads * d});
}

class MergeHeadsFunction;

class SplitHeadsFunction : public torch::autograd::Function<SplitHeadsFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& qkv, int64_t layout, int64_t batch, int64_t pos,
                               int64_t heads, int64_t d) {
    ctx->saved_data["layout"] = layout;
    ctx->saved_data["shape"] = std::vector<int64_t>{batch, pos, heads, d};
    return split_raw(layout, qkv, batch, pos, heads, d);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads);
};

class MergeHeadsFunction : public torch::autograd::Function<MergeHeadsFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& dq, const at::Tensor& dk, const at::Tensor& dv,
                            int64_t layout, int64_t batch, int64_t pos, int64_t heads, int64_t d) {
    ctx->saved_data["layout"] = layout;
    ctx->saved_data["shape"] = std::vector<int64_t>{batch, pos, heads, d};
    return merge_raw(layout, dq, dk, dv, batch, pos, heads, d);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->saved_data["shape"].toIntVector();
    const auto layout = ctx->saved_data["layout"].toInt();
    auto parts = SplitHeadsFunction::apply(grads[0], layout, s[0], s[1], s[2], s[3]);
    return {parts[0], parts[1], parts[2], at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

variable_list SplitHeadsFunction::backward(AutogradContext* ctx, variable_list grads) {
  const auto s = ctx->saved_data["shape"].toIntVector();
  const auto layout = ctx->saved_data["layout"].toInt();
  auto dqkv = MergeHeadsFunction::apply(grads[0], grads[1], grads[2], layout, s[0], s[1], s[2], s[3]);
  return {dqkv, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> qkv_split_heads(int layout, const at::Tensor& qkv, int64_t batch,
                                                               int64_t pos, int64_t n_heads, int64_t d_head) {
  if (layout != 0 && layout != 1) throw std::invalid_argument("unknown QKV layout " + std::to_string(layout));
  if (batch < 0 || pos < 0 || n_heads <= 0 || d_head <= 0 || qkv.dim() < 1 || qkv.size(-1) != 3 * n_heads * d_head ||
      qkv.numel() != batch * pos * 3 * n_heads * d_head)
    throw std::invalid_argument("fused QKV output " + c10::str(qkv.sizes()) + " does not hold batch * pos = " +
                                std::to_string(batch) + " * " + std::to_string(pos) + " rows of 3 * n_heads * d_head = 3 * " +
                                std::to_string(n_heads) + " * " + std::to_string(d_head));
  auto parts = SplitHeadsFunction::apply(qkv, layout, batch, pos, n_heads, d_head);
  return {parts[0].transpose(1, 2), parts[1].transpose(1, 2), parts[2].transpose(1, 2)};
}

}  // namespace sl::kernels
