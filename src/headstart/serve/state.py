"""What the routes share: the models, one micro-batcher each, the metrics, and whether loading has finished."""

from __future__ import annotations

import asyncio
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from headstart._console import say
from headstart.errors import HeadstartError, UnusableImageError
from headstart.serve.batching import MicroBatcher, ShuttingDownError
from headstart.serve.config import ServeConfig
from headstart.serve.metrics import Metrics
from headstart.serve.model import ServedModel
from headstart.serve.uploads import ApiError, Upload, image_error, keep_private, too_many_files


class ServerState:
    """The models being served and everything about them that requests read or change.

    Loading (building the networks, warming them up) runs on a background thread started by :meth:`start_loading`,
    so the server listens at once: ``/healthz`` answers while ``/readyz`` says 503 until every model is ready.
    """

    def __init__(self, models: Sequence[ServedModel], config: ServeConfig) -> None:
        names = [m.name for m in models]
        if not models:
            raise ValueError("headstart serve needs at least one model file.")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(
                f"Two models would be served as {duplicates[0]!r}: name them with NAME=PATH "
                f"(e.g. {duplicates[0]}-2=other/{duplicates[0]}.safetensors)."
            )
        self.config = config
        self.models = {m.name: m for m in models}
        self.metrics = Metrics(names)
        self.batchers: dict[str, MicroBatcher] = {}
        self.ready = False
        self.stopping = False
        self.error: str | None = None
        self.started = time.time()
        self.on_ready: Callable[[], None] | None = None
        self.on_failure: Callable[[str], None] | None = None
        self._loader: threading.Thread | None = None
        self._explainers: dict[str, ThreadPoolExecutor] = {}
        self._waiting: set[Any] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        keep_private(m.path for m in models)  # error texts never show where the server keeps its files

    # ------------------------------------------------------------------------------------------ life cycle
    def start_loading(self) -> None:
        self._loop = asyncio.get_running_loop()
        # Not a daemon: the interpreter must not exit under a thread inside a native library (OpenVINO aborts).
        self._loader = threading.Thread(target=self._load_all, name="headstart-load")
        self._loader.start()

    @property
    def loading(self) -> bool:
        return self._loader is not None and self._loader.is_alive()

    def finish_loading(self) -> bool:
        """Wait for a load still running (a stop during start-up); whether there was one."""
        if self._loader is None or not self._loader.is_alive():
            return False
        self._loader.join()
        return True

    def _load_all(self) -> None:
        try:
            for model in self.models.values():
                t0 = time.perf_counter()
                size = self.config.max_batch_size or model.batch_size
                if self.stopping:  # a stop signal during start-up: leave the rest unloaded
                    return
                model.load(warm_up_batch=size)
                if self.stopping:
                    return
                model.load_explainer()
                self.batchers[model.name] = MicroBatcher(
                    model.infer,
                    max_batch_size=size,
                    max_wait_ms=self.config.max_wait_ms,
                    on_batch=lambda n, name=model.name: self.metrics.observe_batch(name, n),
                    name=f"headstart-batch-{model.name}",
                )
                say(
                    f"loaded {model.name} ({len(model.classes)} classes on {model.classifier.spec.name}, "
                    f"{model.engine} {model.precision}, batches of up to {size}) in {time.perf_counter() - t0:.1f} s"
                )
        except Exception as exc:
            self.error = f"could not load the models: {exc}"
            if not isinstance(exc, HeadstartError):  # a bug, not a bad file: keep the traceback
                self.error = f"could not load the models: {type(exc).__name__}: {exc}"
                traceback.print_exc()
            if self.on_failure is not None:
                self.on_failure(self.error)
            return
        self.ready = True
        if self.on_ready is not None:
            self.on_ready()

    def begin_shutdown(self) -> None:
        """A stop signal arrived: work not yet started is refused with a JSON 503 from now on, explanations waiting
        their turn at once (requests already computing finish). Safe to call from a signal handler."""
        self.stopping = True
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._cancel_waiting)

    def _cancel_waiting(self) -> None:
        with self._lock:
            waiting = list(self._waiting)
        for future in waiting:
            future.cancel()  # (only those not started: the one computing finishes)

    def _forget(self, future: Any) -> None:
        with self._lock:
            self._waiting.discard(future)

    def close(self) -> None:
        """Finish queued work and stop the batcher and explanation threads (server shutdown)."""
        for batcher in self.batchers.values():
            batcher.close()
        for worker in self._explainers.values():
            worker.shutdown(wait=False, cancel_futures=True)

    # ---------------------------------------------------------------------------------------------- lookups
    def require_ready(self) -> None:
        if self.stopping:
            raise ShuttingDownError("the server is shutting down")
        if not self.ready:
            why = self.error or "the models are still loading (building the network, warming it up)"
            raise ApiError(503, "not_ready", f"Not ready: {why}. Retry when GET /readyz answers 200.")

    def model(self, name: str | None) -> ServedModel:
        """The model a request names (``None``: the only one served)."""
        if name is None or name == "":
            if len(self.models) == 1:
                return next(iter(self.models.values()))
            raise ApiError(
                400,
                "model_required",
                f"Several models are served ({', '.join(self.models)}): say which with ?model=NAME.",
                models=list(self.models),
            )
        model = self.models.get(name)
        if model is None:
            raise ApiError(
                404,
                "unknown_model",
                f"No model {name!r} is served here; the models are: {', '.join(self.models)}.",
                models=list(self.models),
            )
        return model

    def queue_depth(self) -> dict[str, int]:
        return {name: (b.depth if (b := self.batchers.get(name)) else 0) for name in self.models}

    # --------------------------------------------------------------------------------------------- inference
    async def classify(self, model: ServedModel, uploads: Sequence[Upload]) -> list[np.ndarray]:
        """Probabilities for each upload, in order: decoded off the event loop, then batched with other requests'."""
        from starlette.concurrency import run_in_threadpool

        self.require_ready()
        if len(uploads) > self.config.max_files:
            raise too_many_files(len(uploads), self.config.max_files)

        async def prepare(upload: Upload) -> Any:
            try:
                return await run_in_threadpool(model.prepare, upload.data, upload.filename)
            except UnusableImageError as exc:
                raise image_error(exc, upload.filename) from None
            except Exception as exc:  # a transform failing on an odd image is the image's problem, not a 500
                raise ApiError(
                    400,
                    "unusable_image",
                    f"{upload.filename}: cannot preprocess this image ({type(exc).__name__}: {exc})",
                    filename=upload.filename,
                ) from None

        tensors = await asyncio.gather(*(prepare(u) for u in uploads))
        batcher = self.batchers[model.name]
        futures = [asyncio.wrap_future(batcher.submit(t)) for t in tensors]
        rows = list(await asyncio.gather(*futures))
        for upload, row in zip(uploads, rows):
            if isinstance(row, UnusableImageError):
                raise image_error(row, upload.filename)
        return rows

    async def explain(
        self, model: ServedModel, upload: Upload, *, target: str | None, method: str
    ) -> tuple[bytes, dict[str, Any]]:
        """The Grad-CAM overlay PNG of one upload and what it explains, computed off the event loop."""
        with self._lock:
            worker = self._explainers.get(model.name)
            if worker is None:  # one thread per model: explanations queue as bytes, and one thread's heap holds
                worker = ThreadPoolExecutor(1, thread_name_prefix=f"headstart-explain-{model.name}")  # their pixels
                self._explainers[model.name] = worker
        future = worker.submit(
            model.explain_png,
            upload.data,
            upload.filename,
            target=target,
            method=method,
            stopping=lambda: self.stopping,
        )
        with self._lock:
            self._waiting.add(future)
        future.add_done_callback(self._forget)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if self.stopping:  # its turn never came (begin_shutdown), or the shutdown's grace period is over
                raise ShuttingDownError(f"the server is shutting down; {upload.filename} was not explained") from None
            raise
        except UnusableImageError as exc:
            raise image_error(exc, upload.filename) from None
        except HeadstartError as exc:  # an unknown target class
            raise ApiError(400, "bad_target", str(exc)) from None


__all__ = ["ServerState"]
