"""A trained headstart classifier: a backbone, a linear head over its features, and the class names.

Linear probes and fine-tuned networks are the same object: the probe keeps the pretrained trunk (so its features
come from the shared cache), fine-tuning stores changed trunk weights. Both live in one self-contained
safetensors file (:mod:`headstart.models.modelfile`) that loads without a network and never executes code.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from headstart.features.backbones import Backbone, BackboneSpec, cached_trunk_weights
from headstart._math import softmax
from headstart.errors import ModelFileError
from headstart.data.images import DEFAULT_MAX_PIXELS, UnusableFile, list_image_files
from headstart.models.modelfile import read_model_file, save_model_file

if TYPE_CHECKING:
    from headstart.features.extract import FeatureCache, Features


@dataclass(frozen=True)
class Prediction:
    """Top-k labels for one image."""

    path: Path
    labels: list[str]
    probabilities: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "predictions": [{"label": l, "probability": round(float(p), 6)} for l, p in zip(self.labels, self.probabilities)],
        }


@dataclass
class Predictions:
    """What :meth:`Classifier.predict` returns: one :class:`Prediction` per usable image, and the skipped files."""

    predictions: list[Prediction]
    unusable: list[UnusableFile] = field(default_factory=list)

    def to_list(self) -> list[dict[str, Any]]:
        return [p.to_dict() for p in self.predictions]


class Classifier:
    """Backbone + linear head (``softmax(features @ head_weight.T + head_bias)``) + class names.

    Args:
        spec: the backbone whose features the head reads (architecture, weights identity, preprocessing).
        classes: class names, in the order of the head's rows.
        head_weight: ``(n_classes, num_features)``.
        head_bias: ``(n_classes,)``.
        trunk: the backbone's weights (no pretrained head) as numpy arrays, so the file is self-contained.
        metadata: anything else worth keeping (method, metrics, training data).
    """

    def __init__(
        self,
        spec: BackboneSpec,
        classes: Sequence[str],
        head_weight: np.ndarray,
        head_bias: np.ndarray,
        trunk: Mapping[str, np.ndarray],
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self.spec = spec
        self.classes = list(classes)
        self.head_weight = np.asarray(head_weight, dtype=np.float32)
        self.head_bias = np.asarray(head_bias, dtype=np.float32)
        self.trunk = dict(trunk)
        self.metadata = dict(metadata or {})
        self._backbone: Backbone | None = None
        if self.head_weight.shape != (len(self.classes), spec.num_features) or self.head_bias.shape != (len(self.classes),):
            raise ValueError(
                f"The head must be ({len(self.classes)}, {spec.num_features}) + ({len(self.classes)},) for "
                f"{len(self.classes)} classes over {spec.num_features}-d features; got {self.head_weight.shape} "
                f"and {self.head_bias.shape}."
            )

    # ------------------------------------------------------------------------------------------------ file I/O
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the self-contained model file (atomic)."""
        tensors = {f"backbone.{k}": v for k, v in self.trunk.items()}
        tensors["head.weight"] = self.head_weight
        tensors["head.bias"] = self.head_bias
        meta = {**self.metadata, "backbone": self.spec.to_dict(), "classes": self.classes}
        return save_model_file(path, tensors, meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Classifier:
        """Read a model file written by :meth:`save` (no network, no code execution)."""
        tensors, meta = read_model_file(path)
        try:
            spec = BackboneSpec.from_dict(meta["backbone"])
            classes = meta["classes"]
            weight, bias = tensors["head.weight"], tensors["head.bias"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{path} is a headstart file without a classifier ({exc} missing).") from exc
        trunk = {k[len("backbone."):]: v for k, v in tensors.items() if k.startswith("backbone.")}
        rest = {k: v for k, v in meta.items() if k not in ("backbone", "classes")}
        model = cls(spec, classes, weight, bias, trunk, rest)
        model.metadata["path"] = str(path)
        return model

    # -------------------------------------------------------------------------------------------- the network
    @property
    def backbone(self) -> Backbone:
        """The trunk as a timm model (built on first use from the weights in the file)."""
        if self._backbone is None:
            import timm
            import torch

            model = timm.create_model(self.spec.name, pretrained=False, num_classes=0)
            state = {k: torch.from_numpy(np.array(v)) for k, v in self.trunk.items()}
            try:
                model.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise ModelFileError(
                    f"The backbone weights in this model do not fit {self.spec.name}: {str(exc)[:300]}"
                ) from exc
            self._backbone = Backbone(model.eval(), self.spec)
        return self._backbone

    def torch_module(self):
        """The whole classifier as one ``torch.nn.Module`` mapping normalised images to logits (``.features(x)``
        gives the embedding, ``.head`` the linear layer)."""
        import torch

        backbone = self.backbone
        head = torch.nn.Linear(self.spec.num_features, len(self.classes))
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy(self.head_weight))
            head.bias.copy_(torch.from_numpy(self.head_bias))

        class _Net(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.trunk, self.head = backbone.model, head

            def features(self, x: torch.Tensor) -> torch.Tensor:
                return backbone.features(x)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.head(backbone.features(x))

        return _Net().eval()

    # ----------------------------------------------------------------------------------------------- inference
    def logits(self, features: np.ndarray) -> np.ndarray:
        return features @ self.head_weight.T + self.head_bias

    def predict_proba_features(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities for precomputed features ``(n, num_features)`` → ``(n, n_classes)``."""
        return softmax(self.logits(np.asarray(features, dtype=np.float32)), axis=1)

    def features(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        cache: FeatureCache | None = None,
        precision: str = "auto",
        batch_size: int = 32,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        progress: bool = False,
        engine: str = "torch",
    ) -> Features:
        """Features of ``paths`` from this model's backbone (cached under its fingerprint)."""
        from headstart.features.extract import extract_features

        source: Any = self._backbone_source()
        return extract_features(
            paths, source, cache=cache, precision=precision, batch_size=batch_size, max_pixels=max_pixels,
            progress=progress, engine=engine,
        )

    def _backbone_source(self) -> Any:
        """Something :func:`extract_features` accepts: a lazy backbone that only builds when features are missing."""
        return _LazyBackbone(self)

    def predict(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        top_k: int = 5,
        cache: FeatureCache | None = None,
        precision: str = "auto",
        progress: bool = False,
        engine: str = "torch",
    ) -> Predictions:
        """Top-k labels with probabilities for images or folders of images.

        Example:
            >>> model = Classifier.load("pets.safetensors")
            >>> model.predict(["my_cat.jpg"], top_k=3).to_list()[0]["predictions"][0]
            {'label': 'Bengal', 'probability': 0.91}
        """
        if top_k < 1:
            raise ValueError(f"The 'top_k' parameter of predict must be an int in [1, inf). Got {top_k!r} instead.")
        files = expand_paths(paths)
        feats = self.features(files, cache=cache, precision=precision, progress=progress, engine=engine)
        probs = self.predict_proba_features(feats.features)
        k = min(top_k, len(self.classes))
        out = []
        for row, index in zip(probs, feats.indices):
            order = np.argsort(-row, kind="stable")[:k]
            out.append(Prediction(files[int(index)], [self.classes[j] for j in order], [float(row[j]) for j in order]))
        return Predictions(out, feats.unusable)

    def __repr__(self) -> str:
        return f"Classifier({len(self.classes)} classes on {self.spec.name}, method={self.metadata.get('method', '?')!r})"


class _LazyBackbone:
    """Defers building the trunk until the feature cache misses."""

    def __init__(self, model: Classifier) -> None:
        self._model = model
        self.spec = model.spec

    def load(self) -> Backbone:
        return self._model.backbone


def expand_paths(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Images given directly, plus the images inside any folders given (sorted, recursive)."""
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files.extend(list_image_files(p)[0])
        else:
            files.append(p)
    return files


def trunk_fingerprint(trunk: Mapping[str, np.ndarray]) -> str:
    """Identity of trunk weights changed by fine-tuning: a hash of every array's name and bytes."""
    h = hashlib.sha256()
    for k in sorted(trunk):
        h.update(k.encode())
        h.update(np.ascontiguousarray(trunk[k]).tobytes())
    return "trunk-sha256:" + h.hexdigest()


__all__ = ["Classifier", "Prediction", "Predictions", "expand_paths", "cached_trunk_weights"]
