"""Helpers shared by the visualisation commands: loading a timm trunk from a name or a model file, colour maps."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from headstart.errors import HeadstartError


def load_trunk(model: Any):
    """A :class:`~headstart.features.backbones.Backbone` from a backbone name, a headstart model file, or a Backbone/Classifier."""
    from headstart.features.backbones import Backbone, load_backbone
    from headstart.models.classifier import Classifier

    if isinstance(model, Backbone):
        return model
    if isinstance(model, Classifier):
        return model.backbone
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if path.suffix == ".safetensors" or path.is_file():
            return Classifier.load(path).backbone
        return load_backbone(str(model))
    raise TypeError(f"Expected a backbone name, a model file, a Backbone or a Classifier; got {type(model).__name__}.")


def feature_layers(model: Any) -> list[dict[str, Any]]:
    """timm's feature stages of a model: ``[{"module": "blocks.2", "num_chs": 40, "reduction": 8}, ...]``."""
    info = getattr(model, "feature_info", None)
    if not info:
        return []
    return [{"module": f["module"], "num_chs": int(f["num_chs"]), "reduction": int(f["reduction"])} for f in info]


def find_module(model: Any, layer: str):
    """The submodule named ``layer`` (as in ``named_modules()``), or a clear error listing the stages."""
    modules = dict(model.named_modules())
    if layer in modules and layer:
        return modules[layer]
    stages = ", ".join(f["module"] for f in feature_layers(model)) or "see --list-layers"
    raise HeadstartError(f"The network has no layer {layer!r}. Feature stages: {stages} (any name from --list-layers works).")


__all__ = ["load_trunk", "feature_layers", "find_module"]
