"""Outliers: photos unlike the rest of the data set (a chart, a screenshot, a sign in a folder of pets).

The density of a photo is its mean cosine similarity to its ``k`` nearest neighbours in feature space (the
k-nearest-neighbour out-of-distribution score of Sun et al., ICML 2022, on L2-normalised features), with
``k = min(20, n - 1)``: more neighbours than a handful of odd images of one kind (five charts must not vouch for
each other), few enough to stay local. Members of the photo's own duplicate group are not counted as neighbours (a
chart and its copy are still two charts).

Outliers are found in rounds: once some are found, the others' similarity is measured to the remaining photos
only, so that a handful of odd images cannot make each other look typical.

The score is the modified z-score of Iglewicz and Hoaglin, ``0.6745 * (median - s) / MAD``: how many typical
deviations less similar to its neighbours a photo is than the median photo. It needs no assumption about the
backbone's similarity scale, and the median and MAD are not dragged by the outliers themselves. A photo is an
outlier from a score of :data:`OUTLIER_Z` on. Cosine similarities are bounded, so far-away images sit closer in z than
they would on an unbounded scale; 2.5 (not the 3.5 suggested for normal data) is what separated out-of-domain images
from atypical photos on the sample and on Dogs vs. Cats (docs/AUDIT.md).

Example:
    >>> rng = np.random.default_rng(0)
    >>> X = np.vstack([rng.normal(1, 0.1, (50, 8)), -np.ones((1, 8))])
    >>> int(outlier_scores(X)[0].argmax())
    50
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from headstart.features.neighbours import nearest_neighbours, unit_rows

__all__ = ["NEIGHBOURS", "OUTLIER_EXACT_ROWS", "OUTLIER_Z", "neighbour_similarity", "outlier_scores", "robust_z"]

#: Neighbours averaged for the density (fewer when the data set is smaller).
NEIGHBOURS = 20
#: Modified z-score from which a photo is reported as an outlier.
OUTLIER_Z = 2.5
#: Beyond this many photos the neighbours are found once by an index (:mod:`headstart.features.neighbours`) rather
#: than by all pairs in every round: the rounds repeat the all-pairs pass, so the index pays off at fewer rows than
#: for duplicates (``EXACT_ROWS``), which need one pass.
OUTLIER_EXACT_ROWS = 5_000


def neighbour_similarity(
    features: np.ndarray,
    *,
    k: int = NEIGHBOURS,
    same_group: Sequence[int] | None = None,
    excluded: np.ndarray | None = None,
    block: int = 2048,
    neighbours: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Mean cosine similarity of each photo to its ``k`` nearest other photos, shape ``(n,)``.

    Args:
        features: shape ``(n, d)``.
        k: neighbours (at most ``n - 1``).
        same_group: one group id per photo (e.g. its duplicate group); photos of the same group are not neighbours.
        excluded: photos (a boolean mask) that are nobody's neighbour, e.g. those already found to be outliers.
        neighbours: each photo's nearest others, most similar first, from
            :func:`~headstart.features.neighbours.nearest_neighbours` (more than ``k``, so that some may be left
            out): the ``k`` first that are neither of its group nor excluded are averaged, with no all-pairs
            comparison (what :func:`outlier_scores` does beyond ``OUTLIER_EXACT_ROWS`` photos).
    """
    x = np.asarray(features, dtype=np.float32)
    n = len(x)
    if n < 2:
        return np.ones(n)
    groups = np.asarray(same_group) if same_group is not None else np.arange(n)
    k = max(1, min(k, n - 1))
    if neighbours is not None:
        return _listed_similarity(neighbours, k, groups, excluded)
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    result = np.empty(n)
    for start in range(0, n, block):
        sims = unit[start : start + block] @ unit.T
        sims[groups[start : start + block, None] == groups[None, :]] = -np.inf  # itself and its copies
        if excluded is not None:
            sims[:, np.asarray(excluded, dtype=bool)] = -np.inf
        top = -np.partition(-sims, k - 1, axis=1)[:, :k]
        finite = np.isfinite(top)  # fewer than k others when most photos are copies of one another
        total = np.where(finite, top, 0.0).sum(axis=1)
        count = finite.sum(axis=1)
        result[start : start + block] = np.divide(total, count, out=np.ones(len(top)), where=count > 0)
    return result


def _listed_similarity(
    neighbours: tuple[np.ndarray, np.ndarray], k: int, groups: np.ndarray, excluded: np.ndarray | None
) -> np.ndarray:
    """The mean similarity of the ``k`` first usable neighbours in each photo's list (1 where none is usable)."""
    sims, index = neighbours
    usable = (index >= 0) & np.isfinite(sims)
    safe = np.maximum(index, 0)
    usable &= groups[safe] != groups[:, None]
    if excluded is not None:
        usable &= ~np.asarray(excluded, dtype=bool)[safe]
    usable &= np.cumsum(usable, axis=1) <= k
    count = usable.sum(axis=1)
    total = np.where(usable, sims, 0.0).sum(axis=1)
    return np.divide(total, count, out=np.ones(len(sims)), where=count > 0)


def robust_z(values: np.ndarray) -> np.ndarray:
    """Modified z-scores ``0.6745 * (x - median) / MAD`` (zeros when the MAD is 0)."""
    values = np.asarray(values, dtype=np.float64)
    median = np.median(values)
    mad = np.median(np.abs(values - median))
    if mad <= 0:
        return np.zeros_like(values)
    return 0.6745 * (values - median) / mad


def outlier_scores(
    features: np.ndarray,
    *,
    k: int = NEIGHBOURS,
    same_group: Sequence[int] | None = None,
    threshold: float = OUTLIER_Z,
    max_rounds: int = 5,
    exact_rows: int = OUTLIER_EXACT_ROWS,
    neighbours: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The outlier score of each photo (the modified z-score of its low neighbour similarity) and that similarity.

    Outliers must not vouch for one another (a chart is not typical because a screenshot is near it): the
    similarity is to the photos that are not outliers themselves, found in rounds until the set stops changing.

    Up to ``exact_rows`` photos every pair is compared; beyond, each photo's ``3 * k`` nearest are found once by
    an index (:mod:`headstart.features.neighbours`) and every round averages the first ``k`` of them that count.
    ``neighbours`` (each photo's ``3 * k`` nearest or so, already found; index -1 for none) replace that search.

    Returns:
        ``(scores, similarity)``, both shape ``(n,)``; outliers are the photos with ``scores >= threshold``.

    Example:
        >>> scores, _ = outlier_scores(features)                            # doctest: +SKIP
        >>> flagged = np.flatnonzero(scores >= OUTLIER_Z)                   # doctest: +SKIP
    """
    flagged = np.zeros(len(features), dtype=bool)
    lists = neighbours
    if lists is None and len(features) > exact_rows:  # found once: the rounds only change who counts
        lists = nearest_neighbours(unit_rows(features), 3 * k, exact_rows=exact_rows)
    for _ in range(max_rounds):
        similarity = neighbour_similarity(features, k=k, same_group=same_group, excluded=flagged, neighbours=lists)
        scores = -robust_z(similarity)
        now = scores >= threshold
        if np.array_equal(now, flagged):
            break
        flagged = now
    return scores, similarity
