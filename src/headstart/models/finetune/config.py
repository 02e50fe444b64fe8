"""Options of fine-tuning: one dataclass, the single source of truth for the Python API, the ``headstart train``
flags (and their help) and YAML/TOML config files.

A field left at ``None`` means "chosen by the data size" (or by the method, for training from scratch); the
values are filled in by :meth:`Finetune.resolved` once the number of usable photos is known. The table below
(:data:`DEFAULTS`) is where every default lives, and the help text of each field says it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from headstart._validation import check_choice, check_int, check_number, fail
from headstart.errors import HeadstartError
from headstart.models.finetune.views import MIRRORS, view_policy

AUGMENTATIONS = ("none", "light", "trivial", "randaugment")
HEAD_STARTS = ("zero", "probe")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "onecycle")

#: The fewest validation photos a fine-tuned network must fix (breaking none) for its gain over the probe to count:
#: by a sign test at 5%, 5 fixes of 5 changes (chance 1/32) count, 4 of 4 (chance 1/16) do not.
MIN_FIXES = 5
SIZE_LIMITS = (1_000, 20_000)  # photos: "small" below the first, "medium" below the second, "large" from there
# The default of every field: one value, or (small, medium, large) by the number of usable photos. The measurements
# that chose them (repeated cross-validation on Oxford pets and cats-vs-dogs, and subsamples) are in docs/TRAINING.md.
DEFAULTS: dict[str, Any] = {
    "epochs": (8, 8, 4),
    "batch_size": 32,
    "lr": 1e-3,  # (the head learns from zero: docs/TRAINING.md)
    "lr_search": False,
    "layer_decay": 0.75,
    "unfreeze": ("2", "3", "all"),  # the last stage and the head convolution under 1,000 photos: docs/TRAINING.md
    "optimizer": "adamw",
    "momentum": 0.9,
    "weight_decay": 0.05,
    "schedule": "cosine",
    "warmup_epochs": 1.0,
    "label_smoothing": 0.1,
    "augment": ("light", "light", "randaugment"),
    "mirror": "auto",
    "head_dropout": (0.2, 0.2, 0.1),
    "head_start": "zero",
    "clip_grad": 1.0,
    "patience": 3,
    "freeze_bn": (True, True, False),
    "ema": False,
    "ema_decay": 0.998,
    "precision": "auto",
    "workers": 0,
    "seed": 0,
    "skip_unjudged": True,
}
# Training from scratch has nothing pretrained to protect: every layer, one full rate, its own BatchNorm statistics.
SCRATCH_DEFAULTS: dict[str, Any] = {
    "unfreeze": "all",
    "layer_decay": 1.0,
    "freeze_bn": False,
    "lr": 1e-3,
    "patience": 0,
    "skip_unjudged": False,  # (there is no probe to keep)
    "mirror": "on",  # (nor one to ask whether a mirror image is the same class)
}


def _word(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _option(text: str, name: str, **metadata: Any) -> Any:
    """A field defaulting to None ("by data size"), whose help ends with the defaults it resolves to."""
    default = DEFAULTS[name]
    if isinstance(default, tuple):
        small, medium, large = (_word(v) for v in default)
        said = (
            f"by data size: {small}"
            if small == medium == large
            else f"by data size: {small} under {SIZE_LIMITS[0]:,} photos, {medium} under {SIZE_LIMITS[1]:,}, {large} above"
            if small != medium
            else f"by data size: {small} under {SIZE_LIMITS[1]:,} photos, {large} above"
        )
    else:
        said = _word(default)
    if name in SCRATCH_DEFAULTS and SCRATCH_DEFAULTS[name] != default:
        said += f"; {_word(SCRATCH_DEFAULTS[name])} from scratch"
    said = f"{text[:-1]}; default {said})" if text.endswith(")") else f"{text} (default {said})"
    return field(default=None, metadata={"help": said + ".", **metadata})


@dataclass
class Finetune:
    """How to fine-tune: every field is a ``headstart train`` flag and a key of a YAML/TOML config file.

    Fields left out are chosen by the number of photos (and the method) when training starts; the constructor
    only stores what it is given (scikit-learn's convention), :meth:`validated` checks it.

    Example:
        >>> import headstart as hs
        >>> ft = hs.Finetune(epochs=5, lr=1e-4)
        >>> ft.resolved(300).augment, ft.resolved(300).epochs, ft.resolved(50_000).augment
        ('light', 5, 'randaugment')
    """

    epochs: int | None = _option("Passes over the training photos", "epochs")
    batch_size: int | None = _option("Photos per step", "batch_size")
    lr: float | None = _option("Peak learning rate of the head; the backbone's layers get lr × layer_decay^depth", "lr")
    lr_search: bool | None = _option(
        "Also try lr ×⅓ and ×3 on the validation part and keep the best (one more "
        "validation run each; the refit on all photos uses the chosen lr)",
        "lr_search",
        flag="--lr-search/--no-lr-search",
    )
    layer_decay: float | None = _option("Learning-rate factor per layer of depth (discriminative rates)", "layer_decay")
    unfreeze: str | None = _option(
        "'all' or K: train only the last K of timm's coarse parameter groups (for "
        "EfficientNets the head convolution and the last K-1 stages); the frozen stages "
        "run once per photo and view, not every epoch",
        "unfreeze",
    )
    optimizer: str | None = _option("adamw or sgd", "optimizer")
    momentum: float | None = _option("Momentum of SGD (Nesterov)", "momentum")
    weight_decay: float | None = _option("Weight decay", "weight_decay")
    schedule: str | None = _option("Learning-rate schedule: cosine (with warm-up) or onecycle", "schedule")
    warmup_epochs: float | None = _option("Epochs of linear warm-up of the learning rate", "warmup_epochs")
    label_smoothing: float | None = _option("Label smoothing", "label_smoothing")
    augment: str | None = _option("Augmentation of the training photos: none, light, trivial or randaugment", "augment")
    mirror: str | None = _option(
        "Mirror images among the training views: auto (where the probe labels the validation photos' mirror "
        "images no worse than the photos), on or off",
        "mirror",
    )
    head_dropout: float | None = _option("Dropout before the head", "head_dropout")
    head_start: str | None = _option(
        "Where the head starts: zero (it learns with the trunk; the probe stays the model to beat) or probe "
        "(LP-FT: the probe's head, which fits the training photos already and is thrown off by views it has not seen)",
        "head_start",
    )
    clip_grad: float | None = _option("Max gradient norm (0 = off)", "clip_grad")
    patience: int | None = _option("Stop after this many epochs without improvement (0 = never)", "patience")
    freeze_bn: bool | None = _option(
        "Keep BatchNorm's pretrained statistics (small batches of few photos make poor ones)",
        "freeze_bn",
        flag="--freeze-bn/--train-bn",
    )
    ema: bool | None = _option("Keep an exponential moving average of the weights", "ema", flag="--ema/--no-ema")
    ema_decay: float | None = _option("Decay of the moving average per step (when ema is on)", "ema_decay")
    precision: str | None = _option(
        "Arithmetic of training: auto (bf16 where the CPU has native bf16), fp32 or bf16", "precision"
    )
    workers: int | None = _option("Processes that decode photos for training (0 = the main process)", "workers")
    seed: int | None = _option("Seed of the training: photo order, augmentation, dropout", "seed")
    skip_unjudged: bool | None = _option(
        "Keep the probe at once, without fine-tuning, when validation cannot judge a network against it: the "
        f"probe misses fewer than {MIN_FIXES} validation photos, the fewest a network must fix for its gain to count",
        "skip_unjudged",
        flag="--skip-unjudged/--always-finetune",
    )

    # ------------------------------------------------------------------------------------------------ building
    @classmethod
    def for_data_size(cls, n_images: int, *, method: str = "finetune", **overrides: Any) -> Finetune:
        """The resolved options for ``n_images`` usable photos: ``overrides`` win, the rest comes from :data:`DEFAULTS`.

        Example:
            >>> Finetune.for_data_size(300, lr=1e-3).lr, Finetune.for_data_size(300).epochs
            (0.001, 8)
        """
        return cls().replace(**overrides).resolved(n_images, method=method)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Finetune:
        """The options of a YAML/TOML file or of a run folder's ``config.json`` (see :func:`load_config_file`)."""
        return cls().replace(**load_config_file(path))

    def replace(self, **overrides: Any) -> Finetune:
        """A validated copy with ``overrides`` applied; ``None`` leaves a field as it is. Unknown names fail."""
        types = field_types()
        unknown = sorted(set(overrides) - set(types))
        if unknown:
            raise ValueError(f"Unknown fine-tuning option(s) {unknown}; known: {sorted(types)}.")
        values = {**asdict(self), **{k: _coerce(v, types[k]) for k, v in overrides.items() if v is not None}}
        return type(self)(**values).validated()

    def resolved(self, n_images: int, *, method: str = "finetune") -> Finetune:
        """Every field filled in: the given ones kept, the others chosen for ``n_images`` photos (and the method)."""
        n_images = check_int(n_images, "n_images", "Finetune.resolved", low=0)
        check_choice(method, "method", "Finetune.resolved", ("finetune", "scratch"))
        size = sum(n_images >= limit for limit in SIZE_LIMITS)
        chosen = {name: (value[size] if isinstance(value, tuple) else value) for name, value in DEFAULTS.items()}
        if method == "scratch":
            chosen.update(SCRATCH_DEFAULTS)
        given = self.set_fields()
        return type(self)(**{**chosen, **given}).validated()

    def set_fields(self) -> dict[str, Any]:
        """The fields that were given (not ``None``): what a user chose, as ``ImageClassifier(finetune=...)`` takes it."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @property
    def views(self) -> str:
        """The name of the training views (:func:`~headstart.models.finetune.views.view_policy`): the augmentation,
        unmirrored where ``mirror`` is off (``auto`` not yet decided counts as on)."""
        return view_policy(self.augment, self.mirror != "off")

    @property
    def is_resolved(self) -> bool:
        """Whether every field has a value (:meth:`resolved` was called)."""
        return all(getattr(self, f.name) is not None for f in fields(self))

    # ------------------------------------------------------------------------------------------------ checking
    def validated(self) -> Finetune:
        """A checked copy (numbers as their field's type, ``unfreeze`` as text); ``None`` means "by data size" and
        passes. Bad values raise :class:`~headstart._validation.ParameterError` in scikit-learn's words."""
        from headstart.features.extract import PRECISIONS

        caller = "finetune"
        values = asdict(self)

        def given(name: str, check: Any, **bounds: Any) -> None:
            if values[name] is not None:
                values[name] = check(values[name], name, caller, **bounds)

        for name in ("epochs", "batch_size"):
            given(name, check_int, low=1)
        for name in ("patience", "workers", "seed"):
            given(name, check_int, low=0)
        given("lr", check_number, low=0, low_open=True)
        for name in ("weight_decay", "clip_grad", "warmup_epochs"):
            given(name, check_number, low=0)
        given("momentum", check_number, low=0, high=1)
        given("layer_decay", check_number, low=0, high=1, low_open=True)
        given("ema_decay", check_number, low=0, high=1, low_open=True, high_open=True)
        for name in ("head_dropout", "label_smoothing"):
            given(name, check_number, low=0, high=1, high_open=True)
        for name, allowed in (
            ("optimizer", OPTIMIZERS),
            ("schedule", SCHEDULES),
            ("augment", AUGMENTATIONS),
            ("head_start", HEAD_STARTS),
            ("mirror", MIRRORS),
            ("precision", PRECISIONS),
        ):
            given(name, check_choice, allowed=allowed)
        for name in ("freeze_bn", "ema", "lr_search"):
            if values[name] is not None and not isinstance(values[name], bool):
                fail(name, caller, "a bool", values[name])
        unfreeze = values["unfreeze"]
        if unfreeze is not None and unfreeze != "all":
            if isinstance(unfreeze, bool) or not (str(unfreeze).isdigit() and int(unfreeze) >= 1):
                fail("unfreeze", caller, "'all' or a positive int (the last K stages)", unfreeze)
            values["unfreeze"] = str(int(unfreeze))  # one spelling, whether it came as 2 or "2"
        return type(self)(**values)


FinetuneConfig = Finetune  # the name before the estimator API; still what the training code calls


def help_texts() -> dict[str, str]:
    """Each field's help, by name: what ``headstart train --help`` shows for its flag."""
    return {f.name: f.metadata["help"] for f in fields(Finetune)}


def field_types() -> dict[str, type]:
    """The base type of each field (``int | None`` → int)."""
    import typing

    hints = typing.get_type_hints(Finetune)
    return {name: next(a for a in typing.get_args(hint) if a is not type(None)) for name, hint in hints.items()}


def _coerce(value: Any, kind: type) -> Any:
    """Numbers written as text (YAML reads ``1e-4`` as a string) become the field's type; bad text stays to fail."""
    if isinstance(value, str) and kind in (float, int):
        try:
            return kind(value)
        except ValueError:
            return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Options from a YAML (.yaml/.yml, or a run folder's config.json) or TOML (.toml) file: a flat mapping of
    :class:`Finetune` fields (``head_dropout`` or the flag's ``head-dropout``), or a run's saved config (its
    ``finetune`` section)."""
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
    # the flags' spellings work too (`head-dropout: 0.5`, as `--head-dropout 0.5`), like `--set head-dropout=...`
    spelled = {str(key).strip().replace("-", "_"): value for key, value in data.items()}
    if len(spelled) < len(data):
        raise HeadstartError(f"{path} gives an option twice (once with '-', once with '_'); keep one.")
    return spelled


__all__ = [
    "DEFAULTS",
    "MIN_FIXES",
    "SCRATCH_DEFAULTS",
    "Finetune",
    "FinetuneConfig",
    "field_types",
    "help_texts",
    "load_config_file",
]
