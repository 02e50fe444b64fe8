"""``audit``: what is wrong with a data set before you train on it, from cached features and cross-validated probes.

One call lists the photos (:func:`headstart.data.datasets.load_dataset`), reads or computes their features
(mirror-averaged, the cache ``train`` uses), hashes their pixels, and then finds:

* duplicates, exact and near, within DATA and across DATA and TEST (:mod:`headstart.features.duplicates`);
* outliers, photos unlike the rest (:mod:`headstart.audit.outliers`);
* likely wrong labels, by confident learning on out-of-fold probabilities (:mod:`headstart.audit.labels`);
* balance and difficulty per class, and the most confused pairs;
* how many more photos would help (:mod:`headstart.audit.curve`).

The result is an :class:`AuditReport`: ``to_dict()`` is the JSON schema of docs/AUDIT.md, ``save(folder)`` writes
``audit.json``, a self-contained ``audit.html`` and ``learning_curve.png``.

Example:
    >>> report = audit("photos/", test="test_photos/", progress=True)             # doctest: +SKIP
    >>> report.save("audit/")                                                      # doctest: +SKIP
    >>> [d["paths"] for d in report.duplicates if d["crosses_split"]]              # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from headstart._console import progress as progress_bar
from headstart._io import file_identity, write_json
from headstart.audit.curve import FRACTIONS, LearningCurve, learning_curve
from headstart.audit.findings import class_rows, confused_pairs, duplicate_rows, label_issue_rows, outlier_rows
from headstart.audit.labels import ConfidentLearning, confident_learning, fold_splits, out_of_fold_probabilities
from headstart.audit.outliers import NEIGHBOURS, OUTLIER_Z, outlier_scores
from headstart.data.datasets import Dataset, load_dataset
from headstart.data.images import DEFAULT_MAX_PIXELS
from headstart.errors import DataError
from headstart.features.backbones import DEFAULT_BACKBONE
from headstart.features.cache import FeatureCache
from headstart.features.duplicates import DUPLICATE_NEIGHBOURS, NEAR_RULES, find_duplicates
from headstart.features.extract import extract_features
from headstart.features.neighbours import EXACT_ROWS, among, nearest_neighbours, unit_rows
from headstart.models.memo import Memo, memo_signatures
from headstart.models.probe_fit import fit_probe

__all__ = ["SCHEMA", "AuditReport", "audit"]

#: Identifies the JSON layout (docs/AUDIT.md); bumped when a field changes meaning.
SCHEMA = "headstart.audit/1"
MAX_FOLDS = 5


@dataclass
class AuditReport:
    """Everything the audit found; lists are sorted most suspicious first. See docs/AUDIT.md for each field."""

    data: str
    test: str | None
    backbone: str
    n_images: int
    n_usable: int
    n_test_images: int
    n_test_usable: int
    cv_accuracy: float | None
    duplicates: list[dict[str, Any]]
    label_issues: list[dict[str, Any]]
    outliers: list[dict[str, Any]]
    classes: list[dict[str, Any]]
    confused_pairs: list[dict[str, Any]]
    learning_curve: LearningCurve | None
    unusable: list[dict[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """Counts a person reads first."""
        counts = [c["n_usable"] for c in self.classes if c["n_usable"]]
        return {
            "duplicate_groups": len(self.duplicates),
            "leaks": sum(d["crosses_split"] for d in self.duplicates),
            "label_issues": len(self.label_issues),
            "outliers": len(self.outliers),
            "unusable": len(self.unusable),
            "n_classes": len(self.classes),
            "photos_per_class": {
                "min": min(counts, default=0),
                "max": max(counts, default=0),
                "imbalance": round(max(counts) / min(counts), 2) if counts else None,
            },
        }

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (``headstart audit --json`` prints this)."""
        return {
            "schema": SCHEMA,
            "data": self.data,
            "test": self.test,
            "backbone": self.backbone,
            "n_images": self.n_images,
            "n_usable": self.n_usable,
            "n_test_images": self.n_test_images,
            "n_test_usable": self.n_test_usable,
            "cv_accuracy": self.cv_accuracy,
            "summary": self.summary(),
            "duplicates": self.duplicates,
            "label_issues": self.label_issues,
            "outliers": self.outliers,
            "classes": self.classes,
            "confused_pairs": self.confused_pairs,
            "learning_curve": self.learning_curve.points if self.learning_curve else [],
            "extrapolation": self.learning_curve.to_dict() if self.learning_curve else None,
            "unusable": self.unusable,
            "ignored": self.ignored,
            "notes": self.notes,
            "settings": self.settings,
            "seconds": round(self.seconds, 3),
        }

    def _repr_html_(self) -> str:
        """The audit as a notebook shows it (:func:`headstart.audit.html.notebook_card`)."""
        from headstart.audit.html import notebook_card

        return notebook_card(self)

    def save(self, folder: str | os.PathLike[str], *, thumbnails: bool = True) -> dict[str, Path]:
        """Write ``audit.json``, ``learning_curve.png`` and ``audit.html`` (self-contained) into ``folder``.

        Returns:
            ``{"json": path, "html": path, "learning_curve": path or absent}``.
        """
        from headstart.audit.html import write_html

        folder = Path(folder)
        written: dict[str, Path] = {"json": write_json(folder / "audit.json", self.to_dict())}
        if self.learning_curve is not None and self.learning_curve.points:
            from headstart.audit.curve import plot_learning_curve

            written["learning_curve"] = plot_learning_curve(self.learning_curve, folder / "learning_curve.png")
        written["html"] = write_html(
            self, folder / "audit.html", curve_png=written.get("learning_curve"), thumbnails=thumbnails
        )
        return written


class _Jobs:
    """Runs zero-argument jobs in a few threads (the solver's BLAS calls release the GIL), advancing one bar."""

    def __init__(self, pool: ThreadPoolExecutor, advance: Callable[[int], None]) -> None:
        self.pool, self.advance = pool, advance

    def __call__(self, jobs: list[Callable[[], Any]]) -> list[Any]:
        def one(job: Callable[[], Any]) -> Any:
            result = job()
            self.advance(1)
            return result

        return list(self.pool.map(one, jobs))


@dataclass
class _CrossValidation:
    proba: np.ndarray
    y: np.ndarray
    cl: ConfidentLearning
    curve: LearningCurve
    C: float
    temperature: float
    n_folds: int

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.proba.argmax(axis=1) == self.y))


def _cross_validate(
    X: np.ndarray, y: np.ndarray, classes: list[str], *, seed: int, memo: Memo | None, progress: bool
) -> _CrossValidation:
    """The probe's C and temperature (one cross-validated fit, from the memo when it has it), then the out-of-fold
    probabilities, confident learning and the learning curve on one set of folds."""
    from threadpoolctl import threadpool_limits

    fit = fit_probe(X, np.array([classes[v] for v in y]), random_state=seed, memo=memo)
    counts = np.bincount(y)
    folds = fold_splits(y, int(min(MAX_FOLDS, counts[counts > 0].min())), seed)
    # One BLAS thread per fit, two fits at a time (the warning machinery is put back by run_quietly).
    with (
        threadpool_limits(limits=1, user_api="blas"),
        progress_bar(progress, len(folds) * len(FRACTIONS), "Cross-validating probes") as advance,
        ThreadPoolExecutor(min(2, os.cpu_count() or 1)) as pool,
    ):
        run = _Jobs(pool, advance)
        proba = out_of_fold_probabilities(
            X, y, len(classes), folds, C=fit.C_, temperature=fit.temperature_, seed=seed, run=run
        )
        curve = learning_curve(
            X, y, len(classes), folds, C=fit.C_, temperature=fit.temperature_, seed=seed, full=proba, run=run
        )
    return _CrossValidation(
        proba, y, confident_learning(proba, y), curve, float(fit.C_), float(fit.temperature_), len(folds)
    )


def audit(
    data: str | os.PathLike[str] | Dataset,
    *,
    test: str | os.PathLike[str] | Dataset | None = None,
    backbone: str = DEFAULT_BACKBONE,
    weights: str | os.PathLike[str] | None = None,
    cache: FeatureCache | None = None,
    seed: int = 0,
    progress: bool = False,
    reuse: bool = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> AuditReport:
    """Audit a data set (and its test set): duplicates and leaks, wrong labels, outliers, balance, learning curve.

    Args:
        data: the training photos: a folder of class folders, an Oxford-IIIT Pet root, PetImages, a CSV of
            path,label, or a loaded :class:`~headstart.data.datasets.Dataset`.
        test: the test photos, searched for copies of training photos (leaks); not otherwise audited.
        backbone, weights: the features (as ``train``: the cache is shared).
        cache: the feature cache (default: the cache folder's).
        seed: folds, subsamples and probes are seeded; the same seed gives the same report.
        progress: progress bars on stderr.
        reuse: read the probe's fit and the pixel hashes back from the memo when their inputs are unchanged.

    Returns:
        An :class:`AuditReport`.

    Example:
        >>> report = audit("photos/")                                               # doctest: +SKIP
        >>> report.label_issues[0]                                                  # doctest: +SKIP
        {'path': '.../beagle/img_0042.jpg', 'given': 'beagle', 'suggested': 'Abyssinian', 'score': 0.97, ...}
    """
    start = time.perf_counter()
    dataset = data if isinstance(data, Dataset) else load_dataset(data)
    test_set = test if isinstance(test, Dataset) or test is None else load_dataset(test)
    if test_set is not None:
        _refuse_overlap(dataset, test_set)
    cache = cache if cache is not None else FeatureCache()
    memo = Memo.beside(cache) if reuse else None
    paths = dataset.paths + (test_set.paths if test_set is not None else [])
    listed_labels = dataset.labels + (test_set.labels if test_set is not None else [])
    n_data = len(dataset)
    feats = extract_features(
        paths, backbone, weights=weights, cache=cache, max_pixels=max_pixels, progress=progress, flip_average=True
    )
    rows = feats.indices.tolist()  # (ascending: the usable DATA photos' rows come first, then the TEST photos')
    usable_paths = [paths[i] for i in rows]
    signatures = memo_signatures(usable_paths, feats.hashes, memo, max_pixels=max_pixels, progress=progress)
    found = audit_features(
        feats.features,
        [listed_labels[i] for i in rows],
        list(dataset.classes),
        n_data=sum(1 for i in rows if i < n_data),
        paths=usable_paths,
        file_hashes=feats.hashes,
        signatures=signatures,
        listed=dataset.labels,
        seed=seed,
        memo=memo,
        progress=progress,
    )
    if found is None:
        raise DataError(f"{dataset.root}: none of its {n_data} photos could be decoded; see `headstart scan` for why.")
    found.settings["features"] = {
        "cached": feats.n_cached,
        "computed": feats.n_computed,
        "seconds": round(feats.seconds, 3),
    }
    return AuditReport(
        data=str(dataset.root),
        test=None if test_set is None else str(test_set.root),
        backbone=backbone,
        n_images=n_data,
        n_test_images=len(paths) - n_data,
        n_test_usable=len(rows) - found.n_usable,
        unusable=[u.to_dict() for u in feats.unusable],
        ignored=[str(p) for p in dataset.ignored],
        seconds=time.perf_counter() - start,
        **vars(found),  # (every finding under its own name: the report's fields)
    )


@dataclass
class _Findings:
    """What :func:`audit_features` found (the report less the listing's own fields)."""

    n_usable: int
    cv_accuracy: float | None
    duplicates: list[dict[str, Any]]
    label_issues: list[dict[str, Any]]
    outliers: list[dict[str, Any]]
    classes: list[dict[str, Any]]
    confused_pairs: list[dict[str, Any]]
    learning_curve: LearningCurve | None
    notes: list[str]
    settings: dict[str, Any]


def audit_features(
    features: np.ndarray,
    labels: list[str],
    classes: list[str],
    *,
    n_data: int,
    paths: list[Path],
    file_hashes: list[str] | None,
    signatures: Any,
    listed: list[str],
    seed: int = 0,
    memo: Memo | None = None,
    progress: bool = False,
) -> _Findings | None:
    """The audit's stages after the features: duplicates, outliers, the cross-validated probes and what they say.

    ``features`` are the usable photos' rows, the DATA photos' first (``n_data`` of them), then the TEST photos';
    ``labels``, ``paths``, ``file_hashes`` and ``signatures`` are aligned with them; ``listed``: the label of every
    DATA photo listed, usable or not. Apart from :func:`audit`, the benchmark of many rows calls it on synthetic
    rows (``benchmarks/scale.py``), so what it times is the command's own code. None: no usable DATA photo.
    """
    splits = ["data" if k < n_data else "test" for k in range(len(features))]
    notes: list[str] = []
    lists = None
    if len(features) > EXACT_ROWS:  # both steps would search an index: one search serves the two
        lists = nearest_neighbours(unit_rows(features), max(3 * NEIGHBOURS, DUPLICATE_NEIGHBOURS), seed=seed)
    groups = find_duplicates(
        file_hashes=file_hashes,
        pixel_hashes=signatures.pixel_hashes,
        features=features,
        phashes=signatures.phashes,
        mirror_phashes=signatures.mirror_phashes,
        neighbours=lists,
    )
    duplicates = duplicate_rows(groups, paths, splits, labels)

    data_rows = np.arange(n_data, dtype=np.int64)
    if not len(data_rows):
        return None
    X = _rows(features, data_rows)
    d_paths = paths[:n_data]
    d_labels = labels[:n_data]
    group_of = np.arange(len(paths))
    for g in groups:
        group_of[g.members] = g.members[0]
    data_lists = among(lists, data_rows) if lists is not None else None  # (the DATA photos' among themselves)
    del lists
    scores, similarity = outlier_scores(X, k=NEIGHBOURS, same_group=group_of[data_rows], neighbours=data_lists)

    index = {name: j for j, name in enumerate(classes)}
    y_all = np.array([index[label] for label in d_labels], dtype=np.int64)
    counts = np.bincount(y_all, minlength=len(classes))
    checked = counts[y_all] >= 2
    few = [c for c, n in zip(classes, counts) if n < 2]
    if few:
        notes.append(
            f"{len(few)} class(es) have fewer than 2 usable photos and were not cross-validated: "
            f"{', '.join(few[:10])}{', ...' if len(few) > 10 else ''}. Add photos to check their labels."
        )
    cv = None
    if len(set(y_all[checked].tolist())) >= 2:
        cv_rows = np.flatnonzero(checked)
        cv = _cross_validate(_rows(X, cv_rows), y_all[cv_rows], classes, seed=seed, memo=memo, progress=progress)
        flagged_outliers = {int(i) for i in np.flatnonzero(scores[cv_rows] >= OUTLIER_Z)}
        issues = label_issue_rows(cv.cl, cv.proba, cv.y, classes, [d_paths[i] for i in cv_rows], flagged_outliers)
        proba_all = np.full((len(y_all), len(classes)), np.nan)
        proba_all[cv_rows] = cv.proba
    else:
        notes.append("Fewer than 2 classes with 2 usable photos or more: labels were not cross-validated.")
        issues, proba_all = [], None
    outliers = outlier_rows(scores, similarity, proba_all, d_labels, classes, d_paths, OUTLIER_Z)
    proba, y, noise = (cv.proba, cv.y, cv.cl.noise_rate) if cv else (None, None, None)
    class_table = class_rows(
        classes,
        listed,
        d_labels,
        proba,
        y,
        noise,
        issues,
        outliers,
        [d_paths[i] for i in np.flatnonzero(checked)],
    )
    settings = {
        "seed": seed,
        "flip_average": True,
        "neighbours": NEIGHBOURS,
        "outlier_z": OUTLIER_Z,
        "near_rules": [list(r) for r in NEAR_RULES],
        "fractions": list(FRACTIONS),
        "folds": cv.n_folds if cv else 0,
        "C": cv.C if cv else None,
        "temperature": cv.temperature if cv else None,
    }
    return _Findings(
        n_usable=n_data,
        cv_accuracy=cv.accuracy if cv else None,
        duplicates=duplicates,
        label_issues=issues,
        outliers=outliers,
        classes=class_table,
        confused_pairs=confused_pairs(cv.proba, cv.y, classes) if cv else [],
        learning_curve=cv.curve if cv else None,
        notes=notes,
        settings=settings,
    )


def _rows(matrix: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``matrix[rows]``, without a copy when the rows are all of them in order (no TEST photos, every class checked:
    the usual case, where a copy would be a second feature matrix)."""
    return matrix if np.array_equal(rows, np.arange(len(matrix))) else matrix[rows]


def _refuse_overlap(dataset: Dataset, test_set: Dataset) -> None:
    """TEST photos that are DATA photos (the same file, by device and inode: the folder given twice, or reached
    again through a symlink or hard link) are no leak to clean up but a mistake in the arguments: refused."""
    data_files = {identity: path for path in dataset.paths if (identity := file_identity(path)) is not None}
    same = [(path, data_files[i]) for path in test_set.paths if (i := file_identity(path)) in data_files]
    if same:
        test_path, data_path = same[0]
        raise DataError(
            f"{test_set.root}: {len(same)} of its {len(test_set)} test photos are the same files as DATA photos "
            f"(e.g. {test_path} is {data_path}, the same folder given twice or reached through a symlink or hard "
            "link). A photo cannot be both; give a TEST folder of separate photos, or leave --test out."
        )
