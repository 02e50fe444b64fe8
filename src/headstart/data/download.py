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

import http.client
import os
import tarfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from headstart._io import hash_file, write_text_atomic
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
    """One official archive: where it is, what it is called, and how to recognise an intact copy."""

    url: str
    filename: str
    md5: str | None
    size: int | None


_PETS_URL = "https://www.robots.ox.ac.uk/~vgg/data/pets/data/"
_CATSDOGS_URL = "https://download.microsoft.com/download/3/E/1/3E1C3F21-ECDB-4869-8368-6DEBA77B919F/"

DATASETS: dict[str, list[Archive]] = {
    # Checksums as torchvision's OxfordIIITPet has them; sizes as the server reports them.
    "pets": [
        Archive(_PETS_URL + "images.tar.gz", "images.tar.gz", "5c4f3ee8e5d25df40f4fd59a7f44e54c", 791_918_971),
        Archive(_PETS_URL + "annotations.tar.gz", "annotations.tar.gz", "95a8c909bbe2e81eed6a22bccdf3f68f", 19_173_078),
    ],
    # Microsoft publishes no checksum for this zip, so md5 is None: only its size and the CRC of every
    # member (zipfile's testzip) are checked.
    "catsdogs": [
        Archive(_CATSDOGS_URL + "kagglecatsanddogs_5340.zip", "kagglecatsanddogs_5340.zip", None, 824_887_076)
    ],
}

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
            if file.is_file():
                _verify(file, archive, file)
            else:
                _download(url, file, archive, bar, filenames)
            if bar is not None:
                bar.console.print(f"Extracting {archive.filename} into {dest}")
            _extract(file, dest, archive)
            if not extracted.exists():
                raise HeadstartError(
                    f"{file} did not contain {extracted.name}/ as expected. The file is not the official "
                    f"{archive.filename}: delete it and run again."
                )
            write_text_atomic(marker, f"{archive.url}\n")
    return dest / _ROOT[key] if _ROOT[key] != "." else dest


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
    """Check size and md5 (when known) of `path`; the message names `shown`, the file the user will see."""
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
    if archive.md5 is not None:
        actual = hash_file(path, "md5")  # the checksum the publishers give
        if actual != archive.md5.lower():
            raise HeadstartError(f"{shown} has md5 {actual}, expected {archive.md5.lower()}. {advice}")


def _unsafe_name(name: str) -> bool:
    """An absolute path, a Windows drive, or a ``..`` part: a member that could write outside the folder."""
    posix = PurePosixPath(name.replace("\\", "/"))
    return posix.is_absolute() or bool(PureWindowsPath(name).drive) or ".." in posix.parts


def _extract(file: Path, dest: Path, archive: Archive) -> None:
    damaged = f"{file} is damaged or not a complete archive: delete it and run again."
    unsafe = (
        "{member!r} in {file} would be written outside {dest}; refusing to extract it. The file is not the "
        "official archive: delete it and download it again from the official site."
    )
    try:
        if file.name.endswith(".zip"):
            with zipfile.ZipFile(file) as zipped:
                dest_resolved = dest.resolve()
                for info in zipped.infolist():
                    target = (dest / info.filename).resolve()
                    if _unsafe_name(info.filename) or not target.is_relative_to(dest_resolved):
                        raise HeadstartError(unsafe.format(member=info.filename, file=file, dest=dest))
                if archive.md5 is None and zipped.testzip() is not None:
                    raise HeadstartError(damaged)
                zipped.extractall(dest)
        else:
            with tarfile.open(file) as tar:
                check = _tar_filter(file, dest, unsafe)
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(dest, filter=check)
                else:
                    for member in tar:
                        if check(member, str(dest)) is not None:
                            tar.extract(member, dest)
    except (tarfile.ReadError, tarfile.CompressionError, zipfile.BadZipFile, EOFError) as error:
        raise HeadstartError(f"{damaged} ({error})") from None
    except _FilterError as error:  # anything the standard "data" filter refuses (links, devices, ...)
        raise HeadstartError(unsafe.format(member=error.tarinfo.name, file=file, dest=dest) + f" ({error})") from None


def _tar_filter(file: Path, dest: Path, unsafe: str) -> Callable[[tarfile.TarInfo, str], Any]:
    """Refuse unsafe names with our message, then apply tarfile's "data" filter where Python has it."""
    data_filter = getattr(tarfile, "data_filter", None)

    def check(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        if _unsafe_name(member.name) or ((member.issym() or member.islnk()) and _unsafe_name(member.linkname)):
            raise HeadstartError(unsafe.format(member=member.name, file=file, dest=dest))
        if data_filter is not None:
            return data_filter(member, path)
        if not (member.isfile() or member.isdir()):
            return None  # old Python without filters: extract plain files and folders only
        return member

    return check


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
