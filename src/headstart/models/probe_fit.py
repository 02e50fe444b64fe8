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

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from headstart._math import softmax
from headstart.models.memo import Memo, source_digest, versions

__all__ = ["ProbeFit", "fit_probe"]


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
) -> ProbeFit:
    """A :class:`headstart.models.probe.LinearProbe` (default settings; ``Cs`` given: that grid, e.g. one value,
    no cross-validation) fitted on ``X``, ``y``; from ``memo`` when it has it.

    Labels must be strings or integers (what data sets give); the fit is returned as a :class:`ProbeFit` either way,
    so a fresh fit and a remembered one predict bit for bit the same.
    """
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
