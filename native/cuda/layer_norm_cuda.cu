// The LayerNorm row kernels on CUDA: one warp per row (four rows per block of 128 threads), each lane on a stride of
// the row, warp sums by the xor butterfly. The per-lane work is layer_norm_rows.cuh's, which the host emulation runs
// too, so the standalone test holds these kernels to the emulation bit for bit.
#include "kernels_cuda.cuh"
#include "launch.cuh"
#include "layer_norm_rows.cuh"

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace sl::cuda {
namespace {

namespace r = rows;

constexpr int kRowsPerBlock = 4;
constexpr int kThreads = kRowsPerBlock * r::kLanes;

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
  for (int o = r::kLanes / 2; o > 0; o /= 2) v = r::add(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// The row of this warp, or -1 past the end (the whole warp leaves together, so the shuffles stay full).
__device__ __forceinline__ int64_t warp_row(int64_t rows) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / r::kLanes;
  return row < rows ? row : -1;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    centre_scale_kernel(RowsShape s, const T* x, double eps, T* centred, T* scale) {
  const int64_t row = warp_row(s.rows);
  if (row < 0) return;
  const int lane = threadIdx.x % r::kLanes;
  const T* xr = x + row * s.d;
  const auto mean = r::mean_of(warp_sum(r::lane_sum(xr, s.d, lane)), s.d);
  const auto sq = warp_sum(r::centre_lane(xr, s.d, mean, centred + row * s.d, lane));
  if (lane == 0) scale[row] = r::store<T>(r::scale_of(sq, s.d, eps));
}

template <typename T>
__global__ void __launch_bounds__(kThreads) rms_scale_kernel(RowsShape s, const T* x, double eps, T* scale) {
  const int64_t row = warp_row(s.rows);
  if (row < 0) return;
  const int lane = threadIdx.x % r::kLanes;
  const auto sq = warp_sum(r::square_sum_lane(x + row * s.d, s.d, lane));
  if (lane == 0) scale[row] = r::store<T>(r::scale_of(sq, s.d, eps));
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    centre_scale_backward_kernel(RowsShape s, const T* centred, const T* scale, const T* gc, const T* gs, T* dx) {
  using A = r::acc<T>;
  const int64_t row = warp_row(s.rows);
  if (row < 0) return;
  const int lane = threadIdx.x % r::kLanes;
  const T* gcr = gc != nullptr ? gc + row * s.d : nullptr;
  const A mean_gc = gcr != nullptr ? r::mean_of(warp_sum(r::lane_sum(gcr, s.d, lane)), s.d) : A(0);
  const A k = gs != nullptr ? r::scale_grad_factor(r::load(gs[row]), r::load(scale[row]), s.d) : A(0);
  r::centre_backward_lane(centred + row * s.d, gcr, mean_gc, k, s.d, dx + row * s.d, lane);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    apply_scale_kernel(RowsShape s, const T* centred, const T* scale, const T* w, const T* b, T* y) {
  using A = r::acc<T>;
  const int64_t row = warp_row(s.rows);
  if (row < 0) return;
  const A inv = r::div(A(1), r::load(scale[row]));
  r::apply_lane(centred + row * s.d, inv, w, b, s.d, y + row * s.d, static_cast<int>(threadIdx.x % r::kLanes));
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    apply_scale_backward_kernel(RowsShape s, const T* gy, const T* centred, const T* scale, const T* w, T* gc, T* gs) {
  using A = r::acc<T>;
  const int64_t row = warp_row(s.rows);
  if (row < 0) return;
  const int lane = threadIdx.x % r::kLanes;
  const A inv = r::div(A(1), r::load(scale[row]));
  const A dot = warp_sum(r::apply_backward_lane(gy + row * s.d, w, centred + row * s.d, inv, s.d, gc + row * s.d, lane));
  if (lane == 0) gs[row] = r::store<T>(r::minus_dot_over_s2(dot, inv));
}

unsigned blocks_for(const char* op, const RowsShape& s) {
  if (s.rows < 0 || s.d < 1)
    throw std::invalid_argument(std::string(op) + ": expected rows >= 0 and d >= 1, got rows=" + std::to_string(s.rows) +
                                " d=" + std::to_string(s.d));
  const int64_t blocks = (s.rows + kRowsPerBlock - 1) / kRowsPerBlock;
  if (blocks > 0x7fffffffLL) throw std::invalid_argument(std::string(op) + ": " + std::to_string(s.rows) + " rows is too many");
  return static_cast<unsigned>(blocks);
}

// One warp per row: checks the shape, then launches `kernel` over its rows (nothing for zero rows).
template <typename... Params, typename... Args>
void launch_rows(const char* op, const char* kernel_name, void (*kernel)(RowsShape, Params...), const RowsShape& s,
                 cudaStream_t stream, Args... args) {
  const unsigned blocks = blocks_for(op, s);
  if (blocks == 0) return;
  kernel<<<blocks, kThreads, 0, stream>>>(s, args...);
  check_launch(kernel_name);
}

}  // namespace

template <typename T>
void layer_norm_centre_scale(const RowsShape& s, const T* x, double eps, T* centred, T* scale, cudaStream_t stream) {
  launch_rows("layer_norm_centre_scale", "centre_scale_kernel", centre_scale_kernel<T>, s, stream, x, eps, centred, scale);
}

template <typename T>
void rms_norm_scale(const RowsShape& s, const T* x, double eps, T* scale, cudaStream_t stream) {
  launch_rows("rms_norm_scale", "rms_scale_kernel", rms_scale_kernel<T>, s, stream, x, eps, scale);
}

template <typename T>
void layer_norm_centre_scale_backward(const RowsShape& s, const T* centred, const T* scale, const T* gc, const T* gs,
                                      T* dx, cudaStream_t stream) {
  launch_rows("layer_norm_centre_scale_backward", "centre_scale_backward_kernel", centre_scale_backward_kernel<T>, s, stream, centred, scale, gc, gs, dx);
}

template <typename T>
void layer_norm_apply_scale(const RowsShape& s, const T* centred, const T* scale, const T* w, const T* b, T* y,
                            cudaStream_t stream) {
  launch_rows("layer_norm_apply_scale", "apply_scale_kernel", apply_scale_kernel<T>, s, stream, centred, scale, w, b, y);
}

template <typename T>
void layer_norm_apply_scale_backward(const RowsShape& s, const T* gy, const T* centred, const T* scale, const T* w, T* gc,
                                     T* gs, cudaStream_t stream) {
  launch_rows("layer_norm_apply_scale_backward", "apply_scale_backward_kernel", apply_scale_backward_kernel<T>, s, stream, gy, centred, scale, w, gc, gs);
}

#define SL_CUDA_INSTANTIATE_LAYER_NORM(T)                                                                        \
  template void layer_norm_centre_scale<T>(const RowsShape&, const T*, double, T*, T*, cudaStream_t);            \
  template void rms_norm_scale<T>(const RowsShape&, const T*, double, T*, cudaStream_t);                         \
  template void layer_norm_centre_scale_backward<T>(const RowsShape&, const T*, const T*, const T*, const T*, T*, \
                                                    cudaStream_t);                                               \
  template void layer_norm_apply_scale<T>(const RowsShape&, const T*, const T*, const T*, const T*, T*,          \
                                          cudaStream_t);                                                         \
  template void layer_norm_apply_scale_backward<T>(const RowsShape&, const T*, const T*, const T*, const T*, T*, \
                                                   T*, cudaStream_t);
SL_CUDA_INSTANTIATE_LAYER_NORM(float)
SL_CUDA_INSTANTIATE_LAYER_NORM(double)
SL_CUDA_INSTANTIATE_LAYER_NORM(__half)
SL_CUDA_INSTANTIATE_LAYER_NORM(__nv_bfloat16)
#undef SL_CUDA_INSTANTIATE_LAYER_NORM

}  // namespace sl::cuda
