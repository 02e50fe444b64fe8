"""Real clients against a real `headstart serve`: NVIDIA's Triton HTTP client on the KServe v2 routes, used the way
its documentation shows, and schemathesis generating requests from the server's own OpenAPI description.

Both are in the ``test`` extra (tritonclient: BSD-3-Clause; schemathesis: MIT); each test skips, saying so, without
them."""

from __future__ import annotations

import numpy as np
import pytest
from servetools import API_KEY, photos, served_models, server  # noqa: F401  (the fixtures)

pytestmark = pytest.mark.slow

httpclient = pytest.importorskip(
    "tritonclient.http", reason="the Triton HTTP client (pip install 'tritonclient[http]')"
)
from tritonclient.utils import InferenceServerException

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis (the test extra)")
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error


def key() -> dict[str, str]:
    """The key header, a new dict each time: tritonclient adds its own headers to the dict it is given."""
    return {"X-API-Key": API_KEY}


def triton(server) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(url=server.url.removeprefix("http://"), network_timeout=300.0)


def image_input(images: list[bytes]) -> httpclient.InferInput:
    tensor = httpclient.InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=True)
    return tensor


# --------------------------------------------------------------------------------------------------- tritonclient
def test_triton_client_health_metadata_and_readiness(server) -> None:
    client = triton(server)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("pets", headers=key()) and client.is_model_ready("flip", headers=key())
        assert not client.is_model_ready("cats", headers=key())
        assert not client.is_model_ready("pets")  # without the key: not told
        meta = client.get_model_metadata("pets", headers=key())
        assert meta["name"] == "pets" and meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
        assert {o["name"]: o["shape"] for o in meta["outputs"]}["probabilities"] == [-1, 12]
        assert client.get_server_metadata()["name"] == "headstart"
        with pytest.raises(InferenceServerException, match="cats"):
            client.get_model_metadata("cats", headers=key())
    finally:
        client.close()


@pytest.mark.parametrize("model", ["pets", "flip"])
def test_triton_client_infers_what_v1_predict_answers(server, photos, model: str) -> None:
    images = [data for _, data in photos[:3]]
    client = triton(server)
    try:
        outputs = [httpclient.InferRequestedOutput(name) for name in ("probabilities", "labels", "scores")]
        result = client.infer(
            model, [image_input(images)], outputs=outputs, headers=key(), request_id="r7", parameters={"top_k": 3}
        )
    finally:
        client.close()
    probabilities = result.as_numpy("probabilities")
    labels = result.as_numpy("labels")
    scores = result.as_numpy("scores")
    assert probabilities.shape == (3, 12) and labels.shape == (3, 3) and scores.shape == (3, 3)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)
    assert result.get_response()["id"] == "r7" and result.get_response()["model_name"] == model
    v1 = server.client().predict(photos[:3], model=model, top_k=3)["results"]
    assert [[x.decode() if isinstance(x, bytes) else x for x in row] for row in labels.tolist()] == [
        [p["label"] for p in r["predictions"]] for r in v1
    ]
    assert np.allclose(scores, [[p["probability"] for p in r["predictions"]] for r in v1], atol=1e-5)


def test_triton_client_gets_the_servers_errors(server, photos) -> None:
    client = triton(server)
    try:
        with pytest.raises(InferenceServerException, match="not an image"):
            client.infer("pets", [image_input([b"plain text, not a photo"])], headers=key())
        with pytest.raises(InferenceServerException, match="API key"):
            client.infer("pets", [image_input([photos[0][1]])])
        wrong = httpclient.InferInput("image", [1], "FP32")
        wrong.set_data_from_numpy(np.zeros(1, np.float32))
        with pytest.raises(InferenceServerException, match="BYTES"):
            client.infer("pets", [wrong], headers=key())
    finally:
        client.close()


# ---------------------------------------------------------------------------------------------------- schemathesis
def test_no_request_the_openapi_description_allows_gets_a_5xx(server) -> None:
    """Every operation in /openapi.json, with parameters and bodies schemathesis generates from it, valid and
    invalid (bounded: 12 examples each, on loopback, with the key): any answer but a server error."""
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    modes = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/predict", "/v1/explain", "/v2/models/{name}/infer", "/readyz"}
    for operation in operations:
        strategy = st.one_of([operation.as_strategy(mode) for mode in modes])

        @given(case=strategy)
        @settings(
            max_examples=12, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None
        )
        def never_a_server_error(case) -> None:
            response = case.call(headers=key(), timeout=120)
            case.validate_response(response, checks=[not_a_server_error])

        never_a_server_error()
