// Fused causal attention on CUDA, FlashAttention-style, with the semantics of attention_cpu.cpp: each block
// walks the key tiles that causality allows, keeps one tile of keys (or values) in shared memory, folds the
// scores into a running (online) softmax and accumulates the weighted values in registers. Scores and pattern
// never reach global memory; the backward pass recomputes P = exp(S - lse) tile by tile.
//
// Work split. A block has kWarps warps; a warp owns kRows rows (query rows in the forward and dq kernels, key
// rows in the dk/dv kernel) and its 32 lanes stand for the 32 entries of the other side of a score tile, so a
// score is one lane's dot product over a shared-memory row read without bank conflicts (padded stride), and the
// row reductions of the softmax are warp shuffles. For the products with V, K or Q the lanes switch roles and
// each owns head_dim / 32 output columns, so every accumulator stays in registers and is written once.
//
// The backward pass is two kernels instead of one with atomics: dq per query tile (like the forward), and dk/dv
// per key tile, looping over the query heads of its kv group. Both recompute the score tile, which costs a
// second pass but needs no atomics, is deterministic, and works the same for half types.
#include "../src/kernels/attention_rule.h"  // the visibility rule every attention path shares
#include "kernels_cuda.cuh"

#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace sl::cuda {
namespace {

constexpr int kWarpSize = 32;
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * kWarpSize;
constexpr unsigned kFullMask = 0xffffffffu;
// Shared memory a kernel may use without opting in (cudaFuncAttributeMaxDynamicSharedMemorySize).
constexpr size_t kDefaultSharedBytes = 48 * 1024;

__device__ __forceinline__ float widen(float x) { return x; }
__device__ __forceinline__ double widen(double x) { return x; }
__device__ __forceinline__ float widen(__half x) { return __half2float(x); }
__device__ __forceinline__ float widen(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T narrow(accum_t<T> x);
template <>
__device__ __forceinline__ float narrow<float>(float x) { return x; }
template <>
__device__ __forceinline__ double narrow<double>(double x) { return x; }
template <>
__device__ __forceinline__ __half narrow<__half>(float x) { return __float2half(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 narrow<__nv_bfloat16>(float x) { return __float2bfloat16(x); }

__device__ __forceinline__ float exp_of(float x) { return expf(x); }
__device__ __forceinline__ double exp_of(double x) { return exp(x); }
__device__ __forceinline__ float log_of(float x) { return logf(x); }
__device__ __forceinline__ double log_of(double x) { return log(x); }

template <typename A>
__device__ __forceinline__ A warp_max(A x) {
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o /= 2) {
    const A y = __shfl_xor_sync(kFullMask, x, o);
    x = y > x ? y : x;
  }
  return x;
}

template <typename A>
__device__ __forceinline__ A warp_sum(A x) {
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o /= 2) x += __shfl_xor_sync(kFullMask, x, o);
  return x;
}

// Tile geometry for element type T and head_dim rounded up to D (32, 64, 128 or 256).
template <typename T, int D>
struct Tiles {
  using A = accum_t<T>;
  // Rows per warp: fewer for wide rows, so that registers and shared memory stay within bounds (float up to
  // head_dim 256 and double up to 128 fit the 96 KiB of a V100).
  static constexpr int kRows = sizeof(T) * D <= 256 ? 8 : sizeof(T) * D <= 512 ? 4 : 2;
  static constexpr int kBlock = kWarps * kRows;  // rows per block
  static constexpr int kLanes = kWarpSize;       // the other side of a score tile
  static constexpr int kCols = D / kWarpSize;    // accumulator columns per lane
  // Tiles read one row per lane are padded by one 32-bit word, which puts the lanes' rows in distinct banks.
  static constexpr int kPad = sizeof(T) >= 4 ? 1 : static_cast<int>(4 / sizeof(T));
  static constexpr int kStride = D + kPad;

  // Dynamic shared memory per kernel; the device code carves it in the same order (accumulator arrays first,
  // for their alignment).
  static constexpr size_t forward_bytes() {
    return sizeof(A) * kBlock * kLanes + sizeof(T) * (kBlock * D + kLanes * kStride);
  }
  static constexpr size_t dq_bytes() {
    return sizeof(A) * kBlock * kLanes + sizeof(T) * (2 * kBlock * D + 2 * kLanes * kStride);
  }
  static constexpr size_t dkv_bytes() {
    return sizeof(A) * (2 * kBlock * kLanes + 2 * kLanes) + sizeof(T) * (2 * kBlock * D + 2 * kLanes * kStride);
  }
};

template <typename T>
struct Params {
  const T *q, *k, *v, *out, *dout;
  const uint8_t* key_valid;  // [batch, k_len] or nullptr
  accum_t<T>* lse;           // written by the forward, read by the backward
  T *result, *dk, *dv;       // out (forward) or dq (backward); dk, dv
  int batch, heads, kv_heads, group, q_len, k_len, d, offset, window;
  accum_t<T> scale;

  // Query row i sees key j (kernels/attention_rule.h: causal, optional sliding window).
  __device__ __forceinline__ bool sees(int i, int j) const { return sl::kernels::visible(i, j, offset, window); }

  __device__ __forceinline__ bool key_ok(int b, int j) const {
    return j < k_len && (key_valid == nullptr || key_valid[static_cast<int64_t>(b) * k_len + j] != 0);
  }
};

// Copies rows [row0, row0 + rows) of a [len, d] matrix into a shared tile with row stride `stride`, zero-filling
// rows past len and columns past d, so the compute loops can run over the full D without bounds checks.
template <typename T, int D>
__device__ __forceinline__ void load_tile(T* tile, int stride, int rows, const T* src, int row0, int len, int d) {
  for (int idx = threadIdx.x; idx < rows * D; idx += kThreads) {
    const int r = idx / D, x = idx % D, row = row0 + r;
    tile[r * stride + x] = row < len && x < d ? src[static_cast<int64_t>(row) * d + x] : narrow<T>(0);
  }
}

// out[r] = dot(rows[r], col) for the R rows (stride `row_stride`) of one warp; `col` is this lane's row.
template <typename T, int D, int R>
__device__ __forceinline__ void dot_rows(const T* rows, int row_stride, const T* col, accum_t<T> (&out)[R]) {
#pragma unroll
  for (int r = 0; r < R; ++r) out[r] = 0;
#pragma unroll 8
  for (int x = 0; x < D; ++x) {
    const accum_t<T> c = widen(col[x]);
#pragma unroll
    for (int r = 0; r < R; ++r) out[r] += widen(rows[r * row_stride + x]) * c;
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) attention_forward_kernel(Params<T> p) {
  using Tl = Tiles<T, D>;
  using A = accum_t<T>;
  constexpr int R = Tl::kRows, BQ = Tl::kBlock, BK = Tl::kLanes, C = Tl::kCols, S = Tl::kStride;
  extern __shared__ __align__(16) unsigned char smem[];
  A* p_s = reinterpret_cast<A*>(smem);           // [BQ][BK] probabilities of the current key tile
  T* q_s = reinterpret_cast<T*>(p_s + BQ * BK);  // [BQ][D]
  T* kv_s = q_s + BQ * D;                        // [BK][S] the key tile, then the value tile

  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int bh = blockIdx.x, b = bh / p.heads, hk = bh % p.heads / p.group;
  // Later query tiles see more keys: schedule them first so the short ones fill the tail.
  const int i0 = (gridDim.y - 1 - blockIdx.y) * BQ;
  const int64_t kv_base = (static_cast<int64_t>(b) * p.kv_heads + hk) * p.k_len * p.d;
  const T* q = p.q + static_cast<int64_t>(bh) * p.q_len * p.d;

  load_tile<T, D>(q_s, D, BQ, q, i0, p.q_len, p.d);

  A o[R][C], m[R], l[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    m[r] = -INFINITY;
    l[r] = 0;
#pragma unroll
    for (int c = 0; c < C; ++c) o[r][c] = 0;
  }

  // Only the key tiles some row of this block sees: none beyond the last row's key, none before the first row's
  // window (tiles stay aligned to BK).
  const int key_end = static_cast<int>(sl::kernels::tile_end_key(i0 + BQ, p.offset, p.k_len));
  const int key_begin = static_cast<int>(sl::kernels::tile_first_key(i0, p.offset, p.window)) / BK * BK;
  for (int j0 = key_begin; j0 < key_end; j0 += BK) {
    __syncthreads();  // the previous value tile is consumed
    load_tile<T, D>(kv_s, S, BK, p.k + kv_base, j0, p.k_len, p.d);
    __syncthreads();

    A s[R];
    dot_rows<T, D, R>(q_s + warp * R * D, D, kv_s + lane * S, s);
    const int j = j0 + lane;
    const bool key_ok = p.key_ok(b, j);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int i = i0 + warp * R + r;
      const A x = key_ok && p.sees(i, j) ? s[r] * p.scale : A(-INFINITY);
      const A tile_max = warp_max(x);
      const A m_new = m[r] > tile_max ? m[r] : tile_max;
      A prob = 0;
      if (m_new != A(-INFINITY)) {  // warp-uniform; otherwise nothing is visible yet and nothing changes
        prob = exp_of(x - m_new);
        const A rescale = exp_of(m[r] - m_new);
        l[r] = l[r] * rescale + warp_sum(prob);
#pragma unroll
        for (int c = 0; c < C; ++c) o[r][c] *= rescale;
        m[r] = m_new;
      }
      p_s[(warp * R + r) * BK + lane] = prob;
    }

    __syncthreads();  // every warp is done with the key tile
    load_tile<T, D>(kv_s, S, BK, p.v + kv_base, j0, p.k_len, p.d);
    __syncthreads();

#pragma unroll 4
    for (int c = 0; c < BK; ++c) {
      A vx[C];
#pragma unroll
      for (int t = 0; t < C; ++t) vx[t] = widen(kv_s[c * S + lane + t * kWarpSize]);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const A pr = p_s[(warp * R + r) * BK + c];
#pragma unroll
        for (int t = 0; t < C; ++t) o[r][t] += pr * vx[t];
      }
    }
  }

#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int i = i0 + warp * R + r;
    if (i >= p.q_len) continue;
    const int64_t row = static_cast<int64_t>(bh) * p.q_len + i;
    const bool empty = l[r] == A(0);  // no visible key: z = 0, as TransformerLens's NaN-to-zero pattern gives
    const A inv = empty ? A(0) : A(1) / l[r];
#pragma unroll
    for (int t = 0; t < C; ++t) {
      const int x = lane + t * kWarpSize;
      if (x < p.d) p.result[row * p.d + x] = narrow<T>(o[r][t] * inv);
    }
    if (lane == 0) p.lse[row] = empty ? A(-INFINITY) : m[r] + log_of(l[r]);
  }
}

// dq = scale * sum_j dS[i, j] k[j] with dS = P (dP - delta), P = exp(scale q kᵀ - lse), dP = dout vᵀ and
// delta = rowsum(dout * out). One block per query tile of one head, like the forward.
template <typename T, int D>
__global__ void __launch_bounds__(kThreads) attention_backward_dq_kernel(Params<T> p) {
  using Tl = Tiles<T, D>;
  using A = accum_t<T>;
  constexpr int R = Tl::kRows, BQ = Tl::kBlock, BK = Tl::kLanes, C = Tl::kCols, S = Tl::kStride;
  extern __shared__ __align__(16) unsigned char smem[];
  A* ds_s = reinterpret_cast<A*>(smem);           // [BQ][BK]
  T* q_s = reinterpret_cast<T*>(ds_s + BQ * BK);  // [BQ][D]
  T* do_s = q_s + BQ * D;                         // [BQ][D]
  T* k_s = do_s + BQ * D;                         // [BK][S]
  T* v_s = k_s + BK * S;                          // [BK][S]

  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int bh = blockIdx.x, b = bh / p.heads, hk = bh % p.heads / p.group;
  const int i0 = (gridDim.y - 1 - blockIdx.y) * BQ;
  const int64_t kv_base = (static_cast<int64_t>(b) * p.kv_heads + hk) * p.k_len * p.d;
  const int64_t q_base = static_cast<int64_t>(bh) * p.q_len * p.d;

  load_tile<T, D>(q_s, D, BQ, p.q + q_base, i0, p.q_len, p.d);
  load_tile<T, D>(do_s, D, BQ, p.dout + q_base, i0, p.q_len, p.d);
  __syncthreads();

  A lse[R], delta[R], dq[R][C];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int i = i0 + warp * R + r;
    A sum = 0;
    if (i < p.q_len)
      for (int x = lane; x < p.d; x += kWarpSize)
        sum += widen(do_s[(warp * R + r) * D + x]) * widen(p.out[q_base + static_cast<int64_t>(i) * p.d + x]);
    delta[r] = warp_sum(sum);
    lse[r] = i < p.q_len ? p.lse[static_cast<int64_t>(bh) * p.q_len + i] : A(-INFINITY);
#pragma unroll
    for (int c = 0; c < C; ++c) dq[r][c] = 0;
  }

  const int key_end = static_cast<int>(sl::kernels::tile_end_key(i0 + BQ, p.offset, p.k_len));
  const int key_begin = static_cast<int>(sl::kernels::tile_first_key(i0, p.offset, p.window)) / BK * BK;
  for (int j0 = key_begin; j0 < key_end; j0 += BK) {
    __syncthreads();  // the previous key and value tiles are consumed
    load_tile<T, D>(k_s, S, BK, p.k + kv_base, j0, p.k_len, p.d);
    load_tile<T, D>(v_s, S, BK, p.v + kv_base, j0, p.k_len, p.d);
    __syncthreads();

    A s[R], dp[R];
    dot_rows<T, D, R>(q_s + warp * R * D, D, k_s + lane * S, s);
    dot_rows<T, D, R>(do_s + warp * R * D, D, v_s + lane * S, dp);
    const int j = j0 + lane;
    const bool key_ok = p.key_ok(b, j);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int i = i0 + warp * R + r;
      const bool visible = key_ok && p.sees(i, j) && lse[r] != A(-INFINITY);
      const A prob = visible ? exp_of(s[r] * p.scale - lse[r]) : A(0);
      ds_s[(warp * R + r) * BK + lane] = prob * (dp[r] - delta[r]);
    }
    __syncwarp();  // the warp's own ds rows are complete

#pragma unroll 4
    for (int c = 0; c < BK; ++c) {
      A kx[C];
#pragma unroll
      for (int t = 0; t < C; ++t) kx[t] = widen(k_s[c * S + lane + t * kWarpSize]);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const A g = ds_s[(warp * R + r) * BK + c];
#pragma unroll
        for (int t = 0; t < C; ++t) dq[r][t] += g * kx[t];
      }
    }
  }

#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int i = i0 + warp * R + r;
    if (i >= p.q_len) continue;
#pragma unroll
    for (int t = 0; t < C; ++t) {
      const int x = lane + t * kWarpSize;
      if (x < p.d) p.result[q_base + static_cast<int64_t>(i) * p.d + x] = narrow<T>(dq[r][t] * p.scale);
    }
  }
}

// dv = sum_i P[i, j] dout[i]; dk = scale * sum_i dS[i, j] q[i], summed over the query heads of the kv group.
// One block per key tile of one kv head; each key row has a single writer, so no atomics.
template <typename T, int D>
__global__ void __launch_bounds__(kThreads) attention_backward_dkv_kernel(Params<T> p) {
  using Tl = Tiles<T, D>;
  using A = accum_t<T>;
  constexpr int R = Tl::kRows, BK = Tl::kBlock, BQ = Tl::kLanes, C = Tl::kCols, S = Tl::kStride;
  extern __shared__ __align__(16) unsigned char smem[];
  A* p_s = reinterpret_cast<A*>(smem);            // [BK][BQ] Pᵀ of the current query tile
  A* ds_s = p_s + BK * BQ;                        // [BK][BQ] dSᵀ
  A* lse_s = ds_s + BK * BQ;                      // [BQ]
  A* delta_s = lse_s + BQ;                        // [BQ]
  T* k_s = reinterpret_cast<T*>(delta_s + BQ);    // [BK][D]
  T* v_s = k_s + BK * D;                          // [BK][D]
  T* q_s = v_s + BK * D;                          // [BQ][S]
  T* do_s = q_s + BQ * S;                         // [BQ][S]

  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int bhk = blockIdx.x, b = bhk / p.kv_heads, hk = bhk % p.kv_heads;
  const int j0 = blockIdx.y * BK;  // early keys are seen by the most queries: they go first
  const int64_t kv_base = static_cast<int64_t>(bhk) * p.k_len * p.d;

  load_tile<T, D>(k_s, D, BK, p.k + kv_base, j0, p.k_len, p.d);
  load_tile<T, D>(v_s, D, BK, p.v + kv_base, j0, p.k_len, p.d);

  A dk[R][C], dv[R][C];
  bool key_ok[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    key_ok[r] = p.key_ok(b, j0 + warp * R + r);
#pragma unroll
    for (int c = 0; c < C; ++c) dk[r][c] = dv[r][c] = 0;
  }

  // Query i sees key j only when i >= j - offset: earlier query tiles contribute nothing.
  const int first_tile = max(0, j0 - p.offset) / BQ * BQ;
  for (int h = hk * p.group; h < (hk + 1) * p.group; ++h) {
    const int64_t bh = static_cast<int64_t>(b) * p.heads + h;
    const int64_t q_base = bh * p.q_len * p.d;
    for (int i0 = first_tile; i0 < p.q_len; i0 += BQ) {
      __syncthreads();  // the previous query tile is consumed (and, the first time, k_s and v_s are loaded)
      load_tile<T, D>(q_s, S, BQ, p.q + q_base, i0, p.q_len, p.d);
      load_tile<T, D>(do_s, S, BQ, p.dout + q_base, i0, p.q_len, p.d);
      __syncthreads();
      for (int r = warp; r < BQ; r += kWarps) {
        const int i = i0 + r;
        A sum = 0;
        if (i < p.q_len)
          for (int x = lane; x < p.d; x += kWarpSize)
            sum += widen(do_s[r * S + x]) * widen(p.out[q_base + static_cast<int64_t>(i) * p.d + x]);
        sum = warp_sum(sum);
        if (lane == 0) {
          delta_s[r] = sum;
          lse_s[r] = i < p.q_len ? p.lse[bh * p.q_len + i] : A(-INFINITY);
        }
      }
      __syncthreads();

      A s[R], dp[R];
      dot_rows<T, D, R>(k_s + warp * R * D, D, q_s + lane * S, s);
      dot_rows<T, D, R>(v_s + warp * R * D, D, do_s + lane * S, dp);
      const int i = i0 + lane;
      const A lse = lse_s[lane], delta = delta_s[lane];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const int j = j0 + warp * R + r;
        const bool visible = key_ok[r] && p.sees(i, j) && lse != A(-INFINITY);  // lse = -inf past q_len too
        const A prob = visible ? exp_of(s[r] * p.scale - lse) : A(0);
        p_s[(warp * R + r) * BQ + lane] = prob;
        ds_s[(warp * R + r) * BQ + lane] = prob * (dp[r] - delta);
      }
      __syncwarp();

#pragma unroll 4
      for (int c = 0; c < BQ; ++c) {
        A qx[C], dox[C];
#pragma unroll
        for (int t = 0; t < C; ++t) {
          qx[t] = widen(q_s[c * S + lane + t * kWarpSize]);
          dox[t] = widen(do_s[c * S + lane + t * kWarpSize]);
        }
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const A pr = p_s[(warp * R + r) * BQ + c], g = ds_s[(warp * R + r) * BQ + c];
#pragma unroll
          for (int t = 0; t < C; ++t) {
            dv[r][t] += pr * dox[t];
            dk[r][t] += g * qx[t];
          }
        }
      }
    }
  }

#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int j = j0 + warp * R + r;
    if (j >= p.k_len) continue;
#pragma unroll
    for (int t = 0; t < C; ++t) {
      const int x = lane + t * kWarpSize;
      if (x < p.d) {
        const int64_t at = kv_base + static_cast<int64_t>(j) * p.d + x;
        p.dk[at] = narrow<T>(dk[r][t] * p.scale);
        p.dv[at] = narrow<T>(dv[r][t]);
      }
    }
  }
}

// ---- host side ----

template <typename T>
constexpr const char* type_name() {
  if constexpr (std::is_same_v<T, float>) return "float";
  else if constexpr (std::is_same_v<T, double>) return "double";
  else if constexpr (std::is_same_v<T, __half>) return "half";
  else return "bfloat16";
}

std::string shape_string(const AttentionShape& s) {
  return "batch=" + std::to_string(s.batch) + " heads=" + std::to_string(s.heads) +
         " kv_heads=" + std::to_string(s.kv_heads) + " q_len=" + std::to_string(s.q_len) +
         " k_len=" + std::to_string(s.k_len) + " head_dim=" + std::to_string(s.head_dim);
}

// Calls f(std::integral_constant<int, D>) with head_dim rounded up to a compiled tile width.
template <typename F>
void with_tile_width(int64_t head_dim, F&& f) {
  if (head_dim <= 32) f(std::integral_constant<int, 32>{});
  else if (head_dim <= 64) f(std::integral_constant<int, 64>{});
  else if (head_dim <= 128) f(std::integral_constant<int, 128>{});
  else f(std::integral_constant<int, 256>{});
}

std::string shape_error(const AttentionShape& s) {
  const auto bad = [&](const std::string& why) { return "attention: " + why + " (" + shape_string(s) + ")"; };
  if (s.batch < 0 || s.heads < 1 || s.kv_heads < 1 || s.q_len < 0 || s.k_len < 0 || s.head_dim < 0)
    return bad("negative size or no heads");
  if (s.heads % s.kv_heads != 0) return bad("heads must be a multiple of kv_heads");
  if (s.k_len < s.q_len) return bad("k_len must be at least q_len (queries are the last k_len positions)");
  if (s.window < 0) return bad("window must be >= 0 (0: none)");
  if (s.head_dim > kMaxAttentionHeadDim)
    return bad("head_dim above " + std::to_string(kMaxAttentionHeadDim) + " is not supported");
  // Block indices: x over batch * heads, y over row tiles of at least 8 rows (grid y is at most 65535).
  if (s.batch * s.heads > INT_MAX || s.k_len > 65535LL * kWarps * 2)
    return bad("too large for the launch grid");
  return {};
}

// Empty when `bytes` of dynamic shared memory fit a block on `device`.
std::string shared_memory_error(size_t bytes, int device) {
  int limit = 0;
  const cudaError_t e = cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (e != cudaSuccess)
    return std::string("attention: cannot query shared memory of device ") + std::to_string(device) + ": " +
           cudaGetErrorString(e);
  if (bytes > static_cast<size_t>(limit))
    return "attention: needs " + std::to_string(bytes) + " bytes of shared memory per block, device " +
           std::to_string(device) + " allows " + std::to_string(limit);
  return {};
}

std::string kernel_name(const char* kernel, const char* type, int width) {
  return std::string(kernel) + "<" + type + ", " + std::to_string(width) + ">";
}

[[noreturn]] void throw_cuda(const std::string& what, cudaError_t e) {
  throw std::runtime_error(what + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

// Launches kernel<<<grid, kThreads, bytes, stream>>>(p) after checking that the device can hold the tile and
// opting in to more than 48 KiB of shared memory where needed.
template <typename T>
void launch(void (*kernel)(Params<T>), const std::string& name, dim3 grid, size_t bytes, const Params<T>& p,
            cudaStream_t stream) {
  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e != cudaSuccess) throw_cuda(name + ": cudaGetDevice", e);
  if (auto why = shared_memory_error(bytes, device); !why.empty()) throw std::invalid_argument(name + ": " + why);
  if (bytes > kDefaultSharedBytes) {
    e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
    if (e != cudaSuccess) throw_cuda(name + ": cudaFuncSetAttribute", e);
  }
  kernel<<<grid, kThreads, bytes, stream>>>(p);
  e = cudaGetLastError();
  if (e != cudaSuccess) throw_cuda(name + " launch", e);
}

template <typename T>
Params<T> make_params(const AttentionShape& s, double scale) {
  if (auto why = shape_error(s); !why.empty()) throw std::invalid_argument(why);
  Params<T> p{};
  p.batch = static_cast<int>(s.batch);
  p.heads = static_cast<int>(s.heads);
  p.kv_heads = static_cast<int>(s.kv_heads);
  p.group = static_cast<int>(s.heads / s.kv_heads);
  p.q_len = static_cast<int>(s.q_len);
  p.k_len = static_cast<int>(s.k_len);
  p.d = static_cast<int>(s.head_dim);
  p.offset = static_cast<int>(s.k_len - s.q_len);
  p.window = static_cast<int>(s.window);
  p.scale = static_cast<accum_t<T>>(scale);
  return p;
}

unsigned tiles(int64_t n, int per_tile) { return static_cast<unsigned>((n + per_tile - 1) / per_tile); }

}  // namespace

template <typename T>
std::string attention_unsupported_reason(const AttentionShape& shape, int device) {
  if (auto why = shape_error(shape); !why.empty()) return why;
  std::string why;
  with_tile_width(shape.head_dim, [&](auto width) {
    using Tl = Tiles<T, decltype(width)::value>;
    size_t bytes = Tl::forward_bytes();
    if (Tl::dq_bytes() > bytes) bytes = Tl::dq_bytes();
    if (Tl::dkv_bytes() > bytes) bytes = Tl::dkv_bytes();
    why = shared_memory_error(bytes, device);
  });
  return why;
}

template <typename T>
void attention_forward(const AttentionShape& shape, const T* q, const T* k, const T* v, const uint8_t* key_valid,
                       double scale, T* out, accum_t<T>* lse, cudaStream_t stream) {
  Params<T> p = make_params<T>(shape, scale);
  if (shape.batch == 0 || shape.q_len == 0) return;
  p.q = q;
  p.k = k;
  p.v = v;
  p.key_valid = key_valid;
  p.result = out;
  p.lse = lse;
  with_tile_width(shape.head_dim, [&](auto width) {
    constexpr int D = decltype(width)::value;
    using Tl = Tiles<T, D>;
    const dim3 grid(static_cast<unsigned>(shape.batch * shape.heads), tiles(shape.q_len, Tl::kBlock));
    launch<T>(attention_forward_kernel<T, D>, kernel_name("attention_forward_kernel", type_name<T>(), D), grid,
              Tl::forward_bytes(), p, stream);
  });
}

template <typename T>
void attention_backward(const AttentionShape& shape, const T* q, const T* k, const T* v, const uint8_t* key_valid,
                        const T* out, const accum_t<T>* lse, const T* dout, double scale, T* dq, T* dk, T* dv,
                        cudaStream_t stream) {
  Params<T> p = make_params<T>(shape, scale);
  if (shape.batch == 0) return;
  p.q = q;
  p.k = k;
  p.v = v;
  p.key_valid = key_valid;
  p.out = out;
  p.dout = dout;
  p.lse = const_cast<accum_t<T>*>(lse);  // the backward kernels only read it
  p.result = dq;
  p.dk = dk;
  p.dv = dv;
  with_tile_width(shape.head_dim, [&](auto width) {
    constexpr int D = decltype(width)::value;
    using Tl = Tiles<T, D>;
    if (shape.q_len > 0) {
      const dim3 grid(static_cast<unsigned>(shape.batch * shape.heads), tiles(shape.q_len, Tl::kBlock));
      launch<T>(attention_backward_dq_kernel<T, D>, kernel_name("attention_backward_dq_kernel", type_name<T>(), D),
                grid, Tl::dq_bytes(), p, stream);
    }
    if (shape.k_len > 0) {  // also with q_len == 0, where dk and dv are zero
      const dim3 grid(static_cast<unsigned>(shape.batch * shape.kv_heads), tiles(shape.k_len, Tl::kBlock));
      launch<T>(attention_backward_dkv_kernel<T, D>, kernel_name("attention_backward_dkv_kernel", type_name<T>(), D),
                grid, Tl::dkv_bytes(), p, stream);
    }
  });
}

#define SL_CUDA_INSTANTIATE_ATTENTION(T)                                                                             \
  template std::string attention_unsupported_reason<T>(const AttentionShape&, int);                                  \
  template void attention_forward<T>(const AttentionShape&, const T*, const T*, const T*, const uint8_t*, double,  \
                                     T*, accum_t<T>*, cudaStream_t);                                                 \
  template void attention_backward<T>(const AttentionShape&, const T*, const T*, const T*, const uint8_t*,         \
                                      const T*, const accum_t<T>*, const T*, double, T*, T*, T*, cudaStream_t);
SL_CUDA_INSTANTIATE_ATTENTION(float)
SL_CUDA_INSTANTIATE_ATTENTION(double)
SL_CUDA_INSTANTIATE_ATTENTION(__half)
SL_CUDA_INSTANTIATE_ATTENTION(__nv_bfloat16)
#undef SL_CUDA_INSTANTIATE_ATTENTION

}  // namespace sl::cuda
