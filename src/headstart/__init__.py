"""headstart: turn a folder of photos into an image classifier by reusing ImageNet-pretrained networks.

The estimator (scikit-learn's conventions: hyper-parameters in the constructor, how to run as keywords of ``fit``,
``fit`` returns ``self``)::

    import headstart as hs
    photos = hs.sample_data()                                        # the bundled sample: train/ and test/
    clf = hs.ImageClassifier(backbone="tf_efficientnet_lite0").fit(photos / "train")   # writes only the cache
    clf.predict([photos / "test" / "pug" / "pug_17.jpg"]), clf.score(photos / "test")
    clf.save("pets.safetensors"); clf = hs.load("pets.safetensors")
    ft = hs.ImageClassifier(method="finetune", finetune=hs.Finetune(epochs=5)).fit(photos / "train")

What the command line does, as functions: :func:`train` (fit + run folder + model file), :func:`evaluate`,
:func:`export_onnx`, :func:`export_tensorflow`, :func:`compare_backbones`, :func:`find_learning_rate`, :func:`sweep`,
:func:`scan`, :func:`download_dataset`, :func:`attack`, :func:`robustness`, :func:`dream`, :func:`featuremaps`,
:func:`explain`, :func:`run_demo`, :func:`model_info`, :func:`list_runs`, :func:`cache_summary`, :func:`clean_cache`. Each step is also its own piece: :func:`load_backbone`, :func:`load_dataset`,
:func:`extract_features`, :class:`LinearProbe`, :class:`Classifier`; the rest lives in the subpackages
(``headstart.features``, ``headstart.attacks``, ...). Importing headstart is cheap; numpy, torch and timm load on
first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from headstart._version import __version__

_MODULES = {
    # the estimator and its model file
    "headstart.models.estimator": ("ImageClassifier", "load", "SkippedFilesWarning"),
    "headstart.models.finetune.config": ("Finetune",),
    "headstart.models.classifier": ("Classifier",),
    "headstart.models.probe": ("LinearProbe",),
    # workflows: what the commands run
    "headstart.workflows.training": ("train", "write_run_folder"),
    "headstart.workflows.experiments": ("find_learning_rate", "sweep"),
    "headstart.workflows.evaluation": ("evaluate",),
    "headstart.workflows.export": ("export_onnx",),
    "headstart.workflows.tf_export": ("export_tensorflow",),
    "headstart.workflows.compare": ("compare_backbones",),
    "headstart.workflows.demo": ("run_demo", "sample_data"),
    "headstart.workflows.info": ("model_info",),
    "headstart.workflows.runs": ("list_runs",),
    "headstart.features.housekeeping": ("cache_summary", "clean_cache"),
    # data and features
    "headstart.data": ("load_image", "scan", "load_dataset", "Dataset", "download_dataset"),
    "headstart.features": ("load_backbone", "list_backbones", "FeatureCache", "extract_features"),
    # looking inside and fooling
    "headstart.inside": ("dream", "explain", "featuremaps", "feature_maps", "list_layers"),
    "headstart.attacks": ("attack", "transfer", "robustness", "save_attack", "save_robustness"),
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
#: Names the top level exported before it was made lean: still found, with a FutureWarning saying where they live
#: (CLI parsers and building blocks belong to their subpackages).
_MOVED = {
    "FinetuneConfig": ("headstart.models.finetune.config", "Finetune"),
    "parse_settings": ("headstart.cli.training", "parse_settings"),
    "parse_eps": ("headstart.attacks", "parse_eps"),
    "load_target": ("headstart.models.target", "load_target"),
    "quarantine": ("headstart.data", "quarantine"),
    "train_val_split": ("headstart.data", "train_val_split"),
    "resolve_backbone": ("headstart.features", "resolve_backbone"),
    "Backbone": ("headstart.features", "Backbone"),
    "BackboneSpec": ("headstart.features", "BackboneSpec"),
    "DEFAULT_BACKBONE": ("headstart.features", "DEFAULT_BACKBONE"),
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    """Import the public API on first use, so ``import headstart`` stays fast."""
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in _MOVED:
        import warnings

        module, attribute = _MOVED[name]
        warnings.warn(
            f"headstart.{name} is no longer part of the top-level API and will be removed from it in headstart 0.3: "
            f"use `from {module} import {attribute}`.",
            FutureWarning,
            stacklevel=2,
        )
        return getattr(import_module(module), attribute)
    raise AttributeError(f"module 'headstart' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
