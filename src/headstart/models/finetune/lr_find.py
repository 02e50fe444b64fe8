"""The learning-rate range test (Smith 2015): raise the lr exponentially over a few batches and watch the loss.

It runs on the very network fine-tuning would train (its head where training starts it, the same unfrozen part,
the same optimiser groups and augmentation), then puts its weights back. :func:`headstart.workflows.experiments.find_learning_rate`
is the one-call path from a folder of photos.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from headstart._console import progress as progress_bar
from headstart._io import save_figure
from headstart._threads import restores_torch_threads, size_torch_threads
from headstart._validation import check_int, fail
from headstart.models.finetune.parts import (
    Finetune,
    PhotoDataset,
    freeze_batchnorm,
    make_optimizer,
    photo_transform,
    trainable_groups,
)

if TYPE_CHECKING:
    from headstart.data import Dataset

__all__ = ["DEFAULT_BUDGET_S", "DEFAULT_STEPS", "LrFindResult", "lr_range_test", "plot_lr_find", "suggest_lr"]


#: Batches of the range test by default: enough points for a curve; with the frozen stages computed once, about
#: half a minute on 2 CPU cores for Oxford pets (259 photos).
DEFAULT_STEPS = 40
#: Seconds the range test may take by default before it stops and says so (a network trained whole is slow).
DEFAULT_BUDGET_S = 45.0


@dataclass
class LrFindResult:
    """The learning-rate range test: loss (smoothed) against lr, the suggested peak lr, and how it ran: steps
    asked and run, why it stopped (``"done"``, ``"loss diverged"``, ``"time budget"``), seconds in all and per
    step."""

    lrs: list[float]
    losses: list[float]
    suggestion: float
    steps: int = 0
    stopped: str = "done"
    seconds: float = 0.0
    seconds_per_step: float = 0.0
    frozen: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "suggestion": self.suggestion,
            "steps": self.steps,
            "steps_run": len(self.lrs),
            "stopped": self.stopped,
            "seconds": round(self.seconds, 3),
            "seconds_per_step": round(self.seconds_per_step, 4),
            "frozen_stages": self.frozen,
            "lrs": self.lrs,
            "losses": self.losses,
        }

    @property
    def why(self) -> str:
        """In words, why the test ended where it did."""
        run = len(self.lrs)
        if self.stopped == "done":
            return f"all {run} steps"
        last = f"lr {self.lrs[-1]:.2g}" if self.lrs else "the first step"
        if self.stopped == "loss diverged":
            return (
                f"stopped at step {run} of {self.steps}: the loss exceeded 4x its minimum at {last} (as expected "
                "past the useful range)"
            )
        return f"stopped at step {run} of {self.steps}: its time budget ran out at {last}"


@restores_torch_threads
def lr_range_test(
    network,
    train_data: Dataset,
    classes: list[str],
    data_config: dict[str, Any],
    config: Finetune,
    *,
    start: float = 1e-7,
    end: float = 1.0,
    steps: int = DEFAULT_STEPS,
    budget_s: float | None = DEFAULT_BUDGET_S,
    progress: bool = False,
    spec: Any = None,
    hashes: dict[str, str] | None = None,
) -> LrFindResult:
    """Raise the lr exponentially from ``start`` to ``end`` over ``steps`` batches and record the loss.

    Stops when the smoothed loss exceeds 4× its minimum, or after ``budget_s`` seconds (None: no budget), and
    says which. The suggestion is the lr where the smoothed loss falls fastest. Where the stages before the
    trainable ones are frozen, their activations are computed once (:mod:`headstart.models.finetune.frozen`, shared with
    fine-tuning in the same process through ``spec``) and each step runs only the tail. The network's weights
    are restored afterwards. ``config`` must be resolved.

    Example:
        >>> result = lr_range_test(network, photos, classes, backbone.spec.data_config,
        ...                        Finetune.for_data_size(len(photos)), steps=20)
        >>> result.suggestion, result.why
        (0.00021, 'stopped at step 16 of 20: the loss exceeded 4x its minimum at lr 0.031 (...)')
    """
    import time

    import torch

    from headstart._io import sha256_file
    from headstart.features import default_precision
    from headstart.models.finetune.frozen import ActivationBank, split_network

    if not 0 < start < end:
        fail("start", "lr_range_test", f"a float in (0, end={end:g})", start)
    check_int(steps, "steps", "lr_range_test", low=1)
    began = time.perf_counter()
    size_torch_threads()  # (the cores free now, as fine-tuning's epochs do)
    saved = copy.deepcopy(network.state_dict())
    network = network.to(memory_format=torch.channels_last)
    torch.manual_seed(config.seed)
    precision = default_precision("cpu") if config.precision == "auto" else config.precision
    trainable_groups(network, config.unfreeze)
    split = split_network(network, config.unfreeze)
    frozen: dict[str, Any] = {"cached": split is not None}
    if split is not None:  # one augmented view a photo (two when a test would see them all more than twice)
        bank = (
            ActivationBank.shared(
                split, spec, augment=config.augment, seed=config.seed, precision=precision, batch_size=config.batch_size
            )
            if spec is not None
            else ActivationBank(split, data_config, config.augment, config.seed, precision, "cpu", config.batch_size)
        )
        known = dict(hashes or {})
        photos = [(known.get(str(s.path)) or sha256_file(s.path), s.path) for s in train_data.samples]
        index = {c: i for i, c in enumerate(classes)}
        labels = torch.tensor([index[s.label] for s in train_data.samples])
        views = 2 if steps * config.batch_size > 2 * len(photos) else 1
        computed, seconds = bank.computed, bank.seconds
        banked = [bank.training_views(photos, v) for v in range(views)]
        frozen.update(
            up_to=split.where,
            views=views,
            photo_views=bank.computed - computed,
            seconds=round(bank.seconds - seconds, 3),
        )
        generator = torch.Generator().manual_seed(config.seed)

        def batches():
            for epoch in range(10**9):
                order = torch.randperm(len(photos), generator=generator)
                for i in range(0, len(order), config.batch_size):
                    chosen = order[i : i + config.batch_size]
                    yield banked[epoch % views][chosen], labels[chosen]

        forward = split.tail
    else:
        loader = _photo_loader(train_data, classes, data_config, config)

        def batches():
            while True:
                yield from loader

        forward = network
    optimizer = make_optimizer(network, config)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    network.train()
    if config.freeze_bn:
        freeze_batchnorm(network)
    if split is not None:
        split.freeze()
    lrs, losses, smooth, best, stopped = [], [], 0.0, float("inf"), "done"
    stepped = time.perf_counter()
    source = batches()
    with progress_bar(progress, steps, "lr range test") as advance:
        for i in range(steps):
            x, y = next(source)
            lr = start * (end / start) ** (i / max(1, steps - 1))
            for g in optimizer.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = loss_fn(forward(x.contiguous(memory_format=torch.channels_last)).float(), y)
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
                stopped = "loss diverged"
                break
            if budget_s is not None and time.perf_counter() - began > budget_s and i + 1 < steps:
                stopped = "time budget"
                break
    per_step = (time.perf_counter() - stepped) / max(1, len(lrs))
    network.load_state_dict(saved)
    suggestion = suggest_lr(lrs, losses)
    return LrFindResult(lrs, losses, suggestion, steps, stopped, time.perf_counter() - began, per_step, frozen)


def suggest_lr(lrs: list[float], losses: list[float]) -> float:
    """The lr to use from a range test's curve. Where the loss falls clearly (by more than 5% of its start), the
    steepest fall before the minimum (the classic rule). Where it does not, as when fine-tuning starts from the
    probe's head (LP-FT: the loss is already low and stays flat until the rate is too high), the steepest-fall rule
    only picks noise, often the very first lr (1e-7); then a tenth of the lr at which the loss starts to rise
    (first above 1.1x its minimum, after it).

    Example:
        >>> lrs = [10.0 ** e for e in range(-7, 0)]
        >>> suggest_lr(lrs, [0.80, 0.79, 0.80, 0.79, 0.80, 1.2, 3.0])   # flat, then up at 1e-2
        0.001
    """
    if len(losses) < 3:
        return float(lrs[0])
    curve = np.asarray(losses, dtype=np.float64)
    last = int(np.argmin(curve))
    if curve[0] - curve[last] > 0.05 * curve[0]:
        slopes = np.gradient(curve, np.log(np.asarray(lrs)))
        return float(lrs[int(np.argmin(slopes[: max(2, last + 1)]))])
    rising = np.flatnonzero(curve[last:] > 1.1 * curve[last])
    edge = lrs[last + int(rising[0])] if rising.size else lrs[-1]
    return float(edge) / 10


def _photo_loader(train_data: Dataset, classes: list[str], data_config: dict[str, Any], config: Finetune):
    """Photos decoded and augmented each step (the whole network trains: nothing frozen to compute once)."""
    from torch.utils.data import DataLoader

    return DataLoader(
        PhotoDataset(train_data, classes, photo_transform(data_config, config.augment, True)),
        batch_size=config.batch_size,
        shuffle=True,
        num_workers=config.workers,
    )


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
