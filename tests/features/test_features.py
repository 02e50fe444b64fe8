"""Extraction through the feature cache: reuse, resumability, concurrent writers, unusable files, precision."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from headstart.features.cache import FeatureCache
from headstart.features.extract import extract_features


@pytest.fixture()
def photos(sample: Path, tmp_path: Path) -> list[Path]:
    """12 real photos copied into a private folder (so tests may add, edit and break files)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    out = []
    for src in sorted((sample / "test").glob("*/*.jpg"))[::2]:
        dst = folder / src.name
        shutil.copy(src, dst)
        out.append(dst)
    return out


@pytest.mark.slow
def test_second_run_computes_nothing_and_gives_the_same_features(
    lite0, cache: FeatureCache, photos: list[Path]
) -> None:
    first = extract_features(photos, lite0, cache=cache, batch_size=5)
    second = extract_features(photos, lite0, cache=cache)
    assert (first.n_computed, first.n_cached) == (12, 0)
    assert (second.n_computed, second.n_cached) == (0, 12)
    np.testing.assert_array_equal(first.features, second.features)
    assert first.features.shape == (12, 1280) and first.features.dtype == np.float32


@pytest.mark.slow
def test_adding_photos_computes_only_the_new_ones(
    lite0, cache: FeatureCache, photos: list[Path], sample: Path, tmp_path: Path
) -> None:
    extract_features(photos[:8], lite0, cache=cache)
    more = extract_features(photos, lite0, cache=cache)
    assert (more.n_computed, more.n_cached) == (4, 8)


@pytest.mark.slow
def test_renamed_copies_hit_the_cache_and_edits_do_not(lite0, cache: FeatureCache, photos: list[Path]) -> None:
    extract_features(photos[:2], lite0, cache=cache)
    copy = photos[0].with_name("renamed copy.jpg")
    shutil.copy(photos[0], copy)
    assert extract_features([copy], lite0, cache=cache).n_computed == 0
    from PIL import Image

    Image.open(photos[1]).rotate(90).save(photos[1])  # same path, new content
    assert extract_features([photos[1]], lite0, cache=cache).n_computed == 1


@pytest.mark.slow
def test_unusable_files_are_skipped_and_named(lite0, cache: FeatureCache, photos: list[Path]) -> None:
    folder = photos[0].parent
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("not a photo")
    (folder / "cut.jpg").write_bytes(photos[0].read_bytes()[:3000])
    paths = [photos[0], folder / "empty.jpg", photos[1], folder / "notes.jpg", folder / "cut.jpg", folder / "gone.jpg"]
    feats = extract_features(paths, lite0, cache=cache)
    assert feats.indices.tolist() == [0, 2]
    reasons = {u.path.name: u.reason for u in feats.unusable}
    assert set(reasons) == {"empty.jpg", "notes.jpg", "cut.jpg", "gone.jpg"}, reasons
    assert "empty" in reasons["empty.jpg"] and "truncated" in reasons["cut.jpg"] and "missing" in reasons["gone.jpg"]


@pytest.mark.slow
def test_identical_files_are_computed_once(lite0, cache: FeatureCache, photos: list[Path]) -> None:
    twin = photos[0].with_name("twin.jpg")
    shutil.copy(photos[0], twin)
    feats = extract_features([photos[0], twin], lite0, cache=cache)
    assert feats.n_computed == 1 and feats.features.shape[0] == 2
    assert feats.hashes[0] == feats.hashes[1]


@pytest.mark.slow
def test_bf16_features_agree_with_fp32(lite0, cache: FeatureCache, photos: list[Path]) -> None:
    a = extract_features(photos, lite0, cache=cache, precision="fp32").features
    b = extract_features(photos, lite0, cache=cache, precision="bf16").features
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() >= 0.99, f"min cosine {cosine.min():.4f}"


@pytest.mark.slow
def test_bad_precision_is_a_clear_error(lite0, cache: FeatureCache, photos: list[Path]) -> None:
    from headstart._validation import ParameterError

    with pytest.raises(
        ParameterError,
        match=r"The 'precision' parameter of extract_features must be one of 'auto', "
        r"'fp32', 'bf16'(, 'int8')?\. Got 'fp8' instead\.",
    ) as info:
        extract_features(photos, lite0, cache=cache, precision="fp8")
    assert info.value.parameter == "precision"
    with pytest.raises(ParameterError, match="'engine' parameter of extract_features"):
        extract_features(photos, lite0, cache=cache, engine="tensorrt")
    for bad in ({"batch_size": 0}, {"workers": 0}, {"max_pixels": 0}):
        with pytest.raises(ParameterError, match=f"'{next(iter(bad))}' parameter of extract_features"):
            extract_features(photos, lite0, cache=cache, **bad)
    assert cache.count() == 0, "nothing is computed before the parameters are checked"


_WORKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from headstart.features import FeatureCache, extract_features
    paths = [Path(p) for p in sys.argv[2:]]
    extract_features(paths, "tf_efficientnet_lite0", cache=FeatureCache(sys.argv[1]), batch_size=2, precision="fp32",
                     flip_average=False)  # one row per photo: what these tests count
    print("done")
    """
)


def _spawn(db: Path, paths: list[Path]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _WORKER, str(db), *map(str, paths)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_two_processes_writing_at_once_do_not_corrupt_the_cache(tmp_path: Path, photos: list[Path]) -> None:
    db = tmp_path / "shared.sqlite"
    FeatureCache(db)
    procs = [_spawn(db, photos), _spawn(db, photos[::-1])]
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0 and "done" in stdout, stderr[-2000:]
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("SELECT COUNT(*) FROM vectors").fetchone()[0] == len(photos)


@pytest.mark.slow
def test_killed_run_keeps_finished_batches_and_resumes(tmp_path: Path, photos: list[Path]) -> None:
    db = tmp_path / "resume.sqlite"
    cache = FeatureCache(db)
    proc = _spawn(db, photos)
    deadline = time.monotonic() + 240
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        done = cache.count()
        if done >= 2:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    kept = cache.count()
    assert kept >= 2, "the first batch was committed before the kill"
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rest = extract_features(
        photos, "tf_efficientnet_lite0", cache=cache, batch_size=2, precision="fp32", flip_average=False
    )
    assert rest.n_cached == kept and rest.n_computed == len(photos) - kept


@pytest.mark.slow
def test_known_unusable_files_do_not_load_the_model_again(
    cache: FeatureCache, photos: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = photos[0].with_name("broken.jpg")
    broken.write_text("not a photo")
    first = extract_features([photos[0], broken], "tf_efficientnet_lite0", cache=cache)
    import headstart.features.backbones as backbones

    monkeypatch.setattr(
        backbones, "load_backbone", lambda *a, **k: pytest.fail("everything was known: no model needed")
    )
    again = extract_features([photos[0], broken], "tf_efficientnet_lite0", cache=cache)
    assert [u.reason for u in again.unusable] == [u.reason for u in first.unusable]
    assert (again.n_cached, again.n_computed) == (1, 0)
    # under another pixel limit the file is checked again (a bomb's verdict depends on the limit)
    from headstart.features.extract import decode_size
    from headstart.features.sharing import decoder_id

    decoder = decoder_id(decode_size(again.spec))
    bad_sha = cache.file_hashes([broken])[0]
    assert cache.get_unusable([bad_sha], None, decoder) == {}
    assert cache.get_unusable([bad_sha], 89_478_485, decoder) == {bad_sha: first.unusable[0].reason}


@pytest.mark.slow
def test_torchrun_splits_extraction_between_processes(tmp_path: Path, photos: list[Path], cache: FeatureCache) -> None:
    """2 CPU processes each compute a share into the shared cache; the result equals one process's features."""
    import json
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HEADSTART_CACHE_DIR": str(tmp_path / "ddp-cache")}
    data = tmp_path / "data"
    (data / "a").mkdir(parents=True)
    (data / "b").mkdir()
    for i, p in enumerate(photos):
        shutil.copy(p, data / ("a" if i % 2 else "b") / p.name)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "headstart",
            "extract",
            str(data),
            "--precision",
            "fp32",
            "--batch-size",
            "2",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert report["n_computed"] == len(photos) and report["n_usable"] == len(photos)
    shared = FeatureCache(tmp_path / "ddp-cache" / "features.sqlite")
    assert shared.count() == len(photos)  # one view each (the default), each computed by one process
    from headstart.data import load_dataset

    paths = load_dataset(data).paths
    merged = extract_features(paths, "tf_efficientnet_lite0", cache=shared, precision="fp32")
    assert merged.n_computed == 0
    single = extract_features(paths, "tf_efficientnet_lite0", cache=cache, precision="fp32")
    np.testing.assert_allclose(merged.features, single.features, rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_caches_from_two_machines_merge(lite0, tmp_path: Path, photos: list[Path]) -> None:
    a, b = FeatureCache(tmp_path / "a.sqlite"), FeatureCache(tmp_path / "b.sqlite")
    extract_features(photos[:6], lite0, cache=a)
    extract_features(photos[4:], lite0, cache=b)
    assert a.merge_from(b.path) == len(photos) - 6
    assert a.merge_from(b.path) == 0, "merging again adds nothing"
    assert extract_features(photos, lite0, cache=a).n_computed == 0
    (tmp_path / "junk.sqlite").write_text("not a database")
    from headstart.errors import CacheError

    with pytest.raises(CacheError):
        a.merge_from(tmp_path / "junk.sqlite")


@pytest.mark.slow
def test_a_mirror_averaged_extraction_stores_both_views_and_serves_the_one_view_command(sample: Path, cache) -> None:
    photos = sorted((sample / "test").glob("*/*.jpg"))[:4]
    both = extract_features(photos, cache=cache, precision="fp32", flip_average=True)
    assert both.spec.flip_average and both.n_computed == 4 and both.n_views_computed == 8
    single = extract_features(photos, cache=cache, precision="fp32")  # the default: one view
    assert not single.spec.flip_average and single.n_computed == 0 and single.n_cached == 4
    assert single.cache_key == both.cache_key, "one key: the views are stored, not their mean"
    assert cache.count(view="orig") == cache.count(view="mirror") == 4
    from headstart.features.backbones import load_backbone

    plain = load_backbone("tf_efficientnet_lite0")  # a loaded backbone: single view unless asked
    import torch

    x = torch.stack([plain.transform()(__import__("PIL.Image").Image.open(p).convert("RGB")) for p in photos])
    with torch.no_grad():
        want = plain.features(x).numpy()
    cosine = (single.features * want).sum(1) / np.linalg.norm(single.features, axis=1) / np.linalg.norm(want, axis=1)
    assert cosine.min() > 0.99, cosine  # single-view features (JPEG draft decoding aside)


def test_every_public_name_is_importable_from_the_package_which_costs_nothing_to_import() -> None:
    import importlib

    import headstart.features as features

    for module, names in features._MODULES.items():
        assert set(names) == set(importlib.import_module(f"headstart.features.{module}").__all__), module
        for name in names:
            assert getattr(features, name) is getattr(importlib.import_module(f"headstart.features.{module}"), name)
    code = "import sys, headstart.features; print(*(m in sys.modules for m in ('numpy', 'torch', 'timm')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "False"]
