"""Labels read from file names: only for the Oxford-IIIT Pet images, or when the user asks for it.

A flat folder of camera photos (``IMG_0001.jpg``, ``DSC_0006.jpg``) looks like ``<label>_<number>`` files, and was
once trained as an "IMG vs DSC" classifier without a word. So a flat folder is an Oxford-IIIT Pet ``images/``
folder only when every name starts with one of the data set's 37 breeds; any other flat folder takes its labels
from the names only with ``labels_from_filenames=True``, and then says which labels it found.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from headstart.errors import DataError

OXFORD_BREEDS = frozenset({
    "Abyssinian", "Bengal", "Birman", "Bombay", "British_Shorthair", "Egyptian_Mau", "Maine_Coon", "Persian",
    "Ragdoll", "Russian_Blue", "Siamese", "Sphynx",
    "american_bulldog", "american_pit_bull_terrier", "basset_hound", "beagle", "boxer", "chihuahua",
    "english_cocker_spaniel", "english_setter", "german_shorthaired", "great_pyrenees", "havanese", "japanese_chin",
    "keeshond", "leonberger", "miniature_pinscher", "newfoundland", "pomeranian", "pug", "saint_bernard", "samoyed",
    "scottish_terrier", "shiba_inu", "staffordshire_bull_terrier", "wheaten_terrier", "yorkshire_terrier",
})  # fmt: skip
"""The 37 breeds of the Oxford-IIIT Pet data set, spelt as its file names spell them (cats capitalised)."""

OXFORD_NAME = re.compile(r"^(?P<label>.+)_\d+$")
_NAME = re.compile(r"^(?P<label>.+?)[\s._-]*\(?\d+\)?$")  # cat_001, IMG_0001, dog-2, bird.7, cat (2), owl12


class LabelsFromFilenamesWarning(UserWarning):
    """Labels were taken from file names, as asked (``labels_from_filenames=True``); the message lists them."""


def is_oxford_images(stems: Sequence[str]) -> bool:
    """Every name is ``<breed>_<number>`` for a breed of the data set, and at least two breeds occur."""
    matches = [OXFORD_NAME.match(stem) for stem in stems]
    labels = {match["label"] for match in matches if match}
    return bool(stems) and all(matches) and len(labels) >= 2 and labels <= OXFORD_BREEDS


def label_of(stem: str) -> str | None:
    """The label a file name carries: the name without its trailing number (and the separator before it)."""
    match = _NAME.match(stem)
    if match is None or not any(ch.isalpha() for ch in match["label"]):
        return None
    return match["label"]


def labels_from_names(root: Path, images: Sequence[Path]) -> list[str]:
    """One label per image, read from its name; warns with the labels found.

    Raises:
        DataError: a name carries no label (it does not end in a number, or nothing but a number).
    """
    labels = [label_of(path.stem) for path in images]
    unlabelled = [path.name for path, label in zip(images, labels) if label is None]
    if unlabelled:
        shown = ", ".join(unlabelled[:3]) + (", ..." if len(unlabelled) > 3 else "")
        raise DataError(
            f"{root}: cannot read a label from {len(unlabelled)} file name(s) ({shown}); with labels taken from "
            "file names, every name must be <label><number>, e.g. cat_001.jpg or dog-12.png. Rename them, or "
            "put each class in its own subfolder instead."
        )
    counts = Counter(labels)
    first = {label: path.name for path, label in reversed(list(zip(images, labels)))}
    found = ", ".join(f"{label!r} ({n} photos, e.g. {first[label]})" for label, n in sorted(counts.items()))
    warnings.warn(
        f"{root}: labels taken from the file names, as asked: {found}. Check these are the classes you mean "
        "(camera prefixes such as IMG or DSC are not).",
        LabelsFromFilenamesWarning,
        stacklevel=4,
    )
    return [str(label) for label in labels]


def flat_folder_error(root: Path, loose_images: Sequence[Path]) -> DataError:
    """What to say about photos lying directly in a folder without class folders: how to lay them out."""
    shown = ", ".join(path.name for path in loose_images[:3]) + (", ..." if len(loose_images) > 3 else "")
    example = next((path for path in loose_images if label_of(path.stem) is not None), None)
    from_names = (
        f"; to take each label from its file name ({example.name} → {label_of(example.stem)!r}), pass "
        "labels_from_filenames=True (`--labels-from-filenames`)"
        if example is not None
        else ""
    )
    return DataError(
        f"{root} has {len(loose_images)} photos directly inside it ({shown}) and no class folder, so nothing says "
        f"which class each photo is. Put the photos in one subfolder per class, named after the class "
        f"({root / 'cat' / '1.jpg'}, {root / 'dog' / '2.jpg'}), or list them in a CSV file of path,label rows and "
        f"pass the CSV{from_names}."
    )
