"""Every command that reads pixels decodes a 12-megapixel phone photo reduced (JPEG draft mode), as extraction does:
the heat map, the feature maps, the class image's starting photo, the attacks (the photo attacked and the verdicts)
and fine-tuning's photos (plain and augmented, in the data set and in the frozen stages' bank).

The real decoder runs; the test only records the size of what each call decoded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import headstart.data.images as images

pytestmark = pytest.mark.slow

FULL = (4032, 3024)  # a 12 MP phone photo


@pytest.fixture(scope="module")
def phone_photo(sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = sorted((sample / "test").glob("*/*.jpg"))[0]
    path = tmp_path_factory.mktemp("phone") / "IMG_0001.jpg"
    Image.open(source).convert("RGB").resize(FULL, Image.BICUBIC).save(path, quality=92)
    return path


@pytest.fixture()
def decoded(monkeypatch: pytest.MonkeyPatch, phone_photo: Path) -> list[tuple[int, int]]:
    """The sizes the phone photo was decoded at, call by call."""
    sizes: list[tuple[int, int]] = []
    real = images._load

    def recording(path, **kwargs):
        image = real(path, **kwargs)
        if Path(path) == phone_photo and image is not None:
            sizes.append(image.size)
        return image

    monkeypatch.setattr(images, "_load", recording)
    return sizes


def _all_reduced(sizes: list[tuple[int, int]]) -> None:
    assert sizes, "the phone photo was not decoded at all"
    assert all(w <= FULL[0] // 2 and h <= FULL[1] // 2 for w, h in sizes), sizes  # 1/2 scale or less: not full size


def test_explain_and_feature_maps_decode_it_reduced(phone_photo: Path, decoded: list, tmp_path: Path) -> None:
    from headstart.inside.activations import feature_maps
    from headstart.inside.heatmap import explain

    e = explain("tf_efficientnet_lite0", phone_photo, tmp_path / "cam.png")
    maps = feature_maps("tf_efficientnet_lite0", phone_photo)
    _all_reduced(decoded)
    assert min(decoded[0]) >= 640, "still large enough to be shown"
    assert e.heatmap.shape and np.isfinite(maps.activations).all()


def test_the_class_image_reads_it_as_extraction_does(phone_photo: Path, decoded: list) -> None:
    from headstart.inside.class_image import probabilities_of_file
    from headstart.models.target import load_target

    probabilities = probabilities_of_file(load_target("tf_efficientnet_lite0"), phone_photo)
    _all_reduced(decoded)
    assert abs(float(probabilities.sum()) - 1) < 1e-4


def test_an_attack_perturbs_it_at_the_size_it_is_shown(phone_photo: Path, decoded: list) -> None:
    from headstart.attacks import attack

    result = attack("tf_efficientnet_lite0", phone_photo, eps="1/255", steps=1)
    _all_reduced(decoded)
    height, width = result.original.shape[:2]
    assert min(height, width) >= 640 and width <= FULL[0] // 2
    assert result.adversarial.shape == result.original.shape and result.linf_8bit <= 1


def test_fine_tuning_decodes_it_reduced_but_large_enough_for_its_crops(phone_photo: Path, decoded: list) -> None:
    from headstart.features.backbones import resolve_backbone
    from headstart.models.finetune.parts import photo_transform

    config = resolve_backbone("tf_efficientnet_lite0").data_config
    plain = photo_transform(config, "none", False)
    light = photo_transform(config, "light", True)
    assert tuple(plain.load(phone_photo).shape) == tuple(light.load(phone_photo).shape) == (3, 224, 224)
    _all_reduced(decoded)
    (plain_size, light_size) = decoded
    assert min(plain_size) >= 256  # the centre crop's source (224 / crop_pct)
    assert min(light_size) * 0.5**0.5 >= 224  # the smallest crop "light" takes (half the area) still fills 224
