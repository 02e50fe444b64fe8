"""Leak-free, reproducible train/validation splits (:func:`train_val_split`, re-exported by ``datasets``)."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from headstart._validation import check_number, fail
from headstart.errors import DataError

Dataset = Any  # headstart.data.datasets.Dataset, which imports this module (so it is not imported back here)


def train_val_split(
    dataset: Dataset,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    groups: Sequence[Hashable] | None = None,
) -> tuple[Dataset, Dataset]:
    """Reproducible stratified split; samples sharing a group (e.g. the same file content hash) always land on
    the same side, so duplicates never leak.

    The split depends only on the samples (sorted by path first), the groups, `val_fraction` and `seed`:
    never on the order files were listed in, the machine, or the run. It uses numpy's legacy
    ``RandomState``, whose stream numpy keeps frozen across versions. Every class with at least two samples
    (or groups) gets at least one validation and one training sample whenever ``ceil(val_fraction * n)``
    allows it; classes with a single sample or group go to training.

    Args:
        dataset: the data set to split.
        val_fraction: share of the samples (of the groups, with `groups`) for validation, in (0, 1); counted
            over the classes that can be split, i.e. ``ceil(val_fraction * n)`` with n leaving out single-sample
            classes.
        seed: any int; the same seed gives the same split.
        groups: one key per sample (e.g. a hash of the file's content); each group is labelled by the label
            of its first sample in path order.

    Returns:
        ``(train, val)``, each a `Dataset` keeping `dataset`'s sample order and class list.
    """
    check_number(val_fraction, "val_fraction", "train_val_split", low=0, high=1, low_open=True, high_open=True)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        fail("seed", "train_val_split", "an int in [0, 2**32 - 1]", seed)
    n = len(dataset)
    if groups is not None and len(groups) != n:
        raise ValueError(
            f"train_val_split got {len(groups)} groups for {n} samples; pass one group key per sample, "
            "in the data set's order."
        )

    # Units are what gets split: samples, or groups of samples. Sort them so that listing order is irrelevant.
    order = sorted(range(n), key=lambda i: (str(dataset.samples[i].path), dataset.samples[i].label))
    members: dict[str, list[int]] = {}
    if groups is None:
        unit_keys = [f"{i:012d}" for i in range(n)]  # position in path order
        for rank, i in enumerate(order):
            members[unit_keys[rank]] = [i]
    else:
        for i in order:
            members.setdefault(_group_key(groups[i]), []).append(i)
    units = sorted(members)
    unit_label = {unit: dataset.samples[members[unit][0]].label for unit in units}

    by_class: dict[str, list[str]] = {}
    for unit in units:
        by_class.setdefault(unit_label[unit], []).append(unit)
    eligible = {label: us for label, us in sorted(by_class.items()) if len(us) >= 2}
    if not eligible:
        photos = {label: sum(len(members[u]) for u in us) for label, us in by_class.items()}
        if all(count == 1 for count in photos.values()):
            why = f"every class has a single photo ({len(photos)} classes, one photo each)"
        else:
            why = (
                "the photos of each class are identical or near-duplicate copies of one another (copies stay on one "
                "side of the split, so each class is one group)"
            )
        raise DataError(
            f"Cannot make a validation set from {dataset.root}: {why}, and a class needs a photo to learn from "
            "besides the one it is checked on. Add photos: at least 2 different ones a class (5 or more give a "
            "validation score worth reading)."
        )

    rng = np.random.RandomState(seed)
    allocation = _allocate({label: len(us) for label, us in eligible.items()}, val_fraction, rng)
    val_indices: list[int] = []
    for label, class_units in eligible.items():
        picked = rng.permutation(len(class_units))[: allocation[label]]
        for position in picked:
            val_indices.extend(members[class_units[position]])
    val_set = set(val_indices)
    train_part = dataset.subset([i for i in range(n) if i not in val_set])
    val_part = dataset.subset(sorted(val_set))
    return train_part, val_part


def _allocate(counts: dict[str, int], val_fraction: float, rng: np.random.RandomState) -> dict[str, int]:
    """Validation units per class: proportional, at least one per class when possible, one kept for training."""
    total = sum(counts.values())
    labels = list(counts)
    # ceil as in scikit-learn, with a tolerance so that 0.1 * 30 asks for 3, not 4.
    n_val = math.ceil(val_fraction * total - 1e-9)
    n_val = max(1, min(n_val, total - len(labels)))
    allocation = dict.fromkeys(labels, 0)
    if n_val < len(labels):
        # Too few validation places for every class: pick the classes at random, one unit each.
        for position in rng.choice(len(labels), size=n_val, replace=False):
            allocation[labels[position]] = 1
        return allocation
    for label in labels:
        allocation[label] = 1
    ideal = {label: n_val * counts[label] / total for label in labels}
    for _ in range(n_val - len(labels)):
        open_labels = [label for label in labels if allocation[label] < counts[label] - 1]
        neediest = max(open_labels, key=lambda label: ideal[label] - allocation[label])
        allocation[neediest] += 1
    return allocation


def _group_key(group: Hashable) -> str:
    return f"{type(group).__name__}:{group}"
