"""Hashes of a photo's pixels: what it shows, independent of the file it is in.

* **same pixels**: a SHA-256 over the decoded, upright RGB pixels (a photo re-saved with other metadata, a PNG of a
  lossless copy has the same one);
* **looks the same**: a 64-bit DCT perceptual hash (pHash: the signs of the lowest 8x8 DCT frequencies of a 32x32
  greyscale image against their median); the mirror image's hash comes from the same DCT by flipping the sign of
  the odd horizontal frequencies.

They need only the decoded photo, so they live with the decoding (layer 1); finding duplicates with them and with
backbone features is :mod:`headstart.features.duplicates`.

Example:
    >>> from PIL import Image
    >>> h, mirrored = perceptual_hash(Image.new("RGB", (64, 48), "white"))
    >>> hamming(h, h)
    0
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from headstart._console import progress as progress_bar
from headstart.data.images import DEFAULT_MAX_PIXELS, load_image
from headstart.errors import UnusableImageError

__all__ = ["SIGNATURE_DECODE", "Signatures", "hamming", "image_signatures", "perceptual_hash"]

#: Photos are hashed from a decode at least this large (JPEG draft mode at 1/2, 1/4 or 1/8 scale, other formats
#: box-reduced: :func:`headstart.data.images.load_image`), as extraction decodes them for the 224-pixel backbones: a
#: 12-megapixel phone JPEG then costs about a fifth of its full decode. The pHash reads a 32x32 thumbnail, so it
#: barely moves; the pixel hash of a photo larger than twice this is a hash of the reduced pixels (the same file
#: content still gives the same hash; a PNG re-encoding of a large JPEG is then a near duplicate, not an exact one).
SIGNATURE_DECODE = (256, 256)

_HASH_SIDE = 32
_LOW = 8


def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix: ``D @ x`` is the DCT of the column vector ``x``."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    matrix = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    matrix[0] /= np.sqrt(2.0)
    return matrix


_DCT = _dct_matrix(_HASH_SIDE)
_MIRROR_SIGNS = np.where(np.arange(_LOW) % 2 == 1, -1.0, 1.0)[None, :]  # column v of a mirrored image: (-1)^v


def _bits_to_int(bits: np.ndarray) -> int:
    return int.from_bytes(np.packbits(bits.astype(np.uint8).ravel()).tobytes(), "big")


def perceptual_hash(image) -> tuple[int, int]:
    """64-bit DCT perceptual hashes of a PIL image and of its mirror image, as two ints.

    Resizing, re-encoding and small crops move few bits; different photos differ in about half of them.

    Example:
        >>> from PIL import Image
        >>> h, mirrored = perceptual_hash(Image.new("RGB", (64, 48), "white"))
    """
    from PIL import Image

    grey = image.convert("L").resize((_HASH_SIDE, _HASH_SIDE), Image.Resampling.BOX)
    pixels = np.asarray(grey, dtype=np.float64)
    low = (_DCT @ pixels @ _DCT.T)[:_LOW, :_LOW]
    mirrored = low * _MIRROR_SIGNS
    hashes = []
    for coefficients in (low, mirrored):
        flat = coefficients.ravel()
        median = np.median(flat[1:])  # the DC term (overall brightness) is left out of the median
        hashes.append(_bits_to_int(flat > median))
    return hashes[0], hashes[1]


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two hashes."""
    return int(a ^ b).bit_count()


@dataclass
class Signatures:
    """Per-photo pixel hash and perceptual hashes, aligned with the paths given (None where unreadable)."""

    pixel_hashes: list[str | None]
    phashes: list[int | None]
    mirror_phashes: list[int | None]


def _signature(path: os.PathLike[str] | str, max_pixels: int | None) -> tuple[str | None, int | None, int | None]:
    try:
        image = load_image(path, max_pixels=max_pixels, draft_size=SIGNATURE_DECODE)
    except UnusableImageError:
        return None, None, None
    digest = hashlib.sha256(f"{image.mode} {image.size}".encode())
    digest.update(image.tobytes())
    phash, mirrored = perceptual_hash(image)
    return digest.hexdigest(), phash, mirrored


def image_signatures(
    paths: Sequence[str | os.PathLike[str]],
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
    progress: bool = False,
) -> Signatures:
    """Decode every photo once and hash its pixels (exact duplicates) and its look (pHash, also mirrored).

    Decoding runs in threads (Pillow releases the GIL while it decodes). Unreadable files get ``None``.

    Example:
        >>> sigs = image_signatures(["cat.jpg", "cat-copy.png"])           # doctest: +SKIP
        >>> sigs.pixel_hashes[0] == sigs.pixel_hashes[1]                   # doctest: +SKIP
        True
    """
    workers = workers or min(8, os.cpu_count() or 1)
    results: list[tuple[str | None, int | None, int | None]] = []
    with progress_bar(progress, len(paths), "Hashing pixels") as advance, ThreadPoolExecutor(workers) as pool:
        for result in pool.map(lambda p: _signature(p, max_pixels), paths):
            results.append(result)
            advance(1)
    return Signatures([r[0] for r in results], [r[1] for r in results], [r[2] for r in results])
