"""Random image transforms applied before every forward pass: functions from image to image.

Each factory returns a function mapping a ``(batch, 3, H, W)`` tensor to another one (the size may change);
:func:`compose` chains them. Optimising an image that must stay recognisable under small random shifts, zooms
and rotations keeps it from turning into high-frequency patterns the network happens to like (Lucid's
"transformation robustness"). Randomness comes from torch's global generator, so ``torch.manual_seed`` (or
``torch.random.fork_rng``) makes a run repeatable.

Example:
    >>> t = compose([pad(12), jitter(8), random_scale([0.9, 1.0, 1.1]), random_rotate(range(-10, 11))])
    >>> t(torch.rand(1, 3, 224, 224)).shape[1]
    3
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from headstart._validation import check_int, fail

if TYPE_CHECKING:
    import torch

Transform = Callable[["torch.Tensor"], "torch.Tensor"]


def _choice(values: Sequence[float]) -> float:
    import torch

    return values[int(torch.randint(len(values), (1,)))]


def _values(values: Iterable[float], name: str, caller: str) -> list[float]:
    out = [float(v) for v in values]
    if not out:
        fail(name, caller, "a non-empty list of numbers", out)
    return out


def jitter(d: int) -> Transform:
    """Crop ``d`` pixels off in total along each axis at a random offset (a random shift of up to ``d`` pixels)."""
    check_int(d, "d", "jitter", low=1)

    def inner(image: torch.Tensor) -> torch.Tensor:
        import torch

        h, w = image.shape[-2:]
        dy, dx = (int(v) for v in torch.randint(d, (2,)))
        return image[..., dy : dy + h - d, dx : dx + w - d]

    return inner


def pad(w: int, mode: str = "constant", value: float = 0.5) -> Transform:
    """Pad ``w`` pixels on every side (``mode`` as in ``torch.nn.functional.pad``; constant grey by default)."""
    check_int(w, "w", "pad", low=0)

    def inner(image: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        if mode == "constant":
            return F.pad(image, (w, w, w, w), mode="constant", value=value)
        return F.pad(image, (w, w, w, w), mode=mode)

    return inner


def random_scale(scales: Iterable[float]) -> Transform:
    """Resize by a factor drawn from ``scales`` (bilinear)."""
    choices = _values(scales, "scales", "random_scale")

    def inner(image: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        s = _choice(choices)
        if s == 1.0:
            return image
        h, w = image.shape[-2:]
        size = (max(1, round(h * s)), max(1, round(w * s)))
        return F.interpolate(image, size=size, mode="bilinear", align_corners=False)

    return inner


def random_rotate(angles: Iterable[float]) -> Transform:
    """Rotate about the centre by an angle in degrees drawn from ``angles`` (bilinear, corners filled by reflection)."""
    choices = _values(angles, "angles", "random_rotate")

    def inner(image: torch.Tensor) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        angle = _choice(choices)
        if angle == 0:
            return image
        theta = math.radians(angle)
        cos, sin = math.cos(theta), math.sin(theta)
        matrix = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=image.dtype, device=image.device)
        grid = F.affine_grid(matrix.expand(image.shape[0], 2, 3), list(image.shape), align_corners=False)
        return F.grid_sample(image, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    return inner


def center_crop(size: int | tuple[int, int]) -> Transform:
    """Keep the central ``size`` pixels (padding with grey first if the image is smaller): what an eval crop sees."""
    h_out, w_out = (size, size) if isinstance(size, int) else size

    def inner(image: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        h, w = image.shape[-2:]
        if h < h_out or w < w_out:
            py, px = max(0, h_out - h), max(0, w_out - w)
            image = F.pad(image, (px // 2, px - px // 2, py // 2, py - py // 2), value=0.5)
            h, w = image.shape[-2:]
        top, left = (h - h_out) // 2, (w - w_out) // 2
        return image[..., top : top + h_out, left : left + w_out]

    return inner


def compose(transforms: Iterable[Transform]) -> Transform:
    """Apply ``transforms`` in order."""
    chain = list(transforms)

    def inner(image: torch.Tensor) -> torch.Tensor:
        for t in chain:
            image = t(image)
        return image

    return inner


def standard_transforms() -> list[Transform]:
    """Lucid's default list: grey padding, a coarse jitter, a ±10% zoom, a ±10° rotation, a fine jitter."""
    return [
        pad(12),
        jitter(8),
        random_scale([1 + (i - 5) / 50 for i in range(11)]),
        random_rotate(list(range(-10, 11)) + 5 * [0]),
        jitter(4),
    ]


__all__ = [
    "Transform",
    "center_crop",
    "compose",
    "jitter",
    "pad",
    "random_rotate",
    "random_scale",
    "standard_transforms",
]
