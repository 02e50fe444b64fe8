"""train's validation split keeps near duplicates on one side, as it does identical files: a resized, re-encoded
copy (or a mirrored, slightly cropped one) of a validation photo in the training part would make the validation
figures a memory test. Real photos, real weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageOps

pytestmark = pytest.mark.slow  # every test here runs a real backbone


def _with_copies(sample: Path, root: Path) -> list[tuple[Path, Path]]:
    """The sample's training photos plus one copy per breed under a neutral name: resized to 70% and re-encoded,
    or (every other breed) also mirrored and cropped by 4% a side. Returns (original, copy) pairs."""
    shutil.copytree(sample / "train", root)
    pairs = []
    for k, folder in enumerate(sorted(p for p in root.iterdir() if p.is_dir())):
        original = sorted(folder.glob("*.jpg"))[1]
        image = Image.open(original).convert("RGB")
        w, h = image.size
        if k % 2:
            image = ImageOps.mirror(image).crop((w // 25, h // 25, w - w // 25, h - h // 25))
        image = image.resize((int(image.width * 0.7), int(image.height * 0.7)), Image.Resampling.BILINEAR)
        copy = folder / f"img_{k:03d}.jpg"
        image.save(copy, quality=70)
        pairs.append((original, copy))
    return pairs


def test_near_duplicates_land_on_one_side_of_the_split(sample: Path, tmp_path: Path) -> None:
    from headstart import ImageClassifier
    from headstart.data import load_dataset, train_val_split
    from headstart.features import FeatureCache, extract_features

    pairs = _with_copies(sample, tmp_path / "photos")
    cache = FeatureCache(tmp_path / "cache" / "features.sqlite")
    clf = ImageClassifier(backbone="tf_efficientnet_lite0").fit(tmp_path / "photos", cache=cache, progress=False)
    validation = {Path(p).name for p in clf.validation_["paths"]}
    sides = [(a.name in validation, b.name in validation) for a, b in pairs]
    assert all(x == y for x, y in sides), f"a copy and its original on both sides: {sides}"
    assert any(x for x, _ in sides), "some copies are in the validation part (the check above is not vacuous)"

    # The same split by file content alone (identical files only) puts some of these pairs on both sides.
    data = load_dataset(tmp_path / "photos")
    feats = extract_features(data.paths, "tf_efficientnet_lite0", cache=cache)
    _, val = train_val_split(
        data.subset(feats.indices.tolist()), val_fraction=clf.val_fraction, seed=clf.seed, groups=feats.hashes
    )
    names = {p.name for p in val.paths}
    assert any((a.name in names) != (b.name in names) for a, b in pairs), "the grouping above did something"


def test_split_keys_join_copies_and_keep_distinct_photos_apart(sample: Path, tmp_path: Path) -> None:
    from headstart.data import load_dataset
    from headstart.features import FeatureCache, extract_features
    from headstart.models.inputs import split_keys
    from headstart.models.memo import Memo

    pairs = _with_copies(sample, tmp_path / "photos")
    data = load_dataset(tmp_path / "photos")
    cache = FeatureCache(tmp_path / "cache" / "features.sqlite")
    feats = extract_features(data.paths, "tf_efficientnet_lite0", cache=cache)
    memo = Memo.beside(cache)
    keys = dict(zip(map(str, data.paths), split_keys(data.paths, feats.hashes, feats.features, memo=memo)))
    for a, b in pairs:
        assert keys[str(a)] == keys[str(b)], (a.name, b.name)
    assert len(set(keys.values())) == len(data.paths) - len(pairs), "no other photos joined"
    again = split_keys(data.paths, feats.hashes, feats.features, memo=memo)  # the hashes read back from the memo
    assert again == [keys[str(p)] for p in data.paths]
