"""Frozen stages computed once: when fine-tuning trains only the last stages of a backbone, the stages before them
give the same activations every epoch, so they run once per photo and view, and the epochs train only the rest.

A backbone whose stages are known (timm's EfficientNet family, ResNets) splits into a frozen *prefix* (stem and
early stages, in eval mode: frozen means frozen, BatchNorm statistics included) and a trainable *tail* (the last
stages, the pooling, dropout and the linear head). :class:`ActivationBank` keeps the prefix's output for each photo
(by content hash) and view: ``views`` augmented copies (the training augmentation, seeded by photo and view, so
the same photo gets the same views in every fit) and the plain preprocessing with its mirror image (for
validation). The bank lives in memory for the process: the validation run, the refit on all photos and the
learning-rate range test share it, and so do the folds of a cross-validation. A bank made by
:meth:`ActivationBank.shared` also keeps what it computes on disk (:mod:`~headstart.models.finetune.store`), so a
later process on the same photos reads the views instead of running the frozen stages. Activations are kept in
bf16 (bf16 runs) or fp16 (fp32 runs: half the bytes, and the tail gets them back as fp32). Epoch ``e`` trains on
view ``e mod views``.

Example:
    >>> split = split_network(network, "2")       # the last 2 of timm's coarse parameter groups train
    >>> bank = ActivationBank.shared(split, spec, augment="light", seed=0, precision="bf16")
    >>> acts = bank.training_views(photos, view=0)   # (n_photos, C, H, W): the input of split.tail
"""

from __future__ import annotations

import random
import time
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from headstart._threads import free_cores, torch_threads
from headstart.features.openvino import available as openvino_available
from headstart.features.openvino_modules import frozen_runner
from headstart.models.finetune.store import ActivationStore
from headstart.models.memo import source_digest, versions

__all__ = ["BANK_BYTES", "ActivationBank", "Split", "clear_banks", "split_network"]

#: Most bytes of prefix activations kept in memory per bank; beyond, fewer augmented views are kept per photo
#: (epochs reuse them), and when not even one fits, every epoch runs the whole network.
BANK_BYTES = 3 * 2**30
_PARTS = "headstart.models.finetune.parts"  # (its transforms draw the views)
_BANKS: OrderedDict[tuple, ActivationBank] = OrderedDict()
_MAX_BANKS = 2


@dataclass
class Split:
    """A :func:`~headstart.models.classifier.trunk_and_head` network cut where its trainable part begins.

    Attributes:
        network: the whole network (its tail modules are the network's own: training the tail trains it).
        prefix: frozen stages, ``images -> activations``.
        tail: ``activations -> logits`` (trainable stages, pooling, dropout, head); ``tail.features`` stops before
            the dropout and the head.
        where: the cut, in words (``blocks.6``).
        frozen: the prefix's modules (kept in eval mode: their BatchNorm statistics do not move either).
        frozen_names, trained_names: the trunk's modules on each side of the cut, by timm's names (``conv_stem``,
            ``bn1``, ``blocks.0–blocks.5`` | ``blocks.6``, ``conv_head``, ``bn2``): what a run says it freezes.
    """

    network: Any
    prefix: Any
    tail: Any
    where: str
    frozen: list
    frozen_names: tuple[str, ...] = ()
    trained_names: tuple[str, ...] = ()

    def freeze(self) -> None:
        """Put the frozen stages in eval mode (call after ``network.train()``)."""
        for module in self.frozen:
            module.eval()


def split_network(network: Any, unfreeze: str) -> Split | None:
    """Cut ``network`` before the first of the last ``unfreeze`` coarse parameter groups (timm's, as
    :func:`~headstart.models.finetune.trainable_groups` freezes them), or None when everything trains or the
    architecture's stages are not known here (then every epoch runs the whole network).

    Example:
        >>> split_network(build_network(load_backbone("tf_efficientnet_lite0"), 3, 0.2), "2").where
        'blocks.6'
    """
    import torch

    if unfreeze == "all":
        return None
    k = int(unfreeze)
    trunk = network.trunk
    if all(hasattr(trunk, a) for a in ("conv_stem", "bn1", "blocks", "conv_head", "bn2")):  # EfficientNet family
        stages = list(trunk.blocks)
        n_groups = len(stages) + 2  # stem, each stage, the head convolution
        if k >= n_groups - 1 or type(trunk).forward_features.__qualname__ != "EfficientNet.forward_features":
            return None
        first = len(stages) - (k - 1)  # k=1: only conv_head/bn2 train

        def stem(x):
            return trunk.bn1(trunk.conv_stem(x))

        stem_modules = [trunk.conv_stem, trunk.bn1]

        rest = [*stages[first:], trunk.conv_head, trunk.bn2]
        where = f"blocks.{first}" if first < len(stages) else "conv_head"
        names = [f"blocks.{i}" for i in range(len(stages))]
        sides = (["conv_stem", "bn1", *_span(names[:first])], [*_span(names[first:]), "conv_head", "bn2"])
    elif all(hasattr(trunk, a) for a in ("conv1", "bn1", "act1", "maxpool", "layer1", "layer4")):  # ResNet family
        stages = [trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4]
        if k >= len(stages) + 1 or type(trunk).forward_features.__qualname__ != "ResNet.forward_features":
            return None
        first = len(stages) - k

        def stem(x):
            return trunk.maxpool(trunk.act1(trunk.bn1(trunk.conv1(x))))

        stem_modules = [trunk.conv1, trunk.bn1]

        rest = stages[first:]
        where = f"layer{first + 1}"
        names = [f"layer{i + 1}" for i in range(len(stages))]
        sides = (["conv1", "bn1", *_span(names[:first])], _span(names[first:]))
    else:
        return None
    frozen = stages[:first]

    class Prefix(torch.nn.Module):
        """The frozen stem and stages, ``images -> activations`` (a module, so an engine can convert it)."""

        def __init__(self) -> None:
            super().__init__()
            self.stem = torch.nn.ModuleList(stem_modules)
            self.stages = torch.nn.ModuleList(frozen)

        def forward(self, x):
            x = stem(x)
            for stage in self.stages:
                x = stage(x)
            return x

    prefix = Prefix()

    class Tail(torch.nn.Module):
        """The trainable stages, pooling, dropout and head, from the frozen prefix's activations."""

        def __init__(self) -> None:
            super().__init__()
            self.stages = torch.nn.ModuleList(rest)
            self.dropout = network.dropout
            self.head = network.head

        def features(self, x):
            for stage in self.stages:
                x = stage(x)
            return trunk.forward_head(x, pre_logits=True)

        def forward(self, x):
            return self.head(self.dropout(self.features(x)))

    return Split(network, prefix, Tail(), where, stem_modules + list(frozen), *map(tuple, sides))


def _span(names: list[str]) -> list[str]:
    """Consecutive stages in one word: ``['blocks.0', 'blocks.1', 'blocks.2']`` → ``['blocks.0–blocks.2']``."""
    return names if len(names) < 2 else [f"{names[0]}–{names[-1]}"]


def _view_seed(seed: int, sha: str, view: int) -> int:
    """The random seed of one augmented view of one photo: the same in every fit with the same seed."""
    return (int(sha[:15], 16) * 1_000_003 + view * 7919 + seed) % (2**63 - 1)


class ActivationBank:
    """The frozen prefix's activations of photos, by content hash and view, computed on first use (see the
    module's docstring). Use :meth:`shared` to get the bank of the process for a backbone and settings."""

    def __init__(
        self,
        split: Split,
        data_config: dict[str, Any],
        augment: str,
        seed: int,
        precision: str,
        device: str = "cpu",
        batch_size: int = 32,
        engine_key: str | None = None,
    ) -> None:
        from headstart.models.finetune.parts import photo_transform

        self.split = split
        self.augment_transform = photo_transform(data_config, augment, True)
        self.plain_transform = photo_transform(data_config, "none", False)
        self.seed, self.precision, self.device, self.batch_size = seed, precision, device, batch_size
        self.train: dict[tuple[str, int], Any] = {}  # (sha, view) -> activation
        self.plain: dict[str, Any] = {}  # sha -> (2, C, H, W): the plain view and its mirror image
        self.seconds = 0.0
        self.computed = 0  # views run through the frozen stages
        self.loaded = 0  # views read from the disk store (a plain view and its mirror image: 2)
        self.read_seconds = 0.0
        self._pruned = False
        self.bytes_per_view = 0
        #: the disk store's identity without the engine (:meth:`shared` sets it; None: memory only)
        self.store_identity: dict[str, Any] | None = None
        self._stores: dict[str, ActivationStore] = {}
        #: where the frozen stages run: OpenVINO (converted once a machine, keyed by ``engine_key``: the trunk's
        #: content fingerprint and the cut) on a CPU where it is installed, else torch; decided on first use
        self.engine_key = engine_key
        self.engine: str | None = None
        self._runner: Any = None

    @classmethod
    def shared(
        cls,
        split: Split,
        spec: Any,
        *,
        augment: str,
        seed: int,
        precision: str,
        device: str = "cpu",
        batch_size: int = 32,
    ) -> ActivationBank:
        """The process's bank for this backbone (its exact weights), cut, augmentation, seed and precision; a new
        one (replacing the least recently used beyond two) when there is none yet. The prefix of ``split`` must
        hold ``spec``'s pretrained weights."""
        key = (spec.fingerprint, split.where, augment, seed, precision, device, repr(sorted(spec.data_config.items())))
        bank = _BANKS.get(key)
        if bank is None:
            engine_key = f"{spec.fingerprint}|{split.where}"
            bank = cls(split, spec.data_config, augment, seed, precision, device, batch_size, engine_key)
            bank.store_identity = {
                "backbone": spec.name,
                "fingerprint": spec.fingerprint,
                "where": split.where,
                "augment": augment,
                "seed": seed,
                "precision": precision,
                "device": device.split(":")[0],
                "data_config": repr(sorted(spec.data_config.items())),
                # the code that decodes photos and draws their views: a change to it is a change of key
                "code": [
                    source_digest(m)
                    for m in ("headstart.data.images", "headstart.features.preprocess", __name__, _PARTS)
                ],
                "versions": versions("torch", "torchvision", "timm", "openvino"),
            }
            _BANKS[key] = bank
            while len(_BANKS) > _MAX_BANKS:
                _BANKS.popitem(last=False)
        else:
            bank.split = split  # (the same frozen weights; the tail to train is this fit's)
        _BANKS.move_to_end(key)
        return bank

    def views_that_fit(self, n_photos: int, wanted: int) -> int:
        """How many augmented views a photo can keep within :data:`BANK_BYTES` (0: not even one)."""
        if not self.bytes_per_view:
            return wanted
        return max(0, min(wanted, BANK_BYTES // max(1, n_photos * self.bytes_per_view)))

    def training_views(self, photos: Sequence[tuple[str, Any]], view: int):
        """Activations ``(n, C, H, W)`` of augmented view ``view`` of each ``(sha, path)`` photo."""
        import torch

        def augmented(sha, image):
            state, torch_state = random.getstate(), torch.get_rng_state()
            random.seed(_view_seed(self.seed, sha, view))
            torch.manual_seed(_view_seed(self.seed, sha, view))
            try:
                return self.augment_transform(image)
            finally:
                random.setstate(state)
                torch.set_rng_state(torch_state)

        draft = self.augment_transform.draft
        self._fill(photos, self.train, lambda sha: (sha, view), view, augmented, mirror=False, draft=draft)
        return self._as_input(torch.stack([self.train[(sha, view)] for sha, _ in photos]))

    def plain_views(self, photos: Sequence[tuple[str, Any]]):
        """Activations ``(n, 2, C, H, W)`` of each photo's plain preprocessing and its mirror image."""
        import torch

        plain = lambda sha, image: self.plain_transform(image)  # noqa: E731
        self._fill(photos, self.plain, lambda sha: sha, "plain", plain, mirror=True, draft=self.plain_transform.draft)
        return self._as_input(torch.stack([self.plain[sha] for sha, _ in photos]))

    def _as_input(self, acts):
        """Kept activations as the tail takes them (fp16 is only how fp32 runs keep them)."""
        import torch

        return acts.float() if acts.dtype == torch.float16 else acts

    def _fill(self, photos, memory: dict, key, view: int | str, transform, *, mirror: bool, draft) -> None:
        """Put each photo's activations of ``view`` in ``memory`` under ``key(sha)``: kept in memory already, read
        from the disk store, or computed from photos decoded at ``draft`` (and stored)."""
        missing = [(sha, path) for sha, path in photos if key(sha) not in memory]
        if not missing:
            return
        wanted = self._store_dtype()
        store = self._store(self.engine or self.planned_engine())
        if store is not None:
            began, left = time.perf_counter(), []
            for sha, path in missing:
                act = store.get(sha, view)
                if act is not None and act.dtype == wanted and (not mirror or act.shape[0] == 2):
                    memory[key(sha)] = act
                    self.bytes_per_view = (act[0] if mirror else act).numel() * act.element_size()
                else:
                    left.append((sha, path))
            self.loaded += (len(missing) - len(left)) * (2 if mirror else 1)
            self.read_seconds += time.perf_counter() - began
            missing = left
        computed = []
        for sha, act in self._run(missing, transform, mirror=mirror, draft=draft):
            memory[key(sha)] = act if mirror else act[0]
            computed.append((sha, view, memory[key(sha)]))
            if len(computed) == self.batch_size:
                self._keep(computed)
        self._keep(computed)

    def _keep(self, items: list) -> None:
        """Write computed activations to the disk store of the engine that computed them (and empty ``items``)."""
        store = self._store(self.engine) if items else None
        if store is not None:
            store.put_many(items)
            if not self._pruned:
                store.prune()
                self._pruned = True
        items.clear()

    def planned_engine(self) -> str:
        """The engine :meth:`_engine` will choose (unless OpenVINO's conversion fails), known without converting."""
        use_openvino = self.device == "cpu" and self.engine_key is not None and openvino_available()
        return "openvino" if use_openvino else "torch"

    def _store(self, engine: str | None) -> ActivationStore | None:
        """The disk store of activations the frozen stages computed on ``engine`` (None: the bank keeps none)."""
        if self.store_identity is None or engine is None:
            return None
        if engine not in self._stores:
            self._stores[engine] = ActivationStore({**self.store_identity, "engine": engine})
        return self._stores[engine]

    def _store_dtype(self):
        import torch

        return torch.bfloat16 if self.precision == "bf16" else torch.float16

    def _run(self, photos: list[tuple[str, Any]], transform, *, mirror: bool, draft: tuple[int, int]):
        """Yield ``(sha, activations (views, C, H, W))`` for photos decoded at ``draft`` (JPEG draft mode), batched
        through the frozen prefix (in eval mode whatever the network's mode)."""
        if not photos:
            return
        modes = [m.training for m in self.split.frozen]
        self.split.freeze()
        try:
            with torch_threads(free_cores()):  # (the cores free now, as each epoch sizes its own)
                yield from self._batches(photos, transform, mirror, self._store_dtype(), draft)
        finally:
            for module, mode in zip(self.split.frozen, modes):
                module.train(mode)

    def _batches(self, photos, transform, mirror: bool, store, draft: tuple[int, int]):
        from concurrent.futures import ThreadPoolExecutor

        import torch

        from headstart.data import load_image

        views = 2 if mirror else 1
        with ThreadPoolExecutor(max_workers=4) as pool:  # decoding releases the GIL; the seeded transforms run in order
            for start in range(0, len(photos), self.batch_size):
                began = time.perf_counter()
                batch = photos[start : start + self.batch_size]
                images = pool.map(lambda path: load_image(path, draft_size=draft), [path for _, path in batch])
                x = torch.stack([transform(sha, image) for (sha, _), image in zip(batch, images)]).to(self.device)
                if mirror:
                    x = torch.cat([x, x.flip(-1)])
                run = self._engine(tuple(x.shape[1:]))
                if run is not None:
                    acts = torch.from_numpy(run(x.float().numpy())).to(store)
                else:
                    if self.device == "cpu":
                        x = x.contiguous(memory_format=torch.channels_last)
                    with (
                        torch.inference_mode(),
                        torch.autocast(
                            device_type=self.device.split(":")[0],
                            dtype=torch.bfloat16,
                            enabled=self.precision == "bf16",
                        ),
                    ):
                        acts = self.split.prefix(x).to(store)
                # (cloned outside inference mode: a plain tensor that training may use as its input)
                acts = acts.reshape(views, len(batch), *acts.shape[1:]).transpose(0, 1).clone()
                self.bytes_per_view = acts[0, 0].numel() * acts.element_size()
                self.seconds += time.perf_counter() - began
                self.computed += len(batch) * views
                yield from ((sha, acts[i]) for i, (sha, _) in enumerate(batch))

    def _engine(self, input_shape: tuple[int, ...]) -> Any:
        """The OpenVINO runner of the frozen stages, or None for torch (a GPU, no OpenVINO, no content key, or a
        conversion that failed: said once, and torch computes the same activations)."""
        if self.engine is None:
            self.engine = "torch"
            if self.planned_engine() == "openvino":
                try:
                    self._runner = frozen_runner(
                        self.split.prefix,
                        key=self.engine_key,
                        input_shape=input_shape,
                        precision=self.precision,
                        threads=free_cores(),  # (the cores free now; torch's threads wait meanwhile)
                    )
                    self.engine = "openvino"
                except Exception as exc:  # (an architecture OpenVINO cannot trace: torch runs it, as before)
                    warnings.warn(
                        f"The frozen stages could not be converted to OpenVINO ({type(exc).__name__}: {exc}); "
                        "they run in torch (slower, the same result).",
                        RuntimeWarning,
                        stacklevel=3,
                    )
        return self._runner if self.engine == "openvino" else None

    def counts(self) -> tuple[int, float, int, float]:
        """``(views computed, seconds computing, views read from disk, seconds reading)`` so far: a caller
        subtracts two of these to tell what one run cost."""
        return self.computed, self.seconds, self.loaded, self.read_seconds

    def nbytes(self) -> int:
        """Bytes held."""
        return int(
            sum(a.numel() * a.element_size() for a in self.train.values())
            + sum(a.numel() * a.element_size() for a in self.plain.values())
        )


def clear_banks() -> None:
    """Forget every bank of the process (frees their memory)."""
    _BANKS.clear()
