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

from zerokara._core import (  # noqa: F401
    accuracy,
    core_round_trip,
    gradient,
    loss,
    max_threads,
    openmp_enabled,
    predict,
    sgd_step,
    sgd_steps,
)

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


# numerical gradient: issue 4
from zerokara._numgrad import numerical_gradient  # noqa: F401

# Last: every kernel imported above runs from the build chosen by ``simd``.
_use_chosen_build(globals())
