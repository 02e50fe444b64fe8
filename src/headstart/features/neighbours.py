"""Each photo's nearest neighbours in feature cosine, without comparing all pairs once the data set is large.

Near duplicates (:mod:`headstart.features.duplicates`) and the kNN density of outliers (:mod:`headstart.audit.outliers`)
both need, for every photo, the few others most alike. Comparing all pairs costs ``n^2 * d``. Up to
:data:`EXACT_ROWS` rows the exact answer is computed in blocks (a matrix product, bounded memory); beyond, an
inverted-file index whose scan is matrix products too:

* the rows, centred, are clustered by spherical k-means (on a seeded sample of :data:`TRAIN_PER_LIST` rows a list)
  into about ``LISTS_PER_ROOT * sqrt(n)`` lists, each row stored in its nearest list;
* each row is compared with the rows of its :data:`PROBES` nearest lists, list by list: all the rows that probe one
  list against its members in one matrix product (BLAS, every core), so a pair costs what it costs in the exact
  search, and only about ``PROBES / lists`` of the pairs are computed: ``n^1.5`` rather than ``n^2``;
* every similarity reported is the exact cosine; only a neighbour in a list that was not probed can be missed. A
  near copy of a photo lands in the photo's list or one next to it (the measured recall is in docs/BENCHMARKS.md).

No library beyond numpy: faiss's inverted file (``IndexIVFFlat``, ``IndexIVFScalarQuantizer``) scans each query's
lists one query at a time, which measured here two to four times slower than the grouped matrix products at the
same lists and probes, and HNSW slower than all pairs at 25,000 rows of 1,280 features (docs/BENCHMARKS.md).

Example:
    >>> unit = np.eye(4, dtype=np.float32)[[0, 0, 1, 2, 3]]
    >>> sims, index = nearest_neighbours(unit, 1)
    >>> index[:2, 0].tolist(), sims[0, 0]
    ([1, 0], 1.0)
"""

from __future__ import annotations

import numpy as np

__all__ = ["EXACT_ROWS", "LISTS_PER_ROOT", "PROBES", "TRAIN_PER_LIST", "among", "nearest_neighbours", "unit_rows"]

#: Up to this many rows, neighbours are exact (all pairs, in blocks of matrix products); beyond, the index, which
#: is faster from about there on for 30 neighbours of 1,280 features (its k-means is a fixed cost).
EXACT_ROWS = 8_000
#: Lists of the index: about this many times the square root of the rows (the scan of ``PROBES / lists`` of the
#: pairs and the assignment of every row to the lists then cost about the same).
LISTS_PER_ROOT = 2
#: Lists searched for each row: its own and the next nearest.
PROBES = 8
#: Rows the k-means of the index is trained on, per list (a seeded sample).
TRAIN_PER_LIST = 32
#: Rounds of k-means (the lists need to be even, not optimal).
KMEANS_ROUNDS = 8

_BLOCK_BYTES = 80_000_000  # one block of similarities in the exact search


def unit_rows(features: np.ndarray) -> np.ndarray:
    """The rows scaled to unit length (zero rows stay zero), float32."""
    x = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def nearest_neighbours(
    unit: np.ndarray, k: int, *, exact_rows: int = EXACT_ROWS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most cosine-similar other rows of every row of ``unit`` (unit-length rows, shape ``(n, d)``).

    Returns:
        ``(similarities, indices)``, both shape ``(n, min(k, n - 1))``, most similar first; a row's own index is
        never among its neighbours. Beyond ``exact_rows`` rows, the search is approximate (the index of the module's
        docstring) and a row may get fewer than ``k`` neighbours: missing ones have index -1 and similarity -inf.
    """
    unit = np.ascontiguousarray(unit, dtype=np.float32)
    n = len(unit)
    k = max(0, min(k, n - 1))
    if k == 0:
        return np.zeros((n, 0), dtype=np.float32), np.zeros((n, 0), dtype=np.int64)
    if n <= exact_rows:
        return _exact(unit, k)
    return _indexed(unit, k, seed)


def among(neighbours: tuple[np.ndarray, np.ndarray], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The neighbour lists of ``rows`` (indices into the rows searched) with only neighbours among ``rows``,
    renumbered as positions in ``rows``: the others become -1 (similarity -inf), the order is kept. One search of
    all the photos then serves a step that looks at some of them (the audit's outliers, among the DATA photos).

    Example:
        >>> lists = (np.array([[0.9, 0.8], [0.9, 0.7], [0.8, 0.7]]), np.array([[1, 2], [0, 2], [0, 1]]))
        >>> [part.tolist() for part in among(lists, np.array([0, 2]))]
        [[[0.8, -inf], [0.8, -inf]], [[1, -1], [0, -1]]]
    """
    sims, index = neighbours
    position = np.full(len(sims), -1, dtype=np.int64)
    position[rows] = np.arange(len(rows))
    mapped = np.where(index[rows] >= 0, position[np.maximum(index[rows], 0)], -1)
    kept = mapped >= 0
    order = np.argsort(~kept, axis=1, kind="stable")  # the kept ones first, in their order
    return (
        np.take_along_axis(np.where(kept, sims[rows], -np.inf), order, axis=1),
        np.take_along_axis(mapped, order, axis=1),
    )


def _exact(unit: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    n = len(unit)
    block = max(1, min(n, _BLOCK_BYTES // (4 * n)))
    sims_out = np.empty((n, k), dtype=np.float32)
    index_out = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, block):
        stop = min(n, start + block)
        sims = unit[start:stop] @ unit.T
        sims[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # not its own neighbour
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        _sorted_into(sims, top, sims_out[start:stop], index_out[start:stop])
    return sims_out, index_out


def _sorted_into(sims: np.ndarray, candidates: np.ndarray, sims_out: np.ndarray, index_out: np.ndarray) -> None:
    """Write the ``k`` best of ``candidates`` (by ``sims`` taken along them) into the outputs, best first."""
    taken = np.take_along_axis(sims, candidates, axis=1)
    order = np.argsort(-taken, axis=1, kind="stable")[:, : sims_out.shape[1]]
    sims_out[:] = np.take_along_axis(taken, order, axis=1)
    index_out[:] = np.take_along_axis(candidates, order, axis=1)


def _indexed(unit: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The inverted-file search of the module's docstring: list by list, the rows probing it against its members."""
    n = len(unit)
    probes = _probed_lists(unit, seed)
    lists = int(probes.max()) + 1
    members = np.argsort(probes[:, 0], kind="stable")  # each row is stored in its nearest list only
    member_bounds = np.searchsorted(probes[members, 0], np.arange(lists + 1))
    queries = np.argsort(probes.ravel(), kind="stable") // probes.shape[1]  # the rows probing each list, by list
    query_bounds = np.searchsorted(np.sort(probes.ravel()), np.arange(lists + 1))
    del probes
    best_sims = np.full((n, k), -np.inf, dtype=np.float32)
    best_index = np.full((n, k), -1, dtype=np.int64)
    for j in range(lists):
        stored = members[member_bounds[j] : member_bounds[j + 1]]
        asking = queries[query_bounds[j] : query_bounds[j + 1]]
        if not len(stored) or not len(asking):
            continue
        sims = unit[asking] @ unit[stored].T
        sims[asking[:, None] == stored[None, :]] = -np.inf  # not its own neighbour
        if len(stored) > k:
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            sims, found = np.take_along_axis(sims, top, axis=1), stored[top]
        else:
            found = np.broadcast_to(stored, sims.shape)
        # merge with what the earlier lists found for these rows (a row's lists hold different rows)
        sims = np.hstack([best_sims[asking], sims])
        found = np.hstack([best_index[asking], found])
        keep = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        best_sims[asking] = np.take_along_axis(sims, keep, axis=1)
        best_index[asking] = np.take_along_axis(found, keep, axis=1)
    order = np.argsort(-best_sims, axis=1, kind="stable")
    best_sims = np.take_along_axis(best_sims, order, axis=1)
    best_index = np.take_along_axis(best_index, order, axis=1)
    best_index[~np.isfinite(best_sims)] = -1  # fewer than k rows in the lists probed
    return best_sims, best_index


def _probed_lists(unit: np.ndarray, seed: int) -> np.ndarray:
    """Each row's :data:`PROBES` nearest k-means lists, nearest first (its own list), shape ``(n, PROBES)``.

    The lists are made on the rows minus their mean: a backbone's features share a large positive component, and
    spherical k-means on the raw directions grows a few lists that hold most rows (every list is then scanned
    by most rows, and the search is all pairs again); centred, the lists are of even size.
    """
    n = len(unit)
    lists = int(min(max(1, round(LISTS_PER_ROOT * np.sqrt(n))), n))
    rng = np.random.default_rng(seed)
    sample = unit[np.sort(rng.choice(n, min(n, TRAIN_PER_LIST * lists), replace=False))]
    centre = sample.mean(axis=0)
    sample = unit_rows(sample - centre)
    centroids = sample[rng.choice(len(sample), lists, replace=False)]
    for _ in range(KMEANS_ROUNDS):  # spherical k-means: the mean direction of each list's rows
        nearest = _nearest_lists(sample, centroids, np.zeros(lists, dtype=np.float32), 1)[:, 0]
        order = np.argsort(nearest, kind="stable")
        counts = np.bincount(nearest, minlength=lists)
        sums = np.zeros_like(centroids)
        filled = counts > 0
        sums[filled] = np.add.reduceat(sample[order], np.cumsum(counts)[filled] - counts[filled], axis=0)
        sums[~filled] = sample[rng.choice(len(sample), int((~filled).sum()), replace=False)]  # an empty list restarts
        centroids = unit_rows(sums)
    # the centroid nearest to (row - centre), up to the row's length, is the one of largest row . c - centre . c
    return _nearest_lists(unit, centroids, centroids @ centre, min(PROBES, lists))


def _nearest_lists(rows: np.ndarray, centroids: np.ndarray, bias: np.ndarray, p: int) -> np.ndarray:
    """The ``p`` centroids of largest ``row . c - bias`` for every row, largest first, in blocks."""
    out = np.empty((len(rows), p), dtype=np.int64)
    block = max(1, _BLOCK_BYTES // (4 * len(centroids)))
    for start in range(0, len(rows), block):
        scores = rows[start : start + block] @ centroids.T - bias
        if p == 1:
            out[start : start + block, 0] = scores.argmax(axis=1)
            continue
        top = np.argpartition(-scores, p - 1, axis=1)[:, :p]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        out[start : start + block] = np.take_along_axis(top, order, axis=1)
    return out
