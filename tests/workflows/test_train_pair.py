"""The run folder and the model file of one `train` appear together or not at all: two trains to one --out leave one
run's pair (never one run's model beside the other's run folder), and a train that fails on a full disk leaves the
earlier pair as it was, with one line naming the path and exit 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from headstart.models.classifier import Classifier

pytestmark = pytest.mark.slow  # every test here runs a real backbone

SAMPLE_TRAIN = Path(__file__).resolve().parents[2] / "src" / "headstart" / "sample_data" / "pets" / "train"


def _train(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    args = ["train", str(SAMPLE_TRAIN), "--backbone", "tf_efficientnet_lite0", "--out", str(out), *extra]
    return subprocess.Popen(
        [sys.executable, "-m", "headstart", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _pair(out: Path) -> tuple[dict, dict]:
    config = json.loads((out.with_name(out.stem + "-run") / "config.json").read_text())
    return config, Classifier.load(out).metadata


def test_two_trains_to_one_out_leave_one_runs_pair(sample_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "pets.safetensors"  # (features cached by sample_model: each train takes seconds)
    for round_ in range(2):
        procs = [
            _train(out, "--seed", str(seed), "--val-fraction", str(fraction))
            for seed, fraction in ((1, 0.2), (2, 0.25))
        ]
        for proc in procs:
            _, stderr = proc.communicate(timeout=600)
            assert proc.returncode == 0, stderr
        config, metadata = _pair(out)
        estimator = metadata["estimator"]
        assert config["run_id"] == metadata["run_id"], f"round {round_}: the model file is not its run folder's"
        assert (config["seed"], config["val_fraction"]) == (estimator["seed"], estimator["val_fraction"]), round_
        metrics = json.loads((out.with_name("pets-run") / "metrics.json").read_text())
        assert metrics["n_val"] == metadata["metrics"]["n_val"], f"round {round_}: metrics.json of another run"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert not leftovers, f"temporaries left: {leftovers}"


@pytest.fixture()
def small_disk(tmp_path: Path):
    """A tmpfs holding a copy of an earlier model and its run folder, with about 1 MB to spare (needs root)."""

    def make(model: Path) -> Path:
        size = model.stat().st_size + sum(p.stat().st_size for p in model.with_name(model.stem + "-run").iterdir())
        mount = tmp_path / "disk"
        mount.mkdir()
        options = f"size={size + (1 << 20)}"
        if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True).returncode:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        mounted.append(mount)
        shutil.copy2(model, mount / "pets.safetensors")
        shutil.copytree(model.with_name(model.stem + "-run"), mount / "pets-run")
        return mount / "pets.safetensors"

    mounted: list[Path] = []
    yield make
    for mount in mounted:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_train_that_fills_the_disk_leaves_the_earlier_pair(sample_model: Path, small_disk) -> None:
    out = small_disk(sample_model)
    run = out.with_name("pets-run")
    before = {p.name: p.read_bytes() for p in [out, *run.iterdir()]}
    proc = _train(out, "--seed", "3")
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 2, f"exit {proc.returncode}: {stderr}"
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and str(out.parent) in lines[0] and "Traceback" not in stderr, stderr
    assert "no space left" in lines[0] and str(out) in lines[0], lines
    after = {p.name: p.read_bytes() for p in [out, *run.iterdir()]}
    assert after == before, "the earlier model file or its run folder changed"
    assert not [p.name for p in out.parent.iterdir() if p.name.endswith(".tmp")], "temporaries were left"
