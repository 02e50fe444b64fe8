"""The OpenVINO engine: faithful to torch fp32 on every bundled photo, torch-free once converted, the default on CPUs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino")

from headstart._validation import ParameterError
from headstart.features import FeatureCache
from headstart.features.extract import decode_size, extract_features, preprocessor
from headstart.features.openvino import INT8_PRECISION, converted_path, resolve_engine
from headstart.features.preprocess import uint8_preprocessor

pytestmark = pytest.mark.slow


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def photos(sample: Path) -> list[Path]:
    return sorted(sample.glob("*/*/*.jpg"))


def _timm_way(lite0):
    """timm's own eval transform on the photo as extraction decodes it (the full resize, then the crop)."""
    from headstart.data.images import load_image

    transform = lite0.transform()
    return lambda path: transform(load_image(path, draft_size=decode_size(lite0.spec)))


@pytest.fixture(scope="module")
def reference(photos, lite0) -> np.ndarray:
    """torch fp32 features of every bundled photo from the pipeline's crops (the pixels every engine reads): what
    every engine is held to. (The crops against timm's own transform: tests/features/test_pipeline.py.)"""
    import torch

    decode = preprocessor(lite0)
    with torch.inference_mode():
        return np.concatenate(
            [
                lite0.features(torch.stack([decode(p) for p in photos[i : i + 16]])).numpy()
                for i in range(0, len(photos), 16)
            ]
        )


def test_the_crop_box_crop_is_timms_transform_but_for_rounding(photos, lite0) -> None:
    """PIL + numpy preprocessing (the resize computed at the crop box only) gives timm's eval transform's pixels
    (resize, crop, /255, mean/std) but for rounding at the box's edges; the torch input is the same crop."""
    timm_way = _timm_way(lite0)
    ours = uint8_preprocessor(lite0.spec, draft=decode_size(lite0.spec))
    torch_input = preprocessor(lite0)
    mean, std = (np.asarray(lite0.spec.data_config[k], np.float32)[:, None, None] for k in ("mean", "std"))
    for path in photos:
        crop = ours(path)
        assert crop.dtype == np.uint8 and crop.shape == (224, 224, 3)
        mine = (crop.transpose(2, 0, 1).astype(np.float32) / 255 - mean) / std
        levels = np.abs(mine - timm_way(path).numpy()) * std * 255  # (in 0-255 steps)
        assert levels.mean() < 0.25 and np.quantile(levels, 0.999) <= 3, (path, levels.mean(), levels.max())
        np.testing.assert_allclose(torch_input(path).numpy(), mine, atol=1e-6, err_msg=str(path))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_features_are_within_cosine_099_of_torch_fp32_for_every_photo(
    photos, lite0, reference, tmp_path, precision
) -> None:
    feats = extract_features(
        photos, lite0, cache=FeatureCache(tmp_path / "f.sqlite"), engine="openvino", precision=precision
    )
    assert feats.n_computed == len(photos) and feats.cache_key.endswith(f"-{precision}")
    cosine = _cosines(feats.features, reference)
    assert cosine.min() >= (0.9999 if precision == "fp32" else 0.99), (precision, cosine.min())
    assert converted_path(lite0.spec, precision).is_file()  # converted once, into the per-machine store


def test_mirror_views_match_torch(photos, lite0, tmp_path) -> None:
    import torch

    few = photos[:6]
    decode = preprocessor(lite0)
    with torch.inference_mode():
        want = lite0.with_flip_average(True).features(torch.stack([decode(p) for p in few])).numpy()
    got = extract_features(
        few, lite0, cache=FeatureCache(tmp_path / "f.sqlite"), engine="openvino", precision="fp32", flip_average=True
    ).features
    assert _cosines(got, want).min() >= 0.9999


def test_the_probe_scores_the_same_on_openvino_features(sample, lite0, tmp_path) -> None:
    """A probe fitted and scored on OpenVINO bf16 features gets the test photos right as on torch fp32 ones
    (within one photo: the noise of 13 test photos)."""
    from sklearn.linear_model import LogisticRegression

    scores = {}
    for engine, precision in [("torch", "fp32"), ("openvino", "bf16")]:
        cache = FeatureCache(tmp_path / f"{engine}.sqlite")
        split = {}
        for part in ("train", "test"):
            paths = sorted((sample / part).glob("*/*.jpg"))
            feats = extract_features(paths, lite0, cache=cache, engine=engine, precision=precision)
            split[part] = feats.features, np.array([p.parent.name for p in paths])
        probe = LogisticRegression(C=1.0, max_iter=2000).fit(*split["train"])
        scores[engine] = int((probe.predict(split["test"][0]) == split["test"][1]).sum())
    assert abs(scores["torch"] - scores["openvino"]) <= 1, scores


def test_a_cached_model_runs_without_torch_or_timm(photos, lite0, tmp_path) -> None:
    """Once the converted model is cached, extraction in a fresh process imports neither torch nor timm, and gives
    the features this process gives."""
    here = extract_features(
        photos[:5], lite0, cache=FeatureCache(tmp_path / "a.sqlite"), engine="openvino", precision="bf16"
    ).features
    script = f"""
import json, sys
from headstart.features import FeatureCache, extract_features
feats = extract_features({[str(p) for p in photos[:5]]!r}, "tf_efficientnet_lite0", precision="bf16",
                         cache=FeatureCache({str(tmp_path / "b.sqlite")!r}))
print(json.dumps({{"computed": feats.n_computed, "features": feats.features.tolist(),
                  "loaded": sorted(m for m in ("torch", "timm", "torchvision") if m in sys.modules)}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=os.environ.copy(), timeout=300
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["loaded"] == [] and result["computed"] == 5
    np.testing.assert_allclose(np.asarray(result["features"], np.float32), here, atol=1e-5)


def test_auto_is_openvino_on_cpus_and_torch_on_cuda(lite0) -> None:
    assert resolve_engine("auto", "bf16", "cpu", lite0.spec) == ("openvino", "bf16")
    assert resolve_engine("auto", "bf16", "cuda", lite0.spec) == ("torch", "bf16")
    assert resolve_engine("openvino", "int8", "cpu", lite0.spec) == ("openvino", INT8_PRECISION)
    with pytest.raises(ParameterError, match="OpenVINO engine only"):
        resolve_engine("torch", "int8", "cpu", lite0.spec)
    with pytest.raises(ParameterError, match="CPU only"):
        resolve_engine("openvino", "fp32", "cuda", lite0.spec)


def test_int8_features_stay_within_cosine_097_of_fp32(photos, lite0, reference, tmp_path) -> None:
    pytest.importorskip("nncf")
    feats = extract_features(
        photos, lite0, cache=FeatureCache(tmp_path / "f.sqlite"), engine="openvino", precision="int8"
    )
    assert feats.cache_key.endswith(INT8_PRECISION)  # (beyond fp32's tolerance: never mixed with its features)
    assert _cosines(feats.features, reference).min() >= 0.97


def test_a_damaged_converted_model_is_converted_again(photos, lite0, tmp_path) -> None:
    from headstart.features import openvino_runtime as engine

    extract_features(photos[:1], lite0, cache=FeatureCache(tmp_path / "a.sqlite"), engine="openvino", precision="fp32")
    path = converted_path(lite0.spec, "fp32")
    path.write_text("<net>half a file")
    engine.compiled_model.cache_clear()  # (as a new process finds it)
    feats = extract_features(
        photos[:2], lite0, cache=FeatureCache(tmp_path / "b.sqlite"), engine="openvino", precision="fp32"
    )
    assert feats.n_computed == 2 and "half a file" not in path.read_text()


def test_compiled_models_are_cached_and_a_damaged_blob_is_compiled_again(photos, lite0, tmp_path) -> None:
    """OpenVINO's compiled-model cache (a one-photo predict's compile: 0.15-0.3 s, read back: 0.06 s) lives in the
    per-machine store; a blob cut short (a killed process, a full disk) costs a compile, not a wrong feature."""
    from headstart._io import engine_dir
    from headstart.features import openvino_runtime as engine

    first = extract_features(
        photos[:2], lite0, cache=FeatureCache(tmp_path / "a.sqlite"), engine="openvino", precision="fp32"
    )
    blobs = list((engine_dir() / "openvino-compiled").glob("*.blob"))
    assert blobs, "the compiled model was cached"
    for blob in blobs:
        with blob.open("r+b") as f:
            f.truncate(blob.stat().st_size // 3)
    engine.compiled_model.cache_clear()  # (as a new process finds it)
    engine._core.cache_clear()
    again = extract_features(
        photos[:2], lite0, cache=FeatureCache(tmp_path / "b.sqlite"), engine="openvino", precision="fp32"
    )
    assert again.n_computed == 2 and _cosines(again.features, first.features).min() > 0.9999


def test_predicting_a_new_photo_imports_no_torch(sample_model: Path, sample: Path, tmp_path: Path) -> None:
    """`headstart predict MODEL photo` on a photo the cache has never seen, once the backbone is converted (training
    the model converted it): OpenVINO computes the features, neither torch nor timm is imported."""
    photo = tmp_path / "pug.jpg"
    photo.write_bytes(sorted((sample / "test" / "pug").glob("*.jpg"))[0].read_bytes() + b"\0")  # new bytes
    script = (
        "import atexit, json, sys\n"
        "atexit.register(lambda: print('MODULES', json.dumps(sorted(m for m in ('torch', 'timm', 'openvino') "
        "if m in sys.modules))))\n"
        f"sys.argv = ['headstart', 'predict', {str(sample_model)!r}, {str(photo)!r}, '--top-k', '1']\n"
        "from headstart.cli import main\nmain()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    modules = json.loads(next(x for x in out.stdout.splitlines() if x.startswith("MODULES "))[len("MODULES ") :])
    assert modules == ["openvino"] and "pug" in out.stdout, (modules, out.stdout)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_compiled_blobs_get_the_umasks_mode_like_every_output(photos, lite0, tmp_path, umask: int) -> None:
    """OpenVINO writes its compiled blobs 0440; headstart gives them 0666 minus the umask, like every file it writes."""
    from headstart._io import engine_dir
    from headstart.features import openvino_runtime as engine

    folder = engine_dir() / "openvino-compiled"
    for blob in folder.glob("*.blob"):  # compiled afresh under this umask
        blob.unlink()
    engine.compiled_model.cache_clear()
    engine._core.cache_clear()
    old = os.umask(umask)
    try:
        extract_features(photos[:1], lite0, cache=FeatureCache(tmp_path / "c.sqlite"), engine="openvino")
    finally:
        os.umask(old)
    modes = {blob.name: oct(blob.stat().st_mode & 0o777) for blob in folder.glob("*.blob")}
    assert modes and set(modes.values()) == {oct(0o666 & ~umask)}, modes
