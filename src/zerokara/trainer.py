"""The book's mini-batch training loop (ch04 ``train_neuralnet.py``) and its history.

Data flows one way: :func:`train` receives a network and arrays, runs
mini-batch SGD and returns a :class:`History`. It never knows how a gradient
is computed: it calls ``net.gradient`` (backprop) or
``net.numerical_gradient(..., method=...)``, and ``net.loss``. Plots and
files are made from the history by :mod:`zerokara.plot` and
:func:`save_history` / :func:`save_params`.

One iteration is the book's, line for line::

    batch_mask = np.random.choice(train_size, batch_size)
    grad = network.gradient(x_batch, t_batch)          # or numerical_gradient
    for key in ('W1', 'b1', 'W2', 'b2'):
        network.params[key] -= learning_rate * grad[key]
    loss = network.loss(x_batch, t_batch)              # after the update
    train_loss_list.append(loss)

With backprop, a network that has ``sgd_step`` (``TwoLayerNet`` does) runs
the gradient, update and loss lines as one call,
``loss = network.sgd_step(x_train, t_train, learning_rate, rows=batch_mask)``:
the same numbers bit for bit, without copying the batch out of ``x_train``.
``TwoLayerNet._sgd_stepper`` makes that call with ``x_train``, ``t_train``
and the learning rate checked once per run instead of once per iteration,
and its ``many`` makes many iterations in one kernel call (``STEPS_PER_CALL``
at first, then about ``CALL_SECONDS`` worth, at most
``MAX_STEPS_PER_CALL``), never past the end of an epoch: the same numbers
again, with Python's signal handlers run and Ctrl-C checked after every
step, so the run still stops after the iteration in which Ctrl-C came.

What differs from the book, and why:

* **Epochs are counted exactly.** The book evaluates when
  ``i % iter_per_epoch == 0`` with ``iter_per_epoch = train_size /
  batch_size``, a float: for a batch of 128 over 60000 samples that is
  468.75 and the test holds 6 times in 10000 iterations instead of 22.
  Here epoch ``e`` (e = 1, 2, ...) ends after iteration
  ``ceil(e * train_size / batch_size)`` (iterations are counted from 1):
  the iteration in which the ``e * train_size``-th sample is drawn. For
  60000 / 100 that is every 600 iterations, as in the book. Accuracy is
  evaluated once before training (epoch 0) and after each completed epoch.
* **Batches come from a seeded** ``np.random.RandomState``, not NumPy's
  global state, so the same seed gives the same run bit for bit, for any
  thread count (the kernels are bitwise independent of it).
* **Sampling without replacement** (``replace=False``): the samples are
  drawn as a stream of permutations, a fresh one per epoch, cut into
  consecutive batches of ``batch_size``. When ``batch_size`` does not
  divide ``train_size``, the batch that straddles an epoch's end takes the
  rest of that epoch's permutation and the start of the next one: every
  batch has the full size (so the loss and the learning rate mean the same
  at every iteration), every sample is used exactly once per epoch, and
  epochs end at the same iterations as with replacement.
* **Ctrl-C** stops after the current iteration, evaluates once, and
  returns the history of what was learned (``status == "interrupted"``).
* **A loss that is not finite** (the learning rate is too large: the
  parameters overflowed) stops the run with a message naming the iteration
  (``status == "diverged"``); the network's parameters are restored to
  those of the last evaluation, so what is saved is usable.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, IO, List, Optional, Union

import numpy as np

from .datasets import _atomic_write

__all__ = [
    "TrainConfig",
    "EpochRecord",
    "History",
    "train",
    "epoch_end_iteration",
    "completed_epochs",
    "save_history",
    "save_params",
    "atomic_write",
]

PARAM_NAMES = ("W1", "b1", "W2", "b2")
GRAD_METHODS = ("numerical", "backprop")
NUMERICAL_METHODS = ("incremental", "full", "literal")

#: How often (seconds) the progress bar's loss and counter are refreshed. A
#: backprop iteration takes well under a millisecond: touching the bar every
#: iteration would cost more than the arithmetic.
PROGRESS_INTERVAL = 0.2

#: How many iterations' batches (with replacement) are drawn in one call to
#: the trainer's generator: the same numbers as one call per batch, and 0.5
#: instead of 7 microseconds a batch.
SAMPLE_AHEAD = 1024

#: Iterations in the first call of the step function's ``many``
#: (TwoLayerNet's); later calls make as many as take about CALL_SECONDS,
#: by the calls before, up to MAX_STEPS_PER_CALL (and never past the end of
#: an epoch). Ctrl-C is seen after every step either way; the progress bar
#: moves once a call. Longer calls are quicker per step: the book's backprop
#: step took 0.976 of its time in calls of up to 1024 steps (an epoch's 600)
#: against calls of 64 (0.983 with OpenMP's threads never sleeping between
#: calls), 0.990 in calls of 256.
STEPS_PER_CALL = 64
MAX_STEPS_PER_CALL = 1024
CALL_SECONDS = 0.2


# --------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a positive integer; got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value}")
    return int(value)


def _positive_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a positive number; got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number; got {value!r}")
    return float(value)


@dataclass(frozen=True)
class TrainConfig:
    """The mini-batch loop's settings; the defaults are the book's (ch04 ``train_neuralnet.py``).

    Parameters
    ----------
    iters : int, default 10000
        Number of iterations (the book's ``iters_num``).
    batch_size : int, default 100
    lr : float, default 0.1
        The learning rate (the book's ``learning_rate``).
    grad : {"numerical", "backprop"}, default "numerical"
        ``numerical`` calls ``net.numerical_gradient`` (the chapter's
        method), ``backprop`` calls ``net.gradient``.
    numgrad_method : {"incremental", "full", "literal"}, default "incremental"
        Passed to ``net.numerical_gradient(method=...)``; ``full`` is the
        book's brute force (seconds per iteration).
    h : float, default 1e-4
        The numerical gradient's step (the book's).
    seed : int, default 0
        Seeds the batch sampler when :func:`train` is not given ``rng``.
    replace : bool, default True
        Sample each batch with replacement, as the book does; False draws a
        fresh permutation per epoch (see the module notes).
    threads : int, optional
        Passed to every call of the network; None leaves the network's own.
    """

    iters: int = 10000
    batch_size: int = 100
    lr: float = 0.1
    grad: str = "numerical"
    numgrad_method: str = "incremental"
    h: float = 1e-4
    seed: int = 0
    replace: bool = True
    threads: Optional[int] = None

    def __post_init__(self) -> None:
        _positive_int(self.iters, "iters")
        _positive_int(self.batch_size, "batch_size")
        _positive_float(self.lr, "lr")
        _positive_float(self.h, "h")
        if self.grad not in GRAD_METHODS:
            raise ValueError(f"grad must be one of {', '.join(map(repr, GRAD_METHODS))}; got {self.grad!r}")
        if self.numgrad_method not in NUMERICAL_METHODS:
            raise ValueError(
                f"numgrad_method must be one of {', '.join(map(repr, NUMERICAL_METHODS))}; "
                f"got {self.numgrad_method!r}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be an integer from 0 to 2**32 - 1; got {self.seed!r}")
        if not isinstance(self.replace, (bool, np.bool_)):
            raise TypeError(f"replace must be True or False; got {self.replace!r}")
        if self.threads is not None:
            _positive_int(self.threads, "threads")

    def check_train_size(self, train_size: int) -> None:
        """Raise ValueError if these settings cannot run on ``train_size`` samples."""
        if not self.replace and self.batch_size > train_size:
            raise ValueError(
                f"batch_size is {self.batch_size}, larger than the {train_size} training samples: "
                "sampling without replacement needs batch_size <= train_size"
            )

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------
# Epochs
# --------------------------------------------------------------------------


def epoch_end_iteration(epoch: int, train_size: int, batch_size: int) -> int:
    """The iteration (counted from 1) after which epoch ``epoch`` is complete.

    ``ceil(epoch * train_size / batch_size)``, in integers: the iteration in
    which the ``epoch * train_size``-th sample is drawn. ``epoch = 0`` gives 0
    (before training).

    Examples
    --------
    >>> [epoch_end_iteration(e, 60000, 100) for e in range(4)]
    [0, 600, 1200, 1800]
    >>> [epoch_end_iteration(e, 1000, 128) for e in range(4)]
    [0, 8, 16, 24]
    """
    return -(-epoch * train_size // batch_size)


def completed_epochs(iterations: int, train_size: int, batch_size: int) -> int:
    """How many epochs are complete after ``iterations`` iterations: ``floor(iterations * batch_size / train_size)``.

    For the book's batch of 128 over 60000 samples and 10000 iterations this
    is 21 (22 evaluations with epoch 0), where the book's float test finds 6.
    """
    return iterations * batch_size // train_size


# --------------------------------------------------------------------------
# History
# --------------------------------------------------------------------------


@dataclass
class EpochRecord:
    """One evaluation of the accuracy on the full training and test sets.

    Attributes
    ----------
    epoch : float
        0 before training, ``e`` after epoch ``e``; for an evaluation after
        an iteration that ends no epoch (end of run, Ctrl-C),
        ``iteration * batch_size / train_size``.
    iteration : int
        Iterations done when it was evaluated (0 before training).
    train_acc, test_acc : float
    time : float
        Wall time in seconds from the start of the run to the end of this evaluation.
    eval_time : float
        Seconds this evaluation took (part of ``time``).
    """

    epoch: float
    iteration: int
    train_acc: float
    test_acc: float
    time: float
    eval_time: float


@dataclass
class History:
    """What a run learned: the book's three lists, with iterations and times.

    Attributes
    ----------
    config : TrainConfig
    train_size, test_size : int
    loss : list of float
        The loss on each iteration's batch after that iteration's update (the
        book's ``train_loss_list``); NaN for an iteration that diverged.
    epochs : list of EpochRecord
        Epoch 0 (before training) and every completed epoch.
    final : EpochRecord or None
        The evaluation after the last iteration when that iteration did not
        end an epoch (end of run, Ctrl-C); None otherwise.
    iterations : int
        Iterations completed.
    status : {"completed", "interrupted", "diverged"}
    message : str
        Why the run stopped early ("" when it completed).
    params_iteration : int
        The iteration the network's parameters are from: ``iterations``,
        except after a divergence, when they were restored to the last
        evaluation's.
    wall_time : float
        Seconds from the start of :func:`train` to its return.
    """

    config: TrainConfig
    train_size: int
    test_size: int
    loss: List[float] = field(default_factory=list)
    epochs: List[EpochRecord] = field(default_factory=list)
    final: Optional[EpochRecord] = None
    iterations: int = 0
    status: str = "completed"
    message: str = ""
    params_iteration: int = 0
    wall_time: float = 0.0

    # The book's names, for code written after ch04/train_neuralnet.py.
    @property
    def train_loss_list(self) -> List[float]:
        return self.loss

    @property
    def train_acc_list(self) -> List[float]:
        """Train accuracy at epoch 0 and after each completed epoch."""
        return [r.train_acc for r in self.epochs]

    @property
    def test_acc_list(self) -> List[float]:
        """Test accuracy at epoch 0 and after each completed epoch."""
        return [r.test_acc for r in self.epochs]

    @property
    def evaluations(self) -> List[EpochRecord]:
        """Every evaluation in order: ``epochs`` and then ``final`` if there is one."""
        return self.epochs + ([self.final] if self.final is not None else [])

    @property
    def last(self) -> EpochRecord:
        """The latest evaluation (``final`` if there is one, else the last epoch)."""
        return self.evaluations[-1]

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready dict (non-finite losses become None, as JSON has no NaN)."""
        return {
            "config": self.config.to_dict(),
            "train_size": self.train_size,
            "test_size": self.test_size,
            "iterations": self.iterations,
            "status": self.status,
            "message": self.message,
            "params_iteration": self.params_iteration,
            "wall_time": self.wall_time,
            "epochs": [asdict(r) for r in self.epochs],
            "final": asdict(self.final) if self.final is not None else None,
            "loss": [v if math.isfinite(v) else None for v in self.loss],
        }


# --------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------


class _Sampler:
    """Batch indices, drawn as the book draws them or as a stream of permutations.

    ``next()`` gives the next batch, ``take(k)`` the next ``k`` batches as
    the rows of one C-contiguous ``(k, batch_size)`` intp array (the same
    batches as ``k`` calls of ``next``). With replacement and ``ahead`` > 1,
    the batches of up to ``ahead`` iterations are drawn in one ``randint``
    call and handed out from it: the same numbers as one call per batch
    (``RandomState.randint`` draws each value from its own 32-bit words, in
    order; tested), at a tenth of the cost. Only for a generator nobody else
    draws from between batches (the trainer's own), and never past
    ``total`` batches in all.
    """

    def __init__(self, rng: np.random.RandomState, train_size: int, batch_size: int, replace: bool,
                 ahead: int = 1, total: int = 0) -> None:
        self.rng, self.n, self.b = rng, train_size, batch_size
        if replace and ahead > 1:
            self.ahead, self.left = ahead, total
            self.pool = np.empty((0, batch_size), dtype=np.intp)
            self.pos = 0
            self.next = self._with_replacement_ahead
            self.take = self._take_ahead
        else:
            if replace:
                self.next = self._with_replacement
            else:
                self.perm = rng.permutation(train_size)
                self.pos = 0
                self.next = self._without_replacement
            self.take = self._take_one_by_one

    def _with_replacement(self) -> np.ndarray:
        # Exactly the book's np.random.choice(train_size, batch_size): for
        # replace=True without p, RandomState.choice returns
        # randint(0, train_size, batch_size) (tested); calling it directly
        # skips choice's argument checks (about 5 us of its 12).
        return self.rng.randint(0, self.n, self.b)

    def _refill(self) -> None:
        k = max(1, min(self.ahead, self.left))
        self.left -= k
        # intp: what the kernels take (randint's default integer is C long).
        self.pool = np.ascontiguousarray(self.rng.randint(0, self.n, (k, self.b)), dtype=np.intp)
        self.pos = 0

    def _with_replacement_ahead(self) -> np.ndarray:
        if self.pos == len(self.pool):
            self._refill()
        self.pos += 1
        return self.pool[self.pos - 1]  # a row of the pool: C-contiguous

    def _take_ahead(self, k: int) -> np.ndarray:
        parts = []
        while k > 0:
            if self.pos == len(self.pool):
                self._refill()
            c = min(k, len(self.pool) - self.pos)
            parts.append(self.pool[self.pos : self.pos + c])
            self.pos += c
            k -= c
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _take_one_by_one(self, k: int) -> np.ndarray:
        batches = np.empty((k, self.b), dtype=np.intp)
        for j in range(k):
            batches[j] = self.next()
        return batches

    def _without_replacement(self) -> np.ndarray:
        end = self.pos + self.b
        if end < self.n:
            batch = self.perm[self.pos : end]
            self.pos = end
            return batch
        # This batch reaches the end of the epoch's permutation: take its
        # rest and continue with a fresh permutation (the next epoch).
        head = self.perm[self.pos :]
        self.perm = self.rng.permutation(self.n)
        self.pos = end - self.n
        return np.concatenate((head, self.perm[: self.pos])) if self.pos else head


class _StopOnSigint:
    """While active, the first Ctrl-C asks the loop to stop after the current iteration.

    A second Ctrl-C raises KeyboardInterrupt at once, as usual. Installed only
    in the main thread and only over Python's default handler (a terminal,
    or Jupyter while a cell runs); elsewhere a KeyboardInterrupt raised
    inside an iteration is caught by the loop instead.
    """

    def __init__(self, notify: Callable[[str], None]) -> None:
        self.requested = False
        self._notify = notify
        self._previous: Any = None

    def __enter__(self) -> "_StopOnSigint":
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self._notify("Interrupted: stopping after this iteration (press Ctrl-C again to quit at once)")

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _progress_disabled(progress: Optional[bool]) -> Optional[bool]:
    """tqdm's ``disable``: True when asked or TQDM_DISABLE is set, None (= off unless a terminal) by default."""
    if progress is False or os.environ.get("TQDM_DISABLE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return True
    return False if progress else None


def _params_finite(params: Dict[str, np.ndarray]) -> bool:
    return all(bool(np.isfinite(params[key]).all()) for key in params)


def _is_overflow(exc: ValueError) -> bool:
    """True if TwoLayerNet's error says a result or parameter is not finite."""
    return any(s in str(exc) for s in ("not finite", "NaN or inf"))


def train(
    net: Any,
    x_train: np.ndarray,
    t_train: np.ndarray,
    x_test: np.ndarray,
    t_test: np.ndarray,
    config: Optional[TrainConfig] = None,
    *,
    rng: Union[np.random.RandomState, int, None] = None,
    progress: Optional[bool] = None,
    verbose: bool = True,
) -> History:
    """Train ``net`` in place by mini-batch SGD, as the book's ch04 ``train_neuralnet.py``.

    Parameters
    ----------
    net : TwoLayerNet
        Or any object with the book's ``params``, ``gradient`` (or
        ``numerical_gradient``), ``loss`` and ``accuracy``.
    x_train : ndarray of shape (train_size, input_size)
        Used as given: keep the float32 arrays ``load_mnist`` returns (a
        float64 copy of MNIST would double the memory).
    t_train : ndarray of shape (train_size,) or (train_size, output_size)
        Integer labels (cheaper) or one-hot rows.
    x_test, t_test : ndarray
        The test set, for the accuracy after each epoch.
    config : TrainConfig, optional
        Default ``TrainConfig()``: the book's settings.
    rng : numpy.random.RandomState or int, optional
        Draws the batches; default ``RandomState(config.seed)``. Pass a
        RandomState to continue a stream (e.g. the one that drew the
        initial weights, as the book's global ``np.random`` does).
    progress : bool, optional
        Show a progress bar (tqdm.auto) with the loss and ETA. Default: only
        when stderr is a terminal or in Jupyter; ``TQDM_DISABLE=1`` turns
        it off.
    verbose : bool, default True
        Print the book's accuracy line after each evaluation, and why the
        run stopped if it stopped early.

    Returns
    -------
    History
        ``status`` says whether the run completed, was interrupted (Ctrl-C)
        or diverged; the network's parameters are the ones the history's
        last evaluation measured, or later ones (``params_iteration``).

    Notes
    -----
    Epoch ``e`` ends after iteration ``ceil(e * train_size / batch_size)``;
    see the module docstring for this rule and for sampling without
    replacement. The only work beyond the book's per iteration is one clock
    read, a check that the loss is finite and two integer comparisons.
    """
    from tqdm.auto import tqdm

    config = TrainConfig() if config is None else config
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig; got {type(config).__name__}")
    train_size, test_size = len(x_train), len(x_test)
    if len(t_train) != train_size:
        raise ValueError(f"t_train has {len(t_train)} labels but x_train has {train_size} samples")
    if len(t_test) != test_size:
        raise ValueError(f"t_test has {len(t_test)} labels but x_test has {test_size} samples")
    x_train, t_train = np.asarray(x_train), np.asarray(t_train)  # no copy for arrays
    if train_size == 0 or test_size == 0:
        raise ValueError("x_train and x_test must hold at least one sample each")
    config.check_train_size(train_size)
    own_rng = rng is None or isinstance(rng, (int, np.integer))
    if own_rng:
        rng = np.random.RandomState(config.seed if rng is None else rng)

    start = time.perf_counter()
    history = History(config=config, train_size=train_size, test_size=test_size)
    iters, batch_size, lr = config.iters, config.batch_size, config.lr
    kw = {} if config.threads is None else {"threads": config.threads}
    # The book's three lines (gradient, update, loss) in one call where the
    # network has it: TwoLayerNet.sgd_step, the same numbers bit for bit;
    # TwoLayerNet checks x_train, t_train and lr once, for the whole loop.
    sgd_step = None
    if config.grad == "backprop":
        stepper = getattr(net, "_sgd_stepper", None)
        if stepper is not None:
            sgd_step = stepper(x_train, t_train, lr, **kw)
        elif getattr(net, "sgd_step", None) is not None:
            net_step = net.sgd_step

            def sgd_step(batch_mask):
                return net_step(x_train, t_train, lr, rows=batch_mask, **kw)
    if config.grad == "backprop":
        gradient = net.gradient
        grad_kw = kw
    else:
        gradient = net.numerical_gradient
        grad_kw = {"h": config.h, "method": config.numgrad_method, **kw}
    params = net.params
    losses = history.loss
    append = losses.append
    # Batches drawn ahead only from the trainer's own generator: one passed
    # in may be drawn from between batches (e.g. by the network).
    sampler = _Sampler(rng, train_size, batch_size, config.replace,
                       ahead=SAMPLE_AHEAD if own_rng else 1, total=iters)
    sample, sample_many = sampler.next, sampler.take
    snapshot: Dict[str, np.ndarray] = {}

    bar = tqdm(
        total=iters,
        unit="it",
        desc=f"{config.grad}",
        disable=_progress_disabled(progress),
        dynamic_ncols=True,
        leave=True,
    )

    def say(line: str, err: bool = False) -> None:
        if verbose:
            tqdm.write(line, file=sys.stderr if err else sys.stdout)

    def evaluate(iteration: int, epoch: Optional[int]) -> EpochRecord:
        t0 = time.perf_counter()
        train_acc = float(net.accuracy(x_train, t_train, **kw))
        test_acc = float(net.accuracy(x_test, t_test, **kw))
        now = time.perf_counter()
        exact = epoch if epoch is not None else round(iteration * batch_size / train_size, 4)
        record = EpochRecord(exact, iteration, train_acc, test_acc, now - start, now - t0)
        label = f"epoch {epoch}" if epoch is not None else f"end, iteration {iteration} (epoch {exact:g})"
        # The book's line: print("train acc, test acc | " + ...), prefixed.
        say(f"{label} | train acc, test acc | {train_acc:.4f}, {test_acc:.4f}")
        for key in PARAM_NAMES:
            snapshot[key] = np.array(params[key], copy=True)
        history.params_iteration = iteration
        return record

    done = 0  # iterations completed
    per_call = STEPS_PER_CALL  # iterations in the next call of many()
    # Several iterations per kernel call where the step function can (the
    # compiled TwoLayerNet's): the same numbers, a few microseconds less
    # per iteration.
    many = getattr(sgd_step, "many", None) if sgd_step is not None else None
    if sgd_step is None:
        x_buffer = np.empty((batch_size,) + x_train.shape[1:], dtype=x_train.dtype)
        t_buffer = np.empty((batch_size,) + t_train.shape[1:], dtype=t_train.dtype)
    try:
        with _StopOnSigint(lambda line: say(line, err=True)) as sigint:
            history.epochs.append(evaluate(0, 0))
            epoch = 1
            next_epoch_end = epoch_end_iteration(1, train_size, batch_size)
            shown = 0
            next_show = time.perf_counter() + PROGRESS_INTERVAL

            def stop() -> bool:
                return sigint.requested

            try:
                while done < iters:
                    if many is not None:
                        # Up to per_call iterations in one kernel call,
                        # never past the end of an epoch; Ctrl-C is seen
                        # after every step (stop), as below.
                        k = min(per_call, iters - done, next_epoch_end - done)
                        call_start = time.perf_counter()
                        error = many(sample_many(k), losses, stop)
                        took, made = time.perf_counter() - call_start, len(losses) - done
                        done = len(losses)
                        if made > 0:
                            per_call = max(1, min(MAX_STEPS_PER_CALL, int(CALL_SECONDS * made / max(took, 1e-9))))
                        if error is None:
                            loss, cause = losses[-1], ""
                        else:
                            # As a ValueError raised by sgd_step below.
                            if _params_finite(params) and not _is_overflow(error):
                                raise error
                            loss, cause = math.nan, f" ({error})"
                            append(loss)
                            done += 1
                    else:
                        batch_mask = sample()
                        try:
                            if sgd_step is not None:
                                # Reads the batch from x_train where it lies.
                                loss = sgd_step(batch_mask)
                            else:
                                # x_train[batch_mask], as the book writes it;
                                # take() is the same copy, ~15% quicker, into
                                # buffers reused across iterations (a fresh
                                # 300 KB array per step costs page faults).
                                x_batch = x_train.take(batch_mask, axis=0, out=x_buffer[: len(batch_mask)])
                                t_batch = t_train.take(batch_mask, axis=0, out=t_buffer[: len(batch_mask)])
                                grad = gradient(x_batch, t_batch, **grad_kw)
                                for key in PARAM_NAMES:
                                    # The book's params[key] -= lr * grad[key],
                                    # with lr * grad formed in the gradient's own
                                    # (fresh) array: the same numbers.
                                    step = np.multiply(grad[key], lr, out=grad[key])
                                    params[key] -= step
                                loss = net.loss(x_batch, t_batch, **kw)
                        except ValueError as exc:
                            # TwoLayerNet's kernels are stable for any finite
                            # input, so a loss that cannot be computed means
                            # parameters so large that the results overflow,
                            # and it says so ("not finite", "NaN or inf"). The
                            # data passed the full-set accuracy check at epoch
                            # 0, so the parameters are the cause. Any other
                            # error is a real one and goes up.
                            if _params_finite(params) and not _is_overflow(exc):
                                raise
                            loss, cause = math.nan, f" ({exc})"
                        else:
                            cause = ""
                        append(loss)
                        done += 1
                    if not math.isfinite(loss):
                        history.status = "diverged"
                        history.message = (
                            f"loss is {loss} at iteration {done}{cause}: the learning rate {lr:g} is too "
                            f"large; try a smaller one (e.g. {lr / 10:g})."
                        )
                        break
                    if done == next_epoch_end:
                        history.epochs.append(evaluate(done, epoch))
                        epoch += 1
                        next_epoch_end = epoch_end_iteration(epoch, train_size, batch_size)
                    if sigint.requested:
                        history.status = "interrupted"
                        break
                    now = time.perf_counter()
                    if now >= next_show:
                        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                        bar.update(done - shown)
                        shown = done
                        next_show = now + PROGRESS_INTERVAL
            except KeyboardInterrupt:
                # Raised inside an iteration because no handler of ours
                # could be installed (not the main thread, another handler)
                # or by the code the loop calls. Raised in the gradient, as
                # usual, it leaves the parameters of the previous iteration;
                # raised in the middle of the update, it may leave this
                # iteration half applied (our handler never does that).
                # Between the steps of one call of many(), it leaves the
                # losses of the steps done in history.loss.
                history.status = "interrupted"
                if many is not None:
                    done = len(losses)
            if history.status == "interrupted":
                history.message = f"interrupted by Ctrl-C after iteration {done}"
                say(f"Interrupted after iteration {done} of {iters}.", err=True)
            bar.update(done - shown)
            if losses:
                bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
            bar.close()

            history.iterations = done
            if history.status == "diverged":
                # Keep what was learned: the parameters of the last evaluation.
                for key in PARAM_NAMES:
                    np.copyto(params[key], snapshot[key])
                say(history.message, err=True)
            elif history.epochs[-1].iteration != done:
                history.final = evaluate(done, None)
    finally:
        bar.close()
        history.wall_time = time.perf_counter() - start
    return history


# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------


def atomic_write(path: Union[str, "os.PathLike[str]"], write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file through ``write(fileobj)`` into a temporary file, then rename it into place.

    The temporary file is in the same folder, so ``os.replace`` is atomic:
    readers see the old file or the whole new one, never half of it. It is
    synced to the disk before the rename and gets the permissions a plain
    ``open()`` would give. (The data loader's own writer, shared.)
    """
    path = Path(path)
    _atomic_write(path, write)
    return path


def write_json(path: Union[str, "os.PathLike[str]"], data: Any) -> Path:
    """``json.dump`` (strict: no NaN) through :func:`atomic_write`."""
    text = json.dumps(data, indent=1, allow_nan=False) + "\n"
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def save_params(params: Dict[str, np.ndarray], path: Union[str, "os.PathLike[str]"]) -> Path:
    """``np.savez`` of ``W1 b1 W2 b2`` (load with ``np.load(path, allow_pickle=False)``)."""
    arrays = {key: np.asarray(params[key]) for key in PARAM_NAMES}
    for key, value in arrays.items():
        if value.dtype == object:
            raise TypeError(f"params['{key}'] is an object array; only numeric arrays are saved (no pickle)")
    return atomic_write(path, lambda fh: np.savez(fh, **arrays))


EPOCH_COLUMNS = ("epoch", "iteration", "train_acc", "test_acc", "time", "eval_time")


def save_history(history: History, folder: Union[str, "os.PathLike[str]"]) -> List[Path]:
    """Write ``history.json`` (everything) and ``history.csv`` (one row per evaluation) into ``folder``."""
    folder = Path(folder)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(EPOCH_COLUMNS)
    for record in history.evaluations:
        row = asdict(record)
        writer.writerow([row[c] if isinstance(row[c], int) else f"{row[c]:.6g}" for c in EPOCH_COLUMNS])
    text = buf.getvalue()
    return [
        write_json(folder / "history.json", history.to_dict()),
        atomic_write(folder / "history.csv", lambda fh: fh.write(text.encode("utf-8"))),
    ]
