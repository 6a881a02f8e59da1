/* Microbenchmarks of the pieces a step is made of, for the build's target (its micro-kernel
 * is the runtime header's choice for the instruction set; `make microbench`, driven by
 * benchmarks/micro.py, builds this once per x86 level the CPU runs):
 *   - the core's multiply-add peak at the kernel's vector width (12 independent chains);
 *   - rnngen_pgemm's single-row path, 1 x K by K x N, with the packed panel in L1 or L2,
 *     against the BLAS's GEMM with one row;
 *   - a step's products on one core: the LSTM's at B = 32 in the batch split (16 x 256 by
 *     256 x 1024, and the input's 16 x 128 by 128 x 1024), in the unit split (32 x 256 by
 *     256 x 512), and two smaller ones, rnngen_pgemm against the BLAS's GEMM (which packs
 *     its operands on every call);
 *   - the kernels' spin barrier and libgomp's, two threads meeting repeatedly;
 *   - the least a B = 1 step of the unit split costs (H = 128): each of two threads
 *     multiplies the whole h by its 64 columns of U, writes its half of the next h, and
 *     meets the other; no input product, activation or saving.
 * Usage: kernels REPS   (REPS scales every loop; the driver passes it). */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "rnngen_runtime.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The core's multiply-add rate at the kernels' vector width, GFLOP/s: 12 independent
 * chains acc = acc * m + b (one FMA each where the target has FMA). */
#if defined(RNNGEN_KERNEL_PORTABLE)
typedef float peak_v;
#else
typedef rnngen_vf peak_v;
#endif
static double fma_peak(long reps)
{
    enum { CHAINS = 12 };
    peak_v acc[CHAINS];
    for (int i = 0; i < CHAINS; i++)
        acc[i] = (peak_v){0} + (float)i;
    volatile float mv = 0.999999f, bv = 1e-7f;
    const float m = mv, b = bv;
    const long iters = reps * 20;
    double best = 1e30;
    for (int round = 0; round < 5; round++) {
        const double t0 = now();
        for (long it = 0; it < iters; it++) {
            for (int i = 0; i < CHAINS; i++)
                acc[i] = acc[i] * m + b;
        }
        const double t = now() - t0;
        if (t < best) best = t;
    }
    float sink = 0;
    for (int i = 0; i < CHAINS; i++)
        sink += ((float *)&acc[i])[0];
    if (sink == 12345.0f) printf("%g\n", sink);
    return 2.0 * (sizeof(peak_v) / sizeof(float)) * CHAINS * (double)iters / best * 1e-9;
}

/* Best of five timings of `reps` products c = a @ P, P packed K x N (*own), and of the
 * BLAS's GEMM with one row on the unpacked matrix (*blas), GFLOP/s. */
static void row_rates(int K, int N, long reps, double *own, double *blas)
{
    const size_t Np = RNNGEN_PACKED_COLS((size_t)N, RNNGEN_PANEL_F32);
    float *P = malloc(sizeof(float) * (size_t)K * Np), *a = malloc(sizeof(float) * (size_t)K);
    float *c = malloc(sizeof(float) * Np);
    if (!P || !a || !c) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < (size_t)K * Np; i++) P[i] = (float)((i * 7919u) % 1000u) * 1e-3f;
    for (int i = 0; i < K; i++) a[i] = (float)(i % 13) * 0.1f;
    double best = 1e30, best_blas = 1e30;
    for (int round = 0; round < 5; round++) {
        double t0 = now();
        for (long i = 0; i < reps; i++) {
            rnngen_pgemm_f32(1, N, K, a, (size_t)K, P, c, (size_t)N, 0);
            a[i % K] += c[0] * 1e-12f;   /* each product depends on the last */
        }
        double t = (now() - t0) / (double)reps;
        if (t < best) best = t;
        t0 = now();
        for (long i = 0; i < reps; i++) {   /* P's first K x N elements as a plain matrix */
            RNNGEN_GEMM_F32(RNNGEN_N, RNNGEN_N, 1, N, K, 1, a, K, P, N, 0, c, N);
            a[i % K] += c[0] * 1e-12f;
        }
        t = (now() - t0) / (double)reps;
        if (t < best_blas) best_blas = t;
    }
    free(P);
    free(a);
    free(c);
    *own = 2.0 * K * N / best * 1e-9;
    *blas = 2.0 * K * N / best_blas * 1e-9;
}

/* Best of five timings of `reps` products C[M,N] = A[M,K] @ B[K,N], by rnngen_pgemm on
 * B packed once (*own) and by the BLAS (*blas), in GFLOP/s on one core. */
static void block_rates(int M, int K, int N, long reps, double *own, double *blas)
{
    const size_t Np = RNNGEN_PACKED_COLS((size_t)N, RNNGEN_PANEL_F32);
    float *P = malloc(sizeof(float) * (size_t)K * Np), *A = malloc(sizeof(float) * (size_t)M * K);
    float *Bm = malloc(sizeof(float) * (size_t)K * N), *C = malloc(sizeof(float) * (size_t)M * Np);
    if (!P || !A || !Bm || !C) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < (size_t)K * Np; i++) P[i] = (float)((i * 7919u) % 1000u) * 1e-3f;
    for (size_t i = 0; i < (size_t)K * N; i++) Bm[i] = (float)((i * 7919u) % 1000u) * 1e-3f;
    for (size_t i = 0; i < (size_t)M * K; i++) A[i] = (float)(i % 13) * 0.1f;
    rnngen_blas_serial();
    double best_own = 1e30, best_blas = 1e30;
    for (int round = 0; round < 5; round++) {
        double t0 = now();
        for (long i = 0; i < reps; i++) {
            rnngen_pgemm_f32(M, N, K, A, (size_t)K, P, C, (size_t)N, 0);
            A[i % K] += C[0] * 1e-12f;
        }
        double t = (now() - t0) / (double)reps;
        if (t < best_own) best_own = t;
        t0 = now();
        for (long i = 0; i < reps; i++) {
            RNNGEN_GEMM_F32(RNNGEN_N, RNNGEN_N, M, N, K, 1, A, K, Bm, N, 0, C, N);
            A[i % K] += C[0] * 1e-12f;
        }
        t = (now() - t0) / (double)reps;
        if (t < best_blas) best_blas = t;
    }
    free(P);
    free(A);
    free(Bm);
    free(C);
    *own = 2.0 * M * N * K / best_own * 1e-9;
    *blas = 2.0 * M * N * K / best_blas * 1e-9;
}

int main(int argc, char **argv)
{
    const long reps = argc > 1 ? atol(argv[1]) : 20000;
    if (reps < 1) {
        fprintf(stderr, "usage: kernels REPS (REPS >= 1)\n");
        return 2;
    }
    char *scipy_openblas_get_corename(void);
    printf("kernel %s; BLAS core %s\n", RNNGEN_KERNEL_INFO, scipy_openblas_get_corename());
    const double peak = fma_peak(reps);
    printf("peak %.1f GFLOP/s on one core (multiply-adds at the kernel's vector width)\n", peak);
    static const int shapes[][2] = {{128, 64}, {128, 256}, {128, 512}, {512, 64}, {64, 512},
                                    {256, 1024}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int K = shapes[s][0], N = shapes[s][1];
        double own, blas;
        row_rates(K, N, reps * 64 / K + 1, &own, &blas);
        printf("row 1x%d by %dx%d (panel %d KB): rnngen %.1f, BLAS %.1f GFLOP/s on one core "
               "(%.0f%% of peak)\n", K, K, N,
               (int)(K * RNNGEN_PACKED_COLS(N, RNNGEN_PANEL_F32) * sizeof(float) / 1024),
               own, blas, 100 * own / peak);
    }

    static const int blocks[][3] = {{16, 256, 1024}, {16, 128, 1024}, {32, 256, 512},
                                    {16, 256, 256}, {32, 256, 128}};
    for (size_t s = 0; s < sizeof blocks / sizeof blocks[0]; s++) {
        double own, blas;
        block_rates(blocks[s][0], blocks[s][1], blocks[s][2],
                    reps * 2048 / ((long)blocks[s][0] * blocks[s][1] * blocks[s][2] / 256) / 20 + 1,
                    &own, &blas);
        printf("block %dx%d by %dx%d: rnngen %.1f, BLAS %.1f GFLOP/s on one core (%.0f%% of "
               "the BLAS)\n", blocks[s][0], blocks[s][1], blocks[s][1], blocks[s][2], own, blas,
               100 * own / blas);
    }

    const long n = reps * 10;
    rnngen_barrier bar = {0, 0, {0}};
    double t0 = now();
#pragma omp parallel num_threads(2)
    {
        int sense = 0;
        const int nt = omp_get_num_threads();
        for (long i = 0; i < n; i++)
            rnngen_barrier_wait(&bar, nt, &sense);
    }
    const double own = (now() - t0) / (double)n;
    t0 = now();
#pragma omp parallel num_threads(2)
    {
        for (long i = 0; i < n; i++) {
#pragma omp barrier
        }
    }
    const double gomp = (now() - t0) / (double)n;
    printf("barrier, 2 threads: rnngen %.0f ns, libgomp %.0f ns\n", own * 1e9, gomp * 1e9);

    enum { HS = 128 };   /* bare B = 1 recurrence: h <- h @ U, 64 columns per thread */
    float *U = malloc(sizeof(float) * HS * HS), *h = malloc(sizeof(float) * 2 * HS);
    if (!U || !h) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (int i = 0; i < HS * HS; i++) U[i] = 1.0f / HS;   /* h stays 0.5: no denormals */
    for (int i = 0; i < 2 * HS; i++) h[i] = 0.5f;
    const long steps = reps * 5;
    double best = 1e30;
    for (int round = 0; round < 5; round++) {
        rnngen_barrier sb = {0, 0, {0}};
        t0 = now();
#pragma omp parallel num_threads(2)
        {
            int sense = 0;
            const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
            int j0, j1;
            rnngen_share(HS, RNNGEN_UNIT_BLOCK, tid, nt, &j0, &j1);
            const int N = j1 - j0;
            float *P = malloc(sizeof(float) * HS * RNNGEN_PACKED_COLS((size_t)N, RNNGEN_PANEL_F32));
            if (!P) {
                fprintf(stderr, "out of memory\n");
                exit(1);
            }
            for (int k = 0; k < HS; k++)   /* this thread's columns, packed once */
                for (int c = 0; c < (int)RNNGEN_PACKED_COLS((size_t)N, RNNGEN_PANEL_F32); c++)
                    P[(c / RNNGEN_PANEL_F32) * RNNGEN_PANEL_F32 * HS + k * RNNGEN_PANEL_F32 + c % RNNGEN_PANEL_F32] =
                        c < N ? U[k * HS + j0 + c] : 0;
            for (long t = 0; t < steps; t++) {
                const float *cur = h + (t & 1) * HS;
                float *next = h + ((t + 1) & 1) * HS;
                rnngen_pgemm_f32(1, N, HS, cur, HS, P, next + j0, HS, 0);
                rnngen_barrier_wait(&sb, nt, &sense);
            }
            free(P);
        }
        const double t = (now() - t0) / (double)steps;
        if (t < best) best = t;
    }
    free(U);
    free(h);
    printf("bare B=1 step (1x128 by 128x64 per thread, then a barrier), 2 threads: %.0f ns\n",
           best * 1e9);
    return 0;
}
