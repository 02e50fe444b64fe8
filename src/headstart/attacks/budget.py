"""Perturbation budgets: reading them, refusing ones an 8-bit PNG cannot hold, and keeping a saved image inside one.

A budget is in 0–1 pixel units (``4/255`` = four 8-bit steps). The optimiser works on floats, but what counts is
the saved 8-bit image: :func:`quantise` rounds a perturbation to whole 8-bit steps and guarantees that the result
is inside the budget (L∞: every value within ``floor(eps·255)`` steps; L2: shrunk until it fits), and
:func:`perturbation_size` measures it there.

Example:
    >>> parse_eps("4/255") * 255
    4.0
    >>> parse_eps_list("0,2/255,1/255")
    [0.0, 0.00392156862745098, 0.00784313725490196]
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from headstart._validation import check_choice, fail

if TYPE_CHECKING:
    import torch

METHODS = ("pgd", "fgsm", "lesson")
NORMS = ("linf", "l2")


def parse_eps(value: str | float, *, norm: str = "linf", caller: str = "parse_eps") -> float:
    """A perturbation budget from ``"4/255"``, ``"0.0157"`` or a number, in 0–1 pixel units.

    Raises:
        ParameterError (a ValueError): not a number or fraction, negative, not finite, or (L∞) above 1.

    Example:
        >>> parse_eps("4/255") * 255
        4.0
    """
    check_choice(norm, "norm", caller, NORMS)
    text = str(value).strip()
    match = re.fullmatch(r"([0-9.eE+-]+)\s*/\s*([0-9.eE+-]+)", text)
    try:
        eps = float(match[1]) / float(match[2]) if match else float(text)
    except (ValueError, ZeroDivisionError):
        fail("eps", caller, "a number or a fraction like 4/255 (0–1 pixel units)", text)
    upper = 1.0 if norm == "linf" else math.inf
    if not (math.isfinite(eps) and 0.0 <= eps <= upper):
        allowed = "in [0, 1] for norm linf (4/255 = four 8-bit steps)" if norm == "linf" else "finite and >= 0"
        fail("eps", caller, allowed, text)
    return eps


def parse_eps_list(
    text: str | Sequence[str | float], *, norm: str = "linf", caller: str = "parse_eps_list"
) -> list[float]:
    """``"0,1/255,2/255"`` (or a list) → sorted unique budgets, each checked by :func:`parse_eps`.

    Example:
        >>> [round(e * 255) for e in parse_eps_list("4/255,0,4/255")]
        [0, 4]
    """
    items = [t for t in text.split(",") if t.strip()] if isinstance(text, str) else list(text)
    if not items:
        fail("eps", caller, "at least one budget, e.g. 0,1/255,2/255,4/255,8/255", text)
    return sorted({parse_eps(t, norm=norm, caller=caller) for t in items})


def check_8bit_budget(eps: float, norm: str, method: str, caller: str) -> None:
    """An 8-bit PNG cannot move a pixel by less than one step: refuse L∞ budgets that would silently be zero."""
    if norm == "linf" and method != "lesson" and 0 < eps < 1 / 255 - 1e-9:
        fail(
            "eps",
            caller,
            f"0 or at least 1/255 for norm linf: the saved 8-bit image cannot change a pixel by {eps * 255:.3g}/255",
            eps,
        )


def optimiser_eps(eps: float, norm: str) -> float:
    """The budget the optimiser is given: L∞ budgets act on whole 8-bit steps (``floor(eps·255)/255``)."""
    return math.floor(eps * 255 + 1e-6) / 255 if norm == "linf" else eps


def step_size_used(method: str, norm: str, eps: float, step_size: float | None) -> float:
    """The step :func:`~headstart.attacks.optimise.perturb` takes for these settings (what the report shows)."""
    budget = optimiser_eps(eps, norm)
    if method == "fgsm":
        return budget
    if step_size is not None:
        return step_size
    return 1.0 if method == "lesson" else budget / 4


def quantise(original: np.ndarray, delta: torch.Tensor, norm: str, eps: float, method: str) -> tuple[np.ndarray, int]:
    """The 8-bit adversarial photo ``(H, W, 3)`` and how many values were clipped to 0–255.

    Guaranteed inside the budget (L∞: every value within ``floor(eps·255)`` steps; L2: shrunk until rounding no
    longer pushes it over); the lesson's method has no budget and is only clipped to valid pixels.
    """
    x = original.astype(np.float64) + delta[0].permute(1, 2, 0).double().numpy() * 255
    clipped = int(((x < -0.5) | (x > 255.5)).sum())
    q = np.clip(np.round(x), 0, 255)
    if method != "lesson":
        if norm == "linf":
            k = math.floor(eps * 255 + 1e-6)
            q = np.clip(q, original.astype(np.float64) - k, original.astype(np.float64) + k)
        else:
            for _ in range(20):  # rounding can push L2 a hair over the budget: shrink until it fits
                if np.sqrt((((q - original) / 255.0) ** 2).sum()) <= eps + 1e-9:
                    break
                x = original + (x - original) * 0.98
                q = np.clip(np.round(x), 0, 255)
            else:
                q = original.astype(np.float64)
    return q.astype(np.uint8), clipped


def perturbation_size(original: np.ndarray, adversarial: np.ndarray) -> tuple[int, float, float | None]:
    """``(L∞ in 8-bit steps, L2 in 0–1 units, PSNR in dB or None when nothing changed)`` of two uint8 photos."""
    diff = adversarial.astype(np.int16) - original.astype(np.int16)
    linf = int(np.abs(diff).max()) if diff.size else 0
    l2 = float(np.sqrt(((diff / 255.0) ** 2).sum()))
    mse = float((diff.astype(np.float64) ** 2).mean())
    psnr = None if mse == 0 else 10 * math.log10(255.0**2 / mse)
    return linf, l2, psnr


__all__ = [
    "METHODS",
    "NORMS",
    "check_8bit_budget",
    "optimiser_eps",
    "parse_eps",
    "parse_eps_list",
    "perturbation_size",
    "quantise",
    "step_size_used",
]
