// Launch helpers the elementwise and row kernels share (qkv_split_cuda.cu, rotary_cuda.cu, layer_norm_cuda.cu).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace sl::cuda {

// Throws std::runtime_error naming the kernel and the CUDA error when its launch failed (cudaGetLastError).
inline void check_launch(const char* kernel) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    throw std::runtime_error(std::string(kernel) + " launch: " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

// Blocks of `threads` for a grid-stride loop over n elements: one element per thread up to 65535 blocks, which fills
// any current GPU; the loop covers the rest.
inline unsigned grid_stride_blocks(int64_t n, int threads) {
  constexpr int64_t kMaxBlocks = 65535;
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

}  // namespace sl::cuda
