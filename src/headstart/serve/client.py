"""A small standard-library client for ``headstart serve``: uploads, and a bounded load generator.

The load test and ``benchmarks/serve.py`` use it, and so can a user checking a deployment: ``load`` sends a
fixed number of requests from ``concurrency`` threads over keep-alive connections, stops by itself, and reports
throughput, latency percentiles and every error.

Example:
    >>> c = Client("http://127.0.0.1:8000")
    >>> c.predict([("cat.jpg", Path("cat.jpg").read_bytes())])["results"][0]["predictions"][0]["label"]
    'Bengal'
    >>> load("http://127.0.0.1:8000", [("cat.jpg", data)], requests=800, concurrency=16).summary()
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import numpy as np


def multipart(files: Sequence[tuple[str, bytes]], field_name: str = "file") -> tuple[bytes, str]:
    """A multipart/form-data body with one part per ``(filename, bytes)``, and its Content-Type."""
    boundary = f"headstart-{uuid.uuid4().hex}"
    chunks = []
    for name, data in files:
        safe = name.replace('"', "%22").replace("\r", "").replace("\n", "")
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; filename="{safe}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode()
        )
        chunks.append(data)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """One keep-alive connection to a server (not thread-safe: one per thread).

    Args:
        base_url: ``http://host:port``.
        api_key: sent as ``X-API-Key`` when given.
        timeout: seconds per request.
    """

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 60.0) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.api_key = api_key
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        query: Mapping[str, Any] | None = None,
    ) -> Response:
        """One request; reconnects once if the server closed the kept-alive connection."""
        url = path + ("?" + urlencode({k: v for k, v in query.items() if v is not None}) if query else "")
        sent = dict(headers or {})
        if self.api_key and "X-API-Key" not in sent:
            sent["X-API-Key"] = self.api_key
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self._conn.request(method, url, body=body, headers=sent)
                r = self._conn.getresponse()
                data = r.read()
            except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
                self.close()
                if attempt:
                    raise
                continue
            if r.getheader("connection", "").lower() == "close":
                self.close()
            return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
        raise AssertionError("unreachable")

    def get(self, path: str, **kwargs: Any) -> Response:
        return self.request("GET", path, **kwargs)

    def post_files(self, path: str, files: Sequence[tuple[str, bytes]], **query: Any) -> Response:
        body, content_type = multipart(files)
        return self.request("POST", path, body, {"Content-Type": content_type}, query)

    def predict(self, files: Sequence[tuple[str, bytes]], **query: Any) -> dict[str, Any]:
        """``POST /v1/predict`` (raises for a non-200 answer)."""
        r = self.post_files("/v1/predict", files, **query)
        if r.status != 200:
            raise RuntimeError(f"/v1/predict answered {r.status}: {r.body[:300]!r}")
        return r.json()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@dataclass
class LoadResult:
    """What :func:`load` measured."""

    requests: int
    concurrency: int
    seconds: float
    latencies_ms: list[float] = field(repr=False)
    errors: list[str]

    @property
    def requests_per_second(self) -> float:
        return len(self.latencies_ms) / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "concurrency": self.concurrency,
            "errors": len(self.errors),
            "seconds": round(self.seconds, 2),
            "requests_per_second": round(self.requests_per_second, 1),
            "p50_ms": round(self.percentile(50), 1),
            "p99_ms": round(self.percentile(99), 1),
        }


def load(
    base_url: str,
    photos: Sequence[tuple[str, bytes]],
    *,
    requests: int = 800,
    concurrency: int = 16,
    api_key: str | None = None,
    query: Mapping[str, Any] | None = None,
    timeout: float = 60.0,
) -> LoadResult:
    """Send ``requests`` one-photo ``/v1/predict`` requests (cycling through ``photos``) from ``concurrency``
    threads, each on its own keep-alive connection; every non-200 answer or exception is an error."""
    counter = iter(range(requests))
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []

    def worker() -> None:
        client = Client(base_url, api_key=api_key, timeout=timeout)
        try:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                photo = photos[i % len(photos)]
                t0 = time.perf_counter()
                try:
                    r = client.post_files("/v1/predict", [photo], **dict(query or {}))
                    ok = r.status == 200
                    problem = "" if ok else f"{photo[0]}: HTTP {r.status} {r.body[:200]!r}"
                except Exception as exc:
                    ok, problem = False, f"{photo[0]}: {type(exc).__name__}: {exc}"
                elapsed = (time.perf_counter() - t0) * 1000
                with lock:
                    if ok:
                        latencies.append(elapsed)
                    else:
                        errors.append(problem)
        finally:
            client.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, name=f"load-{i}", daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return LoadResult(requests, concurrency, time.perf_counter() - start, latencies, errors)


__all__ = ["Client", "LoadResult", "Response", "load", "multipart"]
