"""One photo against a model (or an ensemble): perturb, save as an 8-bit PNG, read it back, classify it again.

:func:`find_adversarial` is that loop, the one piece of code both :func:`attack` and
:func:`~headstart.attacks.robustness_curve.robustness` run: the optimiser
(:func:`~headstart.attacks.optimise.perturb`) works on floats through the differentiable preprocessing, the
result is rounded into the budget (:func:`~headstart.attacks.budget.quantise`), written as a PNG and classified
from that file through each model's ordinary prediction path. When the float image was past the goal but the
file is not, it pushes further (a larger margin) within the step budget. Success and the perturbation's size
are always those of the file.

Example:
    >>> result = attack("tf_efficientnet_lite0", "dog.jpg", target="Siamese cat", eps=parse_eps("4/255"))
    >>> result.success, result.linf_8bit
    (True, 4)
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from headstart._io import write_bytes_atomic
from headstart._validation import check_choice, check_int, check_number, fail
from headstart.attacks.budget import (
    METHODS,
    NORMS,
    check_8bit_budget,
    optimiser_eps,
    parse_eps,
    perturbation_size,
    quantise,
    step_size_used,
)
from headstart.attacks.optimise import SURVIVAL_MARGIN, perturb
from headstart.attacks.preprocessing import preprocess
from headstart.data.images import load_image
from headstart.errors import HeadstartError, UnusableImageError
from headstart.features.preprocess import decode_size_for
from headstart.models.modelfile import looks_like_model_file
from headstart.models.target import TargetNetwork, load_target

if TYPE_CHECKING:
    import torch

    from headstart.models.classifier import Classifier

ModelLike = Union[str, "os.PathLike[str]", TargetNetwork]


@dataclass(frozen=True)
class Verdict:
    """What a model says about one image file, through its ordinary prediction path."""

    index: int
    label: str
    probability: float
    top5: list[tuple[str, float]]
    probabilities: np.ndarray = field(repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "label": self.label,
            "probability": round(self.probability, 6),
            "top5": [{"label": l, "probability": round(p, 6)} for l, p in self.top5],
        }


class Victim:
    """One attacked model: the 0–1 network, its differentiable preprocessing, and its ordinary prediction path.

    A headstart model file is judged by ``Classifier``'s feature path (what ``predict`` and ``evaluate`` do; pass
    ``classifier`` when it is already loaded); a backbone with its ImageNet head by timm's PIL eval transform.
    """

    def __init__(self, model: ModelLike, *, classifier: Classifier | None = None) -> None:
        self.net = model if isinstance(model, TargetNetwork) else load_target(model)
        self.name = self.net.name
        self.preprocess = preprocess(self.net.spec.data_config)
        self.from_model_file = classifier is not None or looks_like_model_file(self.name)
        self._classifier = classifier
        self._transform: Any = None

    def logits(self, photos: torch.Tensor) -> torch.Tensor:
        return self.net.module(self.preprocess(photos))

    def verdict(self, probabilities: np.ndarray) -> Verdict:
        """The verdict that one row of class probabilities amounts to (top-1 and top-5, stable order)."""
        order = np.argsort(-probabilities, kind="stable")[:5]
        top = int(order[0])
        names = self.net.class_names
        return Verdict(
            top,
            names[top],
            float(probabilities[top]),
            [(names[j], float(probabilities[j])) for j in order],
            probabilities,
        )

    def verdicts(self, paths: Sequence[Path]) -> list[Verdict]:
        """Classify image files the ordinary way (see the class docstring)."""
        return [self.verdict(row) for row in self.probabilities(paths)]

    def probabilities(self, paths: Sequence[Path]) -> np.ndarray:
        if self.from_model_file:
            if self._classifier is None:
                from headstart.models.classifier import Classifier

                self._classifier = Classifier.load(self.name)
            feats = self._classifier.features(list(paths))
            if feats.unusable:
                raise UnusableImageError(feats.unusable[0].path, feats.unusable[0].reason)
            return self._classifier.predict_proba_features(feats.features)
        import torch
        from timm.data import create_transform

        if self._transform is None:
            config = {**self.net.spec.data_config, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
            self._transform = create_transform(**config)
        draft = decode_size_for(self.net.spec.data_config)  # (decoded as predict decodes it: a phone photo in draft)
        x = torch.stack([self._transform(load_image(p, draft_size=draft)) for p in paths])
        return self.net.probabilities(x).numpy()

    def attacked_photo(self, path: str | os.PathLike[str]) -> np.ndarray:
        """The photo an attack perturbs, as 8-bit RGB: decoded at the size it is shown at
        (:data:`~headstart.features.preprocess.SHOWN_SIDE` on its short side at least, never enlarged), so a phone
        photo is read in JPEG draft mode and attacked at a size a figure shows, not at 12 megapixels."""
        draft = decode_size_for(self.net.spec.data_config, shown=True)
        return np.array(load_image(path, draft_size=draft), dtype=np.uint8)


def victims(model: ModelLike | Sequence[ModelLike], caller: str = "attack") -> list[Victim]:
    """One :class:`Victim` per model (a single model or a list of them, the first being the one reported)."""
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    if not models:
        fail("model", caller, "a model or a non-empty list of models", model)
    return [Victim(m) for m in models]


def succeeded(before: Verdict, after: Verdict, target: int | None) -> bool:
    """Targeted: the file's top-1 is the target. Untargeted: its top-1 differs from the original's."""
    return after.index == target if target is not None else after.index != before.index


def png_bytes(array: np.ndarray) -> bytes:
    """A ``(H, W, 3)`` uint8 photo encoded as PNG (lossless: what is verified is what is saved)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------ the one verified loop
@dataclass
class Adversarial:
    """What :func:`find_adversarial` found: the 8-bit image as read back from its PNG, and the verdicts on it."""

    image: np.ndarray = field(repr=False)
    png: bytes = field(repr=False)
    after: list[Verdict]
    success: list[bool]
    steps_used: int
    clipped_values: int


def find_adversarial(
    members: Sequence[Victim],
    photo: np.ndarray,
    before: Sequence[Verdict],
    targets: Sequence[int] | None,
    *,
    method: str,
    norm: str,
    eps: float,
    steps: int,
    step_size: float | None = None,
    seed: int = 0,
) -> Adversarial:
    """Perturb → quantise into the budget → PNG → read back → reclassify with every member, until all are fooled.

    ``before[m]`` is member ``m``'s verdict on the original photo; ``targets[m]`` its target class (``None``:
    untargeted, away from ``before[m]``). PGD stops early once every member is past its goal by a margin on the
    float image; if the file does not fool them all, the margin doubles and the optimisation continues from
    where it was, until the file does or the steps are spent. The lesson's descent runs all its steps once.
    Parameters are not checked here (:func:`attack` and ``robustness`` do).
    """
    import torch

    goals = list(targets) if targets is not None else [b.index for b in before]
    labels = [torch.tensor([g]) for g in goals]
    x = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255
    generator = torch.Generator().manual_seed(seed)

    def forwards(images: torch.Tensor) -> list[torch.Tensor]:
        return [m.logits(images) for m in members]

    optimise = dict(targeted=targets is not None, method=method, norm=norm, step_size=step_size)
    delta, used = None, 0
    margin = None if method == "lesson" else SURVIVAL_MARGIN
    with tempfile.TemporaryDirectory(prefix="headstart-attack-") as tmp:
        while True:
            delta, n = perturb(
                forwards,
                x,
                labels,
                eps=optimiser_eps(eps, norm),
                steps=steps - used,
                margin=margin,
                delta=delta,
                generator=generator,
                quantise=method != "lesson",
                **optimise,
            )
            used += n
            adversarial, clipped = quantise(photo, delta, norm, eps, method)
            png = png_bytes(adversarial)
            path = write_bytes_atomic(Path(tmp) / f"check-{used}.png", png)
            after = [m.verdicts([path])[0] for m in members]
            success = [succeeded(b, a, t) for b, a, t in zip(before, after, targets or [None] * len(members))]
            if method == "lesson" or all(success) or used >= steps or method == "fgsm" or (n == 0 and margin > 64):
                break
            margin *= 2  # reached the margin on the differentiable path, but not on the file: push further
        read_back = np.asarray(load_image(path), dtype=np.uint8)
    return Adversarial(read_back, png, after, success, used, clipped)


# ---------------------------------------------------------------------------------------------- one photo
@dataclass
class AttackResult:
    """What :func:`attack` found, measured on the 8-bit PNG read back from disk.

    Attributes:
        original / adversarial: ``(H, W, 3)`` uint8 photos (the adversarial one as decoded from ``png``).
        png: the exact PNG bytes that were verified; :func:`~headstart.attacks.report.save_attack` writes these.
        before / after: the primary model's verdict on the original photo file and on the PNG.
        success: targeted — the PNG's top-1 is the target; untargeted — it differs from the original top-1.
        linf_8bit: largest change of any pixel channel, in 8-bit steps; ``l2``: L2 norm in 0–1 units; ``psnr`` dB.
        members: for an ensemble, every member's before/after verdicts and success (the primary one first).
    """

    image: Path
    model: str
    method: str
    norm: str
    eps: float
    steps: int
    steps_used: int
    step_size: float | None
    target: int | None
    target_label: str | None
    original: np.ndarray = field(repr=False)
    adversarial: np.ndarray = field(repr=False)
    png: bytes = field(repr=False)
    before: Verdict | None = None
    after: Verdict | None = None
    success: bool = False
    linf_8bit: int = 0
    l2: float = 0.0
    psnr: float | None = None
    clipped_values: int = 0
    members: list[dict[str, Any]] = field(default_factory=list)
    transfer: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)

    @property
    def eps_8bit(self) -> float:
        return self.eps * 255

    def figure(self) -> Any:
        """Original | amplified perturbation | adversarial, with the top-5 before and after (a matplotlib figure)."""
        from headstart.attacks.display import attack_figure

        return attack_figure(self)

    def _repr_html_(self) -> str:
        from headstart.attacks.display import attack_card

        return attack_card(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": str(self.image),
            "model": self.model,
            "method": self.method,
            "norm": self.norm,
            "eps": None if self.method == "lesson" else self.eps,  # the lesson's descent has no budget
            "eps_8bit": None if self.method == "lesson" else round(self.eps_8bit, 4),
            "steps": self.steps,
            "steps_used": self.steps_used,
            "step_size": self.step_size,
            "target": None if self.target is None else {"index": self.target, "label": self.target_label},
            "original": self.before.to_dict() if self.before else None,
            "adversarial": self.after.to_dict() if self.after else None,
            "target_probability": (
                None
                if self.target is None or self.after is None
                else round(float(self.after.probabilities[self.target]), 6)
            ),
            "success": self.success,
            "linf_8bit": self.linf_8bit,
            "l2": round(self.l2, 6),
            "psnr": None if self.psnr is None else round(self.psnr, 3),
            "clipped_values": self.clipped_values,
            "ensemble": self.members if len(self.members) > 1 else [],
            "transfer": self.transfer,
            "files": self.files,
            "measured_on": "the saved 8-bit PNG read back from disk, classified by the ordinary prediction path",
        }


def check_attack_settings(method: str, norm: str, steps: int, caller: str) -> None:
    """The checks every attack entry point makes before any work (the budget is checked where it is parsed)."""
    check_choice(method, "method", caller, METHODS)
    check_choice(norm, "norm", caller, NORMS)
    check_int(steps, "steps", caller, low=1)


def attack(
    model: ModelLike | Sequence[ModelLike],
    image: str | os.PathLike[str],
    *,
    target: str | int | None = None,
    method: str = "pgd",
    norm: str = "linf",
    eps: float | str = 4 / 255,
    steps: int = 50,
    step_size: float | None = None,
    seed: int = 0,
) -> AttackResult:
    """Make an adversarial version of a photo and verify it on the saved 8-bit PNG.

    Args:
        model: a headstart model file, a backbone name (its ImageNet head), a :class:`TargetNetwork`, or a list of
            these to attack as an ensemble (the first is the one reported; every member is checked).
        image: the photo; the perturbation has its own size, and the model's resize + crop is attacked with it.
        target: class name or index to reach; ``None`` = untargeted (leave the original top-1 class).
        method: ``pgd`` (random start, projected steps), ``fgsm`` (one step) or ``lesson`` (the lesson's unbounded
            gradient descent, for comparison: no budget, clipped to valid pixels only when saved).
        norm: ``linf`` (``eps`` per pixel channel; the PNG stays within ``floor(eps·255)`` 8-bit steps) or ``l2``.
        eps: the budget in 0–1 pixel units, e.g. ``4/255`` or ``"4/255"``.
        steps: the most gradient steps (PGD stops early once the goal holds with a margin).
        step_size: default ``eps/4`` (PGD), 1.0 (lesson).
        seed: seeds PGD's random start.

    Returns:
        :class:`AttackResult`; nothing is written outside a temporary folder (see ``save_attack``).

    Raises:
        ParameterError (a ValueError): bad method, norm, eps or steps. HeadstartError: unknown class, unusable
        model. UnusableImageError: the image cannot be read.

    Example:
        >>> result = attack("tf_efficientnet_lite0", "dog.jpg", target="Siamese cat", eps="4/255", steps=20)
        >>> result.success, result.linf_8bit <= 4, result.after.label
        (True, True, 'Siamese cat, Siamese')
    """
    check_attack_settings(method, norm, steps, "attack")
    eps = parse_eps(eps, norm=norm, caller="attack")
    check_8bit_budget(eps, norm, method, "attack")
    if step_size is not None:
        check_number(step_size, "step_size", "attack", low=0, low_open=True)
    members = victims(model)
    photo = members[0].attacked_photo(image)
    targets = None if target is None else [v.net.class_index(target) for v in members]
    before = [v.verdicts([Path(image)])[0] for v in members]
    found = find_adversarial(
        members, photo, before, targets, method=method, norm=norm, eps=eps, steps=steps, step_size=step_size, seed=seed
    )
    rows = [
        {"model": v.name, "original": b.to_dict(), "adversarial": a.to_dict(), "success": s}
        for v, b, a, s in zip(members, before, found.after, found.success)
    ]
    linf, l2, psnr = perturbation_size(photo, found.image)
    primary = members[0]
    return AttackResult(
        image=Path(image),
        model=primary.name,
        method=method,
        norm=norm,
        eps=eps,
        steps=steps,
        steps_used=found.steps_used,
        step_size=step_size_used(method, norm, eps, step_size),
        target=None if targets is None else targets[0],
        target_label=None if targets is None else primary.net.class_names[targets[0]],
        original=photo,
        adversarial=found.image,
        png=found.png,
        before=before[0],
        after=found.after[0],
        success=found.success[0],
        linf_8bit=linf,
        l2=l2,
        psnr=psnr,
        clipped_values=found.clipped_values,
        members=rows,
    )


def transfer(result: AttackResult, models: Sequence[ModelLike]) -> list[dict[str, Any]]:
    """Classify the original photo and the adversarial PNG with other models: did the attack carry over?

    A targeted attack carries over when the other model's top-1 on the PNG is the target (matched by name or
    index in that model's classes; ``None`` when it has no such class); an untargeted one when its top-1 changed.
    The findings are also appended to ``result.transfer``.

    Example:
        >>> (row,) = transfer(result, ["tf_efficientnet_lite1"])
        >>> row["carried_over"]
        False
    """
    found = []
    with tempfile.TemporaryDirectory(prefix="headstart-transfer-") as tmp:
        path = write_bytes_atomic(Path(tmp) / "adversarial.png", result.png)
        for model in models:
            victim = Victim(model)
            before = victim.verdicts([result.image])[0]
            after = victim.verdicts([path])[0]
            target = None
            if result.target is not None:
                try:
                    target = victim.net.class_index(result.target_label or result.target)
                except HeadstartError:
                    target = None
            carried: bool | None
            if result.target is not None and target is None:
                carried = None
            else:
                carried = succeeded(before, after, target)
            found.append(
                {
                    "model": victim.name,
                    "original": before.to_dict(),
                    "adversarial": after.to_dict(),
                    "target_probability": None if target is None else round(float(after.probabilities[target]), 6),
                    "carried_over": carried,
                }
            )
    result.transfer.extend(found)
    return found


__all__ = [
    "Adversarial",
    "AttackResult",
    "ModelLike",
    "Verdict",
    "Victim",
    "attack",
    "check_attack_settings",
    "find_adversarial",
    "png_bytes",
    "succeeded",
    "transfer",
    "victims",
]
