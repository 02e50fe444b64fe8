"""Options of fine-tuning: one dataclass that is the single source of truth for the Python API, the
``headstart train`` flags and YAML/TOML config files."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from headstart.errors import HeadstartError

AUGMENTATIONS = ("none", "light", "trivial", "randaugment")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "onecycle")


@dataclass
class FinetuneConfig:
    """Options of :func:`finetune`; every field is also a ``--flag`` and a key of a YAML/TOML config file."""

    epochs: int = 8
    batch_size: int = 32
    lr: float = 2e-4  # peak learning rate of the head; the backbone's layers get lr * layer_decay**depth
    layer_decay: float = 0.75
    unfreeze: str = "all"  # "all", or K: only the last K stages of the backbone train
    optimizer: str = "adamw"
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.05
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    augment: str = "light"
    head_dropout: float = 0.2
    clip_grad: float = 1.0  # max gradient norm; 0 = off
    patience: int = 3  # epochs without validation improvement before stopping; 0 = never stop early
    freeze_bn: bool = True  # keep BatchNorm statistics from pretraining (small batches of few photos make poor ones)
    ema: bool = False
    ema_decay: float = 0.998
    precision: str = "auto"
    workers: int = 0  # DataLoader worker processes (0: decode in the main process)
    seed: int = 0

    @classmethod
    def for_data_size(cls, n_images: int, **overrides: Any) -> FinetuneConfig:
        """Defaults that suit the data: few photos → light augmentation, low lr, more epochs over little data."""
        if n_images < 1000:
            base = cls(epochs=8, lr=1e-4, augment="light", head_dropout=0.2)
        elif n_images < 20000:
            base = cls(epochs=6, lr=5e-4, augment="trivial", head_dropout=0.2)
        else:
            base = cls(epochs=4, lr=1e-3, augment="randaugment", head_dropout=0.1, freeze_bn=False)
        return base.replace(**overrides)

    def replace(self, **overrides: Any) -> FinetuneConfig:
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"Unknown fine-tuning option(s) {unknown}; known: {sorted(known)}.")
        types = {f.name: f.type for f in fields(self)}
        values = {**asdict(self), **{k: _coerce(v, types[k]) for k, v in overrides.items() if v is not None}}
        return FinetuneConfig(**values).validated()

    def validated(self) -> FinetuneConfig:
        def fail(name: str, allowed: str) -> None:
            raise ValueError(f"The {name!r} parameter of finetune must be {allowed}. Got {getattr(self, name)!r} instead.")

        def number(name: str) -> float:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                fail(name, "a number")
            return value

        for name in ("epochs", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                fail(name, "an int in [1, inf)")
        for name in ("lr", "ema_decay"):
            if not number(name) > 0:
                fail(name, "a float in (0, inf)")
        for name in ("weight_decay", "clip_grad", "warmup_epochs", "momentum"):
            if not number(name) >= 0:
                fail(name, "a float in [0, inf)")
        if not 0 < number("layer_decay") <= 1:
            fail("layer_decay", "a float in (0, 1]")
        if not 0 <= number("head_dropout") < 1:
            fail("head_dropout", "a float in [0, 1)")
        if not 0 <= number("label_smoothing") < 1:
            fail("label_smoothing", "a float in [0, 1)")
        if self.optimizer not in OPTIMIZERS:
            fail("optimizer", f"one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            fail("schedule", f"one of {SCHEDULES}")
        if self.augment not in AUGMENTATIONS:
            fail("augment", f"one of {AUGMENTATIONS}")
        if self.unfreeze != "all" and not (str(self.unfreeze).isdigit() and int(self.unfreeze) >= 1):
            fail("unfreeze", "'all' or a positive int (the last K stages)")
        return self


def _coerce(value: Any, type_name: str) -> Any:
    """Numbers written as text (YAML reads ``1e-4`` as a string) become the field's type; bad text stays to fail."""
    if isinstance(value, str) and type_name in ("float", "int"):
        try:
            return float(value) if type_name == "float" else int(value)
        except ValueError:
            return value
    if type_name == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Options from a YAML (.yaml/.yml, or a run folder's config.json) or TOML (.toml) file: a flat mapping of
    FinetuneConfig fields, or a run's saved config (its ``finetune`` section)."""
    path = Path(path)
    if not path.is_file():
        raise HeadstartError(f"No config file at {path}.")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except Exception as exc:
        raise HeadstartError(f"{path} is not valid {path.suffix[1:].upper() or 'YAML'}: {exc}") from exc
    if not isinstance(data, dict):
        raise HeadstartError(f"{path} must hold a mapping of option: value, got {type(data).__name__}.")
    if isinstance(data.get("finetune"), dict):  # a run folder's config.json: re-run with the same options
        data = data["finetune"]
    return data
