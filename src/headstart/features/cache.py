"""The feature cache: one SQLite file of feature vectors, keyed by content, backbone and view, safe to share.

A vector's key is the SHA-256 of the photo file's bytes, the backbone's fingerprint (architecture, exact weights,
preprocessing) at a precision, and the *view*: ``orig`` (the photo) or ``mirror`` (its mirror image). Every command
reads and writes the same single-view vectors; mirror-averaged features are the mean of the two views, so a view
one command computed is never computed again by another. Renamed or copied photos are not recomputed and edited
ones are. File hashes are memoised on (path, size, mtime), so a re-run does not read every photo again.

Safe to share: WAL mode, a retry on "database is locked" and one IMMEDIATE transaction per batch let several
processes write at once, and a run killed half-way keeps every batch it committed. Before computing a batch a
process *claims* its rows (:meth:`FeatureCache.claim`, in one transaction that also sees what others have stored);
other processes skip claimed rows and wait for them, and take over claims whose process is gone or whose lease ran
out. So concurrent extractions of overlapping photos compute each one once.

The cache keeps only *permanent* verdicts about a file's bytes: that the decoder (its rules' version, the pixel
limit, the decoding size) refuses this content. A failure of the moment (out of memory, a read error, a model's
preprocessing that breaks) is reported for the run that met it and never stored.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from headstart._io import cache_dir, sha256_file
from headstart.errors import CacheError

if TYPE_CHECKING:
    from headstart.features.backbones import BackboneSpec

__all__ = ["CLAIM_SECONDS", "SCHEMA_VERSION", "Claimed", "FeatureCache"]

#: The layout of the cache file (``PRAGMA user_version``). 0/1: one table of vectors per backbone key, mirror-averaged
#: rows under their own key, and failure reasons keyed only by (file hash, max pixels). 2: vectors per view, verdicts
#: keyed by what produced them, claims.
SCHEMA_VERSION = 2

#: How long a claim holds without news from its process (each committed batch renews a process's claims). A claim
#: of a process that is gone (same machine) is taken over at once.
CLAIM_SECONDS = 120.0

#: Producer recorded for the verdicts of a version-1 cache: the decoder that gave them is unknown, so they are kept
#: but not trusted (such a file is decoded once more, and then its verdict is stored under today's decoder).
LEGACY_DECODER = "legacy (headstart cache version 1)"

#: What a version-1 verdict says when it was a failure of the moment, not a fact about the file's bytes.
_LEGACY_TRANSIENT = (
    "cannot preprocess:",
    "not enough memory",
    "MemoryError",
    "RecursionError",
    "cannot read the file",
    "file not found",
    "permission denied",
    "[Errno",
)

_TABLES = (
    """CREATE TABLE IF NOT EXISTS vectors (
        fingerprint TEXT NOT NULL, view TEXT NOT NULL, sha256 TEXT NOT NULL, vector BLOB NOT NULL,
        PRIMARY KEY (fingerprint, view, sha256)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS backbones (
        fingerprint TEXT PRIMARY KEY, dim INTEGER NOT NULL, spec TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS file_hashes (
        path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS speed (
        fingerprint TEXT PRIMARY KEY, images_per_second REAL NOT NULL, n_images INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS unusable (
        sha256 TEXT NOT NULL, max_pixels INTEGER NOT NULL, decoder TEXT NOT NULL, reason TEXT NOT NULL,
        PRIMARY KEY (sha256, max_pixels, decoder)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS claims (
        fingerprint TEXT NOT NULL, view TEXT NOT NULL, sha256 TEXT NOT NULL,
        owner TEXT NOT NULL, host TEXT NOT NULL, pid INTEGER NOT NULL, expires_at REAL NOT NULL,
        PRIMARY KEY (fingerprint, view, sha256)) WITHOUT ROWID""",
)

_HOST = socket.gethostname()
_CLAIM_COLUMNS = "view, sha256, owner, host, pid, expires_at"

Pair = tuple[str, str]  # (sha256, view)


@dataclass
class Claimed:
    """What :meth:`FeatureCache.claim` found for each ``(sha256, view)`` asked for."""

    mine: list[Pair] = field(default_factory=list)  # claimed now: compute them
    stored: list[Pair] = field(default_factory=list)  # already in the cache (another process computed them)
    busy: list[Pair] = field(default_factory=list)  # claimed by another live process: wait for them
    refused: dict[str, str] = field(default_factory=dict)  # sha256 -> the decoder's verdict, stored by another


class FeatureCache:
    """SQLite store of feature vectors, ``(fingerprint, view, sha256) -> float32 vector``, plus a file-hash memo,
    the decoder's verdicts on unusable files, and the claims of running extractions.

    Opening a cache file written by an older headstart migrates it in place (once, in one transaction): single-view
    vectors are kept as view ``orig``, mirror-averaged ones are dropped (their mirror views are computed again
    when a command needs them), failures of the moment are dropped from the verdicts.

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
        db = self._connection()
        if _while_locked(lambda: db.execute("PRAGMA user_version").fetchone()[0]) != SCHEMA_VERSION:
            _while_locked(self._set_up)

    def _set_up(self) -> None:
        """Create the tables, or migrate an older layout: in one transaction, so a second process opening the same
        old file at the same time waits and then finds it done."""
        with self._connect() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise CacheError(
                    f"The feature cache {self.path} was written by a newer headstart (layout {version}; this one "
                    f"reads {SCHEMA_VERSION}). Upgrade headstart, or pass another --cache-dir."
                )
            if version == SCHEMA_VERSION:
                return
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            legacy = []
            if "features" in tables:
                db.execute("ALTER TABLE features RENAME TO features_v1")
                legacy.append("features_v1")
            if "unusable" in tables:
                db.execute("ALTER TABLE unusable RENAME TO unusable_v1")
                legacy.append("unusable_v1")
            for statement in _TABLES:
                db.execute(statement)
            if legacy:
                flip_keys = _import_v1(
                    db, "main", features="features_v1" in legacy, unusable="unusable_v1" in legacy, suffix="_v1"
                )
                db.executemany("DELETE FROM backbones WHERE fingerprint=?", [(k,) for k in flip_keys])
                db.execute("DELETE FROM speed WHERE fingerprint NOT IN (SELECT fingerprint FROM backbones)")
                for table in legacy:
                    db.execute(f"DROP TABLE {table}")
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

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

    def close(self) -> None:
        """Close this thread's connection (the last one to close folds the write-ahead log back into the file)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def register(self, spec: BackboneSpec, precision: str) -> str:
        """Record the backbone and return the cache key for its single-view features at this precision (the same
        key whether or not the spec averages mirror images: the views are stored, not their mean)."""
        spec = spec.with_flip_average(False)
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
        with self._connect() as db:  # (one transaction: every chunk sees the same state)
            yield from _rows_in(db, sql, keys, *first)

    def get_many(self, key: str, hashes: Sequence[str], view: str = "orig") -> dict[str, np.ndarray]:
        """Cached vectors of one view for those of ``hashes`` that are present."""
        sql = "SELECT sha256, vector FROM vectors WHERE fingerprint=? AND view=? AND sha256 IN ({marks})"
        return {sha: np.frombuffer(blob, dtype=np.float32) for sha, blob in self._select_in(sql, hashes, key, view)}

    def has_views(self, key: str, hashes: Sequence[str], view: str = "mirror") -> bool:
        """Whether every one of ``hashes`` has this view cached (cheap: counts, reads no vector)."""
        sql = "SELECT COUNT(*) FROM vectors WHERE fingerprint=? AND view=? AND sha256 IN ({marks})"
        return sum(n for (n,) in self._select_in(sql, hashes, key, view)) == len(set(hashes))

    def put_many(self, key: str, items: Sequence[tuple[str, np.ndarray]], view: str = "orig") -> None:
        """Store vectors of one view in one transaction: all of them become visible together, or none."""
        rows = [(key, view, sha, _blob(v)) for sha, v in items]
        with self._connect() as db:
            db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?)", rows)

    def get_unusable(self, hashes: Sequence[str], max_pixels: int | None, decoder: str) -> dict[str, str]:
        """The verdicts ``decoder`` gave on these contents under this pixel limit (so re-runs skip them fast)."""
        sql = "SELECT sha256, reason FROM unusable WHERE max_pixels=? AND decoder=? AND sha256 IN ({marks})"
        return dict(self._select_in(sql, hashes, _pixel_limit(max_pixels), decoder))

    def put_unusable(self, items: Sequence[tuple[str, str]], max_pixels: int | None, decoder: str) -> None:
        """Record that ``decoder`` refuses these contents: only permanent verdicts about a file's bytes belong here."""
        if items:
            with self._connect() as db:
                _put_verdicts(db, items, max_pixels, decoder)

    # -- claims: concurrent extractions compute each row once
    def claim(
        self,
        key: str,
        pairs: Sequence[Pair],
        *,
        owner: str,
        max_pixels: int | None,
        decoder: str,
        seconds: float = CLAIM_SECONDS,
    ) -> Claimed:
        """Claim the ``(sha256, view)`` rows not stored, not refused and not claimed by another live process, in
        one transaction that sees every batch other processes committed before it.

        A claim whose process is gone (on this machine) or whose lease ran out is taken over.
        """
        out = Claimed()
        if not pairs:
            return out
        hashes = [sha for sha, _ in pairs]
        now = time.time()
        with self._connect() as db:
            stored = {(sha, view) for view, sha in _pair_rows(db, "vectors", "view, sha256", key, pairs)}
            out.refused = dict(
                _rows_in(
                    db,
                    "SELECT sha256, reason FROM unusable WHERE max_pixels=? AND decoder=? AND sha256 IN ({marks})",
                    hashes,
                    _pixel_limit(max_pixels),
                    decoder,
                )
            )
            held = {
                (sha, view): (who, host, pid, expires)
                for view, sha, who, host, pid, expires in _pair_rows(db, "claims", _CLAIM_COLUMNS, key, pairs)
            }
            for pair in dict.fromkeys(pairs):
                claim = held.get(pair)
                if pair in stored:
                    out.stored.append(pair)
                elif pair[0] in out.refused:
                    continue
                elif claim is not None and claim[0] != owner and _live(*claim[1:], now):
                    out.busy.append(pair)
                else:
                    out.mine.append(pair)
            db.executemany(
                "INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(key, view, sha, owner, _HOST, os.getpid(), now + seconds) for sha, view in out.mine],
            )
        return out

    def busy(self, key: str, pairs: Sequence[Pair], *, owner: str) -> set[Pair]:
        """Those of ``pairs`` not stored yet and still claimed by another live process (a read, no transaction
        held)."""
        if not pairs:
            return set()
        now = time.time()
        db = self._connection()
        stored = {(sha, view) for view, sha in _pair_rows(db, "vectors", "view, sha256", key, pairs)}
        held = {
            (sha, view)
            for view, sha, who, host, pid, expires in _pair_rows(db, "claims", _CLAIM_COLUMNS, key, pairs)
            if who != owner and _live(host, pid, expires, now)
        }
        return {pair for pair in pairs if pair in held and pair not in stored}

    def commit_batch(
        self,
        key: str,
        vectors: Sequence[tuple[str, str, np.ndarray]],
        *,
        owner: str,
        verdicts: Sequence[tuple[str, str]] = (),
        released: Sequence[Pair] = (),
        max_pixels: int | None = None,
        decoder: str = "",
        seconds: float = CLAIM_SECONDS,
    ) -> None:
        """One batch's work in one transaction: its vectors and verdicts stored, its claims let go, and this
        owner's other claims renewed (it is alive and making progress)."""
        with self._connect() as db:
            db.executemany(
                "INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?)",
                [(key, view, sha, _blob(v)) for sha, view, v in vectors],
            )
            _put_verdicts(db, verdicts, max_pixels, decoder)
            db.executemany(
                "DELETE FROM claims WHERE fingerprint=? AND view=? AND sha256=? AND owner=?",
                [(key, view, sha, owner) for sha, view in released],
            )
            db.execute("UPDATE claims SET expires_at=? WHERE owner=?", (time.time() + seconds, owner))

    def release(self, owner: str) -> None:
        """Let go of every claim of ``owner`` (the end of an extraction, finished or failed)."""
        with self._connect() as db:
            db.execute("DELETE FROM claims WHERE owner=?", (owner,))

    def purge_claims(self) -> int:
        """Remove claims of processes that are gone or whose lease ran out; return how many."""
        now = time.time()
        with self._connect() as db:
            rows = db.execute("SELECT DISTINCT host, pid, expires_at FROM claims").fetchall()
            dead = [(host, pid, expires) for host, pid, expires in rows if not _live(host, pid, expires, now)]
            before = db.total_changes
            db.executemany("DELETE FROM claims WHERE host=? AND pid=? AND expires_at=?", dead)
            return db.total_changes - before

    @staticmethod
    def new_owner() -> str:
        """A name for one extraction's claims (process id + random: two calls in one process are two owners)."""
        return f"{_HOST}:{os.getpid()}:{secrets.token_hex(6)}"

    def record_speed(self, key: str, images_per_second: float, n_images: int) -> None:
        """Remember the throughput of the largest extraction so far (what `compare` reports from the cache)."""
        with self._connect() as db:
            row = db.execute("SELECT n_images FROM speed WHERE fingerprint=?", (key,)).fetchone()
            if row is None or n_images >= row[0]:
                db.execute("INSERT OR REPLACE INTO speed VALUES (?, ?, ?)", (key, images_per_second, n_images))

    def speed(self, key: str) -> float | None:
        row = self._connection().execute("SELECT images_per_second FROM speed WHERE fingerprint=?", (key,)).fetchone()
        return None if row is None else float(row[0])

    def merge_from(self, other: str | os.PathLike[str]) -> int:
        """Copy every feature (and verdict) of another cache file into this one; return vectors added.

        This is how caches extracted on separate machines come together: rows are keyed by content, backbone and
        view, so merging is idempotent and never overwrites. A cache of an older layout is read as it is (its
        single-view vectors come over; the file itself is not changed).
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
            tables = {name for (name,) in db.execute("SELECT name FROM other.sqlite_master WHERE type='table'")}
            if "vectors" in tables:
                db.execute("INSERT OR IGNORE INTO vectors SELECT * FROM other.vectors")
                db.execute("INSERT OR IGNORE INTO backbones SELECT * FROM other.backbones")
                db.execute("INSERT OR IGNORE INTO unusable SELECT * FROM other.unusable")
            elif "features" in tables:
                flip_keys = set(_import_v1(db, "other", features=True, unusable="unusable" in tables))
                rows = db.execute("SELECT * FROM other.backbones").fetchall()
                db.executemany(
                    "INSERT OR IGNORE INTO backbones VALUES (?, ?, ?)", [r for r in rows if r[0] not in flip_keys]
                )
            else:
                raise sqlite3.DatabaseError("no feature table in it")
            db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise CacheError(f"{source} is not a headstart feature cache ({exc}).") from exc
        finally:
            if attached:
                db.execute("DETACH DATABASE other")
        return self.count() - before

    def count(self, key: str | None = None, view: str | None = None) -> int:
        """Vectors stored (of one backbone key, of one view)."""
        where, args = [], []
        for column, value in (("fingerprint", key), ("view", view)):
            if value is not None:
                where.append(f"{column}=?")
                args.append(value)
        sql = "SELECT COUNT(*) FROM vectors" + (" WHERE " + " AND ".join(where) if where else "")
        with self._connect() as db:
            return int(db.execute(sql, args).fetchone()[0])

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


def _import_v1(db: sqlite3.Connection, schema: str, *, features: bool, unusable: bool, suffix: str = "") -> list[str]:
    """Copy what a version-1 cache's tables (in ``schema``, named ``features``/``unusable`` + ``suffix``) hold that
    is still right into this cache's tables; return the keys of its mirror-averaged features (not copied)."""
    flip_keys, single_keys = [], []
    for key, spec in db.execute(f"SELECT fingerprint, spec FROM {schema}.backbones").fetchall():
        try:
            flip = bool(json.loads(spec).get("flip_average"))
        except (ValueError, AttributeError):
            flip = True  # unreadable: not trusted
        (flip_keys if flip else single_keys).append(key)
    if features:
        db.executemany(
            f"INSERT OR IGNORE INTO vectors SELECT fingerprint, 'orig', sha256, vector "
            f"FROM {schema}.features{suffix} WHERE fingerprint=?",
            [(k,) for k in single_keys],
        )
    if unusable:
        rows = db.execute(f"SELECT sha256, max_pixels, reason FROM {schema}.unusable{suffix}").fetchall()
        db.executemany(
            "INSERT OR IGNORE INTO unusable VALUES (?, ?, ?, ?)",
            [
                (sha, limit, LEGACY_DECODER, reason)
                for sha, limit, reason in rows
                if not any(mark in reason for mark in _LEGACY_TRANSIENT)
            ],
        )
    return flip_keys


def _pair_rows(
    db: sqlite3.Connection, table: str, columns: str, key: str, pairs: Sequence[Pair]
) -> Iterator[tuple[Any, ...]]:
    """Rows of ``table`` (keyed by fingerprint, view, sha256) for these ``(sha256, view)`` pairs, one view at a
    time, so that every look-up binds the whole primary key: with the view left out, SQLite can use only the
    fingerprint and reads every stored row of the backbone (a claim then cost 4 ms at 1,000 rows, 227 ms at 64,000)."""
    by_view: dict[str, list[str]] = {}
    for sha, view in pairs:
        by_view.setdefault(view, []).append(sha)
    sql = f"SELECT {columns} FROM {table} WHERE fingerprint=? AND view=? AND sha256 IN ({{marks}})"
    for view, hashes in by_view.items():
        yield from _rows_in(db, sql, hashes, key, view)


def _rows_in(db: sqlite3.Connection, sql: str, keys: Sequence[str], *first: Any) -> Iterator[tuple[Any, ...]]:
    """Rows of ``sql`` (``?`` for each of ``first``, then ``{marks}`` for a chunk of ``keys``), 500 keys at a time
    (SQLite's limit on bound parameters)."""
    unique = list(dict.fromkeys(keys))
    for start in range(0, len(unique), 500):
        chunk = unique[start : start + 500]
        yield from db.execute(sql.format(marks=",".join("?" * len(chunk))), (*first, *chunk)).fetchall()


def _put_verdicts(
    db: sqlite3.Connection, items: Sequence[tuple[str, str]], max_pixels: int | None, decoder: str
) -> None:
    if items and not decoder:
        raise ValueError("A verdict needs the decoder that gave it (decoder='').")
    limit = _pixel_limit(max_pixels)
    db.executemany(
        "INSERT OR REPLACE INTO unusable VALUES (?, ?, ?, ?)", [(sha, limit, decoder, reason) for sha, reason in items]
    )


def _live(host: str, pid: int, expires_at: float, now: float) -> bool:
    """Whether a claim still holds: its lease runs, and (on this machine) its process exists and is no zombie."""
    if expires_at < now:
        return False
    if host != _HOST:
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


def _blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()


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
    with contextlib.suppress(OSError):
        return sha256_file(path)
    return None
