"""A linear probe's fit as numbers, and the fit remembered: what the estimator, ``auto``'s selection, ``compare``
and the audit fit, without importing scikit-learn when the memo has it.

:func:`fit_probe` fits a :class:`~headstart.models.probe.LinearProbe` (which imports scikit-learn) and keeps its
numbers as a :class:`ProbeFit` (which needs numpy only), stored in the :class:`~headstart.models.memo.Memo`
under a key over the features' bytes, the labels, the settings, the installed scikit-learn/scipy/numpy and the
source of the modules that compute it; a later call with the same inputs reads it back, bit for bit.

Example:
    >>> memo = Memo.beside(FeatureCache())
    >>> fit = fit_probe(X, labels, random_state=0, memo=memo)   # fitted once, read back on later calls
    >>> fit.predict_proba(X).shape
    (60, 12)
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from headstart._math import softmax
from headstart.models.memo import Memo, source_digest, versions

__all__ = ["ENSEMBLE_CV_ROWS", "ProbeFit", "describe_C", "fit_ensemble_probe", "fit_probe", "stratified_folds"]

#: Most photos an ensemble's head is cross-validated on (a stratified sample beyond), as a probe's ``max_cv_rows``.
ENSEMBLE_CV_ROWS = 5000


@dataclass(frozen=True)
class ProbeFit:
    """The numbers of a fitted :class:`headstart.models.probe.LinearProbe` (its attribute names), usable without sklearn."""

    classes_: np.ndarray
    coef_: np.ndarray
    intercept_: np.ndarray
    C_: float
    cv_accuracy_: float
    temperature_: float
    n_splits_: int
    #: for an ensemble's head (``fit_probe`` with ``blocks``): each member's regularisation (``C_`` is the first's)
    member_C_: tuple[float, ...] = ()

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities, shape ``(n_samples, n_classes)``: the same arithmetic as ``LinearProbe``."""
        return softmax(np.asarray(X, dtype=np.float64) @ self.coef_.T + self.intercept_, axis=1)

    @classmethod
    def of(cls, probe: Any) -> ProbeFit:
        return cls(
            probe.classes_,
            probe.coef_,
            probe.intercept_,
            float(probe.C_),
            float(probe.cv_accuracy_),
            float(probe.temperature_),
            int(probe.n_splits_),
        )

    def to_bytes(self) -> bytes:
        from safetensors.numpy import save

        meta = {
            "classes": self.classes_.tolist(),
            "C": self.C_,
            "cv_accuracy": self.cv_accuracy_,
            "temperature": self.temperature_,
            "n_splits": self.n_splits_,
        }
        arrays = {"coef": np.ascontiguousarray(self.coef_), "intercept": np.ascontiguousarray(self.intercept_)}
        return save(arrays, metadata={"probe": json.dumps(meta)})  # (safetensors writes buffers as they lie)

    @classmethod
    def from_bytes(cls, data: bytes) -> ProbeFit:
        from safetensors.numpy import load

        tensors = load(data)  # raw arrays and a JSON header: no code runs on load
        header_length = int.from_bytes(data[:8], "little")  # the safetensors layout: u64 length, then the header
        meta = json.loads(json.loads(data[8 : 8 + header_length])["__metadata__"]["probe"])
        return cls(
            np.array(meta["classes"]),
            tensors["coef"],
            tensors["intercept"],
            float(meta["C"]),
            float(meta["cv_accuracy"]),
            float(meta["temperature"]),
            int(meta["n_splits"]),
        )


def fit_probe(
    X: np.ndarray,
    y: np.ndarray,
    *,
    random_state: int = 0,
    memo: Memo | None = None,
    Cs: tuple[float, ...] | None = None,
    blocks: tuple[int, ...] | None = None,
) -> ProbeFit:
    """A :class:`headstart.models.probe.LinearProbe` (default settings; ``Cs`` given: that grid, e.g. one value,
    no cross-validation) fitted on ``X``, ``y``; from ``memo`` when it has it.

    Labels must be strings or integers (what data sets give); the fit is returned as a :class:`ProbeFit` either way,
    so a fresh fit and a remembered one predict bit for bit the same.

    ``blocks``: the widths of the column blocks of an ensemble's features (its members'): each block gets its own
    probe and the head averages their calibrated logits (:func:`fit_ensemble_probe`).
    """
    if blocks is not None and len(blocks) > 1:
        return fit_ensemble_probe(X, y, blocks, random_state=random_state, memo=memo, Cs=Cs)
    y = np.asarray(y)
    key = None
    if memo is not None and y.dtype.kind in "Uiu":
        key = Memo.key(
            "probe-fit",
            source_digest("headstart.models.probe"),
            source_digest("headstart.models.probe_fit"),
            source_digest("headstart.models.temperature"),
            versions("scikit-learn", "scipy", "numpy"),
            {"random_state": random_state, **({"Cs": [float(c) for c in Cs]} if Cs is not None else {})},
            np.asarray(X),
            y,
        )
        data = memo.read(key, ".safetensors")
        if data is not None:
            try:
                fit = ProbeFit.from_bytes(data)
                if fit.classes_.dtype.kind == y.dtype.kind or len(fit.classes_) == 0:
                    return fit
            except Exception:  # a damaged entry is a miss (and is overwritten below)
                pass
    from headstart.models.probe import LinearProbe

    options = {"Cs": tuple(float(c) for c in Cs)} if Cs is not None else {}
    fit = ProbeFit.of(LinearProbe(random_state=random_state, **options).fit(X, y))
    if key is not None:
        memo.write(key, ".safetensors", fit.to_bytes())
    return fit


def fit_ensemble_probe(
    X: np.ndarray,
    y: np.ndarray,
    blocks: tuple[int, ...],
    *,
    random_state: int = 0,
    memo: Memo | None = None,
    Cs: tuple[float, ...] | None = None,
) -> ProbeFit:
    """An ensemble's head: one probe per column block (each member's features, its regularisation by its own
    cross-validation), whose calibrated logits the head averages, as one linear layer over the blocks side by side.
    The average is scored out of fold on shared stratified folds (at most :data:`ENSEMBLE_CV_ROWS` photos), which
    gives its ``cv_accuracy_`` and the temperature that calibrates it.

    Averaging logits rather than probabilities keeps the head linear (one layer, as every consumer of a model
    expects); on the data measured (docs/TRAINING.md) it was as accurate as averaging probabilities.

    Example:
        >>> fit = fit_ensemble_probe(np.hstack([X0, X1]), labels, (1280, 1280))
        >>> fit.coef_.shape, len(fit.member_C_)
        ((12, 2560), 2)
    """
    from headstart._math import log_softmax
    from headstart.models.temperature import fit_temperature

    X, y = np.asarray(X), np.asarray(y)
    edges = np.cumsum([0, *blocks])
    if edges[-1] != X.shape[1]:
        raise ValueError(f"The blocks {list(blocks)} add up to {edges[-1]} columns; the features have {X.shape[1]}.")
    spans = list(itertools.pairwise(edges))
    members = [fit_probe(X[:, a:b], y, random_state=random_state, memo=memo, Cs=Cs) for a, b in spans]
    classes = members[0].classes_
    counts = np.unique(y, return_counts=True)[1]
    n_splits = int(min(5, counts.min())) if len(counts) > 1 else 0
    accuracy, temperature = float("nan"), 1.0
    if n_splits >= 2:
        rows = np.arange(len(y))
        if len(y) > ENSEMBLE_CV_ROWS:
            rows = stratified_sample(y, ENSEMBLE_CV_ROWS, random_state)
        ys = y[rows]
        logits = np.zeros((len(rows), len(classes)))
        for test in stratified_folds(ys, n_splits, random_state):
            train = np.setdiff1d(np.arange(len(rows)), test)
            for member, (a, b) in zip(members, spans):
                part = X[rows][:, a:b]
                fold = fit_probe(part[train], ys[train], random_state=random_state, memo=memo, Cs=(member.C_,))
                logits[test] += (part[test] @ fold.coef_.T + fold.intercept_) / member.temperature_ / len(members)
        index = np.searchsorted(classes, ys)
        accuracy = float(np.mean(logits.argmax(axis=1) == index))
        temperature = fit_temperature(log_softmax(logits, axis=1), index)
    coef = np.hstack([m.coef_ for m in members]) / (len(members) * temperature)
    intercept = np.mean([m.intercept_ for m in members], axis=0) / temperature
    return ProbeFit(
        classes,
        coef,
        intercept,
        float(members[0].C_),
        accuracy,
        float(temperature),
        n_splits,
        tuple(float(m.C_) for m in members),
    )


def describe_C(C: float | list[float]) -> str:
    """A probe's ``C`` as a run's report records it (a list: an ensemble's, one per member), for people.

    Example:
        >>> describe_C(0.5), describe_C([0.1, 10.0])
        ('0.5', "0.1, 10 (each member's)")
    """
    return ", ".join(f"{c:.3g}" for c in C) + " (each member's)" if isinstance(C, list) else f"{C:.3g}"


def stratified_folds(y: np.ndarray, n_splits: int, seed: int) -> list[np.ndarray]:
    """The test indices of ``n_splits`` stratified folds: each class's photos shuffled (seeded) and dealt round
    the folds in turn. Plain numpy, so a re-run whose fits are memoised imports no scikit-learn."""
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(n_splits)]
    start = 0
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        for j, i in enumerate(members):
            folds[(start + j) % n_splits].append(int(i))
        start += len(members)  # (the next class starts where this one stopped: fold sizes stay even)
    return [np.sort(np.asarray(f, dtype=np.int64)) for f in folds]


def stratified_sample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of ``n`` photos with every class in proportion (each at least once), seeded."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    share = np.maximum(1, np.floor(counts * n / len(labels))).astype(int)
    chosen = [
        rng.choice(np.flatnonzero(labels == c), min(k, cnt), replace=False) for c, k, cnt in zip(classes, share, counts)
    ]
    return np.sort(np.concatenate(chosen))
