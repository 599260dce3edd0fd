// libtorch glue for the CUDA kernels: validation, allocation, device guard and stream; the kernels themselves
// only see raw pointers (kernels_cuda.cuh).
#include "kernels_cuda_glue.h"

#include "kernels_cuda.cuh"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <sstream>
#include <stdexcept>
#include <vector>

namespace sl::kernels::cuda {
namespace {

// "qh [2, 4, 37, 64] Float on cuda:0" (or "qh (undefined)"), for error messages.
std::string describe(const char* name, const at::Tensor& t) {
  std::ostringstream s;
  s << name;
  if (!t.defined()) {
    s << " (undefined)";
    return s.str();
  }
  s << " " << t.sizes() << " " << t.scalar_type() << " on " << t.device();
  if (!t.is_contiguous()) s << " (not contiguous)";
  return s.str();
}

[[noreturn]] void fail(const char* op, const std::string& what) {
  throw std::invalid_argument(std::string(op) + ": " + what);
}

bool supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// Accumulator (and lse) dtype: float for the half types, as in the kernels.
at::ScalarType accum_dtype(at::ScalarType t) { return t == at::kHalf || t == at::kBFloat16 ? at::kFloat : t; }

// A defined, contiguous CUDA tensor of a supported dtype, on `device` when that is given.
void require_cuda(const char* op, const char* name, const at::Tensor& t, const c10::optional<at::Device>& device = {}) {
  if (!t.defined() || !t.is_cuda() || !supported_dtype(t.scalar_type()) || !t.is_contiguous())
    fail(op, describe(name, t) + ": expected a contiguous CUDA tensor of float32, float64, float16 or bfloat16");
  if (device && t.device() != *device) fail(op, describe(name, t) + ": expected it on " + device->str());
}

void require_like(const char* op, const char* name, const at::Tensor& t, const char* ref_name, const at::Tensor& ref) {
  require_cuda(op, name, t, ref.device());
  if (t.sizes() != ref.sizes() || t.scalar_type() != ref.scalar_type())
    fail(op, describe(name, t) + ": expected the shape and dtype of " + describe(ref_name, ref));
}

template <typename T>
struct Type {
  using type = T;
};

// Calls f(Type<T>{}) with the kernel element type of `t` (at::Half and __half share their layout, as do
// at::BFloat16 and __nv_bfloat16).
template <typename F>
void dispatch(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kFloat: return f(Type<float>{});
    case at::kDouble: return f(Type<double>{});
    case at::kHalf: return f(Type<__half>{});
    case at::kBFloat16: return f(Type<__nv_bfloat16>{});
    default: throw std::invalid_argument(std::string("no CUDA kernel for dtype ") + c10::toString(t));
  }
}

template <typename T>
const T* ptr(const at::Tensor& t) {
  return static_cast<const T*>(t.data_ptr());
}
template <typename T>
T* mut_ptr(const at::Tensor& t) {
  return static_cast<T*>(t.data_ptr());
}

// Shape checks shared by forward, backward and the support query; "" when fine.
std::string attention_shape_error(const at::Tensor& qh, const at::Tensor& kh, const at::Tensor& vh) {
  if (qh.dim() != 4 || kh.dim() != 4 || vh.dim() != 4)
    return "expected 4-D tensors: " + describe("qh", qh) + ", " + describe("kh", kh) + ", " + describe("vh", vh);
  if (kh.sizes() != vh.sizes() || kh.scalar_type() != qh.scalar_type() || vh.scalar_type() != qh.scalar_type())
    return "kh and vh must have one shape and the dtype of qh: " + describe("qh", qh) + ", " + describe("kh", kh) +
           ", " + describe("vh", vh);
  if (qh.size(0) != kh.size(0) || qh.size(3) != kh.size(3) || kh.size(1) == 0 || qh.size(1) % kh.size(1) != 0 ||
      kh.size(2) < qh.size(2))
    return "expected qh [b, h, p_q, d] and kh [b, h_kv, p_k, d] with h a multiple of h_kv and p_k >= p_q, got " +
           describe("qh", qh) + ", " + describe("kh", kh);
  return {};
}

sl::cuda::AttentionShape attention_shape(const at::Tensor& qh, const at::Tensor& kh) {
  return sl::cuda::AttentionShape{qh.size(0), qh.size(1), kh.size(1), qh.size(2), kh.size(2), qh.size(3), 0};
}

void check_attention_inputs(const char* op, const at::Tensor& qh, const at::Tensor& kh, const at::Tensor& vh) {
  require_cuda(op, "qh", qh);
  require_cuda(op, "kh", kh, qh.device());
  require_cuda(op, "vh", vh, qh.device());
  if (auto why = attention_shape_error(qh, kh, vh); !why.empty()) fail(op, why);
}

// nullptr for "no mask" (undefined or empty), else the validated [b, p_k] byte mask.
const uint8_t* key_valid_ptr(const char* op, const at::Tensor& valid, const at::Tensor& qh, const at::Tensor& kh) {
  if (!valid.defined() || valid.numel() == 0) return nullptr;
  if (!valid.is_cuda() || valid.device() != qh.device() || !valid.is_contiguous() ||
      (valid.scalar_type() != at::kByte && valid.scalar_type() != at::kBool) || valid.dim() != 2 ||
      valid.size(0) != kh.size(0) || valid.size(1) != kh.size(2))
    fail(op, describe("valid", valid) + ": expected a contiguous uint8 or bool tensor [b, p_k] = [" +
                 std::to_string(kh.size(0)) + ", " + std::to_string(kh.size(2)) + "] on " + qh.device().str());
  return static_cast<const uint8_t*>(valid.data_ptr());
}

sl::cuda::QkvLayout kernel_layout(QkvLayout layout) {
  switch (layout) {
    case QkvLayout::PartMajor: return sl::cuda::QkvLayout::PartMajor;
    case QkvLayout::HeadMajor: return sl::cuda::QkvLayout::HeadMajor;
  }
  throw std::invalid_argument("unknown QKV layout " + std::to_string(static_cast<int>(layout)));
}

}  // namespace

std::string fused_attention_unsupported_reason(const at::Tensor& qh, const at::Tensor& kh, const at::Tensor& vh,
                                               const AttentionOptions& options) {
  // The CUDA kernel takes the window; soft-capped scores go to the composition until the kernel learns the cap.
  if (options.softcap > 0) return "soft-capped attention scores are not in the CUDA kernel";
  if (options.softmax_float32 && qh.scalar_type() == at::kDouble) return "a float32 softmax of float64 scores is the composition's";
  const auto input_error = [&](const char* name, const at::Tensor& t) -> std::string {
    if (!t.defined() || !t.is_cuda() || (qh.defined() && t.device() != qh.device()))
      return describe(name, t) + ": not a CUDA tensor on qh's device";
    if (!supported_dtype(t.scalar_type())) return describe(name, t) + ": no CUDA kernel for this dtype";
    return {};
  };
  if (auto why = input_error("qh", qh); !why.empty()) return why;
  if (auto why = input_error("kh", kh); !why.empty()) return why;
  if (auto why = input_error("vh", vh); !why.empty()) return why;
  if (auto why = attention_shape_error(qh, kh, vh); !why.empty()) return why;
  std::string why;
  dispatch(qh.scalar_type(), [&](auto type) {
    using T = typename decltype(type)::type;
    auto shape = attention_shape(qh, kh);
    shape.window = options.window;
    why = sl::cuda::attention_unsupported_reason<T>(shape, qh.get_device());
  });
  return why;
}

std::pair<at::Tensor, at::Tensor> fused_attention_forward(const at::Tensor& qh, const at::Tensor& kh,
                                                          const at::Tensor& vh, const at::Tensor& valid,
                                                          const AttentionOptions& options) {
  constexpr const char* op = "fused_attention_forward";
  check_attention_inputs(op, qh, kh, vh);
  const uint8_t* valid_ptr = key_valid_ptr(op, valid, qh, kh);
  const c10::cuda::CUDAGuard guard(qh.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
  auto out = at::empty(qh.sizes(), qh.options());
  auto lse = at::empty({qh.size(0), qh.size(1), qh.size(2)}, qh.options().dtype(accum_dtype(qh.scalar_type())));
  dispatch(qh.scalar_type(), [&](auto type) {
    using T = typename decltype(type)::type;
    auto shape = attention_shape(qh, kh);
    shape.window = options.window;
    sl::cuda::attention_forward<T>(shape, ptr<T>(qh), ptr<T>(kh), ptr<T>(vh), valid_ptr, options.scale,
                                   mut_ptr<T>(out), mut_ptr<sl::cuda::accum_t<T>>(lse), stream);
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_attention_backward(const at::Tensor& qh, const at::Tensor& kh,
                                                                        const at::Tensor& vh, const at::Tensor& valid,
                                                                        const at::Tensor& out, const at::Tensor& lse,
                                                                        const at::Tensor& dout,
                                                                        const AttentionOptions& options) {
  constexpr const char* op = "fused_attention_backward";
  check_attention_inputs(op, qh, kh, vh);
  const uint8_t* valid_ptr = key_valid_ptr(op, valid, qh, kh);
  require_like(op, "out", out, "qh", qh);
  require_like(op, "dout", dout, "qh", qh);
  if (!lse.defined() || !lse.is_cuda() || lse.device() != qh.device() || !lse.is_contiguous() ||
      lse.scalar_type() != accum_dtype(qh.scalar_type()) || lse.dim() != 3 || lse.size(0) != qh.size(0) ||
      lse.size(1) != qh.size(1) || lse.size(2) != qh.size(2))
    fail(op, describe("lse", lse) + ": expected the forward's contiguous lse [b, h, p_q] of dtype " +
                 c10::toString(accum_dtype(qh.scalar_type())) + " for " + describe("qh", qh));
  const c10::cuda::CUDAGuard guard(qh.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
  // The kernels write every element (zeros where nothing flows), so no zero fill is needed.
  auto dq = at::empty(qh.sizes(), qh.options());
  auto dk = at::empty(kh.sizes(), kh.options());
  auto dv = at::empty(vh.sizes(), vh.options());
  dispatch(qh.scalar_type(), [&](auto type) {
    using T = typename decltype(type)::type;
    auto shape = attention_shape(qh, kh);
    shape.window = options.window;
    sl::cuda::attention_backward<T>(shape, ptr<T>(qh), ptr<T>(kh), ptr<T>(vh), valid_ptr,
                                    ptr<T>(out), ptr<sl::cuda::accum_t<T>>(lse), ptr<T>(dout), options.scale, mut_ptr<T>(dq),
                                    mut_ptr<T>(dk), mut_ptr<T>(dv), stream);
  });
  return {dq, dk, dv};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> qkv_split_forward(QkvLayout layout, const at::Tensor& qkv,
                                                                 int64_t batch, int64_t pos, int64_t heads,
                                                                 int64_t d_head) {
  constexpr const char* op = "qkv_split_forward";
  require_cuda(op, "qkv", qkv);
  if (batch < 0 || pos < 0 || heads < 0 || d_head < 0 || qkv.dim() < 1 || qkv.size(-1) != 3 * heads * d_head ||
      qkv.numel() != batch * pos * 3 * heads * d_head)
    fail(op, describe("qkv", qkv) + ": expected [batch * pos, 3 * heads * d_head] with batch=" + std::to_string(batch) +
                 " pos=" + std::to_string(pos) + " heads=" + std::to_string(heads) +
                 " d_head=" + std::to_string(d_head));
  const c10::cuda::CUDAGuard guard(qkv.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
  auto q = at::empty({batch, heads, pos, d_head}, qkv.options());
  auto k = at::empty_like(q), v = at::empty_like(q);
  dispatch(qkv.scalar_type(), [&](auto type) {
    using T = typename decltype(type)::type;
    sl::cuda::qkv_split_forward<T>(kernel_layout(layout), sl::cuda::QkvShape{batch, pos, heads, d_head}, ptr<T>(qkv),
                                   mut_ptr<T>(q), mut_ptr<T>(k), mut_ptr<T>(v), stream);
  });
  return {q, k, v};
}

at::Tensor qkv_split_backward(QkvLayout layout, const at::Tensor& dq, const at::Tensor& dk, const at::Tensor& dv) {
  constexpr const char* op = "qkv_split_backward";
  require_cuda(op, "dq", dq);
  if (dq.dim() != 4) fail(op, describe("dq", dq) + ": expected [batch, heads, pos, d_head]");
  require_like(op, "dk", dk, "dq", dq);
  require_like(op, "dv", dv, "dq", dq);
  const int64_t batch = dq.size(0), heads = dq.size(1), pos = dq.size(2), d_head = dq.size(3);
  const c10::cuda::CUDAGuard guard(dq.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
  auto dqkv = at::empty({batch * pos, 3 * heads * d_head}, dq.options());
  dispatch(dq.scalar_type(), [&](auto type) {
    using T = typename decltype(type)::type;
    sl::cuda::qkv_split_backward<T>(kernel_layout(layout), sl::cuda::QkvShape{batch, pos, heads, d_head}, ptr<T>(dq),
                                    ptr<T>(dk), ptr<T>(dv), mut_ptr<T>(dqkv), stream);
  });
  return dqkv;
}

bool rotary_table_supported(const at::Tensor& x, const at::Tensor& table) {
  if (!x.defined() || !table.defined() || !x.is_cuda() || !table.is_cuda() || table.device() != x.device() ||
      x.dim() != 4 || x.layout() != at::kStrided || !supported_dtype(x.scalar_type()) || !table.is_floating_point())
    return false;
  return true;
}

at::Tensor rotary_table_forward(const at::Tensor& x, const at::Tensor& table, bool inverse) {
  constexpr const char* op = "rotary_table_forward";
  if (!rotary_table_supported(x, table))
    fail(op, describe("x", x) + ", " + describe("table", table) +
                 ": expected a 4-D CUDA x of float32, float64, float16 or bfloat16 and a table on its device");
  require_cuda(op, "table", table, x.device());
  if (table.scalar_type() != x.scalar_type() || table.dim() != 3 || table.size(1) != 2)
    fail(op, describe("table", table) + ": expected [rows, 2, half] in the dtype of " + describe("x", x));
  sl::cuda::RotaryShape shape;
  shape.batch = x.size(0);
  shape.pos = x.size(1);
  shape.heads = x.size(2);
  shape.head_dim = x.size(3);
  shape.half = table.size(2);
  shape.table_rows = table.size(0);
  for (int64_t d = 0; d < 4; ++d) shape.stride[d] = x.stride(d);  // rotary_forward checks the shape itself
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
  auto out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  dispatch(x.scalar_type(), [&](auto type) {
    using T = typename decltype(type)::type;
    sl::cuda::rotary_forward<T>(shape, ptr<T>(x), ptr<T>(table), inverse, mut_ptr<T>(out), stream);
  });
  return out;
}

bool kernel_dtype_supported(const at::Tensor& t) { return t.defined() && t.is_cuda() && supported_dtype(t.scalar_type()); }

namespace {

// rows x d of a [..., d] tensor whose scale-like partner is [..., 1].
sl::cuda::RowsShape rows_of(const char* op, const at::Tensor& t, const char* name) {
  if (t.dim() < 1 || t.size(-1) < 1) fail(op, describe(name, t) + ": expected a non-empty last dimension");
  return sl::cuda::RowsShape{t.numel() / t.size(-1), t.size(-1)};
}

// [..., 1] for rows [..., d]: the shape of a per-row statistic (a scale, its gradient).
std::vector<int64_t> row_stat_sizes(const at::Tensor& rows_like) {
  auto sizes = rows_like.sizes().vec();
  sizes.back() = 1;
  return sizes;
}

void require_row_stat(const char* op, const char* name, const at::Tensor& stat, const at::Tensor& rows_like) {
  require_cuda(op, name, stat, rows_like.device());
  const auto expected = row_stat_sizes(rows_like);
  if (stat.sizes().vec() != expected || stat.scalar_type() != rows_like.scalar_type())
    fail(op, describe(name, stat) + ": expected " + c10::str(at::IntArrayRef(expected)) + " of the dtype of " +
                 c10::toString(rows_like.scalar_type()));
}

void require_vector(const char* op, const char* name, const at::Tensor& v, const at::Tensor& rows_like) {
  if (!v.defined()) return;
  require_cuda(op, name, v, rows_like.device());
  if (v.dim() != 1 || v.size(0) != rows_like.size(-1) || v.scalar_type() != rows_like.scalar_type())
    fail(op, describe(name, v) + ": expected [" + std::to_string(rows_like.size(-1)) + "] of the dtype of " +
                 c10::toString(rows_like.scalar_type()));
}

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? ptr<T>(t) : nullptr;
}

}  // namespace

std::pair<at::Tensor, at::Tensor> layer_norm_centre_scale_forward(const at::Tensor& x, double eps) {
  constexpr const char* op = "layer_norm_centre_scale_forward";
  require_cuda(op, "x", x);
  const auto shape = rows_of(op, x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  auto centred = at::empty_like(x);
  auto scale = at::empty(row_stat_sizes(x), x.options());
  dispatch(x.scalar_type(), [&](auto type) {
    using T = typename decltype(type)::type;
    sl::cuda::layer_norm_centre_scale<T>(shape, ptr<T>(x), eps, mut_ptr<T>(centred), mut_ptr<T>(scale),
                                         at::cuda::getCurrentCUDAStream().stream());
  });
  return {centred, scale};
}

at::Tensor rms_norm_scale_forward(const at::Tensor& x, double eps) {
  constexpr const char* op = "rms_norm_scale_forward";
  require_cuda(op, "x", x);
  const auto shape = rows_of(op, x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  auto scale = at::empty(row_stat_sizes(x), x.options());
  dispatch(x.scalar_type(), [&](auto type) {
    using T = typename decltype(type)::type;
    sl::cuda::rms_norm_scale<T>(shape, ptr<T>(x), eps, mut_ptr<T>(scale), at::cuda::getCurrentCUDAStream().stream());
  });
  return scale;
}

at::Tensor layer_norm_centre_scale_backward(const at::Tensor& centred, const at::Tensor& scale, const at::Tensor& gc,
                                            const at::Tensor& gs) {
  constexpr const char* op = "layer_norm_centre_scale_backward";
  require_cuda(op, "centred", centred);
  const auto shape = rows_of(op, centred, "centred");
  require_row_stat(op, "scale", scale, centred);
  if (gc.defined()) require_like(op, "gc", gc, "centred", centred);
  if (gs.defined()) require_row_stat(op, "gs", gs, centred);
  const c10::cuda::CUDAGuard guard(centred.device());
  auto dx = at::empty_like(centred);
  dispatch(centred.scalar_type(), [&](auto type) {
    using T = typename decltype(type)::type;
    sl::cuda::layer_norm_centre_scale_backward<T>(shape, ptr<T>(centred), ptr<T>(scale), ptr_or_null<T>(gc),
                                                  ptr_or_null<T>(gs), mut_ptr<T>(dx),
                                                  at::cuda::getCurrentCUDAStream().stream());
  });
  return dx;
}

at::Tensor layer_norm_apply_scale_forward(const at::Tensor& centred, const at::Tensor& scale, const at::Tensor& weight,
                                          const at::Tensor& bias) {
  constexpr const char* op = "layer_norm_apply_scale_forward";
  require_cuda(op, "centred", centred);
  const auto shape = rows_of(op, centred, "centred");
  require_row_stat(op, "scale", scale, centred);
  require_vector(op, "weight", weight, centred);
  require_vector(op, "bias", bias, centred);
  const c10::cuda::CUDAGuard guard(centred.device());
  auto y = at::empty_like(centred);
  dispatch(centred.scalar_type(), [&](auto type) {
    using T = typename decltype(type)::type;
    sl::cuda::layer_norm_apply_scale<T>(shape, ptr<T>(centred), ptr<T>(scale), ptr_or_null<T>(weight),
                                        ptr_or_null<T>(bias), mut_ptr<T>(y), at::cuda::getCurrentCUDAStream().stream());
  });
  return y;
}

std::pair<at::Tensor, at::Tensor> layer_norm_apply_scale_backward(const at::Tensor& gy, const at::Tensor& centred,
                                                                  const at::Tensor& scale, const at::Tensor& weight) {
  constexpr const char* op = "layer_norm_apply_scale_backward";
  require_cuda(op, "centred", centred);
  const auto shape = rows_of(op, centred, "centred");
  require_like(op, "gy", gy, "centred", centred);
  require_row_stat(op, "scale", scale, centred);
  require_vector(op, "weight", weight, centred);
  const c10::cuda::CUDAGuard guard(centred.device());
  auto gc = at::empty_like(centred);
  auto gs = at::empty_like(scale);
  dispatch(centred.scalar_type(), [&](auto type) {
    using T = typename decltype(type)::type;
    sl::cuda::layer_norm_apply_scale_backward<T>(shape, ptr<T>(gy), ptr<T>(centred), ptr<T>(scale),
                                                 ptr_or_null<T>(weight), mut_ptr<T>(gc), mut_ptr<T>(gs),
                                                 at::cuda::getCurrentCUDAStream().stream());
  });
  return {gc, gs};
}

}  // namespace sl::kernels::cuda
