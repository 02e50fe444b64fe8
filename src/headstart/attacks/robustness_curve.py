"""Accuracy of a trained model against the perturbation budget, scored exactly as ``evaluate`` scores it.

Every point of the curve is ``classification_metrics``' accuracy (the function :func:`headstart.evaluate` uses)
over one probability row per photo: at ``eps`` 0 the rows of the ordinary feature path, so the first point *is*
``evaluate``'s accuracy; at each larger budget, the rows of the photos still classified correctly are replaced by
those of their adversarial PNG (found by :func:`~headstart.attacks.adversarial.find_adversarial`, the loop
:func:`~headstart.attacks.adversarial.attack` runs too). A photo fooled at a smaller budget stays fooled: that
image is inside every larger budget too.

Example:
    >>> curve = robustness("pets.safetensors", "test_photos/", "0,2/255,4/255", steps=10)
    >>> curve.accuracy
    [0.92, 0.31, 0.04]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from headstart._validation import check_int
from headstart.attacks.adversarial import Victim, check_attack_settings, find_adversarial
from headstart.attacks.budget import check_8bit_budget, parse_eps_list
from headstart.errors import DataError
from headstart.reports.metrics import classification_metrics, match_labels


@dataclass
class Robustness:
    """Accuracy against the perturbation budget (see :func:`robustness`); ``to_dict()`` is the JSON report."""

    model: str
    method: str
    norm: str
    steps: int
    eps: list[float]
    accuracy: list[float]
    n_images: int
    clean_accuracy: float
    attack_success: list[float | None]
    skipped: list[dict[str, str]] = field(default_factory=list)

    def figure(self) -> Any:
        """Accuracy against the budget (a matplotlib figure)."""
        from headstart.attacks.display import robustness_figure

        return robustness_figure(self)

    def _repr_html_(self) -> str:
        from headstart.attacks.display import robustness_card

        return robustness_card(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "method": self.method,
            "norm": self.norm,
            "steps": self.steps,
            "n_images": self.n_images,
            "clean_accuracy": self.clean_accuracy,
            "curve": [
                {
                    "eps": e,
                    "eps_8bit": round(e * 255, 4) if self.norm == "linf" else None,
                    "accuracy": a,
                    "attack_success": s,
                }
                for e, a, s in zip(self.eps, self.accuracy, self.attack_success)
            ],
            "skipped": self.skipped,
            "note": "accuracy at eps = photos still classified correctly from the saved 8-bit PNG; a photo fooled at "
            "a smaller budget counts as fooled at every larger one (that image is inside the larger budget); "
            "eps 0 is `evaluate`'s accuracy. attack_success = of the photos still classified correctly when this "
            "budget's attack started, the share it fooled (0 at eps 0, which changes no photo; null only when no "
            "photo was left to attack).",
        }


def _accuracy(y_true: list[str], proba: np.ndarray, classes: Sequence[str]) -> float:
    """``evaluate``'s accuracy of these probability rows (0.0 when nothing was scored)."""
    accuracy = classification_metrics(y_true, proba, classes)["accuracy"]
    return 0.0 if accuracy is None else accuracy


def robustness(
    model: str | os.PathLike[str],
    data: Any,
    eps: Sequence[float | str] | str = (0, 1 / 255, 2 / 255, 4 / 255, 8 / 255),
    *,
    method: str = "pgd",
    norm: str = "linf",
    steps: int = 20,
    split: str = "all",
    limit: int | None = None,
) -> Robustness:
    """Accuracy of a trained headstart model on labelled photos under untargeted attacks of growing budget.

    At ``eps`` 0 the photos go through exactly :func:`headstart.evaluate`'s feature path and scoring, so the first
    point is its accuracy. For each larger budget, every photo still classified correctly is attacked (untargeted,
    away from its true class, seed 0), saved as an 8-bit PNG and classified again from that file.

    Args:
        model: a headstart model file (its class names are matched to the data's labels, as ``evaluate`` does).
        data: anything :func:`headstart.load_dataset` accepts, or a :class:`Dataset`.
        eps: budgets in 0–1 units (``"0,1/255,4/255"`` or a list); 0 is always measured.
        limit: attack only the first ``limit`` scored photos (evenly spread over the data set) to bound the time.

    Example:
        >>> curve = robustness("pets.safetensors", "test_photos/", "0,2/255,4/255", steps=10)
        >>> curve.accuracy
        [0.92, 0.31, 0.04]
    """
    from headstart.data.datasets import Dataset, load_dataset
    from headstart.models.classifier import Classifier

    check_attack_settings(method, norm, steps, "robustness")
    budgets = parse_eps_list(eps if isinstance(eps, str) else [str(e) for e in eps], norm=norm, caller="robustness")
    for e in budgets:
        check_8bit_budget(e, norm, method, "robustness")
    if limit is not None:
        check_int(limit, "limit", "robustness", low=1)
    classifier = Classifier.load(model)
    dataset = data if isinstance(data, Dataset) else load_dataset(data, split=split)
    mapping = match_labels(dataset.labels, classifier.classes)
    if not any(mapping.values()):
        raise DataError(f"None of the data's labels is a class of {model}: is this the right model for this data?")
    known = dataset.subset([i for i, s in enumerate(dataset.samples) if mapping[s.label] is not None])
    if limit is not None and limit < len(known):
        known = known.subset(np.linspace(0, len(known) - 1, limit).round().astype(int).tolist())
    feats = classifier.features(known.paths)  # evaluate's path: same defaults, same cache
    scored = known.subset(feats.indices.tolist())
    y_true = [mapping[label] for label in scored.labels]
    truth = np.array([classifier.classes.index(c) for c in y_true], dtype=np.int64)
    proba = classifier.predict_proba_features(feats.features)  # one row per photo, replaced once it is attacked
    clean = _accuracy(y_true, proba, classifier.classes)
    victim = Victim(model, classifier=classifier)
    accuracy, success = [], []
    for e in budgets:
        attacked = np.flatnonzero(proba.argmax(1) == truth) if e > 0 else np.array([], dtype=np.int64)
        for i in attacked:
            photo = victim.attacked_photo(scored.paths[i])
            found = find_adversarial(
                [victim],
                photo,
                [victim.verdict(proba[i].copy())],
                None,
                method=method,
                norm=norm,
                eps=e,
                steps=steps,
                seed=0,
            )
            proba[i] = found.after[0].probabilities
        success.append(
            0.0  # eps 0 changes no photo: it fools none
            if e == 0
            else round(float(1 - (proba[attacked].argmax(1) == truth[attacked]).mean()), 6)
            if len(attacked)
            else None  # (no photo was left to attack: every one was fooled at a smaller budget)
        )
        accuracy.append(_accuracy(y_true, proba, classifier.classes))
    return Robustness(
        model=str(model),
        method=method,
        norm=norm,
        steps=1 if method == "fgsm" else steps,
        eps=budgets,
        accuracy=accuracy,
        n_images=len(truth),
        clean_accuracy=clean,
        attack_success=success,
        skipped=[u.to_dict() for u in feats.unusable],
    )


__all__ = ["Robustness", "robustness"]
