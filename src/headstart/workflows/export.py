"""Export a trained model to ONNX, checked against PyTorch at export time; optional int8 through ONNX Runtime.

The ONNX graph takes normalised images ``(batch, 3, H, W)`` (the model's own preprocessing, as in the model
file's metadata) and returns ``features`` ``(batch, num_features)`` and ``probabilities`` ``(batch, n_classes)``.
The headstart metadata (classes, preprocessing, backbone) is stored in the ONNX file's metadata_props.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headstart.models.classifier import Classifier
from headstart._onnx import require_onnx, session
from headstart.errors import HeadstartError


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and how closely ONNX Runtime reproduces PyTorch."""

    path: Path
    max_abs_diff_probabilities: float
    max_abs_diff_features: float
    n_checked: int
    quantized: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "max_abs_diff_probabilities": self.max_abs_diff_probabilities,
                "max_abs_diff_features": self.max_abs_diff_features, "n_checked": self.n_checked,
                "quantized": None if self.quantized is None else str(self.quantized)}


def _export_module(model: Classifier):
    import torch

    net = model.torch_module()

    class FeaturesAndProbabilities(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, image: torch.Tensor):
            features = self.net.features(image)
            return features, self.net.head(features).softmax(-1)

    return FeaturesAndProbabilities().eval()


def export_onnx(
    model: Classifier | str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    check_images: list[Path] | None = None,
    opset: int = 17,
    tolerance: float = 1e-4,
) -> ExportReport:
    """Write ``model`` as ONNX and compare ONNX Runtime with PyTorch on real or random images.

    Raises:
        HeadstartError: when the probabilities differ by more than ``tolerance`` (nothing is left at ``out``).
    """
    import torch

    onnx, ort = require_onnx()
    model = model if isinstance(model, Classifier) else Classifier.load(model)
    module = _export_module(model)
    size = model.spec.data_config["input_size"]
    batch = _check_batch(model, check_images, size)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp_path = Path(tmp) / out.name
        torch.onnx.export(
            module, (batch[:1],), str(tmp_path), input_names=["image"], output_names=["features", "probabilities"],
            dynamic_axes={"image": {0: "batch"}, "features": {0: "batch"}, "probabilities": {0: "batch"}},
            opset_version=opset, dynamo=False,
        )
        proto = onnx.load(str(tmp_path))
        meta = {"classes": model.classes, "backbone": model.spec.to_dict(), "headstart": model.metadata.get("headstart_version")}
        entry = proto.metadata_props.add()
        entry.key, entry.value = "headstart", json.dumps(meta)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp_path))
        with torch.no_grad():
            want_f, want_p = (t.numpy() for t in module(batch))
        got_f, got_p = run_onnx(tmp_path, batch.numpy())
        diff_p = float(np.abs(got_p - want_p).max())
        diff_f = float(np.abs(got_f - want_f).max())
        if diff_p > tolerance:
            raise HeadstartError(
                f"ONNX Runtime's probabilities differ from PyTorch's by {diff_p:.2g} (> {tolerance:g}); not exported."
            )
        os.replace(tmp_path, out)
    return ExportReport(out, diff_p, diff_f, int(batch.shape[0]))


def _check_batch(model: Classifier, images: list[Path] | None, size) -> Any:
    import torch

    if images:
        from headstart.data.images import load_image

        transform = model.backbone.transform()
        return torch.stack([transform(load_image(p)) for p in images[:8]])
    return torch.randn(4, *size, generator=torch.Generator().manual_seed(0))


def run_onnx(path: str | os.PathLike[str], images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(features, probabilities) of normalised images through ONNX Runtime (sessions are reused)."""
    features, probabilities = session(path).run(None, {"image": images.astype(np.float32)})
    return features, probabilities


#: Calibration photos used at most by :func:`quantize_int8` (percentile calibration takes ~0.25 s a photo on 2 cores).
MAX_CALIBRATION_PHOTOS = 100


def quantize_int8(
    onnx_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    model: Classifier | str | os.PathLike[str],
    calibration: Any,
    *,
    max_photos: int = MAX_CALIBRATION_PHOTOS,
    seed: int = 0,
) -> Path:
    """Static int8 quantisation (ONNX Runtime, QDQ, per-channel weights, percentile-calibrated activations).

    Weights and activations both become int8, so the CPU runs int8 kernels: on 2 cores the default backbone went from
    9 ms to 4.5 ms a photo with the same accuracy on 24 held-out photos, where weight-only (dynamic) quantisation made
    it 12x slower and lost a photo. Activation ranges come from ``calibration``: photos like the ones the model will
    see (the training photos are a good choice; no labels are used); at most ``max_photos``, drawn with ``seed``.

    Args:
        onnx_path: an export from :func:`export_onnx`.
        out: where to write the int8 model.
        model: the model it was exported from (for its preprocessing).
        calibration: a data set (folder, CSV, …), or a list of image paths.

    Raises:
        DataError: when none of the calibration photos can be read.
    """
    require_onnx()
    import contextlib
    import io
    import logging

    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from headstart.errors import DataError, UnusableImageError
    from headstart.data.images import load_image

    model = model if isinstance(model, Classifier) else Classifier.load(model)
    paths = _calibration_paths(calibration)
    rng = np.random.default_rng(seed)
    chosen = [paths[i] for i in sorted(rng.permutation(len(paths))[:max_photos])]
    transform = model.backbone.transform()
    images = []
    for path in chosen:
        try:
            images.append(transform(load_image(path)).numpy()[None])
        except UnusableImageError:
            continue
    if not images:
        raise DataError(f"None of the {len(chosen)} calibration photos could be read; pass a folder of photos.")

    class Photos(CalibrationDataReader):
        def __init__(self) -> None:
            self._next = iter(images)

        def get_next(self) -> dict[str, np.ndarray] | None:
            image = next(self._next, None)
            return None if image is None else {"image": image}

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its root-logger advice (pre-processing, shape inference) is for its own developers
    try:  # (its calibrator also prints progress lines to stdout, which would break `--json`)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp, contextlib.redirect_stdout(io.StringIO()):
            prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / out.name
            quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
            quantize_static(
                str(prepared), str(quantized), Photos(), quant_format=QuantFormat.QDQ, per_channel=True,
                weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                calibrate_method=CalibrationMethod.Percentile,
            )
            os.replace(quantized, out)
    finally:
        root.setLevel(level)
    return out


def _calibration_paths(calibration: Any) -> list[Path]:
    from headstart.data.datasets import Dataset, load_dataset
    from headstart.errors import DataError
    from headstart.data.images import list_image_files

    if isinstance(calibration, Dataset):
        paths = list(calibration.paths)
    elif isinstance(calibration, (list, tuple)):
        paths = [Path(p) for p in calibration]
    else:
        folder = Path(calibration)
        try:
            paths = list(load_dataset(folder).paths)
        except DataError:  # not a labelled data set: any folder of photos will do
            paths = list_image_files(folder)[0] if folder.is_dir() else []
    if not paths:
        raise DataError(f"No calibration photos in {calibration}: pass a folder of photos like the ones the model "
                        "will see (e.g. its training photos).")
    return paths


def time_onnx(path: str | os.PathLike[str], image: np.ndarray, repeats: int = 20) -> float:
    """Median seconds of one ONNX Runtime call on ``image`` (after a warm-up)."""
    import time

    run_onnx(path, image)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_onnx(path, image)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def onnx_accuracy(path: str | os.PathLike[str], model: Classifier, data) -> tuple[float, int]:
    """Accuracy of an ONNX export on a labelled data set (decoding and preprocessing as in PyTorch)."""
    import torch

    from headstart.data.datasets import Dataset, load_dataset
    from headstart.reports.metrics import match_labels
    from headstart.data.images import load_image
    from headstart.errors import UnusableImageError

    dataset = data if isinstance(data, Dataset) else load_dataset(data)
    mapping = match_labels(dataset.labels, model.classes)
    transform = model.backbone.transform()
    correct = total = 0
    batch, labels = [], []

    def flush() -> None:
        nonlocal correct, total
        if batch:
            _, probs = run_onnx(path, torch.stack(batch).numpy())
            correct += sum(model.classes[int(i)] == l for i, l in zip(probs.argmax(1), labels))
            total += len(batch)
            batch.clear()
            labels.clear()

    for sample in dataset.samples:
        if mapping.get(sample.label) is None:
            continue
        try:
            batch.append(transform(load_image(sample.path)))
        except UnusableImageError:
            continue
        labels.append(mapping[sample.label])
        if len(batch) == 32:
            flush()
    flush()
    return (correct / total if total else float("nan")), total
