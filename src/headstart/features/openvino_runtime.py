"""Running a converted backbone: compiled once a process, its requests and batch size measured once a machine.

Two ways to run, chosen by the work (:func:`openvino_runner`):

- **latency** (a few photos: ``predict cat.jpg``, the server): one synchronous request on a model compiled with
  OpenVINO's LATENCY hint, every core on one photo.
- **throughput** (many photos): an ``AsyncInferQueue`` on a model compiled with the THROUGHPUT hint. ``submit``
  returns at once (it waits only when every request is busy), so the caller decodes the next photos while the
  previous ones are inferred, and collects finished batches with ``ready``/``drain``.

How many requests and how many photos a request: measured, not assumed. The first throughput run on a machine
times a few combinations (requests: 1, OpenVINO's optimal number, twice that; batches of 8 and 32 photos) on noise
images for a few seconds and keeps the fastest in a *plan* beside the converted model in the per-machine store
(:func:`~headstart._io.engine_dir`), named by the processor, its core count and OpenVINO's version, so another
machine (or a container given other cores) measures its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from headstart._console import say
from headstart._io import engine_dir, umask_mode, write_bytes_atomic, write_failure

if TYPE_CHECKING:
    import openvino

__all__ = ["OpenVinoRunner", "Plan", "compiled_model", "plan_for", "plan_path", "rows_fitting_memory", "view_batch"]

#: The combinations the calibration times: requests (1, OpenVINO's optimal number and twice it) x these batches.
CALIBRATION_BATCHES = (8, 32)


@dataclass(frozen=True)
class Plan:
    """How a converted model runs fastest on this machine: ``requests`` in flight of ``batch`` photos each."""

    requests: int
    batch: int
    images_per_second: float
    measured: dict[str, float]


def _machine() -> str:
    """What a plan depends on: the processor, the cores this process may use, OpenVINO's version."""
    import openvino

    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}|{cores}|{openvino.__version__}"


def plan_path(model_path: Path, hint: str) -> Path:
    """Where the plan of ``model_path`` compiled with ``hint`` lives for this machine."""
    machine = hashlib.sha256(_machine().encode()).hexdigest()[:12]
    return model_path.with_name(f"{model_path.stem}.plan-{hint}-{machine}.json")


def plan_for(model_path: Path, hint: str, size: int) -> Plan:
    """The plan kept for this machine, or measured now (a few seconds, once) and kept."""
    path = plan_path(model_path, hint)
    try:
        return Plan(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        pass  # none yet (or damaged): measured again
    start = time.perf_counter()
    plan = _calibrate(compiled_model(str(model_path), hint, "THROUGHPUT"), size)
    say(
        f"Measured how this machine runs the backbone fastest (once): {plan.requests} request(s) of "
        f"{plan.batch} photos, {plan.images_per_second:.0f} img/s ({time.perf_counter() - start:.1f} s)"
    )
    try:
        write_bytes_atomic(path, json.dumps(asdict(plan)).encode())
    except OSError:
        pass  # (a read-only store: measured again next time)
    return plan


def _calibrate(compiled: Any, size: int, seconds: float = 0.25) -> Plan:
    """Time each combination for about ``seconds`` (at least one batch a request) on noise images; the fastest
    wins."""
    import openvino

    optimal = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
    rng = np.random.default_rng(0)
    measured: dict[str, float] = {}
    for requests in sorted({1, optimal, 2 * optimal}):
        for batch in CALIBRATION_BATCHES:
            photos = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
            queue = openvino.AsyncInferQueue(compiled, requests)
            for _ in range(requests):  # warm-up: a request's first run allocates
                queue.start_async({0: photos})
            queue.wait_all()
            done, start = 0, time.perf_counter()
            while done < requests or time.perf_counter() - start < seconds:
                queue.start_async({0: photos})
                done += 1
            queue.wait_all()
            measured[f"{requests}x{batch}"] = done * batch / (time.perf_counter() - start)
    best = max(measured, key=measured.__getitem__)
    requests, batch = (int(v) for v in best.split("x"))
    return Plan(requests, batch, round(measured[best], 1), {k: round(v, 1) for k, v in measured.items()})


def save_ir(model: Any, path: Path) -> None:
    """Save an OpenVINO model as IR at ``path`` atomically: staged beside it, then the weights (``.bin``) first and
    the ``.xml`` that names them last, so a reader never finds an ``.xml`` without its weights."""
    import tempfile

    import openvino

    with tempfile.TemporaryDirectory(dir=path.parent if path.parent.is_dir() else None) as tmp:
        staged = Path(tmp) / "model.xml"
        try:
            openvino.save_model(model, str(staged), compress_to_fp16=False)
        except RuntimeError as exc:  # (OpenVINO keeps no errno: the file system is asked why, naming the file)
            raise write_failure(path, exc) from exc
        write_bytes_atomic(path.with_suffix(".bin"), staged.with_suffix(".bin").read_bytes())
        write_bytes_atomic(path, staged.read_bytes())


@lru_cache(maxsize=8)
def compiled_model(
    path: str, precision_hint: str, performance: str, threads: int | None = None
) -> openvino.CompiledModel:
    """The converted model compiled for this CPU, once a process (bf16 only where the CPU has it natively), on
    ``threads`` threads (None: OpenVINO's choice, one a core)."""
    core = _core()
    if precision_hint == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        precision_hint = "f32"
    settings = {"INFERENCE_PRECISION_HINT": precision_hint, "PERFORMANCE_HINT": performance}
    if threads is not None:
        settings["INFERENCE_NUM_THREADS"] = int(threads)
    compiled = core.compile_model(core.read_model(path), "CPU", settings)
    _umask_permissions(engine_dir() / "openvino-compiled")
    return compiled


def _umask_permissions(folder: Path) -> None:
    """OpenVINO writes its compiled blobs 0440; headstart's outputs get 0666 minus the umask (0644 under umask 022,
    so a group sharing the store can read them), these too."""
    mode = umask_mode()
    try:
        blobs = [entry for entry in folder.iterdir() if entry.suffix == ".blob" and entry.is_file()]
    except OSError:
        return
    for blob in blobs:
        try:
            if blob.stat().st_mode & 0o777 != mode and blob.stat().st_uid == os.getuid():
                blob.chmod(mode)
        except OSError:  # (another user's blob, or one removed meanwhile)
            continue


@lru_cache(maxsize=1)
def _core() -> openvino.Core:
    """OpenVINO's runtime, with its compiled-model cache in the per-machine store where that can be written:
    compiling a converted backbone takes 0.15-0.3 s, reading it back 0.06 s, a good part of a one-photo
    ``predict``. (OpenVINO keys the blobs by model, device and settings, and compiles again over a damaged one: a
    blob cut to a third by hand was recompiled and rewritten.)"""
    import openvino

    core = openvino.Core()
    folder = engine_dir() / "openvino-compiled"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if os.access(folder, os.W_OK):
            core.set_property({"CACHE_DIR": str(folder)})
    except (OSError, RuntimeError):
        pass  # (a read-only store: compile every time)
    return core


def view_batch(crops: np.ndarray, wanted: list[tuple[int, str]]) -> np.ndarray:
    """The rows asked for: ``crops[i]`` as it is (``"orig"``) or mirrored (``"mirror"``), one row a pair."""
    unknown = {view for _, view in wanted} - {"orig", "mirror"}
    if unknown:
        raise ValueError(f"Unknown view(s) {sorted(unknown)}: a view is one of orig, mirror.")
    views = crops[[i for i, _ in wanted]]
    mirror = np.array([view == "mirror" for _, view in wanted])
    if mirror.any():
        views[mirror] = views[mirror][:, :, ::-1]
    return views


class OpenVinoRunner:
    """A converted backbone ready to run: ``embed`` (synchronous) and ``submit``/``ready``/``drain`` (asynchronous).

    Args:
        path: the converted model (``.xml``).
        precision_hint: ``bf16`` or ``f32``.
        throughput: run many photos (the THROUGHPUT hint, an async queue sized by the machine's :class:`Plan`);
            else one synchronous request under the LATENCY hint.
        rows_at_once: the most photos one inference may hold (memory).
    """

    def __init__(self, path: Path, precision_hint: str, *, throughput: bool, size: int, rows_at_once: int) -> None:
        import openvino

        self.throughput = throughput
        self.plan = plan_for(path, precision_hint, size) if throughput else None
        performance = "THROUGHPUT" if throughput else "LATENCY"
        self._compiled = compiled_model(str(path), precision_hint, performance)
        self._request = None if throughput else self._compiled.create_infer_request()
        self._batch = min(rows_at_once, self.plan.batch) if self.plan else rows_at_once
        self._queue: Any = None
        if self.plan is not None:
            self._queue = openvino.AsyncInferQueue(self._compiled, self.plan.requests)
            self._queue.set_callback(self._finished)
        self._lock = threading.Lock()
        self._parts: dict[Any, dict[int, np.ndarray]] = {}  # tag -> chunk -> rows
        self._expected: dict[Any, int] = {}
        self._errors: list[BaseException] = []

    @property
    def batch(self) -> int:
        """Photos a request runs at once."""
        return self._batch

    def embed(self, crops: np.ndarray, wanted: list[tuple[int, str]]) -> np.ndarray:
        """Features of the views asked for, computed now (one row a ``(i, view)`` pair)."""
        if self._queue is not None:
            self.submit(crops, wanted, tag=("embed", id(crops)))
            ((_, rows),) = [r for r in self.drain() if r[0] == ("embed", id(crops))]
            return rows
        views = view_batch(crops, wanted)
        out = []
        for start in range(0, len(views), self._batch):
            self._request.infer({0: np.ascontiguousarray(views[start : start + self._batch])})
            out.append(self._request.get_output_tensor(0).data.astype(np.float32, copy=True))
        return np.concatenate(out) if len(out) > 1 else out[0]

    def submit(self, crops: np.ndarray, wanted: list[tuple[int, str]], tag: Any) -> None:
        """Start computing the views asked for; their rows come back under ``tag`` from :meth:`ready`/:meth:`drain`.
        Returns at once unless every request is busy."""
        if self._queue is None:
            rows = self.embed(crops, wanted)
            with self._lock:
                self._parts[tag], self._expected[tag] = {0: rows}, 1
            return
        views = view_batch(crops, wanted)
        starts = range(0, len(views), self._batch)
        with self._lock:
            self._parts[tag], self._expected[tag] = {}, len(starts)
        for chunk, start in enumerate(starts):
            self._queue.start_async({0: np.ascontiguousarray(views[start : start + self._batch])}, (tag, chunk))

    def _finished(self, request: Any, userdata: tuple[Any, int]) -> None:
        tag, chunk = userdata
        try:
            rows = request.get_output_tensor(0).data.astype(np.float32, copy=True)
        except BaseException as exc:  # (raised in OpenVINO's thread: handed to the caller by ready/drain)
            with self._lock:
                self._errors.append(exc)
            return
        with self._lock:
            self._parts[tag][chunk] = rows

    def ready(self) -> list[tuple[Any, np.ndarray]]:
        """The submitted work finished so far, ``(tag, rows)`` each (taken: each comes back once)."""
        with self._lock:
            if self._errors:
                raise self._errors.pop(0)
            done = [t for t, parts in self._parts.items() if len(parts) == self._expected[t]]
            out = []
            for tag in done:
                parts = self._parts.pop(tag)
                del self._expected[tag]
                out.append((tag, np.concatenate([parts[c] for c in sorted(parts)]) if len(parts) > 1 else parts[0]))
        return out

    def drain(self) -> list[tuple[Any, np.ndarray]]:
        """Wait for everything submitted, then :meth:`ready`."""
        if self._queue is not None:
            self._queue.wait_all()
        return self.ready()


def rows_fitting_memory(size: int) -> int:
    """How many photos one inference may hold: a quarter of the available memory over a generous estimate of one
    photo's activations (64 float copies of its input), between 1 and 256."""
    per_photo = 64 * 3 * size * size * 4
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 32
    return int(min(256, max(1, free // 4 // per_photo)))
