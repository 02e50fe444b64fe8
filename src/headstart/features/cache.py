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
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from headstart._io import cache_dir
from headstart.errors import CacheError
from headstart.features.cache_schema import SCHEMA_VERSION, import_v1_verdicts, set_up
from headstart.features.cache_sql import (
    CLAIM_COLUMNS,
    HOST,
    Transaction,
    damaged,
    decode_row,
    encode_row,
    live,
    pair_rows,
    pixel_limit,
    put_verdicts,
    rows_in,
    sha256_or_none,
    while_locked,
)

if TYPE_CHECKING:
    from headstart.features.backbones import BackboneSpec

__all__ = ["CLAIM_SECONDS", "SCHEMA_VERSION", "Claimed", "FeatureCache"]

#: How long a claim holds without news from its process (each committed batch renews a process's claims). A claim
#: of a process that is gone (same machine) is taken over at once.
CLAIM_SECONDS = 120.0

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
        with damaged(self.path):
            if while_locked(lambda: db.execute("PRAGMA user_version").fetchone()[0]) != SCHEMA_VERSION:
                while_locked(self._set_up)

    def _set_up(self) -> None:
        """Create the tables, or migrate an older layout (:mod:`headstart.features.cache_schema`): in one
        transaction, so a second process opening the same old file at the same time waits and then finds it done."""
        with self._connect() as db:
            set_up(db, self.path)

    def _connect(self) -> Transaction:
        return Transaction(self._connection(), self.path)

    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(self.path, timeout=120, isolation_level=None, check_same_thread=True)
                while_locked(lambda: db.execute("PRAGMA journal_mode=WAL"))
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

    def register(self, spec: BackboneSpec, precision: str, *, preprocessing: str = "") -> str:
        """Record the backbone and return the cache key for its single-view features at this precision (the same
        key whether or not the spec averages mirror images: the views are stored, not their mean), computed from
        photos preprocessed by ``preprocessing`` (its identity, e.g. ``cropbox1``; empty: timm's own transform)."""
        spec = spec.with_flip_average(False)
        key = f"{spec.fingerprint}-{preprocessing}-{precision}" if preprocessing else f"{spec.fingerprint}-{precision}"
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
                (
                    key,
                    spec.num_features,
                    json.dumps({**spec.to_dict(), "precision": precision, "preprocessing": preprocessing or "timm"}),
                ),
            )
        return key

    def _select_in(self, sql: str, keys: Sequence[str], *first: Any) -> Iterator[tuple[Any, ...]]:
        with self._connect() as db:  # (one transaction: every chunk sees the same state)
            yield from rows_in(db, sql, keys, *first)

    def get_many(self, key: str, hashes: Sequence[str], view: str = "orig") -> dict[str, np.ndarray]:
        """Cached vectors of one view for those of ``hashes`` that are present and sound (:meth:`iter_vectors`)."""
        return dict(self.iter_vectors(key, hashes, view))

    def iter_vectors(self, key: str, hashes: Sequence[str], view: str = "orig") -> Iterator[tuple[str, np.ndarray]]:
        """``(sha256, vector)`` of those of ``hashes`` whose vector of one view is present and sound, as they are
        read (500 at a time): a caller that writes them into its own matrix never holds them twice.

        Every row is checked against its checksum (and its numbers for being finite) as it is read; a damaged row
        is left out, so the caller computes it again, and deleted, so claims see it missing and it is replaced.
        """
        sql = "SELECT sha256, vector, checksum FROM vectors WHERE fingerprint=? AND view=? AND sha256 IN ({marks})"
        damaged_rows = []
        for sha, data, stored in self._select_in(sql, hashes, key, view):
            vector = decode_row(key, view, sha, data, stored)
            if vector is None:
                damaged_rows.append((key, view, sha, data, stored))
            else:
                yield sha, vector
        if damaged_rows:
            self._forget(damaged_rows)

    def _forget(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Delete damaged vector rows, each only while it still holds the damage seen (another process may have
        replaced it since); a cache that cannot be written keeps them (they are skipped on every read)."""
        with contextlib.suppress(sqlite3.OperationalError), self._connect() as db:
            db.executemany(
                "DELETE FROM vectors WHERE fingerprint=? AND view=? AND sha256=? AND vector IS ? AND checksum IS ?",
                rows,
            )

    def has_views(self, key: str, hashes: Sequence[str], view: str = "mirror") -> bool:
        """Whether every one of ``hashes`` has this view cached (cheap: counts, reads no vector)."""
        sql = "SELECT COUNT(*) FROM vectors WHERE fingerprint=? AND view=? AND sha256 IN ({marks})"
        return sum(n for (n,) in self._select_in(sql, hashes, key, view)) == len(set(hashes))

    def put_many(self, key: str, items: Sequence[tuple[str, np.ndarray]], view: str = "orig") -> None:
        """Store vectors of one view in one transaction: all of them become visible together, or none."""
        rows = [encode_row(key, view, sha, v) for sha, v in items]
        with self._connect() as db:
            db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?, ?)", rows)

    def get_unusable(self, hashes: Sequence[str], max_pixels: int | None, decoder: str) -> dict[str, str]:
        """The verdicts ``decoder`` gave on these contents under this pixel limit (so re-runs skip them fast)."""
        sql = "SELECT sha256, reason FROM unusable WHERE max_pixels=? AND decoder=? AND sha256 IN ({marks})"
        return dict(self._select_in(sql, hashes, pixel_limit(max_pixels), decoder))

    def put_unusable(self, items: Sequence[tuple[str, str]], max_pixels: int | None, decoder: str) -> None:
        """Record that ``decoder`` refuses these contents: only permanent verdicts about a file's bytes belong here."""
        if items:
            with self._connect() as db:
                put_verdicts(db, items, max_pixels, decoder)

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
            stored = {(sha, view) for view, sha in pair_rows(db, "vectors", "view, sha256", key, pairs)}
            out.refused = dict(
                rows_in(
                    db,
                    "SELECT sha256, reason FROM unusable WHERE max_pixels=? AND decoder=? AND sha256 IN ({marks})",
                    hashes,
                    pixel_limit(max_pixels),
                    decoder,
                )
            )
            held = {
                (sha, view): (who, host, pid, expires)
                for view, sha, who, host, pid, expires in pair_rows(db, "claims", CLAIM_COLUMNS, key, pairs)
            }
            for pair in dict.fromkeys(pairs):
                claim = held.get(pair)
                if pair in stored:
                    out.stored.append(pair)
                elif pair[0] in out.refused:
                    continue
                elif claim is not None and claim[0] != owner and live(*claim[1:], now):
                    out.busy.append(pair)
                else:
                    out.mine.append(pair)
            db.executemany(
                "INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(key, view, sha, owner, HOST, os.getpid(), now + seconds) for sha, view in out.mine],
            )
        return out

    def busy(self, key: str, pairs: Sequence[Pair], *, owner: str) -> set[Pair]:
        """Those of ``pairs`` not stored yet and still claimed by another live process (a read, no transaction
        held)."""
        if not pairs:
            return set()
        with damaged(self.path):
            return self._busy(key, pairs, owner)

    def _busy(self, key: str, pairs: Sequence[Pair], owner: str) -> set[Pair]:
        now = time.time()
        db = self._connection()
        stored = {(sha, view) for view, sha in pair_rows(db, "vectors", "view, sha256", key, pairs)}
        held = {
            (sha, view)
            for view, sha, who, host, pid, expires in pair_rows(db, "claims", CLAIM_COLUMNS, key, pairs)
            if who != owner and live(host, pid, expires, now)
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
                "INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?, ?)",
                [encode_row(key, view, sha, v) for sha, view, v in vectors],
            )
            put_verdicts(db, verdicts, max_pixels, decoder)
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
            dead = [(host, pid, expires) for host, pid, expires in rows if not live(host, pid, expires, now)]
            before = db.total_changes
            db.executemany("DELETE FROM claims WHERE host=? AND pid=? AND expires_at=?", dead)
            return db.total_changes - before

    @staticmethod
    def new_owner() -> str:
        """A name for one extraction's claims (process id + random: two calls in one process are two owners)."""
        return f"{HOST}:{os.getpid()}:{secrets.token_hex(6)}"

    def record_speed(self, key: str, images_per_second: float, n_images: int) -> None:
        """Remember the throughput of the largest extraction so far (what `compare` reports from the cache)."""
        with self._connect() as db:
            row = db.execute("SELECT n_images FROM speed WHERE fingerprint=?", (key,)).fetchone()
            if row is None or n_images >= row[0]:
                db.execute("INSERT OR REPLACE INTO speed VALUES (?, ?, ?)", (key, images_per_second, n_images))

    def speed(self, key: str) -> float | None:
        with damaged(self.path):
            row = self._connection().execute("SELECT images_per_second FROM speed WHERE fingerprint=?", (key,))
            row = row.fetchone()
        return None if row is None else float(row[0])

    def merge_from(self, other: str | os.PathLike[str]) -> int:
        """Copy every feature (and verdict) of another cache file into this one; return vectors added.

        This is how caches extracted on separate machines come together: rows are keyed by content, backbone and
        view, so merging is idempotent and never overwrites. Each vector is checked against its checksum on the way
        (damaged rows stay behind). A cache of an older layout is read as it is (the file itself is not changed):
        only its decoder's verdicts come over, as its vectors before layout 3 are keyed by what backbones claimed
        (:data:`SCHEMA_VERSION`).
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
            version = db.execute("PRAGMA other.user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"its layout {version} is newer than this headstart's {SCHEMA_VERSION}")
            if "vectors" in tables and version >= 3:  # (3 and 4 key the same rows; 4 stores them smaller)
                rows = db.execute("SELECT fingerprint, view, sha256, vector, checksum FROM other.vectors")
                while batch := rows.fetchmany(1000):
                    sound = [row for row in batch if decode_row(*row) is not None]
                    db.executemany("INSERT OR IGNORE INTO vectors VALUES (?, ?, ?, ?, ?)", sound)
                db.execute("INSERT OR IGNORE INTO backbones SELECT * FROM other.backbones")
            if "vectors" in tables:
                db.execute("INSERT OR IGNORE INTO unusable SELECT * FROM other.unusable")
            elif "features" in tables:
                if "unusable" in tables:
                    import_v1_verdicts(db, "other", "unusable")
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
            sha = sha256_or_none(path)
            out.append(sha)
            if sha is not None:
                fresh.append((path, st.st_size, st.st_mtime_ns, sha))
        if fresh:
            with self._connect() as db:
                db.executemany("INSERT OR REPLACE INTO file_hashes VALUES (?, ?, ?, ?)", fresh)
        return out
