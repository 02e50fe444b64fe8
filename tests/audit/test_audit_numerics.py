"""The audit's arithmetic on small known cases: confident learning, out-of-fold probabilities, the outlier score,
the power law of the learning curve."""

from __future__ import annotations

import numpy as np
import pytest

from headstart.audit.curve import fit_power_law, learning_curve
from headstart.audit.labels import confident_learning, fold_splits, out_of_fold_probabilities
from headstart.audit.outliers import OUTLIER_Z, outlier_scores, robust_z


def test_confident_learning_thresholds_joint_and_ranking():
    proba = np.array(
        [
            [0.9, 0.1, 0.0],
            [0.7, 0.3, 0.0],
            [0.2, 0.8, 0.0],
            [0.95, 0.05, 0.0],  # labelled 1, confidently 0
            [0.1, 0.1, 0.8],
            [0.4, 0.1, 0.5],  # labelled 2, p(0)=0.4 < t_0: misclassified? no, 2 is likeliest: not an issue
        ]
    )
    y = np.array([0, 0, 1, 1, 2, 2])
    cl = confident_learning(proba, y)
    np.testing.assert_allclose(cl.thresholds, [0.8, (0.8 + 0.05) / 2, (0.8 + 0.5) / 2])
    assert cl.joint[1, 0] == 1 and cl.joint[0, 0] == 1 and cl.joint[1, 1] == 1
    assert cl.issues.tolist() == [3]
    assert cl.suggested[3] == 0
    assert cl.candidates.tolist() == [3]
    np.testing.assert_allclose(cl.margin[3], 0.05 - 0.95)
    assert cl.noise_rate[1] == pytest.approx(0.5)  # one of the two photos labelled 1 is confidently 0
    assert cl.noise_rate[0] == 0


def test_out_of_fold_probabilities_single_out_flipped_labels():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=3.0, size=(4, 12))
    y_true = np.repeat(np.arange(4), 25)
    X = centres[y_true] + rng.normal(size=(100, 12))
    y = y_true.copy()
    flipped = np.array([3, 30, 55, 80])
    y[flipped] = (y[flipped] + 1) % 4
    folds = fold_splits(y, 5, seed=0)
    assert sorted(np.concatenate([test for _, test in folds]).tolist()) == list(range(100))
    proba = out_of_fold_probabilities(X, y, 4, folds, C=1.0, temperature=1.0, seed=0)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    cl = confident_learning(proba, y)
    assert set(cl.candidates[:4].tolist()) == set(flipped.tolist())
    assert (cl.suggested[flipped] == y_true[flipped]).all()


def test_outliers_are_found_even_when_they_resemble_each_other():
    rng = np.random.default_rng(0)
    photos = rng.normal(size=(120, 32)) * 0.3 + 1.0  # one broad cloud, all positive-ish like pooled features
    odd_direction = rng.normal(size=32)
    odd = odd_direction + 0.15 * rng.normal(size=(4, 32))  # four odd images close to one another
    X = np.vstack([photos, odd])
    scores, similarity = outlier_scores(X, k=20)
    assert set(np.argsort(-scores)[:4].tolist()) == {120, 121, 122, 123}
    assert (scores[120:] >= OUTLIER_Z).all()
    assert (scores[:120] < OUTLIER_Z).mean() > 0.97
    assert similarity.shape == (124,)
    np.testing.assert_allclose(robust_z(np.array([1.0, 2.0, 3.0, 4.0, 100.0]))[2], 0.0)
    assert (robust_z(np.ones(5)) == 0).all()


def test_power_law_recovers_a_known_law_and_never_promises_a_loss():
    n = np.array([2.0, 4.0, 8.0, 16.0])
    a, b = fit_power_law(n, 0.6 * n**-0.5, floor=1e-3)
    assert a == pytest.approx(0.6) and b == pytest.approx(0.5)
    a, b = fit_power_law(n, np.array([0.1, 0.2, 0.3, 0.4]), floor=1e-3)  # error grows with data: noise, b = 0
    assert b == 0.0
    assert fit_power_law(np.array([4.0, 4.0, 4.0]), np.array([0.1, 0.2, 0.3]), floor=1e-3) is None


def test_learning_curve_rises_with_photos_and_projects_a_gain():
    rng = np.random.default_rng(1)
    centres = rng.normal(scale=0.3, size=(5, 40))  # hard enough that more photos help
    y = np.repeat(np.arange(5), 30)
    X = centres[y] + rng.normal(size=(150, 40))
    folds = fold_splits(y, 5, seed=0)
    full = out_of_fold_probabilities(X, y, 5, folds, C=1.0, temperature=1.0, seed=0)
    curve = learning_curve(X, y, 5, folds, C=1.0, temperature=1.0, seed=0, full=full)
    sizes = [p["photos_per_class"] for p in curve.points]
    assert sizes == sorted(sizes) and curve.points[-1]["fraction"] == 1.0
    assert curve.points[-1]["accuracy"] > curve.points[0]["accuracy"]
    assert curve.photos_per_class == 30
    assert curve.b is not None and curve.b > 0
    gains = [p["gain_points"] for p in curve.projections]
    assert gains == sorted(gains) and gains[0] > 0
    assert "more photos a class" in curve.headline
