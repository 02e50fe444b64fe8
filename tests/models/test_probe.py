"""headstart.models.probe: LinearProbe is a conforming sklearn classifier whose fit is one linear layer over raw features."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

from headstart.models.probe import DEFAULT_CS, LinearProbe, ProbeWarning


def _blobs(n_per_class: int, n_classes: int, n_features: int, spread: float = 1.0, seed: int = 0):
    """Gaussian blobs with raw-feature offsets and scales far from standardised, like real embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, n_features)) * 3.0
    y = np.repeat(np.arange(n_classes), n_per_class)
    X = centres[y] + spread * rng.normal(size=(len(y), n_features))
    X = X * rng.uniform(0.1, 10.0, size=n_features) + rng.uniform(-5, 5, size=n_features)
    return X.astype(np.float32), y


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


@parametrize_with_checks([LinearProbe(cv=2)])
def test_sklearn_estimator_contract(estimator, check):
    check(estimator)


@pytest.mark.parametrize("n_classes", [2, 3, 37])
def test_folded_linear_layer_reproduces_predict_proba(n_classes):
    X, y = _blobs(8, n_classes, 64, spread=4.0)
    probe = LinearProbe(cv=3).fit(X, y)

    assert probe.coef_.shape == (n_classes, 64), probe.coef_.shape
    assert probe.intercept_.shape == (n_classes,), probe.intercept_.shape
    expected = probe.predict_proba(X)
    folded = _softmax(X.astype(np.float64) @ probe.coef_.T + probe.intercept_)
    np.testing.assert_allclose(folded, expected, atol=1e-6, rtol=0)
    np.testing.assert_allclose(expected.sum(axis=1), 1.0, atol=1e-12)
    # the folded layer in float32 (as stored in a model file) gives the same decisions
    logits32 = X @ probe.coef_.T.astype(np.float32) + probe.intercept_.astype(np.float32)
    assert (probe.classes_[logits32.argmax(axis=1)] == probe.predict(X)).all()


def test_binary_decision_function_is_positive_class_logit():
    X, y = _blobs(20, 2, 16, spread=3.0)
    probe = LinearProbe(cv=3).fit(X, y)
    decision = probe.decision_function(X)
    assert decision.shape == (40,)
    np.testing.assert_allclose(1 / (1 + np.exp(-decision)), probe.predict_proba(X)[:, 1], atol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("n_classes,n_features", [(2, 32), (12, 256), (37, 1280)])
def test_separable_data_is_learned(n_classes, n_features):
    X, y = _blobs(10, n_classes, n_features, spread=1.0, seed=1)
    X_test, y_test = _blobs(5, n_classes, n_features, spread=1.0, seed=1)  # same centres (seed), fresh noise below
    X_test = X_test + np.random.default_rng(2).normal(scale=0.1, size=X_test.shape).astype(np.float32)
    probe = LinearProbe().fit(X, y)
    assert probe.score(X, y) == 1.0
    assert probe.score(X_test, y_test) >= 0.98, probe.score(X_test, y_test)
    assert probe.cv_accuracy_ >= 0.95, probe.cv_accuracy_
    assert probe.C_ in DEFAULT_CS
    assert probe.n_splits_ == 5


def test_string_labels_and_class_order():
    X, y = _blobs(6, 3, 10, spread=0.5)
    names = np.array(["siamese", "beagle", "pug"])[y]
    probe = LinearProbe(cv=3).fit(X, names)
    assert list(probe.classes_) == ["beagle", "pug", "siamese"]
    assert (probe.predict(X) == names).all()


def test_fit_is_deterministic_and_refit_overwrites():
    X, y = _blobs(10, 4, 40, spread=6.0)
    first = LinearProbe(random_state=3).fit(X, y)
    second = clone(first).fit(X, y)
    np.testing.assert_array_equal(first.coef_, second.coef_)
    np.testing.assert_array_equal(first.intercept_, second.intercept_)
    assert first.C_ == second.C_

    X2, y2 = _blobs(10, 2, 40, seed=5)
    first.fit(X2, y2)
    assert first.coef_.shape == (2, 40) and list(first.classes_) == [0, 1]


def test_folds_shrink_to_the_smallest_class():
    X, y = _blobs(10, 3, 12, spread=0.5)
    keep = np.r_[np.arange(20), 20, 21, 22]  # third class: 3 examples
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProbeWarning)
        probe = LinearProbe(cv=5).fit(X[keep], y[keep])
    assert probe.n_splits_ == 3
    assert np.isfinite(probe.cv_accuracy_)


def test_single_example_class_skips_cross_validation_with_a_warning():
    X, y = _blobs(6, 3, 12, spread=0.5)
    keep = np.r_[np.arange(12), 12]  # third class: 1 example
    with pytest.warns(ProbeWarning, match=r"single example.*cannot be cross-validated.*at least 2 examples"):
        probe = LinearProbe(Cs=(0.1, 1.0, 10.0)).fit(X[keep], y[keep])
    assert probe.n_splits_ == 0
    assert probe.C_ == 1.0
    assert np.isnan(probe.cv_accuracy_)
    assert (probe.predict(X[keep]) == y[keep]).all()


def test_hitting_max_iter_gives_one_probe_warning_naming_max_iter():
    X, y = _blobs(10, 5, 30, spread=8.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        LinearProbe(max_iter=2, cv=2).fit(X, y)
    probe_warnings = [w for w in caught if issubclass(w.category, ProbeWarning)]
    assert len(probe_warnings) == 1, [str(w.message) for w in caught]
    assert "max_iter=2" in str(probe_warnings[0].message)
    assert not [w for w in caught if w.category.__name__ == "ConvergenceWarning"]


@pytest.mark.parametrize(
    "params,message",
    [
        ({"cv": 1}, "The 'cv' parameter of LinearProbe must be an int in [2, inf). Got 1 instead."),
        ({"cv": 2.5}, "The 'cv' parameter of LinearProbe must be an int in [2, inf). Got 2.5 instead."),
        ({"max_iter": 0}, "The 'max_iter' parameter of LinearProbe must be an int in [1, inf). Got 0 instead."),
        ({"Cs": ()}, "The 'Cs' parameter of LinearProbe must be a non-empty sequence of floats in (0, inf)."),
        ({"Cs": (1.0, -1.0)}, "The 'Cs' parameter of LinearProbe must be a non-empty sequence of floats in (0, inf)."),
        ({"Cs": "abc"}, "The 'Cs' parameter of LinearProbe must be a non-empty sequence of floats in (0, inf)."),
        ({"random_state": "x"}, "The 'random_state' parameter of LinearProbe must be an int"),
    ],
)
def test_bad_parameters_are_rejected_at_fit(params, message):
    X, y = _blobs(4, 2, 3)
    probe = LinearProbe(**params)  # constructing never fails
    with pytest.raises(ValueError) as error:
        probe.fit(X, y)
    assert str(error.value).startswith(message), str(error.value)


def test_one_class_and_unfitted_errors():
    X, _y = _blobs(4, 2, 3)
    with pytest.raises(ValueError, match="at least 2 classes"):
        LinearProbe().fit(X, np.zeros(len(X)))
    with pytest.raises(NotFittedError):
        LinearProbe().predict(X)


def test_pickle_round_trip_keeps_predictions():
    X, y = _blobs(6, 3, 8)
    probe = LinearProbe(cv=2).fit(X, y)
    again = pickle.loads(pickle.dumps(probe))
    np.testing.assert_array_equal(again.predict_proba(X), probe.predict_proba(X))


def test_row_space_solver_matches_plain_logistic_regression():
    """Fewer samples than features (solved on the row space) gives the same model as sklearn on all features."""
    from sklearn.linear_model import LogisticRegression

    X, y = _blobs(12, 5, 200, spread=6.0)
    probe = LinearProbe(Cs=(0.05,), cv=2).fit(X, y)
    scaled = (X - X.mean(axis=0)) / np.sqrt(X.astype(np.float64).var(axis=0).mean())  # centred, one common scale
    plain = LogisticRegression(C=0.05, tol=1e-10, max_iter=10_000).fit(scaled, y)
    np.testing.assert_allclose(probe.predict_proba(X), plain.predict_proba(scaled), atol=2e-4)


@pytest.mark.slow
def test_importing_probe_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, headstart.models.probe; print('torch' in sys.modules, 'timm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"], out


def test_a_single_C_is_used_without_cross_validation() -> None:
    import warnings as _w

    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 6))
    y = np.where(X[:, 0] > 0, "a", "b")
    with _w.catch_warnings():
        _w.simplefilter("error")  # nothing to warn about: the caller chose C
        probe = LinearProbe(Cs=(0.5,)).fit(X, y)
    assert probe.C_ == 0.5 and probe.n_splits_ == 0 and np.isnan(probe.cv_accuracy_)


def test_calibration_rescales_probabilities_but_not_predictions() -> None:
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(6, 30)) * 0.6
    y = np.repeat(np.arange(6), 12)
    X = centres[y] + rng.normal(size=(72, 30))
    calibrated = LinearProbe(random_state=0).fit(X, y)
    raw = LinearProbe(random_state=0, calibrate=False).fit(X, y)
    np.testing.assert_array_equal(calibrated.predict(X), raw.predict(X))
    assert calibrated.temperature_ != 1.0 and raw.temperature_ == 1.0
    np.testing.assert_allclose(
        calibrated.decision_function(X) * calibrated.temperature_, raw.decision_function(X), rtol=1e-6, atol=1e-9
    )


def test_features_multiplied_by_a_constant_give_the_same_probe() -> None:
    """One common scale: the Cs grid means the same whatever a backbone's feature magnitudes."""
    X, y = _blobs(10, 3, 20, spread=3.0)
    small = LinearProbe(random_state=0).fit(X, y)
    large = LinearProbe(random_state=0).fit(X * 1000.0 + 7.0, y)
    assert small.C_ == large.C_
    np.testing.assert_allclose(small.predict_proba(X), large.predict_proba(X * 1000.0 + 7.0), atol=1e-6)
