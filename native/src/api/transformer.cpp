// Transformer operations: QKV splitting from fused HF layouts, the attention core in stages (scores,
// pattern, apply) or in one call, and rotary embeddings. Each export is one native call, built from
// ATen ops (which libtorch's autograd differentiates) or from the CPU kernels in kernels/ (autograd ops
// with their own backward) where those apply; gradients of the q/k/v projections flow into the one
// fused weight either way.
#include <ATen/ATen.h>

#include <cmath>
#include <limits>
#include <utility>

#include "common.h"
#include "kernels/attention.h"
#include "kernels/attention_materialised.h"
#include "kernels/attention_rule.h"
#include "kernels/layer_norm.h"
#include "kernels/qkv.h"
#include "kernels/rotary.h"

using sl::get;
using sl::new_handle;
using sl::kernels::AttentionOptions;

namespace {

void check_rank(const at::Tensor& t, int64_t rank, const char* name, const char* layout) {
  if (t.dim() != rank)
    throw sl::ArgumentError(std::string(name) + " must have shape " + layout + ", got " + c10::str(t.sizes()));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> qkv_split(int32_t layout, const at::Tensor& x, const at::Tensor& w,
                                                         const c10::optional<at::Tensor>& b, int64_t n_heads) {
  check_rank(x, 3, "x", "[batch, pos, d_model]");
  check_rank(w, 2, "qkv weight", "[rows, cols]");
  if (n_heads <= 0) throw sl::ArgumentError("n_heads must be positive");
  const int64_t batch = x.size(0), pos = x.size(1), d_model = x.size(2);
  if (layout == SL_QKV_PART_MAJOR_IN_OUT) {
    if (w.size(0) != d_model || w.size(1) % (3 * n_heads) != 0)
      throw sl::ArgumentError("part-major in-out QKV weight must be [d_model, 3 * n_heads * d_head] with d_model " +
                              std::to_string(d_model) + ", got " + c10::str(w.sizes()));
    const int64_t d_head = w.size(1) / (3 * n_heads);
    auto qkv = b ? at::addmm(*b, x.reshape({batch * pos, d_model}), w) : x.reshape({batch * pos, d_model}).mm(w);
    return sl::kernels::qkv_split_heads(0, qkv, batch, pos, n_heads, d_head);
  }
  if (layout == SL_QKV_HEAD_MAJOR_OUT_IN) {
    if (w.size(1) != d_model || w.size(0) % (3 * n_heads) != 0)
      throw sl::ArgumentError("head-major out-in QKV weight must be [n_heads * 3 * d_head, d_model] with d_model " +
                              std::to_string(d_model) + ", got " + c10::str(w.sizes()));
    const int64_t d_head = w.size(0) / (3 * n_heads);
    auto flat = x.reshape({batch * pos, d_model});
    auto qkv = b ? at::addmm(*b, flat, w.t()) : flat.mm(w.t());
    return sl::kernels::qkv_split_heads(1, qkv, batch, pos, n_heads, d_head);
  }
  throw sl::ArgumentError("unknown QKV layout " + std::to_string(layout));
}

// Grouped-query attention in the composed path: each key/value head serves h_q / h_kv query heads.
at::Tensor expand_kv_heads(const at::Tensor& kv, int64_t query_heads) {
  const int64_t kv_heads = kv.size(2);
  if (kv_heads == query_heads) return kv;
  if (kv_heads <= 0 || query_heads % kv_heads != 0)
    throw sl::ArgumentError("query heads (" + std::to_string(query_heads) + ") must be a multiple of key/value heads (" +
                            std::to_string(kv_heads) + ")");
  // repeat_interleave over heads as expand + reshape (one copy, and a kernel on every device, meta included).
  const int64_t group = query_heads / kv_heads;
  return kv.unsqueeze(3).expand({kv.size(0), kv.size(1), kv_heads, group, kv.size(3)}).reshape({kv.size(0), kv.size(1), query_heads, kv.size(3)});
}

// [p_q, p_k] bool on `device`, true where the rule of kernels/attention_rule.h hides key j from query i (j > i + offset,
// or j <= i + offset - window with a window), built with tensor ops on the device itself: no host loop, no copy to a
// GPU per layer, and only shapes on meta. AttentionContractTests hold this and every kernel to the rule as C# states it.
at::Tensor hidden_keys(int64_t pq, int64_t pk, int64_t window, const at::Device& device) {
  const auto ids = at::TensorOptions().dtype(at::kLong).device(device);
  const auto query_at = at::arange(pq, ids).unsqueeze(1).add(pk - pq);  // key position of query row i
  const auto key = at::arange(pk, ids).unsqueeze(0);
  auto hidden = key.gt(query_at);
  if (window > 0) hidden = at::maximum(hidden, key.le(query_at.sub(window)));  // or of booleans (meta-safe, as below)
  return hidden;
}

// The validated options of the C ABI.
AttentionOptions options_of(const sl_attention_options* options) {
  if (options == nullptr) throw sl::ArgumentError("attention options must not be NULL");
  if (!std::isfinite(options->scale))
    throw sl::ArgumentError("attention scale must be finite, got " + std::to_string(options->scale));
  if (!(options->softcap >= 0) || !std::isfinite(options->softcap))
    throw sl::ArgumentError("attention softcap must be finite and >= 0 (0 = none), got " + std::to_string(options->softcap));
  if (options->window < 0)
    throw sl::ArgumentError("attention window must be >= 0 (0 = none), got " + std::to_string(options->window));
  if ((options->flags & ~int64_t{SL_ATTENTION_SOFTMAX_FLOAT32}) != 0)
    throw sl::ArgumentError("unknown attention flags " + std::to_string(options->flags));
  return AttentionOptions{options->scale, options->softcap, options->window,
                          (options->flags & SL_ATTENTION_SOFTMAX_FLOAT32) != 0};
}

// The composition of the staged attention; its callers have validated ranks and the key mask.
at::Tensor composed_scores(const at::Tensor& q, const at::Tensor& k_in, const c10::optional<at::Tensor>& key_mask,
                           const AttentionOptions& options) {
  const auto k = expand_kv_heads(k_in, q.size(2));
  const int64_t pq = q.size(1), pk = k.size(1);
  auto scores = at::matmul(q.permute({0, 2, 1, 3}), k.permute({0, 2, 3, 1})).mul(options.scale);  // [b, h, q, k]
  if (options.softcap > 0) scores = scores.div(options.softcap).tanh().mul(options.softcap);
  auto mask = hidden_keys(pq, pk, options.window, q.device()).view({1, 1, pq, pk});
  if (key_mask) {
    auto padded = key_mask->to(q.device()).eq(0).view({q.size(0), 1, 1, pk});
    mask = at::maximum(mask, padded);  // or of booleans (logical_or has no meta kernel in libtorch 1.13)
  }
  return scores.masked_fill(mask, -std::numeric_limits<double>::infinity());
}

at::Tensor composed_pattern(const at::Tensor& scores, bool softmax_float32) {
  const auto compute = at::isFloatingType(scores.scalar_type()) && (c10::elementSize(scores.scalar_type()) < 4 || softmax_float32)
                           ? at::kFloat
                           : scores.scalar_type();
  auto pattern = scores.softmax(-1, compute);
  // A row whose keys are all masked (a padding query) softmaxes to NaN; TransformerLens sets it to 0.
  // (NaN is the one value unequal to itself: ne works on every device, isnan has no meta kernel in libtorch 1.13.)
  pattern = pattern.masked_fill(pattern.ne(pattern), 0);
  return pattern.to(scores.scalar_type());
}

at::Tensor composed_apply(const at::Tensor& pattern, const at::Tensor& v_in) {
  check_rank(pattern, 4, "pattern", "[batch, head, q_pos, k_pos]");
  check_rank(v_in, 4, "v", "[batch, pos, head, d_head]");
  const auto v = expand_kv_heads(v_in, pattern.size(1));
  auto z = at::matmul(pattern.to(v.scalar_type()), v.permute({0, 2, 1, 3}));  // [b, h, q, d]
  return z.permute({0, 2, 1, 3});
}

void check_key_mask(const c10::optional<at::Tensor>& key_mask, const at::Tensor& q, const at::Tensor& k) {
  if (key_mask && (key_mask->dim() != 2 || key_mask->size(0) != q.size(0) || key_mask->size(1) != k.size(1)))
    throw sl::ArgumentError("key mask must be [batch, key_pos] = [" + std::to_string(q.size(0)) + ", " +
                            std::to_string(k.size(1)) + "], got " + c10::str(key_mask->sizes()));
}

// The staged attention for hooks on scores or pattern: the materialising kernels where they apply (float32/float64
// CPU), the composition otherwise (half precision, CUDA without its kernels).
at::Tensor attention_scores(const at::Tensor& q, const at::Tensor& k, const c10::optional<at::Tensor>& key_mask,
                            const AttentionOptions& options) {
  check_rank(q, 4, "q", "[batch, pos, head, d_head]");
  check_rank(k, 4, "k", "[batch, pos, head, d_head]");
  check_key_mask(key_mask, q, k);
  if (sl::kernels::materialised_attention_supported(q, k, at::Tensor(), options))
    return sl::kernels::causal_scores(q, k, key_mask ? *key_mask : at::Tensor(), options.scale);
  return composed_scores(q, k, key_mask, options);
}

at::Tensor attention_pattern(const at::Tensor& scores, bool softmax_float32) {
  check_rank(scores, 4, "scores", "[batch, head, q_pos, k_pos]");
  // The kernel's softmax runs in the scores' dtype: a float32 softmax of float64 scores is the composition's.
  if (sl::kernels::materialised_pattern_supported(scores) && !(softmax_float32 && scores.scalar_type() == at::kDouble))
    return sl::kernels::pattern_from_scores(scores);
  return composed_pattern(scores, softmax_float32);
}

at::Tensor attention_causal_pattern(const at::Tensor& q, const at::Tensor& k, const c10::optional<at::Tensor>& key_mask,
                                    const AttentionOptions& options) {
  check_rank(q, 4, "q", "[batch, pos, head, d_head]");
  check_rank(k, 4, "k", "[batch, pos, head, d_head]");
  check_key_mask(key_mask, q, k);
  if (sl::kernels::materialised_attention_supported(q, k, at::Tensor(), options))
    return sl::kernels::causal_pattern(q, k, key_mask ? *key_mask : at::Tensor(), options.scale);
  return composed_pattern(composed_scores(q, k, key_mask, options), options.softmax_float32);
}

at::Tensor attention_apply(const at::Tensor& pattern, const at::Tensor& v, bool causal) {
  check_rank(pattern, 4, "pattern", "[batch, head, q_pos, k_pos]");
  check_rank(v, 4, "v", "[batch, pos, head, d_head]");
  if (pattern.size(0) != v.size(0) || pattern.size(3) != v.size(1))
    throw sl::ArgumentError("pattern [batch, head, q_pos, k_pos] " + c10::str(pattern.sizes()) +
                            " does not match v [batch, k_pos, head, d_head] " + c10::str(v.sizes()));
  if (sl::kernels::materialised_apply_supported(pattern, v)) return sl::kernels::apply_pattern(pattern, v, causal);
  if (!causal) return composed_apply(pattern, v);
  // The contract of the causal form: entries above the diagonal do not count, whatever they hold.
  const int64_t pq = pattern.size(2), pk = pattern.size(3);
  return composed_apply(pattern.masked_fill(hidden_keys(pq, pk, 0, pattern.device()), 0), v);
}

at::Tensor attention(int32_t implementation, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const c10::optional<at::Tensor>& key_mask, const AttentionOptions& options) {
  check_rank(q, 4, "q", "[batch, pos, head, d_head]");
  check_rank(k, 4, "k", "[batch, pos, head, d_head]");
  check_rank(v, 4, "v", "[batch, pos, head, d_head]");
  check_key_mask(key_mask, q, k);
  const bool fusable = sl::kernels::fused_attention_supported(q, k, v, options);
  if (implementation == SL_ATTENTION_FUSED && !fusable)
    throw sl::ArgumentError("the fused attention kernel needs float32 or float64 CPU tensors q [b, p_q, h, d] and k, v "
                            "[b, p_k >= p_q, h_kv, d] with h divisible by h_kv; got q " + c10::str(q.sizes()) + " " +
                            std::string(c10::toString(q.scalar_type())) + ", k " + c10::str(k.sizes()));
  if (implementation < SL_ATTENTION_AUTO || implementation > SL_ATTENTION_COMPOSED)
    throw sl::ArgumentError("unknown attention implementation " + std::to_string(implementation));
  if (fusable && implementation != SL_ATTENTION_COMPOSED)
    return sl::kernels::fused_attention(q, k, v, key_mask ? *key_mask : at::Tensor(), options);
  return composed_apply(composed_pattern(composed_scores(q, k, key_mask, options), options.softmax_float32), v);
}

at::Tensor rotate_half(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({x.narrow(-1, half, half).neg(), x.narrow(-1, 0, half)}, -1);
}

// x's first cos.size(-1) features rotated by (cos, sin) (each [.., rot], broadcast over x's heads), the rest passed on.
at::Tensor rotate_with(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t rot = cos.size(-1);
  const auto r = x.narrow(3, 0, rot);
  auto rotated = r * cos + rotate_half(r) * sin;
  if (rot == x.size(3)) return rotated;
  return at::cat({rotated, x.narrow(3, rot, x.size(3) - rot)}, 3);
}

// The ATen composition: the path for dtypes and devices the kernel does not take (half precision, CUDA), and the
// baseline that SL_ROTARY_COMPOSED selects for tests and benchmarks. Callers have run sl::kernels::check_rotary_args.
at::Tensor composed_rotary(const at::Tensor& x, const at::Tensor& positions, int64_t rotary_dim, double base) {
  // Frequencies in float64 then cast, so float32 and float64 runs share the same angles up to rounding.
  auto inv_freq = at::pow(base, at::arange(0, rotary_dim, 2, x.options().dtype(at::kDouble)) / rotary_dim).reciprocal();
  auto angles = positions.to(at::kDouble).unsqueeze(-1) * inv_freq;  // [b, p, rot/2]
  auto emb = at::cat({angles, angles}, -1).unsqueeze(2);                // [b, p, 1, rot]
  return rotate_with(x, emb.cos().to(x.scalar_type()), emb.sin().to(x.scalar_type()));
}

void check_rotary_implementation(int32_t implementation) {
  if (implementation < SL_ROTARY_AUTO || implementation > SL_ROTARY_COMPOSED)
    throw sl::ArgumentError("unknown rotary implementation " + std::to_string(implementation));
}

// The kernel for float32/float64 CPU tensors (one pass over x, read through its strides), the composition otherwise
// or when asked for.
at::Tensor rotary(int32_t implementation, const at::Tensor& x, const at::Tensor& positions, int64_t rotary_dim,
                  double base) {
  sl::kernels::check_rotary_args(x, "x", positions, rotary_dim);
  check_rotary_implementation(implementation);
  const bool kernel = sl::kernels::rotary_supported(x, positions);
  if (implementation == SL_ROTARY_FUSED && !kernel)
    throw sl::ArgumentError("the rotary kernel needs a float32 or float64 CPU tensor x and CPU positions; got x " +
                            std::string(c10::toString(x.scalar_type())) + " on " + x.device().str() + ", positions on " +
                            positions.device().str());
  if (kernel && implementation != SL_ROTARY_COMPOSED) return sl::kernels::rotary(x, positions, rotary_dim, base);
  return composed_rotary(x, positions, rotary_dim, base);
}

// x rotated by a caller's cos/sin table [rows, 2, half] (see kernels/rotary.h): the kernel where it applies, else
// the ATen composition from the same table.
at::Tensor composed_rotary_table(const at::Tensor& x, const at::Tensor& table) {
  const int64_t nb = x.size(0), np = x.size(1), half = table.size(2);
  // A constant, as on the kernel path (which saves only the table): no gradient flows into it.
  const auto t = table.detach().to(x.device(), x.scalar_type()).reshape({table.size(0) == np ? 1 : nb, np, 1, 2, half});
  const auto cos = t.select(3, 0), sin = t.select(3, 1);
  return rotate_with(x, at::cat({cos, cos}, -1), at::cat({sin, sin}, -1));
}

at::Tensor rotary_table(int32_t implementation, const at::Tensor& x, const at::Tensor& table) {
  sl::kernels::check_rotary_table(x, "x", table);
  check_rotary_implementation(implementation);
  const bool kernel = sl::kernels::rotary_table_supported(x, table);
  if (implementation == SL_ROTARY_FUSED && !kernel)
    throw sl::ArgumentError("the rotary kernel needs a float32 or float64 CPU tensor x and a CPU table (in a CUDA build "
                            "also a float32/float64/float16/bfloat16 CUDA x and a table on its device); got x " +
                            std::string(c10::toString(x.scalar_type())) + " on " + x.device().str() + ", table on " +
                            table.device().str());
  if (kernel && implementation != SL_ROTARY_COMPOSED) return sl::kernels::rotary_with_table(x, table);
  return composed_rotary_table(x, table);
}

// q and k at the same positions: one cos/sin table for both when the kernel takes them (same dtype, CPU).
std::pair<at::Tensor, at::Tensor> rotary_qk(const at::Tensor& q, const at::Tensor& k, const at::Tensor& positions,
                                            int64_t rotary_dim, double base) {
  sl::kernels::check_rotary_args(q, "q", positions, rotary_dim);
  sl::kernels::check_rotary_args(k, "k", positions, rotary_dim);
  if (q.scalar_type() == k.scalar_type() && sl::kernels::rotary_supported(q, positions) &&
      sl::kernels::rotary_supported(k, positions))
    return sl::kernels::rotary_qk(q, k, positions, rotary_dim, base);
  return {rotary(SL_ROTARY_AUTO, q, positions, rotary_dim, base), rotary(SL_ROTARY_AUTO, k, positions, rotary_dim, base)};
}

}  // namespace

extern "C" {

sl_status sl_qkv_split(int32_t layout, sl_tensor x, sl_tensor weight, sl_tensor bias, int64_t n_heads, sl_tensor* q,
                       sl_tensor* k, sl_tensor* v) {
  SL_TRY
  sl::require(q, "q");
  sl::require(k, "k");
  sl::require(v, "v");
  auto r = qkv_split(layout, get(x, "x"), get(weight, "weight"), sl::get_optional(bias), n_heads);
  auto hq = new_handle(std::get<0>(r));
  auto hk = new_handle(std::get<1>(r));
  *q = hq;
  *k = hk;
  *v = new_handle(std::get<2>(r));
  SL_CATCH
}

sl_status sl_qkv_project(int32_t layout, sl_tensor xq, sl_tensor xk, sl_tensor xv, sl_tensor weight, sl_tensor bias,
                         int64_t n_heads, sl_tensor* q, sl_tensor* k, sl_tensor* v) {
  SL_TRY
  sl::require(q, "q");
  sl::require(k, "k");
  sl::require(v, "v");
  const auto &a = get(xq, "xq"), &b = get(xk, "xk"), &c = get(xv, "xv"), &w = get(weight, "weight");
  const auto bb = sl::get_optional(bias);
  if (layout != SL_QKV_PART_MAJOR_IN_OUT && layout != SL_QKV_HEAD_MAJOR_OUT_IN)
    throw sl::ArgumentError("unknown QKV layout " + std::to_string(layout));
  for (const auto* t : {&a, &b, &c}) check_rank(*t, 3, "x", "[batch, pos, d_model]");
  check_rank(w, 2, "qkv weight", "[rows, cols]");
  if (n_heads <= 0) throw sl::ArgumentError("n_heads must be positive");
  // The kernel's shape errors (std::invalid_argument) reach the caller as argument errors through SL_CATCH.
  const auto r = sl::kernels::qkv_project(layout, a, b, c, w, bb.value_or(at::Tensor()), n_heads);
  auto hq = new_handle(std::get<0>(r));
  auto hk = new_handle(std::get<1>(r));
  *q = hq;
  *k = hk;
  *v = new_handle(std::get<2>(r));
  SL_CATCH
}

sl_status sl_attention_scores(sl_tensor q, sl_tensor k, sl_tensor key_mask, const sl_attention_options* options,
                              sl_tensor* scores) {
  SL_TRY
  SL_OUT(scores) = new_handle(attention_scores(get(q, "q"), get(k, "k"), sl::get_optional(key_mask), options_of(options)));
  SL_CATCH
}

sl_status sl_attention_pattern(sl_tensor scores, const sl_attention_options* options, sl_tensor* pattern) {
  SL_TRY
  const bool softmax_float32 = options != nullptr && options_of(options).softmax_float32;
  SL_OUT(pattern) = new_handle(attention_pattern(get(scores, "scores"), softmax_float32));
  SL_CATCH
}

sl_status sl_attention_apply(sl_tensor pattern, sl_tensor v, sl_tensor* z) {
  SL_TRY
  SL_OUT(z) = new_handle(attention_apply(get(pattern, "pattern"), get(v, "v"), false));
  SL_CATCH
}

sl_status sl_attention_apply_causal(sl_tensor pattern, sl_tensor v, sl_tensor* z) {
  SL_TRY
  SL_OUT(z) = new_handle(attention_apply(get(pattern, "pattern"), get(v, "v"), true));
  SL_CATCH
}

sl_status sl_attention_causal_pattern(sl_tensor q, sl_tensor k, sl_tensor key_mask, const sl_attention_options* options,
                                      sl_tensor* pattern) {
  SL_TRY
  SL_OUT(pattern) =
      new_handle(attention_causal_pattern(get(q, "q"), get(k, "k"), sl::get_optional(key_mask), options_of(options)));
  SL_CATCH
}

sl_status sl_attention(sl_tensor q, sl_tensor k, sl_tensor v, sl_tensor key_mask, const sl_attention_options* options,
                       sl_tensor* z) {
  return sl_attention_with(SL_ATTENTION_AUTO, q, k, v, key_mask, options, z);
}

sl_status sl_attention_with(int32_t implementation, sl_tensor q, sl_tensor k, sl_tensor v, sl_tensor key_mask,
                            const sl_attention_options* options, sl_tensor* z) {
  SL_TRY
  SL_OUT(z) = new_handle(
      attention(implementation, get(q, "q"), get(k, "k"), get(v, "v"), sl::get_optional(key_mask), options_of(options)));
  SL_CATCH
}

sl_status sl_rotary(sl_tensor x, sl_tensor positions, int64_t rotary_dim, double base, sl_tensor* out) {
  return sl_rotary_with(SL_ROTARY_AUTO, x, positions, rotary_dim, base, out);
}

sl_status sl_rotary_with(int32_t implementation, sl_tensor x, sl_tensor positions, int64_t rotary_dim, double base,
                         sl_tensor* out) {
  SL_TRY
  SL_OUT(out) = new_handle(rotary(implementation, get(x, "x"), get(positions, "positions"), rotary_dim, base));
  SL_CATCH
}

sl_status sl_rotary_qk(sl_tensor q, sl_tensor k, sl_tensor positions, int64_t rotary_dim, double base, sl_tensor* q_out,
                       sl_tensor* k_out) {
  SL_TRY
  sl::require(q_out, "q_out");
  sl::require(k_out, "k_out");
  auto r = rotary_qk(get(q, "q"), get(k, "k"), get(positions, "positions"), rotary_dim, base);
  auto hq = new_handle(std::move(r.first));
  *k_out = new_handle(std::move(r.second));
  *q_out = hq;
  SL_CATCH
}

sl_status sl_rotary_table(int32_t implementation, sl_tensor x, sl_tensor table, sl_tensor* out) {
  SL_TRY
  SL_OUT(out) = new_handle(rotary_table(implementation, get(x, "x"), get(table, "table")));
  SL_CATCH
}

sl_status sl_layer_norm_centre_scale(sl_tensor x, double eps, sl_tensor* centred, sl_tensor* scale) {
  SL_TRY
  const auto& t = get(x, "x");
  if (t.dim() < 1 || t.size(-1) < 1)
    throw sl::ArgumentError("layer norm needs a non-empty last dimension, got " + c10::str(t.sizes()));
  if (!(eps >= 0)) throw sl::ArgumentError("layer norm eps must be non-negative, got " + std::to_string(eps));
  auto [c, s] = sl::kernels::layer_norm_centre_scale(t, eps);
  SL_OUT(centred) = new_handle(std::move(c));
  SL_OUT(scale) = new_handle(std::move(s));
  SL_CATCH
}

sl_status sl_rms_norm_scale(sl_tensor x, double eps, sl_tensor* scale) {
  SL_TRY
  const auto& t = get(x, "x");
  if (t.dim() < 1 || t.size(-1) < 1)
    throw sl::ArgumentError("RMS norm needs a non-empty last dimension, got " + c10::str(t.sizes()));
  if (!(eps >= 0)) throw sl::ArgumentError("RMS norm eps must be non-negative, got " + std::to_string(eps));
  SL_OUT(scale) = new_handle(sl::kernels::rms_norm_scale(t, eps));
  SL_CATCH
}

sl_status sl_layer_norm_apply_scale(sl_tensor centred, sl_tensor scale, sl_tensor weight, sl_tensor bias, sl_tensor* out) {
  SL_TRY
  const auto& c = get(centred, "centred");
  const auto& s = get(scale, "scale");
  auto expected = c.sizes().vec();
  if (!expected.empty()) expected.back() = 1;
  if (c.dim() < 1 || s.sizes().vec() != expected)
    throw sl::ArgumentError("layer norm scale must be " + c10::str(at::IntArrayRef(expected)) + " for centred " +
                            c10::str(c.sizes()) + ", got " + c10::str(s.sizes()));
  const auto w = sl::get_optional(weight), b = sl::get_optional(bias);
  for (const auto* p : {&w, &b})
    if (p->has_value() && ((*p)->dim() != 1 || (*p)->size(0) != c.size(-1)))
      throw sl::ArgumentError("layer norm weight and bias must be [" + std::to_string(c.size(-1)) + "], got " +
                              c10::str((*p)->sizes()));
  SL_OUT(out) = new_handle(sl::kernels::layer_norm_apply_scale(c, s, w.value_or(at::Tensor()), b.value_or(at::Tensor())));
  SL_CATCH
}

}  // extern "C"
