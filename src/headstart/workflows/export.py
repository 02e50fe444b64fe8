"""Export a trained model to ONNX, checked against PyTorch at export time; optional int8 through ONNX Runtime.

The ONNX graph takes normalised images ``(batch, 3, H, W)`` (the model's own preprocessing, as in the model
file's metadata) and returns ``features`` ``(batch, num_features)`` and ``probabilities`` ``(batch, n_classes)``.
The headstart metadata (classes, preprocessing, backbone) is stored in the ONNX file's metadata_props.

:func:`export_onnx` is the whole workflow (what ``headstart export`` prints); its pieces are :func:`write_onnx`
(the fp32 file, checked numerically), :func:`quantize_int8`, :func:`time_onnx` and :func:`onnx_accuracy`, which
scores an ONNX file with the same scoring as :func:`~headstart.workflows.evaluation.evaluate`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headstart._io import atomic_path
from headstart._onnx import require_onnx, session
from headstart._validation import ParameterError, check_int, check_number
from headstart.data.datasets import Dataset, load_dataset
from headstart.data.images import DEFAULT_MAX_PIXELS, list_image_files
from headstart.data.scanning import UnusableFile
from headstart.errors import DataError, HeadstartError, UnusableImageError
from headstart.features.cache import FeatureCache
from headstart.features.extract import preprocessor
from headstart.models.classifier import Classifier
from headstart.reports.metrics import ScoredPhotos, score_photos
from headstart.workflows.evaluation import as_classifier, evaluate

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

#: Calibration photos used at most by :func:`quantize_int8` (percentile calibration takes ~0.25 s a photo on 2 cores).
MAX_CALIBRATION_PHOTOS = 100


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
    calibration = _calibration_paths(source) if int8 else None  # (a missing or empty folder fails before any work)
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


def run_onnx(path: str | os.PathLike[str], images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(features, probabilities) of normalised images through ONNX Runtime (sessions are reused).

    Example:
        >>> features, probabilities = run_onnx("pets.onnx", np.zeros((1, 3, 224, 224), np.float32))
        >>> probabilities.shape
        (1, 12)
    """
    features, probabilities = session(path).run(None, {"image": images.astype(np.float32)})
    return features, probabilities


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

    Two things keep it faithful and small:

    - Only the network's values are quantised, never its shape arithmetic (:func:`shape_nodes`: the ``Shape`` →
      ``Cast``/``Div``/``Ceil``/``Sub`` chains that compute TF-style "same" padding). Rounding those to int8 shifted
      the padding and cost the default backbone's features a cosine of 0.955 to fp32 (0.89 at worst); without them
      it is 0.994 (0.98 at worst) on 74 photos.
    - The calibrator sees one photo per collection (ONNX Runtime's ``CalibStridedMinMax`` = 1; despite its name it
      serves the percentile calibrator too): its histograms are merged photo by photo instead of keeping every
      intermediate output of every photo (about 75 MB a photo for the default backbone: 5.4 GB peak for 60 photos).

    Args:
        onnx_path: an export from :func:`write_onnx`.
        out: where to write the int8 model.
        model: the model it was exported from (for its preprocessing).
        calibration: a data set (folder, CSV, …), a folder of photos, or a list of image paths.

    Raises:
        DataError: when none of the calibration photos can be read.

    Example:
        >>> quantize_int8("pets.onnx", "pets.int8.onnx", "pets.safetensors", "photos/")
        PosixPath('pets.int8.onnx')
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

    check_int(max_photos, "max_photos", "quantize_int8", low=1)
    model = as_classifier(model, "quantize_int8")
    paths = _calibration_paths(calibration)
    rng = np.random.default_rng(seed)
    chosen = [paths[i] for i in sorted(rng.permutation(len(paths))[:max_photos])]
    decode = preprocessor(model.backbone)
    images = []
    for path in chosen:
        try:
            images.append(decode(path).numpy()[None])
        except UnusableImageError:
            continue
    if not images:
        raise DataError(f"None of the {len(chosen)} calibration photos could be read; pass a folder of photos.")

    class Photos(CalibrationDataReader):
        """The calibration photos; ``set_range`` lets the calibrator take them one collection at a time."""

        def __init__(self) -> None:
            self._at, self._end = 0, len(images)

        def __len__(self) -> int:
            return len(images)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._at, self._end = start_index, min(end_index, len(images))

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self._at >= self._end:
                return None
            self._at += 1
            return {"image": images[self._at - 1]}

    out = Path(out)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its root-logger advice (pre-processing, shape inference) is for its own developers
    try:  # (its calibrator also prints progress lines to stdout, which would break `--json`)
        with (
            tempfile.TemporaryDirectory() as tmp,
            atomic_path(out) as quantized,
            contextlib.redirect_stdout(io.StringIO()),
        ):
            prepared = Path(tmp) / "prepared.onnx"
            quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
            quantize_static(
                str(prepared),
                str(quantized),
                Photos(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                weight_type=QuantType.QInt8,
                activation_type=QuantType.QUInt8,
                calibrate_method=CalibrationMethod.Percentile,
                nodes_to_exclude=shape_nodes(prepared),
                extra_options={"CalibStridedMinMax": 1},
            )
    finally:
        root.setLevel(level)
    return out


def shape_nodes(path: str | os.PathLike[str]) -> list[str]:
    """Names of the nodes of an ONNX graph that compute shapes, not values: ``Shape`` nodes and every node all of
    whose inputs are shapes or constants (what quantising would round and so break, e.g. dynamic padding).

    Example:
        >>> len(shape_nodes("pets.onnx"))   # tf_efficientnet_lite0: the "same" padding of its 5 strided convolutions
        265
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    constant = {t.name for t in graph.initializer}
    shapes: set[str] = set()
    names = []
    for node in graph.node:  # (ONNX graphs are in topological order)
        if node.op_type == "Constant":
            constant.update(node.output)
            continue
        inputs = [i for i in node.input if i]
        if node.op_type == "Shape" or (
            any(i in shapes for i in inputs) and all(i in shapes or i in constant for i in inputs)
        ):
            shapes.update(node.output)
            names.append(node.name)
    return names


def _calibration_paths(calibration: Any) -> list[Path]:
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
        raise DataError(
            f"No calibration photos in {calibration}: pass a folder of photos like the ones the model "
            "will see (e.g. its training photos)."
        )
    return paths


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
    decode = preprocessor(model.backbone, max_pixels=max_pixels)
    runner = session(path, cached=False)  # (not kept: its buffers, sized for a batch, go when scoring is done)

    def probabilities(paths: list[Path]) -> tuple[np.ndarray, np.ndarray, list[UnusableFile]]:
        import torch

        rows, kept, skipped, batch = [], [], [], []

        def flush() -> None:
            if batch:
                rows.append(runner.run(None, {"image": torch.stack(batch).numpy()})[1])
                batch.clear()

        for i, photo in enumerate(paths):
            try:
                batch.append(decode(photo))
            except UnusableImageError as exc:
                skipped.append(UnusableFile(Path(photo), exc.reason))
                continue
            kept.append(i)
            if len(batch) == batch_size:
                flush()
        flush()
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
