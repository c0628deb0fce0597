"""The compiled backend: glue to the Cython kernels in ``zerokara._core``.

The kernels take exactly the arguments of their NumPy twins in
``zerokara.backends.python``; the caller has validated them.
"""

from __future__ import annotations

from zerokara._core import accuracy, gradient, loss, max_threads, openmp_enabled, predict  # noqa: F401

name = "cython"

# numerical gradient: issue 4
from zerokara._numgrad import numerical_gradient  # noqa: F401
