"""timm's eval transform in PIL + numpy: a photo becomes the backbone's uint8 crop without importing torch.

The torch path (:meth:`~headstart.features.backbones.Backbone.transform`) resizes the shorter side to
``floor(size / crop_pct)`` with the spec's interpolation, centre-crops, divides by 255 and normalises. The first
two steps are Pillow calls in both paths, so the crop here is the same pixels; the last two (``/255``, mean/std)
run inside the OpenVINO graph (:mod:`headstart.features.openvino`), which takes the crop as uint8 ``HWC``: a
quarter of the bytes to move, and no float pass in Python.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from headstart.data.images import DEFAULT_MAX_PIXELS, load_image
from headstart.features.backbones import BackboneSpec

__all__ = ["crop_size", "supports", "uint8_crop", "uint8_preprocessor"]

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
    """An RGB PIL image -> the backbone's crop, ``(size, size, 3)`` uint8, exactly torchvision's
    ``Resize(scale) + CenterCrop(size)`` (the same Pillow resize, the same rounding of the crop box).

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
    if new != (width, height):
        image = image.resize(new, _FILTERS[spec.data_config.get("interpolation") or "bilinear"])
    width, height = image.size
    if width < size or height < size:  # torchvision pads with black before cropping (an image narrower than 1/scale)
        from PIL import Image

        padded = Image.new("RGB", (max(width, size), max(height, size)))
        padded.paste(image, ((max(width, size) - width) // 2, (max(height, size) - height) // 2))
        image, (width, height) = padded, padded.size
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


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
