/* rnngen CUDA host emulation: the subset of the CUDA runtime and cuBLAS that generated
 * .cu files use, implemented on the CPU, so that the same source compiled as C++ by the
 * host compiler (-DRNNGEN_CUDA_EMULATION) runs its kernels' logic without a GPU.
 * Part of rnngen (not generated).
 *
 * - __global__/__device__ are plain functions; blockIdx, threadIdx, blockDim and gridDim
 *   are thread-locals set for each emulated GPU thread.
 * - RNNGEN_LAUNCH runs the grid as loops, blocks in a shuffled order (a different one per
 *   launch, so a kernel that depends on block order fails), and rejects the launches a
 *   GPU rejects (0 or more than 1024 threads per block, a block or grid dimension out of
 *   range) with cudaErrorInvalidConfiguration, as a GPU does.  Kernels that need
 *   __syncthreads are not supported (rnngen's kernels have none).
 * - RNNGEN_EMU_DEVICES devices (2), a current one per host thread; a cuBLAS handle used
 *   while another device is current fails.  "Device" memory is host memory from malloc;
 *   copies are memcpy.  Streams are ignored
 *   (everything runs in order).
 * - cublasSgemm/cublasDgemm are mapped onto the CPU BLAS with cuBLAS's column-major
 *   semantics and cuBLAS's argument checks (CUBLAS_STATUS_INVALID_VALUE for a negative
 *   size or a leading dimension smaller than the matrix's rows).
 * It cannot see races between blocks, the GPU memory model, device math rounding,
 * register limits or speed. */
#ifndef RNNGEN_CUDA_EMU_H
#define RNNGEN_CUDA_EMU_H

#include <cblas.h>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <cmath>
#include <atomic>
#include <thread>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__

struct dim3 {
    unsigned int x, y, z;
    dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
static thread_local dim3 blockIdx(0, 0, 0), threadIdx(0, 0, 0), blockDim, gridDim;
/* OS threads a launch's blocks run on (at least 1) */
#ifndef RNNGEN_EMU_WORKERS
#define RNNGEN_EMU_WORKERS 3
#endif

/* -- runtime ------------------------------------------------------------------ */
enum cudaError_t {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInsufficientDriver = 35,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidDevice = 101,
};
typedef struct rnngen_emu_stream *cudaStream_t;
enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0, cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3, cudaMemcpyDefault = 4
};

static thread_local cudaError_t rnngen_emu_last = cudaSuccess;   /* per host thread, until cudaGetLastError */
static std::atomic<unsigned long long> rnngen_emu_launches{0};   /* calls run on several threads */

static inline const char *cudaGetErrorName(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInsufficientDriver: return "cudaErrorInsufficientDriver";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    }
    return "cudaErrorUnknown";
}

static inline const char *cudaGetErrorString(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInsufficientDriver: return "CUDA driver version is insufficient for CUDA runtime version";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    }
    return "unknown error";
}

static inline cudaError_t cudaGetLastError(void)
{
    cudaError_t e = rnngen_emu_last;
    rnngen_emu_last = cudaSuccess;
    return e;
}
static inline cudaError_t cudaPeekAtLastError(void) { return rnngen_emu_last; }
/* RNNGEN_EMU_DEVICES devices (default 2, so that code for several GPUs runs here): each
 * host thread has a current device, 0 at first, as in the runtime. */
#ifndef RNNGEN_EMU_DEVICES
#define RNNGEN_EMU_DEVICES 2
#endif
static thread_local int rnngen_emu_device = 0;
static inline cudaError_t cudaGetDeviceCount(int *n)
{
    if (!n) return cudaErrorInvalidValue;
    *n = RNNGEN_EMU_DEVICES;
    return cudaSuccess;
}
static inline cudaError_t cudaGetDevice(int *d)
{
    if (!d) return cudaErrorInvalidValue;
    *d = rnngen_emu_device;
    return cudaSuccess;
}
static inline cudaError_t cudaSetDevice(int d)
{
    if (d < 0 || d >= RNNGEN_EMU_DEVICES) return cudaErrorInvalidDevice;
    rnngen_emu_device = d;
    return cudaSuccess;
}
static inline cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
static inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }

/* Fresh device memory is filled with NaN (all bits set: a NaN in float and double), so a
 * kernel that reads what nobody wrote shows it in its results instead of reading zeros. */
static inline cudaError_t cudaMalloc(void **p, size_t bytes)
{
    if (!p) return cudaErrorInvalidValue;
    *p = std::malloc(bytes ? bytes : 1);
    if (!*p) return cudaErrorMemoryAllocation;
    std::memset(*p, 0xFF, bytes ? bytes : 1);
    return cudaSuccess;
}
static inline cudaError_t cudaFree(void *p) { std::free(p); return cudaSuccess; }

static inline cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind)
{
    if (bytes && (!dst || !src)) return cudaErrorInvalidValue;
    if (bytes) std::memmove(dst, src, bytes);
    return cudaSuccess;
}
static inline cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes,
                                          cudaMemcpyKind kind, cudaStream_t = 0)
{
    return cudaMemcpy(dst, src, bytes, kind);
}
/* As the runtime: pitches at least the row width, rows copied one by one. */
static inline cudaError_t cudaMemcpy2DAsync(void *dst, size_t dpitch, const void *src,
                                            size_t spitch, size_t width, size_t height,
                                            cudaMemcpyKind, cudaStream_t = 0)
{
    if (width > dpitch || width > spitch) return cudaErrorInvalidValue;
    if (width && height && (!dst || !src)) return cudaErrorInvalidValue;
    for (size_t r = 0; r < height; r++)
        std::memmove((char *)dst + r * dpitch, (const char *)src + r * spitch, width);
    return cudaSuccess;
}
static inline cudaError_t cudaMemsetAsync(void *p, int value, size_t bytes, cudaStream_t = 0)
{
    if (bytes && !p) return cudaErrorInvalidValue;
    if (bytes) std::memset(p, value, bytes);
    return cudaSuccess;
}

/* The grid as loops.  Blocks (and threads within a block) run in an order that changes
 * from launch to launch: i -> (i * stride + offset) mod n with stride coprime to n. */
static inline unsigned long long rnngen_emu_gcd(unsigned long long a, unsigned long long b)
{
    while (b) { unsigned long long t = a % b; a = b; b = t; }
    return a;
}
static inline unsigned long long rnngen_emu_stride(unsigned long long n, unsigned long long seed)
{
    if (n <= 1) return 1;
    unsigned long long s = (seed * 2654435761ull) % n;
    if (s == 0) s = 1;
    while (rnngen_emu_gcd(s, n) != 1) s = s + 1 < n ? s + 1 : 1;
    return s;
}

template <typename F>
static inline void rnngen_emu_launch(dim3 grid, dim3 block, F body)
{
    const unsigned long long threads = (unsigned long long)block.x * block.y * block.z;
    if (threads == 0 || threads > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64
        || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 2147483647u
        || grid.y > 65535 || grid.z > 65535) {
        rnngen_emu_last = cudaErrorInvalidConfiguration;
        return;
    }
    const unsigned long long seed = ++rnngen_emu_launches;
    const unsigned long long nb = (unsigned long long)grid.x * grid.y * grid.z;
    const unsigned long long bs = rnngen_emu_stride(nb, seed), bo = (seed * 40503ull) % nb;
    const unsigned long long ts = rnngen_emu_stride(threads, seed + 7), to = (seed * 97ull) % threads;
    /* the blocks are shared out over RNNGEN_EMU_WORKERS OS threads (as a GPU runs them
     * at once), so that two blocks writing one address race here too */
    const unsigned long long workers = nb < RNNGEN_EMU_WORKERS ? nb : RNNGEN_EMU_WORKERS;
    auto run = [&](unsigned long long w) {
        gridDim = grid;                 /* (thread-local, as blockIdx and threadIdx) */
        blockDim = block;
        for (unsigned long long i = w; i < nb; i += workers) {
            const unsigned long long q = (i * bs + bo) % nb;
            blockIdx = dim3((unsigned)(q % grid.x), (unsigned)(q / grid.x % grid.y),
                            (unsigned)(q / grid.x / grid.y));
            for (unsigned long long k = 0; k < threads; k++) {
                const unsigned long long u = (k * ts + to) % threads;
                threadIdx = dim3((unsigned)(u % block.x), (unsigned)(u / block.x % block.y),
                                 (unsigned)(u / block.x / block.y));
                body();
            }
        }
    };
    if (workers <= 1) {
        run(0);
        return;
    }
    std::thread pool[RNNGEN_EMU_WORKERS];
    for (unsigned long long w = 1; w < workers; w++)
        pool[w] = std::thread(run, w);
    run(0);
    for (unsigned long long w = 1; w < workers; w++)
        pool[w].join();
}
#define RNNGEN_LAUNCH(kernel, grid, block, stream, ...) \
    rnngen_emu_launch((grid), (block), [&]() { kernel(__VA_ARGS__); })

/* -- cuBLAS ------------------------------------------------------------------- */
enum cublasStatus_t {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_NOT_INITIALIZED = 1,
    CUBLAS_STATUS_ALLOC_FAILED = 3,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_EXECUTION_FAILED = 13,
};
enum cublasOperation_t { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
struct rnngen_emu_cublas { cudaStream_t stream; int device; };   /* the device current at creation */
typedef struct rnngen_emu_cublas *cublasHandle_t;

static inline const char *cublasGetStatusName(cublasStatus_t s)
{
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}
static inline const char *cublasGetStatusString(cublasStatus_t s)
{
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
    }
    return "unknown";
}
static inline cublasStatus_t cublasCreate(cublasHandle_t *h)
{
    *h = (cublasHandle_t)std::calloc(1, sizeof(struct rnngen_emu_cublas));
    if (!*h) return CUBLAS_STATUS_ALLOC_FAILED;
    (*h)->device = rnngen_emu_device;
    return CUBLAS_STATUS_SUCCESS;
}
static inline cublasStatus_t cublasDestroy(cublasHandle_t h)
{
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    std::free(h);
    return CUBLAS_STATUS_SUCCESS;
}
static inline cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s)
{
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    h->stream = s;
    return CUBLAS_STATUS_SUCCESS;
}

/* cuBLAS's checks: m, n, k >= 0; lda >= max(1, rows of A as stored), likewise ldb, ldc. */
static inline cublasStatus_t rnngen_emu_gemm_check(cublasHandle_t h, cublasOperation_t ta,
                                                   cublasOperation_t tb, int m, int n, int k,
                                                   int lda, int ldb, int ldc)
{
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    /* a handle belongs to the device that was current when it was made; a GPU would run
     * the GEMM on that device's memory, or fail: here, always fail */
    if (h->device != rnngen_emu_device) return CUBLAS_STATUS_EXECUTION_FAILED;
    const int arows = ta == CUBLAS_OP_N ? m : k, brows = tb == CUBLAS_OP_N ? k : n;
    if ((ta != CUBLAS_OP_N && ta != CUBLAS_OP_T) || (tb != CUBLAS_OP_N && tb != CUBLAS_OP_T)
        || m < 0 || n < 0 || k < 0 || lda < (arows > 1 ? arows : 1)
        || ldb < (brows > 1 ? brows : 1) || ldc < (m > 1 ? m : 1))
        return CUBLAS_STATUS_INVALID_VALUE;
    return CUBLAS_STATUS_SUCCESS;
}
#define RNNGEN_EMU_OP(t) ((t) == CUBLAS_OP_N ? CblasNoTrans : CblasTrans)

static inline cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta,
                                         cublasOperation_t tb, int m, int n, int k,
                                         const float *alpha, const float *A, int lda,
                                         const float *B, int ldb, const float *beta,
                                         float *C, int ldc)
{
    cublasStatus_t s = rnngen_emu_gemm_check(h, ta, tb, m, n, k, lda, ldb, ldc);
    if (s != CUBLAS_STATUS_SUCCESS || m == 0 || n == 0) return s;
    if (k == 0) {   /* the BLAS may skip C entirely; cuBLAS scales it by beta */
        for (int j = 0; j < n; j++)
            for (int i = 0; i < m; i++)
                C[(size_t)j * ldc + i] = *beta == 0 ? 0.0f : *beta * C[(size_t)j * ldc + i];
        return s;
    }
    scipy_cblas_sgemm(CblasColMajor, RNNGEN_EMU_OP(ta), RNNGEN_EMU_OP(tb), m, n, k, *alpha,
                      A, lda, B, ldb, *beta, C, ldc);
    return s;
}

static inline cublasStatus_t cublasDgemm(cublasHandle_t h, cublasOperation_t ta,
                                         cublasOperation_t tb, int m, int n, int k,
                                         const double *alpha, const double *A, int lda,
                                         const double *B, int ldb, const double *beta,
                                         double *C, int ldc)
{
    cublasStatus_t s = rnngen_emu_gemm_check(h, ta, tb, m, n, k, lda, ldb, ldc);
    if (s != CUBLAS_STATUS_SUCCESS || m == 0 || n == 0) return s;
    if (k == 0) {
        for (int j = 0; j < n; j++)
            for (int i = 0; i < m; i++)
                C[(size_t)j * ldc + i] = *beta == 0 ? 0.0 : *beta * C[(size_t)j * ldc + i];
        return s;
    }
    scipy_cblas_dgemm(CblasColMajor, RNNGEN_EMU_OP(ta), RNNGEN_EMU_OP(tb), m, n, k, *alpha,
                      A, lda, B, ldb, *beta, C, ldc);
    return s;
}

#endif
