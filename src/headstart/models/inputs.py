"""What an estimator's ``fit`` and ``predict`` accept, made into what headstart computes on: labelled photos (a
:class:`~headstart.data.Dataset`), photo paths, the feature cache, and a backbone resolved once.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from headstart.data import Dataset, Sample, load_dataset
from headstart.features import FeatureCache
from headstart.models.classifier import expand_paths

__all__ = [
    "ResolvedBackbone",
    "as_dataset",
    "feature_cache",
    "photo_files",
    "photo_paths",
    "resolved_backbone",
    "split_keys",
]

#: Image modes a PNG holds as they are; other modes (CMYK, YCbCr, float) are converted to RGB first.
_PNG_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16")


class ResolvedBackbone:
    """A backbone named once and passed on as this object, from :func:`~headstart.train` to the model file: its
    spec resolved on first use (from the cache's card, without building the network when seen before), the
    network only when something needs it, built once; what :func:`extract_features` accepts.

    Example:
        >>> backbone = ResolvedBackbone("tf_efficientnet_lite0")
        >>> backbone.spec.num_features
        1280
    """

    def __init__(self, name: str, weights: str | os.PathLike[str] | None = None) -> None:
        self.name, self.weights = name, weights
        self._spec: Any = None
        self._loaded: Any = None

    @property
    def spec(self) -> Any:
        """The :class:`~headstart.features.BackboneSpec` (resolved on the first use)."""
        if self._spec is None:
            from headstart.features import resolve_backbone

            self._spec = resolve_backbone(self.name, self.weights)
        return self._spec

    def load(self) -> Any:
        """The :class:`~headstart.features.Backbone` (built on the first call)."""
        if self._loaded is None:
            from headstart.features import load_backbone

            self._loaded = load_backbone(self.name, self.weights)
            self._spec = self._loaded.spec
        return self._loaded

    def trunk(self) -> dict[str, np.ndarray]:
        """The trunk weights as numpy arrays, from the cache folder after the first time (no torch then)."""
        from headstart.features import cached_trunk_weights

        return cached_trunk_weights(self.name, self.weights, spec=self.spec)[1]

    def __repr__(self) -> str:
        return f"ResolvedBackbone({self.name!r}" + (f", weights={str(self.weights)!r})" if self.weights else ")")


def resolved_backbone(name: str, weights: str | os.PathLike[str] | None = None) -> Any:
    """A :class:`ResolvedBackbone`, or for ``ensemble`` / ``ensemble:NAME,NAME`` an
    :class:`~headstart.features.ensemble.EnsembleSource` of them (each member with ``weights``)."""
    from headstart.models.backbone_names import parse_ensemble

    members = parse_ensemble(name)
    if members is None:
        return ResolvedBackbone(name, weights)
    from headstart.features.ensemble import EnsembleSource

    return EnsembleSource([ResolvedBackbone(n, weights) for n in members])


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


@contextmanager
def photo_files(X: Any, *, caller: str = "predict") -> Iterator[tuple[list[Path], dict[Path, str]]]:
    """The photos of ``X`` as files, and how to name each one that is not a file of the caller's.

    ``X`` is what :func:`photo_paths` takes, or images in memory: a PIL image, an ``(H, W, 3)`` uint8 RGB array
    (one photo), an ``(N, H, W, 3)`` one (N photos), or a list mixing them with paths. Images in memory are written
    losslessly (PNG; EXIF orientation applied, as for a file) into a temporary folder, removed on exit, so they go
    through the decoding, preprocessing and feature cache that files go through: the same pixels give the same
    features and, the second time, a cache hit. The names are for messages (``X[2] (a 640x480 PIL image)``).

    Raises:
        ValueError: an array that is not uint8 ``(H, W, 3)`` or ``(N, H, W, 3)`` (says how to convert it).

    Example:
        >>> with photo_files([Image.open("cat.jpg"), "dog.jpg"]) as (paths, names):
        ...     [names.get(p, str(p)) for p in paths]
        ['X[0] (a 500x375 PIL image)', 'dog.jpg']
    """
    items = _photo_items(X, caller)
    if not any(isinstance(item, tuple) for item in items):
        yield [p for p in items if isinstance(p, Path)], {}
        return
    with tempfile.TemporaryDirectory(prefix="headstart-images-") as folder:
        paths: list[Path] = []
        names: dict[Path, str] = {}
        for item in items:
            if isinstance(item, Path):
                paths.append(item)
                continue
            index, image, what = item
            path = Path(folder) / f"{index:06d}.png"
            _png(image).save(path, format="PNG", compress_level=1)
            names[path] = f"X[{index}] ({what})"
            paths.append(path)
        yield paths, names


def _photo_items(X: Any, caller: str) -> list[Any]:
    """Paths (folders expanded), and ``(index, image, description)`` for each image in memory."""
    if isinstance(X, Dataset) or isinstance(X, (str, os.PathLike)):
        return photo_paths(X)
    if isinstance(X, tuple) and len(X) == 2 and all(_is_sequence(part) for part in X):
        return photo_paths(X)
    if _is_image(X) or (isinstance(X, np.ndarray) and X.ndim == 3):
        X = [X]
    elif isinstance(X, np.ndarray) and X.ndim == 4:
        X = list(X)
    elif isinstance(X, np.ndarray):
        _bad_array(X, caller)
    items: list[Any] = []
    for index, item in enumerate(X):
        if _is_image(item):
            items.append((index, item, f"a {item.width}x{item.height} PIL image"))
        elif isinstance(item, np.ndarray):
            if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] != 3:
                _bad_array(item, caller)
            items.append((index, item, f"a {item.shape[1]}x{item.shape[0]} array"))
        else:
            items.extend(expand_paths([item]))
    return items


def _is_image(value: Any) -> bool:
    image = sys.modules.get("PIL.Image")  # (a PIL image exists only once PIL is imported)
    return image is not None and isinstance(value, image.Image)


def _bad_array(array: np.ndarray, caller: str) -> None:
    raise ValueError(
        f"{caller} takes images as uint8 arrays of shape (height, width, 3) (RGB) or (n, height, width, 3); got "
        f"a {array.dtype} array of shape {array.shape}. Convert floats in [0, 1] with (x * 255).round()"
        ".astype(np.uint8), grey images with np.stack([x] * 3, axis=-1), or pass PIL images or paths."
    )


def _png(image: Any) -> Any:
    """A PIL image a PNG can hold losslessly, upright (EXIF orientation applied, as decoding a file does)."""
    from PIL import Image, ImageOps

    if isinstance(image, np.ndarray):
        return Image.fromarray(np.ascontiguousarray(image))  # (uint8, (H, W, 3): RGB)
    image = ImageOps.exif_transpose(image)
    return image if image.mode in _PNG_MODES else image.convert("RGB")


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
