/* rnngen CUDA runtime header: status handling, the row-major GEMM on cuBLAS and the
 * launch macro shared by every generated .cu file.  Part of rnngen (not generated).
 * Compiled by nvcc for a GPU, or as C++ by the host compiler with -DRNNGEN_CUDA_EMULATION
 * (rnngen_cuda_emu.h then supplies the CUDA runtime and cuBLAS on the CPU). */
#ifndef RNNGEN_CUDA_RUNTIME_H
#define RNNGEN_CUDA_RUNTIME_H

#define RNNGEN_NO_BLAS          /* the status codes only */
#include "rnngen_runtime.h"

#ifdef RNNGEN_CUDA_EMULATION
#include "rnngen_cuda_emu.h"
#else
#include <cuda_runtime.h>
#include <cublas_v2.h>
#define RNNGEN_LAUNCH(kernel, grid, block, stream, ...) \
    kernel<<<(grid), (block), 0, (stream)>>>(__VA_ARGS__)
#endif
#include <climits>
#include <cstddef>
#include <cstdio>

/* The last failure of this library, for <cell>_cuda_error(): what failed, where, and the
 * CUDA or cuBLAS error's name and meaning. */
static thread_local char rnngen_cu_message[512];   /* per host thread, as the status */

static inline int rnngen_cu_fail_cuda(cudaError_t e, const char *what, int line)
{
    std::snprintf(rnngen_cu_message, sizeof rnngen_cu_message, "%s (line %d): %s: %s", what,
                  line, cudaGetErrorName(e), cudaGetErrorString(e));
    return RNNGEN_ECUDA;
}

static inline int rnngen_cu_fail_cublas(cublasStatus_t s, const char *what, int line)
{
    std::snprintf(rnngen_cu_message, sizeof rnngen_cu_message, "%s (line %d): %s: %s", what,
                  line, cublasGetStatusName(s), cublasGetStatusString(s));
    return RNNGEN_ECUBLAS;
}

/* Return from the calling entry point with a status (and the message above) on failure. */
#define RNNGEN_CU(call) do {                                                          \
        cudaError_t e_ = (call);                                                      \
        if (e_ != cudaSuccess) return rnngen_cu_fail_cuda(e_, #call, __LINE__);       \
    } while (0)
#define RNNGEN_CUBLAS(call) do {                                                      \
        cublasStatus_t s_ = (call);                                                   \
        if (s_ != CUBLAS_STATUS_SUCCESS) return rnngen_cu_fail_cublas(s_, #call, __LINE__); \
    } while (0)
/* A launch, then the launch error (a bad configuration, no device) at once. */
#define RNNGEN_CU_LAUNCH(kernel, grid, block, stream, ...) do {                        \
        RNNGEN_LAUNCH(kernel, grid, block, stream, __VA_ARGS__);                      \
        cudaError_t e_ = cudaGetLastError();                                          \
        if (e_ != cudaSuccess) return rnngen_cu_fail_cuda(e_, "launch of " #kernel, __LINE__); \
    } while (0)

/* C[M,N] = alpha op(A)[M,K] op(B)[K,N] + beta C on row-major matrices (row strides lda,
 * ldb, ldc), as RNNGEN_GEMM_F32 is on the CPU.  cuBLAS is column-major, and a row-major
 * matrix is its transpose read column by column: so it computes C^T = op(B)^T op(A)^T,
 * with B first. */
static inline cublasStatus_t rnngen_gemm(cublasHandle_t h, int ta, int tb, int M, int N, int K,
                                         float alpha, const float *A, size_t lda,
                                         const float *B, size_t ldb, float beta, float *C,
                                         size_t ldc)
{
    return cublasSgemm(h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, N, M,
                       K, &alpha, B, (int)ldb, A, (int)lda, &beta, C, (int)ldc);
}
static inline cublasStatus_t rnngen_gemm(cublasHandle_t h, int ta, int tb, int M, int N, int K,
                                         double alpha, const double *A, size_t lda,
                                         const double *B, size_t ldb, double beta, double *C,
                                         size_t ldc)
{
    return cublasDgemm(h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, N, M,
                       K, &alpha, B, (int)ldb, A, (int)lda, &beta, C, (int)ldc);
}
#define RNNGEN_N 0
#define RNNGEN_T 1

/* Whether row r (= b*T + t) of a [B,T] mask is a real step; no mask: every step is. */
__device__ __forceinline__ int rnngen_real(const unsigned char *mask, size_t r)
{
    return mask ? mask[r] != 0 : 1;
}

/* The kernels are templates over the element type R (float or double): max and min that
 * return their first argument when it is NaN, as on the CPU, and the math functions, each
 * overloaded for both (expf for float, exp for double, ...). */
__device__ __forceinline__ float rnngen_max(float a, float b) { return a < b ? b : a; }
__device__ __forceinline__ float rnngen_min(float a, float b) { return a > b ? b : a; }
__device__ __forceinline__ double rnngen_max(double a, double b) { return a < b ? b : a; }
__device__ __forceinline__ double rnngen_min(double a, double b) { return a > b ? b : a; }
#define RNNGEN_CU_MATH(name)                                                              \
    __device__ __forceinline__ float rnngen_##name(float x) { return name##f(x); }        \
    __device__ __forceinline__ double rnngen_##name(double x) { return name(x); }
RNNGEN_CU_MATH(exp)
RNNGEN_CU_MATH(tanh)
RNNGEN_CU_MATH(log1p)
RNNGEN_CU_MATH(expm1)
RNNGEN_CU_MATH(fabs)
RNNGEN_CU_MATH(sqrt)
RNNGEN_CU_MATH(log)
#undef RNNGEN_CU_MATH
__device__ __forceinline__ float rnngen_pow(float x, float y) { return powf(x, y); }
__device__ __forceinline__ double rnngen_pow(double x, double y) { return pow(x, y); }

/* Threads of an elementwise kernel: x over hidden units, y over samples. */
#define RNNGEN_CU_BLOCK_X 32
#define RNNGEN_CU_BLOCK_Y 8
static inline dim3 rnngen_cu_block(int B)
{
    return dim3(RNNGEN_CU_BLOCK_X, B < RNNGEN_CU_BLOCK_Y ? (unsigned)B : RNNGEN_CU_BLOCK_Y, 1);
}
static inline dim3 rnngen_cu_grid(int B, int H)
{
    const dim3 b = rnngen_cu_block(B);
    return dim3((unsigned)((H + (int)b.x - 1) / (int)b.x), (unsigned)((B + (int)b.y - 1) / (int)b.y), 1);
}

/* Check T, B, D, H: every GEMM dimension and leading dimension fits cuBLAS's int, and a
 * grid's rows of samples fit gridDim.y. */
static inline int rnngen_cu_check_dims(int T, int B, int D, int H, int widest)
{
    if (T < 1 || B < 1 || D < 1 || H < 1) return RNNGEN_EDIM;
    if ((long long)T * B > INT_MAX || (long long)widest * H > INT_MAX
        || (long long)T * widest * H > INT_MAX) return RNNGEN_ETOOBIG;
    if ((long long)T * B * D > (long long)PTRDIFF_MAX / 16) return RNNGEN_ETOOBIG;
    if ((B + RNNGEN_CU_BLOCK_Y - 1) / RNNGEN_CU_BLOCK_Y > 65535) return RNNGEN_ETOOBIG;
    return RNNGEN_OK;
}

/* nreal[t*B + b] = base (1 given initial states, else 0) + the real steps of sample b
 * before step t (started() reads it). */
template <typename R>
__global__ void rnngen_cu_count_real(const unsigned char *mask, int T, int B, int base, R *nreal)
{
    const int b = (int)(blockIdx.x * blockDim.x + threadIdx.x);
    if (b >= B) return;
    R n = (R)base;
    for (int t = 0; t < T; t++) {
        nreal[(size_t)t * B + b] = n;
        n += (R)rnngen_real(mask, (size_t)b * T + t);
    }
}

/* dst[b*ldd + j] = the mean of src[b*lds + 0 .. H) for every unit j (a mean group's
 * product), or (accumulate) dst[b*ldd + j] += it (the operand's gradient from dS): one
 * thread per sample, the units summed in order (two runs give the same bits). */
template <typename R>
__global__ void rnngen_cu_row_mean(const R *src, size_t lds, int B, int H, R *dst, size_t ldd,
                                   int accumulate)
{
    const int b = (int)(blockIdx.x * blockDim.x + threadIdx.x);
    if (b >= B) return;
    const R *row = src + (size_t)b * lds;
    R s = 0;
    for (int u = 0; u < H; u++)
        s += row[u];
    s /= (R)H;
    R *out = dst + (size_t)b * ldd;
    for (int j = 0; j < H; j++)
        out[j] = accumulate ? out[j] + s : s;
}

/* dst[i] += src[i], i < n (x read elementwise: its gradient rows added to dx). */
template <typename R>
__global__ void rnngen_cu_add(R *dst, const R *src, size_t n)
{
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] += src[i];
}

/* out[j] = sum over b of part[b*H + j], b in order: a bias gradient from the per-sample
 * sums the step kernels keep (so two runs give the same bits; no atomics). */
template <typename R>
__global__ void rnngen_cu_sum_rows(const R *part, int B, int H, R *out)
{
    const int j = (int)(blockIdx.x * blockDim.x + threadIdx.x);
    if (j >= H) return;
    R s = 0;
    for (int b = 0; b < B; b++)
        s += part[(size_t)b * H + j];
    out[j] = s;
}

#endif
