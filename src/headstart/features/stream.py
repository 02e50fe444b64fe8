"""Features of any number of photos in bounded memory: chunk by chunk, the cached ones first.

:func:`~headstart.features.extract.extract_features` returns one matrix (what a fit needs). Commands that only look
at each photo once (``predict``, ``evaluate``) read :func:`iter_features` instead: the photos are taken a chunk at a
time from any iterable (a folder walked lazily), and in each chunk the photos the cache already has come out at once,
before the others are computed, so a cached photo never waits for an uncached one. Memory is bounded by the chunk,
not by the data set.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from headstart.data.scanning import UnusableFile
from headstart.features.cache import FeatureCache
from headstart.features.extract import Features, extract_features

__all__ = ["CHUNK", "iter_features"]

#: Photos a chunk: the most features held at once (1,024 x 1,280 floats = 5 MB for the default backbone).
CHUNK = 1024


def iter_features(
    paths: Iterable[str | os.PathLike[str]],
    backbone: Any,
    *,
    cache: FeatureCache | None = None,
    chunk: int = CHUNK,
    **options: Any,
) -> Iterator[tuple[list[Path], Features]]:
    """``(the chunk's paths, their Features)`` pairs; each chunk's cached photos in a first pair, the computed ones
    (and the unusable ones) in a second. ``Features.indices`` index the chunk's paths; ``options`` are
    :func:`~headstart.features.extract.extract_features`'s.

    Example:
        >>> for paths, feats in iter_features(Path("photos").rglob("*.jpg"), "tf_efficientnet_lite0"):
        ...     print(len(paths), feats.features.shape)
        1024 (1024, 1280)
    """
    cache = cache if cache is not None else FeatureCache()
    it = iter(paths)
    while True:
        part = [Path(p) for p in islice(it, chunk)]
        if not part:
            return
        cached = extract_features(part, backbone, cache=cache, cached_only=True, **options)
        rest = sorted(set(range(len(part))) - set(cached.indices.tolist()))
        if len(cached.indices):
            yield part, cached
        del cached  # (one chunk's features held at a time: the caller drops its own before asking for more)
        if rest:
            computed = extract_features([part[i] for i in rest], backbone, cache=cache, **options)
            computed.indices = np.asarray([rest[i] for i in computed.indices], dtype=np.int64)
            computed.unusable = [UnusableFile(u.path, u.reason) for u in computed.unusable]
            yield part, computed
            del computed
