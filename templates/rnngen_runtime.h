/* rnngen runtime header: status codes and the BLAS binding shared by every
 * generated cell.  Part of rnngen (not generated). */
#ifndef RNNGEN_RUNTIME_H
#define RNNGEN_RUNTIME_H

/* cdef-begin: the declarations below are also read by cffi */
enum rnngen_status {
    RNNGEN_OK = 0,
    RNNGEN_EDIM = -1,      /* a dimension (T, B, D or H) is smaller than 1 */
    RNNGEN_ENULL = -2,     /* a required pointer is NULL */
    RNNGEN_ETOOBIG = -3,   /* sizes overflow the BLAS's 32-bit integers */
    RNNGEN_ETRUNC = -4     /* truncate_gradient is 0 or below -1 */
};
/* cdef-end */

#ifndef RNNGEN_NO_BLAS
#include <limits.h>
#include <stddef.h>
/* scipy-openblas32 (PyPI) ships cblas.h with its symbols prefixed "scipy_". */
#include <cblas.h>
#define RNNGEN_GEMM_F32(ta, tb, M, N, K, alpha, A, lda, Bm, ldb, beta, C, ldc) \
    scipy_cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, Bm, ldb, beta, C, ldc)
#define RNNGEN_GEMM_F64(ta, tb, M, N, K, alpha, A, lda, Bm, ldb, beta, C, ldc) \
    scipy_cblas_dgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, Bm, ldb, beta, C, ldc)
#define RNNGEN_N CblasNoTrans
#define RNNGEN_T CblasTrans

/* Check T, B, D, H and that every GEMM dimension fits the BLAS's int:
 * rows are T*B, columns at most widest*H (widest = most blocks side by side). */
static inline int rnngen_check_dims(int T, int B, int D, int H, int widest)
{
    if (T < 1 || B < 1 || D < 1 || H < 1) return RNNGEN_EDIM;
    if ((long long)T * B > INT_MAX || (long long)widest * H > INT_MAX) return RNNGEN_ETOOBIG;
    if ((long long)T * B * D > (long long)PTRDIFF_MAX / 16) return RNNGEN_ETOOBIG;
    return RNNGEN_OK;
}
#endif
#endif
