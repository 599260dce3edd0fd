// The linear layer of linear.h: addmm forward, and a backward that finds the gradient's nonzero rows first and
// multiplies only those when enough rows are zero.
#include "kernels/linear.h"

#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <atomic>
#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

namespace sl::kernels {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The gathered backward pays an index_select of the nonzero gradient and input rows and a scatter of the input
// gradient; below 7/8 nonzero rows the GEMM work it saves outweighs that.
constexpr int64_t kSparseNumerator = 7, kSparseDenominator = 8;

bool cpu_float(const at::Tensor& t) {
  return t.device().is_cpu() && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble);
}

// Whether every element is finite; stops at the first that is not. CPU float32/float64 by a parallel scan
// (no [numel] bool temporary: the unembedding weight has 38.6M elements), anything else by ATen.
bool all_finite(const at::Tensor& t_in) {
  if (!cpu_float(t_in)) return at::isfinite(t_in).all().item<bool>();
  auto t = t_in.contiguous();
  std::atomic<bool> finite{true};
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "sl_linear_all_finite", [&] {
    const scalar_t* p = t.data_ptr<scalar_t>();
    at::parallel_for(0, t.numel(), 1 << 16, [&](int64_t i0, int64_t i1) {
      constexpr int64_t kChunk = 4096;
      for (int64_t c = i0; c < i1 && finite.load(std::memory_order_relaxed); c += kChunk) {
        // x - x is NaN exactly when x is inf or NaN (and NaN != 0); the branch-free inner loop vectorises.
        bool bad = false;
        const int64_t end = std::min(i1, c + kChunk);
        for (int64_t i = c; i < end; ++i) bad |= (p[i] - p[i]) != 0;
        if (bad) finite.store(false, std::memory_order_relaxed);
      }
    });
  });
  return finite.load();
}

std::string shape_of(const at::Tensor& t) { return t.defined() ? c10::str(t.sizes()) : std::string("undefined"); }

void check_shapes(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int layout) {
  if (layout != 0 && layout != 1)
    throw std::invalid_argument("linear: layout must be 0 ([in, out]) or 1 ([out, in]), got " +
                                std::to_string(layout));
  if (!x.defined() || !w.defined()) throw std::invalid_argument("linear: x and w must be defined");
  const int64_t in = layout == 0 ? w.size(0) : w.size(1);
  const int64_t out = layout == 0 ? w.size(1) : w.size(0);
  if (w.dim() != 2 || x.dim() < 1 || x.size(-1) != in)
    throw std::invalid_argument("linear: x " + shape_of(x) + " does not fit w " + shape_of(w) + " in layout " +
                                (layout == 0 ? "[in, out]" : "[out, in]"));
  if (b.defined() && (b.dim() != 1 || b.size(0) != out))
    throw std::invalid_argument("linear: bias " + shape_of(b) + " must be [" + std::to_string(out) + "] for w " +
                                shape_of(w));
}

// x2 [rows, in] -> x2 w (layout 0) or x2 wᵀ (layout 1), plus b.
at::Tensor project(const at::Tensor& x2, const at::Tensor& w, const at::Tensor& b, int layout) {
  const auto wt = layout == 0 ? w : w.t();
  return b.defined() ? at::addmm(b, x2, wt) : x2.mm(wt);
}

class LinearFunction : public torch::autograd::Function<LinearFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w,
                               const c10::optional<at::Tensor>& b_in, int64_t layout) {
    ctx->set_materialize_grads(false);
    const bool has_bias = b_in.has_value() && b_in->defined();
    const auto b = has_bias ? *b_in : at::Tensor();
    auto x2 = x.reshape({-1, x.size(-1)});
    auto y2 = project(x2, w, b, static_cast<int>(layout));
    auto out_sizes = x.sizes().vec();
    out_sizes.back() = y2.size(1);
    ctx->saved_data["layout"] = layout;
    ctx->saved_data["has_bias"] = has_bias;
    ctx->saved_data["x_sizes"] = x.sizes().vec();
    ctx->save_for_backward({x2, w});
    return {y2.view(out_sizes)};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& x2 = saved[0];
    const auto& w = saved[1];
    const int layout = static_cast<int>(ctx->saved_data["layout"].toInt());
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const auto x_sizes = ctx->saved_data["x_sizes"].toIntVector();
    const bool want_x = ctx->needs_input_grad(0), want_w = ctx->needs_input_grad(1),
               want_b = has_bias && ctx->needs_input_grad(2);
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    const auto g = grads[0].reshape({x2.size(0), -1}).contiguous();
    const int64_t rows = g.size(0);

    // Decide between the dense and the gathered backward. Only on CPU: finding the live rows elsewhere is a
    // device-to-host sync (CUDA) or impossible (meta tensors have no data), so other devices take the dense one.
    at::Tensor idx;
    int64_t live = rows;
    if (cpu_float(g)) {
      idx = nonzero_rows(g);
      live = idx.size(0);
    }
    bool sparse = cpu_float(g) && live * kSparseDenominator <= rows * kSparseNumerator;
    // A skipped row's contribution is 0 * x_row to dw and 0 * w to dx_row: exactly zero only if those are finite.
    if (sparse && want_w && !all_finite(x2)) sparse = false;
    if (sparse && want_x && !all_finite(w)) sparse = false;

    const auto gs = sparse ? g.index_select(0, idx) : g;
    const auto xs = sparse && want_w ? x2.index_select(0, idx) : x2;
    at::Tensor dx, dw, db;
    if (want_x) {
      auto dxs = layout == 0 ? gs.mm(w.t()) : gs.mm(w);
      if (sparse) {
        dx = at::zeros({rows, x2.size(1)}, x2.options());
        if (live > 0) dx.index_copy_(0, idx, dxs);
      } else {
        dx = dxs;
      }
      dx = dx.view(x_sizes);
    }
    if (want_w) {
      if (sparse && live == 0) dw = at::zeros_like(w);
      else dw = layout == 0 ? xs.t().mm(gs) : gs.t().mm(xs);
    }
    if (want_b) db = sparse && live == 0 ? at::zeros({g.size(1)}, g.options()) : gs.sum(0);
    return {dx, dw, db, at::Tensor()};
  }
};

}  // namespace

at::Tensor nonzero_rows(const at::Tensor& g) {
  if (g.dim() != 2) throw std::invalid_argument("nonzero_rows: gradient must be 2-D, got " + shape_of(g));
  if (!cpu_float(g)) return g.ne(0).any(1).nonzero().view(-1);
  auto gc = g.contiguous();
  const int64_t rows = gc.size(0), cols = gc.size(1);
  std::vector<uint8_t> live(static_cast<size_t>(rows), 0);
  AT_DISPATCH_FLOATING_TYPES(gc.scalar_type(), "sl_linear_nonzero_rows", [&] {
    const scalar_t* p = gc.data_ptr<scalar_t>();
    at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* row = p + r * cols;
        // Dense gradients exit at the first element; zero rows are read in blocks the compiler vectorises.
        // x != 0 is true for NaN, so a NaN row counts as live.
        constexpr int64_t kBlock = 256;
        for (int64_t c = 0; c < cols && !live[r]; c += kBlock) {
          const int64_t end = std::min(cols, c + kBlock);
          bool any = false;
          for (int64_t j = c; j < end; ++j) any |= row[j] != 0;
          if (any) live[r] = 1;
        }
      }
    });
  });
  std::vector<int64_t> idx;
  idx.reserve(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r)
    if (live[r]) idx.push_back(r);
  return at::tensor(idx, at::TensorOptions().dtype(at::kLong).device(g.device()));
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int layout) {
  check_shapes(x, w, b, layout);
  c10::optional<at::Tensor> bias;
  if (b.defined()) bias = b;
  return LinearFunction::apply(x, w, bias, static_cast<int64_t>(layout))[0];
}

}  // namespace sl::kernels
