"""The numerical gradient of the NumPy backend: the twin of ``cython/_numgrad.pyx``.

Both methods compute, for every parameter ``p`` of the network, the book's
central difference (ch04 ``common/gradient.py``, eq. 4.4 / 4.5)::

    g_p = (L(p + h) - L(p - h)) / 2h,    L = mean_n -log(y[n, t_n] + 1e-7)

``full`` is the book's loop as it stands. ``incremental`` (and ``literal``,
the same function here) perturbs every parameter by +h and -h too, but
evaluates only what the perturbation changes, sample by sample, and sums the
per-sample differences ``l_n(p + h) - l_n(p - h)`` before dividing by
``2 h N``. The compiled kernel replaces the exp/log below by short Taylor
series; this module is the exp/log reference it is tested against.
"""

from __future__ import annotations

import numpy as np

from ..functions import sigmoid, softmax

__all__ = ["numerical_gradient"]

# The book's cross_entropy_error adds 1e-7 inside the log (section 4.2.2).
EPS = 1e-7


# ------------------------------------------------------------------ full ---

def _book_loss(x, t, W1, b1, W2, b2):
    """The book's ``TwoLayerNet.loss``: predict, then ``cross_entropy_error`` (eq. 4.3)."""
    z1 = sigmoid(np.dot(x, W1) + b1)
    y = softmax(np.dot(z1, W2) + b2)
    return np.sum(-np.log(y[np.arange(len(t)), t] + EPS)) / len(t)


def _book_numerical_gradient(f, p, out, h):
    """The book's ``numerical_gradient(f, x)`` (common/gradient.py), writing into ``out``.

    ``p`` is perturbed in place and restored, so pass a copy.
    """
    it = np.nditer(p, flags=["multi_index"], op_flags=[["readwrite"]])
    while not it.finished:
        idx = it.multi_index
        tmp_val = p[idx]
        p[idx] = float(tmp_val) + h
        fxh1 = f()  # f(x+h)
        p[idx] = tmp_val - h
        fxh2 = f()  # f(x-h)
        out[idx] = (fxh1 - fxh2) / (2 * h)
        p[idx] = tmp_val
        it.iternext()


def _full(x, t, W1, b1, W2, b2, h, dW1, db1, dW2, db2):
    # Copies: the caller's parameters are never touched, even on failure.
    params = [W1.copy(), b1.copy(), W2.copy(), b2.copy()]

    def f():
        return _book_loss(x, t, *params)

    for p, out in zip(params, (dW1, db1, dW2, db2)):
        _book_numerical_gradient(f, p, out, h)


# ----------------------------------------------------------- incremental ---

class _Cache:
    """What one batch's forward pass leaves for the perturbations to reuse."""

    def __init__(self, x, t, W1, b1, W2, b2):
        a1 = np.dot(x, W1) + b1
        e = np.exp(-np.abs(a1))
        self.a1 = a1
        self.z1 = sigmoid(a1)
        # 1 - sigmoid(a1) from e = exp(-|a1|): exact for saturated units too.
        self.z1c = np.where(a1 >= 0, e / (1.0 + e), 1.0 / (1.0 + e))
        self.y = softmax(np.dot(self.z1, W2) + b2)
        rows = np.arange(len(t))
        onehot = np.zeros(self.y.shape, dtype=bool)
        onehot[rows, t] = True
        self.onehot = onehot
        yt = self.y[rows, t]
        self.kappa = yt / (yt + EPS)
        # 1 - y_t as the sum of the other classes: no cancellation when y_t ~ 1.
        self.rest = np.where(onehot, 0.0, self.y).sum(axis=1)


def _hidden_change(c, W2, n, j, d):
    """``l_n' - l_n`` when ``a1[n, j]`` moves by ``d`` (arrays broadcast together).

    Notes
    -----
    With ``s = sigmoid``, ``w = W2[j, :]`` and ``y = softmax(a2[n])``::

        dz = s(a + d) - s(a) = s(a + d) (1 - s(a)) (1 - e^{-d})
        E_k = expm1(dz w_k)                   a2'_k = a2_k + dz w_k
        q = sum_k y_k E_k                     softmax denominator: 1 + q
        D = sum_{k != t} y_k (E_t - E_k)      y'_t (1 + q) - y_t = y_t D
        l' - l = -log((y'_t + 1e-7) / (y_t + 1e-7)) = -log1p(kappa D / (1 + q))

    with ``kappa = y_t / (y_t + 1e-7)``: the book's ``+ 1e-7``, kept exactly.
    """
    a = c.a1[n, j]
    dz = sigmoid(a + d) * c.z1c[n, j] * -np.expm1(-d)
    w = W2[j, :]
    E = np.expm1(dz[..., None] * w)
    y = c.y[n]
    q = np.sum(y * E, axis=-1)
    Et = np.sum(np.where(c.onehot[n], E, 0.0), axis=-1)
    D = np.sum(np.where(c.onehot[n], 0.0, y * (Et[..., None] - E)), axis=-1)
    return -np.log1p(c.kappa[n] * D / (1.0 + q))


def _output_change(c, n, k, e):
    """``l_n' - l_n`` when ``a2[n, k]`` moves by ``e`` (arrays broadcast together).

    Notes
    -----
    With ``E = expm1(e)``: ``y'_t = y_t e^{e [k = t]} / (1 + y_k E)``, so::

        l' - l = -log1p(kappa ([k = t] - y_k) E / (1 + y_k E))

    where ``1 - y_t`` is taken as ``sum_{k != t} y_k``.
    """
    E = np.expm1(e)
    yk = c.y[n, k]
    coef = np.where(c.onehot[n, k], c.rest[n], -yk)
    return -np.log1p(c.kappa[n] * coef * E / (1.0 + yk * E))


def _incremental(x, t, W1, b1, W2, b2, h, dW1, db1, dW2, db2):
    N, I = x.shape
    H, O = W2.shape
    x = x.astype(np.float64)
    c = _Cache(x, t, W1, b1, W2, b2)
    denom = 2.0 * h * N
    rows = np.arange(N)

    # W1[i, j] moves a1[n, j] by h x[n, i]: only samples with x[n, i] != 0.
    # np.nonzero lists them by sample, so bincount sums each i in sample order.
    nz_n, nz_i = np.nonzero(x)
    d = h * x[nz_n, nz_i]
    for j in range(H):
        diff = _hidden_change(c, W2, nz_n, j, d) - _hidden_change(c, W2, nz_n, j, -d)
        dW1[:, j] = np.bincount(nz_i, weights=diff, minlength=I) / denom

    # b1[j] moves a1[:, j] by h.
    n, j = rows[:, None], np.arange(H)[None, :]
    diff = _hidden_change(c, W2, n, j, h) - _hidden_change(c, W2, n, j, -h)
    db1[:] = np.sum(diff, axis=0) / denom

    # W2[j, k] moves a2[:, k] by h z1[:, j]; b2[k] moves it by h.
    n, k = rows[:, None, None], np.arange(O)[None, None, :]
    e = h * c.z1[:, :, None]
    diff = _output_change(c, n, k, e) - _output_change(c, n, k, -e)
    dW2[:] = np.sum(diff, axis=0) / denom
    n, k = rows[:, None], np.arange(O)[None, :]
    diff = _output_change(c, n, k, h) - _output_change(c, n, k, -h)
    db2[:] = np.sum(diff, axis=0) / denom


def numerical_gradient(x, t, W1, b1, W2, b2, h, method, dW1, db1, dW2, db2, threads):
    """Central differences ``(L(p + h) - L(p - h)) / 2h`` of the book's loss, every parameter.

    Parameters
    ----------
    x : ndarray of shape (N, I), float32 or float64
    t : ndarray of shape (N,), int64 labels in [0, O)
    W1, b1, W2, b2 : ndarrays of shapes (I, H), (H,), (H, O), (O,), float64
        Read only: perturbations act on private copies.
    h : float
    method : {"full", "incremental", "literal"}
        ``full``: the book's loop (np.nditer over each parameter, a whole
        forward pass for each of ``p + h`` and ``p - h``).
        ``incremental`` and ``literal`` (the same function in this backend):
        ``g_p = (1 / N) sum_n (l_n(p + h) - l_n(p - h)) / 2h`` over the
        samples the parameter affects, with the forward pass cached.
    dW1, db1, dW2, db2 : ndarrays shaped like the parameters, float64 (out)
    threads : int
        Ignored (the signature is the compiled kernel's).
    """
    if method == "full":
        _full(x, t, W1, b1, W2, b2, h, dW1, db1, dW2, db2)
    elif method in ("incremental", "literal"):
        _incremental(x, t, W1, b1, W2, b2, h, dW1, db1, dW2, db2)
    else:
        raise ValueError(f"method must be 'full', 'incremental' or 'literal'; got {method!r}")
