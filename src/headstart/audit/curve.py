"""How many photos would help: cross-validated accuracy at fractions of the photos per class, and a power law.

For each fraction f of :data:`FRACTIONS`, every fold's probe is trained on f of each class's training photos (at
least one, drawn with a seed) and scored on the fold's held-out photos; f = 1 is the out-of-fold accuracy itself.
The error then gets a power law in the photos per class, ``error = a * n^-b`` (Hestness et al. 2017, "Deep
learning scaling is predictable, empirically"), fitted by least squares in log-log, from which the accuracy with
more photos is read. Without an irreducible-error term the law can only promise too much, never too little: read
the projected gain as an upper bound, trustworthy for the next doubling, not for ten times the data.

Example:
    >>> curve = learning_curve(X, y, n_classes, folds, C=1.0, temperature=1.0, seed=0, full=oof_proba)  # doctest: +SKIP
    >>> curve.headline                                                                              # doctest: +SKIP
    'about 7 more photos a class would gain about 6.1 points (80.3% -> 86.4%)'
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from headstart.audit.labels import fit_fold, run_quietly

__all__ = ["FRACTIONS", "LearningCurve", "fit_power_law", "learning_curve", "plot_learning_curve"]

#: Fractions of each class's training photos the curve is measured at.
FRACTIONS = (0.15, 0.3, 0.5, 0.75, 1.0)


@dataclass
class LearningCurve:
    """Measured points, the fitted law and what it projects.

    Attributes:
        points: ``{"fraction", "photos_per_class", "accuracy", "accuracy_std"}`` per fraction (std across folds).
        photos_per_class: photos per class in the whole data set (the final model trains on all of them).
        a, b: the law ``error = a * n^-b`` (None when it could not be fitted).
        projections: ``{"more_per_class", "photos_per_class", "accuracy", "gain_points"}``, for half as many,
            as many and twice as many more photos a class.
    """

    points: list[dict[str, float]]
    photos_per_class: float
    a: float | None = None
    b: float | None = None
    projections: list[dict[str, float]] = field(default_factory=list)

    def accuracy_at(self, photos_per_class: float) -> float | None:
        if self.a is None or self.b is None:
            return None
        return float(1.0 - min(1.0, self.a * photos_per_class ** (-self.b)))

    @property
    def headline(self) -> str:
        """One sentence: what doubling the photos a class would gain, by the fitted law."""
        if not self.projections:
            return "too few points to fit a learning curve"
        doubling = self.projections[1]
        now = self.accuracy_at(self.photos_per_class)
        if doubling["gain_points"] < 0.5:
            return (
                f"more photos are unlikely to help much: about {doubling['more_per_class']:.0f} more a class would "
                f"gain under half a point (the fitted curve is at {100 * now:.1f}% now)"
            )
        # (the fitted curve's values, said as such: not the measured cross-validated accuracy quoted beside it)
        return (
            f"about {doubling['more_per_class']:.0f} more photos a class would gain about "
            f"{doubling['gain_points']:.1f} points (the fitted curve: {100 * now:.1f}% now -> "
            f"{100 * doubling['accuracy']:.1f}%)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "points": self.points,
            "photos_per_class": self.photos_per_class,
            "law": None
            if self.a is None
            else {"formula": "error = a * photos_per_class ** -b", "a": self.a, "b": self.b},
            "projections": self.projections,
            "headline": self.headline,
        }


def fit_power_law(n: np.ndarray, error: np.ndarray, floor: float) -> tuple[float, float] | None:
    """``(a, b)`` of ``error = a * n^-b`` by least squares on logs; errors below ``floor`` count as ``floor``.

    ``b`` is kept at 0 or above (accuracy does not fall with more photos: a negative slope is noise).
    """
    n, error = np.asarray(n, dtype=np.float64), np.maximum(np.asarray(error, dtype=np.float64), floor)
    keep = n > 0
    if keep.sum() < 3 or np.ptp(np.log(n[keep])) == 0:
        return None
    slope, intercept = np.polyfit(np.log(n[keep]), np.log(error[keep]), 1)
    b = max(0.0, -float(slope))
    if b == 0.0:
        intercept = float(np.mean(np.log(error[keep])))
    return float(np.exp(intercept)), b


def _subsample(train: np.ndarray, y: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    picked = []
    for c in np.unique(y[train]):
        members = train[y[train] == c]
        size = max(1, int(round(fraction * len(members))))
        picked.append(rng.choice(members, size=size, replace=False))
    return np.sort(np.concatenate(picked))


def learning_curve(
    X: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    folds: list[tuple[np.ndarray, np.ndarray]],
    *,
    C: float,
    temperature: float,
    seed: int,
    full: np.ndarray,
    run: Callable[[list[Callable[[], Any]]], list[Any]] | None = None,
    fractions: tuple[float, ...] = FRACTIONS,
) -> LearningCurve:
    """Measure the curve on the given folds (``full``: the out-of-fold probabilities, the point at f = 1).

    Args:
        X, y: features and class indices.
        folds: ``[(train, held out), ...]`` as for the out-of-fold probabilities.
        C, temperature: the probe's regularisation and calibration.
        run: executes a list of zero-argument jobs (e.g. in threads); default: in order.
    """
    rng = np.random.default_rng(seed)
    jobs, keys = [], []
    for fraction in fractions:
        if fraction >= 1.0:
            continue
        for k, (train, test) in enumerate(folds):
            subset = _subsample(train, y, fraction, rng)
            jobs.append(
                lambda s=subset, t=test: (
                    len(s),
                    fit_fold(X, y, n_classes, s, t, C=C, temperature=temperature, seed=seed),
                )
            )
            keys.append((fraction, k))
    results = run_quietly(jobs, run)
    per_fraction: dict[float, list[tuple[float, float]]] = {}
    for (fraction, k), (n_train, proba) in zip(keys, results):
        test = folds[k][1]
        per_fraction.setdefault(fraction, []).append((n_train, float(np.mean(proba.argmax(axis=1) == y[test]))))
    if 1.0 in fractions:
        per_fraction[1.0] = [
            (len(train), float(np.mean(full[test].argmax(axis=1) == y[test]))) for train, test in folds
        ]

    present = max(1, len(np.unique(y)))
    points = []
    for fraction in sorted(per_fraction):
        sizes, accuracies = zip(*per_fraction[fraction])
        points.append(
            {
                "fraction": fraction,
                "photos_per_class": round(float(np.mean(sizes)) / present, 3),
                "accuracy": round(float(np.mean(accuracies)), 4),
                "accuracy_std": round(float(np.std(accuracies)), 4),
            }
        )
    now = len(y) / present
    curve = LearningCurve(points, round(float(now), 3))
    law = fit_power_law(
        np.array([p["photos_per_class"] for p in points]),
        1.0 - np.array([p["accuracy"] for p in points]),
        floor=0.5 / len(y),
    )
    if law is not None:
        curve.a, curve.b = law
        base = curve.accuracy_at(now)
        for factor in (0.5, 1.0, 2.0):
            more = max(1.0, round(factor * now))
            accuracy = curve.accuracy_at(now + more)
            curve.projections.append(
                {
                    "more_per_class": float(more),
                    "photos_per_class": round(now + more, 3),
                    "accuracy": round(accuracy, 4),
                    "gain_points": round(100.0 * (accuracy - base), 2),
                }
            )
    return curve


def plot_learning_curve(curve: LearningCurve, path: str | os.PathLike[str], *, title: str = "Learning curve") -> Any:
    """Draw the measured points (with their spread across folds), the fitted law and its extrapolation to 4x the
    photos a class; returns the path written (PNG)."""
    from matplotlib.figure import Figure

    from headstart._io import save_figure

    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.add_subplot()
    n = np.array([p["photos_per_class"] for p in curve.points])
    accuracy = np.array([p["accuracy"] for p in curve.points]) * 100
    spread = np.array([p["accuracy_std"] for p in curve.points]) * 100
    ax.errorbar(n, accuracy, yerr=spread, fmt="o", color="C0", capsize=3, label="cross-validated (mean ± sd of folds)")
    if curve.a is not None:
        measured = np.linspace(max(n.min(), 0.5), curve.photos_per_class, 100)
        ahead = np.linspace(curve.photos_per_class, 4 * curve.photos_per_class, 100)
        ax.plot(
            measured,
            [100 * curve.accuracy_at(v) for v in measured],
            color="C1",
            label=f"error = {curve.a:.2f} n^-{curve.b:.2f}",
        )
        ax.plot(ahead, [100 * curve.accuracy_at(v) for v in ahead], color="C1", linestyle="--", label="extrapolated")
        ax.axvline(curve.photos_per_class, color="0.6", linewidth=1)
        ax.annotate(
            "all photos now",
            (curve.photos_per_class, ax.get_ylim()[0]),
            xytext=(4, 4),
            textcoords="offset points",
            fontsize=8,
            color="0.4",
        )
    ax.set_xlabel("photos per class (training)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path, dpi=110)
