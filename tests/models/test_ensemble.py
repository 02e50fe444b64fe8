"""An ensemble of backbones is one model: trained, saved, loaded, predicted, served, exported, attacked and
explained like a single backbone's, its members' features cached under their own keys."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE, shared_data

pytestmark = pytest.mark.slow

MEMBERS = ("tf_efficientnet_lite0", "tf_efficientnet_lite1")


@pytest.fixture(scope="module")
def ensemble_model(tmp_path_factory) -> Path:
    from headstart.workflows.training import train

    out = tmp_path_factory.mktemp("ensemble") / "pets.safetensors"
    return train(SAMPLE / "train", backbone="ensemble:lite0,lite1", out=out).model_path


def _photos(n: int = 6) -> list[Path]:
    return sorted((SAMPLE / "test").rglob("*.jpg"))[:n]


def test_the_file_holds_each_member_and_loads_back(ensemble_model: Path):
    from headstart.models.classifier import Classifier
    from headstart.models.modelfile import read_model_file

    tensors, meta = read_model_file(ensemble_model)
    assert meta["backbone"]["name"] == "ensemble:" + "+".join(MEMBERS)
    assert [m["name"] for m in meta["backbone"]["members"]] == list(MEMBERS)
    assert any(k.startswith("backbone.0.") for k in tensors) and any(k.startswith("backbone.1.") for k in tensors)
    model = Classifier.load(ensemble_model)
    assert model.spec.num_features == 2560 == model.head_weight.shape[1]
    assert model.spec.data_config["input_size"] == [3, 240, 240]  # (the larger member's: the one network's input)
    # its members' content hashes are the pretrained backbones', so their cached features are shared
    from headstart.features import resolve_backbone

    assert [m.trunk_sha256 for m in model.spec.members] == [resolve_backbone(n).trunk_sha256 for n in MEMBERS]


def test_the_head_averages_the_members_probes(ensemble_model: Path):
    """The ensemble's probabilities are the softmax of its members' probes' logits averaged (then calibrated)."""
    from headstart.models.classifier import Classifier
    from headstart.models.probe_fit import fit_ensemble_probe, fit_probe

    model = Classifier.load(ensemble_model)
    X = model.features(sorted((SAMPLE / "train").rglob("*.jpg"))).features
    labels = np.array([p.parent.name for p in sorted((SAMPLE / "train").rglob("*.jpg"))])
    fit = fit_ensemble_probe(X, labels, (1280, 1280))
    members = [fit_probe(X[:, :1280], labels), fit_probe(X[:, 1280:], labels)]
    averaged = sum(X[:, a:b] @ m.coef_.T + m.intercept_ for m, (a, b) in zip(members, [(0, 1280), (1280, 2560)])) / 2
    np.testing.assert_allclose(X @ fit.coef_.T + fit.intercept_, averaged / fit.temperature_, rtol=1e-5, atol=1e-5)
    assert len(fit.member_C_) == 2 and 0 <= fit.cv_accuracy_ <= 1 and fit.temperature_ > 0


def test_predict_serve_and_the_one_network_agree(ensemble_model: Path):
    import torch

    from headstart.features.extract import preprocessor
    from headstart.models.classifier import Classifier
    from headstart.serve.model import ServedModel

    model = Classifier.load(ensemble_model)
    photos = _photos()
    predicted = model.predict(photos, top_k=1, precision="fp32", engine="torch").predictions
    served = ServedModel.open(ensemble_model, precision="fp32", engine="torch").load()
    rows = served.infer([served.prepare(p.read_bytes(), p.name) for p in photos])
    for p, row in zip(predicted, rows):  # a served photo gets what predict gives for the same file
        assert served.top(row, 1)[0]["label"] == p.labels[0]
        assert abs(served.top(row, 1)[0]["probability"] - p.probabilities[0]) < 1e-4
    net = model.torch_module()
    decode = preprocessor(model.backbone)
    with torch.no_grad():
        one_network = net.features(torch.stack([decode(p) for p in photos])).numpy()
    per_member = model.features(photos, precision="fp32", engine="torch").features
    cosine = (
        (one_network * per_member).sum(1) / np.linalg.norm(one_network, axis=1) / np.linalg.norm(per_member, axis=1)
    )
    # each member's region resized twice instead of once (bilinear, the resize LiteRT has): close, not equal, so a
    # photo on the border between two classes may tip
    assert cosine.min() > 0.95, cosine
    agree = [model.classes[i] for i in model.predict_proba_features(one_network).argmax(1)] == np.array(
        [p.labels[0] for p in predicted]
    )
    assert agree.sum() >= len(photos) - 1, agree


def test_export_attack_and_explain_run_on_the_one_network(ensemble_model: Path, tmp_path: Path):
    from headstart.attacks.adversarial import attack
    from headstart.inside.heatmap import explain
    from headstart.workflows.export import export_onnx

    report = export_onnx(ensemble_model, tmp_path / "pets.onnx", check_images=_photos(2))
    assert (tmp_path / "pets.onnx").is_file() and json.dumps(report.to_dict())
    result = attack(str(ensemble_model), _photos(1)[0], eps="4/255", steps=5)
    assert result.after is not None and result.linf_8bit <= 4
    heat = explain(str(ensemble_model), _photos(1)[0])
    assert heat.heatmap.ndim == 2 and np.isfinite(heat.heatmap).all()


def test_a_member_s_trunk_altered_is_refused(ensemble_model: Path, tmp_path: Path):
    from headstart.errors import ModelFileError
    from headstart.models.classifier import Classifier
    from headstart.models.modelfile import read_model_file, save_model_file

    tensors, meta = read_model_file(ensemble_model)
    name = next(k for k in tensors if k.startswith("backbone.1.") and tensors[k].dtype.kind == "f")
    tensors = {**tensors, name: tensors[name] + np.float32(0.01)}
    save_model_file(tmp_path / "altered.safetensors", tensors, meta)
    with pytest.raises(ModelFileError, match="not the ones its metadata names"):
        Classifier.load(tmp_path / "altered.safetensors")
    meta = {**meta, "backbone": {**meta["backbone"], "name": "ensemble:resnet50+tf_efficientnet_lite1"}}
    save_model_file(tmp_path / "renamed.safetensors", dict(read_model_file(ensemble_model)[0]), meta)
    with pytest.raises(ModelFileError, match="not after its members"):
        Classifier.load(tmp_path / "renamed.safetensors")


def test_auto_fits_the_ensemble_on_small_data_and_one_backbone_for_fine_tuning(tmp_path: Path):
    from headstart import ImageClassifier
    from headstart.errors import HeadstartError

    fitted = ImageClassifier(backbone="auto:lite1,lite0").fit(shared_data("pets-dev"))
    selection = fitted.report_["backbone_selection"]
    assert fitted.model_.spec.name == "ensemble:" + "+".join(reversed(MEMBERS))
    last = selection["candidates"][-1]
    assert last["chosen"] and not any(r["chosen"] for r in selection["candidates"][:-1])
    assert {"paired_accuracy", "paired_gain", "paired_se"} <= set(last)
    # on the bundled sample the first candidate is right on every photo: no other could gain, so one backbone
    fitted = ImageClassifier(backbone="auto:lite0,lite1").fit(SAMPLE / "train")
    assert fitted.model_.spec.name == "tf_efficientnet_lite0"
    with pytest.raises((HeadstartError, ValueError), match="one backbone for method='finetune'"):
        ImageClassifier(backbone="ensemble", method="finetune").fit(SAMPLE / "train")


def test_litert_export_runs_the_ensemble_in_the_interpreter(ensemble_model: Path, tmp_path: Path):
    """The one network's resize is one LiteRT has (bilinear): the ensemble exports and runs in the interpreter."""
    from importlib.util import find_spec

    if not all(find_spec(n) for n in ("tensorflow", "onnx2tf", "ai_edge_litert")):
        pytest.skip("the tf extra is not installed")
    from headstart.workflows.tf_export import export_tensorflow

    report = export_tensorflow(ensemble_model, tmp_path / "pets.tflite", check_images=_photos(2))
    assert (tmp_path / "pets.tflite").is_file() and report.max_abs_diff_probabilities < 1e-3


def test_feature_maps_name_a_member(ensemble_model: Path, tmp_path: Path):
    from headstart.inside.activations import feature_maps, list_layers

    layers = [layer["module"] for layer in list_layers(str(ensemble_model))]
    assert "0.blocks.4" in layers and "1.blocks.4" in layers and layers[-1] == "1.forward_features"
    first, second = (feature_maps(str(ensemble_model), _photos(1)[0], layer) for layer in ("0.blocks.4", "1.blocks.4"))
    assert first.activations.shape[-1] == 14 and second.activations.shape[-1] == 15  # (224 and 240 px inputs)


def test_one_network_commands_refuse_an_ensemble_by_name(tmp_path: Path):
    from headstart.workflows.experiments import find_learning_rate

    with pytest.raises(ValueError, match="an ensemble is a probe over several networks"):
        find_learning_rate(SAMPLE / "train", backbone="ensemble", out=tmp_path / "lr.png")
