"""Nearest neighbours without all pairs: the indexed search finds what the exact one finds, and duplicates,
outliers and perceptual hashes built on it give the answers of the all-pairs code."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from headstart.audit.outliers import OUTLIER_Z, neighbour_similarity, outlier_scores
from headstart.data.hashing import SIGNATURE_DECODE, hamming, image_signatures, perceptual_hash
from headstart.data.images import load_image
from headstart.features.duplicates import find_duplicates
from headstart.features.neighbours import among, nearest_neighbours, unit_rows


def _clustered(n: int, d: int = 48, clusters: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d)) * 2.0
    return (centres[rng.integers(0, clusters, n)] + rng.normal(size=(n, d))).astype(np.float32)


def test_indexed_neighbours_are_the_exact_ones_with_exact_similarities():
    unit = unit_rows(_clustered(4000))
    _, exact_index = nearest_neighbours(unit, 10)
    sims, index = nearest_neighbours(unit, 10, exact_rows=1000)

    assert sims.shape == index.shape == (4000, 10)
    assert not (index == np.arange(4000)[:, None]).any(), "a row is never its own neighbour"
    assert (np.diff(sims, axis=1) <= 1e-6).all(), "most similar first"
    found = index >= 0
    recomputed = np.einsum("nd,nkd->nk", unit, unit[np.maximum(index, 0)])
    np.testing.assert_allclose(sims[found], recomputed[found], atol=1e-5)  # exact cosines, not quantised ones
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(index, exact_index)])
    assert recall >= 0.95, recall
    assert np.mean(index[:, 0] == exact_index[:, 0]) >= 0.99


def test_exact_neighbours_match_all_pairs():
    unit = unit_rows(_clustered(300))
    sims, _ = nearest_neighbours(unit, 5)
    full = unit @ unit.T
    np.fill_diagonal(full, -np.inf)
    np.testing.assert_allclose(sims, -np.sort(-full, axis=1)[:, :5], atol=1e-6)


def _with_copies(n: int, copies: int, seed: int = 0):
    """Rows with ``copies`` near copies (features nudged, pHash 0-3 bits flipped) and random hashes elsewhere."""
    rng = np.random.default_rng(seed)
    X = _clustered(n, d=64, seed=seed)
    hashes = [int(h) for h in rng.integers(0, 2**63, n)]
    originals = rng.choice(n, copies, replace=False)
    extra_rows, extra_hashes = [], []
    for i in originals:
        extra_rows.append(X[i] + 0.05 * rng.normal(size=X.shape[1]).astype(np.float32))
        flips = sum(1 << int(b) for b in rng.choice(64, int(rng.integers(0, 4)), replace=False))
        extra_hashes.append(hashes[i] ^ flips)
    return np.vstack([X, extra_rows]), hashes + extra_hashes, originals


def test_duplicates_through_the_index_are_those_of_all_pairs():
    X, hashes, originals = _with_copies(3000, 40)
    everything = find_duplicates(features=X, phashes=hashes)
    indexed = find_duplicates(features=X, phashes=hashes, exact_rows=500)

    assert [g.members for g in indexed] == [g.members for g in everything]
    copies = {tuple(g.members) for g in indexed}
    assert all((int(i), 3000 + k) in copies for k, i in enumerate(originals)), "every injected copy is found"


def test_outliers_through_the_index_are_those_of_all_pairs():
    rng = np.random.default_rng(1)
    X = np.vstack([_clustered(3000, d=32, clusters=5), rng.normal(size=(12, 32)).astype(np.float32) * 6])
    scores, similarity = outlier_scores(X)
    indexed_scores, indexed_similarity = outlier_scores(X, exact_rows=500)

    # The index may miss a neighbour in a list it did not probe (a little lower similarity), so photos on the
    # threshold may change sides; the similarities stay close and the outliers are the same ones.
    assert np.abs(indexed_similarity - similarity).mean() <= 5e-3
    flagged, indexed = set(np.flatnonzero(scores >= OUTLIER_Z)), set(np.flatnonzero(indexed_scores >= OUTLIER_Z))
    assert len(flagged & indexed) >= 0.85 * len(flagged | indexed), (len(flagged), len(indexed))
    assert set(range(3000, 3012)) <= indexed


def test_one_search_serves_the_duplicates_and_the_outliers_of_a_subset():
    """The audit searches all photos once: duplicates take the lists as they are, the outliers of the DATA photos
    take them restricted to the DATA photos (``among``), and both answer what their own search answers."""
    X, hashes, _ = _with_copies(3000, 40)
    rng = np.random.default_rng(2)
    X = np.vstack([X, rng.normal(size=(8, X.shape[1])).astype(np.float32) * 6])  # outliers
    hashes += [int(h) for h in rng.integers(0, 2**63, 8)]
    lists = nearest_neighbours(unit_rows(X), 60)  # exact: the same lists an index would approximate

    shared = find_duplicates(features=X, phashes=hashes, neighbours=lists)
    assert [g.members for g in shared] == [g.members for g in find_duplicates(features=X, phashes=hashes)]

    data = np.sort(rng.choice(len(X) - 8, 2000, replace=False))
    data = np.concatenate([data, np.arange(len(X) - 8, len(X))])
    restricted = among(lists, data)
    assert (restricted[1] < len(data)).all() and (restricted[1] == -1).any()  # the TEST photos left out
    np.testing.assert_allclose(  # the density before any outlier is left out: all pairs among the DATA photos
        neighbour_similarity(X[data], neighbours=restricted), neighbour_similarity(X[data]), atol=1e-5
    )
    scores, _ = outlier_scores(X[data], neighbours=restricted)
    assert set(range(2000, 2008)) <= set(np.flatnonzero(scores >= OUTLIER_Z))


def test_signatures_of_a_phone_size_jpeg_come_from_a_reduced_decode(sample, tmp_path):
    original = sorted((sample / "test").rglob("*.jpg"))[0]
    big = tmp_path / "phone.jpg"
    with Image.open(original) as image:
        image.convert("RGB").resize((4032, 3024), Image.Resampling.BICUBIC).save(big, quality=92)

    signatures = image_signatures([big])

    reduced = load_image(big, draft_size=SIGNATURE_DECODE)
    assert max(reduced.size) < 4032 / 2  # the draft decode is a real reduction of this photo
    expected = hashlib.sha256(f"{reduced.mode} {reduced.size}".encode())
    expected.update(reduced.tobytes())
    assert signatures.pixel_hashes[0] == expected.hexdigest()
    full = perceptual_hash(load_image(big))[0]
    assert hamming(signatures.phashes[0], full) <= 2, "the pHash of the reduced decode is the full decode's"


@pytest.mark.parametrize("k", [0, 1])
def test_tiny_inputs(k):
    sims, index = nearest_neighbours(unit_rows(np.ones((1, 4))), 3)
    assert sims.shape == (1, 0) and index.shape == (1, 0)
    sims, index = nearest_neighbours(unit_rows(np.eye(3)[: k + 2]), 5)
    assert index.shape == (k + 2, k + 1)
