"""headstart: turn a folder of photos into an image classifier by reusing ImageNet-pretrained networks.

The estimator (scikit-learn's conventions: hyper-parameters in the constructor, ``fit`` returns ``self``)::

    import headstart as hs
    clf = hs.ImageClassifier(backbone="tf_efficientnet_lite0").fit("photos/")   # writes only the feature cache
    clf.predict(["cat.jpg"]), clf.score("test_photos/")
    clf.save("pets.safetensors"); clf = hs.load("pets.safetensors")
    ft = hs.ImageClassifier(method=hs.Finetune(epochs=5, lr=1e-4)).fit("photos/")

What the command line does, as functions: :func:`train` (fit + run folder + model file), :func:`evaluate`,
:func:`export_onnx`, :func:`export_tensorflow`, :func:`compare_backbones`, :func:`find_learning_rate`, :func:`sweep`, :func:`scan`,
:func:`download_dataset`, :func:`attack`, :func:`robustness`, :func:`dream`, :func:`featuremaps`,
:func:`explain`, :func:`run_demo`. Each step is also its own piece: :func:`load_backbone`, :func:`load_dataset`,
:func:`extract_features`, :class:`LinearProbe`, :class:`Classifier`. Importing headstart is cheap; numpy, torch
and timm load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from headstart._version import __version__

_MODULES = {
    # the estimator and its model file
    "headstart.models.estimator": ("ImageClassifier", "load", "SkippedFilesWarning"),
    "headstart.models.finetune_config": ("Finetune", "FinetuneConfig"),
    "headstart.models.classifier": ("Classifier",),
    "headstart.models.probe": ("LinearProbe",),
    "headstart.models.target": ("load_target",),
    # workflows: what the commands run
    "headstart.workflows.training": ("train", "write_run_folder", "find_learning_rate", "sweep", "parse_settings"),
    "headstart.workflows.evaluation": ("evaluate",),
    "headstart.workflows.export": ("export_onnx",),
    "headstart.workflows.tf_export": ("export_tensorflow",),
    "headstart.workflows.compare": ("compare_backbones",),
    "headstart.workflows.demo": ("run_demo", "sample_data"),
    # data and features
    "headstart.data": (
        "load_image",
        "scan",
        "quarantine",
        "load_dataset",
        "train_val_split",
        "Dataset",
        "download_dataset",
    ),
    "headstart.features": (
        "load_backbone",
        "resolve_backbone",
        "list_backbones",
        "Backbone",
        "BackboneSpec",
        "DEFAULT_BACKBONE",
        "FeatureCache",
        "extract_features",
    ),
    # looking inside and fooling
    "headstart.inside": ("dream", "explain", "featuremaps", "feature_maps", "list_layers"),
    "headstart.attacks": ("attack", "transfer", "robustness", "save_attack", "save_robustness", "parse_eps"),
    # errors
    "headstart.errors": (
        "HeadstartError",
        "BackboneUnavailableError",
        "DataError",
        "UnusableImageError",
        "ModelFileError",
    ),
}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names}

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
