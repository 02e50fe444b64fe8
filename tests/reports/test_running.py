"""Scores accumulated batch by batch equal the scores of all the photos at once (evaluate streams its photos)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from headstart.reports.calibration import calibration_metrics
from headstart.reports.metrics import classification_metrics
from headstart.reports.running import RunningScores


@pytest.mark.parametrize("n_classes", [2, 7])
def test_running_scores_equal_the_scores_of_all_photos_at_once(n_classes: int) -> None:
    rng = np.random.default_rng(n_classes)
    classes = [f"c{i}" for i in range(n_classes)]
    n = 301
    logits = rng.normal(size=(n, n_classes)) * 3
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = rng.integers(0, n_classes, n)
    paths = [Path(f"p{i}.jpg") for i in range(n)]
    scores = RunningScores(classes, keep=10)
    for start in range(0, n, 37):  # uneven batches
        scores.add(y[start : start + 37], proba[start : start + 37], paths[start : start + 37])
    whole = classification_metrics([classes[i] for i in y], proba, classes)
    got = scores.metrics()
    for key in ("accuracy", "accuracy_ci", "top5_accuracy", "n_images", "classes", "per_class", "confusion_matrix"):
        assert got[key] == whole[key], key
    wrong = sorted(
        (j for j in range(n) if whole["true"][j] != whole["predicted"][j]), key=lambda j: -whole["confidence"][j]
    )
    assert scores.n_wrong == len(wrong)
    assert scores.mistake_paths() == [paths[j] for j in wrong[:10]], "the most confident mistakes, worst first"
    assert got["true"] == [whole["true"][j] for j in wrong[:10]]
    want = calibration_metrics([classes[i] for i in y], proba, classes)
    cal = scores.calibration()
    for key in ("ece", "ece_floor", "ece_floor_p95", "nll", "brier", "mean_confidence", "accuracy", "bins"):
        assert cal[key] == pytest.approx(want[key], rel=1e-9), key
    assert cal["reliability"] == want["reliability"]


def test_no_photos_gives_the_empty_scores() -> None:
    scores = RunningScores(["a", "b"])
    assert scores.metrics()["accuracy"] is None and scores.calibration()["ece"] is None and scores.n == 0
