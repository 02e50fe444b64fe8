"""When every feature a command needs is cached, `predict`, `evaluate` and `extract` start without importing torch,
timm or OpenVINO: they read the cache and the model file, and that is all."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

_CLI = """
import atexit, json, sys
atexit.register(lambda: sys.stderr.write("\\nMODULES " + json.dumps(
    sorted(m for m in ("torch", "timm", "openvino", "sklearn", "matplotlib") if m in sys.modules)) + "\\n"))
sys.argv = ["headstart", *sys.argv[1:]]
from headstart.cli import main
main()
"""


def _headstart(*args: str) -> tuple[list[str], float, subprocess.CompletedProcess]:
    """Run the CLI in a fresh process; the heavy modules it imported and its wall time."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _CLI, *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    seconds = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stderr.splitlines()[::-1] if x.startswith("MODULES "))
    return json.loads(line[len("MODULES ") :]), seconds, proc


@pytest.fixture()
def new_photos(sample: Path, tmp_path: Path) -> Path:
    """Two labelled photos no other test has cached (rotated copies: new bytes, same classes)."""
    root = tmp_path / "photos"
    for src in (
        sorted((sample / "test" / "Bengal").glob("*.jpg"))[0],
        sorted((sample / "test" / "pug").glob("*.jpg"))[0],
    ):
        (root / src.parent.name).mkdir(parents=True)
        with Image.open(src) as img:
            img.rotate(3, expand=True).convert("RGB").save(root / src.parent.name / (src.stem + ".png"))
    return root


@pytest.mark.slow
def test_cached_commands_import_no_torch(sample_model: Path, new_photos: Path) -> None:
    photo = str(next(new_photos.glob("pug/*.png")))
    first, _, _ = _headstart("predict", str(sample_model), photo, "--top-k", "1")
    assert {"torch", "openvino"} & set(first), f"computing a new photo needs a network: {first}"
    timings = []
    for _ in range(5):
        modules, seconds, proc = _headstart("predict", str(sample_model), photo, "--top-k", "1")
        assert modules == [], f"a cached predict imported {modules}"
        assert "pug" in proc.stdout
        timings.append(seconds)
    print(
        f"\ncached `headstart predict MODEL photo`: median {statistics.median(timings):.2f} s "
        f"(min {min(timings):.2f}, max {max(timings):.2f}) over {len(timings)} runs"
    )

    _headstart("extract", str(new_photos))
    modules, _, proc = _headstart("extract", str(new_photos), "--json")
    assert json.loads(proc.stdout)["n_computed"] == 0 and modules == [], modules
    _headstart("evaluate", str(sample_model), str(new_photos))
    modules, _, proc = _headstart("evaluate", str(sample_model), str(new_photos), "--json")
    assert json.loads(proc.stdout)["n_images"] == 2
    assert not {"torch", "timm", "openvino"} & set(modules), f"a cached evaluate imported {modules}"
    shutil.rmtree(new_photos)
