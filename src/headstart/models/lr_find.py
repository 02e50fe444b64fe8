"""The learning-rate range test (Smith 2015): raise the lr exponentially over a few batches and watch the loss.

It runs on the very network fine-tuning would train (the probe's head, the same unfrozen part, the same optimiser
groups and augmentation), then puts its weights back. :func:`headstart.workflows.training.find_learning_rate`
is the one-call path from a folder of photos.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from headstart._console import progress as progress_bar
from headstart._io import save_figure
from headstart._validation import check_int, fail
from headstart.models.finetune import (
    Finetune, PhotoDataset, freeze_batchnorm, make_optimizer, photo_transform, trainable_groups,
)

if TYPE_CHECKING:
    from headstart.data import Dataset

__all__ = ["LrFindResult", "lr_range_test", "plot_lr_find"]


@dataclass
class LrFindResult:
    """The learning-rate range test: loss (smoothed) against lr, and the suggested peak lr."""

    lrs: list[float]
    losses: list[float]
    suggestion: float

    def to_dict(self) -> dict[str, Any]:
        return {"suggestion": self.suggestion, "lrs": self.lrs, "losses": self.losses}


def lr_range_test(
    network,
    train_data: Dataset,
    classes: list[str],
    data_config: dict[str, Any],
    config: Finetune,
    *,
    start: float = 1e-7,
    end: float = 1.0,
    steps: int = 60,
    progress: bool = False,
) -> LrFindResult:
    """Raise the lr exponentially from ``start`` to ``end`` over ``steps`` batches and record the loss.

    Stops when the smoothed loss exceeds 4× its minimum. The suggestion is the lr where the smoothed loss falls
    fastest. The network's weights are restored afterwards. ``config`` must be resolved.

    Example:
        >>> result = lr_range_test(network, photos, classes, backbone.spec.data_config,
        ...                        Finetune.for_data_size(len(photos)), steps=20)
        >>> result.suggestion
        0.00021
    """
    import torch
    from torch.utils.data import DataLoader

    from headstart.features import default_precision

    if not 0 < start < end:
        fail("start", "lr_range_test", f"a float in (0, end={end:g})", start)
    check_int(steps, "steps", "lr_range_test", low=1)
    saved = copy.deepcopy(network.state_dict())
    network = network.to(memory_format=torch.channels_last)
    torch.manual_seed(config.seed)
    loader = DataLoader(PhotoDataset(train_data, classes, photo_transform(data_config, config.augment, True)),
                        batch_size=config.batch_size, shuffle=True, num_workers=config.workers)
    trainable_groups(network, config.unfreeze)
    optimizer = make_optimizer(network, config)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    precision = default_precision("cpu") if config.precision == "auto" else config.precision
    network.train()
    if config.freeze_bn:
        freeze_batchnorm(network)
    lrs, losses, smooth, best = [], [], 0.0, float("inf")
    batches = iter(())
    with progress_bar(progress, steps, "lr range test") as advance:
        for i in range(steps):
            x, y = next(batches, (None, None))
            if x is None:
                batches = iter(loader)
                x, y = next(batches)
            lr = start * (end / start) ** (i / max(1, steps - 1))
            for g in optimizer.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = loss_fn(network(x.contiguous(memory_format=torch.channels_last)).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_([p for p in network.parameters() if p.requires_grad], config.clip_grad)
            optimizer.step()
            smooth = 0.9 * smooth + 0.1 * float(loss.detach())  # exponential average, debiased below
            value = smooth / (1 - 0.9 ** (i + 1))
            lrs.append(lr)
            losses.append(value)
            best = min(best, value)
            advance(1)
            if not math.isfinite(value) or value > 4 * best:
                break
    network.load_state_dict(saved)
    if len(losses) < 3:
        suggestion = lrs[0]
    else:
        slopes = np.gradient(np.asarray(losses), np.log(np.asarray(lrs)))
        last = int(np.argmin(losses))  # the steepest fall before the minimum
        suggestion = float(lrs[int(np.argmin(slopes[: max(2, last + 1)]))])
    return LrFindResult(lrs, losses, suggestion)


def plot_lr_find(result: LrFindResult, path: str | Path) -> Path:
    """The loss against the learning rate (log scale), with the suggestion marked."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(result.lrs, result.losses)
    ax.axvline(result.suggestion, color="tab:red", linestyle="--", label=f"suggested lr {result.suggestion:.2g}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss (smoothed)", title="Learning-rate range test")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, Path(path))
