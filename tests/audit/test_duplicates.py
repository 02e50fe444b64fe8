"""Duplicate finding on real photos: perceptual hashes of altered copies, exact copies by bytes and by pixels,
grouping (union-find), and the keys a split uses to keep a group on one side."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

from headstart.audit.faults import altered_copy
from headstart.data.hashing import hamming, image_signatures, perceptual_hash
from headstart.features.duplicates import DuplicateGroup, find_duplicates, group_keys


@pytest.fixture(scope="module")
def photos(sample):
    return sorted((sample / "test").rglob("*.jpg"))


def test_phash_survives_resizing_reencoding_and_mirroring_but_tells_photos_apart(photos, tmp_path):
    rng = np.random.default_rng(0)
    for original in photos[:6]:
        with Image.open(original) as image:
            h, _ = perceptual_hash(image.convert("RGB"))
        for kind in ("resize", "reencode"):
            copy = tmp_path / f"{original.stem}-{kind}.jpg"
            altered_copy(original, copy, kind, rng)
            with Image.open(copy) as image:
                assert hamming(h, perceptual_hash(image)[0]) <= 8, (original.name, kind)
        with Image.open(original) as image:
            mirrored = ImageOps.mirror(image.convert("RGB"))
        direct, as_mirror = perceptual_hash(mirrored)
        assert hamming(h, as_mirror) <= 2, original.name  # the mirror hash of the mirror image is the photo's hash
        assert hamming(h, direct) > 8
    hashes = [perceptual_hash(Image.open(p).convert("RGB"))[0] for p in photos]
    distances = [hamming(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1 :]]
    assert min(distances) > 8, "two different photos of the sample hash alike"


def test_exact_duplicates_by_bytes_and_by_pixels(photos, tmp_path):
    first = tmp_path / "a.png"
    Image.open(photos[0]).convert("RGB").save(first, compress_level=1)
    same_pixels = tmp_path / "b.png"
    Image.open(first).save(same_pixels, compress_level=9)  # other bytes, same pixels
    same_bytes = tmp_path / "c.png"
    same_bytes.write_bytes(first.read_bytes())
    other = photos[1]
    paths = [first, same_pixels, same_bytes, other]
    assert first.read_bytes() != same_pixels.read_bytes()
    sigs = image_signatures(paths)
    import hashlib

    file_hashes = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    groups = find_duplicates(
        file_hashes=file_hashes,
        pixel_hashes=sigs.pixel_hashes,
        phashes=sigs.phashes,
        mirror_phashes=sigs.mirror_phashes,
    )
    assert len(groups) == 1
    group = groups[0]
    assert (group.kind, group.members, group.similarity) == ("exact", [0, 1, 2], 1.0)
    assert {"bytes", "pixels"} <= set(group.evidence)
    only_bytes = find_duplicates(file_hashes=file_hashes)
    assert [g.members for g in only_bytes] == [[0, 2]]


def test_near_rules_join_on_hash_or_features_and_chain_into_groups():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(5, 16))
    features = np.vstack([base, base[0] + 0.05 * rng.normal(size=16), base[1] + 0.01 * rng.normal(size=16)])
    far = [int(v) for v in rng.integers(0, 2**63, size=7)]
    phashes = list(far)
    phashes[6] = phashes[1] ^ 0b1111  # photo 6: 4 bits from photo 1 and features near it
    phashes[3] = phashes[2] ^ 0b11  # photo 3: 2 bits from photo 2, but unrelated features
    groups = find_duplicates(features=features, phashes=phashes)
    members = sorted(g.members for g in groups)
    # photo 5 is close to photo 0 in features only (cosine ~0.99), but its hash is unrelated (~32 bits): kept apart;
    # photos 2 and 3 hash alike, but two unrelated photos can (full-resolution cats did, 8 bits apart): kept apart
    assert members == [[1, 6]], members
    hashes_only = find_duplicates(phashes=phashes)
    assert sorted(g.members for g in hashes_only) == [[1, 6], [2, 3]]
    features_only = find_duplicates(features=features)
    assert sorted(g.members for g in features_only) == [[0, 5], [1, 6]]
    chained = find_duplicates(file_hashes=["x", "x", "y", "y"], pixel_hashes=["p", "q", "q", "r"])
    assert [g.members for g in chained] == [[0, 1, 2, 3]]  # 0=1 by bytes, 1=2 by pixels, 2=3 by bytes


def test_group_keys_give_every_member_of_a_group_one_key():
    groups = [DuplicateGroup("near", [0, 3], 0.95), DuplicateGroup("exact", [1, 2], 1.0)]
    assert group_keys(5, groups) == ["0", "1", "1", "0", "4"]
    assert group_keys(3, [DuplicateGroup("near", [0, 2], 0.9)], base=["a", "b", "c"]) == ["a", "b", "a"]


def test_signals_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="different lengths"):
        find_duplicates(file_hashes=["a", "b"], features=np.zeros((3, 4)))


def test_near_duplicate_keys_keep_a_resized_copy_on_the_side_of_its_original(photos, tmp_path):
    from headstart.data.datasets import Dataset, Sample, train_val_split
    from headstart.features.duplicates import near_duplicate_keys

    copy = tmp_path / "copy.jpg"
    altered_copy(photos[0], copy, "resize", np.random.default_rng(0))
    paths = [*photos, copy]
    import hashlib

    hashes = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    keys = near_duplicate_keys(hashes, signatures=image_signatures(paths))
    assert keys[-1] == keys[0] and len(set(keys)) == len(photos)
    dataset = Dataset(
        [Sample(p, p.parent.name) for p in paths], sorted({p.parent.name for p in paths}), tmp_path, "folder"
    )
    for seed in range(5):
        train, _val = train_val_split(dataset, val_fraction=0.3, seed=seed, groups=keys)
        sides = [copy in train.paths, photos[0] in train.paths]
        assert sides[0] == sides[1]
