"""timm's eval transform in PIL + numpy: a photo becomes the backbone's uint8 crop without importing torch.

timm's transform (:meth:`~headstart.features.backbones.Backbone.transform`) resizes the shorter side to
``floor(size / crop_pct)`` with the spec's interpolation, centre-crops, divides by 255 and normalises. Here the
first two steps are one Pillow resize of just the region the crop keeps (:func:`uint8_crop`); the last two
(``/255``, mean/std) run inside the OpenVINO graph (:mod:`headstart.features.openvino`), which takes the crop as
uint8 ``HWC`` (a quarter of the bytes to move, and no float pass in Python), or in :func:`normalised` for the
torch engines. Every engine reads the same crops, keyed in the cache by :data:`PREPROCESSING`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from headstart.data.images import DEFAULT_MAX_PIXELS, load_image
from headstart.features.backbones import BackboneSpec

__all__ = [
    "PREPROCESSING",
    "SHOWN_SIDE",
    "crop_size",
    "decode_size_for",
    "normalised",
    "supports",
    "uint8_crop",
    "uint8_preprocessor",
]

#: The shortest side a photo keeps when it is shown beside what a network made of it (heat maps, feature maps,
#: attacks): enough for a figure, and a phone photo is then decoded in JPEG draft mode, not at full size.
SHOWN_SIDE = 640

#: The identity of this preprocessing in the feature cache's key (features computed from these crops are keyed by
#: it, apart from those of timm's own transform): ``cropbox1`` = the resize computed at the crop box only.
PREPROCESSING = "cropbox1"

#: timm's interpolation names -> Pillow's resampling filters (timm's ``str_to_interp_mode``).
_FILTERS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


def supports(spec: BackboneSpec) -> str | None:
    """None when this module reproduces the spec's eval transform exactly, else why not (the torch path then
    serves it): square input, ``center`` crop mode, an interpolation Pillow has."""
    config = spec.data_config
    height, width = config["input_size"][-2:]
    if height != width:
        return f"non-square input size {config['input_size']}"
    if (config.get("crop_mode") or "center") != "center":
        return f"crop mode {config.get('crop_mode')!r}"
    if (config.get("interpolation") or "bilinear") not in _FILTERS:
        return f"interpolation {config.get('interpolation')!r}"
    return None


def crop_size(spec: BackboneSpec) -> tuple[int, int]:
    """``(scale, crop)``: the shorter side is resized to ``scale``, then the centre ``crop x crop`` is kept."""
    size = int(spec.data_config["input_size"][-1])
    crop_pct = float(spec.data_config.get("crop_pct") or 0.875)
    return math.floor(size / crop_pct), size


def uint8_crop(image: Any, spec: BackboneSpec) -> np.ndarray:
    """An RGB PIL image -> the backbone's crop, ``(size, size, 3)`` uint8: torchvision's ``Resize(scale) +
    CenterCrop(size)`` computed at the crop box (:data:`PREPROCESSING`).

    The crop torchvision keeps is a box of the resized image; mapped back onto the photo, it is the region Pillow
    resizes here, straight to ``size x size`` with the same filter (``Image.resize(..., box=...)``, which also reads
    the filter's support beyond the box's edges, as the full resize does). The pixels the crop throws away are
    never computed: 40 % less resize time on full-size photos, and the same pixels but for rounding (mean absolute
    difference 0.016 of 255 on 100 full-size photos; features within cosine 0.999 of timm's, tests/features).

    Example:
        >>> uint8_crop(Image.new("RGB", (500, 375)), resolve_backbone("tf_efficientnet_lite0")).shape
        (224, 224, 3)
    """
    scale, size = crop_size(spec)
    width, height = image.size
    if width <= height:  # torchvision: the shorter side to `scale`, the longer int(scale * long / short)
        new = (scale, int(scale * height / width))
    else:
        new = (int(scale * width / height), scale)
    if new[0] < size or new[1] < size:  # torchvision pads with black (an image narrower than 1/scale): no box
        return _padded_crop(image, spec, new, size)
    top, left = int(round((new[1] - size) / 2.0)), int(round((new[0] - size) / 2.0))
    if new == (width, height):
        return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)
    sx, sy = width / new[0], height / new[1]
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    resized = image.resize((size, size), _FILTERS[spec.data_config.get("interpolation") or "bilinear"], box=box)
    return np.asarray(resized, dtype=np.uint8)


def _padded_crop(image: Any, spec: BackboneSpec, new: tuple[int, int], size: int) -> np.ndarray:
    from PIL import Image

    if new != image.size:
        image = image.resize(new, _FILTERS[spec.data_config.get("interpolation") or "bilinear"])
    width, height = image.size
    padded = Image.new("RGB", (max(width, size), max(height, size)))
    padded.paste(image, ((max(width, size) - width) // 2, (max(height, size) - height) // 2))
    width, height = padded.size
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return np.asarray(padded.crop((left, top, left + size, top + size)), dtype=np.uint8)


def decode_size_for(data_config: dict[str, Any], *, min_crop_area: float = 1.0, shown: bool = False) -> tuple[int, int]:
    """``(width, height)`` a photo must keep for a network with this preprocessing to read it as from the full
    photo: what :func:`~headstart.data.images.load_image`'s ``draft_size`` wants (a large JPEG is decoded at 1/2,
    1/4 or 1/8 scale, still at least this large), so every command that reads pixels decodes a phone photo at the
    cost extraction does.

    Args:
        data_config: the backbone's preprocessing (``spec.data_config``): the input size over ``crop_pct``.
        min_crop_area: the smallest fraction of the photo's area a training crop takes (random-resized crops):
            the photo keeps enough pixels that such a crop still fills the input.
        shown: the photo is also shown (:data:`SHOWN_SIDE` pixels at least on each side).
    """
    height, width = data_config["input_size"][-2:]
    scale = 1 / (float(data_config.get("crop_pct") or 1.0) * math.sqrt(min(max(min_crop_area, 1e-3), 1.0)))
    width, height = int(width * scale), int(height * scale)  # (as extraction always has: its cache key names it)
    return (max(width, SHOWN_SIDE), max(height, SHOWN_SIDE)) if shown else (width, height)


def normalised(crops: np.ndarray, spec: BackboneSpec) -> Any:
    """uint8 crops ``(n, size, size, 3)`` -> the float tensor ``(n, 3, size, size)`` timm's transform gives
    (``/255``, then the spec's mean and std): the torch engines' input from the same crops OpenVINO reads."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor([float(m) for m in spec.data_config["mean"]]).view(1, 3, 1, 1)
    std = torch.tensor([float(s) for s in spec.data_config["std"]]).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)


def uint8_preprocessor(
    spec: BackboneSpec, *, draft: tuple[int, int], max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> Callable[[str | Path], np.ndarray]:
    """Photo file -> its uint8 crop, decoded exactly as extraction decodes it (JPEG draft mode at ``draft``).

    Raises :class:`~headstart.errors.UnusableImageError` for a file that cannot be decoded.

    Example:
        >>> load = uint8_preprocessor(spec, draft=(256, 256))
        >>> load("cat.jpg").dtype
        dtype('uint8')
    """
    return lambda path: uint8_crop(load_image(path, max_pixels=max_pixels, draft_size=draft), spec)
