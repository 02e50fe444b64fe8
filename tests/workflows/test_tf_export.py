"""TensorFlow / Keras / LiteRT export, each file run by its own runtime on real photos and compared with predict.

The LiteRT files are run by ``ai-edge-litert``'s interpreter; the SavedModel by Keras 3's ``TFSMLayer`` in a
separate Python process that imports neither torch nor headstart and preprocesses the photos from the export's
JSON alone (what a Keras user has). Skipped cleanly when the tf extra is not installed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

_MISSING = [n for n in ("tensorflow", "onnx2tf", "ai_edge_litert", "keras", "onnxruntime") if not find_spec(n)]
if _MISSING:  # (found, not imported: TensorFlow imported before torch crashes the process; tf_export orders them)
    pytest.skip(f"the tf extra is not installed ({', '.join(_MISSING)} missing)", allow_module_level=True)

import headstart as hs
from headstart.workflows.tf_export import (
    METADATA_SCHEMA,
    export_tensorflow,
    read_export_metadata,
    run_tflite,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tflite_cli(sample_model: Path, sample: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """``headstart export MODEL --format tflite --int8`` run as a user runs it; its JSON report."""
    out = tmp_path_factory.mktemp("tflite") / "pets.tflite"
    data = tmp_path_factory.mktemp("checked") / "test"  # the test photos and one unusable file, to be reported
    shutil.copytree(sample / "test", data)
    broken = next(data.iterdir()) / "not_a_photo.jpg"
    broken.write_bytes(b"this is text, not a JPEG")
    command = [sys.executable, "-m", "headstart", "export", str(sample_model), "--format", "tflite", "--int8"]
    command += ["--calibrate", str(sample / "train"), "--data", str(data), "--out", str(out), "--json"]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 1, done.stderr[-3000:]  # done, one input unusable (the README's exit codes)
    assert "not_a_photo.jpg" in done.stderr
    return out, json.loads(done.stdout)


@pytest.fixture(scope="module")
def savedmodel(sample_model: Path, sample: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("savedmodel") / "pets_savedmodel"
    return export_tensorflow(sample_model, out, format="savedmodel", check_data=sample / "test")


def _predict(sample_model: Path, photos: list[Path], precision: str = "fp32") -> np.ndarray:
    """``predict``'s probabilities: at fp32, what the float exports are compared with; the default (``auto``: bf16
    on CPUs with native bf16) is held to the same top-1."""
    from headstart.models.classifier import Classifier

    model = Classifier.load(sample_model)
    found = model.features(photos, precision=precision)
    assert len(found.indices) == len(photos)
    return model.predict_proba_features(found.features)


def _nhwc(sample_model: Path, photos: list[Path]) -> np.ndarray:
    from headstart.features.extract import preprocessor
    from headstart.models.classifier import Classifier

    decode = preprocessor(Classifier.load(sample_model).backbone)
    return np.stack([decode(p).numpy().transpose(1, 2, 0) for p in photos])


def test_tflite_float_matches_predict_in_the_litert_interpreter(tflite_cli, sample_model: Path, sample: Path):
    out, report = tflite_cli
    assert report["format"] == "tflite" and report["path"] == str(out) and report["max_abs_diff_probabilities"] < 1e-3
    photos = sorted((sample / "test").glob("*/*.jpg"))
    features, got = run_tflite(out, _nhwc(sample_model, photos))
    want = _predict(sample_model, photos)
    assert features.shape == (len(photos), 1280)
    assert np.abs(got - want).max() < 1e-3
    assert (got.argmax(1) == want.argmax(1)).all()
    assert (got.argmax(1) == hs.load(sample_model).predict_proba(photos).argmax(1)).all()  # predict's defaults


def test_tflite_int8_is_int8_and_its_accuracy_change_is_measured(tflite_cli, sample_model: Path, sample: Path):
    from ai_edge_litert.interpreter import Interpreter

    out, report = tflite_cli
    quantized = Path(report["quantized"])
    assert quantized == out.with_suffix(".int8.tflite") and quantized.stat().st_size < out.stat().st_size / 2
    kinds = {d["dtype"] for d in Interpreter(model_path=str(quantized)).get_tensor_details()}
    assert np.int8 in kinds  # weights and activations quantised; input and output stay float32
    assert report["n_images"] == 24 and report["calibration"] == str(sample / "train")
    assert [Path(s["path"]).name for s in report["skipped"]] == ["not_a_photo.jpg"]  # named, as every --json does
    assert report["accuracy_export"] == report["accuracy_pytorch"] >= 0.9
    assert report["accuracy_int8"] >= report["accuracy_export"] - 0.1
    photos = sorted((sample / "test").glob("*/*.jpg"))
    _, got = run_tflite(quantized, _nhwc(sample_model, photos))
    print(f"int8 top-1 on {len(photos)} photos: {(got.argmax(1) == _predict(sample_model, photos).argmax(1)).mean()}")


def test_the_class_names_and_preprocessing_travel_beside_the_tflite(tflite_cli, sample_model: Path):
    out, report = tflite_cli
    meta = read_export_metadata(out)
    assert Path(report["metadata"]) == out.with_name("pets.headstart.json")
    assert read_export_metadata(out.with_suffix(".int8.tflite")) == meta
    assert meta["schema"] == METADATA_SCHEMA and meta["files"] == {"float32": "pets.tflite", "int8": "pets.int8.tflite"}
    assert meta["classes"] == list(hs.load(sample_model).classes_)
    assert meta["input"]["layout"] == "NHWC" and meta["input"]["shape"] == [None, 224, 224, 3]
    assert meta["preprocessing"] | {} == {
        "resize_shorter_side_to": 256,
        "interpolation": "bicubic",
        "crop": [224, 224],
        "crop_pct": 0.875,
        "crop_mode": "center",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
    }


KERAS_USER = r"""
import json, sys
import numpy as np
from PIL import Image
import keras

folder, photos = sys.argv[1], sys.argv[2:]
meta = json.load(open(f"{folder}/assets/headstart.json"))
pre = meta["preprocessing"]

def load(path):
    image = Image.open(path).convert("RGB")
    w, h = image.size
    side = pre["resize_shorter_side_to"]
    size = (side, round(h * side / w)) if w <= h else (round(w * side / h), side)
    image = image.resize(size, Image.BICUBIC)
    ch, cw = pre["crop"]
    left, top = round((size[0] - cw) / 2), round((size[1] - ch) / 2)
    pixels = np.asarray(image.crop((left, top, left + cw, top + ch)), dtype=np.float32) / 255
    return (pixels - pre["mean"]) / pre["std"]

layer = keras.layers.TFSMLayer(folder, call_endpoint="serving_default")
inputs = keras.Input(shape=tuple(meta["input"]["shape"][1:]), name="image")
model = keras.Model(inputs, layer(inputs))
found = model.predict(np.stack([load(p) for p in photos]).astype("float32"), verbose=0)
print(json.dumps({"classes": meta["classes"], "probabilities": np.asarray(found["probabilities"]).tolist(),
                  "torch": "torch" in sys.modules, "headstart": "headstart" in sys.modules}))
"""


def test_keras3_loads_the_savedmodel_with_tfsmlayer_and_agrees_with_predict(savedmodel, sample_model, sample):
    assert savedmodel.max_abs_diff_probabilities < 1e-3 and savedmodel.accuracy_export == savedmodel.accuracy_pytorch
    photos = sorted((sample / "test").glob("*/*.jpg"))
    done = subprocess.run(
        [sys.executable, "-c", KERAS_USER, str(savedmodel.path), *map(str, photos)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert not found["torch"] and not found["headstart"]  # a Keras user's process: the export and its JSON only
    got = np.asarray(found["probabilities"])
    want = _predict(sample_model, photos)
    assert found["classes"] == list(hs.load(sample_model).classes_)
    assert (got.argmax(1) == want.argmax(1)).all()
    assert np.abs(got - want).max() < 1e-3
    assert (got.argmax(1) == hs.load(sample_model).predict_proba(photos).argmax(1)).all()  # predict's defaults


def test_savedmodel_is_replaced_whole_on_a_rerun(savedmodel, sample_model: Path):
    (savedmodel.path / "stale.txt").write_text("from an older export")
    again = export_tensorflow(sample_model, savedmodel.path, format="savedmodel")
    assert again.path == savedmodel.path and not (savedmodel.path / "stale.txt").exists()
    assert (savedmodel.path / "saved_model.pb").is_file() and read_export_metadata(savedmodel.path)["classes"]
    assert not [p for p in savedmodel.path.parent.iterdir() if p.name.endswith(".tmp")]


def test_int8_is_refused_for_a_savedmodel_before_any_work(sample_model: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="int8"):
        export_tensorflow(sample_model, tmp_path / "m", format="savedmodel", int8=True)
    with pytest.raises(ValueError, match="format"):
        export_tensorflow(sample_model, tmp_path / "m.tf", format="keras")
    assert not list(tmp_path.iterdir())
