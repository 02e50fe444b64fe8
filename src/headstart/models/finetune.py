"""Fine-tuning: start from the linear probe's head (LP-FT), then unfreeze the backbone at low, depth-wise learning rates.

Phase 1 is the probe on cached features (exact and fast), so fine-tuning never starts from a random head that
would wreck the pretrained weights with large early errors. Phase 2 trains the unfrozen part with AdamW (or SGD),
layer-wise learning-rate decay, a warm-up + cosine schedule, label smoothing, timm augmentation, head dropout,
gradient clipping, optional weight EMA and bf16 autocast; it keeps the best epoch by validation accuracy, stops
early when validation stops improving, writes ``metrics.jsonl`` and ``curves.png`` each epoch, and checkpoints
every epoch so ``resume=`` continues a killed run.

Every choice is a field of :class:`FinetuneConfig`; its defaults depend on the number of photos
(:meth:`FinetuneConfig.for_data_size`), each can be overridden.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from headstart._console import say as _say

if TYPE_CHECKING:
    import torch

    from headstart.features.backbones import Backbone
    from headstart.data.datasets import Dataset

from headstart.models.finetune_config import AUGMENTATIONS, FinetuneConfig, load_config_file  # noqa: F401


# ------------------------------------------------------------------------------------------------------ the network
def build_network(backbone: Backbone, n_classes: int, head_dropout: float):
    """Trunk + dropout + Linear head, as one module mapping normalised images to logits."""
    import torch

    model = backbone.model
    model.reset_classifier(0)

    class Network(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = model
            self.dropout = torch.nn.Dropout(head_dropout)
            self.head = torch.nn.Linear(backbone.spec.num_features, n_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.dropout(self.trunk(x)))

    return Network()


def trainable_groups(network, unfreeze: str) -> list[str]:
    """Freeze the trunk except its last K stages (timm's coarse parameter groups); return the trainable groups."""
    from timm.models import group_parameters

    trunk = network.trunk
    groups = group_parameters(trunk, trunk.group_matcher(coarse=True))
    names = [name for name in groups]
    keep = names if unfreeze == "all" else names[-int(unfreeze):]
    for p in trunk.parameters():
        p.requires_grad_(False)
    params = dict(trunk.named_parameters())
    for name in keep:
        for pname in groups[name]:
            params[pname].requires_grad_(True)
    return keep


def make_optimizer(network, config: FinetuneConfig):
    """AdamW/SGD with layer-wise lr decay over the trunk (timm's param groups) and the full lr for the head."""
    import torch
    from timm.optim import param_groups_layer_decay

    trunk_groups = param_groups_layer_decay(
        network.trunk, weight_decay=config.weight_decay, layer_decay=config.layer_decay
    )
    groups = []
    for g in trunk_groups:
        params = [p for p in g["params"] if p.requires_grad]
        if params:
            groups.append({"params": params, "weight_decay": g["weight_decay"], "lr_scale": g.get("lr_scale", 1.0)})
    groups.append({"params": list(network.head.parameters()), "weight_decay": config.weight_decay, "lr_scale": 1.0})
    for g in groups:
        g["lr"] = config.lr * g["lr_scale"]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=config.lr)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of each group's peak lr: linear warm-up, then cosine to 0 (or one-cycle's cosine up and down)."""
    if schedule == "onecycle":
        warmup = max(1, int(0.3 * total))
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# --------------------------------------------------------------------------------------------------------- the data
class _Photos:
    """A torch map-style data set of (normalised image tensor, class index) from a headstart Dataset."""

    def __init__(self, dataset: Dataset, classes: list[str], transform) -> None:
        self.samples = dataset.samples
        self.index = {c: i for i, c in enumerate(classes)}
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from headstart.data.images import load_image

        s = self.samples[i]
        return self.transform(load_image(s.path)), self.index[s.label]


def _transform(data_config: dict[str, Any], augment: str, training: bool):
    from timm.data import create_transform

    if not training or augment == "none":
        return create_transform(**data_config, is_training=False)
    auto = {"light": None, "trivial": None, "randaugment": "rand-m9-mstd0.5-inc1"}[augment]
    scale = (0.5, 1.0) if augment == "light" else (0.25, 1.0)
    train = create_transform(**data_config, is_training=True, auto_augment=auto, scale=scale, hflip=0.5,
                             color_jitter=0.2 if augment == "light" else None)
    if augment == "trivial":  # timm has no TrivialAugment; torchvision's runs on the photo before timm's crop
        from torchvision.transforms import Compose, TrivialAugmentWide

        return Compose([TrivialAugmentWide(), train])
    return train


# ------------------------------------------------------------------------------------------------------ the loop
@dataclass
class EpochRecord:
    """One line of metrics.jsonl; epoch 0 is the starting point, before any training step (no train metrics)."""

    epoch: int
    train_loss: float | None
    train_accuracy: float | None
    val_loss: float
    val_accuracy: float
    lr: float
    seconds: float


@dataclass
class FinetuneResult:
    network: Any
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False




def _freeze_batchnorm(network) -> None:
    """BatchNorm layers use (and keep) their pretrained running statistics while the rest trains."""
    import torch

    for module in network.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def _evaluate(network, loader, device: str, autocast) -> tuple[float, float]:
    import torch

    network.eval()
    total, correct, loss_sum = 0, 0, 0.0
    with torch.inference_mode(), autocast():
        for x, y in loader:
            logits = network(x.to(device)).float()
            loss_sum += float(torch.nn.functional.cross_entropy(logits, y.to(device), reduction="sum"))
            correct += int((logits.argmax(1).cpu() == y).sum())
            total += len(y)
    return loss_sum / max(1, total), correct / max(1, total)


def run_finetune(
    network,
    train_data: Dataset,
    val_data: Dataset,
    classes: list[str],
    data_config: dict[str, Any],
    config: FinetuneConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    progress: bool = False,
    device: str = "cpu",
) -> FinetuneResult:
    """Train ``network`` (trunk + head) on ``train_data``, validating each epoch; checkpoints in ``run_dir``."""
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    from headstart.features.distributed import all_reduce_sum, current
    from headstart._console import progress as _progress
    from headstart.features.extract import default_precision

    group = current()
    torch.manual_seed(config.seed)
    precision = default_precision(device) if config.precision == "auto" else config.precision
    autocast = lambda: torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16,  # noqa: E731
                                      enabled=precision == "bf16")
    generator = torch.Generator().manual_seed(config.seed)
    photos = _Photos(train_data, classes, _transform(data_config, config.augment, True))
    sampler = DistributedSampler(photos, group.world_size, group.rank, shuffle=True, seed=config.seed) if group.enabled else None
    train_loader = DataLoader(photos, batch_size=config.batch_size, shuffle=sampler is None, sampler=sampler,
                              drop_last=len(train_data) > config.batch_size * group.world_size,
                              generator=generator, num_workers=config.workers)
    val_loader = DataLoader(_Photos(val_data, classes, _transform(data_config, "none", False)),
                            batch_size=config.batch_size, num_workers=config.workers)
    network = network.to(device)
    if device == "cpu":
        network = network.to(memory_format=torch.channels_last)
    trainable_groups(network, config.unfreeze)
    optimizer = make_optimizer(network, config)
    forward = network
    if group.enabled:  # gradients averaged over processes; every process keeps identical weights
        forward = torch.nn.parallel.DistributedDataParallel(
            network, device_ids=[torch.device(device).index] if device.startswith("cuda") else None)
    ema = None
    if config.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(network, decay=config.ema_decay)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    steps_per_epoch = len(train_loader)
    total_steps = steps_per_epoch * config.epochs
    warmup = int(config.warmup_epochs * steps_per_epoch)

    if group.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = run_dir / "checkpoint.pt"
    history: list[EpochRecord] = []
    best_acc, best_epoch, best_state, start_epoch = -1.0, 0, None, 0
    if resume and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=True)  # tensors and plain types only
        network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None and "ema" in state:
            ema.load_state_dict(state["ema"])
        start_epoch = int(state["epoch"]) + 1
        best_acc, best_epoch, best_state = float(state["best_acc"]), int(state["best_epoch"]), state["best_state"]
        history = [EpochRecord(**r) for r in json.loads(state["history"])]
        torch.set_rng_state(state["rng"].cpu())
        generator.set_state(state["loader_rng"].cpu())
    metrics_file = run_dir / "metrics.jsonl"
    if group.is_main:  # a resumed run rewrites the lines its checkpoint knows (a killed epoch may have left one more)
        metrics_file.write_text("".join(json.dumps(asdict(r)) + "\n" for r in history))

    if start_epoch == 0:  # epoch 0 = the starting point (for LP-FT: the probe); fine-tuning must beat it to count
        judged = ema.module if ema is not None else network
        val_loss, val_acc = _evaluate(judged, val_loader, device, autocast)
        best_acc, best_epoch = val_acc, 0
        best_state = {k: v.detach().clone() for k, v in judged.state_dict().items()}
        record = EpochRecord(0, None, None, val_loss, val_acc, 0.0, 0.0)
        history.append(record)
        if group.is_main:
            with open(metrics_file, "a") as f:
                f.write(json.dumps(asdict(record)) + "\n")
            if progress:
                _say(f"epoch 0 (before fine-tuning): validation loss {val_loss:.3f} accuracy {val_acc:.3f}")
    step = start_epoch * steps_per_epoch
    stopped_early = False
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        network.train()
        if config.freeze_bn:
            _freeze_batchnorm(network)
        if sampler is not None:
            sampler.set_epoch(epoch)
        seen, correct, loss_sum = 0, 0, 0.0
        with _progress(progress and group.is_main, steps_per_epoch, f"epoch {epoch + 1}/{config.epochs}") as advance:
            for x, y in train_loader:
                factor = lr_factor(step, total_steps, warmup, config.schedule)
                for g in optimizer.param_groups:
                    g["lr"] = config.lr * g.get("lr_scale", 1.0) * factor
                x = x.to(device)
                if device == "cpu":
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast():
                    logits = forward(x)
                    loss = loss_fn(logits.float(), y.to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.clip_grad > 0:
                    torch.nn.utils.clip_grad_norm_([p for p in network.parameters() if p.requires_grad], config.clip_grad)
                optimizer.step()
                if ema is not None:
                    ema.update(network, step=step)
                seen += len(y)
                correct += int((logits.detach().argmax(1).cpu() == y).sum())
                loss_sum += float(loss.detach()) * len(y)
                step += 1
                advance(1)
        seen, correct, loss_sum = all_reduce_sum([seen, correct, loss_sum])
        judged = ema.module if ema is not None else network
        val_loss, val_acc = _evaluate(judged, val_loader, device, autocast)  # every process: the whole set
        record = EpochRecord(epoch + 1, loss_sum / max(1, seen), correct / max(1, seen), val_loss, val_acc,
                             optimizer.param_groups[-1]["lr"], time.perf_counter() - started)
        history.append(record)
        if group.is_main:
            with open(metrics_file, "a") as f:
                f.write(json.dumps(asdict(record)) + "\n")
            if progress:
                _say(f"epoch {record.epoch}/{config.epochs}: train loss {record.train_loss:.3f} accuracy "
                     f"{record.train_accuracy:.3f} | validation loss {val_loss:.3f} accuracy {val_acc:.3f} | "
                     f"lr {record.lr:.2g} | {record.seconds:.0f} s" + ("  (best so far)" if val_acc > best_acc else ""))
        if val_acc > best_acc:
            best_acc, best_epoch = val_acc, epoch + 1
            best_state = {k: v.detach().clone() for k, v in judged.state_dict().items()}
        state = {
            "network": network.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
            "best_acc": best_acc, "best_epoch": best_epoch, "best_state": best_state,
            "history": json.dumps([asdict(r) for r in history]), "rng": torch.get_rng_state(),
            "loader_rng": generator.get_state(),
        }
        if ema is not None:
            state["ema"] = ema.state_dict()
        if group.is_main:  # only rank 0 writes files
            tmp = checkpoint.with_suffix(".tmp")
            torch.save(state, tmp)
            os.replace(tmp, checkpoint)
            plot_curves(history, run_dir / "curves.png")
        if config.patience and epoch + 1 - best_epoch >= config.patience:
            stopped_early = True
            break
    final = ema.module if ema is not None else network
    if best_state is not None:
        final.load_state_dict(best_state)
    return FinetuneResult(final, history, best_epoch, stopped_early)


def plot_curves(history: list[EpochRecord], path: Path) -> Path:
    """Train/validation accuracy and loss per epoch, side by side."""
    from matplotlib.figure import Figure

    from headstart._io import save_figure

    epochs = [r.epoch for r in history]
    fig = Figure(figsize=(10, 4), layout="constrained")
    acc, loss = fig.subplots(1, 2)
    trained = [r for r in history if r.train_loss is not None]
    acc.plot([r.epoch for r in trained], [r.train_accuracy for r in trained], "o-", label="train")
    acc.plot(epochs, [r.val_accuracy for r in history], "o-", label="validation")
    acc.set(xlabel="epoch (0 = before fine-tuning)", ylabel="accuracy", title="Accuracy")
    loss.plot([r.epoch for r in trained], [r.train_loss for r in trained], "o-", label="train")
    loss.plot(epochs, [r.val_loss for r in history], "o-", label="validation")
    loss.set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    for ax in (acc, loss):
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, path)


def network_to_classifier(network, backbone: Backbone, classes: list[str], metadata: dict[str, Any]):
    """The fine-tuned network as a headstart :class:`Classifier` (trunk weights in the file, a new fingerprint)."""
    from headstart.features.backbones import BackboneSpec
    from headstart.models.classifier import Classifier, trunk_fingerprint

    trunk = {k: np.ascontiguousarray(v.detach().float().cpu().numpy()) if v.is_floating_point()
             else v.detach().cpu().numpy() for k, v in network.trunk.state_dict().items()}
    spec_dict = backbone.spec.to_dict()
    spec_dict["weights_id"] = trunk_fingerprint(trunk)
    spec_dict["source"] = f"fine-tuned from {backbone.spec.source}"
    spec = BackboneSpec.from_dict(spec_dict)
    weight = network.head.weight.detach().float().cpu().numpy()
    bias = network.head.bias.detach().float().cpu().numpy()
    return Classifier(spec, classes, weight, bias, trunk, metadata)


# ---------------------------------------------------------------------------------------------- lr range test
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
    config: FinetuneConfig,
    *,
    start: float = 1e-7,
    end: float = 1.0,
    steps: int = 60,
    progress: bool = False,
) -> LrFindResult:
    """Raise the lr exponentially from ``start`` to ``end`` over ``steps`` batches (Smith 2015) and record the loss.

    Stops when the smoothed loss exceeds 4× its minimum. The suggestion is the lr where the smoothed loss falls
    fastest. The network's weights are restored afterwards.
    """
    import copy

    import torch
    from torch.utils.data import DataLoader

    from headstart._console import progress as _progress

    if not 0 < start < end:
        raise ValueError(f"lr-find needs 0 < start < end; got start={start}, end={end}.")
    saved = copy.deepcopy(network.state_dict())
    network = network.to(memory_format=torch.channels_last)
    torch.manual_seed(config.seed)
    loader = DataLoader(_Photos(train_data, classes, _transform(data_config, config.augment, True)),
                        batch_size=config.batch_size, shuffle=True, num_workers=config.workers)
    trainable_groups(network, config.unfreeze)
    optimizer = make_optimizer(network, config)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    network.train()
    if config.freeze_bn:
        _freeze_batchnorm(network)
    lrs, losses, smooth, best = [], [], 0.0, float("inf")
    batches = iter(())
    with _progress(progress, steps, "lr range test") as advance:
        for i in range(steps):
            x, y = next(batches, (None, None))
            if x is None:
                batches = iter(loader)
                x, y = next(batches)
            lr = start * (end / start) ** (i / max(1, steps - 1))
            for g in optimizer.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=_precision(config) == "bf16"):
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


def _precision(config: FinetuneConfig) -> str:
    from headstart.features.extract import default_precision

    return default_precision("cpu") if config.precision == "auto" else config.precision


def plot_lr_find(result: LrFindResult, path: Path) -> Path:
    from matplotlib.figure import Figure

    from headstart._io import save_figure

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(result.lrs, result.losses)
    ax.axvline(result.suggestion, color="tab:red", linestyle="--", label=f"suggested lr {result.suggestion:.2g}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss (smoothed)", title="Learning-rate range test")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)
