"""One served model: the trained classifier, its preprocessing, its forward pass and its Grad-CAM, ready for HTTP.

A photo sent to the server must get exactly what ``headstart predict`` gives for the same file, so the server
runs extraction's own pieces, chosen the way :func:`~headstart.features.extract.extract_features` chooses them:
the engine and precision from :func:`~headstart.features.openvino.resolve_engine` (``auto``: OpenVINO on a CPU
where it is installed, else torch; bf16 where the CPU has it); uploads decoded by
:func:`~headstart.data.images.decode_image` (the decoder of files on disk, same pixel limit, same JPEG draft
size) into the engine's input (:func:`~headstart.features.extract.bytes_preprocessor` for torch,
:func:`~headstart.features.preprocess.uint8_crop` for OpenVINO); the views embedded by the engine's view embedder
and mirror-averaged as the cache averages them when the model file says so; the head is
:meth:`Classifier.predict_proba_features`. ``tests/serve`` checks the result against ``predict``.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from headstart._validation import check_choice
from headstart.data.images import DEFAULT_MAX_PIXELS, decode_image
from headstart.errors import UnusableImageError
from headstart.features.engines import ONNX_PRECISION, VIEWS
from headstart.features.extract import ENGINES, PRECISIONS, default_precision
from headstart.models.classifier import Classifier

if TYPE_CHECKING:
    from PIL import Image

#: The longest side of the Grad-CAM overlay PNG (the photo is shrunk to it, never enlarged).
OVERLAY_MAX_SIDE = 640


def model_name(path: str | os.PathLike[str]) -> str:
    """The name a model file is served under: its file name without ``.safetensors`` (``pets.safetensors`` → ``pets``)."""
    name = Path(path).name
    return name[: -len(".safetensors")] if name.endswith(".safetensors") else Path(name).stem


class ServedModel:
    """A :class:`~headstart.models.classifier.Classifier` with what serving it needs.

    :meth:`open` reads the file (fast, no torch); :meth:`load` builds the network and warms it up (seconds), so a
    server can listen while it loads and answer ``/readyz`` honestly.

    Args:
        name: what clients call it (``?model=NAME``, ``/v2/models/NAME``).
        classifier: the loaded model file.
        precision: as for ``predict``: ``auto`` (bf16 on CPUs with native bf16, else fp32), ``fp32``, ``bf16``,
            ``int8`` (OpenVINO).
        engine: as for ``predict``: ``auto`` (OpenVINO on a CPU where installed, else torch), ``openvino``,
            ``torch`` or ``onnxruntime``.
        max_pixels: images whose header claims more pixels are refused (decompression bombs).

    Example:
        >>> served = ServedModel.open("pets.safetensors").load()
        >>> probs = served.infer([served.prepare(Path("cat.jpg").read_bytes(), "cat.jpg")])
        >>> served.top(probs[0], 1)
        [{'label': 'Bengal', 'probability': 0.91}]
    """

    def __init__(
        self,
        name: str,
        classifier: Classifier,
        *,
        precision: str = "auto",
        engine: str = "auto",
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        from headstart.features.openvino import resolve_engine

        check_choice(precision, "precision", "ServedModel", PRECISIONS)
        check_choice(engine, "engine", "ServedModel", ENGINES)
        self.name = name
        self.classifier = classifier
        precision = (
            ONNX_PRECISION
            if engine == "onnxruntime"
            else (default_precision("cpu") if precision == "auto" else precision)
        )
        self.engine, self.precision = resolve_engine(engine, precision, "cpu", classifier.spec)  # as extraction does
        self.max_pixels = max_pixels
        self._views = VIEWS if classifier.spec.flip_average else VIEWS[:1]
        self._prepare: Any = None
        self._stack: Any = None
        self._embed: Any = None
        self._target: Any = None
        self._explain_lock = threading.Lock()

    @classmethod
    def open(cls, path: str | os.PathLike[str], name: str | None = None, **options: Any) -> ServedModel:
        """Read a model file (raises :class:`~headstart.errors.ModelFileError` for a damaged or foreign one)."""
        return cls(name or model_name(path), Classifier.load(path), **options)

    @property
    def path(self) -> str:
        return str(self.classifier.metadata.get("path", ""))

    @property
    def classes(self) -> list[str]:
        return self.classifier.classes

    @property
    def batch_size(self) -> int:
        """The micro-batch size this model is served with unless told otherwise: 16, but 1 for the OpenVINO engine,
        whose one-photo pass costs as little per photo as a batch on a CPU, so grouping would only add the wait
        (``benchmarks/serve.py``, concurrency 16 on 2 cores: batching made OpenVINO 0.88x as fast, torch 2.5x)."""
        return 1 if self.engine == "openvino" else 16

    @property
    def loaded(self) -> bool:
        return self._embed is not None

    # -------------------------------------------------------------------------------------------- loading
    def load(self, *, warm_up_batch: int = 1) -> ServedModel:
        """Build the network and the preprocessing (extraction's, for this engine); run one forward pass of each
        batch size from 1 to ``warm_up_batch`` (a size's first pass costs several times a later one), so no request
        pays for it."""
        from headstart.features.extract import decode_size

        spec = self.classifier.spec
        draft = decode_size(spec)
        max_pixels = self.max_pixels
        if self.engine == "openvino":
            from headstart.features.openvino import openvino_embedder
            from headstart.features.preprocess import uint8_crop

            self._embed = openvino_embedder(spec, self.precision, lambda: self.classifier.backbone)
            self._prepare = lambda data, name: uint8_crop(
                decode_image(data, name=name, max_pixels=max_pixels, draft_size=draft), spec
            )
            self._stack = np.stack
        else:
            import torch

            from headstart.features.engines import view_embedder
            from headstart.features.extract import bytes_preprocessor

            backbone = self.classifier.backbone
            self._embed = view_embedder(backbone, precision=self.precision, device="cpu")
            self._prepare = bytes_preprocessor(backbone, max_pixels=max_pixels)
            self._stack = torch.stack
        size = tuple(spec.data_config["input_size"])
        blank = np.zeros((size[1], size[2], 3), np.uint8) if self.engine == "openvino" else None
        for n in range(1, max(1, int(warm_up_batch)) + 1):  # every size the batcher may run (first runs are slow)
            if blank is not None:
                self.infer([blank] * n)
            else:
                import torch

                self.infer([torch.zeros(size)] * n)
        return self

    def load_explainer(self) -> None:
        """The network Grad-CAM runs on (its own copy: hooks on it never touch the batched forward pass)."""
        from headstart.models.target import load_target

        with self._explain_lock:
            if self._target is None:
                self._target = load_target(self.path)
                import matplotlib  # noqa: F401  - the overlay's colour map; imported now, not on the first request

    # ----------------------------------------------------------------------------------------- inference
    def prepare(self, data: bytes, filename: str) -> Any:
        """Decode and preprocess one upload (raises :class:`~headstart.errors.UnusableImageError` naming it)."""
        if self._prepare is None:
            raise RuntimeError(f"model {self.name!r} is not loaded yet")
        return self._prepare(data, filename)

    def infer(self, images: Sequence[Any]) -> list[np.ndarray | UnusableImageError]:
        """Class probabilities for a batch of prepared images: one ``(n_classes,)`` row each (an
        :class:`~headstart.errors.UnusableImageError` for a photo whose features are not finite).

        The views are asked for photo by photo (``orig``, then ``mirror`` when the model averages them), as
        extraction asks, and averaged as the cache's two stored views are.
        """
        rows = self._embed(self._stack(list(images)), [(i, v) for i in range(len(images)) for v in self._views])
        if len(self._views) == 2:
            features = (rows[0::2] + rows[1::2]) / np.float32(2)
        else:
            features = rows
        sound = np.isfinite(features).all(axis=1)  # (NaN or infinite features: that photo's refusal, not a 500)
        probabilities = iter(self.classifier.predict_proba_features(features[sound]) if sound.any() else ())
        refused = UnusableImageError("upload", "the engine gave NaN or infinite features for this photo")
        return [next(probabilities) if ok else refused for ok in sound]

    def top(self, probabilities: np.ndarray, k: int) -> list[dict[str, Any]]:
        """The ``k`` most likely labels, as ``headstart predict --json`` writes them (stable order, 6 decimals)."""
        order = np.argsort(-probabilities, kind="stable")[: min(k, len(self.classes))]
        return [{"label": self.classes[j], "probability": round(float(probabilities[j]), 6)} for j in order]

    # ----------------------------------------------------------------------------------------- explanation
    def explain_png(
        self, data: bytes, filename: str, *, target: str | int | None = None, method: str = "gradcam"
    ) -> tuple[bytes, dict[str, Any]]:
        """The photo with its Grad-CAM heat map blended in, as PNG bytes, and what was explained.

        The photo is decoded as ``headstart explain`` decodes it (whole, no crop), so the map covers all of it.
        """
        from headstart.inside.heatmap import explain_view, whole_view

        photo = decode_image(data, name=filename, max_pixels=self.max_pixels)
        self.load_explainer()
        with self._explain_lock:  # Grad-CAM hooks one module: one explanation at a time per model
            e = explain_view(self._target, whole_view(photo, self._target.spec.data_config), target, method)
        info = {
            "target": e.target,
            "label": e.target_name,
            "probability": round(e.probability, 6),
            "method": e.method,
            "layer": e.layer,
        }
        return overlay_png(photo, e.heatmap), info

    # ----------------------------------------------------------------------------------------------- card
    def card(self) -> dict[str, Any]:
        """What ``GET /v1/models`` says about the model: classes, backbone, preprocessing, training metrics."""
        spec = self.classifier.spec
        meta = self.classifier.metadata
        metrics = meta.get("metrics") or {}
        return {
            "name": self.name,
            "classes": list(self.classes),
            "n_classes": len(self.classes),
            "method": meta.get("method"),
            "created": meta.get("created"),
            "headstart_version": meta.get("headstart_version"),
            "backbone": {
                "name": spec.name,
                "source": spec.source,
                "weights_id": spec.weights_id,
                "num_features": spec.num_features,
            },
            "preprocessing": {**spec.data_config, "flip_average": spec.flip_average},
            "inference": {"engine": self.engine, "precision": self.precision},
            "metrics": {k: v for k, v in metrics.items() if not isinstance(v, dict)},
            "accuracy": metrics.get("val_accuracy"),
        }


def overlay_png(
    photo: Image.Image, heatmap: np.ndarray, *, alpha: float = 0.45, max_side: int = OVERLAY_MAX_SIDE
) -> bytes:
    """The photo (shrunk to ``max_side``) with the heat map in the jet colour map blended over it, as PNG bytes."""
    from matplotlib import colormaps
    from PIL import Image

    w, h = photo.size
    scale = min(1.0, max_side / max(w, h))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    base = photo.resize(size, Image.Resampling.BICUBIC) if size != photo.size else photo
    heat = Image.fromarray(np.clip(heatmap * 255.0, 0, 255).astype(np.uint8)).resize(size, Image.Resampling.BILINEAR)
    colour = colormaps["jet"](np.asarray(heat, dtype=np.float32) / 255.0)[..., :3] * 255.0
    mixed = (1.0 - alpha) * np.asarray(base, dtype=np.float32) + alpha * colour
    buffer = io.BytesIO()
    Image.fromarray(np.clip(np.rint(mixed), 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


__all__ = ["ServedModel", "model_name", "overlay_png"]
