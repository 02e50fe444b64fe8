"""Frozen stages computed once: the cut network computes what the whole one does, the bank's views are the same in
every fit and differ between views, and frozen stages stay frozen (BatchNorm statistics included). Real weights,
real photos."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every test here runs a real backbone


@pytest.fixture(scope="module")
def network():
    """Its own lite0 (building the network drops the ImageNet head of the model it is given)."""
    from headstart.features import load_backbone
    from headstart.models.finetune.parts import build_network

    return build_network(load_backbone("tf_efficientnet_lite0"), 3, 0.2)


@pytest.mark.parametrize("unfreeze, where", [("1", "conv_head"), ("2", "blocks.6"), ("3", "blocks.5")])
def test_prefix_then_tail_is_the_whole_network(network, sample: Path, unfreeze: str, where: str) -> None:
    import torch

    from headstart.data import load_image
    from headstart.models.finetune.frozen import split_network
    from headstart.models.finetune.parts import photo_transform

    split = split_network(network, unfreeze)
    assert split.where == where
    transform = photo_transform(network.backbone.spec.data_config, "none", False)
    x = torch.stack([transform(load_image(p)) for p in sorted((sample / "test" / "pug").glob("*.jpg"))])
    network.eval()
    with torch.no_grad():
        torch.testing.assert_close(split.tail(split.prefix(x)), network(x), rtol=1e-4, atol=1e-4)
    assert {id(p) for p in split.tail.parameters()} <= {id(p) for p in network.parameters()}, (
        "the tail is the network's"
    )


def test_nothing_to_cut_when_everything_trains(network) -> None:
    from headstart.models.finetune.frozen import split_network

    assert split_network(network, "all") is None
    assert split_network(network, "9") is None  # (9 coarse groups in lite0: every one trains)


def test_the_banks_views_are_seeded_by_photo_and_view(network, sample: Path) -> None:
    import torch

    from headstart._io import sha256_file
    from headstart.models.finetune.frozen import ActivationBank, split_network

    photos = [(sha256_file(p), p) for p in sorted((sample / "train" / "Persian").glob("*.jpg"))[:3]]
    split = split_network(network, "2")
    config = network.backbone.spec.data_config
    first = ActivationBank(split, config, "light", 0, "fp32", batch_size=2)
    again = ActivationBank(split, config, "light", 0, "fp32", batch_size=3)
    a0, a1 = first.training_views(photos, 0), first.training_views(photos, 1)
    assert a0.shape == (3, 192, 7, 7) and first.computed == 6
    torch.testing.assert_close(again.training_views(photos, 0), a0)  # a fresh bank, other batches: the same views
    assert not torch.allclose(a0, a1), "two views of a photo are two augmentations"
    plain = first.plain_views(photos)
    assert plain.shape == (3, 2, 192, 7, 7) and first.computed == 12
    first.training_views(photos, 0)
    assert first.computed == 12, "computed once"


def test_frozen_stages_keep_their_weights_and_statistics_while_the_tail_trains(network, sample: Path) -> None:
    import torch

    from headstart._io import sha256_file
    from headstart.models.finetune.frozen import ActivationBank, split_network
    from headstart.models.finetune.parts import trainable_groups

    split = split_network(network, "2")
    trainable_groups(network, "2")
    frozen_before = {k: v.clone() for k, v in network.trunk.blocks[5].state_dict().items()}
    photos = [(sha256_file(p), p) for p in sorted((sample / "train" / "pug").glob("*.jpg"))[:4]]
    bank = ActivationBank(split, network.backbone.spec.data_config, "light", 0, "fp32")
    network.train()  # (BatchNorm in training mode everywhere, as the loop sets it) …
    split.freeze()  # … but the frozen stages are put back in eval mode
    acts = bank.training_views(photos, 0)
    head_before = network.head.weight.clone()
    optimizer = torch.optim.SGD([p for p in network.parameters() if p.requires_grad], lr=0.1)
    split.tail(acts).logsumexp(1).sum().backward()
    optimizer.step()
    assert not torch.equal(network.head.weight, head_before), "the tail trained"
    for key, value in network.trunk.blocks[5].state_dict().items():
        torch.testing.assert_close(value, frozen_before[key], msg=key)
    assert all(not m.training for m in split.frozen)


@pytest.mark.parametrize("precision, floor", [("fp32", 0.9999), ("bf16", 0.99)])
def test_the_frozen_stages_run_on_openvino_and_give_torchs_activations(
    network, sample: Path, tmp_path: Path, monkeypatch, precision: str, floor: float
) -> None:
    """A bank with a content key converts the prefix once (into the per-machine store) and computes activations
    within cosine ``floor`` of torch fp32's, photo by photo; a second bank with the same key converts nothing."""
    import torch

    from headstart._io import sha256_file
    from headstart.features.openvino_modules import frozen_module_path
    from headstart.models.finetune.frozen import ActivationBank, split_network

    monkeypatch.setenv("HEADSTART_ENGINE_DIR", str(tmp_path / "engines"))
    photos = [(sha256_file(p), p) for p in sorted((sample / "test").glob("*/*.jpg"))[:6]]
    split = split_network(network, "2")
    config = network.backbone.spec.data_config
    key = f"{network.backbone.spec.fingerprint}|{split.where}"
    reference = ActivationBank(split, config, "none", 0, "fp32")  # no key: torch, fp32
    fast = ActivationBank(split, config, "none", 0, precision, engine_key=key)
    expected, got = reference.plain_views(photos), fast.plain_views(photos)
    assert reference.engine == "torch" and fast.engine == "openvino"
    cosine = torch.nn.functional.cosine_similarity(got.float().flatten(2), expected.flatten(2), dim=2)
    assert float(cosine.min()) >= floor, cosine
    saved = frozen_module_path(f"{key}|{(3, 224, 224)}")
    assert saved.is_file() and saved.with_suffix(".bin").is_file()
    stamp = saved.stat().st_mtime_ns
    again = ActivationBank(split, config, "none", 0, precision, engine_key=key)
    again.plain_views(photos[:2])
    assert again.engine == "openvino" and saved.stat().st_mtime_ns == stamp, "converted once, then reused"


def test_a_later_process_reads_the_views_from_the_cache_folder_and_computes_none(
    network, sample: Path, tmp_path: Path, monkeypatch
) -> None:
    """The shared bank keeps its views in the cache folder: after the process's banks are gone (as in a new
    process), the same photos, backbone, cut, augmentation and seed give the same activations, bit for bit, with
    no frozen pass; another seed computes its own."""
    import torch

    from headstart._io import sha256_file
    from headstart.models.finetune.frozen import ActivationBank, clear_banks, split_network

    monkeypatch.setenv("HEADSTART_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HEADSTART_ENGINE_DIR", str(tmp_path / "engines"))
    photos = [(sha256_file(p), p) for p in sorted((sample / "test").glob("*/*.jpg"))[:4]]
    split, spec = split_network(network, "2"), network.backbone.spec

    def bank(seed: int = 0):
        clear_banks()
        return ActivationBank.shared(split, spec, augment="light", seed=seed, precision="fp32")

    first = bank()
    views, plain = first.training_views(photos, 1), first.plain_views(photos)
    assert first.computed == 4 + 8 and first.loaded == 0
    assert list((tmp_path / "cache" / "activations").iterdir()), "kept in the cache folder"
    later = bank()
    assert torch.equal(later.training_views(photos, 1), views) and torch.equal(later.plain_views(photos), plain)
    assert later.computed == 0 and later.loaded == 4 + 8, "no frozen pass"
    other = bank(seed=1)
    other.training_views(photos[:1], 1)
    assert other.computed == 1 and other.loaded == 0
    clear_banks()
