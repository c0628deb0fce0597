"""The network's numerical gradient: ``full`` (the book's loop), ``incremental`` and ``literal``.

Oracles, from the most independent to the closest:

* the book's brute force, written here in plain NumPy: for each parameter,
  perturb a copy, run the whole forward pass, difference the batch losses.
  Its float64 noise is about ``eps * L / h ~ 1e-11`` (two losses near 1
  differenced, divided by 2e-4), hence ``rtol=1e-6, atol=5e-11``;
* the same central difference in 80-bit long double, summing per-sample
  differences: an exact method must land within 1e-14 of it;
* backprop, the analytic derivative, with and without the loss's ``+ 1e-7``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import AVAILABLE_BACKENDS, trained_params
from zerokara import TwoLayerNet

KEYS = ("W1", "b1", "W2", "b2")
EPS = 1e-7  # the book's cross_entropy_error: -log(y_t + 1e-7)

# The book's brute force carries ~1e-11 of float64 noise (see the module note).
BOOK_RTOL, BOOK_ATOL = 1e-6, 5e-11
# Two exact evaluations of the same differences (series vs exp/log, C vs
# NumPy) differ by rounding only: a few ulps of per-sample loss changes of
# size ~|g| h, summed and divided by 2h N.
EXACT_RTOL, EXACT_ATOL = 1e-11, 1e-16

needs_cython = pytest.mark.skipif("cython" not in AVAILABLE_BACKENDS, reason="compiled extension not built")


def _numgrad_builds():
    """The compiled builds of _numgrad here: the portable one and, if built, the AVX2 twin."""
    import importlib

    builds = []
    for name in ("zerokara._numgrad", "zerokara._numgrad_avx2"):
        try:
            builds.append(importlib.import_module(name))
        except ImportError:
            pass
    return builds


@pytest.fixture(params=["avx2+fma", "baseline"])
def simd(request):
    """Run a compiled test with _numgrad's AVX2+FMA helpers and with its portable ones (same numbers).

    Set in every build, since the backend may run either (the module-level
    AVX2 twin, when built and the CPU allows, else the portable build).
    """
    builds = _numgrad_builds()
    previous = [build._use_simd(request.param == "avx2+fma") for build in builds]
    try:
        if any(build.simd() != request.param for build in builds):
            pytest.skip("this CPU has no AVX2+FMA")
        yield request.param
    finally:
        for build, was in zip(builds, previous):
            build._use_simd(was)


# ------------------------------------------------------------------ oracles ---

def book_loss(x, t, W1, b1, W2, b2, dtype=np.float64, per_sample=False):
    """The book's TwoLayerNet.loss, in plain NumPy (in ``dtype``)."""
    a1 = x.astype(dtype) @ W1 + b1
    with np.errstate(over="ignore"):  # the book's sigmoid: exp(-a1) = inf gives 0, rightly
        z1 = 1 / (1 + np.exp(-a1))
    a2 = z1 @ W2 + b2
    a2 = a2 - a2.max(axis=1, keepdims=True)
    y = np.exp(a2) / np.exp(a2).sum(axis=1, keepdims=True)
    losses = -np.log(y[np.arange(len(t)), t] + dtype(EPS))
    return losses if per_sample else np.sum(losses) / len(t)


def brute_force(x, t, params, h=1e-4, entries=None):
    """The book's ``numerical_gradient`` loop on copies.

    ``entries`` limits W1 to a list of indices, or (a dict) any parameter;
    the entries not computed are NaN.
    """
    params = {k: params[k].copy() for k in KEYS}
    grads = {k: np.full(params[k].shape, np.nan) for k in KEYS}
    if entries is not None and not isinstance(entries, dict):
        entries = {"W1": entries}
    x = x.astype(np.float64)
    for key in KEYS:
        p = params[key]
        indices = entries[key] if (entries is not None and key in entries) else list(np.ndindex(p.shape))
        for idx in indices:
            tmp = p[idx]
            p[idx] = float(tmp) + h
            lp = book_loss(x, t, *(params[k] for k in KEYS))
            p[idx] = tmp - h
            lm = book_loss(x, t, *(params[k] for k in KEYS))
            p[idx] = tmp
            grads[key][idx] = (lp - lm) / (2 * h)
    return grads


def long_double_reference(x, t, params, h=1e-4):
    """Central differences in 80-bit arithmetic, per-sample differences summed."""
    ld = np.longdouble
    params = {k: params[k].astype(ld) for k in KEYS}
    hl = ld(h)
    grads = {}
    for key in KEYS:
        p = params[key]
        g = np.zeros(p.shape, dtype=ld)
        for idx in np.ndindex(p.shape):
            tmp = p[idx]
            p[idx] = tmp + hl
            lp = book_loss(x, t, *(params[k] for k in KEYS), dtype=ld, per_sample=True)
            p[idx] = tmp - hl
            lm = book_loss(x, t, *(params[k] for k in KEYS), dtype=ld, per_sample=True)
            p[idx] = tmp
            g[idx] = np.sum(lp - lm) / (2 * hl * len(t))
        grads[key] = g
    return grads


def backprop(x, t, params, with_eps):
    """Backprop of the book's loss; ``with_eps`` includes the derivative of its ``+ 1e-7``.

    ``l = -log(y_t + eps)`` gives ``dl/da2_k = -(1 / (y_t + eps)) y_t ([k = t] - y_k)
    = kappa (y_k - [k = t])`` with ``kappa = y_t / (y_t + eps)``; the book drops
    kappa (``dy = (y - T) / N``), i.e. differentiates ``-log y_t``.
    """
    W1, b1, W2, b2 = (params[k] for k in KEYS)
    N = len(t)
    x = x.astype(np.float64)
    z1 = 1 / (1 + np.exp(-(x @ W1 + b1)))
    a2 = z1 @ W2 + b2
    y = np.exp(a2 - a2.max(axis=1, keepdims=True))
    y /= y.sum(axis=1, keepdims=True)
    T = np.zeros_like(y)
    T[np.arange(N), t] = 1
    dy = (y - T) / N
    if with_eps:
        yt = y[np.arange(N), t]
        dy *= (yt / (yt + EPS))[:, None]
    da1 = (dy @ W2.T) * z1 * (1 - z1)
    return {"W1": x.T @ da1, "b1": da1.sum(axis=0), "W2": z1.T @ dy, "b2": dy.sum(axis=0)}


# ---------------------------------------------------------------- fixtures ---

def small_problem(N, I, H, O, scale, seed, sparse=True):
    rng = np.random.RandomState(seed)
    x = rng.rand(N, I)
    if sparse:
        x[rng.rand(N, I) < 0.6] = 0.0
    t = rng.randint(0, O, N)
    net = TwoLayerNet(I, H, O, weight_init_std=scale, seed=seed, backend="python")
    net.params["b1"] = scale * rng.randn(H)
    net.params["b2"] = scale * rng.randn(O)
    return x, t, {k: net.params[k].copy() for k in KEYS}


SMALL = [  # (N, I, H, O, weight scale, seed)
    (5, 4, 3, 2, 1.0, 0),
    (12, 9, 7, 5, 0.5, 1),
    (20, 16, 6, 10, 2.0, 2),
    (1, 6, 4, 3, 1.0, 3),
]


def numgrad(backend, x, t, params, **kwargs):
    I, H = params["W1"].shape
    O = params["W2"].shape[1]
    net = TwoLayerNet(I, H, O, backend=backend)
    net.params = {k: params[k].copy() for k in KEYS}
    return net.numerical_gradient(x, t, **kwargs)


def assert_grads_close(got, want, rtol, atol, entries=None):
    """Compare every entry (or those of ``entries``, as for brute_force)."""
    if entries is not None and not isinstance(entries, dict):
        entries = {"W1": entries}
    for key in KEYS:
        g, w = got[key], want[key]
        if entries is not None and key in entries:
            index = tuple(zip(*entries[key]))
            g, w = g[index], w[index]
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=key)


@pytest.fixture(scope="module")
def mnist_batch(mnist):
    (x_train, t_train), _ = mnist
    idx = np.random.RandomState(7).choice(len(x_train), 100, replace=False)
    return x_train[idx], t_train[idx]


@pytest.fixture(scope="module")
def mnist_params(mnist):
    """(784, 50, 10) parameters from a seed, untrained and after 300 backprop SGD steps."""
    (x_train, t_train), _ = mnist
    net = TwoLayerNet(784, 50, 10, seed=0)  # the default backend: the fastest backprop here
    untrained = {k: net.params[k].copy() for k in KEYS}
    trained_params(net, x_train, t_train, steps=300, lr=0.1, batch_size=100, seed=0)
    return {"untrained": untrained, "trained": {k: net.params[k].copy() for k in KEYS}}


def w1_subset(x, seed=0, count=120):
    """W1 entries to brute-force: half from pixels some sample uses, half anywhere."""
    rng = np.random.RandomState(seed)
    used = np.flatnonzero(np.any(x != 0, axis=0))
    rows = np.concatenate([rng.choice(used, count // 2), rng.randint(0, x.shape[1], count // 2)])
    return list(zip(rows, rng.randint(0, 50, count)))


# ------------------------------------------------------------------- tests ---

@pytest.mark.parametrize("method", ["full", "incremental", "literal"])
@pytest.mark.parametrize("shape", SMALL)
def test_small_nets_match_book_brute_force(backend, method, shape):
    x, t, params = small_problem(*shape)
    got = numgrad(backend, x, t, params, method=method)
    assert_grads_close(got, brute_force(x, t, params), BOOK_RTOL, BOOK_ATOL)


_BRUTE = {}


def mnist_brute_force(x, t, params, key):
    """brute_force on the W1 subset, computed once per batch and parameter set."""
    if key not in _BRUTE:
        entries = w1_subset(x)
        _BRUTE[key] = entries, brute_force(x, t, params, entries=entries)
    return _BRUTE[key]


@pytest.mark.parametrize("state", ["untrained", "trained"])
@pytest.mark.parametrize("method", ["incremental", "literal"])
def test_mnist_net_matches_book_brute_force(backend, method, state, mnist_batch, mnist_params):
    x, t = mnist_batch
    params = mnist_params[state]
    entries, want = mnist_brute_force(x, t, params, ("batch100", state))
    got = numgrad(backend, x, t, params, method=method)
    assert_grads_close(got, want, BOOK_RTOL, BOOK_ATOL, entries=entries)


@needs_cython
def test_mnist_net_full_matches_book_brute_force(mnist_batch, mnist_params):
    # The compiled book loop on the real net; 25 samples keep it to a few seconds
    # (80,000 forward passes). The NumPy one would take ~30 s even so: not run.
    x, t = mnist_batch
    x, t = x[:25], t[:25]
    params = mnist_params["trained"]
    entries, want = mnist_brute_force(x, t, params, ("batch25", "trained"))
    got = numgrad("cython", x, t, params, method="full")
    assert_grads_close(got, want, BOOK_RTOL, BOOK_ATOL, entries=entries)


@pytest.mark.skipif(np.finfo(np.longdouble).eps > 1e-18, reason="long double is not 80-bit here")
@pytest.mark.parametrize("method", ["incremental", "literal"])
def test_incremental_is_exact_against_long_double(backend, method):
    # A saturated hidden unit (b1 = +-30) too: its sigmoid pieces come from e^{-|a|}.
    x, t, params = small_problem(6, 5, 4, 3, 1.0, seed=11)
    params["b1"][0], params["b1"][1] = 30.0, -30.0
    ref = long_double_reference(x, t, params)
    got = numgrad(backend, x, t, params, method=method)
    for key in KEYS:
        err = np.max(np.abs(got[key] - ref[key].astype(np.float64)))
        # The reference itself is good to ~1e-19 * l / 2h ~ 1e-15.
        assert err <= 1e-14, (key, err)


@pytest.mark.parametrize("shape", SMALL)
def test_incremental_matches_full(backend, shape):
    x, t, params = small_problem(*shape)
    full = numgrad(backend, x, t, params, method="full")
    incremental = numgrad(backend, x, t, params, method="incremental")
    # full carries the book's float64 noise, incremental does not.
    assert_grads_close(incremental, full, BOOK_RTOL, BOOK_ATOL)


@needs_cython
@pytest.mark.parametrize("method", ["full", "incremental", "literal"])
@pytest.mark.parametrize("shape", SMALL)
def test_cython_matches_python_small(method, shape, simd):
    x, t, params = small_problem(*shape)
    c = numgrad("cython", x, t, params, method=method)
    p = numgrad("python", x, t, params, method=method)
    if method == "full":  # both are the book's loop: its noise, summed in different orders
        assert_grads_close(c, p, BOOK_RTOL, BOOK_ATOL)
    else:
        assert_grads_close(c, p, EXACT_RTOL, EXACT_ATOL)


@needs_cython
@pytest.mark.parametrize("state", ["untrained", "trained"])
@pytest.mark.parametrize("method", ["incremental", "literal"])
def test_cython_matches_python_mnist(method, state, mnist_batch, mnist_params, simd):
    from zerokara._numgrad import series_degree

    x, t = mnist_batch
    params = mnist_params[state]
    # The book's setting must take the series path, not the fallback.
    assert series_degree(x, params["W2"], 1e-4) > 0
    c = numgrad("cython", x, t, params, method=method)
    p = numgrad("python", x, t, params, method=method)
    assert_grads_close(c, p, EXACT_RTOL, EXACT_ATOL)


@needs_cython
@pytest.mark.parametrize("case", ["large_h", "unnormalised_x"])
def test_fallback_when_the_series_would_not_be_exact(case, mnist_batch, mnist_params):
    from zerokara._numgrad import series_degree

    x, t = mnist_batch
    x, t = x[:50], t[:50]
    params = mnist_params["trained"]
    h = 1e-4
    if case == "large_h":
        h = 1e-2
    else:
        x = np.round(x * 255.0)  # the raw 0..255 pixels (load_mnist(normalize=False))
    assert series_degree(x, params["W2"], h) == 0
    incremental = numgrad("cython", x, t, params, method="incremental", h=h)
    # The fallback is the literal path itself...
    literal = numgrad("cython", x, t, params, method="literal", h=h)
    for key in KEYS:
        np.testing.assert_array_equal(incremental[key], literal[key], err_msg=key)
    # ...and still the book's numbers (the NumPy twin is exp/log throughout).
    python = numgrad("python", x, t, params, method="incremental", h=h)
    assert_grads_close(incremental, python, EXACT_RTOL, EXACT_ATOL)
    rng = np.random.RandomState(1)
    entries = {"W1": w1_subset(x, seed=1, count=40),
               "W2": list(zip(rng.randint(0, 50, 60), rng.randint(0, 10, 60)))}
    assert_grads_close(incremental, brute_force(x, t, params, h=h, entries=entries),
                       BOOK_RTOL, BOOK_ATOL, entries=entries)


@pytest.mark.parametrize("x_kind", ["large_h", "unnormalised_x"])
def test_small_net_far_from_the_series_regime(backend, x_kind):
    x, t, params = small_problem(10, 8, 5, 4, 0.5, seed=5)
    h = 1e-4
    if x_kind == "large_h":
        h = 1e-2
    else:
        x = np.round(255 * x)
    full = numgrad(backend, x, t, params, method="full", h=h)
    incremental = numgrad(backend, x, t, params, method="incremental", h=h)
    assert_grads_close(incremental, full, BOOK_RTOL, BOOK_ATOL)


@pytest.mark.parametrize("method", ["full", "incremental", "literal"])
def test_all_zero_input(backend, method):
    # No pixel is on: W1 cannot change the loss, so its derivatives are exactly 0.
    x, t, params = small_problem(6, 5, 4, 3, 1.0, seed=8)
    x = np.zeros_like(x)
    got = numgrad(backend, x, t, params, method=method)
    assert not np.any(got["W1"])
    assert_grads_close(got, brute_force(x, t, params), BOOK_RTOL, BOOK_ATOL)


def test_series_degree_grows_with_h_and_weights():
    pytest.importorskip("zerokara._numgrad")
    from zerokara._numgrad import series_degree

    x = np.random.RandomState(0).rand(10, 20)
    W2 = 0.01 * np.random.RandomState(1).randn(5, 10)
    degrees = [series_degree(x, W2, h) for h in (1e-8, 1e-6, 1e-4, 1e-3)]
    assert degrees == sorted(degrees) and 0 < degrees[0] < degrees[-1]
    assert series_degree(x, 100.0 * W2, 1e-4) > series_degree(x, W2, 1e-4)
    # Raw 0..255 pixels: more terms for tiny weights, the exp/log path for any real ones.
    assert series_degree(255 * x, W2, 1e-4) in (0, 9, 10)
    assert series_degree(255 * x, 100.0 * W2, 1e-4) == 0
    assert series_degree(x, W2, 1e-1) == 0
    # A common offset of a row of W2 changes nothing in the softmax.
    assert series_degree(x, W2 + 50.0, 1e-4) == series_degree(x, W2, 1e-4)


def test_gradient_check_against_backprop(backend, mnist_batch, mnist_params):
    x, t = mnist_batch
    params = mnist_params["trained"]
    numerical = numgrad(backend, x, t, params, method="incremental")
    book = backprop(x, t, params, with_eps=False)
    exact = backprop(x, t, params, with_eps=True)
    net = TwoLayerNet(784, 50, 10, backend=backend)
    net.params = {k: params[k].copy() for k in KEYS}
    for key, g in net.gradient(x, t).items():
        np.testing.assert_allclose(g, book[key], rtol=1e-9, atol=1e-15, err_msg=key)
    for key in KEYS:
        # DESIGN.md's +1e-7 note: the book's backprop drops kappa = y_t / (y_t + 1e-7),
        # so its dl/da2 is off by (1 - kappa) |y - T| / N ~ 1e-7 / (y_t N) per sample;
        # over a batch that is up to ~6e-7 on a trained net (this one: 1e-7, on b2).
        book_gap = np.max(np.abs(numerical[key] - book[key]))
        assert book_gap <= 1e-6, (key, book_gap)
        # With kappa, what is left is the central difference's own truncation,
        # h^2 / 6 times a third derivative of order 1: ~1e-10 (this one: 1.2e-10,
        # on b2; 5e-12 on W1), far below the book gap.
        exact_gap = np.max(np.abs(numerical[key] - exact[key]))
        assert exact_gap <= 1e-9, (key, exact_gap)
        assert exact_gap < book_gap / 10, (key, exact_gap, book_gap)


@needs_cython
@pytest.mark.parametrize("method", ["full", "incremental", "literal"])
def test_bitwise_identical_for_any_thread_count(method, mnist_batch, mnist_params, simd):
    if method == "full":
        x, t, params = small_problem(40, 30, 20, 6, 1.0, seed=9)  # Hp = 24: 16 + 8
    else:
        x, t = mnist_batch
        params = mnist_params["trained"]
    results = [numgrad("cython", x, t, params, method=method, threads=n) for n in (1, 2, 3)]
    for other in results[1:]:
        for key in KEYS:
            np.testing.assert_array_equal(other[key], results[0][key], err_msg=key)


@needs_cython
@pytest.mark.parametrize("method", ["full", "incremental"])
def test_simd_helpers_agree_bitwise(method, mnist_batch, mnist_params):
    # setup.py compiles without FMA contraction, so the AVX2 helpers do the
    # same roundings as the portable ones, lane by lane.
    builds = _numgrad_builds()
    for build in builds:
        build._use_simd(True)
    if any(build.simd() != "avx2+fma" for build in builds):
        pytest.skip("this CPU has no AVX2+FMA")
    if method == "full":
        x, t, params = small_problem(30, 40, 60, 7, 1.0, seed=12)  # two passes of 52 units
    else:
        x, t = mnist_batch
        params = mnist_params["trained"]
    try:
        fast = numgrad("cython", x, t, params, method=method)
        for build in builds:
            build._use_simd(False)
        portable = numgrad("cython", x, t, params, method=method)
    finally:
        for build in builds:
            build._use_simd(True)
    for key in KEYS:
        np.testing.assert_array_equal(fast[key], portable[key], err_msg=key)


@pytest.mark.parametrize("method", ["full", "incremental", "literal"])
def test_parameters_unchanged(backend, method):
    x, t, params = small_problem(8, 6, 5, 4, 1.0, seed=4)
    I, H = params["W1"].shape
    net = TwoLayerNet(I, H, 4, backend=backend)
    net.params = {k: params[k].copy() for k in KEYS}
    views = dict(net.params)
    net.numerical_gradient(x, t, method=method)
    for key in KEYS:
        assert net.params[key] is views[key]
        np.testing.assert_array_equal(net.params[key], params[key], err_msg=key)
    bad_calls = [
        dict(x=x, t=np.full(len(t), 4)),             # label out of range
        dict(x=x[:, :-1], t=t),                      # wrong input size
        dict(x=x, t=t, h=-1e-4),                     # h must be positive
        dict(x=x, t=t, method="analytic"),           # unknown method
        dict(x=np.where(x > 0.5, np.nan, x), t=t),   # non-finite input
    ]
    for kwargs in bad_calls:
        kwargs.setdefault("method", method)
        with pytest.raises((ValueError, TypeError)):
            net.numerical_gradient(**kwargs)
        for key in KEYS:
            np.testing.assert_array_equal(net.params[key], params[key], err_msg=key)


@st.composite
def problems(draw):
    N = draw(st.integers(1, 20))
    I = draw(st.integers(1, 12))
    H = draw(st.integers(1, 12))
    O = draw(st.integers(2, 12))
    seed = draw(st.integers(0, 2**31 - 1))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    kind = draw(st.sampled_from(["dense", "sparse"]))
    scale = draw(st.sampled_from([0.01, 0.1, 1.0, 3.0]))
    rng = np.random.RandomState(seed)
    if kind == "dense":
        x = rng.randn(N, I)
    else:
        x = rng.rand(N, I) * (rng.rand(N, I) < 0.2)
    x = x.astype(dtype)
    t = rng.randint(0, O, N)
    params = {
        "W1": scale * rng.randn(I, H), "b1": scale * rng.randn(H),
        "W2": scale * rng.randn(H, O), "b2": scale * rng.randn(O),
    }
    return x, t, params


@needs_cython
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_random_shapes_cython_matches_python(problem):
    x, t, params = problem
    c = numgrad("cython", x, t, params, method="incremental")
    p = numgrad("python", x, t, params, method="incremental")
    assert_grads_close(c, p, EXACT_RTOL, EXACT_ATOL)
