# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Forward pass, loss, backprop gradient and accuracy of the book's TwoLayerNet.

Design note
-----------
What: the book's network ``a1 = x W1 + b1, z1 = sigmoid(a1), a2 = z1 W2 + b2,
y = softmax(a2)``, its loss ``mean_n -log(y[n, t_n] + 1e-7)`` (the book's
``cross_entropy_error``), its backprop ``TwoLayerNet.gradient`` with
``dy = (y - t) / N``, and its accuracy (argmax of ``a2``: softmax is monotone).

Sparse input: MNIST images are about 80% zeros, so ``x W1`` and ``x^T dz1``
skip zero pixels: each row of x is first compacted to its list of non-zeros
(``x != 0``: -0.0 is skipped, NaN kept). The AVX2 build packs a float32 row
8 pixels per step, branch-free (a table of permutations); otherwise 32
bytes at a time, where a group whose bits are all zero (MNIST's long runs of
+0.0) costs one test. A dense input is no slower than a plain loop.

Rows in registers: ``a1[n, :] = sum_p x[n, i_p] W1[i_p, :]`` is summed over
the non-zeros p of sample n with ROW hidden units held in 13 vector
registers (52 in the AVX2 build, 26 in the portable one), so the book's
H = 50 is one pass (AVX2) or two over contiguous rows of W1, each row read
once per pass from L2. ``x^T dz1`` is the same sum per pixel over the
samples where it is non-zero: the gradient keeps the lists of its forward
pass and deals them into per-pixel lists, 56 pixels per sweep over the
samples (where each block of 56 starts in a sample's list is noted while
the list is made, so no sweep searches). ``z1 W2``, ``dy W2^T`` and
``z1^T dy`` are the same kernel, dense. A pass reads whole vectors, so it may read past column H into the next row
(lanes that are never stored); the entries whose vectors would run past the
end of the array are summed afterwards, exactly, so nothing is read out of
bounds (tests/test_simd.py puts every array before an unreadable page).
These innermost loops are C with GCC/clang vector extensions (Cython cannot
ask for registers); other compilers get plain loops with the same sums.

Sigmoid and softmax: ``exp(x)`` for ``x <= 0`` by Cody-Waite reduction
``x = k ln2 + r``, ``|r| <= ln2 / 2``, the degree-13 Taylor polynomial of
``e^r`` (tail below 0.08 ulp) and a scaling by ``2^k`` as two exact powers of
two (a subnormal result rounds once): within about 1 ulp of libm's exp, and
branch-free, so a row of 50 sigmoids runs as 13 (or 25) vector operations.

Parallelism: over samples for the forward pass (each sample is one
thread's; the gradient's and accuracy's threads take chunks of samples
from a shared counter, one chunk ahead, so each knows the rows of x it
reads next and fetches them during the sums before), over hidden units for ``dW2``/``db1`` and over blocks of
input rows for ``dW1``. ``sgd_steps`` can instead split each step by
hidden units throughout (split_step_, ``split=True``): each thread keeps
its columns of W1 to itself and only z1 and dz1 cross between the cores,
which is quicker when those crossings are slow. Every output element is summed by one thread in a fixed order
(samples ascending, non-zeros ascending), and the loss is summed serially
afterwards, so results are bitwise identical for any number of threads and
any schedule. The loops are scheduled dynamically, in small chunks: on a
shared machine one core may run at half speed for seconds, and a static
split would make the other wait for it (seen here: 80 ms instead of 50 for
the accuracy on 70000 images).
Scratch (per-thread rows, the gradient's lists and z1, dz1, dy) is carved
from one arena that each Python thread reuses across calls: a training run
makes thousands of calls of the same shapes.

Same numbers from both builds: ``setup.py`` compiles this file twice, for
any x86-64 (``zerokara._core``) and with ``-mavx2 -mfma``
(``zerokara._core_avx2``, chosen at run time), both ``-ffp-contract=off``.
Neither contracts ``a*b + c`` into an FMA nor reassociates a sum (no
-ffast-math): wider vectors only run more independent lanes side by side,
and ROW only changes which lanes share a pass. So the two builds agree
bitwise (tests/test_simd.py checks it).

Exactness: sigmoid and softmax are the book's formulas rearranged so that no
``exp`` argument is positive (``e = exp(-|a|)``; softmax subtracts the row
maximum): finite for any finite input, with the same values up to rounding.

Accuracy's float32 screen: only the argmax of each row of scores counts,
so ``accuracy`` scores a large float32 set first in float32 (8 lanes a
vector, a float32 copy of the parameters, a degree-7 exp) and keeps a
sample's answer only when a bound on the float32 error proves the float64
scores have the same argmax; the rest (near ties, NaN, inf) are scored
again in float64 exactly as predict scores them. The counts are predict's;
about 0.1% of trained MNIST samples need the second pass, and the
accuracy on 70000 images takes about 0.8 of the time. The bound is derived
in ``accuracy``'s docstring; tests/test_screen.py tries to break it.

Callers (``zerokara.backends.cython``) validate everything: C-contiguous
arrays of consistent shapes, float64 parameters, int64 labels in range,
``threads >= 1``. Kernels write into the arrays they are given and never
touch Python objects inside ``nogil``. Each kernel has a NumPy twin of the
same signature in ``zerokara/backends/python.py``.
"""

import threading

import numpy as np

from cpython.exc cimport PyErr_CheckSignals
from cython.parallel cimport parallel, prange, threadid
from libc.math cimport NAN, fabs, log
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcpy, memset

from _openmp cimport ZEROKARA_OPENMP, omp_get_max_threads, omp_get_num_threads

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #if defined(__AVX2__)
      #include <immintrin.h>
    #endif

    /* zk_vec: ZK_L doubles in one register (ymm with AVX, else xmm), by the
     * GCC/clang vector extensions; a plain double for other compilers. */
    #if defined(__GNUC__) || defined(__clang__)
      #if defined(__AVX__)
        #define ZK_L 4
      #else
        #define ZK_L 2
      #endif
      #define ZK_INLINE static inline __attribute__((always_inline))
      typedef double zk_vec __attribute__((vector_size(8 * ZK_L)));
      typedef int64_t zk_ivec __attribute__((vector_size(8 * ZK_L)));
      #define ZK_BITS(v) ((zk_ivec)(v))
      #define ZK_DOUBLE(i) ((zk_vec)(i))
      #define ZK_MASK(c) ((zk_ivec)(c))
    #else
      #define ZK_L 1
      #define ZK_INLINE static inline
      typedef double zk_vec;
      typedef int64_t zk_ivec;
      static zk_ivec ZK_BITS(zk_vec v) { zk_ivec i; memcpy(&i, &v, 8); return i; }
      static zk_vec ZK_DOUBLE(zk_ivec i) { zk_vec v; memcpy(&v, &i, 8); return v; }
      #define ZK_MASK(c) (-(zk_ivec)(c))
    #endif
    #define ZK_SELECT(m, a, b) ZK_DOUBLE((ZK_BITS(a) & (m)) | (ZK_BITS(b) & ~(m)))
    #define ZEROKARA_ROW (13 * ZK_L)   /* wide pass: 13 registers */
    #define ZEROKARA_BLOCK 56           /* pixels per block of dW1 rows (a multiple of 8) */
    /* A thread's first row of x: ask for its first KB at once (the hardware's
     * stream prefetcher follows on from there; asking for all 49 lines of an
     * MNIST row at once stalls the core while they are outstanding). The
     * rows after it are fetched during the sum before them (ZK_ROWS_PF). */
    #define ZK_PREFETCH_HEAD 1024
    #if defined(__GNUC__) || defined(__clang__)
      #define ZK_PREFETCH_NTA(p) __builtin_prefetch((p), 0, 0)
    #else
      #define ZK_PREFETCH_NTA(p) ((void)0)
    #endif
    static inline void zerokara_prefetch_row(const void* p, Py_ssize_t bytes) {
        const char* c = (const char*)p;
        Py_ssize_t l;
        for (l = 0; l < bytes && l < ZK_PREFETCH_HEAD; l += 64) ZK_PREFETCH_NTA(c + l);
    }
    #if defined(__GNUC__) || defined(__clang__)
      #define ZK_PREFETCH(p) __builtin_prefetch((p), 0, 3)
      #define ZK_PREFETCH_L2(p) __builtin_prefetch((p), 0, 2)
    #else
      #define ZK_PREFETCH(p) ((void)0)
      #define ZK_PREFETCH_L2(p) ((void)0)
    #endif
    /* One cache line at p into all levels (accuracy's next rows of x). */
    static inline void zerokara_prefetch(const void* p) { ZK_PREFETCH(p); }
    #define ZEROKARA_NROW 12           /* narrow pass (e.g. the 10 outputs) */

    ZK_INLINE zk_vec zk_load(const double* p) { zk_vec v; memcpy(&v, p, sizeof v); return v; }
    ZK_INLINE void zk_store(double* p, zk_vec v) { memcpy(p, &v, sizeof v); }
    ZK_INLINE zk_vec zk_splat(double c) {
        double t[ZK_L]; int i;
        for (i = 0; i < ZK_L; i++) t[i] = c;
        return zk_load(t);
    }
    /* The first r of a vector's lanes (0 < r < ZK_L: a row's last, partial
     * vector), the other lanes 0 on loading; lane by lane, in registers:
     * a memcpy of r * 8 bytes is a call into the C library, and a vector
     * read back from the few stores it makes waits for them to reach the
     * cache (a softmax's two last lanes took half its time that way). */
    ZK_INLINE zk_vec zk_load_part(const double* p, Py_ssize_t r) {
    #if ZK_L == 4
        zk_vec v = {p[0], 0.0, 0.0, 0.0};
        if (r > 1) v[1] = p[1];
        if (r > 2) v[2] = p[2];
        return v;
    #elif ZK_L == 2
        zk_vec v = {p[0], 0.0};
        (void)r;
        return v;
    #else
        (void)r;
        return p[0];
    #endif
    }
    ZK_INLINE void zk_store_part(double* p, zk_vec v, Py_ssize_t r) {
    #if ZK_L == 4
        p[0] = v[0];
        if (r > 1) p[1] = v[1];
        if (r > 2) p[2] = v[2];
    #elif ZK_L == 2
        p[0] = v[0];
        (void)r;
    #else
        p[0] = v;
        (void)r;
    #endif
    }

    /* out[0:width] = sum_p val[p] W[row_p * H : row_p * H + width], p ascending,
     * row_p = idx[p] (or p when idx is NULL), width <= K * ZK_L: K accumulators
     * in registers, each reading whole vectors of W (so up to K * ZK_L columns). */
    #define ZK_ROWS_SUM(K)                                                          \\
        for (p = 0; p < n; p++) {                                                   \\
            const double v = (double)val[p];                                        \\
            const double* w = W + (idx ? (Py_ssize_t)idx[p] : p) * H;               \\
            for (q = 0; q < K; q++) a[q] += v * zk_load(w + q * ZK_L);              \\
        }
    /* The function of ZK_ROWS and ZK_ROWS_SGD: the sums in K registers, then
     * PUTV(j, g) for each whole vector g of the first width sums (from sum
     * j), PUT(j, g, r) for the first r lanes of a last, partial one. MORE:
     * extra parameters. */
    #define ZK_ROWS_FN(NAME, K, VT, MORE, PUTV, PUT)                                \\
    static void NAME(const int* idx, const VT* val, Py_ssize_t n,                   \\
                     const double* W, Py_ssize_t H, Py_ssize_t width,               \\
                     double* out MORE) {                                            \\
        zk_vec a[K];                                                                \\
        int q;                                                                      \\
        Py_ssize_t p;                                                               \\
        _Pragma("GCC unroll 16")                                                    \\
        for (q = 0; q < K; q++) a[q] = zk_splat(0.0);                               \\
        ZK_ROWS_SUM(K)                                                              \\
        for (q = 0; q < K && (q + 1) * ZK_L <= width; q++) PUTV(q * ZK_L, a[q]);    \\
        if (q < K && q * ZK_L < width) PUT(q * ZK_L, a[q], width - q * ZK_L);       \\
    }
    #define ZK_NOTHING
    #define ZK_SET_V(j, g) zk_store(out + (j), g)
    #define ZK_SET(j, g, r) zk_store_part(out + (j), g, r)
    /* out[0:width] = the sums. */
    #define ZK_ROWS(NAME, K, VT) ZK_ROWS_FN(NAME, K, VT, ZK_NOTHING, ZK_SET_V, ZK_SET)
    #define ZK_LR , double lr
    #define ZK_SGD_V(j, g) zk_store(out + (j), zk_load(out + (j)) - (g) * lr)
    #define ZK_SGD(j, g, r) zk_store_part(out + (j), zk_load_part(out + (j), r) - (g) * lr, r)
    /* The sums g applied as an SGD step instead of stored: out[j] = out[j] -
     * g[j] * lr for j < width, the roundings of sgd_ (a product, then a
     * difference: no FMA with -ffp-contract=off). */
    #define ZK_ROWS_SGD(NAME, K, VT) ZK_ROWS_FN(NAME, K, VT, ZK_LR, ZK_SGD_V, ZK_SGD)
    ZK_ROWS(zerokara_rows_wide, 13, double)
    ZK_ROWS(zerokara_rows_narrow, ZEROKARA_NROW / ZK_L, double)
    ZK_ROWS(zerokara_rows_wide_f32, 13, float)
    ZK_ROWS(zerokara_rows_narrow_f32, ZEROKARA_NROW / ZK_L, float)
    /* A strip of ZEROKARA_STRIP columns: dW1's column sums read the rows of
     * dz1 one strip at a time, so that the strip of all N rows (22 KB for a
     * batch of 100) stays in L1 while every column of a block is summed. */
    #define ZEROKARA_STRIP (7 * ZK_L)
    ZK_ROWS(zerokara_rows_strip, 7, double)
    ZK_ROWS(zerokara_rows_strip_f32, 7, float)
    /* The last strip, when its columns fit in 6 registers (22 of the book's
     * 50 after a strip of 28): one vector less to read per entry. */
    #define ZEROKARA_STRIP6 (6 * ZK_L)
    ZK_ROWS(zerokara_rows_strip6, 6, double)
    ZK_ROWS(zerokara_rows_strip6_f32, 6, float)
    ZK_ROWS_SGD(zerokara_sgd_strip, 7, double)
    ZK_ROWS_SGD(zerokara_sgd_strip_f32, 7, float)
    ZK_ROWS_SGD(zerokara_sgd_strip6, 6, double)
    ZK_ROWS_SGD(zerokara_sgd_strip6_f32, 6, float)
    /* acc[0 : K * ZK_L] += the sums of ZK_ROWS, continued from the partial
     * sums in acc: the same additions in the same order, so a list can be
     * summed a part at a time (sums_blocked_). idx must not be NULL. */
    #define ZK_ROWS_ACC(NAME, K, VT)                                                \\
    static void NAME(const int* idx, const VT* val, Py_ssize_t n,                   \\
                     const double* W, Py_ssize_t H, double* acc) {                  \\
        zk_vec a[K];                                                                \\
        int q;                                                                      \\
        Py_ssize_t p;                                                               \\
        _Pragma("GCC unroll 16")                                                    \\
        for (q = 0; q < K; q++) a[q] = zk_load(acc + q * ZK_L);                     \\
        ZK_ROWS_SUM(K)                                                              \\
        _Pragma("GCC unroll 16")                                                    \\
        for (q = 0; q < K; q++) zk_store(acc + q * ZK_L, a[q]);                     \\
    }
    ZK_ROWS_ACC(zerokara_acc_wide, 13, double)
    ZK_ROWS_ACC(zerokara_acc_narrow, ZEROKARA_NROW / ZK_L, double)
    ZK_ROWS_ACC(zerokara_acc_wide_f32, 13, float)
    ZK_ROWS_ACC(zerokara_acc_narrow_f32, ZEROKARA_NROW / ZK_L, float)

    /* The wide pass of ZK_ROWS that also fetches the pfl cache lines at pf
     * (the row of x the thread compacts next), one line every second entry:
     * that row's fetch from memory (about 0.35 us for an MNIST row here) is
     * spread over this sum, instead of stalling the compaction after it, and
     * never asks for many lines at once. Into all cache levels: the row is
     * read within a microsecond or two. Unless pf2 is NULL, the pfl lines at
     * pf2 (the row after that) go into L2 the same way on the other entries:
     * that row then comes into L1 from L2 during the next sum, which holds
     * the L1's line fills for a few cycles each instead of a trip to memory
     * (the compaction 0.70 of its time, the sums 0.97, on one thread). A
     * prefetch never faults, so lines past the end of x are harmless. The
     * sums are ZK_ROWS's. */
    #define ZK_ROWS_PF(NAME, VT)                                                    \
    static void NAME(const int* idx, const VT* val, Py_ssize_t n,                   \
                     const double* W, Py_ssize_t H, Py_ssize_t width, double* out,  \
                     const char* pf, Py_ssize_t pfl, const char* pf2) {             \
        zk_vec a[13];                                                               \
        int q;                                                                      \
        Py_ssize_t p, l;                                                            \
        _Pragma("GCC unroll 16")                                                    \
        for (q = 0; q < 13; q++) a[q] = zk_splat(0.0);                              \
        for (p = 0; p < n; p++) {                                                   \
            const double v = (double)val[p];                                        \
            const double* w = W + (Py_ssize_t)idx[p] * H;                           \
            if (!(p & 1) && (p >> 1) < pfl) ZK_PREFETCH(pf + (p >> 1) * 64);        \
            if ((p & 1) && pf2 && (p >> 1) < pfl) ZK_PREFETCH_L2(pf2 + (p >> 1) * 64); \
            for (q = 0; q < 13; q++) a[q] += v * zk_load(w + q * ZK_L);             \
        }                                                                           \
        for (l = (n + 1) >> 1; l < pfl; l++) ZK_PREFETCH(pf + l * 64);              \
        if (pf2) for (l = n >> 1; l < pfl; l++) ZK_PREFETCH_L2(pf2 + l * 64);       \
        for (q = 0; q < 13 && (q + 1) * ZK_L <= width; q++) zk_store(out + q * ZK_L, a[q]); \
        if (q < 13 && q * ZK_L < width)                                             \
            zk_store_part(out + q * ZK_L, a[q], width - q * ZK_L);                  \
    }
    ZK_ROWS_PF(zerokara_rows_wide_pf, double)
    ZK_ROWS_PF(zerokara_rows_wide_f32_pf, float)

    /* dW1's dealing (dW1_block_): each sample n's entries of the block of
     * pixels from i0 (sidx/sval[p:q], see dW1_block_) appended to the lists
     * of their columns, column c's next entry at cnt[c]. The loop over a
     * sample's entries (about 11 for MNIST) is unrolled 8 times: the step
     * took 0.95-0.97 of the time of the plain loop (alternating runs), and
     * the lists are the same. */
    #define ZK_DEAL(NAME, VT)                                                       \\
    static void NAME(const int* sidx, const VT* sval, const Py_ssize_t* off,       \\
                     const int* starts, Py_ssize_t nb, Py_ssize_t N, Py_ssize_t blk, \\
                     Py_ssize_t i0, int* idx, VT* val, Py_ssize_t* cnt) {           \\
        Py_ssize_t n, p, q, c, k;                                                   \\
        for (n = 0; n < N; n++) {                                                   \\
            p = off[n] + starts[n * nb + blk];                                      \\
            q = off[n] + starts[n * nb + blk + 1];                                  \\
            if (n + 1 < N) {  /* the next sample's part, written by any thread */   \\
                ZK_PREFETCH(sidx + off[n + 1] + starts[(n + 1) * nb + blk]);        \\
                ZK_PREFETCH(sval + off[n + 1] + starts[(n + 1) * nb + blk]);        \\
            }                                                                       \\
            _Pragma("GCC unroll 8") for (; p < q; p++) {                                                    \\
                c = sidx[p] - i0;                                                   \\
                k = cnt[c];                                                         \\
                idx[k] = (int)n;                                                    \\
                val[k] = sval[p];                                                   \\
                cnt[c] = k + 1;                                                     \\
            }                                                                       \\
        }                                                                           \\
    }
    ZK_DEAL(zerokara_deal, double)
    ZK_DEAL(zerokara_deal_f32, float)

    /* Float32 sums for accuracy's screen (see accuracy): W is a float32
     * copy of W1 padded to HP columns (a multiple of 8, zeros past H), so
     * every pass reads whole vectors of 8 and never past a row. The order
     * of the additions does not matter here: accuracy bounds their error. */
    #if defined(__GNUC__) || defined(__clang__)
      #define ZEROKARA_SCREEN 1
      /* ZK_FL floats a vector: 8 (ymm) with AVX, else 4 (xmm); the padded
       * widths are multiples of 8 either way. */
      #if defined(__AVX__)
        #define ZK_FL 8
      #else
        #define ZK_FL 4
      #endif
      typedef float zk_fvec __attribute__((vector_size(4 * ZK_FL)));
      ZK_INLINE zk_fvec zk_fload(const float* p) { zk_fvec v; memcpy(&v, p, sizeof v); return v; }
      ZK_INLINE void zk_fstore(float* p, zk_fvec v) { memcpy(p, &v, sizeof v); }
      typedef int32_t zk_fivec __attribute__((vector_size(4 * ZK_FL)));
      #define ZK_FSELECT(m, a, b) ((zk_fvec)(((zk_fivec)(a) & (m)) | ((zk_fivec)(b) & ~(m))))
      ZK_INLINE zk_fvec zk_fsplat(float c) { return (zk_fvec){0} + c; }  /* not for -0.0: 0 + -0 is +0 */
      /* exp(x) for x <= 0 in float32 (NaN stays NaN): x clamped at -87
       * (e^-87 is about 1.6e-38, still a normal float), Cody-Waite reduction
       * with Cephes's split of ln 2, |r| <= ln2 / 2, the degree-7 Taylor
       * polynomial (tail below 5e-9) and a scaling by 2^k, k in [-126, 0]. */
      ZK_INLINE zk_fvec zk_fexp_neg(zk_fvec x) {
          const zk_fvec shifter = zk_fsplat(12582912.0f);  /* 1.5 * 2^23 */
          zk_fvec xc = ZK_FSELECT(x > -87.0f, x, zk_fsplat(-87.0f));
          zk_fvec t = xc * 1.44269504088896341f + shifter;
          zk_fvec kd = t - shifter;
          zk_fivec k = (zk_fivec)t - (zk_fivec)shifter;
          zk_fvec r = (xc - kd * 0.693359375f) + kd * 2.12194440e-4f;
          zk_fvec p = ((((((r * (1.0f / 5040.0f) + 1.0f / 720.0f) * r + 1.0f / 120.0f) * r
                      + 1.0f / 24.0f) * r + 1.0f / 6.0f) * r + 0.5f) * r + 1.0f) * r + 1.0f;
          p = p * (zk_fvec)((k + 127) << 23);
          return ZK_FSELECT(x == x, p, x);
      }
      /* Not an FMA: with 7 accumulators its latency (5 cycles on the Zen 2
       * here) would bound each entry; a product then a sum (3 cycles) does not. */
      #define ZK_FMADD(v, w, a) ((a) + (v) * (w))
      /* acc[0:8K] += sum_p val[p] W[idx[p] * HP : ... + 8K], in 8K / ZK_FL registers. */
      #define ZK_S32(NAME, K)                                                       \
      static void NAME(const int* idx, const float* val, Py_ssize_t n,              \
                       const float* W, Py_ssize_t HP, float* acc) {                 \
          zk_fvec a[K * 8 / ZK_FL];                                                 \
          int q;                                                                    \
          Py_ssize_t p;                                                             \
          _Pragma("GCC unroll 16")                                                  \
          for (q = 0; q < K * 8 / ZK_FL; q++) a[q] = zk_fload(acc + ZK_FL * q);     \
          for (p = 0; p < n; p++) {                                                 \
              const zk_fvec v = (zk_fvec){0} + val[p];                              \
              const float* w = W + (Py_ssize_t)idx[p] * HP;                         \
              _Pragma("GCC unroll 16")                                              \
              for (q = 0; q < K * 8 / ZK_FL; q++)                                   \
                  a[q] = ZK_FMADD(v, zk_fload(w + ZK_FL * q), a[q]);                \
          }                                                                         \
          _Pragma("GCC unroll 16")                                                  \
          for (q = 0; q < K * 8 / ZK_FL; q++) zk_fstore(acc + ZK_FL * q, a[q]);     \
      }
      ZK_S32(zk_s32_1, 1) ZK_S32(zk_s32_2, 2) ZK_S32(zk_s32_3, 3) ZK_S32(zk_s32_4, 4)
      ZK_S32(zk_s32_5, 5) ZK_S32(zk_s32_6, 6) ZK_S32(zk_s32_7, 7)
      /* acc[0:HP] += sum_p val[p] W[idx[p], :], in passes of up to 56 columns. */
      static void zerokara_sums32(const int* idx, const float* val, Py_ssize_t n,
                                  const float* W, Py_ssize_t HP, float* acc) {
          Py_ssize_t j0;
          for (j0 = 0; j0 < HP; j0 += 56) {
              switch ((HP - j0) >= 56 ? 7 : (int)((HP - j0) / 8)) {
                  case 7: zk_s32_7(idx, val, n, W + j0, HP, acc + j0); break;
                  case 6: zk_s32_6(idx, val, n, W + j0, HP, acc + j0); break;
                  case 5: zk_s32_5(idx, val, n, W + j0, HP, acc + j0); break;
                  case 4: zk_s32_4(idx, val, n, W + j0, HP, acc + j0); break;
                  case 3: zk_s32_3(idx, val, n, W + j0, HP, acc + j0); break;
                  case 2: zk_s32_2(idx, val, n, W + j0, HP, acc + j0); break;
                  default: zk_s32_1(idx, val, n, W + j0, HP, acc + j0); break;
              }
          }
      }
      /* The book's sigmoid in float32, as zk_sigmoid: within 9e-8 of the
       * exact sigmoid for every float32 input (all 2^32 checked once here);
       * NaN stays NaN. */
      ZK_INLINE zk_fvec zk_fsigmoid(zk_fvec v) {
          zk_fvec e = zk_fexp_neg((zk_fvec)((zk_fivec)v | INT32_MIN));  /* -|v| */
          return ZK_FSELECT(v >= 0.0f, zk_fsplat(1.0f), e) / (1.0f + e);
      }
      /* out[0:n] = zk_fsigmoid(v[0:n]), the tail through a padded vector. */
      static void zerokara_sigmoid32_row(const float* v, float* out, Py_ssize_t n) {
          float t[ZK_FL];
          Py_ssize_t j = 0;
          for (; j + ZK_FL <= n; j += ZK_FL) zk_fstore(out + j, zk_fsigmoid(zk_fload(v + j)));
          if (j < n) {
              memset(t, 0, sizeof t);
              memcpy(t, v + j, (size_t)(n - j) * sizeof(float));
              zk_fstore(t, zk_fsigmoid(zk_fload(t)));
              memcpy(out + j, t, (size_t)(n - j) * sizeof(float));
          }
      }
      /* The rest of accuracy's screen, in float32: z = sigmoid(s + b1)
       * (the book's sigmoid as in zk_sigmoid, 8 lanes), then
       * a = z W2 + b2 over the first H of z. b1 has HP entries, W2 is (HP, OP)
       * and b2 OP, zero-padded (OP a multiple of 8); iota holds 0..H-1. */
      static void zerokara_tail32(const float* s, const float* b1, Py_ssize_t H, Py_ssize_t HP,
                                  const float* W2, const float* b2, Py_ssize_t OP,
                                  const int* iota, float* z, float* a) {
          Py_ssize_t j;
          for (j = 0; j < HP; j += ZK_FL) zk_fstore(z + j, zk_fsigmoid(zk_fload(s + j) + zk_fload(b1 + j)));
          memset(a, 0, (size_t)OP * sizeof(float));
          zerokara_sums32(iota, z, H, W2, OP, a);
          for (j = 0; j < OP; j += ZK_FL) zk_fstore(a + j, zk_fload(a + j) + zk_fload(b2 + j));
      }
      /* sum_p |val[p]|, in float32 lanes (an inf or NaN stays one). */
      static double zerokara_abs_sum32(const float* val, Py_ssize_t n) {
          zk_fvec s = {0};
          float t[ZK_FL];
          double total = 0.0;
          Py_ssize_t p = 0;
          int k;
          for (; p + ZK_FL <= n; p += ZK_FL) s += (zk_fvec)((zk_fivec)zk_fload(val + p) & 0x7fffffff);
          zk_fstore(t, s);
          for (k = 0; k < ZK_FL; k++) total += t[k];
          for (; p < n; p++) total += val[p] < 0 ? -(double)val[p] : (double)val[p];
          return total;
      }
    #else
      #define ZEROKARA_SCREEN 0
      static void zerokara_sums32(const int* idx, const float* val, Py_ssize_t n,
                                  const float* W, Py_ssize_t HP, float* acc) {}
      static double zerokara_abs_sum32(const float* val, Py_ssize_t n) { return 0.0; }
      static void zerokara_sigmoid32_row(const float* v, float* out, Py_ssize_t n) {}
      static void zerokara_tail32(const float* s, const float* b1, Py_ssize_t H, Py_ssize_t HP,
                                  const float* W2, const float* b2, Py_ssize_t OP,
                                  const int* iota, float* z, float* a) {}
    #endif

    /* Seconds for one cache line to go from one thread to the other and
     * back, the mean over `rounds` round trips of two threads taking turns
     * to write one word (what every shared line costs a two-thread step
     * when one thread reads what the other wrote). -1 without OpenMP or
     * GCC-style atomics, when the region gets fewer than two threads, or
     * when a turn waits more than about a second (the two threads on one
     * core, taking turns by the scheduler's time slices). */
    static double zerokara_round_trip(long rounds) {
    #if defined(_OPENMP) && (defined(__GNUC__) || defined(__clang__))
        long turn = 0;   /* written in turns: 2i + 1 by thread 0, 2i + 2 by thread 1 */
        int failed = 0;
        double t0 = 0.0, t1 = 0.0;
        #pragma omp parallel num_threads(2)
        {
            if (omp_get_num_threads() != 2) {
                #pragma omp atomic write
                failed = 1;
            } else {
                int me = omp_get_thread_num();
                long i, spins, wait_for;
                double start = omp_get_wtime();
                #pragma omp barrier
                if (me == 0) t0 = omp_get_wtime();
                for (i = 0; i < rounds; i++) {
                    if (me == 0) __atomic_store_n(&turn, 2 * i + 1, __ATOMIC_RELEASE);
                    wait_for = me == 0 ? 2 * i + 2 : 2 * i + 1;
                    for (spins = 0; __atomic_load_n(&turn, __ATOMIC_ACQUIRE) != wait_for; spins++) {
                        if ((spins & 0xFFFF) == 0xFFFF
                            && (__atomic_load_n(&failed, __ATOMIC_RELAXED) || omp_get_wtime() - start > 1.0)) {
                            __atomic_store_n(&failed, 1, __ATOMIC_RELAXED);
                            break;
                        }
                    }
                    if (__atomic_load_n(&failed, __ATOMIC_RELAXED)) break;
                    if (me == 1) __atomic_store_n(&turn, 2 * i + 2, __ATOMIC_RELEASE);
                }
                if (me == 0) t1 = omp_get_wtime();
            }
        }
        if (failed || rounds <= 0) return -1.0;
        return (t1 - t0) / (double)rounds;
    #else
        (void)rounds;
        return -1.0;
    #endif
    }

    /* *p += v, returning the old value: one atomic step for threads that
     * take chunks of work from a shared counter (a plain step without
     * OpenMP, where there is one thread). */
    static inline Py_ssize_t zerokara_fetch_add(Py_ssize_t* p, Py_ssize_t v) {
        Py_ssize_t old;
    #if defined(_OPENMP)
        #pragma omp atomic capture
    #endif
        { old = *p; *p += v; }
        return old;
    }
    /* Wait until every thread of the parallel region gets here. Needed
     * between two loops of one parallel region when the second reads what
     * the first wrote: Cython ends a prange inside a parallel block
     * without a barrier (#pragma omp for nowait), and a loop scheduled by
     * hand has none either. */
    static inline void zerokara_barrier(void) {
    #if defined(_OPENMP)
        #pragma omp barrier
    #endif
    }

    /* exp(x) for x <= 0 (NaN stays NaN), see the design note: e^r as
     * 1 + (r + r^2 Q(r)), Q by Estrin's scheme (a short dependency chain; its
     * rounding errors are scaled by r^2 <= 0.12). Of g <= ZK_G vectors x[0:g]
     * in place, stage by stage across them: their chains of dependent
     * operations (about 85 cycles each) then run side by side, where one
     * vector after another leaves the core waiting on each (a row's sigmoid
     * 0.8 of the time in groups of 4, the same numbers). */
    #define ZK_G 4
    #define ZK_EACH _Pragma("GCC unroll 4") for (i = 0; i < g; i++)
    ZK_INLINE void zk_exp_neg_n(zk_vec* x, int g) {
        const zk_vec shifter = zk_splat(6755399441055744.0);  /* 1.5 * 2^52 */
        zk_vec xc[ZK_G], kd[ZK_G], r[ZK_G], r2[ZK_G], r4[ZK_G], q[ZK_G], p[ZK_G];
        zk_ivec k[ZK_G], k1[ZK_G];
        int i;
        ZK_EACH xc[i] = ZK_SELECT(ZK_MASK(x[i] > -1000.0), x[i], zk_splat(-1000.0));  /* NaN -> -1000 */
        ZK_EACH p[i] = xc[i] * 1.4426950408889634 + shifter;  /* rounds x / ln2 to an integer k */
        ZK_EACH kd[i] = p[i] - shifter;
        ZK_EACH k[i] = ZK_BITS(p[i]) - ZK_BITS(shifter);
        ZK_EACH r[i] = (xc[i] - kd[i] * 6.93147180369123816490e-01) - kd[i] * 1.90821492927058770002e-10;
        ZK_EACH r2[i] = r[i] * r[i];
        ZK_EACH r4[i] = r2[i] * r2[i];
        ZK_EACH q[i] = ((r[i] * (1.0 / 6.0) + 0.5) + r2[i] * (r[i] * (1.0 / 120.0) + 1.0 / 24.0))
                     + r4[i] * ((r[i] * (1.0 / 5040.0) + 1.0 / 720.0) + r2[i] * (r[i] * (1.0 / 362880.0) + 1.0 / 40320.0))
                     + (r4[i] * r4[i]) * ((r[i] * (1.0 / 39916800.0) + 1.0 / 3628800.0)
                                          + r2[i] * (r[i] * (1.0 / 6227020800.0) + 1.0 / 479001600.0));
        ZK_EACH p[i] = (r[i] + r2[i] * q[i]) + 1.0;
        ZK_EACH k1[i] = ((k[i] + 2048) >> 1) - 1024;           /* k in [-1443, 0] */
        ZK_EACH p[i] = p[i] * ZK_DOUBLE((k1[i] + 1023) << 52) * ZK_DOUBLE((k[i] - k1[i] + 1023) << 52);
        ZK_EACH x[i] = ZK_SELECT(ZK_MASK(x[i] == x[i]), p[i], x[i]);
    }
    ZK_INLINE zk_vec zk_exp_neg(zk_vec x) { zk_exp_neg_n(&x, 1); return x; }

    /* The book's sigmoid 1 / (1 + exp(-s)), as 1 / (1 + e) for s >= 0 and
     * e / (1 + e) for s < 0 with e = exp(-|s|): exp never overflows. Of
     * g <= ZK_G vectors s[0:g] in place. */
    ZK_INLINE void zk_sigmoid_n(zk_vec* s, int g) {
        zk_vec e[ZK_G];
        int i;
        ZK_EACH e[i] = ZK_DOUBLE(ZK_BITS(s[i]) | ZK_BITS(zk_splat(-0.0)));  /* -|s| */
        zk_exp_neg_n(e, g);
        ZK_EACH s[i] = ZK_SELECT(ZK_MASK(s[i] >= 0.0), zk_splat(1.0), e[i]) / (1.0 + e[i]);
    }

    /* dst[0:w] = src[0:w] for w = width rounded up to whole vectors, the
     * lanes past width 0 (dz1's strips, strips_): whole vectors, the last
     * one in registers (zk_load_part), no call into the C library. */
    static void zerokara_copy_padded(const double* src, Py_ssize_t width, double* dst) {
        Py_ssize_t j = 0;
        for (; j + ZK_L <= width; j += ZK_L) zk_store(dst + j, zk_load(src + j));
        if (j < width) zk_store(dst + j, zk_load_part(src + j, width - j));
    }

    /* a[j] <- sigmoid(a[j] + b[j]) for j < n: ZK_G vectors at a time, the
     * rest as one smaller group, its last vector maybe partial: a strip of
     * 28 columns as 4 + 3 vectors, not 4 + 1 + 1 + 1, their chains of
     * dependent operations side by side rather than one after another. */
    static void zerokara_sigmoid_row(double* a, const double* b, Py_ssize_t n) {
        zk_vec v[ZK_G];
        Py_ssize_t j = 0;
        int i, g = ZK_G;
        for (; j + ZK_G * ZK_L <= n; j += ZK_G * ZK_L) {
            ZK_EACH v[i] = zk_load(a + j + i * ZK_L) + zk_load(b + j + i * ZK_L);
            zk_sigmoid_n(v, ZK_G);
            ZK_EACH zk_store(a + j + i * ZK_L, v[i]);
        }
        if (j < n) {  /* the rest, at most ZK_G vectors, as one group */
            const Py_ssize_t r = (n - j) % ZK_L;  /* lanes of a partial last vector, or 0 */
            g = (int)((n - j + ZK_L - 1) / ZK_L);
            for (i = 0; i < g; i++) {
                const Py_ssize_t k = j + i * ZK_L;
                v[i] = (r && i == g - 1) ? zk_load_part(a + k, r) + zk_load_part(b + k, r)
                                         : zk_load(a + k) + zk_load(b + k);
            }
            switch (g) {  /* a constant count: the group's loops unrolled, in registers */
                case 4: zk_sigmoid_n(v, 4); break;  /* 13 to 15 entries, or 7 with 2 lanes */
                case 3: zk_sigmoid_n(v, 3); break;
                case 2: zk_sigmoid_n(v, 2); break;
                default: zk_sigmoid_n(v, 1); break;
            }
            for (i = 0; i < g; i++) {
                if (r && i == g - 1) zk_store_part(a + j + i * ZK_L, v[i], r);
                else zk_store(a + j + i * ZK_L, v[i]);
            }
        }
    }

    /* y[k] = exp(a[k] - m) for k < n (m is the row maximum). */
    static void zerokara_exp_shifted(const double* a, double m, double* y, Py_ssize_t n) {
        Py_ssize_t k = 0;
        for (; k + ZK_L <= n; k += ZK_L) zk_store(y + k, zk_exp_neg(zk_load(a + k) - m));
        if (k < n) zk_store_part(y + k, zk_exp_neg(zk_load_part(a + k, n - k) - m), n - k);
    }

    /* Compaction of a float32 row with AVX2: 8 pixels per step, branch-free:
     * the non-zero lanes (x != 0, or NaN) are packed to the front by a
     * permutation from a 256-entry table and stored; the count advances by
     * their number. Writes up to 7 entries past the count. */
    #if defined(__AVX2__) && (defined(__GNUC__) || defined(__clang__))
      #define ZEROKARA_PACK8 1
      static int8_t zk_pack_table[256][8];
      static void zerokara_init(void) {
          int m, k, c;
          for (m = 0; m < 256; m++) {
              for (c = 0, k = 0; k < 8; k++) if (m >> k & 1) zk_pack_table[m][c++] = (int8_t)k;
              for (; c < 8; c++) zk_pack_table[m][c] = 0;
          }
      }
      static Py_ssize_t zerokara_nonzeros_pack8(const float* x, Py_ssize_t I, int* idx, float* val,
                                                int* starts) {
          Py_ssize_t i = 0, nnz = 0;
          int left = 0;  /* groups of 8 before the next block of ZEROKARA_BLOCK pixels starts */
          for (; i + 8 <= I; i += 8) {
              __m256 v = _mm256_loadu_ps(x + i);
              if (left == 0) { if (starts) *starts++ = (int)nnz; left = ZEROKARA_BLOCK / 8; }
              left--;
              int m = _mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_NEQ_UQ));
              __m256i perm = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)zk_pack_table[m]));
              _mm256_storeu_ps(val + nnz, _mm256_permutevar8x32_ps(v, perm));
              _mm256_storeu_si256((__m256i*)(idx + nnz), _mm256_add_epi32(perm, _mm256_set1_epi32((int)i)));
              nnz += __builtin_popcount((unsigned)m);
          }
          for (; i < I; i++) {
              if (starts && i % ZEROKARA_BLOCK == 0) *starts++ = (int)nnz;
              idx[nnz] = (int)i; val[nnz] = x[i]; nnz += (x[i] != 0);
          }
          if (starts) *starts = (int)nnz;
          return nnz;
      }
    #else
      #define ZEROKARA_PACK8 0
      static void zerokara_init(void) {}
      static Py_ssize_t zerokara_nonzeros_pack8(const float* x, Py_ssize_t I, int* idx, float* val,
                                                int* starts) { return -1; }
    #endif

    #if defined(__AVX2__)
      #define ZEROKARA_SIMD "avx2"
    #else
      #define ZEROKARA_SIMD "portable"
    #endif

    /* 1 if the CPU (and the OS) can run the AVX2 build, else 0. */
    #if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
    static int zerokara_cpu_avx2_fma(void) {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    #else
    static int zerokara_cpu_avx2_fma(void) { return 0; }
    #endif
    """
    enum: ROW "ZEROKARA_ROW"
    enum: STRIP "ZEROKARA_STRIP"
    enum: STRIP6 "ZEROKARA_STRIP6"
    # Doubles in one vector register.
    enum: LANES "ZK_L"
    # Pixels per block of dW1 rows: their lists of non-zeros are gathered in
    # one sweep over the samples.
    enum: BLOCK "ZEROKARA_BLOCK"
    enum: NROW "ZEROKARA_NROW"
    enum: PACK8 "ZEROKARA_PACK8"
    const char* ZEROKARA_SIMD
    int zerokara_cpu_avx2_fma() noexcept nogil
    void zerokara_init() noexcept nogil
    Py_ssize_t zerokara_nonzeros_pack8(const float* x, Py_ssize_t I, int* idx, float* val,
                                       int* starts) noexcept nogil
    void zerokara_rows_wide(const int* idx, const double* val, Py_ssize_t n, const double* W,
                            Py_ssize_t H, Py_ssize_t width, double* out) noexcept nogil
    void zerokara_rows_narrow(const int* idx, const double* val, Py_ssize_t n, const double* W,
                              Py_ssize_t H, Py_ssize_t width, double* out) noexcept nogil
    void zerokara_rows_wide_f32(const int* idx, const float* val, Py_ssize_t n, const double* W,
                                Py_ssize_t H, Py_ssize_t width, double* out) noexcept nogil
    void zerokara_rows_narrow_f32(const int* idx, const float* val, Py_ssize_t n, const double* W,
                                  Py_ssize_t H, Py_ssize_t width, double* out) noexcept nogil
    void zerokara_rows_wide_pf(const int* idx, const double* val, Py_ssize_t n, const double* W,
                               Py_ssize_t H, Py_ssize_t width, double* out,
                               const char* pf, Py_ssize_t pfl, const char* pf2) noexcept nogil
    void zerokara_deal(const int* sidx, const double* sval, const Py_ssize_t* off, const int* starts,
                       Py_ssize_t nb, Py_ssize_t N, Py_ssize_t blk, Py_ssize_t i0,
                       int* idx, double* val, Py_ssize_t* cnt) noexcept nogil
    void zerokara_deal_f32(const int* sidx, const float* sval, const Py_ssize_t* off, const int* starts,
                           Py_ssize_t nb, Py_ssize_t N, Py_ssize_t blk, Py_ssize_t i0,
                           int* idx, float* val, Py_ssize_t* cnt) noexcept nogil
    void zerokara_rows_wide_f32_pf(const int* idx, const float* val, Py_ssize_t n, const double* W,
                                   Py_ssize_t H, Py_ssize_t width, double* out,
                                   const char* pf, Py_ssize_t pfl, const char* pf2) noexcept nogil
    void zerokara_acc_wide(const int* idx, const double* val, Py_ssize_t n, const double* W,
                           Py_ssize_t H, double* acc) noexcept nogil
    void zerokara_acc_narrow(const int* idx, const double* val, Py_ssize_t n, const double* W,
                             Py_ssize_t H, double* acc) noexcept nogil
    void zerokara_acc_wide_f32(const int* idx, const float* val, Py_ssize_t n, const double* W,
                               Py_ssize_t H, double* acc) noexcept nogil
    void zerokara_acc_narrow_f32(const int* idx, const float* val, Py_ssize_t n, const double* W,
                                 Py_ssize_t H, double* acc) noexcept nogil
    Py_ssize_t zerokara_fetch_add(Py_ssize_t* p, Py_ssize_t v) noexcept nogil
    double zerokara_round_trip(long rounds) noexcept nogil
    void zerokara_barrier() noexcept nogil
    void zerokara_rows_strip(const int* idx, const double* val, Py_ssize_t n, const double* W,
                             Py_ssize_t H, Py_ssize_t width, double* out) noexcept nogil
    void zerokara_rows_strip_f32(const int* idx, const float* val, Py_ssize_t n, const double* W,
                                 Py_ssize_t H, Py_ssize_t width, double* out) noexcept nogil
    void zerokara_rows_strip6(const int* idx, const double* val, Py_ssize_t n, const double* W,
                              Py_ssize_t H, Py_ssize_t width, double* out) noexcept nogil
    void zerokara_rows_strip6_f32(const int* idx, const float* val, Py_ssize_t n, const double* W,
                                  Py_ssize_t H, Py_ssize_t width, double* out) noexcept nogil
    void zerokara_sgd_strip(const int* idx, const double* val, Py_ssize_t n, const double* W,
                            Py_ssize_t H, Py_ssize_t width, double* P, double lr) noexcept nogil
    void zerokara_sgd_strip_f32(const int* idx, const float* val, Py_ssize_t n, const double* W,
                                Py_ssize_t H, Py_ssize_t width, double* P, double lr) noexcept nogil
    void zerokara_sgd_strip6(const int* idx, const double* val, Py_ssize_t n, const double* W,
                             Py_ssize_t H, Py_ssize_t width, double* P, double lr) noexcept nogil
    void zerokara_sgd_strip6_f32(const int* idx, const float* val, Py_ssize_t n, const double* W,
                                 Py_ssize_t H, Py_ssize_t width, double* P, double lr) noexcept nogil
    void zerokara_sigmoid_row(double* a, const double* b, Py_ssize_t n) noexcept nogil
    void zerokara_copy_padded(const double* src, Py_ssize_t width, double* dst) noexcept nogil
    void zerokara_prefetch_row(const void* p, Py_ssize_t bytes) noexcept nogil
    void zerokara_prefetch(const void* p) noexcept nogil
    void ZK_PREFETCH(const void* p) noexcept nogil
    void zerokara_exp_shifted(const double* a, double m, double* y, Py_ssize_t n) noexcept nogil
    enum: SCREEN "ZEROKARA_SCREEN"
    void zerokara_sums32(const int* idx, const float* val, Py_ssize_t n, const float* W,
                         Py_ssize_t HP, float* acc) noexcept nogil
    double zerokara_abs_sum32(const float* val, Py_ssize_t n) noexcept nogil
    void zerokara_sigmoid32_row(const float* v, float* out, Py_ssize_t n) noexcept nogil
    void zerokara_tail32(const float* s, const float* b1, Py_ssize_t H, Py_ssize_t HP,
                         const float* W2, const float* b2, Py_ssize_t OP,
                         const int* iota, float* z, float* a) noexcept nogil

zerokara_init()

ctypedef fused floating_x:
    float
    double

ctypedef fused floating_v:
    float
    double

cdef enum:
    # Samples a thread takes at a time in the gradient's forward pass; the
    # last FWD_TAIL samples one at a time (chunk_at_), so that the threads
    # reach the barrier after it closer together.
    CHUNK = 4
    FWD_TAIL = 4
    # Blocks of BLOCK pixels that sums_blocked_ takes at a time (112 pixels:
    # about 45 KB of W1's rows for MNIST; the accuracy on 70000 images about
    # 4% quicker than with 4 blocks, 1 block slower, in alternating runs).
    SUM_BLOCKS = 2
    # Samples that accuracy sums together, at most.
    ACC_CHUNK = 16
    # Rows from which accuracy screens in float32 (below, W1's float32 copy
    # costs more than it saves).
    SCREEN_MIN = 1000
    # Entries of the per-sample lists of non-zeros above which gradient
    # counts them first and packs the lists (4 MB of int32 indices).
    PACK_ABOVE = 1 << 20
    # The loss after an SGD step (its lists of non-zeros already made) is
    # summed LCHUNK samples at a time (sums_blocked_): each row of W1 is
    # read from L2 once for those samples instead of once per non-zero
    # (about 4 us of its 65 a thread here, measured with TSC timers).
    LCHUNK = 10


def openmp_enabled():
    """True if this module was compiled with OpenMP."""
    return bool(ZEROKARA_OPENMP)


def core_round_trip(long rounds=20000):
    """Nanoseconds for a cache line to go from one thread to another and back (a machine probe).

    Two OpenMP threads take turns to write one shared word, ``rounds``
    times; the mean time of a turn and back. Every line that one thread of
    a two-thread kernel reads of what the other wrote costs about half of
    it. On a virtual machine it can change several times over from one
    minute to the next (the benchmarks record it). NaN when it cannot be
    measured: no OpenMP, fewer than two threads, or a turn that waited
    more than a second (both threads on one core).
    """
    if rounds < 1:
        raise ValueError(f"rounds must be positive; got {rounds}")
    cdef double t
    with nogil:
        t = zerokara_round_trip(rounds)
    return t * 1e9 if t >= 0.0 else float("nan")


def max_threads():
    """The number of threads a parallel region uses by default (``OMP_NUM_THREADS``)."""
    return omp_get_max_threads()


def simd_build():
    """Which build of the kernels this module is: ``"portable"`` or ``"avx2"``."""
    return ZEROKARA_SIMD.decode()


def screen_sigmoid(const float[::1] v, float[::1] out):
    """out = the float32 sigmoid of accuracy's screen, of v (for the tests of its error bound).

    Raises RuntimeError where the screen is not compiled (not GCC or clang).
    """
    if not SCREEN:
        raise RuntimeError("this build has no float32 screen")
    if out.shape[0] != v.shape[0]:
        raise ValueError(f"out has {out.shape[0]} entries, v {v.shape[0]}")
    if v.shape[0]:
        with nogil:
            zerokara_sigmoid32_row(&v[0], &out[0], v.shape[0])


def cpu_supports_avx2():
    """True if this CPU and OS can run the AVX2 builds (AVX2 and FMA); False off x86."""
    return bool(zerokara_cpu_avx2_fma())


# ---------------------------------------------------------------- helpers ---

cdef inline uint64_t word_(const void* p) noexcept nogil:
    """8 bytes at p, as an integer (memcpy: no alignment or aliasing assumed)."""
    cdef uint64_t w
    memcpy(&w, p, 8)
    return w


cdef inline Py_ssize_t nonzeros_(const floating_x* x, Py_ssize_t I,
                                 int* idx, floating_x* val, int* starts) noexcept nogil:
    """Compact the non-zero entries of one row of x; returns their count.

    ``idx`` and ``val`` need room for I + 8 entries. The AVX2 build packs
    float32 rows 8 pixels per step (``zerokara_nonzeros_pack8``). Otherwise
    32 bytes at a time: a group of all-zero bits costs one test; in the
    others each index is written, then kept only if the value is non-zero.

    Unless ``starts`` is NULL, ``starts[b]`` is set to where block ``b`` of
    BLOCK pixels starts in the list, for ``b <= ceil(I / BLOCK)`` (the last
    is the count): what ``block_starts_`` finds, noted on the way (BLOCK is
    a multiple of the 8 or 4 pixels of a step).
    """
    if floating_x is float:
        if PACK8:
            return zerokara_nonzeros_pack8(x, I, idx, val, starts)
    cdef Py_ssize_t i = 0, k, nnz = 0
    cdef Py_ssize_t G = 32 // sizeof(floating_x)
    cdef const char* c
    while i + G <= I:
        if starts != NULL and i % BLOCK == 0:
            starts[i // BLOCK] = <int>nnz
        c = <const char*>(x + i)
        if word_(c) | word_(c + 8) | word_(c + 16) | word_(c + 24):
            for k in range(G):
                idx[nnz] = <int>(i + k)
                val[nnz] = x[i + k]
                nnz += (x[i + k] != 0)
        i += G
    while i < I:
        if starts != NULL and i % BLOCK == 0:
            starts[i // BLOCK] = <int>nnz
        idx[nnz] = <int>i
        val[nnz] = x[i]
        nnz += (x[i] != 0)
        i += 1
    if starts != NULL:
        starts[(I + BLOCK - 1) // BLOCK] = <int>nnz
    return nnz


cdef inline void rows_dot_(const int* idx, const floating_v* val, Py_ssize_t n,
                           const double* W, Py_ssize_t R, Py_ssize_t H, Py_ssize_t ws,
                           double* out, const char* pf=NULL, Py_ssize_t pfl=0,
                           const char* pf2=NULL) noexcept nogil:
    """out[j] = sum_p val[p] W[r_p, j] for j < H, summed in ascending p.

    W has R rows of H columns, ``ws`` >= H doubles apart (H for an array
    of shape (R, H)); r_p = idx[p], or p when idx is NULL (a dense sum).
    Passes of ROW columns (NROW for the last few), in registers; the
    entries whose pass would read past W's end are added afterwards.
    With ``pfl > 0`` (and idx given), the first wide pass also fetches the
    ``pfl`` cache lines at ``pf``, and those at ``pf2`` into L2 unless it
    is NULL (ZK_ROWS_PF); the sums are the same.
    """
    cdef Py_ssize_t p, j, r, j0 = 0, width, pw, safe
    cdef double v
    cdef const double* w
    while j0 < H:
        pw = ROW if H - j0 > NROW else NROW
        width = min(pw, H - j0)
        safe = n
        while safe > 0 and ((idx[safe - 1] if idx else safe - 1) * ws + j0 + pw > R * ws):
            safe -= 1
        if floating_v is float:
            if pw == ROW and pfl > 0 and j0 == 0 and idx != NULL:
                zerokara_rows_wide_f32_pf(idx, val, safe, W + j0, ws, width, out + j0, pf, pfl, pf2)
            elif pw == ROW:
                zerokara_rows_wide_f32(idx, val, safe, W + j0, ws, width, out + j0)
            else:
                zerokara_rows_narrow_f32(idx, val, safe, W + j0, ws, width, out + j0)
        else:
            if pw == ROW and pfl > 0 and j0 == 0 and idx != NULL:
                zerokara_rows_wide_pf(idx, val, safe, W + j0, ws, width, out + j0, pf, pfl, pf2)
            elif pw == ROW:
                zerokara_rows_wide(idx, val, safe, W + j0, ws, width, out + j0)
            else:
                zerokara_rows_narrow(idx, val, safe, W + j0, ws, width, out + j0)
        for p in range(safe, n):
            v = val[p]
            r = idx[p] if idx else p
            w = W + r * ws + j0
            for j in range(width):
                out[j0 + j] += v * w[j]
        j0 += pw


cdef inline Py_ssize_t padded_width_(Py_ssize_t H) noexcept nogil:
    """Columns of rows_dot_'s passes over H columns, the last pass's padding included."""
    cdef Py_ssize_t j0 = 0, S = 0, pw
    while j0 < H:
        pw = ROW if H - j0 > NROW else NROW
        S += pw
        j0 += pw
    return S


cdef void sums_blocked_(const int* sidx, const floating_x* sval, const Py_ssize_t* off,
                        const Py_ssize_t* nnz, const int* starts, Py_ssize_t nb1,
                        Py_ssize_t M, Py_ssize_t I, const double* W,
                        Py_ssize_t H, Py_ssize_t ws, double* acc, Py_ssize_t S,
                        const float* W32=NULL, float* acc32=NULL,
                        const char* pf=NULL, Py_ssize_t pfl=0) noexcept nogil:
    """Row n of acc (stride S) = x[n] W for n < M, from the samples' lists: rows_dot_'s sums.

    W has I rows of H columns, ``ws`` doubles apart (rows_dot_).

    Sample n's non-zeros are ``sidx/sval[off[n]:off[n] + nnz[n]]``, pixels
    ascending, and block b of BLOCK pixels starts at its entry
    ``starts[n * nb1 + b]`` (nonzeros_ or block_starts_). Summed SUM_BLOCKS
    blocks at a time, sample after sample, the partial sums kept in acc:
    the rows of W of those blocks are read from L2 into L1 once for all the
    samples instead of once for each non-zero. Each sum is still taken in
    ascending pixel order from 0.0, so the numbers are rows_dot_'s; the
    entries whose pass would read past W's end are added last, as there.

    With ``W32`` (float32 x only): accuracy's screen. Row n of ``acc32``
    (stride H, a multiple of 8) = x[n] W32 in float32, where W32 is
    accuracy's float32 copy of W1, zero-padded to H columns (so no entry
    is left for afterwards); W and acc are not used.

    With ``pf``: the ``pfl`` bytes at ``pf`` (the rows of x that the
    thread compacts next) are fetched into the caches a few lines before
    each sample's part of the sums, so that their fetch from memory is
    spread over these sums instead of stalling the compaction after them.
    """
    cdef Py_ssize_t n, b, b2, p, q, qq, j0, j, pw, width, safe, r, nblocks = nb1 - 1
    cdef Py_ssize_t l = 0, lines = (pfl + 63) // 64 if pf != NULL else 0
    cdef Py_ssize_t parts = M * ((nblocks + SUM_BLOCKS - 1) // SUM_BLOCKS)
    cdef Py_ssize_t per_part = (lines + parts - 1) // parts if parts > 0 else 0
    cdef double v
    cdef double* out
    if W32 != NULL:
        memset(acc32, 0, M * H * sizeof(float))
    else:
        memset(acc, 0, M * S * sizeof(double))
    b = 0
    while b < nblocks:
        b2 = min(b + SUM_BLOCKS, nblocks)
        for n in range(M):
            j = min(l + per_part, lines)
            while l < j:
                zerokara_prefetch(pf + l * 64)
                l += 1
            p = off[n] + starts[n * nb1 + b]
            q = off[n] + starts[n * nb1 + b2]
            if p == q:
                continue
            if floating_x is float:
                if W32 != NULL:
                    zerokara_sums32(sidx + p, sval + p, q - p, W32, H, acc32 + n * H)
                    continue
            out = acc + n * S
            j0 = 0
            while j0 < H:
                pw = ROW if H - j0 > NROW else NROW
                qq = q
                while qq > p and sidx[qq - 1] * ws + j0 + pw > I * ws:
                    qq -= 1
                if floating_x is float:
                    if pw == ROW:
                        zerokara_acc_wide_f32(sidx + p, sval + p, qq - p, W + j0, ws, out + j0)
                    else:
                        zerokara_acc_narrow_f32(sidx + p, sval + p, qq - p, W + j0, ws, out + j0)
                else:
                    if pw == ROW:
                        zerokara_acc_wide(sidx + p, sval + p, qq - p, W + j0, ws, out + j0)
                    else:
                        zerokara_acc_narrow(sidx + p, sval + p, qq - p, W + j0, ws, out + j0)
                j0 += pw
        b = b2
    if W32 != NULL:
        return
    for n in range(M):
        out = acc + n * S
        j0 = 0
        while j0 < H:
            pw = ROW if H - j0 > NROW else NROW
            width = min(pw, H - j0)
            safe = nnz[n]
            while safe > 0 and sidx[off[n] + safe - 1] * ws + j0 + pw > I * ws:
                safe -= 1
            for p in range(off[n] + safe, off[n] + nnz[n]):
                v = sval[p]
                r = sidx[p]
                for j in range(width):
                    out[j0 + j] += v * W[r * ws + j0 + j]
            j0 += pw


cdef inline Py_ssize_t count_nonzeros_(const floating_x* x, Py_ssize_t I) noexcept nogil:
    """How many entries of one row of x ``nonzeros_`` keeps (x != 0, NaN included)."""
    cdef Py_ssize_t i, nnz = 0
    for i in range(I):
        nnz += (x[i] != 0)
    return nnz


cdef inline void forward_sparse_(const int* idx, const floating_x* val, Py_ssize_t nnz,
                                 Py_ssize_t I, const double* W1, Py_ssize_t ws, const double* b1,
                                 Py_ssize_t H, const double* W2, const double* b2,
                                 Py_ssize_t O, double* z, double* a,
                                 const char* pf=NULL, Py_ssize_t pfl=0,
                                 const char* pf2=NULL) noexcept nogil:
    """z = sigmoid(x W1 + b1) and a = z W2 + b2 for one sample given as its non-zeros.

    W1's rows are ``ws`` doubles apart; ``pf``/``pfl``/``pf2``: cache lines
    to fetch meanwhile (rows_dot_).
    """
    rows_dot_(idx, val, nnz, W1, I, H, ws, z, pf, pfl, pf2)
    forward_tail_(b1, H, W2, b2, O, z, a)


cdef inline void forward_tail_(const double* b1, Py_ssize_t H, const double* W2, const double* b2,
                               Py_ssize_t O, double* z, double* a) noexcept nogil:
    """z <- sigmoid(z + b1), where z holds x W1, and a = z W2 + b2."""
    cdef Py_ssize_t k
    zerokara_sigmoid_row(z, b1, H)
    rows_dot_(<const int*>NULL, z, H, W2, H, O, O, a)
    for k in range(O):
        a[k] += b2[k]


cdef inline void forward_(const floating_x* x, Py_ssize_t I, const double* W1,
                          const double* b1, Py_ssize_t H, const double* W2,
                          const double* b2, Py_ssize_t O, double* z, double* a,
                          int* idx, floating_x* val) noexcept nogil:
    """z = sigmoid(x W1 + b1) and a = z W2 + b2 for one sample, skipping zero pixels.

    ``idx`` and ``val`` are scratch rows of length I + 8.
    """
    forward_sparse_(idx, val, nonzeros_(x, I, idx, val, NULL), I, W1, H, b1, H, W2, b2, O, z, a)


cdef inline void softmax_(const double* a, Py_ssize_t O, double* y) noexcept nogil:
    """y = exp(a - max a) / sum exp(a - max a), the book's softmax."""
    cdef Py_ssize_t k
    cdef double m = a[0], s = 0.0
    for k in range(1, O):
        if a[k] > m:
            m = a[k]
    zerokara_exp_shifted(a, m, y, O)
    for k in range(O):
        s += y[k]
    for k in range(O):
        y[k] = y[k] / s


cdef inline Py_ssize_t argmax_(const floating_v* a, Py_ssize_t O) noexcept nogil:
    """np.argmax of one row (first maximum); -1 if the row is not finite (float64 or float32 scores)."""
    cdef Py_ssize_t k, best = 0
    cdef double total = 0.0
    for k in range(O):
        total += a[k]
        if a[k] > a[best]:
            best = k
    if total - total != 0.0:  # NaN or inf somewhere in the row
        return -1
    return best


cdef inline void backward_sample_(double* dy, const double* z, const double* W2T,
                                  int64_t t, double N, Py_ssize_t H, Py_ssize_t O,
                                  double* dz) noexcept nogil:
    """dy <- (y - onehot(t)) / N in place, then dz = sigmoid_grad * (dy W2^T).

    ``W2T`` is W2 transposed, (O, H): ``dy W2^T`` is then a dense row sum.
    """
    cdef Py_ssize_t j, k
    for k in range(O):
        dy[k] = (dy[k] - (1.0 if k == t else 0.0)) / N
    rows_dot_(<const int*>NULL, dy, O, W2T, O, H, H, dz)
    for j in range(H):
        dz[j] = (1.0 - z[j]) * z[j] * dz[j]


cdef inline void dW2_col_(const double* z1, const double* dy, const double* dz1,
                          Py_ssize_t N, Py_ssize_t H, Py_ssize_t O, Py_ssize_t k,
                          double* col, double* out) noexcept nogil:
    """out = dW2[:, k] = sum_n dy[n, k] z1[n, :] for k < O; out = db1 = sum_n dz1[n, :] for k == O.

    Rows of z1 (of dz1) weighted by a column of dy (by 1.0): a dense row
    sum, in ascending n, over contiguous rows. The same numbers as summing
    ``z1[n, j] * dy[n, k]`` (``+= dz1[n, j]``) in a loop over n for each j.
    ``col`` is scratch of length N.
    """
    cdef Py_ssize_t n
    if k < O:
        for n in range(N):
            col[n] = dy[n * O + k]
        rows_dot_(<const int*>NULL, col, N, z1, N, H, H, out)
    else:
        for n in range(N):
            col[n] = 1.0
        rows_dot_(<const int*>NULL, col, N, dz1, N, H, H, out)


cdef inline void block_starts_(const int* sidx, Py_ssize_t nnz, Py_ssize_t nblocks,
                               int* starts) noexcept nogil:
    """starts[b] = the first p < nnz with sidx[p] >= b * BLOCK, else nnz, for b <= nblocks.

    One pass over a sample's list of non-zeros (pixels ascending), while it
    is still in cache: dW1_block_ then finds each block's part of it at once.
    """
    cdef Py_ssize_t p, b = 0
    for p in range(nnz):
        while b * BLOCK <= sidx[p]:
            starts[b] = <int>p
            b += 1
    while b <= nblocks:
        starts[b] = <int>nnz
        b += 1


cdef inline Py_ssize_t chunk_at_(Py_ssize_t c, Py_ssize_t N) noexcept nogil:
    """The first sample of the forward pass's chunk c: CHUNK samples a chunk, the last FWD_TAIL one each; N past the end."""
    cdef Py_ssize_t full = (N - FWD_TAIL) // CHUNK if N > FWD_TAIL else 0
    return min(c * CHUNK if c <= full else full * CHUNK + (c - full), N)


cdef inline void sgd_(double* p, const double* g, Py_ssize_t n, double lr) noexcept nogil:
    """p -= g * lr element by element: NumPy's ``p -= lr * g``, the same two roundings."""
    cdef Py_ssize_t i
    for i in range(n):
        p[i] = p[i] - g[i] * lr


cdef inline Py_ssize_t strip_stride_(Py_ssize_t H, Py_ssize_t j0) noexcept nogil:
    """The row length of dz1's strip from column j0: its width, rounded up to whole vectors."""
    cdef Py_ssize_t width = min(STRIP, H - j0)
    return (width + LANES - 1) // LANES * LANES


cdef inline void strips_(const double* dz, Py_ssize_t H, Py_ssize_t N, Py_ssize_t n,
                         double* dzs) noexcept nogil:
    """Copies sample n's row of dz1 into dz1's strips (dW1_block_), the padding zero.

    Strip j0 (j0 = 0, STRIP, ...) holds columns j0 up to j0 + STRIP of every
    sample, row after row (strip_stride_ doubles a row), so that a strip of
    all N rows is one contiguous run of cache lines (22 KB for the book's
    batch): the rows of dz1 themselves (H doubles) would put each row's
    part of the strip on 4 or 5 lines instead of 3.5.
    """
    cdef Py_ssize_t j0 = 0, stride
    while j0 < H:
        stride = strip_stride_(H, j0)
        zerokara_copy_padded(dz + j0, min(STRIP, H - j0), dzs + n * stride)
        dzs += N * stride
        j0 += STRIP


cdef inline void strip_sum_(const int* idx, const floating_v* val, Py_ssize_t n,
                            const double* W, Py_ssize_t stride, Py_ssize_t width,
                            double* out) noexcept nogil:
    """out[0:width] = sum_p val[p] W[r_p, 0:width], r_p = idx[p] (p if NULL): rows_dot_'s sums.

    Reads whole vectors, up to STRIP entries of a row: W needs STRIP
    readable doubles past its last row.
    """
    if floating_v is float:
        if width <= STRIP6:
            zerokara_rows_strip6_f32(idx, val, n, W, stride, width, out)
        else:
            zerokara_rows_strip_f32(idx, val, n, W, stride, width, out)
    else:
        if width <= STRIP6:
            zerokara_rows_strip6(idx, val, n, W, stride, width, out)
        else:
            zerokara_rows_strip(idx, val, n, W, stride, width, out)


cdef inline void sgd_strip_(const int* idx, const floating_v* val, Py_ssize_t n,
                            const double* W, Py_ssize_t stride, Py_ssize_t width,
                            double* out, double lr) noexcept nogil:
    """out[j] = out[j] - g[j] * lr for j < width, g the sums of strip_sum_ (zerokara_sgd_strip)."""
    if floating_v is float:
        if width <= STRIP6:
            zerokara_sgd_strip6_f32(idx, val, n, W, stride, width, out, lr)
        else:
            zerokara_sgd_strip_f32(idx, val, n, W, stride, width, out, lr)
    else:
        if width <= STRIP6:
            zerokara_sgd_strip6(idx, val, n, W, stride, width, out, lr)
        else:
            zerokara_sgd_strip(idx, val, n, W, stride, width, out, lr)


cdef inline void dW1_block_(const int* sidx, const floating_x* sval, const Py_ssize_t* off,
                            const int* starts, Py_ssize_t nb, Py_ssize_t N, const double* dzs,
                            Py_ssize_t H, Py_ssize_t blk, Py_ssize_t I,
                            int* idx, floating_x* val, Py_ssize_t* cnt,
                            double* dW1, double* W1, Py_ssize_t ws, double lr) noexcept nogil:
    """dW1[i0:i1, :] = x[:, i0:i1]^T dz1 for block ``blk`` (i0 = blk * BLOCK), from the samples' lists.

    Sample n's non-zeros are ``sidx/sval[off[n]:]``, pixels ascending; those
    of this block are its entries ``starts[n * nb + blk]`` up to
    ``starts[n * nb + blk + 1]`` (block_starts_, ``nb`` entries per sample).
    One sweep over the samples (zerokara_deal) deals them into the lists of
    the columns i0 <= i < i1 (``idx``/``val``, N entries per column, samples
    ascending); each column is then summed like ``x W1``, a strip of dz1's
    columns at a time (``dzs``: dz1 in strips, see strips_, with STRIP
    readable entries past the last). With ``W1`` (an SGD step) each
    column's sum stays in registers and is applied at once,
    ``W1[i] = W1[i] - g * lr`` (zerokara_sgd_strip; W1's rows ``ws``
    doubles apart); a column without non-zeros leaves W1[i] as it is
    (``W1 - 0 * lr`` is ``W1``). dW1 is then not written.
    """
    cdef Py_ssize_t c, i0 = blk * BLOCK, i1 = min(i0 + BLOCK, I)
    for c in range(i1 - i0):  # where column c's list goes on; its count after the sweep
        cnt[c] = c * N
    if floating_x is float:
        zerokara_deal_f32(sidx, sval, off, starts, nb, N, blk, i0, idx, val, cnt)
    else:
        zerokara_deal(sidx, sval, off, starts, nb, N, blk, i0, idx, val, cnt)
    for c in range(i1 - i0):
        cnt[c] -= c * N
    cdef Py_ssize_t j0, width, stride
    if W1 == NULL:  # dW1: rows without non-zeros (common at the edges of MNIST's images) are zero
        for c in range(i1 - i0):
            if cnt[c] == 0:
                memset(dW1 + (i0 + c) * H, 0, H * sizeof(double))
    j0 = 0
    while j0 < H:  # strip by strip; within a strip column by column
        width = min(STRIP, H - j0)
        stride = strip_stride_(H, j0)
        for c in range(i1 - i0):
            if cnt[c] == 0:
                continue
            if W1 != NULL:
                sgd_strip_(idx + c * N, val + c * N, cnt[c], dzs, stride, width, W1 + (i0 + c) * ws + j0, lr)
            else:
                strip_sum_(idx + c * N, val + c * N, cnt[c], dzs, stride, width, dW1 + (i0 + c) * H + j0)
        dzs += N * stride
        j0 += STRIP


# ---------------------------------------------------------------- scratch ---

_local = threading.local()
# An arena larger than this (an unusually large batch) is not kept.
_KEEP_BYTES = 16 << 20


cdef object scratch_(str name, Py_ssize_t nbytes):
    """``(buffer, address)``: at least nbytes of uninitialised scratch at a 64-byte aligned address.

    Reused across calls by the same Python thread (one buffer per ``name``):
    a training run calls the kernels thousands of times with the same
    shapes, and one reused block avoids an allocation (and its page faults)
    per array per call. One per Python thread keeps concurrent callers
    apart. The caller holds ``buffer`` while it uses the address.
    """
    cdef char* p
    kept = getattr(_local, name, None)
    if kept is not None and kept[0].nbytes >= nbytes + 64:
        return kept
    buf = np.empty(nbytes + 64, dtype=np.uint8)
    p = base_(buf)
    kept = (buf, <Py_ssize_t>p)
    if buf.nbytes <= _KEEP_BYTES:
        setattr(_local, name, kept)
    return kept


cdef Py_ssize_t other_half_(str name):
    """0 and 1 in turn, call after call by the same Python thread (a scratch arena's half)."""
    cdef Py_ssize_t h = getattr(_local, name, 0)
    setattr(_local, name, 1 - h)
    return h


cdef inline Py_ssize_t take_(Py_ssize_t* top, Py_ssize_t nbytes) noexcept nogil:
    """Reserve nbytes at offset *top of an arena (64-byte steps); returns the offset."""
    cdef Py_ssize_t at = top[0]
    top[0] = at + (nbytes + 63) // 64 * 64
    return at


cdef inline char* base_(unsigned char[::1] buf) noexcept:
    """The first 64-byte aligned address in buf."""
    cdef char* p = <char*>&buf[0]
    return p + (64 - <size_t>p % 64) % 64


cdef struct Rows:
    # One thread's scratch for forward_: rows of H, O, O entries and a
    # compacted row of x (I + 8 indices and values).
    double* z
    double* a
    double* y
    int* idx
    char* val


cdef inline Py_ssize_t rows_bytes_(Py_ssize_t I, Py_ssize_t H, Py_ssize_t O, Py_ssize_t sx) noexcept nogil:
    cdef Py_ssize_t top = 0
    take_(&top, H * sizeof(double))
    take_(&top, O * sizeof(double))
    take_(&top, O * sizeof(double))
    take_(&top, (I + 8) * sizeof(int))
    take_(&top, (I + 8) * sx)
    return top


cdef inline Rows rows_at_(char* base, Py_ssize_t I, Py_ssize_t H, Py_ssize_t O, Py_ssize_t sx) noexcept nogil:
    cdef Py_ssize_t top = 0
    cdef Rows r
    r.z = <double*>(base + take_(&top, H * sizeof(double)))
    r.a = <double*>(base + take_(&top, O * sizeof(double)))
    r.y = <double*>(base + take_(&top, O * sizeof(double)))
    r.idx = <int*>(base + take_(&top, (I + 8) * sizeof(int)))
    r.val = base + take_(&top, (I + 8) * sx)
    return r


# ---------------------------------------------------------------- kernels ---

def predict(const floating_x[:, ::1] x,   # IN (N, I)
            const double[:, ::1] W1,      # IN (I, H)
            const double[::1] b1,         # IN (H,)
            const double[:, ::1] W2,      # IN (H, O)
            const double[::1] b2,         # IN (O,)
            double[:, ::1] y,             # OUT (N, O) softmax probabilities
            int threads):
    """y = softmax(sigmoid(x W1 + b1) W2 + b2)."""
    cdef Py_ssize_t n, N = x.shape[0], I = x.shape[1], H = W1.shape[1], O = W2.shape[1]
    cdef Py_ssize_t per = rows_bytes_(I, H, O, sizeof(floating_x))
    arena, address = scratch_("arena", threads * per)
    cdef char* base = <char*><Py_ssize_t>address
    cdef Rows r
    with nogil:
        for n in prange(N, schedule="dynamic", chunksize=16, num_threads=threads):
            r = rows_at_(base + threadid() * per, I, H, O, sizeof(floating_x))
            forward_(&x[n, 0], I, &W1[0, 0], &b1[0], H, &W2[0, 0], &b2[0], O,
                     r.z, r.a, r.idx, <floating_x*>r.val)
            softmax_(r.a, O, &y[n, 0])


def loss(const floating_x[:, ::1] x,      # IN (N, I)
         const int64_t[::1] t,            # IN (N,) labels in [0, O)
         const double[:, ::1] W1,         # IN (I, H)
         const double[::1] b1,            # IN (H,)
         const double[:, ::1] W2,         # IN (H, O)
         const double[::1] b2,            # IN (O,)
         int threads):
    """The book's loss: mean over the batch of -log(y[n, t_n] + 1e-7)."""
    cdef Py_ssize_t n, N = x.shape[0], I = x.shape[1], H = W1.shape[1], O = W2.shape[1]
    cdef Py_ssize_t per = rows_bytes_(I, H, O, sizeof(floating_x))
    arena, address = scratch_("arena", threads * per + N * sizeof(double))
    cdef char* base = <char*><Py_ssize_t>address
    cdef double* losses = <double*>(base + threads * per)
    cdef double total = 0.0
    cdef Rows r
    with nogil:
        for n in prange(N, schedule="dynamic", chunksize=16, num_threads=threads):
            r = rows_at_(base + threadid() * per, I, H, O, sizeof(floating_x))
            forward_(&x[n, 0], I, &W1[0, 0], &b1[0], H, &W2[0, 0], &b2[0], O,
                     r.z, r.a, r.idx, <floating_x*>r.val)
            softmax_(r.a, O, r.y)
            losses[n] = -log(r.y[t[n]] + 1e-7)
        for n in range(N):  # serial: the same sum for any thread count
            total += losses[n]
    return total / N


cdef double backprop_(const floating_x* x, const Py_ssize_t* rows, Py_ssize_t N, Py_ssize_t I,
                      const int64_t* t, const double* W1, Py_ssize_t ws, const double* b1,
                      const double* W2, const double* b2, Py_ssize_t H, Py_ssize_t O,
                      double* dW1, double* db1, double* dW2, double* db2,
                      double lr, double* after, int threads) except? -1.0:
    """The book's backprop on the samples ``x[rows[n]]`` (``x[n]`` if rows is NULL).

    Returns the batch loss at the given parameters, which the forward pass
    computes anyway. The non-zeros of each sample, found for x W1, are kept
    (one list after another) for x^T dz1.

    Two modes. ``after`` NULL: the gradient is written to dW1, db1, dW2,
    db2. Otherwise one SGD step: if that loss is finite, the parameters are
    updated in place, ``p = p - g * lr`` element by element (the book's
    ``params[key] -= lr * grad[key]``, the same roundings), without storing
    dW1 (its rows are applied as they are summed; a row that is zero leaves
    W1 as it is); then ``after[0]`` is the loss of the same samples at the
    new parameters, from the kept lists (the book's ``loss`` call), summed
    a chunk of samples at a time (sums_blocked_: the same numbers). The
    gradient outputs are then scratch and may be NULL.

    W1's rows are ``ws`` >= H doubles apart: H for the caller's array;
    sgd_steps passes a copy whose rows start on whole vectors (padded_w1_).
    """
    cdef bint update = after != NULL
    cdef Py_ssize_t n, j, k, blk, nblocks = (I + BLOCK - 1) // BLOCK, sx = sizeof(floating_x)
    counts, address = scratch_("counts", (2 * N + 1) * sizeof(Py_ssize_t))
    cdef Py_ssize_t* nnz = <Py_ssize_t*><Py_ssize_t>address
    cdef Py_ssize_t* off = nnz + N
    # Sample n's non-zeros go to sidx/sval[off[n]:], with 8 spare entries for
    # nonzeros_: at a fixed stride I + 8 for the usual batches, packed after
    # a counting pass when that would take too much memory.
    cdef bint packed = N * (I + 8) > PACK_ABOVE
    if packed:
        with nogil:
            for n in prange(N, schedule="dynamic", chunksize=16, num_threads=threads):
                nnz[n] = count_nonzeros_(x + (rows[n] if rows != NULL else n) * I, I)
    off[0] = 0
    for n in range(N):
        off[n + 1] = off[n] + (nnz[n] + 8 if packed else I + 8)
    # One arena: the batch's z1, dz1, dy (N rows), the lists of non-zeros
    # and where each block of pixels starts in them, W2 transposed, the
    # losses, the small gradients of an SGD step (the part the threads
    # share, twice: see below), and per thread a compacted row, the dealt
    # column lists and a column of dy.
    cdef Py_ssize_t top = 0, per
    cdef Py_ssize_t o_z1 = take_(&top, N * H * sizeof(double))
    cdef Py_ssize_t o_dz1 = take_(&top, N * H * sizeof(double))
    cdef Py_ssize_t HS = 0  # dz1's strips: the doubles of a row over all strips
    j = 0
    while j < H:
        HS += strip_stride_(H, j)
        j += STRIP
    cdef Py_ssize_t o_dzs = take_(&top, (N * HS + STRIP) * sizeof(double))
    cdef Py_ssize_t o_dy = take_(&top, N * O * sizeof(double))
    cdef Py_ssize_t o_W2T = take_(&top, O * H * sizeof(double))
    cdef Py_ssize_t o_dW2T = take_(&top, O * H * sizeof(double))
    cdef Py_ssize_t o_losses = take_(&top, N * sizeof(double))
    cdef Py_ssize_t o_db1 = take_(&top, H * sizeof(double)) if update else 0
    cdef Py_ssize_t o_dW2 = take_(&top, H * O * sizeof(double)) if update else 0
    cdef Py_ssize_t o_db2 = take_(&top, O * sizeof(double)) if update else 0
    cdef Py_ssize_t o_sidx = take_(&top, off[N] * sizeof(int))
    cdef Py_ssize_t o_sval = take_(&top, off[N] * sx)
    cdef Py_ssize_t o_starts = take_(&top, N * (nblocks + 1) * sizeof(int))
    cdef Py_ssize_t o_next = take_(&top, 64)  # the forward pass's next sample, on a line of its own
    cdef Py_ssize_t shared = top
    cdef Py_ssize_t o_thread = (1 if packed else 2) * shared
    top = 0
    cdef Py_ssize_t o_a = take_(&top, O * sizeof(double))
    cdef Py_ssize_t o_row = take_(&top, (I + 8) * sizeof(int))
    cdef Py_ssize_t o_rowval = take_(&top, (I + 8) * sx)
    cdef Py_ssize_t o_col = take_(&top, N * sizeof(double))
    cdef Py_ssize_t o_cnt = take_(&top, BLOCK * sizeof(Py_ssize_t))
    cdef Py_ssize_t o_idx = take_(&top, BLOCK * N * sizeof(int))
    cdef Py_ssize_t o_val = take_(&top, BLOCK * N * sx)
    cdef Py_ssize_t S = padded_width_(H)
    cdef Py_ssize_t o_acc = take_(&top, LCHUNK * S * sizeof(double)) if update else 0
    per = top
    arena, address = scratch_("arena", o_thread + threads * per)
    cdef char* arena0 = <char*><Py_ssize_t>address
    # The shared part alternates between two copies, call after call (one
    # for the large batches of packed lists): the rows a step writes (z1,
    # dy, dz1, the lists) were then last read by the other core two steps
    # before, not one, and mostly no longer sit in its cache waiting to be
    # invalidated before each store can proceed (with the compaction into
    # the thread's own row below, steps 0.93-0.94 of the time on two
    # threads, 0.87-0.88 when the transfers between the cores are slow;
    # benchmarks/NOTES.md).
    cdef char* base = arena0 + (0 if packed else other_half_("arena_half") * shared)
    cdef int* row = NULL
    cdef floating_x* rowval = NULL
    cdef double* z1 = <double*>(base + o_z1)
    cdef double* dz1 = <double*>(base + o_dz1)
    cdef double* dzs = <double*>(base + o_dzs)
    cdef double* dy = <double*>(base + o_dy)
    cdef double* W2T = <double*>(base + o_W2T)
    cdef double* dW2T = <double*>(base + o_dW2T)
    cdef double* losses = <double*>(base + o_losses)
    cdef int* sidx = <int*>(base + o_sidx)
    cdef int* starts = <int*>(base + o_starts)
    cdef floating_x* sval = <floating_x*>(base + o_sval)
    cdef char* mine = NULL
    # Set here although each thread sets its own: Cython hands the forward
    # region these as firstprivate, and gcc warns of copying them unset.
    cdef const floating_x* xn = NULL
    cdef Py_ssize_t* next_free = <Py_ssize_t*>(base + o_next)
    cdef Py_ssize_t first = 0, end = 0, after_chunk = 0, claimed = 0, ahead = 0, kept = 0, ch, c0, c1, m
    cdef const char* ahead_row = NULL
    cdef const char* ahead2_row = NULL
    cdef double total = 0.0
    if update:
        db1 = <double*>(base + o_db1)
        dW2 = <double*>(base + o_dW2)
        db2 = <double*>(base + o_db2)
    for k in range(O):  # W2T = W2^T: dy W2^T is then a dense row sum
        for j in range(H):
            W2T[k * H + j] = W2[j * O + k]
    with nogil:
        # The forward pass, scheduled by hand: each thread takes a chunk of
        # samples (chunk_at_) from the counter next_free, and takes its next chunk when
        # it starts one, so that it knows which row of x it compacts next
        # and can fetch it during the sum before (prange's dynamic schedule
        # hands out a chunk only when the last is done). The batch's rows
        # lie anywhere in a large x: fetched on demand, their reading was
        # a tenth of the step.
        next_free[0] = 0
        with parallel(num_threads=threads):
            mine = arena0 + o_thread + threadid() * per
            claimed = zerokara_fetch_add(next_free, 1)
            after_chunk = chunk_at_(claimed, N)
            if rows != NULL and after_chunk < N:
                zerokara_prefetch_row(x + rows[after_chunk] * I, I * sx)
            while after_chunk < N:
              first = after_chunk
              end = chunk_at_(claimed + 1, N)
              claimed = zerokara_fetch_add(next_free, 1)
              after_chunk = chunk_at_(claimed, N)
              for n in range(first, end):
                xn = x + (rows[n] if rows != NULL else n) * I
                ahead = n + 1 if n + 1 < end else after_chunk
                ahead_row = <const char*>(x + rows[ahead] * I) if rows != NULL and ahead < N else NULL
                # and the one after it (into L2), if this thread knows it
                ahead = n + 2 if n + 2 < end else after_chunk + (n + 2 - end)
                ahead2_row = (<const char*>(x + rows[ahead] * I)
                              if rows != NULL and ahead < chunk_at_(claimed + 1, N) else NULL)
                # Compacted into this thread's own row, summed from there,
                # then copied to the batch's lists for the passes after.
                # Compacted in place, each store waited for lines that the
                # other core had read since this one last wrote them; the
                # copy's few whole-line stores are all under way at once.
                row = <int*>(mine + o_row)
                rowval = <floating_x*>(mine + o_rowval)
                kept = nonzeros_(xn, I, row, rowval, NULL if packed else starts + n * (nblocks + 1))
                if packed:  # x may have changed since it was counted, but the list must not overflow
                    kept = min(kept, nnz[n])
                    block_starts_(row, kept, nblocks, starts + n * (nblocks + 1))
                nnz[n] = kept
                forward_sparse_(row, rowval, kept, I, W1, ws, b1, H,
                                W2, b2, O, z1 + n * H, <double*>(mine + o_a),
                                ahead_row, (I * sx + 63) // 64 if ahead_row != NULL else 0, ahead2_row)
                memcpy(sidx + off[n], row, kept * sizeof(int))
                memcpy(sval + off[n], rowval, kept * sx)
                softmax_(<double*>(mine + o_a), O, dy + n * O)
                losses[n] = -log(dy[n * O + t[n]] + 1e-7)
                backward_sample_(dy + n * O, z1 + n * H, W2T, t[n], <double>N, H, O, dz1 + n * H)
                strips_(dz1 + n * H, H, N, n, dzs)
            zerokara_barrier()  # dW2 and db1 read every sample's z1, dy and dz1
            for k in prange(O + 1, schedule="dynamic", chunksize=1):  # dW2 transposed, then db1
                dW2_col_(z1, dy, dz1, N, H, O, k, <double*>(mine + o_col), dW2T + k * H if k < O else db1)
        for j in range(H):
            for k in range(O):
                dW2[j * O + k] = dW2T[k * H + j]
        for k in range(O):
            db2[k] = 0.0
        for n in range(N):  # serial: the same sums for any thread count
            total += losses[n]
            for k in range(O):
                db2[k] += dy[n * O + k]
        if update:
            if total - total != 0.0:  # not finite: the parameters stay as they are
                return total / N
            sgd_(<double*>b1, db1, H, lr)
            sgd_(<double*>W2, dW2, H * O, lr)
            sgd_(<double*>b2, db2, O, lr)
        for j in range(N * HS, N * HS + STRIP):  # read, not used, by dW1_block_'s strips
            dzs[j] = 0.0
        with parallel(num_threads=threads):
            mine = arena0 + o_thread + threadid() * per
            for blk in prange(nblocks, schedule="dynamic", chunksize=1):
                dW1_block_(sidx, sval, off, starts, nblocks + 1, N, dzs, H, blk, I,
                           <int*>(mine + o_idx),
                           <floating_x*>(mine + o_val), <Py_ssize_t*>(mine + o_cnt),
                           dW1, <double*>W1 if update else NULL, ws, lr)
            if update:  # the book's loss(x, t) at the new parameters, from the kept lists
                zerokara_barrier()  # after every row of W1 is updated
                for ch in prange((N + LCHUNK - 1) // LCHUNK, schedule="dynamic", chunksize=1):
                    c0 = ch * LCHUNK
                    c1 = min(c0 + LCHUNK, N)
                    sums_blocked_(sidx, sval, off + c0, nnz + c0, starts + c0 * (nblocks + 1), nblocks + 1,
                                  c1 - c0, I, W1, H, ws, <double*>(mine + o_acc), S)
                    for m in range(c1 - c0):
                        forward_tail_(b1, H, W2, b2, O, <double*>(mine + o_acc) + m * S, <double*>(mine + o_a))
                        softmax_(<double*>(mine + o_a), O, dy + (c0 + m) * O)
                        losses[c0 + m] = -log(dy[(c0 + m) * O + t[c0 + m]] + 1e-7)
        if update:
            after[0] = 0.0
            for n in range(N):  # serial, as in loss()
                after[0] += losses[n]
            after[0] /= N
    return total / N


def gradient(const floating_x[:, ::1] x,  # IN (N, I)
             const int64_t[::1] t,        # IN (N,) labels in [0, O)
             const double[:, ::1] W1,     # IN (I, H)
             const double[::1] b1,        # IN (H,)
             const double[:, ::1] W2,     # IN (H, O)
             const double[::1] b2,        # IN (O,)
             double[:, ::1] dW1,          # OUT (I, H)
             double[::1] db1,             # OUT (H,)
             double[:, ::1] dW2,          # OUT (H, O)
             double[::1] db2,             # OUT (O,)
             int threads):
    """The book's backprop (TwoLayerNet.gradient), forward and backward fused.

    Returns the loss of the batch at the given parameters.
    """
    return backprop_(&x[0, 0], NULL, x.shape[0], x.shape[1], &t[0], &W1[0, 0], W1.shape[1], &b1[0],
                     &W2[0, 0], &b2[0], W1.shape[1], W2.shape[1],
                     &dW1[0, 0], &db1[0], &dW2[0, 0], &db2[0], 0.0, NULL, threads)


def sgd_step(const floating_x[:, ::1] x,  # IN (M, I): the samples to draw from
             const Py_ssize_t[::1] rows,  # IN (N,) the batch: rows of x, each in [0, M)
             const int64_t[::1] t,        # IN (N,) the batch's labels in [0, O)
             double[:, ::1] W1,           # IN/OUT (I, H)
             double[::1] b1,              # IN/OUT (H,)
             double[:, ::1] W2,           # IN/OUT (H, O)
             double[::1] b2,              # IN/OUT (O,)
             double lr,                   # IN > 0
             int threads):
    """One step of the book's loop on the batch ``x[rows]``, in one call.

    ``grad = gradient(x[rows], t)``, then ``params[key] -= lr * grad[key]``
    for the four parameters, then ``loss(x[rows], t)``: the same numbers as
    those three calls, without gathering the batch or storing dW1. Returns
    ``(loss before, loss after)``; when the loss before is not finite the
    parameters are left as they are and the loss after is NaN.
    """
    cdef double after = NAN
    cdef Py_ssize_t n, M = x.shape[0], I = x.shape[1], H = W1.shape[1], O = W2.shape[1]
    # The callers have checked all this; checked again here, where it costs
    # nothing, so that no call can read outside an array.
    if not (W1.shape[0] == I and b1.shape[0] == H and W2.shape[0] == H and b2.shape[0] == O):
        raise ValueError(f"the parameters' shapes do not fit x's {I} columns and each other")
    if rows.shape[0] == 0 or t.shape[0] != rows.shape[0]:
        raise ValueError(f"rows ({rows.shape[0]}) and t ({t.shape[0]}) must have the same non-zero length")
    for n in range(rows.shape[0]):
        if rows[n] < 0 or rows[n] >= M:
            raise ValueError(f"rows must be indices in 0..{M - 1} (rows of x); got {rows[n]}")
        if t[n] < 0 or t[n] >= O:
            raise ValueError(f"t must hold labels in 0..{O - 1}; got {t[n]}")
    before = backprop_(&x[0, 0], &rows[0], rows.shape[0], x.shape[1], &t[0], &W1[0, 0], W1.shape[1], &b1[0],
                       &W2[0, 0], &b2[0], W1.shape[1], W2.shape[1],
                       NULL, NULL, NULL, NULL, lr, &after, threads)
    return before, after


# ------------------------------------------------------------ split step ---
#
# The SGD step of sgd_steps split by hidden units instead of by samples
# (``split=True``). backprop_ shares its data between the threads: W1 is
# read by every thread and written by whichever takes a block of its rows,
# the lists of non-zeros and dz1 are made by one thread and read by
# another. Each such line crosses from one core's cache to the other's,
# and on this virtual machine that crossing is sometimes several times
# slower (core_round_trip: about 130 ns, at times 450): the two-thread step
# then takes 0.34 ms instead of 0.2, hardly less than one thread's 0.36.
#
# Here each thread owns whole strips of dz1's columns (STRIP hidden units,
# see strips_) and a private copy of W1's columns of those strips, kept for
# the whole call: x W1 (its columns), dW1 and W1's update, the loss pass's
# x W1 and the small gradients dW2 and db1 of its columns touch no line the
# other thread writes. Each thread compacts every sample of the batch
# (reading x, which nobody writes) and deals the lists itself. What
# crosses: each sample's z1 (its columns, for the samples' tails: a2,
# softmax, the loss, dy and dz1, split by samples) and dz1 back, about 2 KB
# a sample. Every element is summed by one thread in backprop_'s order
# (columns are independent sums), so the numbers are backprop_'s.

cdef struct Split:
    Py_ssize_t ns       # strips (strip s: columns s * STRIP up to min(H, (s + 1) * STRIP))
    Py_ssize_t HS       # doubles of a row of the strips, all strips
    Py_ssize_t nb1      # blocks of pixels + 1 (entries of starts per sample)
    Py_ssize_t LS       # entries of a sample's list (I + 8)
    Py_ssize_t per      # bytes per thread
    double* zs          # z1 in strips (N rows a strip, as dz1's), STRIP readable past the end
    double* dzs         # dz1 in strips
    double* dy          # (N, O)
    double* losses      # (N,)
    double* other[4]    # a second zs, dzs, dy and losses: a step uses one set, the next the other
    double* total       # the batch loss before the step (summed by thread 0)
    Py_ssize_t* off     # off[n] = n * LS: the lists' offsets, for zerokara_deal
    double* W1s         # W1's strips: strip s at W1s + I * s * WSTRIDE_STRIP, rows of wstride_(s)
    char* threads       # per-thread scratch, ``per`` bytes each
    # offsets in a thread's scratch
    Py_ssize_t o_sidx, o_sval, o_starts, o_nnz, o_cnt, o_idx, o_val
    Py_ssize_t o_z, o_dz, o_a, o_y, o_col, o_g, o_W2T


cdef inline Py_ssize_t wstride_(Py_ssize_t H, Py_ssize_t j0) noexcept nogil:
    """The row length of W1's private copy of the strip from column j0: whole cache lines."""
    return (strip_stride_(H, j0) + 7) // 8 * 8


cdef inline double* w1_strip_(const Split* L, Py_ssize_t I, Py_ssize_t s) noexcept nogil:
    """Strip s of W1's private copy: I rows of wstride_ doubles (the strips before it are full)."""
    return L.W1s + I * s * ((STRIP + 7) // 8 * 8)


cdef object split_layout_(Split* L, Py_ssize_t N, Py_ssize_t I, Py_ssize_t H, Py_ssize_t O,
                          Py_ssize_t sx, int threads):
    """Lays out split_step_'s arena for batches of N (W1's strips included) in L; returns the arena."""
    cdef Py_ssize_t top = 0, j = 0, w1 = 0, n
    cdef Py_ssize_t o_zs, o_dzs, o_dy, o_losses, o_total, o_off, o_W1s, o_threads, o_other
    L.ns = (H + STRIP - 1) // STRIP
    L.HS = 0
    while j < H:
        L.HS += strip_stride_(H, j)
        w1 += I * wstride_(H, j)
        j += STRIP
    L.nb1 = (I + BLOCK - 1) // BLOCK + 1
    L.LS = I + 8
    o_zs = take_(&top, (N * L.HS + STRIP) * sizeof(double))
    o_dzs = take_(&top, (N * L.HS + STRIP) * sizeof(double))
    o_dy = take_(&top, N * O * sizeof(double))
    o_losses = take_(&top, N * sizeof(double))
    o_other = top  # the four again (split_swap_)
    top += o_other
    o_total = take_(&top, sizeof(double))
    o_off = take_(&top, (N + 1) * sizeof(Py_ssize_t))
    o_W1s = take_(&top, (w1 + STRIP) * sizeof(double))
    o_threads = top
    top = 0
    L.o_sidx = take_(&top, N * L.LS * sizeof(int))
    L.o_sval = take_(&top, N * L.LS * sx)
    L.o_starts = take_(&top, N * L.nb1 * sizeof(int))
    L.o_nnz = take_(&top, N * sizeof(Py_ssize_t))
    L.o_cnt = take_(&top, BLOCK * sizeof(Py_ssize_t))
    L.o_idx = take_(&top, BLOCK * N * sizeof(int))
    L.o_val = take_(&top, BLOCK * N * sx)
    L.o_z = take_(&top, (H + STRIP) * sizeof(double))
    L.o_dz = take_(&top, (H + STRIP) * sizeof(double))
    L.o_a = take_(&top, O * sizeof(double))
    L.o_y = take_(&top, O * sizeof(double))
    L.o_col = take_(&top, N * sizeof(double))
    L.o_g = take_(&top, 2 * STRIP * sizeof(double))
    L.o_W2T = take_(&top, O * H * sizeof(double))
    L.per = top
    arena, address = scratch_("split", o_threads + threads * L.per)
    cdef char* base = <char*><Py_ssize_t>address
    L.zs = <double*>(base + o_zs)
    L.dzs = <double*>(base + o_dzs)
    L.dy = <double*>(base + o_dy)
    L.losses = <double*>(base + o_losses)
    L.other[0] = <double*>(base + o_other + o_zs)
    L.other[1] = <double*>(base + o_other + o_dzs)
    L.other[2] = <double*>(base + o_other + o_dy)
    L.other[3] = <double*>(base + o_other + o_losses)
    L.total = <double*>(base + o_total)
    L.off = <Py_ssize_t*>(base + o_off)
    L.W1s = <double*>(base + o_W1s)
    L.threads = base + o_threads
    # The padding lanes are read (whole vectors), never stored: zero, so
    # that no NaN or subnormal garbage runs through the sums.
    for n in range(2):
        memset(L.zs, 0, (N * L.HS + STRIP) * sizeof(double))
        memset(L.dzs, 0, (N * L.HS + STRIP) * sizeof(double))
        split_swap_(L)
    memset(L.W1s, 0, (w1 + STRIP) * sizeof(double))
    for n in range(N + 1):
        L.off[n] = n * L.LS
    return arena


cdef inline void split_swap_(Split* L) noexcept nogil:
    """Swaps the step's zs, dzs, dy and losses for the other set.

    sgd_steps swaps them before each step (as backprop_ alternates its
    arena's shared part): the rows a step writes were then last read by
    the other core two steps before, not one (benchmarks/NOTES.md).
    """
    L.zs, L.other[0] = L.other[0], L.zs
    L.dzs, L.other[1] = L.other[1], L.dzs
    L.dy, L.other[2] = L.other[2], L.dy
    L.losses, L.other[3] = L.other[3], L.losses


cdef void split_w1_(Split* L, double* W1, Py_ssize_t I, Py_ssize_t H, bint into) noexcept nogil:
    """Copy W1 into its strips (``into``) or the strips back into W1."""
    cdef Py_ssize_t s, i, j0, width, ws
    cdef double* w
    for s in range(L.ns):
        j0 = s * STRIP
        width = min(STRIP, H - j0)
        ws = wstride_(H, j0)
        w = w1_strip_(L, I, s)
        for i in range(I):
            if into:
                memcpy(w + i * ws, W1 + i * H + j0, width * sizeof(double))
            else:
                memcpy(W1 + i * H + j0, w + i * ws, width * sizeof(double))


cdef inline void z_row_(const Split* L, Py_ssize_t N, Py_ssize_t H, Py_ssize_t n, double* z) noexcept nogil:
    """Sample n's row of z1, gathered from the strips."""
    cdef Py_ssize_t j0 = 0, stride
    cdef double* zs = L.zs
    while j0 < H:
        stride = strip_stride_(H, j0)
        zerokara_copy_padded(zs + n * stride, min(STRIP, H - j0), z + j0)
        zs += N * stride
        j0 += STRIP


cdef void split_sums_(const Split* L, const floating_x* x, const Py_ssize_t* rows, Py_ssize_t N,
                      Py_ssize_t I, const double* b1, Py_ssize_t H, char* mine,
                      Py_ssize_t s0, Py_ssize_t s1, bint compact,
                      const Py_ssize_t* ahead) noexcept nogil:
    """z1's strips s0 <= s < s1 of every sample: sigmoid(x W1 + b1) from the private copy.

    With ``compact``, each sample's list of non-zeros (and its blocks'
    starts) is made first, into this thread's scratch, the next row of x
    fetched meanwhile; otherwise the lists made before are used. Unless
    ``ahead`` is NULL, the rows ``x[ahead[n]]`` (the next step's batch)
    are fetched into the caches meanwhile, one a sample: read from memory
    by the next step's compaction, they took it 40 of its 100 us here.
    """
    cdef int* sidx = <int*>(mine + L.o_sidx)
    cdef floating_x* sval = <floating_x*>(mine + L.o_sval)
    cdef int* starts = <int*>(mine + L.o_starts)
    cdef Py_ssize_t* nnz = <Py_ssize_t*>(mine + L.o_nnz)
    cdef Py_ssize_t n, s, j0, stride, width, sx = sizeof(floating_x)
    cdef double* out
    if compact and N > 0:
        zerokara_prefetch_row(x + rows[0] * I, I * sx)
    for n in range(N):
        if ahead != NULL:
            zerokara_prefetch_row(x + ahead[n] * I, I * sx)
        if compact:
            if n + 1 < N:
                zerokara_prefetch_row(x + rows[n + 1] * I, I * sx)
            nnz[n] = nonzeros_(x + rows[n] * I, I, sidx + n * L.LS, sval + n * L.LS, starts + n * L.nb1)
        for s in range(s0, s1):
            j0 = s * STRIP
            width = min(STRIP, H - j0)
            stride = strip_stride_(H, j0)
            out = L.zs + N * j0 + n * stride
            strip_sum_(sidx + n * L.LS, sval + n * L.LS, nnz[n], w1_strip_(L, I, s),
                       wstride_(H, j0), width, out)
            zerokara_sigmoid_row(out, b1 + j0, width)


cdef void split_tails_(const Split* L, const int64_t* t, Py_ssize_t N, const double* W2,
                       const double* b2, Py_ssize_t H, Py_ssize_t O, char* mine,
                       Py_ssize_t n0, Py_ssize_t n1, bint backward) noexcept nogil:
    """Samples n0 <= n < n1: a2 = z1 W2 + b2, softmax, the loss; with ``backward`` dy and dz1 too.

    backprop_'s forward_tail_ (after the sigmoid), softmax_, loss and
    backward_sample_, on z1's row gathered from the strips; dz1 goes to
    its strips. Without ``backward`` (the loss after the step) y is scratch.
    """
    cdef double* z = <double*>(mine + L.o_z)
    cdef double* dz = <double*>(mine + L.o_dz)
    cdef double* a = <double*>(mine + L.o_a)
    cdef double* W2T = <double*>(mine + L.o_W2T)
    cdef double* y
    cdef Py_ssize_t n, j, k
    if backward:
        for k in range(O):
            for j in range(H):
                W2T[k * H + j] = W2[j * O + k]
    for n in range(n0, n1):
        z_row_(L, N, H, n, z)
        rows_dot_(<const int*>NULL, z, H, W2, H, O, O, a)
        for k in range(O):
            a[k] += b2[k]
        y = L.dy + n * O if backward else <double*>(mine + L.o_y)
        softmax_(a, O, y)
        L.losses[n] = -log(y[t[n]] + 1e-7)
        if backward:
            backward_sample_(y, z, W2T, t[n], <double>N, H, O, dz)
            strips_(dz, H, N, n, L.dzs)


cdef void split_update_(const Split* L, const floating_x* sval, Py_ssize_t N, Py_ssize_t I,
                        double* b1, Py_ssize_t H, double* W2, double* b2, Py_ssize_t O,
                        double lr, char* mine, Py_ssize_t s0, Py_ssize_t s1) noexcept nogil:
    """The SGD step of strips s0 <= s < s1: W1's columns, W2's rows and b1's entries of them.

    dW2 and db1 as dW2_col_ sums them (samples ascending), applied at once
    as sgd_ applies them; W1's rows as dW1_block_ (update mode) from this
    thread's lists (``sval``: its values), dealt block by block. The thread with strip 0 also
    updates b2 (db2 summed serially, as backprop_ does).
    """
    cdef int* sidx = <int*>(mine + L.o_sidx)
    cdef int* starts = <int*>(mine + L.o_starts)
    cdef Py_ssize_t* cnt = <Py_ssize_t*>(mine + L.o_cnt)
    cdef int* idx = <int*>(mine + L.o_idx)
    cdef floating_x* val = <floating_x*>(mine + L.o_val)
    cdef double* col = <double*>(mine + L.o_col)
    cdef double* g = <double*>(mine + L.o_g)
    cdef Py_ssize_t n, s, j, k, c, j0, width, stride, ws, blk, i0, i1
    cdef Py_ssize_t nblocks = L.nb1 - 1
    cdef double* w
    cdef double d
    for s in range(s0, s1):
        j0 = s * STRIP
        width = min(STRIP, H - j0)
        stride = strip_stride_(H, j0)
        for k in range(O + 1):  # dW2[j0:j0 + width, k], then db1[j0:j0 + width]
            for n in range(N):
                col[n] = L.dy[n * O + k] if k < O else 1.0
            strip_sum_(<const int*>NULL, col, N, (L.zs if k < O else L.dzs) + N * j0, stride, width, g)
            for j in range(width):
                if k < O:
                    W2[(j0 + j) * O + k] = W2[(j0 + j) * O + k] - g[j] * lr
                else:
                    b1[j0 + j] = b1[j0 + j] - g[j] * lr
    if s0 == 0 and s1 > 0:
        for k in range(O):
            d = 0.0
            for n in range(N):
                d += L.dy[n * O + k]
            b2[k] = b2[k] - d * lr
    if s1 <= s0:
        return
    for blk in range(nblocks):
        i0 = blk * BLOCK
        i1 = min(i0 + BLOCK, I)
        for c in range(i1 - i0):
            cnt[c] = c * N
        if floating_x is float:
            zerokara_deal_f32(sidx, sval, L.off, starts, L.nb1, N, blk, i0, idx, val, cnt)
        else:
            zerokara_deal(sidx, sval, L.off, starts, L.nb1, N, blk, i0, idx, val, cnt)
        for c in range(i1 - i0):
            cnt[c] -= c * N
        for s in range(s0, s1):
            j0 = s * STRIP
            width = min(STRIP, H - j0)
            stride = strip_stride_(H, j0)
            ws = wstride_(H, j0)
            w = w1_strip_(L, I, s)
            for c in range(i1 - i0):
                if cnt[c] != 0:
                    sgd_strip_(idx + c * N, val + c * N, cnt[c], L.dzs + N * j0, stride, width,
                               w + (i0 + c) * ws, lr)


cdef inline double serial_sum_(const double* v, Py_ssize_t n) noexcept nogil:
    """v[0] + v[1] + ... in ascending order, from 0.0."""
    cdef Py_ssize_t i
    cdef double total = 0.0
    for i in range(n):
        total += v[i]
    return total


cdef double split_step_(const Split* L, const floating_x* x, const Py_ssize_t* rows,
                        Py_ssize_t N, Py_ssize_t I, const int64_t* t,
                        double* b1, Py_ssize_t H, double* W2, double* b2, Py_ssize_t O,
                        double lr, double* after, int threads, const Py_ssize_t* ahead) noexcept nogil:
    """One SGD step of backprop_ (update mode) with W1 in L's private strips; the same numbers.

    Returns the loss before the step; unless it is finite nothing is
    updated and ``after`` is left as it is. ``ahead``: the next step's
    rows of x (N of them), fetched during the loss pass, or NULL.
    """
    # Set here although each thread sets its own: Cython hands the region
    # these as firstprivate, and gcc warns of copying them unset.
    cdef int tid = 0, nt = 1
    cdef Py_ssize_t s0 = 0, s1 = 0
    cdef char* mine = NULL
    cdef double total = 0.0, ok = 0.0, before
    with parallel(num_threads=threads):
        tid = threadid()
        nt = omp_get_num_threads()
        mine = L.threads + tid * L.per
        s0 = tid * L.ns // nt
        s1 = (tid + 1) * L.ns // nt
        split_sums_(L, x, rows, N, I, b1, H, mine, s0, s1, True, NULL)
        zerokara_barrier()  # every sample's z1
        split_tails_(L, t, N, W2, b2, H, O, mine, tid * N // nt, (tid + 1) * N // nt, True)
        zerokara_barrier()  # every sample's loss, dy and dz1
        total = serial_sum_(L.losses, N)  # as backprop_ sums it
        ok = total - total  # 0.0 when finite
        if ok == 0.0:
            if tid == 0:
                L.total[0] = total
            split_update_(L, <const floating_x*>(mine + L.o_sval), N, I, b1, H, W2, b2, O, lr, mine, s0, s1)
            split_sums_(L, x, rows, N, I, b1, H, mine, s0, s1, False, ahead)
        else:
            if tid == 0:
                L.total[0] = total
        zerokara_barrier()  # W2, b2 and every sample's new z1
        if ok == 0.0:
            split_tails_(L, t, N, W2, b2, H, O, mine, tid * N // nt, (tid + 1) * N // nt, False)
    before = L.total[0] / N
    if before - before != 0.0:
        return before
    after[0] = serial_sum_(L.losses, N) / N  # as loss() sums it
    return before


def sgd_steps(const floating_x[:, ::1] x,  # IN (M, I): the samples to draw from
              const Py_ssize_t[:, ::1] rows,  # IN (K, N): step k's batch is x[rows[k]], each in [0, M)
              const int64_t[:, ::1] t,     # IN (K, N) the batches' labels in [0, O)
              double[:, ::1] W1,           # IN/OUT (I, H)
              double[::1] b1,              # IN/OUT (H,)
              double[:, ::1] W2,           # IN/OUT (H, O)
              double[::1] b2,              # IN/OUT (O,)
              double lr,                   # IN > 0
              int threads,
              double[::1] losses,          # OUT (K,) the loss after each step done
              Py_ssize_t[::1] done,        # OUT (1,) how many steps are done, kept up to date
              stop=None,                   # IN None, or a callable asked after each step
              bint split=False):           # IN the steps split by hidden units (split_step_)
    """K steps of sgd_step, one after another, in one call: the same numbers.

    Step k is ``sgd_step(x, rows[k], t[k], ...)``; ``losses[k]`` is its loss
    after the update, and ``done[0]`` counts the steps whose update is
    applied, kept up to date after each (so it is right even when an
    exception ends the call). Every row and label is checked before the
    first step. Stops early, returning False, at the first step whose loss
    is not finite: when its loss before is not, that step is not applied
    (``done[0]`` is its index); when its loss after is not, it is
    (``losses[done[0] - 1]`` is that loss). Otherwise returns True. With
    ``stop``, Python's signal handlers run after each step but the last
    (so Ctrl-C reaches the caller's handler at once; an exception a handler
    raises ends the call) and the steps end early when ``stop()`` is true.
    One call instead of K saves the Python call and its argument checks of
    every step (a few microseconds of about 240 here).

    ``split``: each step split between the threads by hidden units
    (split_step_, W1 kept in per-thread copies of its columns for the
    call) instead of by samples (backprop_). The same numbers; which is
    quicker depends on the machine's state (see split_step_), so
    ``zerokara.backends.cython.sgd_steps`` times both. Batches of more
    than PACK_ABOVE list entries take backprop_ either way. By samples,
    the steps read and update a copy of W1 whose rows start on whole
    vectors (padded_w1_) unless the caller's already do; either copy goes
    back into W1 however the steps end.
    """
    cdef double before, after
    cdef Py_ssize_t k, n, K = rows.shape[0], N = rows.shape[1], M = x.shape[0]
    cdef Py_ssize_t I = x.shape[1], H = W1.shape[1], O = W2.shape[1]
    if not (W1.shape[0] == I and b1.shape[0] == H and W2.shape[0] == H and b2.shape[0] == O):
        raise ValueError(f"the parameters' shapes do not fit x's {I} columns and each other")
    if K == 0 or N == 0 or t.shape[0] != K or t.shape[1] != N:
        raise ValueError(f"rows ({K}, {N}) and t ({t.shape[0]}, {t.shape[1]}) must have the same non-empty shape")
    if losses.shape[0] < K or done.shape[0] < 1:
        raise ValueError(f"losses needs room for {K} steps and done for one count")
    for k in range(K):
        for n in range(N):
            if rows[k, n] < 0 or rows[k, n] >= M:
                raise ValueError(f"rows must be indices in 0..{M - 1} (rows of x); got {rows[k, n]}")
            if t[k, n] < 0 or t[k, n] >= O:
                raise ValueError(f"t must hold labels in 0..{O - 1}; got {t[k, n]}")
    done[0] = 0
    cdef Split L
    arena = None
    padded = None
    cdef double* Wp = &W1[0, 0]
    cdef Py_ssize_t ws = H
    if split and N * (I + 8) <= PACK_ABOVE:
        arena = split_layout_(&L, N, I, H, O, sizeof(floating_x), threads)
        split_w1_(&L, &W1[0, 0], I, H, True)
    elif w1_stride_(H) != H or <size_t>Wp % (LANES * sizeof(double)) != 0:
        ws = w1_stride_(H)
        padded, address = scratch_("w1", I * ws * sizeof(double))
        Wp = <double*><Py_ssize_t>address
        padded_w1_(&W1[0, 0], Wp, I, H, True)
    try:
        for k in range(K):
            after = NAN
            if arena is not None:
                split_swap_(&L)
                before = split_step_(&L, &x[0, 0], &rows[k, 0], N, I, &t[k, 0], &b1[0], H,
                                     &W2[0, 0], &b2[0], O, lr, &after, threads,
                                     &rows[k + 1, 0] if k + 1 < K else NULL)
            else:
                before = backprop_(&x[0, 0], &rows[k, 0], N, I, &t[k, 0], Wp, ws, &b1[0],
                                   &W2[0, 0], &b2[0], H, O, NULL, NULL, NULL, NULL, lr, &after, threads)
            if before - before != 0.0:  # not applied
                return False
            losses[k] = after
            done[0] = k + 1
            if after - after != 0.0:
                return False
            if stop is not None and k + 1 < K:
                PyErr_CheckSignals()
                if stop():
                    break
    finally:
        if arena is not None:  # W1 from its strips, however the steps end
            split_w1_(&L, &W1[0, 0], I, H, False)
        elif padded is not None:  # W1 from its padded copy, however the steps end
            padded_w1_(&W1[0, 0], Wp, I, H, False)
    return True


cdef inline Py_ssize_t w1_stride_(Py_ssize_t H) noexcept nogil:
    """The row length of W1's padded copy (padded_w1_): H rounded up to whole vectors."""
    return (H + LANES - 1) // LANES * LANES


cdef void padded_w1_(double* W1, double* Wp, Py_ssize_t I, Py_ssize_t H, bint into) noexcept nogil:
    """Copy W1 (I, H) into Wp, rows w1_stride_(H) doubles apart, the padding zero (``into``), or back.

    sgd_steps' steps by samples (backprop_) read W1's rows a vector at a
    time: in the caller's array a row of the book's 50 doubles starts 400
    bytes after the one before, so half the rows start inside a vector of
    AVX2's 32-byte alignment, and their loads cross cache lines. In the
    copy (at a 64-byte aligned address) every row starts on a vector.
    Here the step took 0.94 of the time with W1's rows so aligned.
    """
    cdef Py_ssize_t i, ws = w1_stride_(H)
    for i in range(I):
        if into:
            memcpy(Wp + i * ws, W1 + i * H, H * sizeof(double))
            memset(Wp + i * ws + H, 0, (ws - H) * sizeof(double))
        else:
            memcpy(W1 + i * H, Wp + i * ws, H * sizeof(double))


cdef inline bint certain_(const float* a, Py_ssize_t O, Py_ssize_t top, double ez,
                          const double* n1, const double* c2) noexcept nogil:
    """True if a[top] beats every other a[k] by more than both their error bounds.

    ``ez`` bounds the difference of each z between the screen and float64,
    ``n1[k]`` is ``sum_j |W2[j, k]|`` and ``c2[k]`` bounds the rounding of
    a2[k]'s sums (both); ``(|a[top]| + |a[k]|) 2^-22`` covers the last
    float32 rounding of each score and this test's own. A NaN anywhere
    makes it False.
    """
    cdef Py_ssize_t k
    cdef double bound, at = a[top]
    for k in range(O):
        if k == top:
            continue
        bound = ez * (n1[top] + n1[k]) + c2[top] + c2[k] + (fabs(at) + fabs(<double>a[k])) * 2.0 ** -22
        if not (at - a[k] > bound):
            return False
    return True


cdef inline Py_ssize_t screened_(const float* val, Py_ssize_t n, const float* s, Py_ssize_t H,
                                 Py_ssize_t HP, Py_ssize_t O, Py_ssize_t OP, double mw, double bmax,
                                 const float* b1, const float* W2, const float* b2, const int* iota,
                                 const double* n1, const double* c2, float* z, float* a) noexcept nogil:
    """The argmax of one sample's float32 scores if the bound proves it is float64's, else -2.

    ``val``: the sample's n non-zeros; ``s``: its float32 x W1 (HP
    entries); the rest is accuracy's float32 copies and bounds.
    """
    cdef Py_ssize_t j, guess
    cdef double xsum = zerokara_abs_sum32(val, n), smax = 0.0, ea, ez
    ea = (n + 2) * 2.0 ** -23 * xsum * mw + xsum * 2.0 ** -140 + (n + 2) * 2.0 ** -120
    for j in range(H):
        if fabs(s[j]) > smax:
            smax = fabs(s[j])
    ez = 0.25 * (ea + 2.0 ** -22 * (smax + bmax + ea)) + 2.0 ** -19
    zerokara_tail32(s, b1, H, HP, W2, b2, OP, iota, z, a)
    guess = argmax_(a, O)
    if guess < 0 or not certain_(a, O, guess, ez, n1, c2):
        return -2
    return guess


def accuracy(const floating_x[:, ::1] x,  # IN (N, I)
             const int64_t[::1] t,        # IN (N,) labels in [0, O)
             const double[:, ::1] W1,     # IN (I, H)
             const double[::1] b1,        # IN (H,)
             const double[:, ::1] W2,     # IN (H, O)
             const double[::1] b2,        # IN (O,)
             int threads,
             *,
             screen_min=SCREEN_MIN,       # IN screen in float32 from this many rows of float32 x; None: never
             Py_ssize_t[::1] exact=None): # OUT (1,) or None: samples decided by the float64 sums
    """Count the samples whose argmax of a2 is their label.

    Returns ``(correct, nonfinite)``: the number of correct predictions and
    the number of samples whose scores were not finite (the caller raises).
    The answer is that of predict's scores, bit for bit: x W1 summed for up
    to ACC_CHUNK rows together (sums_blocked_), in the same order.

    Screen (float32 x of at least ``screen_min`` rows, SCREEN_MIN by
    default, and parameters below 1e30 in magnitude):
    each sample's scores are first computed in float32, against float32
    copies of the parameters: 8 lanes a vector instead of 4, a shorter exp.
    Its error is bounded (n non-zeros, about twice each textbook bound):

    - x W1: ``E = (n + 2) 2^-23 sum|x| max|W1|``, plus underflow terms,
      covers n + 1 roundings of 2^-24 and W1's rounding to float32 (and
      float64's own rounding, 2^-29 times smaller);
    - ``+ b1`` adds ``2^-22 (max|x W1| + max|b1| + E)``;
    - z: sigmoid is 1/4-Lipschitz, and the float32 sigmoid is within
      2^-20 of the exact one (tests/test_core.py checks it on 2^24
      inputs spread over the floats), so ``ez = E' / 4 + 2^-19``;
    - a2[k]: ``ez sum_j |W2[j, k]| + (H + 4) 2^-23 (sum_j |W2[j, k]| + |b2[k]|)``
      (z is in [0, 1]), plus ``2^-22 |a2[k]|`` for the last rounding.

    When the largest float32 score beats every other by more than both
    bounds, the float64 scores have the same argmax. Otherwise (a near
    tie, NaN, inf, overflow) the sample is computed again in float64, as
    predict does. Either way the count is predict's. ``exact[0]`` tells
    how many samples took the float64 path.

    Uses a few scratch rows per thread, never an (N, H) temporary.
    """
    cdef Py_ssize_t N = x.shape[0], I = x.shape[1], H = W1.shape[1], O = W2.shape[1]
    cdef Py_ssize_t S = padded_width_(H), nblocks = (I + BLOCK - 1) // BLOCK, sx = sizeof(floating_x)
    cdef Py_ssize_t HP = (H + 7) // 8 * 8, OP = (O + 7) // 8 * 8
    cdef bint use32 = False
    cdef double mw = 0.0, bmax = 0.0
    cdef const float* w1f_p = NULL
    cdef const float* b1f_p = NULL
    cdef const float* w2f_p = NULL
    cdef const float* b2f_p = NULL
    cdef const int* iota_p = NULL
    cdef const double* n1_p = NULL
    cdef const double* c2_p = NULL
    if floating_x is float:
        if SCREEN and screen_min is not None and N >= screen_min and I > 0 and H > 0:
            n1 = np.abs(np.asarray(W2)).sum(axis=0)
            b2a = np.abs(np.asarray(b2))
            mw = float(np.abs(np.asarray(W1)).max())
            bmax = float(np.abs(np.asarray(b1)).max())
            use32 = mw <= 1e30 and bmax <= 1e30 and bool((n1 + b2a <= 1e30).all())
            if use32:
                c2 = (H + 4) * 2.0 ** -23 * (n1 + b2a)
                w1f = np.zeros((I, HP), dtype=np.float32)
                w1f[:, :H] = W1
                b1f = np.zeros(HP, dtype=np.float32)
                b1f[:H] = b1
                w2f = np.zeros((HP, OP), dtype=np.float32)
                w2f[:H, :O] = W2
                b2f = np.zeros(OP, dtype=np.float32)
                b2f[:O] = b2
                iota = np.arange(H, dtype=np.intc)
                w1f_p = <const float*><Py_ssize_t>w1f.ctypes.data
                b1f_p = <const float*><Py_ssize_t>b1f.ctypes.data
                w2f_p = <const float*><Py_ssize_t>w2f.ctypes.data
                b2f_p = <const float*><Py_ssize_t>b2f.ctypes.data
                iota_p = <const int*><Py_ssize_t>iota.ctypes.data
                n1_p = <const double*><Py_ssize_t>n1.ctypes.data
                c2_p = <const double*><Py_ssize_t>c2.ctypes.data
    # Each thread compacts up to ACC_CHUNK rows, then sums them together
    # (sums_blocked_); fewer when the rows are long: its lists stay within 1 MB.
    cdef Py_ssize_t row_bytes = (I + 8) * (<Py_ssize_t>sizeof(int) + sx)
    cdef Py_ssize_t chunk = max(1, min(<Py_ssize_t>ACC_CHUNK, (1 << 20) // row_bytes))
    cdef Py_ssize_t nchunks = (N + chunk - 1) // chunk
    cdef Py_ssize_t top = 0
    cdef Py_ssize_t o_a = take_(&top, O * sizeof(double))
    cdef Py_ssize_t o_z = take_(&top, H * sizeof(double))
    cdef Py_ssize_t o_z32 = take_(&top, HP * sizeof(float))
    cdef Py_ssize_t o_a32 = take_(&top, OP * sizeof(float))
    cdef Py_ssize_t o_acc = take_(&top, chunk * max(S * sizeof(double), HP * sizeof(float)))
    cdef Py_ssize_t o_off = take_(&top, chunk * sizeof(Py_ssize_t))
    cdef Py_ssize_t o_nnz = take_(&top, chunk * sizeof(Py_ssize_t))
    cdef Py_ssize_t o_starts = take_(&top, chunk * (nblocks + 1) * sizeof(int))
    cdef Py_ssize_t o_sidx = take_(&top, chunk * (I + 8) * sizeof(int))
    cdef Py_ssize_t o_sval = take_(&top, chunk * (I + 8) * sx)
    cdef Py_ssize_t o_count = take_(&top, 3 * sizeof(Py_ssize_t))  # correct, nonfinite, slow
    cdef Py_ssize_t o_next = take_(&top, sizeof(Py_ssize_t))     # the shared counter (thread 0's)
    cdef Py_ssize_t per = top
    arena, address = scratch_("arena", threads * per)
    cdef char* base = <char*><Py_ssize_t>address
    cdef Py_ssize_t correct = 0, nonfinite = 0, slow = 0, guess = 0, m = 0
    cdef Py_ssize_t* next_free = <Py_ssize_t*>(base + o_next)
    cdef Py_ssize_t* count = NULL
    # Set here although each thread sets its own: Cython hands the region
    # these as firstprivate, and gcc warns of copying them unset.
    cdef Py_ssize_t ch = 0, after = 0, c0 = 0, c1 = 0
    cdef char* mine = NULL
    cdef const char* ahead = NULL
    cdef Py_ssize_t* off = NULL
    cdef Py_ssize_t* nz = NULL
    cdef int* sidx = NULL
    cdef floating_x* sval = NULL
    cdef double* z = NULL
    cdef double* a = NULL
    cdef float* acc32 = NULL
    for m in range(threads):
        memset(base + m * per + o_count, 0, 3 * sizeof(Py_ssize_t))
    next_free[0] = 0
    with nogil:
        # Scheduled by hand, like the gradient's forward pass: each thread
        # takes a chunk from the counter next_free and its next chunk when it
        # starts one, so that it fetches the next chunk's rows of x during
        # this chunk's sums (sums_blocked_'s pf). A thread counts into its own
        # slots of the arena; the counts are added up after the region.
        with parallel(num_threads=threads):
            mine = base + threadid() * per
            count = <Py_ssize_t*>(mine + o_count)
            off = <Py_ssize_t*>(mine + o_off)
            nz = <Py_ssize_t*>(mine + o_nnz)
            sidx = <int*>(mine + o_sidx)
            sval = <floating_x*>(mine + o_sval)
            z = <double*>(mine + o_z)
            a = <double*>(mine + o_a)
            acc32 = <float*>(mine + o_acc)
            after = zerokara_fetch_add(next_free, 1)
            while after < nchunks:
                ch = after
                after = zerokara_fetch_add(next_free, 1)
                ahead = <const char*>(&x[0, 0] + after * chunk * I) if after < nchunks else NULL
                c0 = ch * chunk
                c1 = min(c0 + chunk, N)
                for m in range(c1 - c0):
                    off[m] = m * (I + 8)
                    nz[m] = nonzeros_(&x[c0 + m, 0], I, sidx + off[m], sval + off[m],
                                      <int*>(mine + o_starts) + m * (nblocks + 1))
                sums_blocked_(sidx, sval, off, nz, <int*>(mine + o_starts), nblocks + 1, c1 - c0, I,
                              &W1[0, 0], HP if use32 else H, H, <double*>(mine + o_acc), S,
                              w1f_p if use32 else NULL, acc32,
                              ahead, (min(after * chunk + chunk, N) - after * chunk) * I * sx)
                for m in range(c1 - c0):
                    guess = -2
                    if floating_x is float:
                        if use32:
                            guess = screened_(sval + off[m], nz[m], acc32 + m * HP, H, HP, O, OP, mw, bmax,
                                              b1f_p, w2f_p, b2f_p, iota_p, n1_p, c2_p,
                                              <float*>(mine + o_z32), <float*>(mine + o_a32))
                    if guess == -2:  # scored in float64, as predict does
                        if use32:
                            rows_dot_(sidx + off[m], sval + off[m], nz[m], &W1[0, 0], I, H, H, z)
                        else:
                            memcpy(z, mine + o_acc + m * S * sizeof(double), H * sizeof(double))
                        forward_tail_(&b1[0], H, &W2[0, 0], &b2[0], O, z, a)
                        guess = argmax_(a, O)
                        count[2] += 1
                    if guess < 0:
                        count[1] += 1
                    elif guess == t[c0 + m]:
                        count[0] += 1
    for m in range(threads):
        count = <Py_ssize_t*>(base + m * per + o_count)
        correct += count[0]
        nonfinite += count[1]
        slow += count[2]
    if exact is not None:
        exact[0] = slow
    return correct, nonfinite
