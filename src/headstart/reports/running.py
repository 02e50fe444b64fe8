"""Scores accumulated batch by batch: the same numbers as :func:`~headstart.reports.metrics.classification_metrics`
and :func:`~headstart.reports.calibration.calibration_metrics`, in memory that does not grow with the photos.

``evaluate`` streams its photos through the model (:mod:`headstart.features.stream`) and adds each batch's
probabilities here: a confusion matrix, top-k hits, the reliability bins' sums, the log-likelihood and Brier sums,
the ``keep`` most confident mistakes (for the picture of them) and each photo's top-1 confidence (8 bytes: the ECE's
noise floor simulates every photo) are all it holds.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from headstart.reports.calibration import ECE_BINS, ece_noise_floor, no_calibration
from headstart.reports.metrics import accuracy_interval, classification_metrics

__all__ = ["RunningScores"]


class RunningScores:
    """Scores of probabilities against true labels, added a batch at a time.

    Args:
        classes: the model's classes (columns of the probabilities).
        keep: how many mistakes (the most confident) are kept for the picture of them.

    Example:
        >>> scores = RunningScores(["cat", "dog"])
        >>> scores.add(np.array([0, 1]), np.array([[0.9, 0.1], [0.6, 0.4]]), ["a.jpg", "b.jpg"])
        >>> scores.metrics()["accuracy"], scores.n_wrong
        (0.5, 1)
    """

    def __init__(self, classes: Sequence[str], *, keep: int = 48, bins: int = ECE_BINS) -> None:
        self.classes = list(classes)
        n = len(self.classes)
        self.k = min(5, n)
        self.matrix = np.zeros((n, n), dtype=np.int64)
        self.n = self.top_hits = self.n_wrong = 0
        self.bins = bins
        self.bin_count = np.zeros(bins, np.int64)
        self.bin_confidence = np.zeros(bins)
        self.bin_correct = np.zeros(bins)
        self.nll_sum = self.brier_sum = 0.0
        self._confidences: list[np.ndarray] = []  # (8 bytes a photo: the ECE's noise floor simulates each one)
        self._keep = keep
        self._mistakes: list[tuple[float, int, str, str, str]] = []  # (confidence, order, path, true, predicted)

    def add(self, y: np.ndarray, proba: np.ndarray, paths: Sequence[str | Path]) -> None:
        """One batch: true class indices ``(n,)``, probabilities ``(n, n_classes)``, the photos' paths."""
        y = np.asarray(y, dtype=np.int64)
        proba = np.asarray(proba, dtype=np.float64).reshape(len(y), len(self.classes))
        if not len(y):
            return
        rows = np.arange(len(y))
        pred = proba.argmax(axis=1)
        np.add.at(self.matrix, (y, pred), 1)
        topk = np.argsort(-proba, axis=1, kind="stable")[:, : self.k]
        self.top_hits += int((topk == y[:, None]).any(axis=1).sum())
        confidence = proba[rows, pred]
        self._confidences.append(confidence)
        correct = pred == y
        which = np.clip(np.ceil(confidence * self.bins).astype(np.int64) - 1, 0, self.bins - 1)
        self.bin_count += np.bincount(which, minlength=self.bins)
        self.bin_confidence += np.bincount(which, weights=confidence, minlength=self.bins)
        self.bin_correct += np.bincount(which, weights=correct.astype(np.float64), minlength=self.bins)
        self.nll_sum += float(-np.log(np.clip(proba[rows, y], 1e-12, None)).sum())
        truth = np.zeros_like(proba)
        truth[rows, y] = 1.0
        self.brier_sum += float(((proba - truth) ** 2).sum())
        for j in np.flatnonzero(~correct):
            entry = (
                round(float(confidence[j]), 4),
                -(self.n + int(j)),
                str(paths[j]),
                self.classes[y[j]],
                self.classes[pred[j]],
            )
            if len(self._mistakes) < self._keep:
                heapq.heappush(self._mistakes, entry)
            else:
                heapq.heappushpop(self._mistakes, entry)
        self.n_wrong += int((~correct).sum())
        self.n += len(y)

    def metrics(self) -> dict[str, Any]:
        """:func:`~headstart.reports.metrics.classification_metrics`'s dict; its per-photo lists (``true``,
        ``predicted``, ``confidence``) hold only the kept mistakes, in the order of :meth:`mistake_paths`."""
        if not self.n:
            return classification_metrics([], np.zeros((0, len(self.classes))), self.classes)
        support, predicted = self.matrix.sum(axis=1), self.matrix.sum(axis=0)
        hits = np.diag(self.matrix)
        precision = np.divide(hits, predicted, out=np.zeros(len(self.classes)), where=predicted > 0)
        recall = np.divide(hits, support, out=np.zeros(len(self.classes)), where=support > 0)
        kept = self._sorted_mistakes()
        return {
            "accuracy": int(hits.sum()) / self.n,
            "accuracy_ci": list(accuracy_interval(int(hits.sum()), self.n)),
            "top5_accuracy": float(self.top_hits / self.n),
            "n_images": self.n,
            "classes": self.classes,
            "per_class": {
                c: {
                    "precision": round(float(precision[i]), 4),
                    "recall": round(float(recall[i]), 4),
                    "support": int(support[i]),
                }
                for i, c in enumerate(self.classes)
            },
            "confusion_matrix": self.matrix.tolist(),
            "true": [m[3] for m in kept],
            "predicted": [m[4] for m in kept],
            "confidence": [round(m[0], 4) for m in kept],
        }

    def mistake_paths(self) -> list[Path]:
        """The kept mistakes' photos, most confident first."""
        return [Path(m[2]) for m in self._sorted_mistakes()]

    def _sorted_mistakes(self) -> list[tuple[float, int, str, str, str]]:
        return sorted(self._mistakes, key=lambda m: (-m[0], -m[1]))

    def calibration(self) -> dict[str, Any]:
        """:func:`~headstart.reports.calibration.calibration_metrics`'s dict."""
        if not self.n:
            return no_calibration(self.bins)
        table = [
            {
                "low": round(k / self.bins, 4),
                "high": round((k + 1) / self.bins, 4),
                "count": int(self.bin_count[k]),
                "confidence": round(float(self.bin_confidence[k] / self.bin_count[k]), 4),
                "accuracy": round(float(self.bin_correct[k] / self.bin_count[k]), 4),
            }
            for k in range(self.bins)
            if self.bin_count[k]
        ]
        floor, floor_p95 = ece_noise_floor(np.concatenate(self._confidences), self.bins)
        return {
            "ece": float(np.abs(self.bin_correct - self.bin_confidence).sum() / self.n),
            "ece_floor": floor,
            "ece_floor_p95": floor_p95,
            "nll": self.nll_sum / self.n,
            "brier": self.brier_sum / self.n,
            "mean_confidence": float(self.bin_confidence.sum() / self.n),
            "accuracy": float(self.bin_correct.sum() / self.n),
            "bins": self.bins,
            "reliability": table,
        }
