/* Microbenchmarks of the pieces a B = 1 step is made of, for the arithmetic in the
 * README's Status section (`make microbench`, driven by benchmarks/micro.py):
 *   - rnngen_pgemm's single-row path, 1 x K by K x N, with the packed panel in L1 or L2;
 *   - the kernels' spin barrier and libgomp's, two threads meeting repeatedly.
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

/* Best of five timings of `reps` products c = a @ P, P packed K x N. */
static double row_rate(int K, int N, long reps)
{
    const size_t Np = RNNGEN_PACKED_COLS((size_t)N);
    float *P = malloc(sizeof(float) * (size_t)K * Np), *a = malloc(sizeof(float) * (size_t)K);
    float *c = malloc(sizeof(float) * Np);
    if (!P || !a || !c) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < (size_t)K * Np; i++) P[i] = (float)((i * 7919u) % 1000u) * 1e-3f;
    for (int i = 0; i < K; i++) a[i] = (float)(i % 13) * 0.1f;
    double best = 1e30;
    for (int round = 0; round < 5; round++) {
        const double t0 = now();
        for (long i = 0; i < reps; i++) {
            rnngen_pgemm_f32(1, N, K, a, (size_t)K, P, c, (size_t)N, 0);
            a[i % K] += c[0] * 1e-12f;   /* each product depends on the last */
        }
        const double t = (now() - t0) / (double)reps;
        if (t < best) best = t;
    }
    free(P);
    free(a);
    free(c);
    return 2.0 * K * N / best * 1e-9;
}

int main(int argc, char **argv)
{
    const long reps = argc > 1 ? atol(argv[1]) : 20000;
    if (reps < 1) {
        fprintf(stderr, "usage: kernels REPS (REPS >= 1)\n");
        return 2;
    }
    static const int shapes[][2] = {{128, 64}, {128, 256}, {128, 512}, {512, 64}, {64, 512}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int K = shapes[s][0], N = shapes[s][1];
        printf("row 1x%d by %dx%d (panel %d KB): %.0f GFLOP/s on one core\n", K, K, N,
               (int)(K * RNNGEN_PACKED_COLS(N) * sizeof(float) / 1024), row_rate(K, N, reps));
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
    return 0;
}
