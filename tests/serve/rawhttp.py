"""Raw-socket HTTP for the limit tests: requests no well-behaved client sends (wrong Host, slow bodies, floods)."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from urllib.parse import urlsplit


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def connect(url: str, timeout: float = 30.0) -> socket.socket:
    return socket.create_connection(address(url), timeout=timeout)


def head(method: str, path: str, host: str, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP answer read from ``sock``: status, headers (lower-case names), body."""
    response = http.client.HTTPResponse(sock)
    response.begin()
    body = response.read()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body


def request(url: str, raw: bytes, timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    with connect(url, timeout) as sock:
        sock.sendall(raw)
        return read_answer(sock)


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """Whether the server closes ``sock`` within ``timeout`` seconds (reading and dropping anything it sends)."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return False


def healthz_seconds(url: str, key: str | None = None) -> float:
    """Seconds for one ``GET /healthz`` on a fresh connection (connect included)."""
    start = time.perf_counter()
    status, _, body = request(url, head("GET", "/healthz", "%s:%d" % address(url)), timeout=60)
    assert status == 200 and json.loads(body)["status"] == "ok", (status, body)
    return time.perf_counter() - start


class HealthProbe:
    """``/healthz`` asked every ``every`` seconds on a thread until stopped: the slowest answer is how long the
    server stalled."""

    def __init__(self, url: str, every: float = 0.05) -> None:
        self.url, self.every = url, every
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(120)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.latencies.append(healthz_seconds(self.url))
            except Exception as exc:  # a refused or dropped health check is as bad as an infinitely slow one
                self.errors.append(repr(exc))
                self.latencies.append(float("inf"))
            self._stop.wait(self.every)

    @property
    def worst(self) -> float:
        return max(self.latencies)
