"""The lr-find suggestion on the two shapes of curve it meets: a clear fall (training a head from scratch), and the
flat start of LP-FT, where the probe's head begins at a low loss (the steepest-fall rule picked 1e-7 there, on
pets-dev's real curve)."""

from __future__ import annotations

import numpy as np

from headstart.models.finetune.lr_find import suggest_lr

LRS = list(np.logspace(-7, 0, 40))


def test_a_clear_fall_gives_its_steepest_point() -> None:
    losses = list(np.r_[np.full(20, 3.6), np.linspace(3.6, 1.0, 10), np.linspace(1.0, 4.0, 10)])
    suggestion = suggest_lr(LRS, losses)
    assert LRS[20] <= suggestion <= LRS[29], "on the falling stretch, before the minimum"


def test_a_flat_start_gives_a_tenth_of_where_the_loss_starts_to_rise() -> None:
    rng = np.random.default_rng(0)
    # pets-dev's LP-FT curve, in shape: flat at 0.8 (noise ±0.01) up to 3e-3, then up to 4x
    losses = [0.8 + 0.01 * rng.standard_normal() if lr < 3e-3 else 0.8 * (lr / 3e-3) ** 0.6 for lr in LRS]
    suggestion = suggest_lr(LRS, losses)
    rise = next(lr for lr, loss in zip(LRS, losses) if loss > 1.1 * min(losses))
    assert suggestion == rise / 10 and 1e-4 < suggestion < 3e-3, suggestion
    assert suggestion > 100 * LRS[0], "not the first lr of the sweep"


def test_too_short_a_curve_gives_its_first_lr() -> None:
    assert suggest_lr(LRS[:2], [1.0, 0.9]) == LRS[0]
