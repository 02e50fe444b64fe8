"""Temperature scaling: one number that makes a classifier's probabilities mean what they say.

Logits divided by a temperature ``T`` keep every prediction (the order of the classes does not change) but
sharpen (``T < 1``) or soften (``T > 1``) the probabilities. ``T`` is fit on predictions of photos the model did
not learn from: out-of-fold predictions for the linear probe, the validation part for fine-tuning (Guo et al.
2017). The fitted value is folded into the linear head (``weight / T``, ``bias / T``), so a saved model's
probabilities are the calibrated ones.

Minimising the held-out log-loss alone degenerates on tiny data: when every held-out prediction is right, the
loss keeps falling as ``T`` goes to 0 and every probability becomes 1.000 (the bundled 60-photo sample did
that: T = 0.05). :func:`fit_temperature` therefore never lets the mean top-1 probability of the held-out
predictions exceed what they showed, with the Krichevsky-Trofimov (Jeffreys-prior) estimate of an accuracy:
with ``k`` of ``n`` right, at most ``(k + 1/2) / (n + 1)``. On hundreds of photos the bound moves T by a few percent
at most (mean confidence = accuracy is what calibration means anyway); on a handful it keeps probabilities honest (10 of 10 right: at most 0.955 on average, not 1.000). Laplace's
``(k + 1) / (n + 2)`` was measured too: it made 5-photos-a-class cats-vs-dogs probes underconfident (0.95 mean
confidence at 0.98 accuracy), docs/TRAINING.md.

Example:
    >>> import numpy as np
    >>> logits = np.array([[4.0, 0.0], [0.0, 4.0], [4.0, 0.0]]); y = np.array([0, 1, 0])
    >>> round(fit_temperature(logits, y), 2)   # all 3 right: confidence only up to (3 + 1/2) / (3 + 1) = 0.875
    2.06
    >>> round(fit_temperature(logits, y, guard=False), 2)   # the log-loss alone: every probability 1.000
    0.08
"""

from __future__ import annotations

import numpy as np

from headstart._math import log_softmax, softmax

__all__ = ["LOG_T_BOUNDS", "confidence_cap", "fit_temperature"]

#: The temperature is searched over exp(-8) .. exp(4) (0.0003 .. 55): a probe regularised hard (C = 1e-4 on three
#: photos a class) has logits so flat that it needs T = 0.005, which the earlier bound of 0.05 cut off (every
#: probability near 0.2 at 84% accuracy); the guard, not the bound, is what stops degenerate fits now.
LOG_T_BOUNDS = (-8.0, 4.0)


def confidence_cap(n_right: int, n: int) -> float:
    """The most mean top-1 probability ``n`` held-out predictions with ``n_right`` right can support:
    ``(n_right + 1/2) / (n + 1)`` (the Krichevsky-Trofimov estimate of their accuracy).

    Example:
        >>> confidence_cap(10, 10)
        0.9545454545454546
    """
    return (n_right + 0.5) / (n + 1)


def fit_temperature(logits: np.ndarray, y: np.ndarray, *, guard: bool = True) -> float:
    """The ``T`` minimising the log-loss of ``softmax(logits / T)`` on held-out ``logits`` ``(n, n_classes)``
    with true class indices ``y``; with ``guard``, raised where needed so that the mean top-1 probability stays
    at most :func:`confidence_cap` of the held-out accuracy (see the module's docstring).

    Log-probabilities work as ``logits`` too (softmax ignores a constant per row).

    Example:
        >>> logits = np.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0]])
        >>> round(fit_temperature(logits, np.array([0, 1, 1, 1]), guard=False), 2)   # 3 of 4 right: softer
        1.82
    """
    from scipy.optimize import brentq, minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if len(y) == 0:
        return 1.0
    rows = np.arange(len(y))

    def loss(log_t: float) -> float:
        return float(-np.mean(log_softmax(logits / np.exp(log_t), axis=1)[rows, y]))

    low, high = LOG_T_BOUNDS
    log_t = float(minimize_scalar(loss, bounds=(low, high), method="bounded").x)
    if guard:
        cap = confidence_cap(int((logits.argmax(axis=1) == y).sum()), len(y))

        def excess(lt: float) -> float:  # mean top-1 probability above the cap; it falls as T grows
            return float(softmax(logits / np.exp(lt), axis=1).max(axis=1).mean()) - cap

        if excess(log_t) > 0:
            log_t = high if excess(high) > 0 else float(brentq(excess, log_t, high, xtol=1e-6))
    return float(np.exp(log_t))
