"""A bounded load test on loopback: a fixed number of requests at concurrency 16 (400; HEADSTART_LOAD_REQUESTS=800
for more), zero errors allowed, and the micro-batcher must have grouped them."""

from __future__ import annotations

import os
import re

import pytest
from servetools import photos, served_models, server  # noqa: F401  (the fixtures; tests/serve/servetools.py)

from headstart.serve.client import load

pytestmark = pytest.mark.slow
REQUESTS = int(os.environ.get("HEADSTART_LOAD_REQUESTS", "400"))


def batches(server, model: str) -> tuple[int, int]:
    text = server.client().get("/metrics").body.decode()
    count = int(re.search(rf'^headstart_batch_size_count\{{model="{model}"\}} (\d+)', text, re.M).group(1))
    images = int(re.search(rf'^headstart_images_total\{{model="{model}"\}} (\d+)', text, re.M).group(1))
    return count, images


def test_load_at_concurrency_16_has_no_errors(server, photos, record_property) -> None:
    before = batches(server, "pets")
    result = load(
        server.url,
        photos,
        requests=REQUESTS,
        concurrency=16,
        api_key=server.api_key,
        query={"model": "pets"},
        timeout=60,
    )
    summary = result.summary()
    print(f"\nload: {summary}")
    record_property("load", summary)  # (p50/p99 in the JUnit report too)
    assert result.errors == [], result.errors[:5]
    assert len(result.latencies_ms) == REQUESTS
    after = batches(server, "pets")
    n_batches, n_images = after[0] - before[0], after[1] - before[1]
    assert n_images == REQUESTS
    assert n_images / n_batches > 2, (
        f"concurrent requests should share forward passes: {n_images} images in {n_batches} batches"
    )
    assert server.client(key=None).get("/healthz").status == 200
