"""What ``--backbone`` / ``backbone=`` means: one timm name, ``auto`` (a choice among candidates, measured on the
photos: :mod:`headstart.models.selection`) or ``ensemble`` (several backbones as one model:
:mod:`headstart.features.ensemble`), parsed and checked in one place."""

from __future__ import annotations

from typing import Any

from headstart._validation import fail
from headstart.features.spec import ENSEMBLE_PREFIX

__all__ = ["OFFLINE_CANDIDATES", "check_backbone_choice", "parse_auto", "parse_ensemble"]

#: ``auto``'s candidates, the one expected to do best first (see :mod:`headstart.models.selection`).
OFFLINE_CANDIDATES = ("tf_efficientnet_lite1", "tf_efficientnet_lite2", "tf_efficientnet_lite0")


def check_backbone_choice(backbone: Any, weights: Any, method: str, caller: str) -> list[str] | None:
    """Check ``backbone`` (with ``weights`` and the training ``method``) and return ``auto``'s candidates (None for a
    named backbone or an ensemble).

    Raises:
        ValueError: naming the parameter, what was expected and what was given.
    """
    if not isinstance(backbone, str) or not backbone:
        fail("backbone", caller, "a timm model name (str), 'auto', 'auto:NAME,NAME,…' or 'ensemble'", backbone)
    if parse_ensemble(backbone) is not None and (method != "probe" or weights is not None):
        fail(
            "backbone",
            caller,
            "one backbone for method='finetune' or 'scratch' (an ensemble is a probe over several networks), and "
            "weights=None for an ensemble (each member uses its own offline or hub weights)",
            backbone,
        )
    candidates = parse_auto(backbone)
    if candidates is not None and weights is not None:
        fail(
            "weights",
            caller,
            "None when backbone is 'auto' (each candidate uses its own offline or hub "
            "weights; to fine-tune from a file, name its backbone)",
            weights,
        )
    return candidates


def parse_auto(backbone: str) -> list[str] | None:
    """The candidates ``backbone`` names when it is ``auto`` or ``auto:NAME,NAME,…``; None for a plain name.

    Example:
        >>> parse_auto("auto:resnet50,lite1")
        ['resnet50', 'tf_efficientnet_lite1']
        >>> parse_auto("tf_efficientnet_lite0") is None
        True
    """
    if not isinstance(backbone, str) or not (backbone == "auto" or backbone.startswith("auto:")):
        return None
    if backbone == "auto":
        return list(OFFLINE_CANDIDATES)
    names = [n.strip() for n in backbone[5:].split(",") if n.strip()]
    if not names:
        fail("backbone", "ImageClassifier", "'auto', 'auto:NAME,NAME,…' (timm names) or a timm name", backbone)
    short = {name.removeprefix("tf_efficientnet_"): name for name in OFFLINE_CANDIDATES}
    return list(dict.fromkeys(short.get(n, n) for n in names))


def parse_ensemble(backbone: str) -> list[str] | None:
    """The members ``backbone`` names when it is ``ensemble`` (``auto``'s three offline backbones) or
    ``ensemble:NAME,NAME,…`` (``+`` separates too); None for any other name.

    Example:
        >>> parse_ensemble("ensemble:lite0,lite2")
        ['tf_efficientnet_lite0', 'tf_efficientnet_lite2']
    """
    if not isinstance(backbone, str) or not (backbone == "ensemble" or backbone.startswith(ENSEMBLE_PREFIX)):
        return None
    if backbone == "ensemble":
        return list(OFFLINE_CANDIDATES)
    names = [n.strip() for n in backbone[len(ENSEMBLE_PREFIX) :].replace("+", ",").split(",") if n.strip()]
    short = {name.removeprefix("tf_efficientnet_"): name for name in OFFLINE_CANDIDATES}
    names = list(dict.fromkeys(short.get(n, n) for n in names))
    if len(names) < 2:
        fail("backbone", "ImageClassifier", "'ensemble' or 'ensemble:NAME,NAME,…' (two or more timm names)", backbone)
    return names
