"""Each photo's nearest neighbours in feature cosine, without comparing all pairs once the data set is large.

Near duplicates (:mod:`headstart.features.duplicates`) and the kNN density of outliers (:mod:`headstart.audit.outliers`)
both need, for every photo, the few others most alike. Comparing all pairs costs ``n^2 * d``: 5 s at 10,000 rows,
about an hour and a half at 300,000. Up to :data:`EXACT_ROWS` rows the exact answer is computed in blocks (a matrix
product, bounded memory); beyond, an inverted-file index from faiss (optional: ``headstart[neighbours]``) (Meta's similarity-search library, MIT licence)
finds candidates, and their cosine is recomputed exactly from the features:

* the rows are clustered by k-means (on a sample of :data:`TRAIN_ROWS`) into about ``2 * sqrt(n)`` lists, each stored
  as 8-bit scalar-quantised vectors (a quarter of the float32 matrix);
* each photo's neighbours are searched in the :data:`PROBES` lists nearest to it: about ``PROBES / lists`` of the
  rows, so the cost grows as ``n^1.5`` rather than ``n^2``, and every core is used;
* the :data:`CANDIDATES` found are re-ranked by their exact cosine, so every similarity reported is exact; only a
  neighbour in a list that was not searched can be missed (the measured recall is in docs/BENCHMARKS.md).

Example:
    >>> unit = np.eye(4, dtype=np.float32)[[0, 0, 1, 2, 3]]
    >>> sims, index = nearest_neighbours(unit, 1)
    >>> index[:2, 0].tolist(), sims[0, 0]
    ([1, 0], 1.0)
"""

from __future__ import annotations

import numpy as np

__all__ = ["CANDIDATES", "EXACT_ROWS", "PROBES", "TRAIN_ROWS", "nearest_neighbours", "unit_rows"]

#: Up to this many rows, neighbours are exact (all pairs, in blocks of matrix products). Measured here (2 cores,
#: load average 26, benchmarks/scale.py): at 25,000 rows the index took 258 s for the duplicates against 69 s for all
#: pairs; faiss's quantised list scan runs at about a sixteenth of the matrix product's speed per pair, which its
#: n^1.5 against n^2 only makes up for at a few hundred thousand rows. Until the scan is done by matrix products
#: (queries grouped by list), the index is used only beyond the sizes measured.
EXACT_ROWS = 400_000
#: Inverted lists searched for each photo beyond :data:`EXACT_ROWS`.
PROBES = 24
#: Rows the k-means of the index is trained on (a seeded sample).
TRAIN_ROWS = 40_000
#: Candidates taken from the index for each photo before the exact re-ranking (at least ``k``).
CANDIDATES = 64

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
        never among its neighbours. Beyond ``exact_rows`` rows, the search is approximate (faiss, see the module's
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
    try:
        import faiss
    except ImportError:  # the optional dependency (pip install 'headstart[neighbours]'): the exact answer, slower
        return _exact(unit, k)

    n, d = unit.shape
    lists = int(min(max(16, 2 * np.sqrt(n)), n // 39))  # faiss wants at least 39 training rows per list
    quantiser = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFScalarQuantizer(
        quantiser, d, lists, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
    )
    index.cp.niter = 10
    index.cp.seed = seed
    sample = np.random.default_rng(seed).choice(n, min(n, TRAIN_ROWS), replace=False)
    index.train(unit[np.sort(sample)])
    index.add(unit)
    index.nprobe = min(PROBES, lists)
    wanted = min(n, max(CANDIDATES, k + 1))
    sims_out = np.full((n, k), -np.inf, dtype=np.float32)
    index_out = np.full((n, k), -1, dtype=np.int64)
    step = max(1, _BLOCK_BYTES // (4 * wanted * d))  # rows whose candidates' vectors are gathered at once
    for start in range(0, n, step):
        stop = min(n, start + step)
        _, found = index.search(unit[start:stop], wanted)
        found[(found == np.arange(start, stop)[:, None]) | (found < 0)] = -1  # itself, or nothing found
        # the exact cosine of every candidate (the index's is quantised); missing ones sort last
        exact = np.einsum("rd,rkd->rk", unit[start:stop], unit[np.maximum(found, 0)])
        exact[found < 0] = -np.inf
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        sims_out[start:stop] = np.take_along_axis(exact, order, axis=1)
        index_out[start:stop] = np.take_along_axis(found, order, axis=1)
    return sims_out, index_out
