# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Forward pass, loss, backprop gradient and accuracy of the book's TwoLayerNet.

Design note
-----------
What: the book's network ``a1 = x W1 + b1, z1 = sigmoid(a1), a2 = z1 W2 + b2,
y = softmax(a2)``, its loss ``mean_n -log(y[n, t_n] + 1e-7)`` (the book's
``cross_entropy_error``), its backprop ``TwoLayerNet.gradient`` with
``dy = (y - t) / N``, and its accuracy (argmax of ``a2``: softmax is monotone).

Sparse input: MNIST images are about 80% zeros, so ``x W1`` and ``x^T dz1``
skip zero pixels. A dense input only pays one comparison per element.

Parallelism: ``prange`` over samples for the forward pass (each sample is one
thread's), over hidden units for ``dW2``/``db1`` and over blocks of input rows
for ``dW1``. Every output element is summed by one thread in a fixed order
(samples ascending), and the loss is summed serially afterwards, so results
are bitwise identical for any number of threads.

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

from cython.parallel cimport prange, threadid
from libc.math cimport exp, fabs, log
from libc.stdint cimport int64_t

from _openmp cimport ZEROKARA_OPENMP, omp_get_max_threads

ctypedef fused floating_x:
    float
    double

# Rows of dW1 per parallel work item: 16 float32 pixels of a row of x are one
# cache line, and 784 / 16 = 49 items split evenly enough over a few threads.
# (A column of x is read with stride I; a block's lines stay in L1.)
cdef Py_ssize_t BLOCK = 16


def openmp_enabled():
    """True if this module was compiled with OpenMP."""
    return bool(ZEROKARA_OPENMP)


def max_threads():
    """The number of threads a parallel region uses by default (``OMP_NUM_THREADS``)."""
    return omp_get_max_threads()


# ---------------------------------------------------------------- helpers ---

cdef inline double sigmoid_(double a) noexcept nogil:
    # The book's 1 / (1 + exp(-a)); for a < 0 multiplied through by exp(a),
    # so exp never sees a positive argument and never overflows.
    cdef double e = exp(-fabs(a))
    if a >= 0:
        return 1.0 / (1.0 + e)
    return e / (1.0 + e)


cdef enum:
    # Hidden units summed in registers at a time: 16 doubles are 8 SSE2 (or
    # 4 AVX) registers, enough independent sums to hide the add latency.
    CHUNK = 16


cdef inline Py_ssize_t nonzeros_(const floating_x* x, Py_ssize_t I,
                                 int* idx, double* val) noexcept nogil:
    """Compact the non-zero entries of one row of x; returns their count.

    Branch-free (the index is written, then kept only if the value is
    non-zero): MNIST's zero pixels would otherwise cost a mispredicted
    branch each.
    """
    cdef Py_ssize_t i, nnz = 0
    for i in range(I):
        idx[nnz] = <int>i
        val[nnz] = x[i]
        nnz += (x[i] != 0)
    return nnz


cdef inline void sparse_dot_(const int* idx, const double* val, Py_ssize_t nnz,
                             const double* W, Py_ssize_t H, double* out) noexcept nogil:
    """out[j] = sum_p val[p] W[idx[p], j], summed in ascending p.

    ``out`` is accumulated CHUNK hidden units at a time in a local array the
    compiler keeps in registers, instead of a load and store per term.
    """
    cdef double acc[CHUNK]
    cdef Py_ssize_t p, j, j0 = 0
    cdef double v
    cdef const double* w
    while j0 + CHUNK <= H:
        for j in range(CHUNK):
            acc[j] = 0.0
        for p in range(nnz):
            v = val[p]
            w = W + idx[p] * H + j0
            for j in range(CHUNK):
                acc[j] += v * w[j]
        for j in range(CHUNK):
            out[j0 + j] = acc[j]
        j0 += CHUNK
    for j in range(j0, H):
        out[j] = 0.0
    if j0 < H:
        for p in range(nnz):
            v = val[p]
            w = W + idx[p] * H
            for j in range(j0, H):
                out[j] += v * w[j]


cdef inline void hidden_(const floating_x* x, Py_ssize_t I, const double* W1,
                         const double* b1, Py_ssize_t H, double* z,
                         int* idx, double* val) noexcept nogil:
    """z = sigmoid(x W1 + b1) for one sample, skipping zero pixels.

    ``idx`` and ``val`` are scratch rows of length I.
    """
    cdef Py_ssize_t j
    sparse_dot_(idx, val, nonzeros_(x, I, idx, val), W1, H, z)
    for j in range(H):
        z[j] = sigmoid_(z[j] + b1[j])


cdef inline void output_(const double* z, Py_ssize_t H, const double* W2,
                         const double* b2, Py_ssize_t O, double* a) noexcept nogil:
    """a = z W2 + b2 for one sample."""
    cdef Py_ssize_t j, k
    cdef double zj
    cdef const double* w
    for k in range(O):
        a[k] = 0.0
    for j in range(H):
        zj = z[j]
        w = W2 + j * O
        for k in range(O):
            a[k] += zj * w[k]
    for k in range(O):
        a[k] += b2[k]


cdef inline void softmax_(const double* a, Py_ssize_t O, double* y) noexcept nogil:
    """y = exp(a - max a) / sum exp(a - max a), the book's softmax."""
    cdef Py_ssize_t k
    cdef double m = a[0], s = 0.0
    for k in range(1, O):
        if a[k] > m:
            m = a[k]
    for k in range(O):
        y[k] = exp(a[k] - m)
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


cdef inline void backward_sample_(double* dy, const double* z, const double* W2,
                                  int64_t t, double N, Py_ssize_t H, Py_ssize_t O,
                                  double* dz) noexcept nogil:
    """dy <- (y - onehot(t)) / N in place, then dz = sigmoid_grad * (dy W2^T)."""
    cdef Py_ssize_t j, k
    cdef double s
    cdef const double* w
    for k in range(O):
        dy[k] = (dy[k] - (1.0 if k == t else 0.0)) / N
    for j in range(H):
        w = W2 + j * O
        s = 0.0
        for k in range(O):
            s += dy[k] * w[k]
        dz[j] = (1.0 - z[j]) * z[j] * s


cdef inline void dW2_row_(const double[:, ::1] z1, const double[:, ::1] dy,
                          const double[:, ::1] dz1, Py_ssize_t j,
                          double* dW2j, double* db1j) noexcept nogil:
    """dW2[j, :] = sum_n z1[n, j] dy[n, :] and db1[j] = sum_n dz1[n, j]."""
    cdef Py_ssize_t n, k, N = z1.shape[0], O = dy.shape[1]
    cdef double zj, s = 0.0
    for k in range(O):
        dW2j[k] = 0.0
    for n in range(N):
        zj = z1[n, j]
        for k in range(O):
            dW2j[k] += zj * dy[n, k]
        s += dz1[n, j]
    db1j[0] = s


cdef inline void dW1_block_(const floating_x[:, ::1] x, const double[:, ::1] dz1,
                            Py_ssize_t i0, Py_ssize_t i1, double[:, ::1] dW1,
                            int* idx, double* val) noexcept nogil:
    """dW1[i0:i1, :] = x[:, i0:i1]^T dz1, skipping zero pixels.

    Gathers the non-zeros of each column i (samples ascending) into ``idx``
    and ``val`` (scratch of length N), then sums them like ``sparse_dot_``.
    """
    cdef Py_ssize_t n, i, nnz, N = x.shape[0], H = dz1.shape[1]
    for i in range(i0, i1):
        nnz = 0
        for n in range(N):
            idx[nnz] = <int>n
            val[nnz] = x[n, i]
            nnz += (x[n, i] != 0)
        sparse_dot_(idx, val, nnz, &dz1[0, 0], H, &dW1[i, 0])


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
    cdef double[:, ::1] z = np.empty((threads, H))
    cdef double[:, ::1] a = np.empty((threads, O))
    cdef int[:, ::1] idx = np.empty((threads, max(I, N)), dtype=np.intc)
    cdef double[:, ::1] val = np.empty((threads, max(I, N)))
    cdef int tid
    with nogil:
        for n in prange(N, schedule="static", num_threads=threads):
            tid = threadid()
            hidden_(&x[n, 0], I, &W1[0, 0], &b1[0], H, &z[tid, 0], &idx[tid, 0], &val[tid, 0])
            output_(&z[tid, 0], H, &W2[0, 0], &b2[0], O, &a[tid, 0])
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
    cdef int[:, ::1] idx = np.empty((threads, max(I, N)), dtype=np.intc)
    cdef double[:, ::1] val = np.empty((threads, max(I, N)))
    cdef double[:, ::1] y = np.empty((threads, O))
    cdef double[::1] losses = np.empty(N)
    cdef double total = 0.0
    cdef int tid
    with nogil:
        for n in prange(N, schedule="static", num_threads=threads):
            tid = threadid()
            hidden_(&x[n, 0], I, &W1[0, 0], &b1[0], H, &z[tid, 0], &idx[tid, 0], &val[tid, 0])
            output_(&z[tid, 0], H, &W2[0, 0], &b2[0], O, &a[tid, 0])
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
    cdef double[:, ::1] z1 = np.empty((N, H))
    cdef double[:, ::1] dz1 = np.empty((N, H))
    cdef double[:, ::1] dy = np.empty((N, O))
    cdef double[:, ::1] a = np.empty((threads, O))
    cdef int[:, ::1] idx = np.empty((threads, max(I, N)), dtype=np.intc)
    cdef double[:, ::1] val = np.empty((threads, max(I, N)))
    cdef double[::1] losses = np.empty(N)
    cdef double total = 0.0
    cdef int tid
    with nogil:
        for n in prange(N, schedule="static", num_threads=threads):
            tid = threadid()
            hidden_(&x[n, 0], I, &W1[0, 0], &b1[0], H, &z1[n, 0], &idx[tid, 0], &val[tid, 0])
            output_(&z1[n, 0], H, &W2[0, 0], &b2[0], O, &a[tid, 0])
            softmax_(&a[tid, 0], O, &dy[n, 0])
            losses[n] = -log(dy[n, t[n]] + 1e-7)
            backward_sample_(&dy[n, 0], &z1[n, 0], &W2[0, 0], t[n], <double>N, H, O, &dz1[n, 0])
        for j in prange(H, schedule="static", num_threads=threads):
            dW2_row_(z1, dy, dz1, j, &dW2[j, 0], &db1[j])
        for blk in prange(nblocks, schedule="static", num_threads=threads):
            tid = threadid()
            dW1_block_(x, dz1, blk * BLOCK, min((blk + 1) * BLOCK, I), dW1,
                       &idx[tid, 0], &val[tid, 0])
        for k in range(O):
            db2[k] = 0.0
        for n in range(N):
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
    cdef int[:, ::1] idx = np.empty((threads, max(I, N)), dtype=np.intc)
    cdef double[:, ::1] val = np.empty((threads, max(I, N)))
    cdef Py_ssize_t correct = 0, nonfinite = 0, guess
    cdef int tid
    with nogil:
        for n in prange(N, schedule="static", num_threads=threads):
            tid = threadid()
            hidden_(&x[n, 0], I, &W1[0, 0], &b1[0], H, &z[tid, 0], &idx[tid, 0], &val[tid, 0])
            output_(&z[tid, 0], H, &W2[0, 0], &b2[0], O, &a[tid, 0])
            guess = argmax_(&a[tid, 0], O)
            if guess < 0:
                nonfinite += 1
            elif guess == t[n]:
                correct += 1
    return correct, nonfinite
