"""The chapter's generic numerical_gradient and gradient_descent (book 4.3-4.4)."""

import numpy as np
import pytest

from zerokara import gradient_descent, numerical_diff, numerical_gradient


def function_2(x):
    return x[0] ** 2 + x[1] ** 2


def test_numerical_diff_book_values():
    # Book 4.3.2: f(x) = 0.01 x^2 + 0.1 x at 5 and 10 -> 0.2 and 0.3 (central differences
    # are exact for quadratics up to rounding ~ 1e-16 / 1e-4).
    f = lambda x: 0.01 * x**2 + 0.1 * x  # noqa: E731
    assert numerical_diff(f, 5) == pytest.approx(0.2, abs=1e-9)
    assert numerical_diff(f, 10) == pytest.approx(0.3, abs=1e-9)


@pytest.mark.parametrize("point, expected", [((3.0, 4.0), (6.0, 8.0)), ((0.0, 2.0), (0.0, 4.0)), ((3.0, 0.0), (6.0, 0.0))])
def test_numerical_gradient_book_values(point, expected):
    # Book 4.4: the gradient of x0^2 + x1^2. Central differences are exact on a
    # quadratic, so only rounding remains: |x| * eps / h ~ 1e-11.
    x = np.array(point)
    np.testing.assert_allclose(numerical_gradient(function_2, x), expected, atol=1e-9)
    np.testing.assert_array_equal(x, point)  # unchanged


def test_numerical_gradient_2d_and_non_contiguous():
    base = np.arange(24, dtype=np.float64).reshape(4, 6) / 7.0
    view = base[::2, ::3]  # non-contiguous 2 x 2 view
    before = base.copy()
    f = lambda w: np.sum(w**3)  # noqa: E731
    g = numerical_gradient(f, view)
    # d/dw w^3 = 3 w^2; the central difference adds h^2 = 1e-8 exactly (w^3 is cubic).
    np.testing.assert_allclose(g, 3 * view**2 + 1e-8, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(base, before)


def test_numerical_gradient_perturbs_in_place_like_the_book():
    # The book's TwoLayerNet relies on f reading the perturbed array elsewhere.
    W = np.array([[1.0, 2.0], [3.0, 4.0]])
    f = lambda _: float(np.sum(W**2))  # noqa: E731 - ignores its argument, reads W
    np.testing.assert_allclose(numerical_gradient(f, W), 2 * W, atol=1e-9)


def test_numerical_gradient_restores_x_when_f_raises():
    x = np.array([1.0, 2.0])

    def f(v):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        numerical_gradient(f, x)
    np.testing.assert_array_equal(x, [1.0, 2.0])


def test_numerical_gradient_integer_array_and_errors():
    # The book would truncate x + 1e-4 to x for an int array and return zeros.
    np.testing.assert_allclose(numerical_gradient(function_2, np.array([3, 4])), [6, 8], atol=1e-9)
    with pytest.raises(ValueError, match="h must be"):
        numerical_gradient(function_2, np.array([3.0, 4.0]), h=0)
    with pytest.raises(TypeError, match="NumPy array"):
        numerical_gradient(function_2, [3.0, 4.0])


def test_gradient_descent_book_example():
    # Book 4.4.1: from (-3, 4), lr 0.1, 100 steps: x_k = 0.8^k x_0, |x_100| ~ 1e-9.
    init = np.array([-3.0, 4.0])
    x = gradient_descent(function_2, init, lr=0.1, step_num=100)
    assert np.max(np.abs(x)) < 1e-8
    np.testing.assert_array_equal(init, [-3.0, 4.0])  # the start point is not modified
    x2, history = gradient_descent(function_2, init, lr=0.1, step_num=20, return_history=True)
    assert history.shape == (20, 2)
    np.testing.assert_array_equal(history[0], init)
    np.testing.assert_allclose(x2, 0.8**20 * init, rtol=1e-6)


def test_gradient_descent_errors():
    with pytest.raises(ValueError, match="step_num"):
        gradient_descent(function_2, np.array([1.0, 1.0]), step_num=-1)
    with pytest.raises(ValueError, match="lr"):
        gradient_descent(function_2, np.array([1.0, 1.0]), lr=float("nan"))
