"""Evaluate a trained model on labelled photos: accuracy, top-5, per-class precision/recall, confusion matrix, and
calibration (ECE over 15 bins, NLL, Brier score, the reliability diagram)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import headstart._display as show
from headstart._io import write_json
from headstart._validation import fail
from headstart.data.datasets import Dataset, labelled_photos
from headstart.data.images import DEFAULT_MAX_PIXELS
from headstart.features.cache import FeatureCache
from headstart.features.stream import CHUNK
from headstart.models.classifier import Classifier
from headstart.reports.metrics import (
    ScoredPhotos,
    match_labels,
    no_class_in_common,
    public_metrics,
    write_metric_pictures,
)
from headstart.reports.running import RunningScores


@dataclass
class Evaluation:
    """The report of :func:`evaluate`; ``to_dict()`` is what ``--json`` prints."""

    accuracy: float | None
    top5_accuracy: float | None
    n_images: int
    skipped: list[dict[str, str]]
    unknown_labels: dict[str, int]
    details: dict[str, Any] = field(repr=False, default_factory=dict)
    pictures: list[str] = field(default_factory=list)
    calibration: dict[str, Any] = field(repr=False, default_factory=dict)  # ECE (15 bins), NLL, Brier, reliability

    @classmethod
    def from_scores(cls, scored: ScoredPhotos) -> Evaluation:
        """The report of photos scored by :func:`~headstart.reports.metrics.score_photos`."""
        return cls(
            accuracy=scored.metrics["accuracy"],
            top5_accuracy=scored.metrics["top5_accuracy"],
            n_images=scored.n_images,
            skipped=[u.to_dict() for u in scored.skipped],
            unknown_labels=scored.unknown_labels,
            details=public_metrics(scored.metrics),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "accuracy_ci": self.details.get("accuracy_ci"),
            "top5_accuracy": self.top5_accuracy,
            "n_images": self.n_images,
            "skipped": self.skipped,
            "unknown_labels": self.unknown_labels,
            "per_class": self.details.get("per_class", {}),
            "confusion_matrix": self.details.get("confusion_matrix", []),
            "classes": self.details.get("classes", []),
            "pictures": self.pictures,
            "ece": self.calibration.get("ece"),
            "ece_floor": self.calibration.get("ece_floor"),
            "nll": self.calibration.get("nll"),
            "brier": self.calibration.get("brier"),
            "calibration": self.calibration,
        }

    def figures(self) -> dict[str, Any]:
        """The confusion matrix and the reliability diagram as matplotlib figures (a notebook shows them)."""
        from headstart.reports.calibration import reliability_figure
        from headstart.reports.plots import confusion_figure

        found = {}
        if self.details.get("confusion_matrix"):
            found["confusion_matrix"] = confusion_figure(self.details["confusion_matrix"], self.details["classes"])
        if self.calibration.get("reliability"):
            found["reliability"] = reliability_figure(self.calibration)
        return found

    def _repr_html_(self) -> str:
        """The report as a notebook shows it: the scores, each class's precision and recall, the pictures."""
        from headstart.reports.calibration import format_ece

        parts = [
            show.fields(
                [
                    ("photos scored", self.n_images),
                    ("accuracy", show.percent(self.accuracy)),
                    ("top-5 accuracy", show.percent(self.top5_accuracy)),
                    ("calibration", format_ece(self.calibration) if self.calibration else ...),
                    ("NLL", self.calibration.get("nll")),
                    ("Brier", self.calibration.get("brier")),
                    ("photos skipped (unusable)", len(self.skipped) if self.skipped else ...),
                    ("labels the model does not know", self.unknown_labels or ...),
                ]
            )
        ]
        per_class = self.details.get("per_class", {})
        if per_class:
            rows = [(name, c.get("precision"), c.get("recall"), c.get("support")) for name, c in per_class.items()]
            parts.append(show.table(["class", "precision", "recall", "photos"], rows, limit=40))
        parts += [show.image(show.figure_png(fig), name) for name, fig in self.figures().items()]
        if self.skipped:
            parts.append(show.table(["skipped file", "why"], [(s["path"], s["reason"]) for s in self.skipped]))
        return show.card("evaluation", "Evaluation", *parts)


def as_classifier(model: Any, caller: str) -> Classifier:
    """The :class:`Classifier` in ``model``: a Classifier, a fitted estimator holding one in ``model_``
    (``ImageClassifier``), or a model file path.

    Raises:
        NotFittedError: an estimator that is not fitted yet (scikit-learn's error).
        ParameterError: anything else.

    Example:
        >>> as_classifier("pets.safetensors", "evaluate").classes[:2]
        ['Abyssinian', 'Bengal']
    """
    if isinstance(model, Classifier):
        return model
    fitted = getattr(model, "model_", None)
    if isinstance(fitted, Classifier):
        return fitted
    if isinstance(model, (str, os.PathLike)):
        return Classifier.load(model)
    if hasattr(model, "fit"):
        from sklearn.exceptions import NotFittedError

        raise NotFittedError(f"This {type(model).__name__} instance is not fitted yet: call 'fit' before {caller}.")
    fail("model", caller, "a Classifier, a fitted ImageClassifier or a model file path", model)
    raise AssertionError  # (fail raises)


def evaluate(
    model: Any,
    data: str | os.PathLike[str] | Dataset,
    *,
    split: str = "all",
    out_dir: str | os.PathLike[str] | None = None,
    precision: str = "auto",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    cache: FeatureCache | None = None,
    progress: bool = False,
    engine: str = "auto",
) -> Evaluation:
    """Score ``model`` (a Classifier, a fitted ImageClassifier or a model file) on the labelled photos in ``data``;
    classes are matched by name.

    Photos whose label the model does not know are not scored; they are counted in ``unknown_labels``.
    Unusable files are skipped and listed in ``skipped``. The photos stream through the model a chunk at a time and
    the scores accumulate (:class:`~headstart.reports.running.RunningScores`): memory does not grow with the data. With ``out_dir``, writes ``evaluation.json``,
    ``confusion_matrix.png``, ``misclassified.png`` and ``reliability.png`` there.

    Example:
        >>> evaluate("pets.safetensors", "test_photos/").accuracy
        0.9
    """
    model = as_classifier(model, "evaluate")
    photos = labelled_photos(data, split=split)  # (a folder of class folders is walked lazily: never listed whole)
    mapping = match_labels(photos.labels, model.classes)
    if not any(mapping.values()):
        raise no_class_in_common(mapping, model.classes)
    unknown: dict[str, int] = {}
    index = {c: i for i, c in enumerate(model.classes)}
    truths: list[int] = []  # the class of each photo read and not yet scored: at most two chunks' worth

    def known() -> Iterator[Path]:
        for path, label in photos:
            if mapping[label] is None:
                unknown[label] = unknown.get(label, 0) + 1
            else:
                truths.append(index[mapping[label]])
                yield path

    scores = RunningScores(model.classes)
    skipped = []
    options = {"cache": cache, "precision": precision, "max_pixels": max_pixels, "progress": progress}
    previous, truth = None, np.zeros(0, dtype=np.int64)
    # streamed: the photos' features and probabilities a chunk at a time, the scores accumulated (memory bounded)
    for part, indices, proba, unusable in model.iter_probabilities(known(), engine=engine, chunk=CHUNK, **options):
        if part is not previous:  # (a chunk comes in one or two pieces, cached and computed; its photos read last)
            truth = np.asarray(truths[len(truths) - len(part) :], dtype=np.int64)
            del truths[:]
            previous = part
        scores.add(truth[indices], proba, [part[int(i)] for i in indices])
        skipped += unusable
    metrics = scores.metrics()
    evaluation = Evaluation(
        accuracy=metrics["accuracy"],
        top5_accuracy=metrics["top5_accuracy"],
        n_images=scores.n,
        skipped=[u.to_dict() for u in skipped],
        unknown_labels=unknown,
        details=public_metrics(metrics),
    )
    evaluation.calibration = scores.calibration()
    if out_dir is not None:
        from headstart.reports.calibration import plot_reliability

        folder = Path(out_dir)
        title = f"{scores.n} photos"
        pictures = write_metric_pictures(metrics, scores.mistake_paths(), folder, title=title, n_wrong=scores.n_wrong)
        pictures.append(
            plot_reliability(evaluation.calibration, folder / "reliability.png", title=f"Reliability, {title}")
        )
        evaluation.pictures = [str(p) for p in pictures]
        write_json(folder / "evaluation.json", evaluation.to_dict())
    return evaluation


__all__ = ["Evaluation", "as_classifier", "evaluate"]
