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
#include <math.h>
#include <stddef.h>
#include <string.h>
#include <omp.h>
/* scipy-openblas32 (PyPI) ships cblas.h with its symbols prefixed "scipy_". */
#include <cblas.h>
#define RNNGEN_GEMM_F32(ta, tb, M, N, K, alpha, A, lda, Bm, ldb, beta, C, ldc) \
    scipy_cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, Bm, ldb, beta, C, ldc)
#define RNNGEN_GEMM_F64(ta, tb, M, N, K, alpha, A, lda, Bm, ldb, beta, C, ldc) \
    scipy_cblas_dgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, Bm, ldb, beta, C, ldc)
#define RNNGEN_N CblasNoTrans
#define RNNGEN_T CblasTrans

/* scipy-openblas32 runs single-threaded inside rnngen's kernels: the kernels
 * split the work between OpenMP threads themselves (each thread owns a slice
 * of the hidden units and calls the BLAS on its slice), and a BLAS that also
 * started threads would oversubscribe the cores.  The library copy is used by
 * rnngen alone, so this does not change numpy's BLAS. */
void scipy_openblas_set_num_threads(int);
static inline void rnngen_blas_serial(void)
{
    static int done;   /* benign race: every caller stores the same value */
    if (!done) {
        scipy_openblas_set_num_threads(1);
        done = 1;
    }
}

/* Threads for a call: the count set by <cell>_set_threads, else OpenMP's
 * (OMP_NUM_THREADS or the cores); at most
 * RNNGEN_MAX_THREADS and at most one per 16 hidden units. */
#define RNNGEN_MAX_THREADS 64
#define RNNGEN_UNIT_BLOCK 16
static int rnngen_thread_count;   /* set by <cell>_set_threads; 0: OpenMP's */
static inline int rnngen_threads(int H)
{
    int nt = rnngen_thread_count > 0 ? rnngen_thread_count : omp_get_max_threads();
    int blocks = (H + RNNGEN_UNIT_BLOCK - 1) / RNNGEN_UNIT_BLOCK;
    if (nt > RNNGEN_MAX_THREADS) nt = RNNGEN_MAX_THREADS;
    if (nt > blocks) nt = blocks;
    return nt < 1 ? 1 : nt;
}

/* [*lo, *hi): thread tid's share of n items, in blocks of `block`. */
static inline void rnngen_share(int n, int block, int tid, int nt, int *lo, int *hi)
{
    int blocks = (n + block - 1) / block;
    int per = (blocks + nt - 1) / nt;
    long long a = (long long)tid * per * block, b = a + (long long)per * block;
    *lo = (int)(a < n ? a : n);
    *hi = (int)(b < n ? b : n);
}

/* max and min that return their first argument when it is NaN (as numpy's
 * maximum and clip do) and, unlike libm's fmax/fmin calls, vectorise. */
static inline float rnngen_maxf(float a, float b) { return a < b ? b : a; }
static inline float rnngen_minf(float a, float b) { return a > b ? b : a; }
static inline double rnngen_max(double a, double b) { return a < b ? b : a; }
static inline double rnngen_min(double a, double b) { return a > b ? b : a; }

/* Vectorisable float exp and tanh (GCC turns loops of these into SIMD code;
 * libm's expf/tanhf are scalar calls).  Cody-Waite reduction and the Cephes
 * polynomials; within 2 ulp of libm on the tested range.  NaN propagates;
 * exp saturates at 2^127 * (1 + ...) for x > 88.3 and underflows to 2^-126
 * scale for x < -87.3 instead of returning inf / denormals. */
static inline float rnngen_expf(float x)
{
    x = x > 88.3762626647949f ? 88.3762626647949f : x;   /* NaN passes through */
    x = x < -87.3365447505531f ? -87.3365447505531f : x;
    const float shifter = 12582912.0f;                   /* 1.5 * 2^23: round to integer */
    float kf = x * 1.44269504088896341f + shifter;
    unsigned int kb;
    memcpy(&kb, &kf, sizeof kb);
    kf -= shifter;
    const float r = x - kf * 0.693359375f + kf * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    unsigned int eb = (kb - 0x4B400000u + 127u) << 23;   /* 2^k as float bits */
    float scale;
    memcpy(&scale, &eb, sizeof scale);
    return p * scale;
}

static inline float rnngen_tanhf(float x)
{
    const float a = fabsf(x);
    const float z = x * x;
    float s = -5.70498872745e-3f;                        /* |x| < 0.625: odd polynomial */
    s = s * z + 2.06390887954e-2f;
    s = s * z - 5.37397155531e-2f;
    s = s * z + 1.33314422036e-1f;
    s = s * z - 3.33332819422e-1f;
    s = s * z * x + x;
    const float e = rnngen_expf(2.0f * a);               /* otherwise 1 - 2 / (e^2|x| + 1) */
    const float l = copysignf(1.0f - 2.0f / (e + 1.0f), x);
    return a < 0.625f ? s : l;                           /* NaN: a < 0.625 is false, l is NaN */
}

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
