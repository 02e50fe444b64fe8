"""The feature cache keeps only permanent verdicts (keyed by the decoder that gave them), migrates old cache files,
and hands out claims so that concurrent extractions compute each row once."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from headstart.features.backbones import Backbone
from headstart.features.cache import SCHEMA_VERSION, FeatureCache
from headstart.features.cache_schema import LEGACY_DECODER
from headstart.features.extract import decode_size, extract_features
from headstart.features.pipeline import Pipeline
from headstart.features.sharing import decoder_id


@pytest.fixture()
def photos(sample: Path, tmp_path: Path) -> list[Path]:
    folder = tmp_path / "photos"
    folder.mkdir()
    out = []
    for src in sorted((sample / "test").glob("*/*.jpg"))[:4]:
        shutil.copy(src, folder / src.name)
        out.append(folder / src.name)
    return out


def _verdicts(cache: FeatureCache) -> list[tuple]:
    with sqlite3.connect(cache.path) as con:
        return con.execute("SELECT sha256, max_pixels, decoder, reason FROM unusable").fetchall()


# ------------------------------------------------------------------------------------------------ the verdicts
@pytest.mark.slow
def test_a_model_whose_preprocessing_fails_does_not_poison_the_cache_for_other_models(lite0, cache, photos) -> None:
    """Issue 11.4: a model whose preprocessing cannot work (here: 0 × 0 inputs, which no photo can be
    decoded or resized to) says nothing
    about the photos: another model (and the same one, next time) must try them again. (Not 2^20 × 2^20, the
    issue's case: Pillow allocates such an image row block by row block, and the kernel kills the process first.)"""
    config = {**lite0.spec.data_config, "input_size": [3, 0, 0]}
    bad = Backbone(lite0.model, replace(lite0.spec, data_config=config))
    first = extract_features(photos[:2], bad, cache=cache, precision="fp32", engine="torch")
    assert len(first.unusable) == 2 and first.n_computed == 0
    assert all(u.reason.startswith("cannot preprocess: ") for u in first.unusable), first.unusable
    assert _verdicts(cache) == [], "a failure of the moment is reported, never cached"
    again = extract_features(photos[:2], bad, cache=cache, precision="fp32", engine="torch")
    assert [u.reason for u in again.unusable] == [u.reason for u in first.unusable]  # tried again, failed again
    good = extract_features(photos, lite0, cache=cache, precision="fp32", engine="torch")
    assert good.unusable == [] and good.n_computed == 4


@pytest.mark.slow
def test_running_out_of_memory_while_decoding_is_not_a_verdict_on_the_file(lite0, cache, photos, monkeypatch) -> None:
    """The decoder turns a MemoryError into an UnusableImageError ("not enough memory to decode …"): reported for
    this run, not remembered. (The MemoryError is injected: no test machine can be made to run out on cue.)"""
    from PIL import ImageFile

    real_load = ImageFile.ImageFile.load

    def out_of_memory(self):
        raise MemoryError

    monkeypatch.setattr(ImageFile.ImageFile, "load", out_of_memory)
    short = extract_features(photos, lite0, cache=cache, precision="fp32", engine="torch")
    assert len(short.unusable) == 4 and all("memory" in u.reason for u in short.unusable), short.unusable
    assert _verdicts(cache) == []
    monkeypatch.setattr(ImageFile.ImageFile, "load", real_load)
    assert extract_features(photos, lite0, cache=cache, precision="fp32", engine="torch").n_computed == 4


@pytest.mark.slow
def test_a_permanent_verdict_is_kept_under_the_decoder_that_gave_it(lite0, cache, photos) -> None:
    broken = photos[0].with_name("cut.jpg")
    broken.write_bytes(photos[0].read_bytes()[:3000])
    feats = extract_features([broken, photos[1]], lite0, cache=cache, precision="fp32", engine="torch")
    assert [u.path for u in feats.unusable] == [broken] and "truncated" in feats.unusable[0].reason
    ((sha, limit, decoder, reason),) = _verdicts(cache)
    assert decoder == decoder_id(decode_size(lite0.spec)) and "Pillow" in decoder and "draft 256x256" in decoder
    assert limit == 89_478_485 and reason == feats.unusable[0].reason and sha == cache.file_hashes([broken])[0]
    assert cache.get_unusable([sha], limit, decoder) == {sha: reason}
    assert cache.get_unusable([sha], limit, decoder + " (another)") == {}, "another decoder decides for itself"


def test_a_file_that_changed_while_it_was_decoded_gets_no_verdict(tmp_path: Path, photos) -> None:
    from headstart.errors import UnusableImageError
    from headstart.features.sharing import is_permanent

    cut = tmp_path / "cut.jpg"
    cut.write_bytes(photos[0].read_bytes()[:3000])
    sha = FeatureCache(tmp_path / "c.sqlite").file_hashes([cut])[0]
    assert is_permanent(UnusableImageError(cut, "truncated"), cut, sha)
    try:
        raise OSError(5, "Input/output error")
    except OSError as io:
        try:
            raise UnusableImageError(cut, "cannot read") from io
        except UnusableImageError as exc:
            assert not is_permanent(exc, cut, sha), "a read error is the disk's, not the file's"
    cut.write_bytes(b"something else")
    assert not is_permanent(UnusableImageError(cut, "truncated"), cut, sha), "the bytes that failed are gone"
    cut.unlink()
    assert not is_permanent(UnusableImageError(cut, "file not found"), cut, sha)


# ------------------------------------------------------------------------------------------------- migration
_OLD_SCHEMA = """
CREATE TABLE features (fingerprint TEXT NOT NULL, sha256 TEXT NOT NULL, vector BLOB NOT NULL,
    PRIMARY KEY (fingerprint, sha256)) WITHOUT ROWID;
CREATE TABLE backbones (fingerprint TEXT PRIMARY KEY, dim INTEGER NOT NULL, spec TEXT NOT NULL);
CREATE TABLE file_hashes (path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL);
CREATE TABLE speed (fingerprint TEXT PRIMARY KEY, images_per_second REAL NOT NULL, n_images INTEGER NOT NULL);
CREATE TABLE unusable (sha256 TEXT NOT NULL, max_pixels INTEGER NOT NULL, reason TEXT NOT NULL,
    PRIMARY KEY (sha256, max_pixels)) WITHOUT ROWID;
"""


def _old_cache(path: Path, lite0, photos: list[Path], tmp_path: Path) -> dict:
    """A cache file as headstart wrote it before views: single-view and mirror-averaged rows under two keys, and
    verdicts keyed by (hash, max pixels) only, among them failures of the moment."""
    fresh = FeatureCache(tmp_path / "fresh.sqlite")
    one = extract_features(photos[:3], lite0, cache=fresh, precision="fp32", engine="torch")
    both = extract_features(photos[:3], lite0, cache=fresh, precision="fp32", engine="torch", flip_average=True)
    single_key = f"{lite0.spec.fingerprint}-fp32"
    flip_spec = lite0.spec.with_flip_average(True)
    flip_key = f"{flip_spec.fingerprint}-fp32"
    shas = fresh.file_hashes(photos)
    con = sqlite3.connect(path)
    con.executescript(_OLD_SCHEMA)
    con.executemany(
        "INSERT INTO backbones VALUES (?, ?, ?)",
        [
            (single_key, 1280, json.dumps({**lite0.spec.to_dict(), "precision": "fp32"})),
            (flip_key, 1280, json.dumps({**flip_spec.to_dict(), "precision": "fp32"})),
        ],
    )
    con.executemany(
        "INSERT INTO features VALUES (?, ?, ?)",
        [(single_key, h, v.tobytes()) for h, v in zip(one.hashes, one.features)]
        + [(flip_key, h, v.tobytes()) for h, v in zip(both.hashes, both.features)],
    )
    con.executemany("INSERT INTO speed VALUES (?, ?, ?)", [(single_key, 30.0, 100), (flip_key, 15.0, 100)])
    con.executemany(
        "INSERT INTO unusable VALUES (?, ?, ?)",
        [
            (shas[3], 89_478_485, "cannot preprocess: MemoryError: "),  # a good photo, poisoned by a bad model
            ("a" * 64, 89_478_485, "not enough memory to decode this 30000×30000 image"),
            ("b" * 64, 89_478_485, "not an image: Pillow cannot identify the format (it is text starting 'hello')"),
        ],
    )
    con.commit()
    con.close()
    return {"single": one, "single_key": single_key, "flip_key": flip_key, "shas": shas}


@pytest.mark.slow
def test_an_old_cache_file_is_migrated_in_place(lite0, photos, tmp_path: Path) -> None:
    """Its vectors, keyed by what backbones were called (not by their content), are dropped with their keys and
    speeds (no key of today reads them); its permanent verdicts are kept, its failures of the moment dropped."""
    path = tmp_path / "old.sqlite"
    _old_cache(path, lite0, photos, tmp_path)
    cache = FeatureCache(path)
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        tables = {n for (n,) in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "features" not in tables and {"vectors", "claims", "unusable"} <= tables
        keys = [k for (k,) in con.execute("SELECT fingerprint FROM backbones")]
        speeds = [k for (k,) in con.execute("SELECT fingerprint FROM speed")]
    assert keys == speeds == [] and cache.count() == 0, "vectors keyed by claims are gone"
    assert [(r[2], r[3][:13]) for r in _verdicts(cache)] == [(LEGACY_DECODER, "not an image:")], (
        "failures of the moment dropped; the permanent verdict kept under its (unknown, untrusted) decoder"
    )
    again = extract_features(photos, lite0, cache=cache, precision="fp32", engine="torch")
    assert again.unusable == [] and again.n_computed == 4, "the photo a bad model failed on is computed too"
    averaged = extract_features(photos, lite0, cache=cache, precision="fp32", engine="torch", flip_average=True)
    assert averaged.n_computed == 4 and averaged.n_views_computed == 4, "only the mirror views are computed"
    FeatureCache(path)  # opening it again changes nothing
    assert cache.count() == 8


@pytest.mark.slow
def test_an_old_cache_file_merges_without_being_changed(lite0, photos, tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    _old_cache(path, lite0, photos, tmp_path)
    before = path.read_bytes()
    cache = FeatureCache(tmp_path / "new.sqlite")
    assert cache.merge_from(path) == 0 and cache.merge_from(path) == 0, "its vectors are keyed by claims"
    assert path.read_bytes() == before
    assert [r[3][:13] for r in _verdicts(cache)] == ["not an image:"], "its permanent verdicts come over"


def test_a_cache_from_a_newer_headstart_is_refused_with_advice(tmp_path: Path) -> None:
    from headstart.errors import CacheError

    path = tmp_path / "new.sqlite"
    with sqlite3.connect(path) as con:
        con.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(CacheError, match="newer headstart.*Upgrade headstart, or pass another --cache-dir"):
        FeatureCache(path)


# ---------------------------------------------------------------------------------------------------- claims
def _claim_row(
    cache: FeatureCache,
    key: str,
    sha: str,
    *,
    pid: int,
    expires_in: float = 60.0,
    owner: str = "another",
    host: str | None = None,
) -> None:
    from headstart.features.cache_sql import HOST

    with sqlite3.connect(cache.path) as con:
        con.execute(
            "INSERT OR REPLACE INTO claims VALUES (?, 'orig', ?, ?, ?, ?, ?)",
            (key, sha, owner, host or HOST, pid, time.time() + expires_in),
        )


def test_claims_of_live_processes_hold_and_the_others_are_taken_over(cache) -> None:
    key, me = "k-fp32", cache.new_owner()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])  # exits, is never reaped until the end
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # (until the kernel shows it as a zombie)
            with open(f"/proc/{zombie.pid}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[-1].split()[0] == b"Z":
                    break
            time.sleep(0.02)
        _claim_row(cache, key, "live", pid=sleeper.pid)
        _claim_row(cache, key, "dead", pid=finished.pid)
        _claim_row(cache, key, "zombie", pid=zombie.pid)
        _claim_row(cache, key, "expired", pid=sleeper.pid, expires_in=-1)
        _claim_row(cache, key, "elsewhere", pid=1, host="another-machine")
        cache.put_many(key, [("stored", np.ones(4, np.float32))])
        got = cache.claim(
            key,
            [(s, "orig") for s in ("live", "dead", "zombie", "expired", "elsewhere", "stored", "free")],
            owner=me,
            max_pixels=None,
            decoder="d",
        )
        assert sorted(s for s, _ in got.mine) == ["dead", "expired", "free", "zombie"]
        assert sorted(s for s, _ in got.busy) == ["elsewhere", "live"] and got.stored == [("stored", "orig")]
        assert cache.busy(key, got.busy + got.mine, owner=me) == set(got.busy)
        cache.commit_batch(key, [("free", "orig", np.zeros(4, np.float32))], owner=me, released=[("free", "orig")])
        cache.release(me)
        with sqlite3.connect(cache.path) as con:
            assert sorted(s for (s,) in con.execute("SELECT sha256 FROM claims")) == ["elsewhere", "live"]
    finally:
        sleeper.kill()
        sleeper.wait()
        zombie.wait()


@pytest.mark.slow
def test_an_extraction_waits_for_a_claimed_photo_and_reads_what_the_other_process_stored(lite0, cache, photos) -> None:
    """Another process holds photo 0 (as a live process would): this one computes the rest, waits, and takes the
    vector that process stores (here: this test's thread, 1 s later) instead of computing it."""
    key = Pipeline(lite0.spec, lite0, engine="torch", precision="fp32").cache_key(cache)  # (the key extraction uses)
    sha = cache.file_hashes(photos[:1])[0]
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    marker = np.full(1280, 7.0, np.float32)  # (not what the network gives: shows where the row came from)
    try:
        _claim_row(cache, key, sha, pid=holder.pid)

        def the_other_process_finishes() -> None:
            time.sleep(1.0)
            other = FeatureCache(cache.path)
            other.commit_batch(key, [(sha, "orig", marker)], owner="another", released=[(sha, "orig")])
            other.close()

        threading.Thread(target=the_other_process_finishes).start()
        started = time.monotonic()
        feats = extract_features(photos, lite0, cache=cache, precision="fp32", engine="torch")
        assert time.monotonic() - started >= 0.9
        assert feats.n_computed == 3 and feats.unusable == []
        np.testing.assert_array_equal(feats.features[0], marker)
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_a_claim_whose_process_dies_is_taken_over(lite0, cache, photos) -> None:
    key = Pipeline(lite0.spec, lite0, engine="torch", precision="fp32").cache_key(cache)  # (the key extraction uses)
    sha = cache.file_hashes(photos[:1])[0]
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    _claim_row(cache, key, sha, pid=holder.pid)
    threading.Timer(0.5, holder.kill).start()
    try:
        feats = extract_features(photos[:2], lite0, cache=cache, precision="fp32", engine="torch")
    finally:
        holder.kill()
        holder.wait()
    assert feats.n_computed == 2 and feats.unusable == []
    with sqlite3.connect(cache.path) as con:
        assert con.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0, "no claim outlives its extraction"
    assert os.path.exists(cache.path)


def _vectors(n: int, dim: int = 1280) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [(f"{i:064x}", rng.normal(size=dim).astype(np.float32)) for i in range(n)]


def test_the_cache_file_is_not_much_larger_than_its_vectors(tmp_path: Path) -> None:
    """A 5 KB vector (1,280 features) used to spill into overflow pages: the file was 1.7x its vectors."""
    path = tmp_path / "features.sqlite"
    cache = FeatureCache(path)
    cache.put_many("key-fp32", _vectors(2000))
    cache.close()
    assert path.stat().st_size <= 1.2 * 2000 * 1280 * 4, path.stat().st_size / (2000 * 1280 * 4)


def test_a_version_3_file_keeps_its_vectors_when_it_moves_to_the_smaller_layout(tmp_path: Path) -> None:
    path = tmp_path / "v3.sqlite"
    FeatureCache(path).close()
    items = _vectors(3, dim=8)
    with sqlite3.connect(path) as con:  # the layout-3 vectors table, rows written by headstart's one encoder
        from headstart.features.cache_sql import encode_row

        con.executescript(
            """DROP TABLE vectors;
            CREATE TABLE vectors (fingerprint TEXT NOT NULL, view TEXT NOT NULL, sha256 TEXT NOT NULL,
                vector BLOB NOT NULL, checksum INTEGER NOT NULL, PRIMARY KEY (fingerprint, view, sha256)) WITHOUT ROWID;
            PRAGMA user_version=3;"""
        )
        con.executemany("INSERT INTO vectors VALUES (?, ?, ?, ?, ?)", [encode_row("k", "orig", *i) for i in items])
    cache = FeatureCache(path)
    found = cache.get_many("k", [sha for sha, _ in items])
    assert all(np.array_equal(found[sha], v) for sha, v in items)
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
        sql = con.execute("SELECT sql FROM sqlite_master WHERE name='vectors'").fetchone()[0]
        assert "WITHOUT ROWID" not in sql
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
