"""Feature extraction: photos in, one feature vector each out, computed once and then read from the cache.

Only what the cache lacks is computed; the backbone is not even built when nothing is missing (then neither torch
nor timm is imported). The cache stores single-view vectors: the photo (view ``orig``) and, for mirror-averaged
features, its mirror image (view ``mirror``), so what one command computed serves every other, and a command that
needs the mirror view of photos already cached computes only that view. Photos are decoded in a thread pool (JPEG
draft mode when a photo is much larger than needed) while the engine (:mod:`headstart.features.engines`) runs the
previous batch, and every batch is committed to the :class:`~headstart.features.cache.FeatureCache` as soon as it is
computed: an interrupted run loses at most the batches in flight. Each batch's rows are claimed in the cache first,
so several processes extracting overlapping photos (or torchrun's processes) compute each photo once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from headstart._console import progress as progress_bar
from headstart._validation import check_choice, check_int
from headstart.data.images import DEFAULT_MAX_PIXELS, check_max_pixels, decode_threads, load_image
from headstart.data.scanning import UnusableFile
from headstart.errors import UnusableImageError
from headstart.features.backbones import DEFAULT_BACKBONE, Backbone, BackboneSpec, resolve_backbone
from headstart.features.cache import FeatureCache
from headstart.features.engines import ONNX_PRECISION, VIEWS, view_embedder
from headstart.features.openvino import OpenVinoSource, resolve_engine
from headstart.features.sharing import claimed_batches, decoder_id, is_permanent, wait_for_others

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "fp32", "bf16", "int8")  # (int8: the OpenVINO engine only)
ENGINES = ("torch", "onnxruntime", "openvino", "auto")

__all__ = [
    "ENGINES",
    "FLIP_AVERAGE",
    "PRECISIONS",
    "Features",
    "bytes_preprocessor",
    "decode_size",
    "default_precision",
    "describe_unusable",
    "extract_features",
    "preprocessor",
]


@dataclass
class Features:
    """Features of the usable images among ``paths``, in order, and why the others were skipped.

    Attributes:
        features: ``(n_usable, num_features)`` float32 (for mirror-averaged features, the mean of the two views).
        indices: for each row of ``features``, its index in the ``paths`` given.
        hashes: SHA-256 of each usable file, aligned with ``features``.
        unusable: the skipped files with their reasons.
        n_cached / n_computed: how many unique files came from the cache / had a view computed now (under torchrun:
            by all processes together).
        n_views_computed: single-view vectors computed now (a photo whose own view was cached and whose mirror
            view was computed counts one).
        seconds: wall time of the whole call.
        cache_key: the backbone's key in the cache (one for both views).
    """

    features: np.ndarray
    indices: np.ndarray
    hashes: list[str]
    unusable: list[UnusableFile] = field(default_factory=list)
    n_cached: int = 0
    n_computed: int = 0
    seconds: float = 0.0
    images_per_second: float = 0.0
    spec: BackboneSpec | None = None
    cache_key: str = ""
    n_views_computed: int = 0


#: Whether features of a backbone given by name average each photo with its mirror image, by default: no. Each
#: photo is computed once; mirror averaging (paired 10x5-fold CV on Oxford pets, 7 photos a breed: +1.2 points of
#: probe accuracy; on the hidden pets photos it did not pay) costs a second view and is asked for
#: (``flip_average=True``, ``headstart extract --flip-average``), or chosen by ``train`` when it is cheap.
FLIP_AVERAGE = False


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


def _resolve_precision(precision: str, device: str) -> str:
    check_choice(precision, "precision", "extract_features", PRECISIONS)
    return default_precision(device) if precision == "auto" else precision


def extract_features(
    paths: Sequence[str | os.PathLike[str]],
    backbone: str | Backbone | Any = DEFAULT_BACKBONE,
    *,
    weights: str | os.PathLike[str] | None = None,
    cache: FeatureCache | None = None,
    batch_size: int = 32,
    precision: str = "auto",
    device: str = "cpu",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
    progress: bool = False,
    engine: str = "auto",
    flip_average: bool | None = None,
) -> Features:
    """Embed each photo with the backbone, reusing cached features and skipping unusable files.

    The backbone is only loaded when something is missing from the cache. Photos are decoded in a thread pool
    (JPEG draft mode when a photo is much larger than needed) while the model runs the previous batch.

    Args:
        paths: image files.
        backbone: a timm name (resolved with ``weights``), a loaded :class:`Backbone`, or any object with a
            ``spec`` and a ``load()`` returning a Backbone (built only on a cache miss).
        cache: the store; defaults to the one in the cache folder.
        precision: ``auto`` (bf16 on CPUs with native bf16, else fp32), ``fp32`` or ``bf16``.
        workers: decoding threads (default: the number of CPU cores, at most 8).
        engine: ``auto`` (OpenVINO on a CPU where it is installed, else torch), ``openvino``, ``torch``, or
            ``onnxruntime`` (the backbone exported to ONNX once, kept in the cache folder;
            fp32, its features cached under their own key).
        flip_average: average each photo's features with its mirror image's (both views are cached; only the
            missing ones are computed); ``None``: off for a backbone given by name (:data:`FLIP_AVERAGE`), as its
            spec says for a Backbone or a model's backbone.

    Returns:
        :class:`Features` for the usable files, in the order given.

    Example:
        >>> feats = extract_features(["cat.jpg", "dog.jpg"])
        >>> feats.features.shape
        (2, 1280)
    """
    start = time.perf_counter()
    check_choice(engine, "engine", "extract_features", ENGINES)
    check_int(batch_size, "batch_size", "extract_features", low=1)
    check_max_pixels(max_pixels, "extract_features")
    workers = decode_threads(workers, "extract_features")
    precision = ONNX_PRECISION if engine == "onnxruntime" else _resolve_precision(precision, device)
    cache = cache if cache is not None else FeatureCache()
    paths = [Path(p) for p in paths]
    loaded: Backbone | None = backbone if isinstance(backbone, Backbone) else None
    spec = backbone.spec if hasattr(backbone, "spec") else resolve_backbone(str(backbone), weights)
    if flip_average is None and not hasattr(backbone, "spec"):
        flip_average = FLIP_AVERAGE
    if flip_average is not None:
        spec = spec.with_flip_average(flip_average)
    views = VIEWS if spec.flip_average else VIEWS[:1]
    engine, precision = resolve_engine(engine, precision, device, spec)  # auto -> openvino on CPUs (openvino.py)
    key = cache.register(spec, precision)

    hashes = cache.file_hashes(paths)
    unusable: dict[int, str] = {}
    first: dict[str, int] = {}  # sha -> first index with that content
    for i, (p, h) in enumerate(zip(paths, hashes)):
        if h is None:
            unusable[i] = "file missing or unreadable" if not p.exists() else "cannot read the file (permissions?)"
        else:
            first.setdefault(h, i)
    from headstart._distributed import all_reduce_sum, barrier, current

    group = current()  # under torchrun each process starts with its share; claims keep them from doubling up
    barrier()
    found = {view: cache.get_many(key, list(first), view=view) for view in views}
    need = {h: tuple(v for v in views if h not in found[v]) for h in first}
    need = {h: v for h, v in need.items() if v}
    decoder = decoder_id(decode_size(spec))
    known_bad = cache.get_unusable(list(need), max_pixels, decoder) if need else {}
    todo = {h: v for h, v in need.items() if h not in known_bad}

    failed: dict[str, str] = {}
    n_computed = n_views = 0
    if todo:
        order = list(todo)
        order = order[group.rank :: group.world_size] + [
            h for j, h in enumerate(order) if j % group.world_size != group.rank
        ]
        if engine == "openvino":  # builds the torch backbone only to convert it once (features/openvino.py)
            loaded = OpenVinoSource(spec, backbone if loaded is None else loaded, weights)  # type: ignore[assignment]
        elif loaded is None and hasattr(backbone, "load"):
            loaded = backbone.load()  # type: ignore[union-attr]  # a lazy backbone, e.g. from a model file
        elif loaded is None:
            from headstart.features.backbones import load_backbone

            loaded = load_backbone(str(backbone), weights, device=device)
        compute_start = time.perf_counter()  # model already loaded: what the pipeline itself sustains
        done = _compute(
            loaded,
            [(h, paths[first[h]], todo[h]) for h in order],
            cache,
            key,
            decoder=decoder,
            batch_size=batch_size,
            precision=precision,
            device=device,
            max_pixels=max_pixels,
            workers=workers,
            progress=progress,
        )
        for (sha, view), vector in done.vectors.items():
            found[view][sha] = vector
        failed = done.failed
        n_computed, n_views = len({sha for sha, _ in done.vectors}), len(done.vectors)
        if n_views >= 16:  # a throughput worth remembering (a single photo measures start-up, not speed)
            cache.record_speed(key, n_views / (time.perf_counter() - compute_start), n_views)
        # what other processes computed (or refused) while this one waited for their claims
        for view in views:
            found[view].update(cache.get_many(key, [h for h in todo if h not in found[view] and h not in failed], view))
        rest = [h for h in todo if h not in failed and any(h not in found[v] for v in views)]
        failed.update(cache.get_unusable(rest, max_pixels, decoder) if rest else {})
        for h in rest:
            failed.setdefault(h, "not computed: another process claimed it and stopped; run again")
    if group.enabled:
        n_computed, n_views = (int(n) for n in all_reduce_sum([float(n_computed), float(n_views)]))
    for i, h in enumerate(hashes):
        if h is not None and i not in unusable and (h in known_bad or h in failed):
            unusable[i] = known_bad.get(h) or failed[h]

    kept = [i for i, h in enumerate(hashes) if i not in unusable and h is not None]
    kept_hashes = [hashes[i] for i in kept]
    dim = spec.num_features
    if not kept:
        matrix = np.zeros((0, dim), np.float32)
    elif len(views) == 1:
        matrix = np.stack([found["orig"][h] for h in kept_hashes]).astype(np.float32, copy=False)
    else:  # mirror averaging: the mean of the two stored views (as the network's own averaging computes it)
        orig, mirror = (np.stack([found[view][h] for h in kept_hashes]) for view in VIEWS)
        matrix = (orig + mirror) / np.float32(2)
    seconds = time.perf_counter() - start
    return Features(
        features=matrix.astype(np.float32, copy=False),
        indices=np.asarray(kept, dtype=np.int64),
        hashes=kept_hashes,
        unusable=[UnusableFile(paths[i], r) for i, r in sorted(unusable.items())],
        n_cached=len(first) - len(need),
        n_computed=n_computed,
        seconds=seconds,
        images_per_second=n_computed / seconds if n_computed else 0.0,
        spec=spec,
        cache_key=key,
        n_views_computed=n_views,
    )


def preprocessor(backbone: Backbone, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Callable[[Any], torch.Tensor]:
    """Photo file -> the backbone's input tensor, decoded exactly as extraction decodes it.

    JPEGs much larger than the crop needs are decoded at a reduced scale (draft mode), so everything that runs a
    model on photos outside the cache (extraction, the ONNX export's checks, int8 calibration) sees the same pixels.
    Raises :class:`~headstart.errors.UnusableImageError` for a file that cannot be decoded.

    Example:
        >>> load = preprocessor(load_backbone("tf_efficientnet_lite0"))
        >>> load("cat.jpg").shape
        torch.Size([3, 224, 224])
    """
    transform = backbone.transform()
    draft = decode_size(backbone.spec)
    return lambda path: transform(load_image(path, max_pixels=max_pixels, draft_size=draft))


@dataclass
class _Computed:
    vectors: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # (sha, view) -> vector
    failed: dict[str, str] = field(default_factory=dict)  # sha -> reason (this run's; permanent ones are cached)


@dataclass
class _Failure:
    reason: str
    permanent: bool


def _compute(
    backbone: Backbone,
    todo: list[tuple[str, Path, tuple[str, ...]]],
    cache: FeatureCache,
    key: str,
    *,
    decoder: str,
    batch_size: int,
    precision: str,
    device: str,
    max_pixels: int | None,
    workers: int,
    progress: bool,
) -> _Computed:
    """Run the model over the views ``todo`` lacks, in batches, committing each batch to the cache at once.

    Each batch's rows are claimed before its photos are decoded. Rows another process has claimed are skipped;
    when everything else is done, this process waits for them (or takes them over, when that process is gone or its
    lease ran out), so each row is computed once however many processes extract at the same time.
    """
    if isinstance(backbone, OpenVinoSource):  # uint8 crops in numpy, no torch (features/openvino.py)
        decode, embed, stack = backbone.parts(precision, max_pixels, decode_size(backbone.spec))
    else:
        import torch

        decode, stack = preprocessor(backbone, max_pixels=max_pixels), torch.stack
        embed = view_embedder(backbone, precision=precision, device=device)
    owner = cache.new_owner()
    out = _Computed()
    left = {sha: set(views) for sha, _, views in todo}  # what is still open, for the progress bar
    if len(todo) <= 2:
        workers = 1  # one or two photos (a `predict` call): decoding in threads costs more than it saves

    def load(item: tuple[str, Path, tuple[str, ...]]) -> tuple[tuple[str, Path, tuple[str, ...]], Any]:
        sha, path, _ = item
        try:
            return item, decode(path)
        except UnusableImageError as exc:
            return item, _Failure(exc.reason, is_permanent(exc, path, sha))
        except Exception as exc:  # a transform failing on an odd image must not stop the run (nor be cached)
            return item, _Failure(f"cannot preprocess: {type(exc).__name__}: {exc}", False)

    cache.purge_claims()
    with (
        ThreadPoolExecutor(workers, thread_name_prefix="headstart-decode") as pool,
        progress_bar(progress, len(todo), f"Extracting {backbone.spec.name}") as advance,
    ):

        def settle(pairs: Iterable[tuple[str, str]]) -> None:
            finished = 0
            for sha, view in pairs:
                if sha in left:
                    left[sha].discard(view)
                    if not left[sha]:
                        del left[sha]
                        finished += 1
            if finished:
                advance(finished)

        try:
            queue = todo
            while queue:
                busy: list[tuple[str, Path, tuple[str, ...]]] = []
                batches = claimed_batches(cache, key, queue, batch_size, owner, decoder, max_pixels, busy, settle)
                loaded = _prefetched(pool, load, batches) if workers > 1 else ([load(i) for i in b] for b in batches)
                for batch in loaded:
                    good = [(item, t) for item, t in batch if not isinstance(t, _Failure)]
                    vectors: list[tuple[str, str, np.ndarray]] = []
                    if good:
                        wanted = [(j, view) for j, ((_, _, views), _) in enumerate(good) for view in views]
                        rows = embed(stack([t for _, t in good]), wanted)
                        vectors = [(good[j][0][0], view, rows[r]) for r, (j, view) in enumerate(wanted)]
                    bad = [(item[0], t) for item, t in batch if isinstance(t, _Failure)]
                    pairs = [(sha, view) for (sha, _, views), _ in batch for view in views]
                    cache.commit_batch(
                        key,
                        vectors,
                        owner=owner,
                        released=pairs,
                        max_pixels=max_pixels,
                        decoder=decoder,
                        verdicts=[(sha, f.reason) for sha, f in bad if f.permanent],
                    )
                    out.vectors.update(((sha, view), v) for sha, view, v in vectors)
                    out.failed.update((sha, f.reason) for sha, f in bad)
                    settle(pairs)
                queue = wait_for_others(cache, key, [b for b in busy if b[0] not in out.failed], owner)
        finally:
            cache.release(owner)
    return out


def _prefetched(pool: ThreadPoolExecutor, fn: Callable, batches: Iterable[list], depth: int = 2) -> Iterator[list]:
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


def describe_unusable(unusable: Sequence[UnusableFile], limit: int = 10) -> str:
    """One warning naming the skipped files (the first ``limit``, then a count)."""
    if not unusable:
        return ""
    lines = [f"  {u.path}: {u.reason}" for u in unusable[:limit]]
    more = f"\n  … and {len(unusable) - limit} more (see `headstart scan`)" if len(unusable) > limit else ""
    return f"Skipped {len(unusable)} unusable file(s):\n" + "\n".join(lines) + more


def decode_size(spec: BackboneSpec) -> tuple[int, int]:
    """``(width, height)`` photos are decoded at for this backbone (JPEG draft mode): the input size before the crop."""
    height, width = spec.data_config["input_size"][-2:]
    crop_pct = float(spec.data_config.get("crop_pct") or 1.0)
    return int(width / crop_pct), int(height / crop_pct)


def bytes_preprocessor(
    backbone: Backbone, *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> Callable[[bytes, str], torch.Tensor]:
    """:func:`preprocessor` for photos in memory (HTTP uploads): ``(data, name) -> tensor``, the same pixels as
    the same file on disk gives, so a served prediction equals ``headstart predict``'s.

    Example:
        >>> load = bytes_preprocessor(load_backbone("tf_efficientnet_lite0"))
        >>> load(Path("cat.jpg").read_bytes(), "cat.jpg").shape
        torch.Size([3, 224, 224])
    """
    from headstart.data.images import decode_image

    transform = backbone.transform()
    draft = decode_size(backbone.spec)
    return lambda data, name: transform(decode_image(data, name=name, max_pixels=max_pixels, draft_size=draft))
