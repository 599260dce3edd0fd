// Tensor math exports: elementwise, reductions, linear algebra and neural-network functions.
#include <ATen/ATen.h>

#include <cmath>

#include "common.h"
#include "kernels/linear.h"

using sl::get;
using sl::new_handle;

namespace {

at::Tensor unary(int32_t op, const at::Tensor& x) {
  switch (op) {
    case SL_UNARY_NEG: return x.neg();
    case SL_UNARY_ABS: return x.abs();
    case SL_UNARY_EXP: return x.exp();
    case SL_UNARY_LOG: return x.log();
    case SL_UNARY_SQRT: return x.sqrt();
    case SL_UNARY_RSQRT: return x.rsqrt();
    case SL_UNARY_TANH: return x.tanh();
    case SL_UNARY_SIGMOID: return x.sigmoid();
    case SL_UNARY_RELU: return x.relu();
    case SL_UNARY_GELU: return at::gelu(x, "none");
    case SL_UNARY_GELU_TANH: return at::gelu(x, "tanh");
    case SL_UNARY_SILU: return at::silu(x);
    case SL_UNARY_ISFINITE: return x.isfinite();
    case SL_UNARY_LOGICAL_NOT: return x.logical_not();
    case SL_UNARY_SIN: return x.sin();
    case SL_UNARY_COS: return x.cos();
    case SL_UNARY_RECIPROCAL: return x.reciprocal();
    case SL_UNARY_SIGN: return x.sign();
    case SL_UNARY_FLOOR: return x.floor();
    case SL_UNARY_CEIL: return x.ceil();
    case SL_UNARY_ROUND: return x.round();
    case SL_UNARY_ERF: return x.erf();
    case SL_UNARY_ISNAN: return x.is_meta() ? x.ne(x) : x.isnan();  // NaN alone differs from itself; meta has no isnan in 1.13
    case SL_UNARY_SQUARE: return x.square();
    case SL_UNARY_LOG1P: return x.log1p();
    default: throw sl::ArgumentError("unknown unary op " + std::to_string(op));
  }
}

at::Tensor binary(int32_t op, const at::Tensor& a, const at::Tensor& b) {
  switch (op) {
    case SL_BINARY_ADD: return a.add(b);
    case SL_BINARY_SUB: return a.sub(b);
    case SL_BINARY_MUL: return a.mul(b);
    case SL_BINARY_DIV: return a.div(b);
    case SL_BINARY_POW: return a.pow(b);
    case SL_BINARY_MAXIMUM: return at::maximum(a, b);
    case SL_BINARY_MINIMUM: return at::minimum(a, b);
    case SL_BINARY_EQ: return a.eq(b);
    case SL_BINARY_NE: return a.ne(b);
    case SL_BINARY_LT: return a.lt(b);
    case SL_BINARY_LE: return a.le(b);
    case SL_BINARY_GT: return a.gt(b);
    case SL_BINARY_GE: return a.ge(b);
    // libtorch 1.13 has no meta kernels for logical_and/or; min/max of the booleans are the same and have them.
    case SL_BINARY_LOGICAL_AND: return a.is_meta() ? at::minimum(a.ne(0), b.ne(0)) : a.logical_and(b);
    case SL_BINARY_LOGICAL_OR: return a.is_meta() ? at::maximum(a.ne(0), b.ne(0)) : a.logical_or(b);
    case SL_BINARY_MATMUL: return a.matmul(b);
    case SL_BINARY_BMM: return a.bmm(b);
    case SL_BINARY_REMAINDER: return a.remainder(b);
    case SL_BINARY_RSUB: return b.sub(a);
    case SL_BINARY_RDIV: return b.div(a);
    case SL_BINARY_RPOW: return b.pow(a);
    default: throw sl::ArgumentError("unknown binary op " + std::to_string(op));
  }
}

// A double that holds an integer becomes an integer Scalar for integer tensors, so int64 + 2 stays int64
// (as PyTorch's Python scalars do); anything else stays a floating Scalar.
at::Scalar scalar_for(const at::Tensor& a, double s) {
  if (!at::isFloatingType(a.scalar_type()) && std::isfinite(s) && std::floor(s) == s && std::fabs(s) < 9.2e18)
    return at::Scalar(static_cast<int64_t>(s));
  return at::Scalar(s);
}

at::Tensor binary_scalar(int32_t op, const at::Tensor& a, double s) {
  const at::Scalar v = scalar_for(a, s);
  switch (op) {
    case SL_BINARY_ADD: return a.add(v);
    case SL_BINARY_SUB: return a.sub(v);
    case SL_BINARY_MUL: return a.mul(v);
    case SL_BINARY_DIV: return a.div(v);
    case SL_BINARY_POW: return a.pow(v);
    case SL_BINARY_MAXIMUM: return a.clamp_min(v);
    case SL_BINARY_MINIMUM: return a.clamp_max(v);
    case SL_BINARY_EQ: return a.eq(v);
    case SL_BINARY_NE: return a.ne(v);
    case SL_BINARY_LT: return a.lt(v);
    case SL_BINARY_LE: return a.le(v);
    case SL_BINARY_GT: return a.gt(v);
    case SL_BINARY_GE: return a.ge(v);
    case SL_BINARY_REMAINDER: return a.remainder(v);
    case SL_BINARY_RSUB: return at::rsub(a, v);
    case SL_BINARY_RDIV: return a.reciprocal().mul(v);
    case SL_BINARY_RPOW: return at::pow(v, a);
    default: throw sl::ArgumentError("binary op " + std::to_string(op) + " has no scalar form");
  }
}

void binary_inplace(int32_t op, at::Tensor& a, const at::Tensor& b) {
  switch (op) {
    case SL_BINARY_ADD: a.add_(b); return;
    case SL_BINARY_SUB: a.sub_(b); return;
    case SL_BINARY_MUL: a.mul_(b); return;
    case SL_BINARY_DIV: a.div_(b); return;
    case SL_BINARY_POW: a.pow_(b); return;
    default: throw sl::ArgumentError("binary op " + std::to_string(op) + " has no in-place form");
  }
}

void binary_scalar_inplace(int32_t op, at::Tensor& a, double s) {
  const at::Scalar v = scalar_for(a, s);
  switch (op) {
    case SL_BINARY_ADD: a.add_(v); return;
    case SL_BINARY_SUB: a.sub_(v); return;
    case SL_BINARY_MUL: a.mul_(v); return;
    case SL_BINARY_DIV: a.div_(v); return;
    case SL_BINARY_POW: a.pow_(v); return;
    default: throw sl::ArgumentError("binary op " + std::to_string(op) + " has no in-place scalar form");
  }
}

at::Tensor reduce(int32_t op, const at::Tensor& x, at::IntArrayRef dims, bool keepdim) {
  const bool all = dims.empty();
  switch (op) {
    case SL_REDUCE_SUM: return all && !keepdim ? x.sum() : x.sum(dims, keepdim);
    case SL_REDUCE_MEAN: return all && !keepdim ? x.mean() : x.mean(dims, keepdim);
    case SL_REDUCE_AMAX: return x.amax(dims, keepdim);
    case SL_REDUCE_AMIN: return x.amin(dims, keepdim);
    case SL_REDUCE_LOGSUMEXP: {
      if (!all) return x.logsumexp(dims, keepdim);
      std::vector<int64_t> every(static_cast<size_t>(x.dim()));
      for (int64_t i = 0; i < x.dim(); ++i) every[static_cast<size_t>(i)] = i;
      return x.logsumexp(every, keepdim);
    }
    case SL_REDUCE_PROD:
    case SL_REDUCE_ANY:
    case SL_REDUCE_ALL: {
      // These reduce one dimension at a time in libtorch; fold the requested ones from the last.
      at::Tensor r = x;
      if (all) {
        if (op == SL_REDUCE_PROD) r = x.prod();
        else if (op == SL_REDUCE_ANY) r = x.any();
        else r = x.all();
        if (keepdim) {
          std::vector<int64_t> ones(static_cast<size_t>(x.dim()), 1);
          r = r.reshape(ones);
        }
        return r;
      }
      std::vector<int64_t> sorted;
      for (auto d : dims) sorted.push_back(c10::maybe_wrap_dim(d, x.dim()));
      std::sort(sorted.rbegin(), sorted.rend());
      for (auto d : sorted) {
        if (op == SL_REDUCE_PROD) r = r.prod(d, keepdim);
        else if (op == SL_REDUCE_ANY) r = r.any(d, keepdim);
        else r = r.all(d, keepdim);
      }
      return r;
    }
    default: throw sl::ArgumentError("unknown reduction " + std::to_string(op));
  }
}

c10::optional<at::ScalarType> optional_dtype(int32_t code) {
  if (code < 0) return c10::nullopt;
  return sl::to_dtype(code);
}

void publish_pair(std::tuple<at::Tensor, at::Tensor> pair, sl_tensor* first, sl_tensor* second) {
  sl::require(first, "first output");
  sl::require(second, "second output");
  auto a = new_handle(std::get<0>(std::move(pair)));
  *first = a;
  *second = new_handle(std::get<1>(std::move(pair)));
}

}  // namespace

extern "C" {

sl_status sl_tensor_unary(int32_t op, sl_tensor t, sl_tensor* out) {
  SL_TRY
  SL_OUT(out) = new_handle(unary(op, get(t)));
  SL_CATCH
}

sl_status sl_tensor_binary(int32_t op, sl_tensor a, sl_tensor b, sl_tensor* out) {
  SL_TRY
  SL_OUT(out) = new_handle(binary(op, get(a, "a"), get(b, "b")));
  SL_CATCH
}

sl_status sl_tensor_binary_scalar(int32_t op, sl_tensor a, double scalar, sl_tensor* out) {
  SL_TRY
  SL_OUT(out) = new_handle(binary_scalar(op, get(a), scalar));
  SL_CATCH
}

sl_status sl_tensor_binary_(int32_t op, sl_tensor a, sl_tensor b) {
  SL_TRY
  binary_inplace(op, get(a, "a"), get(b, "b"));
  SL_CATCH
}

sl_status sl_tensor_binary_scalar_(int32_t op, sl_tensor a, double scalar) {
  SL_TRY
  binary_scalar_inplace(op, get(a), scalar);
  SL_CATCH
}

sl_status sl_tensor_clamp(sl_tensor t, int32_t has_min, double min, int32_t has_max, double max, sl_tensor* out) {
  SL_TRY
  c10::optional<at::Scalar> lo, hi;
  if (has_min) lo = min;
  if (has_max) hi = max;
  SL_OUT(out) = new_handle(get(t).clamp(lo, hi));
  SL_CATCH
}

sl_status sl_tensor_copy_(sl_tensor dst, sl_tensor src) {
  SL_TRY
  get(dst, "dst").copy_(get(src, "src"));
  SL_CATCH
}

sl_status sl_tensor_fill_(sl_tensor t, double value) {
  SL_TRY
  get(t).fill_(value);
  SL_CATCH
}

sl_status sl_tensor_reduce(int32_t op, sl_tensor t, const int64_t* dims, int32_t ndims, int32_t keepdim,
                           sl_tensor* out) {
  SL_TRY
  SL_OUT(out) = new_handle(reduce(op, get(t), sl::dims_of(dims, ndims, "dims"), keepdim != 0));
  SL_CATCH
}

sl_status sl_tensor_minmax_dim(int32_t is_max, sl_tensor t, int64_t dim, int32_t keepdim, sl_tensor* values,
                               sl_tensor* indices) {
  SL_TRY
  publish_pair(is_max ? get(t).max(dim, keepdim != 0) : get(t).min(dim, keepdim != 0), values, indices);
  SL_CATCH
}

sl_status sl_tensor_argminmax(int32_t is_max, sl_tensor t, int32_t has_dim, int64_t dim, int32_t keepdim,
                              sl_tensor* out) {
  SL_TRY
  c10::optional<int64_t> d;
  if (has_dim) d = dim;
  SL_OUT(out) = new_handle(is_max ? get(t).argmax(d, keepdim != 0) : get(t).argmin(d, keepdim != 0));
  SL_CATCH
}

sl_status sl_tensor_var_std(int32_t is_std, sl_tensor t, const int64_t* dims, int32_t ndims, int64_t correction,
                            int32_t keepdim, sl_tensor* out) {
  SL_TRY
  at::OptionalIntArrayRef d = ndims == 0 ? at::OptionalIntArrayRef() : sl::dims_of(dims, ndims, "dims");
  c10::optional<int64_t> corr = correction;
  SL_OUT(out) = new_handle(is_std ? at::std(get(t), d, corr, keepdim != 0) : at::var(get(t), d, corr, keepdim != 0));
  SL_CATCH
}

sl_status sl_tensor_norm(sl_tensor t, double p, const int64_t* dims, int32_t ndims, int32_t keepdim, sl_tensor* out) {
  SL_TRY
  at::OptionalIntArrayRef d = ndims == 0 ? at::OptionalIntArrayRef() : sl::dims_of(dims, ndims, "dims");
  SL_OUT(out) = new_handle(at::linalg_vector_norm(get(t), p, d, keepdim != 0, c10::nullopt));
  SL_CATCH
}

sl_status sl_tensor_einsum(const char* equation, const sl_tensor* tensors, int32_t count, sl_tensor* out) {
  SL_TRY
  SL_OUT(out) = new_handle(at::einsum(sl::require(equation, "equation"), sl::tensor_list(tensors, count, "tensors")));
  SL_CATCH
}

sl_status sl_tensor_svd(sl_tensor t, int32_t full_matrices, sl_tensor* u, sl_tensor* s, sl_tensor* vh) {
  SL_TRY
  sl::require(u, "u");
  sl::require(s, "s");
  sl::require(vh, "vh");
  auto r = at::linalg_svd(get(t), full_matrices != 0);
  auto hu = new_handle(std::get<0>(r));
  auto hs = new_handle(std::get<1>(r));
  *u = hu;
  *s = hs;
  *vh = new_handle(std::get<2>(r));
  SL_CATCH
}

sl_status sl_tensor_topk(sl_tensor t, int64_t k, int64_t dim, int32_t largest, int32_t sorted, sl_tensor* values,
                         sl_tensor* indices) {
  SL_TRY
  publish_pair(get(t).topk(k, dim, largest != 0, sorted != 0), values, indices);
  SL_CATCH
}

sl_status sl_tensor_sort(sl_tensor t, int64_t dim, int32_t descending, int32_t stable, sl_tensor* values,
                         sl_tensor* indices) {
  SL_TRY
  publish_pair(get(t).sort(c10::optional<bool>(stable != 0), dim, descending != 0), values, indices);
  SL_CATCH
}

sl_status sl_tensor_allclose(sl_tensor a, sl_tensor b, double rtol, double atol, int32_t equal_nan, int32_t* out) {
  SL_TRY
  SL_OUT(out) = get(a, "a").allclose(get(b, "b"), rtol, atol, equal_nan != 0) ? 1 : 0;
  SL_CATCH
}

sl_status sl_tensor_equal(sl_tensor a, sl_tensor b, int32_t* out) {
  SL_TRY
  SL_OUT(out) = get(a, "a").equal(get(b, "b")) ? 1 : 0;
  SL_CATCH
}

sl_status sl_tensor_cumsum(sl_tensor t, int64_t dim, sl_tensor* out) {
  SL_TRY
  SL_OUT(out) = new_handle(get(t).cumsum(dim));
  SL_CATCH
}

sl_status sl_tensor_softmax(sl_tensor t, int64_t dim, int32_t dtype, sl_tensor* out) {
  SL_TRY
  SL_OUT(out) = new_handle(get(t).softmax(dim, optional_dtype(dtype)));
  SL_CATCH
}

sl_status sl_tensor_log_softmax(sl_tensor t, int64_t dim, int32_t dtype, sl_tensor* out) {
  SL_TRY
  SL_OUT(out) = new_handle(get(t).log_softmax(dim, optional_dtype(dtype)));
  SL_CATCH
}

sl_status sl_tensor_layer_norm(sl_tensor t, const int64_t* normalized_shape, int32_t ndim, sl_tensor weight,
                               sl_tensor bias, double eps, sl_tensor* out) {
  SL_TRY
  SL_OUT(out) = new_handle(at::layer_norm(get(t), sl::dims_of(normalized_shape, ndim, "normalized_shape"),
                                          sl::get_optional(weight), sl::get_optional(bias), eps));
  SL_CATCH
}

sl_status sl_tensor_linear(sl_tensor x, sl_tensor weight, sl_tensor bias, int32_t layout, sl_tensor* out) {
  SL_TRY
  auto b = sl::get_optional(bias);
  SL_OUT(out) = new_handle(sl::kernels::linear(get(x, "x"), get(weight, "weight"), b ? *b : at::Tensor(), layout));
  SL_CATCH
}

sl_status sl_tensor_cross_entropy(sl_tensor logits, sl_tensor target, sl_tensor weight, int32_t reduction,
                                  int64_t ignore_index, double label_smoothing, sl_tensor* out) {
  SL_TRY
  if (reduction < 0 || reduction > 2) throw sl::ArgumentError("reduction must be 0 (none), 1 (mean) or 2 (sum)");
  SL_OUT(out) = new_handle(at::cross_entropy_loss(get(logits, "logits"), get(target, "target"),
                                                  sl::get_optional(weight), reduction, ignore_index, label_smoothing));
  SL_CATCH
}

}  // extern "C"
