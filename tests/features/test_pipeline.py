"""The one inference pipeline: crop-box preprocessing faithful to the plain timm pipeline, its identity in the cache
key, converted backbones shared by every cache folder, asynchronous runs equal to synchronous ones, measured plans,
and cached photos that never wait for uncached ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_data

from headstart.features import FeatureCache
from headstart.features.extract import extract_features
from headstart.features.pipeline import Pipeline, top_k
from headstart.features.preprocess import PREPROCESSING


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _plain_fp32(lite0, photos: list[Path]) -> np.ndarray:
    """The plain pipeline: PIL opens the file, timm's eval transform (the full resize, then the crop), torch fp32."""
    import torch
    from PIL import Image

    transform = lite0.transform()
    with torch.inference_mode():
        return np.concatenate(
            [
                lite0.features(torch.stack([transform(Image.open(p).convert("RGB")) for p in photos[i : i + 16]]))
                .float()
                .numpy()
                for i in range(0, len(photos), 16)
            ]
        )


@pytest.mark.slow
@pytest.mark.parametrize("where", ["sample", "catsdogs-fullres"])
def test_crop_box_features_are_within_cosine_099_of_the_plain_fp32_pipeline_for_every_photo(
    where, sample, lite0, tmp_path
) -> None:
    """Every photo (the bundled sample; 120 full-size JPEGs of the shared set, where draft decoding and the crop
    box both act) through the default pipeline (crop box, the default engine and precision) against PIL + timm +
    torch fp32."""
    if where == "sample":
        photos = sorted(sample.glob("*/*/*.jpg"))
    else:
        photos = sorted(shared_data(where).glob("*/*.jpg"))[::8][:120]
    feats = extract_features(photos, lite0, cache=FeatureCache(tmp_path / "f.sqlite"))
    assert len(feats.indices) == len(photos) and feats.cache_key.split("-")[-2] == PREPROCESSING
    cosine = _cosines(feats.features, _plain_fp32(lite0, photos))
    print(f"{where}: {len(photos)} photos, min cosine {cosine.min():.4f}, mean {cosine.mean():.4f}")
    assert cosine.min() >= 0.99, (where, cosine.min())


@pytest.mark.slow
def test_the_preprocessing_is_part_of_the_cache_key(sample, lite0, tmp_path) -> None:
    """Features of timm's transform (the earlier decoder) are not served for crop-box features: a new key."""
    cache = FeatureCache(tmp_path / "f.sqlite")
    pipe = Pipeline(lite0.spec, lite0, engine="torch", precision="fp32")
    assert pipe.cache_key(cache) == f"{lite0.spec.fingerprint}-{PREPROCESSING}-fp32"
    assert cache.register(lite0.spec, "fp32") != pipe.cache_key(cache)  # (timm's transform: the earlier key)
    photos = sorted((sample / "test" / "pug").glob("*.jpg"))[:2]
    cache.put_many(
        cache.register(lite0.spec, "fp32"), [(h, np.ones(1280, np.float32)) for h in cache.file_hashes(photos)]
    )
    feats = extract_features(photos, lite0, cache=cache, engine="torch", precision="fp32")
    assert feats.n_computed == 2, "the old decoder's rows are not reused"


@pytest.mark.slow
def test_asynchronous_runs_give_the_synchronous_features_and_keep_a_measured_plan(sample, lite0) -> None:
    pytest.importorskip("openvino")
    from headstart.features.openvino import converted_path
    from headstart.features.openvino_runtime import plan_path

    pipe = Pipeline(lite0.spec, lite0, engine="openvino", precision="fp32")
    photos = sorted(sample.glob("*/*/*.jpg"))[:40]
    crops = pipe.stack([pipe.decode(p) for p in photos])
    wanted = [(i, v) for i in range(len(photos)) for v in ("orig", "mirror")]
    sync = pipe.runner().embed(crops, wanted)
    runner = pipe.runner(throughput=True)
    plan = plan_path(converted_path(lite0.spec, "fp32"), "f32")
    assert plan.is_file() and {"requests", "batch", "measured"} <= set(json.loads(plan.read_text()))
    for n in range(0, len(photos), 8):  # batches submitted while earlier ones run
        runner.submit(crops[n : n + 8], [(i, v) for i in range(len(crops[n : n + 8])) for v in ("orig", "mirror")], n)
    done = dict(runner.ready() + runner.drain())
    assert sorted(done) == list(range(0, len(photos), 8))
    got = np.concatenate([done[n] for n in sorted(done)])
    assert _cosines(got, sync).min() > 0.9999


@pytest.mark.slow
def test_a_brand_new_cache_folder_converts_nothing_and_imports_no_torch(sample, lite0, tmp_path) -> None:
    """The converted backbone, its compiled blob, its card and its plan live in the per-machine store: `extract`
    with a new --cache-dir computes with OpenVINO at once, announces no conversion and imports neither torch nor
    timm."""
    pytest.importorskip("openvino")
    photos = sorted((sample / "test").glob("*/*.jpg"))
    extract_features(photos[:2], "tf_efficientnet_lite0", cache=FeatureCache(tmp_path / "warm.sqlite"))  # (converted)
    script = (
        "import atexit, json, sys\n"
        "atexit.register(lambda: print('MODULES', json.dumps(sorted(m for m in ('torch', 'timm', 'openvino') "
        "if m in sys.modules))))\n"
        f"sys.argv = ['headstart', 'extract', {str(sample / 'test')!r}, '--cache-dir', {str(tmp_path / 'new')!r}]\n"
        "from headstart.cli import main\nmain()\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=os.environ)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Converting" not in out.stderr, out.stderr
    modules = json.loads(out.stdout.split("MODULES", 1)[1])
    assert modules == ["openvino"], modules
    assert (tmp_path / "new" / "features.sqlite").is_file() and not (tmp_path / "new" / "backbones").exists()


@pytest.mark.slow
def test_iter_features_gives_the_cached_photos_first_and_reads_paths_a_chunk_at_a_time(sample, lite0, tmp_path) -> None:
    from headstart.features.stream import iter_features

    cache = FeatureCache(tmp_path / "f.sqlite")
    photos = sorted((sample / "test").glob("*/*.jpg"))[:6]
    extract_features(photos[3:5], lite0, cache=cache, engine="torch", precision="fp32")
    taken = []

    def lazily():
        for p in photos:
            taken.append(p)
            yield p

    it = iter_features(lazily(), lite0, cache=cache, chunk=3, engine="torch", precision="fp32")
    part, feats = next(it)
    assert len(taken) == 3, "only the first chunk's paths were read"
    assert [part[int(i)] for i in feats.indices] == photos[:3] and feats.n_computed == 3
    rest = list(it)
    assert (
        [([p[int(i)] for i in f.indices], f.n_computed) for p, f in rest]
        == [
            (photos[3:5], 0),  # the cached photos of the second chunk, before its uncached one is computed
            (photos[5:6], 1),
        ]
    )


def test_iter_features_holds_one_chunk_of_features_at_a_time(sample, lite0, tmp_path, monkeypatch) -> None:
    """Memory bounded by the chunk: once the caller lets a chunk go, the stream holds none of its features while it
    reads the next (before, the previous chunk's matrix lived on in the generator: two chunks at a time)."""
    import weakref

    from headstart.features import stream

    cache = FeatureCache(tmp_path / "f.sqlite")
    photos = sorted((sample / "test").glob("*/*.jpg"))[:6]
    extract_features(photos[:4], lite0, cache=cache, engine="torch", precision="fp32")
    held = []

    def watched(*args, **kwargs):  # the real extraction, noting what is still alive when it starts
        held.append(previous is not None and previous() is not None)
        return extract_features(*args, **kwargs)

    monkeypatch.setattr(stream, "extract_features", watched)
    previous = None
    for _, feats in stream.iter_features(photos, lite0, cache=cache, chunk=2, engine="torch", precision="fp32"):
        previous = weakref.ref(feats.features)
        del feats
    assert len(held) >= 4 and not any(held), held


def test_top_k_is_in_probability_order_with_ties_in_class_order() -> None:
    assert top_k(np.array([0.2, 0.5, 0.2, 0.1]), ["a", "b", "c", "d"], 3) == [("b", 0.5), ("a", 0.2), ("c", 0.2)]
    assert len(top_k(np.array([0.6, 0.4]), ["a", "b"], 5)) == 2
