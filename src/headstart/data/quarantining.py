"""Moving users' files aside, the one way every command does it (``scan --quarantine``, ``audit --quarantine``).

A photo moved is a photo that must not be lost, so :func:`quarantine` holds these rules, for every caller:

- **nothing is replaced**: each file is moved with :func:`headstart._io.move_no_replace` (the target is created
  exclusively; a name taken meanwhile, also by another process, gets the next ``-1``, ``-2`` suffix);
- **one log, merged under a lock**: the folder is locked (``flock``) while its ``QUARANTINE.json`` is read, merged
  and written, so two processes moving into one folder wait for each other and the log keeps every entry;
- **the record comes first**: the log lists each file (``"state": "moving"``) before the file is moved, and the
  entry is completed after; a run killed in between leaves an entry the next run settles by what it finds;
- **the target stays inside the folder**: below it by the file's path relative to the data set's root, never the
  log's own name, never through a linked folder that leads out;
- **the folder is not the data**: a destination equal to the data set's root or inside it (other than in a hidden
  folder, which listing skips) is refused before anything moves;
- **a kept file is never taken under another name**: a planned name that is a kept one (its folder compared by
  device and inode, so a folder reached twice or through a link is one folder), or the name a kept symlink
  resolves to, is not moved; another hard link or a symlink to a kept file may go, the kept file stays whole.

Example:
    >>> from headstart.data.scanning import scan
    >>> quarantine(scan("photos/"), "broken/", root="photos/")  # doctest: +SKIP
    [(PosixPath('photos/cat/07.jpg'), PosixPath('broken/cat/07.jpg'))]
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from headstart._io import file_identity, locked_folder, move_no_replace, write_json
from headstart.errors import DataError

__all__ = ["QUARANTINE_LOG", "QuarantineWarning", "check_destination", "quarantine"]

QUARANTINE_LOG = "QUARANTINE.json"


class QuarantineWarning(UserWarning):
    """A planned file was left in place (it is the same file as one that is kept); the message names both."""


def quarantine(
    report: Any,
    destination: str | Path,
    *,
    root: str | Path,
    keep: Iterable[str | Path] = (),
    scanned: Iterable[str | Path] | None = None,
) -> list[tuple[Path, Path]]:
    """Move each unusable file out of the data set, so training sees only good photos and nothing is lost.

    Each file goes to ``destination/<its path relative to root>`` (a file given as the root itself: by its name).
    Nothing is deleted or overwritten: on a name clash the moved file gets a ``-1``, ``-2``, ... suffix.
    ``destination/QUARANTINE.json`` records every moved file with its reason (merged with what is already there,
    under a lock, also when other processes move into the same folder), so the move can be reviewed and undone.
    Files that no longer exist (moved meanwhile by another process) are skipped.

    Args:
        report: From :func:`~headstart.data.scanning.scan` (anything with ``unusable``: items with ``path`` and
            ``reason``).
        destination: Where to move the files; created if missing. Not the data folder itself, nor inside it
            (except in a hidden folder, e.g. ``root/.quarantine``, which listing skips).
        root: The folder the files' relative paths are kept from.
        scanned: The folders (or files) that were scanned, which the destination must stay out of; default
            ``root`` (give them when root is only the common folder of several, e.g. ``scan a/ b/``).
        keep: Files that must stay where they are (a duplicate's kept copy, the test photos): a planned name that
            is one of them, or the name a kept symlink points to, is not moved, with a :class:`QuarantineWarning`.

    Returns:
        ``(old path, new path)`` for each file moved.

    Raises:
        DataError: A file is not below root, the destination is inside root, the existing log is not headstart's
            (nothing is moved then); or a move failed (the files moved before it are in the log).

    Example:
        >>> moved = quarantine(scan("photos/"), "quarantine/", root="photos/")  # doctest: +SKIP
        >>> [(str(old), str(new)) for old, new in moved]  # doctest: +SKIP
        [('photos/cat/07.jpg', 'quarantine/cat/07.jpg')]
    """
    destination, root = Path(destination), Path(root)
    plan = [(item, _relative_name(Path(item.path), root)) for item in report.unusable]
    for given in map(Path, scanned if scanned is not None else [root]):
        check_destination(destination, given)
    if not plan:
        return []
    kept = _kept_entries(keep)
    destination.mkdir(parents=True, exist_ok=True)
    log = destination / QUARANTINE_LOG
    with locked_folder(destination):
        entries = _settled(_read_log(log), destination)
        todo = []
        for item, relative in plan:
            source = Path(item.path)
            if file_identity(source, follow_symlinks=False) is None:
                continue  # gone: moved by another process, or deleted since the scan
            same = kept.get(_entry(source))
            if same is not None:
                warnings.warn(
                    f"{source} was not moved: it is {same}, which is kept (the same name reached through another "
                    "folder, or the file a kept symlink points to)",
                    QuarantineWarning,
                    stacklevel=2,
                )
                continue
            target = next(t for t in _names(destination / relative, destination) if not _taken(t, todo))
            entry = {"path": str(source), "quarantined_as": target.relative_to(destination).as_posix()}
            entries.append({**entry, "reason": item.reason, "state": "moving"})
            todo.append((source, target, entries[-1]))
        if not todo:
            return []
        write_json(log, {"files": entries})  # every record before the first move
        moved: list[tuple[Path, Path]] = []
        try:
            for source, planned, entry in todo:
                target = _move(source, destination, planned, log, len(moved))
                if target is not None:
                    entry["quarantined_as"] = target.relative_to(destination).as_posix()
                    entry["moved_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
                    del entry["state"]
                    moved.append((source, target))
        finally:
            write_json(log, {"files": [e for e in entries if e.get("state") != "moving"]})
    return moved


def _taken(target: Path, todo: list[tuple[Path, Path, Any]]) -> bool:
    return file_identity(target, follow_symlinks=False) is not None or any(t == target for _, t, _ in todo)


def _entry(path: Path) -> tuple[object, str]:
    """A name in a folder, by the folder's device and inode: the same entry however the folder is reached."""
    return file_identity(path.parent) or os.path.abspath(path.parent), path.name


def _kept_entries(keep: Iterable[str | Path]) -> dict[tuple[object, str], Path]:
    """The entries moving would take from a kept file: its own name, and the name a kept symlink resolves to.
    (Another hard link, or a symlink to a kept file, is an entry of its own: moving it leaves the kept file whole.)"""
    kept: dict[tuple[object, str], Path] = {}
    for path in map(Path, keep):
        kept[_entry(path)] = path
        kept.setdefault(_entry(Path(os.path.realpath(path))), path)
    return kept


def _move(source: Path, destination: Path, wanted: Path, log: Path, n_moved: int) -> Path | None:
    """Move one file to wanted, or the next free name (one taken meanwhile); None when the source has gone."""
    try:
        wanted.parent.mkdir(parents=True, exist_ok=True)
        inside = wanted.parent.resolve().is_relative_to(destination.resolve())
    except OSError as exc:
        raise DataError(_cannot(source, wanted, exc, log, n_moved)) from exc
    if not inside:
        raise DataError(
            f"{wanted.parent} leads outside the quarantine folder {destination} (a symlink); remove the link or "
            f"choose another folder. {_so_far(log, n_moved)}"
        )
    for target in _names(wanted, destination):
        try:
            move_no_replace(source, target)
            return target
        except FileExistsError:
            continue
        except FileNotFoundError:
            if file_identity(source, follow_symlinks=False) is None:
                return None
            raise DataError(_cannot(source, target, None, log, n_moved)) from None
        except OSError as exc:
            raise DataError(_cannot(source, target, exc, log, n_moved)) from exc
    return None  # (unreachable: _names never ends)


def _names(wanted: Path, destination: Path) -> Any:
    """wanted, then ``name-1.ext``, ``name-2.ext``, ...: never the log's own name."""
    if wanted != destination / QUARANTINE_LOG:
        yield wanted
    stem, n = wanted.stem, 1
    while True:
        yield wanted.with_name(f"{stem}-{n}{wanted.suffix}")
        n += 1


def _cannot(source: Path, target: Path, exc: OSError | None, log: Path, n_moved: int) -> str:
    why = f" ({exc.strerror or exc})" if exc is not None else ""
    return (
        f"{source}: cannot move it to {target}{why}; check the permissions and free space of both folders. "
        + _so_far(log, n_moved)
    )


def _so_far(log: Path, n_moved: int) -> str:
    if not n_moved:
        return "Nothing was moved."
    return f"The {n_moved} file(s) moved before it are listed in {log}."


def _relative_name(path: Path, root: Path) -> Path:
    """path below root (tried as given, then with symlinks resolved); the file's own name when root is the file."""
    candidates = (
        (Path(os.path.abspath(path)), Path(os.path.abspath(root))),
        (path.parent.resolve() / path.name, root.resolve()),
    )
    for candidate, base in candidates:
        try:
            relative = candidate.relative_to(base)
        except ValueError:
            continue
        return relative if relative.parts else Path(path.name)
    raise DataError(f"{path}: not below the root folder {root}; pass the folder that was scanned as root.")


def check_destination(destination: Path, root: Path) -> None:
    """Refuse a quarantine folder that is the data folder, or inside it where a later listing finds the files again
    (a hidden folder inside is allowed: listing skips it). Commands call it before their work starts.

    Raises:
        DataError: naming the folder, why, and where to move files instead.

    Example:
        >>> check_destination(Path("photos/broken"), Path("photos"))
        Traceback (most recent call last):
        DataError: photos/broken is inside the data folder photos: ...
    """
    base = root if root.is_dir() or not root.exists() else root.parent
    try:
        resolved = Path(os.path.abspath(base)).resolve()
        below = Path(os.path.abspath(destination)).resolve().relative_to(resolved)
    except (ValueError, OSError):
        return
    if resolved == Path(resolved.anchor):
        return  # (files from several trees have the file system's root in common: that is no data folder)
    if any(part.startswith(".") for part in below.parts):
        return  # a hidden folder: listing skips it, so the files are not found again
    where = "the data folder itself" if not below.parts else f"inside the data folder {root}"
    raise DataError(
        f"{destination} is {where}: moved files would stay in the data set (and move again on the next scan). "
        f"Choose a folder outside {root} (or a hidden one inside it, e.g. {base / '.quarantine'})."
    )


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


def _settled(entries: list[dict[str, Any]], destination: Path) -> list[dict[str, Any]]:
    """The log's entries, those a killed run left ``moving`` settled: moved when their target is there, else
    dropped (the file is still at its source; a later scan finds it again)."""
    settled = []
    for entry in entries:
        if isinstance(entry, dict) and entry.get("state") == "moving":
            target = destination / str(entry.get("quarantined_as", ""))
            if not entry.get("quarantined_as") or file_identity(target, follow_symlinks=False) is None:
                continue
            entry = {k: v for k, v in entry.items() if k != "state"}
        settled.append(entry)
    return settled
