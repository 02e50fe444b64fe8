"""What the cache folder holds, and cleaning it: by backbone, by age, with a dry run; never outside the folder.

The cache folder (``$HEADSTART_CACHE_DIR``, else ``~/.cache/headstart``) holds:

- ``features.sqlite``: the feature vectors, one row per photo's content × backbone fingerprint × precision × view;
- ``backbones/``: each backbone's resolved card (``*.json``) and trunk weights (``<fingerprint>.safetensors``);
- the per-machine engine store (``engines/`` here by default, ``$HEADSTART_ENGINE_DIR``): converted backbones
  (OpenVINO, ONNX) and OpenVINO's compiled-model cache; cleaned only when it lies inside the cache folder;
- ``memo/``: remembered probe fits and run pictures (pruned to their most recently used 512 MB by themselves);
- ``activations/``: fine-tuning's frozen stages' outputs, one folder per backbone, cut, augmentation and precision
  (its ``key.json`` says which; pruned to their most recently used 4 GB by themselves).

Everything there is recomputable: cleaning costs time on the next run, never a result. When each backbone's
features were last used is kept in the database's ``last_used`` table (:func:`mark_used`, called by every
extraction, written at most once an hour a backbone), so ``--older-than`` can clean features as well as files.

Example:
    >>> summary = cache_summary()
    >>> [(b["backbone"], b["precision"], b["vectors"]) for b in summary["features"]["backbones"]]
    [('tf_efficientnet_lite0', 'bf16', 84)]
    >>> clean_cache(backbone="tf_efficientnet_lite0", dry_run=True)["freed_bytes"]
    13631488
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from headstart._io import cache_dir, engine_dir
from headstart.errors import CacheError

__all__ = ["ACTIVATIONS", "cache_summary", "clean_cache", "mark_used", "parse_age"]

#: The folder of fine-tuning's stored activations inside the cache folder.
ACTIVATIONS = "activations"

_USED_TABLE = "CREATE TABLE IF NOT EXISTS last_used (fingerprint TEXT PRIMARY KEY, at REAL NOT NULL)"
_MARK_EVERY_S = 3600.0  # a backbone's last use is written at most this often (every predict comes through here)
_VECTOR_OVERHEAD = 90  # bytes a row takes in SQLite beyond its float32 vector (key, view, hash), measured roughly


def mark_used(cache: Any, key: str) -> None:
    """Remember that the features under ``key`` are in use now (at most one write an hour per key)."""
    now = time.time()
    with contextlib.suppress(sqlite3.Error):  # (bookkeeping: never the reason an extraction fails)
        with cache._connect() as db:
            row = _used_row(db, key)
            if row is None or now - row > _MARK_EVERY_S:
                db.execute("INSERT OR REPLACE INTO last_used VALUES (?, ?)", (key, now))


def _ensure_used_table(db: sqlite3.Connection) -> None:
    """Create ``last_used`` when missing, every backbone already there counted as used now (not known to be old)."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='last_used'").fetchone() is None:
        db.execute(_USED_TABLE)
        with contextlib.suppress(sqlite3.OperationalError):  # (no backbones table yet: an empty cache)
            db.execute("INSERT OR IGNORE INTO last_used SELECT fingerprint, ? FROM backbones", (time.time(),))


def _used_row(db: sqlite3.Connection, key: str) -> float | None:
    _ensure_used_table(db)
    row = db.execute("SELECT at FROM last_used WHERE fingerprint=?", (key,)).fetchone()
    return None if row is None else float(row[0])


def parse_age(text: str) -> float:
    """``30d``, ``12h``, ``2w`` or a plain number of days → seconds.

    Example:
        >>> parse_age("2w") == 14 * 86400
        True
    """
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    raw = str(text).strip().lower()
    number, unit = (raw[:-1], raw[-1]) if raw and raw[-1] in units else (raw, "d")
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ValueError(
            f"The '--older-than' option must be an age such as 30d, 12h or 2w (a plain number is days). Got {text!r}."
        )
    return value * units[unit]


def cache_summary(folder: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """What the cache folder holds: its size, the features by backbone, precision and view, the backbones' files and
    the memo. Reads only; a missing folder is an empty summary."""
    root = Path(folder) if folder is not None else cache_dir()
    files = list(_files(root))
    database = root / "features.sqlite"
    features: dict[str, Any] = {"path": str(database), "bytes": _size(database, "", "-wal", "-shm"), "backbones": []}
    names: dict[str, str] = {}
    if database.is_file():
        for row in _feature_rows(database):
            names[row["fingerprint"].split("-")[0]] = row["backbone"]
            features["backbones"].append(row)
    backbone_files: dict[str, dict[str, Any]] = {}
    stores = _stores(root)
    for path, size, _ in files:
        if not any(path.is_relative_to(store) for store in stores):
            continue
        owner = _owner(path, root, names)
        entry = backbone_files.setdefault(owner, {"backbone": owner, "bytes": 0, "files": 0})
        entry["bytes"] += size
        entry["files"] += 1
    memo = [(p, s, t) for p, s, t in files if root / "memo" in p.parents]
    engines = engine_dir()
    outside = [] if engines.is_relative_to(root) else list(_files(engines))
    activations = [{k: v for k, v in key.items() if k != "path"} for key in _activation_keys(root / ACTIVATIONS, files)]
    return {
        "folder": str(root),
        "bytes": sum(size for _, size, _ in files),
        "features": features,
        "backbone_files": sorted(backbone_files.values(), key=lambda e: -e["bytes"]),
        "memo": {
            "entries": len({p.name.split("-")[0].split(".")[0] for p, _, _ in memo}),
            "bytes": sum(s for _, s, _ in memo),
            "oldest_days": round((time.time() - min(t for _, _, t in memo)) / 86400, 1) if memo else None,
        },
        "activations": activations,
        # converted backbones live in the per-machine engine store; outside this folder, shown but never cleaned here
        "engine_store": {
            "folder": str(engines),
            "inside": not outside,
            "bytes": sum(size for _, size, _ in outside),
        },
    }


def clean_cache(
    *,
    backbone: str | None = None,
    older_than_s: float | None = None,
    dry_run: bool = False,
    folder: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Remove from the cache folder the features and files of ``backbone`` (its name, e.g. ``tf_efficientnet_lite0``,
    or a fingerprint), and/or everything not used for ``older_than_s`` seconds (features by their backbone's last
    use, files by their modification or access time). With ``dry_run``, only say what would go.

    Only entries inside the folder are touched: links are removed as links (never followed), and nothing outside
    ``features.sqlite``, ``backbones/``, ``memo/`` and ``activations/`` is removed.

    Returns:
        ``{"removed_vectors", "removed_files": [paths], "freed_bytes", "dry_run", "backbones": [names]}``.

    Raises:
        ValueError: neither ``backbone`` nor ``older_than_s`` given, or no such backbone in the cache.
    """
    if backbone is None and older_than_s is None:
        raise ValueError("say what to clean: --backbone NAME, --older-than AGE (e.g. 30d), or both.")
    root = Path(folder) if folder is not None else cache_dir()
    now = time.time()
    database = root / "features.sqlite"
    rows = _feature_rows(database) if database.is_file() else []
    activation_keys = _activation_keys(root / ACTIVATIONS, list(_files(root / ACTIVATIONS)))
    if backbone is not None:
        known = {r["backbone"] for r in rows} | {r["fingerprint"].split("-")[0] for r in rows}
        known |= {name for key in activation_keys for name in (key["backbone"], key["fingerprint"])}
        if backbone not in known and not _files_of(root, backbone):
            listed = ", ".join(sorted({r["backbone"] for r in rows})) or "nothing yet"
            raise ValueError(f"The cache {root} holds no backbone {backbone!r}; it holds: {listed}.")
    chosen = [
        r
        for r in rows
        if (backbone is None or backbone in (r["backbone"], r["fingerprint"].split("-")[0]))
        and (older_than_s is None or (r["last_used"] is not None and now - r["last_used"] > older_than_s))
    ]
    stale_fingerprints = {r["fingerprint"].split("-")[0] for r in chosen}
    keys_left = {r["fingerprint"].split("-")[0] for r in rows if r not in chosen}
    doomed: list[tuple[Path, int]] = []
    stores = _stores(root)
    for path, size, used in _files(root):
        if any(path.is_relative_to(store) for store in stores):
            fingerprint = path.name.split(".")[0]
            if backbone is not None:
                mine = fingerprint in stale_fingerprints or _names_backbone(path, backbone)
                mine = mine and fingerprint not in keys_left
            else:
                mine = True
            if mine and (older_than_s is None or now - used > older_than_s):
                doomed.append((path, size))
        elif path.is_relative_to(root / "memo") and older_than_s is not None and backbone is None:
            if now - used > older_than_s:
                doomed.append((path, size))
    stale_keys = [
        key
        for key in activation_keys
        if (backbone is None or backbone in (key["backbone"], key["fingerprint"]))
        and (older_than_s is None or now - key["last_used"] > older_than_s)
    ]
    doomed += [(path, size) for key in stale_keys for path, size, _ in _files(key["path"])]
    freed = sum(size for _, size in doomed) + sum(r["bytes"] for r in chosen)
    result = {
        "dry_run": bool(dry_run),
        "backbones": sorted({r["backbone"] for r in chosen}),
        "removed_vectors": sum(r["vectors"] for r in chosen),
        "removed_files": [str(p) for p, _ in doomed],
        "freed_bytes": int(freed),
    }
    if dry_run:
        return result
    if chosen:
        _delete_features(database, [r["fingerprint"] for r in chosen])
    for path, _ in doomed:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # (a link is removed as a link: its target, wherever it is, stays)
    for key in stale_keys:  # (their files went above; now the emptied folders)
        for folder in sorted((Path(p) for p, _, _ in os.walk(key["path"])), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                folder.rmdir()
    return result


def _activation_keys(folder: Path, files: list[tuple[Path, int, float]]) -> list[dict[str, Any]]:
    """One entry per key folder of ``activations/``: what its ``key.json`` says (backbone, fingerprint, cut,
    augmentation, precision, engine), its files and bytes, and when it was last used (the card's mtime)."""
    keys: dict[Path, dict[str, Any]] = {}
    for path, size, used in files:
        if not path.is_relative_to(folder) or path == folder:
            continue
        key = folder / path.relative_to(folder).parts[0]
        entry = keys.setdefault(key, {"path": key, "files": 0, "bytes": 0, "last_used": used})
        entry["files"] += 1
        entry["bytes"] += size
    for key, entry in keys.items():
        card: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            if not (key / "key.json").is_symlink():
                card = json.loads((key / "key.json").read_text())
                entry["last_used"] = (key / "key.json").stat().st_mtime
        card = card if isinstance(card, dict) else {}
        for field in ("backbone", "fingerprint", "where", "augment", "seed", "precision", "engine"):
            entry[field] = card.get(field, "?")
        entry["last_used_days"] = round((time.time() - entry["last_used"]) / 86400, 1)
    return sorted(keys.values(), key=lambda e: -e["bytes"])


# ---------------------------------------------------------------------------------------------- the database
def _connect(database: Path) -> sqlite3.Connection:
    try:
        db = sqlite3.connect(database, timeout=60, isolation_level=None)
        _ensure_used_table(db)
        return db
    except sqlite3.DatabaseError as exc:
        raise CacheError(
            f"The feature cache {database} cannot be read ({exc}). Delete it to start a fresh cache (it only holds "
            "recomputable features) or pass another --cache-dir."
        ) from exc


def _feature_rows(database: Path) -> list[dict[str, Any]]:
    """One row per (backbone key, view): name, precision, vectors, approximate bytes and last use."""
    db = _connect(database)
    try:
        specs = {key: (dim, spec) for key, dim, spec in db.execute("SELECT fingerprint, dim, spec FROM backbones")}
        used = dict(db.execute("SELECT fingerprint, at FROM last_used").fetchall())
        counts = db.execute("SELECT fingerprint, view, COUNT(*) FROM vectors GROUP BY fingerprint, view").fetchall()
    except sqlite3.DatabaseError as exc:
        raise CacheError(f"The feature cache {database} is not a headstart cache ({exc}).") from exc
    finally:
        db.close()
    by_key: dict[str, dict[str, Any]] = {}
    for key, view, n in counts:
        dim, spec_text = specs.get(key, (0, "{}"))
        try:
            spec = json.loads(spec_text)
        except ValueError:
            spec = {}
        row = by_key.setdefault(
            key,
            {
                "backbone": spec.get("name", "?"),
                "precision": spec.get("precision", key.rsplit("-", 1)[-1]),
                "fingerprint": key,
                "views": {},
                "vectors": 0,
                "bytes": 0,
                "last_used": used.get(key),
                "last_used_days": None if key not in used else round((time.time() - used[key]) / 86400, 1),
            },
        )
        row["views"][view] = int(n)
        row["vectors"] += int(n)
        row["bytes"] += int(n) * (4 * int(dim) + _VECTOR_OVERHEAD)
    return sorted(by_key.values(), key=lambda r: (r["backbone"], r["precision"]))


def _delete_features(database: Path, keys: list[str]) -> None:
    db = _connect(database)
    try:
        db.execute("BEGIN IMMEDIATE")
        for table in ("vectors", "claims", "speed", "backbones", "last_used"):
            db.executemany(f"DELETE FROM {table} WHERE fingerprint=?", [(k,) for k in keys])
        db.execute("COMMIT")
        with contextlib.suppress(sqlite3.OperationalError):  # (another process is reading: the space is reused)
            db.execute("VACUUM")
    finally:
        db.close()


# ------------------------------------------------------------------------------------------------- the files
def _files(root: Path) -> Iterator[tuple[Path, int, float]]:
    """``(path, size, last use)`` of each regular file or link under ``root``, never following a link."""
    if not root.is_dir():
        return
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                    continue
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            size = 0 if entry.is_symlink() else info.st_size
            yield Path(entry.path), size, max(info.st_mtime, info.st_atime)


def _stores(root: Path) -> list[Path]:
    """Where backbones' files live inside ``root``: ``backbones/``, and the engine store when it is inside."""
    engines = engine_dir()
    return [root / "backbones", *([engines] if engines.is_relative_to(root) and engines != root else [])]


def _size(path: Path, *suffixes: str) -> int:
    total = 0
    for suffix in suffixes:
        with contextlib.suppress(OSError):
            total += os.stat(str(path) + suffix).st_size
    return total


def _owner(path: Path, root: Path, names: dict[str, str]) -> str:
    """The backbone a file of ``backbones/`` belongs to (by fingerprint, or the name in its card)."""
    if "openvino-compiled" in path.parts or path.parent.name == "openvino-compiled":
        return "(OpenVINO compiled-model cache)"
    fingerprint = path.name.split(".")[0]
    if fingerprint in names:
        return names[fingerprint]
    if path.suffix == ".json":
        with contextlib.suppress(OSError, ValueError, AttributeError):
            return str(json.loads(path.read_text()).get("name") or "?")
    return f"(fingerprint {fingerprint})"


def _names_backbone(path: Path, name: str) -> bool:
    """Whether a backbone card names ``name``."""
    if path.suffix != ".json" or path.is_symlink():
        return False
    try:
        return json.loads(path.read_text()).get("name") == name
    except (OSError, ValueError, AttributeError):
        return False


def _files_of(root: Path, backbone: str) -> list[Path]:
    return [
        p
        for store in _stores(root)
        for p, _, _ in _files(store)
        if p.name.startswith(backbone) or _names_backbone(p, backbone)
    ]
