"""Likely wrong labels: out-of-fold probabilities from the linear probe, read the confident-learning way.

Confident learning (Northcutt, Jiang and Chuang, "Confident Learning: Estimating Uncertainty in Dataset Labels",
JAIR 2021), written here from the paper:

1. every photo gets class probabilities from a probe that never saw it (k-fold cross-validation);
2. each class j gets a threshold t_j, the mean probability of class j over the photos labelled j (its average
   self-confidence): a photo is *confidently* of class j when its probability of j reaches t_j;
3. the **confident joint** counts, for each given label i, the photos whose most probable confident class is j;
   its off-diagonal cells are the photos whose label disagrees with what the rest of the data say;
4. those photos are ranked by their **self-confidence** ``p(given)``, lowest first (ties: by the normalized margin
   ``p(given) - max_{j != given} p(j)``); the calibrated joint estimates the share of wrong labels in each class.

Self-confidence ranks better than the margin here: a wrong label's photo belongs clearly to another class, so its
given class gets almost nothing, however the rest is split between look-alike classes (Ragdoll/Birman); a hard
photo with a right label keeps some probability on it (docs/AUDIT.md has the numbers).

Example:
    >>> proba = np.array([[0.9, 0.1], [0.8, 0.2], [0.2, 0.8], [0.9, 0.1]])
    >>> result = confident_learning(proba, np.array([0, 0, 1, 1]))
    >>> result.issues.tolist(), result.suggested[3]
    ([3], 0)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from headstart._math import softmax

__all__ = [
    "ConfidentLearning",
    "confident_learning",
    "fit_fold",
    "fold_splits",
    "label_issue_score",
    "out_of_fold_probabilities",
    "run_quietly",
]


def fold_splits(y: np.ndarray, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Seeded stratified k-fold splits of ``y`` (class indices): ``[(train indices, held-out indices), ...]``."""
    from sklearn.model_selection import StratifiedKFold

    with warnings.catch_warnings():  # "the least populated class has only 1 member": those photos just never train
        warnings.simplefilter("ignore", UserWarning)
        splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        return [(train, test) for train, test in splitter.split(np.zeros(len(y)), y)]


def fit_fold(
    X: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    train: np.ndarray,
    test: np.ndarray,
    *,
    C: float,
    temperature: float,
    seed: int,
) -> np.ndarray:
    """Probabilities of the ``test`` rows from a probe fitted on the ``train`` rows at a fixed ``C``.

    Columns are the ``n_classes`` class indices; a class absent from ``train`` gets probability 0. Logits are
    divided by ``temperature`` (the probe's calibration at this C), so probabilities mean what they say.
    """
    from headstart.models.probe import LinearProbe

    present = np.unique(y[train])
    proba = np.zeros((len(test), n_classes))
    if len(present) < 2:  # nothing to learn: all the mass on the one class seen
        proba[:, present] = 1.0
        return proba
    probe = LinearProbe(Cs=(C,), calibrate=False, random_state=seed).fit(X[train], y[train])
    proba[:, probe.classes_] = softmax(probe.predict_log_proba(X[test]) / temperature, axis=1)
    return proba


def out_of_fold_probabilities(
    X: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    folds: list[tuple[np.ndarray, np.ndarray]],
    *,
    C: float,
    temperature: float,
    seed: int,
    run: Callable[[list[Callable[[], np.ndarray]]], list[np.ndarray]] | None = None,
) -> np.ndarray:
    """Each photo's class probabilities from the probe fitted on the folds that left it out, ``(n, n_classes)``.

    ``run`` executes a list of zero-argument jobs and returns their results (e.g. in threads); default: in order.
    """
    jobs = [
        lambda tr=train, te=test: fit_fold(X, y, n_classes, tr, te, C=C, temperature=temperature, seed=seed)
        for train, test in folds
    ]
    results = run_quietly(jobs, run)
    proba = np.zeros((len(y), n_classes))
    for (_, test), fold_proba in zip(folds, results):
        proba[test] = fold_proba
    return proba


def run_quietly(jobs: list[Callable[[], Any]], run: Callable[[list[Callable[[], Any]]], list[Any]] | None) -> list[Any]:
    """Run the fold fits (``run`` may spread them over threads) with their solver warnings silenced.

    A fold's lbfgs stopping a little early changes nothing the audit reports, and a learning-curve point with one
    photo a class makes scikit-learn wonder whether y is a regression target. The warning filters are global, and
    the probe's own ``warnings.catch_warnings`` is not thread-safe: fits in two threads leave the filters changed.
    So they are set here, in the calling thread, around all the jobs, and restored as they were on leaving.
    """
    from headstart.models.probe import ProbeWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ProbeWarning)
        warnings.filterwarnings("ignore", message="The number of unique classes is greater than 50%")
        return run(jobs) if run is not None else [job() for job in jobs]


@dataclass
class ConfidentLearning:
    """What confident learning says about the labels.

    Attributes:
        thresholds: per-class threshold t_j (mean self-confidence), shape ``(n_classes,)``.
        joint: the confident joint, counts, ``joint[given, confident class]``, shape ``(n_classes, n_classes)``.
        noise_rate: estimated share of wrong labels among the photos labelled with each class (from the
            calibrated joint), shape ``(n_classes,)``.
        issues: indices of the photos in an off-diagonal cell of the confident joint, least self-confident first.
        candidates: those and the photos whose likeliest class is not the given one, in the same order.
        suggested: per photo, its most probable class other than the given one.
        margin: per photo, the normalized margin ``p(given) - max_{j != given} p(j)`` in [-1, 1].
        self_confidence: per photo, ``p(given)``.
    """

    thresholds: np.ndarray
    joint: np.ndarray
    noise_rate: np.ndarray
    issues: np.ndarray
    candidates: np.ndarray
    suggested: np.ndarray
    margin: np.ndarray
    self_confidence: np.ndarray


def confident_learning(proba: np.ndarray, y: np.ndarray) -> ConfidentLearning:
    """Find the photos whose given label (``y``, class indices) the out-of-fold ``proba`` confidently contradict.

    Args:
        proba: out-of-fold probabilities, shape ``(n, n_classes)``.
        y: given labels as class indices, shape ``(n,)``.

    Returns:
        A :class:`ConfidentLearning`; classes with no photo get a threshold of 1 (never confident).
    """
    proba = np.asarray(proba, dtype=np.float64)
    y = np.asarray(y)
    n, m = proba.shape
    counts = np.bincount(y, minlength=m)
    self_confidence = proba[np.arange(n), y]
    thresholds = np.ones(m)
    for j in range(m):
        if counts[j]:
            thresholds[j] = proba[y == j, j].mean()
    # The confident class of a photo: its most probable class among those whose threshold it reaches.
    above = proba >= thresholds[None, :] - 1e-12
    confident = np.where(above, proba, -np.inf).argmax(axis=1)
    has_confident = above.any(axis=1)
    joint = np.zeros((m, m), dtype=np.int64)
    np.add.at(joint, (y[has_confident], confident[has_confident]), 1)

    # Calibrated joint: each row rescaled to the class's real count, so that row i estimates how the photos labelled
    # i split over the true classes (the paper's Eq. 2); its off-diagonal share is the class's label noise.
    row_sums = joint.sum(axis=1, keepdims=True)
    calibrated = np.divide(joint * counts[:, None], row_sums, out=np.zeros((m, m)), where=row_sums > 0)
    noise_rate = np.divide(calibrated.sum(axis=1) - np.diag(calibrated), counts, out=np.zeros(m), where=counts > 0)

    others = proba.copy()
    others[np.arange(n), y] = -np.inf
    best_other = others.argmax(axis=1)
    margin = self_confidence - others[np.arange(n), best_other]
    contradicted = has_confident & (confident != y)
    suggested = np.where(contradicted, confident, best_other)

    def ranked(rows):
        return rows[np.lexsort((rows, margin[rows], self_confidence[rows]))]

    flagged = ranked(np.flatnonzero(contradicted))
    candidates = ranked(np.flatnonzero(contradicted | (margin < 0)))
    return ConfidentLearning(thresholds, joint, noise_rate, flagged, candidates, suggested, margin, self_confidence)


def label_issue_score(self_confidence: np.ndarray) -> np.ndarray:
    """The report's score of a label issue in [0, 1]: ``1 - p(given)``, the out-of-fold doubt about the given label."""
    return 1.0 - np.asarray(self_confidence)
