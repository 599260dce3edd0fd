// Arithmetic with one rounding per operation, the same on the device and the host, for the CUDA kernels whose
// arithmetic also runs on the host (rotary_element.cuh, layer_norm_rows.cuh): explicit _rn intrinsics on the device
// (which neither fast-math flags nor FMA contraction change), plain operators on the host (x86-64 has no FMA to
// contract into unless asked), and fma only where written. Half types load into float and round once when stored.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <type_traits>

#ifdef __CUDACC__
#define SL_EXACT_FN __host__ __device__ inline
#else
#define SL_EXACT_FN inline
#endif

namespace sl::cuda::exact {

// Accumulator type: float for the half types, T otherwise.
template <typename T>
struct Acc {
  using type = T;
};
template <>
struct Acc<__half> {
  using type = float;
};
template <>
struct Acc<__nv_bfloat16> {
  using type = float;
};
template <typename T>
using acc = typename Acc<T>::type;

template <typename T>
SL_EXACT_FN acc<T> load(T v) {
  if constexpr (std::is_same_v<T, __half>) return __half2float(v);
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __bfloat162float(v);
  else return v;
}

template <typename T>
SL_EXACT_FN T store(acc<T> v) {
  if constexpr (std::is_same_v<T, __half>) return __float2half_rn(v);
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16_rn(v);
  else return v;
}

// One rounding per operation, the same on both sides.
template <typename A>
SL_EXACT_FN A add(A a, A b) {
#ifdef __CUDA_ARCH__
  if constexpr (sizeof(A) == 8) return __dadd_rn(a, b);
  else return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
template <typename A>
SL_EXACT_FN A sub(A a, A b) {
#ifdef __CUDA_ARCH__
  if constexpr (sizeof(A) == 8) return __dsub_rn(a, b);
  else return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
template <typename A>
SL_EXACT_FN A mul(A a, A b) {
#ifdef __CUDA_ARCH__
  if constexpr (sizeof(A) == 8) return __dmul_rn(a, b);
  else return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
template <typename A>
SL_EXACT_FN A div(A a, A b) {
#ifdef __CUDA_ARCH__
  if constexpr (sizeof(A) == 8) return __ddiv_rn(a, b);
  else return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
template <typename A>
SL_EXACT_FN A fma(A a, A b, A c) {  // a * b + c with one rounding
#ifdef __CUDA_ARCH__
  if constexpr (sizeof(A) == 8) return __fma_rn(a, b, c);
  else return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}
template <typename A>
SL_EXACT_FN A sqrt_rn(A a) {
#ifdef __CUDA_ARCH__
  if constexpr (sizeof(A) == 8) return __dsqrt_rn(a);
  else return __fsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}

}  // namespace sl::cuda::exact
