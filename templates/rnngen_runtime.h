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
    RNNGEN_ETRUNC = -4,    /* truncate_gradient is 0 or below -1 */
    RNNGEN_ETEAM = -5,     /* backward got fewer threads than forward laid its values out for */
    RNNGEN_ESAVE = -6,     /* the save buffer does not hold what forward writes */
    RNNGEN_EMASK = -7,     /* backward got a mask and its forward none, or the reverse */
    RNNGEN_ECUDA = -8,     /* a CUDA runtime call or kernel launch failed (<cell>_cuda_error says which) */
    RNNGEN_ECUBLAS = -9,   /* a cuBLAS call failed (<cell>_cuda_error says which) */
    RNNGEN_ECTX = -10      /* the context is wrong: threads < 0, or a device that does not exist */
};
/* The context of a call on the C backend: threads > 0, this call's threads (at most one
 * per 16 hidden units); 0, the count <cell>_set_threads set, else OpenMP's.  A NULL
 * context is threads = 0. */
typedef struct rnngen_ctx {
    int threads;
} rnngen_ctx;
/* The context of a call on the CUDA backend: the stream every copy and kernel of the call
 * runs on (a cudaStream_t of that device; NULL: the default stream) and the device it runs
 * on (-1: the current one; else that device is made current for the call and the caller's
 * is current again after it).  A NULL context is {NULL, -1}. */
typedef struct rnngen_cuda_ctx {
    void *stream;
    int device;
} rnngen_cuda_ctx;
/* cdef-end */

/* The target's micro-kernels: one table, read by the kernels below and by rnngen/targets.py
 * (which runs the preprocessor over this header with the build's flags).  Chosen from the
 * instruction set the compiler targets (its predefined macros), so that the register block
 * fits the target's registers (the accumulators MR x NV vectors, plus NV vectors of the
 * packed operand and a broadcast row element):
 *   avx512  32 x 512-bit: float 8 x 32 (16 accumulators), double 8 x 16 (16)
 *   avx2    16 x 256-bit, FMA: float 6 x 16, double 6 x 8 (12 accumulators; BLIS's Haswell shape)
 *   sse2    16 x 128-bit, no FMA (a product needs a temporary): float 4 x 8, double 4 x 4 (8)
 *   neon    32 x 128-bit (aarch64): float 6 x 16, double 6 x 8 (24)
 *   portable  anything else, or RNNGEN_KERNEL_PORTABLE defined: the BLAS's GEMM on each panel
 *             of 64 columns (as fast as a GEMM call per step, which the panels replace)
 * RNNGEN_PANEL_F32/_F64: the packed operand's panel width (columns); RNNGEN_MR_*: rows of
 * the register block (0: portable); RNNGEN_VEC_BYTES: the vectors' size (0: portable). */
#if defined(RNNGEN_KERNEL_PORTABLE)
#define RNNGEN_KERNEL_NAME "portable"
#elif defined(__AVX512F__)
#define RNNGEN_KERNEL_AVX512 1
#define RNNGEN_KERNEL_NAME "avx512"
#define RNNGEN_VEC_BYTES 64
#define RNNGEN_MR_F32 8
#define RNNGEN_PANEL_F32 32
#define RNNGEN_MR_F64 8
#define RNNGEN_PANEL_F64 16
#elif defined(__AVX2__) && defined(__FMA__)
#define RNNGEN_KERNEL_AVX2 1
#define RNNGEN_KERNEL_NAME "avx2"
#define RNNGEN_VEC_BYTES 32
#define RNNGEN_MR_F32 6
#define RNNGEN_PANEL_F32 16
#define RNNGEN_MR_F64 6
#define RNNGEN_PANEL_F64 8
#elif defined(__SSE2__)
#define RNNGEN_KERNEL_SSE2 1
#define RNNGEN_KERNEL_NAME "sse2"
#define RNNGEN_VEC_BYTES 16
#define RNNGEN_MR_F32 4
#define RNNGEN_PANEL_F32 8
#define RNNGEN_MR_F64 4
#define RNNGEN_PANEL_F64 4
#elif defined(__aarch64__) && defined(__ARM_NEON)
#define RNNGEN_KERNEL_NEON 1
#define RNNGEN_KERNEL_NAME "neon"
#define RNNGEN_VEC_BYTES 16
#define RNNGEN_MR_F32 6
#define RNNGEN_PANEL_F32 16
#define RNNGEN_MR_F64 6
#define RNNGEN_PANEL_F64 8
#else
#define RNNGEN_KERNEL_PORTABLE 1
#define RNNGEN_KERNEL_NAME "portable"
#endif
#if defined(RNNGEN_KERNEL_PORTABLE)
#define RNNGEN_VEC_BYTES 0
#define RNNGEN_MR_F32 0
#define RNNGEN_PANEL_F32 64
#define RNNGEN_MR_F64 0
#define RNNGEN_PANEL_F64 64
#else
#define RNNGEN_NV_F32 (RNNGEN_PANEL_F32 * 4 / RNNGEN_VEC_BYTES)   /* vectors per panel row */
#define RNNGEN_NV_F64 (RNNGEN_PANEL_F64 * 8 / RNNGEN_VEC_BYTES)
#endif
#define RNNGEN_STR_(v) #v
#define RNNGEN_STR(v) RNNGEN_STR_(v)
/* e.g. "avx2 float 6x16 double 6x8" (what <cell>_kernel() returns) */
#define RNNGEN_KERNEL_INFO RNNGEN_KERNEL_NAME " float " RNNGEN_STR(RNNGEN_MR_F32) "x" \
    RNNGEN_STR(RNNGEN_PANEL_F32) " double " RNNGEN_STR(RNNGEN_MR_F64) "x" RNNGEN_STR(RNNGEN_PANEL_F64)
/* the widest panel of the two types: what the work buffer's size allows for */
#define RNNGEN_PANEL_MAX (RNNGEN_PANEL_F32 > RNNGEN_PANEL_F64 ? RNNGEN_PANEL_F32 : RNNGEN_PANEL_F64)
/* columns of n packed into panels of p */
#define RNNGEN_PACKED_COLS(n, p) (((n) + (p) - 1) / (p) * (p))

#ifndef RNNGEN_NO_BLAS
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <string.h>
#include <omp.h>
#include <sched.h>
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

/* Threads for a call: the context's request, else the count set by <cell>_set_threads, else OpenMP's
 * (OMP_NUM_THREADS or the cores); at most RNNGEN_MAX_THREADS and at most one
 * per 16 hidden units.  (Even at B = 1, H = 128, two threads measured 1.5x
 * faster than one on a 2-core machine, barriers included.) */
#define RNNGEN_MAX_THREADS 64
/* a local a kernel may not read (the frame carves every scratch array for both kernels) */
#define RNNGEN_MAYBE_UNUSED __attribute__((unused))
#define RNNGEN_UNIT_BLOCK 16
static int rnngen_thread_count;   /* set by <cell>_set_threads; 0: OpenMP's */
static inline int rnngen_threads(int H, int requested)
{
    const int count = requested > 0 ? requested : rnngen_thread_count;
    int nt = count > 0 ? count : omp_get_max_threads();
    int blocks = (H + RNNGEN_UNIT_BLOCK - 1) / RNNGEN_UNIT_BLOCK;
    if (nt > RNNGEN_MAX_THREADS) nt = RNNGEN_MAX_THREADS;
    if (nt > blocks) nt = blocks;
    return nt < 1 ? 1 : nt;
}

/* A barrier for the team of one kernel call: the last thread to arrive flips the sense
 * bit of `sense`, the others wait for it.  Release/acquire ordering makes every write
 * before the barrier visible after it.  (libgomp's barrier measured ~15% of a B = 1 step
 * in waits.)
 * A waiter spins a while, then sleeps in the kernel (a futex on `sense`) until the flip:
 * on a busy machine the thread it waits for may not be running, and a waiter that keeps
 * its core (spinning, or yielding, which leaves it on the core whenever nothing else is
 * queued on that very core) keeps it from that thread; with more threads than cores a
 * spinner can hold its core for a whole time slice at every barrier.  How long it spins
 * adapts, per thread: the budget halves after a wait that ended asleep (down to
 * RNNGEN_BARRIER_MIN_SPINS) and doubles after one that did not (up to
 * RNNGEN_BARRIER_SPINS, about 45 us at 11 ns a pause here), so an idle machine keeps the
 * cheap spinning wait and a busy one sleeps at once.
 * `sense` holds the sense in bit 0 and, in bit 1, that a waiter may be asleep: a waiter
 * sets bit 1 (compare-and-swap, only while the sense is still the old one) before it
 * sleeps, the kernel puts it to sleep only if `sense` still holds that value, and the
 * last thread swaps in the new sense with bit 1 clear and wakes the sleepers if bit 1
 * was set: no wake-up is lost, and nobody makes a system call while nobody sleeps.
 * Without futexes (not Linux) a waiter yields its core instead.
 * Each thread's `*my` holds its sense in bit 0 and its spin budget above it (0 at the
 * start: the full budget). */
#if defined(__x86_64__) || defined(__i386__)
#define RNNGEN_PAUSE() __builtin_ia32_pause()
#else
#define RNNGEN_PAUSE() ((void)0)
#endif
#ifndef RNNGEN_BARRIER_SPINS
#define RNNGEN_BARRIER_SPINS 4096
#endif
#ifndef RNNGEN_BARRIER_MIN_SPINS
#define RNNGEN_BARRIER_MIN_SPINS 16
#endif
#if defined(__linux__)
#include <sys/syscall.h>
#endif
#if defined(__linux__) && defined(SYS_futex)
#define RNNGEN_FUTEX 1
/* declared here: <unistd.h> declares it only with _DEFAULT_SOURCE, and the kernels are
 * compiled as strict C11 */
long syscall(long number, ...);
enum { RNNGEN_FUTEX_WAIT_PRIVATE = 128, RNNGEN_FUTEX_WAKE_PRIVATE = 129 };   /* linux/futex.h */
#else
#define RNNGEN_FUTEX 0
#endif
enum { RNNGEN_SENSE = 1, RNNGEN_SLEEPERS = 2 };   /* the bits of rnngen_barrier.sense */
typedef struct { int count, sense; char pad[56]; } __attribute__((aligned(64))) rnngen_barrier;

/* Wait, asleep, until bar->sense holds sense s. */
static inline void rnngen_barrier_sleep(rnngen_barrier *bar, int s)
{
    for (;;) {
        int v = __atomic_load_n(&bar->sense, __ATOMIC_ACQUIRE);
        if ((v & RNNGEN_SENSE) == s)
            return;
#if RNNGEN_FUTEX
        if (!(v & RNNGEN_SLEEPERS)) {   /* say that a waiter may sleep, unless the sense flipped */
            if (!__atomic_compare_exchange_n(&bar->sense, &v, v | RNNGEN_SLEEPERS, 0,
                                             __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
                continue;
            v |= RNNGEN_SLEEPERS;
        }
        /* sleeps only while sense == v; returns at a wake-up or a signal, or at once */
        syscall(SYS_futex, &bar->sense, RNNGEN_FUTEX_WAIT_PRIVATE, v, NULL, NULL, 0);
#else
        sched_yield();
#endif
    }
}

static inline void rnngen_barrier_wait(rnngen_barrier *bar, int nt, int *my)
{
    const int s = (*my & RNNGEN_SENSE) ^ RNNGEN_SENSE;
    int budget = (*my >> 1) > 0 ? *my >> 1 : RNNGEN_BARRIER_SPINS;
    if (__atomic_add_fetch(&bar->count, 1, __ATOMIC_ACQ_REL) == nt) {
        __atomic_store_n(&bar->count, 0, __ATOMIC_RELAXED);
        const int old = __atomic_exchange_n(&bar->sense, s, __ATOMIC_ACQ_REL);
#if RNNGEN_FUTEX
        if (old & RNNGEN_SLEEPERS)
            syscall(SYS_futex, &bar->sense, RNNGEN_FUTEX_WAKE_PRIVATE, 0x7fffffff, NULL, NULL, 0);
#else
        (void)old;
#endif
    } else {
        int spins = budget;
        while (spins > 0 && (__atomic_load_n(&bar->sense, __ATOMIC_ACQUIRE) & RNNGEN_SENSE) != s) {
            RNNGEN_PAUSE();
            spins--;
        }
        if (spins > 0) {
            budget = budget < RNNGEN_BARRIER_SPINS / 2 ? 2 * budget : RNNGEN_BARRIER_SPINS;
        } else {
            rnngen_barrier_sleep(bar, s);
            budget = budget > 2 * RNNGEN_BARRIER_MIN_SPINS ? budget / 2 : RNNGEN_BARRIER_MIN_SPINS;
        }
    }
    *my = budget << 1 | s;
}

/* Whether a call splits the samples between the threads (each runs every unit of its
 * samples, with no barrier in the step loop) rather than the hidden units (each runs its
 * units of every sample and meets the others at every step, which also makes it wait
 * whenever the other core is slow or preempted).  The batch split needs 8 rows per
 * thread for the GEMM blocks, and every core reads all the packed weights at every step.
 * Measured against the unit split (2-core Zen 5 guest, 2 MB L2 per core, float32,
 * in-process A/B, training): at T=100, B=32, D=128, H=256 (0.5-1.5 MB packed) 3-34%
 * faster, LSTM least; at T=50, B=64, D=H=512 (2-6 MB) 3-10% faster, LSTM (8 MB) even;
 * at T=25, B=128, D=256, H=1024 (5-20 MB) SimpleRNN even, GRU 2% and LSTM 4% slower. */
#ifndef RNNGEN_SPLIT_MAX_BYTES
#define RNNGEN_SPLIT_MAX_BYTES (6 << 20)
#endif
#ifndef RNNGEN_SPLIT_MIN_ROWS
#define RNNGEN_SPLIT_MIN_ROWS 8
#endif
static inline int rnngen_split_batch(int B, int nt, size_t packed_bytes)
{
    return nt > 1 && B >= RNNGEN_SPLIT_MIN_ROWS * nt && packed_bytes <= RNNGEN_SPLIT_MAX_BYTES;
}

/* The team of a call.  With the count left to OpenMP (set_threads(0), the default), the
 * most threads, up to OpenMP's count, of which each has at least
 *   - RNNGEN_TEAM_CALL_WORK of the call's work, T * w, and
 *   - in the unit split (a barrier per step and phase), RNNGEN_TEAM_WORK of a step's, w,
 * where w = (B + 2) * H * (D * nw + H * nu) for nw input and nu recurrent blocks of H
 * columns: the multiply-adds of a step's products, plus a read of the weights, which
 * costs about as much as 2 rows of products (a single row runs at a fraction of a block
 * of rows' rate).  Else one thread.  A count set explicitly is used as it is.
 * Measured (2-core Zen 5 guest, float32 training, one thread against two, in-process
 * A/B, benchmarks/busy.py --calibrate): the unit split at B = 4..8 was 1.25-2.5x slower
 * on two threads up to w = 600K (LSTM at T=20, B=8, D=16, H=32: 0.14 ms against 0.36)
 * and even at 790K; at B = 1 (where each thread reads half the weights) 7-13% faster
 * for the LSTM at H = 128 (w = 295K), slower for the GRU (221K) and SimpleRNN (74K).
 * That LSTM (T=200, D=64) runs on one thread all the same: next to one busy process,
 * two threads took 6.1 ms (median) and 16 ms (90th percentile) per training call, one
 * thread 2.2 and 2.3 (idle: 2.0 against 2.2).
 * The batch split (no barrier in the step loop) was faster from T * w = 2.2M (SimpleRNN
 * at T=20, B=16, D=32, H=64: 17% faster), even or slower below 2M.  On a busy machine a
 * team also waits whenever one of its threads is not running (OpenMP's own waits too,
 * which spin for milliseconds), so the thresholds lean to one thread. */
#ifndef RNNGEN_TEAM_WORK
#define RNNGEN_TEAM_WORK 262144
#endif
#ifndef RNNGEN_TEAM_CALL_WORK
#define RNNGEN_TEAM_CALL_WORK 1048576
#endif
static inline int rnngen_team(int T, int B, int D, int H, int nw, int nu, size_t packed_bytes,
                              int requested)
{
    const int most = rnngen_threads(H, requested);
    if (requested > 0 || rnngen_thread_count > 0)
        return most;
    const double w = ((double)B + 2) * H * ((double)D * nw + (double)H * nu);
    for (int nt = most; nt > 1; nt--)
        if ((double)T * w >= (double)RNNGEN_TEAM_CALL_WORK * nt
            && (rnngen_split_batch(B, nt, packed_bytes) || w >= (double)RNNGEN_TEAM_WORK * nt))
            return nt;
    return 1;
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

/* Whether row r (= b*T + t) of a [B,T] mask is a real step; no mask: every step is. */
static inline int rnngen_real(const unsigned char *mask, size_t r)
{
    return mask ? mask[r] != 0 : 1;
}

/* max and min that return their first argument when it is NaN (as numpy's
 * maximum and clip do) and, unlike libm's fmax/fmin calls, vectorise. */
static inline float rnngen_maxf(float a, float b) { return a < b ? b : a; }
static inline float rnngen_minf(float a, float b) { return a > b ? b : a; }
static inline double rnngen_max(double a, double b) { return a < b ? b : a; }
static inline double rnngen_min(double a, double b) { return a > b ? b : a; }

/* Sum of row[0..n) in a fixed order that vectorises: RNNGEN_SUM_LANES running sums
 * (lane k takes elements k, k + LANES, ...), then added pairwise.  A single running sum
 * is a chain of dependent additions (one per element: the latency of an add each) and,
 * without -ffast-math, the compiler may not reorder it; this order is the same on
 * every call and every thread, so results stay reproducible. */
#define RNNGEN_SUM_LANES 16
#define RNNGEN_DEFINE_ROW_SUM(T, NAME)                                             \
static inline T NAME(const T *row, int n)                                         \
{                                                                                 \
    T acc[RNNGEN_SUM_LANES];                                                      \
    for (int k = 0; k < RNNGEN_SUM_LANES; k++)                                    \
        acc[k] = 0;                                                               \
    int u = 0;                                                                    \
    for (; u + RNNGEN_SUM_LANES <= n; u += RNNGEN_SUM_LANES)                      \
        for (int k = 0; k < RNNGEN_SUM_LANES; k++)                                \
            acc[k] += row[u + k];                                                 \
    for (int k = 0; u + k < n; k++)                                               \
        acc[k] += row[u + k];                                                     \
    for (int w = RNNGEN_SUM_LANES / 2; w > 0; w /= 2)                             \
        for (int k = 0; k < w; k++)                                               \
            acc[k] += acc[k + w];                                                 \
    return acc[0];                                                                \
}
RNNGEN_DEFINE_ROW_SUM(float, rnngen_row_sum_f32)
RNNGEN_DEFINE_ROW_SUM(double, rnngen_row_sum_f64)

/* Vectorisable float exp and tanh (GCC turns loops of these into SIMD code;
 * libm's expf/tanhf are scalar calls).  Cody-Waite reduction and the Cephes
 * polynomials; within 2 ulp of libm on the tested range.  IEEE at the edges, as libm:
 * NaN propagates, exp overflows to inf above 88.72 (ln FLT_MAX) and underflows gradually
 * through the subnormals to 0 below -103.97: 2^k is applied as 2^(k/2) * 2^(k - k/2),
 * two normal scales, so that the one rounding of the last product is the subnormal's. */
static inline float rnngen_expf(float x)
{
    x = x > 89.0f ? 89.0f : x;                           /* NaN passes through; k <= 129 */
    x = x < -104.0f ? -104.0f : x;                       /* k >= -151: the result rounds to 0 */
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
    const int k = (int)(kb - 0x4B400000u);               /* round(x / ln 2), -151..129 */
    const int k1 = k / 2, k2 = k - k1;                   /* each -76..65: normal scales */
    const unsigned int b1 = (unsigned int)(k1 + 127) << 23, b2 = (unsigned int)(k2 + 127) << 23;
    float s1, s2;
    memcpy(&s1, &b1, sizeof s1);
    memcpy(&s2, &b2, sizeof s2);
    return p * s1 * s2;
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

/* Vectorisable float natural log (libm's logf is a scalar call, which keeps the whole
 * loop around it scalar).  The argument split as m * 2^e with m in [sqrt(1/2), sqrt(2)),
 * log(m) = f - f^2/2 + f^3 P(f), f = m - 1, with the Cephes logf polynomial, and e * log 2
 * added in two parts (as in rnngen_expf); within 2 ulp of libm on the tested range.
 * Subnormal arguments are scaled by 2^25 first; log(+-0) = -inf, log(inf) = inf, and a
 * negative argument or NaN gives NaN, as libm's. */
static inline float rnngen_logf(float x)
{
    const int sub = x < 1.17549435e-38f;                 /* subnormal (or zero, negative) */
    const float xs = sub ? x * 33554432.0f : x;          /* times 2^25 */
    unsigned int bits;
    memcpy(&bits, &xs, sizeof bits);
    /* x = 2^e * m with m in [sqrt(1/2), sqrt(2)): subtracting sqrt(1/2)'s bits moves the
     * exponent's boundary there (integer arithmetic, no branch) */
    const unsigned int ix = bits - 0x3f3504f3u;
    const int e = (int)((ix >> 23) & 0x1ffu) - (int)((ix >> 31) << 9) - (sub ? 25 : 0);
    bits = (ix & 0x007fffffu) + 0x3f3504f3u;
    float m;
    memcpy(&m, &bits, sizeof m);
    const float f = m - 1.0f;
    const float z = f * f;
    float p = 7.0376836292e-2f;
    p = p * f - 1.1514610310e-1f;
    p = p * f + 1.1676998740e-1f;
    p = p * f - 1.2420140846e-1f;
    p = p * f + 1.4249322787e-1f;
    p = p * f - 1.6668057665e-1f;
    p = p * f + 2.0000714765e-1f;
    p = p * f - 2.4999993993e-1f;
    p = p * f + 3.3333331174e-1f;
    const float ef = (float)e;
    float y = p * f * z + ef * -2.12194440e-4f - 0.5f * z;
    y = f + y + ef * 0.693359375f;
    y = x == 0.0f ? -INFINITY : y;
    y = x == INFINITY ? INFINITY : y;
    return x >= 0.0f ? y : NAN;                          /* negative or NaN */
}

/* Small GEMM with a packed right operand, for the per-step products.
 * The BLAS packs its operands on every call; the recurrent matrices are the
 * same at every step, so each thread packs its slice once per call into
 * panels of RNNGEN_PANEL_F32 / _F64 columns (K rows each, zero-padded; element
 * (k, n) of the slice at (n / P) * P * K + k * P + n % P) and this kernel reads
 * them as they lie.  C[M,N] (=|+=) A[M,K] @ P.  The register block comes from the
 * target's table above; GCC vector extensions of the target's vector size. */
#if defined(RNNGEN_KERNEL_PORTABLE)
#define RNNGEN_DEFINE_PGEMM(T, GEMM, P, SFX)                                          \
static inline void rnngen_pgemm##SFX(int M, int N, int K, const T *A, size_t lda,   \
                                     const T *Pk, T *C, size_t ldc, int accumulate)  \
{                                                                                    \
    for (int n0 = 0; n0 < N; n0 += P) {                                              \
        const int nn = N - n0 < P ? N - n0 : P;                                      \
        GEMM(RNNGEN_N, RNNGEN_N, M, nn, K, (T)1, A, (int)lda, Pk + (size_t)n0 * K, P,\
             accumulate ? (T)1 : (T)0, C + n0, (int)ldc);                            \
    }                                                                                \
}
RNNGEN_DEFINE_PGEMM(float, RNNGEN_GEMM_F32, RNNGEN_PANEL_F32, _f32)
RNNGEN_DEFINE_PGEMM(double, RNNGEN_GEMM_F64, RNNGEN_PANEL_F64, _f64)
#else
/* c[0..nn) (=|+=) one panel's row of results, o[NV]; V holds P / NV elements and VU
 * is the same vector type allowed at any address. */
#define RNNGEN_DEFINE_STORE(T, V, VU, NV, P, NAME)                                    \
static inline void NAME(T *c, const V *o, int nn, int accumulate)                    \
{                                                                                    \
    enum { W = P / NV };                                                             \
    if (nn == P) {                                                                   \
        for (int v = 0; v < NV; v++) {                                               \
            V s = o[v];                                                              \
            if (accumulate) s += *(const VU *)(c + v * W);                           \
            *(VU *)(c + v * W) = s;                                                  \
        }                                                                            \
    } else {                                                                         \
        for (int i = 0; i < nn; i++) {                                               \
            const T s = o[i / W][i % W];                                             \
            c[i] = accumulate ? c[i] + s : s;                                        \
        }                                                                            \
    }                                                                                \
}

/* One block of MR rows by one panel: MR x NV accumulators, NV vectors of the panel's
 * row k loaded once and used by every row. */
#define RNNGEN_DEFINE_BLOCK(T, V, VU, NV, P, MR, NAME, STORE)                         \
static inline void NAME(int K, const T *A, size_t lda, const T *pp, T *C, size_t ldc, \
                        int nn, int accumulate)                                      \
{                                                                                    \
    enum { W = P / NV };                                                             \
    V acc[MR][NV];                                                                   \
    for (int r = 0; r < MR; r++)                                                     \
        for (int v = 0; v < NV; v++)                                                 \
            acc[r][v] = (V){0};                                                      \
    for (int k = 0; k < K; k++) {                                                    \
        V b[NV];                                                                     \
        for (int v = 0; v < NV; v++)                                                 \
            b[v] = *(const VU *)(pp + (size_t)k * P + v * W);                        \
        for (int r = 0; r < MR; r++) {                                               \
            const T a = A[(size_t)r * lda + k];                                      \
            for (int v = 0; v < NV; v++)                                             \
                acc[r][v] += a * b[v];                                               \
        }                                                                            \
    }                                                                                \
    for (int r = 0; r < MR; r++)                                                     \
        STORE(C + (size_t)r * ldc, acc[r], nn, accumulate);                          \
}

/* One row by one panel (B = 1 is all such rows): four partial sums over k, so
 * that successive multiply-adds do not wait for each other (4 x NV accumulators). */
#define RNNGEN_DEFINE_ROW(T, V, VU, NV, P, NAME, STORE)                                \
static inline void NAME(int K, const T *a, const T *pp, T *c, int nn, int accumulate) \
{                                                                                    \
    enum { W = P / NV };                                                             \
    V acc[4][NV];                                                                    \
    for (int u = 0; u < 4; u++)                                                      \
        for (int v = 0; v < NV; v++)                                                 \
            acc[u][v] = (V){0};                                                      \
    int k = 0;                                                                       \
    for (; k + 4 <= K; k += 4)                                                       \
        for (int u = 0; u < 4; u++)                                                  \
            for (int v = 0; v < NV; v++)                                             \
                acc[u][v] += a[k + u] * *(const VU *)(pp + (size_t)(k + u) * P + v * W); \
    for (; k < K; k++)                                                               \
        for (int v = 0; v < NV; v++)                                                 \
            acc[0][v] += a[k] * *(const VU *)(pp + (size_t)k * P + v * W);           \
    V o[NV];                                                                         \
    for (int v = 0; v < NV; v++)                                                     \
        o[v] = (acc[0][v] + acc[1][v]) + (acc[2][v] + acc[3][v]);                    \
    STORE(c, o, nn, accumulate);                                                     \
}

/* One row by two adjacent panels, pp and pp + P * K (c: P + nn columns): each element of
 * the row, broadcast once, serves 2 * NV vectors, so fewer loads per multiply-add than
 * one panel at a time; two partial sums over k (2 x 2 * NV accumulators). */
#define RNNGEN_DEFINE_ROW2(T, V, VU, NV, P, NAME, STORE)                               \
static inline void NAME(int K, const T *a, const T *pp, T *c, int nn, int accumulate) \
{                                                                                    \
    enum { W = P / NV };                                                             \
    const T *pq = pp + (size_t)P * K;                                                \
    V acc[2][2 * NV];                                                                \
    for (int u = 0; u < 2; u++)                                                      \
        for (int v = 0; v < 2 * NV; v++)                                             \
            acc[u][v] = (V){0};                                                      \
    int k = 0;                                                                       \
    for (; k + 2 <= K; k += 2)                                                       \
        for (int u = 0; u < 2; u++) {                                                \
            const T av = a[k + u];                                                   \
            for (int v = 0; v < NV; v++)                                             \
                acc[u][v] += av * *(const VU *)(pp + (size_t)(k + u) * P + v * W);   \
            for (int v = 0; v < NV; v++)                                             \
                acc[u][NV + v] += av * *(const VU *)(pq + (size_t)(k + u) * P + v * W); \
        }                                                                            \
    for (; k < K; k++) {                                                             \
        for (int v = 0; v < NV; v++)                                                 \
            acc[0][v] += a[k] * *(const VU *)(pp + (size_t)k * P + v * W);           \
        for (int v = 0; v < NV; v++)                                                 \
            acc[0][NV + v] += a[k] * *(const VU *)(pq + (size_t)k * P + v * W);      \
    }                                                                                \
    V o[2 * NV];                                                                     \
    for (int v = 0; v < 2 * NV; v++)                                                 \
        o[v] = acc[0][v] + acc[1][v];                                                \
    STORE(c, o, P, accumulate);                                                      \
    STORE(c + P, o + NV, nn, accumulate);                                            \
}

/* Rows in blocks of at most MR, as even as they go (16 rows with MR = 6: 5, 5 and 6, not
 * 6, 6 and 4: a small block has too few independent sums to keep the multiply-add units
 * busy); a single row (B = 1) two panels at a time, and an odd last panel alone. */
#define RNNGEN_DEFINE_PGEMM(T, V, VU, NV, P, MR, SFX)                                 \
RNNGEN_DEFINE_STORE(T, V, VU, NV, P, rnngen_store##SFX)                              \
RNNGEN_DEFINE_BLOCK(T, V, VU, NV, P, 2, rnngen_block2##SFX, rnngen_store##SFX)       \
RNNGEN_DEFINE_BLOCK(T, V, VU, NV, P, 3, rnngen_block3##SFX, rnngen_store##SFX)       \
RNNGEN_DEFINE_BLOCK(T, V, VU, NV, P, 4, rnngen_block4##SFX, rnngen_store##SFX)       \
RNNGEN_DEFINE_BLOCK(T, V, VU, NV, P, 5, rnngen_block5##SFX, rnngen_store##SFX)       \
RNNGEN_DEFINE_BLOCK(T, V, VU, NV, P, 6, rnngen_block6##SFX, rnngen_store##SFX)       \
RNNGEN_DEFINE_BLOCK(T, V, VU, NV, P, 7, rnngen_block7##SFX, rnngen_store##SFX)       \
RNNGEN_DEFINE_BLOCK(T, V, VU, NV, P, 8, rnngen_block8##SFX, rnngen_store##SFX)       \
RNNGEN_DEFINE_ROW(T, V, VU, NV, P, rnngen_row##SFX, rnngen_store##SFX)               \
RNNGEN_DEFINE_ROW2(T, V, VU, NV, P, rnngen_row2##SFX, rnngen_store##SFX)             \
static inline void rnngen_pgemm##SFX(int M, int N, int K, const T *A, size_t lda,   \
                                     const T *Pk, T *C, size_t ldc, int accumulate)  \
{                                                                                    \
    _Static_assert(MR >= 2 && MR <= 8, "the register block has 2 to 8 rows");        \
    const int nb = M >= 2 ? (M + MR - 1) / MR : 0;   /* blocks of rows */           \
    for (int n0 = 0; n0 < N && nb > 0; n0 += P) {                                    \
        const int nn = N - n0 < P ? N - n0 : P;                                      \
        const T *pp = Pk + (size_t)n0 * K;                                           \
        for (int b = 0, m = 0; b < nb; b++) {                                        \
            const int rows = (M - m) / (nb - b);                                     \
            const T *a = A + m * lda;                                                \
            T *c = C + m * ldc + n0;                                                 \
            switch (rows) {                                                          \
            case 2: rnngen_block2##SFX(K, a, lda, pp, c, ldc, nn, accumulate); break; \
            case 3: rnngen_block3##SFX(K, a, lda, pp, c, ldc, nn, accumulate); break; \
            case 4: rnngen_block4##SFX(K, a, lda, pp, c, ldc, nn, accumulate); break; \
            case 5: rnngen_block5##SFX(K, a, lda, pp, c, ldc, nn, accumulate); break; \
            case 6: rnngen_block6##SFX(K, a, lda, pp, c, ldc, nn, accumulate); break; \
            case 7: rnngen_block7##SFX(K, a, lda, pp, c, ldc, nn, accumulate); break; \
            default: rnngen_block8##SFX(K, a, lda, pp, c, ldc, nn, accumulate); break; \
            }                                                                        \
            m += rows;                                                               \
        }                                                                            \
    }                                                                                \
    if (M == 1) {                                                                    \
        int n0 = 0;                                                                  \
        for (; n0 + P < N; n0 += 2 * P) {                                            \
            const int nn = N - n0 - P < P ? N - n0 - P : P;                          \
            rnngen_row2##SFX(K, A, Pk + (size_t)n0 * K, C + n0, nn, accumulate);     \
        }                                                                            \
        if (n0 < N)                                                                  \
            rnngen_row##SFX(K, A, Pk + (size_t)n0 * K, C + n0, N - n0, accumulate);  \
    }                                                                                \
}

typedef float rnngen_vf __attribute__((vector_size(RNNGEN_VEC_BYTES)));
typedef float rnngen_vfu __attribute__((vector_size(RNNGEN_VEC_BYTES), aligned(4), may_alias));
typedef double rnngen_vd __attribute__((vector_size(RNNGEN_VEC_BYTES)));
typedef double rnngen_vdu __attribute__((vector_size(RNNGEN_VEC_BYTES), aligned(8), may_alias));
RNNGEN_DEFINE_PGEMM(float, rnngen_vf, rnngen_vfu, RNNGEN_NV_F32, RNNGEN_PANEL_F32, RNNGEN_MR_F32, _f32)
RNNGEN_DEFINE_PGEMM(double, rnngen_vd, rnngen_vdu, RNNGEN_NV_F64, RNNGEN_PANEL_F64, RNNGEN_MR_F64, _f64)
#endif

/* Below this batch size the forward computes x @ W for all steps before the step
 * loop (one GEMM of B*T rows) rather than per step.  Measured (LSTM and GRU, T=100,
 * D=128, H=256, in-process A/B): B=1 and 4: 6-18% faster; B=8 and 16: even; B=32 and
 * 64: 1-4% slower. */
#ifndef RNNGEN_XW_FIRST_B
#define RNNGEN_XW_FIRST_B 8
#endif

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
