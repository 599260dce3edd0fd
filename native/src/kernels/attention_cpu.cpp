// Fused causal attention for CPU, FlashAttention-style: for each block of queries, walk the key blocks that
// the visibility rule (kernels/attention_rule.h: causality and an optional sliding window) allows, compute one tile of scores with a BLAS call, fold it into a running (online) softmax,
// and accumulate the weighted values with another BLAS call. Scores and pattern exist only tile by tile,
// tiles above the diagonal (and, with a window, left of it) are skipped, and the backward pass recomputes each tile
// from the saved log-sum-exp instead of storing the pattern. A soft-cap (Gemma 2) is applied to each tile's scaled
// scores before masking; the backward multiplies by its derivative 1 - tanh^2, recomputed with the tile.
#include "kernels/attention.h"
#include "kernels/attention_rule.h"
#include "kernels/blas.h"

#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#ifdef SHARPLENS_WITH_CUDA
#include "kernels_cuda_glue.h"  // native/cuda: the same kernel for CUDA tensors
#endif

namespace sl::kernels {
namespace {

constexpr int64_t kBlockQ = 64;
constexpr int64_t kBlockK = 64;

struct Shape {
  int64_t batch, heads, kv_heads, pq, pk, d, offset, window;
};

// Soft-caps a tile of scaled scores in place; with `derivative`, also stores d(capped)/d(score) = 1 - tanh^2 there.
template <typename T>
void cap_tile(T* s, int64_t n, T cap, T* derivative) {
  for (int64_t x = 0; x < n; ++x) {
    const T t = std::tanh(s[x] / cap);
    s[x] = cap * t;
    if (derivative != nullptr) derivative[x] = T(1) - t * t;
  }
}

// Marks -inf where query row (absolute index i) may not see key j: outside the visibility rule, and padded keys.
template <typename T>
void mask_tile(T* s, int64_t rows, int64_t cols, int64_t i0, int64_t j0, const Shape& sh, const uint8_t* valid) {
  const T neg_inf = -std::numeric_limits<T>::infinity();
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t first = first_visible_key(i0 + r, sh.offset, sh.window) - j0;
    const int64_t end = end_visible_key(i0 + r, sh.offset, sh.pk) - j0;
    T* row = s + r * cols;
    for (int64_t c = 0; c < std::min(cols, std::max<int64_t>(0, first)); ++c) row[c] = neg_inf;
    for (int64_t c = std::max<int64_t>(0, end); c < cols; ++c) row[c] = neg_inf;
    if (valid != nullptr)
      for (int64_t c = 0; c < cols; ++c)
        if (!valid[j0 + c]) row[c] = neg_inf;
  }
}

template <typename T>
void forward_kernel(const T* q, const T* k, const T* v, const uint8_t* valid, T* out, T* lse, const Shape& s, T scale,
                    T softcap) {
  const int64_t q_blocks = (s.pq + kBlockQ - 1) / kBlockQ;
  const int64_t group = s.heads / s.kv_heads;
  at::parallel_for(0, s.batch * s.heads * q_blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> scores(kBlockQ * kBlockK), acc(kBlockQ * s.d), m(kBlockQ), l(kBlockQ);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t qb = item % q_blocks, bh = item / q_blocks, b = bh / s.heads, h = bh % s.heads;
      const int64_t hk = h / group;
      const int64_t i0 = qb * kBlockQ, rows = std::min(kBlockQ, s.pq - i0);
      const T* qp = q + ((b * s.heads + h) * s.pq + i0) * s.d;
      const T* kp = k + (b * s.kv_heads + hk) * s.pk * s.d;
      const T* vp = v + (b * s.kv_heads + hk) * s.pk * s.d;
      const uint8_t* vb = valid == nullptr ? nullptr : valid + b * s.pk;
      std::fill(acc.begin(), acc.begin() + rows * s.d, T(0));
      std::fill(m.begin(), m.end(), -std::numeric_limits<T>::infinity());
      std::fill(l.begin(), l.end(), T(0));
      // Only the keys some row of this block sees: none beyond the last row's, none before the first row's window.
      const int64_t key_begin = tile_first_key(i0, s.offset, s.window);
      const int64_t key_end = tile_end_key(i0 + rows, s.offset, s.pk);
      for (int64_t j0 = key_begin; j0 < key_end; j0 += kBlockK) {
        const int64_t cols = std::min(kBlockK, key_end - j0);
        gemm_rm<T>(false, true, rows, cols, s.d, scale, qp, s.d, kp + j0 * s.d, s.d, T(0), scores.data(), cols);
        if (softcap > T(0)) cap_tile(scores.data(), rows * cols, softcap, static_cast<T*>(nullptr));
        mask_tile(scores.data(), rows, cols, i0, j0, s, vb);
        for (int64_t r = 0; r < rows; ++r) {
          T* row = scores.data() + r * cols;
          T tile_max = -std::numeric_limits<T>::infinity();
          for (int64_t c = 0; c < cols; ++c) tile_max = std::max(tile_max, row[c]);
          const T m_new = std::max(m[r], tile_max);
          if (m_new == -std::numeric_limits<T>::infinity()) {
            std::fill(row, row + cols, T(0));  // nothing visible yet: contributes nothing
            continue;
          }
          const T rescale = std::exp(m[r] - m_new);
          T sum = 0;
          for (int64_t c = 0; c < cols; ++c) {
            row[c] = std::exp(row[c] - m_new);
            sum += row[c];
          }
          l[r] = l[r] * rescale + sum;
          if (rescale != T(1)) {
            T* a = acc.data() + r * s.d;
            for (int64_t x = 0; x < s.d; ++x) a[x] *= rescale;
          }
          m[r] = m_new;
        }
        gemm_rm<T>(false, false, rows, s.d, cols, T(1), scores.data(), cols, vp + j0 * s.d, s.d, T(1), acc.data(), s.d);
      }
      T* op = out + ((b * s.heads + h) * s.pq + i0) * s.d;
      T* lp = lse + (b * s.heads + h) * s.pq + i0;
      for (int64_t r = 0; r < rows; ++r) {
        const bool empty = l[r] == T(0);
        const T inv = empty ? T(0) : T(1) / l[r];
        for (int64_t x = 0; x < s.d; ++x) op[r * s.d + x] = acc[r * s.d + x] * inv;
        lp[r] = empty ? -std::numeric_limits<T>::infinity() : m[r] + std::log(l[r]);
      }
    }
  });
}

// Gradients by recomputation: P = exp(S - lse) per tile; dV += Pᵀ dO; dP = dO Vᵀ; dS = P (dP - rowsum(dO∘O));
// with a soft-cap, dS also takes the cap's derivative 1 - tanh^2; dQ += scale dS K; dK += scale dSᵀ Q. Work is
// split over (batch, kv head) so dK and dV have one writer.
template <typename T>
void backward_kernel(const T* q, const T* k, const T* v, const uint8_t* valid, const T* out, const T* lse, const T* dout,
                     T* dq, T* dk, T* dv, const Shape& s, T scale, T softcap) {
  const int64_t group = s.heads / s.kv_heads;
  at::parallel_for(0, s.batch * s.kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> p(kBlockQ * kBlockK), dp(kBlockQ * kBlockK), delta(kBlockQ);
    std::vector<T> cap_derivative(softcap > T(0) ? kBlockQ * kBlockK : 0);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / s.kv_heads, hk = item % s.kv_heads;
      const T* kp = k + (b * s.kv_heads + hk) * s.pk * s.d;
      const T* vp = v + (b * s.kv_heads + hk) * s.pk * s.d;
      T* dkp = dk + (b * s.kv_heads + hk) * s.pk * s.d;
      T* dvp = dv + (b * s.kv_heads + hk) * s.pk * s.d;
      const uint8_t* vb = valid == nullptr ? nullptr : valid + b * s.pk;
      for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
        const int64_t head = (b * s.heads + h) * s.pq;
        for (int64_t i0 = 0; i0 < s.pq; i0 += kBlockQ) {
          const int64_t rows = std::min(kBlockQ, s.pq - i0);
          const T* qp = q + (head + i0) * s.d;
          const T* op = out + (head + i0) * s.d;
          const T* dop = dout + (head + i0) * s.d;
          const T* lp = lse + head + i0;
          T* dqp = dq + (head + i0) * s.d;
          for (int64_t r = 0; r < rows; ++r) {
            T sum = 0;
            for (int64_t x = 0; x < s.d; ++x) sum += dop[r * s.d + x] * op[r * s.d + x];
            delta[r] = sum;
          }
          const int64_t key_begin = tile_first_key(i0, s.offset, s.window);
          const int64_t key_end = tile_end_key(i0 + rows, s.offset, s.pk);
          for (int64_t j0 = key_begin; j0 < key_end; j0 += kBlockK) {
            const int64_t cols = std::min(kBlockK, key_end - j0);
            gemm_rm<T>(false, true, rows, cols, s.d, scale, qp, s.d, kp + j0 * s.d, s.d, T(0), p.data(), cols);
            if (softcap > T(0)) cap_tile(p.data(), rows * cols, softcap, cap_derivative.data());
            mask_tile(p.data(), rows, cols, i0, j0, s, vb);
            for (int64_t r = 0; r < rows; ++r) {
              T* row = p.data() + r * cols;
              const bool empty = lp[r] == -std::numeric_limits<T>::infinity();
              for (int64_t c = 0; c < cols; ++c) row[c] = empty ? T(0) : std::exp(row[c] - lp[r]);
            }
            gemm_rm<T>(true, false, cols, s.d, rows, T(1), p.data(), cols, dop, s.d, T(1), dvp + j0 * s.d, s.d);
            gemm_rm<T>(false, true, rows, cols, s.d, T(1), dop, s.d, vp + j0 * s.d, s.d, T(0), dp.data(), cols);
            for (int64_t r = 0; r < rows; ++r)
              for (int64_t c = 0; c < cols; ++c) {
                const int64_t idx = r * cols + c;
                dp[idx] = p[idx] * (dp[idx] - delta[r]);
              }
            if (softcap > T(0))
              for (int64_t x = 0; x < rows * cols; ++x) dp[x] *= cap_derivative[x];
            gemm_rm<T>(false, false, rows, s.d, cols, scale, dp.data(), cols, kp + j0 * s.d, s.d, T(1), dqp, s.d);
            gemm_rm<T>(true, false, cols, s.d, rows, scale, dp.data(), cols, qp, s.d, T(1), dkp + j0 * s.d, s.d);
          }
        }
      }
    }
  });
}

Shape shape_of(const at::Tensor& qh, const at::Tensor& kh, int64_t window) {
  // qh [b, h, p_q, d], kh [b, h_kv, p_k, d]
  return Shape{qh.size(0), qh.size(1), kh.size(1), qh.size(2), kh.size(2), qh.size(3), kh.size(2) - qh.size(2), window};
}

// Autograd functions cannot take undefined tensors: an empty byte tensor stands for "no key mask".
at::Tensor valid_keys(const at::Tensor& key_mask) {
  if (!key_mask.defined()) return at::empty({0}, at::TensorOptions().dtype(at::kByte));
  return key_mask.ne(0).to(at::kByte).contiguous();
}

class FusedAttentionFunction : public torch::autograd::Function<FusedAttentionFunction> {
 public:
  // Inputs in kernel layout: qh [b, h, p_q, d], kh/vh [b, h_kv, p_k, d], contiguous.
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& qh, const at::Tensor& kh,
                            const at::Tensor& vh, const at::Tensor& valid, double scale, double softcap, int64_t window) {
    ctx->saved_data["valid"] = valid;
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["softcap"] = softcap;
    ctx->saved_data["window"] = window;
#ifdef SHARPLENS_WITH_CUDA
    if (qh.is_cuda()) {
      auto [out, lse] = cuda::fused_attention_forward(qh, kh, vh, valid.numel() > 0 ? valid.to(qh.device()) : valid,
                                                      AttentionOptions{scale, softcap, window});
      ctx->save_for_backward({qh, kh, vh, out, lse});
      return out;
    }
#endif
    auto out = at::empty_like(qh);
    auto lse = at::empty({qh.size(0), qh.size(1), qh.size(2)}, qh.options());
    const auto s = shape_of(qh, kh, window);
    const uint8_t* vp = valid.numel() > 0 ? valid.data_ptr<uint8_t>() : nullptr;
    AT_DISPATCH_FLOATING_TYPES(qh.scalar_type(), "sl_fused_attention_forward", [&] {
      forward_kernel<scalar_t>(qh.data_ptr<scalar_t>(), kh.data_ptr<scalar_t>(), vh.data_ptr<scalar_t>(), vp,
                               out.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(), s, static_cast<scalar_t>(scale),
                               static_cast<scalar_t>(softcap));
    });
    ctx->save_for_backward({qh, kh, vh, out, lse});
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                  torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &qh = saved[0], &kh = saved[1], &vh = saved[2], &out = saved[3], &lse = saved[4];
    const auto valid = ctx->saved_data["valid"].toTensor();
    const double scale = ctx->saved_data["scale"].toDouble();
    const double softcap = ctx->saved_data["softcap"].toDouble();
    const int64_t window = ctx->saved_data["window"].toInt();
    auto dout = grads[0].contiguous();
    const torch::autograd::variable_list no_grads{at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
#ifdef SHARPLENS_WITH_CUDA
    if (qh.is_cuda()) {
      auto [dq, dk, dv] = cuda::fused_attention_backward(qh, kh, vh, valid.numel() > 0 ? valid.to(qh.device()) : valid, out,
                                                         lse, dout, AttentionOptions{scale, softcap, window});
      return {dq, dk, dv, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    }
#endif
    auto dq = at::zeros_like(qh), dk = at::zeros_like(kh), dv = at::zeros_like(vh);
    const auto s = shape_of(qh, kh, window);
    const uint8_t* vp = valid.numel() > 0 ? valid.data_ptr<uint8_t>() : nullptr;
    AT_DISPATCH_FLOATING_TYPES(qh.scalar_type(), "sl_fused_attention_backward", [&] {
      backward_kernel<scalar_t>(qh.data_ptr<scalar_t>(), kh.data_ptr<scalar_t>(), vh.data_ptr<scalar_t>(), vp,
                                out.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(), dout.data_ptr<scalar_t>(),
                                dq.data_ptr<scalar_t>(), dk.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>(), s,
                                static_cast<scalar_t>(scale), static_cast<scalar_t>(softcap));
    });
    return {dq, dk, dv, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

bool fused_attention_supported(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const AttentionOptions& options) {
#ifdef SHARPLENS_WITH_CUDA
  // q, k, v arrive as [b, p, h, d]; the CUDA glue judges the kernel layout [b, h, p, d] it will receive.
  if (q.is_cuda() && q.dim() == 4 && k.dim() == 4 && v.dim() == 4)
    return cuda::fused_attention_supported(q.permute({0, 2, 1, 3}), k.permute({0, 2, 1, 3}), v.permute({0, 2, 1, 3}),
                                           options);
#endif
  const auto t = q.scalar_type();
  // The kernel's online softmax runs in the inputs' dtype: a float32 softmax of float64 scores is the composition's.
  if (options.softmax_float32 && t == at::kDouble) return false;
  return q.device().is_cpu() && k.device().is_cpu() && v.device().is_cpu() && (t == at::kFloat || t == at::kDouble) &&
         k.scalar_type() == t && v.scalar_type() == t && q.dim() == 4 && k.dim() == 4 && v.dim() == 4 &&
         k.sizes() == v.sizes() && q.size(0) == k.size(0) && q.size(3) == k.size(3) && k.size(2) > 0 &&
         q.size(2) % k.size(2) == 0 && q.size(1) <= k.size(1) && q.size(1) * q.size(0) * q.size(2) * q.size(3) < (1LL << 31);
}

at::Tensor fused_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& key_mask,
                           const AttentionOptions& options) {
  auto qh = q.permute({0, 2, 1, 3}).contiguous();
  auto kh = k.permute({0, 2, 1, 3}).contiguous();
  auto vh = v.permute({0, 2, 1, 3}).contiguous();
  auto out = FusedAttentionFunction::apply(qh, kh, vh, valid_keys(key_mask), options.scale, options.softcap,
                                           options.window);
  return out.permute({0, 2, 1, 3});
}

}  // namespace sl::kernels
