"""accuracy's float32 screen: the same counts as the float64 scores, always.

The compiled ``accuracy`` first scores each sample in float32 and keeps
that answer only when an error bound proves the float64 scores have the
same argmax; otherwise it computes the sample again in float64 (see the
docstring of ``accuracy`` in cython/_core.pyx). These tests hold the
screened counts to the unscreened ones (``screen_min=0`` against
``screen_min=None``) on random problems built to be hard for it (near
ties, exact ties, saturated sigmoids, huge and tiny weights, NaN and
inf), on real MNIST, and check the one ingredient of the bound that is
measured rather than derived: the float32 sigmoid's error.
"""

import importlib
import importlib.util

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import trained_params
from zerokara import TwoLayerNet

try:
    _core = importlib.import_module("zerokara._core")
except ImportError:  # a pure-Python install: nothing compiled to screen
    _core = None

pytestmark = pytest.mark.skipif(_core is None, reason="compiled extension not built")


def _modules():
    """The builds of _core this machine can run (portable, and AVX2 where there is one)."""
    modules = [_core]
    if _core.cpu_supports_avx2() and importlib.util.find_spec("zerokara._core_avx2") is not None:
        modules.append(importlib.import_module("zerokara._core_avx2"))
    return modules


def _counts(module, x, t, params, threads, screen_min):
    exact = np.full(1, -1, dtype=np.intp)
    counts = module.accuracy(x, t, *params, threads, screen_min=screen_min, exact=exact)
    return counts, int(exact[0])


def assert_screen_agrees(x, t, params, threads=(1, 2)):
    """Screened and float64-only counts are equal; returns how many samples the screen sent to float64."""
    slow = []
    for module in _modules():
        for th in threads:
            plain, all_exact = _counts(module, x, t, params, th, None)
            assert all_exact == x.shape[0]
            screened, exact = _counts(module, x, t, params, th, 0)
            assert screened == plain, f"{module.__name__}, threads={th}"
            assert 0 <= exact <= x.shape[0]
            slow.append(exact)
    assert len(set(slow)) == 1, "the samples sent to float64 depend on the build or the thread count"
    return slow[0]


def test_screen_sigmoid_is_within_its_bound_on_floats_across_the_range():
    # The bound assumes the float32 sigmoid is within 2^-20 of the exact
    # one. Every 1024th float32 bit pattern (4M of them, every sign and
    # exponent, NaN and inf included), offset so as not to hit only round
    # values, plus a dense sweep of [-20, 20]. (All 2^32 were checked once:
    # at most 8.93e-8.)
    bits = np.arange(0, 2**32, 1024, dtype=np.uint64) + 333
    v = np.concatenate([bits.astype(np.uint32).view(np.float32), np.linspace(-20, 20, 400_001, dtype=np.float32),
                        np.array([0.0, -0.0, np.inf, -np.inf, 88.0, -88.0, -87.0, -103.9, 1e-45], np.float32)])
    with np.errstate(over="ignore", invalid="ignore"):
        x = v.astype(np.float64)
        e = np.exp(-np.abs(x))
        ref = np.where(x >= 0, 1.0, e) / (1.0 + e)
    nan = np.isnan(x)
    for module in _modules():
        out = np.empty_like(v)
        module.screen_sigmoid(v, out)
        assert np.isnan(out[nan]).all(), module.__name__
        err = np.abs(out[~nan].astype(np.float64) - ref[~nan])
        assert err.max() <= 2.0**-20, (module.__name__, float(err.max()), v[~nan][np.argmax(err)])
        assert ((out[~nan] >= 0) & (out[~nan] <= 1)).all()


def test_screen_sigmoid_checks_its_arguments():
    with pytest.raises(ValueError, match="out"):
        _core.screen_sigmoid(np.zeros(3, np.float32), np.zeros(2, np.float32))
    _core.screen_sigmoid(np.zeros(0, np.float32), np.zeros(0, np.float32))


@st.composite
def screen_problems(draw):
    n = draw(st.integers(1, 120))
    i = draw(st.integers(1, 200))
    h = draw(st.integers(1, 70))       # one or two float32 passes (56 columns), padding in the last
    o = draw(st.integers(2, 20))       # one to three vectors of scores
    scale = draw(st.sampled_from([1e-30, 1e-3, 0.01, 1.0, 30.0, 1e20, 2e30]))
    density = draw(st.sampled_from([0.0, 0.05, 0.3, 1.0]))
    tie = draw(st.sampled_from(["none", "copy", "nudge", "all", "near", "aim"]))
    eps = draw(st.sampled_from([1e-9, 1e-7, 1e-6, 1e-5]))
    special = draw(st.sampled_from(["none", "nan x", "inf x", "huge x", "inf W1", "nan b2"]))
    cancel = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    x = (rng.normal(0, 1, (n, i)) * (rng.random((n, i)) < density)).astype(np.float32)
    W1 = rng.normal(0, scale, (i, h))
    b1 = rng.normal(0, scale, h)
    scale2 = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    W2 = rng.normal(0, scale2, (h, o))
    b2 = rng.normal(0, scale2, o)
    if cancel and i >= 2:
        # Pixels in equal pairs whose rows of W1 cancel but for W1's own
        # scale: x W1 is of that scale, its terms 1e4 times larger, so the
        # float32 sums are off by far more than the z W2 roundings.
        m = i // 2
        x[:, 1:2 * m:2] = x[:, 0:2 * m:2]
        big = rng.normal(0, 1e4, (m, h))
        W1[0:2 * m:2] += big
        W1[1:2 * m:2] -= big
    if tie != "none":
        # Two classes (or all) scored alike: exact ties, where argmax takes
        # the first; ties up to a nudge of an ulp of b2; or "near": every
        # class a copy of class 0 changed by eps relative, so the scores
        # differ by about as much as float32 rounds them. The screen cannot
        # tell those apart and must hand them to float64.
        k = rng.integers(1, o)
        for c in (range(1, o) if tie in ("all", "near") else [k]):
            W2[:, c] = W2[:, 0]
            b2[c] = b2[0]
            if tie == "nudge":
                b2[c] = np.nextafter(b2[c], np.inf) if rng.random() < 0.5 else b2[c] + 1e-9 * abs(b2[c])
            elif tie == "near":
                W2[:, c] *= 1 + eps * rng.normal(size=h)
    if tie == "aim":
        # Half the rows copies of row 0, and b2 of a class moved so that its
        # score is within eps of the best one's there (by float64 NumPy).
        x[: (n + 1) // 2] = x[0]
        with np.errstate(all="ignore"):
            z = 1.0 / (1.0 + np.exp(-(x[0].astype(np.float64) @ W1 + b1)))
            a2 = z @ W2 + b2
            top, k = int(np.argmax(a2)), int(rng.integers(0, o))
            b2[k] += a2[top] - a2[k] + eps * (1 + abs(a2[top])) * rng.choice([-100, -1, 0, 1, 100])
    r = rng.integers(0, n)
    if special == "nan x":
        x[r, rng.integers(0, i)] = np.nan
    elif special == "inf x":
        x[r, rng.integers(0, i)] = np.inf
    elif special == "huge x":
        x[r, rng.integers(0, i)] = 3e38
    elif special == "inf W1":
        W1[rng.integers(0, i), rng.integers(0, h)] = np.inf
    elif special == "nan b2":
        b2[rng.integers(0, o)] = np.nan
    t = rng.integers(0, o, n).astype(np.int64)
    return x, t, (W1, b1, W2, b2)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(screen_problems())
def test_screened_counts_equal_the_float64_counts(problem):
    x, t, params = problem
    with np.errstate(all="ignore"):
        assert_screen_agrees(x, t, params)


def test_cancelling_sums_near_ties():
    # The part of the bound that comes from x W1: pixels in equal pairs
    # whose rows of W1 are +-1e4 apart, so x W1 (about 0.1, where the
    # sigmoid is steep) is summed from terms 1e5 times larger and the
    # float32 z are off by about 1e-4; half the rows are one image, on which
    # a second class is put within 1e-6..1e-3 of the best. The float32
    # scores cannot order those; only the x W1 term of the bound says so
    # (without it, about half these problems were miscounted).
    rng = np.random.default_rng(7)
    for trial in range(40):
        n, i, h, o = 200, 100, 50, 10
        x = (rng.random((n, i)) * (rng.random((n, i)) < 0.5)).astype(np.float32)
        x[:, 1::2] = x[:, 0::2]
        W1 = rng.normal(0, 0.01, (i, h))
        big = rng.normal(0, 1e4, (i // 2, h))
        W1[0::2] += big
        W1[1::2] -= big
        W2, b1, b2 = rng.normal(0, 1, (h, o)), np.zeros(h), np.zeros(o)
        x[: n // 2] = x[0]
        a2 = 1 / (1 + np.exp(-(x[0].astype(np.float64) @ W1 + b1))) @ W2 + b2
        top = int(np.argmax(a2))
        k = (top + 1) % o
        b2[k] += a2[top] - a2[k] + rng.choice([1e-6, 1e-5, 1e-4, 1e-3]) * rng.choice([-1, 1])
        t = rng.integers(0, o, n).astype(np.int64)
        assert_screen_agrees(x, t, (W1, b1, W2, b2), threads=(1,))


def test_exact_ties_all_go_to_float64():
    # Every class scored the same: no sample can be certified, and the
    # answer is argmax's first maximum, class 0, as predict's.
    rng = np.random.default_rng(3)
    x = (rng.random((300, 40)) * (rng.random((300, 40)) < 0.3)).astype(np.float32)
    W2 = np.repeat(rng.normal(0, 1, (16, 1)), 5, axis=1)
    params = (rng.normal(0, 1, (40, 16)), rng.normal(0, 1, 16), W2, np.zeros(5))
    t = np.zeros(300, np.int64)
    assert assert_screen_agrees(x, t, params) == 300
    assert _core.accuracy(x, t, *params, 2, screen_min=0) == (300, 0)


def test_clear_winners_are_decided_in_float32():
    # A class ahead by a wide margin: every sample is certified, none summed again.
    rng = np.random.default_rng(4)
    x = (rng.random((500, 60)) * (rng.random((500, 60)) < 0.3)).astype(np.float32)
    W2 = rng.normal(0, 0.1, (20, 4))
    b2 = np.array([0.0, 0.0, 5.0, 0.0])
    t = np.full(500, 2, np.int64)
    params = (rng.normal(0, 0.5, (60, 20)), rng.normal(0, 0.5, 20), W2, b2)
    assert assert_screen_agrees(x, t, params) == 0
    assert _core.accuracy(x, t, *params, 1, screen_min=0) == (500, 0)


@pytest.mark.parametrize("why", ["float64 x", "fewer rows", "huge W1", "huge W2", "no screen"])
def test_screen_steps_aside(why):
    # Where the screen does not apply, every sample is scored in float64.
    rng = np.random.default_rng(5)
    x = (rng.random((50, 30)) * (rng.random((50, 30)) < 0.5)).astype(np.float32)
    params = [rng.normal(0, 1, (30, 8)), rng.normal(0, 1, 8), rng.normal(0, 1, (8, 3)), rng.normal(0, 1, 3)]
    screen_min = 0
    if why == "float64 x":
        x = x.astype(np.float64)
    elif why == "fewer rows":
        screen_min = 51
    elif why == "huge W1":
        params[0][3, 4] = 2e30
    elif why == "huge W2":
        params[2][1, 1] = 2e30
    elif why == "no screen":
        screen_min = None
    t = rng.integers(0, 3, 50).astype(np.int64)
    for module in _modules():
        assert _counts(module, x, t, params, 2, screen_min)[1] == 50


def test_screen_on_mnist(mnist):
    # Real data, at the start of training and after it: the same counts,
    # and the screen decides nearly every sample itself.
    (x, t), (xt, tt) = mnist
    t64, tt64 = t.astype(np.int64), tt.astype(np.int64)
    net = TwoLayerNet(784, 50, 10, seed=0, backend="cython")
    for steps in (0, 300):
        trained_params(net, x, t, steps=steps)
        params = [net.params[k] for k in ("W1", "b1", "W2", "b2")]
        for xs, ts in ((x[:20000], t64[:20000]), (xt, tt64)):
            slow = assert_screen_agrees(xs, ts, params, threads=(2,))
            assert slow <= 0.01 * len(xs), (steps, slow)
        # The default threshold screens a whole set.
        exact = np.zeros(1, np.intp)
        _core.accuracy(xt, tt64, *params, 2, exact=exact)
        assert exact[0] <= 0.01 * len(xt)
