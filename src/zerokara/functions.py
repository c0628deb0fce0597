"""The chapter's functions (the book's ``common/functions.py``), made stable.

Same names, same arguments, same values as the book up to floating-point
rounding, for arrays of any shape. ``sigmoid`` never overflows: the book's
``1 / (1 + exp(-x))`` warns and loses precision for ``x < -709``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["sigmoid", "sigmoid_grad", "softmax", "cross_entropy_error", "mean_squared_error"]


def _as_float(x) -> np.ndarray:
    """x as an array; integers and booleans become float64, as NumPy's exp would make them."""
    x = np.asarray(x)
    if x.dtype.kind in "biu":
        return x.astype(np.float64)
    if x.dtype.kind not in "fc":
        raise TypeError(f"x must be numeric; got dtype {x.dtype}")
    return x


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function ``1 / (1 + exp(-x))``, elementwise.

    Parameters
    ----------
    x : array_like of any shape

    Returns
    -------
    ndarray of the same shape, values in [0, 1].

    Notes
    -----
    With ``e = exp(-|x|)`` (never overflows), ``sigmoid(x) = 1 / (1 + e)`` for
    ``x >= 0`` and ``e / (1 + e)`` for ``x < 0`` (numerator and denominator
    of the book's formula multiplied by ``exp(x)``). Its derivative is
    ``sigmoid(x) (1 - sigmoid(x))``, see :func:`sigmoid_grad`.
    """
    x = _as_float(x)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def sigmoid_grad(x: np.ndarray) -> np.ndarray:
    """Derivative of :func:`sigmoid`: ``(1 - sigmoid(x)) * sigmoid(x)`` (book ch. 5)."""
    s = sigmoid(x)
    return (1.0 - s) * s


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (book eq. 3.11, with the max subtracted as in 3.5.2).

    Parameters
    ----------
    x : array_like of shape (..., K)

    Returns
    -------
    ndarray of the same shape; each slice along the last axis sums to 1.

    Notes
    -----
    ``softmax(x)_k = exp(x_k - m) / sum_i exp(x_i - m)`` with ``m = max_i x_i``:
    the largest exponent is 0, so nothing overflows for finite input.
    """
    x = _as_float(x)
    x = x - np.max(x, axis=-1, keepdims=True)
    e = np.exp(x)
    return e / np.sum(e, axis=-1, keepdims=True)


def cross_entropy_error(y: np.ndarray, t: np.ndarray) -> float:
    """The book's mini-batch cross-entropy error (eq. 4.3): ``-sum log(y_t + 1e-7) / N``.

    Parameters
    ----------
    y : array_like of shape (N, K) or (K,)
        Predicted probabilities.
    t : array_like of shape (N, K) or (K,) (one-hot), or (N,) or () (labels)

    Returns
    -------
    float
        The mean over the batch of ``-log(y[n, t_n] + 1e-7)``.

    Notes
    -----
    The ``+ 1e-7`` keeps ``log(0)`` finite (book section 4.2.2). As in the
    book, one-hot ``t`` (same size as ``y``) is converted to labels first.
    """
    y = np.asarray(y)
    t = np.asarray(t)
    if y.ndim == 1:
        t = t.reshape(1, t.size)
        y = y.reshape(1, y.size)
    if t.size == y.size:
        t = t.argmax(axis=1)
    t = t.reshape(-1)
    if t.dtype.kind not in "iu":
        raise TypeError(f"t must hold integer labels or be one-hot like y; got dtype {t.dtype}")
    batch_size = y.shape[0]
    if t.shape[0] != batch_size:
        raise ValueError(f"t has {t.shape[0]} labels but y has {batch_size} rows")
    if t.size and (t.min() < 0 or t.max() >= y.shape[1]):
        raise ValueError(
            f"t has labels from {t.min()} to {t.max()}, but y has {y.shape[1]} classes "
            f"(labels must be 0..{y.shape[1] - 1})"
        )
    return float(-np.sum(np.log(y[np.arange(batch_size), t] + 1e-7)) / batch_size)


def mean_squared_error(y: np.ndarray, t: np.ndarray) -> float:
    """The book's sum of squared errors (eq. 4.1): ``0.5 * sum((y - t)**2)``.

    Parameters
    ----------
    y, t : array_like of the same shape
    """
    y = np.asarray(y)
    t = np.asarray(t)
    if y.shape != t.shape:
        raise ValueError(f"y and t must have the same shape; got {y.shape} and {t.shape}")
    return float(0.5 * np.sum((y - t) ** 2))
