"""The feature cache's layout: its tables, their version, and the migration of files older headstarts wrote.

Opening a file of an older layout migrates it in place, once, in one transaction (:func:`set_up`), so a second
process opening the same old file at the same time waits and then finds it done.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from headstart.errors import CacheError

__all__ = ["LEGACY_DECODER", "SCHEMA_VERSION", "TABLES", "import_v1_verdicts", "set_up"]

#: The layout of the cache file (``PRAGMA user_version``). 0/1: one table of vectors per backbone key, mirror-averaged
#: rows under their own key, and failure reasons keyed only by (file hash, max pixels). 2: vectors per view, verdicts
#: keyed by what produced them, claims. 3: a checksum per vector (:func:`~headstart.features.cache_sql.checksum`), and
#: backbone keys made from the trunk tensors' content, no longer from what a name or a model file claims: the vectors
#: of older files are keyed by such claims, so no key of today reads them and migrating drops them (with their
#: backbones, speeds and claims); the decoder's verdicts and the file-hash memo are kept. 4: the vectors in a rowid
#: table (its key a unique index) instead of a WITHOUT ROWID table, the rows copied over as they are: a WITHOUT ROWID
#: table keeps at most about a quarter of a page of a row in its leaf and spills the rest to overflow pages, so a
#: 5 KB vector of 1,280 features took three 4 KB pages (the file 1.7x its vectors); a rowid leaf holds up to a page
#: of a row, and the file is about 1.1x.
SCHEMA_VERSION = 4

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

TABLES = (
    """CREATE TABLE IF NOT EXISTS vectors (
        fingerprint TEXT NOT NULL, view TEXT NOT NULL, sha256 TEXT NOT NULL, vector BLOB NOT NULL,
        checksum INTEGER NOT NULL, PRIMARY KEY (fingerprint, view, sha256))""",
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


def set_up(db: sqlite3.Connection, path: Path) -> None:
    """Create the tables in ``db`` (inside a transaction), or migrate an older layout to :data:`SCHEMA_VERSION`."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise CacheError(
            f"The feature cache {path} was written by a newer headstart (layout {version}; this one "
            f"reads {SCHEMA_VERSION}). Upgrade headstart, or pass another --cache-dir."
        )
    if version == SCHEMA_VERSION:
        return
    if version == 3:  # the same rows, moved to the rowid table (see SCHEMA_VERSION); its freed pages are reused
        db.execute("ALTER TABLE vectors RENAME TO vectors_v3")
        db.execute(TABLES[0])
        db.execute("INSERT INTO vectors SELECT fingerprint, view, sha256, vector, checksum FROM vectors_v3")
        db.execute("DROP TABLE vectors_v3")
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        return
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    for table in ("features", "vectors", "backbones", "speed", "claims"):  # (keyed by claims: see SCHEMA_VERSION)
        if table in tables:
            db.execute(f"DROP TABLE {table}")
    old_verdicts = "unusable" in tables and version < 2
    if old_verdicts:
        db.execute("ALTER TABLE unusable RENAME TO unusable_v1")
    for statement in TABLES:
        db.execute(statement)
    if old_verdicts:
        import_v1_verdicts(db, "main", "unusable_v1")
        db.execute("DROP TABLE unusable_v1")
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def import_v1_verdicts(db: sqlite3.Connection, schema: str, table: str) -> None:
    """Copy the verdicts of a version-1 cache's table (``schema.table``) that are facts about a file's bytes into
    this cache's, under :data:`LEGACY_DECODER` (failures of the moment are dropped)."""
    rows = db.execute(f"SELECT sha256, max_pixels, reason FROM {schema}.{table}").fetchall()
    db.executemany(
        "INSERT OR IGNORE INTO unusable VALUES (?, ?, ?, ?)",
        [
            (sha, limit, LEGACY_DECODER, reason)
            for sha, limit, reason in rows
            if not any(mark in reason for mark in _LEGACY_TRANSIENT)
        ],
    )
