"""Accuracy, top-k, per-class precision/recall and the confusion matrix, as JSON-ready dicts and pictures.

Plain numpy (no scikit-learn import): `evaluate` and cached `train` runs should not pay a second for it.
:func:`score_photos` is *the* scoring of labelled photos: `evaluate`, the ONNX export's accuracy check and
`robustness` at eps 0 all give it their way of computing probabilities, so they agree by construction.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from headstart._console import report_skipped
from headstart.errors import DataError

if TYPE_CHECKING:
    from headstart.data.datasets import Dataset
    from headstart.data.scanning import UnusableFile

__all__ = [
    "Probabilities",
    "ScoredPhotos",
    "accuracy_interval",
    "classification_metrics",
    "confusion_matrix",
    "format_accuracy",
    "match_labels",
    "public_metrics",
    "score_photos",
    "write_metric_pictures",
]

#: ``paths -> (probabilities (n_scored, n_classes), index in paths of each row, the unusable files)``.
Probabilities = Callable[[list[Path]], "tuple[np.ndarray, np.ndarray, list[UnusableFile]]"]


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
        return {
            "accuracy": None,
            "accuracy_ci": None,
            "top5_accuracy": None,
            "n_images": 0,
            "classes": classes,
            "per_class": {},
            "confusion_matrix": [],
            "predicted": [],
            "confidence": [],
            "true": [],
        }
    pred = proba.argmax(axis=1)
    k = min(5, len(classes))
    topk = np.argsort(-proba, axis=1, kind="stable")[:, :k]
    matrix = confusion_matrix(y, pred, len(classes))
    support, predicted = matrix.sum(axis=1), matrix.sum(axis=0)
    diagonal = np.diag(matrix)
    precision = np.divide(
        diagonal, predicted, out=np.zeros(len(classes)), where=predicted > 0
    )  # 0 when never predicted
    recall = np.divide(diagonal, support, out=np.zeros(len(classes)), where=support > 0)
    hits = int((pred == y).sum())
    return {
        "accuracy": hits / n,
        "accuracy_ci": list(accuracy_interval(hits, n)),
        "top5_accuracy": float((topk == y[:, None]).any(axis=1).mean()),
        "n_images": n,
        "classes": classes,
        "per_class": {
            c: {
                "precision": round(float(precision[i]), 4),
                "recall": round(float(recall[i]), 4),
                "support": int(support[i]),
            }
            for i, c in enumerate(classes)
        },
        "confusion_matrix": matrix.tolist(),
        "true": [classes[i] for i in y],
        "predicted": [classes[i] for i in pred],
        "confidence": [round(float(proba[j, pred[j]]), 4) for j in range(n)],
    }


def accuracy_interval(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% (Wilson score) interval of an accuracy of ``hits`` right out of ``n``: on a few dozen photos an
    accuracy is a range, not a number, and the interval says how wide. Stays inside [0, 1], sensible at 0 and n.

    Example:
        >>> accuracy_interval(46, 52)
        (0.7703, 0.946)
    """
    if n <= 0:
        return (0.0, 1.0)
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (round(float(max(0.0, centre - half)), 4), round(float(min(1.0, centre + half)), 4))


def format_accuracy(accuracy: float | None, interval: Sequence[float] | None, n: int) -> str:
    """``0.885 [0.77–0.95] on 52 photos``: the one way train, evaluate and the demo print an accuracy."""
    if accuracy is None:
        return f"no accuracy (0 of {n} photos scored)"
    if not interval:
        return f"{accuracy:.3f} on {n} photos"
    return f"{accuracy:.3f} [{interval[0]:.2f}–{interval[1]:.2f}] on {n} photos"


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts ``(n_classes, n_classes)``: row = true class index, column = predicted (sklearn's layout, no import)."""
    flat = np.asarray(y_true, dtype=np.int64) * n_classes + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def write_metric_pictures(
    metrics: dict[str, Any], paths: Sequence[Path], folder: Path, *, title: str, n_wrong: int | None = None
) -> list[Path]:
    """``confusion_matrix.png`` and ``misclassified.png`` (a grid of the mistakes, worst first) in ``folder``;
    ``n_wrong``: how many mistakes there were, when ``paths`` holds only some of them."""
    from headstart.reports.plots import plot_confusion_matrix, plot_image_grid

    written = []
    if metrics.get("n_images"):
        written.append(
            plot_confusion_matrix(
                np.asarray(metrics["confusion_matrix"]),
                metrics["classes"],
                folder / "confusion_matrix.png",
                title=f"Confusion matrix, {title}",
            )
        )
    wrong = [
        (
            metrics["confidence"][j],
            paths[j],
            f"true: {metrics['true'][j]}\npred: {metrics['predicted'][j]} {metrics['confidence'][j]:.2f}",
        )
        for j in range(len(paths))
        if metrics["true"][j] != metrics["predicted"][j]
    ]
    wrong.sort(key=lambda t: -t[0])
    written.append(
        plot_image_grid(
            [(p, c) for _, p, c in wrong[:48]],
            folder / "misclassified.png",
            title=f"Misclassified, {title}: {len(wrong) if n_wrong is None else n_wrong}",
        )
    )
    return written


def public_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics without the per-sample lists (for printing and model metadata)."""
    return {k: v for k, v in metrics.items() if k not in ("true", "predicted", "confidence")}


@dataclass
class ScoredPhotos:
    """What :func:`score_photos` measured.

    Attributes:
        metrics: :func:`classification_metrics` of the scored photos (with the per-photo lists).
        paths: the scored photos, in the order of the metrics' per-photo lists.
        skipped: the unusable files, not scored.
        unknown_labels: labels of the data that are no class of the model, with how many photos carry each (not
            scored either).
    """

    metrics: dict[str, Any]
    paths: list[Path]
    skipped: list[UnusableFile] = field(default_factory=list)
    unknown_labels: dict[str, int] = field(default_factory=dict)

    @property
    def accuracy(self) -> float | None:
        return self.metrics["accuracy"]

    @property
    def n_images(self) -> int:
        return int(self.metrics["n_images"])


def _first_five(names: Sequence[str]) -> str:
    """``a, b, c, d, e, …``: up to five names, the ellipsis only when there are more."""
    return ", ".join(list(names[:5]) + (["…"] if len(names) > 5 else []))


def no_class_in_common(mapping: dict[str, Any], classes: Sequence[str]) -> DataError:
    """The error for data none of whose labels is a class of the model."""
    return DataError(
        f"None of the data's labels ({_first_five(sorted(mapping))}) is a class of the model "
        f"({_first_five(list(classes))}): is this the right model for this data?"
    )


def score_photos(dataset: Dataset, classes: Sequence[str], probabilities: Probabilities) -> ScoredPhotos:
    """Score a model's probabilities on labelled photos, its classes matched to the labels by name.

    Photos whose label the model does not know are not scored (counted in ``unknown_labels``), nor are files that
    ``probabilities`` finds unusable. Anything that computes probabilities (cached PyTorch features, an ONNX file,
    perturbed photos) is scored the same way here.

    Raises:
        DataError: no label of the data is a class of the model (the wrong model for this data).

    Example:
        >>> uniform = lambda paths: (np.full((len(paths), 2), 0.5), np.arange(len(paths)), [])
        >>> score_photos(load_dataset("photos/"), ["cat", "dog"], uniform).n_images
        24
    """
    classes = list(classes)
    mapping = match_labels(dataset.labels, classes)
    if not any(mapping.values()):
        raise no_class_in_common(mapping, classes)
    unknown: dict[str, int] = {}
    for label in dataset.labels:
        if mapping[label] is None:
            unknown[label] = unknown.get(label, 0) + 1
    known = dataset.subset([i for i, s in enumerate(dataset.samples) if mapping[s.label] is not None])
    proba, indices, skipped = probabilities(known.paths)
    report_skipped(skipped)  # (to the command line's one reporter; a path reported twice is listed once)
    scored = known.subset(np.asarray(indices, dtype=np.int64).tolist())
    metrics = classification_metrics([mapping[label] for label in scored.labels], np.asarray(proba), classes)
    return ScoredPhotos(metrics, scored.paths, list(skipped), unknown)
