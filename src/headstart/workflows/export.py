"""Export a trained model to ONNX, checked against PyTorch at export time; optional int8 through ONNX Runtime.

The ONNX graph takes normalised images ``(batch, 3, H, W)`` (the model's own preprocessing, as in the model
file's metadata) and returns ``features`` ``(batch, num_features)`` and ``probabilities`` ``(batch, n_classes)``.
The headstart metadata (classes, preprocessing, backbone) is stored in the ONNX file's metadata_props.

:func:`export_onnx` is the whole workflow (what ``headstart export`` prints); its pieces are :func:`write_onnx`
(the fp32 file, checked numerically, here), :func:`~headstart.workflows.export_int8.quantize_int8` (the int8 copy)
and, in :mod:`~headstart.workflows.export_scoring`, :func:`time_onnx` and :func:`onnx_accuracy`, which scores an ONNX
file with the same scoring as :func:`~headstart.workflows.evaluation.evaluate`. All are re-exported here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headstart._io import atomic_path
from headstart._onnx import require_onnx, session
from headstart._validation import ParameterError, check_int, check_number
from headstart.data.datasets import Dataset, load_dataset
from headstart.errors import HeadstartError
from headstart.features.cache import FeatureCache
from headstart.features.extract import preprocessor
from headstart.models.classifier import Classifier
from headstart.workflows.evaluation import as_classifier, evaluate
from headstart.workflows.export_int8 import MAX_CALIBRATION_PHOTOS, calibration_paths, quantize_int8, shape_nodes
from headstart.workflows.export_scoring import onnx_accuracy, onnx_scores, run_onnx, time_onnx

__all__ = [
    "MAX_CALIBRATION_PHOTOS",
    "ExportReport",
    "export_onnx",
    "onnx_accuracy",
    "onnx_scores",
    "quantize_int8",
    "run_onnx",
    "shape_nodes",
    "time_onnx",
    "write_onnx",
]


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and measured; ``to_dict()`` is what ``headstart export --json`` prints.

    Attributes:
        path: the fp32 ONNX file.
        max_abs_diff_probabilities / max_abs_diff_features: ONNX Runtime against PyTorch on ``n_checked`` images.
        quantized: the int8 file (with ``int8=True``), calibrated on ``calibration``; ``ms_per_photo_onnx`` and
            ``ms_per_photo_int8``: median ONNX Runtime time of one photo for each file, on this machine.
        accuracy_pytorch / accuracy_onnx / accuracy_int8: on the ``n_images`` scored photos of ``check_data``.
    """

    path: Path
    max_abs_diff_probabilities: float
    max_abs_diff_features: float
    n_checked: int
    quantized: Path | None = None
    calibration: str | None = None
    ms_per_photo_onnx: float | None = None
    ms_per_photo_int8: float | None = None
    accuracy_pytorch: float | None = None
    accuracy_onnx: float | None = None
    n_images: int | None = None
    accuracy_int8: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The numerical check, then the int8 copy's keys (when there is one), then the accuracies (when checked)."""
        out: dict[str, Any] = {
            "path": str(self.path),
            "max_abs_diff_probabilities": self.max_abs_diff_probabilities,
            "max_abs_diff_features": self.max_abs_diff_features,
            "n_checked": self.n_checked,
            "quantized": None if self.quantized is None else str(self.quantized),
        }
        if self.quantized is not None:
            out.update(
                calibration=self.calibration,
                ms_per_photo_onnx=self.ms_per_photo_onnx,
                ms_per_photo_int8=self.ms_per_photo_int8,
            )
        if self.n_images is not None:
            out.update(accuracy_pytorch=self.accuracy_pytorch, accuracy_onnx=self.accuracy_onnx, n_images=self.n_images)
            if self.quantized is not None:
                out["accuracy_int8"] = self.accuracy_int8
        return out


def export_onnx(
    model: Any,
    out: str | os.PathLike[str],
    *,
    int8: bool = False,
    calibrate: str | os.PathLike[str] | Dataset | Sequence[str | os.PathLike[str]] | None = None,
    check_data: str | os.PathLike[str] | Dataset | None = None,
    check_images: Sequence[str | os.PathLike[str]] | None = None,
    max_calibration_photos: int = MAX_CALIBRATION_PHOTOS,
    opset: int = 17,
    tolerance: float = 1e-4,
    cache: FeatureCache | None = None,
) -> ExportReport:
    """Write ``model`` as ONNX, checked against PyTorch; optionally an int8 copy, timings and accuracies.

    Args:
        model: a :class:`~headstart.models.classifier.Classifier`, a fitted estimator holding one in ``model_``
            (``ImageClassifier``), or a model file path.
        out: the fp32 ONNX file; the int8 copy goes beside it as ``<stem>.int8.onnx``.
        int8: also write the statically quantised copy (:func:`quantize_int8`) and time both files.
        calibrate: photos like those the model will see, for the int8 activation ranges (a data set, a folder of
            photos, or a list of paths); default: the model's training photos, when they are still where the model
            file says.
        check_data: labelled photos to measure the accuracy of PyTorch, the ONNX file and the int8 copy on.
        check_images: photos for the numerical check (at most 8 are used); default: 4 random images.
        tolerance: largest allowed difference of the probabilities between ONNX Runtime and PyTorch.
        cache: the feature cache for PyTorch's accuracy (the default cache when None).

    Raises:
        ParameterError: ``int8`` without ``calibrate`` and the training photos are not there any more.
        HeadstartError: ONNX Runtime's probabilities differ by more than ``tolerance`` (nothing is written).
        DataError: no readable calibration photos, or ``check_data`` has no label the model knows.

    Example:
        >>> report = export_onnx("pets.safetensors", "pets.onnx", int8=True, check_data="test_photos/")
        >>> report.to_dict()["accuracy_int8"] >= report.to_dict()["accuracy_onnx"] - 0.05
        True
    """
    classifier = as_classifier(model, "export_onnx")
    check_int(max_calibration_photos, "max_calibration_photos", "export_onnx", low=1)
    source = _calibration_source(classifier, calibrate) if int8 else None
    calibration = calibration_paths(source) if int8 else None  # (a missing or empty folder fails before any work)
    dataset = None
    if check_data is not None:
        dataset = check_data if isinstance(check_data, Dataset) else load_dataset(check_data)
    report = write_onnx(classifier, out, check_images=check_images, opset=opset, tolerance=tolerance)
    if calibration is not None:
        report.quantized = quantize_int8(
            report.path,
            report.path.with_name(report.path.stem + ".int8.onnx"),
            classifier,
            calibration,
            max_photos=max_calibration_photos,
        )
        report.calibration = _describe_photos(source)
        image = np.zeros((1, *classifier.spec.data_config["input_size"]), dtype=np.float32)
        report.ms_per_photo_onnx = round(time_onnx(report.path, image) * 1000, 2)
        report.ms_per_photo_int8 = round(time_onnx(report.quantized, image) * 1000, 2)
    if dataset is not None:
        report.accuracy_pytorch = evaluate(classifier, dataset, cache=cache).accuracy
        scored = onnx_scores(report.path, classifier, dataset)
        report.accuracy_onnx, report.n_images = scored.accuracy, scored.n_images
        if report.quantized is not None:
            report.accuracy_int8 = onnx_scores(report.quantized, classifier, dataset).accuracy
    return report


def _calibration_source(model: Classifier, calibrate: Any) -> Any:
    """``calibrate``, or the model's training photos when they are still there, or a message saying what to pass."""
    if calibrate is not None:
        return calibrate
    source = (model.metadata.get("data") or {}).get("source")
    if not source or not Path(source).exists():
        raise ParameterError(
            "int8 export needs photos to calibrate on, and the model's training photos are not at "
            f"{source or '(not recorded)'}: pass calibrate=DATA (--calibrate DATA), a few hundred photos like the "
            "ones the model will see.",
            "calibrate",
        )
    return source


def _describe_photos(photos: Any) -> str:
    if isinstance(photos, Dataset):
        return str(photos.root)
    if isinstance(photos, (list, tuple)):
        return f"{len(photos)} photos"
    return str(photos)


def _export_module(model: Classifier) -> Any:
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


def write_onnx(
    model: Classifier | str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    check_images: Sequence[str | os.PathLike[str]] | None = None,
    opset: int = 17,
    tolerance: float = 1e-4,
) -> ExportReport:
    """Write ``model`` as ONNX and compare ONNX Runtime with PyTorch on real (``check_images``) or random images.

    Raises:
        HeadstartError: when the probabilities differ by more than ``tolerance`` (nothing is left at ``out``).

    Example:
        >>> write_onnx("pets.safetensors", "pets.onnx").max_abs_diff_probabilities < 1e-4
        True
    """
    import torch

    check_int(opset, "opset", "export_onnx", low=7)
    check_number(tolerance, "tolerance", "export_onnx", low=0, low_open=True)
    onnx, _ = require_onnx()
    model = as_classifier(model, "export_onnx")
    module = _export_module(model)
    batch = _check_batch(model, check_images)
    out = Path(out)
    with atomic_path(out) as tmp:
        torch.onnx.export(
            module,
            (batch[:1],),
            str(tmp),
            input_names=["image"],
            output_names=["features", "probabilities"],
            dynamic_axes={"image": {0: "batch"}, "features": {0: "batch"}, "probabilities": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
        proto = onnx.load(str(tmp))
        meta = {
            "classes": model.classes,
            "backbone": model.spec.to_dict(),
            "headstart": model.metadata.get("headstart_version"),
        }
        entry = proto.metadata_props.add()
        entry.key, entry.value = "headstart", json.dumps(meta)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        with torch.no_grad():
            want_f, want_p = (t.numpy() for t in module(batch))
        got_f, got_p = session(tmp, cached=False).run(None, {"image": batch.numpy()})
        diff_p = float(np.abs(got_p - want_p).max())
        diff_f = float(np.abs(got_f - want_f).max())
        if not (np.isfinite(got_p).all() and np.isfinite(want_p).all()):  # (NaN compares as no difference)
            raise HeadstartError(
                f"The exported network gives NaN or infinite probabilities (its head's weights reach "
                f"{np.abs(model.head_weight).max():.3g}, beyond float32 scores); not exported. Re-train the model."
            )
        if diff_p > tolerance:
            raise HeadstartError(
                f"ONNX Runtime's probabilities differ from PyTorch's by {diff_p:.2g} (> {tolerance:g}); not exported."
            )
    return ExportReport(out, diff_p, diff_f, int(batch.shape[0]))


def _check_batch(model: Classifier, images: Sequence[str | os.PathLike[str]] | None) -> Any:
    import torch

    if images:
        decode = preprocessor(model.backbone)
        return torch.stack([decode(p) for p in list(images)[:8]])
    size = model.spec.data_config["input_size"]
    return torch.randn(4, *size, generator=torch.Generator().manual_seed(0))
