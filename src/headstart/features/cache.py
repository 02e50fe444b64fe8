"""The feature cache: one SQLite file of feature vectors, keyed by content and backbone, safe to share.

A vector's key is the SHA-256 of the photo file's bytes and the backbone's fingerprint (architecture, exact weights,
preprocessing) at a precision, so renamed or copied photos are not recomputed and edited ones are. WAL mode, a retry
on "database is locked" and one IMMEDIATE transaction per batch let several processes write at once; a run killed
half-way keeps every batch it committed. File hashes are memoised on (path, size, mtime), so a re-run does not read
every photo again.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from headstart._io import cache_dir, sha256_file
from headstart.errors import CacheError

if TYPE_CHECKING:
    from headstart.features.backbones import BackboneSpec

__all__ = ["FeatureCache"]


class FeatureCache:
    """SQLite store of feature vectors: ``(fingerprint, sha256) -> float32 vector``, plus a file-hash memo.

    Args:
        path: the database file; its folder is created. Defaults to ``<cache dir>/features.sqlite``.

    Example:
        >>> cache = FeatureCache("features.sqlite")
        >>> cache.count()
        0
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else cache_dir() / "features.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        schema = (
            """
            CREATE TABLE IF NOT EXISTS features (
                fingerprint TEXT NOT NULL, sha256 TEXT NOT NULL, vector BLOB NOT NULL,
                PRIMARY KEY (fingerprint, sha256)) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS backbones (
                fingerprint TEXT PRIMARY KEY, dim INTEGER NOT NULL, spec TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS file_hashes (
                path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS speed (
                fingerprint TEXT PRIMARY KEY, images_per_second REAL NOT NULL, n_images INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS unusable (
                sha256 TEXT NOT NULL, max_pixels INTEGER NOT NULL, reason TEXT NOT NULL,
                PRIMARY KEY (sha256, max_pixels)) WITHOUT ROWID;
            """
        )
        _while_locked(lambda: self._connection().executescript(schema))

    def _connect(self) -> _Transaction:
        return _Transaction(self._connection())

    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(self.path, timeout=120, isolation_level=None, check_same_thread=True)
                _while_locked(lambda: db.execute("PRAGMA journal_mode=WAL"))
                db.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.DatabaseError as exc:
                raise CacheError(
                    f"The feature cache {self.path} cannot be opened ({exc}). Delete it to start a fresh cache "
                    "(it only holds recomputable features) or pass another --cache-dir."
                ) from exc
            self._local.db = db
        return db

    def register(self, spec: BackboneSpec, precision: str) -> str:
        """Record the backbone and return the cache key for its features at this precision."""
        key = f"{spec.fingerprint}-{precision}"
        with self._connect() as db:
            row = db.execute("SELECT dim FROM backbones WHERE fingerprint=?", (key,)).fetchone()
            if row is not None and row[0] != spec.num_features:
                raise CacheError(
                    f"The cache {self.path} holds {row[0]}-d features for {spec.name} but the model gives "
                    f"{spec.num_features}-d. Delete the cache file or pass another --cache-dir."
                )
            if row is not None:  # known: no write (every predict call comes through here)
                return key
            db.execute(
                "INSERT OR REPLACE INTO backbones VALUES (?, ?, ?)",
                (key, spec.num_features, json.dumps({**spec.to_dict(), "precision": precision})),
            )
        return key

    def _select_in(self, sql: str, keys: Sequence[str], *first: Any) -> Iterator[tuple[Any, ...]]:
        """Rows of ``sql`` (``?`` for each of ``first``, then ``{marks}`` for a chunk of ``keys``), 500 keys at a time
        (SQLite's limit on bound parameters)."""
        unique = list(dict.fromkeys(keys))
        with self._connect() as db:
            for start in range(0, len(unique), 500):
                chunk = unique[start : start + 500]
                yield from db.execute(sql.format(marks=",".join("?" * len(chunk))), (*first, *chunk)).fetchall()

    def get_many(self, key: str, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        """Cached vectors for those of ``hashes`` that are present."""
        sql = "SELECT sha256, vector FROM features WHERE fingerprint=? AND sha256 IN ({marks})"
        return {sha: np.frombuffer(blob, dtype=np.float32) for sha, blob in self._select_in(sql, hashes, key)}

    def put_many(self, key: str, items: Sequence[tuple[str, np.ndarray]]) -> None:
        """Store vectors in one transaction: all of them become visible together, or none."""
        rows = [(key, sha, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for sha, v in items]
        with self._connect() as db:
            db.executemany("INSERT OR REPLACE INTO features VALUES (?, ?, ?)", rows)

    def get_unusable(self, hashes: Sequence[str], max_pixels: int | None) -> dict[str, str]:
        """Reasons recorded for contents that failed to decode under this pixel limit (so re-runs skip them fast)."""
        sql = "SELECT sha256, reason FROM unusable WHERE max_pixels=? AND sha256 IN ({marks})"
        return dict(self._select_in(sql, hashes, _pixel_limit(max_pixels)))

    def put_unusable(self, items: Sequence[tuple[str, str]], max_pixels: int | None) -> None:
        if not items:
            return
        limit = _pixel_limit(max_pixels)
        with self._connect() as db:
            db.executemany("INSERT OR REPLACE INTO unusable VALUES (?, ?, ?)", [(sha, limit, r) for sha, r in items])

    def record_speed(self, key: str, images_per_second: float, n_images: int) -> None:
        """Remember the throughput of the largest extraction so far (what `compare` reports from the cache)."""
        with self._connect() as db:
            row = db.execute("SELECT n_images FROM speed WHERE fingerprint=?", (key,)).fetchone()
            if row is None or n_images >= row[0]:
                db.execute("INSERT OR REPLACE INTO speed VALUES (?, ?, ?)", (key, images_per_second, n_images))

    def speed(self, key: str) -> float | None:
        with self._connect() as db:
            row = db.execute("SELECT images_per_second FROM speed WHERE fingerprint=?", (key,)).fetchone()
        return None if row is None else float(row[0])

    def merge_from(self, other: str | os.PathLike[str]) -> int:
        """Copy every feature (and known-unusable verdict) of another cache file into this one; return rows added.

        This is how caches extracted on separate machines come together: rows are keyed by content and backbone,
        so merging is idempotent and never overwrites.
        """
        source = Path(other)
        if not source.is_file():
            raise CacheError(f"No cache file at {source}.")
        db = self._connection()
        before = self.count()
        attached = False
        try:
            db.execute("ATTACH DATABASE ? AS other", (str(source),))
            attached = True
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT OR IGNORE INTO features SELECT * FROM other.features")
            db.execute("INSERT OR IGNORE INTO backbones SELECT * FROM other.backbones")
            db.execute("INSERT OR IGNORE INTO unusable SELECT * FROM other.unusable")
            db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise CacheError(f"{source} is not a headstart feature cache ({exc}).") from exc
        finally:
            if attached:
                db.execute("DETACH DATABASE other")
        return self.count() - before

    def count(self, key: str | None = None) -> int:
        with self._connect() as db:
            if key is None:
                return int(db.execute("SELECT COUNT(*) FROM features").fetchone()[0])
            return int(db.execute("SELECT COUNT(*) FROM features WHERE fingerprint=?", (key,)).fetchone()[0])

    # -- file hashes: stat-keyed memo so a re-run does not read every photo again
    def file_hashes(self, paths: Sequence[Path]) -> list[str | None]:
        """SHA-256 of each file (None when it cannot be read), memoised on (path, size, mtime)."""
        resolved = [str(Path(p).resolve()) for p in paths]
        sql = "SELECT path, size, mtime_ns, sha256 FROM file_hashes WHERE path IN ({marks})"
        known = {path: (size, mtime, sha) for path, size, mtime, sha in self._select_in(sql, resolved)}
        out: list[str | None] = []
        fresh: list[tuple[str, int, int, str]] = []
        for path in resolved:
            try:
                st = os.stat(path)
            except OSError:
                out.append(None)
                continue
            memo = known.get(path)
            if memo is not None and memo[0] == st.st_size and memo[1] == st.st_mtime_ns:
                out.append(memo[2])
                continue
            sha = _sha256_or_none(path)
            out.append(sha)
            if sha is not None:
                fresh.append((path, st.st_size, st.st_mtime_ns, sha))
        if fresh:
            with self._connect() as db:
                db.executemany("INSERT OR REPLACE INTO file_hashes VALUES (?, ?, ?, ?)", fresh)
        return out


def _while_locked(action: Callable[[], Any], seconds: float = 120.0) -> Any:
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


class _Transaction:
    """``with`` block = one IMMEDIATE transaction on an autocommit connection (so writers queue, not fail)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


def _pixel_limit(max_pixels: int | None) -> int:
    """How a decoding verdict's pixel limit is stored (-1: no limit)."""
    return -1 if max_pixels is None else int(max_pixels)


def _sha256_or_none(path: str) -> str | None:
    try:
        return sha256_file(path)
    except OSError:
        return None
