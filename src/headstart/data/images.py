"""Reading photos: every file becomes an upright 8-bit RGB image, or an error that says why it can't.

Folders of real photos hold surprises: greyscale scans, 16-bit PNGs, CMYK JPEGs from print shops, PNGs renamed
``.jpg``, half-copied files, zero-byte files and decompression bombs. Everything downstream (feature extraction,
fine-tuning, the server) goes through :func:`load_image`, so all of that is handled once, here, and a damaged file
is reported by name and reason (:class:`~headstart.errors.UnusableImageError`) instead of crashing a long run.

Hostile files meet one guard, whatever their format or name (:mod:`headstart.data._limits`): the pixel limit is
checked inside Pillow before every allocation Pillow makes from a header (the image, each frame, the PNG inside an
ICO), the memory a decode needs is booked before it is taken, and headers claiming more pixels than the file's
bytes can hold are refused unread. Colour conversions work band by band (:mod:`headstart.data._convert`).

Checking whole folders before a long run (``scan``) and moving the bad files aside (``quarantine``) live in
:mod:`headstart.data.scanning`.

Example:
    >>> from headstart.data.images import load_image
    >>> img = load_image("photos/cat/001.jpg", draft_size=(256, 256))  # doctest: +SKIP
    >>> img.mode  # doctest: +SKIP
    'RGB'
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path
from typing import Any

from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from headstart._validation import check_int, fail
from headstart.data._convert import HIGH_DEPTH_MODES, reduced, to_8bit, to_rgb
from headstart.data._limits import (
    BYTES_PER_PIXEL_ALLOWED,
    ImageTooLarge,
    ImpossibleSize,
    count_jpeg_scans,
    decode_cost,
    decoding,
    implausible,
    jpeg_scans_allowed,
)
from headstart.data._reasons import (
    SIGNATURES,
    bomb_reason,
    exception_text,
    file_problem,
    foreign_format,
    memory_reason,
    sniff,
)
from headstart.errors import DataError, UnusableImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "FORMATS",
    "IMAGE_EXTENSIONS",
    "MIN_SIDE",
    "SmallImageWarning",
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

FORMATS: tuple[str, ...] = (
    "BMP", "DIB", "GIF", "JPEG", "PPM", "PNG", "AVIF", "JPEG2000", "ICO", "TIFF", "QOI", "TGA", "WEBP",
)  # fmt: skip
"""The Pillow formats headstart decodes (JPEG includes MPO; PNG includes APNG), in Pillow's own order of trying.
Files in Pillow's other formats (PSD, ICNS, FITS, PCX, ...) are refused by name: fewer decoders facing untrusted
files, and none that a photo needs."""

MIN_SIDE: int = 16
"""Photos smaller than this on a side are used, with a :class:`SmallImageWarning`."""


class SmallImageWarning(UserWarning):
    """A photo is tiny (under :data:`MIN_SIDE` pixels on a side): it is used, but holds too little to go on.

    Usually a thumbnail, an icon or a tracking pixel saved by mistake; the message names the file.
    """


_ORIENTATION_TAG = ExifTags.Base.Orientation
_SWAPS_AXES = frozenset({5, 6, 7, 8})  # EXIF orientations that turn the stored image by 90 degrees
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}  # what ImageOps.exif_transpose does for each EXIF orientation
_JPEG_FORMATS = frozenset({"JPEG", "MPO"})


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
        isinstance(draft_size, (tuple, list))
        and len(draft_size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in draft_size)
    ):
        fail("draft_size", caller, "None or (width, height) positive ints", draft_size)


def _orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(_ORIENTATION_TAG, 1)
        return int(value) if value in range(1, 9) else 1
    except Exception:  # broken EXIF only loses the rotation, never the photo
        return 1


def load_image(
    path: str | Path,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Open any photo as a fully decoded 8-bit RGB image, upright.

    The format is taken from the content, not the name, so a PNG called ``.jpg`` works (:data:`FORMATS` lists
    those read). EXIF orientation is applied; greyscale, palette, CMYK, 16-bit and float images are converted
    (high bit depths are scaled, not clipped); transparency is composited over white; animated GIF/WebP give their
    first frame. A photo under :data:`MIN_SIDE` pixels on a side is used with a :class:`SmallImageWarning`. Safe
    to call from several threads at once; together they book their memory in one budget (512 MB), so eight
    threads over huge photos hold one or two of them at a time.

    Args:
        path: The image file.
        max_pixels: Refuse images whose header (or the header of any frame inside the file, such as the PNG in an
            ICO) claims more than this many pixels, before anything is allocated; and images whose decoding would
            take more than 8 bytes for each of those pixels. ``None`` turns both checks off. Pillow's global
            ``Image.MAX_IMAGE_PIXELS`` is neither consulted nor changed: this limit wins either way. Whatever the
            limit, a header claiming more pixels than the file's bytes can hold (a 69-byte PNG of 89 Mpx) is
            refused as truncated or forged, and a progressive JPEG of more scans than its size allows (500, down
            to 64 for the largest) as a bomb.
        draft_size: ``(width, height)`` the caller will shrink the photo to. JPEGs much larger than this are
            then decoded at 1/2, 1/4 or 1/8 scale (much faster), and other formats box-reduced by an integer
            factor (up to 8) right after decoding; the result stays at least this large on both sides, measured
            upright.

    Returns:
        A loaded ``PIL.Image.Image`` in mode ``"RGB"`` that no longer depends on the file.

    Raises:
        UnusableImageError: The file can't be used; ``.reason`` says why and, where there is one, the fix.

    Example:
        >>> load_image("photos/cat/001.jpg", draft_size=(256, 256)).mode  # doctest: +SKIP
        'RGB'
    """
    _check_decoding(max_pixels, draft_size, "load_image")
    return _load(Path(path), max_pixels=max_pixels, draft_size=draft_size, convert=True)


def _load(
    path: Path, *, max_pixels: int | None, draft_size: tuple[int, int] | None, convert: bool
) -> Image.Image | None:
    problem = file_problem(path)
    if problem is not None:
        raise UnusableImageError(path, problem)
    try:
        fp = open(path, "rb")
    except PermissionError as exc:
        raise UnusableImageError(path, f"cannot read the file: permission denied ({exc.strerror or exc})") from exc
    except OSError as exc:
        raise UnusableImageError(path, f"cannot read the file ({exception_text(exc)})") from exc
    with fp:
        nbytes = os.fstat(fp.fileno()).st_size
        return _decode(path, fp, nbytes, max_pixels=max_pixels, draft_size=draft_size, convert=convert)


def _decode(
    path: Path, fp: Any, nbytes: int, *, max_pixels: int | None, draft_size: tuple[int, int] | None, convert: bool
) -> Image.Image | None:
    """The one way a file becomes pixels: under the guard of :mod:`headstart.data._limits` from the first header
    byte to the last conversion (pixel limit for the image and every frame, memory booked before allocating)."""
    head = fp.read(16)
    fp.seek(0)
    with decoding(max_pixels, nbytes, head) as guard:
        img = _open(path, fp, max_pixels)
        try:
            return _decoded(path, img, fp, nbytes, guard, max_pixels=max_pixels, draft_size=draft_size, convert=convert)
        except ImageTooLarge as exc:  # a frame or crop above the limit, met after open
            raise UnusableImageError(path, bomb_reason(exc.width, exc.height, max_pixels or 0)) from None
        except ImpossibleSize as exc:  # a frame declaring more than the file can hold, met after open
            raise UnusableImageError(path, exc.reason()) from None
        finally:
            img.close()


def _open(path: Path, fp: Any, max_pixels: int | None) -> Image.Image:
    try:
        return Image.open(fp, formats=_formats())  # reads the header (ICO and the like decode here, under the guard)
    except ImageTooLarge as exc:
        raise UnusableImageError(path, bomb_reason(exc.width, exc.height, max_pixels or 0)) from None
    except ImpossibleSize as exc:
        raise UnusableImageError(path, exc.reason()) from None
    except UnidentifiedImageError as exc:
        fp.seek(0)
        head = fp.read(64)
        known = next((name for signature, name in SIGNATURES if head.startswith(signature)), None)
        if known is not None:  # a format headstart reads, whose header Pillow refused (e.g. frames that do not fit)
            raise UnusableImageError(
                path, f"truncated or corrupt image data (a {known} file whose header Pillow cannot read)"
            ) from exc
        foreign = foreign_format(head, FORMATS)
        if foreign is not None:
            raise UnusableImageError(
                path, f"not a photo format headstart reads: it is {foreign}; convert it to PNG or JPEG"
            ) from exc
        raise UnusableImageError(path, f"not an image: Pillow cannot identify the format ({sniff(head)})") from exc
    except MemoryError as exc:
        raise UnusableImageError(path, "not enough memory to read the image header") from exc
    except Exception as exc:
        raise UnusableImageError(path, f"truncated or corrupt image data ({exception_text(exc)})") from exc


@functools.lru_cache(maxsize=1)
def _formats() -> tuple[str, ...]:
    """:data:`FORMATS` that this Pillow build has (an older Pillow lacks AVIF): naming a missing one fails open."""
    Image.init()
    return tuple(name for name in FORMATS if name in Image.OPEN)


def _decoded(
    path: Path,
    img: Image.Image,
    fp: Any,
    nbytes: int,
    guard: Any,
    *,
    max_pixels: int | None,
    draft_size: tuple[int, int] | None,
    convert: bool,
) -> Image.Image | None:
    width, height = img.size
    if max_pixels is not None and width * height > max_pixels:  # (the guard has refused it already; kept explicit)
        raise UnusableImageError(path, bomb_reason(width, height, max_pixels))
    problem = implausible(img, nbytes)
    if problem is not None:
        raise UnusableImageError(path, problem)
    is_jpeg = img.format in _JPEG_FORMATS
    if is_jpeg and img.info.get("progressive"):
        allowed = jpeg_scans_allowed(width * height)
        if count_jpeg_scans(fp, allowed) > allowed:
            raise UnusableImageError(
                path,
                f"progressive JPEG of more than {allowed} scans (the most allowed at {width}×{height}), each "
                "decoding the whole image again (possible decompression bomb; photos have about ten)",
            )
    orientation = _orientation(img)
    if is_jpeg and draft_size is not None:
        draft_w, draft_h = draft_size
        if orientation in _SWAPS_AXES:  # draft works on the stored (sideways) image
            draft_w, draft_h = draft_h, draft_w
        img.draft("RGB", (draft_w, draft_h))
    elif is_jpeg and not convert:  # checking: every byte is still decoded, at 1/8 scale
        img.draft("RGB", (max(1, width // 8), max(1, height // 8)))
    factor = _reduce_factor(img, draft_size, orientation)
    full_convert = convert and factor == 1
    cost = decode_cost(
        img,
        full_size=(width, height),
        convert=full_convert,
        rotated=convert and factor == 1 and orientation in _TRANSPOSE,
    )
    if factor > 1 and img.mode in HIGH_DEPTH_MODES:
        cost += width * height  # the 8-bit copy it is reduced from
    if max_pixels is not None and cost > BYTES_PER_PIXEL_ALLOWED * max_pixels:
        raise UnusableImageError(path, memory_reason(img, (width, height), cost, max_pixels))
    try:
        guard.need(cost)
        img.load()
    except (ImageTooLarge, ImpossibleSize):
        raise
    except MemoryError as exc:
        raise UnusableImageError(path, f"not enough memory to decode this {width}×{height} image") from exc
    except Exception as exc:
        raise UnusableImageError(path, f"truncated or corrupt image data ({exception_text(exc)})") from exc
    if min(width, height) < MIN_SIDE:
        warnings.warn(
            f"{path}: only {width}×{height} pixels (under {MIN_SIDE} on a side); it is used, but it is probably a "
            "thumbnail, an icon or a placeholder rather than a photo: check it",
            SmallImageWarning,
            stacklevel=2,
        )
    try:
        if not convert:  # a corner shows the mode converts; the whole image need not be, to know it is usable
            to_rgb(img.crop((0, 0, min(img.width, 8), min(img.height, 8))))
            return None
        if factor > 1:  # reduced first (the copy loses the EXIF), then turned upright by the orientation read above
            img = reduced(to_8bit(img) if img.mode in HIGH_DEPTH_MODES else img, factor)
            if orientation in _TRANSPOSE:
                img = img.transpose(_TRANSPOSE[orientation])
        else:
            try:
                ImageOps.exif_transpose(img, in_place=True)
            except Exception:  # broken EXIF only loses the rotation, never the photo
                pass
        return to_rgb(img)
    except (ImageTooLarge, ImpossibleSize):
        raise
    except MemoryError as exc:
        raise UnusableImageError(path, f"not enough memory to convert this {width}×{height} image") from exc
    except Exception as exc:
        reason = f"cannot convert colour mode {img.mode!r} to RGB ({exception_text(exc)})"
        raise UnusableImageError(path, reason) from exc


def _reduce_factor(img: Image.Image, draft_size: tuple[int, int] | None, orientation: int) -> int:
    """How much a large non-JPEG photo may shrink (box filter, integer factor up to 8) and stay at least draft_size
    upright: what JPEG draft mode does while decoding, done just after it for the other formats."""
    if draft_size is None or img.format in _JPEG_FORMATS:
        return 1
    draft_w, draft_h = draft_size
    if orientation in _SWAPS_AXES:
        draft_w, draft_h = draft_h, draft_w
    return max(1, min(8, img.width // draft_w, img.height // draft_h))


def check_image(path: str | Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> str | None:
    """The reason the file is unusable, or None when it is usable.

    Every byte of the image is decoded, because truncated files only fail once the missing data is reached; JPEGs
    are decoded at 1/8 scale (the same data, an eighth of the work) and only a corner is converted to RGB, so
    checking a folder costs much less memory and time than loading it.

    Example:
        >>> check_image("photos/cat/07.jpg")  # doctest: +SKIP
        'empty file (0 bytes); the copy or download probably failed'
    """
    check_max_pixels(max_pixels, "check_image")
    try:
        _load(Path(path), max_pixels=max_pixels, draft_size=None, convert=False)
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
    return _decode(Path(name), io.BytesIO(data), len(data), max_pixels=max_pixels, draft_size=draft_size, convert=True)
