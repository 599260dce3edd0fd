// The two LayerNorm steps of native/src/kernels/layer_norm.h (centre + scale, then apply the scale), RMSNorm's scale,
// and their backwards as row functions, one warp (32 lanes) per row, written once for the CUDA kernels (layer_norm_cuda.cu) and
// for the host: each step is split into per-lane phases around warp sums, and the host emulation below runs the same
// phases lane by lane and combines the partial sums in the order of the device's xor butterfly (__shfl_xor_sync), so
// it computes what the kernel computes bit for bit. The standalone test checks the emulation against the definition in
// double on any machine (no GPU needed) and, with a GPU, the kernels against the emulation exactly.
//
// Every operation is rounded on its own (exact_arith.cuh; fma where a product is accumulated), so neither compiler
// can contract differently. Half types load into float and accumulate there; each stored value is rounded once to T.
#pragma once

#include "exact_arith.cuh"

#include <cstdint>

#ifdef __CUDACC__
#define SL_ROW_FN __host__ __device__ inline
#else
#define SL_ROW_FN inline
#endif

namespace sl::cuda::rows {

using namespace sl::cuda::exact;

constexpr int kLanes = 32;

// ---- per-lane phases (lane in [0, 32), elements j = lane, lane + 32, ...) ----

// Sum of a row's elements on one lane's stride.
template <typename T>
SL_ROW_FN acc<T> lane_sum(const T* row, int64_t d, int lane) {
  acc<T> s = 0;
  for (int64_t j = lane; j < d; j += kLanes) s = add(s, load(row[j]));
  return s;
}

// Centre + scale, phase 2: centred[j] = x[j] - mean (rounded to T); returns the lane's sum of the stored centred
// values squared.
template <typename T>
SL_ROW_FN acc<T> centre_lane(const T* x, int64_t d, acc<T> mean, T* centred, int lane) {
  acc<T> sq = 0;
  for (int64_t j = lane; j < d; j += kLanes) {
    const T c = store<T>(sub(load(x[j]), mean));
    centred[j] = c;
    sq = fma(load(c), load(c), sq);
  }
  return sq;
}

// RMSNorm's scale: the lane's sum of x[j]^2 (the row statistic is then scale_of, with no centring).
template <typename T>
SL_ROW_FN acc<T> square_sum_lane(const T* x, int64_t d, int lane) {
  acc<T> sq = 0;
  for (int64_t j = lane; j < d; j += kLanes) sq = fma(load(x[j]), load(x[j]), sq);
  return sq;
}

// Centre + scale backward (and RMSNorm's scale backward, with the input as `centred` and no gc): dx[j] = (gc[j] - mean(gc)) + k c[j], k = gs / (d s) (gc or gs may be absent: null).
template <typename T>
SL_ROW_FN void centre_backward_lane(const T* centred, const T* gc, acc<T> mean_gc, acc<T> k, int64_t d, T* dx, int lane) {
  for (int64_t j = lane; j < d; j += kLanes) {
    const acc<T> from_scale = mul(k, load(centred[j]));
    dx[j] = store<T>(gc != nullptr ? add(sub(load(gc[j]), mean_gc), from_scale) : from_scale);
  }
}

// Apply scale: y[j] = c[j] (1 / s) w[j] + b[j] (w, b may be null: 1 and 0).
template <typename T>
SL_ROW_FN void apply_lane(const T* centred, acc<T> inv, const T* w, const T* b, int64_t d, T* y, int lane) {
  for (int64_t j = lane; j < d; j += kLanes) {
    acc<T> v = mul(load(centred[j]), inv);
    if (w != nullptr) v = mul(v, load(w[j]));
    if (b != nullptr) v = add(v, load(b[j]));
    y[j] = store<T>(v);
  }
}

// Apply scale backward, per lane: gc[j] = gy[j] w[j] (1 / s); returns the lane's sum of gy[j] w[j] c[j].
template <typename T>
SL_ROW_FN acc<T> apply_backward_lane(const T* gy, const T* w, const T* centred, acc<T> inv, int64_t d, T* gc, int lane) {
  acc<T> dot = 0;
  for (int64_t j = lane; j < d; j += kLanes) {
    const acc<T> gw = w != nullptr ? mul(load(gy[j]), load(w[j])) : load(gy[j]);
    gc[j] = store<T>(mul(gw, inv));
    dot = fma(gw, load(centred[j]), dot);
  }
  return dot;
}

// The row statistics from the warp sums.
template <typename A>
SL_ROW_FN A mean_of(A total, int64_t d) { return div(total, static_cast<A>(d)); }
template <typename A>
SL_ROW_FN A scale_of(A total_sq, int64_t d, double eps) { return sqrt_rn(add(div(total_sq, static_cast<A>(d)), static_cast<A>(eps))); }
template <typename A>
SL_ROW_FN A scale_grad_factor(A gs, A s, int64_t d) { return div(gs, mul(static_cast<A>(d), s)); }
template <typename A>
SL_ROW_FN A minus_dot_over_s2(A dot, A inv) { return -mul(mul(dot, inv), inv); }

// ---- host emulation of the warp: the device's butterfly, lane by lane ----

// The value every lane holds after `for (o = 16; o > 0; o /= 2) v += shfl_xor(v, o)`.
template <typename A>
inline A butterfly(A (&v)[kLanes]) {
  for (int o = kLanes / 2; o > 0; o /= 2) {
    A next[kLanes];
    for (int l = 0; l < kLanes; ++l) next[l] = add(v[l], v[l ^ o]);
    for (int l = 0; l < kLanes; ++l) v[l] = next[l];
  }
  return v[0];
}

template <typename T>
void centre_scale_host(const T* x, int64_t rows, int64_t d, double eps, T* centred, T* scale) {
  using A = acc<T>;
  for (int64_t r = 0; r < rows; ++r) {
    A part[kLanes];
    for (int l = 0; l < kLanes; ++l) part[l] = lane_sum(x + r * d, d, l);
    const A mean = mean_of(butterfly(part), d);
    for (int l = 0; l < kLanes; ++l) part[l] = centre_lane(x + r * d, d, mean, centred + r * d, l);
    scale[r] = store<T>(scale_of(butterfly(part), d, eps));
  }
}

template <typename T>
void rms_scale_host(const T* x, int64_t rows, int64_t d, double eps, T* scale) {
  using A = acc<T>;
  for (int64_t r = 0; r < rows; ++r) {
    A part[kLanes];
    for (int l = 0; l < kLanes; ++l) part[l] = square_sum_lane(x + r * d, d, l);
    scale[r] = store<T>(scale_of(butterfly(part), d, eps));
  }
}

template <typename T>
void centre_scale_backward_host(const T* centred, const T* scale, const T* gc, const T* gs, int64_t rows, int64_t d, T* dx) {
  using A = acc<T>;
  for (int64_t r = 0; r < rows; ++r) {
    A mean_gc = 0;
    if (gc != nullptr) {
      A part[kLanes];
      for (int l = 0; l < kLanes; ++l) part[l] = lane_sum(gc + r * d, d, l);
      mean_gc = mean_of(butterfly(part), d);
    }
    const A k = gs != nullptr ? scale_grad_factor(load(gs[r]), load(scale[r]), d) : A(0);
    for (int l = 0; l < kLanes; ++l)
      centre_backward_lane(centred + r * d, gc != nullptr ? gc + r * d : nullptr, mean_gc, k, d, dx + r * d, l);
  }
}

template <typename T>
void apply_scale_host(const T* centred, const T* scale, const T* w, const T* b, int64_t rows, int64_t d, T* y) {
  using A = acc<T>;
  for (int64_t r = 0; r < rows; ++r) {
    const A inv = div(A(1), load(scale[r]));
    for (int l = 0; l < kLanes; ++l) apply_lane(centred + r * d, inv, w, b, d, y + r * d, l);
  }
}

template <typename T>
void apply_scale_backward_host(const T* gy, const T* centred, const T* scale, const T* w, int64_t rows, int64_t d, T* gc, T* gs) {
  using A = acc<T>;
  for (int64_t r = 0; r < rows; ++r) {
    const A inv = div(A(1), load(scale[r]));
    A part[kLanes];
    for (int l = 0; l < kLanes; ++l) part[l] = apply_backward_lane(gy + r * d, w, centred + r * d, inv, d, gc + r * d, l);
    gs[r] = store<T>(minus_dot_over_s2(butterfly(part), inv));
  }
}

}  // namespace sl::cuda::rows
