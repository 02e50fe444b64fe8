"""Temperature scaling and its guard on tiny data: fitted on held-out predictions, never certainty from a handful
of them; the bundled 60-photo sample's probe no longer prints 1.000 for every photo. Real weights, real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from headstart._math import softmax
from headstart.models.temperature import LOG_T_BOUNDS, confidence_cap, fit_temperature


def test_the_log_loss_alone_would_make_every_probability_one_on_perfect_held_out_predictions() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 40)
    logits = rng.normal(size=(40, 4))
    logits[np.arange(40), y] += 6.0  # every held-out prediction right
    assert (logits.argmax(1) == y).all()

    def mean_confidence(t: float) -> float:
        return float(softmax(logits / t, axis=1).max(1).mean())

    assert mean_confidence(fit_temperature(logits, y, guard=False)) > 0.9999  # towards T -> 0: "1.000" everywhere
    assert mean_confidence(fit_temperature(logits, y)) == pytest.approx(confidence_cap(40, 40), abs=1e-4)
    assert confidence_cap(40, 40) < 0.99


def test_the_guard_barely_moves_an_ordinary_fit() -> None:
    rng = np.random.default_rng(1)
    n, k = 2000, 5
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) * 2
    logits[np.arange(n), y] += 2.0
    proba = np.exp(logits / 0.5) / np.exp(logits / 0.5).sum(1, keepdims=True)  # a sharper model ...
    y = np.array([rng.choice(k, p=p) for p in proba])  # ... whose labels follow its own probabilities at T = 0.5
    assert fit_temperature(logits, y) == pytest.approx(0.5, rel=0.1)
    assert fit_temperature(logits, y) == pytest.approx(fit_temperature(logits, y, guard=False), rel=0.06)


@pytest.mark.slow
def test_the_samples_probe_is_calibrated_without_pretending_certainty(sample: Path) -> None:
    """60 photos, 12 breeds: every out-of-fold prediction is right, which the log-loss alone turns into T -> 0."""
    import headstart as hs

    clf = hs.ImageClassifier().fit(sample / "train")
    temperature = clf.report_["temperature"]
    assert 10 * np.exp(LOG_T_BOUNDS[0]) < temperature < 1, "the guard stopped it, not the search's bound"
    assert clf.model_.metadata["metrics"]["temperature"] == temperature
    proba = clf.predict_proba(sample / "test")
    top = proba.max(axis=1)
    truth = np.array([p.parent.name for p in hs.load_dataset(sample / "test").paths])
    right = clf.classes_[proba.argmax(axis=1)] == truth
    assert abs(top.mean() - right.mean()) <= 0.05, (top.mean(), right.mean())  # confidence means accuracy
    assert (top < 0.9995).sum() >= 4, "not every photo prints 1.000"
    assert top[~right].max(initial=0) < 0.995, "a mistake is not certain"
    assert clf.report_["val_ece"] is not None and 0 <= clf.report_["val_nll"]
