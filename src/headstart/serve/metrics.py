"""The server's counters in the Prometheus text format (``GET /metrics``), without a client library.

Enough to run a model behind a load balancer: requests by route and status, request latency by route, requests
in flight, the sizes of the batches the micro-batcher ran, and how many images wait for one. Thread-safe: the event
loop counts requests, the batcher threads count batches.

Example:
    >>> m = Metrics(["pets"])
    >>> m.request_started()
    >>> m.observe_request("/v1/predict", 200, 0.031)
    >>> "headstart_requests_total" in m.render(queue_depth={"pets": 0})
    True
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Mapping, Sequence

#: Request latency buckets in seconds (le): a batched CPU forward takes tens to hundreds of milliseconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Batch size buckets (images per forward pass).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Histogram:
    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += 1
        self.sum += value

    def lines(self, name: str, labels: str) -> list[str]:
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{_number(b)}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.total}')
        braces = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{braces} {self.sum!r}", f"{name}_count{braces} {self.total}"]
        return out


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """What ``/metrics`` reports: request counts and latencies, batch sizes, queue depth, readiness."""

    def __init__(self, models: Sequence[str]) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, int], int] = defaultdict(int)
        self._latency: dict[str, _Histogram] = {}
        self._batches = {name: _Histogram(BATCH_BUCKETS) for name in models}
        self._images = dict.fromkeys(models, 0)
        self._in_flight = 0

    def request_started(self) -> None:
        with self._lock:
            self._in_flight += 1

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        """A request answered (and no longer in flight)."""
        with self._lock:
            self._in_flight -= 1
            self._requests[(route, int(status))] += 1
            self._latency.setdefault(route, _Histogram(LATENCY_BUCKETS)).observe(seconds)

    def observe_batch(self, model: str, size: int) -> None:
        with self._lock:
            self._batches.setdefault(model, _Histogram(BATCH_BUCKETS)).observe(size)
            self._images[model] = self._images.get(model, 0) + size

    def render(self, *, queue_depth: Mapping[str, int], ready: bool = True) -> str:
        """The exposition text (format 0.0.4)."""
        with self._lock:
            lines = [
                "# HELP headstart_requests_total HTTP requests answered, by route template and status code.",
                "# TYPE headstart_requests_total counter",
            ]
            for (route, status), n in sorted(self._requests.items()):
                lines.append(f'headstart_requests_total{{route="{_label(route)}",status="{status}"}} {n}')
            lines += [
                "# HELP headstart_request_duration_seconds Time from request to response, by route template.",
                "# TYPE headstart_request_duration_seconds histogram",
            ]
            for route, hist in sorted(self._latency.items()):
                lines += hist.lines("headstart_request_duration_seconds", f'route="{_label(route)}"')
            lines += [
                "# HELP headstart_batch_size Images per forward pass run by the micro-batcher, by model.",
                "# TYPE headstart_batch_size histogram",
            ]
            for model, hist in sorted(self._batches.items()):
                lines += hist.lines("headstart_batch_size", f'model="{_label(model)}"')
            lines += [
                "# HELP headstart_images_total Images classified, by model.",
                "# TYPE headstart_images_total counter",
            ]
            lines += [f'headstart_images_total{{model="{_label(m)}"}} {n}' for m, n in sorted(self._images.items())]
            lines += [
                "# HELP headstart_requests_in_flight HTTP requests received and not yet answered.",
                "# TYPE headstart_requests_in_flight gauge",
                f"headstart_requests_in_flight {self._in_flight}",
            ]
        lines += [
            "# HELP headstart_queue_depth Images waiting for (or in) a forward pass, by model.",
            "# TYPE headstart_queue_depth gauge",
        ]
        lines += [f'headstart_queue_depth{{model="{_label(m)}"}} {n}' for m, n in sorted(queue_depth.items())]
        lines += [
            "# HELP headstart_ready 1 once every model is loaded and warmed up.",
            "# TYPE headstart_ready gauge",
            f"headstart_ready {int(ready)}",
        ]
        return "\n".join(lines) + "\n"


__all__ = ["BATCH_BUCKETS", "CONTENT_TYPE", "LATENCY_BUCKETS", "Metrics"]
