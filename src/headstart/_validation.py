"""One way to check a parameter and word the error, for every function and command (scikit-learn's message).

    The 'top_k' parameter of predict must be an int in [1, inf). Got 0 instead.

The CLI turns the :class:`ParameterError` into one line naming the option (``--top-k``) and exit code 2.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any


class ParameterError(ValueError):
    """A parameter has a value outside what it accepts; ``.parameter`` names it (the CLI maps it to its flag)."""

    def __init__(self, message: str, parameter: str | None = None) -> None:
        super().__init__(message)
        self.parameter = parameter


def fail(name: str, caller: str, allowed: str, value: Any) -> None:
    """Raise the standard message: ``The {name!r} parameter of {caller} must be {allowed}. Got {value!r} instead.``"""
    raise ParameterError(f"The {name!r} parameter of {caller} must be {allowed}. Got {value!r} instead.", name)


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    left = "(" if low_open or low is None else "["
    right = ")" if high_open or high is None else "]"
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    return f"{left}{lo}, {hi}{right}"


def check_int(value: Any, name: str, caller: str, *, low: int | None = None, high: int | None = None) -> int:
    """An int (not a bool) in ``[low, high]``."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    ok = ok and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        fail(name, caller, f"an int in {_interval(low, high, False, False)}", value)
    return int(value)


def check_number(
    value: Any,
    name: str,
    caller: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A finite real number (not a bool) in the interval; ``low_open``/``high_open`` exclude the ends."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (low is None or (value > low if low_open else value >= low)) and (
            high is None or (value < high if high_open else value <= high)
        )
    if not ok:
        fail(name, caller, f"a float in {_interval(low, high, low_open, high_open)}", value)
    return float(value)


def check_choice(value: Any, name: str, caller: str, allowed: Iterable[Any]) -> Any:
    """One of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        fail(name, caller, f"one of {', '.join(repr(a) for a in allowed)}", value)
    return value
