"""Fetch the official archives of the two pet data sets, verify them and extract them safely.

Only the standard library is used, so that downloading works before anything else is set up. Each archive
is written to ``<file>.part`` and renamed once complete and verified, so a crash never leaves a
plausible-looking file; an interrupted download resumes where it stopped when the server allows it; an
archive already extracted (marked by ``.headstart-extracted-<archive>``) is neither fetched nor extracted
again. Offline, point ``base_url`` (or ``HEADSTART_DOWNLOAD_BASE_URL``) at a mirror or a ``file://``
folder holding the archives.

Example::

    from headstart.data.datasets import load_dataset
    from headstart.data.download import download_dataset

    root = download_dataset("pets", "data/oxford-iiit-pet")
    train = load_dataset(root, split="train")
"""

from __future__ import annotations

import filecmp
import http.client
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from headstart._io import hash_file, move_no_replace, temporary_beside, write_text_atomic
from headstart._validation import fail
from headstart._version import __version__
from headstart.errors import HeadstartError

__all__ = ["BASE_URL_ENV", "DATASETS", "Archive", "download_dataset"]

BASE_URL_ENV = "HEADSTART_DOWNLOAD_BASE_URL"
_TIMEOUT_S = 30
_CHUNK = 1 << 20
# Python versions without extraction filters (before 3.10.12 / 3.11.4) have no FilterError to catch.
_FilterError: Any = getattr(tarfile, "FilterError", ())


@dataclass(frozen=True)
class Archive:
    """One official archive: where it is, what it is called, how to recognise an intact copy, and how much it may
    unpack to (``max_bytes`` in total, ``max_files`` members): more is refused before it fills the disk."""

    url: str
    filename: str
    md5: str | None
    size: int | None
    sha256: str | None = None
    max_bytes: int = 1 << 30
    max_files: int = 50_000


_PETS_URL = "https://www.robots.ox.ac.uk/~vgg/data/pets/data/"
_CATSDOGS_URL = "https://download.microsoft.com/download/3/E/1/3E1C3F21-ECDB-4869-8368-6DEBA77B919F/"

DATASETS: dict[str, list[Archive]] = {
    # SHA-256 and sizes as TensorFlow Datasets pins them (tensorflow_datasets/datasets/oxford_iiit_pet/checksums.tsv:
    # 67195c5e… 791,918,971 bytes, 52425fb6… 19,173,078 bytes); md5 as torchvision's OxfordIIITPet has them. The
    # images unpack to about 790 MB (JPEGs barely compress) in 7,393 files; the annotations to tens of MB in about
    # 22,000 (trimaps, XML, macOS "._" files).
    "pets": [
        Archive(
            _PETS_URL + "images.tar.gz",
            "images.tar.gz",
            "5c4f3ee8e5d25df40f4fd59a7f44e54c",
            791_918_971,
            sha256="67195c5e1c01f1ab5f9b6a5d22b8c27a580d896ece458917e61d459337fa318d",
            max_bytes=1 << 30,
            max_files=10_000,
        ),
        Archive(
            _PETS_URL + "annotations.tar.gz",
            "annotations.tar.gz",
            "95a8c909bbe2e81eed6a22bccdf3f68f",
            19_173_078,
            sha256="52425fb6de5c424942b7626b428656fcbd798db970a937df61750c0f1d358e91",
            max_bytes=256 << 20,
            max_files=40_000,
        ),
    ],
    # Microsoft publishes no checksum for this zip, and none is known offline (TensorFlow Datasets pins only its
    # predecessor, kagglecatsanddogs_3367a.zip). So it is held to what can be checked without one: its size, the CRC
    # of every member, where every member goes (PetImages/Cat, PetImages/Dog, or a plain file at the top: the
    # readme and the licence; anything else is refused as not the official archive), 25,002 photos unpacking to
    # about 830 MB, and a compression ratio photos have. The SHA-256 it had is recorded beside it (the marker file).
    "catsdogs": [
        Archive(
            _CATSDOGS_URL + "kagglecatsanddogs_5340.zip",
            "kagglecatsanddogs_5340.zip",
            None,
            824_887_076,
            max_bytes=3 << 29,
            max_files=30_000,
        )
    ],
}
#: Members compressing better than this (above 1 MB unpacked) are refused: photos do not, bombs do.
MAX_RATIO = 100
#: Where the members of an archive without a checksum may go: (top folder, allowed sub-folders).
_LAYOUT = {"kagglecatsanddogs_5340.zip": ("PetImages", ("Cat", "Dog"))}

# What each archive puts in the destination, to tell a complete extraction from a deleted one.
_EXTRACTS_TO = {
    "images.tar.gz": "images",
    "annotations.tar.gz": "annotations",
    "kagglecatsanddogs_5340.zip": "PetImages",
}
# The folder, relative to the destination, to pass to load_dataset.
_ROOT = {"pets": ".", "catsdogs": "PetImages"}


def download_dataset(name: str, destination: str | Path, *, base_url: str | None = None, progress: bool = True) -> Path:
    """Fetch the official archives (resuming/ skipping what is already there and checks), verify, extract;
    return the data set root to pass to load_dataset.

    Args:
        name: ``"pets"`` (Oxford-IIIT Pet: images.tar.gz and annotations.tar.gz) or ``"catsdogs"``
            (Microsoft's Kaggle Cats and Dogs zip).
        destination: folder to download and extract into; created if needed.
        base_url: replaces everything before the file name in the official URLs, e.g. a mirror or
            ``file:///data/archives/``; a plain folder path works too. Defaults to the environment variable
            ``HEADSTART_DOWNLOAD_BASE_URL``, then to the official sites.
        progress: show a progress bar (bytes) on stderr.

    Returns:
        `destination` for ``"pets"``, ``destination/PetImages`` for ``"catsdogs"``.

    Raises:
        HeadstartError: the download failed (with the offline alternatives), the archive is damaged or does
            not match its checksum, or it holds unsafe paths.
    """
    key = name.lower().strip() if isinstance(name, str) else name
    if key not in DATASETS:
        fail(
            "name",
            "download_dataset",
            "a str among {" + ", ".join(repr(known) for known in sorted(DATASETS)) + "}",
            name,
        )
    archives = DATASETS[key]
    dest = Path(destination).expanduser().absolute()
    if dest.exists() and not dest.is_dir():
        raise HeadstartError(f"{dest} is a file; pass a folder (new or existing) to download {key} into.")
    dest.mkdir(parents=True, exist_ok=True)
    base = _base_url(base_url)
    filenames = ", ".join(archive.filename for archive in archives)

    with ExitStack() as stack:
        bar = stack.enter_context(_Progress()) if progress else None
        for archive in archives:
            marker = dest / f".headstart-extracted-{archive.filename}"
            extracted = dest / _EXTRACTS_TO.get(archive.filename, ".")
            if marker.is_file() and extracted.exists():
                continue
            file = dest / archive.filename
            url = base + archive.filename if base else archive.url
            fetched = not file.is_file()
            if fetched:
                _download(url, file, archive, bar, filenames)
            else:
                _verify(file, archive, file)
            if bar is not None:
                bar.console.print(f"Extracting {archive.filename} into {dest}")
            try:
                if not _extracts_to(file, extracted.relative_to(dest)):
                    raise HeadstartError(
                        f"{file} does not contain {extracted.name}/ as expected. The file is not the official "
                        f"{archive.filename}: delete it and run again."
                    )
                _extract(file, dest, archive)
            except HeadstartError:
                if fetched:  # bytes fetched in this run that are not the archive: not kept
                    file.unlink(missing_ok=True)
                raise
            write_text_atomic(marker, f"{archive.url}\nsha256 {hash_file(file, 'sha256')}\n")
    return dest / _ROOT[key] if _ROOT[key] != "." else dest


def _extracts_to(file: Path, folder: Path) -> bool:
    """Whether the archive's first member lies in ``folder`` (read from its first header, before anything else)."""
    try:
        if file.name.endswith(".zip"):
            with zipfile.ZipFile(file) as zipped:
                names = zipped.namelist()
        else:
            with tarfile.open(file) as tar:
                first = tar.next()
                names = [first.name] if first is not None else []
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error) as error:
        raise HeadstartError(f"{_damaged(file)} ({error})") from None
    return str(folder) == "." or any(PurePosixPath(n).parts[:1] == folder.parts[:1] for n in names)


def _base_url(base_url: str | None) -> str | None:
    base = base_url if base_url is not None else os.environ.get(BASE_URL_ENV)
    if not base:
        return None
    if "://" not in base:
        base = Path(base).expanduser().absolute().as_uri()
    return base.rstrip("/") + "/"


def _offline_hint(filenames: str) -> str:
    return (
        "Offline alternatives: download the archives yourself and pass the extracted folder as DATA, or set "
        f"{BASE_URL_ENV} to a mirror / file:// folder holding {filenames}."
    )


def _download(url: str, file: Path, archive: Archive, bar: _Progress | None, filenames: str) -> None:
    """Stream `url` into ``<file>.part`` (resuming it when the server allows), verify, then rename."""
    part = file.with_name(file.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": f"headstart/{__version__}"})
    if offset and url.startswith(("http://", "https://")):
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # the .part is not a prefix the server knows: start afresh
            part.unlink()
            return _download(url, file, archive, bar, filenames)
        raise HeadstartError(
            f"Could not download {url}: HTTP {error.code} {error.reason}. {_offline_hint(filenames)}"
        ) from error
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", error)
        raise HeadstartError(f"Could not download {url}: {reason}. {_offline_hint(filenames)}") from None

    with response:
        if offset and getattr(response, "status", None) != 206:
            offset = 0  # the server ignored the Range header: the whole file is coming
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        total = offset + expected if expected is not None else archive.size
        task = bar.add(archive.filename, total, offset) if bar is not None else None
        received = 0
        try:
            with part.open("ab" if offset else "wb") as out:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    if bar is not None:
                        bar.advance(task, len(chunk))
        except (OSError, http.client.HTTPException) as error:
            raise HeadstartError(
                f"The download of {url} stopped after {offset + received} bytes: {error}. Run again to resume "
                f"it. {_offline_hint(filenames)}"
            ) from None
    if expected is not None and received != expected:
        raise HeadstartError(
            f"The download of {url} was cut short ({received} of {expected} bytes). Run again to resume it. "
            f"{_offline_hint(filenames)}"
        )
    try:
        _verify(part, archive, file)
    except HeadstartError:
        part.unlink(missing_ok=True)  # never resume from bytes known to be wrong
        raise
    os.replace(part, file)


def _verify(path: Path, archive: Archive, shown: Path) -> None:
    """Check size and SHA-256 (else md5, when known) of `path`; the message names `shown`, the file the user will
    see."""
    size = path.stat().st_size
    fresh = path != shown
    advice = (
        f"The download was deleted; run again to fetch it afresh. If it fails again, download {archive.filename} "
        f"yourself from {archive.url}."
        if fresh
        else "It is damaged or not the official archive: delete it and run again."
    )
    if archive.size is not None and size != archive.size:
        raise HeadstartError(f"{shown} has {size} bytes, expected {archive.size}. {advice}")
    if archive.sha256 is not None:
        actual = hash_file(path, "sha256")
        if actual != archive.sha256.lower():
            raise HeadstartError(f"{shown} has SHA-256 {actual}, expected {archive.sha256.lower()}. {advice}")
    elif archive.md5 is not None:
        actual = hash_file(path, "md5")  # the checksum the publishers give
        if actual != archive.md5.lower():
            raise HeadstartError(f"{shown} has md5 {actual}, expected {archive.md5.lower()}. {advice}")


def _unsafe_name(name: str) -> bool:
    """An absolute path, a Windows drive, or a ``..`` part: a member that could write outside the folder."""
    posix = PurePosixPath(name.replace("\\", "/"))
    return posix.is_absolute() or bool(PureWindowsPath(name).drive) or ".." in posix.parts


def _extract(file: Path, dest: Path, archive: Archive) -> None:
    """Unpack ``file`` into a hidden staging folder inside ``dest``, checking every member on the way (where it
    goes, how much it unpacks to), then move the files into ``dest`` without replacing any: all or nothing, and
    the staging folder removed either way (nothing is left behind by a refused archive)."""
    staging = temporary_beside(dest / f".headstart-extracting-{archive.filename}")
    staging.mkdir()
    try:
        try:
            if file.name.endswith(".zip"):
                _unzip(file, staging, dest, archive)
            else:
                _untar(file, staging, dest, archive)
        except (tarfile.ReadError, tarfile.CompressionError, zipfile.BadZipFile, EOFError, zlib.error) as error:
            raise HeadstartError(f"{_damaged(file)} ({error})") from None
        except _FilterError as error:  # anything the standard "data" filter refuses (links, devices, ...)
            raise HeadstartError(_unsafe(error.tarinfo.name, file, dest) + f" ({error})") from None
        _place(staging, dest, file)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _damaged(file: Path) -> str:
    return f"{file} is damaged or not a complete archive: delete it and run again."


def _unsafe(member: str, file: Path, dest: Path) -> str:
    return (
        f"{member!r} in {file} would be written outside {dest}; refusing to extract it. The file is not the "
        "official archive: delete it and download it again from the official site."
    )


def _not_official(file: Path, why: str) -> HeadstartError:
    return HeadstartError(
        f"{file} {why}: it is not the official archive; nothing was extracted. Delete it and download it again "
        "from the official site."
    )


class _Budget:
    """Counts what an archive unpacks to, refusing it once past its limits (before the member is written)."""

    def __init__(self, file: Path, dest: Path, archive: Archive) -> None:
        self.file, self.dest, self.archive = file, dest, archive
        self.files = self.bytes = 0

    def admit(self, name: str, size: int, packed: int | None = None) -> None:
        if _unsafe_name(name):
            raise HeadstartError(_unsafe(name, self.file, self.dest))
        layout = _LAYOUT.get(self.archive.filename)
        parts = PurePosixPath(name).parts
        if (
            layout is not None
            and parts
            and not (len(parts) == 1 or (parts[0] == layout[0] and (len(parts) == 1 or parts[1] in layout[1])))
        ):
            raise _not_official(self.file, f"holds {name!r}, outside {layout[0]}/{{{','.join(layout[1])}}}/")
        self.files += 1
        self.bytes += max(0, size)
        if self.files > self.archive.max_files:
            raise _not_official(self.file, f"holds more than {self.archive.max_files:,} files")
        if self.bytes > self.archive.max_bytes:
            raise _not_official(
                self.file, f"unpacks to more than {self.archive.max_bytes / 2**20:,.0f} MB (possible zip bomb)"
            )
        if packed is not None and size > 1 << 20 and size > MAX_RATIO * max(1, packed):
            raise _not_official(
                self.file, f"holds {name!r}, {size:,} bytes packed into {packed:,} (a ratio photos never have: a bomb)"
            )


def _unzip(file: Path, staging: Path, dest: Path, archive: Archive) -> None:
    budget = _Budget(file, dest, archive)
    with zipfile.ZipFile(file) as zipped:
        infos = zipped.infolist()
        for info in infos:  # (every header is checked before the first byte is written)
            budget.admit(info.filename, info.file_size, info.compress_size)
        if archive.sha256 is None and archive.md5 is None and zipped.testzip() is not None:
            raise HeadstartError(_damaged(file))
        zipped.extractall(staging, members=infos)  # (each member is read up to its declared size, CRC-checked)


def _untar(file: Path, staging: Path, dest: Path, archive: Archive) -> None:
    budget = _Budget(file, dest, archive)
    data_filter = getattr(tarfile, "data_filter", None)

    def check(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        budget.admit(member.name, member.size)
        if (member.issym() or member.islnk()) and _unsafe_name(member.linkname):
            raise HeadstartError(_unsafe(member.name, file, dest))
        if data_filter is not None:
            return data_filter(member, path)
        return member if member.isfile() or member.isdir() else None  # (old Python: plain files and folders)

    with tarfile.open(file) as tar:
        for member in tar:  # streamed: a member is checked (size, name) before it is read, never the whole index first
            kept = check(member, str(staging))
            if kept is not None:
                tar.extract(kept, staging, **({"filter": "fully_trusted"} if data_filter is not None else {}))


def _place(staging: Path, dest: Path, file: Path) -> None:
    """Move the unpacked files into dest, replacing nothing: a file already there with the same bytes (an earlier,
    interrupted extraction) stays; any other is a conflict, and then nothing is moved."""
    moves: list[tuple[Path, Path]] = []
    conflicts: list[Path] = []
    for path in sorted(staging.rglob("*")):
        if path.is_dir() and not path.is_symlink():
            continue
        target = dest / path.relative_to(staging)
        blocked = next((p for p in target.parents if p != dest and p.is_relative_to(dest) and _not_folder(p)), None)
        if blocked is not None:
            conflicts.append(blocked)
        elif os.path.lexists(target):
            if not (target.is_file() and path.is_file() and filecmp.cmp(path, target, shallow=False)):
                conflicts.append(target)
        else:
            moves.append((path, target))
    if conflicts:
        raise HeadstartError(
            f"{len(conflicts)} file(s) already in {dest} would be replaced by those of {file.name} (e.g. "
            f"{conflicts[0]}); nothing was extracted. Move them away, or give an empty folder, and run again."
        )
    for path, target in moves:
        target.parent.mkdir(parents=True, exist_ok=True)
        move_no_replace(path, target)


def _not_folder(path: Path) -> bool:
    return os.path.lexists(path) and (path.is_symlink() or not path.is_dir())


class _Progress:
    """A rich progress bar of bytes on stderr; imported only when asked for."""

    def __enter__(self) -> _Progress:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.console = Console(stderr=True)
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
        )
        self._progress.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._progress.__exit__(*exc_info)

    def add(self, description: str, total: int | None, completed: int) -> Any:
        return self._progress.add_task(description, total=total, completed=completed)

    def advance(self, task: Any, amount: int) -> None:
        self._progress.advance(task, amount)
