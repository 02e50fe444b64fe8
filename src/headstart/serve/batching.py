"""Dynamic micro-batching: images from concurrent requests share one forward pass.

A network on a CPU or GPU computes 16 images in much less than 16 times the time of one, but HTTP clients send
one photo at a time. The batcher queues every image, and a worker thread takes up to ``max_batch_size`` of them:
whatever is already waiting, plus whatever arrives within ``max_wait_ms`` of the first. One-at-a-time traffic
pays at most ``max_wait_ms``; concurrent traffic is computed in batches. The forward pass runs on that thread, so
the event loop keeps accepting requests meanwhile. ``max_batch_size=1`` turns batching off.

Example:
    >>> batcher = MicroBatcher(lambda xs: [x * 2 for x in xs], max_batch_size=8, max_wait_ms=2)
    >>> batcher.submit(21).result()
    42
    >>> batcher.close()
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

from headstart._validation import check_int, check_number

T = TypeVar("T")
R = TypeVar("R")

_STOP = object()


class ShuttingDownError(RuntimeError):
    """Work refused because the server is shutting down (answered as a JSON 503)."""


class BatcherClosedError(ShuttingDownError):
    """The batcher was closed (the server is shutting down) before this item could run."""


class MicroBatcher(Generic[T, R]):
    """Groups items submitted from any thread into calls of ``run(batch) -> results`` (same length, same order).

    Args:
        run: computes a list of results for a list of items; an exception fails every item of that batch.
        max_batch_size: most items per call (1 = no batching).
        max_wait_ms: how long the first item of a batch waits for company (0 = take only what is queued).
        on_batch: called with each batch's size after it ran (metrics).
        name: names the worker thread.
    """

    def __init__(
        self,
        run: Callable[[list[T]], Sequence[R]],
        *,
        max_batch_size: int = 16,
        max_wait_ms: float = 5.0,
        on_batch: Callable[[int], None] | None = None,
        name: str = "headstart-batcher",
    ) -> None:
        self.max_batch_size = check_int(max_batch_size, "max_batch_size", "MicroBatcher", low=1)
        self.max_wait_ms = check_number(max_wait_ms, "max_wait_ms", "MicroBatcher", low=0)
        self._run = run
        self._on_batch = on_batch
        self._queue: queue.Queue[Any] = queue.Queue()
        self._in_flight = 0
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Items waiting plus items in the forward pass now."""
        return self._queue.qsize() + self._in_flight

    def submit(self, item: T) -> Future[R]:
        """Queue one item; the future gets its result (or the batch's exception)."""
        future: Future[R] = Future()
        with self._lock:
            if self._closed:
                future.set_exception(BatcherClosedError("the server is shutting down"))
                return future
            self._queue.put((item, future))
        return future

    def close(self, timeout: float | None = 30.0) -> None:
        """Finish the items already queued, then stop the worker thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join(timeout)

    # ----------------------------------------------------------------------------------------------- the worker
    def _collect(self, first: Any) -> tuple[list[Any], bool]:
        """The batch that starts with ``first``, and whether the stop marker was met."""
        batch = [first]
        deadline = time.monotonic() + self.max_wait_ms / 1000.0
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                entry = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if entry is _STOP:
                return batch, True
            batch.append(entry)
        return batch, False

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            batch, stopping = self._collect(first)
            self._in_flight = len(batch)
            live = [(item, fut) for item, fut in batch if fut.set_running_or_notify_cancel()]
            try:
                results = list(self._run([item for item, _ in live])) if live else []
                if len(results) != len(live):
                    raise RuntimeError(f"the batch function returned {len(results)} results for {len(live)} items")
            except BaseException as exc:
                for _, fut in live:
                    fut.set_exception(exc)
            else:
                for (_, fut), result in zip(live, results):
                    fut.set_result(result)
            finally:
                self._in_flight = 0
            if self._on_batch is not None and live:
                self._on_batch(len(live))
        while True:  # closed: nothing queued after the marker may hang
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                break
            if entry is not _STOP:
                entry[1].set_exception(BatcherClosedError("the server is shutting down"))


__all__ = ["BatcherClosedError", "MicroBatcher", "ShuttingDownError"]
