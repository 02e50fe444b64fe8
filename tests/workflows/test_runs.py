"""A network run's folder read back (workflows/runs.py): --resume's one rule, what counts as an interrupted run, and
the model file found through the folder from anywhere. Folders written as `train` writes them when a run starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from headstart.workflows.runs import (
    NothingToResume,
    ResumeError,
    check_fresh_start,
    describe_run,
    forget_checkpoints,
    list_runs,
    resume_request,
    start_run,
)

ASKED = {
    "data": "/photos/pets",
    "split": "all",
    "method": "finetune",
    "backbone": "auto",
    "weights": None,
    "val_fraction": 0.2,
    "seed": 0,
    "refit": True,
    "precision": "auto",
    "flip_average": None,
    "finetune": {"epochs": 6, "patience": 0},
}


@pytest.fixture()
def started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``models/ft.safetensors``'s run, started from tmp_path, one epoch of six done."""
    monkeypatch.chdir(tmp_path)
    folder = Path("models/ft-run")
    start_run(folder, {**ASKED, "out": "models/ft.safetensors"})
    (folder / "checkpoint.pt").write_bytes(b"tensors")
    (folder / "checkpoint.json").write_text(json.dumps({"epochs_done": 1, "epochs": 6, "stopped_after": None}))
    return folder


def test_what_is_left_out_comes_from_the_run_and_its_model_is_found_from_anywhere(
    started: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = resume_request(started, {"data": Path("/photos/pets")})
    assert asked["out"] == "models/ft.safetensors" and asked["finetune"] == {"epochs": 6, "patience": 0}
    monkeypatch.chdir(tmp_path / "models")  # the same run, resumed from inside models/
    assert resume_request("ft-run", {"out": "ft.safetensors"})["out"] == "ft.safetensors"


def test_every_difference_is_named_at_once_and_nothing_is_written(started: Path) -> None:
    before = (started / "config.json").read_bytes()
    given = {
        "data": Path("/photos/cats"),
        "method": "scratch",
        "finetune": {"epochs": 8, "lr": 1e-3},
        "out": "model.safetensors",
        "seed": 0,  # the same as the run's: no difference
    }
    with pytest.raises(ResumeError) as refused:
        resume_request(started, given)
    said = str(refused.value)
    for part in (
        "data: /photos/pets in the run, /photos/cats here",
        'method: "finetune" in the run, "scratch" here',
        "epochs: 6 in the run, 8 here",
        "lr: chosen by the data size in the run, 0.001 here",
        "--out: models/ft.safetensors in the run, model.safetensors here",
    ):
        assert part in said
    assert "seed" not in said and (started / "config.json").read_bytes() == before


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda f: None, "no such folder"),
        (lambda f: f.mkdir(), "no config.json"),
        (lambda f: (f.mkdir(), (f / "config.json").write_text("{not json")), "is damaged"),
        (lambda f: (f.mkdir(), (f / "config.json").write_text('{"method": "probe"}')), "method 'probe'"),
        (lambda f: f.write_text("a file"), "is a file"),
    ],
    ids=["missing", "not a run", "damaged", "a probe's", "a file"],
)
def test_a_folder_without_a_run_to_continue_is_refused(tmp_path: Path, make, expected: str) -> None:
    folder = tmp_path / "run"
    make(folder)
    with pytest.raises(ResumeError, match=expected):
        resume_request(folder, {})


def test_a_finished_run_has_nothing_to_resume(started: Path) -> None:
    config = json.loads((started / "config.json").read_text())
    (started / "config.json").write_text(json.dumps({**config, "run_id": "3f9a0c2b71d84e65"}))
    with pytest.raises(NothingToResume, match="its model is models/ft.safetensors \\(no longer there"):
        resume_request(started, {})
    assert describe_run(started)["state"] == "finished" and not describe_run(started)["resumable"]
    check_fresh_start(started)  # a new run may replace a finished one (the same command run again)


def test_a_new_run_refuses_an_interrupted_runs_epochs_until_they_are_forgotten(started: Path) -> None:
    assert list_runs("models") == [
        {
            "folder": "models/ft-run",
            "data": "/photos/pets",
            "method": "finetune",
            "model": "models/ft.safetensors",
            "progress": "1/6 epochs",
            "state": "interrupted",
            "resumable": True,
        }
    ]
    with pytest.raises(ResumeError, match="holds an interrupted run .*--resume models/ft-run"):
        check_fresh_start(started)
    forget_checkpoints(started)  # (what a sweep run again does with its variants)
    check_fresh_start(started)
    assert describe_run(started)["state"] == "interrupted before its first epoch"
