"""The two ways the compiled sgd_steps splits a step between its threads, and the choice between them.

``split=False`` (backprop_: threads share the samples) and ``split=True``
(split_step_: threads share the hidden units, each with its own copy of
its columns of W1) must give the same numbers bit for bit, for every
shape, thread count, build and input type, including the early ends (a
loss that is not finite, ``stop``, an exception raised between steps).
The backend's ``sgd_steps`` picks one by timing both (SplitChooser); its
choices never change a number either.
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import AVAILABLE_BACKENDS

pytestmark = [
    pytest.mark.skipif("cython" not in AVAILABLE_BACKENDS, reason="compiled extension not built"),
    pytest.mark.skipif(os.environ.get("ZEROKARA_BACKEND", "").lower() == "python",
                       reason="the python backend was forced"),
]


def builds():
    """The compiled builds that can run here: portable, and AVX2 where the CPU has it."""
    import zerokara._core as portable

    found = [portable]
    try:
        import zerokara._core_avx2 as avx2
    except ImportError:
        return found
    if portable.cpu_supports_avx2():
        found.append(avx2)
    return found


def problem(seed, M, I, H, O, dtype, density=0.3, std=0.1):
    rng = np.random.default_rng(seed)
    x = (rng.normal(0, 1, (M, I)) * (rng.random((M, I)) < density)).astype(dtype)
    labels = rng.integers(0, O, M)
    params = (std * rng.standard_normal((I, H)), std * rng.standard_normal(H),
              std * rng.standard_normal((H, O)), std * rng.standard_normal(O))
    return x, labels, params


def run(module_steps, x, labels, params, rows, lr, threads, split, stop=None):
    """``module_steps`` on copies of params: (returned, done, losses done, params after)."""
    W1, b1, W2, b2 = (p.copy() for p in params)
    losses = np.full(rows.shape[0], -1.0)
    done = np.zeros(1, dtype=np.intp)
    t = np.ascontiguousarray(labels[rows]).astype(np.int64)
    raised = None
    try:
        returned = module_steps(x, rows, t, W1, b1, W2, b2, lr, threads, losses, done, stop, split)
    except KeyboardInterrupt as exc:
        returned, raised = None, type(exc)
    return returned, raised, int(done[0]), losses[: done[0]].tobytes(), [p.tobytes() for p in (W1, b1, W2, b2)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    M=st.integers(1, 120),
    I=st.integers(1, 200),  # noqa: E741
    H=st.integers(1, 130),  # one strip or several, the last full or not
    O=st.integers(2, 15),
    N=st.integers(1, 60),
    K=st.integers(1, 4),
    threads=st.integers(1, 4),
    dtype=st.sampled_from([np.float32, np.float64]),
    density=st.sampled_from([0.0, 0.3, 1.0]),
    std=st.sampled_from([0.01, 0.5]),
)
def test_split_steps_are_the_shared_steps_bit_for_bit(seed, M, I, H, O, N, K, threads, dtype, density, std):
    x, labels, params = problem(seed, M, I, H, O, dtype, density, std)
    rows = np.random.default_rng(seed + 1).integers(0, M, (K, N)).astype(np.intp)
    for module in builds():
        shared = run(module.sgd_steps, x, labels, params, rows, 0.3, threads, False)
        split = run(module.sgd_steps, x, labels, params, rows, 0.3, threads, True)
        assert split == shared, module.__name__
        assert shared[0] is True and shared[2] == K


def mnist_problem(mnist, M, K, seed):
    """The first M MNIST images and labels, the book's initial parameters, K batches of 100."""
    (x, t), _ = mnist
    rng = np.random.default_rng(seed)
    params = (0.01 * rng.standard_normal((784, 50)), np.zeros(50), 0.01 * rng.standard_normal((50, 10)), np.zeros(10))
    return x[:M], t[:M].astype(np.int64), params, rng.integers(0, M, (K, 100)).astype(np.intp)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_split_steps_on_real_mnist(mnist, threads):
    x, labels, params, rows = mnist_problem(mnist, 5000, 30, 4)
    for module in builds():
        shared = run(module.sgd_steps, x, labels, params, rows, 0.1, threads, False)
        assert run(module.sgd_steps, x, labels, params, rows, 0.1, threads, True) == shared
        assert run(module.sgd_steps, x, labels, params, rows, 0.1, 1, False) == shared  # any thread count


def test_split_steps_end_early_alike():
    x, labels, params = problem(3, 60, 40, 35, 4, np.float32, density=1.0, std=1.0)
    rows = np.random.default_rng(5).integers(0, 60, (12, 20)).astype(np.intp)
    for module in builds():
        for threads in (1, 2):
            # lr 1e308: the scores overflow within a few steps
            with np.errstate(all="ignore"):
                shared = run(module.sgd_steps, x, labels, params, rows, 1e308, threads, False)
                split = run(module.sgd_steps, x, labels, params, rows, 1e308, threads, True)
            assert split == shared and shared[0] is False and shared[2] < 12
            # stop() true after the third step
            for way in (False, True):
                asked = []
                result = run(module.sgd_steps, x, labels, params, rows, 0.1, threads, way,
                             stop=lambda: asked.append(1) or len(asked) == 3)
                assert result[2] == 3
                if way:
                    assert result == ended
                ended = result

            # an exception between steps (Ctrl-C's KeyboardInterrupt): W1
            # leaves its private copy all the same
            def interrupt(asked=[]):
                asked.append(1)
                if len(asked) % 4 == 0:
                    raise KeyboardInterrupt
                return False

            shared = run(module.sgd_steps, x, labels, params, rows, 0.1, threads, False, stop=interrupt)
            split = run(module.sgd_steps, x, labels, params, rows, 0.1, threads, True, stop=interrupt)
            assert shared[1] is KeyboardInterrupt and shared[2] == 4
            assert split == shared


@pytest.mark.parametrize("H", [50, 52, 7])
@pytest.mark.parametrize("shift", [0, 8, 16, 24])
def test_steps_by_samples_on_any_alignment_of_W1(H, shift):
    # The steps by samples read W1 from a copy whose rows start on whole
    # vectors (padded_w1_) where the caller's rows do not: the same numbers
    # as single steps on the caller's array, W1 updated in place, nothing
    # written outside it, whatever its address.
    x, labels, params = problem(11, 80, 60, H, 5, np.float32)
    rows = np.random.default_rng(12).integers(0, 80, (6, 25)).astype(np.intp)
    t = np.ascontiguousarray(labels[rows]).astype(np.int64)
    for module in builds():
        for threads in (1, 2):
            buf = np.zeros(60 * H + 8)
            start = (-buf.ctypes.data % 64 + shift) % 64 // 8
            W1 = buf[start:start + 60 * H].reshape(60, H)
            W1[...] = params[0]
            b1, W2, b2 = (p.copy() for p in params[1:])
            losses, done = np.zeros(6), np.zeros(1, dtype=np.intp)
            assert module.sgd_steps(x, rows, t, W1, b1, W2, b2, 0.3, threads, losses, done) is True
            ref = [p.copy() for p in params]
            expected = [module.sgd_step(x, rows[k], t[k], *ref, 0.3, threads)[1] for k in range(6)]
            assert losses.tolist() == expected, module.__name__
            assert [p.tobytes() for p in (W1, b1, W2, b2)] == [p.tobytes() for p in ref]
            assert not buf[:start].any() and not buf[start + 60 * H:].any()


def test_chooser_plans():
    from zerokara.backends.cython import PROBE_EVERY, PROBE_STEPS, SplitChooser

    c = SplitChooser()
    key = ("shapes", 2)
    # First calls: each way timed on PROBE_STEPS steps.
    assert c.plan(key, 500) == [(True, PROBE_STEPS), (False, 500 - PROBE_STEPS)]
    c.record(key, True, PROBE_STEPS, PROBE_STEPS * 3e-4)
    c.record(key, False, 500 - PROBE_STEPS, (500 - PROBE_STEPS) * 2e-4)
    plans = [c.plan(key, 500) for _ in range(2 * PROBE_EVERY)]
    # The quicker way, and every PROBE_EVERY-th call a probe of the other first.
    probes = [p for p in plans if len(p) == 2]
    assert len(probes) == 2 and all(p == [(True, PROBE_STEPS), (False, 500 - PROBE_STEPS)] for p in probes)
    assert all(p == [(False, 500)] for p in plans if len(p) == 1)
    # The other way turns quicker: taken from then on.
    c.record(key, True, PROBE_STEPS, PROBE_STEPS * 1e-4)
    assert c.plan(key, 500) in ([(True, 500)], [(False, PROBE_STEPS), (True, 500 - PROBE_STEPS)])
    # A call too short to share is given whole.
    assert c.plan(key, PROBE_STEPS) in ([(True, PROBE_STEPS)], [(False, PROBE_STEPS)])
    # Other shapes: timed afresh.
    assert c.plan(("other", 2), 100) == [(True, PROBE_STEPS), (False, 100 - PROBE_STEPS)]
    assert c.per_step == {False: None, True: None}
    # A part that made no step records nothing; another key's record is ignored.
    c.record(("other", 2), True, 0, 1.0)
    c.record(key, True, 10, 1.0)
    assert c.per_step == {False: None, True: None}


def test_backend_choice_keeps_the_numbers(mnist):
    from zerokara.backends import cython as backend

    x, labels, params, rows = mnist_problem(mnist, 3000, 150, 6)
    forced = run(backend.sgd_steps, x, labels, params, rows, 0.1, 2, False)
    backend._local.chooser = backend.SplitChooser()
    # Calls of 150, 40 and 150 steps: probes and both ways, part after part.
    W1, b1, W2, b2 = (p.copy() for p in params)
    losses = np.zeros(150)
    for part in (slice(0, 50), slice(50, 90), slice(90, 150)):
        done = np.zeros(1, dtype=np.intp)
        assert backend.sgd_steps(x, rows[part], np.ascontiguousarray(labels[rows[part]]), W1, b1, W2, b2, 0.1, 2,
                                 losses[part], done) is True
        assert done[0] == part.stop - part.start
    assert [p.tobytes() for p in (W1, b1, W2, b2)] == forced[4]
    assert losses.tobytes() == forced[3]
    assert all(v is not None for v in backend._local.chooser.per_step.values())

    # A bad row in the part after the probe: nothing is done, as by one call.
    backend._local.chooser = backend.SplitChooser()
    bad = rows[:80].copy()
    bad[70, 3] = 3000
    W1c = params[0].copy()
    done = np.zeros(1, dtype=np.intp)
    with pytest.raises(ValueError, match="rows must be indices in 0..2999"):
        backend.sgd_steps(x, bad, np.ascontiguousarray(labels[np.minimum(bad, 2999)]), W1c, params[1].copy(),
                          params[2].copy(), params[3].copy(), 0.1, 2, np.zeros(80), done)
    assert done[0] == 0 and W1c.tobytes() == params[0].tobytes()

    # stop() true after the probe's last step: the call ends there.
    backend._local.chooser = backend.SplitChooser()
    asked = []

    def stop():
        asked.append(1)
        return len(asked) == backend.PROBE_STEPS

    result = run(backend.sgd_steps, x, labels, params, rows[:100], 0.1, 2, None, stop=stop)
    assert result[0] is True and result[2] == backend.PROBE_STEPS
    assert result == run(backend.sgd_steps, x, labels, params, rows[:100], 0.1, 2, False,
                         stop=lambda asked=[]: asked.append(1) or len(asked) == backend.PROBE_STEPS)


def test_python_backend_takes_split():
    from zerokara.backends import python as backend

    x, labels, params = problem(8, 30, 12, 5, 3, np.float64)
    rows = np.random.default_rng(9).integers(0, 30, (3, 10)).astype(np.intp)
    assert run(backend.sgd_steps, x, labels, params, rows, 0.1, 2, True) == \
        run(backend.sgd_steps, x, labels, params, rows, 0.1, 2, None)
