"""The backbone catalogue: which backbones ``headstart backbones`` shows, and whether each is usable right now.

Usable means its weights are on this machine: an installed offline package, or hub weights already downloaded.
Knowing that needs no model to be built (only timm's registry of pretrained configs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import headstart.features.backbones as backbones

__all__ = ["CATALOGUE", "BackboneStatus", "hub_weights_cached", "list_backbones"]

#: The backbones the lesson names, and a few modern ones, shown by ``headstart backbones``.
CATALOGUE: tuple[tuple[str, str], ...] = (
    (
        "tf_efficientnet_lite0",
        "EfficientNet-Lite0: small and fast, the default of extract and the tools (ImageNet top-1 75.1%)",
    ),
    ("tf_efficientnet_lite1", "EfficientNet-Lite1: train's first choice (--backbone auto) (top-1 76.7%)"),
    ("tf_efficientnet_lite2", "EfficientNet-Lite2 (top-1 77.6%)"),
    ("vgg16.tv_in1k", "VGG-16, the lesson's first network"),
    ("vgg19.tv_in1k", "VGG-19"),
    ("resnet18.a1_in1k", "ResNet-18"),
    ("resnet50.a1_in1k", "ResNet-50"),
    ("mobilenetv2_100.ra_in1k", "MobileNet-V2, the lesson's lightweight network"),
    ("mobilenetv3_large_100.ra_in1k", "MobileNet-V3 large"),
    ("efficientnet_b0.ra_in1k", "EfficientNet-B0"),
    ("convnext_tiny.fb_in1k", "ConvNeXt-Tiny"),
    ("vit_small_patch16_224.augreg_in21k_ft_in1k", "ViT-Small/16"),
)


@dataclass(frozen=True)
class BackboneStatus:
    """One row of ``headstart backbones``: can this backbone be used right now, and if not, why."""

    name: str
    description: str
    usable: bool
    source: str


def hub_weights_cached(name: str) -> bool:
    """Whether timm's hub weights for ``name`` are already in the local Hugging Face cache.

    Example:
        >>> hub_weights_cached("resnet18.a1_in1k")  # True once downloaded
        False
    """
    try:
        import timm
        from huggingface_hub import try_to_load_from_cache

        cfg = timm.models.get_pretrained_cfg(name)
        hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        if not hub_id:
            return False
        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(hub_id, filename)
            if isinstance(found, str):
                return True
    except Exception:
        return False
    return False


def list_backbones(include_all: bool = False, pattern: str | None = None) -> list[BackboneStatus]:
    """The catalogue (or every pretrained timm model) with whether each is usable now and from where.

    Example:
        >>> [row.name for row in list_backbones() if row.usable][:1]
        ['tf_efficientnet_lite0']
    """
    import timm

    if include_all or pattern:
        names = timm.list_pretrained(pattern or "*")
        described = [(n, "") for n in names]
    else:
        described = list(CATALOGUE)
    rows = []
    for name, description in described:
        arch = name.split(".", 1)[0]
        if backbones.offline_weight_file(arch) is not None:
            dist = backbones.OFFLINE_PACKAGES[arch][0]
            rows.append(BackboneStatus(name, description, True, f"offline ({dist})"))
        elif hub_weights_cached(name):
            rows.append(BackboneStatus(name, description, True, "hub weights already downloaded"))
        elif os.environ.get("HF_HUB_OFFLINE") == "1":
            rows.append(BackboneStatus(name, description, False, "hub download needed, but HF_HUB_OFFLINE=1"))
        else:
            rows.append(BackboneStatus(name, description, False, "hub: needs a network once, or --weights PATH"))
    return rows
