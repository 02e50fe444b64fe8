"""Trust by content: a model file whose trunk is not the weights its metadata names never reads nor writes the genuine
weights' cache entries (features, converted networks), and says so in one clear error (issue 20)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from headstart.errors import ModelFileError
from headstart.features import BackboneSpec, FeatureCache, extract_features, load_backbone, offline_weight_file
from headstart.models.classifier import Classifier
from headstart.models.modelfile import read_model_file, save_model_file

pytestmark = pytest.mark.slow  # every test here runs a real backbone


def _test_photos(sample: Path) -> tuple[list[Path], list[str]]:
    photos = sorted(p for p in (sample / "test").rglob("*") if p.is_file())
    return photos, [p.parent.name for p in photos]


def _accuracy(model: Classifier, photos: list[Path], labels: list[str], cache: FeatureCache) -> float:
    predictions = model.predict(photos, top_k=1, cache=cache).predictions
    return float(np.mean([p.labels[0] == label for p, label in zip(predictions, labels)]))


def _altered(model: Path, out: Path, *, trunk: bool = True, head: bool = False, **backbone: object) -> Path:
    """A copy of the model file ``model`` with its trunk (and/or head) tensors altered, and its metadata's backbone
    table changed by ``backbone``; the recorded content hash is dropped, as a file of an older headstart has none."""
    tensors, document = read_model_file(model)
    tensors = {k: np.array(v) for k, v in tensors.items()}
    rng = np.random.default_rng(0)
    for name, array in tensors.items():
        if (trunk and name.startswith("backbone.") and array.ndim == 4) or (head and name == "head.weight"):
            tensors[name] = rng.permutation(array.reshape(-1)).reshape(array.shape).astype(array.dtype)
    document["backbone"] = {**document["backbone"], **backbone}
    document["backbone"].pop("trunk_sha256", None)
    return save_model_file(out, tensors, {k: v for k, v in document.items() if k not in ("format_version",)})


@pytest.fixture()
def fresh_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A brand-new cache folder and per-machine store (features; cards, converted networks) for this test only."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("HEADSTART_CACHE_DIR", str(folder))
    monkeypatch.setenv("HEADSTART_ENGINE_DIR", str(tmp_path / "engines"))
    return folder


def test_a_tampered_trunk_is_refused_and_never_poisons_the_genuine_cache(
    sample_model: Path, sample: Path, tmp_path: Path, fresh_cache_dir: Path
) -> None:
    photos, labels = _test_photos(sample)
    genuine = Classifier.load(sample_model)
    baseline = _accuracy(genuine, photos, labels, FeatureCache(tmp_path / "clean.sqlite"))
    assert baseline > 0.8

    tampered = _altered(sample_model, tmp_path / "tampered.safetensors")
    with pytest.raises(ModelFileError, match="not the ones its metadata names"):
        Classifier.load(tampered)
    cli = subprocess.run(
        [sys.executable, "-m", "headstart", "predict", str(tampered), str(photos[0]), "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "HEADSTART_CACHE_DIR": str(fresh_cache_dir)},  # (and the fresh engine store)
    )
    assert cli.returncode != 0 and "Traceback" not in cli.stderr, cli.stderr
    assert "not the ones its metadata names" in cli.stderr and cli.stdout == ""


def test_a_tampered_trunk_run_past_the_check_writes_only_under_its_own_content(
    sample_model: Path, sample: Path, tmp_path: Path, fresh_cache_dir: Path
) -> None:
    """The attack of issue 20 with the metadata check bypassed (a caller building the classifier from the tensors
    itself): the tampered trunk runs once on a fresh cache folder; its features and converted network are keyed by
    its own content, so the genuine model and `extract` afterwards are untouched."""
    photos, labels = _test_photos(sample)
    genuine = Classifier.load(sample_model)
    baseline = _accuracy(genuine, photos, labels, FeatureCache(tmp_path / "clean.sqlite"))
    tampered = _altered(sample_model, tmp_path / "tampered.safetensors")
    tensors, document = read_model_file(tampered)
    trunk = {k[len("backbone.") :]: v for k, v in tensors.items() if k.startswith("backbone.")}
    claimed = BackboneSpec.from_dict(document["backbone"])
    liar = Classifier(claimed, document["classes"], tensors["head.weight"], tensors["head.bias"], trunk)
    cache = FeatureCache(fresh_cache_dir / "features.sqlite")
    assert _accuracy(liar, photos, labels, cache) < baseline - 0.3  # (it is another network)
    assert liar.spec.fingerprint != genuine.spec.fingerprint

    # The genuine model on the same cache scores as before, and `extract` computes the genuine features.
    again = Classifier.load(sample_model)
    assert _accuracy(again, photos, labels, cache) == baseline
    extracted = extract_features(photos, "tf_efficientnet_lite0", cache=cache, flip_average=False)
    assert extracted.n_computed == 0  # (the genuine model's run above computed them: same content, same key)
    clean = extract_features(photos, "tf_efficientnet_lite0", cache=FeatureCache(tmp_path / "x.sqlite"))
    cosine = (extracted.features * clean.features).sum(1) / (
        np.linalg.norm(extracted.features, axis=1) * np.linalg.norm(clean.features, axis=1)
    )
    assert cosine.min() > 0.999, cosine


def test_a_lite0_trunk_named_lite1_is_refused_and_never_reads_lite1s_features(
    sample_model: Path, sample: Path, tmp_path: Path, fresh_cache_dir: Path
) -> None:
    if offline_weight_file("tf_efficientnet_lite1") is None:
        pytest.skip("tf_efficientnet_lite1's weight package is not installed")
    photos, _ = _test_photos(sample)
    lite1 = load_backbone("tf_efficientnet_lite1").spec
    cache = FeatureCache(fresh_cache_dir / "features.sqlite")
    extract_features(photos, "tf_efficientnet_lite1", cache=cache, engine="torch", flip_average=False)  # cached
    named = {k: lite1.to_dict()[k] for k in ("name", "source", "weights_id", "data_config")}
    mislabelled = _altered(sample_model, tmp_path / "lite1.safetensors", trunk=False, **named)
    with pytest.raises(ModelFileError, match="not the ones its metadata names"):
        Classifier.load(mislabelled)

    tensors, document = read_model_file(mislabelled)
    trunk = {k[len("backbone.") :]: v for k, v in tensors.items() if k.startswith("backbone.")}
    claimed = BackboneSpec.from_dict(document["backbone"])
    liar = Classifier(claimed, document["classes"], tensors["head.weight"], tensors["head.bias"], trunk)
    assert liar.spec.fingerprint != lite1.fingerprint
    with pytest.raises(ModelFileError, match="do not fit tf_efficientnet_lite1"):  # computed, not read: refused
        liar.predict(photos[:2], cache=cache, engine="torch")


def test_a_model_with_only_its_head_altered_still_loads_and_shares_the_genuine_features(
    sample_model: Path, sample: Path, tmp_path: Path
) -> None:
    photos, _ = _test_photos(sample)
    genuine = Classifier.load(sample_model)
    cache = FeatureCache(tmp_path / "features.sqlite")
    genuine.predict(photos, cache=cache, engine="torch")
    altered = Classifier.load(_altered(sample_model, tmp_path / "head.safetensors", trunk=False, head=True))
    assert altered.spec.fingerprint == genuine.spec.fingerprint
    assert not np.array_equal(altered.head_weight, genuine.head_weight)
    assert altered.features(photos, cache=cache, engine="torch").n_computed == 0


def test_a_recorded_content_hash_that_does_not_match_the_trunk_is_refused(sample_model: Path, tmp_path: Path) -> None:
    tensors, document = read_model_file(sample_model)
    assert document["backbone"]["trunk_sha256"] == Classifier.load(sample_model).spec.trunk_sha256
    document["backbone"]["trunk_sha256"] = "f" * 64
    path = save_model_file(tmp_path / "hash.safetensors", tensors, document)
    with pytest.raises(ModelFileError, match="not the ones its metadata names"):
        Classifier.load(path)


def test_a_network_changed_after_loading_cannot_write_under_its_old_key(lite0, sample: Path, tmp_path: Path) -> None:
    import torch

    from headstart.errors import BackboneUnavailableError

    backbone = load_backbone("tf_efficientnet_lite0")
    with torch.no_grad():
        backbone.model.conv_stem.weight.mul_(-1)
    cache = FeatureCache(tmp_path / "features.sqlite")
    with pytest.raises(BackboneUnavailableError, match="does not hold the weights"):
        extract_features(_test_photos(sample)[0][:2], backbone, cache=cache, engine="torch")
    assert cache.count() == 0
