"""Evaluate a trained model on labelled photos: accuracy, top-5, per-class precision/recall, confusion matrix."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from headstart.models.classifier import Classifier
from headstart.data.datasets import Dataset, load_dataset
from headstart.errors import DataError
from headstart.features.extract import FeatureCache
from headstart.data.images import DEFAULT_MAX_PIXELS
from headstart.reports.metrics import classification_metrics, match_labels, public_metrics, write_metric_pictures


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "top5_accuracy": self.top5_accuracy,
            "n_images": self.n_images,
            "skipped": self.skipped,
            "unknown_labels": self.unknown_labels,
            "per_class": self.details.get("per_class", {}),
            "confusion_matrix": self.details.get("confusion_matrix", []),
            "classes": self.details.get("classes", []),
            "pictures": self.pictures,
        }


def evaluate(
    model: Classifier | str | os.PathLike[str],
    data: str | os.PathLike[str] | Dataset,
    *,
    split: str = "all",
    out_dir: str | os.PathLike[str] | None = None,
    precision: str = "auto",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    cache: FeatureCache | None = None,
    progress: bool = False,
    engine: str = "torch",
) -> Evaluation:
    """Score ``model`` on the labelled photos in ``data``; classes are matched by name.

    Photos whose label the model does not know are not scored; they are counted in ``unknown_labels``.
    Unusable files are skipped and listed in ``skipped``. With ``out_dir``, writes ``evaluation.json``,
    ``confusion_matrix.png`` and ``misclassified.png`` there.

    Example:
        >>> evaluate("pets.safetensors", "test_photos/").accuracy
        0.9
    """
    model = model if isinstance(model, Classifier) else Classifier.load(model)
    dataset = data if isinstance(data, Dataset) else load_dataset(data, split=split)
    mapping = match_labels(dataset.labels, model.classes)
    if not any(mapping.values()):
        raise DataError(
            f"None of the data's labels ({', '.join(sorted(mapping)[:5])}, …) is a class of the model "
            f"({', '.join(model.classes[:5])}, …): is this the right model for this data?"
        )
    unknown: dict[str, int] = {}
    for label in dataset.labels:
        if mapping[label] is None:
            unknown[label] = unknown.get(label, 0) + 1
    known = dataset.subset([i for i, s in enumerate(dataset.samples) if mapping[s.label] is not None])
    feats = model.features(known.paths, cache=cache, precision=precision, max_pixels=max_pixels, progress=progress,
                           engine=engine)
    scored = known.subset(feats.indices.tolist())
    proba = model.predict_proba_features(feats.features)
    metrics = classification_metrics([mapping[l] for l in scored.labels], proba, model.classes)
    evaluation = Evaluation(
        accuracy=metrics["accuracy"],
        top5_accuracy=metrics["top5_accuracy"],
        n_images=metrics["n_images"],
        skipped=[u.to_dict() for u in feats.unusable],
        unknown_labels=unknown,
        details=public_metrics(metrics),
    )
    if out_dir is not None:
        folder = Path(out_dir)
        folder.mkdir(parents=True, exist_ok=True)
        pictures = write_metric_pictures(metrics, scored.paths, folder, title=f"{metrics['n_images']} photos")
        evaluation.pictures = [str(p) for p in pictures]
        (folder / "evaluation.json").write_text(json.dumps(evaluation.to_dict(), indent=2) + "\n")
    return evaluation


__all__ = ["Evaluation", "evaluate", "match_labels"]
