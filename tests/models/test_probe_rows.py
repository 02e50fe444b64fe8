"""headstart.models.probe_rows: the probe on many rows solves scikit-learn's problem, C from a sample, no copies."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from headstart._validation import ParameterError
from headstart.models.probe import LinearProbe
from headstart.models.probe_rows import column_moments, fit_rows, stratified_rows


def _blobs(n: int, n_classes: int, n_features: int, spread: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, n_features)) * 3.0
    y = rng.integers(0, n_classes, n)
    X = centres[y] + spread * rng.normal(size=(n, n_features))
    X = X * rng.uniform(0.1, 10.0, size=n_features) + rng.uniform(-5, 5, size=n_features)
    return np.ascontiguousarray(X, dtype=np.float32), y


@pytest.mark.parametrize("n_classes, C", [(2, 0.05), (3, 0.05), (5, 2.0)])
def test_the_torch_fit_is_scikit_learns_logistic_regression(n_classes, C):
    X, y = _blobs(400, n_classes, 24, spread=6.0)
    mean, scale = column_moments(X)
    scaled = (X.astype(np.float64) - mean) / scale
    reference = LogisticRegression(C=C, tol=1e-8, max_iter=10_000).fit(scaled, y)

    weight, bias, _ = fit_rows(X, y, np.arange(len(X)), C=C, mean=mean, scale=scale, n_classes=n_classes)

    logits = scaled @ weight.T + bias
    proba = np.exp(logits - logits.max(axis=1, keepdims=True))
    proba /= proba.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(proba, reference.predict_proba(scaled), atol=5e-3)  # (L-BFGS stops at 1e-4)


def test_rows_left_out_do_not_count():
    X, y = _blobs(300, 3, 8, spread=4.0)
    y_flipped = y.copy()
    y_flipped[200:] = (y[200:] + 1) % 3  # wrong labels on the rows left out: they must not move the fit
    mean, scale = column_moments(X, np.arange(200))
    alone = fit_rows(X[:200], y[:200], np.arange(200), C=0.5, mean=mean, scale=scale, n_classes=3)
    masked = fit_rows(X, y_flipped, np.arange(200), C=0.5, mean=mean, scale=scale, n_classes=3)
    np.testing.assert_allclose(masked[0], alone[0], atol=1e-3)


def test_column_moments_are_the_plain_ones():
    X, _ = _blobs(1000, 2, 6, spread=1.0)
    mean, scale = column_moments(X)
    np.testing.assert_allclose(mean, X.astype(np.float64).mean(axis=0), rtol=1e-9)
    assert scale == pytest.approx(np.sqrt(X.astype(np.float64).var(axis=0).mean()), rel=1e-9)


def test_stratified_rows_keep_every_class():
    y = np.array([0] * 990 + [1] * 9 + [2])
    rows = stratified_rows(y, 100, seed=0)
    assert set(y[rows]) == {0, 1, 2}
    assert 95 <= len(rows) <= 102
    assert np.array_equal(rows, stratified_rows(y, 100, seed=0))


def test_beyond_max_cv_rows_the_probe_is_as_accurate_and_calibrated_on_held_out_rows():
    X, y = _blobs(3000, 4, 32, spread=9.0)
    X, X_test, y, y_test = X[:2000], X[2000:], y[:2000], y[2000:]

    plain = LinearProbe().fit(X, y)
    many = LinearProbe(max_cv_rows=400).fit(X, y)

    assert many.n_cv_rows_ in range(395, 405) and many.n_calibration_rows_ in range(195, 205)
    assert plain.n_cv_rows_ == 2000 and plain.n_calibration_rows_ == 0
    assert many.C_ in plain.Cs_
    plain_accuracy = np.mean(plain.predict(X_test) == y_test)
    many_accuracy = np.mean(many.predict(X_test) == y_test)
    assert many_accuracy >= plain_accuracy - 0.02, (many_accuracy, plain_accuracy)
    # calibrated: the mean top-1 probability is close to the accuracy on rows neither saw
    confidence = many.predict_proba(X_test).max(axis=1).mean()
    assert abs(confidence - many_accuracy) < 0.05, (confidence, many_accuracy)
    # one linear layer over the raw features, as a model file stores it
    logits = X_test.astype(np.float64) @ many.coef_.T + many.intercept_
    np.testing.assert_array_equal(many.classes_[logits.argmax(axis=1)], many.predict(X_test))


def test_many_rows_take_no_copy_of_the_matrix():
    X, y = _blobs(40_000, 3, 128, spread=6.0)  # 20 MB of float32
    LinearProbe(max_cv_rows=100, Cs=(0.01, 0.1)).fit(X[:1000], y[:1000])  # (imports torch.optim: not a copy)
    tracemalloc.start()
    try:
        LinearProbe(max_cv_rows=300, Cs=(0.01, 0.1)).fit(X, y)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.75 * X.nbytes, (
        f"numpy allocated {peak / 1e6:.0f} MB at its peak for a {X.nbytes / 1e6:.0f} MB matrix"
    )


def test_max_cv_rows_is_checked():
    with pytest.raises(ParameterError, match="'max_cv_rows' parameter of LinearProbe must be an int in"):
        LinearProbe(max_cv_rows=1).fit(np.zeros((4, 2)), [0, 1, 0, 1])
