"""What an estimator's ``fit`` and ``predict`` accept, made into what headstart computes on: labelled photos (a
:class:`~headstart.data.Dataset`), photo paths, the feature cache, and a backbone resolved once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from headstart.data import Dataset, Sample, load_dataset
from headstart.features import FeatureCache
from headstart.models.classifier import expand_paths

__all__ = ["ResolvedBackbone", "as_dataset", "feature_cache", "photo_paths", "split_keys"]


class ResolvedBackbone:
    """A backbone resolved once: its spec at once (from the cache's card, without building the network when seen
    before), the network only when something needs it, built once; what :func:`extract_features` accepts.

    Example:
        >>> backbone = ResolvedBackbone("tf_efficientnet_lite0")
        >>> backbone.spec.num_features
        1280
    """

    def __init__(self, name: str, weights: str | os.PathLike[str] | None = None) -> None:
        from headstart.features import resolve_backbone

        self.name, self.weights = name, weights
        self.spec = resolve_backbone(name, weights)
        self._loaded: Any = None

    def load(self) -> Any:
        """The :class:`~headstart.features.Backbone` (built on the first call)."""
        if self._loaded is None:
            from headstart.features import load_backbone

            self._loaded = load_backbone(self.name, self.weights)
        return self._loaded

    def trunk(self) -> dict[str, np.ndarray]:
        """The trunk weights as numpy arrays, from the cache folder after the first time (no torch then)."""
        from headstart.features import cached_trunk_weights

        return cached_trunk_weights(self.name, self.weights)[1]


def feature_cache(cache: str | os.PathLike[str] | FeatureCache | None) -> FeatureCache:
    """The :class:`FeatureCache` an estimator's ``cache`` names: None → the default one, a folder → its
    ``features.sqlite``, a ``.sqlite`` file → that file, a FeatureCache → itself.

    Example:
        >>> feature_cache("/tmp/my-cache").path
        PosixPath('/tmp/my-cache/features.sqlite')
    """
    if cache is None:
        return FeatureCache()
    if isinstance(cache, (str, os.PathLike)):
        path = Path(cache).expanduser()
        return FeatureCache(path if path.suffix == ".sqlite" else path / "features.sqlite")
    return cache


def as_dataset(X: Any, y: Sequence[Any] | None = None, *, caller: str = "fit") -> Dataset:
    """Labelled photos from what :meth:`ImageClassifier.fit` accepts: a data set path, a Dataset,
    ``(paths, labels)``, or paths with ``y``. Labels are class names (other values become their ``str``).

    Raises:
        ValueError: no labels, or as many labels as paths.

    Example:
        >>> as_dataset((["a.jpg", "b.jpg"], ["cat", "dog"])).classes
        ['cat', 'dog']
    """
    if isinstance(X, (Dataset, str, os.PathLike)):
        if y is not None:
            given = "a Dataset" if isinstance(X, Dataset) else f"the data set {str(X)!r}"
            raise ValueError(
                f"{caller} got labels y and {given}, which has its own labels: pass y=None, or a list "
                "of photo paths with y."
            )
        return X if isinstance(X, Dataset) else load_dataset(X)
    if y is None and isinstance(X, tuple) and len(X) == 2 and all(_is_sequence(part) for part in X):
        X, y = X
    if y is None:
        raise ValueError(
            f"{caller} needs labelled photos: a data set folder, a Dataset, (paths, labels), or paths "
            f"with y=labels; got {type(X).__name__} without labels."
        )
    paths, labels = [Path(p) for p in X], [str(label) for label in y]
    if len(paths) != len(labels):
        raise ValueError(
            f"Found input variables with inconsistent numbers of samples: {len(paths)} paths and "
            f"{len(labels)} labels; pass one label per photo."
        )
    root = Path(os.path.commonpath([str(p.absolute().parent) for p in paths])) if paths else Path.cwd()
    return Dataset([Sample(p, label) for p, label in zip(paths, labels)], sorted(set(labels)), root, "paths")


def photo_paths(X: Any) -> list[Path]:
    """The photos to predict: a Dataset's, the images in a folder (sorted, recursive), a file, or a list of them.

    Example:
        >>> photo_paths("test_photos/")[:1]
        [PosixPath('test_photos/Bengal/Bengal_101.jpg')]
    """
    if isinstance(X, Dataset):
        return X.paths
    if isinstance(X, (str, os.PathLike)):
        return expand_paths([X])
    if isinstance(X, tuple) and len(X) == 2 and all(_is_sequence(part) for part in X):
        return expand_paths(X[0])
    return expand_paths(list(X))


def _is_sequence(value: Any) -> bool:
    return not isinstance(value, (str, bytes, os.PathLike)) and hasattr(value, "__len__") and hasattr(value, "__iter__")


def split_keys(
    paths: Sequence[str | os.PathLike[str]],
    hashes: Sequence[str],
    features: np.ndarray,
    *,
    memo: Any = None,
    max_pixels: int | None = None,
    progress: bool = False,
) -> list[str]:
    """The train/validation split key of each photo: identical files and near duplicates (resized, re-encoded,
    slightly cropped or mirrored copies, found as ``headstart audit`` finds them: features and perceptual hashes)
    share one, so that no copy of a validation photo is trained on. The hashes cost a decode of each photo, once
    (remembered in ``memo``, a :class:`~headstart.models.memo.Memo`).

    Example:
        >>> keys = split_keys(usable.paths, feats.hashes, feats.features)              # doctest: +SKIP
        >>> train, val = train_val_split(usable, groups=keys)                          # doctest: +SKIP
    """
    from headstart.features import near_duplicate_keys
    from headstart.models.memo import memo_signatures

    signatures = memo_signatures(paths, hashes, memo, max_pixels=max_pixels, progress=progress)
    return near_duplicate_keys(hashes, features, signatures)
