// Fused QKV projection (see qkv.h) over row-major BLAS calls that read the fused weight through leading
// dimensions and offsets. In both layouts the (part, head) block of d outputs is contiguous in the bias and in
// the weight's output dimension: GPT-2's columns part*h*d + head*d (a whole part is h*d adjacent columns: one GEMM
// with ldb = ldw), NeoX's rows head*3*d + part*d (a contiguous [d, m] block).
//
// Measured on the 2-core OpenBLAS build, GPT-2 small shapes: per-head GEMMs ([n, d] outputs) re-pack x inside BLAS
// once per head and ran 1.3-2x slower than one GEMM per part, serial or parallel over heads, so NeoX's separate
// inputs gather the part's h blocks into a scratch [h*d, m] (one pass over a third of the weight, outside the
// autograd graph) and take one GEMM. Everything else reads the weight in place: same input = one GEMM over the
// whole weight; input gradients accumulate per head (K = d), as fast as a gathered GEMM; weight gradients are one
// GEMM per (part, head) block in parallel, each block written once.
#include "kernels/qkv.h"
#include "kernels/blas.h"

#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace sl::kernels {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int64_t kRowGrain = 32;
constexpr int64_t kColumnBlock = 64;

struct Geometry {
  int layout;
  int64_t n, m, h, d, hd, ldw;
  // Index of the (part, head) block's first output in the fused order (bias index; GPT-2 weight column; NeoX
  // weight row).
  int64_t block(int part, int64_t head) const { return layout == 0 ? part * hd + head * d : head * 3 * d + part * d; }
  // The (part, head) weight block: GPT-2 [m, d] at column block(), NeoX [d, m] at row block(); both with ldw.
  template <typename T>
  const T* weight(const T* w, int part, int64_t head) const {
    return layout == 0 ? w + block(part, head) : w + block(part, head) * ldw;
  }
};

std::string shape(const at::Tensor& t) { return c10::str(t.sizes()); }

// Empty when consistent, else why not.
std::string shape_error(int layout, const at::Tensor& xq, const at::Tensor& xk, const at::Tensor& xv,
                        const at::Tensor& w, const at::Tensor& b, int64_t n_heads) {
  if (layout != 0 && layout != 1) return "unknown QKV layout " + std::to_string(layout);
  if (n_heads <= 0) return "n_heads must be positive, got " + std::to_string(n_heads);
  if (!xq.defined() || !xk.defined() || !xv.defined() || !w.defined()) return "xq, xk, xv and w must be defined";
  if (xq.dim() != 3) return "xq must be [batch, pos, d_model], got " + shape(xq);
  if (xk.sizes() != xq.sizes()) return "xk must have xq's shape " + shape(xq) + ", got " + shape(xk);
  if (xv.sizes() != xq.sizes()) return "xv must have xq's shape " + shape(xq) + ", got " + shape(xv);
  const int64_t m = xq.size(2);
  if (w.dim() != 2) return "qkv weight must be 2-D, got " + shape(w);
  const int64_t out = layout == 0 ? w.size(1) : w.size(0), in = layout == 0 ? w.size(0) : w.size(1);
  if (in != m || out <= 0 || out % (3 * n_heads) != 0)
    return std::string(layout == 0 ? "part-major in-out QKV weight must be [d_model, 3 * n_heads * d_head]"
                                   : "head-major out-in QKV weight must be [n_heads * 3 * d_head, d_model]") +
           " with d_model " + std::to_string(m) + " and n_heads " + std::to_string(n_heads) + ", got " + shape(w);
  if (b.defined() && (b.dim() != 1 || b.size(0) != out))
    return "qkv bias must be [" + std::to_string(out) + "], got " + shape(b);
  return {};
}

bool kernel_types(const at::Tensor& xq, const at::Tensor& xk, const at::Tensor& xv, const at::Tensor& w,
                  const at::Tensor& b) {
  const auto st = xq.scalar_type();
  if (st != at::kFloat && st != at::kDouble) return false;
  for (const at::Tensor* t : {&xq, &xk, &xv, &w, &b}) {
    if (!t->defined()) continue;
    if (!t->device().is_cpu() || t->scalar_type() != st || t->layout() != at::kStrided) return false;
  }
  // BLAS takes int dimensions; an empty d_model is left to ATen.
  const int64_t n = xq.size(0) * xq.size(1), m = xq.size(2);
  return m > 0 && n <= INT_MAX && w.size(0) <= INT_MAX / 2 && w.size(1) <= INT_MAX / 2;
}

// The weight as row-major with a leading dimension, without a copy when its last dimension has unit stride.
at::Tensor row_major(const at::Tensor& w) {
  const bool unit_inner = w.size(1) <= 1 || w.stride(1) == 1;
  const bool ld_ok = w.size(0) <= 1 || w.stride(0) >= std::max<int64_t>(1, w.size(1));
  return unit_inner && ld_ok ? w : w.contiguous();
}

int64_t leading_dim(const at::Tensor& w) {
  return w.size(0) <= 1 ? std::max<int64_t>(1, w.size(1)) : w.stride(0);
}

// Fills every row of out [n, h*d] with part `part` of the fused bias.
template <typename T>
void fill_bias(T* out, const T* bias, int part, const Geometry& g) {
  std::vector<T> row(g.hd);
  for (int64_t head = 0; head < g.h; ++head)
    std::memcpy(row.data() + head * g.d, bias + g.block(part, head), g.d * sizeof(T));
  at::parallel_for(0, g.n, kRowGrain * 4, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) std::memcpy(out + r * g.hd, row.data(), g.hd * sizeof(T));
  });
}

// Column sums of g [n, cols] (leading dimension ld) into dst[cols], each column summed over rows in order (the
// result does not depend on the thread count).
template <typename T>
void column_sums(const T* src, int64_t n, int64_t cols, int64_t ld, T* dst) {
  at::parallel_for(0, cols, kColumnBlock, [&](int64_t c0, int64_t c1) {
    T* acc = dst + c0;
    const int64_t w = c1 - c0;
    for (int64_t c = 0; c < w; ++c) acc[c] = 0;
    for (int64_t r = 0; r < n; ++r) {
      const T* row = src + r * ld + c0;
      for (int64_t c = 0; c < w; ++c) acc[c] += row[c];
    }
  });
}

// The part's bias gradient (column sums of its output gradient [n, h*d]) into the fused db.
template <typename T>
void part_bias_grad(const T* gout, int part, T* db, const Geometry& g) {
  if (g.layout == 0) {
    column_sums(gout, g.n, g.hd, g.hd, db + g.block(part, 0));
    return;
  }
  std::vector<T> sums(g.hd);
  column_sums(gout, g.n, g.hd, g.hd, sums.data());
  for (int64_t head = 0; head < g.h; ++head)
    std::memcpy(db + g.block(part, head), sums.data() + head * g.d, g.d * sizeof(T));
}

template <typename T>
void zero_part(T* dw, T* db, int part, const Geometry& g) {
  if (dw != nullptr) {
    if (g.layout == 0) {
      T* base = dw + g.block(part, 0);
      at::parallel_for(0, g.m, kRowGrain * 4, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) std::fill_n(base + r * 3 * g.hd, g.hd, T(0));
      });
    } else {
      for (int64_t head = 0; head < g.h; ++head) std::fill_n(dw + g.block(part, head) * g.m, g.d * g.m, T(0));
    }
  }
  if (db != nullptr)
    for (int64_t head = 0; head < g.h; ++head) std::fill_n(db + g.block(part, head), g.d, T(0));
}

// Scratch without value-initialisation.
template <typename T>
std::unique_ptr<T[]> scratch(int64_t count) {
  return std::unique_ptr<T[]>(new T[static_cast<size_t>(std::max<int64_t>(count, 1))]);
}

template <typename T>
void forward_impl(const T* const xs[3], bool same, const T* w, const T* bias, T* const outs[3], const Geometry& g) {
  if (g.n == 0) return;
  const T beta = bias != nullptr ? T(1) : T(0);
  if (same && g.layout == 1) {
    // One GEMM over the whole weight into the fused order, then each row's (part, head) blocks scattered.
    const int64_t cols = 3 * g.hd;
    auto fused = scratch<T>(g.n * cols);
    T* f = fused.get();
    if (bias != nullptr)
      at::parallel_for(0, g.n, kRowGrain * 4, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) std::memcpy(f + r * cols, bias, cols * sizeof(T));
      });
    gemm_rm<T>(false, true, g.n, cols, g.m, T(1), xs[0], g.m, w, g.ldw, beta, f, cols);
    at::parallel_for(0, g.n, kRowGrain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int part = 0; part < 3; ++part)
          for (int64_t head = 0; head < g.h; ++head)
            std::memcpy(outs[part] + r * g.hd + head * g.d, f + r * cols + g.block(part, head), g.d * sizeof(T));
    });
    return;
  }
  if (bias != nullptr)
    for (int part = 0; part < 3; ++part) fill_bias(outs[part], bias, part, g);
  if (g.layout == 0) {
    // A part's columns are adjacent: one GEMM straight into each output (same input or not).
    for (int part = 0; part < 3; ++part)
      gemm_rm<T>(false, false, g.n, g.hd, g.m, T(1), xs[part], g.m, g.weight(w, part, 0), g.ldw, beta, outs[part],
                 g.hd);
    return;
  }
  // NeoX, separate inputs: gather the part's h row blocks, then one GEMM (see the note at the top).
  auto packed = scratch<T>(g.hd * g.m);
  T* pk = packed.get();
  for (int part = 0; part < 3; ++part) {
    at::parallel_for(0, g.h, 1, [&](int64_t h0, int64_t h1) {
      for (int64_t head = h0; head < h1; ++head)
        for (int64_t j = 0; j < g.d; ++j)
          std::memcpy(pk + (head * g.d + j) * g.m, g.weight(w, part, head) + j * g.ldw, g.m * sizeof(T));
    });
    gemm_rm<T>(false, true, g.n, g.hd, g.m, T(1), xs[part], g.m, pk, g.m, beta, outs[part], g.hd);
  }
}

// dx [n, m] = gout [n, h*d] through the transpose of the part's weight (+ beta * dx).
template <typename T>
void input_grad(const T* gout, const T* w, T* dx, int part, T beta, const Geometry& g) {
  if (g.layout == 0) {
    gemm_rm<T>(false, true, g.n, g.m, g.hd, T(1), gout, g.hd, g.weight(w, part, 0), g.ldw, beta, dx, g.m);
    return;
  }
  // NeoX: the part's rows are h separate [d, m] blocks, so the reduction over h*d splits into one K = d GEMM per
  // head accumulating into dx (BLAS's own threads; row blocks in parallel measured slower).
  for (int64_t head = 0; head < g.h; ++head)
    gemm_rm<T>(false, false, g.n, g.m, g.d, T(1), gout + head * g.d, g.hd, g.weight(w, part, head), g.ldw,
               head == 0 ? beta : T(1), dx, g.m);
}

// The part's blocks of dw = its output gradient against its input, each written once.
template <typename T>
void weight_grad_gpt2(const T* gout, const T* x, T* dw, int part, const Geometry& g) {
  gemm_rm<T>(true, false, g.m, g.hd, g.n, T(1), x, g.m, gout, g.hd, T(0), dw + g.block(part, 0), 3 * g.hd);
}

template <typename T>
void weight_grad_neox_block(const T* gout, const T* x, T* dw, int part, int64_t head, const Geometry& g) {
  gemm_rm<T>(true, false, g.d, g.m, g.n, T(1), gout + head * g.d, g.hd, x, g.m, T(0), dw + g.block(part, head) * g.m,
             g.m);
}

// dx (each null when not wanted), dw and db (null when not wanted); gouts[part] null = that output unused.
template <typename T>
void backward_impl(const T* const gouts[3], const T* const xs[3], bool same, const T* w, T* const dxs[3], T* dw,
                   T* db, const Geometry& g) {
  const bool all = gouts[0] != nullptr && gouts[1] != nullptr && gouts[2] != nullptr;
  if (same && all) {
    // Pack the three output gradients into the fused order [n, 3*h*d] (what ATen's unbind backward builds): one
    // GEMM gives dx (K = 3*h*d), one the whole dw, and the column sums the whole db.
    const int64_t cols = 3 * g.hd;
    auto packed = scratch<T>(g.n * cols);
    T* p = packed.get();
    at::parallel_for(0, g.n, kRowGrain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int part = 0; part < 3; ++part) {
          if (g.layout == 0) {
            std::memcpy(p + r * cols + part * g.hd, gouts[part] + r * g.hd, g.hd * sizeof(T));
          } else {
            for (int64_t head = 0; head < g.h; ++head)
              std::memcpy(p + r * cols + g.block(part, head), gouts[part] + r * g.hd + head * g.d, g.d * sizeof(T));
          }
        }
    });
    if (dxs[0] != nullptr)
      gemm_rm<T>(false, g.layout == 0, g.n, g.m, cols, T(1), p, cols, w, g.ldw, T(0), dxs[0], g.m);
    if (dw != nullptr) {
      if (g.layout == 0)
        gemm_rm<T>(true, false, g.m, cols, g.n, T(1), xs[0], g.m, p, cols, T(0), dw, cols);
      else
        gemm_rm<T>(true, false, cols, g.m, g.n, T(1), p, cols, xs[0], g.m, T(0), dw, g.m);
    }
    if (db != nullptr) column_sums(p, g.n, cols, cols, db);
    return;
  }
  // Same input, not all outputs used: the used parts' input gradients accumulate into dx (the xq slot).
  if (same && dxs[0] != nullptr) {
    bool first = true;
    for (int part = 0; part < 3; ++part) {
      if (gouts[part] == nullptr) continue;
      input_grad(gouts[part], w, dxs[0], part, first ? T(0) : T(1), g);
      first = false;
    }
  } else {
    for (int part = 0; part < 3; ++part)
      if (dxs[part] != nullptr && gouts[part] != nullptr) input_grad(gouts[part], w, dxs[part], part, T(0), g);
  }
  if (dw != nullptr || db != nullptr) {
    for (int part = 0; part < 3; ++part)
      if (gouts[part] == nullptr) zero_part(dw, db, part, g);
  }
  if (dw != nullptr) {
    if (g.layout == 0) {
      for (int part = 0; part < 3; ++part)
        if (gouts[part] != nullptr) weight_grad_gpt2(gouts[part], xs[part], dw, part, g);
    } else {
      // One [d, m] block per (part, head), in parallel with single-threaded BLAS calls.
      at::parallel_for(0, 3 * g.h, 1, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
          const int part = static_cast<int>(t / g.h);
          if (gouts[part] != nullptr) weight_grad_neox_block(gouts[part], xs[part], dw, part, t % g.h, g);
        }
      });
    }
  }
  if (db != nullptr)
    for (int part = 0; part < 3; ++part)
      if (gouts[part] != nullptr) part_bias_grad(gouts[part], part, db, g);
}

Geometry geometry(int layout, const at::Tensor& x, const at::Tensor& w, int64_t n_heads) {
  Geometry g;
  g.layout = layout;
  g.n = x.size(0) * x.size(1);
  g.m = x.size(2);
  g.h = n_heads;
  g.hd = (layout == 0 ? w.size(1) : w.size(0)) / 3;
  g.d = g.hd / n_heads;
  g.ldw = leading_dim(w);
  return g;
}

class QkvProjectFunction : public torch::autograd::Function<QkvProjectFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& xq_in, const at::Tensor& xk_in,
                               const at::Tensor& xv_in, const at::Tensor& w_in, const c10::optional<at::Tensor>& b_in,
                               int64_t layout, int64_t n_heads) {
    ctx->set_materialize_grads(false);
    const bool same = xq_in.is_same(xk_in) && xq_in.is_same(xv_in);
    auto xq = xq_in.contiguous();
    auto xk = same ? xq : xk_in.contiguous();
    auto xv = same ? xq : xv_in.contiguous();
    auto w = row_major(w_in);
    const bool has_bias = b_in.has_value() && b_in->defined();
    auto b = has_bias ? b_in->contiguous() : at::Tensor();
    const Geometry g = geometry(static_cast<int>(layout), xq, w, n_heads);
    const std::vector<int64_t> out_sizes{xq.size(0), xq.size(1), g.h, g.d};
    auto q = at::empty(out_sizes, xq.options()), k = at::empty(out_sizes, xq.options()),
         v = at::empty(out_sizes, xq.options());
    AT_DISPATCH_FLOATING_TYPES(xq.scalar_type(), "sl_qkv_project", [&] {
      const scalar_t* xs[3] = {xq.data_ptr<scalar_t>(), xk.data_ptr<scalar_t>(), xv.data_ptr<scalar_t>()};
      scalar_t* outs[3] = {q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>()};
      forward_impl<scalar_t>(xs, same, w.data_ptr<scalar_t>(), has_bias ? b.data_ptr<scalar_t>() : nullptr, outs, g);
    });
    ctx->saved_data["same"] = same;
    ctx->saved_data["has_bias"] = has_bias;
    ctx->saved_data["layout"] = layout;
    ctx->saved_data["n_heads"] = n_heads;
    ctx->save_for_backward({xq, xk, xv, w});
    return {q, k, v};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &xq = saved[0], &xk = saved[1], &xv = saved[2], &w = saved[3];
    const bool same = ctx->saved_data["same"].toBool();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const int layout = static_cast<int>(ctx->saved_data["layout"].toInt());
    const Geometry g = geometry(layout, xq, w, ctx->saved_data["n_heads"].toInt());
    at::Tensor gouts[3];
    for (int part = 0; part < 3; ++part)
      if (grads[part].defined()) gouts[part] = grads[part].contiguous();
    // With one input behind all three slots, its whole gradient goes back through the xq slot.
    bool want_x[3];
    for (int part = 0; part < 3; ++part) want_x[part] = ctx->needs_input_grad(part);
    if (same) {
      want_x[0] = want_x[0] || want_x[1] || want_x[2];
      want_x[1] = want_x[2] = false;
    }
    const bool want_w = ctx->needs_input_grad(3), want_b = has_bias && ctx->needs_input_grad(4);
    const at::Tensor* xs_t[3] = {&xq, &xk, &xv};
    at::Tensor dx[3];
    for (int part = 0; part < 3; ++part) {
      const bool any_grad = same ? (gouts[0].defined() || gouts[1].defined() || gouts[2].defined())
                                 : gouts[part].defined();
      if (want_x[part] && any_grad) dx[part] = at::empty_like(*xs_t[part]);
    }
    const std::vector<int64_t> w_sizes{w.size(0), w.size(1)};
    at::Tensor dw = want_w ? at::empty(w_sizes, w.options()) : at::Tensor();
    at::Tensor db = want_b ? at::empty({3 * g.hd}, w.options()) : at::Tensor();
    if (g.n == 0) {
      if (dw.defined()) dw.zero_();
      if (db.defined()) db.zero_();
      return {dx[0], dx[1], dx[2], dw, db, at::Tensor(), at::Tensor()};
    }
    AT_DISPATCH_FLOATING_TYPES(xq.scalar_type(), "sl_qkv_project_backward", [&] {
      const scalar_t* gp[3];
      const scalar_t* xs[3];
      scalar_t* dxs[3];
      for (int part = 0; part < 3; ++part) {
        gp[part] = gouts[part].defined() ? gouts[part].data_ptr<scalar_t>() : nullptr;
        xs[part] = xs_t[part]->data_ptr<scalar_t>();
        dxs[part] = dx[part].defined() ? dx[part].data_ptr<scalar_t>() : nullptr;
      }
      backward_impl<scalar_t>(gp, xs, same, w.data_ptr<scalar_t>(), dxs,
                              dw.defined() ? dw.data_ptr<scalar_t>() : nullptr,
                              db.defined() ? db.data_ptr<scalar_t>() : nullptr, g);
    });
    return {dx[0], dx[1], dx[2], dw, db, at::Tensor(), at::Tensor()};
  }
};

// The same math as ATen ops, for inputs the kernel does not take.
std::tuple<at::Tensor, at::Tensor, at::Tensor> qkv_project_aten(int layout, const at::Tensor& xq, const at::Tensor& xk,
                                                                const at::Tensor& xv, const at::Tensor& w,
                                                                const at::Tensor& b, int64_t n_heads) {
  const int64_t batch = xq.size(0), pos = xq.size(1), m = xq.size(2);
  const int64_t hd = (layout == 0 ? w.size(1) : w.size(0)) / 3, d = hd / n_heads;
  const at::Tensor* xs[3] = {&xq, &xk, &xv};
  at::Tensor outs[3];
  for (int part = 0; part < 3; ++part) {
    at::Tensor wp, bp;
    if (layout == 0) {
      wp = w.narrow(1, part * hd, hd);
      if (b.defined()) bp = b.narrow(0, part * hd, hd);
    } else {
      wp = w.reshape({n_heads, 3, d, m}).select(1, part).reshape({hd, m}).t();
      if (b.defined()) bp = b.reshape({n_heads, 3, d}).select(1, part).reshape({hd});
    }
    auto flat = xs[part]->reshape({batch * pos, m});
    auto y = bp.defined() ? at::addmm(bp, flat, wp) : flat.mm(wp);
    outs[part] = y.view({batch, pos, n_heads, d});
  }
  return {outs[0], outs[1], outs[2]};
}

}  // namespace

bool qkv_project_supported(int layout, const at::Tensor& xq, const at::Tensor& xk, const at::Tensor& xv,
                           const at::Tensor& w, const at::Tensor& b, int64_t n_heads) {
  return shape_error(layout, xq, xk, xv, w, b, n_heads).empty() && kernel_types(xq, xk, xv, w, b);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> qkv_project(int layout, const at::Tensor& xq, const at::Tensor& xk,
                                                           const at::Tensor& xv, const at::Tensor& w,
                                                           const at::Tensor& b, int64_t n_heads) {
  const auto error = shape_error(layout, xq, xk, xv, w, b, n_heads);
  if (!error.empty()) throw std::invalid_argument(error);
  if (!kernel_types(xq, xk, xv, w, b)) return qkv_project_aten(layout, xq, xk, xv, w, b, n_heads);
  c10::optional<at::Tensor> bias;
  if (b.defined()) bias = b;
  auto out = QkvProjectFunction::apply(xq, xk, xv, w, bias, static_cast<int64_t>(layout), n_heads);
  return {out[0], out[1], out[2]};
}

}  // namespace sl::kernels
