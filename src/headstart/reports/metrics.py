"""Accuracy, top-k, per-class precision/recall and the confusion matrix, as JSON-ready dicts and pictures.

Plain numpy (no scikit-learn import): `evaluate` and cached `train` runs should not pay a second for it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _normalise(name: str) -> str:
    return re.sub(r"[\s\-_]+", "_", name.strip().lower())


def match_labels(data_labels: list[str], model_classes: list[str]) -> dict[str, str | None]:
    """Map each data label to a model class by name: exact, else ignoring case, spaces, hyphens and underscores."""
    loose = {_normalise(c): c for c in model_classes}
    exact = set(model_classes)
    return {l: (l if l in exact else loose.get(_normalise(l))) for l in set(data_labels)}


def classification_metrics(y_true: Sequence[str], proba: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Metrics of predicted probabilities ``(n, n_classes)`` against true labels (names from ``classes``).

    Returns:
        accuracy, top5_accuracy (top-k with k = min(5, n_classes)), per_class {name: precision, recall, support},
        confusion_matrix (rows true, columns predicted, in ``classes`` order), and per-sample ``predicted`` /
        ``confidence`` lists for pictures of the mistakes.
    """
    classes = list(classes)
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[t] for t in y_true], dtype=np.int64)
    n = len(y)
    if n == 0:
        return {"accuracy": None, "top5_accuracy": None, "n_images": 0, "classes": classes, "per_class": {},
                "confusion_matrix": [], "predicted": [], "confidence": [], "true": []}
    pred = proba.argmax(axis=1)
    k = min(5, len(classes))
    topk = np.argsort(-proba, axis=1, kind="stable")[:, :k]
    matrix = confusion_matrix(y, pred, len(classes))
    support, predicted = matrix.sum(axis=1), matrix.sum(axis=0)
    hits = np.diag(matrix)
    precision = np.divide(hits, predicted, out=np.zeros(len(classes)), where=predicted > 0)  # 0 when never predicted
    recall = np.divide(hits, support, out=np.zeros(len(classes)), where=support > 0)
    return {
        "accuracy": float((pred == y).mean()),
        "top5_accuracy": float((topk == y[:, None]).any(axis=1).mean()),
        "n_images": n,
        "classes": classes,
        "per_class": {
            c: {"precision": round(float(precision[i]), 4), "recall": round(float(recall[i]), 4), "support": int(support[i])}
            for i, c in enumerate(classes)
        },
        "confusion_matrix": matrix.tolist(),
        "true": [classes[i] for i in y],
        "predicted": [classes[i] for i in pred],
        "confidence": [round(float(proba[j, pred[j]]), 4) for j in range(n)],
    }


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts ``(n_classes, n_classes)``: row = true class index, column = predicted (sklearn's layout, no import)."""
    flat = np.asarray(y_true, dtype=np.int64) * n_classes + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def write_metric_pictures(metrics: dict[str, Any], paths: Sequence[Path], folder: Path, *, title: str) -> list[Path]:
    """``confusion_matrix.png`` and ``misclassified.png`` (a grid of the mistakes, worst first) in ``folder``."""
    from headstart.reports.plots import plot_confusion_matrix, plot_image_grid

    written = []
    if metrics.get("n_images"):
        written.append(plot_confusion_matrix(
            np.asarray(metrics["confusion_matrix"]), metrics["classes"], folder / "confusion_matrix.png",
            title=f"Confusion matrix, {title}",
        ))
    wrong = [
        (metrics["confidence"][j], paths[j], f"true: {metrics['true'][j]}\npred: {metrics['predicted'][j]} {metrics['confidence'][j]:.2f}")
        for j in range(len(paths))
        if metrics["true"][j] != metrics["predicted"][j]
    ]
    wrong.sort(key=lambda t: -t[0])
    written.append(plot_image_grid([(p, c) for _, p, c in wrong[:48]], folder / "misclassified.png",
                                   title=f"Misclassified, {title}: {len(wrong)}"))
    return written


def public_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics without the per-sample lists (for printing and model metadata)."""
    return {k: v for k, v in metrics.items() if k not in ("true", "predicted", "confidence")}
