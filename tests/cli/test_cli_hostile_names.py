"""Hostile class names (folder names) through the paths that print, draw or write them for a spreadsheet (train and
its pictures, evaluate, predict, explain's heat map, scan, audit and its CSV):
nothing reaches the terminal raw (no ESC, no carriage return), matplotlib draws them literally (`$\\frac$` does not
end `train` in an error; `cost $5 or $6` keeps its dollars), and no CSV cell starts like a formula.

Real processes on copies of the bundled photos (their features are cached by the session's sample model).
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from headstart._names import csv_cell, csv_value, printable

SAMPLE_TRAIN = Path(__file__).resolve().parents[2] / "src" / "headstart" / "sample_data" / "pets" / "train"
HOSTILE = (
    "$\\frac$",
    "cost $5 or $6",
    '=HYPERLINK("http:x","click")',
    "evil\x1b]0;pwned\x07\x1b[2J\x1b[31m",
    "+cmd|' -C calc'!A0",
    "back\rspace\u202eright-to-left",
)


@pytest.fixture(scope="module")
def hostile_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile") / "photos"
    breeds = sorted(p for p in SAMPLE_TRAIN.iterdir() if p.is_dir())
    for name, breed in zip(HOSTILE, breeds):
        (root / name).mkdir(parents=True)
        for photo in sorted(breed.glob("*.jpg"))[:5]:
            shutil.copy(photo, root / name / photo.name)
    return root


def _run(*args: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "headstart", *map(str, args)], env=env, capture_output=True, text=True, timeout=900
    )


def _clean(proc: subprocess.CompletedProcess, *codes: int) -> str:
    both = proc.stdout + proc.stderr
    assert proc.returncode in (codes or (0,)), f"exit {proc.returncode}: {proc.stderr[-3000:]}"
    assert "Traceback" not in both, both[-3000:]
    assert not [ch for ch in both if ch in "\x1b\r\x07\u202e"], f"a control character reached the terminal: {both!r}"
    return both


@pytest.mark.slow
def test_every_command_shows_hostile_names_as_text(sample_model: Path, hostile_data: Path, tmp_path: Path) -> None:
    model = tmp_path / "hostile.safetensors"
    shown = _clean(_run("train", hostile_data, "--backbone", "tf_efficientnet_lite0", "--out", model))
    run = tmp_path / "hostile-run"
    for picture in ("confusion_matrix.png", "misclassified.png", "reliability.png"):
        assert (run / picture).stat().st_size > 1000, f"{picture} was not drawn"
    assert "cost $5 or $6" in shown or "cost $5 or $6" in _clean(_run("evaluate", model, hostile_data))
    _clean(_run("evaluate", model, hostile_data))
    photo = next((hostile_data / HOSTILE[3]).glob("*.jpg"))
    predicted = _clean(_run("predict", model, photo, "--top-k", str(len(HOSTILE))))
    assert printable(HOSTILE[3], keep_newlines=True) in predicted, predicted  # the name shown, escaped, not dropped
    picture = tmp_path / "explain.png"  # the heat map's title names the class
    _clean(_run("explain", model, photo, "--class", HOSTILE[0], "--out", picture))
    assert picture.stat().st_size > 1000, "the heat map was not drawn"
    _clean(_run("scan", hostile_data))
    audit = tmp_path / "audit"
    relabels = tmp_path / "relabel.csv"
    _clean(_run("audit", hostile_data, "--out", audit, "--relabel-csv", relabels, "--no-thumbnails"))
    assert (audit / "learning_curve.png").stat().st_size > 1000 and (audit / "audit.html").is_file()
    for row in csv.reader(relabels.open(newline="")):
        assert not [cell for cell in row if cell[:1] in ("=", "+", "-", "@")], row


def test_csv_cells_round_trip_and_never_start_a_formula() -> None:
    for value in (*HOSTILE, "-3", "@x", "'=1", "''", "'", "plain", "\tTAB", ""):
        cell = csv_cell(value)
        assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
        assert csv_value(cell) == value, (value, cell)


def test_the_relabel_csv_escapes_formulas_and_reads_them_back(hostile_data: Path, tmp_path: Path) -> None:
    from headstart.audit.actions import apply_relabels, write_relabel_csv
    from headstart.data import load_dataset

    dataset = load_dataset(hostile_data)
    photo = dataset.samples[0]
    suggested = HOSTILE[2] if photo.label != HOSTILE[2] else HOSTILE[4]
    report = {"label_issues": [{"path": str(photo.path), "given": photo.label, "suggested": suggested, "score": 0.9}]}
    path = write_relabel_csv(report, tmp_path / "relabel.csv")
    cells = [cell for row in csv.reader(path.open(newline="")) for cell in row]
    assert not [cell for cell in cells if cell[:1] in ("=", "+", "-", "@")], cells
    fixed = apply_relabels(dataset, path)
    assert fixed.samples[0].label == suggested, "the escaped cell was not read back as the name"
