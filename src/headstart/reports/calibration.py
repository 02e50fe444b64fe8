"""Whether probabilities mean what they say: expected calibration error, log-likelihood, Brier score, and the
reliability diagram.

A classifier is calibrated when, among the photos it gives a top-1 probability of about 0.8, about 80% are right.
:func:`calibration_metrics` measures that from predicted probabilities and true labels (plain numpy, no
scikit-learn); :func:`plot_reliability` draws it. ``evaluate`` reports both, and ``train`` does for its
validation photos.

- **ECE** (expected calibration error, Guo et al. 2017): the top-1 probabilities are put in 15 equal-width bins
  over [0, 1]; ECE is the photo-weighted mean of |accuracy - mean confidence| over the bins. 0 is perfect.
- **NLL**: the mean negative log-probability of the true class (what temperature scaling minimises).
- **Brier**: the mean squared distance between the probability vector and the one-hot truth, summed over classes
  (0 is perfect, 2 the worst).

Example:
    >>> import numpy as np
    >>> proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    >>> m = calibration_metrics(["cat", "dog", "dog"], proba, ["cat", "dog"])
    >>> round(m["ece"], 3), round(m["nll"], 3)
    (0.3, 0.415)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from headstart._io import save_figure
from headstart._names import literal_figure
from headstart._validation import check_int

__all__ = [
    "ECE_BINS",
    "calibration_metrics",
    "ece_noise_floor",
    "expected_calibration_error",
    "format_ece",
    "no_calibration",
    "plot_reliability",
    "reliability_figure",
]

#: Equal-width bins of the top-1 probability for ECE and the reliability diagram (the convention of Guo et al.).
ECE_BINS = 15


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of top-1 ``confidence`` values in [0, 1] against whether each prediction was ``correct``.

    Example:
        >>> expected_calibration_error(np.array([0.9, 0.9]), np.array([True, False]))
        0.4
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if len(confidence) == 0:
        return float("nan")
    index = _bin_index(confidence, bins)
    np.bincount(index, minlength=bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=bins)
    hit_sum = np.bincount(index, weights=correct, minlength=bins)
    return float(np.abs(hit_sum - conf_sum).sum() / len(confidence))


def ece_noise_floor(
    confidence: np.ndarray, bins: int = ECE_BINS, draws: int = 200, seed: int = 0
) -> tuple[float, float]:
    """The ECE a *perfectly calibrated* model would show at these confidences, from binning noise alone: its mean
    and 95th percentile over ``draws`` simulated outcomes (each prediction right with probability equal to its
    confidence). On a few dozen photos this floor is large, and an ECE near it says nothing about calibration.

    Example:
        >>> ece_noise_floor(np.full(52, 0.8))[0] > 0.03
        True
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    if len(confidence) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    simulated = [
        expected_calibration_error(confidence, rng.random(len(confidence)) < confidence, bins) for _ in range(draws)
    ]
    return (float(np.mean(simulated)), float(np.quantile(simulated, 0.95)))


def _bin_index(confidence: np.ndarray, bins: int) -> np.ndarray:
    """Bin of each confidence: (k/bins, (k+1)/bins], the first bin closed at 0."""
    return np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)


def no_calibration(bins: int = ECE_BINS) -> dict[str, Any]:
    """:func:`calibration_metrics`'s dict when there are no photos: every number None."""
    return {
        "ece": None,
        "ece_floor": None,
        "ece_floor_p95": None,
        "nll": None,
        "brier": None,
        "mean_confidence": None,
        "accuracy": None,
        "bins": bins,
        "reliability": [],
    }


def calibration_metrics(
    y_true: Sequence[str], proba: np.ndarray, classes: Sequence[str], bins: int = ECE_BINS
) -> dict[str, Any]:
    """ECE, NLL and Brier score of probabilities ``(n, n_classes)`` (columns in ``classes`` order) against true
    labels, with the reliability table behind the ECE (per bin: photos, mean confidence, accuracy).

    Returns:
        ``ece``, ``ece_floor`` and ``ece_floor_p95`` (what binning noise alone gives a perfectly calibrated model at
        these confidences: :func:`ece_noise_floor`), ``nll``, ``brier``, ``mean_confidence``, ``accuracy``, ``bins`` (the number of bins) and
        ``reliability`` (one dict per non-empty bin: ``low``, ``high``, ``count``, ``confidence``, ``accuracy``);
        numbers are None when there are no photos.

    Example:
        >>> round(calibration_metrics(["cat"], np.array([[0.7, 0.3]]), ["cat", "dog"])["brier"], 4)
        0.18
    """
    check_int(bins, "bins", "calibration_metrics", low=1)
    classes = list(classes)
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[t] for t in y_true], dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64).reshape(len(y), len(classes))
    if len(y) == 0:
        return no_calibration(bins)
    pred = proba.argmax(axis=1)
    confidence = proba[np.arange(len(y)), pred]
    correct = pred == y
    truth = np.zeros_like(proba)
    truth[np.arange(len(y)), y] = 1.0
    picked = np.clip(proba[np.arange(len(y)), y], 1e-12, None)
    which = _bin_index(confidence, bins)
    table = []
    for k in range(bins):
        inside = which == k
        if inside.any():
            table.append(
                {
                    "low": round(k / bins, 4),
                    "high": round((k + 1) / bins, 4),
                    "count": int(inside.sum()),
                    "confidence": round(float(confidence[inside].mean()), 4),
                    "accuracy": round(float(correct[inside].mean()), 4),
                }
            )
    floor, floor_p95 = ece_noise_floor(confidence, bins)
    return {
        "ece": expected_calibration_error(confidence, correct, bins),
        "ece_floor": floor,
        "ece_floor_p95": floor_p95,
        "nll": float(-np.log(picked).mean()),
        "brier": float(((proba - truth) ** 2).sum(axis=1).mean()),
        "mean_confidence": float(confidence.mean()),
        "accuracy": float(correct.mean()),
        "bins": bins,
        "reliability": table,
    }


def format_ece(metrics: dict[str, Any]) -> str:
    """``ECE 0.140 (a calibrated model would show 0.070 here from binning noise, up to 0.110)``: the one way
    ECE is printed, beside the floor that the number of photos sets."""
    if metrics.get("ece") is None:
        return "ECE: no photos"
    text = f"ECE {metrics['ece']:.3f} ({metrics.get('bins', ECE_BINS)} bins"
    if metrics.get("ece_floor") is not None:
        text += (
            f"; a perfectly calibrated model would show {metrics['ece_floor']:.3f} on these photos from binning "
            f"noise alone, 95% of the time at most {metrics['ece_floor_p95']:.3f}"
        )
    return text + ")"


#: The gap colours of the reliability diagram, each in its legend whether or not a bin shows it.
OVER_CONFIDENT, UNDER_CONFIDENT = "tab:red", "tab:orange"


def plot_reliability(metrics: dict[str, Any], path: str | Path, *, title: str = "Reliability") -> Path:
    """The reliability diagram of :func:`calibration_metrics` (:func:`reliability_figure`), saved.

    Example:
        >>> plot_reliability(calibration_metrics(labels, proba, classes), "reliability.png")
        PosixPath('reliability.png')
    """
    return save_figure(reliability_figure(metrics, title=title), Path(path))


def reliability_figure(metrics: dict[str, Any], *, title: str = "Reliability") -> Any:
    """Accuracy against confidence per bin (bars; the diagonal is perfect calibration) and, below, how many photos
    fall in each bin. Each bin's gap to its confidence is an outlined, hatched box between the two, red where the
    model is over-confident (confidence above accuracy) and orange where it is under-confident (accuracy above
    confidence): drawn over the accuracy bar without hiding it, both kinds named in the legend.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    bins = int(metrics.get("bins") or ECE_BINS)
    table = metrics.get("reliability") or []
    fig = Figure(figsize=(5.5, 6), layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    width = 1.0 / bins
    lows = [row["low"] for row in table]
    top.bar(lows, [row["accuracy"] for row in table], width=width, align="edge", color="tab:blue", alpha=0.75)
    for row in table:
        gap = row["confidence"] - row["accuracy"]
        if abs(gap) < 1e-9:
            continue
        colour = OVER_CONFIDENT if gap > 0 else UNDER_CONFIDENT
        top.bar(
            row["low"] + width * 0.1,
            abs(gap),
            bottom=min(row["confidence"], row["accuracy"]),
            width=width * 0.8,
            align="edge",
            fill=False,
            hatch="///",
            edgecolor=colour,
            linewidth=1.5,
            gid="under-confident" if gap < 0 else "over-confident",
        )
    top.plot([0, 1], [0, 1], "--", color="grey")
    handles = [
        Patch(color="tab:blue", alpha=0.75, label="accuracy"),
        Patch(fill=False, hatch="///", edgecolor=OVER_CONFIDENT, label="over-confident: confidence above accuracy"),
        Patch(fill=False, hatch="///", edgecolor=UNDER_CONFIDENT, label="under-confident: accuracy above confidence"),
        top.lines[-1],
    ]
    top.lines[-1].set_label("calibrated")
    ece = metrics.get("ece")
    said = (
        "no photos"
        if ece is None
        else (f"ECE {ece:.3f} ({bins} bins), NLL {metrics['nll']:.3f}, Brier {metrics['brier']:.3f}")
    )
    top.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=f"{title}\n{said}")
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=7, frameon=False)
    top.grid(alpha=0.3)
    bottom.bar(lows, [row["count"] for row in table], width=width, align="edge", color="grey")
    bottom.set(xlabel="top-1 probability (confidence)", ylabel="photos")
    bottom.grid(alpha=0.3)
    return literal_figure(fig)
