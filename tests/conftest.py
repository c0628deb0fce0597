"""Shared fixtures: the backends to parametrise over, and real MNIST batches.

Real data comes from ``$ZEROKARA_DATA/mnist`` when set (CI exports
``ZEROKARA_DATA=../shared``), else from the copy embedded in the package.
"""

from __future__ import annotations

import numpy as np
import pytest

from zerokara.backends import BACKENDS, get_backend


def _available_backends():
    names = []
    for name in BACKENDS:
        try:
            get_backend(name)
        except ImportError:
            continue
        names.append(name)
    return names


AVAILABLE_BACKENDS = _available_backends()


@pytest.fixture(params=AVAILABLE_BACKENDS)
def backend(request):
    """Each backend that is importable here (the build test fails if cython is not)."""
    return request.param


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Keep the loader's .npy cache of this test session out of the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def mnist():
    """MNIST as the book loads it: normalised float32 images, integer labels."""
    from zerokara.datasets import load_mnist

    return load_mnist(normalize=True, flatten=True, one_hot_label=False)


def trained_params(net, x, t, steps=300, lr=0.1, batch_size=100, seed=0):
    """Train ``net`` in place with the book's SGD loop (backprop) and return it."""
    rng = np.random.RandomState(seed)
    for _ in range(steps):
        idx = rng.choice(len(x), batch_size)
        grads = net.gradient(x[idx], t[idx])
        for key in ("W1", "b1", "W2", "b2"):
            net.params[key] -= lr * grads[key]
    return net


def interrupting_stepper(make_stepper, at, action):
    """A stand-in for ``TwoLayerNet._sgd_stepper`` whose step calls ``action()`` at its ``at``-th call.

    ``make_stepper`` is the real one (bound, or the function if the stand-in
    replaces it on the class); ``action`` raises KeyboardInterrupt or sends
    SIGINT, as a user's Ctrl-C would arrive in the training loop.
    """
    calls = {"n": 0}

    def stepper(*args, **kw):
        step = make_stepper(*args, **kw)

        def interrupted_step(rows):
            calls["n"] += 1
            if calls["n"] == at:
                action()
            return step(rows)

        many = getattr(step, "many", None)
        if many is not None:
            # The trainer's several-steps call, a step at a time through the
            # real one, so that the action comes at the same step.
            def interrupted_many(rows2d, out, stop=None):
                for j in range(len(rows2d)):
                    calls["n"] += 1
                    if calls["n"] == at:
                        action()
                    error = many(rows2d[j : j + 1], out, stop)
                    if error is not None:
                        return error
                    if stop is not None and stop():
                        break
                return None

            interrupted_step.many = interrupted_many
        return interrupted_step

    return stepper
