"""Fine-tuning says so and stops at once where validation cannot judge it against the probe (the probe misses
fewer than MIN_FIXES validation photos): the probe is the model, nothing is trained, and ``--always-finetune``
trains anyway."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from headstart.models.finetune.config import MIN_FIXES, Finetune

pytestmark = pytest.mark.slow


def test_the_threshold_is_the_fewest_fixes_a_sign_test_counts() -> None:
    assert 0.5**MIN_FIXES < 0.05 <= 0.5 ** (MIN_FIXES - 1)
    assert Finetune.for_data_size(100).skip_unjudged is True
    assert Finetune.for_data_size(100, method="scratch").skip_unjudged is False  # no probe to keep


def _train(data: Path, out: Path, *flags: str, cache: Path) -> dict:
    import os

    env = {**os.environ, "HEADSTART_CACHE_DIR": str(cache)}
    command = [sys.executable, "-m", "headstart", "train", str(data), "--backbone", "tf_efficientnet_lite0"]
    done = subprocess.run(
        [*command, *flags, "--out", str(out), "--json"], capture_output=True, text=True, env=env, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_unjudgeable_fine_tuning_keeps_the_probe_at_once_and_says_why(sample: Path, tmp_path: Path) -> None:
    from headstart.models.classifier import Classifier

    cache = tmp_path / "cache"
    probe = _train(sample / "train", tmp_path / "probe.safetensors", cache=cache)
    assert probe["val_accuracy"] * probe["n_val"] > probe["n_val"] - MIN_FIXES, "the sample's probe is near perfect"
    skipped = _train(sample / "train", tmp_path / "ft.safetensors", "--method", "finetune", cache=cache)
    assert "validation could not tell" in skipped["finetune_skipped"]
    assert f"fewer than the {MIN_FIXES}" in skipped["finetune_skipped"]
    assert skipped["epochs_run"] == 0 and skipped["best_epoch"] == 0 and not skipped["frozen_stages"]
    a, b = Classifier.load(tmp_path / "probe.safetensors"), Classifier.load(tmp_path / "ft.safetensors")
    np.testing.assert_array_equal(a.head_weight, b.head_weight)  # the probe's own head: nothing was trained
    assert not (tmp_path / "ft-run" / "curves.png").exists(), "no epochs, no curves"

    trained = _train(
        sample / "train",
        tmp_path / "always.safetensors",
        "--method",
        "finetune",
        "--always-finetune",
        "--epochs",
        "1",
        "--patience",
        "0",
        cache=cache,
    )
    assert "finetune_skipped" not in trained and trained["epochs_run"] == 1
