// The host half of the CUDA kernels' checks, with no nvcc and no GPU: the rotary element function and the LayerNorm
// row functions (the code the kernels run per thread and per lane) against their definitions in double, for float64,
// float32, float16 and bfloat16 (emulation_cases.h). Needs only CUDA's cuda_fp16.h and cuda_bf16.h for the half types.
// One line per case, then "host emulation PASS|FAIL: N failures"; exit status 1 on any failure.
//
//   g++ -std=c++17 -O2 -I native/cuda native/cuda/tests/host_emulation_test.cpp -o host_emulation_test
#include "emulation_cases.h"

int main() {
  sl_cuda_test::rotary_cases(false);
  sl_cuda_test::layer_norm_cases(false);
  const int failures = sl_cuda_test::failures;
  std::printf("host emulation %s: %d failure%s\n", failures == 0 ? "PASS" : "FAIL", failures, failures == 1 ? "" : "s");
  return failures == 0 ? 0 : 1;
}
