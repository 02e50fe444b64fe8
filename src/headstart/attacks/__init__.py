"""Adversarial examples, measured honestly: budgets, valid 8-bit pixels, and success checked on the saved file.

The lesson nudged a dog photo by gradient descent until VGG-16 called it a Siamese cat, with no perturbation
budget and no clipping to valid pixels. Here an attack changes the photo's *own* pixels at its own size, inside
an L∞ or L2 budget, and the resizing and cropping the model's preprocessing does are part of the attacked
pipeline (:class:`Preprocess`, differentiable). The result is written as an 8-bit PNG, read back from disk and
classified through the ordinary prediction path; success and the size of the perturbation are measured on that
file, never on the floating-point tensor the optimiser saw.

Pieces, from the one-call path down:

* :func:`attack` — one photo against a model (or an ensemble of models), ``method="pgd" | "fgsm" | "lesson"``;
  :func:`save_attack` writes the PNG, the amplified perturbation, a before/after figure and a JSON report.
* :func:`transfer` — does an adversarial image made for one model fool others?
* :func:`robustness` — accuracy of a trained model on labelled photos against the budget (``eps`` 0 is
  :func:`headstart.evaluate`'s accuracy); :func:`save_robustness` writes JSON and a curve.
* :func:`perturb` — the optimiser itself on a batch of tensors and any differentiable ``forward``.

Example:
    >>> result = attack("tf_efficientnet_lite0", "dog.jpg", target="Siamese cat", eps=parse_eps("4/255"))
    >>> result.success, result.linf_8bit
    (True, 4)
    >>> save_attack(result, "attacks/")
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from headstart._io import write_bytes_atomic
from headstart.errors import DataError, HeadstartError, UnusableImageError
from headstart.data.images import load_image
from headstart.models.target import TargetNetwork, load_target

if TYPE_CHECKING:
    import torch

METHODS = ("pgd", "fgsm", "lesson")
NORMS = ("linf", "l2")
#: How far past the decision boundary (in logits) an attack pushes before it stops early, so that 8-bit
#: rounding, PIL's resize and bf16 inference in the ordinary prediction path do not undo it.
SURVIVAL_MARGIN = 1.0

ModelLike = Union[str, "os.PathLike[str]", TargetNetwork]


# ------------------------------------------------------------------------------------------------- parameters
def parse_eps(value: str | float, *, norm: str = "linf") -> float:
    """A perturbation budget from ``"4/255"``, ``"0.0157"`` or a number, in 0–1 pixel units.

    Raises:
        ValueError: not a number or fraction, negative, not finite, or (L∞) above 1.

    Example:
        >>> parse_eps("4/255") * 255
        4.0
    """
    _check_choice("norm", norm, NORMS, "parse_eps")
    text = str(value).strip()
    match = re.fullmatch(r"([0-9.eE+-]+)\s*/\s*([0-9.eE+-]+)", text)
    try:
        eps = float(match[1]) / float(match[2]) if match else float(text)
    except (ValueError, ZeroDivisionError):
        raise ValueError(
            f"The 'eps' parameter must be a number or a fraction like 4/255 (0–1 pixel units). Got {text!r} instead."
        ) from None
    upper = 1.0 if norm == "linf" else math.inf
    if not (math.isfinite(eps) and 0.0 <= eps <= upper):
        allowed = "in [0, 1] for norm linf (4/255 = four 8-bit steps)" if norm == "linf" else "finite and >= 0"
        raise ValueError(f"The 'eps' parameter must be {allowed}. Got {text!r} ({eps:g}) instead.")
    return eps


def parse_eps_list(text: str | Sequence[str | float], *, norm: str = "linf") -> list[float]:
    """``"0,1/255,2/255"`` → sorted unique budgets (each checked by :func:`parse_eps`)."""
    items = [t for t in text.split(",") if t.strip()] if isinstance(text, str) else list(text)
    if not items:
        raise ValueError("The 'eps' parameter needs at least one budget, e.g. 0,1/255,2/255,4/255,8/255.")
    return sorted({parse_eps(t, norm=norm) for t in items})


def _check_choice(name: str, value: str, allowed: Sequence[str], caller: str) -> None:
    if value not in allowed:
        raise ValueError(f"The {name!r} parameter of {caller} must be one of {', '.join(allowed)}. Got {value!r} instead.")


def _check_8bit_budget(eps: float, norm: str, method: str, caller: str) -> None:
    """An 8-bit PNG cannot move a pixel by less than one step: refuse L∞ budgets that would silently be zero."""
    if norm == "linf" and method != "lesson" and 0 < eps < 1 / 255 - 1e-9:
        raise ValueError(
            f"The 'eps' parameter of {caller} must be 0 or at least 1/255 for norm linf: the saved 8-bit image "
            f"cannot change a pixel by {eps * 255:.3g}/255. Got {eps:g}."
        )


def _check_steps(steps: int, caller: str) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"The 'steps' parameter of {caller} must be an int in [1, inf). Got {steps!r} instead.")


# -------------------------------------------------------------------------------- differentiable preprocessing
def _preprocess_module():
    import torch
    import torch.nn.functional as F

    class Preprocess(torch.nn.Module):
        """The timm eval transform as a differentiable function: photo ``(B, 3, H, W)`` in 0–1 → model-sized crop.

        Resize (shorter side to ``input / crop_pct``, the config's interpolation with antialiasing, like PIL) then
        centre crop, with torchvision's exact size and offset arithmetic, so a perturbation of the photo's own
        pixels is attacked through the same geometry the ordinary prediction path uses.
        """

        def __init__(self, data_config: dict[str, Any]) -> None:
            super().__init__()
            self.size = (int(data_config["input_size"][-2]), int(data_config["input_size"][-1]))
            self.crop_pct = float(data_config.get("crop_pct") or 1.0)
            self.crop_mode = data_config.get("crop_mode") or "center"
            interpolation = data_config.get("interpolation") or "bilinear"
            self.mode = {"bilinear": "bilinear", "nearest": "nearest"}.get(interpolation, "bicubic")
            if self.crop_mode not in ("center", "squash"):
                raise HeadstartError(
                    f"Attacks support the crop modes 'center' and 'squash'; this model's preprocessing uses "
                    f"{self.crop_mode!r}. Use a backbone with centre-crop preprocessing."
                )
            scale = tuple(math.floor(s / self.crop_pct) for s in self.size)
            if self.crop_mode == "center" and scale[0] != scale[1]:
                raise HeadstartError(f"Attacks need a square input size for crop mode 'center'; got {self.size}.")
            self.scale = scale
            self._cache: dict[tuple[int, int, Any], torch.Tensor] = {}

        def resized_size(self, height: int, width: int) -> tuple[int, int]:
            if self.crop_mode == "squash":
                return self.scale
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = self.scale[0], int(self.scale[0] * long / short)
            return (new_long, new_short) if width <= height else (new_short, new_long)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            height, width = int(x.shape[-2]), int(x.shape[-1])
            new_h, new_w = self.resized_size(height, width)
            th, tw = self.size
            if new_h < th or new_w < tw:
                raise HeadstartError(f"The photo is smaller than the model's {th}×{tw} crop after resizing.")
            top, left = int(round((new_h - th) / 2.0)), int(round((new_w - tw) / 2.0))
            if (new_h, new_w) == (height, width):
                return x[..., top : top + th, left : left + tw]
            # Separable resize as two small matrix products (rows, then columns) restricted to the crop: the same
            # weights as F.interpolate(antialias=True), far faster to differentiate on a CPU.
            rows = self._weights(height, new_h, x.dtype)[top : top + th]
            cols = self._weights(width, new_w, x.dtype)[left : left + tw]
            return (rows @ x @ cols.T).clamp(0.0, 1.0)  # PIL clips bicubic overshoot to valid pixels

        def _weights(self, size: int, new_size: int, dtype: torch.dtype) -> torch.Tensor:
            """``(new_size, size)`` matrix of the 1-D resize: the resized images of the unit impulses."""
            key = (size, new_size, dtype)
            if key not in self._cache:
                eye = torch.eye(size, dtype=torch.float64)[None, None]
                kwargs = {} if self.mode == "nearest" else {"align_corners": False, "antialias": True}
                w = F.interpolate(eye, size=(new_size, size), mode=self.mode, **kwargs)[0, 0]
                self._cache[key] = w.to(dtype)
            return self._cache[key]

    return Preprocess


def preprocess(data_config: dict[str, Any]) -> torch.nn.Module:
    """A differentiable ``torch.nn.Module`` equal (up to PIL's 8-bit rounding) to timm's eval transform.

    Example:
        >>> crop = preprocess(net.spec.data_config)(photo[None])   # (1, 3, 224, 224), still 0–1
    """
    return _preprocess_module()(data_config)


# ------------------------------------------------------------------------------------------------ the optimiser
def _margin(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    """How far each row is past the goal: target minus best other (targeted), best other minus label (untargeted)."""
    import torch

    own = logits.gather(1, labels[:, None])[:, 0]
    other = logits.masked_fill(torch.nn.functional.one_hot(labels, logits.shape[1]).bool(), -torch.inf).amax(1)
    return own - other if targeted else other - own


def perturb(
    forwards: Callable[[torch.Tensor], Sequence[torch.Tensor]],
    images: torch.Tensor,
    labels: Sequence[torch.Tensor],
    *,
    targeted: bool,
    method: str = "pgd",
    norm: str = "linf",
    eps: float = 4 / 255,
    steps: int = 50,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
    margin: float | None = SURVIVAL_MARGIN,
    quantise: bool = True,
    delta: torch.Tensor | None = None,
    loss: str = "auto",
) -> tuple[torch.Tensor, int]:
    """Optimise a perturbation of ``images`` (``(B, C, H, W)`` in 0–1) and return ``(delta, steps_used)``.

    ``forwards(x)`` returns one logits tensor per attacked model (an ensemble averages their losses);
    ``labels[m]`` holds model ``m``'s target classes (``targeted``) or true classes. PGD takes signed (L∞) or
    normalised (L2) gradient steps from a random start and projects onto the budget and onto valid pixels; FGSM
    takes one step of size ``eps``; ``lesson`` is the lesson's plain gradient descent (step ``step_size``, default
    1), with neither budget nor clipping. With ``quantise`` the models see the 8-bit image (straight-through
    rounding), and with ``margin`` an image stops as soon as every model is ``margin`` logits past its goal.
    ``loss``: ``ce`` (cross-entropy), ``margin`` (best other logit against the true one, Carlini–Wagner style) or
    ``auto``: cross-entropy when targeted or for the lesson, the margin when untargeted, because a very confident
    model's cross-entropy gradient underflows to zero in float32 and would leave its photos falsely "robust".
    This is the reference-checked core; :func:`attack` wraps it for one photo.
    """
    import torch

    _check_choice("method", method, METHODS, "perturb")
    _check_choice("norm", norm, NORMS, "perturb")
    _check_choice("loss", loss, ("auto", "ce", "margin"), "perturb")
    if loss == "auto":
        loss = "ce" if targeted or method == "lesson" else "margin"
    batch = images.shape[0]
    if method == "lesson":
        step = 1.0 if step_size is None else step_size
    else:
        step = eps / 4 if step_size is None else step_size
    if method == "fgsm":
        steps, step = 1, eps
    images = images.detach()
    if delta is None:
        delta = torch.zeros_like(images)
        if method == "pgd" and eps > 0 and generator is not None:
            if norm == "linf":
                delta = (torch.rand(images.shape, generator=generator) * 2 - 1) * eps
            else:
                noise = torch.randn(images.shape, generator=generator)
                radius = torch.rand((batch, 1, 1, 1), generator=generator) * eps
                delta = noise / noise.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * radius
            delta = (images + delta).clamp(0, 1) - images
    delta = delta.detach().clone()
    active = torch.ones(batch, dtype=torch.bool)
    used = 0
    for _ in range(steps):
        delta.requires_grad_(True)
        x = images + delta
        if quantise:
            x = x + ((x.clamp(0, 1) * 255).round() / 255 - x).detach()  # the models see the 8-bit image
        outputs = list(forwards(x))
        if margin is not None:
            with torch.no_grad():
                done = torch.stack([_margin(z, y, targeted) >= margin for z, y in zip(outputs, labels)]).all(0)
            active &= ~done
            if not bool(active.any()):
                delta.requires_grad_(False)
                break
        if loss == "ce":
            per_model = [torch.nn.functional.cross_entropy(z, y, reduction="none") for z, y in zip(outputs, labels)]
            objective = torch.stack(per_model).mean(0) * (1 if targeted else -1)  # minimised
        else:
            objective = -torch.stack([_margin(z, y, targeted) for z, y in zip(outputs, labels)]).mean(0)
        (grad,) = torch.autograd.grad(objective.sum(), delta)
        used += 1
        with torch.no_grad():
            if method == "lesson":
                update = step * grad
            elif norm == "linf":
                update = step * grad.sign()
            else:
                update = step * grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            update = update * active.view(-1, 1, 1, 1).to(update.dtype)
            delta = delta.detach() - update
            if method != "lesson":
                if norm == "linf":
                    delta = delta.clamp(-eps, eps)
                else:
                    n = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
                    delta = delta * (eps / n.clamp_min(1e-12)).clamp(max=1.0)
                delta = (images + delta).clamp(0, 1) - images
    return delta.detach(), used


# ------------------------------------------------------------------------------------------- attacked models
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
            "index": self.index, "label": self.label, "probability": round(self.probability, 6),
            "top5": [{"label": l, "probability": round(p, 6)} for l, p in self.top5],
        }


class _Victim:
    """One attacked model: the 0–1 network, its differentiable preprocessing, and its ordinary prediction path."""

    def __init__(self, model: ModelLike) -> None:
        self.net = model if isinstance(model, TargetNetwork) else load_target(model)
        self.name = self.net.name
        self.preprocess = preprocess(self.net.spec.data_config)
        self._classifier: Any = None
        self._transform: Any = None

    @property
    def is_model_file(self) -> bool:
        return Path(self.name).suffix == ".safetensors" or Path(self.name).is_file()

    def logits(self, photos: torch.Tensor) -> torch.Tensor:
        return self.net.module(self.preprocess(photos))

    def verdicts(self, paths: Sequence[Path]) -> list[Verdict]:
        """Classify image files the ordinary way: ``Classifier.predict``'s feature path for a headstart model file,
        timm's PIL eval transform for a backbone with its ImageNet head."""
        probs = self.probabilities(paths)
        out = []
        for row in probs:
            order = np.argsort(-row, kind="stable")[:5]
            top = int(order[0])
            out.append(Verdict(top, self.net.class_names[top], float(row[top]),
                               [(self.net.class_names[j], float(row[j])) for j in order], row))
        return out

    def probabilities(self, paths: Sequence[Path]) -> np.ndarray:
        if self.is_model_file:
            from headstart.models.classifier import Classifier

            if self._classifier is None:
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
        x = torch.stack([self._transform(load_image(p)) for p in paths])
        return self.net.probabilities(x).numpy()


def _victims(model: ModelLike | Sequence[ModelLike]) -> list[_Victim]:
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    if not models:
        raise ValueError("The 'model' parameter of attack needs at least one model.")
    return [_Victim(m) for m in models]


# ---------------------------------------------------------------------------------------------- one photo
@dataclass
class AttackResult:
    """What :func:`attack` found, measured on the 8-bit PNG read back from disk.

    Attributes:
        original / adversarial: ``(H, W, 3)`` uint8 photos (the adversarial one as decoded from ``png``).
        png: the exact PNG bytes that were verified; :func:`save_attack` writes these.
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": str(self.image), "model": self.model, "method": self.method, "norm": self.norm,
            "eps": None if self.method == "lesson" else self.eps,  # the lesson's descent has no budget
            "eps_8bit": None if self.method == "lesson" else round(self.eps_8bit, 4),
            "steps": self.steps, "steps_used": self.steps_used,
            "step_size": self.step_size,
            "target": None if self.target is None else {"index": self.target, "label": self.target_label},
            "original": self.before.to_dict() if self.before else None,
            "adversarial": self.after.to_dict() if self.after else None,
            "target_probability": (None if self.target is None or self.after is None
                                   else round(float(self.after.probabilities[self.target]), 6)),
            "success": self.success, "linf_8bit": self.linf_8bit, "l2": round(self.l2, 6),
            "psnr": None if self.psnr is None else round(self.psnr, 3), "clipped_values": self.clipped_values,
            "ensemble": self.members if len(self.members) > 1 else [],
            "transfer": self.transfer, "files": self.files,
            "measured_on": "the saved 8-bit PNG read back from disk, classified by the ordinary prediction path",
        }


def _norms(original: np.ndarray, adversarial: np.ndarray) -> tuple[int, float, float | None]:
    diff = adversarial.astype(np.int16) - original.astype(np.int16)
    linf = int(np.abs(diff).max()) if diff.size else 0
    l2 = float(np.sqrt(((diff / 255.0) ** 2).sum()))
    mse = float((diff.astype(np.float64) ** 2).mean())
    psnr = None if mse == 0 else 10 * math.log10(255.0**2 / mse)
    return linf, l2, psnr


def _png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _succeeded(before: Verdict, after: Verdict, target: int | None) -> bool:
    return after.index == target if target is not None else after.index != before.index


def _quantise(original: np.ndarray, delta: torch.Tensor, norm: str, eps: float, method: str) -> tuple[np.ndarray, int]:
    """The 8-bit adversarial photo, guaranteed inside the budget (L∞: every value within floor(eps·255) steps)."""
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


def _step_size(method: str, norm: str, eps: float, step_size: float | None) -> float:
    """The step :func:`perturb` takes for these settings (L∞ budgets act on whole 8-bit steps)."""
    budget = math.floor(eps * 255 + 1e-6) / 255 if norm == "linf" else eps
    if method == "fgsm":
        return budget
    if step_size is not None:
        return step_size
    return 1.0 if method == "lesson" else budget / 4


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
        :class:`AttackResult`; nothing is written outside a temporary folder (see :func:`save_attack`).

    Raises:
        ValueError: bad method, norm, eps or steps. HeadstartError: unknown class, unusable model.
        UnusableImageError: the image cannot be read.
    """
    import torch

    _check_choice("method", method, METHODS, "attack")
    _check_choice("norm", norm, NORMS, "attack")
    eps = parse_eps(eps, norm=norm)
    _check_8bit_budget(eps, norm, method, "attack")
    _check_steps(steps, "attack")
    if step_size is not None and not (math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"The 'step_size' parameter of attack must be a float in (0, inf). Got {step_size!r} instead.")
    photo = np.array(load_image(image), dtype=np.uint8)
    victims = _victims(model)
    targets = None if target is None else [v.net.class_index(target) for v in victims]

    with tempfile.TemporaryDirectory(prefix="headstart-attack-") as tmp:
        before = [v.verdicts([Path(image)])[0] for v in victims]
        labels = [torch.tensor([t if targets else b.index]) for t, b in zip(targets or [None] * len(victims), before)]
        x = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255
        generator = torch.Generator().manual_seed(seed)

        def forwards(images: torch.Tensor) -> list[torch.Tensor]:
            return [v.logits(images) for v in victims]

        optimise = dict(targeted=targets is not None, method=method, norm=norm, eps=eps, step_size=step_size)
        if method == "lesson":
            delta, used = perturb(forwards, x, labels, steps=steps, margin=None, quantise=False, **optimise)
        else:
            eps_opt = math.floor(eps * 255 + 1e-6) / 255 if norm == "linf" else eps
            optimise["eps"] = eps_opt
            delta, used, margin = None, 0, SURVIVAL_MARGIN
            while True:
                delta, n = perturb(forwards, x, labels, steps=steps - used, margin=margin, delta=delta,
                                   generator=generator, **optimise)
                used += n
                adversarial, clipped = _quantise(photo, delta, norm, eps, method)
                path = Path(tmp) / f"check-{used}.png"
                path.write_bytes(_png_bytes(adversarial))
                after = [v.verdicts([path])[0] for v in victims]
                ok = all(_succeeded(b, a, t) for b, a, t in zip(before, after, targets or [None] * len(victims)))
                if ok or used >= steps or method == "fgsm" or n == 0 and margin > 64:
                    break
                margin *= 2  # reached the margin on the differentiable path, but not on the file: push further
        if method == "lesson":
            adversarial, clipped = _quantise(photo, delta, norm, eps, method)
        png = _png_bytes(adversarial)
        path = Path(tmp) / "adversarial.png"
        path.write_bytes(png)
        read_back = np.asarray(load_image(path), dtype=np.uint8)
        after = [v.verdicts([path])[0] for v in victims]

    members = []
    for v, b, a, t in zip(victims, before, after, targets or [None] * len(victims)):
        members.append({"model": v.name, "original": b.to_dict(), "adversarial": a.to_dict(),
                        "success": _succeeded(b, a, t)})
    linf, l2, psnr = _norms(photo, read_back)
    primary = victims[0]
    return AttackResult(
        image=Path(image), model=primary.name, method=method, norm=norm, eps=eps, steps=steps, steps_used=used,
        step_size=_step_size(method, norm, eps, step_size),
        target=None if targets is None else targets[0],
        target_label=None if targets is None else primary.net.class_names[targets[0]],
        original=photo, adversarial=read_back, png=png, before=before[0], after=after[0],
        success=members[0]["success"], linf_8bit=linf, l2=l2, psnr=psnr, clipped_values=clipped, members=members,
    )


def transfer(result: AttackResult, models: Sequence[ModelLike]) -> list[dict[str, Any]]:
    """Classify the original photo and the adversarial PNG with other models: did the attack carry over?

    A targeted attack carries over when the other model's top-1 on the PNG is the target (matched by name or
    index in that model's classes; ``None`` when it has no such class); an untargeted one when its top-1 changed.
    The findings are also appended to ``result.transfer``.
    """
    found = []
    with tempfile.TemporaryDirectory(prefix="headstart-transfer-") as tmp:
        path = Path(tmp) / "adversarial.png"
        path.write_bytes(result.png)
        for model in models:
            victim = _Victim(model)
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
                carried = _succeeded(before, after, target)
            row = {"model": victim.name, "original": before.to_dict(), "adversarial": after.to_dict(),
                   "target_probability": None if target is None else round(float(after.probabilities[target]), 6),
                   "carried_over": carried}
            found.append(row)
    result.transfer.extend(found)
    return found


# --------------------------------------------------------------------------------------------------- outputs
def _amplified(original: np.ndarray, adversarial: np.ndarray) -> tuple[np.ndarray, float]:
    diff = adversarial.astype(np.float64) - original.astype(np.float64)
    peak = float(np.abs(diff).max()) or 1.0
    return np.clip(np.round(127.5 + diff * (127.5 / peak)), 0, 255).astype(np.uint8), 127.5 / peak


def plot_attack(result: AttackResult, path: str | os.PathLike[str]) -> Path:
    """Original | amplified perturbation | adversarial, with the top-5 bars before and after underneath."""
    from matplotlib.figure import Figure

    from headstart._io import save_figure

    amplified, gain = _amplified(result.original, result.adversarial)
    fig = Figure(figsize=(13, 7.5))
    grid = fig.add_gridspec(2, 3, height_ratios=[3, 2])
    titles = [
        f"original\n{_short(result.before.label)} {result.before.probability:.2f}" if result.before else "original",
        f"perturbation ×{gain:.0f}\nL∞ {result.linf_8bit}/255, L2 {result.l2:.2f}, "
        + (f"PSNR {result.psnr:.1f} dB" if result.psnr else "no change"),
        f"adversarial ({'success' if result.success else 'failed'})\n"
        f"{_short(result.after.label)} {result.after.probability:.2f}" if result.after else "adversarial",
    ]
    for i, (picture, title) in enumerate(zip([result.original, amplified, result.adversarial], titles)):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(picture)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    for i, (verdict, name) in enumerate([(result.before, "before"), (result.after, "after")]):
        if verdict is None:
            continue
        ax = fig.add_subplot(grid[1, [0, 2][i]])
        labels = [_short(l) for l, _ in verdict.top5][::-1]
        values = [p for _, p in verdict.top5][::-1]
        colours = ["tab:red" if result.target_label and l == _short(result.target_label) else "tab:blue" for l in labels]
        bars = ax.barh(labels, values, color=colours)
        ax.bar_label(bars, labels=[f"{v:.3f}" for v in values], fontsize=8, padding=2)
        ax.set_xlim(0, 1)
        ax.set_title(f"top-5 {name}", fontsize=10)
        ax.tick_params(labelsize=8)
    target = f" → {_short(result.target_label)}" if result.target_label else " (untargeted)"
    budget = "no budget" if result.method == "lesson" else f"{result.norm} eps={result.eps * 255:.3g}/255"
    fig.suptitle(f"{result.method.upper()} ({budget}) on {result.model}{target}", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


def _short(label: str) -> str:
    return label.split(",")[0][:28]


def save_attack(result: AttackResult, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``<stem>.adversarial.png`` (the verified bytes), ``<stem>.perturbation.png`` (amplified, grey = no
    change), ``<stem>.comparison.png`` and ``<stem>.attack.json`` into ``out_dir``; returns the paths by kind."""
    folder = Path(out_dir)
    stem = result.image.stem
    paths = {
        "adversarial": folder / f"{stem}.adversarial.png",
        "perturbation": folder / f"{stem}.perturbation.png",
        "figure": folder / f"{stem}.comparison.png",
        "json": folder / f"{stem}.attack.json",
    }
    write_bytes_atomic(paths["adversarial"], result.png)
    write_bytes_atomic(paths["perturbation"], _png_bytes(_amplified(result.original, result.adversarial)[0]))
    plot_attack(result, paths["figure"])
    result.files = {k: str(p) for k, p in paths.items()}
    write_bytes_atomic(paths["json"], (json.dumps(result.to_dict(), indent=2) + "\n").encode())
    return paths


# -------------------------------------------------------------------------------------------------- robustness
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "method": self.method, "norm": self.norm, "steps": self.steps,
            "n_images": self.n_images, "clean_accuracy": self.clean_accuracy,
            "curve": [{"eps": e, "eps_8bit": round(e * 255, 4) if self.norm == "linf" else None, "accuracy": a,
                       "attack_success": s}
                      for e, a, s in zip(self.eps, self.accuracy, self.attack_success)],
            "skipped": self.skipped,
            "note": "accuracy at eps = photos still classified correctly from the saved 8-bit PNG; a photo fooled at "
                    "a smaller budget counts as fooled at every larger one (that image is inside the larger budget); "
                    "eps 0 is `evaluate`'s accuracy.",
        }


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

    At ``eps`` 0 the photos go through exactly :func:`headstart.evaluate`'s feature path, so the first point is
    its accuracy. For each larger budget, every photo still classified correctly is attacked (untargeted, away
    from its true class, seed 0), saved as an 8-bit PNG and classified again from that file.

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
    import torch

    from headstart.models.classifier import Classifier
    from headstart.data.datasets import Dataset, load_dataset
    from headstart.reports.metrics import match_labels

    _check_choice("method", method, METHODS, "robustness")
    _check_choice("norm", norm, NORMS, "robustness")
    budgets = parse_eps_list(eps if isinstance(eps, str) else [str(e) for e in eps], norm=norm)
    for e in budgets:
        _check_8bit_budget(e, norm, method, "robustness")
    _check_steps(steps, "robustness")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"The 'limit' parameter of robustness must be None or an int in [1, inf). Got {limit!r}.")
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
    truth = np.array([classifier.classes.index(mapping[l]) for l in scored.labels], dtype=np.int64)
    robust = classifier.predict_proba_features(feats.features).argmax(1) == truth
    n = len(truth)
    clean = float(robust.mean()) if n else 0.0
    victim = _Victim(load_target(model))
    accuracy, success = [], []
    with tempfile.TemporaryDirectory(prefix="headstart-robustness-") as tmp:
        for e in budgets:
            if e > 0:
                attacked = np.flatnonzero(robust)
                pngs = []
                for i in attacked:
                    photo = np.array(load_image(scored.paths[i]), dtype=np.uint8)
                    x = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255
                    eps_opt = math.floor(e * 255 + 1e-6) / 255 if norm == "linf" else e
                    delta, _ = perturb(lambda t: [victim.logits(t)], x, [torch.tensor([int(truth[i])])],
                                       targeted=False, method=method, norm=norm, eps=eps_opt, steps=steps,
                                       generator=torch.Generator().manual_seed(0),
                                       margin=None if method == "lesson" else SURVIVAL_MARGIN,
                                       quantise=method != "lesson")
                    adversarial, _ = _quantise(photo, delta, norm, e, method)
                    png = Path(tmp) / f"{e:.6f}-{i}.png"
                    png.write_bytes(_png_bytes(adversarial))
                    pngs.append(png)
                if pngs:
                    after = classifier.features(pngs)
                    still = classifier.predict_proba_features(after.features).argmax(1) == truth[attacked]
                    robust[attacked] = still
                    success.append(round(float(1 - still.mean()), 6))
                else:
                    success.append(None)
            else:
                success.append(None)
            accuracy.append(float(robust.mean()) if n else 0.0)
    return Robustness(
        model=str(model), method=method, norm=norm, steps=1 if method == "fgsm" else steps, eps=budgets, accuracy=accuracy, n_images=n,
        clean_accuracy=clean, attack_success=success,
        skipped=[u.to_dict() for u in feats.unusable],
    )


def save_robustness(report: Robustness, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``robustness.json`` and ``robustness.png`` (accuracy against eps in 8-bit steps) into ``out_dir``."""
    from matplotlib.figure import Figure

    from headstart._io import save_figure

    folder = Path(out_dir)
    paths = {"json": folder / "robustness.json", "curve": folder / "robustness.png"}
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.plot([e * (255 if report.norm == "linf" else 1) for e in report.eps], report.accuracy, marker="o")
    ax.set_xlabel("budget eps (linf, in 8-bit steps: ×1/255)" if report.norm == "linf" else "budget eps (l2, 0–1 units)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(f"{Path(report.model).name}: {report.method.upper()} {report.steps} step{'s' * (report.steps != 1)}, {report.n_images} photos",
                 fontsize=10)
    fig.tight_layout()
    save_figure(fig, paths["curve"])
    write_bytes_atomic(paths["json"], (json.dumps(report.to_dict(), indent=2) + "\n").encode())
    return paths


__all__ = [
    "AttackResult", "Robustness", "Verdict", "attack", "parse_eps", "parse_eps_list", "perturb", "plot_attack",
    "preprocess", "robustness", "save_attack", "save_robustness", "transfer", "METHODS", "NORMS",
]
