"""Checking a whole data set before a long run trips over it, and moving the unusable files aside.

:func:`scan` decodes every photo (in threads: Pillow releases the GIL while decoding) and reports each unusable file
with its reason; :func:`quarantine` moves them out of the data set without deleting or overwriting anything, keeping
a log that says why each was moved. :class:`UnusableFile` is how every report (scan, train, evaluate, ``--json``)
names a skipped file.

Example:
    >>> report = scan("photos", progress=True)  # doctest: +SKIP
    >>> [u.reason for u in report.unusable]  # doctest: +SKIP
    ['empty file (0 bytes); the copy or download probably failed']
    >>> quarantine(report, "photos/.quarantine", root="photos")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from headstart._console import progress as progress_bar
from headstart._io import write_json
from headstart.data.images import DEFAULT_MAX_PIXELS, check_image, check_max_pixels, decode_threads, list_image_files
from headstart.errors import DataError

__all__ = ["QUARANTINE_LOG", "ScanReport", "UnusableFile", "quarantine", "scan"]

QUARANTINE_LOG = "QUARANTINE.json"


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
        workers: Decoding threads; default one a CPU core, at most 8.
        progress: Show a progress bar on stderr.

    Returns:
        A :class:`ScanReport`; ``unusable`` is in the same (sorted) order as the files were found.

    Raises:
        DataError: A path does not exist.

    Example:
        >>> report = scan("photos/")
        >>> report.n_files, [u.to_dict() for u in report.unusable]
        (240, [{'path': 'photos/cat/07.jpg', 'reason': 'empty file (0 bytes); the copy or download probably failed'}])
    """
    check_max_pixels(max_pixels, "scan")
    workers = decode_threads(workers, "scan")
    files, ignored = _collect(paths)
    reasons: dict[int, str] = {}
    with (
        progress_bar(progress and bool(files), len(files), "checking images") as advance,
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="headstart-scan") as pool,
    ):
        # A few tasks a thread in flight, not one future per file: memory stays flat however many files there are.
        window = 4 * workers
        pending: dict[Future[str | None], int] = {}
        for index, file in enumerate(files):
            pending[pool.submit(check_image, file, max_pixels=max_pixels)] = index
            if len(pending) >= window:
                _collect_done(pending, reasons, advance, FIRST_COMPLETED)
        _collect_done(pending, reasons, advance, ALL_COMPLETED)
    unusable = [UnusableFile(files[i], reasons[i]) for i in sorted(reasons)]
    return ScanReport(n_files=len(files), unusable=unusable, ignored=ignored)


def _collect_done(pending: dict[Future[str | None], int], reasons: dict[int, str], advance: Any, until: str) -> None:
    done, _ = wait(pending, return_when=until)
    for future in done:
        reason = future.result()
        if reason is not None:
            reasons[pending[future]] = reason
        advance(1)
        del pending[future]


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

    Example:
        >>> moved = quarantine(scan("photos/"), "quarantine/", root="photos/")
        >>> [(str(old), str(new)) for old, new in moved]
        [('photos/cat/07.jpg', 'quarantine/cat/07.jpg')]
    """
    destination = Path(destination)
    plan: list[tuple[UnusableFile, Path]] = []
    for item in report.unusable:
        relative = _relative_to(Path(item.path), Path(root))
        if relative is None:
            raise DataError(f"{item.path}: not below the root folder {root}; pass the folder that was scanned as root.")
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
