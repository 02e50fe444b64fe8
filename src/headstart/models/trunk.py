"""The trunk of a model file as a timm network: built on the meta device first, then loaded ``strict``.

Example:
    >>> tensors, document = read_model_file("pets.safetensors")
    >>> trunk = {k[9:]: v for k, v in tensors.items() if k.startswith("backbone.")}
    >>> trunk_network(BackboneSpec.from_dict(document["backbone"]), trunk).num_features
    1280
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from headstart.errors import ModelFileError

if TYPE_CHECKING:
    import torch

    from headstart.features import BackboneSpec

__all__ = ["trunk_network"]


def trunk_network(
    spec: BackboneSpec, trunk: Mapping[str, np.ndarray], path: str | os.PathLike[str] | None = None
) -> torch.nn.Module:
    """The timm trunk (no classifier) with a model file's weights, checked against the architecture, in eval mode.

    The architecture is first built on the meta device (no memory), so a small file that names a huge network is
    refused before the network's weights are allocated; then the real network loads the weights ``strict``.

    Raises:
        ModelFileError: the architecture is unknown to this timm, or the weights do not fit it (names ``path``).

    Example:
        >>> tensors, document = read_model_file("pets.safetensors")
        >>> trunk = {k[9:]: v for k, v in tensors.items() if k.startswith("backbone.")}
        >>> trunk_network(BackboneSpec.from_dict(document["backbone"]), trunk).num_features
        1280
    """
    if spec.members:  # an ensemble: each member's network from its part of the trunk, side by side
        from headstart.features.ensemble import ensemble_network
        from headstart.features.spec import member_trunks

        try:
            parts = member_trunks(trunk, len(spec.members))
        except ValueError as exc:
            raise ModelFileError(f"{path or 'This model'}: {exc} Re-train or re-download the model.") from None
        return ensemble_network([trunk_network(m, p, path) for m, p in zip(spec.members, parts)], spec)
    import timm
    import torch

    where = f"{path}: " if path else ""

    def refuse(problem: str) -> ModelFileError:
        return ModelFileError(
            f"{where}the backbone weights in this model do not fit {spec.name}: {problem}. "
            "Re-train or re-download the model."
        )

    try:
        with torch.device("meta"):
            skeleton = timm.create_model(spec.name, pretrained=False, num_classes=0)
    except Exception as exc:  # unknown name or tag, an architecture this timm cannot build
        raise refuse(f"this timm {timm.__version__} cannot build it ({type(exc).__name__}: {str(exc)[:200]})") from None
    wanted = sum(t.numel() for t in skeleton.state_dict().values())
    held = sum(int(np.prod(v.shape)) for v in trunk.values())
    if wanted > 2 * held + 1_000_000:  # (the exact check is load_state_dict's; this one keeps memory bounded)
        raise refuse(f"the file holds {held:,} trunk values, the architecture needs {wanted:,}")
    if int(skeleton.num_features) != spec.num_features:
        raise refuse(f"it gives {skeleton.num_features}-d features, the file says {spec.num_features}")
    del skeleton
    try:
        model = timm.create_model(spec.name, pretrained=False, num_classes=0)
        model.load_state_dict(
            {k: torch.from_numpy(v if v.flags.writeable else np.array(v)) for k, v in trunk.items()}, strict=True
        )
    except (RuntimeError, TypeError, ValueError) as exc:
        raise refuse(str(exc)[:300]) from None
    return model.eval()
