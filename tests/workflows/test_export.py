"""ONNX export: numerically checked against PyTorch, int8 copy, accuracy through ONNX Runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from headstart.models.classifier import Classifier  # noqa: E402
from headstart.workflows.export import export_onnx, onnx_accuracy, quantize_int8, run_onnx  # noqa: E402


@pytest.fixture(scope="module")
def model_path(sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from headstart.workflows.training import train

    return train(sample / "train", out=tmp_path_factory.mktemp("m") / "pets.safetensors").model_path


def test_export_matches_pytorch_within_1e_4(model_path: Path, sample: Path, tmp_path: Path) -> None:
    photos = sorted((sample / "test").glob("*/*.jpg"))[:6]
    report = export_onnx(model_path, tmp_path / "pets.onnx", check_images=photos)
    assert report.max_abs_diff_probabilities <= 1e-4 and report.max_abs_diff_features <= 1e-3
    model = Classifier.load(model_path)
    import torch

    batch = torch.stack([model.backbone.transform()(__import__("PIL.Image").Image.open(p).convert("RGB")) for p in photos])
    features, probabilities = run_onnx(tmp_path / "pets.onnx", batch.numpy())
    want = model.predict_proba_features(features)
    np.testing.assert_allclose(probabilities, want, atol=1e-5)
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "pets.onnx")).metadata_props}
    assert json.loads(meta["headstart"])["classes"] == model.classes


def test_onnx_and_int8_accuracy_on_held_out_photos(model_path: Path, sample: Path, tmp_path: Path) -> None:
    from headstart.workflows.evaluation import evaluate

    model = Classifier.load(model_path)
    onnx_path = export_onnx(model, tmp_path / "pets.onnx").path
    int8 = quantize_int8(onnx_path, tmp_path / "pets.int8.onnx", model, sample / "train", max_photos=30)
    assert int8.stat().st_size < onnx_path.stat().st_size / 2
    import onnx

    ops = {node.op_type for node in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops, "static quantisation: activations are int8 too"
    acc, n = onnx_accuracy(onnx_path, model, sample / "test")
    assert n == 24 and acc == pytest.approx(evaluate(model, sample / "test").accuracy, abs=1 / 24)
    acc8, _ = onnx_accuracy(int8, model, sample / "test")
    assert acc8 >= acc - 2 / 24, f"int8 accuracy {acc8:.3f} against fp32 {acc:.3f}"


def test_cli_int8_calibrates_on_the_training_photos_or_says_what_to_pass(
    model_path: Path, sample: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from headstart.cli import app

    out = tmp_path / "cli.onnx"
    result = CliRunner().invoke(app, ["export", str(model_path), "--out", str(out), "--int8", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert Path(report["calibration"]) == sample / "train" and Path(report["quantized"]).is_file()
    assert report["ms_per_photo_int8"] > 0 and report["ms_per_photo_onnx"] > 0

    from headstart.models.modelfile import read_model_file, save_model_file

    tensors, metadata = read_model_file(model_path)
    moved = tmp_path / "moved.safetensors"
    save_model_file(moved, tensors, {**metadata, "data": {**metadata["data"], "source": str(tmp_path / "gone")}})
    result = CliRunner().invoke(app, ["export", str(moved), "--out", str(tmp_path / "m.onnx"), "--int8"])
    assert result.exit_code != 0 and "--calibrate" in result.output + (result.stderr or "")
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(app, ["export", str(model_path), "--out", str(tmp_path / "e.onnx"), "--int8",
                                      "--calibrate", str(empty)])
    assert result.exit_code != 0 and "calibration photos" in result.output + (result.stderr or "")


def test_cli_export_prints_the_check(model_path: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from headstart.cli import app

    out = tmp_path / "cli.onnx"
    result = CliRunner().invoke(app, ["export", str(model_path), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["max_abs_diff_probabilities"] <= 1e-4 and out.is_file()
    bad = CliRunner().invoke(app, ["export", str(model_path), "--format", "tflite"])
    assert bad.exit_code != 0 and "must be 'onnx'" in bad.output + (bad.stderr or "")


def test_onnxruntime_engine_gives_the_same_predictions(model_path: Path, sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from headstart.workflows.evaluation import evaluate
    from headstart.features.extract import FeatureCache

    monkeypatch.setenv("HEADSTART_CACHE_DIR", str(tmp_path / "cache"))
    cache = FeatureCache(tmp_path / "f.sqlite")
    model = Classifier.load(model_path)
    torch_feats = model.features(sorted((sample / "test").glob("*/*.jpg")), cache=cache, precision="fp32")
    onnx_feats = model.features(sorted((sample / "test").glob("*/*.jpg")), cache=cache, engine="onnxruntime")
    assert onnx_feats.n_computed == 24, "ONNX features are cached under their own key"
    np.testing.assert_allclose(onnx_feats.features, torch_feats.features, rtol=1e-3, atol=1e-3)
    a = evaluate(model, sample / "test", cache=cache, engine="onnxruntime").accuracy
    assert a == evaluate(model, sample / "test", cache=cache, precision="fp32").accuracy
    with pytest.raises(ValueError, match="'engine' parameter"):
        model.features([], cache=cache, engine="tensorrt")
