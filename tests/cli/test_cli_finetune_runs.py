"""Runs of a network as a user meets them: Ctrl-C then ``--resume`` (into the run's own model file, never another),
``headstart runs``, and ``--method scratch`` saying what it saved."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from headstart.models.classifier import Classifier

SRC = Path(__file__).resolve().parents[2] / "src"
# (the command runs in another folder: this checkout's headstart, whatever PYTHONPATH said relative to here)
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
}


@pytest.fixture()
def tiny(tmp_path: Path, sample: Path) -> Path:
    """3 breeds × 5 real photos."""
    for breed in ("Persian", "pug", "samoyed"):
        shutil.copytree(sample / "train" / breed, tmp_path / "tiny" / breed)
    return tmp_path / "tiny"


@pytest.mark.slow
def test_an_interrupted_fine_tune_resumes_into_its_own_model_file_and_nothing_else(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli
) -> None:
    monkeypatch.chdir(tmp_path)
    earlier = tmp_path / "model.safetensors"
    earlier.write_bytes(b"an earlier model the user keeps")  # the default --out: never touched by a resumed run
    options = [
        "--method",
        "finetune",
        "-b",
        "tf_efficientnet_lite0",
        "--epochs",
        "6",
        "--batch-size",
        "4",
        "--always-finetune",
    ]
    started = [*options, "--patience", "0", "--out", "ftint.safetensors"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "headstart", "train", str(tiny), *started],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    folder = tmp_path / "ftint-run"
    deadline = time.monotonic() + 300
    while not (folder / "checkpoint.pt").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # Ctrl-C after its first epoch
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert not (tmp_path / "ftint.safetensors").exists()
    config = (folder / "config.json").read_bytes()
    assert json.loads(config)["model"] == "../ftint.safetensors", "the run records its own model file"

    listed = cli("runs", "--json")
    (row,) = json.loads(listed.stdout)["runs"]
    assert row["folder"] == "ftint-run" and row["method"] == "finetune" and row["data"] == str(tiny)
    assert row["state"].startswith("interrupted") and row["progress"].endswith("/6 epochs") and row["resumable"]

    refused = {
        "nosuchrun": cli("train", tiny, "--resume", "nosuchrun"),
        "another --out": cli("train", tiny, "--resume", folder, "--out", "other.safetensors"),
        "another method and options": cli("train", tiny, "--resume", folder, "--method", "scratch", "--epochs", "8"),
        "other data": cli("train", shutil.copytree(tiny, tmp_path / "other"), "--resume", folder),
        "a fresh run over it": cli("train", tiny, *started),
    }
    for why, result in refused.items():
        assert result.exit_code == 2, (why, result.stdout, result.stderr)
    assert "nosuchrun: no such folder" in refused["nosuchrun"].stderr
    assert "--out: ftint.safetensors in the run, other.safetensors here" in refused["another --out"].stderr
    said = refused["another method and options"].stderr
    assert 'method: "finetune" in the run, "scratch" here' in said and "epochs: 6 in the run, 8 here" in said
    assert f"data: {tiny} in the run, {tmp_path / 'other'} here" in refused["other data"].stderr
    assert "--resume ftint-run" in refused["a fresh run over it"].stderr
    assert (folder / "config.json").read_bytes() == config, "a refused run leaves the run folder as it was"
    assert not (tmp_path / "other.safetensors").exists() and not (tmp_path / "nosuchrun").exists()

    resumed = cli("train", tiny, "--resume", folder)  # nothing else named: the run's own settings and model file
    assert resumed.exit_code == 0, resumed.stderr[-2000:]
    assert "model: ftint.safetensors" in resumed.stdout
    assert Classifier.load(tmp_path / "ftint.safetensors").metadata["method"] == "finetune"
    assert earlier.read_bytes() == b"an earlier model the user keeps"
    epochs = [json.loads(line)["epoch"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(7)), "the epochs the first run finished are kept, the rest trained"

    again = cli("train", tiny, "--resume", folder)
    assert again.exit_code == 0 and "finished: its model is ftint.safetensors; nothing to resume" in again.stdout
    assert json.loads(cli("runs", "--json").stdout)["runs"][0]["state"] == "finished"


@pytest.mark.slow
def test_scratch_reports_the_random_network_it_saved(sample: Path, tmp_path: Path, cli) -> None:
    """12 breeds from random weights, one epoch: the report and evaluate of the saved file both say chance-level,
    with no probe in the words (there is none for a random network) and no pretrained comparison of backbones."""
    out = tmp_path / "scratch.safetensors"
    # The mirror views cached (as an earlier `extract --flip-average` leaves them): a pretrained probe's CV must not
    # decide mirror averaging for a random network either.
    own = ("--cache-dir", tmp_path / "cache")  # (the mirror views stay out of the other tests' cache)
    mirrored = cli("extract", sample / "train", "-b", "tf_efficientnet_lite0", "--flip-average", *own)
    assert mirrored.exit_code == 0, mirrored.stderr[-2000:]
    auto = "auto:tf_efficientnet_lite0,tf_efficientnet_lite1"  # (scratch takes the first; lite0 trains fastest)
    trained = cli("train", sample / "train", "--method", "scratch", "-b", auto, "--epochs", "1", "--out", out, *own)
    assert trained.exit_code == 0, trained.stderr[-2000:]
    said = trained.stdout
    assert "probe" not in said and "auto;" not in said, said
    assert "kept epoch 1 of 1, trained from random weights; chance: 0.083" in said
    assert "auto from scratch: its first candidate" in said and "from random weights again on all 60 photos" in said
    printed = float(said.split("validation accuracy ")[1].split()[0])

    evaluated = cli("evaluate", out, sample / "test", "--json", "--out", tmp_path / "eval", "--engine", "torch")
    assert evaluated.exit_code == 0, evaluated.stderr[-2000:]
    measured = json.loads(evaluated.stdout)["accuracy"]
    model = Classifier.load(out)
    assert model.metadata["method"] == "scratch" and model.spec.name == "tf_efficientnet_lite0"
    # both near chance (1/12), where the pretrained probe this run used to report scores about 0.9
    assert printed <= 0.34 and measured <= 0.34, (printed, measured)
