// Causal attention in stages with the scores / pattern materialised (see attention_materialised.h).
//
// Every kernel walks (batch, head, block of query rows). Query row i sees keys [0, visible(i)), so the block
// [i0, i0 + rows) needs keys [0, visible(i0 + rows - 1)) only: one BLAS call per row block covers exactly
// the tiles on and below the diagonal (about half the GEMM work of the dense composition), writing straight
// into the output rows, and the scale / mask / softmax / NaN-to-zero pass then runs over the same rows while
// they are still in cache, instead of the composition's five or six passes over the whole [b, h, q, k] tensor.
// The backward passes build dS for one row block in a scratch buffer and issue dq = dS k and dk += dSᵀ q
// (dv += Pᵀ dz) for it; the key-side sums have several writers, so the work is split either over
// (batch, kv head) or, when that leaves threads idle, over row blocks with one private accumulator per thread.
#include "kernels/attention_materialised.h"
#include "kernels/blas.h"

#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace sl::kernels {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Query rows per block: big enough for efficient BLAS calls, small enough that a block of scores rows
// (64 x 2048 floats = 512 KiB) stays in L2 between the GEMM and the softmax pass; the diagonal blocks compute
// 64 x 64 / 2 entries they then mask.
constexpr int64_t kBlockRows = 64;
// Rows per parallel chunk in the row-wise (non-GEMM) kernels.
constexpr int64_t kRowGrain = 16;
// Largest total size of the per-thread key-side gradient accumulators.
constexpr int64_t kPrivateAccumulatorBytes = int64_t(256) << 20;

// ---------------------------------------------------------------------------------------------------------
// Row kernels: softmax and its backward over one row, with explicit 256-bit GCC vectors (compiled for AVX2 +
// FMA where the CPU has it, SSE2 otherwise), so the reductions and exp vectorise without -ffast-math.

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define SL_ROW_KERNEL __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define SL_ROW_KERNEL
#endif

// The 256-bit vector types only live inside always-inline helpers: no ABI crosses a call.
#pragma GCC diagnostic ignored "-Wpsabi"

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
typedef double v4d __attribute__((vector_size(32)));
typedef int64_t v4l __attribute__((vector_size(32)));

template <typename T>
struct Vec;
template <>
struct Vec<float> {
  using V = v8f;
  using I = v8i;
  static constexpr int W = 8;
};
template <>
struct Vec<double> {
  using V = v4d;
  using I = v4l;
  static constexpr int W = 4;
};

template <typename V, typename T>
[[gnu::always_inline]] inline V vload(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V, typename T>
[[gnu::always_inline]] inline void vstore(T* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

template <typename V, typename T>
[[gnu::always_inline]] inline V splat(T x) {
  V v;
  for (int l = 0; l < int(sizeof(V) / sizeof(T)); ++l) v[l] = x;
  return v;
}

template <typename T, typename V>
[[gnu::always_inline]] inline T hsum(const V& v) {
  constexpr int W = sizeof(V) / sizeof(T);
  T lanes[W];
  std::memcpy(lanes, &v, sizeof(V));
  if constexpr (W == 8)
    return ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
  else
    return (lanes[0] + lanes[2]) + (lanes[1] + lanes[3]);
}

// exp(x) for x in [-inf, 0] (no NaN): Cephes' expf (range reduction by ln 2, degree-5 polynomial, about 1 ulp),
// exactly 0 below ln(FLT_MIN) instead of a denormal.
[[gnu::always_inline]] inline v8f vexp(const v8f& x) {
  const v8f lo = splat<v8f>(-87.33654475f), magic = splat<v8f>(12582912.0f);  // 1.5 * 2^23: round to nearest
  const v8i below = x < lo;
  const v8f xc = below ? lo : x;
  const v8f t = xc * 1.44269504088896341f + magic;
  const v8f n = t - magic;
  const v8i ni = (v8i)t - 0x4B400000;  // the integer n, from t's mantissa
  v8f r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  v8f p = splat<v8f>(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  v8f y = p * (r * r) + r + 1.0f;
  y = y * (v8f)((ni + 127) << 23);
  return below ? splat<v8f>(0.0f) : y;
}

// float64 keeps libm's exp (float64 is the reference dtype, not the fast path).
[[gnu::always_inline]] inline v4d vexp(const v4d& x) {
  v4d y;
  for (int l = 0; l < 4; ++l) y[l] = std::exp(x[l]);
  return y;
}

// Length of row[0, n) without its trailing run of `value` (the masked tail of a causal row).
template <typename T>
[[gnu::always_inline]] inline int64_t trim_trailing(const T* row, int64_t n, T value) {
  using V = typename Vec<T>::V;
  constexpr int W = Vec<T>::W;
  const V vv = splat<V>(value);
  while (n >= W) {
    const auto differs = vload<V>(row + n - W) != vv;
    bool any = false;
    for (int l = 0; l < W; ++l) any |= differs[l] != 0;
    if (any) break;
    n -= W;
  }
  while (n > 0 && row[n - 1] == value) --n;
  return n;
}

// dst[0, n) = softmax(src[0, n)); a row the composition would turn into NaN (a NaN or +inf anywhere, or all
// -inf) becomes zeros. dst may equal src. Trailing -inf entries are skipped (they give exactly 0).
template <typename T>
[[gnu::always_inline]] inline void softmax_row_impl(const T* src, T* dst, int64_t full) {
  using V = typename Vec<T>::V;
  using I = typename Vec<T>::I;
  constexpr int W = Vec<T>::W;
  constexpr T inf = std::numeric_limits<T>::infinity();
  const int64_t n = trim_trailing(src, full, -inf);
  std::fill(dst + n, dst + full, T(0));
  if (n <= 0) return;
  V mx = splat<V>(-inf);
  I nan = I{};
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    const V x = vload<V>(src + i);
    nan |= x != x;
    mx = x > mx ? x : mx;
  }
  T m = -inf;
  bool bad = false;
  for (int l = 0; l < W; ++l) {
    m = mx[l] > m ? mx[l] : m;
    bad |= nan[l] != 0;
  }
  for (; i < n; ++i) {
    const T x = src[i];
    bad |= x != x;
    m = x > m ? x : m;
  }
  if (bad || m == inf || m == -inf) {
    std::fill(dst, dst + n, T(0));
    return;
  }
  const V mv = splat<V>(m);
  V acc = V{};
  for (i = 0; i + W <= n; i += W) {
    const V e = vexp(vload<V>(src + i) - mv);
    vstore(dst + i, e);
    acc += e;
  }
  if (i < n) {  // tail through one padded vector, so every element takes the same exp
    T tmp[W];
    for (int l = 0; l < W; ++l) tmp[l] = i + l < n ? src[i + l] : -inf;
    const V e = vexp(vload<V>(tmp) - mv);
    acc += e;
    for (int l = 0; i + l < n; ++l) dst[i + l] = e[l];
  }
  const V inv = splat<V>(T(1) / hsum<T>(acc));
  for (i = 0; i + W <= n; i += W) vstore(dst + i, vload<V>(dst + i) * inv);
  for (; i < n; ++i) dst[i] *= inv[0];
}

// out[0, n) = (p * (dp - sum(p * dp))) * scale; the trailing zeros of p (a causal row's masked tail) give 0
// without reading dp.
template <typename T>
[[gnu::always_inline]] inline void softmax_backward_row_impl(const T* p, const T* dp, T* out, int64_t full, T scale) {
  using V = typename Vec<T>::V;
  constexpr int W = Vec<T>::W;
  const int64_t n = trim_trailing(p, full, T(0));
  std::fill(out + n, out + full, T(0));
  V acc = V{};
  int64_t i = 0;
  for (; i + W <= n; i += W) acc += vload<V>(p + i) * vload<V>(dp + i);
  T delta = hsum<T>(acc);
  for (; i < n; ++i) delta += p[i] * dp[i];
  const V dv = splat<V>(delta);
  for (i = 0; i + W <= n; i += W) vstore(out + i, (vload<V>(p + i) * (vload<V>(dp + i) - dv)) * scale);
  for (; i < n; ++i) out[i] = (p[i] * (dp[i] - delta)) * scale;
}

SL_ROW_KERNEL void softmax_row(const float* src, float* dst, int64_t n) { softmax_row_impl(src, dst, n); }
SL_ROW_KERNEL void softmax_row(const double* src, double* dst, int64_t n) { softmax_row_impl(src, dst, n); }
SL_ROW_KERNEL void softmax_backward_row(const float* p, const float* dp, float* out, int64_t n, float scale) {
  softmax_backward_row_impl(p, dp, out, n, scale);
}
SL_ROW_KERNEL void softmax_backward_row(const double* p, const double* dp, double* out, int64_t n, double scale) {
  softmax_backward_row_impl(p, dp, out, n, scale);
}

// ---------------------------------------------------------------------------------------------------------
// Shapes, layouts and the parallel drivers.

struct Shape {
  int64_t batch, heads, kv_heads, pq, pk, d;
  int64_t group() const { return heads / kv_heads; }
  // Query row i sees keys [0, visible(i)): the rule of kernels/attention_rule.h without a window (these kernels
  // are used only for plain causal attention; materialised_attention_supported refuses windows and soft-caps).
  int64_t visible(int64_t i) const { return end_visible_key(i, pk - pq, pk); }
  int64_t q_blocks() const { return (pq + kBlockRows - 1) / kBlockRows; }
};

// A [b, p, h, d] tensor with unit stride over d, as one row-major [p, d] matrix per (batch, head).
template <typename T>
struct HeadMatrices {
  T* base;
  int64_t sb, sh, ld;
  T* at(int64_t b, int64_t h) const { return base + b * sb + h * sh; }
};

template <typename T>
HeadMatrices<T> head_matrices(const at::Tensor& t) {
  return {t.data_ptr<T>(), t.stride(0), t.stride(2), t.size(1) <= 1 ? std::max<int64_t>(t.size(3), 1) : t.stride(1)};
}

// The tensor itself when BLAS can read its [p, d] matrices in place (unit stride over d, a row stride BLAS
// accepts), else a contiguous copy.
at::Tensor blas_ready(const at::Tensor& t) {
  const bool unit = t.size(3) <= 1 || t.stride(3) == 1;
  const bool rows = t.size(1) <= 1 || (t.stride(1) >= t.size(3) && t.stride(1) < INT_MAX);
  return unit && rows ? t : t.contiguous();
}

// Autograd functions cannot take undefined tensors: an empty byte tensor stands for "no key mask".
at::Tensor valid_keys(const at::Tensor& key_mask, int64_t batch, int64_t pk) {
  if (!key_mask.defined()) return at::empty({0}, at::TensorOptions().dtype(at::kByte));
  TORCH_CHECK(key_mask.dim() == 2 && key_mask.size(0) == batch && key_mask.size(1) == pk, "key mask must be [batch, key_pos] = [",
              batch, ", ", pk, "], got ", key_mask.sizes());
  return key_mask.to(at::kCPU).ne(0).to(at::kByte).contiguous();
}

// Padded key positions per batch row, ascending (none when there is no mask).
std::vector<std::vector<int64_t>> padded_keys(const at::Tensor& valid, int64_t batch, int64_t pk) {
  std::vector<std::vector<int64_t>> out;
  if (valid.numel() == 0) return out;
  const uint8_t* v = valid.data_ptr<uint8_t>();
  out.resize(batch);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t j = 0; j < pk; ++j)
      if (!v[b * pk + j]) out[b].push_back(j);
  return out;
}

// Sets row[j] = value for every padded key j < n.
template <typename T>
inline void fill_padded(T* row, int64_t n, const std::vector<std::vector<int64_t>>& padded, int64_t b, T value) {
  if (padded.empty()) return;
  for (const int64_t j : padded[b]) {
    if (j >= n) break;
    row[j] = value;
  }
}

// Runs f(item, worker, scratch) for items [0, n) on up to at::get_num_threads() workers that take the next item
// from a shared counter, so a core slowed by a neighbour simply takes fewer items; worker is the caller's index
// in [0, workers) and scratch holds scratch_size elements private to it.
template <typename T, typename F>
void parallel_items(int64_t n, int64_t workers, int64_t scratch_size, F f) {
  std::atomic<int64_t> next{0};
  at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> scratch(scratch_size);
    for (int64_t w = begin; w < end; ++w)
      for (int64_t item = next++; item < n; item = next++) f(item, w, scratch.data());
  });
}

// at::parallel_for is a header template: it only runs in parallel where this file is compiled with OpenMP
// (-fopenmp, matching libtorch's OpenMP backend; ATen then defines INTRA_OP_PARALLEL). Without it every loop
// below runs on the calling thread and only the BLAS calls are multi-threaded (by OpenBLAS itself, as they
// are then outside a parallel region), so plan for one worker.
#ifdef INTRA_OP_PARALLEL
constexpr bool kIntraOpParallel = true;
#else
constexpr bool kIntraOpParallel = false;
#endif

inline int64_t worker_count(int64_t items) {
  return kIntraOpParallel ? std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), items)) : 1;
}

// Row blocks as work items, the most expensive first: the bottom blocks of every head see the most keys.
struct RowBlock {
  int64_t b, h, i0, rows;
};
inline RowBlock row_block(const Shape& s, int64_t item) {
  const int64_t bh_count = s.batch * s.heads, bh = item % bh_count;
  const int64_t i0 = (s.q_blocks() - 1 - item / bh_count) * kBlockRows;
  return {bh / s.heads, bh % s.heads, i0, std::min(kBlockRows, s.pq - i0)};
}

// Calls f(b, h, i0, rows) for every (batch, head, row block), in parallel.
template <typename F>
void for_row_blocks(const Shape& s, F f) {
  const int64_t items = s.batch * s.heads * s.q_blocks();
  parallel_items<char>(items, worker_count(items), 0, [&](int64_t item, int64_t, char*) {
    const RowBlock r = row_block(s, item);
    f(r.b, r.h, r.i0, r.rows);
  });
}

// Backward driver: calls f(b, h, i0, rows, acc, scratch) for every row block, where acc (null when acc_tensor
// is undefined) is a zeroed [b, p_k, h_kv, d] buffer into which f adds its key-side gradient, and scratch
// holds scratch_size elements private to the calling thread. Several heads share a kv head, so either one
// worker owns each (batch, kv head) -- when there are enough of them to keep every thread busy -- or every
// worker adds into a private copy of acc and the copies are summed at the end.
template <typename T, typename F>
void backward_row_blocks(const Shape& s, const at::Tensor& acc_tensor, int64_t scratch_size, F f) {
  const int64_t items = s.batch * s.heads * s.q_blocks();
  const int64_t workers = at::in_parallel_region() ? 1 : worker_count(items);
  T* acc = acc_tensor.defined() ? acc_tensor.data_ptr<T>() : nullptr;
  auto each_row_block = [&](T* (*target)(T*, T*, int64_t, int64_t), T* extra, int64_t numel) {
    parallel_items<T>(items, workers, scratch_size, [&](int64_t item, int64_t w, T* scratch) {
      const RowBlock r = row_block(s, item);
      f(r.b, r.h, r.i0, r.rows, target(acc, extra, numel, w), scratch);
    });
  };
  if (acc == nullptr || workers == 1) {  // no shared writes to guard
    each_row_block([](T* a, T*, int64_t, int64_t) { return a; }, nullptr, 0);
    return;
  }
  const int64_t kv_items = s.batch * s.kv_heads, numel = acc_tensor.numel();
  if (kv_items % workers == 0 || kv_items >= 4 * workers ||
      (workers - 1) * numel * int64_t(sizeof(T)) > kPrivateAccumulatorBytes) {
    parallel_items<T>(kv_items, std::min(workers, kv_items), scratch_size, [&](int64_t it, int64_t, T* scratch) {
      const int64_t b = it / s.kv_heads, hk = it % s.kv_heads;
      for (int64_t h = hk * s.group(); h < (hk + 1) * s.group(); ++h)
        for (int64_t i0 = 0; i0 < s.pq; i0 += kBlockRows) f(b, h, i0, std::min(kBlockRows, s.pq - i0), acc, scratch);
    });
    return;
  }
  auto extra = at::zeros({workers - 1, numel}, acc_tensor.options());
  each_row_block([](T* a, T* e, int64_t n, int64_t w) { return w == 0 ? a : e + (w - 1) * n; }, extra.data_ptr<T>(), numel);
  acc_tensor.view({numel}).add_(extra.sum(0));
}

template <typename T>
void zero_rows(T* p, int64_t rows, int64_t cols, int64_t ld) {
  for (int64_t r = 0; r < rows; ++r) std::fill(p + r * ld, p + r * ld + cols, T(0));
}

Shape shape_qk(const at::Tensor& q, const at::Tensor& k) {
  return Shape{q.size(0), q.size(2), k.size(2), q.size(1), k.size(1), q.size(3)};
}

// Scores for one row block, scale * q kᵀ over the causal key range, into out (row stride p_k).
template <typename T>
void scores_block(const Shape& s, const HeadMatrices<T>& Q, const HeadMatrices<T>& K, T scale, int64_t b, int64_t h,
                  int64_t i0, int64_t rows, T* out) {
  const int64_t key_end = s.visible(i0 + rows - 1);
  if (key_end > 0)
    gemm_rm<T>(false, true, rows, key_end, s.d, scale, Q.at(b, h) + i0 * Q.ld, Q.ld, K.at(b, h / s.group()), K.ld, T(0),
               out, s.pk);
}

// dq rows = G k and dk += Gᵀ q for one row block, G [rows, key_end] being the scaled, masked dS.
template <typename T>
void qk_gradients_block(const Shape& s, const HeadMatrices<T>& Q, const HeadMatrices<T>& K, int64_t b, int64_t h,
                        int64_t i0, int64_t rows, int64_t key_end, const T* g, T* dq, T* dk) {
  const int64_t hk = h / s.group();
  if (dq != nullptr) {
    T* dq_rows = dq + ((b * s.pq + i0) * s.heads + h) * s.d;
    if (key_end == 0)
      zero_rows(dq_rows, rows, s.d, s.heads * s.d);
    else
      gemm_rm<T>(false, false, rows, s.d, key_end, T(1), g, key_end, K.at(b, hk), K.ld, T(0), dq_rows, s.heads * s.d);
  }
  if (dk != nullptr && key_end > 0)
    gemm_rm<T>(true, false, key_end, s.d, rows, T(1), g, key_end, Q.at(b, h) + i0 * Q.ld, Q.ld, T(1),
               dk + (b * s.pk * s.kv_heads + hk) * s.d, s.kv_heads * s.d);
}

// ---------------------------------------------------------------------------------------------------------
// Autograd functions.

class CausalScoresFunction : public torch::autograd::Function<CausalScoresFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& valid,
                            double scale) {
    const Shape s = shape_qk(q, k);
    auto scores = at::empty({s.batch, s.heads, s.pq, s.pk}, q.options());
    const auto padded = padded_keys(valid, s.batch, s.pk);
    AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "sl_causal_scores", [&] {
      using T = scalar_t;
      const auto Q = head_matrices<T>(q), K = head_matrices<T>(k);
      T* sp = scores.data_ptr<T>();
      const T neg_inf = -std::numeric_limits<T>::infinity();
      for_row_blocks(s, [&](int64_t b, int64_t h, int64_t i0, int64_t rows) {
        T* out = sp + ((b * s.heads + h) * s.pq + i0) * s.pk;
        scores_block(s, Q, K, static_cast<T>(scale), b, h, i0, rows, out);
        for (int64_t r = 0; r < rows; ++r) {
          T* row = out + r * s.pk;
          const int64_t n = s.visible(i0 + r);
          std::fill(row + n, row + s.pk, neg_inf);
          fill_padded(row, n, padded, b, neg_inf);
        }
      });
    });
    ctx->save_for_backward({q, k, valid});
    ctx->saved_data["scale"] = scale;
    return scores;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &q = saved[0], &k = saved[1], &valid = saved[2];
    const double scale = ctx->saved_data["scale"].toDouble();
    const bool need_q = ctx->needs_input_grad(0), need_k = ctx->needs_input_grad(1);
    if (!need_q && !need_k) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    const Shape s = shape_qk(q, k);
    const auto ds = grads[0].contiguous();
    auto dq = need_q ? at::empty({s.batch, s.pq, s.heads, s.d}, q.options()) : at::Tensor();
    auto dk = need_k ? at::zeros({s.batch, s.pk, s.kv_heads, s.d}, k.options()) : at::Tensor();
    const auto padded = padded_keys(valid, s.batch, s.pk);
    AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "sl_causal_scores_backward", [&] {
      using T = scalar_t;
      const auto Q = head_matrices<T>(q), K = head_matrices<T>(k);
      const T* dsp = ds.data_ptr<T>();
      T* dqp = need_q ? dq.data_ptr<T>() : nullptr;
      const T sc = static_cast<T>(scale);
      backward_row_blocks<T>(s, dk, kBlockRows * s.pk, [&](int64_t b, int64_t h, int64_t i0, int64_t rows, T* dkp, T* g) {
        const int64_t key_end = s.visible(i0 + rows - 1);
        const T* src = dsp + ((b * s.heads + h) * s.pq + i0) * s.pk;
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t n = s.visible(i0 + r);
          const T* in = src + r * s.pk;
          T* out = g + r * key_end;
          for (int64_t c = 0; c < n; ++c) out[c] = in[c] * sc;
          std::fill(out + n, out + key_end, T(0));
          fill_padded(out, n, padded, b, T(0));
        }
        qk_gradients_block(s, Q, K, b, h, i0, rows, key_end, g, dqp, dkp);
      });
    });
    return {dq, dk, at::Tensor(), at::Tensor()};
  }
};

class PatternFromScoresFunction : public torch::autograd::Function<PatternFromScoresFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& scores_in) {
    const auto scores = scores_in.contiguous();
    auto pattern = at::empty_like(scores);
    const int64_t n = scores.size(-1), rows = scores.numel() / n;
    AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "sl_pattern_from_scores", [&] {
      const scalar_t* sp = scores.data_ptr<scalar_t>();
      scalar_t* pp = pattern.data_ptr<scalar_t>();
      const int64_t chunks = (rows + kRowGrain - 1) / kRowGrain;
      parallel_items<char>(chunks, worker_count(chunks), 0, [&](int64_t c, int64_t, char*) {
        for (int64_t r = c * kRowGrain; r < std::min(rows, (c + 1) * kRowGrain); ++r) softmax_row(sp + r * n, pp + r * n, n);
      });
    });
    ctx->save_for_backward({pattern});
    return pattern;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto pattern = ctx->get_saved_variables()[0];
    const auto dp = grads[0].contiguous();
    auto ds = at::empty_like(pattern);
    const int64_t n = pattern.size(-1), rows = pattern.numel() / n;
    AT_DISPATCH_FLOATING_TYPES(pattern.scalar_type(), "sl_pattern_from_scores_backward", [&] {
      const scalar_t* pp = pattern.data_ptr<scalar_t>();
      const scalar_t* dpp = dp.data_ptr<scalar_t>();
      scalar_t* dsp = ds.data_ptr<scalar_t>();
      const int64_t chunks = (rows + kRowGrain - 1) / kRowGrain;
      parallel_items<char>(chunks, worker_count(chunks), 0, [&](int64_t c, int64_t, char*) {
        for (int64_t r = c * kRowGrain; r < std::min(rows, (c + 1) * kRowGrain); ++r)
          softmax_backward_row(pp + r * n, dpp + r * n, dsp + r * n, n, scalar_t(1));
      });
    });
    return {ds};
  }
};

class CausalPatternFunction : public torch::autograd::Function<CausalPatternFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& valid,
                            double scale) {
    const Shape s = shape_qk(q, k);
    auto pattern = at::empty({s.batch, s.heads, s.pq, s.pk}, q.options());
    const auto padded = padded_keys(valid, s.batch, s.pk);
    AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "sl_causal_pattern", [&] {
      using T = scalar_t;
      const auto Q = head_matrices<T>(q), K = head_matrices<T>(k);
      T* pp = pattern.data_ptr<T>();
      const T neg_inf = -std::numeric_limits<T>::infinity();
      for_row_blocks(s, [&](int64_t b, int64_t h, int64_t i0, int64_t rows) {
        T* out = pp + ((b * s.heads + h) * s.pq + i0) * s.pk;
        scores_block(s, Q, K, static_cast<T>(scale), b, h, i0, rows, out);
        for (int64_t r = 0; r < rows; ++r) {
          T* row = out + r * s.pk;
          const int64_t n = s.visible(i0 + r);
          fill_padded(row, n, padded, b, neg_inf);
          softmax_row(row, row, n);
          std::fill(row + n, row + s.pk, T(0));
        }
      });
    });
    ctx->save_for_backward({q, k, valid, pattern});
    ctx->saved_data["scale"] = scale;
    return pattern;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &q = saved[0], &k = saved[1], &valid = saved[2], &pattern = saved[3];
    const double scale = ctx->saved_data["scale"].toDouble();
    const bool need_q = ctx->needs_input_grad(0), need_k = ctx->needs_input_grad(1);
    if (!need_q && !need_k) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    const Shape s = shape_qk(q, k);
    const auto dp = grads[0].contiguous();
    auto dq = need_q ? at::empty({s.batch, s.pq, s.heads, s.d}, q.options()) : at::Tensor();
    auto dk = need_k ? at::zeros({s.batch, s.pk, s.kv_heads, s.d}, k.options()) : at::Tensor();
    const auto padded = padded_keys(valid, s.batch, s.pk);
    AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "sl_causal_pattern_backward", [&] {
      using T = scalar_t;
      const auto Q = head_matrices<T>(q), K = head_matrices<T>(k);
      const T* pp = pattern.data_ptr<T>();
      const T* dpp = dp.data_ptr<T>();
      T* dqp = need_q ? dq.data_ptr<T>() : nullptr;
      const T sc = static_cast<T>(scale);
      backward_row_blocks<T>(s, dk, kBlockRows * s.pk, [&](int64_t b, int64_t h, int64_t i0, int64_t rows, T* dkp, T* g) {
        const int64_t key_end = s.visible(i0 + rows - 1);
        const int64_t base = ((b * s.heads + h) * s.pq + i0) * s.pk;
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t n = s.visible(i0 + r);
          T* out = g + r * key_end;
          softmax_backward_row(pp + base + r * s.pk, dpp + base + r * s.pk, out, n, sc);
          std::fill(out + n, out + key_end, T(0));
          fill_padded(out, n, padded, b, T(0));  // masked entries are constants, whatever arrives there
        }
        qk_gradients_block(s, Q, K, b, h, i0, rows, key_end, g, dqp, dkp);
      });
    });
    return {dq, dk, at::Tensor(), at::Tensor()};
  }
};

// Copies columns [from, to) of pattern rows i0 .. i0 + rows into tile (row stride to - from), zeroing the entries
// above the causal diagonal (key >= visible(row)).
template <typename T>
void lower_triangle(const T* p_rows, int64_t ld, int64_t rows, int64_t i0, int64_t from, int64_t to, const Shape& s,
                    T* tile) {
  const int64_t width = to - from;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t keep = std::clamp<int64_t>(s.visible(i0 + r) - from, 0, width);
    std::copy(p_rows + r * ld + from, p_rows + r * ld + from + keep, tile + r * width);
    std::fill(tile + r * width + keep, tile + (r + 1) * width, T(0));
  }
}

class ApplyPatternFunction : public torch::autograd::Function<ApplyPatternFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& pattern, const at::Tensor& v, bool assume_causal) {
    const Shape s{pattern.size(0), pattern.size(1), v.size(2), pattern.size(2), pattern.size(3), v.size(3)};
    auto z = at::empty({s.batch, s.pq, s.heads, s.d}, v.options());
    AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "sl_apply_pattern", [&] {
      using T = scalar_t;
      const auto V = head_matrices<T>(v);
      const T* pp = pattern.data_ptr<T>();
      T* zp = z.data_ptr<T>();
      for_row_blocks(s, [&](int64_t b, int64_t h, int64_t i0, int64_t rows) {
        T* z_rows = zp + ((b * s.pq + i0) * s.heads + h) * s.d;
        const T* p_rows = pp + ((b * s.heads + h) * s.pq + i0) * s.pk;
        const T* v_head = V.at(b, h / s.group());
        if (!assume_causal) {
          gemm_rm<T>(false, false, rows, s.d, s.pk, T(1), p_rows, s.pk, v_head, V.ld, T(0), z_rows, s.heads * s.d);
          return;
        }
        // Keys every row of the block sees, in place; then the triangle on the diagonal from a copy with the
        // entries above it zeroed, so the causal form ignores whatever a pattern holds there.
        const int64_t shared = s.visible(i0), key_end = s.visible(i0 + rows - 1);
        if (shared > 0)
          gemm_rm<T>(false, false, rows, s.d, shared, T(1), p_rows, s.pk, v_head, V.ld, T(0), z_rows, s.heads * s.d);
        else
          zero_rows(z_rows, rows, s.d, s.heads * s.d);
        if (key_end > shared) {
          std::vector<T> tile(static_cast<size_t>(rows * (key_end - shared)));
          lower_triangle(p_rows, s.pk, rows, i0, shared, key_end, s, tile.data());
          gemm_rm<T>(false, false, rows, s.d, key_end - shared, T(1), tile.data(), key_end - shared,
                     v_head + shared * V.ld, V.ld, T(1), z_rows, s.heads * s.d);
        }
      });
    });
    ctx->save_for_backward({pattern, v});
    ctx->saved_data["causal"] = assume_causal;
    return z;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &pattern = saved[0], &v = saved[1];
    const bool causal = ctx->saved_data["causal"].toBool();
    const bool need_p = ctx->needs_input_grad(0), need_v = ctx->needs_input_grad(1);
    if (!need_p && !need_v) return {at::Tensor(), at::Tensor(), at::Tensor()};
    const Shape s{pattern.size(0), pattern.size(1), v.size(2), pattern.size(2), pattern.size(3), v.size(3)};
    const auto dz = blas_ready(grads[0]);
    auto dp = need_p ? at::empty_like(pattern) : at::Tensor();
    auto dv = need_v ? at::zeros({s.batch, s.pk, s.kv_heads, s.d}, v.options()) : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "sl_apply_pattern_backward", [&] {
      using T = scalar_t;
      const auto V = head_matrices<T>(v), DZ = head_matrices<T>(dz);
      const T* pp = pattern.data_ptr<T>();
      T* dpp = need_p ? dp.data_ptr<T>() : nullptr;
      backward_row_blocks<T>(s, dv, 0, [&](int64_t b, int64_t h, int64_t i0, int64_t rows, T* dvp, T*) {
        const int64_t hk = h / s.group();
        const int64_t base = ((b * s.heads + h) * s.pq + i0) * s.pk;
        const T* dz_rows = DZ.at(b, h) + i0 * DZ.ld;
        // dP = dz vᵀ everywhere: a hook downstream of the pattern may read the entries above the diagonal.
        if (dpp != nullptr)
          gemm_rm<T>(false, true, rows, s.pk, s.d, T(1), dz_rows, DZ.ld, V.at(b, hk), V.ld, T(0), dpp + base, s.pk);
        if (dvp == nullptr) return;
        T* dv_head = dvp + (b * s.pk * s.kv_heads + hk) * s.d;
        // As the forward: the keys every row sees in place, the diagonal triangle from a zeroed-above copy.
        const int64_t shared = causal ? s.visible(i0) : s.pk, key_end = causal ? s.visible(i0 + rows - 1) : s.pk;
        if (shared > 0)
          gemm_rm<T>(true, false, shared, s.d, rows, T(1), pp + base, s.pk, dz_rows, DZ.ld, T(1), dv_head,
                     s.kv_heads * s.d);
        if (key_end > shared) {
          std::vector<T> tile(static_cast<size_t>(rows * (key_end - shared)));
          lower_triangle(pp + base, s.pk, rows, i0, shared, key_end, s, tile.data());
          gemm_rm<T>(true, false, key_end - shared, s.d, rows, T(1), tile.data(), key_end - shared, dz_rows, DZ.ld,
                     T(1), dv_head + shared * s.kv_heads * s.d, s.kv_heads * s.d);
        }
      });
    });
    return {dp, dv, at::Tensor()};
  }
};

bool float_cpu(const at::Tensor& t) {
  return t.defined() && t.device().is_cpu() && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble);
}

bool sizes_ok(const at::Tensor& t) {
  for (const int64_t n : t.sizes())
    if (n < 1 || n >= INT_MAX) return false;
  return true;
}

}  // namespace

bool materialised_attention_supported(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      const AttentionOptions& options) {
  if (options.window > 0 || options.softcap > 0) return false;  // the composition takes these
  if (options.softmax_float32 && q.scalar_type() == at::kDouble) return false;  // a float32 softmax of float64 scores
  if (!float_cpu(q) || !float_cpu(k) || q.scalar_type() != k.scalar_type() || q.dim() != 4 || k.dim() != 4) return false;
  if (!sizes_ok(q) || !sizes_ok(k) || q.size(0) != k.size(0) || q.size(3) != k.size(3) || q.size(2) % k.size(2) != 0 ||
      q.size(2) * q.size(3) >= INT_MAX)
    return false;
  return !v.defined() || (float_cpu(v) && v.scalar_type() == q.scalar_type() && v.sizes() == k.sizes());
}

bool materialised_pattern_supported(const at::Tensor& scores) {
  return float_cpu(scores) && scores.dim() == 4 && sizes_ok(scores);
}

bool materialised_apply_supported(const at::Tensor& pattern, const at::Tensor& v) {
  return float_cpu(pattern) && float_cpu(v) && pattern.scalar_type() == v.scalar_type() && pattern.dim() == 4 &&
         v.dim() == 4 && sizes_ok(pattern) && sizes_ok(v) && pattern.size(0) == v.size(0) &&
         pattern.size(3) == v.size(1) && pattern.size(1) % v.size(2) == 0 && pattern.size(1) * v.size(3) < INT_MAX;
}

at::Tensor causal_scores(const at::Tensor& q, const at::Tensor& k, const at::Tensor& key_mask, double scale) {
  TORCH_CHECK(materialised_attention_supported(q, k, at::Tensor(), AttentionOptions{scale, 0.0, 0}),
              "causal_scores needs float32/float64 CPU q [b, p_q, h, d] and k [b, p_k, h_kv, d] with h % h_kv == 0; got q ",
              q.sizes(), ", k ", k.sizes());
  return CausalScoresFunction::apply(blas_ready(q), blas_ready(k), valid_keys(key_mask, q.size(0), k.size(1)), scale);
}

at::Tensor pattern_from_scores(const at::Tensor& scores) {
  TORCH_CHECK(materialised_pattern_supported(scores), "pattern_from_scores needs float32/float64 CPU scores [b, h, p_q, p_k]; got ",
              scores.sizes());
  return PatternFromScoresFunction::apply(scores);
}

at::Tensor causal_pattern(const at::Tensor& q, const at::Tensor& k, const at::Tensor& key_mask, double scale) {
  TORCH_CHECK(materialised_attention_supported(q, k, at::Tensor(), AttentionOptions{scale, 0.0, 0}),
              "causal_pattern needs float32/float64 CPU q [b, p_q, h, d] and k [b, p_k, h_kv, d] with h % h_kv == 0; got q ",
              q.sizes(), ", k ", k.sizes());
  return CausalPatternFunction::apply(blas_ready(q), blas_ready(k), valid_keys(key_mask, q.size(0), k.size(1)), scale);
}

at::Tensor apply_pattern(const at::Tensor& pattern, const at::Tensor& v, bool assume_causal) {
  TORCH_CHECK(materialised_apply_supported(pattern, v),
              "apply_pattern needs float32/float64 CPU pattern [b, h, p_q, p_k] and v [b, p_k, h_kv, d] of one dtype with "
              "h % h_kv == 0; got pattern ", pattern.sizes(), ", v ", v.sizes());
  return ApplyPatternFunction::apply(pattern.contiguous(), blas_ready(v), assume_causal);
}

}  // namespace sl::kernels
