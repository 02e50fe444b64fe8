"""Why a file is not a usable photo, in words a person can act on: the reasons :mod:`headstart.data.images` gives.

What a file that Pillow can't identify seems to hold (an HTML error page, a HEIC photo, a PDF), which of Pillow's
other formats it is, why a bomb or an unreadable file is refused. The decoding itself stays in
:mod:`headstart.data.images`; this module only words its verdicts.
"""

from __future__ import annotations

import stat
from pathlib import Path

from PIL import Image

from headstart.data._limits import BYTES_PER_PIXEL_ALLOWED

SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
    (b"\x00\x00\x01\x00", "ICO"),
)


def bomb_reason(width: int, height: int, max_pixels: int) -> str:
    return (
        f"image is {width}×{height} = {width * height:,} pixels, above the limit of {max_pixels:,} pixels "
        "(possible decompression bomb); raise the limit with --max-pixels N if you trust this file"
    )


def memory_reason(img: Image.Image, size: tuple[int, int], cost: int, max_pixels: int) -> str:
    allowed = BYTES_PER_PIXEL_ALLOWED * max_pixels
    return (
        f"decoding this {size[0]}×{size[1]} {img.format} image ({img.mode}) takes about {cost / 2**20:,.0f} MB, more "
        f"than the {allowed / 2**20:,.0f} MB the pixel limit allows ({BYTES_PER_PIXEL_ALLOWED} bytes for each of "
        f"{max_pixels:,} pixels; possible decompression bomb); raise the limit with --max-pixels N if you trust "
        "this file"
    )


def sniff(head: bytes) -> str:
    """Describe what a file that Pillow can't identify seems to hold, so the user knows what went wrong."""
    start = head.lstrip()[:64].lower()
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"hevc", b"heim", b"heis"):
        return "it is a HEIC/HEIF photo, which Pillow can't read; convert it to JPEG"
    if start.startswith((b"<!doctype html", b"<html", b"<head")):
        return "it is an HTML page, probably an error page saved by a failed download"
    if start.startswith(b"<?xml") or start.startswith(b"<svg"):
        return "it is XML or SVG text, not a raster photo"
    if head.startswith(b"%PDF"):
        return "it is a PDF document"
    if head.startswith(b"PK\x03\x04"):
        return "it is a ZIP archive"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"first bytes: {head[:12].hex(' ')}"
    if text and all(ch.isprintable() or ch in "\r\n\t" for ch in text):
        return f"it is text starting {text[:24]!r}"
    return f"first bytes: {head[:12].hex(' ')}"


def exception_text(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def file_problem(path: Path) -> str | None:
    """The reason a path can't even be opened as a file (missing, folder, special file, empty), or None."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return "file not found (it may have been moved or deleted since the folder was listed)"
    except PermissionError as exc:
        return f"cannot read the file: permission denied ({exc.strerror or exc}); check its permissions"
    except OSError as exc:
        return f"cannot read the file ({exception_text(exc)})"
    if stat.S_ISDIR(st.st_mode):
        return "is a directory, not an image file"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (a device, socket or pipe)"
    if st.st_size == 0:
        return "empty file (0 bytes); the copy or download probably failed"
    return None


def foreign_format(head: bytes, formats: tuple[str, ...]) -> str | None:
    """'a PSD file (Adobe Photoshop)' when the bytes open one of Pillow's formats that headstart does not decode."""
    Image.init()
    for name, (factory, accept) in list(Image.OPEN.items()):
        if name in formats or accept is None:
            continue
        try:
            if accept(head[:16]) is True:
                description = getattr(factory, "format_description", None)
                return f"{name} data" + (f" ({description})" if description else "")
        except Exception:  # a plugin's test that trips on these bytes says nothing about them
            continue
    return None
