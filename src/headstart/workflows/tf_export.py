"""Export a trained model for TensorFlow, Keras 3 and LiteRT (TFLite), each checked in its own runtime.

``export_tensorflow(model, "pets.tflite", format="tflite")`` writes a LiteRT flatbuffer (float32, and with
``int8=True`` a fully int8-quantised copy ``pets.int8.tflite`` with float input and output);
``format="savedmodel"`` writes a TensorFlow SavedModel folder that Keras 3 loads with
``keras.layers.TFSMLayer(path, call_endpoint="serving_default")``.

The way there: the ONNX file :func:`~headstart.workflows.export.write_onnx` writes (checked against PyTorch), its
shape arithmetic folded away by ONNX Runtime's basic graph optimisations (timm's "same" padding computes its pads
from the input's shape; left in, LiteRT needs TensorFlow's Flex delegate for those convolutions), then onnx2tf
(MIT), which turns the graph into TensorFlow with channels-last input, then TensorFlow's own LiteRT converter for
int8, calibrated on real photos. onnx2tf was chosen over litert-torch (ai-edge-torch's successor): litert-torch
brings jax, jaxlib, transformers and torchao and would downgrade pydantic and typing-extensions in the same
environment, and writes LiteRT only (no SavedModel).

Every export is run before it is kept: the LiteRT interpreter of ``ai-edge-litert`` for ``.tflite`` files, Keras 3's
``TFSMLayer`` for the SavedModel, on real photos (``check_images``, else 8 photos of ``check_data`` or of the
calibration set, else random images), and refused when its probabilities differ from PyTorch's by more than
``tolerance`` or its top-1 differs. The int8 copy is not held to the tolerance; its accuracy change is measured on
``check_data`` and reported, as for the ONNX int8 export.

What a user needs to run the export travels with it as JSON (:data:`METADATA_SCHEMA`): beside a ``.tflite`` file
as ``<stem>.headstart.json``, inside a SavedModel as ``assets/headstart.json``: the class names (the columns of
``probabilities``), the input (``image``: float32, ``(batch, H, W, 3)``, RGB, normalised as
``(pixel / 255 - mean) / std`` after the resize and centre crop the preprocessing describes) and the two outputs
(``features`` and ``probabilities``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headstart._io import atomic_path, temporary_beside, write_json
from headstart._validation import check_choice, check_int, check_number
from headstart.data.datasets import Dataset, load_dataset
from headstart.data.scanning import UnusableFile
from headstart.errors import HeadstartError, UnusableImageError
from headstart.features.extract import preprocessor
from headstart.models.classifier import Classifier
from headstart.reports.metrics import score_photos
from headstart.workflows.evaluation import as_classifier
from headstart.workflows.export import write_onnx
from headstart.workflows.export_int8 import MAX_CALIBRATION_PHOTOS, calibration_paths

__all__ = [
    "FORMATS",
    "METADATA_SCHEMA",
    "TFExportReport",
    "export_tensorflow",
    "read_export_metadata",
    "require_tf",
    "run_savedmodel",
    "run_tflite",
    "tf_scores",
]

FORMATS = ("savedmodel", "tflite")
#: The ``schema`` of the JSON that travels with every TensorFlow export.
METADATA_SCHEMA = "headstart-tf-export/1"
_INSTALL = (
    "pip install 'headstart[tf]' && pip install --no-deps tf-keras==2.21.0 onnx2tf==1.28.8 "
    "(their own pins would downgrade numpy and onnx; see pyproject.toml)"
)


@dataclass
class TFExportReport:
    """What :func:`export_tensorflow` wrote and measured; ``to_dict()`` is what ``headstart export --json`` prints.

    Attributes:
        format: ``tflite`` or ``savedmodel``; ``path``: the file or folder; ``metadata``: its JSON.
        max_abs_diff_probabilities: the export in its own runtime against PyTorch on ``n_checked`` photos.
        quantized: the int8 ``.tflite`` (with ``int8=True``), calibrated on ``calibration``;
            ``max_abs_diff_int8``: its probabilities against PyTorch on the same photos.
        accuracy_pytorch / accuracy_export / accuracy_int8: on the ``n_images`` scored photos of ``check_data``.
    """

    format: str
    path: Path
    metadata: Path
    max_abs_diff_probabilities: float
    n_checked: int
    checked_on: str
    quantized: Path | None = None
    calibration: str | None = None
    max_abs_diff_int8: float | None = None
    accuracy_pytorch: float | None = None
    accuracy_export: float | None = None
    accuracy_int8: float | None = None
    n_images: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": self.format,
            "path": str(self.path),
            "metadata": str(self.metadata),
            "max_abs_diff_probabilities": self.max_abs_diff_probabilities,
            "n_checked": self.n_checked,
            "checked_on": self.checked_on,
            "quantized": None if self.quantized is None else str(self.quantized),
        }
        if self.quantized is not None:
            out.update(calibration=self.calibration, max_abs_diff_int8=self.max_abs_diff_int8)
        if self.n_images is not None:
            out.update(
                accuracy_pytorch=self.accuracy_pytorch, accuracy_export=self.accuracy_export, n_images=self.n_images
            )
            if self.quantized is not None:
                out["accuracy_int8"] = self.accuracy_int8
        return out


def require_tf() -> tuple[Any, Any]:
    """``(tensorflow, onnx2tf)`` and a check that the LiteRT interpreter is there, or how to install them."""
    _torch_first()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up notes are not the user's business
    try:
        import onnx2tf
        import tensorflow as tf
        from ai_edge_litert.interpreter import Interpreter  # noqa: F401  (checked here: every export runs in it)
    except ImportError as exc:
        raise HeadstartError(
            f"TensorFlow/LiteRT export needs the tf extra ({exc.name} is missing): {_INSTALL}."
        ) from exc
    return tf, onnx2tf


def _torch_first() -> None:
    """Load torch and its triton before TensorFlow or LiteRT: triton's LLVM loaded after TensorFlow's (as
    ``torch.onnx.export`` loads it, lazily) crashes the process with a segmentation fault."""
    import contextlib

    import torch  # noqa: F401

    with contextlib.suppress(ImportError):
        import triton  # noqa: F401


def export_tensorflow(
    model: Any,
    out: str | os.PathLike[str],
    *,
    format: str = "tflite",
    int8: bool = False,
    calibrate: str | os.PathLike[str] | Dataset | Sequence[str | os.PathLike[str]] | None = None,
    check_data: str | os.PathLike[str] | Dataset | None = None,
    check_images: Sequence[str | os.PathLike[str]] | None = None,
    max_calibration_photos: int = MAX_CALIBRATION_PHOTOS,
    tolerance: float = 1e-3,
) -> TFExportReport:
    """Write ``model`` as LiteRT (``format="tflite"``) or a TensorFlow SavedModel, verified in its own runtime.

    Args:
        model: a :class:`~headstart.models.classifier.Classifier`, a fitted ``ImageClassifier`` or a model file.
        out: the ``.tflite`` file, or the SavedModel folder; an int8 copy goes beside a ``.tflite`` as
            ``<stem>.int8.tflite``.
        int8: (tflite) also write the fully int8-quantised copy, calibrated on ``calibrate``.
        calibrate: photos like those the model will see (a data set, a folder, a list of paths); default: the
            model's training photos, when they are still where the model file says.
        check_data: labelled photos to measure the accuracy of PyTorch, the export and the int8 copy on.
        check_images: photos for the numerical check (at most 8 are used).
        tolerance: largest allowed difference of the probabilities between the export and PyTorch.

    Raises:
        HeadstartError: the tf extra is not installed, or the export disagrees with PyTorch (nothing is written).
        ParameterError: a bad ``format``, ``int8`` with ``savedmodel``, or ``int8`` with nothing to calibrate on.

    Example:
        >>> report = export_tensorflow("pets.safetensors", "pets.tflite", int8=True, check_data="test_photos/")
        >>> report.max_abs_diff_probabilities < 1e-3, report.quantized.name
        (True, 'pets.int8.tflite')
    """
    from headstart.workflows.export import _calibration_source

    check_choice(format, "format", "export_tensorflow", FORMATS)
    check_int(max_calibration_photos, "max_calibration_photos", "export_tensorflow", low=1)
    check_number(tolerance, "tolerance", "export_tensorflow", low=0, low_open=True)
    if int8 and format != "tflite":
        check_choice(format, "format", "export_tensorflow (int8 is a LiteRT quantisation)", ("tflite",))
    tf, onnx2tf = require_tf()
    classifier = as_classifier(model, "export_tensorflow")
    source = _calibration_source(classifier, calibrate) if int8 else None
    calibration = calibration_paths(source)[:max_calibration_photos] if int8 else None
    dataset = None
    if check_data is not None:
        dataset = check_data if isinstance(check_data, Dataset) else load_dataset(check_data)
    photos, checked_on = _check_photos(check_images, dataset, calibration)
    images = _nhwc(classifier, photos)
    want = _pytorch_probabilities(classifier, images)
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="headstart-tf-") as work:
        saved = _saved_model(classifier, Path(work), onnx2tf)
        meta = export_metadata(classifier)
        if format == "savedmodel":
            write_json(saved / "assets" / "headstart.json", meta)
            got = run_savedmodel(saved, images)[1]
            diff = _agreement(got, want, tolerance, "the SavedModel (Keras 3 TFSMLayer)")
            _replace_folder(saved, out)
            report = TFExportReport(format, out, out / "assets" / "headstart.json", diff, len(images), checked_on)
        else:
            flat = Path(work) / "model.tflite"
            flat.write_bytes(_convert(tf, saved, None))
            diff = _agreement(run_tflite(flat, images)[1], want, tolerance, "the LiteRT file")
            quantized = None
            if calibration is not None:
                quantized = Path(work) / "model.int8.tflite"
                quantized.write_bytes(_convert(tf, saved, _nhwc(classifier, calibration)))
            files = {"float32": out.name}
            if quantized is not None:
                files["int8"] = out.with_suffix(".int8.tflite").name
            sidecar = out.with_name(out.stem + ".headstart.json")
            report = TFExportReport(format, out, sidecar, diff, len(images), checked_on)
            with atomic_path(out) as temporary:
                shutil.copyfile(flat, temporary)
            if quantized is not None:
                report.quantized = out.with_suffix(".int8.tflite")
                report.calibration = str(source if not isinstance(source, Dataset) else source.root)
                with atomic_path(report.quantized) as temporary:
                    shutil.copyfile(quantized, temporary)
                report.max_abs_diff_int8 = float(np.abs(run_tflite(report.quantized, images)[1] - want).max())
            write_json(sidecar, {**meta, "files": files})
    if dataset is not None:
        from headstart.workflows.evaluation import evaluate

        report.accuracy_pytorch = evaluate(classifier, dataset).accuracy
        scored = tf_scores(report.path, classifier, dataset)
        report.accuracy_export, report.n_images = scored.accuracy, scored.n_images
        if report.quantized is not None:
            report.accuracy_int8 = tf_scores(report.quantized, classifier, dataset).accuracy
    return report


def export_metadata(model: Classifier) -> dict[str, Any]:
    """The JSON that travels with an export: classes, input layout and preprocessing, outputs, backbone."""
    config = model.spec.data_config
    _, height, width = config["input_size"]
    return {
        "schema": METADATA_SCHEMA,
        "classes": list(model.classes),
        "input": {
            "name": "image",
            "dtype": "float32",
            "layout": "NHWC",
            "shape": [None, height, width, 3],
            "colour": "RGB",
            "normalisation": "(pixel / 255 - mean) / std, per channel",
        },
        "preprocessing": {
            "resize_shorter_side_to": round(min(height, width) / config.get("crop_pct", 1.0)),
            "interpolation": config.get("interpolation"),
            "crop": [height, width],
            "crop_pct": config.get("crop_pct"),
            "crop_mode": config.get("crop_mode", "center"),
            "mean": list(config["mean"]),
            "std": list(config["std"]),
        },
        "outputs": {
            "features": [None, model.spec.num_features],
            "probabilities": [None, len(model.classes)],
        },
        "backbone": model.spec.to_dict(),
        "headstart": model.metadata.get("headstart_version"),
    }


def read_export_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON beside a ``.tflite`` (``<stem>.headstart.json``; an int8 copy shares its float file's) or inside
    a SavedModel folder (``assets/headstart.json``)."""
    path = Path(path)
    if path.is_dir():
        found = path / "assets" / "headstart.json"
    else:
        stem = path.name.removesuffix(".tflite").removesuffix(".int8")
        found = path.with_name(stem + ".headstart.json")
    if not found.is_file():
        raise HeadstartError(f"{path} has no headstart metadata at {found}: export it again with headstart export.")
    return json.loads(found.read_text())


def run_tflite(path: str | os.PathLike[str], images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(features, probabilities) of normalised NHWC images through the LiteRT interpreter (``ai-edge-litert``)."""
    _torch_first()
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    runner = interpreter.get_signature_runner()
    found = [runner(image=images[i : i + 1].astype(np.float32)) for i in range(len(images))]
    return tuple(np.concatenate([f[name] for f in found]) for name in ("features", "probabilities"))  # type: ignore[return-value]


def run_savedmodel(path: str | os.PathLike[str], images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(features, probabilities) of normalised NHWC images through Keras 3's ``TFSMLayer`` (the way Keras loads a
    SavedModel)."""
    require_tf()
    import keras

    layer = keras.layers.TFSMLayer(str(path), call_endpoint="serving_default")
    found = layer(images.astype(np.float32))
    return np.asarray(found["features"]), np.asarray(found["probabilities"])


def tf_scores(path: str | os.PathLike[str], model: Any, data: str | os.PathLike[str] | Dataset) -> Any:
    """A TensorFlow export scored on labelled photos as :func:`~headstart.workflows.evaluation.evaluate` scores the
    model (:func:`~headstart.reports.metrics.score_photos`), its photos decoded as extraction decodes them."""
    model = as_classifier(model, "tf_scores")
    dataset = data if isinstance(data, Dataset) else load_dataset(data)
    run = run_savedmodel if Path(path).is_dir() else run_tflite
    decode = preprocessor(model.backbone)

    def probabilities(paths: list[Path]) -> tuple[np.ndarray, np.ndarray, list[UnusableFile]]:
        kept, skipped, images = [], [], []
        for i, photo in enumerate(paths):
            try:
                images.append(decode(photo).numpy().transpose(1, 2, 0))
            except UnusableImageError as exc:
                skipped.append(UnusableFile(Path(photo), exc.reason))
                continue
            kept.append(i)
        if not images:
            return np.zeros((0, len(model.classes)), np.float32), np.asarray(kept, dtype=np.int64), skipped
        return run(path, np.stack(images))[1], np.asarray(kept, dtype=np.int64), skipped

    return score_photos(dataset, model.classes, probabilities)


# ------------------------------------------------------------------------------------------------- the pieces
def _replace_folder(source: Path, out: Path) -> None:
    """Copy ``source`` to a staging folder beside ``out`` (``_io.temporary_beside``), then put it in place whole: an
    older export there is moved aside first and removed after, so a reader sees the old folder or the new."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging, old = temporary_beside(out), None
    try:
        shutil.copytree(source, staging)
        if out.exists():
            old = temporary_beside(out)
            os.replace(out, old)
        os.replace(staging, out)
    except BaseException:
        if old is not None and not out.exists():
            os.replace(old, out)  # (the older export back where it was)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _check_photos(
    check_images: Sequence[str | os.PathLike[str]] | None, dataset: Dataset | None, calibration: list[Path] | None
) -> tuple[list[Path] | None, str]:
    if check_images:
        return [Path(p) for p in list(check_images)[:8]], f"{min(len(check_images), 8)} given photos"
    if dataset is not None and len(dataset):
        picked = dataset.paths[:: max(1, len(dataset) // 8)][:8]
        return picked, f"{len(picked)} photos of {dataset.root}"
    if calibration:
        picked = calibration[:: max(1, len(calibration) // 8)][:8]
        return picked, f"{len(picked)} calibration photos"
    return None, "4 random images"


def _nhwc(model: Classifier, photos: Sequence[Path] | None) -> np.ndarray:
    """Photos decoded and normalised as extraction does, channels last; 4 seeded random images when None."""
    if photos is None:
        _, height, width = model.spec.data_config["input_size"]
        return np.random.default_rng(0).standard_normal((4, height, width, 3)).astype(np.float32)
    decode = preprocessor(model.backbone)
    return np.stack([decode(p).numpy().transpose(1, 2, 0) for p in photos]).astype(np.float32)


def _pytorch_probabilities(model: Classifier, images: np.ndarray) -> np.ndarray:
    import torch

    net = model.torch_module().eval()
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
        return net.head(net.features(x)).softmax(-1).numpy()


def _agreement(got: np.ndarray, want: np.ndarray, tolerance: float, what: str) -> float:
    diff = float(np.abs(got - want).max())
    if diff > tolerance or not np.array_equal(got.argmax(1), want.argmax(1)):
        raise HeadstartError(
            f"{what}'s probabilities differ from PyTorch's by {diff:.2g} (tolerance {tolerance:g}) or its top-1 "
            "differs; not exported. Report it with the model's backbone name: the converter mistranslated a layer."
        )
    return diff


def _folded_onnx(model: Classifier, folder: Path) -> Path:
    """The model's ONNX graph with its shape arithmetic folded into constants, the batch still free."""
    import onnx
    import onnxruntime as ort

    raw = write_onnx(model, folder / "raw.onnx").path
    proto = onnx.load(str(raw))
    for value in [*proto.graph.input, *proto.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_value = 1  # a fixed batch lets every Shape node fold
    del proto.graph.value_info[:]
    onnx.save(proto, str(folder / "batch1.onnx"))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # (constant folding, no fusions)
    options.optimized_model_filepath = str(folder / "folded.onnx")
    ort.InferenceSession(str(folder / "batch1.onnx"), options, providers=["CPUExecutionProvider"])
    folded = onnx.load(str(folder / "folded.onnx"))
    left = sorted({n.op_type for n in folded.graph.node} & {"Shape", "Pad"})
    if left:
        raise HeadstartError(f"{model.spec.name}: {left} nodes are left after folding; LiteRT would need Flex ops.")
    for value in [*folded.graph.input, *folded.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    del folded.graph.value_info[:]
    onnx.checker.check_model(folded)
    onnx.save(folded, str(folder / "model.onnx"))
    return folder / "model.onnx"


def _saved_model(model: Classifier, folder: Path, onnx2tf: Any) -> Path:
    """onnx2tf's SavedModel of the folded graph (channels-last input ``image``, outputs named as in ONNX)."""
    import contextlib
    import io

    onnx_path = _folded_onnx(model, folder)
    saved = folder / "saved_model"
    here = os.getcwd()
    os.chdir(folder)  # onnx2tf writes its side files into the working directory
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            onnx2tf.convert(
                input_onnx_file_path=str(onnx_path),
                output_folder_path=str(saved),
                output_signaturedefs=True,
                copy_onnx_input_output_names_to_tflite=True,
                non_verbose=True,
            )
    finally:
        os.chdir(here)
    return _named_signature(model, saved, folder / "named")


def _named_signature(model: Classifier, saved: Path, out: Path) -> Path:
    """The SavedModel again, its ``serving_default`` taking ``image`` and returning ``features`` and
    ``probabilities`` by name (onnx2tf's says ``output_0``, ``output_1``): what Keras' TFSMLayer returns as a
    dict, and what the LiteRT file's signature runner is called with."""
    import tensorflow as tf

    _, height, width = model.spec.data_config["input_size"]
    loaded = tf.saved_model.load(str(saved))
    inner = loaded.signatures["serving_default"]
    names = sorted(inner.structured_outputs)
    widths = {name: inner.structured_outputs[name].shape[-1] for name in names}
    by_width = {widths[n]: n for n in names}
    if len(names) != 2 or len(by_width) != 2 or len(model.classes) not in by_width:
        by_width = {model.spec.num_features: names[0], len(model.classes): names[-1]}  # ONNX's order
    features, probabilities = by_width[model.spec.num_features], by_width[len(model.classes)]

    class Export(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.graph = loaded  # (tracked: its variables are saved with this module)

        @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32, name="image")])
        def serve(self, image: Any) -> dict[str, Any]:
            found = inner(image=image)
            return {"features": found[features], "probabilities": found[probabilities]}

    module = Export()
    tf.saved_model.save(module, str(out), signatures={"serving_default": module.serve})
    return out


def _convert(tf: Any, saved: Path, calibration: np.ndarray | None) -> bytes:
    """The SavedModel as LiteRT: float32, or fully int8 (float input and output) calibrated on ``calibration``."""
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    if calibration is not None:

        def representative() -> Any:
            for image in calibration:
                yield {"image": image[None]}

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()
