"""The chapter's functions: book values, any shape, stability, errors."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from zerokara import cross_entropy_error, mean_squared_error, sigmoid, sigmoid_grad, softmax


def book_sigmoid(x):
    return 1 / (1 + np.exp(-x))


def book_softmax(x):
    x = x - np.max(x, axis=-1, keepdims=True)
    return np.exp(x) / np.sum(np.exp(x), axis=-1, keepdims=True)


finite = st.floats(-30, 30, allow_nan=False, width=64)


@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=0, max_dims=3), elements=finite))
def test_sigmoid_equals_book_formula(x):
    # Where the book's formula does not overflow (|x| <= 30 here) the two
    # agree to rounding: a couple of ulps of a value in (0, 1).
    np.testing.assert_allclose(sigmoid(x), book_sigmoid(x), rtol=1e-15, atol=0)


@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=3), elements=finite))
def test_softmax_equals_book_formula_and_sums_to_one(x):
    y = softmax(x)
    np.testing.assert_allclose(y, book_softmax(x), rtol=1e-15, atol=1e-300)
    np.testing.assert_allclose(y.sum(axis=-1), 1.0, rtol=1e-14)


def test_book_examples():
    # Book section 3.2.4 and 3.5.1.
    np.testing.assert_allclose(sigmoid(np.array([-1.0, 1.0, 2.0])), [0.26894142, 0.73105858, 0.88079708], atol=5e-9)
    np.testing.assert_allclose(softmax(np.array([0.3, 2.9, 4.0])), [0.01821127, 0.24519181, 0.73659691], atol=5e-9)  # printed to 8 places
    # Book section 4.2.1 / 4.2.2: label 2, y[2] = 0.6 -> 0.0975 and 0.5108.
    t = [0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
    y = [0.1, 0.05, 0.6, 0.0, 0.05, 0.1, 0.0, 0.1, 0.0, 0.0]
    assert mean_squared_error(np.array(y), np.array(t)) == pytest.approx(0.0975, abs=1e-12)
    assert cross_entropy_error(np.array(y), np.array(t)) == pytest.approx(0.510825457099338, rel=1e-12)
    # Labels instead of one-hot give the same value.
    assert cross_entropy_error(np.array([y, y]), np.array([2, 2])) == pytest.approx(0.510825457099338, rel=1e-12)


def test_stable_for_huge_inputs_without_warnings():
    x = np.array([[-1e4, 0.0, 1e4], [1e4, 1e4, -1e4]])
    with warnings.catch_warnings(), np.errstate(over="raise", divide="raise", invalid="raise"):
        warnings.simplefilter("error")
        s = sigmoid(x)
        y = softmax(x)
        loss = cross_entropy_error(y, np.array([0, 2]))
    assert np.isfinite(s).all() and np.isfinite(y).all() and np.isfinite(loss)
    np.testing.assert_array_equal(s, [[0.0, 0.5, 1.0], [1.0, 1.0, 0.0]])
    np.testing.assert_array_equal(y[0], [0.0, 0.0, 1.0])
    # -log(0 + 1e-7) twice, averaged: the book's +1e-7 keeps it finite.
    assert loss == pytest.approx(-np.log(1e-7), rel=1e-12)
    np.testing.assert_allclose(sigmoid_grad(x), s * (1 - s))


def test_integer_inputs_become_float():
    assert sigmoid(np.array([0])).dtype == np.float64
    assert softmax([1, 2, 3]).dtype == np.float64
    with pytest.raises(TypeError, match="x must be numeric"):
        sigmoid(np.array(["a"]))


def test_cross_entropy_error_bad_labels():
    y = softmax(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="labels must be 0..2"):
        cross_entropy_error(y, np.array([0, 3]))
    with pytest.raises(ValueError, match="t has 3 labels but y has 2 rows"):
        cross_entropy_error(y, np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="integer labels"):
        cross_entropy_error(y, np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="same shape"):
        mean_squared_error(np.zeros(3), np.zeros(4))
