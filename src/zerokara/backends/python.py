"""The NumPy backend: the reference every compiled kernel is tested against.

Each function here is the twin of the kernel of the same name in
``cython/_core.pyx``: same arguments (already validated by the caller),
same outputs, written for clarity rather than speed. ``threads`` is accepted
for the common signature and ignored (NumPy decides its own threading).
"""

from __future__ import annotations

import numpy as np

from ..functions import sigmoid, softmax

name = "python"


def openmp_enabled() -> bool:
    """The NumPy backend has no OpenMP loops of its own."""
    return False


def max_threads() -> int:
    return 1


def _forward(x, W1, b1, W2, b2):
    """a1 = x W1 + b1, z1 = sigmoid(a1), a2 = z1 W2 + b2 (the book's predict, eq. 3.8-3.10)."""
    a1 = np.dot(x, W1) + b1
    z1 = sigmoid(a1)
    a2 = np.dot(z1, W2) + b2
    return z1, a2


def predict(x, W1, b1, W2, b2, y, threads):
    """y[...] = softmax(sigmoid(x W1 + b1) W2 + b2); y has shape (N, O)."""
    _, a2 = _forward(x, W1, b1, W2, b2)
    y[...] = softmax(a2)


def _sample_losses(y, t):
    """-log(y[n, t_n] + 1e-7) for each sample (book eq. 4.3 before the mean)."""
    return -np.log(y[np.arange(len(t)), t] + 1e-7)


def loss(x, t, W1, b1, W2, b2, threads):
    """The book's loss: ``mean_n -log(y[n, t_n] + 1e-7)``."""
    _, a2 = _forward(x, W1, b1, W2, b2)
    return float(np.sum(_sample_losses(softmax(a2), t)) / len(t))


def gradient(x, t, W1, b1, W2, b2, dW1, db1, dW2, db2, threads):
    """The book's backprop (ch04 ``TwoLayerNet.gradient``); returns the batch loss.

    Notes
    -----
    With ``y = softmax(a2)`` and one-hot ``T``::

        dy  = (y - T) / N                 d loss / d a2 (without the +1e-7)
        dW2 = z1^T dy,   db2 = sum_n dy
        dz1 = z1 (1 - z1) * (dy W2^T)     sigmoid'(a1) = z1 (1 - z1)
        dW1 = x^T dz1,   db1 = sum_n dz1
    """
    N = x.shape[0]
    z1, a2 = _forward(x, W1, b1, W2, b2)
    y = softmax(a2)
    batch_loss = float(np.sum(_sample_losses(y, t)) / N)
    T = np.zeros_like(y)
    T[np.arange(N), t] = 1.0
    dy = (y - T) / N
    dW2[...] = np.dot(z1.T, dy)
    db2[...] = np.sum(dy, axis=0)
    da1 = np.dot(dy, W2.T)
    dz1 = (1.0 - z1) * z1 * da1
    dW1[...] = np.dot(x.T, dz1)
    db1[...] = np.sum(dz1, axis=0)
    return batch_loss


def sgd_step(x, rows, t, W1, b1, W2, b2, lr, threads):
    """One step of the book's loop on the batch ``x[rows]`` (labels ``t``); returns ``(loss before, loss after)``.

    ``gradient`` on the batch, then ``params[key] -= lr * grad[key]`` in
    place, then ``loss`` on the batch at the new parameters. When the loss
    before is not finite the parameters are left as they are and the loss
    after is NaN.
    """
    if rows.view(np.uintp).max() >= x.shape[0]:  # seen as unsigned, a negative row is too large too
        raise ValueError(f"rows must be indices in 0..{x.shape[0] - 1} (rows of x); got {rows.min()} to {rows.max()}")
    xb = x.take(rows, axis=0)
    params = (W1, b1, W2, b2)
    grads = [np.empty_like(p) for p in params]
    before = gradient(xb, t, *params, *grads, threads)
    if not np.isfinite(before):
        return before, float("nan")
    for p, g in zip(params, grads):
        p -= lr * g
    return before, loss(xb, t, *params, threads)


def sgd_steps(x, rows, t, W1, b1, W2, b2, lr, threads, losses, done, stop=None, split=None):
    """K steps of ``sgd_step``, step k on the batch ``x[rows[k]]`` (labels ``t[k]``); see the compiled twin.

    ``losses[k]`` is step k's loss after the update and ``done[0]`` the
    number of steps applied, kept up to date. Returns False at the first
    step whose loss is not finite (not applied if its loss before is not;
    applied, with its loss in ``losses``, if its loss after is not), else
    True; with ``stop``, ends early when ``stop()`` is true after a step.
    ``split`` (how the compiled twin shares a step between its threads,
    the same numbers either way) means nothing here.
    """
    if rows.shape[0] == 0 or rows.shape != t.shape:
        raise ValueError(f"rows {rows.shape} and t {t.shape} must have the same non-empty shape")
    if rows.view(np.uintp).max() >= x.shape[0]:
        raise ValueError(f"rows must be indices in 0..{x.shape[0] - 1} (rows of x); got {rows.min()} to {rows.max()}")
    done[0] = 0
    for k in range(rows.shape[0]):
        before, after = sgd_step(x, rows[k], t[k], W1, b1, W2, b2, lr, threads)
        if not np.isfinite(before):
            return False
        losses[k] = after
        done[0] = k + 1
        if not np.isfinite(after):
            return False
        if stop is not None and k + 1 < rows.shape[0] and stop():
            break
    return True


def accuracy(x, t, W1, b1, W2, b2, threads, *, screen_min=None, exact=None):
    """``(correct, nonfinite)``: how many argmax(a2) equal t, how many rows of a2 are not finite.

    The book takes argmax of ``softmax(a2)``; softmax is monotone, so the
    argmax of ``a2`` is the same. Processes the data in chunks to keep the
    memory use of large sets small. Every score is float64 here, so
    ``screen_min`` (the compiled twin's float32 screen) is ignored and
    ``exact[0]``, when given, is the number of rows.
    """
    if exact is not None:
        exact[0] = x.shape[0]
    correct = nonfinite = 0
    for start in range(0, x.shape[0], 4096):
        _, a2 = _forward(x[start:start + 4096], W1, b1, W2, b2)
        ok = np.isfinite(a2).all(axis=1)
        nonfinite += int(np.count_nonzero(~ok))
        correct += int(np.count_nonzero((np.argmax(a2, axis=1) == t[start:start + 4096]) & ok))
    return correct, nonfinite


# numerical gradient: issue 4
from ._numgrad_python import numerical_gradient  # noqa: F401
