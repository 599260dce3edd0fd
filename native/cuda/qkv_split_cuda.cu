// Splitting fused QKV projections into per-head q, k, v ([batch, heads, pos, head_dim], the attention kernels'
// layout), and the adjoint gather of their gradients back into the fused column order. Both are pure index
// permutations: one thread per element, with head_dim the fastest index on both sides so reads and writes
// of a warp stay contiguous in either direction.
#include "kernels_cuda.cuh"
#include "launch.cuh"

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace sl::cuda {
namespace {

constexpr int kThreads = 256;

// Column of element x of head `head` of q (which = 0), k (1) or v (2) in a fused row.
__device__ __forceinline__ int64_t fused_column(QkvLayout layout, int64_t which, int64_t head, int64_t x,
                                                int64_t heads, int64_t d) {
  return layout == QkvLayout::PartMajor ? (which * heads + head) * d + x : (head * 3 + which) * d + x;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    qkv_split_forward_kernel(QkvLayout layout, QkvShape s, const T* qkv, T* q, T* k, T* v) {
  const int64_t per_part = s.batch * s.heads * s.pos * s.head_dim;
  const int64_t row_width = 3 * s.heads * s.head_dim;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < 3 * per_part;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t which = idx / per_part, at = idx % per_part;  // at indexes [batch, heads, pos, head_dim]
    const int64_t x = at % s.head_dim, p = at / s.head_dim % s.pos, bh = at / (s.head_dim * s.pos);
    const int64_t head = bh % s.heads, b = bh / s.heads;
    T* dst = which == 0 ? q : which == 1 ? k : v;
    dst[at] = qkv[(b * s.pos + p) * row_width + fused_column(layout, which, head, x, s.heads, s.head_dim)];
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    qkv_split_backward_kernel(QkvLayout layout, QkvShape s, const T* dq, const T* dk, const T* dv, T* dqkv) {
  const int64_t d = s.head_dim, row_width = 3 * s.heads * d;
  const int64_t total = s.batch * s.pos * row_width;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = idx / row_width, col = idx % row_width;
    const int64_t b = row / s.pos, p = row % s.pos, x = col % d;
    // Invert fused_column: part-major orders columns (which, head, x), head-major (head, which, x).
    const int64_t outer = col / d / (layout == QkvLayout::PartMajor ? s.heads : 3);
    const int64_t inner = col / d % (layout == QkvLayout::PartMajor ? s.heads : 3);
    const int64_t which = layout == QkvLayout::PartMajor ? outer : inner, head = layout == QkvLayout::PartMajor ? inner : outer;
    const T* src = which == 0 ? dq : which == 1 ? dk : dv;
    dqkv[idx] = src[((b * s.heads + head) * s.pos + p) * d + x];
  }
}

void check_shape(const char* what, QkvLayout layout, const QkvShape& s) {
  if (s.batch < 0 || s.pos < 0 || s.heads < 0 || s.head_dim < 0)
    throw std::invalid_argument(std::string(what) + ": negative size (batch=" + std::to_string(s.batch) +
                                " pos=" + std::to_string(s.pos) + " heads=" + std::to_string(s.heads) +
                                " head_dim=" + std::to_string(s.head_dim) + ")");
  if (layout != QkvLayout::PartMajor && layout != QkvLayout::HeadMajor)
    throw std::invalid_argument(std::string(what) + ": unknown QKV layout " +
                                std::to_string(static_cast<int>(layout)));
}

}  // namespace

template <typename T>
void qkv_split_forward(QkvLayout layout, const QkvShape& shape, const T* qkv, T* q, T* k, T* v, cudaStream_t stream) {
  check_shape("qkv_split_forward", layout, shape);
  const int64_t n = 3 * shape.batch * shape.pos * shape.heads * shape.head_dim;
  if (n == 0) return;
  qkv_split_forward_kernel<T><<<grid_stride_blocks(n, kThreads), kThreads, 0, stream>>>(layout, shape, qkv, q, k, v);
  check_launch("qkv_split_forward_kernel");
}

template <typename T>
void qkv_split_backward(QkvLayout layout, const QkvShape& shape, const T* dq, const T* dk, const T* dv, T* dqkv,
                        cudaStream_t stream) {
  check_shape("qkv_split_backward", layout, shape);
  const int64_t n = 3 * shape.batch * shape.pos * shape.heads * shape.head_dim;
  if (n == 0) return;
  qkv_split_backward_kernel<T><<<grid_stride_blocks(n, kThreads), kThreads, 0, stream>>>(layout, shape, dq, dk, dv, dqkv);
  check_launch("qkv_split_backward_kernel");
}

#define SL_CUDA_INSTANTIATE_QKV(T)                                                                                \
  template void qkv_split_forward<T>(QkvLayout, const QkvShape&, const T*, T*, T*, T*, cudaStream_t);            \
  template void qkv_split_backward<T>(QkvLayout, const QkvShape&, const T*, const T*, const T*, T*, cudaStream_t);
SL_CUDA_INSTANTIATE_QKV(float)
SL_CUDA_INSTANTIATE_QKV(double)
SL_CUDA_INSTANTIATE_QKV(__half)
SL_CUDA_INSTANTIATE_QKV(__nv_bfloat16)
#undef SL_CUDA_INSTANTIATE_QKV

}  // namespace sl::cuda
