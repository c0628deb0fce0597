"""The chapter's generic numerical differentiation (book section 4.3-4.4).

``numerical_diff``, ``numerical_gradient`` and ``gradient_descent`` as in the
book's ``ch04/gradient_1d.py``, ``common/gradient.py`` and
``ch04/gradient_method.py``: for any function and array shape. (The
network's fast numerical gradient is ``TwoLayerNet.numerical_gradient``.)
"""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["numerical_diff", "numerical_gradient", "gradient_descent"]


def numerical_diff(f: Callable[[float], float], x: float, h: float = 1e-4) -> float:
    """Central difference ``(f(x + h) - f(x - h)) / 2h`` (book eq. 4.4 and section 4.3.1)."""
    return (f(x + h) - f(x - h)) / (2 * h)


def numerical_gradient(f: Callable[[np.ndarray], float], x: np.ndarray, h: float = 1e-4) -> np.ndarray:
    """Gradient of ``f`` at ``x`` by central differences, one entry at a time.

    Parameters
    ----------
    f : callable
        ``f(x) -> float``. As in the book, ``x`` is perturbed in place, so a
        function that ignores its argument and reads ``x`` elsewhere (such as
        ``lambda W: net.loss(x_batch, t_batch)`` with ``x = net.params['W1']``)
        sees the perturbation too.
    x : ndarray of any shape, floating point (contiguous or not)
        Left unchanged on return, also when ``f`` raises.
    h : float, default 1e-4

    Returns
    -------
    grad : ndarray of the same shape as ``x``, float64 or x's float dtype
        ``grad[idx] = (f(x + h e_idx) - f(x - h e_idx)) / 2h``.
    """
    if not (np.isscalar(h) and np.isfinite(h) and h > 0):
        raise ValueError(f"h must be a positive finite number; got {h!r}")
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a NumPy array (perturbed in place); got {type(x).__name__}")
    if x.dtype.kind != "f":
        # An integer array cannot hold x + 1e-4: work on a float64 copy
        # (the book would silently truncate the perturbation to 0).
        if x.dtype.kind not in "biu":
            raise TypeError(f"x must be a numeric array; got dtype {x.dtype}")
        x = x.astype(np.float64)
    if not x.flags.writeable:
        raise ValueError("x must be writeable: it is perturbed in place and restored")
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=[["readwrite"]])
    while not it.finished:
        idx = it.multi_index
        tmp_val = x[idx]
        try:
            x[idx] = tmp_val + h
            fxh1 = f(x)  # f(x+h)
            x[idx] = tmp_val - h
            fxh2 = f(x)  # f(x-h)
        finally:
            x[idx] = tmp_val  # restore exactly, whatever f did
        grad[idx] = (fxh1 - fxh2) / (2 * h)
        it.iternext()
    return grad


def gradient_descent(
    f: Callable[[np.ndarray], float],
    init_x: np.ndarray,
    lr: float = 0.01,
    step_num: int = 100,
    *,
    return_history: bool = False,
):
    """Gradient descent with the numerical gradient (book section 4.4.1).

    ``x <- x - lr * numerical_gradient(f, x)``, ``step_num`` times.

    Parameters
    ----------
    f : callable ``f(x) -> float``
    init_x : array_like
        Starting point; not modified (the book updates it in place).
    lr : float, default 0.01
    step_num : int, default 100
    return_history : bool, default False
        Also return the points visited, as the book's ``gradient_method.py``.

    Returns
    -------
    x : ndarray
        The final point.
    history : ndarray of shape (step_num, *x.shape)
        Only with ``return_history=True``: ``x`` before each step.
    """
    if not (np.isscalar(lr) and np.isfinite(lr)):
        raise ValueError(f"lr must be a finite number; got {lr!r}")
    if isinstance(step_num, bool) or not isinstance(step_num, (int, np.integer)) or step_num < 0:
        raise ValueError(f"step_num must be a non-negative integer; got {step_num!r}")
    x = np.array(init_x, dtype=np.float64 if np.asarray(init_x).dtype.kind != "f" else None, copy=True)
    history = []
    for _ in range(step_num):
        if return_history:
            history.append(x.copy())
        grad = numerical_gradient(f, x)
        x -= lr * grad
    if return_history:
        return x, np.array(history).reshape((step_num,) + x.shape)
    return x
