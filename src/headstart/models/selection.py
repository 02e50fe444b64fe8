"""Which backbone suits these photos: the linear probe's cross-validated accuracy per candidate, and ``auto``.

:func:`score_backbones` is the scoring core of ``headstart compare`` and of ``--backbone auto``: features from
(and into) the cache, one probe fit per candidate (memoised), a row each with the CV accuracy, speed and
feature size. :func:`select_backbone` applies the rule ``auto`` uses (:class:`PairedChoice`): the candidates are taken in the
order given, the measured default first, and a later one is chosen only on strong evidence from the photos: scored
photo by photo on the same cross-validation folds, its gain over the best so far must exceed two paired standard
errors and 1.5 photos' worth. One CV score per candidate picked by a split's noise on a few photos a class (the
accuracy a user got depended on the seed by about five points); the paired rule keeps the default there and says
so. A candidate that could not win (the best so far is within the margin of 100%) is not even extracted.
Candidates are scored on at most :data:`AUTO_MAX_PHOTOS` photos (a stratified sample of the training part) and
within a time budget: once it is spent, the rest are skipped (the table says so).

``auto`` means the three offline backbones in the order :data:`OFFLINE_CANDIDATES`: lite1, lite2, lite0; lite1
first because repeated cross-validation over seeds and sizes (docs/TRAINING.md, ``benchmarks/backbone_choice.py``)
found it the best or within noise of the best single backbone on every data set tried. For a probe on a data set of
at most :data:`ENSEMBLE_MAX_PHOTOS` photos, ``auto`` then fits the **ensemble** of the candidates it scored
(:func:`choose_ensemble`; their probes' logits averaged, :mod:`headstart.features.ensemble`): measured over seeds
and sizes, it was at least as accurate as the best single backbone within noise on every row, and far ahead on a
domain unlike ImageNet, where no rule that picks one backbone from a few photos a class gets close. Beyond that
size, and for fine-tuning (one network), ``auto`` keeps the paired rule's one backbone. ``--backbone
tf_efficientnet_lite0`` when the fastest predictions matter more (an ensemble runs every member on each photo);
``ensemble`` or ``ensemble:NAME,NAME`` names an ensemble; ``auto:NAME,NAME`` any timm names, in that order
(``lite0``..``lite2`` for short).

Example:
    >>> sel = select_backbone(paths, labels, parse_auto("auto"), cache=FeatureCache())
    >>> sel.chosen, [(r["backbone"], r["cv_accuracy"]) for r in sel.rows]
    ('tf_efficientnet_lite1', [('tf_efficientnet_lite1', 0.87), ('tf_efficientnet_lite2', 0.84), ...])
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from headstart._console import say
from headstart._validation import fail
from headstart.features.ensemble import source_name
from headstart.features.spec import ENSEMBLE_PREFIX
from headstart.models.backbone_names import OFFLINE_CANDIDATES, parse_auto, parse_ensemble
from headstart.models.memo import Memo
from headstart.models.probe_fit import fit_probe, stratified_folds, stratified_sample

__all__ = [
    "AUTO_BUDGET_S",
    "AUTO_MAX_PHOTOS",
    "ENSEMBLE_MAX_PHOTOS",
    "OFFLINE_CANDIDATES",
    "PAIRED_Z",
    "PairedChoice",
    "Selection",
    "choose_ensemble",
    "describe_selection",
    "parse_auto",
    "parse_ensemble",
    "score_backbones",
    "select_backbone",
    "select_for_fit",
]

#: Seconds ``auto`` may spend extracting and scoring candidates (the first is always scored).
AUTO_BUDGET_S = 900.0
#: Most photos ``auto`` scores candidates on (a stratified sample beyond).
AUTO_MAX_PHOTOS = 1000
#: How many paired standard errors a later candidate's gain must exceed (:class:`PairedChoice`).
PAIRED_Z = 2.0
#: Up to how many usable photos ``auto`` fits a probe on the ensemble of its candidates (beyond, the paired rule's
#: one backbone): where the ensemble was measured to gain (few photos a class, a far domain), it costs one extraction
#: per member; on large data sets its gain was within noise while every prediction would cost all members.
ENSEMBLE_MAX_PHOTOS = 5000


def cv_correction(folds: int) -> float:
    """The factor a standard error computed as if every photo were an independent test needs when the scores come
    from ``folds``-fold cross-validation: the folds' training parts overlap, so their errors are correlated.
    Nadeau and Bengio's corrected resampled t-test (2003) scales the variance by ``1/J + n_test/n_train`` instead
    of ``1/J``: for one k-fold pass, ``sqrt(1 + k/(k - 1))`` on the standard error (1.5 for 5 folds).

    Example:
        >>> round(cv_correction(5), 2)
        1.5
    """
    return float(np.sqrt(1 + folds / (folds - 1))) if folds >= 2 else 1.0


@dataclass
class Selection:
    """The choice of ``auto``: the chosen backbone, every candidate's row (in the order considered), the rule,
    and what it cost."""

    chosen: str
    rows: list[dict[str, Any]]
    n_photos: int
    seconds: float
    rule: str = field(default="")
    #: the split key of each usable photo's path that the training part was taken by (``select_for_fit``), so that
    #: the fit splits the same way whichever backbone is chosen
    split_keys: dict[str, str] | None = field(default=None, repr=False)
    #: (cached, computed, seconds) of the first candidate's extraction of all photos, which ``select_for_fit`` ran:
    #: the work the fit's own extraction then finds cached, for its report when that candidate is chosen
    first_extraction: tuple[int, int, float] | None = field(default=None, repr=False)
    #: the chosen candidate as it was given: its name, or the backbone object (``select_for_fit``: a
    #: :class:`~headstart.models.inputs.ResolvedBackbone`, which the fit goes on with instead of resolving it again)
    backbone: Any = field(default=None, repr=False)
    #: the :class:`PairedChoice` that scored the candidates (its out-of-fold scores give the ensemble's)
    paired: Any = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "chosen": self.chosen,
            "rule": self.rule,
            "n_photos": self.n_photos,
            "seconds": round(self.seconds, 3),
            "candidates": self.rows,
        }


def describe_selection(selection: dict[str, Any]) -> str:
    """One line for people: each candidate's accuracy on the rule's shared folds (its own CV accuracy where it was
    not paired), the paired gain of the later ones over the best before them with its standard error, and whether
    the default was kept for want of evidence (``selection``: :meth:`Selection.to_dict`). The figures shown are
    the ones compared, so a gain is the difference of two of them."""
    parts = []
    paired = any("paired_accuracy" in r for r in selection["candidates"])
    for r in selection["candidates"]:
        accuracy = r.get("paired_accuracy", r.get("cv_accuracy"))
        if accuracy is None:
            parts.append(f"{r['backbone']} ({r.get('skipped')})")
            continue
        text = f"{r['backbone']} {accuracy:.3f}"
        if "paired_gain" in r:
            text += f" ({r['paired_gain']:+.3f} ± {r['paired_se']:.3f} photo by photo)"
        parts.append(text)
    first, last = selection["candidates"][0], selection["candidates"][-1]
    kept = len(selection["candidates"]) > 1 and first.get("chosen")
    tail = "; not enough evidence to leave the default" if kept else ""
    if last.get("chosen") and str(last["backbone"]).startswith(ENSEMBLE_PREFIX):
        tail = f"; the ensemble (their probes averaged) is the default up to {ENSEMBLE_MAX_PHOTOS:,} photos"
    how = "probe accuracy on the same cross-validation folds" if paired else "probe CV accuracy"
    return f"{how} of {selection['n_photos']} photos: {', '.join(parts)}{tail}"


def score_backbones(
    paths: Sequence[Path],
    labels: Sequence[str],
    backbones: Sequence[Any],
    *,
    cache: Any,
    memo: Memo | None = None,
    seed: int = 0,
    precision: str = "auto",
    batch_size: int = 32,
    max_pixels: int | None = None,
    weights: Any = None,
    budget_s: float | None = None,
    progress: bool = False,
    flip_average: bool = False,
    keep: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One row per backbone (a timm name, or a backbone object such as a
    :class:`~headstart.models.inputs.ResolvedBackbone`), in the order given: the probe's CV accuracy on the features of ``paths``
    (mirror-averaged with ``flip_average``), its folds, extraction speed (images/s on this machine), feature
    size, photos scored, where the weights come from and the seconds it took. Once ``budget_s`` is spent, the
    remaining rows say ``"skipped": "time budget"`` and have no accuracy.

    Example:
        >>> score_backbones(paths, labels, ["tf_efficientnet_lite0"], cache=FeatureCache())[0]["cv_accuracy"]
        0.8456
    """
    from headstart.features import extract_features

    labels = np.asarray(labels)
    started = time.perf_counter()
    rows = []
    for backbone in backbones:
        name = source_name(backbone)
        if budget_s is not None and rows and time.perf_counter() - started > budget_s:
            rows.append({"backbone": name, "cv_accuracy": None, "skipped": "time budget"})
            continue
        began = time.perf_counter()
        feats = extract_features(
            paths,
            backbone,
            weights=weights,
            cache=cache,
            precision=precision,
            batch_size=batch_size,
            max_pixels=max_pixels,
            flip_average=flip_average,
            progress=progress,
        )
        y = labels[feats.indices]
        probe = fit_probe(feats.features, y, random_state=seed, memo=memo)
        if keep is not None:  # (for the paired rule: the features, their labels and the C chosen)
            keep[name] = (feats.features, y, probe.C_, probe.temperature_)
        speed = cache.speed(feats.cache_key)
        rows.append(
            {
                "backbone": name,
                "cv_accuracy": round(float(probe.cv_accuracy_), 4),
                "folds": int(probe.n_splits_),
                "images_per_second": None if speed is None else round(speed, 1),
                "num_features": int(feats.features.shape[1]),
                "n_images": len(y),
                "weights": feats.spec.source if feats.spec else "",
                "seconds": round(time.perf_counter() - began, 3),
                "setup_seconds": round(feats.setup_seconds, 1),  # (loading, converting: not in images_per_second)
                "computed": int(feats.n_computed),
            }
        )
        if progress:  # (the row's figure, so this line and compare's table round alike)
            say(
                f"{name}: probe CV accuracy {rows[-1]['cv_accuracy']:.3f} on {len(y)} photos ({rows[-1]['seconds']:.1f} s)"
            )
    return rows


class PairedChoice:
    """``auto``'s rule, one candidate at a time: keep the first (the one expected to do best), and prefer a later
    one only on strong evidence from the photos themselves.

    Every candidate's probe (at the regularisation its own cross-validation chose) is scored on the *same*
    stratified folds of the training photos, so two candidates are compared photo by photo: the per-photo
    difference in being classified correctly has a mean (the gain) and a standard error. A later candidate wins
    only when its gain is more than :data:`PAIRED_Z` standard errors (corrected for the folds' overlap:
    :func:`cv_correction`) and more than 1.5 photos' worth. With a few
    photos a class the standard error is large, so the choice does not follow one split's noise: it keeps the
    measured default and says so.

    Example:
        >>> rule = PairedChoice(y, seed=0)
        >>> rule.offer("tf_efficientnet_lite1", X1, C=1.0)["chosen"], rule.offer("tf_efficientnet_lite2", X2, C=1.0)
        (True, {'paired_gain': 0.004, 'paired_se': 0.012, 'chosen': False})
    """

    def __init__(self, y: Sequence[Any], *, seed: int = 0, memo: Memo | None = None, folds: int = 5) -> None:
        self.y = np.asarray(y)
        self.seed, self.memo = seed, memo
        counts = np.unique(self.y, return_counts=True)[1]
        self.n_splits = int(min(folds, counts.min())) if len(counts) > 1 else 0
        self.best: str | None = None
        self._best_correct: np.ndarray | None = None
        self.classes = np.unique(self.y)
        self._logits: dict[str, np.ndarray] = {}  # each candidate's out-of-fold logits (for the ensemble's score)

    def offer(self, name: str, X: np.ndarray, *, C: float, temperature: float = 1.0) -> dict[str, Any]:
        """Score ``name``'s features ``X`` (rows in the order of ``y``) on the shared folds; what the rule concluded
        (``paired_gain`` and ``paired_se`` against the best so far, and whether it is now the choice)."""
        correct = None
        if self.n_splits >= 2:
            logits = self._out_of_fold_logits(np.asarray(X), C) / temperature
            self._logits[name] = logits
            correct = self._correct(logits)
        return self._judge(name, correct)

    def ensemble(self, names: Sequence[str], name: str) -> dict[str, Any]:
        """The score of ``names``' probes averaged (their out-of-fold logits, as an ensemble's head averages them)
        on the same folds, paired against the best single candidate; it does not change the rule's choice."""
        if self.n_splits < 2 or not all(n in self._logits for n in names):
            return {}
        correct = self._correct(sum(self._logits[n] for n in names) / len(names))
        verdict = self._judge(name, correct, may_choose=False)
        return {k: v for k, v in verdict.items() if k != "chosen"}

    def _judge(self, name: str, correct: np.ndarray | None, *, may_choose: bool = True) -> dict[str, Any]:
        scored = {} if correct is None else {"paired_accuracy": round(float(correct.mean()), 4)}
        if self.best is None or self._best_correct is None or correct is None:
            if self.best is None:
                self.best, self._best_correct = name, correct
            return {**scored, "chosen": self.best == name}
        difference = correct - self._best_correct
        gain = float(difference.mean())
        se = float(difference.std(ddof=1) / np.sqrt(len(difference))) if len(difference) > 1 else float("inf")
        se *= cv_correction(self.n_splits)
        wins = gain > max(PAIRED_Z * se, 1.5 / len(difference))
        if wins and may_choose:
            self.best, self._best_correct = name, correct
        return {**scored, "paired_gain": round(gain, 4), "paired_se": round(se, 4), "chosen": wins}

    def _correct(self, logits: np.ndarray) -> np.ndarray:
        return (self.classes[logits.argmax(axis=1)] == self.y).astype(np.float64)

    def _out_of_fold_logits(self, X: np.ndarray, C: float) -> np.ndarray:
        logits = np.zeros((len(self.y), len(self.classes)))
        for test in stratified_folds(self.y, self.n_splits, self.seed):
            train = np.setdiff1d(np.arange(len(self.y)), test)
            fit = fit_probe(X[train], self.y[train], random_state=self.seed, memo=self.memo, Cs=(C,))
            logits[test] = X[test] @ fit.coef_.T + fit.intercept_  # (fit.classes_ is self.classes: every class trains)
        return logits


def select_backbone(
    paths: Sequence[Path],
    labels: Sequence[str],
    candidates: Sequence[Any],
    *,
    cache: Any,
    memo: Memo | None = None,
    seed: int = 0,
    max_photos: int = AUTO_MAX_PHOTOS,
    budget_s: float = AUTO_BUDGET_S,
    **extract: Any,
) -> Selection:
    """Score ``candidates`` on (a stratified sample of at most ``max_photos`` of) the photos and choose one by
    :class:`PairedChoice`'s rule. ``extract`` goes to :func:`score_backbones` (precision, batch_size, max_pixels,
    weights, progress).

    Example:
        >>> select_backbone(paths, labels, ["tf_efficientnet_lite1", "tf_efficientnet_lite0"], cache=cache).chosen
        'tf_efficientnet_lite1'
    """
    if not candidates:
        fail("candidates", "select_backbone", "at least one backbone name", candidates)
    started = time.perf_counter()
    paths, labels = list(paths), np.asarray(labels)
    if len(paths) > max_photos:
        keep = stratified_sample(labels, max_photos, seed)
        paths, labels = [paths[i] for i in keep], labels[keep]
    margin = 1.5 / max(1, len(labels))
    rule = PairedChoice(labels, seed=seed, memo=memo)
    rows: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    for candidate in candidates:  # (one at a time: a later one is not extracted when it could not win anyway)
        name = source_name(candidate)
        spent = time.perf_counter() - started
        if best is not None and (best["cv_accuracy"] or 0.0) + margin >= 1.0:
            rows.append({"backbone": name, "cv_accuracy": None, "skipped": "could not gain more than the margin"})
            continue
        left = None if budget_s is None else budget_s - spent
        if best is not None and left is not None and left <= 0:
            rows.append({"backbone": name, "cv_accuracy": None, "skipped": "time budget"})
            continue
        scored: dict[str, Any] = {}
        row = score_backbones(paths, labels, [candidate], cache=cache, memo=memo, seed=seed, keep=scored, **extract)[0]
        rows.append(row)
        if row["cv_accuracy"] is None or not np.isfinite(row["cv_accuracy"]):
            continue  # (no CV possible, e.g. a class with one photo)
        X, y, C, temperature = scored[name]
        order = _align(y, labels)  # the rows of the usable photos, in the order the rule's labels are
        if order is None:  # (a photo unusable with this backbone only: no paired comparison possible)
            row["skipped_pairing"] = "not every photo was usable with this backbone"
            continue
        verdict = rule.offer(name, X[order], C=C, temperature=temperature)
        row.update({k: v for k, v in verdict.items() if k != "chosen"})
        if best is None or verdict["chosen"]:
            best = row
    best = best or rows[0]  # (nothing cross-validated: the first candidate, as a fixed choice would be)
    for row in rows:
        row["chosen"] = row is best
    text = (
        f"the first candidate (the measured default) unless a later one classifies more of the {len(labels)} "
        f"photos correctly on the same {rule.n_splits} cross-validation folds by more than {PAIRED_Z:g} paired "
        f"standard errors (corrected for the folds' overlap) and more than 1.5 photos' worth ({margin:.4f})"
    )
    if best is rows[0] and len(rows) > 1:
        text += "; no later candidate had that evidence, so the default was kept"
    chosen = next(c for c in candidates if source_name(c) == best["backbone"])
    selection = Selection(best["backbone"], rows, len(labels), time.perf_counter() - started, text, backbone=chosen)
    selection.paired = rule
    return selection


def _align(y: np.ndarray, labels: np.ndarray) -> np.ndarray | None:
    """The identity order when ``y`` (the usable photos' labels) covers every photo of ``labels``; else None."""
    return np.arange(len(labels)) if len(y) == len(labels) and np.array_equal(y, labels) else None


def select_for_fit(
    dataset: Any,
    candidates: Sequence[str],
    *,
    cache: Any,
    memo: Memo | None,
    seed: int,
    val_fraction: float,
    progress: bool = False,
    flip_average: bool = False,
    ensemble: bool = False,
    **extract: Any,
) -> Selection:
    """``auto`` as :class:`~headstart.models.estimator.ImageClassifier.fit` runs it: the first candidate's
    features of all photos tell which are usable and how they split (the split ``fit`` then makes too), and
    the candidates are scored on the training part only, so the validation figures stay held out. One view of
    each photo unless ``flip_average`` (the fit's mirror averaging asked for or left to CV). Each candidate is
    resolved once (a :class:`~headstart.models.inputs.ResolvedBackbone` with ``weights``); the chosen one is
    ``selection.backbone``. With ``ensemble`` (a probe), data sets of at most :data:`ENSEMBLE_MAX_PHOTOS` usable
    photos get the ensemble of the candidates scored (:func:`choose_ensemble`).

    Example:
        >>> select_for_fit(load_dataset("photos/"), parse_auto("auto"), cache=FeatureCache(), memo=None, seed=0,
        ...                val_fraction=0.2).chosen
        'tf_efficientnet_lite1'
    """
    from headstart.data import train_val_split
    from headstart.features import extract_features
    from headstart.models.inputs import ResolvedBackbone, split_keys

    weights = extract.pop("weights", None)
    candidates = [ResolvedBackbone(c, weights) if isinstance(c, str) else c for c in candidates]
    first = extract_features(
        dataset.paths, candidates[0], cache=cache, flip_average=flip_average, progress=progress, **extract
    )
    usable = dataset.subset(first.indices.tolist())
    if len(set(usable.labels)) < 2:  # nothing to score: the fit refuses these photos with its own error
        name = source_name(candidates[0])
        return Selection(
            name,
            [{"backbone": name, "cv_accuracy": None, "chosen": True, "skipped": "fewer than 2 classes"}],
            len(usable),
            0.0,
            backbone=candidates[0],
        )
    keys = split_keys(
        usable.paths, first.hashes, first.features, memo=memo, max_pixels=extract.get("max_pixels"), progress=progress
    )
    train_part, _ = train_val_split(usable, val_fraction=val_fraction, seed=seed, groups=keys)
    selection = select_backbone(
        train_part.paths,
        train_part.labels,
        candidates,
        cache=cache,
        memo=memo,
        seed=seed,
        progress=progress,
        flip_average=flip_average,
        **extract,
    )
    selection.split_keys = dict(zip(map(str, usable.paths), keys))
    selection.first_extraction = (first.n_cached, first.n_computed, first.seconds)
    if ensemble and len(usable) <= ENSEMBLE_MAX_PHOTOS:
        choose_ensemble(selection, candidates)
    return selection


def choose_ensemble(selection: Selection, candidates: Sequence[Any]) -> None:
    """Make the ensemble of the candidates that were scored the choice (when at least two were), with a row of its
    own: its accuracy on the rule's folds and its paired gain over the best single candidate."""
    from headstart.features.ensemble import EnsembleSource, ensemble_name

    members = [c for c, row in zip(candidates, selection.rows) if row.get("paired_accuracy") is not None]
    if len(members) < 2:
        return
    names = [source_name(m) for m in members]
    name = ensemble_name(names)
    scored = selection.paired.ensemble(names, name) if selection.paired is not None else {}
    for row in selection.rows:
        row["chosen"] = False
    selection.rows.append({"backbone": name, "cv_accuracy": scored.get("paired_accuracy"), **scored, "chosen": True})
    selection.chosen, selection.backbone = name, EnsembleSource(members)
    selection.rule = (
        f"up to {ENSEMBLE_MAX_PHOTOS:,} photos, the ensemble of the candidates scored (their probes averaged: measured "
        "at least as accurate as the best single backbone on every data set tried, docs/TRAINING.md); beyond, "
        + selection.rule
    )
