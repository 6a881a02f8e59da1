/* The packed product of templates/rnngen_runtime.h (the per-step micro-kernels of the
 * build's target) against a plain triple loop in double: float and double, every row
 * count from 1 to 3 blocks and more, odd column counts (partial panels), odd depths, with
 * C written (=) and accumulated (+=), A and C with leading dimensions wider than their
 * rows.  Prints the kernel's name and its register blocks; exits 1 on a mismatch.
 * Built for every x86 level the CPU runs and for aarch64 under qemu-user by
 * tests/test_targets.py. */
#include <stdio.h>
#include <stdlib.h>
#include "rnngen_runtime.h"

static unsigned long long rng = 88172645463325252ull;
static double next(void)   /* xorshift, in [-1, 1) */
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (double)(rng >> 11) / 4503599627370496.0 - 1.0;
}

#define DEFINE_CHECK(T, SFX, PANEL, TOL)                                              \
static int check##SFX(int M, int N, int K, int accumulate)                           \
{                                                                                    \
    const size_t lda = (size_t)K + 3, ldc = (size_t)N + 5;                           \
    const size_t Np = RNNGEN_PACKED_COLS((size_t)N, (size_t)PANEL);                  \
    T *A = malloc(sizeof(T) * (M * lda + 1)), *Bm = malloc(sizeof(T) * ((size_t)K * N + 1)); \
    T *P = malloc(sizeof(T) * (Np * K + 1)), *C = malloc(sizeof(T) * (M * ldc + 1)); \
    double *R = malloc(sizeof(double) * ((size_t)M * N + 1));                        \
    for (size_t i = 0; i < M * lda; i++) A[i] = (T)next();                           \
    for (size_t i = 0; i < (size_t)K * N; i++) Bm[i] = (T)next();                    \
    for (size_t n = 0; n < Np; n++)                                                  \
        for (int k = 0; k < K; k++)                                                  \
            P[(n / PANEL) * PANEL * (size_t)K + (size_t)k * PANEL + n % PANEL] =     \
                n < (size_t)N ? Bm[(size_t)k * N + n] : (T)0;                        \
    for (size_t i = 0; i < M * ldc; i++) C[i] = (T)next();                           \
    for (int m = 0; m < M; m++)                                                      \
        for (int n = 0; n < N; n++) {                                                \
            double s = accumulate ? (double)C[m * ldc + n] : 0.0;                    \
            for (int k = 0; k < K; k++)                                              \
                s += (double)A[m * lda + k] * (double)Bm[(size_t)k * N + n];         \
            R[(size_t)m * N + n] = s;                                                \
        }                                                                            \
    const T pad = C[N];   /* between rows: must stay as it is */                       \
    rnngen_pgemm##SFX(M, N, K, A, lda, P, C, ldc, accumulate);                       \
    int bad = C[N] != pad;                                                           \
    for (int m = 0; m < M && !bad; m++)                                              \
        for (int n = 0; n < N && !bad; n++) {                                        \
            const double d = (double)C[m * ldc + n] - R[(size_t)m * N + n];          \
            if (d > TOL * (K + 1) || d < -TOL * (K + 1) || d != d) {                 \
                printf("MISMATCH %s M=%d N=%d K=%d acc=%d at (%d,%d): %g vs %g\n",  \
                       #T, M, N, K, accumulate, m, n, (double)C[m * ldc + n],        \
                       R[(size_t)m * N + n]);                                        \
                bad = 1;                                                             \
            }                                                                        \
        }                                                                            \
    free(A); free(Bm); free(P); free(C); free(R);                                    \
    return bad;                                                                      \
}
DEFINE_CHECK(float, _f32, RNNGEN_PANEL_F32, 2e-6)
DEFINE_CHECK(double, _f64, RNNGEN_PANEL_F64, 4e-15)

int main(void)
{
    static const int Ms[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 16, 17, 19, 25, 33};
    static const int Ns[] = {1, 3, 4, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100};
    static const int Ks[] = {1, 2, 3, 5, 8, 13, 64, 67};
    int fails = 0, cases = 0;
    for (size_t a = 0; a < sizeof Ms / sizeof *Ms; a++)
        for (size_t b = 0; b < sizeof Ns / sizeof *Ns; b++)
            for (size_t c = 0; c < sizeof Ks / sizeof *Ks; c++)
                for (int acc = 0; acc < 2; acc++) {
                    fails += check_f32(Ms[a], Ns[b], Ks[c], acc);
                    fails += check_f64(Ms[a], Ns[b], Ks[c], acc);
                    cases += 2;
                }
    printf("kernel %s: float %dx%d, double %dx%d; %d cases, %d mismatches\n",
           RNNGEN_KERNEL_NAME, RNNGEN_MR_F32, (int)RNNGEN_PANEL_F32, RNNGEN_MR_F64,
           (int)RNNGEN_PANEL_F64, cases, fails);
    return fails ? 1 : 0;
}
