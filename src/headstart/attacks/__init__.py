"""Adversarial examples, measured honestly: budgets, valid 8-bit pixels, and success checked on the saved file.

The lesson nudged a dog photo by gradient descent until VGG-16 called it a Siamese cat, with no perturbation
budget and no clipping to valid pixels. Here an attack changes the photo's *own* pixels at its own size, inside
an L∞ or L2 budget, and the resizing and cropping the model's preprocessing does are part of the attacked
pipeline (differentiable). The result is written as an 8-bit PNG, read back from disk and classified through the
ordinary prediction path; success and the size of the perturbation are measured on that file, never on the
floating-point tensor the optimiser saw.

One module per concern, from the one-call path down:

* :mod:`~headstart.attacks.adversarial` — :func:`attack` (one photo against a model or an ensemble,
  ``method="pgd" | "fgsm" | "lesson"``), :func:`transfer` (does it fool other models?) and the one
  perturb → quantise → PNG → reclassify loop both attacks and robustness run.
* :mod:`~headstart.attacks.robustness_curve` — :func:`robustness`: accuracy of a trained model on labelled photos
  against the budget, scored as :func:`headstart.evaluate` scores (``eps`` 0 is its accuracy).
* :mod:`~headstart.attacks.report` — :func:`save_attack`, :func:`save_robustness`, :func:`plot_attack`.
* :mod:`~headstart.attacks.optimise` — :func:`perturb`, the optimiser itself on tensors and any ``forward``.
* :mod:`~headstart.attacks.preprocessing` — :func:`preprocess`, the model's resize + crop, differentiable.
* :mod:`~headstart.attacks.budget` — :func:`parse_eps`, budget checks, rounding into the budget.

Example:
    >>> result = attack("tf_efficientnet_lite0", "dog.jpg", target="Siamese cat", eps=parse_eps("4/255"))
    >>> result.success, result.linf_8bit
    (True, 4)
    >>> save_attack(result, "attacks/")
"""

from __future__ import annotations

from headstart.attacks.adversarial import AttackResult, Verdict, attack, transfer
from headstart.attacks.budget import METHODS, NORMS, parse_eps, parse_eps_list
from headstart.attacks.optimise import perturb
from headstart.attacks.preprocessing import preprocess
from headstart.attacks.report import plot_attack, save_attack, save_robustness
from headstart.attacks.robustness_curve import Robustness, robustness

__all__ = [
    "METHODS",
    "NORMS",
    "AttackResult",
    "Robustness",
    "Verdict",
    "attack",
    "parse_eps",
    "parse_eps_list",
    "perturb",
    "plot_attack",
    "preprocess",
    "robustness",
    "save_attack",
    "save_robustness",
    "transfer",
]
