"""Fine-tuning: LP-FT on real photos, the training tricks' wiring, checkpoints and resume, options and config files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from headstart.models.finetune.config import FinetuneConfig
from headstart.models.finetune.parts import lr_factor
from headstart.workflows.training import train


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 breeds × 5 real photos: enough for a few optimiser steps in seconds."""
    src = Path(__file__).resolve().parents[2] / "src" / "headstart" / "sample_data" / "pets" / "train"
    root = tmp_path_factory.mktemp("tiny")
    for breed in ("Persian", "pug", "samoyed"):
        shutil.copytree(src / breed, root / breed)
    return root


# skip_unjudged off: a few photos never let validation judge a network against the probe, and these tests are
# about the training itself (tests/models/test_skip_unjudged.py tests the skip).
FAST = dict(epochs=2, batch_size=4, augment="light", patience=0, skip_unjudged=False)


def trainable_parameters(unfreeze: str) -> set[str]:
    """Names (inside the trunk) of the parameters fine-tuning trains for ``unfreeze``: timm's last K coarse groups."""
    from timm.models import group_parameters

    from headstart.features import load_backbone

    trunk = load_backbone("tf_efficientnet_lite0").model
    groups = group_parameters(trunk, trunk.group_matcher(coarse=True))
    names = list(groups)
    return {p for g in (names if unfreeze == "all" else names[-int(unfreeze) :]) for p in groups[g]}


def trunk_arrays(state: dict, prefix: str = "trunk.") -> dict:
    """numpy copies of a network state dict's trunk tensors, by their name inside the trunk."""
    return {k[len(prefix) :]: v.detach().float().numpy() for k, v in state.items() if k.startswith(prefix)}


@pytest.mark.slow
def test_finetune_writes_a_loadable_model_curves_and_metrics(tiny: Path, tmp_path: Path) -> None:
    import numpy as np
    import torch

    from headstart.features import cached_trunk_weights
    from headstart.models.classifier import Classifier

    result = train(
        tiny,
        backbone="tf_efficientnet_lite0",
        method="finetune",
        out=tmp_path / "ft.safetensors",
        finetune=FAST,
    )
    run = result.run_dir
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [0, 1, 2] and {"train_loss", "val_accuracy", "lr"} <= set(lines[1])
    assert lines[0]["train_loss"] is None, "epoch 0 is the starting point, scored before any step"
    assert (run / "curves.png").stat().st_size > 1000 and (run / "checkpoint.pt").is_file()
    config = json.loads((run / "config.json").read_text())
    assert config["finetune"]["epochs"] == 2 and config["method"] == "finetune"
    assert json.loads((run / "metrics.json").read_text())["history"] == lines

    model = Classifier.load(result.model_path)
    assert model.metadata["method"] == "finetune"
    # a changed trunk has its own identity (its features never mix with the pretrained one's in the cache); when
    # validation keeps epoch 0, the probe (on the pretrained trunk) is the model
    assert model.spec.weights_id.startswith("trunk-sha256:") == (result.metrics["best_epoch"] > 0)
    assert result.metrics["best_epoch"] in (0, 1, 2) and result.metrics["probe_val_accuracy"] is not None
    assert result.metrics["val_accuracy"] >= lines[0]["val_accuracy"], "the best epoch is never worse than the start"
    pred = model.predict([sorted((tiny / "pug").glob("*.jpg"))[0]], top_k=1).predictions[0]
    assert pred.labels[0] in {"Persian", "pug", "samoyed"}

    # The weights really trained: after the last epoch every convolution of the unfrozen stages moved away from
    # the pretrained weights, those of the frozen stages did not, nor did any BatchNorm statistics.
    _, pretrained = cached_trunk_weights("tf_efficientnet_lite0")
    last = torch.load(run / "checkpoint.pt", weights_only=True)["network"]
    trained = trunk_arrays(last)
    convolutions = [k for k in pretrained if k.endswith(".weight") and pretrained[k].ndim == 4]
    unfrozen = trainable_parameters(config["finetune"]["unfreeze"])
    assert len(convolutions) > 30 and any(k in unfrozen for k in convolutions)
    moved = [k for k in convolutions if not np.array_equal(trained[k], pretrained[k])]
    assert moved == [k for k in convolutions if k in unfrozen], "exactly the unfrozen convolutions changed"
    statistics = [k for k in pretrained if k.endswith("running_mean")]
    for k in statistics:
        np.testing.assert_array_equal(trained[k], pretrained[k], err_msg=k)
    saved_trunk_is_pretrained = all(np.array_equal(model.trunk[k], pretrained[k]) for k in convolutions)
    assert saved_trunk_is_pretrained == (result.metrics["best_epoch"] == 0), "epoch 0 kept: the probe is the model"
    refit = result.metrics["refit"]
    trained = result.metrics["epochs_run"] if result.metrics["best_epoch"] > 0 else 0  # (as long as validation trained)
    assert result.metrics["refit_on_all"] and refit["photos"] == 15 and refit["epochs"] == trained
    assert config["refit"]["on_all_photos"] and "15 photos" in config["refit"]["what"]
    assert all(r["seconds"] > 0 for r in lines[1:]), "each epoch reports its seconds"


@pytest.mark.slow
def test_the_refit_runs_the_chosen_epochs_of_the_same_schedule_on_all_photos(tiny: Path, tmp_path: Path) -> None:
    from headstart.data import load_dataset
    from headstart.features import load_backbone
    from headstart.models.finetune.config import Finetune
    from headstart.models.finetune.loop import run_finetune
    from headstart.models.finetune.parts import build_network

    data = load_dataset(tiny)
    backbone = load_backbone("tf_efficientnet_lite0")
    config = Finetune.for_data_size(15, epochs=4, batch_size=4, unfreeze="2", patience=0)
    result = run_finetune(
        build_network(backbone, 3, 0.2),
        data,
        None,
        data.classes,
        backbone.spec.data_config,
        config,
        tmp_path,
        stop_after=2,
        name="refit-",
    )
    assert [r.epoch for r in result.history] == [1, 2] and all(r.val_accuracy is None for r in result.history)
    assert result.history[-1].lr > 0.3 * config.lr, "stopped half way through the 4-epoch schedule, not at its end"
    assert len((tmp_path / "refit-metrics.jsonl").read_text().splitlines()) == 2
    frozen = result.frozen
    assert frozen["cached"] and frozen["up_to"] == "blocks.6" and frozen["views"] == 2
    assert frozen["photo_views"] <= 2 * 15, "each photo's views through the frozen stages once (or fewer: shared)"


@pytest.mark.slow
def test_the_refit_reuses_the_validation_runs_views_and_a_later_process_reads_them_all(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refit on all photos computes only the validation photos' augmented views (the training photos' were
    computed by the validation run); after the process's banks are gone, the same refit reads every view from the
    cache folder. Its line in the output says so."""
    from headstart.data import load_dataset
    from headstart.features import load_backbone
    from headstart.models.finetune.config import Finetune
    from headstart.models.finetune.fit import _refit_line
    from headstart.models.finetune.frozen import clear_banks
    from headstart.models.finetune.loop import run_finetune
    from headstart.models.finetune.parts import build_network

    monkeypatch.setenv("HEADSTART_CACHE_DIR", str(tmp_path / "cache"))
    clear_banks()
    data = load_dataset(tiny)
    train_part, val_part = data.subset(range(0, 15, 3)), data.subset([i for i in range(15) if i % 3])
    backbone = load_backbone("tf_efficientnet_lite0")
    config = Finetune.for_data_size(15, epochs=1, batch_size=4, unfreeze="2", patience=0)
    common = dict(spec=backbone.spec, device="cpu")

    def fit(train, val, **options):
        network = build_network(backbone, 3, 0.2)
        return run_finetune(network, train, val, data.classes, backbone.spec.data_config, config, **common, **options)

    validation = fit(train_part, val_part).frozen
    assert (validation["photo_views"], validation["reused"]) == (5 + 2 * 10, 0)
    refit = fit(data, None, stop_after=1).frozen
    assert (refit["photo_views"], refit["reused"], refit["read_from_cache"]) == (10, 5, 0)
    line = _refit_line({"photos": 15, "epochs": 1, "seconds": 2.04, "frozen_stages": refit})
    assert line == "refit on all 15 photos: 1 epoch(s), 2.0 s (frozen stages: 10 new views, 5 reused)"
    clear_banks()  # (as a new process)
    later = fit(data, None, stop_after=1).frozen
    assert (later["photo_views"], later["read_from_cache"], later["reused"]) == (0, 15, 0)
    clear_banks()


@pytest.mark.slow
def test_a_run_that_stopped_early_resumes_to_nothing_left_and_says_why(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from headstart.data import Dataset, load_dataset
    from headstart.features import load_backbone
    from headstart.models.finetune.config import Finetune
    from headstart.models.finetune.loop import run_finetune
    from headstart.models.finetune.parts import build_network

    data = load_dataset(tiny)
    val = [next(s for s in data.samples if s.label == c) for c in data.classes]  # one photo a class
    parts = [Dataset([s for s in data.samples if s not in val], data.classes, data.root, data.kind)]
    parts.append(Dataset(val, data.classes, data.root, data.kind))
    backbone = load_backbone("tf_efficientnet_lite0")
    # a learning rate too small to move the loss: no epoch improves on the start, so patience 1 stops after epoch 1
    config = Finetune.for_data_size(15, epochs=4, batch_size=4, unfreeze="2", patience=1, lr=1e-12, head_start="probe")

    def run(resume: bool):
        network = build_network(backbone, 3, 0.2)
        return run_finetune(
            network, *parts, data.classes, backbone.spec.data_config, config, tmp_path, resume=resume, progress=True
        )

    first = run(False)
    said = capsys.readouterr().err
    assert [r.epoch for r in first.history] == [0, 1] and first.stopped_early
    assert "stopped after epoch 1 of 4: validation loss did not improve for 1 epoch (lowest" in said
    assert first.stopping["monitor"] == "validation loss" and first.stopping["kept_epoch"] == first.best_epoch
    # the frozen stages and the trained ones, by the same names (not "up to blocks.6 ... train blocks.6")
    assert "conv_stem, bn1, blocks.0–blocks.5 (" in said and "trained each epoch: blocks.6, conv_head, bn2" in said
    progress = json.loads((tmp_path / "checkpoint.json").read_text())
    assert progress == {"epochs_done": 1, "epochs": 4, "stopped_after": 1}

    again = run(True)
    said = capsys.readouterr().err
    assert [r.epoch for r in again.history] == [0, 1], "no epoch trained after the run had stopped"
    assert again.frozen.get("resumed") and "photo views" not in said, "nor the frozen stages computed again"
    assert "it had stopped after epoch 1 of 4" in said and "no epoch left to train" in said
    assert again.best_epoch == first.best_epoch and again.stopping == first.stopping
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.slow
def test_scratch_trains_the_same_network_from_random_weights(tiny: Path, tmp_path: Path) -> None:
    import numpy as np
    import torch

    from headstart.features import cached_trunk_weights, load_backbone

    result = train(
        tiny,
        backbone="tf_efficientnet_lite0",
        method="scratch",
        out=tmp_path / "s.safetensors",
        finetune={**FAST, "epochs": 1},
    )
    torch.manual_seed(0)  # scratch seeds its random initialisation: the same seed, the same starting weights
    initial = {
        k: v.numpy() for k, v in load_backbone("tf_efficientnet_lite0", "none").state_dict_without_head().items()
    }
    _, pretrained = cached_trunk_weights("tf_efficientnet_lite0")
    trained = trunk_arrays(torch.load(result.run_dir / "checkpoint.pt", weights_only=True)["network"])
    weights = [k for k in initial if k.endswith(".weight") and initial[k].ndim == 4]
    assert all(not np.array_equal(trained[k], initial[k]) for k in weights), "every layer trains from scratch"
    assert all(not np.allclose(result.model.trunk[k], pretrained[k]) for k in weights), "nothing pretrained in it"
    # the saved network is the refit on all photos (its own checkpoint), or the random start when epoch 0 won
    refit = result.run_dir / "refit-checkpoint.pt"
    assert refit.is_file() == (result.metrics["best_epoch"] > 0)
    best = (
        initial if result.metrics["best_epoch"] == 0 else trunk_arrays(torch.load(refit, weights_only=True)["network"])
    )
    for k in weights:
        np.testing.assert_allclose(result.model.trunk[k], best[k], err_msg=k)


def test_options_are_validated_in_sklearn_words() -> None:
    with pytest.raises(ValueError, match="The 'augment' parameter of finetune must be one of"):
        FinetuneConfig().replace(augment="heavy")
    with pytest.raises(ValueError, match="'unfreeze' parameter"):
        FinetuneConfig().replace(unfreeze="some")
    with pytest.raises(ValueError, match="Unknown fine-tuning option"):
        FinetuneConfig().replace(dropout=0.5)


def test_defaults_follow_the_data_size() -> None:
    small, large = FinetuneConfig.for_data_size(300), FinetuneConfig.for_data_size(50_000)
    assert small.augment == "light" and large.augment == "randaugment" and small.epochs > large.epochs
    assert (small.head_start, small.mirror, small.views) == ("zero", "auto", "light")
    assert FinetuneConfig.for_data_size(300, lr=1e-4).lr == 1e-4
    assert FinetuneConfig.for_data_size(300, mirror="off").views == "light/unmirrored"
    assert FinetuneConfig.for_data_size(300, method="scratch").mirror == "on", "no probe to ask"


def test_what_a_user_leaves_out_is_chosen_by_data_size() -> None:
    from dataclasses import asdict

    from headstart.models.finetune.config import Finetune

    assert FinetuneConfig is Finetune
    ft = Finetune(epochs=5, lr=1e-4)  # stores only: every other field is None = "by data size"
    assert ft.set_fields() == {"epochs": 5, "lr": 1e-4} and not ft.is_resolved
    small, large = ft.resolved(300), ft.resolved(50_000)
    assert small.is_resolved and (small.epochs, small.lr, large.epochs, large.lr) == (5, 1e-4, 5, 1e-4)
    assert (small.augment, small.freeze_bn, large.augment, large.freeze_bn) == ("light", True, "randaugment", False)
    assert asdict(Finetune.for_data_size(300, epochs=5, lr=1e-4)) == asdict(small)
    scratch = Finetune(lr=3e-4).resolved(300, method="scratch")
    assert (scratch.lr, scratch.layer_decay, scratch.freeze_bn, scratch.patience) == (3e-4, 1.0, False, 0)
    assert Finetune(unfreeze=2).validated().unfreeze == "2"
    with pytest.raises(ValueError, match=r"The 'ema_decay' parameter of finetune must be a float in \(0, 1\)"):
        Finetune(ema_decay=1.5).resolved(300)


def test_schedule_warms_up_then_decays() -> None:
    values = [lr_factor(s, 100, 10, "cosine") for s in range(100)]
    assert values[0] < values[9] == 1.0 and values[50] < 1.0 and values[-1] < 0.01


# The CLI's flags and --config files: tests/cli/test_cli_finetune_flags.py (one real run checks every field).


@pytest.mark.slow
def test_two_cpu_processes_with_torchrun(tiny: Path, tmp_path: Path) -> None:
    """DistributedDataParallel over gloo: both processes train, rank 0 alone writes one loadable model."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HEADSTART_CACHE_DIR": str(tmp_path / "cache")}
    out = tmp_path / "ddp.safetensors"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "headstart",
            "train",
            str(tiny),
            "--method",
            "finetune",
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--patience",
            "0",
            "--always-finetune",
            "--out",
            str(out),
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout[proc.stdout.index("{") :])  # rank 0 alone prints
    assert report["epochs_run"] == 2 and proc.stdout.count('"model"') == 1
    lines = (tmp_path / "ddp-run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3, "epoch 0 and one line per epoch, written once (rank 0), not once per process"
    from headstart.models.classifier import Classifier

    assert Classifier.load(out).classes == ["Persian", "pug", "samoyed"]


@pytest.mark.slow
def test_lr_find_suggests_a_rate_and_draws_the_curve(tiny: Path, tmp_path: Path) -> None:
    from headstart.workflows.experiments import find_learning_rate

    result = find_learning_rate(tiny, out=tmp_path / "lr.png", steps=8, finetune={"batch_size": 4})
    assert 1e-7 <= result.suggestion <= 1.0 and len(result.lrs) == len(result.losses) >= 3
    assert result.lrs == sorted(result.lrs) and (tmp_path / "lr.png").stat().st_size > 1000
    assert result.stopped in ("done", "loss diverged") and result.steps == 8 and result.seconds_per_step > 0
    assert (
        result.why == "all 8 steps"
        if result.stopped == "done"
        else result.why.startswith(f"stopped at step {len(result.lrs)} of 8: the loss exceeded 4x its minimum")
    )
    assert result.to_dict()["frozen_stages"]["cached"] == (result.to_dict()["frozen_stages"].get("up_to") is not None)
    short = find_learning_rate(tiny, out=tmp_path / "lr2.png", steps=8, budget_s=1e-9, finetune={"batch_size": 4})
    assert short.stopped == "time budget" and len(short.lrs) == 1
    assert short.why.startswith("stopped at step 1 of 8: its time budget ran out")


@pytest.mark.slow
def test_sweep_compares_variants_in_a_table_and_a_plot(tiny: Path, tmp_path: Path) -> None:
    from headstart._io import cache_dir
    from headstart.cli.training import parse_settings
    from headstart.features.housekeeping import ACTIVATIONS
    from headstart.models.finetune.frozen import clear_banks
    from headstart.workflows.experiments import sweep

    # (an earlier test may hold these photos' activations, in the process or the cache folder: the first variant
    # computes)
    clear_banks()
    shutil.rmtree(cache_dir() / ACTIVATIONS, ignore_errors=True)
    settings = parse_settings(["head_dropout=0,0.5"])
    assert settings == {"head_dropout": [0, 0.5]}
    rows = sweep(tiny, settings, out_dir=tmp_path / "sw", base_options={"epochs": 1, "batch_size": 4, "patience": 0})
    assert [r["head_dropout"] for r in rows] == [0, 0.5]
    # the frozen stages run once for the sweep (in the first variant's fit): charged to no variant, said apart
    assert rows[0]["shared_seconds"] > 0 and rows[1]["shared_seconds"] == 0
    assert "frozen stages' pass, shared by all" in (tmp_path / "sw" / "results.md").read_text()
    assert (tmp_path / "sw" / "comparison.png").is_file() and "head_dropout=0.5" in (
        tmp_path / "sw" / "results.md"
    ).read_text()
    with pytest.raises(ValueError, match="Unknown fine-tuning option"):
        sweep(tiny, {"dropout": [0.1]}, out_dir=tmp_path / "bad")
    with pytest.raises(ValueError, match="--set needs NAME=V1,V2"):
        parse_settings(["head_dropout"])


@pytest.mark.slow
def test_frozen_batchnorm_keeps_its_pretrained_statistics(lite0) -> None:
    import torch

    from headstart.features.backbones import load_backbone
    from headstart.models.finetune.parts import build_network, freeze_batchnorm

    network = build_network(load_backbone("tf_efficientnet_lite0"), 3, 0.2)
    before = network.trunk.bn1.running_mean.clone()
    network.train()
    freeze_batchnorm(network)
    network(torch.randn(2, 3, 224, 224)).sum().backward()
    torch.testing.assert_close(network.trunk.bn1.running_mean, before)
    assert network.dropout.training, "the rest still trains (dropout active)"


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_finished_epoch(tiny: Path, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "HEADSTART_CACHE_DIR": str(tmp_path / "cache")}
    out, run = tmp_path / "k.safetensors", tmp_path / "k-run"
    cmd = [
        sys.executable,
        "-m",
        "headstart",
        "train",
        str(tiny),
        "--method",
        "finetune",
        "--epochs",
        "3",
        "--batch-size",
        "4",
        "--patience",
        "0",
        "--always-finetune",
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (run / "checkpoint.pt").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # as hard as a crash: no clean-up runs
    proc.wait()
    assert (run / "checkpoint.pt").exists() and not out.exists(), "killed after its first epoch, before the end"
    done = subprocess.run([*cmd, "--resume", str(run)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2, 3], epochs
    from headstart.models.classifier import Classifier

    assert Classifier.load(out).classes == ["Persian", "pug", "samoyed"]


def test_a_run_folders_config_is_a_config_file(tmp_path: Path) -> None:
    from headstart.models.finetune.config import load_config_file

    saved = tmp_path / "config.json"
    saved.write_text(json.dumps({"data": "x", "method": "finetune", "finetune": {"epochs": 3, "lr": 5e-5}}))
    assert load_config_file(saved) == {"epochs": 3, "lr": 5e-5}
    toml = tmp_path / "ft.toml"
    toml.write_text("epochs = 2\naugment = 'trivial'\n")
    assert FinetuneConfig().replace(**load_config_file(toml)).augment == "trivial"


def test_yaml_numbers_in_exponent_form_are_numbers(tmp_path: Path) -> None:
    from headstart.models.finetune.config import load_config_file

    cfg = tmp_path / "ft.yaml"
    cfg.write_text("lr: 1e-4\nepochs: 2\n")  # YAML 1.1 reads 1e-4 as text
    assert FinetuneConfig().replace(**load_config_file(cfg)).lr == 1e-4
    with pytest.raises(ValueError, match="'lr' parameter"):
        FinetuneConfig().replace(lr="fast")


@pytest.mark.slow
def test_scratch_defaults_train_everything_with_its_own_statistics(tiny: Path, tmp_path: Path) -> None:
    result = train(
        tiny,
        backbone="tf_efficientnet_lite0",
        method="scratch",
        out=tmp_path / "s2.safetensors",
        finetune={"epochs": 1, "batch_size": 4},
    )
    saved = json.loads((result.run_dir / "config.json").read_text())["finetune"]
    assert (saved["freeze_bn"], saved["layer_decay"], saved["unfreeze"], saved["patience"]) == (False, 1.0, "all", 0)


@pytest.mark.parametrize("augment", ["none", "light", "trivial", "randaugment"])
def test_every_augmentation_policy_builds_and_runs(augment: str, sample: Path) -> None:
    from PIL import Image

    from headstart.models.finetune.parts import photo_transform

    config = {
        "input_size": [3, 224, 224],
        "interpolation": "bicubic",
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        "crop_pct": 0.875,
        "crop_mode": "center",
    }
    photo = Image.open(sorted((sample / "test" / "pug").glob("*.jpg"))[0]).convert("RGB")
    assert tuple(photo_transform(config, augment, training=True)(photo).shape) == (3, 224, 224)


@pytest.mark.slow
def test_head_dropout_drops_features_to_the_probes_mean_not_to_zero(lite0) -> None:
    """The probe's bias carries -coef @ mean: dropping features to zero would swing its logits by far more than the
    class margins (a batch right in eval mode was wrong in training mode); dropped to the mean they keep their offset."""
    import numpy as np
    import torch

    from headstart.models.finetune.parts import build_network, start_from_probe

    network = build_network(lite0, 2, 0.5)
    width = network.head.in_features
    centre = np.full(width, 3.0, dtype=np.float32)
    start_from_probe(network, np.zeros((2, width)), np.zeros(2), 1.0, centre)
    torch.manual_seed(0)
    x = torch.full((4, width), 3.0) + 0.01 * torch.randn(4, width)
    network.dropout.train()
    out = network.dropout(x)
    dropped = torch.isclose(out, torch.tensor(3.0))
    kept = torch.isclose(out, 3.0 + (x - 3.0) / 0.5)
    assert bool((dropped | kept).all()) and 0.3 < dropped.float().mean() < 0.7
    network.dropout.eval()
    assert torch.equal(network.dropout(x), x)


@pytest.mark.slow
def test_a_head_from_zero_is_scored_as_given_then_learns_with_the_trunk(tiny: Path) -> None:
    """Epoch 0 scores the head it is given (the probe's, in a fit) and is neither kept nor watched: a head trained
    from zero starts far above the probe's loss, so its epochs race each other; the probe is judged after."""
    import numpy as np
    import torch

    from headstart.data import Dataset, load_dataset
    from headstart.features import load_backbone
    from headstart.models.finetune.config import Finetune
    from headstart.models.finetune.loop import run_finetune
    from headstart.models.finetune.parts import build_network

    data = load_dataset(tiny)
    val = [next(s for s in data.samples if s.label == c) for c in data.classes]
    train_part = Dataset([s for s in data.samples if s not in val], data.classes, data.root, data.kind)
    backbone = load_backbone("tf_efficientnet_lite0")
    config = Finetune.for_data_size(15, epochs=2, batch_size=4, unfreeze="2", patience=1, lr=1e-3)
    network = build_network(backbone, 3, 0.2)
    torch.manual_seed(0)
    torch.nn.init.normal_(network.head.weight, std=1.0)  # a head that is not zero (as a probe's is not)
    given = network.head.weight.detach().clone()
    network.eval()
    result = run_finetune(
        network, train_part, Dataset(val, data.classes, data.root, data.kind), data.classes,
        backbone.spec.data_config, config, zero_head=True,
    )  # fmt: skip
    assert result.start_logits is not None and result.start_logits.shape == (3, 3)
    assert result.best_epoch >= 1 and result.stopping["lowest_loss_epoch"] >= 1, "epoch 0 is not kept or watched"
    head = result.network.head.weight.detach()
    assert head.abs().sum() > 0 and not torch.allclose(head, given), "the head learnt from zero"
    assert head.abs().max() < given.abs().max() / 10, "(two small epochs from zero stay far below the given head)"
    assert np.isfinite(result.start_logits).all()


@pytest.mark.parametrize("policy", ["light", "trivial", "randaugment"])
def test_unmirrored_views_keep_left_and_right(policy: str) -> None:
    """A photo bright on the left stays bright on the left in every unmirrored view; mirrored views swap sides.
    (TrivialAugment and RandAugment also invert and translate photos: for them, no mirroring step is drawn.)"""
    import numpy as np
    from PIL import Image

    from headstart.models.finetune.parts import photo_transform

    config = {"input_size": [3, 64, 64], "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3}
    pixels = np.zeros((96, 96, 3), dtype=np.uint8)
    pixels[:, :48] = 255
    photo = Image.fromarray(pixels)

    def sides(name: str) -> list[float]:
        views = [photo_transform(config, name, training=True)(photo).mean(0).numpy() for _ in range(40)]
        return [float(v[:, :32].mean() - v[:, 32:].mean()) for v in views]

    if policy == "light":
        assert min(sides(f"{policy}/unmirrored")) >= -1e-6
        assert min(sides(policy)) < -0.1, "(mirrored views do swap sides)"
    steps = repr(photo_transform(config, f"{policy}/unmirrored", training=True).transform)
    assert "HorizontalFlip" not in steps and "HorizontalFlip" in repr(photo_transform(config, policy, True).transform)


@pytest.mark.slow
def test_the_mirror_check_tells_a_class_that_mirroring_changes(tmp_path: Path) -> None:
    """Arrows pointing left or right: a mirror image is the other class, so the check turns mirror images off; the
    same photos labelled by colour keep them."""
    import numpy as np
    from PIL import Image, ImageDraw

    from headstart.features import extract_features
    from headstart.features.cache import FeatureCache
    from headstart.models.finetune.views import mirror_check
    from headstart.models.probe_fit import fit_probe

    rng = np.random.default_rng(0)
    paths, direction, colour = [], [], []
    for i in range(48):
        left, red = i % 2 == 0, (i // 2) % 2 == 0
        image = Image.new("RGB", (128, 128), (255, 255, 255))
        y, size = int(rng.integers(40, 88)), int(rng.integers(30, 45))
        x = int(rng.integers(20, 40)) if left else int(rng.integers(88, 108))
        tip = [(x, y), (x + size if left else x - size, y - size // 2), (x + size if left else x - size, y + size // 2)]
        ImageDraw.Draw(image).polygon(tip, fill=(200, 30, 30) if red else (30, 30, 200))
        path = tmp_path / f"{i}.png"
        image.save(path)
        paths.append(str(path))
        direction.append("left" if left else "right")
        colour.append("red" if red else "blue")
    cache = FeatureCache(tmp_path / "cache")
    features = extract_features(paths, "tf_efficientnet_lite0", cache=cache).features
    train, val = slice(0, 32), slice(32, 48)
    for labels, mirrored in ((np.array(direction), False), (np.array(colour), True)):
        probe = fit_probe(features[train], labels[train], random_state=0)
        check = mirror_check("tf_efficientnet_lite0", probe, paths[val], labels[val], cache=cache)
        assert check["mirror"] is mirrored, check
        assert check["photos"] == 16 and (check["mirror_accuracy"] < 0.5) is not mirrored
