"""The one guard every decode passes through: pixel limit, memory budget, and sizes a file's bytes cannot hold.

Why a hook inside Pillow: some formats decode while ``Image.open`` reads the header (an ICO holding a PNG, ICNS),
and multi-frame formats (GIF, TIFF, MPO, APNG, animated WebP) meet new sizes after it. Pillow asks one function,
``Image._decompression_bomb_check(size)``, before each of those allocations and after every ``open``. headstart
puts its own check there: while a headstart decode runs on a thread, the caller's ``max_pixels`` decides (in both
directions; Pillow's global ``MAX_IMAGE_PIXELS`` is neither consulted nor changed) and the memory the image needs
is booked in a process-wide budget; on every other thread (other code in the same process) Pillow's own check
runs unchanged. The limit is therefore never lifted, not even for a moment, and no format or file name escapes it.

The budget: a decode books ``pixels × bytes`` before allocating (see :func:`decode_cost`) and gives it back when
done; decodes that do not fit wait their turn (first come, first served), and one larger than the whole budget
runs alone. A scan of 8 threads over photos just under the pixel limit therefore holds one or two of them at a
time, not eight.

Example:
    >>> with decoding(max_pixels=1_000_000) as guard:  # doctest: +SKIP
    ...     img = Image.open(fp)   # raises ImageTooLarge for a header above 1,000,000 pixels
    ...     guard.need(decode_cost(img, full_size=img.size, convert=True))  # waits for room in the budget
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from PIL import Image

DECODE_MEMORY_BUDGET = 512 << 20
"""Bytes that decodes in flight may book together (a single larger decode runs alone)."""

MAX_JPEG_SCANS = 500
"""Progressive JPEGs with more scans are refused, and fewer for large images (:func:`jpeg_scans_allowed`): each
scan walks the whole image again, so a file of thousands of tiny scans takes minutes to decode. Photos have about
ten (libjpeg's progression), optimisers a few dozen."""

_SCAN_WORK = 1 << 32  # pixel-scans a progressive JPEG may cost (about 12 s of libjpeg time)


def jpeg_scans_allowed(pixels: int) -> int:
    """Scans a progressive JPEG of this many pixels may have: 500, down to 64 for the largest photos."""
    return max(64, min(MAX_JPEG_SCANS, _SCAN_WORK // max(1, pixels)))


# Most pixels one byte of compressed data can describe, by how the data is coded: a bound the format itself sets,
# so a file claiming more pixels than its bytes can hold is cut short or forged (the 69-byte PNG claiming 89 Mpx),
# and is refused before anything is allocated. Counted at one bit a pixel, the least any of these formats stores.
_DEFLATE = 8 * 1032  # deflate expands at most 1032:1 (a 258-byte match costs at least 2 bits)
_PIXELS_PER_BYTE = {
    "raw": 8,  # uncompressed: BMP, PPM, TGA, uncompressed TIFF
    "zip": _DEFLATE,  # PNG
    "tiff_deflate": _DEFLATE,
    "tiff_adobe_deflate": _DEFLATE,
    "tiff_lzw": 8 * 4096,  # LZW: a 12-bit code stands for at most 4,096 bytes
    "packbits": 8 * 64,  # 2 bytes repeat one byte at most 128 times
    "gif": 4096,  # GIF LZW: a 12-bit code stands for at most 4,096 pixels (2,731 a byte)
    "jpeg": 8192,  # at least one bit per 8×8 block of the smallest component (16× subsampled at most)
}


# The same bound for every frame a file's headers declare, by the format the file's first bytes say it is: whatever
# is decoded inside it (the PNG or BMP in an ICO, the JPEGs of an MPO, an APNG's frames) is coded so, and cannot
# describe more pixels than the whole file's bytes hold. Formats with frames of unbounded coding (TIFF, WebP, BMP's
# RLE, GIF canvases larger than their frames) are held to the pixel limit only.
_FRAME_PIXELS_PER_BYTE = (
    (b"\x89PNG\r\n\x1a\n", "PNG", _DEFLATE),
    (b"\x00\x00\x01\x00", "ICO", _DEFLATE),  # frames: PNG (deflate) or BMP (raw, 8 pixels a byte at most)
    (b"\xff\xd8\xff", "JPEG", 8192),
)


def frame_bound(head: bytes) -> tuple[str, int] | None:
    """(format, most pixels a byte of it can describe) for a file starting with ``head``, or None (unbounded)."""
    return next(((name, per_byte) for magic, name, per_byte in _FRAME_PIXELS_PER_BYTE if head.startswith(magic)), None)


class ImpossibleSize(Image.DecompressionBombError):
    """Raised inside Pillow when a header (of the image or of a frame inside it) declares more pixels than the
    file's bytes can hold in its format."""

    def __init__(self, width: int, height: int, nbytes: int, format: str) -> None:
        self.width, self.height, self.nbytes, self.format = width, height, nbytes, format
        super().__init__(f"{width}×{height} in {nbytes} bytes of {format}")

    def reason(self) -> str:
        pixels = max(1, self.width) * max(1, self.height)
        return (
            f"truncated or corrupt image data (the header declares {self.width}×{self.height} = {pixels:,} pixels, "
            f"more than {self.nbytes:,} bytes of {self.format} data can hold; the file is cut short or forged)"
        )


class ImageTooLarge(Image.DecompressionBombError):
    """Raised inside Pillow when a header (of the image or of one of its frames) is above the caller's limit."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        super().__init__(f"{width}×{height}")


class _Budget:
    """Bytes booked by decodes in flight; FIFO admission, no thread waits while holding a booking."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0
        self._cond = threading.Condition()
        self._queue: deque[object] = deque()

    def acquire(self, nbytes: int) -> None:
        token = object()
        with self._cond:
            self._queue.append(token)
            try:
                while self._queue[0] is not token or (self.in_use and self.in_use + nbytes > self.limit):
                    self._cond.wait()
            except BaseException:  # interrupted while waiting: leave the queue so the others go on
                self._queue.remove(token)
                self._cond.notify_all()
                raise
            self._queue.popleft()
            self.in_use += nbytes
            self._cond.notify_all()

    def release(self, nbytes: int) -> None:
        if nbytes:
            with self._cond:
                self.in_use -= nbytes
                self._cond.notify_all()


BUDGET = _Budget(DECODE_MEMORY_BUDGET)


class Guard:
    """One decode on one thread: its pixel limit and the bytes it has booked."""

    def __init__(self, max_pixels: int | None, nbytes: int | None = None, head: bytes = b"") -> None:
        self.max_pixels = max_pixels
        self.booked = 0
        self.nbytes, self.bound = nbytes, frame_bound(head) if nbytes is not None else None

    def check(self, width: int, height: int) -> None:
        """Refuse a size above the limit, or more than the file's bytes can hold in its format (whatever the limit);
        book the memory of one image of that size."""
        pixels = max(1, width) * max(1, height)
        if self.max_pixels is not None and pixels > self.max_pixels:
            raise ImageTooLarge(width, height)
        if self.bound is not None and self.nbytes is not None and pixels > self.bound[1] * self.nbytes:
            raise ImpossibleSize(width, height, self.nbytes, self.bound[0])
        self.need(max(1, width) * max(1, height) * 4)

    def need(self, nbytes: int) -> None:
        """Make this decode's booking at least ``nbytes`` (given back first and asked again: no hold-and-wait)."""
        if nbytes <= self.booked:
            return
        BUDGET.release(self.booked)
        self.booked = 0
        BUDGET.acquire(nbytes)
        self.booked = nbytes

    def close(self) -> None:
        BUDGET.release(self.booked)
        self.booked = 0


_LOCAL = threading.local()
_INSTALL = threading.Lock()
_pillow_check: Any = None


def _size_check(size: tuple[int, int], *, error_only: bool = False) -> None:
    """Stands in for ``Image._decompression_bomb_check``: headstart's guard on its decoding threads, Pillow's own
    check everywhere else."""
    guard = getattr(_LOCAL, "guard", None)
    if guard is None:
        return _pillow_check(size, error_only=error_only)
    guard.check(int(size[0]), int(size[1]))
    return None


_BLOCK_SIZE = 64 << 20


def _install() -> None:
    """Put the guard into Pillow, once. Also let Pillow allocate large images in 64 MB blocks instead of 16 MB:
    glibc serves requests above 32 MB with mmap and gives them back to the system when freed, whereas smaller
    ones stay in the freeing thread's heap; with 16 MB blocks a scan on 8 threads kept every thread's largest
    image resident (1.3 GB measured where 430 MB were in use)."""
    global _pillow_check
    with _INSTALL:
        core = getattr(Image, "core", None)
        if "PILLOW_BLOCK_SIZE" not in os.environ and hasattr(core, "set_block_size"):
            if core.get_block_size() < _BLOCK_SIZE:
                core.set_block_size(_BLOCK_SIZE)
        current = getattr(Image, "_decompression_bomb_check", None)
        if current is not _size_check and current is not None:
            _pillow_check = current
            Image._decompression_bomb_check = _size_check


@contextmanager
def decoding(max_pixels: int | None, nbytes: int | None = None, head: bytes = b"") -> Iterator[Guard]:
    """Run one decode on this thread under the guard; its booking is given back at the end. With the file's size
    and first bytes, every frame size a header declares is also held to what those bytes can hold."""
    if getattr(Image, "_decompression_bomb_check", None) is not _size_check:
        _install()
    guard = Guard(max_pixels, nbytes, head)
    outer = getattr(_LOCAL, "guard", None)
    _LOCAL.guard = guard
    try:
        yield guard
    finally:
        _LOCAL.guard = outer
        guard.close()


def bytes_per_pixel(mode: str) -> int:
    """How many bytes Pillow stores a pixel of ``mode`` in (8-bit multi-band modes take 4)."""
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


BYTES_PER_PIXEL_ALLOWED = 8
"""A decode may take at most this many bytes for each pixel ``max_pixels`` allows (an 8-bit RGBA image at the limit
and its RGB result); decoders that need more for an image near the limit (Pillow's WebP decoder keeps four copies)
are refused too, so the limit bounds memory as well as pixels."""


def decode_cost(img: Image.Image, *, full_size: tuple[int, int], convert: bool, rotated: bool = False) -> int:
    """Bytes decoding ``img`` (opened, draft scale chosen) takes at its peak, to book before ``load``.

    The decoded image; the RGB result when converting (8-bit RGB is returned as it is) or the upright copy when
    turning it, whichever is larger; a progressive JPEG's coefficients, kept at full size whatever the draft scale
    (2 bytes a sample); libtiff's strip or tile buffer; the two canvases and the frame copy of Pillow's WebP
    decoder.
    """
    width, height = img.size
    pixels = max(1, width) * max(1, height)
    stored = bytes_per_pixel(img.mode)
    high_depth = img.mode in ("I", "F") or img.mode.startswith("I;16")
    converted = 0 if not convert or img.mode == "RGB" else 5 if high_depth else 4
    cost = pixels * (stored + max(converted, stored if rotated else 0))  # turning upright copies, then frees, the image
    full_pixels = max(1, full_size[0]) * max(1, full_size[1])
    if img.format in ("JPEG", "MPO") and img.info.get("progressive"):
        layers = getattr(img, "layer", None) or [(None, 1, 1, None)] * len(img.getbands())
        h_max = max(int(layer[1]) for layer in layers) or 1
        v_max = max(int(layer[2]) for layer in layers) or 1
        samples = sum(int(layer[1]) * int(layer[2]) for layer in layers) / (h_max * v_max)
        cost += int(full_pixels * 2 * samples)
    elif img.format == "TIFF":  # libtiff decodes a strip (or tile) into its own buffer first
        tags = getattr(img, "tag_v2", {})
        bits = tags.get(258, 8)
        bits = sum(int(b) for b in bits) if isinstance(bits, tuple) else int(bits) * len(img.getbands())
        if 322 in tags and 323 in tags:
            area = int(tags[322]) * int(tags[323])
        else:
            area = max(1, width) * min(max(1, int(tags.get(278, height) or height)), max(1, height))
        cost += area * max(1, bits) // 8
    elif img.format == "WEBP":
        cost += pixels * 12
    return cost


def codec(img: Image.Image) -> str | None:
    """How the first frame's data is coded, as a key of the pixels-per-byte table (None: no known bound)."""
    if img.format in ("JPEG", "MPO"):
        return "jpeg"
    if img.format == "TIFF":
        return img.info.get("compression")
    tile = getattr(img, "tile", None)
    return tile[0][0] if tile else None


def implausible(img: Image.Image, nbytes: int) -> str | None:
    """Why ``nbytes`` of file cannot hold the image its header declares, or None when they can."""
    per_byte = _PIXELS_PER_BYTE.get(codec(img) or "")
    if per_byte is None or img.format in ("ICO", "ICNS"):
        return None
    width, height = img.size
    if img.format == "GIF" and getattr(img, "tile", None):  # a GIF frame may be smaller than its canvas
        x0, y0, x1, y1 = img.tile[0][1]
        width, height = x1 - x0, y1 - y0
    pixels = max(1, width) * max(1, height)
    if pixels <= per_byte * nbytes:
        return None
    return (
        f"truncated or corrupt image data (the header declares {width}×{height} = {pixels:,} pixels, more than "
        f"{nbytes:,} bytes of {img.format} data can hold; the file is cut short or forged)"
    )


def count_jpeg_scans(fp: Any, limit: int) -> int:
    """Start-of-scan markers in a JPEG file, counted up to about ``limit`` (entropy-coded data never holds FF DA:
    a coded FF is always followed by 00 or a restart marker)."""
    fp.seek(0)
    count, carry = 0, b""
    while count <= limit:
        block = fp.read(1 << 20)
        if not block:
            break
        data = carry + block
        count += data.count(b"\xff\xda")
        carry = data[-1:] if data.endswith(b"\xff") else b""  # a marker split across blocks counts with the next
    return count
