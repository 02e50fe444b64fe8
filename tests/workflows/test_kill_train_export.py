"""SIGKILL during `headstart train` and `headstart export` at random moments, then a run that finishes.

Real processes run the real CLI on the bundled sample, each with its own cache. After every kill, the model file
(and the ONNX file) is either the old one, byte for byte, or a complete new one — and a new model file means a
complete new run folder (the model file is the last thing a run replaces). After the run that finishes: no
temporary is left anywhere (beside the outputs or in the cache), and the features the killed runs committed are not
computed again.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every test here runs a real backbone

TEMPORARY = re.compile(r"^\..+\.\d+\.[0-9a-f]{8}\.tmp$")
RUN_FILES = ("config.json", "confusion_matrix.png", "metrics.json", "misclassified.png")


def _cli(*args: object, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "headstart", *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _finish(process: subprocess.Popen, timeout: float = 240) -> str:
    output = process.communicate(timeout=timeout)[0].decode(errors="replace")
    assert process.returncode == 0, output[-3000:]
    return output


def _kill_after(process: subprocess.Popen, seconds: float) -> bool:
    """SIGKILL the process (and anything it started) after ``seconds``; False when it had finished by then."""
    try:
        process.wait(seconds)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return True


def _kill_when(process: subprocess.Popen, happened, delay: float, timeout: float = 240) -> bool:
    """SIGKILL the process ``delay`` seconds after ``happened()`` first holds (polled every 2 ms); False when the
    process finished first."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and not happened():
        assert time.monotonic() < deadline, "the moment to kill never came"
        time.sleep(0.002)
    return process.poll() is None and _kill_after(process, delay)


def _temporaries(*folders: Path) -> list[Path]:
    return [p for folder in folders if folder.exists() for p in folder.rglob("*") if TEMPORARY.match(p.name)]


def _photos_in_cache(cache: Path, *, check: bool = True) -> int:
    """Photos whose features the cache holds (one view), read with plain SQLite; ``check``: its integrity too."""
    path = cache / "features.sqlite"
    if not path.exists():
        return 0
    db = sqlite3.connect(path, timeout=30)
    try:
        assert not check or db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return int(db.execute("SELECT COUNT(DISTINCT sha256) FROM vectors WHERE view = 'orig'").fetchone()[0])
    except sqlite3.OperationalError:  # (no table yet)
        return 0
    finally:
        db.close()


def _tiny_onnx(path: Path) -> bytes:
    """A small valid ONNX file: what an earlier export left at the path."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["probabilities"])],
        "old",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.metadata_props.add(key="headstart", value="{}")
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return path.read_bytes()


def _model_state(model: Path, run: Path, old: bytes, new_source: Path, since: float) -> str:
    """ "old" or "new"; fails unless the model file is the old one or a complete new one whose run folder was all
    written by the same run (after ``since``, the run's start, and before the model file)."""
    from headstart.models.modelfile import read_model_metadata

    data = model.read_bytes()
    if data == old:
        return "old"
    metadata = read_model_metadata(model)  # a half-written file raises here
    assert metadata["data"]["source"] == str(new_source), metadata["data"]
    for name in RUN_FILES:
        written = (run / name).stat().st_mtime_ns
        assert since <= written <= model.stat().st_mtime_ns, f"{name} is not from the run that wrote the model"
    config = json.loads((run / "config.json").read_text())
    assert config["run_id"] == metadata["run_id"], "the run folder is the new model's"
    assert config["data"] == str(new_source)
    return "new"


def _onnx_state(path: Path, old: bytes) -> str:
    import onnx

    data = path.read_bytes()
    if data == old:
        return "old"
    proto = onnx.load_from_string(data)  # a half-written file raises here
    onnx.checker.check_model(proto)
    assert "headstart" in {p.key for p in proto.metadata_props}
    return "new"


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "HEADSTART_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "2"}


def test_killed_train_and_export_runs_leave_the_old_files_or_whole_new_ones_and_lose_no_finished_work(
    sample: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    cache, out = tmp_path / "cache", tmp_path / "models"
    model, run, onnx_file = out / "pets.safetensors", out / "pets-run", out / "pets.onnx"
    old_data, new_data = tmp_path / "few", sample / "train"  # (different photos: the new run's are not cached)
    for photo in [p for d in sorted((sample / "test").iterdir())[:3] for p in sorted(d.glob("*.jpg"))[:4]]:
        (old_data / photo.parent.name).mkdir(parents=True, exist_ok=True)
        (old_data / photo.parent.name / photo.name).write_bytes(photo.read_bytes())
    n_new = len(list(new_data.glob("*/*.jpg")))

    def train(data, *more):
        return _cli(
            "train",
            data,
            "--out",
            model,
            "--json",
            "--backbone",
            "tf_efficientnet_lite0",
            *more,
            env=env,
        )

    _finish(train(old_data))
    old_model = model.read_bytes()
    cached_before = _photos_in_cache(cache)

    def state(since: int, source: Path) -> str:
        got = _model_state(model, run, old_model, source, since)
        if got == "new":  # (a run that finished before its kill: the next one starts again from the old file)
            model.write_bytes(old_model)
        return got

    # Kill a training run at a random moment of each phase: drawing the run folder, writing the model file (runs
    # on the old photos with other seeds: their features are cached), extracting features (the new photos).
    kills, rng = [], random.Random(0)
    since = time.time_ns()
    drawn = lambda: (run / "config.json").exists() and (run / "config.json").stat().st_mtime_ns >= since  # noqa: E731
    kills.append(
        ("run folder", _kill_when(train(old_data, "--seed", 1), drawn, rng.uniform(0, 0.3)), state(since, old_data))
    )
    since = time.time_ns()
    saving = lambda: any(TEMPORARY.match(p.name) for p in out.iterdir())  # noqa: E731
    killed = _kill_when(train(old_data, "--seed", 2), saving, rng.uniform(0, 0.01))
    kills.append(("model file" + (" (temporary left)" if saving() else ""), killed, state(since, old_data)))
    since = time.time_ns()
    extracting = lambda: _photos_in_cache(cache, check=False) > cached_before  # noqa: E731  (a batch is committed)
    kills.append(("features", _kill_when(train(new_data), extracting, rng.uniform(0, 0.05)), state(since, new_data)))
    committed = _photos_in_cache(cache) - cached_before

    since = time.time_ns()
    _finish(train(new_data))
    assert _model_state(model, run, old_model, new_data, since) == "new"
    features = json.loads((run / "metrics.json").read_text())["features"]
    assert (features["computed"], features["cached"]) == (n_new - committed, committed), (features, committed, kills)

    # Kill the export of the new model: at a random moment of its start, and while it writes and checks the file.
    old_onnx = _tiny_onnx(onnx_file)
    export = lambda: _cli("export", model, "--out", onnx_file, "--json", env=env)  # noqa: E731
    kills.append(("export start", _kill_after(export(), rng.uniform(0.5, 4.0)), _onnx_state(onnx_file, old_onnx)))
    writing = lambda: any(TEMPORARY.match(p.name) and "onnx" in p.name for p in out.iterdir())  # noqa: E731
    kills.append(
        ("export writing", _kill_when(export(), writing, rng.uniform(0, 1.5)), _onnx_state(onnx_file, old_onnx))
    )
    if kills[-1][2] == "new":
        onnx_file.write_bytes(old_onnx)
    _finish(export())
    assert _onnx_state(onnx_file, old_onnx) == "new"

    left = _temporaries(out, cache)
    assert not left, f"temporaries left after the runs that finished: {left}; kills: {kills}"
    print(
        f"\nkills (during, killed, file left): {kills}; {committed} of {n_new} photos committed before the rerun, "
        f"which computed {features['computed']}"
    )
