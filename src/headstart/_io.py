"""Shared file machinery: where the cache lives, atomic writes that keep the umask's permissions, JSON, hashing.

Every file headstart writes goes through :func:`atomic_path` (or the helpers built on it): a temporary name beside
the target, then a rename, so a reader — or a run killed half-way — sees the old file or the whole new one, never
half of one. Temporaries carry the writer's pid, so :func:`remove_stale_temporaries` can clean what a killed
process left behind without touching a live writer's file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

ENV_VAR = "HEADSTART_CACHE_DIR"
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")


def cache_dir() -> Path:
    """The cache folder: ``$HEADSTART_CACHE_DIR``, else ``$XDG_CACHE_HOME/headstart``, else ``~/.cache/headstart``."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "headstart"


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed over ``path``, on error removed.

    The temporary is created empty with mode 0666 minus the umask (what ``open()`` gives any new file; mkstemp's
    0600 would make results unreadable to a group that shares them).

    Example:
        >>> with atomic_path("plot.png") as tmp:
        ...     fig.savefig(tmp, format="png")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    temporary = _temporary_name(path)
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield temporary
        if durable:
            with open(temporary, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` (a folder already there is moved
    aside first and removed after), on error it is removed. A reader sees the old folder or the new, never half.

    Example:
        >>> with atomic_directory("pets_savedmodel") as tmp:
        ...     shutil.copytree(built, tmp, dirs_exist_ok=True)
    """
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_name(path)
    temporary.mkdir(mode=0o777)
    try:
        yield temporary
        old = None
        if path.exists():
            old = _temporary_name(path)
            os.replace(path, old)
        os.replace(temporary, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one, never half."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`write_bytes_atomic` for UTF-8 text."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Indented JSON (non-ASCII kept), written atomically, ending in a newline."""
    return write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def save_figure(fig: Any, path: str | os.PathLike[str], *, dpi: int = 110) -> Path:
    """Save a matplotlib figure atomically, in the format named by the suffix (PNG by default), on white."""
    path = Path(path)
    with atomic_path(path, durable=False) as temporary:
        fig.savefig(temporary, format=path.suffix[1:].lower() or "png", dpi=dpi, facecolor="white")
    return path


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MB chunks (raises ``OSError`` when it cannot be read)."""
    return hash_file(path, "sha256")


def hash_file(path: str | os.PathLike[str], algorithm: str) -> str:
    """Hex digest of a file's bytes with any :mod:`hashlib` algorithm (``md5`` only where a publisher gives one)."""
    digest = hashlib.new(algorithm, usedforsecurity=algorithm != "md5")
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Remove temporaries for ``path`` left by processes that no longer run (a killed write); returns them."""
    path = Path(path)
    removed = []
    try:
        entries = list(path.parent.glob(f".{glob_escape(path.name)}.*.tmp"))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match and match["name"] == path.name and not _pid_alive(int(match["pid"])):
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(entry)
    return removed


def glob_escape(name: str) -> str:
    """``name`` with glob's special characters taken literally."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def check_output(
    path: str | os.PathLike[str],
    kind: str = "file",
    what: str = "the output",
    *,
    contents: Iterable[str] = (),
    example: str | None = None,
) -> Path:
    """Refuse, before any work starts, an output location that cannot be written; return it as a ``Path``.

    A command that finds out only after minutes of work that it cannot save its result has lost those minutes (and
    may have written half of its files). So every command checks where it writes first, in this one place:

    - ``kind="file"``: not an existing folder or device, not under a file, in a writable folder;
    - ``kind="folder"``: not an existing file, not under a file, writable; none of ``contents`` (the names the
      command writes inside) is an existing folder.

    Writability is asked of the nearest existing folder (the missing ones are created at write time), with
    ``os.access`` and then by creating and removing an empty probe file there, since ``os.access`` says yes to root
    on locations that refuse every write (``/proc``, ``/sys``). Nothing else is created.

    Args:
        what: how the user named the location, e.g. ``"--out"``; the message starts with it.
        example: a file name to suggest inside a folder given where a file is wanted.

    Raises:
        OutputError: one line naming the path, what is wrong and what to do.

    Example:
        >>> check_output("runs/pets.safetensors", "file", "--out")
        PosixPath('runs/pets.safetensors')
    """
    from headstart.errors import OutputError

    if kind not in ("file", "folder"):
        raise ValueError(f"kind must be 'file' or 'folder', not {kind!r}")
    path = Path(path).expanduser()
    named = f"{what} {path}" if what else str(path)

    def refuse(problem: str) -> OutputError:
        return OutputError(f"{named} cannot be written: {problem}.")

    try:
        exists = path.exists() or path.is_symlink()
        if kind == "file" and path.is_dir():
            hint = f", e.g. {path / example}" if example else ""
            raise refuse(f"it is a folder; give the path of a file to write{hint}")
        if kind == "file" and exists and not path.is_file():
            raise refuse("it exists and is not a regular file (a device, pipe or broken link); give a file path")
        if kind == "folder" and exists and not path.is_dir():
            raise refuse("it is a file, not a folder; give a folder (created when missing) or move the file away")
        for name in contents if kind == "folder" and exists else ():
            if (path / name).is_dir():
                raise refuse(
                    f"{path / name} is a folder where a file is written; move it away or choose another folder"
                )
        folder = path if kind == "folder" and exists else path.parent
        while not folder.exists():  # the nearest existing ancestor is where the missing folders would be created
            if folder.is_symlink():
                raise refuse(f"{folder} is a broken link; remove it or choose another location")
            folder = folder.parent
        if not folder.is_dir():
            raise refuse(f"{folder} is a file, not a folder; choose a location inside a folder")
    except OSError as exc:  # a name too long, a permission denied on the way, a link loop
        raise refuse(f"{exc.strerror or exc}; choose another location") from None
    problem = _unwritable(folder)
    if problem:
        raise refuse(f"{folder} is {problem}; choose a writable location (or make it writable)")
    return path


def _unwritable(folder: Path) -> str | None:
    """Why nothing can be created in ``folder`` (None when something can): asked of the file system, not guessed."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return "read-only" if _read_only_mount(folder) else "not writable (permissions)"
    probe = folder / f".headstart-write-check.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        return f"not writable (creating a file there fails: {exc.strerror or exc})"
    with contextlib.suppress(OSError):
        probe.unlink()
    return None


def _read_only_mount(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False
