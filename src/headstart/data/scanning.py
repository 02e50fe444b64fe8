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

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headstart._console import progress as progress_bar
from headstart._io import file_identity
from headstart.data.images import DEFAULT_MAX_PIXELS, check_image, check_max_pixels, decode_threads, is_image_file
from headstart.data.quarantining import QUARANTINE_LOG, quarantine  # noqa: F401  (their earlier home)
from headstart.data.walking import walk_files
from headstart.errors import DataError

__all__ = ["ScanReport", "UnusableFile", "scan"]  # (quarantine and QUARANTINE_LOG: headstart.data.quarantining)


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


def _files(paths: Sequence[Path], ignored: list[Path] | None = None) -> Iterator[Path]:
    """The files to check, as they are found: each folder walked (:func:`~headstart.data.walking.walk_files`, in
    ``list_image_files``' order), each file named checked whatever its extension; the non-image files of the folders
    go to ``ignored``.

    Nothing is checked twice, and nothing is listed: a folder reached again (given twice, or inside one given, or
    through a linked folder) is walked once, under the first name it was found by, and a file named is left out of
    the walks that reach it again (and the other way round). An entry is a name in a folder: a symlink or a hard
    link beside its file is an entry of its own, reported (and moved) on its own.
    """
    walked: set[object] = set()  # (one identity a folder, not a photo)
    named: set[object] = set()

    def enter(folder: str) -> bool:
        identity = file_identity(folder) or folder
        if identity in walked:
            return False
        walked.add(identity)
        return True

    for entry in paths:
        if entry.is_dir():
            for path, image in walk_files(entry, text_order=False, enter=enter):
                if not image:
                    if ignored is not None:
                        ignored.append(path)
                elif not named or (file_identity(path.parent) or path.parent, path.name) not in named:
                    yield path
        else:  # a file named explicitly is always checked, whatever its extension
            folder = file_identity(entry.parent)
            if is_image_file(entry.name) and (folder or entry.parent) in walked:
                continue  # (a walk reached it already)
            identity = (folder or entry.parent, entry.name)
            if identity not in named:
                named.add(identity)
                yield entry


def scan(
    paths: Path | str | Sequence[Path | str],
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
    progress: bool = False,
) -> ScanReport:
    """Decode every image and report the unusable ones, before a long run trips over them.

    Folders are walked as :func:`list_image_files` lists them, lazily: the photos are never listed, so memory stays
    flat however many there are. Files named directly are checked whatever their extension. Decoding runs in
    threads, because Pillow releases the GIL while it decodes.

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
    given = [Path(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    for entry in given:
        if not (entry.exists() or entry.is_symlink()):
            raise DataError(f"{entry}: no such file or folder; check the path (it is relative to {Path.cwd()}).")
    total = sum(1 for _ in _files(given)) if progress else 0  # (a first walk, counting only: for the bar)
    ignored: list[Path] = []
    reasons: dict[int, tuple[Path, str]] = {}
    n_files = 0
    with (
        progress_bar(progress and bool(total), total, "checking images") as advance,
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="headstart-scan") as pool,
    ):
        # A few tasks a thread in flight, not one future per file: memory stays flat however many files there are.
        window = 4 * workers
        pending: dict[Future[str | None], tuple[int, Path]] = {}
        for n_files, file in enumerate(_files(given, ignored), start=1):
            pending[pool.submit(check_image, file, max_pixels=max_pixels)] = (n_files, file)
            if len(pending) >= window:
                _collect_done(pending, reasons, advance, FIRST_COMPLETED)
        _collect_done(pending, reasons, advance, ALL_COMPLETED)
    unusable = [UnusableFile(*reasons[i]) for i in sorted(reasons)]
    return ScanReport(n_files=n_files, unusable=unusable, ignored=ignored)


def _collect_done(
    pending: dict[Future[str | None], tuple[int, Path]],
    reasons: dict[int, tuple[Path, str]],
    advance: Any,
    until: str,
) -> None:
    done, _ = wait(pending, return_when=until)
    for future in done:
        reason = future.result()
        if reason is not None:
            index, file = pending[future]
            reasons[index] = (file, reason)
        advance(1)
        del pending[future]
