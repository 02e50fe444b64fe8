"""Objectives: what an optimised image should make the network do, as an algebra of weighted terms.

An :class:`Objective` wraps a function ``f(T) -> scalar tensor`` that :func:`~headstart.inside.render.render`
*maximises*. ``T(name)`` returns an activation of the current forward pass, so objectives never depend on one model:

* ``T("image")``: the image being optimised, ``(batch, 3, H, W)`` in [0, 1], before the random transforms;
* ``T("input")``: what the network received (after the transforms);
* ``T("logits")``: the network's output;
* ``T("blocks.5")`` (any name from ``module.named_modules()``, or its last dotted parts): that module's output.

Objectives combine with ``+``, ``-``, unary ``-``, and ``*`` or ``/`` by a number; regularisers are objectives
too, subtracted with a weight::

    obj = class_logit(284) - 0.05 * total_variation() - 0.1 * l2()
    obj = channel("blocks.5", 17) + 0.5 * channel("blocks.6", 3)

A new objective is a few lines::

    @wrap_objective
    def mean_activation(layer):
        return lambda T: T(layer).mean()
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from headstart._validation import check_int, fail

if TYPE_CHECKING:
    import torch

Accessor = Callable[[str], "torch.Tensor"]


def _number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _format(value: float) -> str:
    return f"{value:g}"


class Objective:
    """A scalar to maximise, computed from the activations of one forward pass.

    Args:
        fn: ``fn(T) -> scalar tensor``.
        name: short name shown in reports, e.g. ``class_logit(284)``.
    """

    def __init__(self, fn: Callable[[Accessor], torch.Tensor], name: str = "objective") -> None:
        if not callable(fn):
            raise TypeError(f"Objective needs a callable fn(T) -> tensor; got {type(fn).__name__}.")
        self.fn = fn
        self.name = name

    @property
    def description(self) -> str:
        return self.name

    def __call__(self, T: Accessor) -> torch.Tensor:
        return self.fn(T)

    def __repr__(self) -> str:
        return f"Objective({self.name})"

    # ------------------------------------------------------------------------------------------------ algebra
    def __add__(self, other: Any) -> Objective:
        if isinstance(other, Objective):
            return Objective(lambda T: self(T) + other(T), f"{self.name} + {other.name}")
        if _number(other):
            return Objective(lambda T: self(T) + other, f"{self.name} + {_format(other)}")
        raise TypeError(f"Can only add an Objective or a number to an Objective; got {type(other).__name__}.")

    def __radd__(self, other: Any) -> Objective:
        if _number(other) and other == 0:  # sum([...]) starts from 0
            return self
        return self.__add__(other)

    def __neg__(self) -> Objective:
        return Objective(lambda T: -self(T), f"-({self.name})")

    def __sub__(self, other: Any) -> Objective:
        if isinstance(other, Objective):
            return Objective(lambda T: self(T) - other(T), f"{self.name} - {_wrap(other.name)}")
        if _number(other):
            return Objective(lambda T: self(T) - other, f"{self.name} - {_format(other)}")
        raise TypeError(f"Can only subtract an Objective or a number from an Objective; got {type(other).__name__}.")

    def __rsub__(self, other: Any) -> Objective:
        return (-self).__add__(other)

    def __mul__(self, other: Any) -> Objective:
        if _number(other):
            return Objective(lambda T: other * self(T), f"{_format(other)}·{_wrap(self.name)}")
        raise TypeError(
            f"Can only multiply an Objective by a number; got {type(other).__name__} "
            "(to combine two objectives, add or subtract them)."
        )

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> Objective:
        if _number(other):
            if other == 0:
                raise ZeroDivisionError("Cannot divide an Objective by 0.")
            return Objective(lambda T: self(T) / other, f"{_wrap(self.name)}/{_format(other)}")
        raise TypeError(f"Can only divide an Objective by a number; got {type(other).__name__}.")


def _wrap(name: str) -> str:
    return f"({name})" if (" + " in name or " - " in name) else name


def wrap_objective(factory: Callable[..., Callable[[Accessor], torch.Tensor]]) -> Callable[..., Objective]:
    """Turn ``factory(*args) -> fn(T)`` into ``factory(*args) -> Objective`` named ``factory(args)``."""

    @functools.wraps(factory)
    def inner(*args: Any, **kwargs: Any) -> Objective:
        shown = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
        return Objective(factory(*args, **kwargs), f"{factory.__name__}({', '.join(shown)})")

    return inner


@wrap_objective
def class_logit(c: int):
    """The logit of class ``c`` (averaged over the batch)."""
    c = check_int(c, "c", "class_logit", low=0)
    return lambda T: T("logits")[:, c].mean()


@wrap_objective
def class_log_prob(c: int):
    """``log p(c)``: minus the cross-entropy to class ``c`` (the lesson's loss, maximised)."""
    c = check_int(c, "c", "class_log_prob", low=0)
    return lambda T: T("logits").log_softmax(dim=-1)[:, c].mean()


@wrap_objective
def class_prob(c: int):
    """The softmax probability of class ``c``."""
    c = check_int(c, "c", "class_prob", low=0)
    return lambda T: T("logits").softmax(dim=-1)[:, c].mean()


@wrap_objective
def channel(layer: str, n: int):
    """Mean activation of channel ``n`` of ``layer`` (a module name, e.g. ``"blocks.5"`` or ``"conv_head"``)."""
    n = check_int(n, "n", "channel", low=0)

    def inner(T: Accessor) -> torch.Tensor:
        act = T(layer)
        if act.dim() < 2 or n >= act.shape[1]:
            channels = act.shape[1] if act.dim() >= 2 else 0
            fail("n", "channel", f"below {channels}, the number of channels of layer {layer!r}", n)
        return act[:, n].mean()

    return inner


@wrap_objective
def total_variation(layer: str = "image"):
    """How different neighbouring pixels are: mean ``|Δx| + |Δy|`` over pixels and channels (subtract it to smooth)."""

    def inner(T: Accessor) -> torch.Tensor:
        x = T(layer)
        return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()

    return inner


@wrap_objective
def l2(layer: str = "image", constant: float = 0.5):
    """Mean squared distance of ``layer`` from ``constant`` (grey for the image; subtract it to keep colours tame)."""
    return lambda T: ((T(layer) - constant) ** 2).mean()


def as_objective(obj: Objective | str) -> Objective:
    """An :class:`Objective` as is, or the shorthand ``"layer:n"`` for :func:`channel`."""
    if isinstance(obj, Objective):
        return obj
    if isinstance(obj, str) and ":" in obj:
        layer, _, n = obj.rpartition(":")
        if n.strip().isdigit():
            return channel(layer.strip(), int(n))
    raise TypeError(
        f"Expected an Objective or a 'layer:channel' string such as 'blocks.5:17'; got {type(obj).__name__} {obj!r}."
    )


__all__ = [
    "Objective",
    "as_objective",
    "channel",
    "class_log_prob",
    "class_logit",
    "class_prob",
    "l2",
    "total_variation",
    "wrap_objective",
]
