# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The numerical gradient of the book's TwoLayerNet (ch04 ``numerical_gradient``).

Design note
-----------
What: for every parameter ``p`` (W1, b1, W2, b2) the central difference
``g_p = (L(p + h) - L(p - h)) / 2h`` of the book's loss
``L = mean_n l_n``, ``l_n = -log(y[n, t_n] + 1e-7)``, by one of two methods:

``full``
    The book's algorithm compiled: each thread holds its own copy of the
    parameters, perturbs one entry by +h, runs the whole forward pass on the
    batch (``x W1`` skipping zero pixels), takes the loss, does the same at
    -h, restores the entry. Nothing is reused between perturbations.

``incremental``
    The same perturbations, evaluated without recomputing what they cannot
    change. One forward pass per batch caches ``a1, z1, a2`` and the
    softmax ``y``. Perturbing ``W1[i, j]`` (``b1[j]``) moves ``a1[n, j]`` by
    ``d = +-h x[n, i]`` (``+-h``) for the samples with ``x[n, i] != 0``;
    ``W2[j, k]`` (``b2[k]``) moves ``a2[n, k]`` by ``e = +-h z1[n, j]``
    (``+-h``). For each affected sample and each sign the loss change
    ``l_n' - l_n`` is evaluated separately, and
    ``g_p = sum_n (l_n(p + h) - l_n(p - h)) / (2 h N)``.

    The loss change of a sample is an analytic function of the small shift:

        hidden unit j, shift d:  dz = s(a + d) - s(a)            (s = sigmoid)
            l' - l = -log1p(kappa D(dz) / (1 + q(dz)))
            q(u) = sum_k y_k expm1(u w_k),  D(u) = sum_{k != t} y_k (expm1(u w_t) - expm1(u w_k))
        output k, shift e:  E = expm1(e)
            l' - l = -log1p(kappa ([k = t] - y_k) E / (1 + y_k E))

    with ``w = W2[j, :]`` and ``kappa = y_t / (y_t + 1e-7)`` (the book's
    ``+ 1e-7``, kept exactly). Once per batch each of these functions is
    expanded into its Taylor polynomial of degree M (one per (sample, hidden
    unit), one per (sample, output)) by power-series arithmetic: the sigmoid
    coefficients from its ODE ``s' = s (1 - s)`` seeded with ``s`` and
    ``1 - s`` taken from ``e^{-|a|}`` (exact for saturated units too), the
    moments ``P_m = sum_k y_k w_k^m / m!``, a series division for
    ``1 / (1 + q)``, the series of ``log1p`` from ``(1 + r) psi' = r'``, and
    the composition with ``dz(d)``. Each perturbation is then a Horner
    evaluation at ``+d`` and at ``-d``: no exp or log in the loop.
    ``method="literal"`` evaluates the closed forms above with exp/expm1/log1p
    for every perturbation instead (also the automatic fallback).

Why exact: the polynomials are truncated Taylor series, so their only error
besides rounding is the tail. ``series_degree`` bounds it per batch from the
largest shift and the largest spread of a row of W2 (softmax does not see a
common offset, so ``w`` is centred first): on the complex disc
``|d| <= R_A = min(3/2, (3/4) log(1.2) / max_j halfrange(W2[j, :]))`` the
sigmoid stays in ``|s| <= 1`` (Cauchy: its change is at most ``4|d|/3``),
every ``|expm1(u w_k)| <= 0.2`` and so ``|r| <= 1/2`` and ``|l' - l| <=
log 2``; on ``|e| <= R_B = log(4/3)`` the same holds for the outputs.
Cauchy's estimate then bounds the tail of the degree-M polynomial relative
to the function's own scale by ``theta^M / (1 - theta)``, ``theta =
shift / R``, and M is the smallest degree that puts this below 2^-53. When
no degree up to MAX_DEGREE does (a large h, unnormalised 0..255 input, huge
weights) the batch takes the literal path (``series_degree`` tells which).
The literal path evaluates the same closed forms, written without
cancellation (``dz = s(a + d) (1 - s(a)) (-expm1(-d))``, ``1 - y_t`` as
``sum_{k != t} y_k``), so series and literal agree to rounding; ``full``
keeps the book's cancellation (two batch losses differenced: ~1e-11 noise).

Parallelism: ``prange`` over samples for the cache and the coefficients,
over rows i of W1 (all hidden units of a row together), over hidden units j
for b1 and W2, and over parameters for ``full`` (each thread perturbs its
own copy of the parameters, indexed by ``threadid()``, and restores it).
Each derivative is accumulated by one thread, samples in ascending order, in
locals of that thread, so results are bitwise identical for any thread count
and any schedule. The loops are scheduled dynamically in small chunks, as in
``_core``: on a shared machine one core may run slower for seconds, and a
static split would make the other wait.

Speed: the two hottest loops (the Horner loop of W1 and the forward pass of
``full``) are C helpers with GCC/clang vector extensions (Cython cannot ask
for registers), compiled for any x86-64 (SSE2) and, as
``target("avx2,fma")`` functions, for AVX2; the CPU picks at import
(``simd()``). The forward pass of ``full`` keeps 13 vector accumulators
(52 hidden units with AVX2) in registers while a sample's non-zero pixels
stream past, and takes its sigmoids and softmax with a branch-free vector
exp (the algorithm of ``_core``'s, within about 1 ulp of libm's). setup.py
compiles without FMA contraction, so every variant gives bitwise the same
numbers; other compilers get plain loops with the same sums. The per-batch
scratch arrays are kept between calls (one set per Python thread).

Callers (``zerokara.backends.cython`` via ``TwoLayerNet``) validate
everything first. The NumPy twin is ``zerokara/backends/_numgrad_python.py``.
"""

import threading

import numpy as np

from cython.parallel cimport prange, threadid
from libc.math cimport exp, expm1, fabs, log, log1p
from libc.stdint cimport int64_t

ctypedef fused floating_x:
    float
    double

# The two hottest loops, in C so that they can be compiled twice: once for
# any x86-64 (SSE2), once for AVX2+FMA, chosen at import from what the CPU
# supports (no -march=native needed). The arithmetic is the same (setup.py
# turns FMA contraction off). Other compilers get the portable one.
cdef extern from *:
    """
    #include <math.h>
    #include <string.h>
    #include <stdint.h>
    #if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
    #  define ZK_HAVE_CLONES 1
    #  define ZK_AVX2 __attribute__((target("avx2,fma")))
    #else
    #  define ZK_HAVE_CLONES 0
    #endif
    #if defined(__GNUC__) || defined(__clang__)
    #  define ZK_INLINE static inline __attribute__((always_inline))
    #  define ZK_UNROLL13 _Pragma("GCC unroll 13")
    #else
    #  define ZK_INLINE static inline
    #  define ZK_UNROLL13
    #endif
    #if defined(__GNUC__) || defined(__clang__)
    typedef double zk_v2 __attribute__((vector_size(16)));
    typedef double zk_v4 __attribute__((vector_size(32)));
    typedef long long zk_i2 __attribute__((vector_size(16)));
    typedef long long zk_i4 __attribute__((vector_size(32)));

    /* exp(x) for x <= 0, L lanes at a time, branch-free: the same algorithm
       as _core.pyx's zk_exp_neg (Cody-Waite reduction x = k ln2 + r, the
       degree-13 Taylor polynomial of e^r by Estrin's scheme, scaling by 2^k
       as two exact powers of two): within about 1 ulp of libm's exp. */
    #define ZK_EXP_NEG_BODY(VT, IT)                                                    \
        const VT zero = {0};                                                           \
        const VT shifter = zero + 6755399441055744.0;  /* 1.5 * 2^52 */                \
        const IT keep = (IT)(x > -1000.0);                                             \
        const VT xc = (VT)(((IT)x & keep) | ((IT)(zero - 1000.0) & ~keep));            \
        const VT tt = xc * 1.4426950408889634 + shifter;                               \
        const VT kd = tt - shifter;                                                    \
        const IT k = (IT)tt - (IT)shifter;                                             \
        const VT r = (xc - kd * 6.93147180369123816490e-01) - kd * 1.90821492927058770002e-10; \
        const VT r2 = r * r, r4 = r2 * r2, r8 = r4 * r4;                               \
        const VT q = ((r * (1.0 / 6.0) + 0.5) + r2 * (r * (1.0 / 120.0) + 1.0 / 24.0)) \
            + r4 * ((r * (1.0 / 5040.0) + 1.0 / 720.0) + r2 * (r * (1.0 / 362880.0) + 1.0 / 40320.0)) \
            + r8 * ((r * (1.0 / 39916800.0) + 1.0 / 3628800.0)                         \
                    + r2 * (r * (1.0 / 6227020800.0) + 1.0 / 479001600.0));            \
        VT pv = (r + r2 * q) + 1.0;                                                    \
        const IT k1 = ((k + 2048) >> 1) - 1024;                                        \
        pv = pv * (VT)((k1 + 1023) << 52) * (VT)((k - k1 + 1023) << 52);               \
        return pv;

    ZK_INLINE zk_v2 zk_exp_neg2(zk_v2 x) { ZK_EXP_NEG_BODY(zk_v2, zk_i2) }
    #if ZK_HAVE_CLONES
    ZK_AVX2 ZK_INLINE zk_v4 zk_exp_neg4(zk_v4 x) { ZK_EXP_NEG_BODY(zk_v4, zk_i4) }
    #endif
    #endif

    static int zk_simd = 0;  /* 1: use the AVX2+FMA versions */

    static int zk_cpu_has_avx2_fma(void) {
    #if ZK_HAVE_CLONES
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    #else
        return 0;
    #endif
    }

    /* One sample's part of the book's loss, from a = x W1 (without b1) in z:
       sigmoid from e = exp(-|a|), a2 = z W2 + b2, softmax minus the row
       maximum, -log(y_t + 1e-7). Overwrites z[0..H) and a2. */
    ZK_INLINE double zk_sample_loss(double *z, const double *b1, const double *W2,
            const double *b2, Py_ssize_t H, Py_ssize_t O, int64_t t, double *a2)
    {
        for (Py_ssize_t j = 0; j < H; j++) {
            const double a = z[j] + b1[j], e = exp(-fabs(a));
            z[j] = a >= 0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
        }
        for (Py_ssize_t k = 0; k < O; k++) a2[k] = 0.0;
        for (Py_ssize_t j = 0; j < H; j++) {
            const double zj = z[j];
            for (Py_ssize_t k = 0; k < O; k++) a2[k] += zj * W2[j * O + k];
        }
        double m = a2[0] + b2[0], s = 0.0;
        for (Py_ssize_t k = 0; k < O; k++) {
            a2[k] += b2[k];
            m = a2[k] > m ? a2[k] : m;
        }
        for (Py_ssize_t k = 0; k < O; k++) s += exp(a2[k] - m);
        return -log(exp(a2[t] - m) / s + 1e-7);
    }

    /* The book's loss of the batch from scratch. x W1 over the non-zero
       pixels of each sample, ascending: rows of W1 (and z, b1) hold Hp, a
       multiple of 52, and 13 vector accumulators of L doubles (all 52 hidden
       units with AVX2, 26 at a time with SSE2) stay in registers while the
       sample's rows stream past. Then sigmoid (1 / (1 + e) or e / (1 + e),
       e = exp(-|a|)) and the softmax's exp(a2 - max) L lanes at a time with
       the vector exp (a2 has room for O rounded up to L), a2 = z W2 + b2 and
       -log(y_t + 1e-7) in plain loops. */
    #define ZK_BATCH_LOSS_BODY(VT, IT, L, EXPNEG)                                      \
        double total = 0.0;                                                            \
        const VT zero = {0};                                                           \
        const IT sign = (IT)(-zero);  /* the sign bit */                                 \
        for (Py_ssize_t n = 0; n < N; n++) {                                           \
            for (Py_ssize_t jb = 0; jb < Hp; jb += 13 * L) {                           \
                VT acc[13], wv;                                                        \
                for (int q = 0; q < 13; q++) acc[q] = zero;                            \
                for (Py_ssize_t p = rowptr[n]; p < rowptr[n + 1]; p++) {               \
                    const double v = vals[p];                                          \
                    const double *w = W1 + (Py_ssize_t)cols[p] * Hp + jb;              \
                    ZK_UNROLL13                                                        \
                    for (int q = 0; q < 13; q++) {                                     \
                        memcpy(&wv, w + q * L, sizeof wv);                             \
                        acc[q] += v * wv;                                              \
                    }                                                                  \
                }                                                                      \
                memcpy(z + jb, acc, sizeof acc);                                       \
            }                                                                          \
            for (Py_ssize_t j = 0; j < H; j += L) {                                    \
                VT av, bv;                                                             \
                memcpy(&av, z + j, sizeof av);                                         \
                memcpy(&bv, b1 + j, sizeof bv);                                        \
                av = av + bv;                                                          \
                const VT e = EXPNEG((VT)((IT)av | sign));                              \
                const IT pos = (IT)(av >= 0.0);                                        \
                av = (VT)(((IT)(zero + 1.0) & pos) | ((IT)e & ~pos)) / (1.0 + e);     \
                memcpy(z + j, &av, sizeof av);                                         \
            }                                                                          \
            for (Py_ssize_t k = 0; k < O; k++) a2[k] = 0.0;                            \
            for (Py_ssize_t j = 0; j < H; j++) {                                       \
                const double zj = z[j];                                                \
                for (Py_ssize_t k = 0; k < O; k++) a2[k] += zj * W2[j * O + k];        \
            }                                                                          \
            double m = a2[0] + b2[0], s = 0.0;                                         \
            for (Py_ssize_t k = 0; k < O; k++) {                                       \
                a2[k] += b2[k];                                                        \
                m = a2[k] > m ? a2[k] : m;                                             \
            }                                                                          \
            for (Py_ssize_t k = O; k % L; k++) a2[k] = m;                              \
            for (Py_ssize_t k = 0; k < O; k += L) {                                    \
                VT av;                                                                 \
                memcpy(&av, a2 + k, sizeof av);                                        \
                av = EXPNEG(av - m);                                                   \
                memcpy(a2 + k, &av, sizeof av);                                        \
            }                                                                          \
            for (Py_ssize_t k = 0; k < O; k++) s += a2[k];                             \
            total += -log(a2[t[n]] / s + 1e-7);                                        \
        }                                                                              \
        return total / N;

    /* dW1[i, :] of the incremental method: for the samples n = rows[p] with
       x[n, i] != 0, d = h x[n, i], sum_p (f_nj(d) - f_nj(-d)) / denom, where
       f_nj(d) = sum_{m=1}^{M} ch[(n M + m - 1) Hp + j] d^m. Horner's rule for
       both signs, 8 hidden units at a time in vector registers (GCC vector
       extensions; L doubles per vector). */
    #define ZK_W1_SERIES_BODY(VT, L)                                                   \
        for (Py_ssize_t jb = 0; jb < Hp; jb += 8) {                                    \
            VT acc[8 / L], bp[8 / L], bm[8 / L], cv;                                   \
            for (int v = 0; v < 8 / L; v++) acc[v] = (VT){0};                          \
            for (Py_ssize_t p = start; p < end; p++) {                                 \
                const double d = h * vals[p], md = -d;                                 \
                const double *c = ch + ((Py_ssize_t)rows[p] * M) * Hp + jb;            \
                const double *cm = c + (Py_ssize_t)(M - 1) * Hp;                       \
                for (int v = 0; v < 8 / L; v++) {                                      \
                    memcpy(&cv, cm + v * L, sizeof cv);                                \
                    bp[v] = cv;                                                        \
                    bm[v] = cv;                                                        \
                }                                                                      \
                for (int m = M - 2; m >= 0; m--) {                                     \
                    cm = c + (Py_ssize_t)m * Hp;                                       \
                    for (int v = 0; v < 8 / L; v++) {                                  \
                        memcpy(&cv, cm + v * L, sizeof cv);                            \
                        bp[v] = bp[v] * d + cv;                                        \
                        bm[v] = bm[v] * md + cv;                                       \
                    }                                                                  \
                }                                                                      \
                for (int v = 0; v < 8 / L; v++) acc[v] += d * bp[v] - md * bm[v];      \
            }                                                                          \
            for (int v = 0; v < 8 / L; v++)                                            \
                for (int l = 0; l < L; l++)                                            \
                    if (jb + v * L + l < H) out[jb + v * L + l] = acc[v][l] / denom;   \
        }

    #if defined(__GNUC__) || defined(__clang__)
    static void zk_w1_row_series_base(Py_ssize_t start, Py_ssize_t end, const int *rows,
            const double *vals, const double *ch, Py_ssize_t Hp, Py_ssize_t H, int M,
            double h, double denom, double *out)
    {
        ZK_W1_SERIES_BODY(zk_v2, 2)
    }
    #else
    static void zk_w1_row_series_base(Py_ssize_t start, Py_ssize_t end, const int *rows,
            const double *vals, const double *ch, Py_ssize_t Hp, Py_ssize_t H, int M,
            double h, double denom, double *out)
    {
        for (Py_ssize_t j = 0; j < H; j++) {
            double acc = 0.0;
            for (Py_ssize_t p = start; p < end; p++) {
                const double d = h * vals[p], md = -d;
                const double *c = ch + ((Py_ssize_t)rows[p] * M) * Hp + j;
                double bp = c[(M - 1) * Hp], bm = bp;
                for (int m = M - 2; m >= 0; m--) {
                    bp = bp * d + c[m * Hp];
                    bm = bm * md + c[m * Hp];
                }
                acc += d * bp - md * bm;
            }
            out[j] = acc / denom;
        }
    }
    #endif

    #if defined(__GNUC__) || defined(__clang__)
    static double zk_batch_loss_base(const Py_ssize_t *rowptr, const int *cols,
            const double *vals, Py_ssize_t N, const int64_t *t, const double *W1,
            const double *b1, const double *W2, const double *b2, Py_ssize_t H,
            Py_ssize_t Hp, Py_ssize_t O, double *z, double *a2)
    {
        ZK_BATCH_LOSS_BODY(zk_v2, zk_i2, 2, zk_exp_neg2)
    }
    #else
    static double zk_batch_loss_base(const Py_ssize_t *rowptr, const int *cols,
            const double *vals, Py_ssize_t N, const int64_t *t, const double *W1,
            const double *b1, const double *W2, const double *b2, Py_ssize_t H,
            Py_ssize_t Hp, Py_ssize_t O, double *z, double *a2)
    {
        double total = 0.0;
        for (Py_ssize_t n = 0; n < N; n++) {
            for (Py_ssize_t j = 0; j < H; j++) z[j] = 0.0;
            for (Py_ssize_t p = rowptr[n]; p < rowptr[n + 1]; p++) {
                const double v = vals[p];
                const double *w = W1 + (Py_ssize_t)cols[p] * Hp;
                for (Py_ssize_t j = 0; j < H; j++) z[j] += v * w[j];
            }
            total += zk_sample_loss(z, b1, W2, b2, H, O, t[n], a2);
        }
        return total / N;
    }
    #endif

    #if ZK_HAVE_CLONES
    ZK_AVX2 static void zk_w1_row_series_avx2(Py_ssize_t start, Py_ssize_t end,
            const int *rows, const double *vals, const double *ch, Py_ssize_t Hp,
            Py_ssize_t H, int M, double h, double denom, double *out)
    {
        ZK_W1_SERIES_BODY(zk_v4, 4)
    }
    ZK_AVX2 static double zk_batch_loss_avx2(const Py_ssize_t *rowptr, const int *cols,
            const double *vals, Py_ssize_t N, const int64_t *t, const double *W1,
            const double *b1, const double *W2, const double *b2, Py_ssize_t H,
            Py_ssize_t Hp, Py_ssize_t O, double *z, double *a2)
    {
        ZK_BATCH_LOSS_BODY(zk_v4, zk_i4, 4, zk_exp_neg4)
    }
    #endif

    static void zk_w1_row_series(Py_ssize_t start, Py_ssize_t end, const int *rows,
            const double *vals, const double *ch, Py_ssize_t Hp, Py_ssize_t H, int M,
            double h, double denom, double *out)
    {
    #if ZK_HAVE_CLONES
        if (zk_simd) {
            zk_w1_row_series_avx2(start, end, rows, vals, ch, Hp, H, M, h, denom, out);
            return;
        }
    #endif
        zk_w1_row_series_base(start, end, rows, vals, ch, Hp, H, M, h, denom, out);
    }

    static double zk_batch_loss(const Py_ssize_t *rowptr, const int *cols,
            const double *vals, Py_ssize_t N, const int64_t *t, const double *W1,
            const double *b1, const double *W2, const double *b2, Py_ssize_t H,
            Py_ssize_t Hp, Py_ssize_t O, double *z, double *a2)
    {
    #if ZK_HAVE_CLONES
        if (zk_simd)
            return zk_batch_loss_avx2(rowptr, cols, vals, N, t, W1, b1, W2, b2, H, Hp, O, z, a2);
    #endif
        return zk_batch_loss_base(rowptr, cols, vals, N, t, W1, b1, W2, b2, H, Hp, O, z, a2);
    }
    """
    int zk_simd
    int zk_cpu_has_avx2_fma() noexcept nogil
    double zk_batch_loss(const Py_ssize_t* rowptr, const int* cols, const double* vals,
                         Py_ssize_t N, const int64_t* t, const double* W1, const double* b1,
                         const double* W2, const double* b2, Py_ssize_t H, Py_ssize_t Hp,
                         Py_ssize_t O, double* z, double* a2) noexcept nogil
    void zk_w1_row_series(Py_ssize_t start, Py_ssize_t end, const int* rows,
                          const double* vals, const double* ch, Py_ssize_t Hp, Py_ssize_t H,
                          int M, double h, double denom, double* out) noexcept nogil


def simd():
    """Which variant of the hot loops runs: ``"avx2+fma"`` or ``"baseline"`` (any x86-64 / other CPUs)."""
    return "avx2+fma" if zk_simd else "baseline"


def _use_simd(bint enabled):
    """Choose the AVX2+FMA loops (if the CPU has them) or the baseline ones; returns the previous choice.

    For tests and benchmarks; not thread-safe against running kernels.
    """
    global zk_simd
    previous = bool(zk_simd)
    zk_simd = 1 if (enabled and zk_cpu_has_avx2_fma()) else 0
    return previous


_use_simd(True)


# The book's cross_entropy_error adds 1e-7 inside the log.
cdef double EPS = 1e-7

cdef enum:
    MIN_DEGREE = 2
    MAX_DEGREE = 10
    # Rows of the hidden polynomials are padded to a multiple of JB hidden
    # units: zk_w1_row_series works on blocks of 8.
    JB = 8

# 1 / m for the series recurrences (multiplying is cheaper than dividing).
cdef double INV[MAX_DEGREE + 2]
for _m in range(1, MAX_DEGREE + 2):
    INV[_m] = 1.0 / _m


# ----------------------------------------------------------- choosing M ---

cdef inline int degree_(double h, double xmax, double spread) noexcept nogil:
    """The smallest M with theta^M / (1 - theta) <= 2^-53, or 0 (literal fallback)."""
    cdef double radius_a = 1.5, theta, tail
    cdef int m
    if xmax < 1.0:
        xmax = 1.0
    if spread > 0 and 0.75 * log(1.2) / spread < radius_a:
        radius_a = 0.75 * log(1.2) / spread
    theta = h * xmax / radius_a
    if h / log(4.0 / 3.0) > theta:
        theta = h / log(4.0 / 3.0)
    if not theta < 0.5:  # also catches NaN
        return 0
    tail = theta / (1.0 - theta)
    for m in range(1, MAX_DEGREE + 1):
        if m >= MIN_DEGREE and tail <= 2.0 ** -53:
            return m
        tail = tail * theta
    return 0


cdef inline double spread_(const double* W2, Py_ssize_t H, Py_ssize_t O) noexcept nogil:
    """max_j (max_k W2[j, k] - min_k W2[j, k]) / 2: how far a row is from a constant."""
    cdef Py_ssize_t j, k
    cdef double lo, hi, best = 0.0
    for j in range(H):
        lo = W2[j * O]
        hi = lo
        for k in range(1, O):
            lo = W2[j * O + k] if W2[j * O + k] < lo else lo
            hi = W2[j * O + k] if W2[j * O + k] > hi else hi
        best = 0.5 * (hi - lo) if 0.5 * (hi - lo) > best else best
    return best


def series_degree(x, W2, double h):
    """Degree of the Taylor polynomials ``incremental`` uses for this batch; 0 means exp/log.

    Parameters
    ----------
    x : ndarray of shape (N, I)
    W2 : ndarray of shape (H, O)
    h : float

    Returns
    -------
    int
        The smallest M in [2, 10] with ``theta**M / (1 - theta) <= 2**-53``,
        or 0: the kernel then evaluates every perturbation with exp/log.

    Notes
    -----
    ``theta = max(h max(1, max|x|) / R_A, h / R_B)`` with
    ``R_A = min(3/2, 0.75 log(1.2) / c)``, ``c`` the largest half-range
    ``(max_k W2[j, k] - min_k W2[j, k]) / 2`` of a row of W2, and
    ``R_B = log(4/3)``: radii inside which the loss change of a hidden unit
    and of an output is analytic and at most ``log 2`` (see the module note).
    """
    cdef double[:, ::1] w = np.ascontiguousarray(W2, dtype=np.float64)
    x = np.asarray(x)
    xmax = float(np.max(np.abs(x))) if x.size else 0.0
    return degree_(h, xmax, spread_(&w[0, 0], w.shape[0], w.shape[1]) if w.size else 0.0)


# --------------------------------------------------------------- scratch ---

_local = threading.local()


def _buffer(name, shape, dtype=np.float64):
    """A scratch array of this shape, reused across calls by the same Python thread.

    Fresh large arrays would cost page faults on every batch; one set per
    Python thread keeps concurrent callers apart. Arrays above _KEEP_BYTES
    (an unusually large batch) are not kept.
    """
    bufs = _local.__dict__.setdefault("bufs", {})
    size = 1
    for s in shape:
        size *= s
    buf = bufs.get(name)
    if buf is None or buf.size < size or buf.dtype != dtype:
        buf = np.empty(max(size, 1), dtype=dtype)
        if buf.nbytes <= _KEEP_BYTES:
            bufs[name] = buf
    return buf[:size].reshape(shape)


_KEEP_BYTES = 16 << 20


# ---------------------------------------------------------------- helpers ---

cdef inline void sigmoid_pair(double a, double* s, double* sc) noexcept nogil:
    """s = sigmoid(a) and sc = 1 - sigmoid(a), both from e = exp(-|a|) (no overflow, no cancellation)."""
    cdef double e = exp(-fabs(a))
    cdef double inv = 1.0 / (1.0 + e)
    if a >= 0:
        s[0] = inv
        sc[0] = e * inv
    else:
        s[0] = e * inv
        sc[0] = inv


cdef inline void log1p_series_(const double* r, double* psi, int M) noexcept nogil:
    """psi[1..M] = Taylor coefficients of log(1 + r(x)), for a series r with r[0] = 0.

    From (1 + r) psi' = r':  m psi_m = m r_m - sum_{i=1}^{m-1} (m - i) r_i psi_{m-i}.
    """
    cdef int m, i
    cdef double acc
    for m in range(1, M + 1):
        acc = m * r[m]
        for i in range(1, m):
            acc -= (m - i) * r[i] * psi[m - i]
        psi[m] = acc * INV[m]


cdef inline void moments_table_(const double* W2, Py_ssize_t H, Py_ssize_t O, int M,
                                double* T) noexcept nogil:
    """T[j, m-1, k] = c_{jk}^m / m! (T has MAX_DEGREE slots per j), c_{jk} = W2[j, k] - centre_j.

    Softmax ignores a common offset of a row, so the centred row gives the
    same function with smaller powers (and is what the radius R_A assumes).
    """
    cdef Py_ssize_t j, k
    cdef int m
    cdef double lo, hi, centre, c, pw
    for j in range(H):
        lo = W2[j * O]
        hi = lo
        for k in range(1, O):
            lo = W2[j * O + k] if W2[j * O + k] < lo else lo
            hi = W2[j * O + k] if W2[j * O + k] > hi else hi
        centre = 0.5 * (lo + hi)
        for k in range(O):
            c = W2[j * O + k] - centre
            pw = 1.0
            for m in range(1, M + 1):
                pw = pw * c * INV[m]
                T[(j * MAX_DEGREE + m - 1) * O + k] = pw


cdef inline void hidden_poly_(double s0, double s0c, const double* y, const double* yo,
                              double rest, const double* T, Py_ssize_t O, Py_ssize_t t,
                              double kappa, int M, double* out, Py_ssize_t stride) noexcept nogil:
    """Taylor coefficients f_1..f_M of d -> l' - l when a1[n, j] moves by d.

    ``s0, s0c`` are sigmoid(a1[n, j]) and 1 - sigmoid(a1[n, j]); ``y`` is the
    sample's softmax, ``yo`` the same with y_t = 0, ``rest`` = 1 - y_t;
    ``T`` is row j of the moments table. f_m goes to ``out[(m - 1) stride]``.
    """
    cdef double s[MAX_DEGREE + 1]      # sigmoid(a + d) - sigmoid(a) = sum_m s_m d^m
    cdef double up[MAX_DEGREE + 1]     # powers of that series
    cdef double P[MAX_DEGREE + 1]      # q(u) = sum_k y_k expm1(u c_k) = sum_m P_m u^m
    cdef double r[MAX_DEGREE + 1]      # r(u) = kappa D(u) / (1 + q(u))
    cdef double psi[MAX_DEGREE + 1]    # log1p(r(u)) = sum_m psi_m u^m
    cdef double f[MAX_DEGREE + 1]
    cdef double acc, pm, sm
    cdef const double* Tm
    cdef Py_ssize_t k
    cdef int m, i

    # Sigmoid from its ODE s' = s (1 - s):
    # s_1 = s0 (1 - s0),  (m + 1) s_{m+1} = (1 - 2 s0) s_m - sum_{i=1}^{m-1} s_i s_{m-i}.
    s[0] = 0.0
    s[1] = s0 * s0c
    for m in range(1, M):
        acc = (s0c - s0) * s[m]
        for i in range(1, m):
            acc -= s[i] * s[m - i]
        s[m + 1] = acc * INV[m + 1]

    # P_m = sum_k y_k c_k^m / m!;  kappa D(u) = sum_m kappa Q_m u^m with
    # Q_m = sum_{k != t} y_k (c_t^m - c_k^m) / m!, so r = kappa Q / (1 + P) by
    # series division (the denominator's constant term is 1).
    r[0] = 0.0
    for m in range(1, M + 1):
        Tm = T + (m - 1) * O
        pm = 0.0
        sm = 0.0
        for k in range(O):
            pm += y[k] * Tm[k]
            sm += yo[k] * Tm[k]
        P[m] = pm
        acc = kappa * (rest * Tm[t] - sm)
        for i in range(1, m):
            acc -= P[i] * r[m - i]
        r[m] = acc
    log1p_series_(r, psi, M)

    # f(d) = -sum_i psi_i s(d)^i, the powers of s(d) built up in place.
    for m in range(M + 1):
        up[m] = s[m]
        f[m] = -psi[1] * s[m]
    for i in range(2, M + 1):
        # up <- up * s, keeping degrees i..M (up had lowest degree i - 1).
        for m in range(M, i - 1, -1):
            acc = 0.0
            for k in range(i - 1, m):
                acc += up[k] * s[m - k]
            up[m] = acc
        up[i - 1] = 0.0
        for m in range(i, M + 1):
            f[m] -= psi[i] * up[m]
    for m in range(1, M + 1):
        out[(m - 1) * stride] = f[m]


cdef inline void output_poly_(double yk, double coef, double kappa, int M,
                              double* out) noexcept nogil:
    """Taylor coefficients g_1..g_M of e -> l' - l when a2[n, k] moves by e.

    ``l' - l = -log1p(kappa coef E / (1 + yk E))`` with ``E = expm1(e) =
    sum_m e^m / m!`` and ``coef = [k = t] - y_k``; g_m goes to out[m - 1].
    """
    cdef double E[MAX_DEGREE + 1]
    cdef double r[MAX_DEGREE + 1]
    cdef double psi[MAX_DEGREE + 1]
    cdef double acc
    cdef int m, i
    r[0] = 0.0
    E[0] = 0.0
    for m in range(1, M + 1):
        E[m] = E[m - 1] * INV[m] if m > 1 else 1.0
        acc = kappa * coef * E[m]
        for i in range(1, m):
            acc -= yk * E[i] * r[m - i]
        r[m] = acc
    log1p_series_(r, psi, M)
    for m in range(1, M + 1):
        out[m - 1] = -psi[m]


cdef inline double horner_(const double* c, Py_ssize_t stride, int M, double d) noexcept nogil:
    """sum_{m=1}^{M} c[(m - 1) stride] d^m, by Horner's rule."""
    cdef double acc = c[(M - 1) * stride]
    cdef int m
    for m in range(M - 2, -1, -1):
        acc = acc * d + c[m * stride]
    return acc * d


cdef inline double hidden_literal_(double a, double s0c, double d, const double* y,
                                   const double* w, Py_ssize_t O, Py_ssize_t t,
                                   double kappa) noexcept nogil:
    """l' - l when a1[n, j] = a moves by d, with exp/log (``s0c`` = 1 - sigmoid(a))."""
    cdef double s1, s1c, dz, q = 0.0, D = 0.0, Et, Ek
    cdef Py_ssize_t k
    sigmoid_pair(a + d, &s1, &s1c)
    dz = s1 * s0c * -expm1(-d)
    Et = expm1(dz * w[t])
    for k in range(O):
        Ek = expm1(dz * w[k])
        q += y[k] * Ek
        if k != t:
            D += y[k] * (Et - Ek)
    return -log1p(kappa * D / (1.0 + q))


cdef inline double output_literal_(double yk, double coef, double kappa, double e) noexcept nogil:
    """l' - l when a2[n, k] moves by e, with exp/log."""
    cdef double E = expm1(e)
    return -log1p(kappa * coef * E / (1.0 + yk * E))


cdef inline void cache_sample_(const floating_x* x, Py_ssize_t I, const double* W1,
                               const double* b1, const double* W2, const double* b2,
                               Py_ssize_t H, Py_ssize_t O, Py_ssize_t t,
                               double* a1, double* z1, double* z1c, double* y, double* yo,
                               double* rest, double* kappa) noexcept nogil:
    """One sample's forward pass: a1, z1 = sigmoid(a1), 1 - z1, softmax y, y with
    y_t = 0, rest = 1 - y_t (summed from the others), kappa = y_t / (y_t + 1e-7)."""
    cdef Py_ssize_t i, j, k
    cdef double v, zj, mx, ssum = 0.0, other = 0.0
    cdef const double* w
    for j in range(H):
        a1[j] = 0.0
    for i in range(I):
        if x[i] != 0:
            v = x[i]
            w = W1 + i * H
            for j in range(H):
                a1[j] += v * w[j]
    for j in range(H):
        a1[j] = a1[j] + b1[j]
        sigmoid_pair(a1[j], &z1[j], &z1c[j])
    for k in range(O):
        y[k] = 0.0
    for j in range(H):
        zj = z1[j]
        w = W2 + j * O
        for k in range(O):
            y[k] += zj * w[k]
    for k in range(O):
        y[k] = y[k] + b2[k]
    mx = y[0]
    for k in range(1, O):
        mx = y[k] if y[k] > mx else mx
    for k in range(O):
        y[k] = exp(y[k] - mx)
        ssum += y[k]
    for k in range(O):
        y[k] = y[k] / ssum
        yo[k] = y[k] if k != t else 0.0
        other += yo[k]
    rest[0] = other
    kappa[0] = y[t] / (y[t] + EPS)


cdef inline void w1_row_literal_(Py_ssize_t start, Py_ssize_t end, const int* rows,
                                 const double* vals, const double* a1, const double* z1c,
                                 const double* y, const double* kappa, const int64_t* t,
                                 const double* W2, Py_ssize_t H, Py_ssize_t O, double h,
                                 double denom, double* out) noexcept nogil:
    """dW1[i, :] like zk_w1_row_series, every perturbation evaluated by exp/log."""
    cdef Py_ssize_t j, p, n
    cdef double acc, d
    for j in range(H):
        acc = 0.0
        for p in range(start, end):
            n = rows[p]
            d = h * vals[p]
            acc += (hidden_literal_(a1[n * H + j], z1c[n * H + j], d, y + n * O, W2 + j * O, O, t[n], kappa[n])
                    - hidden_literal_(a1[n * H + j], z1c[n * H + j], -d, y + n * O, W2 + j * O, O, t[n], kappa[n]))
        out[j] = acc / denom


# ---------------------------------------------------------------- kernel ---

def numerical_gradient(const floating_x[:, ::1] x,   # IN (N, I)
                       const int64_t[::1] t,         # IN (N,) labels in [0, O)
                       const double[:, ::1] W1,      # IN (I, H)
                       const double[::1] b1,         # IN (H,)
                       const double[:, ::1] W2,      # IN (H, O)
                       const double[::1] b2,         # IN (O,)
                       double h,
                       str method,
                       double[:, ::1] dW1,           # OUT (I, H)
                       double[::1] db1,              # OUT (H,)
                       double[:, ::1] dW2,           # OUT (H, O)
                       double[::1] db2,              # OUT (O,)
                       int threads):
    """``(L(p + h) - L(p - h)) / 2h`` for every parameter, by ``method``.

    method : {"full", "incremental", "literal"}
        See the module note. ``literal`` is ``incremental`` with exp/log for
        every perturbation instead of the Taylor polynomials.
    """
    if method == "full":
        _full(x, t, W1, b1, W2, b2, h, dW1, db1, dW2, db2, threads)
    else:
        _incremental(x, t, W1, b1, W2, b2, h, method == "literal", dW1, db1, dW2, db2, threads)


def _full(const floating_x[:, ::1] x,   # IN (N, I)
          const int64_t[::1] t,         # IN (N,)
          const double[:, ::1] W1,      # IN (I, H)
          const double[::1] b1,         # IN (H,)
          const double[:, ::1] W2,      # IN (H, O)
          const double[::1] b2,         # IN (O,)
          double h,
          double[:, ::1] dW1,           # OUT (I, H)
          double[::1] db1,              # OUT (H,)
          double[:, ::1] dW2,           # OUT (H, O)
          double[::1] db2,              # OUT (O,)
          int threads):
    """method="full": the book's loop, one whole forward pass per perturbation."""
    cdef Py_ssize_t N = x.shape[0], I = x.shape[1], H = W1.shape[1], O = W2.shape[1]
    cdef Py_ssize_t Hp = (H + 51) // 52 * 52   # zk_batch_loss sums 52 (or 26) units at a time
    cdef Py_ssize_t P1 = I * H, P2 = P1 + H, P3 = P2 + H * O, P = P3 + O
    cdef Py_ssize_t p, q, i, j
    cdef int tid
    cdef double tmp, lp, lm
    cdef double* target
    cdef double* out
    threads = min(threads, P)  # no idle copies (results do not depend on it)
    # x in compressed rows: the non-zero pixels of each sample, ascending.
    xa = np.asarray(x)
    nz_n, nz_i = np.nonzero(xa)
    cdef Py_ssize_t[::1] rowptr = np.searchsorted(nz_n, np.arange(N + 1)).astype(np.intp)
    cdef int[::1] cols = np.append(nz_i, 0).astype(np.intc)            # one spare entry:
    cdef double[::1] vals = np.append(xa[nz_n, nz_i].astype(np.float64), 0.0)  # never empty
    # Per-thread copies of the parameters, perturbed one entry at a time
    # (W1 and b1 padded to Hp by zeros, as zk_batch_loss wants).
    W1c_arr = np.zeros((threads, I, Hp))
    W1c_arr[:, :, :H] = np.asarray(W1)
    cdef double[:, :, ::1] W1c = W1c_arr
    b1c_arr = np.zeros((threads, Hp))
    b1c_arr[:, :H] = np.asarray(b1)
    cdef double[:, ::1] b1c = b1c_arr
    cdef double[:, :, ::1] W2c = np.repeat(np.asarray(W2)[None], threads, axis=0)
    cdef double[:, ::1] b2c = np.repeat(np.asarray(b2)[None], threads, axis=0)
    cdef double[:, ::1] z = np.empty((threads, Hp))
    cdef double[:, ::1] a2 = np.empty((threads, (O + 3) // 4 * 4))   # whole vectors
    with nogil:
        for p in prange(P, schedule="dynamic", chunksize=16, num_threads=threads):
            tid = threadid()
            if p < P1:
                i = p // H
                j = p - i * H
                target = &W1c[tid, i, j]
                out = &dW1[i, j]
            elif p < P2:
                target = &b1c[tid, p - P1]
                out = &db1[p - P1]
            elif p < P3:
                q = p - P2
                i = q // O
                j = q - i * O
                target = &W2c[tid, i, j]
                out = &dW2[i, j]
            else:
                target = &b2c[tid, p - P3]
                out = &db2[p - P3]
            # The book's loop: x[idx] = tmp + h; f(); x[idx] = tmp - h; f(); restore.
            tmp = target[0]
            target[0] = tmp + h
            lp = zk_batch_loss(&rowptr[0], &cols[0], &vals[0], N, &t[0], &W1c[tid, 0, 0],
                             &b1c[tid, 0], &W2c[tid, 0, 0], &b2c[tid, 0], H, Hp, O,
                             &z[tid, 0], &a2[tid, 0])
            target[0] = tmp - h
            lm = zk_batch_loss(&rowptr[0], &cols[0], &vals[0], N, &t[0], &W1c[tid, 0, 0],
                             &b1c[tid, 0], &W2c[tid, 0, 0], &b2c[tid, 0], H, Hp, O,
                             &z[tid, 0], &a2[tid, 0])
            target[0] = tmp
            out[0] = (lp - lm) / (2 * h)


def _incremental(const floating_x[:, ::1] x,   # IN (N, I)
                 const int64_t[::1] t,         # IN (N,)
                 const double[:, ::1] W1,      # IN (I, H)
                 const double[::1] b1,         # IN (H,)
                 const double[:, ::1] W2,      # IN (H, O)
                 const double[::1] b2,         # IN (O,)
                 double h,
                 bint literal,
                 double[:, ::1] dW1,           # OUT (I, H)
                 double[::1] db1,              # OUT (H,)
                 double[:, ::1] dW2,           # OUT (H, O)
                 double[::1] db2,              # OUT (O,)
                 int threads):
    """method="incremental" (Taylor polynomials, or exp/log when not exact) and "literal" (exp/log)."""
    cdef Py_ssize_t N = x.shape[0], I = x.shape[1], H = W1.shape[1], O = W2.shape[1]
    cdef Py_ssize_t Hp = (H + JB - 1) // JB * JB
    cdef Py_ssize_t n, i, j, k, m
    cdef double acc, e, v, xmax = 0.0
    cdef double denom = 2.0 * h * N
    cdef int M = 0, Mc
    # The batch's cache, its polynomials and x in compressed columns (the
    # samples with x[n, i] != 0, ascending, for each i), in reused buffers.
    cdef double[:, ::1] a1 = _buffer("a1", (N, H))
    cdef double[:, ::1] z1 = _buffer("z1", (N, H))
    cdef double[:, ::1] z1c = _buffer("z1c", (N, H))
    cdef double[:, ::1] y = _buffer("y", (N, O))
    cdef double[:, ::1] yo = _buffer("yo", (N, O))
    cdef double[::1] rest = _buffer("rest", (N,))
    cdef double[::1] kappa = _buffer("kappa", (N,))
    cdef double[:, ::1] coefo = _buffer("coefo", (N, O))          # [k = t] - y_k
    cdef double[:, :, ::1] T = _buffer("T", (H, MAX_DEGREE, O))     # moments table
    cdef Py_ssize_t[::1] colptr = _buffer("colptr", (I + 1,), np.intp)
    cdef Py_ssize_t[::1] fill = _buffer("fill", (I,), np.intp)
    cdef double[::1] ch                  # hidden polynomials: (n, m, j), rows of Hp
    cdef double[:, :, ::1] co            # output polynomials: (n, k, m)
    cdef int[::1] rows
    cdef double[::1] vals

    with nogil:
        # Non-zeros per column of x, and the largest |x| for the series' radius.
        for i in range(I + 1):
            colptr[i] = 0
        for n in range(N):
            for i in range(I):
                if x[n, i] != 0:
                    colptr[i + 1] += 1
                    v = fabs(x[n, i])
                    xmax = v if v > xmax else xmax
        for i in range(I):
            colptr[i + 1] += colptr[i]
            fill[i] = colptr[i]
        if not literal:
            M = degree_(h, xmax, spread_(&W2[0, 0], H, O))

    Mc = M if M > 0 else 1
    rows = _buffer("rows", (max(colptr[I], 1),), np.intc)
    vals = _buffer("vals", (max(colptr[I], 1),))
    ch = _buffer("ch", (N * Mc * Hp,))
    co = _buffer("co", (N, O, Mc))

    with nogil:
        for n in range(N):
            for i in range(I):
                if x[n, i] != 0:
                    rows[fill[i]] = <int>n
                    vals[fill[i]] = x[n, i]
                    fill[i] += 1
        if M > 0:
            moments_table_(&W2[0, 0], H, O, M, &T[0, 0, 0])

        # Forward pass, cached, and each sample's polynomials.
        for n in prange(N, schedule="dynamic", chunksize=4, num_threads=threads):
            cache_sample_(&x[n, 0], I, &W1[0, 0], &b1[0], &W2[0, 0], &b2[0], H, O, t[n],
                          &a1[n, 0], &z1[n, 0], &z1c[n, 0], &y[n, 0], &yo[n, 0],
                          &rest[n], &kappa[n])
            if M > 0:
                for j in range(H):
                    hidden_poly_(z1[n, j], z1c[n, j], &y[n, 0], &yo[n, 0], rest[n],
                                 &T[j, 0, 0], O, t[n], kappa[n], M, &ch[(n * M) * Hp + j], Hp)
                for j in range(H, Hp):
                    for m in range(M):
                        ch[(n * M + m) * Hp + j] = 0.0
            for k in range(O):
                coefo[n, k] = rest[n] if k == t[n] else -y[n, k]
                if M > 0:
                    output_poly_(y[n, k], coefo[n, k], kappa[n], M, &co[n, k, 0])

        # W1[i, j]: d = +-h x[n, i] for the samples with x[n, i] != 0; a row at a time.
        for i in prange(I, schedule="dynamic", chunksize=8, num_threads=threads):
            if M > 0:
                zk_w1_row_series(colptr[i], colptr[i + 1], &rows[0], &vals[0], &ch[0], Hp, H,
                                 M, h, denom, &dW1[i, 0])
            else:
                w1_row_literal_(colptr[i], colptr[i + 1], &rows[0], &vals[0], &a1[0, 0],
                                &z1c[0, 0], &y[0, 0], &kappa[0], &t[0], &W2[0, 0], H, O,
                                h, denom, &dW1[i, 0])

        # b1[j] (d = +-h, every sample) and W2[j, k] (e = +-h z1[n, j], every sample).
        for j in prange(H, schedule="dynamic", chunksize=2, num_threads=threads):
            acc = 0.0
            for n in range(N):
                if M > 0:
                    acc = acc + (horner_(&ch[(n * M) * Hp + j], Hp, M, h)
                                 - horner_(&ch[(n * M) * Hp + j], Hp, M, -h))
                else:
                    acc = acc + (hidden_literal_(a1[n, j], z1c[n, j], h, &y[n, 0], &W2[j, 0], O, t[n], kappa[n])
                                 - hidden_literal_(a1[n, j], z1c[n, j], -h, &y[n, 0], &W2[j, 0], O, t[n], kappa[n]))
            db1[j] = acc / denom
            for k in range(O):
                acc = 0.0
                for n in range(N):
                    e = h * z1[n, j]
                    if M > 0:
                        acc = acc + (horner_(&co[n, k, 0], 1, M, e) - horner_(&co[n, k, 0], 1, M, -e))
                    else:
                        acc = acc + (output_literal_(y[n, k], coefo[n, k], kappa[n], e)
                                     - output_literal_(y[n, k], coefo[n, k], kappa[n], -e))
                dW2[j, k] = acc / denom

        # b2[k]: e = +-h, every sample.
        for k in range(O):
            acc = 0.0
            for n in range(N):
                if M > 0:
                    acc = acc + (horner_(&co[n, k, 0], 1, M, h) - horner_(&co[n, k, 0], 1, M, -h))
                else:
                    acc = acc + (output_literal_(y[n, k], coefo[n, k], kappa[n], h)
                                 - output_literal_(y[n, k], coefo[n, k], kappa[n], -h))
            db2[k] = acc / denom
