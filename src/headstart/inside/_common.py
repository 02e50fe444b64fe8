"""Helpers shared by dream, featuremaps and explain: the network from a name or a model file, layers, outputs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from headstart._console import say
from headstart._validation import fail
from headstart.errors import HeadstartError
from headstart.models.modelfile import looks_like_model_file


def load_trunk(model: Any):
    """A :class:`~headstart.features.backbones.Backbone` from a backbone name, a headstart model file, or a Backbone/Classifier."""
    from headstart.features.backbones import Backbone, load_backbone
    from headstart.models.classifier import Classifier

    if isinstance(model, Backbone):
        return model
    if isinstance(model, Classifier):
        return model.backbone
    if isinstance(model, (str, os.PathLike)):
        if looks_like_model_file(model):
            return Classifier.load(model).backbone
        return load_backbone(str(model))
    raise TypeError(f"Expected a backbone name, a model file, a Backbone or a Classifier; got {type(model).__name__}.")


def load_target_network(model: Any):
    """A :class:`~headstart.models.target.TargetNetwork` as given, or loaded from a backbone name or a model file."""
    from headstart.models.target import TargetNetwork, load_target

    return model if isinstance(model, TargetNetwork) else load_target(model)


def check_output_file(out: str | os.PathLike[str], name: str, caller: str, *, suffix: str | None = None) -> Path:
    """The file ``caller`` will write, refused before any work when it is a folder or has the wrong suffix."""
    path = Path(out)
    if suffix is not None and path.suffix.lower() != suffix:
        fail(name, caller, f"a path ending in {suffix} ({caller} writes a {suffix[1:].upper()})", str(path))
    if path.is_dir():
        fail(name, caller, f"a file to write, not a folder (e.g. {path / ('out' + (suffix or '.png'))})", str(path))
    return path


def say_if_replacing(path: Path) -> None:
    """Re-running a command replaces its earlier output, as it should; say so on stderr instead of doing it silently."""
    if path.is_file():
        say(f"replacing {path}")


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
    raise HeadstartError(
        f"The network has no layer {layer!r}. Feature stages: {stages} (any name from --list-layers works)."
    )


__all__ = [
    "check_output_file",
    "feature_layers",
    "find_module",
    "load_target_network",
    "load_trunk",
    "say_if_replacing",
]
