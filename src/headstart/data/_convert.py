"""Any decoded Pillow mode → 8-bit RGB, band by band, so a large image needs little more than its own memory.

Transparency goes over white; 16-bit, 32-bit and float greyscale is scaled by its real range instead of clipped;
CMYK, palettes and the rest go through Pillow's own conversions. Working in bands of rows keeps the float copies
and the alpha composite small: converting an 89 Mpx RGBA image holds the image and its RGB result, not four
full-size copies.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from PIL import Image

ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
HIGH_DEPTH_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
_WHITE = (255, 255, 255)
_BAND_PIXELS = 1 << 21  # about 2 Mpx a band: 8 MB as RGBA, 8 MB as float32


def _bands(img: Image.Image) -> Iterator[tuple[int, int, int, int]]:
    width, height = img.size
    rows = max(1, _BAND_PIXELS // max(1, width))
    for top in range(0, height, rows):
        yield (0, top, width, min(height, top + rows))


def detached(img: Image.Image) -> Image.Image:
    """The loaded pixels as a plain image that no longer refers to the file (no copy where Pillow allows it)."""
    try:
        return img._new(img.im)
    except AttributeError:  # a Pillow without _new: a copy
        return img.copy()


def _band_values(img: Image.Image, box: tuple[int, int, int, int]) -> np.ndarray:
    return np.nan_to_num(np.asarray(img.crop(box)).astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)


def to_8bit(img: Image.Image) -> Image.Image:
    """Scale a 16-bit, 32-bit or float greyscale image to 0-255 by its real range instead of clipping it."""
    width, height = img.size
    out = np.empty((height, width), dtype=np.uint8)
    if img.mode.startswith("I;16"):
        offset, scale = 0.0, 1.0 / 257.0
    else:
        lo, hi = np.inf, -np.inf
        for box in _bands(img):
            values = _band_values(img, box)
            if values.size:
                lo, hi = min(lo, float(values.min())), max(hi, float(values.max()))
        if not np.isfinite(lo):
            lo = hi = 0.0
        if img.mode == "F" and lo >= 0.0 and hi <= 1.0:
            offset, scale = 0.0, 255.0  # float images are usually 0..1
        elif lo >= 0.0 and hi <= 255.0:
            offset, scale = 0.0, 1.0  # already 8-bit values stored wide
        elif lo >= 0.0 and hi <= 65535.0:
            offset, scale = 0.0, 1.0 / 257.0  # 16-bit data stored in a 32-bit mode (e.g. some TIFFs)
        elif hi > lo:
            offset, scale = lo, 255.0 / (hi - lo)
        else:
            offset, scale = 0.0, 0.0
    for box in _bands(img):
        values = _band_values(img, box)
        values -= offset
        values *= scale
        out[box[1] : box[3]] = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(out)  # 2-D uint8 -> mode "L"


def has_alpha(img: Image.Image) -> bool:
    if img.mode in ALPHA_MODES or "transparency" in img.info:
        return True
    return img.mode == "P" and img.palette is not None and img.palette.mode == "RGBA"


def over_white(img: Image.Image) -> Image.Image:
    """Composite an image with transparency over white, as RGB."""
    out = Image.new("RGB", img.size, _WHITE)
    for box in _bands(img):
        part = img.crop(box).convert("RGBA")
        out.paste(part.convert("RGB"), box[:2], part)
    return out


REDUCIBLE_MODES = frozenset({"L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "I", "F"})  # whose values may be averaged


def reduced(img: Image.Image, factor: int) -> Image.Image:
    """``img.reduce(factor)`` band by band (bands start on multiples of the factor: the same boxes, the same result),
    so an RGBA image is not copied whole into premultiplied form first. Values that cannot be averaged as they are
    (palette indices, 1-bit, a transparent colour) are turned into RGB band by band first."""
    width, height = img.size
    as_rgb = img.mode not in REDUCIBLE_MODES or "transparency" in img.info
    out = Image.new("RGB" if as_rgb else img.mode, (-(-width // factor), -(-height // factor)))
    rows = max(factor, _BAND_PIXELS // max(1, width) // factor * factor)
    for top in range(0, height, rows):
        part = img.crop((0, top, width, min(height, top + rows)))
        out.paste((to_rgb(part) if as_rgb else part).reduce(factor), (0, top // factor))
    return out


def to_rgb(img: Image.Image) -> Image.Image:
    """Turn any decoded mode into RGB: transparency over white, high bit depths scaled, CMYK and palettes converted."""
    if img.mode in HIGH_DEPTH_MODES:
        return to_8bit(img).convert("RGB")
    if has_alpha(img):
        return over_white(img)
    if img.mode == "RGB":
        return detached(img)
    return img.convert("RGB")
