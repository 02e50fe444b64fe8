"""The one inference pipeline: photo -> decode -> preprocess -> embed the views -> average -> head -> top-k.

Everything that runs a backbone on photos goes through :class:`Pipeline`: extraction (:mod:`.extract`, hence
``extract``, ``train``, ``predict``, ``evaluate`` and the audit), the server (``serve/model.py``) and the ONNX
export's checks. It is the one place that chooses

- the **engine and precision** (``auto``: OpenVINO on a CPU where it is installed and reproduces the backbone's
  preprocessing, else torch; bf16 where the CPU computes it natively, else fp32),
- the **preprocessing**: the photo decoded at a reduced size (JPEG draft mode), then the centre crop resized at its
  box only (:func:`~headstart.features.preprocess.uint8_crop`) into uint8 crops every engine reads (timm's own
  transform only for a backbone whose preprocessing those crops cannot reproduce); its identity is part of the
  cache key,
- the **views** (the photo, and its mirror image when the backbone's spec averages them) and how they are averaged,
- the **batching**: a few photos run synchronously at the lowest latency; many run through an asynchronous queue
  (OpenVINO's ``AsyncInferQueue`` under the THROUGHPUT hint, requests and batch size measured on the machine:
  :mod:`.openvino_runtime`), so decoding the next photos overlaps inferring the last ones,
- and, for a classifier, the **top-k** and its JSON form (:func:`top_k`, :func:`ranked`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from headstart._validation import check_choice
from headstart.data.images import DEFAULT_MAX_PIXELS, decode_image, load_image
from headstart.features.backbones import Backbone, BackboneSpec
from headstart.features.engines import ONNX_PRECISION, VIEWS, view_embedder
from headstart.features.openvino import INT8_PRECISION, openvino_embedder, resolve_engine
from headstart.features.preprocess import PREPROCESSING, decode_size_for, normalised, supports, uint8_crop

__all__ = [
    "ENGINES",
    "PRECISIONS",
    "THROUGHPUT_PHOTOS",
    "Pipeline",
    "average_views",
    "decode_size",
    "decoded_batches",
    "default_precision",
    "mean_of_views",
    "prefetched",
    "ranked",
    "top_k",
]

PRECISIONS = ("auto", "fp32", "bf16", "int8")  # (int8: the OpenVINO engine only)
ENGINES = ("torch", "onnxruntime", "openvino", "auto")

#: From how many photos to compute a run uses the throughput mode (async queue); fewer run at the lowest latency.
THROUGHPUT_PHOTOS = 48


def default_precision(device: str = "cpu") -> str:
    """bf16 where the processor computes it natively (AVX512-BF16 / AMX, or CUDA), else fp32."""
    if device.startswith("cuda"):
        return "bf16"
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return "fp32"
    return "bf16" if (" avx512_bf16" in flags or " amx_bf16" in flags) else "fp32"


def decode_size(spec: BackboneSpec) -> tuple[int, int]:
    """``(width, height)`` photos are decoded at for this backbone (JPEG draft mode): the input size before the crop."""
    width, height = decode_size_for(spec.data_config)
    return width, height


def mean_of_views(orig: np.ndarray, mirror: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """Mirror-averaged features: the mean of the photo's and its mirror image's (the one place they are averaged,
    whether the views come from the cache or from one forward pass); ``out`` (e.g. ``orig``) receives it in place."""
    total = np.add(orig, mirror, out=out)
    return np.divide(total, np.float32(2), out=total)


def average_views(rows: np.ndarray, n_views: int) -> np.ndarray:
    """Features of photos whose views were embedded photo by photo (``orig``, then ``mirror``): the mean of each
    photo's rows (:func:`mean_of_views`)."""
    return rows if n_views == 1 else mean_of_views(rows[0::2], rows[1::2])


def top_k(probabilities: np.ndarray, classes: Sequence[str], k: int) -> list[tuple[str, float]]:
    """The ``k`` most likely labels of one row of probabilities, most likely first (ties in class order)."""
    order = np.argsort(-probabilities, kind="stable")[: min(k, len(classes))]
    return [(classes[j], float(probabilities[j])) for j in order]


def ranked(labels: Sequence[str], probabilities: Sequence[float]) -> list[dict[str, Any]]:
    """Labels with their probabilities as ``predict --json`` and the server write them (6 decimals)."""
    return [{"label": l, "probability": round(float(p), 6)} for l, p in zip(labels, probabilities)]


class Pipeline:
    """The choices for running one backbone on photos, made once, and the pieces that run it.

    Args:
        spec: the backbone's spec (its ``flip_average`` says which views a photo's features average).
        source: where the network comes from, only when something must be computed: a loaded :class:`Backbone`,
            an object whose ``load()`` returns one (a model file's trunk), a function returning one, or a timm name
            (built with ``weights``).
        engine / precision / device: as for :func:`~headstart.features.extract.extract_features`.
        max_pixels: photos whose header claims more pixels are refused (decompression bombs).

    Example:
        >>> pipe = Pipeline(resolve_backbone("tf_efficientnet_lite0"), "tf_efficientnet_lite0")
        >>> pipe.features([pipe.decode("cat.jpg")]).shape
        (1, 1280)
    """

    def __init__(
        self,
        spec: BackboneSpec,
        source: Any,
        *,
        engine: str = "auto",
        precision: str = "auto",
        device: str = "cpu",
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        weights: str | os.PathLike[str] | None = None,
        caller: str = "extract_features",
    ) -> None:
        check_choice(engine, "engine", caller, ENGINES)
        check_choice(precision, "precision", caller, PRECISIONS)
        if engine == "onnxruntime":
            precision = ONNX_PRECISION
        elif precision == "auto":
            precision = default_precision(device)
        self.engine, self.precision = resolve_engine(engine, precision, device, spec)
        self.spec, self.device, self.max_pixels = spec, device, max_pixels
        self.views = VIEWS if spec.flip_average else VIEWS[:1]
        self.crops = supports(spec) is None  # uint8 crops at the crop box, else timm's transform (torch only)
        self.preprocessing = PREPROCESSING if self.crops else ""
        self.draft = decode_size(spec)
        self._source, self._weights = source, weights
        self._backbone: Backbone | None = source if isinstance(source, Backbone) else None
        self._runners: dict[bool, Any] = {}
        self._checked = False

    # ------------------------------------------------------------------------------------------ the network
    def backbone(self) -> Backbone:
        """The torch backbone (built on first use: a cached run never needs it)."""
        if self._backbone is None:
            if hasattr(self._source, "load"):
                self._backbone = self._source.load()
            elif callable(self._source):
                self._backbone = self._source()
            else:
                from headstart.features.backbones import load_backbone

                self._backbone = load_backbone(str(self._source), self._weights, device=self.device)
        if not self._checked:  # (features are cached, networks converted, under the spec's content: it must hold it)
            self._checked = bool(self._backbone.check_weights(self.spec.trunk_sha256))
        return self._backbone

    def cache_key(self, cache: Any) -> str:
        """This pipeline's key in a :class:`~headstart.features.cache.FeatureCache` (backbone x precision x
        preprocessing; one key for both views)."""
        return cache.register(self.spec, self.precision, preprocessing=self.preprocessing)

    # ---------------------------------------------------------------------------------------- preprocessing
    def decode(self, path: str | os.PathLike[str]) -> Any:
        """A photo file -> the engine's input for it (a uint8 crop, or timm's tensor). Raises
        :class:`~headstart.errors.UnusableImageError` for a file that cannot be decoded."""
        return self._prepare(load_image(path, max_pixels=self.max_pixels, draft_size=self.draft))

    def decode_bytes(self, data: bytes, name: str) -> Any:
        """A photo in memory (an upload) -> the same input as the same file on disk gives."""
        return self._prepare(decode_image(data, name=name, max_pixels=self.max_pixels, draft_size=self.draft))

    def _prepare(self, image: Any) -> Any:
        if self.crops:
            return uint8_crop(image, self.spec)
        return self.backbone().transform()(image)

    def stack(self, inputs: Sequence[Any]) -> Any:
        """Decoded photos -> one batch for the engine."""
        if self.engine == "openvino":
            return np.stack(inputs)
        if self.crops:
            return normalised(np.stack(inputs), self.spec)
        import torch

        return torch.stack(list(inputs))

    def blank(self) -> Any:
        """A black photo's input (for warming up)."""
        size = tuple(self.spec.data_config["input_size"])
        if self.crops:
            return np.zeros((size[1], size[2], 3), np.uint8)
        import torch

        return torch.zeros(size)

    # ---------------------------------------------------------------------------------------------- running
    def runner(self, *, throughput: bool = False) -> Any:
        """What embeds stacked batches: ``embed(batch, [(i, view), ...])`` now, or ``submit(batch, wanted, tag)``
        then ``ready()``/``drain()`` -> ``[(tag, rows), ...]``; asynchronous for OpenVINO with ``throughput``."""
        if throughput not in self._runners:
            if self.engine == "openvino":
                precision = INT8_PRECISION if self.precision == "int8" else self.precision
                runner = openvino_embedder(self.spec, precision, self.backbone, throughput=throughput)
            else:
                embed = view_embedder(self.backbone(), precision=self.precision, device=self.device)
                runner = _Synchronous(embed)
            self._runners[throughput] = runner
        return self._runners[throughput]

    def features(self, inputs: Sequence[Any]) -> np.ndarray:
        """Features of decoded photos, now: every view the spec asks for, averaged (``(n, num_features)``)."""
        wanted = [(i, v) for i in range(len(inputs)) for v in self.views]
        return average_views(self.runner().embed(self.stack(inputs), wanted), len(self.views))


def decoded_batches(
    pipe: Pipeline, paths: Sequence[str | os.PathLike[str]], batch_size: int, *, workers: int | None = None
) -> Iterator[tuple[list[int], Any, list[tuple[int, str]]]]:
    """The photos decoded by the pipeline in threads, a batch ahead: ``(indices in paths, the stacked batch or None
    when none of them could be read, [(index, why it is unusable), ...])`` a batch."""
    from headstart.data.images import decode_threads
    from headstart.errors import UnusableImageError

    def load(i: int) -> tuple[int, Any]:
        try:
            return i, pipe.decode(paths[i])
        except UnusableImageError as exc:
            return i, exc

    batches = [list(range(s, min(s + batch_size, len(paths)))) for s in range(0, len(paths), batch_size)]
    with ThreadPoolExecutor(decode_threads(workers, "decoded_batches"), thread_name_prefix="headstart-decode") as pool:
        for batch in prefetched(pool, load, batches):
            good = [(i, x) for i, x in batch if not isinstance(x, UnusableImageError)]
            bad = [(i, x.reason) for i, x in batch if isinstance(x, UnusableImageError)]
            yield [i for i, _ in good], (pipe.stack([x for _, x in good]) if good else None), bad


class _Synchronous:
    """The async interface over an engine that computes at once (torch, ONNX Runtime)."""

    def __init__(self, embed: Callable[[Any, list[tuple[int, str]]], np.ndarray]) -> None:
        self.embed = embed
        self._done: list[tuple[Any, np.ndarray]] = []

    def submit(self, batch: Any, wanted: list[tuple[int, str]], tag: Any) -> None:
        self._done.append((tag, self.embed(batch, wanted)))

    def ready(self) -> list[tuple[Any, np.ndarray]]:
        done, self._done = self._done, []
        return done

    def drain(self) -> list[tuple[Any, np.ndarray]]:
        return self.ready()


def prefetched(pool: ThreadPoolExecutor, fn: Callable, batches: Iterable[list], depth: int = 2) -> Iterator[list]:
    """Yield each batch's results while the next ``depth`` batches are already decoding in the pool."""
    pending: list[list[Future]] = []
    it = iter(batches)
    for _ in range(depth):
        nxt = next(it, None)
        if nxt is not None:
            pending.append([pool.submit(fn, item) for item in nxt])
    while pending:
        current = pending.pop(0)
        nxt = next(it, None)
        if nxt is not None:
            pending.append([pool.submit(fn, item) for item in nxt])
        yield [f.result() for f in current]
