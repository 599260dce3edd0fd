// Row-major GEMM over the Fortran BLAS that libtorch itself links (OpenBLAS
// here), for kernels that multiply small tiles in their own loops: one call per
// tile, no tensor allocation, no dispatch.
#pragma once

#include <cstdint>
#include <type_traits>

extern "C" {
void sgemm_(const char *transa, const char *transb, const int *m, const int *n,
            const int *k, const float *alpha, const float *a, const int *lda,
            const float *b, const int *ldb, const float *beta, float *c,
            const int *ldc);
void dgemm_(const char *transa, const char *transb, const int *m, const int *n,
            const int *k, const double *alpha, const double *a, const int *lda,
            const double *b, const int *ldb, const double *beta, double *c,
            const int *ldc);
}

namespace sl::kernels {

// C = alpha * op(A) * op(B) + beta * C for row-major matrices, through
// column-major BLAS by computing Cᵀ = op(B)ᵀ op(A)ᵀ.
template <typename T>
inline void gemm_rm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                    T alpha, const T *a, int64_t lda, const T *b, int64_t ldb,
                    T beta, T *c, int64_t ldc) {
  const char ta = trans_b ? 'T' : 'N', tb = trans_a ? 'T' : 'N';
  const int im = static_cast<int>(n), in = static_cast<int>(m),
            ik = static_cast<int>(k);
  const int ila = static_cast<int>(ldb), ilb = static_cast<int>(lda),
            ilc = static_cast<int>(ldc);
  if constexpr (std::is_same_v<T, float>)
    sgemm_(&ta, &tb, &im, &in, &ik, &alpha, b, &ila, a, &ilb, &beta, c, &ilc);
  else
    dgemm_(&ta, &tb, &im, &in, &ik, &alpha, b, &ila, a, &ilb, &beta, c, &ilc);
}

} // namespace sl::kernels
