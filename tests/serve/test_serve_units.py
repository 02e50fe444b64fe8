"""The serving pieces in-process: the micro-batcher, the metrics text, the binary tensor format, the served model."""

from __future__ import annotations

import struct
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="headstart serve needs the serve extra (pip install 'headstart[serve]')")

from headstart.serve.batching import BatcherClosedError, MicroBatcher
from headstart.serve.kserve import parse_bytes_tensor
from headstart.serve.metrics import Metrics
from headstart.serve.uploads import ApiError

SAMPLE = Path(__file__).resolve().parents[2] / "src" / "headstart" / "sample_data" / "pets"


def test_batcher_groups_concurrent_items_and_keeps_their_results_apart() -> None:
    sizes: list[int] = []
    gate = threading.Event()

    def run(items: list[int]) -> list[int]:
        gate.wait(5)  # the first batch blocks, so the next items queue up behind it
        return [x * 10 for x in items]

    batcher = MicroBatcher(run, max_batch_size=4, max_wait_ms=50, on_batch=sizes.append)
    futures = [batcher.submit(i) for i in range(9)]
    time.sleep(0.2)
    gate.set()
    assert [f.result(5) for f in futures] == [i * 10 for i in range(9)]
    batcher.close()
    assert sum(sizes) == 9 and max(sizes) == 4 and len(sizes) <= 4, sizes


def test_batcher_without_batching_runs_one_at_a_time() -> None:
    sizes: list[int] = []
    batcher = MicroBatcher(lambda xs: xs, max_batch_size=1, max_wait_ms=0, on_batch=sizes.append)
    assert [f.result(5) for f in [batcher.submit(i) for i in range(5)]] == list(range(5))
    batcher.close()
    assert sizes == [1] * 5


def test_batcher_failure_reaches_every_item_and_it_keeps_going() -> None:
    def run(items: list[int]) -> list[int]:
        if 3 in items:
            raise RuntimeError("bad batch")
        return items

    batcher = MicroBatcher(run, max_batch_size=8, max_wait_ms=0)
    failed = batcher.submit(3)
    with pytest.raises(RuntimeError, match="bad batch"):
        failed.result(5)
    assert batcher.submit(4).result(5) == 4
    batcher.close()
    with pytest.raises(BatcherClosedError):
        batcher.submit(5).result(5)


def test_batcher_checks_its_parameters() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        MicroBatcher(lambda xs: xs, max_batch_size=0)


def test_metrics_text_format() -> None:
    m = Metrics(["pets"])
    for _ in range(3):
        m.request_started()
    m.observe_request("/v1/predict", 200, 0.03)
    m.observe_request("/v1/predict", 400, 0.002)
    m.observe_batch("pets", 3)
    text = m.render(queue_depth={"pets": 2})
    assert 'headstart_requests_total{route="/v1/predict",status="200"} 1' in text
    assert 'headstart_request_duration_seconds_bucket{route="/v1/predict",le="0.05"} 2' in text
    assert 'headstart_request_duration_seconds_bucket{route="/v1/predict",le="0.025"} 1' in text
    assert 'headstart_batch_size_bucket{model="pets",le="2"} 0' in text
    assert 'headstart_batch_size_bucket{model="pets",le="4"} 1' in text
    assert 'headstart_images_total{model="pets"} 3' in text and 'headstart_queue_depth{model="pets"} 2' in text
    assert "headstart_requests_in_flight 1" in text
    assert text.endswith("\n") and all(line.startswith(("#", "headstart_")) for line in text.splitlines())


def test_binary_bytes_tensor() -> None:
    raw = struct.pack("<I", 3) + b"abc" + struct.pack("<I", 0) + struct.pack("<I", 2) + b"de"
    assert parse_bytes_tensor(raw) == [b"abc", b"", b"de"]
    with pytest.raises(ApiError, match="claims 9 bytes"):
        parse_bytes_tensor(struct.pack("<I", 9) + b"abc")


@pytest.mark.slow
def test_served_model_equals_predict_exactly_in_fp32(sample_model: Path, tmp_path: Path) -> None:
    from headstart.features.extract import FeatureCache
    from headstart.models.classifier import Classifier
    from headstart.serve.model import ServedModel

    paths = sorted((SAMPLE / "test").rglob("*.jpg"))[:5]
    served = ServedModel.open(sample_model, precision="fp32").load(warm_up_batch=2)
    rows = served.infer([served.prepare(p.read_bytes(), p.name) for p in paths])  # one batch of 5
    want = Classifier.load(sample_model).predict(paths, top_k=12, precision="fp32", cache=FeatureCache(tmp_path / "c"))
    for row, p in zip(rows, want.predictions):
        assert served.top(row, 12) == p.to_dict()["predictions"]
    card = served.card()
    assert card["inference"]["precision"] == "fp32" and card["n_classes"] == 12
    assert "path" not in card and "data" not in card  # no server paths in what clients see


@pytest.mark.slow
def test_answers_never_show_the_servers_paths(tmp_path: Path) -> None:
    """error_payload is the one place every JSON error is worded: the server's files (the model paths it was given,
    and any absolute path naming something on this machine) become `<server path>`; URL paths stay."""
    from headstart.serve.uploads import ApiError, error_payload, keep_private

    model = tmp_path / "models" / "pets.safetensors"
    model.parent.mkdir()
    model.write_bytes(b"x")
    keep_private(["relative/dir/pets.safetensors"])
    detail = f"could not load {model}: damaged; also relative/dir/pets.safetensors, and {tmp_path}/gone.bin; retry when GET /readyz answers; /v1/explain explains one photo"
    for path in ("/v1/predict", "/v2/models/pets/infer"):
        body, _ = error_payload(path, ApiError(500, "internal_error", detail))
        text = body.get("detail") or body["error"]
        assert str(tmp_path) not in text and "relative/dir" not in text, text
        assert text.count("<server path>") == 3, text
        assert "GET /readyz answers" in text and "/v1/explain explains" in text


def test_json_is_counted_before_it_is_parsed() -> None:
    from headstart.serve.limits import Limits, check_json_tokens

    limits = Limits()
    check_json_tokens(b'{"inputs":[{"name":"image","shape":[2],"datatype":"BYTES","data":["QUJD","REVG"]}]}', 2, limits)
    with pytest.raises(ApiError, match="6000001 separators") as refused:
        check_json_tokens(b"[" + b",".join([b"0"] * 6_000_002) + b"]", 16, limits)
    assert refused.value.status == 413
    with pytest.raises(ApiError, match="arrays and objects"):
        check_json_tokens(b"[" * 300 + b"]" * 300, 16, limits)


def test_host_names() -> None:
    from headstart.serve.limits import host_name, trusted_hosts

    assert host_name("[::1]:8000") == "[::1]" and host_name("Example.ORG.:80") == "example.org"
    assert host_name("localhost") == "localhost" and host_name("evil:1:2") == "evil:1:2"
    assert trusted_hosts("127.0.0.1", loopback=True) == {"localhost", "127.0.0.1", "[::1]"}
    assert "[::1]" in trusted_hosts("::1", loopback=True) and trusted_hosts("0.0.0.0", loopback=False) is None
