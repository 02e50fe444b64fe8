"""The HTTP API of `headstart serve`, against a real server process on loopback (tests/serve/conftest.py)."""

from __future__ import annotations

import base64
import http.client
import io
import json
import re
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from servetools import photos, served_models, server  # noqa: F401  (the fixtures; tests/serve/servetools.py)

from headstart.serve.client import Client, multipart

pytestmark = pytest.mark.slow
SAMPLE = Path(__file__).resolve().parents[2] / "src" / "headstart" / "sample_data" / "pets"


def bomb_png() -> bytes:
    """A 12000×12000 PNG (144 M pixels, over the 89 M limit) in a few kB: refused from its header."""
    buffer = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buffer, format="PNG")
    assert len(buffer.getvalue()) < 100_000
    return buffer.getvalue()


def assert_refused(r, status: int, code: str, *words: str) -> dict:
    assert r.status == status, (r.status, r.body[:500])
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert body["code"] == code, body
    for word in words:
        assert word in body["detail"], body
    return body


def assert_alive(server) -> None:
    assert server.client(key=None).get("/healthz").status == 200


# ------------------------------------------------------------------------------------ same answers as `predict`
@pytest.mark.parametrize("name", ["pets", "flip"])
def test_served_predictions_equal_predict(server, photos, tmp_path: Path, name: str) -> None:
    """Every unseen photo, sent concurrently (so the server batches them), gets predict's labels and probabilities."""
    from headstart.features import FeatureCache
    from headstart.models.classifier import Classifier

    paths = sorted((SAMPLE / "test").rglob("*.jpg"))
    expected = Classifier.load(server.models[name]).predict(paths, top_k=5, cache=FeatureCache(tmp_path / "f.sqlite"))
    by_name = {Path(p.path).name: p for p in expected.predictions}

    def one(photo):
        client = server.client()
        try:
            return client.predict([photo], model=name, top_k=5)
        finally:
            client.close()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, photos))
    for (filename, _), answer in zip(photos, answers):
        assert answer["model"] == name
        (result,) = answer["results"]
        assert result["filename"] == filename
        assert_same_predictions(result["predictions"], by_name[filename], filename)


def assert_same_predictions(served: list[dict], want, what: str, atol: float = 1e-5) -> None:
    """Same top-1, and the same probability (to ``atol``) for every label in both top-k lists; labels may only
    trade places where their probabilities tie."""
    got = {p["label"]: p["probability"] for p in served}
    expected = dict(zip(want.labels, want.probabilities))
    assert served[0]["label"] == want.labels[0], (what, served, want)
    for label in set(got) & set(expected):
        assert abs(got[label] - expected[label]) <= atol, (what, label, got[label], expected[label])
    for label in set(got) ^ set(expected):  # in one top-k only: must be a near-tie at the bottom
        assert min(got.values()) - atol <= got.get(label, expected.get(label)) <= max(got.values()), (what, label)


def test_served_equals_cli_predict_json(server, photos, tmp_path: Path) -> None:
    """`headstart predict --json` in its own process and the server agree to the printed digits."""
    chosen = sorted((SAMPLE / "test").rglob("*.jpg"))[:3]
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "headstart",
            "predict",
            str(server.models["pets"]),
            *map(str, chosen),
            "--json",
            "--cache-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    printed = json.loads(run.stdout)  # {"predictions": [...], "skipped": [...]}
    cli = {Path(row["path"]).name: row["predictions"] for row in printed["predictions"]}
    client = server.client()
    for path in chosen:
        (result,) = client.predict([(path.name, path.read_bytes())], model="pets")["results"]
        assert [p["label"] for p in result["predictions"]] == [p["label"] for p in cli[path.name]]
        np.testing.assert_allclose(
            [p["probability"] for p in result["predictions"]], [p["probability"] for p in cli[path.name]], atol=2e-6
        )


# ------------------------------------------------------------------------------------------------ request shapes
def test_several_files_in_one_request_keep_their_order(server, photos) -> None:
    chosen = photos[:3] + photos[-2:]
    answer = server.client().predict(chosen, model="flip", top_k=2)
    assert [r["filename"] for r in answer["results"]] == [n for n, _ in chosen]
    assert all(len(r["predictions"]) == 2 for r in answer["results"])
    assert answer["latency_ms"] > 0


def test_raw_body_upload(server, photos) -> None:
    name, data = photos[0]
    client = server.client()
    r = client.request(
        "POST", "/v1/predict", data, {"Content-Type": "image/jpeg", "X-Filename": name}, {"model": "pets", "top_k": 3}
    )
    assert r.status == 200, r.body
    raw = r.json()["results"][0]
    assert raw["filename"] == name and len(raw["predictions"]) == 3
    # curl --data-binary sends a form's content type: still the image
    r = client.request(
        "POST",
        "/v1/predict",
        data,
        {"Content-Type": "application/x-www-form-urlencoded"},
        {"model": "pets", "top_k": 3},
    )
    assert r.status == 200 and r.json()["results"][0]["predictions"] == raw["predictions"]
    assert client.predict([photos[0]], model="pets", top_k=3)["results"][0]["predictions"] == raw["predictions"]


def test_top_k_is_capped_by_the_classes(server, photos) -> None:
    answer = server.client().predict(photos[:1], model="pets", top_k=50)
    probabilities = [p["probability"] for p in answer["results"][0]["predictions"]]
    assert len(probabilities) == 12 and probabilities == sorted(probabilities, reverse=True)
    assert abs(sum(probabilities) - 1) < 1e-4


# -------------------------------------------------------------------------------------------------- bad requests
def test_bad_uploads_get_json_4xx_and_the_server_keeps_serving(server, photos) -> None:
    client = server.client()
    jpeg = photos[0][1]
    cases = [
        ("notes.txt", b"hello, this is not a photo", "not_an_image", "notes.txt"),
        ("empty.jpg", b"", "empty_file", "empty"),
        ("half.jpg", jpeg[: len(jpeg) // 2], "corrupt_image", "truncated"),
        ("bomb.png", bomb_png(), "too_many_pixels", "decompression bomb"),
        ("page.jpg", b"<!doctype html><html><body>404</body></html>", "not_an_image", "HTML"),
    ]
    for filename, data, code, word in cases:
        body = assert_refused(client.post_files("/v1/predict", [(filename, data)], model="pets"), 400, code, word)
        assert body["filename"] == filename
        assert_alive(server)
    # one bad photo among good ones: the request is refused, naming the bad one
    assert_refused(
        client.post_files("/v1/predict", [photos[0], ("x.txt", b"text")], model="pets"), 400, "not_an_image", "x.txt"
    )
    assert client.predict(photos[:1], model="pets")["results"][0]["predictions"]


def test_oversized_bodies_get_413(server, photos) -> None:
    big = bytes(40 * 1024 * 1024)
    client = server.client()
    body = assert_refused(
        client.post_files("/v1/predict", [("huge.jpg", big)], model="pets"),
        413,
        "too_large",
        "20 MB",
        "--max-upload-mb",
    )
    assert body["limit_bytes"] == 20 * 1024 * 1024
    assert_refused(client.request("POST", "/v1/predict", big, {"Content-Type": "image/jpeg"}), 413, "too_large")
    # no Content-Length: a chunked body is cut off as it crosses the limit
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    chunks = (bytes(1024 * 1024) for _ in range(40))
    conn.request(
        "POST",
        "/v1/predict?model=pets",
        body=chunks,
        encode_chunked=True,
        headers={"Content-Type": "image/jpeg", "X-API-Key": server.api_key},
    )
    r = conn.getresponse()
    assert r.status == 413 and json.loads(r.read())["code"] == "too_large"
    conn.close()
    assert_alive(server)
    assert server.client().predict(photos[:1], model="pets")["results"]


def test_too_many_files_get_413(server, photos) -> None:
    nine = (photos * 2)[:9]
    r = server.client().post_files("/v1/predict", nine, model="pets")
    assert_refused(r, 413, "too_many_files", "8")
    assert_alive(server)


def test_models_are_named(server, photos) -> None:
    client = server.client()
    body = assert_refused(client.post_files("/v1/predict", photos[:1], model="cats"), 404, "unknown_model", "'cats'")
    assert sorted(body["models"]) == ["flip", "pets"]
    assert_refused(client.post_files("/v1/predict", photos[:1]), 400, "model_required", "?model=")
    assert_refused(client.get("/v1/models/cats"), 404, "unknown_model")


def test_bad_parameters_and_routes(server, photos) -> None:
    client = server.client()
    assert_refused(
        client.post_files("/v1/predict", photos[:1], model="pets", top_k=0), 422, "invalid_parameter", "top_k"
    )
    assert_refused(client.post_files("/v1/predict", photos[:1], model="pets", top_k="many"), 422, "invalid_parameter")
    assert_refused(client.get("/v1/nothing"), 404, "not_found")
    assert_refused(client.get("/v1/predict"), 405, "method_not_allowed")
    body, content_type = multipart([("a.jpg", photos[0][1])], field_name="photo")  # any field name is a file
    assert client.request("POST", "/v1/predict", body, {"Content-Type": content_type}, {"model": "pets"}).status == 200
    broken = b"--x\r\nContent-Disposition: form-data; name=file\r\n\r\nabc"
    r = client.request(
        "POST", "/v1/predict", broken, {"Content-Type": "multipart/form-data; boundary=x"}, {"model": "pets"}
    )
    assert 400 <= r.status < 500 and "detail" in r.json()
    assert_alive(server)


def test_api_key(server, photos) -> None:
    anonymous = server.client(key=None)
    for path in ("/healthz", "/readyz", "/v2/health/ready", "/v2/health/live", "/", "/docs"):
        assert anonymous.get(path).status == 200, path
    r = anonymous.post_files("/v1/predict", photos[:1], model="pets")
    assert_refused(r, 401, "unauthorized", "X-API-Key")
    assert r.headers["www-authenticate"] == "Bearer"
    assert_refused(server.client(key="wrong").get("/v1/models"), 401, "unauthorized", "wrong")
    assert anonymous.get("/v1/models", headers={"Authorization": f"Bearer {server.api_key}"}).status == 200
    assert anonymous.get("/metrics").status == 401


# ------------------------------------------------------------------------------------------- the other routes
def test_model_cards(server) -> None:
    models = {m["name"]: m for m in server.client().get("/v1/models").json()["models"]}
    assert sorted(models) == ["flip", "pets"]
    card = models["flip"]
    assert card["n_classes"] == 12 and "Bengal" in card["classes"] and "pug" in card["classes"]
    assert card["backbone"]["name"] == "tf_efficientnet_lite0"
    assert card["preprocessing"]["input_size"] == [3, 224, 224] and card["preprocessing"]["flip_average"] is True
    assert 0 <= card["accuracy"] <= 1 and card["metrics"]["val_accuracy"] == card["accuracy"]
    assert card["method"] == "probe"
    assert server.client().get("/v1/models/pets").json()["name"] == "pets"


def test_health_and_readiness(server) -> None:
    client = server.client(key=None)
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/readyz").json() == {"status": "ready"}  # the models only for who has the key
    ready = server.client().get("/readyz").json()
    assert ready == {"status": "ready", "models": {"pets": True, "flip": True}}


def test_metrics_in_prometheus_text(server, photos) -> None:
    client = server.client()
    client.predict(photos[:2], model="pets")
    client.post_files("/v1/predict", [("bad.txt", b"nope")], model="pets")
    r = client.get("/metrics")
    assert r.status == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.body.decode()
    assert re.search(r'^headstart_requests_total\{route="/v1/predict",status="200"\} [1-9]', text, re.M)
    assert re.search(r'^headstart_requests_total\{route="/v1/predict",status="400"\} [1-9]', text, re.M)
    assert re.search(r'^headstart_request_duration_seconds_bucket\{route="/v1/predict",le="\+Inf"\} [1-9]', text, re.M)
    assert re.search(r'^headstart_batch_size_count\{model="pets"\} [1-9]', text, re.M)
    assert re.search(r'^headstart_queue_depth\{model="pets"\} \d+$', text, re.M)
    assert "# TYPE headstart_request_duration_seconds histogram" in text and "headstart_ready 1" in text


def test_docs_work_offline(server) -> None:
    client = server.client(key=None)
    html = client.get("/docs").body.decode()
    assert "swagger" in html.lower() and "cdn." not in html
    assets = re.findall(r'(?:src|href)="(/[^"]+)"', html)
    assert assets and all(client.get(a).status == 200 for a in assets), assets
    schema = client.get("/openapi.json").json()
    for path in (
        "/v1/predict",
        "/v1/explain",
        "/v1/models",
        "/healthz",
        "/readyz",
        "/metrics",
        "/v2/models/{name}/infer",
    ):
        assert path in schema["paths"], path
    assert "multipart/form-data" in schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]


def test_explain_returns_a_png_overlay(server, photos) -> None:
    client = server.client()
    name, data = photos[0]
    r = client.post_files("/v1/explain", [(name, data)], model="pets")
    assert r.status == 200, r.body[:300]
    assert r.headers["content-type"] == "image/png" and r.body[:8] == b"\x89PNG\r\n\x1a\n"
    overlay = Image.open(io.BytesIO(r.body))
    photo = Image.open(io.BytesIO(data))
    assert abs(overlay.width / overlay.height - photo.width / photo.height) < 0.02  # the whole photo, aspect kept
    top = client.predict([(name, data)], model="pets")["results"][0]["predictions"][0]["label"]
    assert r.headers["x-explained-label"] == top
    other = client.post_files("/v1/explain", [(name, data)], model="pets", target="pug")
    assert other.status == 200 and other.headers["x-explained-label"] == "pug" and other.body != r.body
    assert_refused(
        client.post_files("/v1/explain", [(name, data)], model="pets", target="unicorn"), 400, "bad_target", "unicorn"
    )
    assert_refused(client.post_files("/v1/explain", photos[:2], model="pets"), 400, "one_image")
    assert_refused(client.post_files("/v1/explain", [("n.txt", b"text")], model="pets"), 400, "not_an_image")


# --------------------------------------------------------------------------------------------- KServe v2 routes
def v2_infer(client: Client, model: str, images: list[bytes], **parameters) -> dict:
    request = {
        "id": "r1",
        "inputs": [
            {
                "name": "image",
                "shape": [len(images)],
                "datatype": "BYTES",
                "data": [base64.b64encode(i).decode() for i in images],
            }
        ],
    }
    if parameters:
        request["parameters"] = parameters
    r = client.request(
        "POST", f"/v2/models/{model}/infer", json.dumps(request).encode(), {"Content-Type": "application/json"}
    )
    assert r.status == 200, r.body[:500]
    return r.json()


def test_open_inference_protocol(server, photos) -> None:
    client = server.client()
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2/models/pets/ready").json()["ready"] is True
    meta = client.get("/v2/models/pets").json()
    assert meta["name"] == "pets" and meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert {o["name"] for o in meta["outputs"]} == {"probabilities", "labels", "scores"}
    images = [data for _, data in photos[:3]]
    answer = v2_infer(client, "pets", images, top_k=3)
    assert answer["model_name"] == "pets" and answer["id"] == "r1"
    out = {o["name"]: o for o in answer["outputs"]}
    assert out["probabilities"]["shape"] == [3, 12] and out["labels"]["shape"] == [3, 3]
    v1 = client.predict(photos[:3], model="pets", top_k=3)["results"]
    assert out["labels"]["data"] == [p["label"] for r in v1 for p in r["predictions"]]
    probabilities = np.array(out["probabilities"]["data"]).reshape(3, 12)
    assert np.allclose(probabilities.sum(1), 1, atol=1e-4)


def test_open_inference_protocol_binary_extension(server, photos) -> None:
    """What tritonclient sends: a JSON header, then the BYTES tensor as <uint32 length><bytes> elements."""
    images = [data for _, data in photos[:2]]
    raw = b"".join(struct.pack("<I", len(i)) + i for i in images)
    head = json.dumps(
        {
            "inputs": [
                {"name": "image", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": len(raw)}}
            ],
            "outputs": [{"name": "labels"}],
            "parameters": {"top_k": 1},
        }
    ).encode()
    client = server.client()
    r = client.request(
        "POST",
        "/v2/models/flip/infer",
        head + raw,
        {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))},
    )
    assert r.status == 200, r.body[:300]
    (labels,) = r.json()["outputs"]
    v1 = client.predict(photos[:2], model="flip", top_k=1)["results"]
    assert labels["name"] == "labels" and labels["data"] == [x["predictions"][0]["label"] for x in v1]


def test_open_inference_protocol_errors(server, photos) -> None:
    client = server.client()

    def refused(r, status: int, word: str) -> None:
        assert r.status == status, (r.status, r.body[:300])
        assert word in r.json()["error"], r.json()

    refused(client.get("/v2/models/cats"), 404, "cats")
    bad = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["%%% not base64"]}]}
    refused(client.request("POST", "/v2/models/pets/infer", json.dumps(bad).encode()), 400, "base64")
    text = {
        "inputs": [
            {"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(b"plain text").decode()]}
        ]
    }
    refused(client.request("POST", "/v2/models/pets/infer", json.dumps(text).encode()), 400, "not an image")
    fp32 = {"inputs": [{"name": "image", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
    refused(client.request("POST", "/v2/models/pets/infer", json.dumps(fp32).encode()), 400, "BYTES")
    refused(client.request("POST", "/v2/models/pets/infer", b"{not json"), 400, "JSON")
    shape = {
        "inputs": [
            {"name": "image", "shape": [2], "datatype": "BYTES", "data": [base64.b64encode(photos[0][1]).decode()]}
        ]
    }
    refused(client.request("POST", "/v2/models/pets/infer", json.dumps(shape).encode()), 400, "shape")
    assert_alive(server)
