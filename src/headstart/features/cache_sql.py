"""The SQLite machinery the feature cache runs on: transactions that queue, retries while a file is locked,
chunked ``IN`` queries, vectors as bytes, and whether a claim's process still lives."""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from headstart._io import sha256_file
from headstart.errors import CacheError

__all__ = [
    "HOST",
    "Transaction",
    "checksum",
    "damaged",
    "decode_row",
    "encode_row",
    "live",
    "pixel_limit",
    "put_verdicts",
    "rows_in",
    "sha256_or_none",
    "while_locked",
]

#: This machine's name, recorded with each claim (a claim of another machine is judged by its lease only).
HOST = socket.gethostname()


CLAIM_COLUMNS = "view, sha256, owner, host, pid, expires_at"


def pair_rows(
    db: sqlite3.Connection, table: str, columns: str, key: str, pairs: Sequence[tuple[str, str]]
) -> Iterator[tuple[Any, ...]]:
    """Rows of ``table`` (keyed by fingerprint, view, sha256) for these ``(sha256, view)`` pairs, one view at a
    time, so that every look-up binds the whole primary key: with the view left out, SQLite can use only the
    fingerprint and reads every stored row of the backbone (a claim then cost 4 ms at 1,000 rows, 227 ms at 64,000)."""
    by_view: dict[str, list[str]] = {}
    for sha, view in pairs:
        by_view.setdefault(view, []).append(sha)
    sql = f"SELECT {columns} FROM {table} WHERE fingerprint=? AND view=? AND sha256 IN ({{marks}})"
    for view, hashes in by_view.items():
        yield from rows_in(db, sql, hashes, key, view)


def rows_in(db: sqlite3.Connection, sql: str, keys: Sequence[str], *first: Any) -> Iterator[tuple[Any, ...]]:
    """Rows of ``sql`` (``?`` for each of ``first``, then ``{marks}`` for a chunk of ``keys``), 500 keys at a time
    (SQLite's limit on bound parameters)."""
    unique = list(dict.fromkeys(keys))
    for start in range(0, len(unique), 500):
        chunk = unique[start : start + 500]
        yield from db.execute(sql.format(marks=",".join("?" * len(chunk))), (*first, *chunk)).fetchall()


def put_verdicts(
    db: sqlite3.Connection, items: Sequence[tuple[str, str]], max_pixels: int | None, decoder: str
) -> None:
    if items and not decoder:
        raise ValueError("A verdict needs the decoder that gave it (decoder='').")
    limit = pixel_limit(max_pixels)
    db.executemany(
        "INSERT OR REPLACE INTO unusable VALUES (?, ?, ?, ?)", [(sha, limit, decoder, reason) for sha, reason in items]
    )


def live(host: str, pid: int, expires_at: float, now: float) -> bool:
    """Whether a claim still holds: its lease runs, and (on this machine) its process exists and is no zombie."""
    if expires_at < now:
        return False
    if host != HOST:
        return True  # another machine's processes cannot be seen from here: the lease decides
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError), open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"  # a zombie: killed, not yet reaped by its parent
    return True


def checksum(key: str, view: str, sha: str, data: bytes) -> int:
    """CRC-32 of a vector's row: its key, view and file hash, then its bytes. A row damaged anywhere (garbage, zeros,
    a vector moved to another key) no longer matches; an all-zero vector does not check as zero."""
    return zlib.crc32(data, zlib.crc32(f"{key}\0{view}\0{sha}\0".encode()))


def encode_row(key: str, view: str, sha: str, vector: np.ndarray) -> tuple[str, str, str, bytes, int]:
    """The ``vectors`` row of one feature vector, with its checksum: the one way a vector enters the cache.

    Raises:
        ValueError: the vector is not one row of finite numbers (NaN or infinite features are never stored).
    """
    array = np.ascontiguousarray(vector, dtype=np.float32)
    if array.ndim != 1 or not np.isfinite(array).all():
        raise ValueError(
            f"Not storing the features of {sha[:12]} ({view}): they are NaN or infinite, or not one row. The "
            "engine that computed them gave a wrong answer; extraction reports such photos instead."
        )
    data = array.tobytes()
    return key, view, sha, data, checksum(key, view, sha, data)


def decode_row(key: str, view: str, sha: str, data: Any, stored: Any) -> np.ndarray | None:
    """The vector a ``vectors`` row holds, or None when the row is damaged (its checksum does not match, or it
    holds something no extraction stored): the one way a vector leaves the cache. (A row that checks holds what
    :func:`encode_row` stored, so finite numbers: no second pass over them here.)"""
    if not isinstance(data, bytes) or not isinstance(stored, int) or len(data) % 4 or not data:
        return None
    if checksum(key, view, sha, data) != stored:
        return None
    return np.frombuffer(data, dtype=np.float32)


def while_locked(action: Callable[[], Any], seconds: float = 120.0) -> Any:
    """Retry what SQLite refuses with 'database is locked' without waiting itself (switching to WAL, creating
    tables) while another process is opening the same new cache."""
    deadline = time.monotonic() + seconds
    delay = 0.01
    while True:
        try:
            return action()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


class Transaction:
    """``with`` block = one IMMEDIATE transaction on an autocommit connection (so writers queue, not fail); SQLite
    finding the file damaged inside it ends in one :class:`~headstart.errors.CacheError` (:func:`damaged`)."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self.db = db
        self.path = path

    def __enter__(self) -> sqlite3.Connection:
        with damaged(self.path):
            self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: Any, exc: BaseException | None, *_: Any) -> None:
        with damaged(self.path):
            if exc_type is None:
                self.db.execute("COMMIT")
                return
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.DatabaseError):
                raise exc


@contextlib.contextmanager
def damaged(path: Path) -> Iterator[None]:
    """SQLite's errors on a damaged file (``database disk image is malformed``, ``file is not a database``) as one
    :class:`~headstart.errors.CacheError` that names the file and what to do (other errors, a lock among them, pass
    unchanged: :func:`while_locked` retries those)."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, sqlite3.OperationalError) and "malformed" not in str(exc) and "corrupt" not in str(exc):
            raise
        raise CacheError(
            f"The feature cache {path} is damaged ({exc}): delete it to start a fresh cache (it holds only "
            "recomputable features) or pass another --cache-dir."
        ) from exc


def pixel_limit(max_pixels: int | None) -> int:
    """How a decoding verdict's pixel limit is stored (-1: no limit)."""
    return -1 if max_pixels is None else int(max_pixels)


def sha256_or_none(path: str) -> str | None:
    with contextlib.suppress(OSError):
        return sha256_file(path)
    return None
