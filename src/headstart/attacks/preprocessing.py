"""The model's resize and centre crop as a differentiable function, so an attack changes the photo's own pixels.

An attack on the 224-pixel crop would not be an attack on the photo: the saved file goes through the ordinary
prediction path, which resizes and crops it again. :func:`preprocess` is that resize + crop in torch, with
torchvision's size and offset arithmetic and PIL's antialiased weights, so the optimiser attacks the same geometry.

Example:
    >>> crop = preprocess(net.spec.data_config)(photo[None])   # (1, 3, 224, 224), still 0–1
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from headstart.errors import HeadstartError

if TYPE_CHECKING:
    import torch


def _preprocess_class() -> type:
    import torch
    import torch.nn.functional as F

    class Preprocess(torch.nn.Module):
        """The timm eval transform as a differentiable function: photo ``(B, 3, H, W)`` in 0–1 → model-sized crop.

        Resize (shorter side to ``input / crop_pct``, the config's interpolation with antialiasing, like PIL) then
        centre crop, with torchvision's exact size and offset arithmetic, so a perturbation of the photo's own
        pixels is attacked through the same geometry the ordinary prediction path uses.
        """

        def __init__(self, data_config: dict[str, Any]) -> None:
            super().__init__()
            self.size = (int(data_config["input_size"][-2]), int(data_config["input_size"][-1]))
            self.crop_pct = float(data_config.get("crop_pct") or 1.0)
            self.crop_mode = data_config.get("crop_mode") or "center"
            interpolation = data_config.get("interpolation") or "bilinear"
            self.mode = {"bilinear": "bilinear", "nearest": "nearest"}.get(interpolation, "bicubic")
            if self.crop_mode not in ("center", "squash"):
                raise HeadstartError(
                    f"Attacks support the crop modes 'center' and 'squash'; this model's preprocessing uses "
                    f"{self.crop_mode!r}. Use a backbone with centre-crop preprocessing."
                )
            scale = tuple(math.floor(s / self.crop_pct) for s in self.size)
            if self.crop_mode == "center" and scale[0] != scale[1]:
                raise HeadstartError(f"Attacks need a square input size for crop mode 'center'; got {self.size}.")
            self.scale = scale
            self._cache: dict[tuple[int, int, Any], torch.Tensor] = {}

        def resized_size(self, height: int, width: int) -> tuple[int, int]:
            if self.crop_mode == "squash":
                return self.scale
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = self.scale[0], int(self.scale[0] * long / short)
            return (new_long, new_short) if width <= height else (new_short, new_long)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            height, width = int(x.shape[-2]), int(x.shape[-1])
            new_h, new_w = self.resized_size(height, width)
            th, tw = self.size
            if new_h < th or new_w < tw:
                raise HeadstartError(f"The photo is smaller than the model's {th}×{tw} crop after resizing.")
            top, left = int(round((new_h - th) / 2.0)), int(round((new_w - tw) / 2.0))
            if (new_h, new_w) == (height, width):
                return x[..., top : top + th, left : left + tw]
            # Separable resize as two small matrix products (rows, then columns) restricted to the crop: the same
            # weights as F.interpolate(antialias=True), far faster to differentiate on a CPU.
            rows = self._weights(height, new_h, x.dtype)[top : top + th]
            cols = self._weights(width, new_w, x.dtype)[left : left + tw]
            return (rows @ x @ cols.T).clamp(0.0, 1.0)  # PIL clips bicubic overshoot to valid pixels

        def _weights(self, size: int, new_size: int, dtype: torch.dtype) -> torch.Tensor:
            """``(new_size, size)`` matrix of the 1-D resize: the resized images of the unit impulses."""
            key = (size, new_size, dtype)
            if key not in self._cache:
                eye = torch.eye(size, dtype=torch.float64)[None, None]
                kwargs = {} if self.mode == "nearest" else {"align_corners": False, "antialias": True}
                w = F.interpolate(eye, size=(new_size, size), mode=self.mode, **kwargs)[0, 0]
                self._cache[key] = w.to(dtype)
            return self._cache[key]

    return Preprocess


def preprocess(data_config: dict[str, Any]) -> torch.nn.Module:
    """A differentiable ``torch.nn.Module`` equal (up to PIL's 8-bit rounding) to timm's eval transform.

    Example:
        >>> crop = preprocess(net.spec.data_config)(photo[None])   # (1, 3, 224, 224), still 0–1
    """
    return _preprocess_class()(data_config)


__all__ = ["preprocess"]
