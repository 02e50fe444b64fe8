"""One exit-code table for every command, one rule for streams, ``--version``, and errors in the CLI's own words.

    0    all done
    1    done, but some inputs were unusable: listed on stderr (and in the --json result)
    2    bad usage or bad input for the whole command: one line on stderr
    130  interrupted

Results go to stdout, diagnostics (skipped files, warnings, errors) to stderr.
"""

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
from conftest import run_cli as run

import headstart


def one_error_line(result, exit_code: int = 2) -> str:
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def with_a_broken_photo(sample: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """3 breeds × 5 real photos, and one file that is no photo (named .jpg)."""
    root = tmp_path_factory.mktemp("broken")
    for breed in ("Persian", "pug", "samoyed"):
        shutil.copytree(sample / "train" / breed, root / breed)
    broken = root / "pug" / "notes.jpg"
    broken.write_text("not a photo\n")
    return root, broken


def test_version() -> None:
    result = run("--version")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"headstart {headstart.__version__}\n"
    done = subprocess.run([sys.executable, "-m", "headstart", "--version"], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, f"headstart {headstart.__version__}")


# -------------------------------------------------------------------------------------------- 0: all done
def test_0_when_every_input_is_used(sample: Path) -> None:
    result = run("scan", sample / "test", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["unusable"] == [] and result.stderr == ""


# --------------------------------------------------------------------------- 1: done, some inputs unusable
def test_1_when_scan_finds_unusable_files(with_a_broken_photo) -> None:
    root, broken = with_a_broken_photo
    result = run("scan", root)
    assert result.exit_code == 1, result.output
    assert f"{broken}: " in result.stdout  # scan's result is that list


@pytest.mark.slow
def test_1_when_extract_skips_a_file(with_a_broken_photo) -> None:
    root, broken = with_a_broken_photo
    result = run("extract", root, "--json")
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert summary["n_usable"] == 15 and [s["path"] for s in summary["skipped"]] == [str(broken)]
    assert str(broken) in result.stderr


@pytest.mark.slow
def test_1_when_train_skips_a_file_and_it_says_so_on_stderr(with_a_broken_photo, tmp_path: Path) -> None:
    root, broken = with_a_broken_photo
    human = run("train", root, "--out", tmp_path / "m.safetensors")
    assert human.exit_code == 1, human.output
    assert (tmp_path / "m.safetensors").is_file(), "done: the model is written"
    assert "validation accuracy" in human.stdout
    assert str(broken) not in human.stdout and "skipped" not in human.stdout
    assert str(broken) in human.stderr and "skipped 1 unusable file" in human.stderr
    machine = run("train", root, "--out", tmp_path / "j.safetensors", "--json")
    assert machine.exit_code == 1, machine.output
    assert [s["path"] for s in json.loads(machine.stdout)["skipped"]] == [str(broken)]


@pytest.mark.slow
def test_1_when_evaluate_skips_a_file_and_lists_it_on_stderr(sample_model: Path, with_a_broken_photo) -> None:
    root, broken = with_a_broken_photo
    human = run("evaluate", sample_model, root)
    assert human.exit_code == 1, human.output
    assert "accuracy" in human.stdout and str(broken) not in human.stdout
    assert f"{broken}: " in human.stderr and "skipped 1 unusable file" in human.stderr
    machine = run("evaluate", sample_model, root, "--json")
    assert machine.exit_code == 1, machine.output
    assert [s["path"] for s in json.loads(machine.stdout)["skipped"]] == [str(broken)]


@pytest.mark.slow
def test_1_when_predict_skips_a_file(sample_model: Path, with_a_broken_photo) -> None:
    root, broken = with_a_broken_photo
    result = run("predict", sample_model, root / "pug", "--json")
    assert result.exit_code == 1, result.output
    answer = json.loads(result.stdout)
    assert len(answer["predictions"]) == 5 and str(broken) in result.stderr
    assert answer["skipped"] == [{"path": str(broken), "reason": answer["skipped"][0]["reason"]}]


# ------------------------------------------------------------------------------ 2: bad usage or bad input
def test_2_for_bad_usage() -> None:
    result = run("scan", "--no-such-option")
    assert result.exit_code == 2 and "Traceback" not in result.output


@pytest.mark.slow
def test_2_for_a_missing_folder(tmp_path: Path) -> None:
    line = one_error_line(run("extract", tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in line


@pytest.mark.slow
def test_2_and_the_option_named_as_typed(sample_model: Path, sample: Path) -> None:
    photo = sorted((sample / "test" / "pug").glob("*.jpg"))[0]
    line = one_error_line(run("predict", sample_model, photo, "--top-k", "0"))
    assert line == "error: The '--top-k' option must be an int in [1, inf). Got 0 instead."


@pytest.fixture()
def onnx_file(tmp_path: Path) -> Path:
    """A real (tiny) ONNX model: what `headstart export` writes is ONNX too, not a headstart model file."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    path = tmp_path / "pets.onnx"
    onnx.save(helper.make_model(graph), str(path))
    return path


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_2_for_an_onnx_file_says_what_to_do_instead(command: str, onnx_file: Path, sample: Path) -> None:
    target = sample / "test" if command == "evaluate" else sorted((sample / "test" / "pug").glob("*.jpg"))[0]
    line = one_error_line(run(command, onnx_file, target))
    assert str(onnx_file) in line and "not a headstart model file" in line and "--engine onnxruntime" in line
    assert "damaged" not in line


# ---------------------------------------------------------------------------------------- 130: interrupted
def test_130_when_interrupted(sample: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    proc = subprocess.Popen(
        # (the torch engine: with the backbone already converted in the per-machine store, OpenVINO can finish the
        # 60 photos before the signal arrives)
        [
            sys.executable,
            "-m",
            "headstart",
            "extract",
            str(sample / "train"),
            "--engine",
            "torch",
            "--cache-dir",
            str(cache),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.monotonic() + 120
    while not (cache / "features.sqlite").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # the command is running once it has opened its cache
    assert proc.poll() is None, "finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr


# ----------------------------------------------------- 1, in every command that reads photos: one reporter of skips
SKIPPING_COMMANDS = {
    "extract": lambda root, model, out: ["extract", root],
    "train": lambda root, model, out: ["train", root, "--out", out / "m.safetensors", "-b", "tf_efficientnet_lite0"],
    "evaluate": lambda root, model, out: ["evaluate", model, root],
    "predict": lambda root, model, out: ["predict", model, root / "pug"],
    "compare": lambda root, model, out: ["compare", root, "--backbones", "tf_efficientnet_lite0"],
    "audit": lambda root, model, out: ["audit", root, "--out", out / "audit", "--no-thumbnails"],
    "export --data": lambda root, model, out: ["export", model, "--out", out / "m.onnx", "--data", root],
    "lr-find": lambda root, model, out: [
        *("lr-find", root, "-b", "tf_efficientnet_lite0", "--out", out / "lr.png"),
        *("--steps", "3", "--batch-size", "8"),
    ],
}


@pytest.mark.parametrize("command", list(SKIPPING_COMMANDS))
def test_1_and_the_skipped_file_named_once_in_one_spelling_by_every_command(
    command: str, with_a_broken_photo, sample_model: Path, tmp_path: Path
) -> None:
    if command == "export --data":
        pytest.importorskip("onnxruntime")
    root, broken = with_a_broken_photo
    args = SKIPPING_COMMANDS[command](root, sample_model, tmp_path)
    human = run(*args)
    assert human.exit_code == 1, human.output
    assert human.stderr.count("skipped 1 unusable file(s):\n") == 1, human.stderr
    assert human.stderr.count(str(broken)) == 1, human.stderr
    assert f"  {broken}: not an image" in human.stderr
    assert str(broken) not in human.stdout and "Skipped" not in human.output
    machine = run(*args[:1], *[a if a != tmp_path / "m.onnx" else tmp_path / "j.onnx" for a in args[1:]], "--json")
    assert machine.exit_code == 1, machine.output
    assert [s["path"] for s in json.loads(machine.stdout)["skipped"]] == [str(broken)]


@pytest.mark.slow
def test_skipped_paths_are_shown_relative_to_where_the_command_runs(
    with_a_broken_photo, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, broken = with_a_broken_photo
    monkeypatch.chdir(root.parent)
    shown = broken.relative_to(root.parent)
    for args in (["scan", root], ["extract", root], ["scan", root.name], ["extract", root.name]):
        result = run(*args)
        assert result.exit_code == 1, result.output
        assert f"  {shown}: not an image" in result.output and str(broken) not in result.output, args


@pytest.mark.slow
def test_torchrun_extract_with_a_skipped_file_ends_cleanly_five_times_out_of_five(
    with_a_broken_photo, tmp_path: Path
) -> None:
    """The README's `torchrun --nproc_per_node 2 -m headstart extract photos`: rank 0's exit 1 for a skipped file
    became torchrun's ChildFailedError traceback, and rank 1, done first, could abort at exit (SIGABRT,
    'terminate called without an active exception'). Each rank now exits 0 (the list says why) after leaving the
    process group in order."""
    root, broken = with_a_broken_photo
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HEADSTART_CACHE_DIR": str(tmp_path / "cache")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    for attempt in range(5):
        done = subprocess.run(
            [*launch, "-m", "headstart", "extract", str(root), "--batch-size", "4"],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        said = done.stderr
        assert done.returncode == 0, f"run {attempt}: {said[-3000:]}"
        for crash in ("Traceback", "ChildFailedError", "terminate called", "SIGABRT"):
            assert crash not in said, f"run {attempt}: {said[-3000:]}"
        assert said.count("skipped 1 unusable file(s):") == 1 and said.count(str(broken)) == 1, said[-3000:]
        assert "15/16 images" in done.stdout
