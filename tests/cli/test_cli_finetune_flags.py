"""The fine-tuning flags are made from :class:`headstart.Finetune`'s fields: one flag per field, the field's help,
and every value reaches the training that runs (read back from a real run's config.json)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import typer
from conftest import run_cli as run

from headstart.cli import app
from headstart.cli._finetune import flag_of
from headstart.cli.training import LR_FIND_FIELDS, RUN_OPTIONS
from headstart.models.finetune.config import DEFAULTS, Finetune, help_texts

FIELDS = [f.name for f in dataclasses.fields(Finetune)]


def options_of(command: str) -> dict[str, object]:
    """The click options of a command, by Python name (what `--help` shows)."""
    group = typer.main.get_command(app)
    return {p.name: p for p in group.commands[command].params}


@pytest.mark.parametrize(
    "command, names",
    [
        ("train", [n for n in FIELDS if n not in RUN_OPTIONS]),
        ("sweep", FIELDS),
        ("lr-find", list(LR_FIND_FIELDS)),
    ],
)
def test_every_field_is_a_flag_with_the_fields_help(command: str, names: list[str]) -> None:
    options = options_of(command)
    helps = help_texts()
    for name in names:
        assert name in options, f"{command} has no flag for Finetune.{name}"
        option = options[name]
        assert option.opts[0] == flag_of(name), (name, option.opts)
        assert option.help == helps[name], name
        assert option.default is None, f"{name}: an ungiven flag must leave the choice to the data size"
    if "ema" in names:
        assert options["ema"].secondary_opts == ["--no-ema"]
    assert options["freeze_bn"].opts == ["--freeze-bn"] and options["freeze_bn"].secondary_opts == ["--train-bn"]
    assert flag_of("warmup_epochs") == "--warmup-epochs"
    assert flag_of("freeze_bn", False) == "--train-bn" and flag_of("ema", False) == "--no-ema"


def test_train_has_every_field_and_its_own_seed_and_precision_set_the_rest() -> None:
    """--seed and --precision are train's own options (they also seed the split and drive extraction)."""
    options = options_of("train")
    assert set(FIELDS) <= set(options)
    assert options["seed"].opts == ["--seed"] and options["seed"].default == 0
    assert options["precision"].opts == ["--precision"] and options["precision"].default == "auto"


def test_each_help_says_the_default_from_the_one_table() -> None:
    for name, text in help_texts().items():
        assert "default" in text, name
        default = DEFAULTS[name]
        if isinstance(default, tuple):
            assert "by data size" in text, name


@pytest.fixture(scope="module")
def twelve(sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 real photos: 3 breeds × 4."""
    root = tmp_path_factory.mktemp("twelve")
    for breed in ("Persian", "pug", "samoyed"):
        (root / breed).mkdir()
        for photo in sorted((sample / "train" / breed).glob("*.jpg"))[:4]:
            shutil.copy(photo, root / breed / photo.name)
    return root


# A value unlike its default for every field: the run below shows each one reached the training.
NOT_DEFAULT = {
    "epochs": 1,
    "batch_size": 8,
    "lr": 3e-4,
    "lr_search": True,
    "layer_decay": 0.9,
    "unfreeze": "3",
    "optimizer": "sgd",
    "momentum": 0.8,
    "weight_decay": 0.01,
    "schedule": "onecycle",
    "warmup_epochs": 0.5,
    "label_smoothing": 0.05,
    "augment": "none",
    "mirror": "off",
    "head_dropout": 0.3,
    "head_start": "probe",
    "clip_grad": 0.5,
    "patience": 0,
    "freeze_bn": False,
    "ema": True,
    "ema_decay": 0.99,
    "precision": "fp32",
    "workers": 1,
    "seed": 3,
    "skip_unjudged": False,  # (twelve photos: validation could never judge the run, which must train anyway)
}


def _flags(values: dict[str, object]) -> list[str]:
    args = []
    for name, value in values.items():
        if isinstance(value, bool):
            args.append(flag_of(name, value))
        else:
            args += [flag_of(name), str(value)]
    return args


@pytest.mark.slow
def test_every_flag_and_the_config_file_reach_the_training_that_runs(twelve: Path, tmp_path: Path) -> None:
    """One real 1-epoch run: every field set away from its default, by a flag or by --config (flags win)."""
    assert set(NOT_DEFAULT) == set(FIELDS), "give every field a value here"
    resolved = Finetune.for_data_size(12)
    for name, value in NOT_DEFAULT.items():
        assert value != getattr(resolved, name), f"{name}: pick a value other than its default"
    config = tmp_path / "ft.yaml"
    config.write_text("head_dropout: 0.3\naugment: trivial\n")  # augment: the --augment flag wins
    flags = {k: v for k, v in NOT_DEFAULT.items() if k not in ("head_dropout", "seed", "precision")}
    own = ["--seed", str(NOT_DEFAULT["seed"]), "--precision", NOT_DEFAULT["precision"]]  # train's own options
    out = tmp_path / "ft.safetensors"
    result = run(
        "train", twelve, "--method", "finetune", "--out", out, "--config", config, "--json", *own, *_flags(flags)
    )
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "ft-run" / "config.json").read_text())["finetune"]
    assert saved == NOT_DEFAULT
    assert json.loads(result.stdout)["epochs_run"] == 1
    history = [json.loads(line) for line in (tmp_path / "ft-run" / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [0, 1]


@pytest.mark.slow
def test_a_bad_flag_value_names_the_flag_before_any_work(twelve: Path, tmp_path: Path) -> None:
    out = tmp_path / "never.safetensors"
    result = run("train", twelve, "--method", "finetune", "--warmup-epochs", "-1", "--out", out)
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: The '--warmup-epochs' option must be a float in [0, inf). Got -1.0 instead."
    )
    assert not out.exists() and not (tmp_path / "never-run").exists()


@pytest.mark.slow
def test_a_bad_value_in_the_config_file_names_the_file(twelve: Path, tmp_path: Path) -> None:
    config = tmp_path / "ft.toml"
    config.write_text("lr = 'fast'\n")
    result = run("train", twelve, "--method", "finetune", "--config", config, "--out", tmp_path / "m.safetensors")
    assert result.exit_code == 2
    message = result.stderr.strip()
    assert message.startswith(f"error: {config}: The 'lr' parameter of finetune") and "'fast'" in message


@pytest.mark.slow
def test_probe_training_refuses_fine_tuning_flags(twelve: Path, tmp_path: Path) -> None:
    result = run("train", twelve, "--ema-decay", "0.9", "--train-bn", "--out", tmp_path / "m.safetensors")
    assert result.exit_code == 2
    message = result.stderr.strip()
    assert message.startswith("error: ") and message.endswith("only apply to --method finetune or scratch.")
    assert "--ema-decay" in message and "--train-bn" in message  # the flags as typed
