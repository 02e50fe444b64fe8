"""Reading photos: every file becomes an upright 8-bit RGB image, or an error that says why it can't.

Folders of real photos hold surprises: greyscale scans, 16-bit PNGs, CMYK JPEGs from print shops, PNGs renamed
``.jpg``, half-copied files, zero-byte files and decompression bombs. Everything downstream (feature extraction,
fine-tuning, the server) goes through :func:`load_image`, so all of that is handled once, here, and a damaged file
is reported by name and reason (:class:`~headstart.errors.UnusableImageError`) instead of crashing a long run.

Checking whole folders before a long run (``scan``) and moving the bad files aside (``quarantine``) live in
:mod:`headstart.data.scanning`.

Example:
    >>> from headstart.data.images import load_image
    >>> img = load_image("photos/cat/001.jpg", draft_size=(256, 256))  # doctest: +SKIP
    >>> img.mode  # doctest: +SKIP
    'RGB'
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from headstart._validation import check_int, fail
from headstart.errors import DataError, UnusableImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "check_image",
    "check_max_pixels",
    "decode_image",
    "decode_threads",
    "is_image_file",
    "list_image_files",
    "load_image",
]

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".jpg", ".jpeg", ".jpe", ".jfif", ".mpo",
        ".png", ".apng",
        ".gif",
        ".bmp", ".dib",
        ".webp",
        ".tif", ".tiff",
        ".ppm", ".pgm", ".pbm", ".pnm",
        ".avif",
        ".jp2", ".j2k",
        ".tga", ".qoi",
    }
)  # fmt: skip
"""Lower-case suffixes (with the dot) of the photo formats Pillow reads; other files are listed as ignored."""

DEFAULT_MAX_PIXELS: int = 89_478_485
"""Pillow's own default limit (a 3 GiB RGBA image at 4 bytes a pixel / 3); larger images are refused unasked."""

# Pillow checks its global Image.MAX_IMAGE_PIXELS inside Image.open (and, for GIF and TIFF, while decoding) and
# raises at twice that limit. The caller's ``max_pixels`` must win in both directions, so headstart lifts Pillow's
# limit while it reads a header, checks the size itself, and keeps the limit lifted for the decode only when
# Pillow would object. The lock keeps concurrent load_image calls from restoring each other's saved value.
_PILLOW_LIMIT_LOCK = threading.Lock()

_ORIENTATION_TAG = ExifTags.Base.Orientation
_SWAPS_AXES = frozenset({5, 6, 7, 8})  # EXIF orientations that turn the stored image by 90 degrees
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_HIGH_DEPTH_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
_JPEG_FORMATS = frozenset({"JPEG", "MPO"})
_WHITE = (255, 255, 255, 255)


@contextmanager
def _pillow_limit_lifted() -> Iterator[int | None]:
    """Run a block with Pillow's global pixel limit off; yields the limit that was in force."""
    with _PILLOW_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield saved
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def check_max_pixels(max_pixels: int | None, caller: str) -> None:
    """The pixel limit every decoding function takes: a positive int, or None for no limit.

    Example:
        >>> check_max_pixels(0, "scan")
        Traceback (most recent call last):
        ParameterError: The 'max_pixels' parameter of scan must be an int in [1, inf) or None (no limit). Got 0 instead.
    """
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1):
        fail("max_pixels", caller, "an int in [1, inf) or None (no limit)", max_pixels)


def decode_threads(workers: int | None, caller: str) -> int:
    """How many threads decode photos: ``workers``, or by default one a CPU core, at most 8 (Pillow releases the GIL
    while it decodes; past 8 threads the disk, not the processor, sets the pace).

    Example:
        >>> decode_threads(None, "scan") <= 8
        True
    """
    if workers is None:
        return min(8, os.cpu_count() or 1)
    return check_int(workers, "workers", caller, low=1)


def _check_decoding(max_pixels: int | None, draft_size: tuple[int, int] | None, caller: str) -> None:
    check_max_pixels(max_pixels, caller)
    if draft_size is not None and not (
        isinstance(draft_size, (tuple, list)) and len(draft_size) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in draft_size)
    ):
        fail("draft_size", caller, "None or (width, height) positive ints", draft_size)


def _bomb_reason(width: int, height: int, max_pixels: int) -> str:
    return (
        f"image is {width}×{height} = {width * height:,} pixels, above the limit of {max_pixels:,} pixels "
        "(possible decompression bomb); raise the limit with --max-pixels N if you trust this file"
    )


def _sniff(head: bytes) -> str:
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


def _exception_text(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(_ORIENTATION_TAG, 1)
        return int(value) if value in range(1, 9) else 1
    except Exception:  # broken EXIF only loses the rotation, never the photo
        return 1


def _to_8bit(img: Image.Image) -> Image.Image:
    """Scale a 16-bit, 32-bit or float greyscale image to 0-255 by its real range instead of clipping it."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16"):
        scaled = arr.astype(np.float32) / 257.0
    else:
        values = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        lo = float(values.min()) if values.size else 0.0
        hi = float(values.max()) if values.size else 0.0
        if img.mode == "F" and lo >= 0.0 and hi <= 1.0:
            scaled = values * 255.0  # float images are usually 0..1
        elif lo >= 0.0 and hi <= 255.0:
            scaled = values  # already 8-bit values stored wide
        elif lo >= 0.0 and hi <= 65535.0:
            scaled = values / 257.0  # 16-bit data stored in a 32-bit mode (e.g. some TIFFs)
        elif hi > lo:
            scaled = (values - lo) * (255.0 / (hi - lo))
        else:
            scaled = np.zeros_like(values)
    out = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(out)  # 2-D uint8 -> mode "L"


def _to_rgb(img: Image.Image) -> Image.Image:
    """Turn any decoded mode into RGB: transparency over white, high bit depths scaled, CMYK and palettes converted."""
    if img.mode in _HIGH_DEPTH_MODES:
        return _to_8bit(img).convert("RGB")
    has_alpha = img.mode in _ALPHA_MODES or "transparency" in img.info
    if img.mode == "P" and img.palette is not None and img.palette.mode == "RGBA":
        has_alpha = True
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE)
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _file_problem(path: Path) -> str | None:
    """The reason a path can't even be opened as a file (missing, folder, special file, empty), or None."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return "file not found (it may have been moved or deleted since the folder was listed)"
    except PermissionError as exc:
        return f"cannot read the file: permission denied ({exc.strerror or exc}); check its permissions"
    except OSError as exc:
        return f"cannot read the file ({_exception_text(exc)})"
    if stat.S_ISDIR(st.st_mode):
        return "is a directory, not an image file"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (a device, socket or pipe)"
    if st.st_size == 0:
        return "empty file (0 bytes); the copy or download probably failed"
    return None


def load_image(
    path: str | Path,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Open any photo as a fully decoded 8-bit RGB image, upright.

    The format is taken from the content, not the name, so a PNG called ``.jpg`` works. EXIF orientation is
    applied; greyscale, palette, CMYK, 16-bit and float images are converted (high bit depths are scaled, not
    clipped); transparency is composited over white; animated GIF/WebP give their first frame. Safe to call from
    several threads at once.

    Args:
        path: The image file.
        max_pixels: Refuse images whose header claims more than this many pixels, before decoding anything
            (decompression bombs). ``None`` turns the check off. Pillow's global ``Image.MAX_IMAGE_PIXELS`` is
            not consulted: this limit wins either way.
        draft_size: ``(width, height)`` the caller will shrink the photo to. JPEGs much larger than this are
            then decoded at 1/2, 1/4 or 1/8 scale (much faster); the result stays at least this large on both
            sides, measured upright.

    Returns:
        A loaded ``PIL.Image.Image`` in mode ``"RGB"`` that no longer depends on the file.

    Raises:
        UnusableImageError: The file can't be used; ``.reason`` says why and, where there is one, the fix.
    """
    _check_decoding(max_pixels, draft_size, "load_image")
    path = Path(path)
    problem = _file_problem(path)
    if problem is not None:
        raise UnusableImageError(path, problem)
    try:
        fp = open(path, "rb")
    except PermissionError as exc:
        raise UnusableImageError(path, f"cannot read the file: permission denied ({exc.strerror or exc})") from exc
    except OSError as exc:
        raise UnusableImageError(path, f"cannot read the file ({_exception_text(exc)})") from exc
    with fp:
        return _decode(path, fp, max_pixels=max_pixels, draft_size=draft_size)


def _decode(
    path: Path, fp: Any, *, max_pixels: int | None, draft_size: tuple[int, int] | None
) -> Image.Image:
    try:
        with _pillow_limit_lifted() as pillow_limit:
            img = Image.open(fp)  # reads the header only
    except UnidentifiedImageError as exc:
        fp.seek(0)
        head = fp.read(64)
        raise UnusableImageError(path, f"not an image: Pillow cannot identify the format ({_sniff(head)})") from exc
    except MemoryError as exc:
        raise UnusableImageError(path, "not enough memory to read the image header") from exc
    except Exception as exc:
        raise UnusableImageError(path, f"truncated or corrupt image data ({_exception_text(exc)})") from exc

    try:
        width, height = img.size
        if max_pixels is not None and width * height > max_pixels:
            raise UnusableImageError(path, _bomb_reason(width, height, max_pixels))
        if draft_size is not None and img.format in _JPEG_FORMATS:
            draft_w, draft_h = draft_size
            if _orientation(img) in _SWAPS_AXES:  # draft works on the stored (sideways) image
                draft_w, draft_h = draft_h, draft_w
            img.draft("RGB", (draft_w, draft_h))
        try:
            if pillow_limit is not None and width * height > pillow_limit:
                with _pillow_limit_lifted():  # rare: only images above Pillow's limit that the caller allowed
                    img.load()
            else:
                img.load()
        except MemoryError as exc:
            raise UnusableImageError(path, f"not enough memory to decode this {width}×{height} image") from exc
        except Exception as exc:
            raise UnusableImageError(path, f"truncated or corrupt image data ({_exception_text(exc)})") from exc
        try:
            ImageOps.exif_transpose(img, in_place=True)
        except Exception:  # broken EXIF only loses the rotation, never the photo
            pass
        try:
            return _to_rgb(img)
        except MemoryError as exc:
            raise UnusableImageError(path, f"not enough memory to convert this {width}×{height} image") from exc
        except Exception as exc:
            raise UnusableImageError(
                path, f"cannot convert colour mode {img.mode!r} to RGB ({_exception_text(exc)})"
            ) from exc
    finally:
        img.close()


def check_image(path: str | Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> str | None:
    """The reason the file is unusable, or None when it is usable.

    It decodes the whole image, because truncated files only fail once the missing data is reached.
    """
    try:
        load_image(path, max_pixels=max_pixels)
    except UnusableImageError as exc:
        return exc.reason
    return None


def is_image_file(path: str | Path) -> bool:
    """Whether the name has a photo extension (any case); hidden files such as ``._x.jpg`` never count."""
    name = Path(path).name
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def list_image_files(root: str | Path) -> tuple[list[Path], list[Path]]:
    """(image files, ignored non-image files) below root, recursive and sorted.

    Hidden files and folders (``.DS_Store``, ``.git``, macOS ``._x.jpg``) are skipped entirely: they are neither
    images nor worth reporting. Symlinked folders are not followed, so a link loop can't hang the walk.

    Raises:
        DataError: root does not exist or is not a folder.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: folder not found; check the path (it is relative to {Path.cwd()}).")
    if not root.is_dir():
        raise DataError(f"{root}: expected a folder of images, got a file; pass its parent folder instead.")
    images: list[Path] = []
    ignored: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                continue
            file = Path(dirpath) / name
            (images if is_image_file(file) else ignored).append(file)
    return sorted(images), sorted(ignored)


def decode_image(
    data: bytes,
    *,
    name: str = "upload",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """:func:`load_image` for bytes already in memory (an HTTP upload): the same decoder, checks and reasons.

    ``name`` is what errors call the image (the upload's filename). Same ``max_pixels`` and ``draft_size`` as
    :func:`load_image`, so a photo served over HTTP is decoded exactly as the same file on disk.

    Example:
        >>> decode_image(Path("cat.jpg").read_bytes(), name="cat.jpg").mode  # doctest: +SKIP
        'RGB'
    """
    import io

    _check_decoding(max_pixels, draft_size, "decode_image")
    if not data:
        raise UnusableImageError(name, "empty file (0 bytes); the copy or upload probably failed")
    return _decode(Path(name), io.BytesIO(data), max_pixels=max_pixels, draft_size=draft_size)

