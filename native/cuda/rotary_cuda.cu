// The table-driven rotary embedding on CUDA: one thread per output element (rotary_element.cuh, the function the
// standalone test also runs on the host), head_dim fastest so a warp writes contiguous memory and reads each head's
// features once per pair. x is read through its strides (q and k arrive as views of the QKV split), the output is
// contiguous; the backward is the same launch with the angles negated.
#include "kernels_cuda.cuh"
#include "launch.cuh"
#include "rotary_element.cuh"

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace sl::cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads)
    rotary_kernel(RotaryShape s, const T* x, const T* table, bool inverse, T* out, int64_t n) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[idx] = rotary_element(x, table, s, inverse, idx);
}

}  // namespace

std::string rotary_shape_error(const RotaryShape& s) {
  const auto dims = "batch=" + std::to_string(s.batch) + " pos=" + std::to_string(s.pos) + " heads=" +
                    std::to_string(s.heads) + " head_dim=" + std::to_string(s.head_dim) + " half=" +
                    std::to_string(s.half) + " table_rows=" + std::to_string(s.table_rows);
  if (s.batch < 0 || s.pos < 0 || s.heads < 0 || s.head_dim < 0) return "negative size (" + dims + ")";
  if (s.half < 1 || 2 * s.half > s.head_dim) return "rotary half width must be in [1, head_dim / 2] (" + dims + ")";
  if (s.table_rows != s.pos && s.table_rows != s.batch * s.pos) return "table rows must be pos or batch * pos (" + dims + ")";
  return {};
}

template <typename T>
void rotary_forward(const RotaryShape& shape, const T* x, const T* table, bool inverse, T* out, cudaStream_t stream) {
  if (auto why = rotary_shape_error(shape); !why.empty()) throw std::invalid_argument("rotary_forward: " + why);
  const int64_t n = shape.batch * shape.pos * shape.heads * shape.head_dim;
  if (n == 0) return;
  rotary_kernel<T><<<grid_stride_blocks(n, kThreads), kThreads, 0, stream>>>(shape, x, table, inverse, out, n);
  check_launch("rotary_kernel");
}

#define SL_CUDA_INSTANTIATE_ROTARY(T) \
  template void rotary_forward<T>(const RotaryShape&, const T*, const T*, bool, T*, cudaStream_t);
SL_CUDA_INSTANTIATE_ROTARY(float)
SL_CUDA_INSTANTIATE_ROTARY(double)
SL_CUDA_INSTANTIATE_ROTARY(__half)
SL_CUDA_INSTANTIATE_ROTARY(__nv_bfloat16)
#undef SL_CUDA_INSTANTIATE_ROTARY

}  // namespace sl::cuda
