"""The compiled backend: glue to the Cython kernels in ``zerokara._core``.

The kernels take exactly the arguments of their NumPy twins in
``zerokara.backends.python``; the caller has validated them.

Every compiled module ``zerokara.<name>`` may have a twin
``zerokara.<name>_avx2``: the same source built with ``-mavx2 -mfma`` (and,
like the portable one, without FMA contraction or fast-math), so it returns
bitwise the same results, faster. ``simd`` says which build runs here:
``"avx2"`` when that build is installed and the CPU has AVX2 and FMA, else
``"portable"``. ``ZEROKARA_SIMD=portable`` or ``ZEROKARA_SIMD=avx2`` forces
one (``avx2`` raises ImportError where it cannot run).
"""

from __future__ import annotations

import importlib
import os
import threading
import time

import numpy as np

from zerokara._core import (  # noqa: F401
    accuracy,
    core_round_trip,
    gradient,
    loss,
    max_threads,
    openmp_enabled,
    predict,
    sgd_step,
)
from zerokara._core import sgd_steps as _sgd_steps_kernel

name = "cython"

SIMD_LEVELS = ("portable", "avx2")


def _choose_simd():
    """``(level, reason)``: which build of the compiled modules to use, and why."""
    forced = os.environ.get("ZEROKARA_SIMD", "").strip().lower()
    if forced not in ("", "auto") + SIMD_LEVELS:
        raise ValueError(f"ZEROKARA_SIMD must be one of 'portable', 'avx2', 'auto'; got {forced!r}")
    if forced == "portable":
        return "portable", "ZEROKARA_SIMD=portable"
    if not importlib.import_module("zerokara._core").cpu_supports_avx2():
        if forced == "avx2":
            raise ImportError("ZEROKARA_SIMD=avx2 was asked for, but this CPU lacks AVX2 or FMA")
        return "portable", "the CPU lacks AVX2 or FMA"
    try:
        importlib.import_module("zerokara._core_avx2")
    except ImportError as exc:
        if forced == "avx2":
            raise ImportError(f"ZEROKARA_SIMD=avx2 was asked for, but the AVX2 build is missing ({exc})") from exc
        return "portable", "no AVX2 build installed"
    return "avx2", "ZEROKARA_SIMD=avx2" if forced == "avx2" else "the CPU has AVX2 and FMA"


simd, _reason = _choose_simd()
simd_info = f"{simd} ({_reason})"


def _build_of(module: str):
    """The chosen build of the compiled module named ``module`` (``zerokara._<name>``)."""
    if simd == "avx2":
        try:
            return importlib.import_module(f"{module}_avx2")
        except ImportError:  # the portable build gives the same results
            pass
    return importlib.import_module(module)


def _use_chosen_build(namespace: dict) -> None:
    """Rebind every compiled kernel imported into ``namespace`` to its twin in the chosen build."""
    for key, value in list(namespace.items()):
        module = getattr(value, "__module__", None) or ""
        if callable(value) and module.startswith("zerokara._") and not module.endswith("_avx2"):
            namespace[key] = getattr(_build_of(module), getattr(value, "__name__", key), value)


# -------------------------------------------------- how a step is split ---
#
# The compiled sgd_steps splits each step between its threads one of two
# ways, with the same numbers: by samples (backprop_: the threads share W1,
# the lists of non-zeros and dz1) or by hidden units (split_step_: each
# thread keeps its columns of W1 to itself; each compacts every sample).
# Which is quicker depends on the machine's state, not on the data: with
# two threads here, about 0.19 ms against 0.21 while the cores reach each
# other's caches quickly (core_round_trip about 130 ns), but 0.41 against
# 0.27 in the spells where that takes 3 to 4 times longer. So the choice
# is made by timing both, and made again as the run goes on.

#: Steps of a call given to the way not in use, to time it again, every
#: PROBE_EVERY calls (the trainer's calls take about 0.2 s, up to an
#: epoch's 600 steps: the way that loses costs a few steps in a thousand,
#: and a choice made on a bad timing lasts three calls at most). Every
#: second call, the probes cost about 1-2.8 us a step of a 2000-iteration
#: run (three 32-step probes at 200-270 us a step against 170-175, the
#: first of them cold); every third, one probe fewer.
PROBE_STEPS = 32
PROBE_EVERY = 3


class SplitChooser:
    """Which way sgd_steps splits its steps (``split``), chosen by their time per step.

    ``plan(key, K)`` gives the parts of a call of K steps, ``[(split,
    steps), ...]``; ``record(key, split, steps, seconds)`` notes the time of
    each. The first calls try each way on PROBE_STEPS steps; then every
    call takes the way whose last timing per step is lower, and every
    PROBE_EVERY-th call first gives PROBE_STEPS steps to the other way.
    ``key`` names the shapes and thread count: a new key starts afresh.
    """

    def __init__(self) -> None:
        self.key = None
        self.per_step = {False: None, True: None}
        self.calls = 0

    def plan(self, key, K: int):
        if key != self.key:
            self.key, self.per_step, self.calls = key, {False: None, True: None}, 0
        self.calls += 1
        untimed = [way for way in (True, False) if self.per_step[way] is None]
        if untimed:
            first = untimed[0]
            other = not first
        else:
            other = self.per_step[True] < self.per_step[False]  # the way in use
            first = not other
            if self.calls % PROBE_EVERY:
                return [(other, K)]
        if K <= PROBE_STEPS:
            return [(first, K)]
        return [(first, PROBE_STEPS), (other, K - PROBE_STEPS)]

    def record(self, key, split: bool, steps: int, seconds: float) -> None:
        if key == self.key and steps > 0:
            self.per_step[split] = seconds / steps


_local = threading.local()


def _chooser() -> SplitChooser:
    """This Python thread's SplitChooser."""
    chooser = getattr(_local, "chooser", None)
    if chooser is None:
        chooser = _local.chooser = SplitChooser()
    return chooser


def sgd_steps(x, rows, t, W1, b1, W2, b2, lr, threads, losses, done, stop=None, split=None):
    """The compiled sgd_steps (see zerokara._core); ``split`` None: chosen by timing.

    ``split`` True or False forces a way (``_core.sgd_steps``); None, with
    two threads or more, lets this Python thread's SplitChooser pick it,
    maybe giving a call's first steps to one way and the rest to the
    other. The numbers are the same either way, bit for bit. Every row and
    label is checked before the first step, as by one call.
    """
    if split is not None or threads < 2:
        return _sgd_steps_kernel(x, rows, t, W1, b1, W2, b2, lr, threads, losses, done, stop, bool(split))
    chooser = _chooser()
    key = (getattr(x, "shape", None), getattr(x, "dtype", None), getattr(rows, "shape", (0, 0))[1:],
           getattr(W1, "shape", None), getattr(W2, "shape", None), threads)
    plan = chooser.plan(key, getattr(rows, "shape", (0,))[0])
    if len(plan) > 1:
        # A bad row or label in a later part must stop the call before the
        # first step, as one call of the kernel would: that call raises.
        ok = (isinstance(rows, np.ndarray) and isinstance(t, np.ndarray) and isinstance(x, np.ndarray)
              and isinstance(W2, np.ndarray) and rows.ndim == 2 and t.ndim == 2 and W2.ndim == 2
              and rows.size > 0 and rows.shape == t.shape and x.ndim == 2
              and 0 <= rows.min() and rows.max() < x.shape[0] and 0 <= t.min() and t.max() < W2.shape[1])
        if not ok:
            plan = [(False, plan[0][1] + plan[1][1])]
    start = 0
    for part, (split, steps) in enumerate(plan):
        end = start + steps
        here = np.zeros(1, dtype=np.intp)
        began = time.perf_counter()
        try:
            finished = _sgd_steps_kernel(x, rows[start:end], t[start:end], W1, b1, W2, b2, lr, threads,
                                         losses[start:], here, stop, split)
        finally:
            done[0] = start + here[0]
        chooser.record(key, split, int(here[0]), time.perf_counter() - began)
        if not finished or part + 1 == len(plan):
            return finished
        if here[0] < steps or (stop is not None and stop()):  # stopped early, as the kernel stops
            return True
        start = end
    return True


# numerical gradient: issue 4
from zerokara._numgrad import numerical_gradient  # noqa: F401

# Last: every kernel imported above runs from the build chosen by ``simd``.
_use_chosen_build(globals())
