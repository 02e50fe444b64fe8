"""One served model: the trained classifier, its preprocessing, its forward pass and its Grad-CAM, ready for HTTP.

A photo sent to the server must get exactly what ``headstart predict`` gives for the same file, so the server runs
extraction's own pipeline (:class:`~headstart.features.pipeline.Pipeline`): the same choice of engine and precision,
the same decoding (an upload decodes as the same file on disk does), the same views averaged the same way, the same
head and top-k. ``tests/serve`` checks the result against ``predict``.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from headstart.data.images import DEFAULT_MAX_PIXELS, decode_image
from headstart.errors import UnusableImageError
from headstart.features.ensemble import pipeline_for
from headstart.features.pipeline import ranked, top_k
from headstart.models.classifier import Classifier
from headstart.serve.batching import ShuttingDownError

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
        self.name = name
        self.classifier = classifier
        self.pipeline = pipeline_for(
            classifier.spec,
            _Trunk(classifier),
            engine=engine,
            precision=precision,
            max_pixels=max_pixels,
            caller="ServedModel",
        )  # (the engine, precision, preprocessing and views extraction would choose)
        self.engine, self.precision = self.pipeline.engine, self.pipeline.precision
        self.max_pixels = max_pixels
        self._loaded = False
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
        return self._loaded

    # -------------------------------------------------------------------------------------------- loading
    def load(self, *, warm_up_batch: int = 1) -> ServedModel:
        """Build the network and the preprocessing (extraction's, for this engine); run one forward pass of each
        batch size from 1 to ``warm_up_batch`` (a size's first pass costs several times a later one), so no request
        pays for it."""
        self.pipeline.runner()  # (converted once a machine; compiled once a process)
        blank = self.pipeline.blank()
        for n in range(1, max(1, int(warm_up_batch)) + 1):  # every size the batcher may run (first runs are slow)
            self.pipeline.features([blank] * n)
        self._loaded = True
        return self

    def load_explainer(self) -> None:
        """The network Grad-CAM runs on (its own copy: hooks on it never touch the batched forward pass), warmed up
        by one explanation of a grey photo: the first Grad-CAM of a process costs seconds (autograd, hooks, the
        colour map), which no request should pay."""
        from headstart.models.target import load_target

        with self._explain_lock:
            if self._target is None:
                from PIL import Image

                from headstart.inside.heatmap import explain_view, whole_view

                target = load_target(self.path)
                height, width = target.spec.data_config["input_size"][-2:]
                grey = Image.new("RGB", (width, height), (128, 128, 128))
                overlay_png(grey, explain_view(target, whole_view(grey, target.spec.data_config)).heatmap)
                self._target = target

    # ----------------------------------------------------------------------------------------- inference
    def prepare(self, data: bytes, filename: str) -> Any:
        """Decode and preprocess one upload (raises :class:`~headstart.errors.UnusableImageError` naming it)."""
        if not self._loaded:
            raise RuntimeError(f"model {self.name!r} is not loaded yet")
        return self.pipeline.decode_bytes(data, filename)

    def infer(self, images: Sequence[Any]) -> list[np.ndarray | UnusableImageError]:
        """Class probabilities for a batch of prepared images: one ``(n_classes,)`` row each (the pipeline's views,
        averaged as the cache averages them, through the model's head), or an
        :class:`~headstart.errors.UnusableImageError` for a photo whose features are not finite."""
        features = self.pipeline.features(list(images))
        sound = np.isfinite(features).all(axis=1)  # (NaN or infinite features: that photo's refusal, not a 500)
        probabilities = iter(self.classifier.predict_proba_features(features[sound]) if sound.any() else ())
        refused = UnusableImageError("upload", "the engine gave NaN or infinite features for this photo")
        return [next(probabilities) if ok else refused for ok in sound]

    def top(self, probabilities: np.ndarray, k: int) -> list[dict[str, Any]]:
        """The ``k`` most likely labels, as ``headstart predict --json`` writes them (stable order, 6 decimals)."""
        best = top_k(probabilities, self.classes, k)
        return ranked([l for l, _ in best], [p for _, p in best])

    # ----------------------------------------------------------------------------------------- explanation
    def explain_png(
        self,
        data: bytes,
        filename: str,
        *,
        target: str | int | None = None,
        method: str = "gradcam",
        stopping: Callable[[], bool] | None = None,
    ) -> tuple[bytes, dict[str, Any]]:
        """The photo with its Grad-CAM heat map blended in, as PNG bytes, and what was explained.

        The photo is decoded whole (no crop, so the map covers all of it), at the size the overlay needs (JPEG
        draft, box reduction of large PNGs), and only when its turn comes: requests waiting for the one
        explanation at a time a model runs hold their upload's bytes, not a decoded photo. ``stopping`` (the
        server's shutdown) turns a turn that comes too late into :class:`~headstart.serve.batching.ShuttingDownError`.
        The server calls it on one thread per model (``ServerState.explain``), so its memory is one thread's.
        """
        from headstart.inside.heatmap import explain_view, whole_view

        self.load_explainer()
        with self._explain_lock:  # Grad-CAM hooks one module: one explanation at a time per model
            if stopping is not None and stopping():
                raise ShuttingDownError(f"the server is shutting down; {filename} was not explained")
            photo = decode_image(
                data, name=filename, max_pixels=self.max_pixels, draft_size=(OVERLAY_MAX_SIDE, OVERLAY_MAX_SIDE)
            )
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


class _Trunk:
    """The model file's trunk as the pipeline's source: built only when the engine needs the torch network."""

    def __init__(self, classifier: Classifier) -> None:
        self._classifier = classifier

    def load(self) -> Any:
        return self._classifier.backbone


__all__ = ["ServedModel", "model_name", "overlay_png"]
