// Row kernels for the two LayerNorm steps (see layer_norm.h): one pass per row forward, one backward, parallel
// over rows. float32/float64 CPU tensors take the kernels; anything else takes the same math as ATen ops.
#include "kernels/layer_norm.h"

#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cmath>

#ifdef SHARPLENS_WITH_CUDA
#include <ATen/core/grad_mode.h>

#include "kernels_cuda_glue.h"  // native/cuda: the same rows for CUDA tensors (one warp per row)
#endif

namespace sl::kernels {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int64_t kRowGrain = 16;
constexpr int64_t kColumnBlock = 64;

// Row reductions with eight independent partial sums: a single accumulator makes every add wait for the one
// before it (and the compiler may not reorder floating-point adds to vectorise), which made these kernels
// slower than ATen's composition.
template <typename T, typename Term>
T row_reduce(int64_t n, Term term) {
  T acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int k = 0; k < 8; ++k) acc[k] += term(j + k);
  T total = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; j < n; ++j) total += term(j);
  return total;
}

bool kernel_supported(const at::Tensor& t) {
#ifdef SHARPLENS_WITH_CUDA
  if (t.is_cuda()) return cuda::kernel_dtype_supported(t);
#endif
  return t.device().is_cpu() && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble);
}

class CentreScaleFunction : public torch::autograd::Function<CentreScaleFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x_in, double eps) {
    auto x = x_in.contiguous();
#ifdef SHARPLENS_WITH_CUDA
    if (x.is_cuda()) {
      auto [centred, scale] = cuda::layer_norm_centre_scale_forward(x, eps);
      ctx->save_for_backward({centred, scale});
      return {centred, scale};
    }
#endif
    const int64_t d = x.size(-1), rows = x.numel() / std::max<int64_t>(d, 1);
    auto centred = at::empty_like(x);
    auto scale_sizes = x.sizes().vec();
    scale_sizes.back() = 1;
    auto scale = at::empty(scale_sizes, x.options());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sl_layer_norm_centre_scale", [&] {
      const scalar_t* xp = x.data_ptr<scalar_t>();
      scalar_t* cp = centred.data_ptr<scalar_t>();
      scalar_t* sp = scale.data_ptr<scalar_t>();
      at::parallel_for(0, rows, kRowGrain, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const scalar_t* xr = xp + r * d;
          scalar_t* cr = cp + r * d;
          const scalar_t mean = row_reduce<scalar_t>(d, [&](int64_t j) { return xr[j]; }) / d;
          for (int64_t j = 0; j < d; ++j) cr[j] = xr[j] - mean;
          const scalar_t sq = row_reduce<scalar_t>(d, [&](int64_t j) { return cr[j] * cr[j]; });
          sp[r] = std::sqrt(sq / d + static_cast<scalar_t>(eps));
        }
      });
    });
    ctx->save_for_backward({centred, scale});
    return {centred, scale};
  }

  // dx = gc - mean(gc) + gs * centred / (d * scale): the mean subtraction projects out the row mean, and
  // d scale / d centred_j = centred_j / (d * scale), whose row mean is already zero.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto& centred = saved[0];
    const auto& scale = saved[1];
    const bool has_gc = grads[0].defined(), has_gs = grads[1].defined();
    if (!has_gc && !has_gs) return {at::Tensor(), at::Tensor()};
    auto gc = has_gc ? grads[0].contiguous() : at::Tensor();
    auto gs = has_gs ? grads[1].contiguous() : at::Tensor();
#ifdef SHARPLENS_WITH_CUDA
    if (centred.is_cuda()) return {cuda::layer_norm_centre_scale_backward(centred, scale, gc, gs), at::Tensor()};
#endif
    auto dx = at::empty_like(centred);
    const int64_t d = centred.size(-1), rows = centred.numel() / std::max<int64_t>(d, 1);
    AT_DISPATCH_FLOATING_TYPES(centred.scalar_type(), "sl_layer_norm_centre_scale_backward", [&] {
      const scalar_t* cp = centred.data_ptr<scalar_t>();
      const scalar_t* sp = scale.data_ptr<scalar_t>();
      const scalar_t* gcp = has_gc ? gc.data_ptr<scalar_t>() : nullptr;
      const scalar_t* gsp = has_gs ? gs.data_ptr<scalar_t>() : nullptr;
      scalar_t* dp = dx.data_ptr<scalar_t>();
      at::parallel_for(0, rows, kRowGrain, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          scalar_t* dr = dp + r * d;
          const scalar_t* cr = cp + r * d;
          const scalar_t k = gsp != nullptr ? gsp[r] / (d * sp[r]) : scalar_t(0);
          if (gcp != nullptr) {
            const scalar_t* g = gcp + r * d;
            const scalar_t mean_gc = row_reduce<scalar_t>(d, [&](int64_t j) { return g[j]; }) / d;
            for (int64_t j = 0; j < d; ++j) dr[j] = (g[j] - mean_gc) + k * cr[j];
          } else {
            for (int64_t j = 0; j < d; ++j) dr[j] = k * cr[j];
          }
        }
      });
    });
    return {dx, at::Tensor()};
  }
};

#ifdef SHARPLENS_WITH_CUDA
// RMSNorm's scale on CUDA: the row kernel forward; the backward is the centre + scale backward with x as the centred
// rows and no gradient on them (dx = gs x / (d scale)).
class RmsScaleFunction : public torch::autograd::Function<RmsScaleFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x_in, double eps) {
    auto x = x_in.contiguous();
    auto scale = cuda::rms_norm_scale_forward(x, eps);
    ctx->save_for_backward({x, scale});
    return scale;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &scale = saved[1];
    // Asked for a graph of the backward (double backward): the same formula as differentiable ops, as the
    // composition this replaced was.
    if (at::GradMode::is_enabled()) return {grads[0] * x / (scale * x.size(-1)), at::Tensor()};
    return {cuda::layer_norm_centre_scale_backward(x, scale, at::Tensor(), grads[0].contiguous()), at::Tensor()};
  }
};
#endif

class ApplyScaleFunction : public torch::autograd::Function<ApplyScaleFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& centred_in, const at::Tensor& scale_in,
                            const at::Tensor& weight_in, const at::Tensor& bias_in) {
    auto centred = centred_in.contiguous();
    auto scale = scale_in.contiguous();
    auto weight = weight_in.contiguous();
    auto bias = bias_in.contiguous();
#ifdef SHARPLENS_WITH_CUDA
    if (centred.is_cuda()) {
      ctx->save_for_backward({centred, scale, weight});
      return cuda::layer_norm_apply_scale_forward(centred, scale, weight, bias);
    }
#endif
    const int64_t d = centred.size(-1), rows = centred.numel() / std::max<int64_t>(d, 1);
    auto y = at::empty_like(centred);
    AT_DISPATCH_FLOATING_TYPES(centred.scalar_type(), "sl_layer_norm_apply_scale", [&] {
      const scalar_t* cp = centred.data_ptr<scalar_t>();
      const scalar_t* sp = scale.data_ptr<scalar_t>();
      const scalar_t* wp = weight.data_ptr<scalar_t>();
      const scalar_t* bp = bias.data_ptr<scalar_t>();
      scalar_t* yp = y.data_ptr<scalar_t>();
      at::parallel_for(0, rows, kRowGrain, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const scalar_t* cr = cp + r * d;
          scalar_t* yr = yp + r * d;
          const scalar_t s = sp[r];
          const scalar_t inv = scalar_t(1) / s;
          for (int64_t j = 0; j < d; ++j) yr[j] = cr[j] * inv * wp[j] + bp[j];
        }
      });
    });
    ctx->save_for_backward({centred, scale, weight});
    return y;
  }

  // gc = gy * w / s;  gs = -sum_j gy_j w_j c_j / s^2;  gw = sum_rows gy * c / s;  gb = sum_rows gy.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto& centred = saved[0];
    const auto& scale = saved[1];
    const auto& weight = saved[2];
    // A weight or bias the caller left out is a constant (see layer_norm_apply_scale): no gradient to reduce.
    const bool has_weight = ctx->needs_input_grad(2);
    const bool has_bias = ctx->needs_input_grad(3);
    auto gy = grads[0].contiguous();
    const int64_t d = centred.size(-1), rows = centred.numel() / std::max<int64_t>(d, 1);
#ifdef SHARPLENS_WITH_CUDA
    if (centred.is_cuda()) {
      auto [gc, gs] = cuda::layer_norm_apply_scale_backward(gy, centred, scale, weight);
      // The parameter gradients are column sums over rows: ATen's reductions (float accumulation for half types).
      const auto rows_of_gy = gy.reshape({rows, d});
      auto gw = has_weight ? (rows_of_gy * centred.reshape({rows, d}) / scale.reshape({rows, 1})).sum(0) : at::Tensor();
      auto gb = has_bias ? rows_of_gy.sum(0) : at::Tensor();
      return {gc, gs, gw, gb};
    }
#endif
    auto gc = at::empty_like(centred);
    auto gs = at::empty_like(scale);
    auto gw = has_weight ? at::empty({d}, centred.options()) : at::Tensor();
    auto gb = has_bias ? at::empty({d}, centred.options()) : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES(centred.scalar_type(), "sl_layer_norm_apply_scale_backward", [&] {
      const scalar_t* cp = centred.data_ptr<scalar_t>();
      const scalar_t* sp = scale.data_ptr<scalar_t>();
      const scalar_t* wp = weight.data_ptr<scalar_t>();
      const scalar_t* gyp = gy.data_ptr<scalar_t>();
      scalar_t* gcp = gc.data_ptr<scalar_t>();
      scalar_t* gsp = gs.data_ptr<scalar_t>();
      at::parallel_for(0, rows, kRowGrain, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const scalar_t* cr = cp + r * d;
          const scalar_t* g = gyp + r * d;
          scalar_t* gcr = gcp + r * d;
          const scalar_t inv = scalar_t(1) / sp[r];
          for (int64_t j = 0; j < d; ++j) gcr[j] = g[j] * wp[j] * inv;
          const scalar_t dot = row_reduce<scalar_t>(d, [&](int64_t j) { return g[j] * wp[j] * cr[j]; });
          gsp[r] = -dot * inv * inv;
        }
      });
      // Parameter gradients reduce over rows: parallel over column blocks, each summing every row in order,
      // so the result does not depend on the thread count.
      if (has_weight || has_bias) {
        scalar_t* gwp = has_weight ? gw.data_ptr<scalar_t>() : nullptr;
        scalar_t* gbp = has_bias ? gb.data_ptr<scalar_t>() : nullptr;
        at::parallel_for(0, d, kColumnBlock, [&](int64_t j0, int64_t j1) {
          for (int64_t j = j0; j < j1; ++j) {
            if (gwp != nullptr) gwp[j] = 0;
            if (gbp != nullptr) gbp[j] = 0;
          }
          for (int64_t r = 0; r < rows; ++r) {
            const scalar_t* cr = cp + r * d;
            const scalar_t* g = gyp + r * d;
            const scalar_t inv = scalar_t(1) / sp[r];
            for (int64_t j = j0; j < j1; ++j) {
              if (gwp != nullptr) gwp[j] += g[j] * cr[j] * inv;
              if (gbp != nullptr) gbp[j] += g[j];
            }
          }
        });
      }
    });
    return {gc, gs, gw, gb};
  }
};

}  // namespace

std::pair<at::Tensor, at::Tensor> layer_norm_centre_scale(const at::Tensor& x, double eps) {
  if (x.dim() < 1 || x.size(-1) < 1)
    throw std::invalid_argument("layer norm needs a non-empty last dimension, got " + c10::str(x.sizes()));
  if (!kernel_supported(x)) {
    auto centred = x - x.mean(-1, /*keepdim=*/true);
    return {centred, (centred.square().mean(-1, /*keepdim=*/true) + eps).sqrt()};
  }
  auto out = CentreScaleFunction::apply(x, eps);
  return {out[0], out[1]};
}

at::Tensor rms_norm_scale(const at::Tensor& x, double eps) {
  if (x.dim() < 1 || x.size(-1) < 1)
    throw std::invalid_argument("RMS norm needs a non-empty last dimension, got " + c10::str(x.sizes()));
#ifdef SHARPLENS_WITH_CUDA
  if (cuda::kernel_dtype_supported(x)) return RmsScaleFunction::apply(x, eps);
#endif
  return x.square().mean(-1, /*keepdim=*/true).add(eps).sqrt();
}

at::Tensor layer_norm_apply_scale(const at::Tensor& centred, const at::Tensor& scale, const at::Tensor& weight,
                                  const at::Tensor& bias) {
  auto expected = centred.sizes().vec();
  if (!expected.empty()) expected.back() = 1;
  if (centred.dim() < 1 || scale.sizes().vec() != expected)
    throw std::invalid_argument("layer norm scale must be " + c10::str(at::IntArrayRef(expected)) + " for centred " +
                                c10::str(centred.sizes()) + ", got " + c10::str(scale.sizes()));
  const int64_t d = centred.size(-1);
  for (const auto* p : {&weight, &bias})
    if (p->defined() && (p->dim() != 1 || p->size(0) != d))
      throw std::invalid_argument("layer norm weight and bias must be [" + std::to_string(d) + "], got " +
                                  c10::str(p->sizes()));
  const bool same_type = scale.scalar_type() == centred.scalar_type() &&
                         (!weight.defined() || weight.scalar_type() == centred.scalar_type()) &&
                         (!bias.defined() || bias.scalar_type() == centred.scalar_type());
  const bool same_device = scale.device() == centred.device() && (!weight.defined() || weight.device() == centred.device()) &&
                           (!bias.defined() || bias.device() == centred.device());
  if (!kernel_supported(centred) || !same_type || !same_device) {
    auto y = centred / scale;
    if (weight.defined()) y = y * weight;
    if (bias.defined()) y = y + bias;
    return y;
  }
  // Autograd functions take defined tensors only: a missing weight or bias becomes a constant 1 or 0 of size d.
  return ApplyScaleFunction::apply(centred, scale, weight.defined() ? weight : at::ones({d}, centred.options()),
                                   bias.defined() ? bias : at::zeros({d}, centred.options()));
}

}  // namespace sl::kernels
