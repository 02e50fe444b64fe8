"""Duplicate photos: the same file twice, the same pixels twice, or the same photo re-saved, resized, cropped or mirrored.

A duplicate that straddles a train/test split inflates every accuracy measured on it, and one inside the training
photos counts twice. Three signals are used, from the cheapest to the most tolerant:

* **same bytes**: the files' SHA-256 (``Features.hashes`` already has them);
* **same pixels**: a SHA-256 over the decoded, upright RGB pixels (a photo re-saved with other metadata, a PNG of a
  lossless copy);
* **near**: either the cosine similarity of backbone features (mirror-averaged features are mirror-invariant by
  construction: ``(f(x) + f(flip x)) / 2`` is the same for a photo and its mirror image) or a 64-bit DCT perceptual
  hash (pHash: the signs of the lowest 8x8 DCT frequencies of a 32x32 greyscale image against their median; the
  mirror image's hash comes from the same DCT by flipping the sign of the odd horizontal frequencies).

The image hashes (pixel SHA-256, pHash) are computed in :mod:`headstart.data.hashing`: they need only the decoded
photo. Pairs are joined into groups with union-find, so A~B and B~C give one group {A, B, C}. :func:`group_keys` turns
the groups into one key per photo, what :func:`headstart.data.datasets.train_val_split` takes as ``groups`` to keep
every group on one side of a split.

Example:
    >>> sigs = image_signatures(["a.jpg", "b.jpg"])                       # doctest: +SKIP
    >>> groups = find_duplicates(file_hashes=["x", "x"], pixel_hashes=sigs.pixel_hashes)
    >>> [(g.kind, g.members) for g in groups]
    [('exact', [0, 1])]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from headstart.data.hashing import Signatures, hamming, image_signatures, perceptual_hash
from headstart.features.neighbours import EXACT_ROWS, nearest_neighbours

__all__ = [
    "COSINE_THRESHOLD",
    "DUPLICATE_NEIGHBOURS",
    "HAMMING_THRESHOLD",
    "NEAR_RULES",
    "DuplicateGroup",
    "Signatures",  # (the image hashes live in headstart.data.hashing; re-exported for the duplicate finders)
    "find_duplicates",
    "group_keys",
    "hamming",
    "image_signatures",
    "near_duplicate_keys",
    "perceptual_hash",
]

#: When two photos are one: their pHash distance (bits of 64) is at most ``bits`` and their feature cosine similarity
#: at least ``cosine``, for one of these ``(bits, cosine)`` rules: the closer the features, the more the hashes may
#: differ. Measured (docs/AUDIT.md) on 500,000 pairs of distinct Dogs vs. Cats photos: none closer than 12 bits;
#: those within 16 bits below 0.78 in features; none above 0.87 in features (two shots of one dog: 0.89); and two
#: unrelated full-resolution cats 8 bits apart at 0.49, which is why even a close hash needs features that are more
#: alike than unrelated photos'. Resized and re-encoded copies differ in 0-4 bits at 0.79 and up, mirrored ones in
#: 0-2 bits (the hash compares mirror images too), slightly cropped ones in up to 16 bits at 0.88 and up, resized +
#: cropped + mirrored ones mostly within 16 bits at 0.77 and up. The hash cap on the last rule keeps template-like
#: synthetic images (two tables, two screenshots) that the backbone sees alike but differ in layout apart.
NEAR_RULES: tuple[tuple[int, float], ...] = ((8, 0.70), (16, 0.80), (24, 0.92))
#: Without perceptual hashes, the feature similarity from which two photos are one.
COSINE_THRESHOLD = 0.92
#: See :func:`near_duplicate_keys`.
MAX_GROUP_SHARE = 0.02
#: Without features, the pHash distance up to which two photos are one.
HAMMING_THRESHOLD = 8
#: Beyond ``EXACT_ROWS`` photos, the nearest photos in features that each photo is compared with.
DUPLICATE_NEIGHBOURS = 30


@dataclass
class DuplicateGroup:
    """Photos that are one photo: ``members`` are indices into the inputs of :func:`find_duplicates`.

    Attributes:
        kind: ``"exact"`` (same bytes or same pixels, every member) or ``"near"``.
        members: sorted indices.
        similarity: the smallest feature cosine similarity between two members (1.0 for exact groups, or when no
            features were given).
        hamming: the largest pHash distance between two members (mirror-aware; None without hashes).
        evidence: which signals joined the members (``bytes``, ``pixels``, ``features+phash``, ``features``, ``phash``).
    """

    kind: str
    members: list[int]
    similarity: float
    hamming: int | None = None
    evidence: list[str] = field(default_factory=list)


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> list[list[int]]:
        by_root: dict[int, list[int]] = {}
        for i in range(len(self.parent)):
            by_root.setdefault(self.find(i), []).append(i)
        return [members for members in by_root.values() if len(members) > 1]


def _normalised(features: np.ndarray) -> np.ndarray:
    x = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def _hash_bits(hashes: Sequence[int | None]) -> tuple[np.ndarray, np.ndarray]:
    """(n, 64) float32 bits of each hash (zeros where None), and which hashes are known."""
    known = np.array([h is not None for h in hashes], dtype=bool)
    raw = np.array([list(int(h if h is not None else 0).to_bytes(8, "big")) for h in hashes], dtype=np.uint8)
    return np.unpackbits(raw.reshape(len(hashes), 8), axis=1).astype(np.float32), known


def _neighbour_pairs(
    unit: np.ndarray,
    phashes: Sequence[int | None] | None,
    mirrored: Sequence[int | None] | None,
    rules: Sequence[tuple[int, float]],
    exact_rows: int,
    neighbours: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[tuple[int, int, str]]:
    """:func:`_candidate_pairs` among each photo's :data:`DUPLICATE_NEIGHBOURS` nearest in features (``neighbours``
    when given, else an index beyond ``exact_rows`` photos): no all-pairs comparison. Copies of one photo are each
    other's nearest, and union-find chains a larger group through them."""
    if neighbours is None:
        neighbours = nearest_neighbours(unit, DUPLICATE_NEIGHBOURS, exact_rows=exact_rows)
    sims, index = (part[:, :DUPLICATE_NEIGHBOURS] for part in neighbours)
    floor = COSINE_THRESHOLD if phashes is None else min(cosine for _, cosine in rules)
    rows, cols = np.nonzero((sims >= floor) & (index >= 0))
    i, j, cosine = rows, index[rows, cols], sims[rows, cols]
    if phashes is None:
        joined, why = np.ones(len(i), dtype=bool), "features"
    else:
        known = np.array([h is not None for h in phashes])
        plain = np.array([h or 0 for h in phashes], dtype=np.uint64)
        flipped = np.array([h or 0 for h in (mirrored or phashes)], dtype=np.uint64)
        distance = np.minimum.reduce(
            [
                np.bitwise_count(plain[i] ^ plain[j]),
                np.bitwise_count(plain[i] ^ flipped[j]),
                np.bitwise_count(plain[j] ^ flipped[i]),
            ]
        ).astype(int)
        distance[~(known[i] & known[j])] = 99
        joined = np.zeros(len(i), dtype=bool)
        for max_bits, min_cosine in rules:
            joined |= (distance <= max_bits) & (cosine >= min_cosine)
        why = "features+phash"
    return sorted({(int(min(a, b)), int(max(a, b)), why) for a, b in zip(i[joined], j[joined])})


def _candidate_pairs(
    n: int,
    unit: np.ndarray | None,
    phashes: Sequence[int | None] | None,
    mirrored: Sequence[int | None] | None,
    rules: Sequence[tuple[int, float]],
    exact_rows: int = EXACT_ROWS,
    neighbours: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[tuple[int, int, str]]:
    """Pairs (i < j) that one of the ``rules`` joins, with the evidence, computed in blocks (bounded memory).

    Without hashes, pairs at or above :data:`COSINE_THRESHOLD`; without features, within :data:`HAMMING_THRESHOLD`.
    With features and more than ``exact_rows`` photos (or ``neighbours`` given), only each photo's nearest
    neighbours are candidates.
    """
    if unit is not None and (n > exact_rows or neighbours is not None):
        return _neighbour_pairs(unit, phashes, mirrored, rules, exact_rows, neighbours)
    bits = views = None
    if phashes is not None:
        bits, known = _hash_bits(phashes)
        views = [bits] + ([_hash_bits(mirrored)[0]] if mirrored is not None else [])
    pairs: set[tuple[int, int, str]] = set()
    if unit is None and bits is None:
        return []
    block = max(64, min(2048, 20_000_000 // max(n, 1)))  # rows per block: a few matrices of ~80 MB at most
    for start in range(0, n, block):
        stop = min(n, start + block)
        sims = unit[start:stop] @ unit.T if unit is not None else None
        if bits is None:
            joined, why = sims >= COSINE_THRESHOLD, "features"
        else:
            # Hamming distance = a.(1-b) + (1-a).b, as matrix products (exact in float32 for 64 bits)
            rows = bits[start:stop]
            distance = np.min([rows @ (1 - v).T + (1 - rows) @ v.T for v in views], axis=0)
            distance[~known[start:stop]] = 99
            distance[:, ~known] = 99
            if sims is None:
                joined, why = distance <= HAMMING_THRESHOLD, "phash"
            else:
                joined = np.zeros(distance.shape, dtype=bool)
                for max_bits, min_cosine in rules:
                    joined |= (distance <= max_bits) & (sims >= min_cosine)
                why = "features+phash"
        for r, c in zip(*np.nonzero(joined)):
            i, j = start + int(r), int(c)
            if i != j:  # both orders: a photo vs the other's mirror image is not the other vs its mirror image
                pairs.add((min(i, j), max(i, j), why))
    return sorted(pairs)


def find_duplicates(
    *,
    file_hashes: Sequence[str | None] | None = None,
    pixel_hashes: Sequence[str | None] | None = None,
    features: np.ndarray | None = None,
    phashes: Sequence[int | None] | None = None,
    mirror_phashes: Sequence[int | None] | None = None,
    rules: Sequence[tuple[int, float]] = NEAR_RULES,
    exact_rows: int = EXACT_ROWS,
    neighbours: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[DuplicateGroup]:
    """Group the photos that are copies of one another; every signal given is used, all aligned by index.

    Args:
        file_hashes: SHA-256 of each file's bytes.
        pixel_hashes: hash of each photo's decoded pixels (:func:`image_signatures`).
        features: backbone features, shape ``(n, d)``; mirror-averaged ones also find mirrored copies. The cosine
            thresholds were measured on ``tf_efficientnet_lite0`` features (see docs/AUDIT.md).
        phashes, mirror_phashes: perceptual hashes (:func:`image_signatures`).
        rules: ``(max pHash bits, min cosine)`` pairs; a pair within any of them is joined (:data:`NEAR_RULES`).
        exact_rows: up to this many photos every pair is compared; beyond (with features), each photo's
            :data:`DUPLICATE_NEIGHBOURS` nearest in features, found by an index (:mod:`headstart.features.neighbours`).
        neighbours: those nearest already found (``nearest_neighbours(unit_rows(features), k)``, ``k`` at least
            :data:`DUPLICATE_NEIGHBOURS`), e.g. shared with the outliers' search: used whatever the number of photos.

    Returns:
        Groups of two or more, exact ones first, then by decreasing similarity.

    Example:
        >>> find_duplicates(file_hashes=["a", "b", "a"])[0].members
        [0, 2]
    """
    lengths = {len(s) for s in (file_hashes, pixel_hashes, phashes) if s is not None}
    if features is not None:
        lengths.add(len(features))
    if len(lengths) > 1:
        raise ValueError(f"find_duplicates got signals of different lengths {sorted(lengths)}; align them by photo.")
    n = lengths.pop() if lengths else 0
    exact, near = _UnionFind(n), _UnionFind(n)
    evidence: dict[tuple[int, int], set[str]] = {}

    for name, values in (("bytes", file_hashes), ("pixels", pixel_hashes)):
        first: dict[str, int] = {}
        for i, value in enumerate(values or ()):
            if value is None:
                continue
            if value in first:
                exact.union(first[value], i)
                evidence.setdefault((first[value], i), set()).add(name)
            else:
                first[value] = i
    # the rows at unit length; with the neighbours given, only the members of groups need it (no copy of the matrix)
    unit = _normalised(features) if features is not None and n and neighbours is None else features
    for i, j, why in _candidate_pairs(n, unit, phashes, mirror_phashes, rules, exact_rows, neighbours):
        near.union(i, j)
        evidence.setdefault((i, j), set()).add(why)
    for i in range(n):  # what is exact is near too
        near.union(i, exact.find(i))
    reasons: dict[int, set[str]] = {}  # each group's evidence, by its root (a pair is joined: in one group)
    for (i, _), ws in evidence.items():
        reasons.setdefault(near.find(i), set()).update(ws)

    groups = []
    for members in near.groups():
        kind = "exact" if len({exact.find(i) for i in members}) == 1 else "near"
        similarity = 1.0
        if unit is not None and kind == "near":
            rows = unit[members] if neighbours is None else _normalised(unit[members])
            similarity = float(np.clip((rows @ rows.T).min(), -1.0, 1.0))
        distance = None
        if phashes is not None and all(phashes[i] is not None for i in members):
            distance = max(_pair_distance(phashes, mirror_phashes, a, b) for a in members for b in members if a < b)
        why = sorted(reasons.get(near.find(members[0]), ()))
        groups.append(DuplicateGroup(kind, sorted(members), similarity, distance, why))
    groups.sort(key=lambda g: (g.kind != "exact", -g.similarity, g.members))
    return groups


def _pair_distance(phashes: Sequence[int | None], mirrored: Sequence[int | None] | None, a: int, b: int) -> int:
    """The pHash distance of two photos, either of them mirrored (the median threshold makes it asymmetric)."""
    distance = hamming(phashes[a], phashes[b])  # type: ignore[arg-type]
    if mirrored is not None:
        for x, y in ((a, b), (b, a)):
            if mirrored[y] is not None:
                distance = min(distance, hamming(phashes[x], mirrored[y]))  # type: ignore[arg-type]
    return distance


def group_keys(n: int, groups: Sequence[DuplicateGroup], base: Sequence[str] | None = None) -> list[str]:
    """One key per photo, shared by the members of a group: the ``groups`` argument of ``train_val_split``.

    Args:
        n: number of photos.
        groups: from :func:`find_duplicates`.
        base: a key per photo for those in no group (e.g. the file hash, so identical files still group);
            defaults to the index.

    Example:
        >>> group_keys(3, [DuplicateGroup("near", [0, 2], 0.97)])
        ['0', '1', '0']
    """
    keys = list(base) if base is not None else [str(i) for i in range(n)]
    for group in groups:
        shared = keys[group.members[0]]
        for i in group.members:
            keys[i] = shared
    return keys


def near_duplicate_keys(
    hashes: Sequence[str],
    features: np.ndarray | None = None,
    signatures: Signatures | None = None,
    max_group_share: float = MAX_GROUP_SHARE,
) -> list[str]:
    """One split key per photo that identical files and near duplicates share: ``train_val_split(groups=...)``.

    Args:
        hashes: SHA-256 of each file (``Features.hashes``); alone, this is the exact-copy grouping ``train`` has.
        features: the photos' features, aligned with ``hashes``; mirror-averaged ones also join mirrored copies.
        signatures: :func:`image_signatures` of the photos (costs a decode of each), for resized copies of small
            photos that the features alone see as different.
        max_group_share: a near group larger than this share of the photos (and than 10) is not kept together:
            copies come in twos and threes, and a component that large is a run of similar photos (a burst, one
            studio's backdrop) chained together, which on one side would unbalance the split more than it protects.
            Identical files always share a key.

    Example:
        >>> keys = near_duplicate_keys(feats.hashes, feats.features)                    # doctest: +SKIP
        >>> train, val = train_val_split(usable, groups=keys)                          # doctest: +SKIP
    """
    groups = find_duplicates(
        file_hashes=hashes,
        features=features,
        pixel_hashes=signatures.pixel_hashes if signatures is not None else None,
        phashes=signatures.phashes if signatures is not None else None,
        mirror_phashes=signatures.mirror_phashes if signatures is not None else None,
    )
    limit = max(10, int(max_group_share * len(hashes)))
    kept = [g for g in groups if g.kind == "exact" or len(g.members) <= limit]
    return group_keys(len(hashes), kept, base=list(hashes))
