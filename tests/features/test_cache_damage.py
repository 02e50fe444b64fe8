"""Finite or refused: a damaged feature cache, an engine giving NaN, a head with huge weights never make a NaN or a
silently wrong answer leave the library (issue 20). Damage is done to real cache files, at several offsets and with
several patterns, and checked against the features of an undamaged copy."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from headstart.errors import CacheError
from headstart.features import FeatureCache, extract_features
from headstart.features.cache_schema import SCHEMA_VERSION


@pytest.fixture(scope="module")
def built(tmp_path_factory, sample: Path, lite0) -> dict:
    """A real cache file of the sample's test photos (single view, fp32, torch), folded into one file, and the
    features it holds."""
    folder = tmp_path_factory.mktemp("damage")
    photos = sorted(p for p in (sample / "test").rglob("*.jpg"))
    cache = FeatureCache(folder / "features.sqlite")
    feats = extract_features(photos, lite0, cache=cache, precision="fp32", engine="torch")
    cache.close()
    with sqlite3.connect(folder / "features.sqlite") as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return {"path": folder / "features.sqlite", "photos": photos, "features": feats.features, "lite0": lite0}


def _read_back(path: Path, built: dict) -> np.ndarray | None:
    """The features extraction gives from a damaged copy (None when it refuses with one CacheError)."""
    try:
        cache = FeatureCache(path)
        feats = extract_features(built["photos"], built["lite0"], cache=cache, precision="fp32", engine="torch")
    except CacheError as exc:
        assert str(path) in str(exc) and "delete it" in str(exc)
        return None
    assert feats.unusable == [] and len(feats.features) == len(built["photos"])
    return feats.features


def _damage(source: Path, target: Path, offset: int, pattern: bytes) -> None:
    shutil.copyfile(source, target)
    with open(target, "r+b") as f:
        f.seek(offset)
        f.write(pattern)


@pytest.mark.slow
@pytest.mark.parametrize("fraction", [0.2, 0.45, 0.7, 0.9])
@pytest.mark.parametrize("kind", ["random", "zeros", "ones"])
def test_4kb_of_garbage_inside_the_cache_is_recomputed_or_refused_never_wrong(
    built: dict, tmp_path: Path, fraction: float, kind: str
) -> None:
    size = built["path"].stat().st_size
    pattern = {
        "random": np.random.default_rng(int(fraction * 100)).bytes(4096),
        "zeros": bytes(4096),
        "ones": b"\xff" * 4096,
    }[kind]
    damaged = tmp_path / "features.sqlite"
    _damage(built["path"], damaged, int(size * fraction) // 4096 * 4096 + 100, pattern)
    features = _read_back(damaged, built)
    if features is not None:
        assert np.isfinite(features).all()
        np.testing.assert_allclose(features, built["features"], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("pattern", [0x00, 0x01])
def test_a_zeroed_or_altered_vector_is_detected_and_recomputed(built: dict, tmp_path: Path, pattern: int) -> None:
    """Every byte of one stored vector overwritten where it lies in the file (its row's local part and overflow
    pages, whose links stay intact): the file is sound to SQLite, only the checksum can tell."""
    data = bytearray(built["path"].read_bytes())
    vector = built["features"][3].astype(np.float32).tobytes()
    hits = 0
    for k in range(0, len(vector), 16):
        at = data.find(vector[k : k + 16])
        if at >= 0:
            data[at : at + 16] = bytes([pattern]) * 16
            hits += 1
    assert hits > len(vector) // 16 * 0.9, "the vector's bytes are in the file"
    damaged = tmp_path / "features.sqlite"
    damaged.write_bytes(bytes(data))
    cache = FeatureCache(damaged)
    again = extract_features(built["photos"], built["lite0"], cache=cache, precision="fp32", engine="torch")
    assert again.n_computed == 1, "the damaged row was found and computed again"
    np.testing.assert_allclose(again.features, built["features"], rtol=1e-5, atol=1e-6)
    assert (
        extract_features(built["photos"], built["lite0"], cache=cache, precision="fp32", engine="torch").n_computed == 0
    )


@pytest.mark.slow
def test_a_damaged_cache_gives_one_clear_error_or_the_right_answer_through_the_cli(
    built: dict, sample_model: Path, tmp_path: Path
) -> None:
    """`predict --json` on a cache with garbage where its tables are: valid JSON with finite probabilities equal to
    those of an undamaged cache, or one line naming the file and a non-zero exit; never a traceback or NaN."""
    photos = [str(p) for p in built["photos"][:6]]
    clean = tmp_path / "clean"
    run = [sys.executable, "-m", "headstart", "predict", str(sample_model), *photos, "--json"]
    first = subprocess.run(run, capture_output=True, text=True, env={**os.environ, "HEADSTART_CACHE_DIR": str(clean)})
    assert first.returncode == 0, first.stderr
    want = json.loads(first.stdout)["predictions"]
    cache_file = clean / "features.sqlite"
    with sqlite3.connect(cache_file) as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = cache_file.stat().st_size
    for fraction in (0.3, 0.6, 0.95):
        folder = tmp_path / f"damaged-{fraction}"
        shutil.copytree(clean, folder)
        _damage(cache_file, folder / "features.sqlite", int(size * fraction), np.random.default_rng(1).bytes(4096))
        out = subprocess.run(
            run, capture_output=True, text=True, env={**os.environ, "HEADSTART_CACHE_DIR": str(folder)}
        )
        assert "Traceback" not in out.stderr, out.stderr
        if out.returncode != 0:
            assert "features.sqlite" in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
            continue
        got = json.loads(out.stdout, parse_constant=lambda c: pytest.fail(f"{c} in the output"))["predictions"]
        assert sorted(a["path"] for a in got) == sorted(b["path"] for b in want)
        by_path = {b["path"]: b for b in want}  # (cached photos are printed before computed ones: match by path)
        for a in got:  # (a recomputed row may reorder near-zero tail labels: compare by label)
            b = by_path[a["path"]]
            assert a["predictions"][0]["label"] == b["predictions"][0]["label"]
            mine = {p["label"]: p["probability"] for p in a["predictions"]}
            theirs = {p["label"]: p["probability"] for p in b["predictions"]}
            for label in mine.keys() | theirs.keys():
                assert abs(mine.get(label, 0.0) - theirs.get(label, 0.0)) <= 2e-3, (label, mine, theirs)


def test_nothing_non_finite_is_ever_stored(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path / "features.sqlite")
    for bad in (np.full(8, np.nan, np.float32), np.array([1, np.inf], np.float32)):
        with pytest.raises(ValueError, match="NaN or infinite"):
            cache.put_many("key-fp32", [("a" * 64, bad)])
    assert cache.count() == 0


@pytest.mark.slow
def test_an_old_cache_layout_migrates_dropping_vectors_keyed_by_claims(lite0, sample: Path, tmp_path: Path) -> None:
    """A version-2 file (vectors without checksums, keyed by what a backbone was called): opened, it becomes
    the current version; its vectors are dropped (recomputed), its verdicts and file hashes kept."""
    path = tmp_path / "v2.sqlite"
    with sqlite3.connect(path) as con:
        con.executescript(
            """
            CREATE TABLE vectors (fingerprint TEXT NOT NULL, view TEXT NOT NULL, sha256 TEXT NOT NULL,
                vector BLOB NOT NULL, PRIMARY KEY (fingerprint, view, sha256)) WITHOUT ROWID;
            CREATE TABLE backbones (fingerprint TEXT PRIMARY KEY, dim INTEGER NOT NULL, spec TEXT NOT NULL);
            CREATE TABLE file_hashes (path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
                sha256 TEXT NOT NULL);
            CREATE TABLE speed (fingerprint TEXT PRIMARY KEY, images_per_second REAL NOT NULL, n_images INTEGER);
            CREATE TABLE unusable (sha256 TEXT NOT NULL, max_pixels INTEGER NOT NULL, decoder TEXT NOT NULL,
                reason TEXT NOT NULL, PRIMARY KEY (sha256, max_pixels, decoder)) WITHOUT ROWID;
            CREATE TABLE claims (fingerprint TEXT NOT NULL, view TEXT NOT NULL, sha256 TEXT NOT NULL,
                owner TEXT NOT NULL, host TEXT NOT NULL, pid INTEGER NOT NULL, expires_at REAL NOT NULL,
                PRIMARY KEY (fingerprint, view, sha256)) WITHOUT ROWID;
            PRAGMA user_version=2;
            """
        )
        con.execute("INSERT INTO vectors VALUES ('old-fp32', 'orig', ?, ?)", ("c" * 64, bytes(5120)))
        con.execute("INSERT INTO unusable VALUES (?, 89478485, 'pillow-1', 'not an image')", ("b" * 64,))
        con.execute("INSERT INTO file_hashes VALUES ('/x.jpg', 1, 2, ?)", ("c" * 64,))
    cache = FeatureCache(path)
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("SELECT COUNT(*) FROM file_hashes").fetchone()[0] == 1
    assert cache.count() == 0
    assert cache.get_unusable(["b" * 64], 89478485, "pillow-1") == {"b" * 64: "not an image"}
    photos = sorted((sample / "test").rglob("*.jpg"))[:2]
    assert extract_features(photos, lite0, cache=cache, engine="torch", precision="fp32").n_computed == 2
