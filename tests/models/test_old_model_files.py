"""Model files written before the layout change still load and predict what they predicted then.

``data/old-format-v1.safetensors`` was written by headstart at commit 9205804 (a probe on a tiny random-weight timm
network, ``test_efficientnet``, trained on the bundled sample); ``old-format-v1.json`` holds its predictions for six
test photos as that version computed them (fp32).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data"
OLD = DATA / "old-format-v1.safetensors"


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads(OLD.with_suffix(".json").read_text())


def _predictions(model, sample: Path, expected: dict) -> list[dict]:
    paths = [sample / p["path"] for p in expected["predictions"]]
    got = model.predict(paths, top_k=3, precision="fp32").to_list()
    for g in got:
        g["path"] = str(Path(g["path"]).relative_to(sample))
    return got


def _assert_same(got: list[dict], expected: dict) -> None:
    assert [g["path"] for g in got] == [e["path"] for e in expected["predictions"]]
    for g, e in zip(got, expected["predictions"]):
        assert [p["label"] for p in g["predictions"]] == [p["label"] for p in e["predictions"]], g["path"]
        np.testing.assert_allclose(
            [p["probability"] for p in g["predictions"]], [p["probability"] for p in e["predictions"]], atol=1e-4
        )


@pytest.mark.slow
def test_an_old_model_file_loads_as_a_classifier_and_predicts_as_before(sample, expected):
    from headstart.models.classifier import Classifier

    model = Classifier.load(OLD)
    assert model.classes == expected["classes"]
    assert model.spec.name == "test_efficientnet"
    _assert_same(_predictions(model, sample, expected), expected)
