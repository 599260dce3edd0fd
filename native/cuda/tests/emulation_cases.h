// The cases of the CUDA kernels whose arithmetic also runs on the host (rotary_element.cuh, layer_norm_rows.cuh), with
// the helpers they share with attention_cuda_test.cu: each case runs the row or element functions on the host against
// the definition in double, and where compiled by nvcc and asked to (on_device), the kernels against the host bit for
// bit. host_emulation_test.cpp runs the host half with a plain C++ compiler (only CUDA's fp16/bf16 headers needed), so
// the test suite checks it on machines without nvcc or a GPU.
#pragma once

#include "kernels_cuda.cuh"
#include "layer_norm_rows.cuh"

#ifdef __CUDACC__
#include <cuda_runtime.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

namespace sl_cuda_test {

using sl::cuda::RotaryShape;

inline int failures = 0;

#ifdef __CUDACC__
inline void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "CUDA error in %s: %s\n", what, cudaGetErrorString(e));
    std::exit(2);
  }
}

#endif

inline double to_double(float x) { return x; }
inline double to_double(double x) { return x; }
inline double to_double(__half x) { return __half2float(x); }
inline double to_double(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
T from_double(double x) {
  if constexpr (std::is_same_v<T, __half>) return __float2half(static_cast<float>(x));
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16(static_cast<float>(x));
  else return static_cast<T>(x);
}

template <typename T>
const char* name_of() {
  if constexpr (std::is_same_v<T, float>) return "float32";
  else if constexpr (std::is_same_v<T, double>) return "float64";
  else if constexpr (std::is_same_v<T, __half>) return "float16";
  else return "bfloat16";
}

// Standard normal samples from a fixed seed (splitmix64 + Box-Muller). Not <random>: nvcc 11.8's front end
// cannot parse libstdc++ 12's <random> (unsigned __int128) when clang is the host compiler.
class Normal {
 public:
  explicit Normal(uint64_t seed) : state_(seed) {}
  double operator()() {
    const double u1 = (static_cast<double>(next() >> 11) + 0.5) / 9007199254740992.0;  // (0, 1)
    const double u2 = static_cast<double>(next() >> 11) / 9007199254740992.0;
    return std::sqrt(-2 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }

 private:
  uint64_t next() {
    uint64_t z = state_ += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  uint64_t state_;
};

#ifdef __CUDACC__
// A device copy of a host vector, freed on scope exit.
template <typename T>
struct DeviceArray {
  T* ptr = nullptr;
  size_t n = 0;
  explicit DeviceArray(size_t count) : n(count) {
    check_cuda(cudaMalloc(reinterpret_cast<void**>(&ptr), std::max<size_t>(n, 1) * sizeof(T)), "cudaMalloc");
    // NaN bytes: an element the kernel forgets to write shows up as a mismatch.
    check_cuda(cudaMemset(ptr, 0xff, std::max<size_t>(n, 1) * sizeof(T)), "cudaMemset");
  }
  explicit DeviceArray(const std::vector<T>& host) : DeviceArray(host.size()) {
    check_cuda(cudaMemcpy(ptr, host.data(), n * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy to device");
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() { cudaFree(ptr); }
  std::vector<T> to_host() const {
    std::vector<T> host(n);
    check_cuda(cudaMemcpy(host.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost), "cudaMemcpy to host");
    return host;
  }
};
#endif  // __CUDACC__

// Machine epsilon of T (2^-52, 2^-23, 2^-10, 2^-7).
template <typename T>
double epsilon_of() {
  if constexpr (std::is_same_v<T, double>) return std::ldexp(1.0, -52);
  else if constexpr (std::is_same_v<T, float>) return std::ldexp(1.0, -23);
  else if constexpr (std::is_same_v<T, __half>) return std::ldexp(1.0, -10);
  else return std::ldexp(1.0, -7);
}

enum class XLayout { Contiguous, HeadsFirst, ExpandedBatch };

// x [b, p, h, d] stored contiguously, as the transposed view of a [b, h, p, d] tensor (what the QKV split hands over),
// or expanded over the batch (stride 0, as an expanded gradient is); the table [rows, 2, half] of cos and sin values.
// Every output element against the rotation in double: rotated features within 2 eps (|a c| + |b s|) (two rounded
// products and one rounded sum, each within eps / 2 of its value), the others exact. With a device, the kernel must
// equal the host's run of the same element function bit for bit.
template <typename T>
void rotary_case(const char* name, int64_t batch, int64_t pos, int64_t heads, int64_t d, int64_t half, bool per_row,
                 XLayout layout, bool inverse, bool on_device) {
  RotaryShape s;
  s.batch = batch, s.pos = pos, s.heads = heads, s.head_dim = d, s.half = half;
  s.table_rows = per_row ? batch * pos : pos;
  const int64_t stored_batch = layout == XLayout::ExpandedBatch ? 1 : batch;
  std::vector<T> x(static_cast<size_t>(stored_batch * pos * heads * d));
  Normal normal(1000 + static_cast<uint64_t>(batch * 131 + pos * 17 + d));
  for (T& v : x) v = from_double<T>(normal());
  if (layout == XLayout::Contiguous) { s.stride[0] = pos * heads * d; s.stride[1] = heads * d; s.stride[2] = d; }
  if (layout == XLayout::HeadsFirst) { s.stride[0] = heads * pos * d; s.stride[1] = d; s.stride[2] = pos * d; }
  if (layout == XLayout::ExpandedBatch) { s.stride[0] = 0; s.stride[1] = heads * d; s.stride[2] = d; }
  s.stride[3] = 1;
  std::vector<T> table(static_cast<size_t>(s.table_rows * 2 * half));
  for (int64_t r = 0; r < s.table_rows; ++r)
    for (int64_t i = 0; i < half; ++i) {
      const double angle = static_cast<double>(r % pos + r / pos) * std::pow(10000.0, -2.0 * static_cast<double>(i) / (2.0 * half));
      table[static_cast<size_t>(r * 2 * half + i)] = from_double<T>(std::cos(angle));
      table[static_cast<size_t>(r * 2 * half + half + i)] = from_double<T>(std::sin(angle));
    }
  const int64_t n = batch * pos * heads * d;
  std::vector<T> host(static_cast<size_t>(n));
  for (int64_t idx = 0; idx < n; ++idx) host[static_cast<size_t>(idx)] = sl::cuda::rotary_element(x.data(), table.data(), s, inverse, idx);
  const double eps = epsilon_of<T>();
  int64_t wrong = 0;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t p = 0; p < pos; ++p)
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t j = 0; j < d; ++j) {
          const T* xr = x.data() + b * s.stride[0] + p * s.stride[1] + h * s.stride[2];
          const double got = to_double(host[static_cast<size_t>(((b * pos + p) * heads + h) * d + j)]);
          if (j >= 2 * half) {
            if (got != to_double(xr[j])) ++wrong;
            continue;
          }
          const int64_t row = per_row ? b * pos + p : p, i = j < half ? j : j - half;
          const double c = to_double(table[static_cast<size_t>(row * 2 * half + i)]);
          const double sn = to_double(table[static_cast<size_t>(row * 2 * half + half + i)]) * (inverse ? -1 : 1);
          const double a = to_double(xr[i]), bb = to_double(xr[i + half]);
          // first half: a c - b s; second half: b c + a s. The bound sums the magnitudes of the two products.
          const double p1 = j < half ? a * c : bb * c, p2 = j < half ? -bb * sn : a * sn;
          const double want = p1 + p2;
          const double bound = 2 * eps * (std::fabs(p1) + std::fabs(p2)) + 1e-300;
          if (!(std::fabs(got - want) <= bound)) ++wrong;
        }
  int64_t device_differs = -1;  // -1: not run on a device
#ifdef __CUDACC__
  if (on_device) {
    DeviceArray<T> x_dev(x), table_dev(table), out_dev(static_cast<size_t>(n));
    sl::cuda::rotary_forward<T>(s, x_dev.ptr, table_dev.ptr, inverse, out_dev.ptr, nullptr);
    check_cuda(cudaDeviceSynchronize(), "rotary kernel");
    const std::vector<T> device = out_dev.to_host();
    device_differs = 0;
    for (int64_t idx = 0; idx < n; ++idx)
      if (to_double(device[static_cast<size_t>(idx)]) != to_double(host[static_cast<size_t>(idx)])) ++device_differs;
  }
#else
  (void)on_device;
#endif
  const bool ok = wrong == 0 && device_differs <= 0;
  if (!ok) ++failures;
  std::printf("%-4s rotary %-8s %-34s: %lld outside the bound on the host; %s\n", ok ? "ok" : "FAIL", name_of<T>(),
              name, static_cast<long long>(wrong),
              device_differs < 0 ? "device not run"
                                 : (std::to_string(device_differs) + " device elements differ from the host").c_str());
}

// gamma(n) = n u / (1 - n u), u the unit roundoff of the accumulator: the classic bound on the relative error of an
// n-term sum or product chain (Higham, Accuracy and Stability of Numerical Algorithms, 3.1).
inline double gamma_n(int64_t n, double u) { return static_cast<double>(n) * u / (1 - static_cast<double>(n) * u); }

template <typename T>
using rows_acc = sl::cuda::rows::acc<T>;

template <typename T>
double accumulator_unit() { return epsilon_of<rows_acc<T>>() / 2; }

// The four LayerNorm row functions and RMSNorm's scale run on the host (layer_norm_rows.cuh's emulation of the warp) against their
// definitions in double on the same T inputs, each output within a bound derived from the operations it takes
// (gamma_n of the accumulator for the sums, plus one rounding to T for the stored value); with a device, each
// kernel must equal the emulation bit for bit.
template <typename T>
void layer_norm_case(int64_t rows, int64_t d, bool on_device) {
  const double u = accumulator_unit<T>(), ut = epsilon_of<T>() / 2, eps = 1e-5;
  Normal normal(77 + static_cast<uint64_t>(rows * 1009 + d));
  const auto sample = [&](size_t n, double offset, double spread) {
    std::vector<T> v(n);
    for (T& e : v) e = from_double<T>(offset + spread * normal());
    return v;
  };
  const size_t n = static_cast<size_t>(rows * d);
  // An offset in x makes the centring cancel, as real activations do.
  const std::vector<T> x = sample(n, 3.0, 1.5), w = sample(static_cast<size_t>(d), 1.0, 0.3),
                       b = sample(static_cast<size_t>(d), 0.0, 0.5), gy = sample(n, 0.0, 1.0), gc_in = sample(n, 0.0, 1.0),
                       gs_in = sample(static_cast<size_t>(rows), 0.0, 1.0);
  std::vector<T> centred(n), scale(static_cast<size_t>(rows)), y(n), gc(n), gs(static_cast<size_t>(rows)), dx(n),
      rms(static_cast<size_t>(rows));
  sl::cuda::rows::centre_scale_host(x.data(), rows, d, eps, centred.data(), scale.data());
  sl::cuda::rows::rms_scale_host(x.data(), rows, d, eps, rms.data());
  sl::cuda::rows::apply_scale_host(centred.data(), scale.data(), w.data(), b.data(), rows, d, y.data());
  sl::cuda::rows::apply_scale_backward_host(gy.data(), centred.data(), scale.data(), w.data(), rows, d, gc.data(), gs.data());
  sl::cuda::rows::centre_scale_backward_host(centred.data(), scale.data(), gc_in.data(), gs_in.data(), rows, d, dx.data());

  int64_t outside = 0;
  const auto check = [&](double got, double want, double bound) {
    if (!(std::fabs(got - want) <= bound + 1e-300)) ++outside;
  };
  const auto X = [&](const std::vector<T>& v, int64_t i) { return to_double(v[static_cast<size_t>(i)]); };
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t o = r * d;
    double sum = 0, mag = 0;
    for (int64_t j = 0; j < d; ++j) sum += X(x, o + j), mag += std::fabs(X(x, o + j));
    const double mean = sum / d, mean_err = gamma_n(d + 1, u) * mag / d;
    double sumsq_true = 0, sumsq_err = 0, sumsq_got = 0;
    for (int64_t j = 0; j < d; ++j) {
      const double c = X(x, o + j) - mean;
      const double bound_c = mean_err + gamma_n(2, u) * (std::fabs(c) + mean_err) + ut * (std::fabs(c) + mean_err);
      check(X(centred, o + j), c, bound_c);
      sumsq_true += c * c;
      sumsq_err += 2 * std::fabs(c) * bound_c + bound_c * bound_c;
      sumsq_got += X(centred, o + j) * X(centred, o + j);
    }
    const double s_true = std::sqrt(sumsq_true / d + eps);
    // RMSNorm's scale: d squares summed (gamma_{d+1} with the division), plus the eps add and the sqrt's rounding.
    double x_sq = 0;
    for (int64_t j = 0; j < d; ++j) x_sq += X(x, o + j) * X(x, o + j);
    const double rms_true = std::sqrt(x_sq / d + eps);
    check(X(rms, r), rms_true, 0.5 * gamma_n(d + 1, u) * x_sq / d / rms_true + gamma_n(2, u) * rms_true + ut * rms_true);
    sumsq_err += gamma_n(d + 1, u) * sumsq_got;
    check(X(scale, r), s_true, 0.5 * sumsq_err / d / s_true + gamma_n(3, u) * s_true + ut * s_true);
    // The later steps take the emulation's centred and scale as their inputs (each step is checked on its own).
    const double s = X(scale, r), inv = 1 / s;
    double dot = 0, dot_mag = 0, gc_sum = 0, gc_mag = 0;
    for (int64_t j = 0; j < d; ++j) {
      const double c = X(centred, o + j), wj = X(w, j), bj = X(b, j);
      const double yj = c * inv * wj + bj;
      check(X(y, o + j), yj, gamma_n(4, u) * (std::fabs(c * inv * wj) + std::fabs(bj)) + ut * std::fabs(yj));
      const double g = X(gy, o + j) * wj;
      check(X(gc, o + j), g * inv, gamma_n(3, u) * std::fabs(g * inv) + ut * std::fabs(g * inv));
      dot += g * c, dot_mag += std::fabs(g * c);
      gc_sum += X(gc_in, o + j), gc_mag += std::fabs(X(gc_in, o + j));
    }
    const double gs_true = -dot * inv * inv;
    check(X(gs, r), gs_true, gamma_n(d + 4, u) * dot_mag * inv * inv + ut * std::fabs(gs_true));
    const double k = X(gs_in, r) / (d * s), mean_gc = gc_sum / d;
    for (int64_t j = 0; j < d; ++j) {
      const double c = X(centred, o + j), g = X(gc_in, o + j);
      const double want = (g - mean_gc) + k * c;
      const double bound = gamma_n(d + 4, u) * (gc_mag / d + std::fabs(g) + std::fabs(k * c)) + ut * std::fabs(want);
      check(X(dx, o + j), want, bound);
    }
  }

  int64_t device_differs = -1;
#ifdef __CUDACC__
  if (on_device) {
    const sl::cuda::RowsShape shape{rows, d};
    DeviceArray<T> x_d(x), w_d(w), b_d(b), gy_d(gy), gc_in_d(gc_in), gs_in_d(gs_in), c_d(n), s_d(scale.size()),
        y_d(n), gc_d(n), gs_d(gs.size()), dx_d(n);
    sl::cuda::layer_norm_centre_scale<T>(shape, x_d.ptr, eps, c_d.ptr, s_d.ptr, nullptr);
    DeviceArray<T> rms_d(rms.size());
    sl::cuda::rms_norm_scale<T>(shape, x_d.ptr, eps, rms_d.ptr, nullptr);
    // The later kernels read the host's centred and scale, so each is compared on the same inputs.
    DeviceArray<T> c_host_d(centred), s_host_d(scale);
    sl::cuda::layer_norm_apply_scale<T>(shape, c_host_d.ptr, s_host_d.ptr, w_d.ptr, b_d.ptr, y_d.ptr, nullptr);
    sl::cuda::layer_norm_apply_scale_backward<T>(shape, gy_d.ptr, c_host_d.ptr, s_host_d.ptr, w_d.ptr, gc_d.ptr, gs_d.ptr, nullptr);
    sl::cuda::layer_norm_centre_scale_backward<T>(shape, c_host_d.ptr, s_host_d.ptr, gc_in_d.ptr, gs_in_d.ptr, dx_d.ptr, nullptr);
    check_cuda(cudaDeviceSynchronize(), "layer norm kernels");
    device_differs = 0;
    const auto differ = [&](const std::vector<T>& host, const DeviceArray<T>& dev) {
      const std::vector<T> got = dev.to_host();
      for (size_t i = 0; i < host.size(); ++i)
        if (std::memcmp(&got[i], &host[i], sizeof(T)) != 0) ++device_differs;
    };
    differ(rms, rms_d);
    differ(centred, c_d), differ(scale, s_d), differ(y, y_d), differ(gc, gc_d), differ(gs, gs_d), differ(dx, dx_d);
  }
#else
  (void)on_device;
#endif
  const bool ok = outside == 0 && device_differs <= 0;
  if (!ok) ++failures;
  std::printf("%-4s layer norm %-8s rows=%lld d=%lld: %lld outputs outside their bound on the host; %s\n", ok ? "ok" : "FAIL",
              name_of<T>(), static_cast<long long>(rows), static_cast<long long>(d), static_cast<long long>(outside),
              device_differs < 0 ? "device not run"
                                 : (std::to_string(device_differs) + " device values differ from the host").c_str());
}

inline void layer_norm_cases(bool on_device) {
  const int64_t shapes[][2] = {{1, 1}, {5, 7}, {9, 32}, {3, 33}, {6, 768}, {2, 2049}};
  for (const auto& sh : shapes) {
    layer_norm_case<double>(sh[0], sh[1], on_device);
    layer_norm_case<float>(sh[0], sh[1], on_device);
  }
  layer_norm_case<__half>(5, 768, on_device);
  layer_norm_case<__nv_bfloat16>(9, 64, on_device);
}

inline void rotary_cases(bool on_device) {
  for (bool inverse : {false, true}) {
    rotary_case<double>("b2 p7 h3 d8 full, per position", 2, 7, 3, 8, 4, false, XLayout::Contiguous, inverse, on_device);
    rotary_case<float>("b2 p7 h3 d8 full, per position", 2, 7, 3, 8, 4, false, XLayout::Contiguous, inverse, on_device);
  }
  rotary_case<float>("b3 p5 h2 d64 rot 16 (Pythia), per row", 3, 5, 2, 64, 8, true, XLayout::Contiguous, false, on_device);
  rotary_case<double>("heads-first storage, rot 32 of 48", 2, 9, 4, 48, 16, false, XLayout::HeadsFirst, false, on_device);
  rotary_case<float>("expanded batch (stride 0), per row", 3, 4, 2, 16, 8, true, XLayout::ExpandedBatch, true, on_device);
  rotary_case<__half>("b2 p6 h2 d32, heads-first", 2, 6, 2, 32, 16, false, XLayout::HeadsFirst, false, on_device);
  rotary_case<__nv_bfloat16>("b2 p6 h2 d32 rot 8, per row", 2, 6, 2, 32, 4, true, XLayout::Contiguous, true, on_device);
  rotary_case<float>("one token", 1, 1, 1, 2, 1, false, XLayout::Contiguous, false, on_device);
}

}  // namespace sl_cuda_test
