"""headstart: turn a folder of photos into an image classifier by reusing ImageNet-pretrained networks.

The one-call path::

    import headstart
    result = headstart.train("photos/", out="pets.safetensors")       # features cached, probe trained, run folder
    headstart.evaluate("pets.safetensors", "test_photos/").accuracy
    headstart.Classifier.load("pets.safetensors").predict(["cat.jpg"]).to_list()

Each step is also its own piece: :func:`load_backbone`, :func:`load_dataset`, :func:`extract_features`,
:class:`LinearProbe`, :class:`Classifier`. Importing headstart is cheap; torch and timm load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from headstart._version import __version__

_EXPORTS = {
    "load_backbone": "headstart.features.backbones",
    "resolve_backbone": "headstart.features.backbones",
    "list_backbones": "headstart.features.backbones",
    "Backbone": "headstart.features.backbones",
    "BackboneSpec": "headstart.features.backbones",
    "DEFAULT_BACKBONE": "headstart.features.backbones",
    "load_image": "headstart.data.images",
    "scan": "headstart.data.images",
    "quarantine": "headstart.data.images",
    "load_dataset": "headstart.data.datasets",
    "train_val_split": "headstart.data.datasets",
    "Dataset": "headstart.data.datasets",
    "download_dataset": "headstart.data.download",
    "FeatureCache": "headstart.features.extract",
    "extract_features": "headstart.features.extract",
    "LinearProbe": "headstart.models.probe",
    "Classifier": "headstart.models.classifier",
    "train": "headstart.workflows.training",
    "evaluate": "headstart.workflows.evaluation",
    "HeadstartError": "headstart.errors",
    "BackboneUnavailableError": "headstart.errors",
    "DataError": "headstart.errors",
    "UnusableImageError": "headstart.errors",
    "ModelFileError": "headstart.errors",
    "attack": "headstart.attacks",
    "transfer": "headstart.attacks",
    "robustness": "headstart.attacks",
    "save_attack": "headstart.attacks",
    "save_robustness": "headstart.attacks",
    "parse_eps": "headstart.attacks",
    "dream": "headstart.inside",
    "explain": "headstart.inside",
    "featuremaps": "headstart.inside",
    "load_target": "headstart.models.target",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    """Import the public API on first use, so ``import headstart`` stays fast."""
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'headstart' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
