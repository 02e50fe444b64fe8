"""``evaluate`` streams its photos: the same report as scoring the whole listing at once, in memory that does not
grow with the photos (issue 19: the peak of 1,000 and of 300,000 photos within 20%)."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import pytest

from headstart.data.datasets import load_dataset
from headstart.features.cache import FeatureCache
from headstart.models.classifier import Classifier
from headstart.reports.calibration import calibration_metrics
from headstart.reports.metrics import public_metrics, score_photos
from headstart.workflows import evaluation
from headstart.workflows.evaluation import evaluate


def _linked_copies(sample: Path, folder: Path, n: int) -> Path:
    """``n`` photos in class folders, hard links to the sample's 24 test photos (their features cached once)."""
    sources = sorted(sample.glob("test/*/*.jpg"))
    for i in range(n):
        source = sources[i % len(sources)]
        target = folder / source.parent.name / f"{i:05d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(source, target)
    return folder


@pytest.mark.slow
def test_streamed_evaluate_equals_the_scores_of_the_whole_listing(sample_model: Path, sample: Path, tmp_path: Path):
    """Against the listing scored at once (what evaluate did before it streamed), on names whose text and part
    orders differ (``a.jpg`` beside a folder ``a/``), hidden files, and a class the model does not know."""
    data = _linked_copies(sample, tmp_path / "data", 40)
    pug = sorted((data / "pug").glob("*.jpg"))[0]
    (data / "pug" / "a").mkdir()
    os.link(pug, data / "pug" / "a" / "b.jpg")
    os.link(pug, data / "pug" / "a.jpg")
    os.link(pug, data / "pug" / ".hidden.jpg")
    (data / "hamster").mkdir()
    os.link(pug, data / "hamster" / "h.jpg")
    cache = FeatureCache(tmp_path / "cache" / "features.sqlite")
    model = Classifier.load(sample_model)

    def probabilities(paths):
        feats = model.features(paths, cache=cache)
        return model.predict_proba_features(feats.features), feats.indices, feats.unusable

    whole = score_photos(load_dataset(data), model.classes, probabilities)
    report = evaluate(sample_model, data, cache=cache)
    assert report.n_images == whole.n_images == 42
    assert report.unknown_labels == whole.unknown_labels == {"hamster": 1}
    assert report.details == public_metrics(whole.metrics)
    truth = [whole.metrics["true"][j] for j in range(whole.n_images)]
    proba, _, _ = probabilities(whole.paths)
    calibration = calibration_metrics(truth, proba, model.classes)
    assert report.calibration["reliability"] == calibration["reliability"]
    for key in ("ece", "ece_floor", "ece_floor_p95", "nll", "brier"):
        assert report.calibration[key] == pytest.approx(calibration[key], rel=1e-9), key


@pytest.mark.slow
def test_evaluate_holds_no_listing_of_the_photos(sample_model: Path, sample: Path, tmp_path: Path, monkeypatch):
    """Python's allocations at their peak, 200 photos against 800 in chunks of 64: the listing evaluate held before
    (a Sample and a Path a photo) grew with every photo; what is left is each photo's confidence (8 bytes, for the
    ECE's noise floor)."""
    monkeypatch.setattr(evaluation, "CHUNK", 64)
    cache = FeatureCache(tmp_path / "cache" / "features.sqlite")
    evaluate(sample_model, sample / "test", cache=cache)  # (the 24 photos' features computed, outside the peaks)
    peaks = {}
    for n in (200, 800):
        data = _linked_copies(sample, tmp_path / f"data-{n}", n)
        tracemalloc.start()
        try:
            report = evaluate(sample_model, data, cache=cache)
            peaks[n] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert report.n_images == n
    grown = peaks[800] - peaks[200]
    assert grown < 100_000, f"evaluate's peak grew {grown / 1000:.0f} KB from 200 to 800 photos ({peaks})"
