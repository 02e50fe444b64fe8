"""Calibration numbers by hand: ECE over 15 bins, NLL, Brier, the reliability table, and its picture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from headstart.reports.calibration import calibration_metrics, expected_calibration_error, plot_reliability


def test_numbers_worked_out_by_hand() -> None:
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.95, 0.05]])
    m = calibration_metrics(["cat", "dog", "dog", "cat"], proba, ["cat", "dog"])
    # one photo a bin: 0.6 in (0.5333, 0.6], 0.8 in (0.7333, 0.8], 0.9 in (0.8667, 0.9333], 0.95 in (0.9333, 1]
    assert m["ece"] == pytest.approx((0.1 + 0.2 + 0.6 + 0.05) / 4)
    assert m["nll"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.4, 0.95])))
    assert m["brier"] == pytest.approx(np.mean([2 * 0.1**2, 2 * 0.2**2, 2 * 0.6**2, 2 * 0.05**2]))
    assert m["accuracy"] == 0.75 and m["mean_confidence"] == pytest.approx(0.8125) and m["bins"] == 15
    assert [row["count"] for row in m["reliability"]] == [1, 1, 1, 1]
    assert [row["accuracy"] for row in m["reliability"]] == [0.0, 1.0, 1.0, 1.0]


def test_a_calibrated_predictor_scores_near_zero_and_an_overconfident_one_does_not() -> None:
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.5, 1.0, 20_000)
    assert expected_calibration_error(confidence, rng.random(20_000) < confidence) < 0.01
    assert expected_calibration_error(np.full(1000, 0.99), np.arange(1000) < 700) == pytest.approx(0.29)
    assert np.isnan(expected_calibration_error(np.array([]), np.array([], dtype=bool)))


def test_no_photos_gives_no_numbers() -> None:
    m = calibration_metrics([], np.zeros((0, 2)), ["cat", "dog"])
    assert m["ece"] is None and m["reliability"] == []


def test_the_reliability_diagram_is_a_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    proba = rng.dirichlet(np.ones(3) * 0.3, 200)
    labels = [["a", "b", "c"][i] for i in rng.integers(0, 3, 200)]
    path = plot_reliability(calibration_metrics(labels, proba, ["a", "b", "c"]), tmp_path / "r.png", title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    assert [p.name for p in tmp_path.iterdir()] == ["r.png"], "no temporaries left"


def test_the_reliability_diagram_shows_under_confidence_as_plainly_as_over_confidence() -> None:
    """Bins at confidence 0.33-0.53 with accuracy 1.0 (under-confident) looked calibrated: the gap bar was drawn
    over the accuracy bar in a colour the legend did not name. Now each gap is an outlined box between confidence
    and accuracy, its kind named in the legend."""

    from headstart.reports.calibration import UNDER_CONFIDENT, reliability_figure

    proba = np.array([[0.4, 0.3, 0.3]] * 10 + [[0.9, 0.05, 0.05]] * 10)  # 10 right at 0.4; 10 at 0.9, 5 right
    labels = ["a"] * 10 + ["a"] * 5 + ["b"] * 5
    metrics = calibration_metrics(labels, proba, ["a", "b", "c"])
    figure = reliability_figure(metrics)
    top = figure.axes[0]
    boxes = {p.get_gid(): p for p in top.patches if p.get_gid()}
    under, over = boxes["under-confident"], boxes["over-confident"]
    assert (
        not under.get_fill()
        and under.get_hatch()
        and under.get_edgecolor()[:3]
        == pytest.approx(__import__("matplotlib.colors", fromlist=["to_rgb"]).to_rgb(UNDER_CONFIDENT))
    )
    assert (under.get_y(), under.get_y() + under.get_height()) == pytest.approx((0.4, 1.0))
    assert (over.get_y(), over.get_y() + over.get_height()) == pytest.approx((0.5, 0.9))
    legend = [t.get_text() for t in figure.legends[0].get_texts()]
    assert any(t.startswith("under-confident") for t in legend) and any(t.startswith("over-confident") for t in legend)


def test_the_ece_floor_is_what_a_calibrated_model_shows_from_binning_noise() -> None:
    """Outcomes drawn at exactly the stated confidence: their ECE is about the floor (never far above its 95th
    percentile), the floor shrinks with more photos, and a miscalibrated model stands clear of it."""
    from headstart.reports.calibration import calibration_metrics, ece_noise_floor

    rng = np.random.default_rng(7)
    small, large = rng.uniform(0.5, 1.0, 52), rng.uniform(0.5, 1.0, 5000)
    floor_small, p95_small = ece_noise_floor(small)
    floor_large, _ = ece_noise_floor(large)
    assert floor_large < floor_small / 4 and floor_small < p95_small
    calibrated = [expected_calibration_error(small, rng.random(52) < small) for _ in range(200)]
    assert abs(np.mean(calibrated) - floor_small) < 0.2 * floor_small
    overconfident = np.full(5000, 0.95)
    ece = expected_calibration_error(overconfident, rng.random(5000) < 0.75)
    assert ece > 10 * ece_noise_floor(overconfident)[1]
    proba = np.column_stack([small, 1 - small])
    m = calibration_metrics(["a"] * 52, proba, ["a", "b"])
    assert m["ece_floor"] == pytest.approx(floor_small) and m["ece_floor_p95"] == pytest.approx(p95_small)
