"""Finite or refused: a model whose trunk computes NaN, or whose head has huge finite weights, never makes a NaN or
infinite number leave the library, in predict, serve or export (issue 20)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from headstart.features import FeatureCache
from headstart.models.classifier import Classifier
from headstart.models.modelfile import read_model_file, save_model_file

pytestmark = pytest.mark.slow  # every test here runs a real backbone


def _altered(model: Path, out: Path, change) -> Path:
    tensors, document = read_model_file(model)
    tensors = {k: np.array(v) for k, v in tensors.items()}
    change(tensors)
    document["backbone"].pop("trunk_sha256", None)
    document["backbone"]["weights_id"] = "file-sha256:" + "0" * 64  # (a claim that cannot be checked here)
    return save_model_file(out, tensors, document)


@pytest.fixture(scope="module")
def nan_model(sample_model: Path, tmp_path_factory) -> Path:
    """A trunk that is finite but computes NaN: a batch norm's running variance below zero."""

    def change(tensors):
        tensors["backbone.bn1.running_var"][:] = -1.0

    return _altered(sample_model, tmp_path_factory.mktemp("nan") / "nan.safetensors", change)


@pytest.fixture(scope="module")
def huge_model(sample_model: Path, tmp_path_factory) -> Path:
    """A head with finite weights of +-3e38: scores overflow float32."""

    def change(tensors):
        tensors["head.weight"][0, :] = 3e38
        tensors["head.weight"][1, :] = -3e38

    return _altered(sample_model, tmp_path_factory.mktemp("huge") / "huge.safetensors", change)


def test_an_engine_giving_nan_features_reports_the_photos_and_caches_nothing(
    nan_model: Path, sample: Path, tmp_path: Path
) -> None:
    model = Classifier.load(nan_model)
    cache = FeatureCache(tmp_path / "features.sqlite")
    photos = sorted((sample / "test").rglob("*.jpg"))[:3]
    predictions = model.predict(photos, cache=cache, engine="torch", precision="fp32")
    assert predictions.predictions == []
    assert [u.path for u in predictions.unusable] == photos
    assert all("NaN or infinite features" in u.reason and "--engine torch" in u.reason for u in predictions.unusable)
    assert cache.count() == 0
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.predict_proba_features(np.full((1, 1280), np.nan, np.float32))


def test_a_served_model_refuses_a_photo_whose_features_are_nan_instead_of_failing(
    nan_model: Path, sample: Path
) -> None:
    from headstart.errors import UnusableImageError
    from headstart.serve.model import ServedModel

    served = ServedModel.open(nan_model, engine="torch", precision="fp32").load()
    photo = sorted((sample / "test").rglob("*.jpg"))[0]
    (row,) = served.infer([served.prepare(photo.read_bytes(), photo.name)])
    assert isinstance(row, UnusableImageError) and "NaN or infinite" in row.reason


def test_a_head_with_huge_finite_weights_gives_finite_probabilities(huge_model: Path, sample: Path) -> None:
    from headstart.serve.model import ServedModel

    model = Classifier.load(huge_model)
    photos = sorted((sample / "test").rglob("*.jpg"))
    probabilities = model.predict_proba_features(model.features(photos, engine="torch").features)
    assert np.isfinite(probabilities).all() and np.allclose(probabilities.sum(1), 1, atol=1e-5)
    served = ServedModel.open(huge_model, engine="torch", precision="fp32").load()
    (row,) = served.infer([served.prepare(photos[0].read_bytes(), photos[0].name)])
    assert np.isfinite(row).all()
    out = subprocess.run(
        [sys.executable, "-m", "headstart", "predict", str(huge_model), str(photos[0]), "--json"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    json.loads(out.stdout, parse_constant=lambda c: pytest.fail(f"{c} in predict's JSON"))


def test_export_refuses_a_head_whose_scores_overflow(huge_model: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from headstart.errors import HeadstartError
    from headstart.workflows.export import write_onnx

    with pytest.raises(HeadstartError, match="NaN or infinite probabilities"):
        write_onnx(huge_model, tmp_path / "huge.onnx")
    assert not (tmp_path / "huge.onnx").exists()
