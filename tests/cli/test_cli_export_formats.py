"""``headstart export --format``: the formats it knows, and the combinations it refuses before any work (these run
without the tf extra; the exports themselves are tested in tests/workflows/test_tf_export.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli as run


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.stderr
    return lines[0]


def test_help_names_the_formats():
    result = run("export", "--help")
    assert result.exit_code == 0
    assert all(name in result.stdout for name in ("onnx", "tflite", "savedmodel", "TFSMLayer"))


def test_an_unknown_format_is_one_line(tmp_path: Path):
    line = one_error_line(run("export", tmp_path / "pets.safetensors", "--format", "keras"))
    assert "'onnx', 'tflite', 'savedmodel'" in line and "'keras'" in line


@pytest.mark.slow
def test_int8_is_for_tflite_only(sample_model: Path, tmp_path: Path):
    line = one_error_line(run("export", sample_model, "--format", "savedmodel", "--int8", "--out", tmp_path / "m"))
    assert "--int8" in line and "tflite" in line
    assert not list(tmp_path.iterdir())
