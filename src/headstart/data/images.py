"""Reading photos: every file becomes an upright 8-bit RGB image, or an error that says why it can't.

Folders of real photos hold surprises: greyscale scans, 16-bit PNGs, CMYK JPEGs from print shops, PNGs renamed
``.jpg``, half-copied files, zero-byte files and decompression bombs. Everything downstream (feature extraction,
fine-tuning, the server) goes through :func:`load_image`, so all of that is handled once, here, and a damaged file
is reported by name and reason (:class:`~headstart.errors.UnusableImageError`) instead of crashing a long run.

Example:
    >>> from headstart.data.images import load_image, scan
    >>> img = load_image("photos/cat/001.jpg", draft_size=(256, 256))  # doctest: +SKIP
    >>> report = scan("photos", progress=True)  # doctest: +SKIP
    >>> [u.reason for u in report.unusable]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from headstart._io import write_json
from headstart.errors import DataError, UnusableImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "ScanReport",
    "UnusableFile",
    "check_image",
    "is_image_file",
    "list_image_files",
    "load_image",
    "quarantine",
    "scan",
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

QUARANTINE_LOG = "QUARANTINE.json"

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


def _check_max_pixels(max_pixels: int | None, caller: str) -> None:
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1):
        raise ValueError(
            f"The 'max_pixels' parameter of {caller} must be a positive int or None (no limit). Got {max_pixels!r}."
        )


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
    _check_max_pixels(max_pixels, "load_image")
    if draft_size is not None and not (
        len(draft_size) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in draft_size)
    ):
        raise ValueError(
            f"The 'draft_size' parameter of load_image must be None or (width, height) positive ints. "
            f"Got {draft_size!r}."
        )
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


@dataclass(frozen=True)
class UnusableFile:
    """One file that can't be used, and why."""

    path: Path
    reason: str

    def to_dict(self) -> dict[str, str]:
        """``{"path": …, "reason": …}``: how every report (scan, train, evaluate, --json) lists a skipped file."""
        return {"path": str(self.path), "reason": self.reason}


@dataclass
class ScanReport:
    """What :func:`scan` found: how many images it decoded, which are unusable, which files it ignored."""

    n_files: int
    unusable: list[UnusableFile] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form, for ``--json`` output and logs."""
        return {
            "n_files": self.n_files,
            "unusable": [u.to_dict() for u in self.unusable],
            "ignored": [str(p) for p in self.ignored],
        }


def _collect(paths: Path | str | Sequence[Path | str]) -> tuple[list[Path], list[Path]]:
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    images: list[Path] = []
    ignored: list[Path] = []
    for entry in paths:
        entry = Path(entry)
        if entry.is_dir():
            found, skipped = list_image_files(entry)
            images.extend(found)
            ignored.extend(skipped)
        elif entry.exists() or entry.is_symlink():
            images.append(entry)  # a file named explicitly is always checked, whatever its extension
        else:
            raise DataError(f"{entry}: no such file or folder; check the path (it is relative to {Path.cwd()}).")
    return list(dict.fromkeys(images)), list(dict.fromkeys(ignored))


def scan(
    paths: Path | str | Sequence[Path | str],
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
    progress: bool = False,
) -> ScanReport:
    """Decode every image and report the unusable ones, before a long run trips over them.

    Folders are walked with :func:`list_image_files`; files named directly are checked whatever their extension.
    Decoding runs in threads, because Pillow releases the GIL while it decodes.

    Args:
        paths: Files and/or folders.
        max_pixels: As in :func:`load_image`.
        workers: Decoding threads; default ``min(8, os.cpu_count())``.
        progress: Show a progress bar on stderr.

    Returns:
        A :class:`ScanReport`; ``unusable`` is in the same (sorted) order as the files were found.

    Raises:
        DataError: A path does not exist.
    """
    _check_max_pixels(max_pixels, "scan")
    if workers is None:
        workers = min(8, os.cpu_count() or 1)
    elif isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"The 'workers' parameter of scan must be an int >= 1 or None. Got {workers!r}.")
    files, ignored = _collect(paths)
    reasons: dict[Path, str] = {}

    def run(advance: Any = None) -> None:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="headstart-scan") as pool:
            futures = {pool.submit(check_image, f, max_pixels=max_pixels): f for f in files}
            for future in as_completed(futures):
                reason = future.result()
                if reason is not None:
                    reasons[futures[future]] = reason
                if advance is not None:
                    advance()

    if progress and files:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("checking images"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=Console(stderr=True)) as bar:
            task = bar.add_task("scan", total=len(files))
            run(lambda: bar.advance(task))
    else:
        run()
    unusable = [UnusableFile(f, reasons[f]) for f in files if f in reasons]
    return ScanReport(n_files=len(files), unusable=unusable, ignored=ignored)


def _free_name(target: Path) -> Path:
    """target itself if free, else ``name-1.ext``, ``name-2.ext``, ... so nothing is ever overwritten."""
    if not target.exists() and not target.is_symlink():
        return target
    n = 1
    while True:
        candidate = target.with_name(f"{target.stem}-{n}{target.suffix}")
        if not candidate.exists() and not candidate.is_symlink():
            return candidate
        n += 1


def _read_log(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    try:
        data = json.loads(log.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(
            f"{log}: cannot read the quarantine log ({exc}); expected JSON written by headstart. "
            "Move it aside or choose another destination."
        ) from exc
    if not isinstance(data, dict) or not isinstance(data.get("files"), list):
        raise DataError(
            f"{log}: expected a JSON object with a 'files' list (written by headstart); "
            "move it aside or choose another destination."
        )
    return data["files"]


def _relative_to(path: Path, root: Path) -> Path | None:
    """path relative to root, trying the paths as given, then with symlinks resolved (e.g. /tmp on macOS)."""
    candidates = (
        (Path(os.path.abspath(path)), Path(os.path.abspath(root))),
        (path.parent.resolve() / path.name, root.resolve()),
    )
    for candidate, base in candidates:
        try:
            return candidate.relative_to(base)
        except ValueError:
            continue
    return None


def quarantine(report: ScanReport, destination: str | Path, *, root: str | Path) -> list[tuple[Path, Path]]:
    """Move each unusable file out of the data set, so training sees only good photos and nothing is lost.

    Each file goes to ``destination/<its path relative to root>``. Nothing is deleted or overwritten: on a name
    clash the moved file gets a ``-1``, ``-2``, ... suffix. ``destination/QUARANTINE.json`` records every moved
    file with its reason (appended to when it already exists), so the move can be reviewed and undone. Files
    that no longer exist are skipped.

    Args:
        report: From :func:`scan`.
        destination: Where to move the files; created if missing. Keep it outside ``root`` (or hidden, e.g.
            ``root/.quarantine``), otherwise later scans will find the files again.
        root: The folder the files' relative paths are kept from.

    Returns:
        ``(old path, new path)`` for each file moved.

    Raises:
        DataError: A file is not below root, or the existing log is not headstart's (nothing is moved then); or a
            move failed (the files moved before it are already in the log).
    """
    destination = Path(destination)
    plan: list[tuple[UnusableFile, Path]] = []
    for item in report.unusable:
        relative = _relative_to(Path(item.path), Path(root))
        if relative is None:
            raise DataError(
                f"{item.path}: not below the root folder {root}; pass the folder that was scanned as root."
            )
        plan.append((item, relative))
    log = destination / QUARANTINE_LOG
    entries = _read_log(log)

    moved: list[tuple[Path, Path]] = []
    try:
        for item, relative in plan:
            source = Path(item.path)
            if not source.exists() and not source.is_symlink():
                continue
            target = _free_name(destination / relative)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                shutil.move(os.fspath(source), os.fspath(target))
            except OSError as exc:
                raise DataError(
                    f"{source}: cannot move it to {target} ({exc.strerror or exc}); check the permissions of both "
                    f"folders. Files moved so far are listed in {log}."
                ) from exc
            moved.append((source, target))
            entries.append(
                {
                    "path": str(source),
                    "quarantined_as": target.relative_to(destination).as_posix(),
                    "reason": item.reason,
                    "moved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                }
            )
    finally:
        if moved:
            destination.mkdir(parents=True, exist_ok=True)
            write_json(log, {"files": entries})
    return moved
