"""Which views fine-tuning trains on: the augmentation policy, and whether mirror images are among them.

A mirror image is a training view only where it shows the same class: a mirrored cat is a cat, a mirrored 2 or a
mirrored "b" is not, and a network taught that it is learns label noise. ``mirror="auto"`` asks the data: the
probe (fitted on the training part) labels the validation photos and their mirror images, and when the mirror
images lose more photos than they win by more than chance (the sign test fine-tuning itself is judged by:
:func:`~headstart.models.finetune.stopping.beats_start`), the training views are not mirrored.

A view policy is the augmentation's name, with :data:`UNMIRRORED` appended when mirror images are left out: one
string names the views everywhere they are drawn, cached and keyed (:mod:`~headstart.models.finetune.frozen`).

Example:
    >>> view_policy("light", mirror=False), parse_policy("light/unmirrored")
    ('light/unmirrored', ('light', False))
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["MIRRORS", "UNMIRRORED", "mirror_check", "parse_policy", "view_policy"]

#: ``Finetune.mirror``: ask the data (the default), or mirror images always / never among the training views.
MIRRORS = ("auto", "on", "off")
UNMIRRORED = "/unmirrored"


def view_policy(augment: str, mirror: bool) -> str:
    """The name of the training views: ``augment``, unmirrored unless ``mirror``."""
    return augment if mirror else augment + UNMIRRORED


def parse_policy(policy: str) -> tuple[str, bool]:
    """``(augment, mirror)`` of a view policy's name."""
    if policy.endswith(UNMIRRORED):
        return policy[: -len(UNMIRRORED)], False
    return policy, True


def mirror_check(backbone: Any, probe: Any, paths: list[str], labels: np.ndarray, **extract: Any) -> dict[str, Any]:
    """Whether ``probe`` labels the mirror images of ``paths`` (validation photos it has not seen, of class
    ``labels``) as well as the photos: its accuracy on both, the photos only one of them gets right, the chance of
    the mirror images losing that many by luck, and ``mirror``: whether to keep mirror images among the training
    views. Only the mirror images are computed (the photos' features are cached), through the extraction pipeline
    with ``extract`` (cache, precision, ...)."""
    from headstart.features import extract_features
    from headstart.models.finetune.stopping import beats_start

    plain = extract_features(paths, backbone, flip_average=False, **extract)
    both = extract_features(paths, backbone, flip_average=True, **extract)  # (the mean of the two views)
    labels = np.asarray(labels)[plain.indices]
    index = {c: i for i, c in enumerate(probe.classes_)}
    y = np.array([index[label] for label in labels], dtype=np.int64)

    on_plain = probe.predict_proba(plain.features)
    on_mirror = probe.predict_proba(2 * both.features[np.searchsorted(both.indices, plain.indices)] - plain.features)
    verdict = beats_start(on_plain, on_mirror, y)  # (do the photos beat their mirror images?)
    return {
        "photos": len(y),
        "accuracy": round(float((on_plain.argmax(1) == y).mean()), 4) if len(y) else None,
        "mirror_accuracy": round(float((on_mirror.argmax(1) == y).mean()), 4) if len(y) else None,
        "lost": verdict["fixes"],
        "won": verdict["breaks"],
        "chance": verdict["chance"],
        "mirror": not verdict["gains"],
    }
