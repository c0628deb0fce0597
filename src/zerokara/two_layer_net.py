"""The book's two-layer network (ch04 ``two_layer_net.py``), validated and fast.

``TwoLayerNet`` keeps the book's API (``params``, ``predict``, ``loss``,
``accuracy``, ``numerical_gradient``, ``gradient``) and values, and adds
``sgd_step``: the training loop's gradient, update and loss in one call.
Each method checks and converts its arguments here, in Python, then makes one call into
the backend's kernel: compiled code never sees unchecked input, and the
network never knows which backend runs it.
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import numpy as np

from .backends import get_backend, resolve_threads

__all__ = ["TwoLayerNet"]

PARAM_NAMES = ("W1", "b1", "W2", "b2")
NUMERICAL_METHODS = ("incremental", "full", "literal")


def _check_size(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer; got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}; got {value}")
    return int(value)


class TwoLayerNet:
    """Two-layer network: ``Affine -> sigmoid -> Affine -> softmax``, as in the book's chapter 4.

    Parameters
    ----------
    input_size, hidden_size, output_size : int
        784, 50 and 10 for the book's MNIST experiment. ``output_size >= 2``.
    weight_init_std : float, default 0.01
        Weights start as ``weight_init_std * randn``; biases as zeros.
    seed : int, optional
        Seed for the initial weights. With ``seed=s`` the weights equal the
        book's after ``np.random.seed(s)``; without it NumPy's global random
        state is used, exactly as the book does.
    backend : {"cython", "python"}, optional
        Which kernels to run; default ``$ZEROKARA_BACKEND``, else ``cython``
        when built, else ``python``.
    threads : int, optional
        Threads for the parallel kernels; default OpenMP's (``OMP_NUM_THREADS``
        or all cores). Results do not depend on it.

    Attributes
    ----------
    params : dict of str to ndarray
        ``W1`` (input_size, hidden_size), ``b1`` (hidden_size,),
        ``W2`` (hidden_size, output_size), ``b2`` (output_size,), float64.
        Update them in place (``params['W1'] -= lr * grad['W1']``) or assign
        new arrays of the same shapes.

    Notes
    -----
    ``x`` is float32 or float64 of shape (N, input_size) (one sample of shape
    (input_size,) also works); other real dtypes are converted to float64 and
    non-contiguous arrays are copied. ``t`` holds integer labels of shape
    (N,) or one-hot rows of shape (N, output_size).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_size: int,
        weight_init_std: float = 0.01,
        *,
        seed: Optional[int] = None,
        backend: Optional[str] = None,
        threads: Optional[int] = None,
    ) -> None:
        self.input_size = _check_size(input_size, "input_size")
        self.hidden_size = _check_size(hidden_size, "hidden_size")
        self.output_size = _check_size(output_size, "output_size", minimum=2)
        if not (np.isscalar(weight_init_std) and np.isreal(weight_init_std) and np.isfinite(weight_init_std)):
            raise ValueError(f"weight_init_std must be a finite number; got {weight_init_std!r}")
        self._backend = get_backend(backend)
        self.threads = threads
        resolve_threads(threads, self._backend)  # fail now, not at the first call
        randn = np.random.randn if seed is None else np.random.RandomState(seed).randn
        # Same draws in the same order as the book: W1, then W2.
        self.params: Dict[str, np.ndarray] = {
            "W1": weight_init_std * randn(self.input_size, self.hidden_size),
            "b1": np.zeros(self.hidden_size),
            "W2": weight_init_std * randn(self.hidden_size, self.output_size),
            "b2": np.zeros(self.output_size),
        }

    @property
    def backend(self) -> str:
        """The name of the backend that runs the kernels: ``"cython"`` or ``"python"``."""
        return self._backend.name

    def __repr__(self) -> str:
        return (
            f"TwoLayerNet(input_size={self.input_size}, hidden_size={self.hidden_size}, "
            f"output_size={self.output_size}, backend={self.backend!r})"
        )

    # ------------------------------------------------------------ validation

    def _threads(self, threads: Optional[int]) -> int:
        return resolve_threads(self.threads if threads is None else threads, self._backend)

    def _params(self):
        """The four parameters as C-contiguous float64 arrays of consistent shapes."""
        shapes = {
            "W1": (self.input_size, self.hidden_size),
            "b1": (self.hidden_size,),
            "W2": (self.hidden_size, self.output_size),
            "b2": (self.output_size,),
        }
        out = []
        for key in PARAM_NAMES:
            try:
                p = self.params[key]
                if type(p) is np.ndarray and p.dtype == np.float64 and p.flags.c_contiguous and p.shape == shapes[key]:
                    out.append(p)  # the usual case, checked in a microsecond
                    continue
            except (KeyError, TypeError):
                raise ValueError(f"params must be a dict with the keys {', '.join(PARAM_NAMES)}; {key} is missing") from None
            p = np.asarray(p)
            if p.dtype.kind not in "biuf":
                raise TypeError(f"params['{key}'] must be a real float array; got dtype {p.dtype}")
            if p.shape != shapes[key]:
                raise ValueError(f"params['{key}'] must have shape {shapes[key]}; got {p.shape}")
            out.append(np.ascontiguousarray(p, dtype=np.float64))
        return out

    def _input(self, x) -> np.ndarray:
        """x as a C-contiguous float32/float64 array of shape (N, input_size), N >= 1."""
        if isinstance(x, np.ndarray) and x.dtype in (np.float32, np.float64):
            arr = x
        else:
            arr = np.asarray(x)
            if arr.dtype.kind not in "biuf":
                raise TypeError(f"x must be a real-valued array (float32 or float64); got dtype {arr.dtype}")
            if arr.dtype not in (np.float32, np.float64):
                arr = arr.astype(np.float64)
        if arr.ndim == 1:
            arr = arr.reshape(1, -1)
        if arr.ndim != 2 or arr.shape[1] != self.input_size:
            hint = ""
            if arr.ndim > 2 and int(np.prod(arr.shape[1:])) == self.input_size:
                hint = " (flatten the images: load_mnist(flatten=True) or x.reshape(len(x), -1))"
            raise ValueError(f"x must have shape (N, {self.input_size}); got {arr.shape}{hint}")
        if arr.shape[0] == 0:
            raise ValueError("x is empty: a batch needs at least one sample")
        return np.ascontiguousarray(arr)

    def _labels(self, t, n: int) -> np.ndarray:
        """t (labels or one-hot) as C-contiguous int64 labels of shape (n,), each in 0..output_size-1."""
        arr = np.asarray(t)
        O = self.output_size
        if arr.ndim == 1 and arr.shape[0] == n and arr.dtype.kind in "iu":
            # The usual case in one pass: integer labels (a row of O labels
            # for one sample is not this: O >= 2). Seen as unsigned, a
            # negative label is larger than any valid one.
            labels = np.ascontiguousarray(arr, dtype=np.int64)
            if labels.view(np.uint64).max() < O:
                return labels
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"t must be integer labels or one-hot rows; got dtype {arr.dtype}")
        if arr.ndim == 2 or (arr.ndim == 1 and n == 1 and arr.shape[0] == O and arr.dtype.kind != "b" and O > 1 and arr.sum() == 1):
            onehot = arr.reshape(-1, O) if arr.ndim == 1 else arr
            if onehot.shape != (n, O):
                raise ValueError(f"one-hot t must have shape ({n}, {O}); got {arr.shape}")
            if not (((onehot == 0) | (onehot == 1)).all() and (onehot.sum(axis=1) == 1).all()):
                raise ValueError("one-hot t must hold exactly one 1 per row and 0 elsewhere")
            return np.ascontiguousarray(np.argmax(onehot, axis=1), dtype=np.int64)
        if arr.ndim == 0:
            arr = arr.reshape(1)
        if arr.ndim != 1:
            raise ValueError(f"t must have shape ({n},) (labels) or ({n}, {O}) (one-hot); got {arr.shape}")
        if arr.dtype.kind == "b":
            raise TypeError("t must be integer labels or one-hot rows; got booleans")
        if arr.dtype.kind == "f":
            if not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
                raise TypeError("t holds non-integer values: labels must be integers 0..output_size-1")
        if arr.shape[0] != n:
            raise ValueError(f"t has {arr.shape[0]} labels but x has {n} samples")
        hi = arr.max()
        lo = arr.min() if arr.dtype.kind != "u" else 0
        if lo < 0 or hi >= O:
            raise ValueError(
                f"t has labels from {lo:g} to {hi:g}, but output_size is {O} (labels must be 0..{O - 1})"
            )
        return np.ascontiguousarray(arr, dtype=np.int64)

    @staticmethod
    def _rows(rows, size: int) -> np.ndarray:
        """rows as a C-contiguous intp array of indices in 0..size-1, at least one."""
        arr = np.asarray(rows)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"rows must be integer indices; got dtype {arr.dtype}")
        if arr.ndim != 1 or arr.shape[0] == 0:
            raise ValueError(f"rows must be a non-empty 1-D array of indices; got shape {arr.shape}")
        arr = np.ascontiguousarray(arr, dtype=np.intp)
        # One pass: seen as unsigned, a negative index is larger than any valid one.
        if arr.view(np.uintp).max() >= size:
            raise ValueError(f"rows must be indices in 0..{size - 1} (rows of x); got {arr.min()} to {arr.max()}")
        return arr

    def _check_finite(self, ok: bool, x: np.ndarray, params) -> None:
        """Name the culprit when a result is not finite (the kernels are stable for finite input)."""
        if ok:
            return
        for key, p in zip(PARAM_NAMES, params):
            if not np.isfinite(p).all():
                raise ValueError(f"params['{key}'] contains NaN or inf")
        if not np.isfinite(x).all():
            raise ValueError("x contains NaN or inf")
        raise ValueError("the result is not finite: x or the parameters are too large")

    # ----------------------------------------------------------- the book's API

    def predict(self, x, *, threads: Optional[int] = None) -> np.ndarray:
        """Class probabilities ``softmax(sigmoid(x W1 + b1) W2 + b2)``.

        Parameters
        ----------
        x : ndarray of shape (N, input_size) or (input_size,)

        Returns
        -------
        y : ndarray of shape (N, output_size) (or (output_size,)), float64
        """
        one_sample = np.ndim(x) == 1
        xv = self._input(x)
        params = self._params()
        y = np.empty((xv.shape[0], self.output_size))
        self._backend.predict(xv, *params, y, self._threads(threads))
        self._check_finite(bool(np.isfinite(y).all()), xv, params)
        return y[0] if one_sample else y

    def loss(self, x, t, *, threads: Optional[int] = None) -> float:
        """The book's loss: mean over the batch of ``-log(y[n, t_n] + 1e-7)``.

        Parameters
        ----------
        x : ndarray of shape (N, input_size)
        t : ndarray of shape (N,) (labels) or (N, output_size) (one-hot)
        """
        xv = self._input(x)
        tv = self._labels(t, xv.shape[0])
        params = self._params()
        value = self._backend.loss(xv, tv, *params, self._threads(threads))
        self._check_finite(math.isfinite(value), xv, params)
        return value

    def accuracy(self, x, t, *, threads: Optional[int] = None) -> float:
        """Fraction of samples whose most probable class is the label (the book's ``accuracy``)."""
        xv = self._input(x)
        tv = self._labels(t, xv.shape[0])
        params = self._params()
        correct, nonfinite = self._backend.accuracy(xv, tv, *params, self._threads(threads))
        self._check_finite(nonfinite == 0, xv, params)
        return correct / float(xv.shape[0])

    def gradient(self, x, t, *, threads: Optional[int] = None) -> Dict[str, np.ndarray]:
        """Gradient of the loss by backpropagation (the book's ``gradient``).

        Returns
        -------
        grads : dict of new arrays ``W1 b1 W2 b2``, shaped like ``params``

        Notes
        -----
        As in the book, ``d loss / d a2 = (y - t) / N``: the derivative of the
        loss without its ``+ 1e-7``, which the numerical gradient does include
        (they differ by up to about 1e-7 relative to ``y_t``).
        """
        xv = self._input(x)
        tv = self._labels(t, xv.shape[0])
        params = self._params()
        grads = {key: np.empty_like(p) for key, p in zip(PARAM_NAMES, params)}
        value = self._backend.gradient(xv, tv, *params, *grads.values(), self._threads(threads))
        self._check_finite(math.isfinite(value), xv, params)
        return grads

    def sgd_step(self, x, t, lr: float, *, rows=None, threads: Optional[int] = None) -> float:
        """One step of the book's training loop: backprop, the SGD update in place, the loss after it.

        The same numbers, bit for bit, as the book's lines on the batch
        ``x_batch, t_batch = x[rows], t[rows]`` (all of ``x`` when ``rows``
        is None)::

            grad = self.gradient(x_batch, t_batch)
            for key in ('W1', 'b1', 'W2', 'b2'):
                self.params[key] -= lr * grad[key]
            return self.loss(x_batch, t_batch)

        but in one kernel call: the batch is read from ``x`` where it lies
        (no copy), and the compiled backend applies each row of ``dW1`` as
        soon as it is summed instead of storing the whole gradient.

        Parameters
        ----------
        x : ndarray of shape (M, input_size)
            The samples the batch is drawn from, e.g. the whole training set.
            A C-contiguous float32 or float64 array is used as it is; any
            other is gathered (``x[rows]``) and converted first.
        t : ndarray of shape (M,) (labels) or (M, output_size) (one-hot)
        lr : float
            The learning rate, positive and finite.
        rows : 1-D integer array, optional
            The batch: indices in ``0..M-1``, repeats allowed (the book's
            ``np.random.choice(train_size, batch_size)``).
        threads : int, optional

        Returns
        -------
        float
            The loss on the batch after the update.

        Raises
        ------
        ValueError
            As ``gradient`` does when the loss before the update is not
            finite (the parameters are then left as they were), and as
            ``loss`` does when the loss after it is not (the update is kept).
        """
        if not (type(lr) is float and 0.0 < lr < math.inf):  # else the general check
            if isinstance(lr, bool) or not (np.isscalar(lr) and np.isreal(lr) and np.isfinite(lr) and lr > 0):
                raise ValueError(f"lr must be a positive finite number; got {lr!r}")
            lr = float(lr)
        xa = x if isinstance(x, np.ndarray) else np.asarray(x)
        if rows is None:
            xv = self._input(xa)
            idx = np.arange(xv.shape[0], dtype=np.intp)
            tv = self._labels(t, xv.shape[0])
        else:
            if xa.ndim != 2:
                raise ValueError(f"x must have shape (M, {self.input_size}) when rows are given; got {xa.shape}")
            idx = self._rows(rows, xa.shape[0])
            ta = t if isinstance(t, np.ndarray) else np.asarray(t)
            if ta.ndim == 0 or ta.shape[0] != xa.shape[0]:
                raise ValueError(f"t has {len(ta) if ta.ndim else 0} labels but x has {xa.shape[0]} samples")
            tv = self._labels(ta[idx], idx.shape[0])
            if xa.dtype in (np.float32, np.float64) and xa.flags.c_contiguous:
                xv = self._input(xa)  # checks the shape; no copy
            else:  # convert the batch only, never the whole set
                xv = self._input(xa[idx])
                idx = np.arange(idx.shape[0], dtype=np.intp)
        params = self._params()
        if not all(p is self.params[key] and p.flags.writeable for key, p in zip(PARAM_NAMES, params)):
            # Parameters the kernels cannot update in place (another dtype,
            # a view, read-only...): the book's lines, literally.
            x_batch = xv[idx]
            grad = self.gradient(x_batch, tv, threads=threads)
            for key in PARAM_NAMES:
                self.params[key] -= lr * grad[key]
            return self.loss(x_batch, tv, threads=threads)
        before, after = self._backend.sgd_step(xv, idx, tv, *params, lr, self._threads(threads))
        if not (math.isfinite(before) and math.isfinite(after)):
            self._check_finite(False, xv[idx], params)
        return after

    def _sgd_stepper(self, x, t, lr: float, *, threads: Optional[int] = None):
        """``step(rows)``, the same as ``sgd_step(x, t, lr, rows=rows, threads=threads)``, for a loop.

        ``x``, ``t``, ``lr`` and ``threads`` are checked and converted once,
        here, instead of at every call: the training loop calls ``step``
        thousands of times with the same training set. ``step`` takes the
        batch's row indices as the book's sampler gives them (a 1-D integer
        array) and returns the loss after the update, the same numbers bit
        for bit as ``sgd_step``.

        The labels are copied (as int64, 8 bytes a sample): a later change
        to ``t`` does not reach the loop. ``x`` is read where it lies, as
        ``sgd_step`` reads it. When the arrays are not ones the kernels can
        read as they are (``x`` not C-contiguous float32/float64), or when a
        call finds ``params`` no longer holding the arrays it was made with,
        ``step`` calls ``sgd_step`` itself, which checks everything.

        ``step.many(rows2d, out, stop=None)`` makes the steps of several
        batches in one kernel call, ``rows2d[0]``, ``rows2d[1]``, ... (a 2-D
        integer array, a batch a row): it appends each step's loss to the
        list ``out`` and returns None, or, at the first step whose loss is
        not finite, the ValueError that ``step`` would raise there (that
        step's loss is not appended; the steps before it are applied). With
        ``stop``, Python's signal handlers run after every step and the
        steps end early once ``stop()`` is true; an exception a handler
        raises (KeyboardInterrupt) still leaves the losses of the steps
        done in ``out``. The same numbers, bit for bit, as ``step`` on the
        batches one by one.
        """
        if not (type(lr) is float and 0.0 < lr < math.inf):
            if isinstance(lr, bool) or not (np.isscalar(lr) and np.isreal(lr) and np.isfinite(lr) and lr > 0):
                raise ValueError(f"lr must be a positive finite number; got {lr!r}")
            lr = float(lr)
        xa = x if isinstance(x, np.ndarray) else np.asarray(x)

        def checked(rows):
            return self.sgd_step(x, t, lr, rows=rows, threads=threads)

        if not (xa.ndim == 2 and xa.dtype in (np.float32, np.float64) and xa.flags.c_contiguous):
            return checked
        # A view of our own: reshaping the caller's array in place does not
        # change the shape the kernel is given for this buffer.
        xv = self._input(xa).view()
        M = xv.shape[0]
        ta = t if isinstance(t, np.ndarray) else np.asarray(t)
        if ta.ndim == 0 or ta.shape[0] != M:
            raise ValueError(f"t has {len(ta) if ta.ndim else 0} labels but x has {M} samples")
        labels = np.array(self._labels(ta, M), dtype=np.int64, copy=True)
        take = labels.take
        params = self._params()
        if not all(p is self.params[key] and p.flags.writeable for key, p in zip(PARAM_NAMES, params)):
            return checked
        W1, b1, W2, b2 = params
        P = self.params
        kernel = self._backend.sgd_step
        nthreads = self._threads(threads)
        intp = np.dtype(np.intp)

        def step(rows) -> float:
            if not (
                type(rows) is np.ndarray and rows.dtype == intp and rows.ndim == 1 and rows.shape[0] > 0
                and rows.flags.c_contiguous
                and P["W1"] is W1 and P["b1"] is b1 and P["W2"] is W2 and P["b2"] is b2
            ):
                return checked(rows)
            # Both backends' kernels check every row before they read x
            # (ValueError); "clip" only keeps take() from raising first.
            before, after = kernel(xv, rows, take(rows, mode="clip"), W1, b1, W2, b2, lr, nthreads)
            if not (math.isfinite(before) and math.isfinite(after)):
                self._check_finite(False, xv[rows], params)
            return after

        steps_kernel = self._backend.sgd_steps

        def many(rows2d, out: list, stop=None) -> Optional[ValueError]:
            if not (
                type(rows2d) is np.ndarray and rows2d.dtype == intp and rows2d.ndim == 2
                and rows2d.shape[0] > 0 and rows2d.shape[1] > 0 and rows2d.flags.c_contiguous
                and P["W1"] is W1 and P["b1"] is b1 and P["W2"] is W2 and P["b2"] is b2
            ):
                for rows in rows2d:
                    try:
                        out.append(step(np.asarray(rows)))
                    except ValueError as exc:
                        return exc
                    if stop is not None and stop():
                        break
                return None
            losses = np.empty(rows2d.shape[0])
            done = np.zeros(1, dtype=np.intp)
            try:
                ok = steps_kernel(xv, rows2d, take(rows2d, mode="clip"), W1, b1, W2, b2, lr, nthreads,
                                  losses, done, stop)
            except ValueError as exc:  # a row out of range: no step made
                return exc
            except BaseException:  # e.g. KeyboardInterrupt from a signal handler
                out.extend(losses[: done[0]].tolist())
                raise
            finished = int(done[0])
            if ok:
                out.extend(losses[:finished].tolist())
                return None
            # The step that ended it: applied if its loss after is not finite.
            failed = finished - 1 if finished and not math.isfinite(losses[finished - 1]) else finished
            out.extend(losses[:failed].tolist())
            try:
                self._check_finite(False, xv[rows2d[failed]], params)
            except ValueError as exc:
                return exc
            return None  # not reached: _check_finite(False, ...) raises

        step.many = many
        return step

    def numerical_gradient(
        self,
        x,
        t,
        *,
        h: float = 1e-4,
        method: str = "incremental",
        threads: Optional[int] = None,
    ) -> Dict[str, np.ndarray]:
        """Gradient of the loss by central differences, every parameter perturbed by ±h.

        Parameters
        ----------
        x : ndarray of shape (N, input_size)
        t : ndarray of shape (N,) (labels) or (N, output_size) (one-hot)
        h : float, default 1e-4
            The book's step.
        method : {"incremental", "full", "literal"}
            ``full`` is the book's algorithm (a whole forward pass per
            perturbation); ``incremental`` computes the same differences
            recomputing only what a perturbation changes; ``literal`` is
            ``incremental`` forced onto its exp/log evaluation (the fallback
            it uses on its own when its series would not be exact).
        threads : int, optional

        Returns
        -------
        grads : dict of new arrays ``W1 b1 W2 b2``:
            ``(L(p + h) - L(p - h)) / 2h`` for every parameter ``p``.
        """
        if method not in NUMERICAL_METHODS:
            raise ValueError(f"method must be one of {', '.join(map(repr, NUMERICAL_METHODS))}; got {method!r}")
        if isinstance(h, bool) or not (np.isscalar(h) and np.isreal(h) and np.isfinite(h) and h > 0):
            raise ValueError(f"h must be a positive finite number; got {h!r}")
        xv = self._input(x)
        tv = self._labels(t, xv.shape[0])
        params = self._params()
        if not np.isfinite(xv).all():
            raise ValueError("x contains NaN or inf")
        self._check_finite(all(np.isfinite(p).all() for p in params), xv, params)
        grads = {key: np.empty_like(p) for key, p in zip(PARAM_NAMES, params)}
        self._backend.numerical_gradient(xv, tv, *params, float(h), method, *grads.values(), self._threads(threads))
        return grads
