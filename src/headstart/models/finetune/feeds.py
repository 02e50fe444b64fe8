"""How the fine-tuning loop gets its epochs: the frozen stages' activations computed once per photo and view
(:class:`Cached`, where :func:`~headstart.models.finetune.frozen.split_network` knows the cut), or every epoch
decoding, augmenting and running the whole network (:class:`Streaming`: an unknown architecture,
``unfreeze="all"``, torchrun). Both give the loop the module to train, the batches of an epoch and the validation
logits of what a saved model computes.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from headstart._console import progress as progress_bar
from headstart._console import say
from headstart._io import sha256_file
from headstart.models.finetune.frozen import ActivationBank, split_network
from headstart.models.finetune.parts import PhotoDataset, photo_transform

if TYPE_CHECKING:
    from headstart.data import Dataset

__all__ = ["Cached", "Streaming", "labels_of"]


def labels_of(dataset: Dataset | None, classes: list[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[s.label] for s in dataset.samples] if dataset is not None else [], dtype=np.int64)


class Streaming:
    """Every epoch decodes, augments and runs the whole network (the frozen stages too)."""

    def __init__(self, network, train_data, val_data, classes, data_config, config, group, device, generator) -> None:
        from torch.utils.data import DataLoader, DistributedSampler

        photos = PhotoDataset(train_data, classes, photo_transform(data_config, config.views, True))
        self.sampler = (
            DistributedSampler(photos, group.world_size, group.rank, shuffle=True, seed=config.seed)
            if group.enabled
            else None
        )
        self.loader = DataLoader(
            photos,
            batch_size=config.batch_size,
            shuffle=self.sampler is None,
            sampler=self.sampler,
            drop_last=len(train_data) > config.batch_size * group.world_size,
            generator=generator,
            num_workers=config.workers,
        )
        self.val_loader = None
        if val_data is not None:
            self.val_loader = DataLoader(
                PhotoDataset(val_data, classes, photo_transform(data_config, "none", False)),
                batch_size=config.batch_size,
                num_workers=config.workers,
            )
        self.module, self.device = network, device
        self.steps_per_epoch = len(self.loader)
        self.val_labels = labels_of(val_data, classes)

    def set_epoch(self, epoch: int) -> None:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def batches(self, epoch: int):
        return iter(self.loader)

    def validation_logits(self, judged, autocast, flip_average: bool, unfreeze: str):
        import torch

        judged.eval()
        out = []
        with torch.inference_mode(), autocast():
            for x, _ in self.val_loader:
                x = x.to(self.device)
                features = judged.features(x).float()
                if flip_average:
                    features = (features + judged.features(x.flip(-1)).float()) / 2
                out.append(judged.head(features).float().cpu().numpy())
        n = len(judged.head.bias)
        return (np.concatenate(out) if out else np.zeros((0, n), np.float32)), self.val_labels

    def describe(self) -> dict[str, Any]:
        return {"cached": False}


class Cached:
    """The frozen stages' activations from the bank; the epochs run only the tail (see :mod:`frozen`)."""

    @classmethod
    def build(
        cls,
        split,
        train_data,
        val_data,
        classes,
        data_config,
        config,
        spec,
        hashes,
        precision,
        device,
        generator,
        epochs,
        progress,
    ) -> Cached | None:
        started = time.perf_counter()
        bank = (
            ActivationBank.shared(
                split,
                spec,
                augment=config.views,
                seed=config.seed,
                precision=precision,
                device=device,
                batch_size=config.batch_size,
            )
            if spec is not None
            else ActivationBank(
                split,
                data_config,
                config.views,
                config.seed,
                precision,
                device,
                config.batch_size,
            )
        )
        hashes = dict(hashes or {})
        train = [(hashes.get(str(s.path)) or sha256_file(s.path), s.path) for s in train_data.samples]
        val = [(hashes.get(str(s.path)) or sha256_file(s.path), s.path) for s in val_data.samples] if val_data else []
        before = bank.counts()
        bank.training_views(train[:1], 0)  # one activation tells its size
        views = bank.views_that_fit(len(train), max(1, epochs))
        if views == 0:
            return None
        self = cls()
        self.split, self.bank, self.train, self.val, self.views = split, bank, train, val, views
        self.module, self.generator, self.batch_size = split.tail, generator, config.batch_size
        self.train_labels = labels_of(train_data, classes)
        self.val_labels = labels_of(val_data, classes)
        self.drop_last = len(train) > config.batch_size
        self.steps_per_epoch = (
            len(train) // config.batch_size if self.drop_last else math.ceil(len(train) / config.batch_size)
        )
        # Only the first epoch's views now: early stopping usually ends a run long before every view is used, and
        # each later epoch computes its own view when it starts (kept for the refit and later fits in the process).
        self._asked, self._plain_asked = {0} if epochs else set(), bool(val)
        with progress_bar(progress, 1 + bool(val), "frozen stages") as advance:
            if epochs:
                bank.training_views(train, 0)
            advance(1)
            if val:
                bank.plain_views(val)
                advance(1)
        self._count_from(before)
        self.total_seconds = time.perf_counter() - started
        if progress:
            said = f"{self.computed} photo views in {self.seconds:.1f} s on {bank.engine}" if self.computed else ""
            if self.loaded:
                said += f"{', ' if said else ''}{self.loaded} read from the cache in {self.read_seconds:.1f} s"
            if self.reused:
                said += f"{', ' if said else ''}{self.reused} kept from the run before"
            say(
                f"frozen, run once: {', '.join(split.frozen_names)} ({said or 'nothing to compute'}); trained each "
                f"epoch: {', '.join(split.trained_names)} and the head, on its own augmented view ({views} kept a "
                "photo)"
            )
        return self

    def _count_from(self, before: tuple) -> None:
        """What the bank did for this run since ``before`` (its :meth:`~ActivationBank.counts` then)."""
        self._start = before
        now = self.bank.counts()
        self.computed, self.seconds, self.loaded, self.read_seconds = (a - b for a, b in zip(now, before))
        asked = len(self.train) * len(self._asked) + 2 * len(self.val) * bool(self._plain_asked)
        self.reused = max(0, asked - self.computed - self.loaded)  # (views an earlier run of the process computed)

    def set_epoch(self, epoch: int) -> None:
        pass

    def batches(self, epoch: int):
        import torch

        acts = self.bank.training_views(self.train, epoch % self.views)  # (computed at its epoch's start)
        self._asked.add(epoch % self.views)
        self._count_from(self._start)
        labels = torch.from_numpy(self.train_labels)
        order = torch.randperm(len(self.train), generator=self.generator)
        end = len(order) - (len(order) % self.batch_size if self.drop_last else 0)
        for start in range(0, end, self.batch_size):
            chosen = order[start : start + self.batch_size]
            yield acts[chosen], labels[chosen]

    def validation_logits(self, judged, autocast, flip_average: bool, unfreeze: str):
        import torch

        tail = self.module if judged is self.split.network else split_network(judged, unfreeze).tail
        tail.eval()
        acts = self.bank.plain_views(self.val)
        out = []
        with torch.inference_mode(), autocast():
            for start in range(0, len(self.val), self.batch_size):
                a = acts[start : start + self.batch_size]
                views = a.shape[1] if flip_average else 1
                both = a[:, :views].transpose(0, 1).reshape(-1, *a.shape[2:])
                features = tail.features(both.contiguous(memory_format=torch.channels_last)).float()
                features = features.reshape(views, len(a), -1).mean(0)
                out.append(tail.head(features).float().cpu().numpy())
        n = len(tail.head.bias)
        return (np.concatenate(out) if out else np.zeros((0, n), np.float32)), self.val_labels

    def describe(self) -> dict[str, Any]:
        return {
            "cached": True,
            "up_to": self.split.where,
            "engine": self.bank.engine or self.bank.planned_engine(),  # (all read from the cache: what computed them)
            "views": self.views,
            "photo_views": self.computed,
            "seconds": round(self.seconds, 3),
            "read_from_cache": self.loaded,
            "read_seconds": round(self.read_seconds, 3),
            "reused": self.reused,
            "megabytes": round(self.bank.nbytes() / 2**20, 1),
        }
