"""Shared file machinery: where the cache lives, atomic writes that keep the umask's permissions, JSON, hashing.

Every file headstart writes goes through :func:`atomic_path` (or the helpers built on it): a temporary name beside
the target, then a rename, so a reader — or a run killed half-way — sees the old file or the whole new one, never
half of one. Temporaries carry the writer's pid, so :func:`remove_stale_temporaries` can clean what a killed
process left behind without touching a live writer's file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from headstart._data_folder import inside_data

ENV_VAR = "HEADSTART_CACHE_DIR"
#: Where the per-machine store of converted backbones lives when set (tests point it at a private folder).
ENGINE_ENV_VAR = "HEADSTART_ENGINE_DIR"
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")


def cache_dir() -> Path:
    """The cache folder: ``$HEADSTART_CACHE_DIR``, else ``$XDG_CACHE_HOME/headstart``, else ``~/.cache/headstart``."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "headstart"


def engine_dir() -> Path:
    """The per-user store of what is worked out once per machine, shared by every cache folder (``--cache-dir``
    changes :func:`cache_dir`, not this): ``$HEADSTART_ENGINE_DIR``, else ``$XDG_CACHE_HOME/headstart/engines``,
    else ``~/.cache/headstart/engines``; ``cache_dir()/backbones`` when that cannot be written (a read-only home)."""
    if os.environ.get(ENGINE_ENV_VAR):
        folder = Path(os.environ[ENGINE_ENV_VAR]).expanduser()
    else:
        folder = Path(os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")) / "headstart" / "engines"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if os.access(folder, os.W_OK):
            return folder
    except OSError:
        pass
    return cache_dir() / "backbones"


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
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        if exc.filename is None or str(exc.filename) == str(temporary):  # (a failed write() names no file)
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    except Exception as exc:  # a library's own error while writing (torch.save: "file write failed"): asked of the
        diagnosed = write_failure(path, exc)  # file system while the half-written temporary still takes its space
        temporary.unlink(missing_ok=True)
        if diagnosed is not exc:
            raise diagnosed from exc
        raise
    except BaseException:
        temporary.unlink(missing_ok=True)
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
    """Save a matplotlib figure atomically, in the format named by the suffix (PNG by default), on white; every
    text in it drawn literally (class and file names are never read as maths: ``_names.literal_figure``)."""
    import matplotlib

    from headstart._names import literal_figure

    path = Path(path)
    with atomic_path(path, durable=False) as temporary, matplotlib.rc_context({"text.parse_math": False}):
        literal_figure(fig).savefig(temporary, format=path.suffix[1:].lower() or "png", dpi=dpi, facecolor="white")
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
                if entry.is_dir() and not entry.is_symlink():  # a staging folder (files committed together)
                    import shutil

                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                removed.append(entry)
    return removed


def temporary_beside(path: str | os.PathLike[str]) -> Path:
    """A fresh temporary name beside ``path`` (``.<name>.<pid>.<hex>.tmp``), after removing those that dead
    processes left for it; nothing is created. For outputs that must be staged whole before they are committed
    (a folder of files, several files that go together)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    return _temporary_name(path)


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
    data: str | os.PathLike[str] | None = None,
) -> Path:
    """Refuse, before any work starts, an output location that cannot be written; return it as a ``Path``.

    A command that finds out only after minutes of work that it cannot save its result has lost those minutes (and
    may have written half of its files). So every command checks where it writes first, in this one place:

    - ``kind="file"``: not an existing folder or device, not under a file, in a writable folder;
    - ``kind="folder"``: not an existing file, not under a file, writable; none of ``contents`` (the names the
      command writes inside) is an existing folder; not the photos' folder ``data`` nor inside it (:func:`inside_data`).

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
    if kind == "folder" and data is not None and (inside := inside_data(path, Path(data))):
        raise refuse(
            f"it is {inside} {data}, so what it writes there (pictures, JSON) would be read as photos or "
            f"classes the next time {data} is used; choose a folder outside {data}"
        )
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


# ------------------------------------------------------------------------------------- moving users' files safely
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL})


def file_identity(path: str | os.PathLike[str], *, follow_symlinks: bool = True) -> tuple[int, int] | None:
    """``(device, inode)`` of the file ``path`` names (through symlinks unless asked not to), None if there is none.

    Two paths are the same file exactly when their identities are equal: a symlink, a hard link, a folder reached
    twice (``photos`` and ``./photos/../photos``, or through a linked folder) all compare equal to the original.
    """
    try:
        st = os.stat(path, follow_symlinks=follow_symlinks)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def move_no_replace(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Move ``source`` to ``target``, which must not exist: nothing is ever replaced, whoever else writes there.

    The target is created exclusively — a hard link made beside the source's bytes (``link`` fails when the name
    is taken, atomically, also against another process choosing the same name at the same moment), then the source
    name removed; a symlink is moved as the link itself, never the file it points to. Across file systems the bytes
    are copied to a temporary beside the target, flushed, and linked in the same exclusive way before the source
    is removed; where hard links are not supported the target name is reserved by an exclusive create and the
    file renamed onto that reservation. A crash part-way leaves the file under both names, never under none.

    Raises:
        FileExistsError: ``target`` exists (nothing was moved; choose another name).
        FileNotFoundError: ``source`` is gone (another process moved it first).
        OSError: any other failure; ``source`` is still in place.
    """
    source, target = Path(source), Path(target)
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            _copy_across(source, target)
        elif exc.errno in _NO_HARD_LINKS and not isinstance(exc, (FileExistsError, FileNotFoundError)):
            _rename_onto_reservation(source, target)
        else:
            raise
        return
    try:
        os.unlink(source)
    except FileNotFoundError:  # another process moved the same file meanwhile: ours is the copy that stays
        pass


def _rename_onto_reservation(source: Path, target: Path) -> None:
    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # FileExistsError when taken
    try:
        os.rename(source, target)  # onto the name this process has just reserved for itself
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def _copy_across(source: Path, target: Path) -> None:
    import shutil

    if source.is_symlink():
        os.symlink(os.readlink(source), target)  # (creating a symlink never replaces)
        os.unlink(source)
        return
    temporary = _temporary_name(target)
    try:
        shutil.copy2(source, temporary, follow_symlinks=False)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        try:
            os.link(temporary, target, follow_symlinks=False)
        except OSError as exc:
            if isinstance(exc, FileExistsError) or exc.errno not in _NO_HARD_LINKS:
                raise
            _rename_onto_reservation(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    os.unlink(source)


@contextlib.contextmanager
def locked_folder(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (``flock`` on the folder itself, so no lock file is left behind) while
    the block runs; other processes asking for it wait. Used around every read-merge-write of a folder's log."""
    import fcntl

    folder = Path(folder)
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield folder
    finally:
        os.close(fd)  # (closing releases the lock)


# ----------------------------------------------------------------------------------- I/O errors, said in one line
_IO_ADVICE = {
    errno.ENOSPC: "no space left on the device; free some space there (`df -h {folder}`) or choose another location",
    errno.EDQUOT: "the disk quota is exceeded; free some space or choose another location",
    errno.EFBIG: "the file would be larger than this system allows a file to be (`ulimit -f`); choose another location",
    errno.EROFS: "the file system is read-only; choose a writable location",
    errno.EACCES: "permission denied; check the permissions of {folder} (or choose another location)",
    errno.EPERM: "operation not permitted; check the permissions of {folder} (or choose another location)",
    errno.EIO: "an input/output error (a failing disk or a lost network mount); check the device",
}
_SQLITE_ERRNO = {"database or disk is full": errno.ENOSPC, "attempt to write a readonly database": errno.EROFS}
_SQLITE_FILE_ERRORS = (*_SQLITE_ERRNO, "disk i/o error", "unable to open database file")


def io_error_message(exc: BaseException) -> str | None:
    """One line for a file-system failure anywhere in ``exc``'s chain (disk full, read-only, permission denied,
    quota, file too large, I/O error), naming the path and what to do; None when ``exc`` is no such failure.

    The one place these failures are put into words: the CLI prints this line and exits 2 whatever raised it
    (Python's own ``open``/``write``, SQLite's "database or disk is full", a library that wrapped the ``OSError``).

    Example:
        >>> io_error_message(OSError(errno.ENOSPC, "No space left on device", "runs/pets.safetensors"))
        'runs/pets.safetensors: cannot write it: no space left on the device; free some space there (`df -h runs`) or choose another location'
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        code, path = _failure(current)
        if code in _IO_ADVICE:
            where = Path(path) if path else None
            folder = where.parent if where is not None and str(where.parent) not in ("", ".") else Path(".")
            advice = _IO_ADVICE[code].format(folder=folder)
            verb = "cannot write it" if code not in (errno.EACCES, errno.EPERM, errno.EIO) else "cannot use it"
            return f"{where}: {verb}: {advice}" if where is not None else f"a file could not be written: {advice}"
        current = current.__cause__ or current.__context__
    return None


def _failure(exc: BaseException) -> tuple[int | None, str | None]:
    if isinstance(exc, OSError):
        return exc.errno, None if exc.filename is None else os.fsdecode(exc.filename)
    text = str(exc).lower()
    if type(exc).__module__ == "sqlite3" and any(phrase in text for phrase in _SQLITE_FILE_ERRORS):
        database = cache_dir() / "features.sqlite"  # (the one database the commands write)
        code = next((c for phrase, c in _SQLITE_ERRNO.items() if phrase in text), None)
        if code is None:  # "disk I/O error", "unable to open database file": the file system says why
            diagnosed = write_failure(database, exc)
            code = diagnosed.errno if isinstance(diagnosed, OSError) else None
        return code, str(database) if code else None
    if "no space left on device" in text:  # a library that kept only the words (torch's stream writer)
        return errno.ENOSPC, None
    return None, None


def write_failure(path: str | os.PathLike[str], exc: BaseException) -> BaseException:
    """The ``OSError`` (with its errno and ``path``) behind a library's failure to write ``path`` when the library
    kept no errno (OpenVINO's "basic_ios::clear: iostream error"), asked of the file system at once, while the
    half-written file still takes its space: a full disk, a read-only mount, a folder not writable. ``exc`` itself
    when none of these is the cause. Use as ``raise write_failure(path, exc) from exc``."""
    folder = Path(path).parent
    try:
        st = os.statvfs(folder)
    except OSError:
        return exc
    if st.f_flag & os.ST_RDONLY:
        return OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
    if st.f_bavail * st.f_frsize < 1 << 20 or (st.f_files and st.f_favail == 0):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    if not os.access(folder, os.W_OK | os.X_OK):
        return OSError(errno.EACCES, os.strerror(errno.EACCES), str(path))
    if _over_size_limit(Path(path)):
        return OSError(errno.EFBIG, os.strerror(errno.EFBIG), str(path))
    return exc


def _over_size_limit(path: Path) -> bool:
    """Whether the file (or SQLite's journal beside it) has reached the process's file-size limit (`ulimit -f`)."""
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    except (ImportError, OSError, ValueError):
        return False
    if limit == resource.RLIM_INFINITY:
        return False
    for candidate in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-journal")):
        try:
            if candidate.stat().st_size >= limit - (64 << 10):
                return True
        except OSError:
            continue
    return False


def umask_mode() -> int:
    """The mode a new file gets here: 0666 minus the process's umask (read without changing it, where the system
    says it: changing and restoring it would race with other threads creating files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask
