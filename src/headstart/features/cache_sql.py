"""The SQLite machinery the feature cache runs on: transactions that queue, retries while a file is locked,
chunked ``IN`` queries, vectors as bytes, and whether a claim's process still lives."""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from headstart._io import sha256_file

__all__ = [
    "HOST",
    "Transaction",
    "blob",
    "live",
    "pixel_limit",
    "put_verdicts",
    "rows_in",
    "sha256_or_none",
    "while_locked",
]

#: This machine's name, recorded with each claim (a claim of another machine is judged by its lease only).
HOST = socket.gethostname()


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


def blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()


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
    """``with`` block = one IMMEDIATE transaction on an autocommit connection (so writers queue, not fail)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


def pixel_limit(max_pixels: int | None) -> int:
    """How a decoding verdict's pixel limit is stored (-1: no limit)."""
    return -1 if max_pixels is None else int(max_pixels)


def sha256_or_none(path: str) -> str | None:
    with contextlib.suppress(OSError):
        return sha256_file(path)
    return None
