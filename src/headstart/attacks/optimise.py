"""The optimiser: PGD, FGSM and the lesson's plain descent on a batch of tensors and any differentiable model.

This is the reference-checked core (its PGD matches torchattacks step for step, ``tests/attacks``); it knows
nothing about files. :func:`~headstart.attacks.adversarial.attack` wraps it for one photo and checks the saved PNG.

Example:
    >>> delta, used = perturb(lambda x: [net.module(x)], crops, [targets], targeted=True, eps=4 / 255, steps=10)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from headstart._validation import check_choice
from headstart.attacks.budget import METHODS, NORMS

if TYPE_CHECKING:
    import torch

#: How far past the decision boundary (in logits) an attack pushes before it stops early, so that 8-bit
#: rounding, PIL's resize and bf16 inference in the ordinary prediction path do not undo it.
SURVIVAL_MARGIN = 1.0

LOSSES = ("auto", "ce", "margin")


def goal_margin(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    """How far each row is past the goal: target minus best other (targeted), best other minus label (untargeted)."""
    import torch

    own = logits.gather(1, labels[:, None])[:, 0]
    other = logits.masked_fill(torch.nn.functional.one_hot(labels, logits.shape[1]).bool(), -torch.inf).amax(1)
    return own - other if targeted else other - own


def _random_start(images: torch.Tensor, norm: str, eps: float, generator: torch.Generator) -> torch.Tensor:
    """PGD's start: uniform in the L∞ box, or a random direction at a random radius inside the L2 ball."""
    import torch

    if norm == "linf":
        delta = (torch.rand(images.shape, generator=generator) * 2 - 1) * eps
    else:
        noise = torch.randn(images.shape, generator=generator)
        radius = torch.rand((images.shape[0], 1, 1, 1), generator=generator) * eps
        delta = noise / noise.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * radius
    return (images + delta).clamp(0, 1) - images


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

    Example:
        >>> delta, used = perturb(lambda x: [net.module(x)], crops, [targets], targeted=True, steps=10)
        >>> float(delta.abs().max()) <= 4 / 255
        True
    """
    import torch

    check_choice(method, "method", "perturb", METHODS)
    check_choice(norm, "norm", "perturb", NORMS)
    check_choice(loss, "loss", "perturb", LOSSES)
    if loss == "auto":
        loss = "ce" if targeted or method == "lesson" else "margin"
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
            delta = _random_start(images, norm, eps, generator)
    delta = delta.detach().clone()
    active = torch.ones(images.shape[0], dtype=torch.bool)
    used = 0
    for _ in range(steps):
        delta.requires_grad_(True)
        x = images + delta
        if quantise:
            x = x + ((x.clamp(0, 1) * 255).round() / 255 - x).detach()  # the models see the 8-bit image
        outputs = list(forwards(x))
        if margin is not None:
            with torch.no_grad():
                done = torch.stack([goal_margin(z, y, targeted) >= margin for z, y in zip(outputs, labels)]).all(0)
            active &= ~done
            if not bool(active.any()):
                delta.requires_grad_(False)
                break
        if loss == "ce":
            per_model = [torch.nn.functional.cross_entropy(z, y, reduction="none") for z, y in zip(outputs, labels)]
            objective = torch.stack(per_model).mean(0) * (1 if targeted else -1)  # minimised
        else:
            objective = -torch.stack([goal_margin(z, y, targeted) for z, y in zip(outputs, labels)]).mean(0)
        (grad,) = torch.autograd.grad(objective.sum(), delta)
        used += 1
        with torch.no_grad():
            delta = _step(images, delta.detach(), grad, active, method=method, norm=norm, eps=eps, step=step)
    return delta.detach(), used


def _step(
    images: torch.Tensor,
    delta: torch.Tensor,
    grad: torch.Tensor,
    active: torch.Tensor,
    *,
    method: str,
    norm: str,
    eps: float,
    step: float,
) -> torch.Tensor:
    """One descent step on the still-active images, projected onto the budget and valid pixels (not the lesson's)."""
    if method == "lesson":
        update = step * grad
    elif norm == "linf":
        update = step * grad.sign()
    else:
        update = step * grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    delta = delta - update * active.view(-1, 1, 1, 1).to(update.dtype)
    if method == "lesson":
        return delta
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        n = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        delta = delta * (eps / n.clamp_min(1e-12)).clamp(max=1.0)
    return (images + delta).clamp(0, 1) - images


__all__ = ["LOSSES", "SURVIVAL_MARGIN", "goal_margin", "perturb"]
