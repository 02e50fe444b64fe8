"""A network to look inside or to fool: a trained headstart model, or a backbone with its ImageNet head.

Visualisation and attacks work on images in 0–1 pixel space; :class:`TargetNetwork` puts the weights' own
normalisation inside the network, so callers never handle mean/std, and names classes by index or by name.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headstart.errors import HeadstartError
from headstart.models.modelfile import looks_like_model_file

if TYPE_CHECKING:
    import torch

    from headstart.features.backbones import BackboneSpec


def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet-1k class descriptions in index order (``284`` → ``'Siamese cat, Siamese'``)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(1000)]


def _norm(name: str) -> str:
    return re.sub(r"[\s\-_]+", " ", name.strip().lower())


@dataclass
class TargetNetwork:
    """A classifier over 0–1 RGB images of the weights' input size.

    Attributes:
        module: ``torch.nn.Module`` mapping ``(batch, 3, H, W)`` images in [0, 1] to logits.
        class_names: one name per logit.
        spec: the backbone's spec (preprocessing in ``spec.data_config``).
        name: what it was loaded from, for reports.
    """

    module: torch.nn.Module
    class_names: list[str]
    spec: BackboneSpec
    name: str

    @property
    def input_size(self) -> tuple[int, int]:
        size = self.spec.data_config["input_size"]
        return int(size[-2]), int(size[-1])

    def class_index(self, target: str | int) -> int:
        """Index of a class given as an index (``284``, ``"284"``) or a name (``"Siamese cat"``, ``"beagle"``).

        Names match whole descriptions or any of their comma-separated synonyms, ignoring case, spaces, hyphens
        and underscores.
        """
        n = len(self.class_names)
        text = str(target).strip()
        if re.fullmatch(r"-?\d+", text):
            index = int(text)
            if 0 <= index < n:
                return index
            raise HeadstartError(f"Class index {index} is out of range: {self.name} has classes 0–{n - 1}.")
        wanted = _norm(text)
        for i, full in enumerate(self.class_names):
            if _norm(full) == wanted or wanted in (_norm(part) for part in full.split(",")):
                return i
        close = [c for c in self.class_names if wanted and wanted.split()[0] in _norm(c)][:5]
        hint = f" Close: {'; '.join(close)}." if close else ""
        raise HeadstartError(
            f"Unknown class {text!r} for {self.name}: give a class index (0–{n - 1}) or one of its class names.{hint}"
        )

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Softmax over the classes for 0–1 images, without gradients."""
        import torch

        with torch.no_grad():
            return self.module(images).softmax(-1)


class _Normalised:
    """Wraps a logits network so it takes 0–1 images (the weights' mean/std applied inside)."""

    @staticmethod
    def build(inner: Any, spec: BackboneSpec) -> torch.nn.Module:
        import torch

        mean = torch.tensor(spec.data_config["mean"]).view(1, 3, 1, 1)
        std = torch.tensor(spec.data_config["std"]).view(1, 3, 1, 1)

        class Normalised(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = inner
                self.register_buffer("mean", mean)
                self.register_buffer("std", std)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.inner((x - self.mean) / self.std)

        return Normalised().eval()


def load_target(model: str | os.PathLike[str], *, weights: str | os.PathLike[str] | None = None) -> TargetNetwork:
    """A headstart model file (``*.safetensors``) or a backbone name with its pretrained (ImageNet) head.

    Example:
        >>> net = load_target("tf_efficientnet_lite0")
        >>> net.class_index("Siamese cat")
        284
    """
    path = Path(model)
    if looks_like_model_file(path):
        from headstart.models.classifier import Classifier

        classifier = Classifier.load(path)
        module = _Normalised.build(classifier.torch_module(), classifier.spec)
        return TargetNetwork(module, list(classifier.classes), classifier.spec, str(path))
    from headstart.features.backbones import load_backbone

    backbone = load_backbone(str(model), weights)
    if backbone.spec.num_classes != 1000:
        raise HeadstartError(
            f"{model} has no ImageNet head ({backbone.spec.num_classes} outputs): pass a trained headstart model "
            "file instead, or a backbone with ImageNet-1k weights."
        )
    for p in backbone.model.parameters():
        p.requires_grad_(False)
    module = _Normalised.build(backbone.model, backbone.spec)
    return TargetNetwork(module, imagenet_class_names(), backbone.spec, str(model))


__all__ = ["TargetNetwork", "imagenet_class_names", "load_target"]
