"""TwoLayerNet: the book's API and values, both backends, and bad input."""

import numpy as np
import pytest

from zerokara import TwoLayerNet, cross_entropy_error, numerical_gradient, sigmoid, softmax

KEYS = ("W1", "b1", "W2", "b2")


def book_predict(params, x):
    a1 = np.dot(x, params["W1"]) + params["b1"]
    z1 = sigmoid(a1)
    a2 = np.dot(z1, params["W2"]) + params["b2"]
    return softmax(a2)


def small_batch(n=7, i=5, o=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, i))
    t = rng.integers(0, o, n)
    return x, t


def test_init_matches_the_book(backend):
    np.random.seed(42)
    book_W1 = 0.01 * np.random.randn(784, 50)
    book_W2 = 0.01 * np.random.randn(50, 10)
    net = TwoLayerNet(784, 50, 10, seed=42, backend=backend)
    np.testing.assert_array_equal(net.params["W1"], book_W1)
    np.testing.assert_array_equal(net.params["W2"], book_W2)
    np.testing.assert_array_equal(net.params["b1"], np.zeros(50))
    assert all(net.params[k].dtype == np.float64 for k in KEYS)
    # Without a seed the global state is used, exactly as in the book.
    np.random.seed(42)
    np.testing.assert_array_equal(TwoLayerNet(784, 50, 10, backend=backend).params["W1"], book_W1)
    assert net.backend == backend and backend in repr(net)


def test_values_match_the_book_formulas(backend):
    x, t = small_batch()
    net = TwoLayerNet(5, 4, 3, weight_init_std=1.0, seed=0, backend=backend)
    y = book_predict(net.params, x)
    np.testing.assert_allclose(net.predict(x), y, rtol=1e-12)
    assert net.loss(x, t) == pytest.approx(cross_entropy_error(y, t), rel=1e-12)
    assert net.accuracy(x, t) == np.mean(np.argmax(y, axis=1) == t)
    # One-hot t as in the book's train_neuralnet.py gives the same numbers.
    T = np.eye(3)[t]
    assert net.loss(x, T) == net.loss(x, t)
    assert net.accuracy(x, T) == net.accuracy(x, t)
    g1, g2 = net.gradient(x, t), net.gradient(x, T)
    for key in KEYS:
        np.testing.assert_array_equal(g1[key], g2[key])


def test_single_sample_and_dtypes(backend):
    x, t = small_batch(n=1)
    net = TwoLayerNet(5, 4, 3, weight_init_std=1.0, seed=0, backend=backend)
    y = net.predict(x[0])
    assert y.shape == (3,)
    np.testing.assert_allclose(y, net.predict(x)[0], rtol=1e-15)
    assert net.loss(x[0], t[0]) == net.loss(x, t)
    assert net.loss(x[0], np.eye(3)[t[0]]) == net.loss(x, t)
    # float32, integer and non-contiguous x are accepted.
    x64 = np.random.default_rng(1).normal(size=(6, 10))[:, ::2]
    assert not x64.flags.c_contiguous
    np.testing.assert_allclose(net.predict(x64), net.predict(np.ascontiguousarray(x64)), rtol=0)
    np.testing.assert_allclose(net.predict(x64.astype(np.float32)), net.predict(x64.astype(np.float32).astype(np.float64)), rtol=1e-15)
    np.testing.assert_allclose(net.predict(np.arange(5)), net.predict(np.arange(5.0)), rtol=0)


def test_backprop_matches_central_difference(backend):
    # The book's backprop differentiates the loss WITHOUT its +1e-7
    # (dy = (y - t) / N). Against the central difference of that same loss
    # the only differences are truncation (h^2/6 * f''' ~ 1e-9) and rounding
    # (eps * L / h ~ 1e-11): far below 1e-8.
    x, t = small_batch(n=9, i=6, o=4, seed=5)
    net = TwoLayerNet(6, 5, 4, weight_init_std=0.5, seed=2, backend=backend)
    grads = net.gradient(x, t)

    def loss_without_eps(_):
        y = book_predict(net.params, x)
        return -np.mean(np.log(y[np.arange(len(t)), t]))

    for key in KEYS:
        numeric = numerical_gradient(loss_without_eps, net.params[key])
        assert np.max(np.abs(numeric - grads[key])) < 1e-8, key

    # Against the book's loss (with +1e-7) they differ by about 1e-7 / y_t
    # relative: y_t >= 0.05 here, so at most 2e-6 of the gradient's scale.
    for key in KEYS:
        numeric = numerical_gradient(lambda _: net.loss(x, t), net.params[key])
        scale = np.max(np.abs(grads[key]))
        assert np.max(np.abs(numeric - grads[key])) < 2e-6 * scale + 1e-10, key


def test_params_can_be_replaced_and_updated_in_place(backend):
    x, t = small_batch()
    net = TwoLayerNet(5, 4, 3, seed=0, backend=backend)
    before = net.loss(x, t)
    grads = net.gradient(x, t)
    for key in KEYS:
        net.params[key] -= 1.0 * grads[key]
    assert net.loss(x, t) < before
    # A float32 or Fortran-ordered replacement is converted, not rejected.
    net.params["W1"] = np.asfortranarray(net.params["W1"].astype(np.float32))
    assert np.isfinite(net.loss(x, t))


def test_stable_for_huge_weights(backend):
    x, t = small_batch()
    net = TwoLayerNet(5, 4, 3, weight_init_std=1e4, seed=0, backend=backend)
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        y = net.predict(x)
        loss = net.loss(x, t)
        grads = net.gradient(x, t)
    assert np.isfinite(y).all() and np.isfinite(loss)
    assert all(np.isfinite(g).all() for g in grads.values())
    assert loss <= -np.log(1e-7) + 1e-12  # the +1e-7 bounds every sample's loss


BAD_CONSTRUCTOR = [
    (dict(input_size=0, hidden_size=4, output_size=3), ValueError, "input_size must be at least 1"),
    (dict(input_size=5, hidden_size=2.5, output_size=3), TypeError, "hidden_size must be an integer"),
    (dict(input_size=5, hidden_size=4, output_size=1), ValueError, "output_size must be at least 2"),
    (dict(input_size=5, hidden_size=4, output_size=3, weight_init_std=float("nan")), ValueError, "weight_init_std"),
    (dict(input_size=5, hidden_size=4, output_size=3, backend="fortran"), ValueError, "backend must be one of"),
    (dict(input_size=5, hidden_size=4, output_size=3, threads=0), ValueError, "threads must be a positive integer"),
    (dict(input_size=5, hidden_size=4, output_size=3, threads="2"), TypeError, "threads must be a positive integer"),
]


@pytest.mark.parametrize("kwargs, error, message", BAD_CONSTRUCTOR)
def test_bad_constructor_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        TwoLayerNet(**kwargs)


x_ok, t_ok = small_batch()
BAD_CALLS = [
    ("x wrong width", np.zeros((7, 6)), t_ok, ValueError, r"x must have shape \(N, 5\); got \(7, 6\)"),
    ("x images not flattened", np.zeros((7, 1, 5, 1)), t_ok, ValueError, "flatten the images"),
    ("x empty", np.zeros((0, 5)), np.zeros(0, int), ValueError, "x is empty"),
    ("x strings", np.array([["a"] * 5] * 7), t_ok, TypeError, "x must be a real-valued array"),
    ("x complex", np.zeros((7, 5), complex), t_ok, TypeError, "x must be a real-valued array"),
    ("x NaN", np.full((7, 5), np.nan), t_ok, ValueError, "x contains NaN or inf"),
    ("t too large", x_ok, np.array([0, 1, 2, 3, 0, 0, 0]), ValueError, r"t has labels from 0 to 3, but output_size is 3 \(labels must be 0..2\)"),
    ("t negative", x_ok, np.array([0, -1, 2, 0, 0, 0, 0]), ValueError, "labels must be 0..2"),
    ("t too short", x_ok, t_ok[:5], ValueError, "t has 5 labels but x has 7 samples"),
    ("t fractional", x_ok, t_ok + 0.5, TypeError, "non-integer"),
    ("t bool", x_ok, t_ok > 0, TypeError, "booleans"),
    ("t one-hot wrong width", x_ok, np.eye(4)[t_ok], ValueError, r"one-hot t must have shape \(7, 3\)"),
    ("t one-hot two ones", x_ok, np.ones((7, 3)), ValueError, "exactly one 1 per row"),
    ("t strings", x_ok, np.array(["a"] * 7), TypeError, "t must be integer labels"),
    ("t 3-d", x_ok, np.zeros((7, 3, 1)), ValueError, "t must have shape"),
]


@pytest.mark.parametrize("case, x, t, error, message", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
@pytest.mark.parametrize("method", ["loss", "accuracy", "gradient"])
def test_bad_calls_raise_and_name_the_argument(backend, case, x, t, error, message, method):
    net = TwoLayerNet(5, 4, 3, seed=0, backend=backend)
    before = {k: v.copy() for k, v in net.params.items()}
    with pytest.raises(error, match=message):
        getattr(net, method)(x, t)
    for key in KEYS:
        np.testing.assert_array_equal(net.params[key], before[key])


def test_bad_params(backend):
    x, t = small_batch()
    net = TwoLayerNet(5, 4, 3, seed=0, backend=backend)
    net.params["W2"] = np.zeros((4, 2))
    with pytest.raises(ValueError, match=r"params\['W2'\] must have shape \(4, 3\); got \(4, 2\)"):
        net.loss(x, t)
    net = TwoLayerNet(5, 4, 3, seed=0, backend=backend)
    del net.params["b1"]
    with pytest.raises(ValueError, match="b1 is missing"):
        net.predict(x)
    net = TwoLayerNet(5, 4, 3, seed=0, backend=backend)
    net.params["b2"] = np.array(["a", "b", "c"])
    with pytest.raises(TypeError, match=r"params\['b2'\] must be a real float array"):
        net.predict(x)
    net = TwoLayerNet(5, 4, 3, seed=0, backend=backend)
    net.params["W1"][0, 0] = np.nan  # (an inf may legitimately saturate a sigmoid to a finite result)
    for method in ("loss", "accuracy", "gradient"):
        with pytest.raises(ValueError, match=r"params\['W1'\] contains NaN or inf"):
            getattr(net, method)(x, t)
    net = TwoLayerNet(5, 4, 3, seed=0, backend=backend)
    with pytest.raises(ValueError, match="threads must be"):
        net.loss(x, t, threads=-1)


# ------------------------------------------------------------------ sgd_step


def book_step(net, x_batch, t_batch, lr, threads=None):
    """The book's three lines of the training loop."""
    grad = net.gradient(x_batch, t_batch, threads=threads)
    for key in ("W1", "b1", "W2", "b2"):
        net.params[key] -= lr * grad[key]
    return net.loss(x_batch, t_batch, threads=threads)


def assert_same_params(a, b):
    for key in ("W1", "b1", "W2", "b2"):
        np.testing.assert_array_equal(a.params[key], b.params[key], err_msg=key)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_sgd_step_is_the_books_three_lines(backend, dtype, threads):
    rng = np.random.default_rng(4)
    x = (rng.random((300, 40)) * (rng.random((300, 40)) < 0.3)).astype(dtype)
    t = rng.integers(0, 7, 300)
    a = TwoLayerNet(40, 23, 7, 0.3, seed=2, backend=backend)
    b = TwoLayerNet(40, 23, 7, 0.3, seed=2, backend=backend)
    for step in range(6):
        rows = rng.integers(0, 300, 64)  # with repeats, as np.random.choice
        assert a.sgd_step(x, t, 0.5, rows=rows, threads=threads) == book_step(b, x[rows], t[rows], 0.5, threads)
        assert_same_params(a, b)
    # rows=None: the whole of x is the batch; one-hot labels
    onehot = np.eye(7)[t[:50]]
    assert a.sgd_step(x[:50], onehot, 0.25, threads=threads) == book_step(b, x[:50], t[:50], 0.25, threads)
    assert_same_params(a, b)


def test_sgd_step_on_mnist_matches_the_book(mnist, backend):
    (x, t), _ = mnist
    a = TwoLayerNet(784, 50, 10, seed=0, backend=backend)
    b = TwoLayerNet(784, 50, 10, seed=0, backend=backend)
    rng = np.random.RandomState(0)
    for _ in range(5):
        rows = rng.randint(0, len(x), 100)
        assert a.sgd_step(x, t, 0.1, rows=rows) == book_step(b, x[rows], t[rows], 0.1)
    assert_same_params(a, b)


@pytest.mark.parametrize("inputs, hidden, batch", [(300, 29, 37), (200, 50, 9), (130, 5, 21)])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_sgd_step_many_blocks_and_chunks(backend, inputs, hidden, batch, threads):
    # Inputs spanning several blocks of pixels, batches that are not whole
    # chunks and hidden sizes that end in a partial strip: the loss after
    # the update (summed a chunk of samples at a time in the compiled
    # kernel) and the update are still the book's three lines, bit for bit.
    rng = np.random.default_rng(inputs + hidden)
    x = (rng.random((150, inputs)) * (rng.random((150, inputs)) < 0.25)).astype(np.float32)
    t = rng.integers(0, 4, 150)
    a = TwoLayerNet(inputs, hidden, 4, 0.2, seed=1, backend=backend)
    b = TwoLayerNet(inputs, hidden, 4, 0.2, seed=1, backend=backend)
    for _ in range(3):
        rows = rng.integers(0, 150, batch)
        assert a.sgd_step(x, t, 0.5, rows=rows, threads=threads) == book_step(b, x[rows], t[rows], 0.5, threads)
        assert_same_params(a, b)


@pytest.mark.parametrize("layout", ["F", "strided", "int", "list"])
def test_sgd_step_gathers_other_layouts(backend, layout):
    rng = np.random.default_rng(5)
    x = rng.integers(0, 3, (30, 12)).astype(np.float64)
    t = rng.integers(0, 4, 30)
    rows = rng.integers(0, 30, 10)
    given = {
        "F": np.asfortranarray(x),
        "strided": np.repeat(x, 2, axis=1)[:, ::2],
        "int": x.astype(np.int64),
        "list": x.tolist(),
    }[layout]
    a = TwoLayerNet(12, 5, 4, 0.5, seed=1, backend=backend)
    b = TwoLayerNet(12, 5, 4, 0.5, seed=1, backend=backend)
    assert a.sgd_step(given, list(t), 0.1, rows=rows.tolist()) == book_step(b, x[rows], t[rows], 0.1)
    assert_same_params(a, b)


def test_sgd_step_updates_other_params_as_the_book(backend):
    # float32 or read-only parameters: the book's lines literally.
    x, t = small_batch(n=9, i=5, o=3)
    a = TwoLayerNet(5, 4, 3, 0.5, seed=1, backend=backend)
    b = TwoLayerNet(5, 4, 3, 0.5, seed=1, backend=backend)
    for net in (a, b):
        net.params["W2"] = net.params["W2"].astype(np.float32)
    assert a.sgd_step(x, t, 0.1) == book_step(b, x, t, 0.1)
    assert a.params["W2"].dtype == np.float32
    assert_same_params(a, b)
    a.params["W1"].flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        a.sgd_step(x, t, 0.1)


BAD_STEPS = [
    ("lr zero", {"lr": 0.0}, ValueError, "lr must be a positive finite number"),
    ("lr negative", {"lr": -0.1}, ValueError, "lr must be a positive finite number"),
    ("lr nan", {"lr": float("nan")}, ValueError, "lr must be a positive finite number"),
    ("lr bool", {"lr": True}, ValueError, "lr must be a positive finite number"),
    ("lr string", {"lr": "0.1"}, ValueError, "lr must be a positive finite number"),
    ("rows float", {"rows": [0.0, 1.0]}, TypeError, "rows must be integer indices"),
    ("rows bool", {"rows": [True, False]}, TypeError, "rows must be integer indices"),
    ("rows 2-D", {"rows": [[0, 1]]}, ValueError, "rows must be a non-empty 1-D array"),
    ("rows empty", {"rows": np.array([], dtype=int)}, ValueError, "rows must be a non-empty 1-D array"),
    ("rows negative", {"rows": [0, -1]}, ValueError, r"rows must be indices in 0..6"),
    ("rows too large", {"rows": [7]}, ValueError, r"rows must be indices in 0..6"),
    ("t length", {"t": [0, 1]}, ValueError, "t has 2 labels but x has 7 samples"),
    ("t label", {"t": [0, 1, 2, 0, 0, 1, 3]}, ValueError, "t has labels from 0 to 3"),
    ("x 1-D", {"x": np.zeros(5)}, ValueError, r"x must have shape \(M, 5\)"),
    ("x width", {"x": np.zeros((7, 4))}, ValueError, r"x must have shape \(N, 5\)"),
    ("x strings", {"x": np.array([["a"] * 5] * 7)}, TypeError, "x must be a real-valued array"),
]


@pytest.mark.parametrize("case, change, error, message", BAD_STEPS, ids=[c[0] for c in BAD_STEPS])
def test_sgd_step_bad_arguments(backend, case, change, error, message):
    x, t = small_batch(n=7, i=5, o=3)
    net = TwoLayerNet(5, 4, 3, seed=0, backend=backend)
    before = {k: v.copy() for k, v in net.params.items()}
    args = {"x": x, "t": t, "lr": 0.1, "rows": [0, 1, 6], **change}
    with pytest.raises(error, match=message):
        net.sgd_step(args.pop("x"), args.pop("t"), args.pop("lr"), **args)
    for key in before:  # nothing was updated
        np.testing.assert_array_equal(net.params[key], before[key])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sgd_stepper_is_sgd_step(backend, dtype):
    # The training loop's step, checked once: the same numbers as sgd_step.
    rng = np.random.default_rng(8)
    x = (rng.random((200, 30)) * (rng.random((200, 30)) < 0.3)).astype(dtype)
    t = rng.integers(0, 6, 200)
    a = TwoLayerNet(30, 12, 6, 0.3, seed=1, backend=backend)
    b = TwoLayerNet(30, 12, 6, 0.3, seed=1, backend=backend)
    step = a._sgd_stepper(x, t, 0.5)
    for i in range(5):
        rows = rng.integers(0, 200, 32).astype(np.intp)
        assert step(rows) == b.sgd_step(x, t, 0.5, rows=rows)
        assert_same_params(a, b)
    # The labels were copied: changing t afterwards does not reach the loop.
    rows = rng.integers(0, 200, 32).astype(np.intp)
    expected = b.sgd_step(x, t.copy(), 0.5, rows=rows)
    t[:] = 5
    assert step(rows) == expected
    assert_same_params(a, b)


def test_sgd_stepper_falls_back_to_the_checked_step(backend):
    x, t = small_batch(n=7, i=5, o=3)
    a = TwoLayerNet(5, 4, 3, seed=0, backend=backend)
    b = TwoLayerNet(5, 4, 3, seed=0, backend=backend)
    step = a._sgd_stepper(x, t, 0.1)
    # rows of another dtype, or a list: converted as sgd_step converts them
    assert step(np.array([0, 6, 6], dtype=np.int32)) == b.sgd_step(x, t, 0.1, rows=[0, 6, 6])
    assert step([1, 2]) == b.sgd_step(x, t, 0.1, rows=[1, 2])
    # parameters replaced after the stepper was made: the new ones are used
    a.params["W1"] = a.params["W1"].copy()
    assert step(np.array([3, 4])) == b.sgd_step(x, t, 0.1, rows=[3, 4])
    assert_same_params(a, b)
    # x as a Fortran-ordered array: gathered and converted at each step
    xf = np.asfortranarray(x)
    assert a._sgd_stepper(xf, t, 0.1)(np.array([5, 0])) == b.sgd_step(x, t, 0.1, rows=[5, 0])
    assert_same_params(a, b)


@pytest.mark.parametrize("threads", [1, 2])
def test_stepper_many_is_steps_one_by_one(backend, threads):
    # Several steps in one call: the same losses and parameters, bit for
    # bit, as the steps one by one; stop() ends them after the step it
    # returns true.
    rng = np.random.default_rng(9)
    x = (rng.random((300, 130)) * (rng.random((300, 130)) < 0.3)).astype(np.float32)
    t = rng.integers(0, 5, 300)
    a = TwoLayerNet(130, 21, 5, 0.3, seed=2, backend=backend)
    b = TwoLayerNet(130, 21, 5, 0.3, seed=2, backend=backend)
    many = a._sgd_stepper(x, t, 0.5, threads=threads).many
    one = b._sgd_stepper(x, t, 0.5, threads=threads)
    batches = rng.integers(0, 300, (9, 40)).astype(np.intp)
    out = []
    assert many(batches, out) is None
    assert out == [one(rows) for rows in batches]
    assert_same_params(a, b)

    asked = []

    def stop():
        asked.append(len(out))
        return len(asked) == 3

    out = []
    assert many(batches, out, stop) is None
    assert len(out) == 3 and out == [one(rows) for rows in batches[:3]]
    assert_same_params(a, b)
    # A batch of another dtype: the steps one by one, the same numbers.
    out = []
    assert many(batches[:2].astype(np.int32), out) is None
    assert out == [one(rows) for rows in batches[:2]]
    assert_same_params(a, b)
    # Parameters replaced after the stepper was made: the new ones are used.
    a.params["W1"] = a.params["W1"].copy()
    out = []
    assert many(batches[2:5], out) is None
    assert out == [one(rows) for rows in batches[2:5]]
    assert_same_params(a, b)


def test_stepper_many_stops_at_a_nonfinite_loss(backend):
    # lr 1e308 makes the scores overflow within a few steps: the steps
    # before are kept, the error is the one step() raises there.
    rng = np.random.default_rng(10)
    x = rng.random((50, 20)).astype(np.float32)
    t = rng.integers(0, 3, 50)
    a = TwoLayerNet(20, 6, 3, seed=0, backend=backend)
    b = TwoLayerNet(20, 6, 3, seed=0, backend=backend)
    batches = rng.integers(0, 50, (8, 10)).astype(np.intp)
    out, expected = [], []
    with np.errstate(all="ignore"):  # the NumPy backend's overflow warnings
        error = a._sgd_stepper(x, t, 1e308).many(batches, out)
        one = b._sgd_stepper(x, t, 1e308)
        with pytest.raises(ValueError, match="not finite"):
            for rows in batches:
                expected.append(one(rows))
    assert isinstance(error, ValueError) and "not finite" in str(error)
    assert out == expected and all(np.isfinite(out))
    assert_same_params(a, b)
    # A row out of range: no step is made.
    before = {k: v.copy() for k, v in a.params.items()}
    out = []
    error = a._sgd_stepper(x, t, 0.1).many(np.array([[0, 1], [2, 50]], dtype=np.intp), out)
    assert isinstance(error, ValueError) and "rows must be indices in 0..49" in str(error) and out == []
    for key in before:
        np.testing.assert_array_equal(a.params[key], before[key])


@pytest.mark.parametrize("rows, message", [
    ([0, -1], r"rows must be indices in 0..6"),
    ([7], r"rows must be indices in 0..6"),
    ([0, 2**40], r"rows must be indices in 0..6"),
])
def test_sgd_stepper_bad_rows(backend, rows, message):
    x, t = small_batch(n=7, i=5, o=3)
    net = TwoLayerNet(5, 4, 3, seed=0, backend=backend)
    before = {k: v.copy() for k, v in net.params.items()}
    step = net._sgd_stepper(x, t, 0.1)
    with pytest.raises(ValueError, match=message):
        step(np.array(rows, dtype=np.intp))
    for key in before:  # nothing was updated
        np.testing.assert_array_equal(net.params[key], before[key])


@pytest.mark.parametrize("change, error, message", [
    ({"lr": 0.0}, ValueError, "lr must be a positive finite number"),
    ({"lr": "0.1"}, ValueError, "lr must be a positive finite number"),
    ({"t": [0, 1]}, ValueError, "t has 2 labels but x has 7 samples"),
    ({"t": [0, 1, 2, 0, 0, 1, 3]}, ValueError, "t has labels from 0 to 3"),
    ({"x": np.zeros((7, 4))}, ValueError, r"x must have shape \(N, 5\)"),
])
def test_sgd_stepper_checks_its_arguments_once(backend, change, error, message):
    x, t = small_batch(n=7, i=5, o=3)
    net = TwoLayerNet(5, 4, 3, seed=0, backend=backend)
    args = {"x": x, "t": t, "lr": 0.1, **change}
    with pytest.raises(error, match=message):
        net._sgd_stepper(args["x"], args["t"], args["lr"])


def test_compiled_sgd_step_checks_what_it_reads():
    # The kernel itself refuses rows, labels and shapes it would read out of
    # bounds with, should a caller skip TwoLayerNet's checks.
    core = pytest.importorskip("zerokara._core")
    x, t = small_batch(n=7, i=5, o=3)
    x = np.ascontiguousarray(x, dtype=np.float64)
    net = TwoLayerNet(5, 4, 3, seed=0)
    P = [net.params[k] for k in ("W1", "b1", "W2", "b2")]
    rows, tb = np.array([0, 1], dtype=np.intp), np.array([0, 1], dtype=np.int64)
    for r, labels, params, message in [
        (np.array([0, 7], dtype=np.intp), tb, P, "rows must be indices in 0..6"),
        (np.array([-3, 0], dtype=np.intp), tb, P, "rows must be indices in 0..6"),
        (rows, np.array([0, 3], dtype=np.int64), P, r"t must hold labels in 0..2"),
        (rows, np.array([-1, 0], dtype=np.int64), P, r"t must hold labels in 0..2"),
        (rows, np.array([0], dtype=np.int64), P, "must have the same non-zero length"),
        (np.array([], dtype=np.intp), np.array([], dtype=np.int64), P, "must have the same non-zero length"),
        (rows, tb, [np.zeros((6, 4)), *P[1:]], "shapes do not fit"),
        (rows, tb, [P[0], np.zeros(3), *P[2:]], "shapes do not fit"),
        (rows, tb, [*P[:2], np.zeros((4, 2)), P[3]], "shapes do not fit"),
    ]:
        with pytest.raises(ValueError, match=message):
            core.sgd_step(x, r, labels, *params, 0.1, 1)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NumPy's overflow warnings (python backend)
def test_sgd_step_non_finite(backend):
    x, t = small_batch(n=7, i=5, o=3)
    net = TwoLayerNet(5, 4, 3, seed=0, backend=backend)
    net.params["b2"][1] = np.nan
    before = {k: v.copy() for k, v in net.params.items()}
    # The loss before the update is NaN: gradient raises, nothing changes.
    with pytest.raises(ValueError, match=r"params\['b2'\] contains NaN or inf"):
        net.sgd_step(x, t, 0.1, rows=[0, 2])
    for key in before:
        np.testing.assert_array_equal(net.params[key], before[key])
    # A learning rate that overflows the parameters: the step that makes
    # them inf raises as the book's loss call does, with the update kept.
    a = TwoLayerNet(5, 4, 3, 1.0, seed=0, backend=backend)
    b = TwoLayerNet(5, 4, 3, 1.0, seed=0, backend=backend)
    errors = []
    for step in (lambda: a.sgd_step(x, t, 1e308), lambda: book_step(b, x, t, 1e308)):
        with pytest.raises(ValueError, match="NaN or inf|not finite") as info:
            for _ in range(50):
                step()
        errors.append(str(info.value))
    assert errors[0] == errors[1]
    assert_same_params(a, b)
