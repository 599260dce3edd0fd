// One output element of the table-driven rotary embedding (native/src/kernels/rotary.h's rotary_with_table), written
// once for the CUDA kernel (rotary_cuda.cu) and the host: the standalone test (tests/attention_cuda_test.cu) runs this
// same function on the CPU against a double-precision reference, on machines with no GPU too, so the kernel's indexing
// and rounding are checked everywhere and only the launch itself needs a device.
//
// Rounding: each product and each sum is rounded to T on its own and never fused into an FMA, the order in which
// ATen's composition (r * cos + rotate_half(r) * sin, half types computed in float and rounded per op) rounds, so
// the kernel reproduces the composition (and the CPU kernel, for float32 and float64) bit for bit.
#pragma once

#include "exact_arith.cuh"

#include <cstdint>

#ifdef __CUDACC__
#define SL_HOST_DEVICE __host__ __device__
#else
#define SL_HOST_DEVICE
#endif

namespace sl::cuda {

// x [batch, pos, heads, head_dim] read through `stride` (elements; zero strides of an expanded gradient are fine),
// the output contiguous in the same shape. The table is [table_rows, 2, half] contiguous: cos then sin of each row's
// angles, one row per position (table_rows == pos: every batch row at the same positions) or per (batch, pos) row.
// Features [0, 2 * half) rotate; the rest pass through.
struct RotaryShape {
  int64_t batch = 0, pos = 0, heads = 0, head_dim = 0, half = 0, table_rows = 0;
  int64_t stride[4] = {0, 0, 0, 0};
};

// Products and sums in T's rounding, one rounding per operation (computed in float for the half types).
template <typename T>
struct RotaryArith {
  SL_HOST_DEVICE static T mul(T a, T b) { return exact::store<T>(exact::mul(exact::load(a), exact::load(b))); }
  SL_HOST_DEVICE static T add(T a, T b) { return exact::store<T>(exact::add(exact::load(a), exact::load(b))); }
  SL_HOST_DEVICE static T sub(T a, T b) { return exact::store<T>(exact::sub(exact::load(a), exact::load(b))); }
};

// Element `idx` of the contiguous output: with i < half, a = x[.., i], b = x[.., i + half] and the row's c, s:
//   out[.., i]        = a c - b s      (inverse: a c + b s)
//   out[.., i + half] = b c + a s      (inverse: b c - a s)
//   out[.., j]        = x[.., j]       for j >= 2 * half
// The inverse is the rotation by the opposite angles: the backward, and the backward's backward undoes it.
template <typename T>
SL_HOST_DEVICE inline T rotary_element(const T* x, const T* table, const RotaryShape& s, bool inverse, int64_t idx) {
  const int64_t j = idx % s.head_dim, head = idx / s.head_dim % s.heads, row = idx / (s.head_dim * s.heads);
  const int64_t b = row / s.pos, p = row % s.pos;
  const T* xr = x + b * s.stride[0] + p * s.stride[1] + head * s.stride[2];
  if (j >= 2 * s.half) return xr[j * s.stride[3]];
  const T* cos_row = table + (s.table_rows == s.pos ? p : row) * 2 * s.half;
  const int64_t i = j < s.half ? j : j - s.half;
  const T c = cos_row[i], sn = cos_row[s.half + i];
  const T first = xr[i * s.stride[3]], second = xr[(i + s.half) * s.stride[3]];
  using A = RotaryArith<T>;
  if (j < s.half) return inverse ? A::add(A::mul(first, c), A::mul(second, sn)) : A::sub(A::mul(first, c), A::mul(second, sn));
  return inverse ? A::sub(A::mul(second, c), A::mul(first, sn)) : A::add(A::mul(second, c), A::mul(first, sn));
}

}  // namespace sl::cuda
