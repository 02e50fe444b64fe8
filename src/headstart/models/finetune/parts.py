"""The parts of fine-tuning: the network (its head from zero, or from the linear probe's: LP-FT), which of its
layers train at which depth-wise learning rates, the photos and their views, the records and the curves.

Phase 1 is the probe on cached features (exact and fast): the model to beat. Phase 2 trains the unfrozen part with
AdamW (or SGD), layer-wise learning-rate decay, a warm-up + cosine schedule, label smoothing, timm augmentation,
head dropout, gradient clipping, optional weight EMA and bf16 autocast; it keeps the best epoch by validation
accuracy and stops early when the validation loss stops falling (:mod:`~headstart.models.finetune.stopping`);
then (by default) the same schedule runs again on all photos for that many epochs
(:mod:`headstart.models.finetune.fit`).

This module holds the pieces: the network, which parameters train, the optimiser and its schedule, the photos
and their augmentation, the records and the curves. The loop is :func:`~headstart.models.finetune.loop.run_finetune`
(frozen stages computed once: :mod:`~headstart.models.finetune.frozen`); the learning-rate range test is
:mod:`~headstart.models.finetune.lr_find`. Every choice is a field of
:class:`~headstart.models.finetune.config.Finetune`; fields left out are chosen by the number of photos
(:meth:`Finetune.for_data_size`). The network is
:func:`headstart.models.classifier.trunk_and_head`, the same one a model file is rebuilt into.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headstart._io import save_figure
from headstart._threads import torch_threads
from headstart.models.classifier import set_head, trunk_and_head
from headstart.models.finetune.config import Finetune

if TYPE_CHECKING:
    from headstart.data import Dataset
    from headstart.features import Backbone

__all__ = [
    "EpochRecord",
    "FinetuneResult",
    "PhotoDataset",
    "build_network",
    "curves_figure",
    "freeze_batchnorm",
    "lr_factor",
    "make_optimizer",
    "photo_transform",
    "plot_curves",
    "start_from_probe",
    "trainable_groups",
    "zero_head_weights",
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
    network = trunk_and_head(backbone.with_flip_average(False), n_classes, head_dropout)
    network.dropout = centred_dropout(head_dropout, backbone.spec.num_features)
    return network


def start_from_probe(network, coef, intercept, temperature: float = 1.0, centre=None) -> None:
    """LP-FT: the head starts where the linear probe ended, its logits before calibration (``coef * temperature``);
    ``centre``, the mean of the features the probe was fitted on, is where the head's dropout drops features to."""
    import torch

    set_head(network, coef * temperature, intercept * temperature)
    if centre is not None and hasattr(network.dropout, "centre"):
        network.dropout.centre.copy_(torch.as_tensor(centre, dtype=torch.float32))


def zero_head_weights(network) -> None:
    """The head at zero (``head_start="zero"``): it sends no gradient into the trunk until it has learnt something."""
    import torch

    with torch.no_grad():
        network.head.weight.zero_()
        network.head.bias.zero_()


def centred_dropout(p: float, width: int):
    """Dropout of the features' deviations from a centre (``centre + dropout(x - centre)``; plain dropout while the
    centre is zero). Why: the probe is fitted on centred features, so its bias carries ``-coef @ mean``, a large
    offset that plain dropout (features to zero, the rest scaled up) swings by far more than the class margins: a
    batch the probe gets right in eval mode came out mostly wrong in training mode (DEVELOPERS.md). Around the
    mean, the expected logits and the offset stay as they are."""
    import torch

    class CentredDropout(torch.nn.Dropout):
        def __init__(self) -> None:
            super().__init__(p)
            self.register_buffer("centre", torch.zeros(width), persistent=False)  # (set from the probe's features)

        def forward(self, x):
            if not self.training or self.p == 0:
                return x
            centre = self.centre.to(x.dtype)
            return centre + super().forward(x - centre)

    return CentredDropout()


def trainable_groups(network, unfreeze: str) -> list[str]:
    """Freeze the trunk except its last K stages (timm's coarse parameter groups); return the trainable groups."""
    from timm.models import group_parameters

    trunk = network.trunk
    groups = group_parameters(trunk, trunk.group_matcher(coarse=True))
    names = [name for name in groups]
    keep = names if unfreeze == "all" else names[-int(unfreeze) :]
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
        s = self.samples[i]
        return self.transform.load(s.path), self.index[s.label]


@dataclass(frozen=True)
class PhotoTransform:
    """A backbone's preprocessing (with its training augmentation) and the size a photo is decoded at for it: a
    phone photo is read in JPEG draft mode, still large enough for the smallest crop the augmentation takes."""

    transform: Any
    draft: tuple[int, int]

    def __call__(self, image: Any) -> Any:
        """The transformed photo, on one torch thread: one photo's tensors are too small to share out, and on a
        busy machine each extra thread only waits for a core (the transforms ran 13 times slower on two)."""
        with torch_threads(1):
            return self.transform(image)

    def load(self, path: str | Path) -> Any:
        """The photo file, decoded at :attr:`draft` and transformed."""
        from headstart.data import load_image

        return self(load_image(path, draft_size=self.draft))


def photo_transform(data_config: dict[str, Any], augment: str, training: bool) -> PhotoTransform:
    """The backbone's preprocessing; for training, with the ``augment`` view policy (timm's, TrivialAugment's;
    mirror images unless the policy says unmirrored: :mod:`~headstart.models.finetune.views`)."""
    from timm.data import create_transform

    from headstart.features.preprocess import decode_size_for
    from headstart.models.finetune.views import parse_policy

    augment, mirror = parse_policy(augment)
    if not training or augment == "none":
        return PhotoTransform(create_transform(**data_config, is_training=False), decode_size_for(data_config))
    auto = {"light": None, "trivial": None, "randaugment": "rand-m9-mstd0.5-inc1"}[augment]
    scale = (0.5, 1.0) if augment == "light" else (0.25, 1.0)
    draft = decode_size_for(data_config, min_crop_area=scale[0])
    train = create_transform(
        **data_config,
        is_training=True,
        auto_augment=auto,
        scale=scale,
        hflip=0.5 if mirror else 0.0,
        color_jitter=0.2 if augment == "light" else None,
    )
    if augment == "trivial":  # timm has no TrivialAugment; torchvision's runs on the photo before timm's crop
        from torchvision.transforms import Compose, TrivialAugmentWide

        return PhotoTransform(Compose([TrivialAugmentWide(), train]), draft)
    return PhotoTransform(train, draft)


# ------------------------------------------------------------------------------------------------------ the loop
@dataclass
class EpochRecord:
    """One line of metrics.jsonl; epoch 0 is the starting point, before any training step (no train metrics);
    ``seconds`` is the epoch's wall time (training and validation)."""

    epoch: int
    train_loss: float | None
    train_accuracy: float | None
    val_loss: float | None  # (None in the refit on all photos: nothing is held out)
    val_accuracy: float | None
    lr: float
    seconds: float


@dataclass
class FinetuneResult:
    """The trained network (its best epoch's weights), every epoch's record, and how it ended; the validation
    logits of the best epoch (``(n_val, n_classes)``, what the temperature is fit on) with their class indices, and
    how the frozen stages were run (``frozen``: computed once or every epoch); epoch 0's validation logits."""

    network: Any
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    stopping: dict[str, Any] = field(default_factory=dict)  # (:meth:`Stopping.to_dict`; empty for the refit)
    val_logits: Any = None
    val_labels: Any = None
    start_logits: Any = None  # (epoch 0's validation logits: the probe's, for a fine-tune)
    frozen: dict[str, Any] = field(default_factory=dict)


def freeze_batchnorm(network) -> None:
    """BatchNorm layers use (and keep) their pretrained running statistics while the rest trains."""
    import torch

    for module in network.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def plot_curves(history: list[EpochRecord], path: Path, *, kept: int | None = None) -> Path:
    """Save :func:`curves_figure` as a PNG (``curves.png`` of a run folder)."""
    return save_figure(curves_figure(history, kept=kept), path)


def curves_figure(history: list[EpochRecord], *, kept: int | None = None) -> Any:
    """Train/validation accuracy and loss per epoch, side by side; ``kept``, the epoch validation kept, is marked
    on both. The accuracy axis runs from 0 to 1."""
    from matplotlib.figure import Figure

    from headstart.reports.plots import fraction_axis, integer_axis

    fig = Figure(figsize=(10, 4), layout="constrained")
    acc, loss = fig.subplots(1, 2)
    trained = [r for r in history if r.train_loss is not None]
    judged = [r for r in history if r.val_loss is not None]
    acc.plot([r.epoch for r in trained], [r.train_accuracy for r in trained], "o-", label="train")
    acc.plot([r.epoch for r in judged], [r.val_accuracy for r in judged], "o-", label="validation")
    acc.set(xlabel="epoch (0 = before fine-tuning)", ylabel="accuracy", title="Accuracy")
    fraction_axis(acc)
    loss.plot([r.epoch for r in trained], [r.train_loss for r in trained], "o-", label="train")
    loss.plot([r.epoch for r in judged], [r.val_loss for r in judged], "o-", label="validation")
    loss.set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    for ax in (acc, loss):
        if kept is not None:
            ax.axvline(kept, color="0.3", linestyle="--", linewidth=1, label=f"kept: epoch {kept}")
        integer_axis(ax.xaxis)
        ax.grid(alpha=0.3)
        ax.legend()
    return fig
