"""Fine-tuning: start from the linear probe's head (LP-FT), then unfreeze the backbone at low, depth-wise learning rates.

Phase 1 is the probe on cached features (exact and fast), so fine-tuning never starts from a random head that
would wreck the pretrained weights with large early errors. Phase 2 trains the unfrozen part with AdamW (or SGD),
layer-wise learning-rate decay, a warm-up + cosine schedule, label smoothing, timm augmentation, head dropout,
gradient clipping, optional weight EMA and bf16 autocast; it keeps the best epoch by validation accuracy and stops
early when validation stops improving. Given a run folder, it writes ``metrics.jsonl`` and ``curves.png`` each
epoch and a checkpoint, so ``resume=True`` continues a killed run; without one it writes nothing.

Every choice is a field of :class:`~headstart.models.finetune_config.Finetune`; fields left out are chosen by the
number of photos (:meth:`Finetune.for_data_size`). The network is :func:`headstart.models.classifier.trunk_and_head`,
the same one a model file is rebuilt into. The learning-rate range test lives in :mod:`headstart.models.lr_find`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headstart._console import progress as progress_bar
from headstart._console import say
from headstart._io import atomic_path, save_figure, write_text_atomic
from headstart.models.classifier import set_head, trunk_and_head
from headstart.models.finetune_config import Finetune, FinetuneConfig, load_config_file

if TYPE_CHECKING:
    from headstart.data import Dataset
    from headstart.features import Backbone

__all__ = [
    "EpochRecord", "Finetune", "FinetuneConfig", "FinetuneResult", "PhotoDataset", "build_network", "freeze_batchnorm",
    "load_config_file", "lr_factor", "make_optimizer", "photo_transform", "plot_curves", "run_finetune",
    "start_from_probe", "trainable_groups",
]


# ------------------------------------------------------------------------------------------------------ the network
def build_network(backbone: Backbone, n_classes: int, head_dropout: float):
    """The network fine-tuning trains: :func:`~headstart.models.classifier.trunk_and_head` on single views
    (training sees mirror images as augmentation; the saved model averages over them when the data chose it).

    Example:
        >>> from headstart.features import load_backbone
        >>> net = build_network(load_backbone("tf_efficientnet_lite0"), 3, 0.2)
        >>> net.head
        Linear(in_features=1280, out_features=3, bias=True)
    """
    return trunk_and_head(backbone.with_flip_average(False), n_classes, head_dropout)


def start_from_probe(network, coef, intercept, temperature: float = 1.0) -> None:
    """LP-FT: the head starts where the linear probe ended, its logits before calibration (``coef * temperature``)."""
    set_head(network, coef * temperature, intercept * temperature)


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


def make_optimizer(network, config: Finetune):
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
    """Multiplier of each group's peak lr: linear warm-up, then cosine to 0 (or one-cycle's cosine up and down).

    Example:
        >>> [round(lr_factor(step, 10, 2, "cosine"), 2) for step in (0, 1, 2, 6, 9)]
        [0.5, 1.0, 1.0, 0.5, 0.04]
    """
    if schedule == "onecycle":
        warmup = max(1, int(0.3 * total))
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# --------------------------------------------------------------------------------------------------------- the data
class PhotoDataset:
    """A torch map-style data set of (normalised image tensor, class index) from a headstart Dataset."""

    def __init__(self, dataset: Dataset, classes: list[str], transform) -> None:
        self.samples = dataset.samples
        self.index = {c: i for i, c in enumerate(classes)}
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from headstart.data import load_image

        s = self.samples[i]
        return self.transform(load_image(s.path)), self.index[s.label]


def photo_transform(data_config: dict[str, Any], augment: str, training: bool):
    """The backbone's preprocessing; for training, with the ``augment`` policy (timm's, TrivialAugment's)."""
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
    """The trained network (its best epoch's weights), every epoch's record, and how it ended."""

    network: Any
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False


def freeze_batchnorm(network) -> None:
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
    config: Finetune,
    run_dir: str | Path | None = None,
    *,
    resume: bool = False,
    progress: bool = False,
    device: str = "cpu",
) -> FinetuneResult:
    """Train ``network`` (trunk + head) on ``train_data``, validating each epoch on ``val_data``.

    ``config`` must be resolved (:meth:`Finetune.for_data_size`). With ``run_dir``, each epoch appends to
    ``metrics.jsonl``, redraws ``curves.png`` and replaces ``checkpoint.pt`` (weights, optimiser, random state),
    from which ``resume=True`` continues; without it nothing is written. Under torchrun only rank 0 writes.
    """
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    from headstart.features import all_reduce_sum, current, default_precision

    if resume and run_dir is None:
        raise ValueError("resume=True continues from the checkpoint in a run folder; pass run_dir (the folder).")
    group = current()
    run = Path(run_dir) if run_dir is not None else None
    writes = run is not None and group.is_main
    torch.manual_seed(config.seed)
    precision = default_precision(device) if config.precision == "auto" else config.precision
    autocast = lambda: torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16,  # noqa: E731
                                      enabled=precision == "bf16")
    generator = torch.Generator().manual_seed(config.seed)
    photos = PhotoDataset(train_data, classes, photo_transform(data_config, config.augment, True))
    sampler = DistributedSampler(photos, group.world_size, group.rank, shuffle=True, seed=config.seed) if group.enabled else None
    train_loader = DataLoader(photos, batch_size=config.batch_size, shuffle=sampler is None, sampler=sampler,
                              drop_last=len(train_data) > config.batch_size * group.world_size,
                              generator=generator, num_workers=config.workers)
    val_loader = DataLoader(PhotoDataset(val_data, classes, photo_transform(data_config, "none", False)),
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

    history: list[EpochRecord] = []
    best_acc, best_epoch, best_state, start_epoch = -1.0, 0, None, 0
    checkpoint = run / "checkpoint.pt" if run is not None else None
    if resume and checkpoint is not None and checkpoint.is_file():
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

    def record_epoch(record: EpochRecord) -> None:  # (a resumed run rewrites the lines its checkpoint knows)
        history.append(record)
        if writes:
            write_text_atomic(run / "metrics.jsonl", "".join(json.dumps(asdict(r)) + "\n" for r in history))

    if start_epoch == 0:  # epoch 0 = the starting point (for LP-FT: the probe); fine-tuning must beat it to count
        judged = ema.module if ema is not None else network
        val_loss, val_acc = _evaluate(judged, val_loader, device, autocast)
        best_acc, best_epoch = val_acc, 0
        best_state = {k: v.detach().clone() for k, v in judged.state_dict().items()}
        record_epoch(EpochRecord(0, None, None, val_loss, val_acc, 0.0, 0.0))
        if progress and group.is_main:
            say(f"epoch 0 (before fine-tuning): validation loss {val_loss:.3f} accuracy {val_acc:.3f}")
    step = start_epoch * steps_per_epoch
    stopped_early = False
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        network.train()
        if config.freeze_bn:
            freeze_batchnorm(network)
        if sampler is not None:
            sampler.set_epoch(epoch)
        seen, correct, loss_sum = 0, 0, 0.0
        with progress_bar(progress and group.is_main, steps_per_epoch, f"epoch {epoch + 1}/{config.epochs}") as advance:
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
        record_epoch(record)
        if progress and group.is_main:
            say(f"epoch {record.epoch}/{config.epochs}: train loss {record.train_loss:.3f} accuracy "
                f"{record.train_accuracy:.3f} | validation loss {val_loss:.3f} accuracy {val_acc:.3f} | "
                f"lr {record.lr:.2g} | {record.seconds:.0f} s" + ("  (best so far)" if val_acc > best_acc else ""))
        if val_acc > best_acc:
            best_acc, best_epoch = val_acc, epoch + 1
            best_state = {k: v.detach().clone() for k, v in judged.state_dict().items()}
        if writes:  # only rank 0 writes files
            state = {
                "network": network.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                "best_acc": best_acc, "best_epoch": best_epoch, "best_state": best_state,
                "history": json.dumps([asdict(r) for r in history]), "rng": torch.get_rng_state(),
                "loader_rng": generator.get_state(),
            }
            if ema is not None:
                state["ema"] = ema.state_dict()
            with atomic_path(checkpoint) as temporary:
                torch.save(state, temporary)
            plot_curves(history, run / "curves.png")
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
