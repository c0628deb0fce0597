"""Cython vs Python: every compiled kernel held to its NumPy twin.

Tolerances: both backends compute in float64 but sum in different orders
(BLAS vs sample-by-sample loops skipping zeros), so values agree to a few
ulps: predict and loss within rtol 1e-12. Gradients are sums of up to N
terms that may cancel, so they are compared with rtol 1e-10 plus an atol
of 1e-12 of the largest entry, for entries that are ~0 by cancellation.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import AVAILABLE_BACKENDS, trained_params
from zerokara import TwoLayerNet

pytestmark = pytest.mark.skipif("cython" not in AVAILABLE_BACKENDS, reason="compiled extension not built")

KEYS = ("W1", "b1", "W2", "b2")


def pair(input_size, hidden_size, output_size, seed, weight_init_std=0.01):
    nets = [
        TwoLayerNet(input_size, hidden_size, output_size, weight_init_std, seed=seed, backend=b)
        for b in ("cython", "python")
    ]
    return nets


def assert_grads_close(gc, gp):
    for key in KEYS:
        scale = np.max(np.abs(gp[key]), initial=0.0)
        np.testing.assert_allclose(gc[key], gp[key], rtol=1e-10, atol=1e-12 * scale + 1e-300, err_msg=key)


@st.composite
def problems(draw):
    n = draw(st.integers(1, 257))
    i = draw(st.integers(1, 800))
    h = draw(st.integers(1, 128))
    o = draw(st.integers(2, 20))
    seed = draw(st.integers(0, 2**31 - 1))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    density = draw(st.sampled_from([0.0, 0.2, 1.0]))
    onehot = draw(st.booleans())
    layout = draw(st.sampled_from(["C", "F", "strided"]))
    # Up to std 1: logits of size ~10-30 whose rounding (~1e-14 absolute) fits
    # rtol 1e-12 on the probabilities; larger weights are a stability matter
    # (test_two_layer_net.py::test_stable_for_huge_weights), not a parity one.
    weight_std = draw(st.sampled_from([0.01, 0.1, 1.0]))
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n, i)) * (rng.random((n, i)) < density)
    if layout == "F":
        x = np.asfortranarray(x.astype(dtype))
    elif layout == "strided":
        big = np.zeros((n, 2 * i), dtype=dtype)
        big[:, ::2] = x
        x = big[:, ::2]
    else:
        x = x.astype(dtype)
    labels = rng.integers(0, o, n)
    t = np.eye(o)[labels] if onehot else labels
    return x, t, (i, h, o, seed, weight_std)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_parity_random(problem):
    x, t, (i, h, o, seed, std) = problem
    cy, py = pair(i, h, o, seed, std)
    # b1, b2 are zeros at init: give them values so their paths are exercised.
    rng = np.random.default_rng(seed + 1)
    for net in (cy, py):
        net.params["b1"][:] = rng.normal(0, std, h) if net is cy else cy.params["b1"]
        net.params["b2"][:] = rng.normal(0, std, o) if net is cy else cy.params["b2"]
    np.testing.assert_allclose(cy.predict(x), py.predict(x), rtol=1e-12, atol=1e-300)
    assert cy.loss(x, t) == pytest.approx(py.loss(x, t), rel=1e-12)
    assert cy.accuracy(x, t) == py.accuracy(x, t)
    assert_grads_close(cy.gradient(x, t), py.gradient(x, t))
    # One SGD step on a batch drawn from x with repeats: the updated
    # parameters differ by lr times the gradients' differences.
    rows = rng.integers(0, len(t), max(1, len(t) // 2))
    lr = 0.5
    losses = [net.sgd_step(x, t, lr, rows=rows) for net in (cy, py)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-10)
    for key in KEYS:
        scale = lr * max(np.max(np.abs(py.params[key])), 1.0)
        np.testing.assert_allclose(cy.params[key], py.params[key], rtol=1e-10, atol=1e-12 * scale, err_msg=key)


@pytest.mark.parametrize("trained", [False, True], ids=["untrained", "trained"])
def test_parity_real_mnist(mnist, trained):
    (x_train, t_train), (x_test, t_test) = mnist
    cy, py = pair(784, 50, 10, seed=3)
    if trained:
        trained_params(py, x_train, t_train, steps=300, lr=0.5)
        for key in KEYS:
            cy.params[key][...] = py.params[key]
    for start in (0, 100, 5000):
        x, t = x_train[start:start + 100], t_train[start:start + 100]
        np.testing.assert_allclose(cy.predict(x), py.predict(x), rtol=1e-12, atol=1e-300)
        assert cy.loss(x, t) == pytest.approx(py.loss(x, t), rel=1e-12)
        assert_grads_close(cy.gradient(x, t), py.gradient(x, t))
    rows = np.random.RandomState(0).randint(0, len(x_train), 100)
    losses = [net.sgd_step(x_train, t_train, 0.1, rows=rows) for net in (cy, py)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-12)
    for key in KEYS:
        np.testing.assert_allclose(cy.params[key], py.params[key], rtol=1e-12, atol=1e-15, err_msg=key)
    # Accuracy over a whole set: the counts are integers and must be equal.
    assert cy.accuracy(x_test, t_test) == py.accuracy(x_test, t_test)
    if trained:
        assert cy.accuracy(x_test, t_test) > 0.8


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_do_not_depend_on_thread_count(mnist, dtype):
    (x_train, t_train), _ = mnist
    x, t = x_train[:150].astype(dtype), t_train[:150]
    net = TwoLayerNet(784, 50, 10, seed=1, backend="cython")
    ref = (net.predict(x, threads=1), net.loss(x, t, threads=1), net.gradient(x, t, threads=1),
           net.accuracy(x_train[:3000], t_train[:3000], threads=1))
    for threads in (2, 3, 7):
        np.testing.assert_array_equal(net.predict(x, threads=threads), ref[0])
        assert net.loss(x, t, threads=threads) == ref[1]  # bitwise
        g = net.gradient(x, t, threads=threads)
        for key in KEYS:
            np.testing.assert_array_equal(g[key], ref[2][key])
        assert net.accuracy(x_train[:3000], t_train[:3000], threads=threads) == ref[3]
    # sgd_step: the same loss and parameters, bit for bit
    rows = np.random.RandomState(1).randint(0, 150, 120)
    ref_net = TwoLayerNet(784, 50, 10, seed=1, backend="cython")
    ref_loss = ref_net.sgd_step(x, t, 0.1, rows=rows, threads=1)
    for threads in (2, 3, 7):
        other = TwoLayerNet(784, 50, 10, seed=1, backend="cython")
        assert other.sgd_step(x, t, 0.1, rows=rows, threads=threads) == ref_loss
        for key in KEYS:
            np.testing.assert_array_equal(other.params[key], ref_net.params[key])



@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 150),
    i=st.integers(1, 300),
    h=st.integers(1, 128),
    o=st.integers(2, 12),
    seed=st.integers(0, 2**31 - 1),
    dtype=st.sampled_from([np.float32, np.float64]),
    threads=st.sampled_from([1, 2, 3]),
)
def test_accuracy_counts_predicts_argmax(n, i, h, o, seed, dtype, threads):
    # accuracy sums x W1 a few blocks of pixels at a time over chunks of
    # rows; predict sums each row at once. The same additions in the same
    # order, so the same scores: for any width of the hidden layer (one or
    # more register passes) and pixel count (one or more blocks; the last
    # pixel, whose row of W1 the passes must not read past, often non-zero).
    rng = np.random.default_rng(seed)
    x = (rng.normal(0, 1, (n, i)) * (rng.random((n, i)) < 0.4)).astype(dtype)
    net = TwoLayerNet(i, h, o, 0.3, seed=seed % 1000, backend="cython")
    net.params["b1"][:] = rng.normal(0, 0.3, h)
    guesses = np.argmax(net.predict(x, threads=threads), axis=1)
    for k in range(3):  # labels: right everywhere, right nowhere, random
        t = guesses if k == 0 else (guesses + 1) % o if k == 1 else rng.integers(0, o, n)
        assert net.accuracy(x, t, threads=threads) == np.mean(guesses == t)
