"""Running an ONNX export: its outputs (:func:`run_onnx`), its time a photo (:func:`time_onnx`) and its scores on
labelled photos, computed exactly as :func:`~headstart.workflows.evaluation.evaluate` computes the model's
(:func:`onnx_scores`, :func:`onnx_accuracy`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from headstart._onnx import session
from headstart._validation import check_int
from headstart.data.datasets import Dataset, load_dataset
from headstart.data.images import DEFAULT_MAX_PIXELS
from headstart.data.scanning import UnusableFile
from headstart.features.pipeline import Pipeline, decoded_batches
from headstart.reports.metrics import ScoredPhotos, score_photos
from headstart.workflows.evaluation import as_classifier

__all__ = ["onnx_accuracy", "onnx_scores", "run_onnx", "time_onnx"]


def run_onnx(path: str | os.PathLike[str], images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(features, probabilities) of normalised images through ONNX Runtime (sessions are reused).

    Example:
        >>> features, probabilities = run_onnx("pets.onnx", np.zeros((1, 3, 224, 224), np.float32))
        >>> probabilities.shape
        (1, 12)
    """
    features, probabilities = session(path).run(None, {"image": images.astype(np.float32)})
    return features, probabilities


def time_onnx(path: str | os.PathLike[str], image: np.ndarray, repeats: int = 20) -> float:
    """Median seconds of one ONNX Runtime call on ``image`` (after a warm-up).

    Example:
        >>> time_onnx("pets.onnx", np.zeros((1, 3, 224, 224), np.float32)) < 0.1
        True
    """
    import time

    check_int(repeats, "repeats", "time_onnx", low=1)
    run_onnx(path, image)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_onnx(path, image)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def onnx_scores(
    path: str | os.PathLike[str],
    model: Any,
    data: str | os.PathLike[str] | Dataset,
    *,
    batch_size: int = 16,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> ScoredPhotos:
    """An ONNX export scored on labelled photos exactly as :func:`~headstart.workflows.evaluation.evaluate` scores
    the model (:func:`~headstart.reports.metrics.score_photos`), its photos decoded as extraction decodes them.

    Example:
        >>> onnx_scores("pets.onnx", "pets.safetensors", "test_photos/").metrics["top5_accuracy"]
        1.0
    """
    model = as_classifier(model, "onnx_scores")
    dataset = data if isinstance(data, Dataset) else load_dataset(data)
    # decoded and batched by extraction's own pipeline (the torch engine's input: what the ONNX graph takes)
    pipe = Pipeline(model.spec, lambda: model.backbone, engine="torch", precision="fp32", max_pixels=max_pixels)
    runner = session(path, cached=False)  # (not kept: its buffers, sized for a batch, go when scoring is done)

    def probabilities(paths: list[Path]) -> tuple[np.ndarray, np.ndarray, list[UnusableFile]]:
        rows, kept, skipped = [], [], []
        for indices, batch, bad in decoded_batches(pipe, paths, batch_size):
            if indices:
                rows.append(runner.run(None, {"image": batch.numpy()})[1])
                kept += indices
            skipped += [UnusableFile(Path(paths[i]), reason) for i, reason in bad]
        proba = np.concatenate(rows) if rows else np.zeros((0, len(model.classes)), np.float32)
        return proba, np.asarray(kept, dtype=np.int64), skipped

    return score_photos(dataset, model.classes, probabilities)


def onnx_accuracy(
    path: str | os.PathLike[str], model: Any, data: str | os.PathLike[str] | Dataset
) -> tuple[float | None, int]:
    """``(accuracy, photos scored)`` of an ONNX export on a labelled data set (see :func:`onnx_scores`).

    Example:
        >>> onnx_accuracy("pets.int8.onnx", "pets.safetensors", "test_photos/")
        (0.9583333333333334, 24)
    """
    scored = onnx_scores(path, model, data)
    return scored.accuracy, scored.n_images
