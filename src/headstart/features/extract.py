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
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from headstart._console import progress as progress_bar
from headstart._console import report_skipped
from headstart._validation import check_int
from headstart.data.images import DEFAULT_MAX_PIXELS, check_max_pixels, decode_threads
from headstart.data.scanning import UnusableFile
from headstart.errors import UnusableImageError, describe_skipped
from headstart.features.backbones import DEFAULT_BACKBONE, Backbone, BackboneSpec, resolve_backbone
from headstart.features.cache import FeatureCache
from headstart.features.engines import VIEWS
from headstart.features.housekeeping import mark_used
from headstart.features.pipeline import (
    ENGINES,
    PRECISIONS,
    THROUGHPUT_PHOTOS,
    Pipeline,
    decode_size,
    default_precision,
    mean_of_views,
    prefetched,
)
from headstart.features.sharing import claimed_batches, decoder_id, is_permanent, wait_for_others

if TYPE_CHECKING:
    import torch

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
    #: seconds this call spent making the backbone ready (loading it; converting and compiling it for OpenVINO the
    #: first time), not extracting: speeds leave it out, so the first backbone extracted does not look slowest
    setup_seconds: float = 0.0


#: Whether features of a backbone given by name average each photo with its mirror image, by default: no. Each
#: photo is computed once; mirror averaging (paired 10x5-fold CV on Oxford pets, 7 photos a breed: +1.2 points of
#: probe accuracy; on the hidden pets photos it did not pay) costs a second view and is asked for
#: (``flip_average=True``, ``headstart extract --flip-average``), or chosen by ``train`` when it is cheap.
FLIP_AVERAGE = False


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
    cached_only: bool = False,
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
        cached_only: return only the photos whose features are all cached (nothing is computed, no file judged).

    Returns:
        :class:`Features` for the usable files, in the order given.

    Example:
        >>> feats = extract_features(["cat.jpg", "dog.jpg"])
        >>> feats.features.shape
        (2, 1280)
    """
    ensemble = getattr(getattr(backbone, "spec", None), "members", ())
    if ensemble:  # its members' features, each by its own pipeline and cache key, side by side
        from headstart.features.ensemble import combine_members, member_sources

        options = dict(cache=cache, batch_size=batch_size, precision=precision, device=device, max_pixels=max_pixels)
        options.update(workers=workers, progress=progress, engine=engine, flip_average=flip_average)
        parts = [extract_features(paths, m, cached_only=cached_only, **options) for m in member_sources(backbone)]
        spec = backbone.spec if flip_average is None else backbone.spec.with_flip_average(flip_average)
        return combine_members(paths, parts, spec)
    start = time.perf_counter()
    check_int(batch_size, "batch_size", "extract_features", low=1)
    check_max_pixels(max_pixels, "extract_features")
    workers = decode_threads(workers, "extract_features")
    cache = cache if cache is not None else FeatureCache()
    paths = [Path(p) for p in paths]
    spec = backbone.spec if hasattr(backbone, "spec") else resolve_backbone(str(backbone), weights)
    if flip_average is None and not hasattr(backbone, "spec"):
        flip_average = FLIP_AVERAGE
    if flip_average is not None:
        spec = spec.with_flip_average(flip_average)
    views = VIEWS if spec.flip_average else VIEWS[:1]
    # the one place that chooses engine, precision, preprocessing and views (features/pipeline.py)
    pipe = Pipeline(
        spec, backbone, engine=engine, precision=precision, device=device, max_pixels=max_pixels, weights=weights
    )
    key = pipe.cache_key(cache)
    mark_used(cache, key)  # (for `headstart cache clean --older-than`)

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
    # each view's vectors go straight into one matrix, a row per distinct file (read back, N rows cost the matrix)
    row_of = {h: r for r, h in enumerate(first)}
    stored = {view: _Rows(len(first), spec.num_features) for view in views}
    for view in views:
        stored[view].read(cache.iter_vectors(key, list(first), view), row_of)
    need = {h: tuple(v for v in views if h not in stored[v]) for h in first}
    need = {h: v for h, v in need.items() if v}
    decoder = decoder_id(decode_size(spec))
    known_bad = cache.get_unusable(list(need), max_pixels, decoder) if need else {}
    todo = {h: v for h, v in need.items() if h not in known_bad and not cached_only}

    failed: dict[str, str] = {}
    n_computed = n_views = 0
    setup_seconds = 0.0
    if todo:
        order = list(todo)
        order = order[group.rank :: group.world_size] + [
            h for j, h in enumerate(order) if j % group.world_size != group.rank
        ]
        preparing = time.perf_counter()  # loading the backbone, converting and compiling it: once, not throughput
        runner = pipe.runner(throughput=len(order) * len(views) >= THROUGHPUT_PHOTOS)  # (converted once a machine)
        done = _compute(
            pipe,
            runner,
            [(h, paths[first[h]], todo[h]) for h in order],
            cache,
            key,
            decoder=decoder,
            batch_size=batch_size,
            workers=workers,
            progress=progress,
        )
        for (sha, view), vector in done.vectors.items():
            stored[view].put(row_of[sha], vector)
        failed = done.failed
        n_computed, n_views = len({sha for sha, _ in done.vectors}), len(done.vectors)
        del done.vectors  # (now rows of the matrices)
        setup_seconds = done.ready_at - preparing
        if n_views >= 16:  # a throughput worth remembering (a single photo measures start-up, not speed)
            cache.record_speed(key, n_views / (time.perf_counter() - done.ready_at), n_views)
        # what other processes computed (or refused) while this one waited for their claims
        for view in views:
            missing = [h for h in todo if h not in stored[view] and h not in failed]
            stored[view].read(cache.iter_vectors(key, missing, view), row_of)
        rest = [h for h in todo if h not in failed and any(h not in stored[v] for v in views)]
        failed.update(cache.get_unusable(rest, max_pixels, decoder) if rest else {})
        for h in rest:
            failed.setdefault(h, "not computed: another process claimed it and stopped; run again")
    if group.enabled:
        n_computed, n_views = (int(n) for n in all_reduce_sum([float(n_computed), float(n_views)]))
    for i, h in enumerate(hashes):
        if h is not None and i not in unusable and (h in known_bad or h in failed):
            unusable[i] = known_bad.get(h) or failed[h]

    if cached_only:  # only what the cache has; the rest is neither computed nor judged (features/stream.py)
        unusable = {}
        known_bad = {}
    kept = [i for i, h in enumerate(hashes) if i not in unusable and h is not None and not (cached_only and h in need)]
    kept_hashes = [hashes[i] for i in kept]
    rows = np.fromiter((row_of[h] for h in kept_hashes), dtype=np.int64, count=len(kept_hashes))
    matrix = stored["orig"].take(rows)
    if len(views) > 1:  # mirror averaging: the mean of the two stored views (as the network's own averaging does)
        matrix = mean_of_views(matrix, stored["mirror"].take(rows), out=matrix)
    del stored
    sound = np.isfinite(matrix).all(axis=1)
    if not sound.all():  # (a last guard: no NaN or infinite feature leaves extraction)
        for i in np.asarray(kept)[~sound]:
            unusable[int(i)] = _non_finite(pipe.precision)
        kept, matrix = [k for k, ok in zip(kept, sound) if ok], matrix[sound]
        kept_hashes = [h for h, ok in zip(kept_hashes, sound) if ok]
    seconds = time.perf_counter() - start
    skipped = [UnusableFile(paths[i], r) for i, r in sorted(unusable.items())]
    report_skipped(skipped)  # (to the command line's one reporter, when it listens)
    return Features(
        features=matrix.astype(np.float32, copy=False),
        indices=np.asarray(kept, dtype=np.int64),
        hashes=kept_hashes,
        unusable=skipped,
        n_cached=len(first) - len(need),
        n_computed=n_computed,
        seconds=seconds,
        images_per_second=n_computed / seconds if n_computed else 0.0,
        spec=spec,
        cache_key=key,
        n_views_computed=n_views,
        setup_seconds=setup_seconds,
    )


def preprocessor(backbone: Backbone, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Callable[[Any], torch.Tensor]:
    """Photo file -> the backbone's normalised input tensor ``(3, H, W)``, decoded and cropped exactly as extraction
    does (:class:`~headstart.features.pipeline.Pipeline`), so everything that runs a model on photos outside the
    cache (the ONNX export's checks, int8 calibration) sees the same pixels. Raises
    :class:`~headstart.errors.UnusableImageError` for a file that cannot be decoded.

    Example:
        >>> load = preprocessor(load_backbone("tf_efficientnet_lite0"))
        >>> load("cat.jpg").shape
        torch.Size([3, 224, 224])
    """
    pipe = Pipeline(backbone.spec, backbone, engine="torch", precision="fp32", max_pixels=max_pixels)
    return lambda path: pipe.stack([pipe.decode(path)])[0]


def _non_finite(precision: str) -> str:
    """Why a photo whose features came out NaN or infinite is skipped (a failure of the moment: never cached)."""
    return (
        f"the engine gave NaN or infinite features for this photo at {precision} (nothing was cached): run again, "
        "or with --precision fp32 or --engine torch"
    )


class _Rows:
    """One view's vectors, a preallocated row per distinct file, and which rows hold one."""

    def __init__(self, n: int, dim: int) -> None:
        self.matrix = np.empty((n, dim), dtype=np.float32)
        self.filled = np.zeros(n, dtype=bool)
        self._row_of: dict[str, int] = {}

    def read(self, vectors: Iterable[tuple[str, np.ndarray]], row_of: dict[str, int]) -> None:
        self._row_of = row_of
        for sha, vector in vectors:
            if len(vector) == self.matrix.shape[1]:  # (another length is no vector of this backbone: computed again)
                self.put(row_of[sha], vector)

    def put(self, row: int, vector: np.ndarray) -> None:
        self.matrix[row] = vector
        self.filled[row] = True

    def __contains__(self, sha: str) -> bool:
        return bool(self.filled[self._row_of[sha]])

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The matrix of these rows. Rows in increasing order (each file once, some left out) are moved up in
        place, a block at a time, and the matrix's first rows returned: no second matrix. (A row's source is never
        above it, so no source is overwritten before it is read.) Repeated rows (one file twice) make a copy."""
        if len(rows) and np.any(np.diff(rows) <= 0):
            return self.matrix[rows]
        for start in range(0, len(rows), 4096):
            part = rows[start : start + 4096]
            if part[0] != start or part[-1] != start + len(part) - 1:
                self.matrix[start : start + len(part)] = self.matrix[part]
        return self.matrix[: len(rows)]


@dataclass
class _Computed:
    vectors: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # (sha, view) -> vector
    ready_at: float = 0.0  # perf_counter() once the engine was ready: what came before is set-up, not speed
    failed: dict[str, str] = field(default_factory=dict)  # sha -> reason (this run's; permanent ones are cached)


@dataclass
class _Failure:
    reason: str
    permanent: bool


def _compute(
    pipe: Pipeline,
    runner: Any,
    todo: list[tuple[str, Path, tuple[str, ...]]],
    cache: FeatureCache,
    key: str,
    *,
    decoder: str,
    batch_size: int,
    workers: int,
    progress: bool,
) -> _Computed:
    """Run the model over the views ``todo`` lacks, in batches, committing each batch to the cache as it finishes.

    Each batch's rows are claimed before its photos are decoded. Decoding runs ahead in threads; each decoded batch
    is handed to the runner, which for many photos computes asynchronously (the next batch decodes meanwhile), and
    every finished batch is committed at once. Rows another process has claimed are skipped; when everything else
    is done, this process waits for them (or takes them over, when that process is gone or its lease ran out), so
    each row is computed once however many processes extract at the same time.
    """
    max_pixels = pipe.max_pixels
    owner = cache.new_owner()
    out = _Computed(ready_at=time.perf_counter())
    left = {sha: set(views) for sha, _, views in todo}  # what is still open, for the progress bar
    if len(todo) <= 2:
        workers = 1  # one or two photos (a `predict` call): decoding in threads costs more than it saves

    def load(item: tuple[str, Path, tuple[str, ...]]) -> tuple[tuple[str, Path, tuple[str, ...]], Any]:
        sha, path, _ = item
        try:
            return item, pipe.decode(path)
        except UnusableImageError as exc:
            return item, _Failure(exc.reason, is_permanent(exc, path, sha))
        except Exception as exc:  # a transform failing on an odd image must not stop the run (nor be cached)
            return item, _Failure(f"cannot preprocess: {type(exc).__name__}: {exc}", False)

    cache.purge_claims()
    pending: dict[int, tuple[list, list, list]] = {}  # batch number -> (photos, views asked, failures)

    with (
        ThreadPoolExecutor(workers, thread_name_prefix="headstart-decode") as pool,
        progress_bar(progress, len(todo), f"Extracting {pipe.spec.name}") as advance,
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

        def commit(number: int, rows: np.ndarray | None) -> None:
            items, wanted, bad = pending.pop(number)
            vectors = [(items[j][0], view, rows[r]) for r, (j, view) in enumerate(wanted)] if rows is not None else []
            broken = {j for (j, _), v in zip(wanted, vectors) if not np.isfinite(v[2]).all()}
            if broken:  # NaN or infinite features: reported for this run, never cached
                vectors = [v for (j, _), v in zip(wanted, vectors) if j not in broken]
                bad = bad + [(items[j], _Failure(_non_finite(pipe.precision), False)) for j in sorted(broken)]
            pairs = [(sha, view) for sha, _, views in items + [b for b, _ in bad] for view in views]
            cache.commit_batch(
                key,
                vectors,
                owner=owner,
                released=pairs,
                max_pixels=max_pixels,
                decoder=decoder,
                verdicts=[(item[0], f.reason) for item, f in bad if f.permanent],
            )
            out.vectors.update(((sha, view), v) for sha, view, v in vectors)
            out.failed.update((item[0], f.reason) for item, f in bad)
            settle(pairs)

        try:
            queue = todo
            number = 0
            while queue:
                busy: list[tuple[str, Path, tuple[str, ...]]] = []
                batches = claimed_batches(cache, key, queue, batch_size, owner, decoder, max_pixels, busy, settle)
                loaded = prefetched(pool, load, batches) if workers > 1 else ([load(i) for i in b] for b in batches)
                for batch in loaded:
                    number += 1
                    good = [(item, t) for item, t in batch if not isinstance(t, _Failure)]
                    bad = [(item, t) for item, t in batch if isinstance(t, _Failure)]
                    wanted = [(j, view) for j, ((_, _, views), _) in enumerate(good) for view in views]
                    pending[number] = ([item for item, _ in good], wanted, bad)
                    if good:  # (returns at once unless every request is busy: the next batch decodes meanwhile)
                        runner.submit(pipe.stack([t for _, t in good]), wanted, number)
                    else:
                        commit(number, None)
                    for done, rows in runner.ready():
                        commit(done, rows)
                for done, rows in runner.drain():
                    commit(done, rows)
                queue = wait_for_others(cache, key, [b for b in busy if b[0] not in out.failed], owner)
        finally:
            runner.drain()  # (nothing of this run may still write into a request when the cache is released)
            cache.release(owner)
    return out


def describe_unusable(unusable: Sequence[UnusableFile], limit: int = 10) -> str:
    """One text naming the skipped files (the first ``limit``, then a count): :func:`headstart.errors.describe_skipped`."""
    return describe_skipped(unusable, limit)


def bytes_preprocessor(
    backbone: Backbone, *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> Callable[[bytes, str], torch.Tensor]:
    """:func:`preprocessor` for photos in memory (HTTP uploads): ``(data, name) -> tensor``, the same pixels as
    the same file on disk gives.

    Example:
        >>> load = bytes_preprocessor(load_backbone("tf_efficientnet_lite0"))
        >>> load(Path("cat.jpg").read_bytes(), "cat.jpg").shape
        torch.Size([3, 224, 224])
    """
    pipe = Pipeline(backbone.spec, backbone, engine="torch", precision="fp32", max_pixels=max_pixels)
    return lambda data, name: pipe.stack([pipe.decode_bytes(data, name)])[0]
