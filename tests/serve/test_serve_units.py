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
