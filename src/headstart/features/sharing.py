"""How extractions share the cache: batches claimed before they are computed, waiting for rows another process
holds, and which refusals of a photo become cached verdicts.

A process claims each batch's ``(sha256, view)`` rows in the cache (:meth:`FeatureCache.claim`) just before it
decodes the batch, so claims are taken as the work goes and processes that start together split the photos between
them. Rows held by another live process are set aside; once everything else is done, :func:`wait_for_others` waits
until the holder stores them or lets go of them (finished, failed, killed, lease run out), and the rows go through
the claims again: stored ones are read, the others taken over.

A verdict is cached only when it is a fact about the file's bytes (:func:`is_permanent`), under the decoder that
gave it (:func:`decoder_id`): another decoder, another pixel limit or another decoding size decides for itself.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache
from pathlib import Path

from headstart._io import sha256_file
from headstart.data.images import load_image
from headstart.errors import UnusableImageError
from headstart.features.cache import FeatureCache

__all__ = ["claimed_batches", "decoder_id", "is_permanent", "wait_for_others"]

Pair = tuple[str, str]  # (sha256, view)
Item = tuple[str, Path, tuple[str, ...]]  # (sha256, a file with that content, the views still wanted)


def decoder_id(draft_size: tuple[int, int]) -> str:
    """What a verdict on a file depends on besides its bytes and the pixel limit: the decoder's rules (a hash of
    its source), Pillow's version, and the size photos are decoded at (JPEG draft mode: ``decode_size(spec)``). A
    cached verdict is only trusted by the decoder that gave it.

    Example:
        >>> decoder_id(decode_size(resolve_backbone("tf_efficientnet_lite0")))
        'headstart decoder 3f2a9c0d41b7e655, Pillow 11.3.0; draft 256x256'
    """
    width, height = draft_size
    return f"{_decoder_rules()}; draft {width}x{height}"


@lru_cache(maxsize=1)
def _decoder_rules() -> str:
    import PIL

    from headstart.data import images

    files = sorted({images.__file__, load_image.__code__.co_filename})
    digest = hashlib.sha256()
    for name in files:
        try:
            digest.update(Path(name).read_bytes())
        except OSError:  # (a frozen install without sources: the version names the rules)
            digest.update(name.encode())
    return f"headstart decoder {digest.hexdigest()[:16]}, Pillow {PIL.__version__}"


def claimed_batches(
    cache: FeatureCache,
    key: str,
    queue: list[Item],
    batch_size: int,
    owner: str,
    decoder: str,
    max_pixels: int | None,
    busy: list[Item],
    settle: Callable[[Iterable[Pair]], None],
) -> Iterator[list[Item]]:
    """Batches of ``queue`` whose rows this process has just claimed (lazily: one claim transaction per batch, as
    the pipeline asks for it). Rows stored or refused meanwhile are settled; rows others hold go to ``busy``."""
    pos = 0
    while pos < len(queue):
        batch: list[Item] = []
        while pos < len(queue) and len(batch) < batch_size:
            chunk = queue[pos : pos + batch_size - len(batch)]
            pos += len(chunk)
            result = cache.claim(
                key,
                [(sha, view) for sha, _, views in chunk for view in views],
                owner=owner,
                max_pixels=max_pixels,
                decoder=decoder,
            )
            settle(result.stored)
            settle((sha, view) for sha, _, views in chunk if sha in result.refused for view in views)
            mine, held = set(result.mine), set(result.busy)
            for sha, path, views in chunk:
                if any((sha, v) in mine for v in views):
                    batch.append((sha, path, tuple(v for v in views if (sha, v) in mine)))
                if any((sha, v) in held for v in views):
                    busy.append((sha, path, tuple(v for v in views if (sha, v) in held)))
        if batch:
            yield batch


def wait_for_others(cache: FeatureCache, key: str, waiting: list[Item], owner: str) -> list[Item]:
    """Wait until some row another process holds is stored or let go (finished, failed, killed, lease run out);
    return the rows to go through the claims again (those stored are then settled, the others taken over)."""
    delay = 0.02
    while waiting:
        still = cache.busy(key, [(sha, view) for sha, _, views in waiting for view in views], owner=owner)
        if len(still) < sum(len(views) for _, _, views in waiting):
            return waiting
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    return waiting


#: Causes that say nothing about a file's bytes: the machine (memory, stack) or the code itself (a decoder being
#: edited, a missing plugin). A refusal with one of these (or an I/O error, an OSError with an errno) is not cached.
_OF_THE_MOMENT = (MemoryError, RecursionError, NameError, ImportError, AttributeError, SystemError)


def is_permanent(exc: UnusableImageError, path: Path, sha: str) -> bool:
    """Whether the decoder's refusal is a fact about the file's bytes (corrupt, not an image, a bomb) rather than
    about this moment: not for lack of memory or a read error, and the file still holds the content that was hashed
    (it was not replaced or removed half-way)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, _OF_THE_MOMENT) or (isinstance(cause, OSError) and cause.errno is not None):
            return False
        cause = cause.__cause__ or cause.__context__
    try:
        return sha256_file(path) == sha
    except OSError:
        return False
