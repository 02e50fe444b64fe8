"""TargetNetwork: 0–1 images in, logits out, classes by index or name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision.transforms.functional as F
from PIL import Image

from headstart.errors import HeadstartError
from headstart.models.target import load_target

pytestmark = pytest.mark.slow  # every test here runs a real backbone


@pytest.fixture(scope="module")
def imagenet_net():
    return load_target("tf_efficientnet_lite0")


def _pixels(path: Path) -> torch.Tensor:
    img = Image.open(path).convert("RGB")
    return F.to_tensor(F.center_crop(F.resize(img, 256, interpolation=F.InterpolationMode.BICUBIC), 224))[None]


def test_normalisation_is_inside_the_network(imagenet_net, sample: Path) -> None:
    p = imagenet_net.probabilities(_pixels(sample / "test" / "Siamese" / "Siamese_17.jpg"))
    assert p.argmax().item() == 284 and p.max().item() > 0.9


@pytest.mark.parametrize(
    ("name", "index"),
    [("Siamese cat", 284), ("siamese", 284), ("zebra", 340), ("espresso", 967), ("967", 967), (340, 340)],
)
def test_classes_by_name_or_index(imagenet_net, name, index) -> None:
    assert imagenet_net.class_index(name) == index


@pytest.mark.parametrize(("bad", "words"), [("unicornx", "Unknown class 'unicornx'"), (1000, "out of range")])
def test_unknown_classes_are_explained(imagenet_net, bad, words) -> None:
    with pytest.raises(HeadstartError, match=words):
        imagenet_net.class_index(bad)


def test_a_trained_model_is_a_target_too(sample: Path, tmp_path: Path) -> None:
    from headstart.workflows.training import train

    result = train(sample / "train", out=tmp_path / "m.safetensors")
    net = load_target(result.model_path)
    assert net.class_names == result.model.classes and net.class_index("saint bernard") == net.class_names.index(
        "saint_bernard"
    )
    p = net.probabilities(_pixels(sample / "test" / "pug" / "pug_17.jpg"))
    assert net.class_names[p.argmax().item()] == "pug"
