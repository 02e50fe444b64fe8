"""Shared numerics on numpy arrays (no torch): the softmax every probability in headstart goes through."""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """``log(softmax(logits))``, computed stably (the max is subtracted first)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Probabilities from logits along ``axis``, in the input's float dtype (float32 stays float32)."""
    logits = np.asarray(logits)
    dtype = logits.dtype if np.issubdtype(logits.dtype, np.floating) else np.float64
    z = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=axis, keepdims=True)).astype(dtype, copy=False)


def linear_probabilities(features: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """``softmax(features @ weight.T + bias)`` as float32, finite for finite inputs: the scores are computed in
    float32, and again in float64 for the rows where float32 overflows (a head with huge weights)."""
    x = np.asarray(features, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        z = x @ weight.T + bias
    over = ~np.isfinite(z).all(axis=1)
    if over.any():
        z = z.astype(np.float64)
        z[over] = x[over].astype(np.float64) @ np.asarray(weight, np.float64).T + bias
    return softmax(z, axis=1).astype(np.float32)
