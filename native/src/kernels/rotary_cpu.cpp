// Rotary embedding kernel (see rotary.h): a cos/sin table, then one pass over x per (batch, pos) row, parallel
// over rows, reading x through its strides and writing a contiguous result.
//
// The table is computed once per call (shared by q and k in rotary_qk) and kept for the backward. It holds one
// row per position when every batch row has the same positions (no padding: the usual case), else one per
// (batch, pos) row; the kernels tell the two apart by its row count. With a row per (batch, pos) row, the table
// (rotary_dim / 2 sincos per row, in float64) measured about a tenth of one tensor's forward at Pythia-160m's shape
// (batch 4, pos 1024: q and k in two calls 4.17 ms, sharing one table 3.94 ms), so comparing the batch rows, one
// memcmp, pays; finding the distinct positions of arbitrary rows (a sort or hash per call) would not.
#include "kernels/rotary.h"

#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#ifdef SHARPLENS_WITH_CUDA
#include "kernels_cuda_glue.h"  // native/cuda: the same rotation for CUDA tensors
#endif

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace sl::kernels {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Rows of h * d elements each (768 for Pythia-160m): enough work per task to amortise the scheduling.
constexpr int64_t kRowGrain = 16;
// Rows of the table: rotary_dim / 2 sin/cos pairs each, a few hundred nanoseconds per row.
constexpr int64_t kTableGrain = 64;

void sin_cos(double theta, double* s, double* c) {
#if defined(__GLIBC__)
  ::sincos(theta, s, c);  // one argument reduction for both
#else
  *s = std::sin(theta);
  *c = std::cos(theta);
#endif
}

// [rows, 2, rotary_dim / 2] in the given dtype: cos(theta) then sin(theta) for each row's angles, where rows is p
// when all b rows of positions [b, p] are equal and b * p otherwise. The angles and their trig are float64 whatever
// the dtype, as in the composition (positions.double() * inv_freq), so float32 and float64 results differ only by
// the final rounding.
at::Tensor cos_sin_table(const at::Tensor& positions, int64_t rotary_dim, double base, at::ScalarType dtype) {
  const auto pos = positions.to(at::kDouble).contiguous();
  const int64_t nb = pos.size(0), np = pos.size(1), half = rotary_dim / 2;
  const double* pp = pos.data_ptr<double>();
  // Bitwise equality: a difference that does not change the angles (0.0 against -0.0) only costs the sharing.
  bool shared = nb > 1;
  for (int64_t b = 1; b < nb && shared; ++b)
    shared = std::memcmp(pp + b * np, pp, static_cast<size_t>(np) * sizeof(double)) == 0;
  const int64_t rows = shared ? np : nb * np;
  // The composition's inv_freq: 1 / base^(arange(0, rotary_dim, 2) / rotary_dim), each step in float64.
  std::vector<double> inv_freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i)
    inv_freq[static_cast<size_t>(i)] = 1.0 / std::pow(base, static_cast<double>(2 * i) / static_cast<double>(rotary_dim));
  auto table = at::empty({rows, 2, half}, pos.options().dtype(dtype));
  AT_DISPATCH_FLOATING_TYPES(dtype, "sl_rotary_table", [&] {
    scalar_t* tp = table.data_ptr<scalar_t>();
    at::parallel_for(0, rows, kTableGrain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        scalar_t* c = tp + r * 2 * half;
        scalar_t* s = c + half;
        for (int64_t i = 0; i < half; ++i) {
          double sv, cv;
          sin_cos(pp[r] * inv_freq[static_cast<size_t>(i)], &sv, &cv);
          c[i] = static_cast<scalar_t>(cv);
          s[i] = static_cast<scalar_t>(sv);
        }
      }
    });
  });
  return table;
}

// One head: o = R(theta) x on the first 2 * half features (R(-theta) when Inverse), a copy of the rest. The
// unit-stride form lets the compiler vectorise over i; xs is x's stride along d otherwise.
template <typename T, bool Inverse>
inline void rotate_head(const T* __restrict x, int64_t xs, T* __restrict o, const T* __restrict c,
                        const T* __restrict s, int64_t half, int64_t d) {
  if (xs == 1) {
    for (int64_t i = 0; i < half; ++i) {
      const T a = x[i], b = x[i + half];
      o[i] = Inverse ? a * c[i] + b * s[i] : a * c[i] - b * s[i];
      o[i + half] = Inverse ? b * c[i] - a * s[i] : b * c[i] + a * s[i];
    }
    if (d > 2 * half) std::memcpy(o + 2 * half, x + 2 * half, static_cast<size_t>(d - 2 * half) * sizeof(T));
    return;
  }
  for (int64_t i = 0; i < half; ++i) {
    const T a = x[i * xs], b = x[(i + half) * xs];
    o[i] = Inverse ? a * c[i] + b * s[i] : a * c[i] - b * s[i];
    o[i + half] = Inverse ? b * c[i] - a * s[i] : b * c[i] + a * s[i];
  }
  for (int64_t j = 2 * half; j < d; ++j) o[j] = x[j * xs];
}

// x [b, p, h, d] (any strides, including the zero strides of an expanded gradient) rotated by the table's angles
// (their negatives when inverse) into a new contiguous tensor. The table has a row per (batch, pos) row, or per
// position when the batch rows share their positions (see cos_sin_table).
at::Tensor rotate(const at::Tensor& x, const at::Tensor& table, bool inverse) {
#ifdef SHARPLENS_WITH_CUDA
  if (x.is_cuda()) return cuda::rotary_table_forward(x, table, inverse);
#endif
  const int64_t nb = x.size(0), np = x.size(1), nh = x.size(2), d = x.size(3), half = table.size(2);
  const bool per_position = table.size(0) != nb * np;
  auto out = at::empty({nb, np, nh, d}, x.options().memory_format(at::MemoryFormat::Contiguous));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sl_rotary", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* tp = table.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const int64_t sb = x.stride(0), sp = x.stride(1), sh = x.stride(2), sd = x.stride(3);
    at::parallel_for(0, nb * np, kRowGrain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* xr = xp + (r / np) * sb + (r % np) * sp;
        const scalar_t* c = tp + (per_position ? r % np : r) * 2 * half;
        scalar_t* orow = op + r * nh * d;
        for (int64_t hh = 0; hh < nh; ++hh) {
          if (inverse)
            rotate_head<scalar_t, true>(xr + hh * sh, sd, orow + hh * d, c, c + half, half, d);
          else
            rotate_head<scalar_t, false>(xr + hh * sh, sd, orow + hh * d, c, c + half, half, d);
        }
      }
    });
  });
  return out;
}

// x rotated by the table's angles. Rotations are orthogonal, so the backward is the rotation by the opposite
// angles: the same op with inverse flipped, which keeps the gradient differentiable (double backward) and saves
// only the table, never x.
class RotaryFunction : public torch::autograd::Function<RotaryFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& table, bool inverse) {
    ctx->save_for_backward({table});
    ctx->saved_data["inverse"] = inverse;
    return rotate(x, table, inverse);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto table = ctx->get_saved_variables()[0];
    const bool inverse = ctx->saved_data["inverse"].toBool();
    auto gx = grads[0].defined() ? RotaryFunction::apply(grads[0], table, !inverse) : at::Tensor();
    return {gx, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

void check_rotary_args(const at::Tensor& x, const char* name, const at::Tensor& positions, int64_t rotary_dim) {
  if (x.dim() != 4)
    throw std::invalid_argument(std::string(name) + " must have shape [batch, pos, head, d_head], got " +
                                c10::str(x.sizes()));
  if (rotary_dim <= 0 || rotary_dim > x.size(3) || rotary_dim % 2 != 0)
    throw std::invalid_argument("rotary_dim must be even and in (0, d_head = " + std::to_string(x.size(3)) + "] of " +
                                name + " " + c10::str(x.sizes()) + ", got " + std::to_string(rotary_dim));
  if (positions.dim() != 2 || positions.size(0) != x.size(0) || positions.size(1) != x.size(1))
    throw std::invalid_argument("positions must be [batch, pos] = [" + std::to_string(x.size(0)) + ", " +
                                std::to_string(x.size(1)) + "] for " + name + " " + c10::str(x.sizes()) + ", got " +
                                c10::str(positions.sizes()));
}

bool rotary_supported(const at::Tensor& x, const at::Tensor& positions) {
  return x.defined() && positions.defined() && x.dim() == 4 && x.device().is_cpu() && x.layout() == at::kStrided &&
         (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble) && positions.device().is_cpu() &&
         positions.layout() == at::kStrided && !positions.is_complex();
}

at::Tensor rotary(const at::Tensor& x, const at::Tensor& positions, int64_t rotary_dim, double base) {
  check_rotary_args(x, "x", positions, rotary_dim);
  if (!rotary_supported(x, positions))
    throw std::invalid_argument("the rotary kernel needs a float32 or float64 CPU tensor x and CPU positions, got " +
                                std::string(c10::toString(x.scalar_type())) + " on " + x.device().str());
  return RotaryFunction::apply(x, cos_sin_table(positions, rotary_dim, base, x.scalar_type()), false);
}

std::pair<at::Tensor, at::Tensor> rotary_qk(const at::Tensor& q, const at::Tensor& k, const at::Tensor& positions,
                                            int64_t rotary_dim, double base) {
  check_rotary_args(q, "q", positions, rotary_dim);
  check_rotary_args(k, "k", positions, rotary_dim);
  if (!rotary_supported(q, positions) || !rotary_supported(k, positions) || q.scalar_type() != k.scalar_type())
    throw std::invalid_argument("the rotary kernel needs q and k as float32 or float64 CPU tensors of one dtype and "
                                "CPU positions, got q " + std::string(c10::toString(q.scalar_type())) + " on " +
                                q.device().str() + ", k " + std::string(c10::toString(k.scalar_type())) + " on " +
                                k.device().str());
  const auto table = cos_sin_table(positions, rotary_dim, base, q.scalar_type());
  return {RotaryFunction::apply(q, table, false), RotaryFunction::apply(k, table, false)};
}


void check_rotary_table(const at::Tensor& x, const char* name, const at::Tensor& table) {
  if (x.dim() != 4)
    throw std::invalid_argument(std::string(name) + " must have shape [batch, pos, head, d_head], got " +
                                c10::str(x.sizes()));
  const int64_t np = x.size(1), rows = x.size(0) * np;
  if (table.dim() != 3 || table.size(1) != 2 || table.size(2) < 1 || 2 * table.size(2) > x.size(3) ||
      (table.size(0) != np && table.size(0) != rows))
    throw std::invalid_argument("rotary table must be [pos or batch * pos, 2, rotary_dim / 2] with rotary_dim <= d_head "
                                "for " + std::string(name) + " " + c10::str(x.sizes()) + " (pos " + std::to_string(np) +
                                ", batch * pos " + std::to_string(rows) + "), got " + c10::str(table.sizes()));
  if (!table.is_floating_point())
    throw std::invalid_argument("rotary table must be floating point, got " + std::string(c10::toString(table.scalar_type())));
}

bool rotary_table_supported(const at::Tensor& x, const at::Tensor& table) {
#ifdef SHARPLENS_WITH_CUDA
  if (x.defined() && x.is_cuda()) return cuda::rotary_table_supported(x, table);
#endif
  return x.defined() && table.defined() && x.dim() == 4 && x.device().is_cpu() && x.layout() == at::kStrided &&
         (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble) && table.device().is_cpu() &&
         table.layout() == at::kStrided;
}

at::Tensor rotary_with_table(const at::Tensor& x, const at::Tensor& table) {
  check_rotary_table(x, "x", table);
  if (!rotary_table_supported(x, table))
    throw std::invalid_argument("the rotary kernel needs a float32 or float64 CPU tensor x and a CPU table (or, in a CUDA "
                                "build, a float32/float64/float16/bfloat16 CUDA x and a table on its device), got " +
                                std::string(c10::toString(x.scalar_type())) + " on " + x.device().str());
  // A table made by autograd-tracked ops must not carry its graph into the saved state: it is a constant here.
  return RotaryFunction::apply(x, table.detach().to(x.scalar_type()).contiguous(), false);
}

}  // namespace sl::kernels
