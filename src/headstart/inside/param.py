"""Image parameterisations: what the optimiser changes, and how that becomes a 0–1 RGB image.

Each function returns ``(params, image_f)``: ``params`` is the list of tensors the optimiser sees, ``image_f()``
builds the current image, a ``(batch, 3, H, W)`` float tensor in [0, 1]. Everything downstream (transforms,
objectives, the network) only sees ``image_f()``, so parameterisations are interchangeable.

Example:
    >>> params, image_f = fft_image((1, 3, 224, 224))
    >>> image_f().shape
    torch.Size([1, 3, 224, 224])
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from headstart._validation import fail

if TYPE_CHECKING:
    import torch

ImageF = Callable[[], "torch.Tensor"]

#: Square root of the colour correlation of natural images (Lucid's ImageNet estimate); rows are RGB.
_COLOR_CORRELATION = ((0.26, 0.09, 0.02), (0.27, 0.00, -0.05), (0.27, -0.09, 0.03))


@functools.cache
def _color_matrices() -> tuple[torch.Tensor, torch.Tensor]:
    """``(COLOR_CORRELATION_SVD_SQRT, the same with its largest column norm scaled to 1)``, built on first use."""
    import torch

    matrix = torch.tensor(_COLOR_CORRELATION)
    return matrix, matrix / matrix.norm(dim=0).max()


def __getattr__(name: str) -> Any:
    """``COLOR_CORRELATION_SVD_SQRT`` is a torch tensor, made on first access so importing this module needs no torch."""
    if name == "COLOR_CORRELATION_SVD_SQRT":
        return _color_matrices()[0]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _check_shape(shape: tuple[int, ...], caller: str) -> tuple[int, int, int, int]:
    shape = tuple(shape)
    if len(shape) != 4 or not all(isinstance(v, int) and v > 0 for v in shape) or shape[1] != 3:
        fail("shape", caller, "(batch, 3, height, width) positive ints", shape)
    return shape  # type: ignore[return-value]


def _generator(seed: int | None) -> torch.Generator | None:
    import torch

    return None if seed is None else torch.Generator().manual_seed(int(seed))


def to_valid_rgb(image: torch.Tensor, decorrelate: bool = True) -> torch.Tensor:
    """Map an unconstrained ``(batch, 3, H, W)`` tensor to RGB in [0, 1]: optional colour decorrelation, then a sigmoid.

    With ``decorrelate`` the three channels are coordinates along the principal colour axes of natural images,
    so one optimisation step changes colours in natural proportions instead of pushing R, G and B independently.
    """
    import torch

    if decorrelate:
        matrix = _color_matrices()[1].to(image.device, image.dtype)
        image = torch.einsum("bchw,dc->bdhw", image, matrix)
    return torch.sigmoid(image)


def pixel_image(
    shape: tuple[int, int, int, int],
    sd: float = 0.5,
    mean: float = 0.5,
    seed: int | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[list[torch.Tensor], ImageF]:
    """One free parameter per pixel and channel: the lesson's parameterisation, kept to valid pixels.

    The default start ``0.5 + 0.5 · N(0, 1)`` is the lesson's N(0, 1) noise in the normalised space of weights with
    mean = std = 0.5 (EfficientNet-Lite). Unlike the lesson, the pixels are clipped to [0, 1] before each use
    (projected gradient descent), so the image optimised is one a PNG can hold. ``dtype`` (default float32) is
    the pixels' type; the start is drawn in float32 either way, so a float64 run starts from the same image.
    """
    import torch

    batch, channels, h, w = _check_shape(shape, "pixel_image")
    noise = torch.randn(batch, channels, h, w, generator=_generator(seed))  # float32: the same start in any dtype
    pixels = (mean + sd * noise).to(dtype or noise.dtype).requires_grad_(True)

    def image_f() -> torch.Tensor:
        with torch.no_grad():
            pixels.clamp_(0, 1)
        return pixels

    return [pixels], image_f


def _rfft2d_freqs(h: int, w: int) -> np.ndarray:
    """Spatial frequency magnitude of each bin of a real 2-D FFT of an ``h × w`` image (cycles per pixel)."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    return np.sqrt(fx * fx + fy * fy)


def fft_image(
    shape: tuple[int, int, int, int],
    sd: float = 0.01,
    decay_power: float = 1.0,
    decorrelate: bool = True,
    seed: int | None = None,
) -> tuple[list[torch.Tensor], ImageF]:
    """Lucid's Fourier-space parameterisation: the image is the inverse FFT of a spectrum scaled by ``1/f^decay_power``.

    Scaling the spectrum makes a gradient step change low frequencies as much as high ones (a plain pixel
    parameterisation favours high-frequency noise). The result goes through :func:`to_valid_rgb`.

    Args:
        shape: ``(batch, 3, height, width)``.
        sd: standard deviation of the random starting spectrum (small: a nearly grey start).
        decay_power: exponent of the ``1/f`` spectrum scaling; 0 turns the scaling off.
        decorrelate: decorrelate colours (see :func:`to_valid_rgb`).
        seed: seed of the starting spectrum.
    """
    import torch

    batch, channels, h, w = _check_shape(shape, "fft_image")
    freqs = _rfft2d_freqs(h, w)
    spectrum = (sd * torch.randn(batch, channels, *freqs.shape, 2, generator=_generator(seed))).requires_grad_(True)
    scale = 1.0 / np.maximum(freqs, 1.0 / max(w, h)) ** decay_power
    scale_t = torch.tensor(scale, dtype=torch.float32)[None, None, :, :, None]

    def image_f() -> torch.Tensor:
        scaled = torch.view_as_complex((scale_t.to(spectrum.device) * spectrum).contiguous())
        image = torch.fft.irfftn(scaled, s=(h, w), norm="ortho") / 4.0
        return to_valid_rgb(image, decorrelate=decorrelate)

    return [spectrum], image_f


def image(
    size: int | tuple[int, int], batch: int = 1, fft: bool = True, decorrelate: bool = True, seed: int | None = None
) -> tuple[list[torch.Tensor], ImageF]:
    """The default parameterisation by size: :func:`fft_image` (``fft=True``) or a decorrelated sigmoid pixel image."""
    import torch

    h, w = (size, size) if isinstance(size, int) else size
    if fft:
        return fft_image((batch, 3, h, w), decorrelate=decorrelate, seed=seed)
    raw = (0.01 * torch.randn(batch, 3, h, w, generator=_generator(seed))).requires_grad_(True)
    return [raw], lambda: to_valid_rgb(raw, decorrelate=decorrelate)


__all__ = [  # noqa: F822  (COLOR_CORRELATION_SVD_SQRT is made on first access, by __getattr__)
    "COLOR_CORRELATION_SVD_SQRT",
    "fft_image",
    "image",
    "pixel_image",
    "to_valid_rgb",
]
