"""The AVX2 builds of the compiled modules against the portable ones, and the choice between them.

On x86-64 setup.py builds every ``cython/<name>.pyx`` twice: ``zerokara.<name>``
for any x86-64 and ``zerokara.<name>_avx2`` with ``-mavx2 -mfma``. Both are
compiled without FMA contraction and without fast-math, so the wider vectors
only run independent lanes side by side: every kernel must return bitwise the
same numbers from both builds. That is what is checked here (exact equality,
no tolerance), on random problems with awkward shapes and values and on real
MNIST, with 1 and 2 threads. Skipped where there is no AVX2 build or the CPU
cannot run it.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import zerokara

try:
    _core = importlib.import_module("zerokara._core")
except ImportError:  # a pure-Python install: nothing compiled to compare
    _core = None

CAN_RUN_AVX2 = _core is not None and _core.cpu_supports_avx2()


def _compiled_modules():
    """Names ``_<name>`` of the compiled modules installed beside zerokara (portable builds)."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    names = {p.name.split(".")[0] for p in Path(zerokara.__file__).parent.iterdir() if p.name.endswith(suffixes)}
    return sorted(n for n in names if not n.endswith("_avx2"))


def _builds(name):
    """(portable, avx2) modules of ``zerokara.<name>``; skips the test when there is no AVX2 build to run."""
    if not CAN_RUN_AVX2:
        pytest.skip("the compiled extension or an AVX2+FMA CPU is missing")
    portable = importlib.import_module(f"zerokara.{name}")
    try:
        avx2 = importlib.import_module(f"zerokara.{name}_avx2")
    except ImportError:
        pytest.skip(f"zerokara.{name}_avx2 is not built (not x86-64, or ZEROKARA_NO_AVX2)")
    return portable, avx2


def assert_same(a, b, what):
    """Bitwise equality of two results (floats compared as bits: also NaN payloads and -0.0)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype, what
    if a.dtype.kind == "f":
        a, b = a.view(f"u{a.itemsize}"), b.view(f"u{b.itemsize}")
    np.testing.assert_array_equal(a, b, err_msg=what)


def run_core(module, x, t, params, threads):
    """Every kernel of ``_core`` on one problem: predict, loss, gradient (+ its loss), accuracy."""
    W1, b1, W2, b2 = params
    y = np.empty((x.shape[0], W2.shape[1]))
    module.predict(x, W1, b1, W2, b2, y, threads)
    grads = [np.empty_like(p) for p in params]
    batch_loss = module.gradient(x, t, W1, b1, W2, b2, *grads, threads)
    # One SGD step on a batch drawn from x with repeats, on copies of params.
    rows = np.concatenate([np.arange(x.shape[0])[::-1], [0]]).astype(np.intp)
    stepped = [p.copy() for p in params]
    before, after = module.sgd_step(x, rows, t[rows], *stepped, 0.1, threads)
    return {
        "sgd_step losses": np.array([before, after]),
        **{f"stepped {key}": p for key, p in zip(("W1", "b1", "W2", "b2"), stepped)},
        "predict": y,
        "loss": module.loss(x, t, W1, b1, W2, b2, threads),
        "gradient loss": batch_loss,
        **{f"d{key}": g for key, g in zip(("W1", "b1", "W2", "b2"), grads)},
        "accuracy": np.array(module.accuracy(x, t, W1, b1, W2, b2, threads)),
        "accuracy, screened": np.array(module.accuracy(x, t, W1, b1, W2, b2, threads, screen_min=0)
                                       + (screened_exact(module, x, t, params, threads),)),
    }


def screened_exact(module, x, t, params, threads):
    """How many samples accuracy's float32 screen sends to float64 (test_screen.py)."""
    exact = np.zeros(1, np.intp)
    module.accuracy(x, t, *params, threads, screen_min=0, exact=exact)
    return int(exact[0])


def assert_core_builds_agree(x, t, params):
    portable, avx2 = _builds("_core")
    for threads in (1, 2):
        ref = run_core(portable, x, t, params, threads)
        out = run_core(avx2, x, t, params, threads)
        for key in ref:
            assert_same(out[key], ref[key], f"{key}, threads={threads}")


def test_compiled_modules_are_found():
    if _core is None:
        pytest.skip("the compiled extension is not built")
    assert "_core" in _compiled_modules()


def test_builds_are_what_they_say():
    portable, avx2 = _builds("_core")
    assert portable.simd_build() == "portable"
    assert avx2.simd_build() == "avx2"


@pytest.mark.parametrize("name", _compiled_modules())
def test_both_builds_have_the_same_functions(name):
    portable, avx2 = _builds(name)
    public = lambda m: sorted(k for k in vars(m) if not k.startswith("__"))  # noqa: E731
    assert public(avx2) == public(portable)


@st.composite
def core_problems(draw):
    n = draw(st.integers(1, 130))
    i = draw(st.integers(1, 300))       # rows of x not a multiple of 8 pixels, short rows
    h = draw(st.integers(1, 70))        # hidden sizes on both sides of the 26/52-unit passes
    o = draw(st.integers(2, 20))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    density = draw(st.sampled_from([0.0, 0.05, 0.3, 1.0]))
    weight_std = draw(st.sampled_from([0.01, 1.0, 40.0]))  # 40: saturated sigmoids, exp underflow
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n, i)) * (rng.random((n, i)) < density)
    x[rng.random((n, i)) < 0.02] = -0.0  # signed zeros must be skipped like zeros
    x = x.astype(dtype)
    params = (
        rng.normal(0, weight_std, (i, h)),
        rng.normal(0, weight_std, h),
        rng.normal(0, weight_std, (h, o)),
        rng.normal(0, weight_std, o),
    )
    return x, rng.integers(0, o, n).astype(np.int64), params


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(core_problems())
def test_core_builds_agree_on_random_problems(problem):
    assert_core_builds_agree(*problem)


@pytest.mark.parametrize("start", [0, 100, 5000])
def test_core_builds_agree_on_mnist_batches(mnist, start):
    (x_train, t_train), _ = mnist
    rng = np.random.default_rng(start)
    params = (0.05 * rng.normal(size=(784, 50)), 0.1 * rng.normal(size=50),
              0.5 * rng.normal(size=(50, 10)), 0.1 * rng.normal(size=10))
    x, t = x_train[start:start + 100], t_train[start:start + 100].astype(np.int64)
    assert_core_builds_agree(x, t, params)
    assert_core_builds_agree(x.astype(np.float64), t, params)


def test_core_large_batch(mnist):
    # 2000 x 784 is above PACK_ABOVE (2^20 list entries): the gradient counts
    # each sample's non-zeros first and packs their lists. Held to the NumPy
    # twin as tests/test_parity.py does (rtol 1e-10), to itself for 1, 2, 3
    # threads and across builds (bitwise).
    from zerokara.backends import python as reference

    (x_train, t_train), _ = mnist
    x, t = x_train[:2000], t_train[:2000].astype(np.int64)
    rng = np.random.default_rng(5)
    params = (0.05 * rng.normal(size=(784, 50)), 0.1 * rng.normal(size=50),
              0.5 * rng.normal(size=(50, 10)), 0.1 * rng.normal(size=10))
    expected = [np.empty_like(p) for p in params]
    expected_loss = reference.gradient(x, t, *params, *expected, 1)
    builds = [importlib.import_module("zerokara._core")] if _core is not None else []
    if CAN_RUN_AVX2 and importlib.util.find_spec("zerokara._core_avx2") is not None:
        builds.append(importlib.import_module("zerokara._core_avx2"))
    if not builds:
        pytest.skip("the compiled extension is not built")
    first = None
    for module in builds:
        for threads in (1, 2, 3):
            grads = [np.empty_like(p) for p in params]
            batch_loss = module.gradient(x, t, *params, *grads, threads)
            assert batch_loss == pytest.approx(expected_loss, rel=1e-12)
            for g, e in zip(grads, expected):
                np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-12 * np.abs(e).max())
            if first is None:
                first = grads
            for g, f in zip(grads, first):
                assert_same(g, f, f"{module.__name__}, threads={threads}")


def test_core_builds_agree_on_the_test_set(mnist):
    _, (x_test, t_test) = mnist
    portable, avx2 = _builds("_core")
    rng = np.random.default_rng(7)
    params = (0.05 * rng.normal(size=(784, 50)), 0.1 * rng.normal(size=50),
              0.5 * rng.normal(size=(50, 10)), 0.1 * rng.normal(size=10))
    t = t_test.astype(np.int64)
    for threads in (1, 2):
        assert avx2.accuracy(x_test, t, *params, threads) == portable.accuracy(x_test, t, *params, threads)
        y = [np.empty((2000, 10)) for _ in range(2)]
        portable.predict(x_test[:2000], *params, y[0], threads)
        avx2.predict(x_test[:2000], *params, y[1], threads)
        assert_same(y[1], y[0], f"predict, threads={threads}")


def test_core_builds_agree_on_non_finite_input():
    # NaN and inf pixels are kept by the compaction of both builds (x != 0):
    # a NaN makes its sample's scores NaN, an inf saturates sigmoids (or
    # makes inf - inf); the NumPy twin counts the same non-finite rows. NaNs
    # are compared as NaNs (their payload is not promised).
    from zerokara.backends import python as reference

    portable, avx2 = _builds("_core")
    rng = np.random.default_rng(2)
    x = (rng.random((20, 40)) * (rng.random((20, 40)) < 0.3)).astype(np.float32)
    x[3, 5], x[7, 39], x[11, 0] = np.nan, np.inf, -np.inf
    t = rng.integers(0, 4, 20).astype(np.int64)
    params = (rng.normal(size=(40, 9)), rng.normal(size=9), rng.normal(size=(9, 4)), rng.normal(size=4))
    for threads in (1, 2):
        ref = run_core(portable, x, t, params, threads)
        out = run_core(avx2, x, t, params, threads)
        for key in ref:
            np.testing.assert_array_equal(out[key], ref[key], err_msg=f"{key}, threads={threads}")
        assert tuple(ref["accuracy"]) == reference.accuracy(x, t, *params, threads)
        assert ref["accuracy"][1] >= 1  # the NaN sample at least


def _guarded(shape, dtype, keep):
    """A writable array that ends exactly where an unreadable page starts."""
    import ctypes
    import mmap

    nbytes = max(1, int(np.prod(shape))) * np.dtype(dtype).itemsize
    pages = -(-nbytes // mmap.PAGESIZE) + 1
    region = mmap.mmap(-1, pages * mmap.PAGESIZE)
    raw = (ctypes.c_char * (pages * mmap.PAGESIZE)).from_buffer(region)
    libc = ctypes.CDLL(None, use_errno=True)
    last = ctypes.addressof(raw) + (pages - 1) * mmap.PAGESIZE
    if libc.mprotect(ctypes.c_void_p(last), ctypes.c_size_t(mmap.PAGESIZE), 0) != 0:
        pytest.skip("mprotect is not available")
    keep.append((region, raw))
    start = (pages - 1) * mmap.PAGESIZE - nbytes
    return np.frombuffer(region, np.uint8, nbytes, start).view(dtype).reshape(shape)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="guard pages via mmap/mprotect on Linux")
@pytest.mark.parametrize("shape", [(5, 784, 50, 10), (3, 17, 5, 3), (4, 9, 53, 2), (2, 33, 27, 13), (6, 100, 61, 11)])
def test_kernels_never_read_past_their_arrays(shape):
    # The register passes read whole vectors, up to ROW columns, so they may
    # read past column H into the next row; never past the last row. Every
    # array here ends at an unreadable page, and x's last pixel is non-zero
    # so the last row of W1 is used: a read past the end would crash.
    if _core is None:
        pytest.skip("the compiled extension is not built")
    modules = [_core]
    if CAN_RUN_AVX2 and importlib.util.find_spec("zerokara._core_avx2") is not None:
        modules.append(importlib.import_module("zerokara._core_avx2"))
    n, i, h, o = shape
    rng = np.random.default_rng(1)
    keep = []
    for dtype in (np.float32, np.float64):
        x = _guarded((n, i), dtype, keep)
        x[...] = rng.normal(size=(n, i)) * (rng.random((n, i)) < 0.5)
        x[:, -1] = 1.5
        t = _guarded((n,), np.int64, keep)
        t[...] = rng.integers(0, o, n)
        params = [_guarded(s, np.float64, keep) for s in ((i, h), (h,), (h, o), (o,))]
        for p in params:
            p[...] = rng.normal(size=p.shape)
        for module in modules:
            for threads in (1, 2):
                module.predict(x, *params, _guarded((n, o), np.float64, keep), threads)
                module.loss(x, t, *params, threads)
                module.accuracy(x, t, *params, threads)
                module.accuracy(x, t, *params, threads, screen_min=0)
                module.gradient(x, t, *params, *[_guarded(p.shape, np.float64, keep) for p in params], threads)
                rows = _guarded((n + 1,), np.intp, keep)
                rows[...] = np.append(np.arange(n), n - 1)
                tb = _guarded((n + 1,), np.int64, keep)
                tb[...] = t[rows]
                stepped = [_guarded(p.shape, np.float64, keep) for p in params]
                for p, q in zip(stepped, params):
                    p[...] = q
                module.sgd_step(x, rows, tb, *stepped, 0.1, threads)


def run_numgrad(module, x, t, params, h, method, threads):
    grads = [np.empty_like(p) for p in params]
    module.numerical_gradient(x, t, *params, h, method, *grads, threads)
    return grads


@pytest.mark.parametrize("method, h", [("incremental", 1e-4), ("literal", 1e-4), ("incremental", 0.5)])
def test_numgrad_builds_agree_on_mnist(mnist, method, h):
    # h = 0.5 is too large for the series: the incremental method falls back.
    portable, avx2 = _builds("_numgrad")
    (x_train, t_train), _ = mnist
    rng = np.random.default_rng(3)
    params = (0.01 * rng.normal(size=(784, 50)), 0.1 * rng.normal(size=50),
              0.3 * rng.normal(size=(50, 10)), 0.1 * rng.normal(size=10))
    x, t = x_train[:100], t_train[:100].astype(np.int64)
    for threads in (1, 2):
        ref = run_numgrad(portable, x, t, params, h, method, threads)
        out = run_numgrad(avx2, x, t, params, h, method, threads)
        for key, a, b in zip(("W1", "b1", "W2", "b2"), out, ref):
            assert_same(a, b, f"{method} d{key}, threads={threads}")


@pytest.mark.parametrize("method", ["full", "incremental", "literal"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numgrad_builds_agree_on_small_problems(method, dtype):
    portable, avx2 = _builds("_numgrad")
    rng = np.random.default_rng(11)
    n, i, h, o = 9, 37, 13, 4
    x = (rng.normal(size=(n, i)) * (rng.random((n, i)) < 0.4)).astype(dtype)
    t = rng.integers(0, o, n).astype(np.int64)
    params = (rng.normal(size=(i, h)), rng.normal(size=h), rng.normal(size=(h, o)), rng.normal(size=o))
    for threads in (1, 2):
        ref = run_numgrad(portable, x, t, params, 1e-4, method, threads)
        out = run_numgrad(avx2, x, t, params, 1e-4, method, threads)
        for key, a, b in zip(("W1", "b1", "W2", "b2"), out, ref):
            assert_same(a, b, f"{method} d{key}, threads={threads}")


# ------------------------------------------------------------ the run-time choice

def _backend_in_subprocess(simd):
    """``(returncode, stdout, stderr)`` of importing the cython backend with ZEROKARA_SIMD=simd."""
    env = dict(os.environ)
    env.pop("ZEROKARA_SIMD", None)
    if simd is not None:
        env["ZEROKARA_SIMD"] = simd
    package_root = str(Path(zerokara.__file__).parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([package_root, env.get("PYTHONPATH", "")])
    code = (
        "from zerokara.backends import get_backend\n"
        "b = get_backend('cython')\n"
        "print(b.simd, b.predict.__module__, b.accuracy.__module__, b.numerical_gradient.__module__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    return out.returncode, out.stdout.split(), out.stderr


def test_simd_choice_follows_the_cpu_and_the_override():
    if _core is None:
        pytest.skip("the compiled extension is not built")
    code, words, err = _backend_in_subprocess("portable")
    assert code == 0, err
    assert words == ["portable", "zerokara._core", "zerokara._core", "zerokara._numgrad"]

    code, words, err = _backend_in_subprocess(None)
    assert code == 0, err
    if CAN_RUN_AVX2 and importlib.util.find_spec("zerokara._core_avx2") is not None:
        assert words == ["avx2", "zerokara._core_avx2", "zerokara._core_avx2", "zerokara._numgrad_avx2"]
        code, forced, err = _backend_in_subprocess("avx2")
        assert code == 0 and forced == words, err
    else:
        assert words[0] == "portable"
        code, _, err = _backend_in_subprocess("avx2")  # cannot be honoured: refuse, never crash
        assert code != 0 and "ZEROKARA_SIMD=avx2 was asked for" in err


def test_simd_override_rejects_unknown_values():
    if _core is None:
        pytest.skip("the compiled extension is not built")
    code, _, err = _backend_in_subprocess("avx512")
    assert code != 0
    assert "ZEROKARA_SIMD must be one of 'portable', 'avx2', 'auto'; got 'avx512'" in err


def test_info_reports_the_simd_build(capsys):
    from zerokara.__main__ import main

    assert main(["info"]) == 0
    assert "SIMD: " in capsys.readouterr().out
