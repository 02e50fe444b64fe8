"""The steps of :meth:`ImageClassifier.fit <headstart.models.estimator.ImageClassifier.fit>` that the probe and the
networks share: the backbone (named, or chosen by ``auto``), the features of the usable photos, the leak-free
train/validation split, the probe on the training part, and whether to average each photo with its mirror image.

Mirror averaging (``flip_average``): True, False, ``"auto"`` (the probe's cross-validation chooses, the mirror
views computed for it), or None, the default, also spelt ``"cached"`` (one view, unless the mirror views are
already cached; then cross-validation chooses at no cost), in the API as in ``headstart train``. Cross-validation turns it on only when it gains more than 1.5 photos'
worth: a one-photo difference in CV is noise.

Example:
    >>> backbone, selection = fit_backbone(dataset, "auto", parse_auto("auto"), None, cache=cache, ...)
    >>> prepared = split_and_probe(dataset, backbone, cache=cache, memo=None, seed=0, val_fraction=0.2, ...)
    >>> prepared.flip, len(prepared.tr), len(prepared.va)
    (False, 48, 12)
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from headstart.data import Dataset, train_val_split
from headstart.errors import DataError, SkippedFilesWarning
from headstart.features import FeatureCache, extract_features
from headstart.models.inputs import ResolvedBackbone, resolved_backbone, split_keys
from headstart.models.memo import Memo
from headstart.models.probe_fit import fit_probe
from headstart.models.selection import select_for_fit

__all__ = [
    "FLIP_CHOICES",
    "Prepared",
    "SkippedFilesWarning",
    "feature_blocks",
    "fit_backbone",
    "flip_mode",
    "split_and_probe",
]

#: ``flip_average`` besides True/False/None: ``"auto"`` (cross-validation chooses, computing the mirror views),
#: ``"cached"`` (= None, the default: one view, unless the mirror views are cached; then cross-validation chooses).
FLIP_CHOICES = ("auto", "cached")


def feature_blocks(spec: Any) -> tuple[int, ...] | None:
    """The widths of an ensemble's members' features (the probe's blocks: one probe each, averaged), else None."""
    return tuple(m.num_features for m in spec.members) if spec.members else None


def flip_mode(flip_average: bool | str | None) -> tuple[bool | str, bool]:
    """``flip_average`` as the fit reads it (None is ``"cached"``, the default), and whether the mirror views are
    computed from the start (``"auto"`` and True: yes; ``"cached"``: only if already cached; False: no).

    Example:
        >>> flip_mode(None), flip_mode("auto"), flip_mode(True)
        (('cached', False), ('auto', True), (True, True))
    """
    mode = "cached" if flip_average is None else flip_average
    return mode, mode == "auto" or (not isinstance(mode, str) and bool(mode))


def fit_backbone(
    dataset: Dataset,
    backbone: str,
    candidates: list[str] | None,
    weights: str | os.PathLike[str] | None,
    *,
    cache: FeatureCache,
    memo: Memo | None,
    seed: int,
    val_fraction: float,
    flip_average: bool | str | None,
    progress: bool,
    ensemble: bool = False,
    **extract: Any,
) -> tuple[Any, Any]:
    """The backbone named (``candidates`` None), resolved once: a :class:`ResolvedBackbone` (an
    :class:`~headstart.features.ensemble.EnsembleSource` for ``ensemble…``) that extraction, the network and the
    model file all take; or for ``auto`` the candidate chosen on the training part
    (:func:`~headstart.models.selection.select_for_fit`, which resolved each candidate once; with ``ensemble``, the
    ensemble of the candidates on small data), with that selection (else None)."""
    if candidates is None:
        return resolved_backbone(backbone, weights), None
    selection = select_for_fit(
        dataset,
        candidates,
        cache=cache,
        memo=memo,
        seed=seed,
        val_fraction=val_fraction,
        flip_average=flip_mode(flip_average)[1],
        weights=weights,
        ensemble=ensemble,
        progress=progress,
        **extract,
    )
    chosen = selection.backbone
    if chosen is None or isinstance(chosen, str):
        chosen = resolved_backbone(selection.chosen, weights)
    return chosen, selection


@dataclass
class Prepared:
    """What :func:`split_and_probe` gives the fit: features (rows: the usable photos), the split as row indices,
    the probe fitted on the training rows, and the mirror-averaging choice (with both CV scores when CV chose)."""

    feats: Any
    usable: Dataset
    labels: np.ndarray
    train_part: Dataset
    val_part: Dataset
    tr: np.ndarray
    va: np.ndarray
    probe: Any
    flip: bool
    flip_cv: dict[str, float] = field(default_factory=dict)

    @property
    def X(self) -> np.ndarray:
        return self.feats.features


def split_and_probe(
    dataset: Dataset,
    backbone: ResolvedBackbone,
    *,
    cache: FeatureCache,
    memo: Memo | None,
    seed: int,
    val_fraction: float,
    flip_average: bool | str | None,
    progress: bool,
    keys: dict[str, str] | None = None,
    **extract: Any,
) -> Prepared:
    """Features of the usable photos, the train/validation split (near duplicates on one side: ``keys``, the
    split keys ``auto`` chose on, else :func:`split_keys`), the probe on the training part, and the choice of
    mirror averaging (by that probe's cross-validation, unless ``flip_average`` says). Unusable photos are named
    in a :class:`SkippedFilesWarning`.

    Raises:
        DataError: fewer than 2 classes have usable photos.
    """
    extract = dict(cache=cache, **extract)
    mode, mirror = flip_mode(flip_average)
    feats = extract_features(dataset.paths, backbone, progress=progress, flip_average=mirror, **extract)
    if isinstance(mode, str) and mode == "cached":  # one view, unless the mirror views cost nothing now
        mode = "auto" if feats.hashes and cache.has_views(feats.cache_key, feats.hashes, "mirror") else False
        if mode == "auto":
            one_view = feats
            feats = extract_features(dataset.paths, backbone, flip_average=True, **extract)  # (all cached)
            feats.n_cached, feats.n_computed, feats.seconds = one_view.n_cached, one_view.n_computed, one_view.seconds
    if feats.unusable:
        warnings.warn(SkippedFilesWarning(feats.unusable), stacklevel=4)  # (fit's caller)
    usable = dataset.subset(feats.indices.tolist())
    if len(set(usable.labels)) < 2:
        raise DataError(
            f"Only {len(usable)} usable photos in {len(set(usable.labels))} class(es) in "
            f"{dataset.root}: a classifier needs at least 2 classes."
        )
    labels = np.asarray(usable.labels)
    groups = (
        [keys[str(p)] for p in usable.paths]
        if keys is not None
        else split_keys(
            usable.paths,
            feats.hashes,
            feats.features,
            memo=memo,
            max_pixels=extract.get("max_pixels"),
            progress=progress,
        )
    )
    train_part, val_part = train_val_split(usable, val_fraction=val_fraction, seed=seed, groups=groups)
    row_of = {s.path: i for i, s in enumerate(usable.samples)}
    tr = np.array([row_of[s.path] for s in train_part.samples], dtype=np.int64)
    va = np.array([row_of[s.path] for s in val_part.samples], dtype=np.int64)

    blocks = feature_blocks(backbone.spec)
    probe = fit_probe(feats.features[tr], labels[tr], random_state=seed, memo=memo, blocks=blocks)
    flip, flip_cv = (None if isinstance(mode, str) else bool(mode)), {}
    if flip is None:  # the data decide: is a photo's mirror image the same class here?
        single = extract_features(dataset.paths, backbone, flip_average=False, **extract)
        single_probe = fit_probe(single.features[tr], labels[tr], random_state=seed, memo=memo, blocks=blocks)
        flip_cv = {"on": float(probe.cv_accuracy_), "off": float(single_probe.cv_accuracy_)}
        # Only when it helps by more than one photo's worth (a one-photo difference in CV is noise; nan: no).
        flip = bool(probe.cv_accuracy_ - single_probe.cv_accuracy_ > 1.5 / len(tr))
        if not flip:  # (the run's extraction numbers stay those of the pass that computed both)
            single.n_cached, single.n_computed, single.seconds = feats.n_cached, feats.n_computed, feats.seconds
            feats, probe = single, single_probe
    return Prepared(feats, usable, labels, train_part, val_part, tr, va, probe, bool(flip), flip_cv)
