# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Forward pass, loss, backprop gradient and accuracy of the book's TwoLayerNet.

Design note
-----------
What: the book's network ``a1 = x W1 + b1, z1 = sigmoid(a1), a2 = z1 W2 + b2,
y = softmax(a2)``, its loss ``mean_n -log(y[n, t_n] + 1e-7)`` (the book's
``cross_entropy_error``), its backprop ``TwoLayerNet.gradient`` with
``dy = (y - t) / N``, and its accuracy (argmax of ``a2``: softmax is monotone).

Sparse input: MNIST images are about 80% zeros, so ``x W1`` and ``x^T dz1``
skip zero pixels. A row of x is compacted 32 bytes at a time: a group whose
bits are all zero (MNIST's long runs of +0.0) costs one test, and in the
other groups each pixel is kept, branch-free, when ``x != 0`` (so -0.0 is
skipped too). A dense input only pays the group test on top.

Rows in registers: ``a1[n, :] = sum_p x[n, i_p] W1[i_p, :]`` is summed over
the non-zeros p of sample n with ROW hidden units held in 13 vector
registers (52 in the AVX2 build, 26 in the portable one), so the book's
H = 50 is one pass (AVX2) or two over contiguous rows of W1, each row read
once per pass from L2. ``x^T dz1`` (per pixel, over the samples whose pixel
is non-zero, gathered 16 pixels per sweep), ``z1 W2``, ``dy W2^T`` and
``z1^T dy`` are the same kernel. A pass reads whole vectors, so it may read
past column H into the next row (lanes that are never stored); the entries
whose vectors would run past the end of the array are summed afterwards,
exactly, so nothing is read out of bounds. These innermost loops are C with
GCC/clang vector extensions (Cython cannot ask for registers); other
compilers get plain loops with the same sums.

Sigmoid and softmax: ``exp(x)`` for ``x <= 0`` by Cody-Waite reduction
``x = k ln2 + r``, ``|r| <= ln2 / 2``, the degree-13 Taylor polynomial of
``e^r`` (tail below 0.08 ulp) and a scaling by ``2^k`` as two exact powers of
two (a subnormal result rounds once): within about 1 ulp of libm's exp, and
branch-free, so a row of 50 sigmoids runs as 13 (or 25) vector operations.

Parallelism: ``prange`` over samples for the forward pass (each sample is one
thread's), over hidden units for ``dW2``/``db1`` and over blocks of input rows
for ``dW1``. Every output element is summed by one thread in a fixed order
(samples ascending, non-zeros ascending), and the loss is summed serially
afterwards, so results are bitwise identical for any number of threads.

Same numbers from both builds: ``setup.py`` compiles this file twice, for
any x86-64 (``zerokara._core``) and with ``-mavx2 -mfma -ffp-contract=off``
(``zerokara._core_avx2``, chosen at run time). Neither contracts ``a*b + c``
into an FMA nor reassociates a sum (no -ffast-math): wider vectors only run
more independent lanes side by side, and ROW only changes which lanes share
a pass. So the two builds agree bitwise (tests/test_simd.py checks it).

Exactness: sigmoid and softmax are the book's formulas rearranged so that no
``exp`` argument is positive (``e = exp(-|a|)``; softmax subtracts the row
maximum): finite for any finite input, with the same values up to rounding.

Callers (``zerokara.backends.cython``) validate everything: C-contiguous
arrays of consistent shapes, float64 parameters, int64 labels in range,
``threads >= 1``. Kernels write into the arrays they are given and never
touch Python objects inside ``nogil``. Each kernel has a NumPy twin of the
same signature in ``zerokara/backends/python.py``.
"""

import numpy as np

from cython.parallel cimport parallel, prange, threadid
from libc.math cimport log
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcpy

from _openmp cimport ZEROKARA_OPENMP, omp_get_max_threads

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
    #define ZEROKARA_NROW 12           /* narrow pass (e.g. the 10 outputs) */

    ZK_INLINE zk_vec zk_load(const double* p) { zk_vec v; memcpy(&v, p, sizeof v); return v; }
    ZK_INLINE void zk_store(double* p, zk_vec v) { memcpy(p, &v, sizeof v); }
    ZK_INLINE zk_vec zk_splat(double c) {
        double t[ZK_L]; int i;
        for (i = 0; i < ZK_L; i++) t[i] = c;
        return zk_load(t);
    }

    /* acc[0:K*ZK_L] = sum_p val[p] W[row_p * H : row_p * H + K*ZK_L], p ascending,
     * row_p = idx[p] (or p when idx is NULL); K accumulators in registers. */
    #define ZK_ROWS(NAME, K, VT)                                                    \\
    static void NAME(const int* idx, const VT* val, Py_ssize_t n,                   \\
                     const double* W, Py_ssize_t H, double* acc) {                  \\
        zk_vec a[K];                                                                \\
        int q;                                                                      \\
        Py_ssize_t p;                                                               \\
        for (q = 0; q < K; q++) a[q] = zk_splat(0.0);                               \\
        for (p = 0; p < n; p++) {                                                   \\
            const double v = (double)val[p];                                        \\
            const double* w = W + (idx ? (Py_ssize_t)idx[p] : p) * H;               \\
            for (q = 0; q < K; q++) a[q] += v * zk_load(w + q * ZK_L);              \\
        }                                                                           \\
        for (q = 0; q < K; q++) zk_store(acc + q * ZK_L, a[q]);                     \\
    }
    ZK_ROWS(zerokara_rows_wide, 13, double)
    ZK_ROWS(zerokara_rows_narrow, ZEROKARA_NROW / ZK_L, double)
    ZK_ROWS(zerokara_rows_wide_f32, 13, float)
    ZK_ROWS(zerokara_rows_narrow_f32, ZEROKARA_NROW / ZK_L, float)

    /* exp(x) for x <= 0 (NaN stays NaN), see the design note: e^r as
     * 1 + (r + r^2 Q(r)), Q by Estrin's scheme (a short dependency chain; its
     * rounding errors are scaled by r^2 <= 0.12). */
    ZK_INLINE zk_vec zk_exp_neg(zk_vec x) {
        const zk_vec shifter = zk_splat(6755399441055744.0);  /* 1.5 * 2^52 */
        zk_vec xc = ZK_SELECT(ZK_MASK(x > -1000.0), x, zk_splat(-1000.0));  /* NaN -> -1000 */
        zk_vec t = xc * 1.4426950408889634 + shifter;      /* rounds x / ln2 to an integer k */
        zk_vec kd = t - shifter;
        zk_ivec k = ZK_BITS(t) - ZK_BITS(shifter);
        zk_vec r = (xc - kd * 6.93147180369123816490e-01) - kd * 1.90821492927058770002e-10;
        zk_vec r2 = r * r, r4 = r2 * r2, r8 = r4 * r4;
        zk_vec q = ((r * (1.0 / 6.0) + 0.5) + r2 * (r * (1.0 / 120.0) + 1.0 / 24.0))
                 + r4 * ((r * (1.0 / 5040.0) + 1.0 / 720.0) + r2 * (r * (1.0 / 362880.0) + 1.0 / 40320.0))
                 + r8 * ((r * (1.0 / 39916800.0) + 1.0 / 3628800.0) + r2 * (r * (1.0 / 6227020800.0) + 1.0 / 479001600.0));
        zk_vec p = (r + r2 * q) + 1.0;
        zk_ivec k1 = ((k + 2048) >> 1) - 1024;           /* k in [-1443, 0] */
        p = p * ZK_DOUBLE((k1 + 1023) << 52) * ZK_DOUBLE((k - k1 + 1023) << 52);
        return ZK_SELECT(ZK_MASK(x == x), p, x);
    }

    /* The book's sigmoid 1 / (1 + exp(-s)), as 1 / (1 + e) for s >= 0 and
     * e / (1 + e) for s < 0 with e = exp(-|s|): exp never overflows. */
    ZK_INLINE zk_vec zk_sigmoid(zk_vec s) {
        zk_vec e = zk_exp_neg(ZK_DOUBLE(ZK_BITS(s) | ZK_BITS(zk_splat(-0.0))));  /* -|s| */
        return ZK_SELECT(ZK_MASK(s >= 0.0), zk_splat(1.0), e) / (1.0 + e);
    }

    /* a[j] <- sigmoid(a[j] + b[j]) for j < n; the tail through a padded vector. */
    static void zerokara_sigmoid_row(double* a, const double* b, Py_ssize_t n) {
        Py_ssize_t j = 0;
        for (; j + ZK_L <= n; j += ZK_L) zk_store(a + j, zk_sigmoid(zk_load(a + j) + zk_load(b + j)));
        if (j < n) {
            double ta[ZK_L] = {0}, tb[ZK_L] = {0};
            memcpy(ta, a + j, (size_t)(n - j) * sizeof(double));
            memcpy(tb, b + j, (size_t)(n - j) * sizeof(double));
            zk_store(ta, zk_sigmoid(zk_load(ta) + zk_load(tb)));
            memcpy(a + j, ta, (size_t)(n - j) * sizeof(double));
        }
    }

    /* y[k] = exp(a[k] - m) for k < n (m is the row maximum). */
    static void zerokara_exp_shifted(const double* a, double m, double* y, Py_ssize_t n) {
        Py_ssize_t k = 0;
        for (; k + ZK_L <= n; k += ZK_L) zk_store(y + k, zk_exp_neg(zk_load(a + k) - m));
        if (k < n) {
            double t[ZK_L] = {0};
            memcpy(t, a + k, (size_t)(n - k) * sizeof(double));
            zk_store(t, zk_exp_neg(zk_load(t) - m));
            memcpy(y + k, t, (size_t)(n - k) * sizeof(double));
        }
    }

    /* Compaction of a float32 row with AVX2: 8 pixels per step, branch-free:
     * the non-zero lanes (x != 0, or NaN) are packed to the front by a
     * permutation from a 256-entry table and stored; the count advances by
     * their number. Writes up to 7 entries past the count. */
    #if defined(__AVX2__)
      #define ZEROKARA_PACK8 1
      static int8_t zk_pack_table[256][8];
      static void zerokara_init(void) {
          int m, k, c;
          for (m = 0; m < 256; m++) {
              for (c = 0, k = 0; k < 8; k++) if (m >> k & 1) zk_pack_table[m][c++] = (int8_t)k;
              for (; c < 8; c++) zk_pack_table[m][c] = 0;
          }
      }
      static Py_ssize_t zerokara_nonzeros_pack8(const float* x, Py_ssize_t I, int* idx, float* val) {
          Py_ssize_t i = 0, nnz = 0;
          for (; i + 8 <= I; i += 8) {
              __m256 v = _mm256_loadu_ps(x + i);
              int m = _mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_NEQ_UQ));
              __m256i perm = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)zk_pack_table[m]));
              _mm256_storeu_ps(val + nnz, _mm256_permutevar8x32_ps(v, perm));
              _mm256_storeu_si256((__m256i*)(idx + nnz), _mm256_add_epi32(perm, _mm256_set1_epi32((int)i)));
              nnz += __builtin_popcount((unsigned)m);
          }
          for (; i < I; i++) { idx[nnz] = (int)i; val[nnz] = x[i]; nnz += (x[i] != 0); }
          return nnz;
      }
    #else
      #define ZEROKARA_PACK8 0
      static void zerokara_init(void) {}
      static Py_ssize_t zerokara_nonzeros_pack8(const float* x, Py_ssize_t I, int* idx, float* val) { return -1; }
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
    enum: NROW "ZEROKARA_NROW"
    enum: PACK8 "ZEROKARA_PACK8"
    const char* ZEROKARA_SIMD
    int zerokara_cpu_avx2_fma() noexcept nogil
    void zerokara_init() noexcept nogil
    Py_ssize_t zerokara_nonzeros_pack8(const float* x, Py_ssize_t I, int* idx, float* val) noexcept nogil
    void zerokara_rows_wide(const int* idx, const double* val, Py_ssize_t n,
                            const double* W, Py_ssize_t H, double* acc) noexcept nogil
    void zerokara_rows_narrow(const int* idx, const double* val, Py_ssize_t n,
                              const double* W, Py_ssize_t H, double* acc) noexcept nogil
    void zerokara_rows_wide_f32(const int* idx, const float* val, Py_ssize_t n,
                                const double* W, Py_ssize_t H, double* acc) noexcept nogil
    void zerokara_rows_narrow_f32(const int* idx, const float* val, Py_ssize_t n,
                                  const double* W, Py_ssize_t H, double* acc) noexcept nogil
    void zerokara_sigmoid_row(double* a, const double* b, Py_ssize_t n) noexcept nogil
    void zerokara_exp_shifted(const double* a, double m, double* y, Py_ssize_t n) noexcept nogil

zerokara_init()

ctypedef fused floating_x:
    float
    double

ctypedef fused floating_v:
    float
    double

# Pixels per block of dW1 rows: their lists of non-zeros are gathered in one
# sweep over the samples (16 float32 pixels are one cache line).
cdef enum:
    BLOCK = 16


def openmp_enabled():
    """True if this module was compiled with OpenMP."""
    return bool(ZEROKARA_OPENMP)


def max_threads():
    """The number of threads a parallel region uses by default (``OMP_NUM_THREADS``)."""
    return omp_get_max_threads()


def simd_build():
    """Which build of the kernels this module is: ``"portable"`` or ``"avx2"``."""
    return ZEROKARA_SIMD.decode()


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
                                 int* idx, floating_x* val) noexcept nogil:
    """Compact the non-zero entries of one row of x; returns their count.

    ``idx`` and ``val`` need room for I + 8 entries. The AVX2 build packs
    float32 rows 8 pixels per step (``zerokara_nonzeros_pack8``). Otherwise
    32 bytes at a time: a group of all-zero bits costs one test; in the
    others each index is written, then kept only if the value is non-zero.
    """
    if floating_x is float:
        if PACK8:
            return zerokara_nonzeros_pack8(x, I, idx, val)
    cdef Py_ssize_t i = 0, k, nnz = 0
    cdef Py_ssize_t G = 32 // sizeof(floating_x)
    cdef const char* c
    while i + G <= I:
        c = <const char*>(x + i)
        if word_(c) | word_(c + 8) | word_(c + 16) | word_(c + 24):
            for k in range(G):
                idx[nnz] = <int>(i + k)
                val[nnz] = x[i + k]
                nnz += (x[i + k] != 0)
        i += G
    while i < I:
        idx[nnz] = <int>i
        val[nnz] = x[i]
        nnz += (x[i] != 0)
        i += 1
    return nnz


cdef inline void rows_dot_(const int* idx, const floating_v* val, Py_ssize_t n,
                           const double* W, Py_ssize_t R, Py_ssize_t H,
                           double* out) noexcept nogil:
    """out[j] = sum_p val[p] W[r_p, j] for j < H, summed in ascending p.

    W has shape (R, H); r_p = idx[p], or p when idx is NULL (a dense sum).
    Passes of ROW columns (NROW for the last few), in registers; the
    entries whose pass would read past W's end are added afterwards.
    """
    cdef double acc[ROW]
    cdef Py_ssize_t p, j, r, j0 = 0, width, pw, safe
    cdef double v
    cdef const double* w
    while j0 < H:
        pw = ROW if H - j0 > NROW else NROW
        width = min(pw, H - j0)
        safe = n
        while safe > 0 and ((idx[safe - 1] if idx else safe - 1) * H + j0 + pw > R * H):
            safe -= 1
        if floating_v is float:
            if pw == ROW:
                zerokara_rows_wide_f32(idx, val, safe, W + j0, H, acc)
            else:
                zerokara_rows_narrow_f32(idx, val, safe, W + j0, H, acc)
        else:
            if pw == ROW:
                zerokara_rows_wide(idx, val, safe, W + j0, H, acc)
            else:
                zerokara_rows_narrow(idx, val, safe, W + j0, H, acc)
        for j in range(width):
            out[j0 + j] = acc[j]
        for p in range(safe, n):
            v = val[p]
            r = idx[p] if idx else p
            w = W + r * H + j0
            for j in range(width):
                out[j0 + j] += v * w[j]
        j0 += pw


cdef inline void forward_(const floating_x* x, Py_ssize_t I, const double* W1,
                          const double* b1, Py_ssize_t H, const double* W2,
                          const double* b2, Py_ssize_t O, double* z, double* a,
                          int* idx, floating_x* val) noexcept nogil:
    """z = sigmoid(x W1 + b1) and a = z W2 + b2 for one sample, skipping zero pixels.

    ``idx`` and ``val`` are scratch rows of length I + 8.
    """
    cdef Py_ssize_t k
    rows_dot_(idx, val, nonzeros_(x, I, idx, val), W1, I, H, z)
    zerokara_sigmoid_row(z, b1, H)
    rows_dot_(<const int*>NULL, z, H, W2, H, O, a)
    for k in range(O):
        a[k] += b2[k]


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


cdef inline Py_ssize_t argmax_(const double* a, Py_ssize_t O) noexcept nogil:
    """np.argmax of one row (first maximum); -1 if the row is not finite."""
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
    rows_dot_(<const int*>NULL, dy, O, W2T, O, H, dz)
    for j in range(H):
        dz[j] = (1.0 - z[j]) * z[j] * dz[j]


cdef inline void dW2_row_(const double[:, ::1] z1, const double[:, ::1] dy,
                          const double[:, ::1] dz1, Py_ssize_t j, double* col,
                          double* dW2j, double* db1j) noexcept nogil:
    """dW2[j, :] = sum_n z1[n, j] dy[n, :] and db1[j] = sum_n dz1[n, j].

    ``col`` is scratch of length N for the column z1[:, j].
    """
    cdef Py_ssize_t n, N = z1.shape[0], O = dy.shape[1]
    cdef double s = 0.0
    for n in range(N):
        col[n] = z1[n, j]
        s += dz1[n, j]
    db1j[0] = s
    rows_dot_(<const int*>NULL, col, N, &dy[0, 0], N, O, dW2j)


cdef inline void dW1_block_(const floating_x[:, ::1] x, const double[:, ::1] dz1,
                            Py_ssize_t i0, Py_ssize_t i1, double[:, ::1] dW1,
                            int* idx, floating_x* val, Py_ssize_t* cnt) noexcept nogil:
    """dW1[i0:i1, :] = x[:, i0:i1]^T dz1, skipping zero pixels.

    One sweep over the samples gathers the non-zeros of each column
    i0 <= i < i1 (samples ascending) into ``idx``/``val`` (one list of up to
    N entries per column), skipping samples whose pixels there are all zero
    bits; each column is then summed like ``x W1``.
    """
    cdef Py_ssize_t n, c, N = x.shape[0], H = dz1.shape[1], w = i1 - i0
    cdef const floating_x* xr
    cdef const char* b
    cdef uint64_t bits
    for c in range(w):
        cnt[c] = 0
    for n in range(N):
        xr = &x[n, i0]
        if w == BLOCK:
            b = <const char*>xr
            bits = 0
            for c in range(0, BLOCK * sizeof(floating_x), 8):
                bits = bits | word_(b + c)
            if bits == 0:
                continue
        for c in range(w):
            idx[c * N + cnt[c]] = <int>n
            val[c * N + cnt[c]] = xr[c]
            cnt[c] += (xr[c] != 0)
    for c in range(w):
        rows_dot_(idx + c * N, val + c * N, cnt[c], &dz1[0, 0], N, H, &dW1[i0 + c, 0])


# ---------------------------------------------------------------- kernels ---

cdef dtype_of(const floating_x[:, ::1] x):
    """The NumPy dtype of x's elements (for scratch that holds copies of them)."""
    return np.float32 if floating_x is float else np.float64


def predict(const floating_x[:, ::1] x,   # IN (N, I)
            const double[:, ::1] W1,      # IN (I, H)
            const double[::1] b1,         # IN (H,)
            const double[:, ::1] W2,      # IN (H, O)
            const double[::1] b2,         # IN (O,)
            double[:, ::1] y,             # OUT (N, O) softmax probabilities
            int threads):
    """y = softmax(sigmoid(x W1 + b1) W2 + b2)."""
    cdef Py_ssize_t n, N = x.shape[0], I = x.shape[1], H = W1.shape[1], O = W2.shape[1]
    cdef double[:, ::1] z = np.empty((threads, H))
    cdef double[:, ::1] a = np.empty((threads, O))
    cdef int[:, ::1] idx = np.empty((threads, I + 8), dtype=np.intc)
    cdef floating_x[:, ::1] val = np.empty((threads, I + 8), dtype=dtype_of(x))
    cdef int tid = 0
    with nogil:
        for n in prange(N, schedule="static", num_threads=threads):
            tid = threadid()
            forward_(&x[n, 0], I, &W1[0, 0], &b1[0], H, &W2[0, 0], &b2[0], O,
                     &z[tid, 0], &a[tid, 0], &idx[tid, 0], &val[tid, 0])
            softmax_(&a[tid, 0], O, &y[n, 0])


def loss(const floating_x[:, ::1] x,      # IN (N, I)
         const int64_t[::1] t,            # IN (N,) labels in [0, O)
         const double[:, ::1] W1,         # IN (I, H)
         const double[::1] b1,            # IN (H,)
         const double[:, ::1] W2,         # IN (H, O)
         const double[::1] b2,            # IN (O,)
         int threads):
    """The book's loss: mean over the batch of -log(y[n, t_n] + 1e-7)."""
    cdef Py_ssize_t n, N = x.shape[0], I = x.shape[1], H = W1.shape[1], O = W2.shape[1]
    cdef double[:, ::1] z = np.empty((threads, H))
    cdef double[:, ::1] a = np.empty((threads, O))
    cdef int[:, ::1] idx = np.empty((threads, I + 8), dtype=np.intc)
    cdef floating_x[:, ::1] val = np.empty((threads, I + 8), dtype=dtype_of(x))
    cdef double[:, ::1] y = np.empty((threads, O))
    cdef double[::1] losses = np.empty(N)
    cdef double total = 0.0
    cdef int tid = 0
    with nogil:
        for n in prange(N, schedule="static", num_threads=threads):
            tid = threadid()
            forward_(&x[n, 0], I, &W1[0, 0], &b1[0], H, &W2[0, 0], &b2[0], O,
                     &z[tid, 0], &a[tid, 0], &idx[tid, 0], &val[tid, 0])
            softmax_(&a[tid, 0], O, &y[tid, 0])
            losses[n] = -log(y[tid, t[n]] + 1e-7)
        for n in range(N):  # serial: the same sum for any thread count
            total += losses[n]
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

    Returns the loss of the batch at the given parameters, which the forward
    pass computes anyway.
    """
    cdef Py_ssize_t n, j, k, blk, N = x.shape[0], I = x.shape[1], H = W1.shape[1], O = W2.shape[1]
    cdef Py_ssize_t nblocks = (I + BLOCK - 1) // BLOCK
    cdef double[:, ::1] W2T = np.ascontiguousarray(np.asarray(W2).T)
    cdef double[:, ::1] z1 = np.empty((N, H))
    cdef double[:, ::1] dz1 = np.empty((N, H))
    cdef double[:, ::1] dy = np.empty((N, O))
    cdef double[:, ::1] a = np.empty((threads, O))
    cdef int[:, ::1] idx = np.empty((threads, max(I + 8, BLOCK * N)), dtype=np.intc)
    cdef floating_x[:, ::1] val = np.empty((threads, max(I + 8, BLOCK * N)), dtype=dtype_of(x))
    cdef double[:, ::1] col = np.empty((threads, N))
    cdef Py_ssize_t[:, ::1] cnt = np.empty((threads, BLOCK), dtype=np.intp)
    cdef double[::1] losses = np.empty(N)
    cdef double total = 0.0
    cdef int tid = 0
    with nogil, parallel(num_threads=threads):
        tid = threadid()
        for n in prange(N, schedule="static"):
            forward_(&x[n, 0], I, &W1[0, 0], &b1[0], H, &W2[0, 0], &b2[0], O,
                     &z1[n, 0], &a[tid, 0], &idx[tid, 0], &val[tid, 0])
            softmax_(&a[tid, 0], O, &dy[n, 0])
            losses[n] = -log(dy[n, t[n]] + 1e-7)
            backward_sample_(&dy[n, 0], &z1[n, 0], &W2T[0, 0], t[n], <double>N, H, O, &dz1[n, 0])
        for j in prange(H, schedule="static"):
            dW2_row_(z1, dy, dz1, j, &col[tid, 0], &dW2[j, 0], &db1[j])
        for blk in prange(nblocks, schedule="static"):
            dW1_block_(x, dz1, blk * BLOCK, min((blk + 1) * BLOCK, I), dW1,
                       &idx[tid, 0], &val[tid, 0], &cnt[tid, 0])
    for k in range(O):
        db2[k] = 0.0
    for n in range(N):  # serial: the same sums for any thread count
        total += losses[n]
        for k in range(O):
            db2[k] += dy[n, k]
    return total / N


def accuracy(const floating_x[:, ::1] x,  # IN (N, I)
             const int64_t[::1] t,        # IN (N,) labels in [0, O)
             const double[:, ::1] W1,     # IN (I, H)
             const double[::1] b1,        # IN (H,)
             const double[:, ::1] W2,     # IN (H, O)
             const double[::1] b2,        # IN (O,)
             int threads):
    """Count the samples whose argmax of a2 is their label.

    Returns ``(correct, nonfinite)``: the number of correct predictions and
    the number of samples whose scores were not finite (the caller raises).
    Uses one scratch row per thread, never an (N, H) temporary.
    """
    cdef Py_ssize_t n, N = x.shape[0], I = x.shape[1], H = W1.shape[1], O = W2.shape[1]
    cdef double[:, ::1] z = np.empty((threads, H))
    cdef double[:, ::1] a = np.empty((threads, O))
    cdef int[:, ::1] idx = np.empty((threads, I + 8), dtype=np.intc)
    cdef floating_x[:, ::1] val = np.empty((threads, I + 8), dtype=dtype_of(x))
    cdef Py_ssize_t correct = 0, nonfinite = 0, guess
    cdef int tid = 0
    with nogil:
        for n in prange(N, schedule="static", num_threads=threads):
            tid = threadid()
            forward_(&x[n, 0], I, &W1[0, 0], &b1[0], H, &W2[0, 0], &b2[0], O,
                     &z[tid, 0], &a[tid, 0], &idx[tid, 0], &val[tid, 0])
            guess = argmax_(&a[tid, 0], O)
            if guess < 0:
                nonfinite += 1
            elif guess == t[n]:
                correct += 1
    return correct, nonfinite
