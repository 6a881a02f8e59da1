/* The runtime header's vectorisable float exp, tanh and log against double-precision libm
 * rounded to float: every 61st float in [-110, 90] (exp), [-20, 20] (tanh), (0, inf)
 * (log), evaluated in arrays so that the compiler's vectorised loops are what is checked;
 * then the IEEE edges: overflow to inf, gradual underflow through the subnormals to 0,
 * NaN, infinities, zeros.  Prints the largest error in ulp per function; exits 1 on a
 * failure.  Built at every x86 level by tests/test_math.py. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include "rnngen_runtime.h"

enum { N = 1 << 16 };
static float in[N], out[N];

static void run_exp(int n) { for (int i = 0; i < n; i++) out[i] = rnngen_expf(in[i]); }
static void run_tanh(int n) { for (int i = 0; i < n; i++) out[i] = rnngen_tanhf(in[i]); }
static void run_log(int n) { for (int i = 0; i < n; i++) out[i] = rnngen_logf(in[i]); }

static double ulps(float got, double want)
{
    const float w = (float)want;
    if (isnan(want)) return isnan(got) ? 0 : INFINITY;
    if (isinf(w) || w == 0) return got == w ? 0 : INFINITY;
    const float spacing = nextafterf(fabsf(w), INFINITY) - fabsf(w);
    return fabs((double)got - want) / spacing;
}

static double sweep(void (*run)(int), double (*ref)(double), float lo, float hi)
{
    double worst = 0;
    int n = 0;
    for (unsigned long long b = 0; b <= 0xFFFFFFFFull; b += 61) {
        const unsigned int bits = (unsigned int)b;
        float x;
        memcpy(&x, &bits, sizeof x);
        if (!(x >= lo && x <= hi)) continue;
        in[n++] = x;
        if (n == N || b + 61 > 0xFFFFFFFFull) {
            run(n);
            for (int i = 0; i < n; i++) {
                const double u = ulps(out[i], ref((double)in[i]));
                if (u > worst) worst = u;
            }
            n = 0;
        }
    }
    if (n) {
        run(n);
        for (int i = 0; i < n; i++) {
            const double u = ulps(out[i], ref((double)in[i]));
            if (u > worst) worst = u;
        }
    }
    return worst;
}

static int edge(const char *what, float got, float want)
{
    const int ok = (isnan(want) && isnan(got)) || got == want;
    if (!ok) printf("EDGE %s: got %a, want %a\n", what, got, want);
    return !ok;
}

int main(void)
{
    const double e = sweep(run_exp, exp, -110.0f, 90.0f);
    const double t = sweep(run_tanh, tanh, -20.0f, 20.0f);
    const double l = sweep(run_log, log, 0.0f, INFINITY);
    int fails = (e > 2) + (t > 2) + (l > 2);
    fails += edge("exp(89)", rnngen_expf(89.0f), INFINITY);
    fails += edge("exp(88.73)", rnngen_expf(88.73f), INFINITY);
    fails += edge("exp(1000)", rnngen_expf(1000.0f), INFINITY);
    fails += edge("exp(inf)", rnngen_expf(INFINITY), INFINITY);
    fails += edge("exp(-inf)", rnngen_expf(-INFINITY), 0.0f);
    fails += edge("exp(-104)", rnngen_expf(-104.0f), 0.0f);
    fails += edge("exp(-1000)", rnngen_expf(-1000.0f), 0.0f);
    fails += edge("exp(nan)", rnngen_expf(NAN), NAN);
    fails += edge("exp(-103.2789)", rnngen_expf(-103.2789f), 0x1p-149f);   /* the least subnormal */
    fails += ulps(rnngen_expf(-95.0f), exp(-95.0)) > 2;                     /* a subnormal */
    fails += edge("tanh(inf)", rnngen_tanhf(INFINITY), 1.0f);
    fails += edge("tanh(-inf)", rnngen_tanhf(-INFINITY), -1.0f);
    fails += edge("tanh(nan)", rnngen_tanhf(NAN), NAN);
    fails += edge("log(0)", rnngen_logf(0.0f), -INFINITY);
    fails += edge("log(-1)", rnngen_logf(-1.0f), NAN);
    fails += edge("log(inf)", rnngen_logf(INFINITY), INFINITY);
    const float a = -95.0f, ratio = rnngen_expf(a) / (rnngen_expf(a) + rnngen_expf(a - 1.0f));
    fails += fabsf(ratio - 0.7310586f) > 1e-3f;
    printf("kernel %s: exp %.3f ulp, tanh %.3f ulp, log %.3f ulp; exp(-95)/(exp(-95)+exp(-96)) "
           "= %.6f; %d failures\n", RNNGEN_KERNEL_NAME, e, t, l, ratio, fails);
    return fails ? 1 : 0;
}
