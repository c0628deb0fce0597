"""Backend selection, the fallback without the extension, and the build itself."""

import os
import subprocess
import sys
import warnings

import pytest

import zerokara.backends as backends
from zerokara import TwoLayerNet
from zerokara.__main__ import main


def test_explicit_and_environment_choice(monkeypatch):
    assert backends.get_backend("python").name == "python"
    assert backends.get_backend("PYTHON").name == "python"
    monkeypatch.setenv("ZEROKARA_BACKEND", "python")
    assert backends.get_backend().name == "python"
    assert TwoLayerNet(3, 2, 2).backend == "python"
    monkeypatch.setenv("ZEROKARA_BACKEND", "gpu")
    with pytest.raises(ValueError, match="ZEROKARA_BACKEND must be one of 'cython', 'python'; got 'gpu'"):
        backends.get_backend()
    with pytest.raises(ValueError, match="backend must be one of"):
        backends.get_backend("numba")


def test_missing_extension_warns_once_and_falls_back(monkeypatch):
    # Simulate an install without the compiled module: importing it fails.
    monkeypatch.delenv("ZEROKARA_BACKEND", raising=False)
    monkeypatch.setitem(sys.modules, "zerokara._core", None)
    monkeypatch.delitem(sys.modules, "zerokara.backends.cython", raising=False)
    monkeypatch.setattr(backends, "_warned", False)
    with pytest.warns(RuntimeWarning, match="compiled extension is not available"):
        assert backends.get_backend().name == "python"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backends.get_backend().name == "python"  # no second warning
    with pytest.raises(ImportError, match="backend='cython' was asked for"):
        backends.get_backend("cython")


def test_extension_is_built_with_openmp():
    """The compiled backend must be there; OpenMP too where the compiler has it.

    ``ZEROKARA_EXPECT_OPENMP=0`` relaxes the OpenMP half for compilers without
    it (Apple's clang without libomp); on Linux with gcc it is expected.
    """
    if os.environ.get("ZEROKARA_BACKEND", "").lower() == "python":
        pytest.skip("the python backend was forced")
    cy = backends.get_backend("cython")  # ImportError here means `pip install .` did not build it
    assert cy.name == "cython"
    expect = os.environ.get("ZEROKARA_EXPECT_OPENMP", "1" if sys.platform.startswith("linux") else "0")
    if expect == "1":
        assert cy.openmp_enabled(), "OpenMP was expected but the extension was built without it"


def test_core_round_trip_probe():
    """The benchmark's probe of transfers between cores: a time in ns, or NaN where it cannot be measured.

    Both builds; with one CPU only (the two threads taking turns by time
    slices) it must give up after about a second with NaN, not hang.
    """
    if os.environ.get("ZEROKARA_BACKEND", "").lower() == "python":
        pytest.skip("the python backend was forced")
    import math
    import time

    import zerokara._core as portable

    modules = [portable]
    try:
        import zerokara._core_avx2 as avx2

        if portable.cpu_supports_avx2():
            modules.append(avx2)
    except ImportError:
        pass
    for module in modules:
        with pytest.raises(ValueError, match="rounds must be positive; got 0"):
            module.core_round_trip(0)
        ns = module.core_round_trip(2000)
        if module.openmp_enabled() and len(os.sched_getaffinity(0)) >= 2:
            assert 1.0 < ns < 1e6  # a cache line there and back: tens of ns to a few us
        else:
            assert math.isnan(ns)
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2 and portable.openmp_enabled():
        code = ("import os, time, zerokara._core as m; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
                "t = time.perf_counter(); v = m.core_round_trip(10**9); print(v, time.perf_counter() - t)")
        env = dict(os.environ, OMP_PROC_BIND="false")
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                             check=True).stdout.split()
        assert time.perf_counter() - start < 30
        value, took = float(out[0]), float(out[1])
        assert math.isnan(value)  # 10**9 turns by time slices cannot finish within the second it allows
        assert took < 5.0


def test_threads_follow_omp_num_threads():
    env = dict(os.environ, OMP_NUM_THREADS="3")
    env.pop("ZEROKARA_BACKEND", None)
    out = subprocess.run([sys.executable, "-m", "zerokara", "info"], env=env, capture_output=True, text=True, check=True)
    if "OpenMP: on" in out.stdout:
        assert "threads: 3" in out.stdout


def test_info_command(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("zerokara ")
    assert "backend: " in out and "OpenMP: " in out and "threads: " in out
    assert main([]) == 2


def test_resolve_threads_errors():
    py = backends.get_backend("python")
    assert backends.resolve_threads(None, py) == 1
    assert backends.resolve_threads(4, py) == 4
    for bad, error in ((0, ValueError), (-2, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(error, match="threads must be a positive integer"):
            backends.resolve_threads(bad, py)
