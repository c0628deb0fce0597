"""The one place that chooses a backend.

``cython``  the compiled kernels (default when the extension is importable);
``python``  the NumPy reference, and the fallback without the extension.

Both are modules with the same functions and signatures: ``predict``,
``loss``, ``gradient``, ``accuracy``, ``numerical_gradient`` (the kernels,
called with validated arguments), ``openmp_enabled()`` and ``max_threads()``.
``ZEROKARA_BACKEND=python|cython`` or an explicit name forces one.
"""

from __future__ import annotations

import importlib
import os
import warnings
from types import ModuleType

__all__ = ["BACKENDS", "get_backend", "default_backend_name", "resolve_threads"]

BACKENDS = ("cython", "python")
_warned = False


def _import(name: str) -> ModuleType:
    return importlib.import_module(f"{__name__}.{name}")


def default_backend_name() -> str:
    """The backend used when none is named: ``$ZEROKARA_BACKEND``, else cython if built, else python."""
    return get_backend().name


def get_backend(name: str | None = None) -> ModuleType:
    """Return the backend module called ``name`` (or the default one).

    Parameters
    ----------
    name : {"cython", "python"} or None
        None means ``$ZEROKARA_BACKEND`` if set, else ``cython`` when the
        compiled extension imports, else ``python`` (with a warning, once).

    Raises
    ------
    ValueError
        For an unknown name.
    ImportError
        When ``cython`` is asked for explicitly but the extension is not built.
    """
    global _warned
    if name is None:
        name = os.environ.get("ZEROKARA_BACKEND", "").strip() or None
        source = "ZEROKARA_BACKEND"
    else:
        source = "backend"
    if name is None:
        try:
            return _import("cython")
        except ImportError as exc:
            if not _warned:
                warnings.warn(
                    f"zerokara: the compiled extension is not available ({exc}); using the "
                    "slower pure-Python backend. Reinstall with `pip install .` and a C compiler "
                    "to build it, or set ZEROKARA_BACKEND=python to silence this warning.",
                    RuntimeWarning,
                    stacklevel=3,
                )
                _warned = True
            return _import("python")
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(f"{source} must be one of {', '.join(map(repr, BACKENDS))}; got {name!r}")
    name = name.lower()
    if name == "cython":
        try:
            return _import("cython")
        except ImportError as exc:
            raise ImportError(
                f"{source}='cython' was asked for, but the compiled extension is not available "
                f"({exc}). Build it with `pip install .` (needs a C compiler), or use "
                "backend='python'."
            ) from exc
    return _import("python")


def resolve_threads(threads: int | None, backend: ModuleType) -> int:
    """The thread count for a kernel call: ``threads``, or OpenMP's default (``OMP_NUM_THREADS``).

    Raises
    ------
    TypeError, ValueError
        If ``threads`` is not a positive integer or None.
    """
    if threads is None:
        return max(1, int(backend.max_threads()))
    if isinstance(threads, bool) or not isinstance(threads, (int,)) and not hasattr(threads, "__index__"):
        raise TypeError(f"threads must be a positive integer or None; got {type(threads).__name__}")
    threads = int(threads.__index__())
    if threads < 1:
        raise ValueError(f"threads must be a positive integer or None; got {threads}")
    # OpenMP caps a parallel region at what the machine allows; a huge request
    # only costs scratch memory, so keep it sane.
    return min(threads, 1024)
