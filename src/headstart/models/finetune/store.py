"""The frozen stages' activations kept on disk, so a later process fine-tuning on the same photos runs no frozen pass.

:class:`~headstart.models.finetune.frozen.ActivationBank` keeps activations in memory for one process; this store
keeps them in the cache folder (``activations/`` beside ``features.sqlite``), one file per photo and view, under a
folder keyed by everything that makes an activation what it is: the backbone's content fingerprint (its exact
weights and preprocessing), the cut, the augmentation (name, seed, the source of the code that draws it), the
precision and the engine that ran the frozen stages. A photo is named by the SHA-256 of its bytes.

Entries are trusted by content, as the feature cache's rows are: each file carries a digest of its key, shape, dtype
and bytes, so a truncated, damaged or misplaced file is read as missing (and recomputed), never used. Files are
written whole under a temporary name and renamed; a lost one costs only its recomputation. The folder is pruned to
:data:`MAX_BYTES`, the least recently used key first; ``headstart cache`` shows it and ``cache clean`` removes it.

Example:
    >>> store = ActivationStore({"fingerprint": fp, "where": "blocks.6", "augment": "light", "seed": 0, ...})
    >>> store.put_many([(sha, 0, activation)])
    >>> store.get(sha, 0).shape
    torch.Size([192, 7, 7])
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from headstart._io import atomic_path, cache_dir
from headstart.features.housekeeping import ACTIVATIONS

__all__ = ["MAX_BYTES", "ActivationStore"]

#: The store is pruned (least recently used key first) to stay under this many bytes.
MAX_BYTES = 4 * 2**30
_MAGIC = b"HSACT1\n\0"
_DIGEST = 16
_DTYPES = ("bfloat16", "float16", "float32")


class ActivationStore:
    """Activations by ``(photo sha, view)`` under one identity (a dict of what produced them; see the module).

    Args:
        identity: JSON-serialisable description of what produced the activations; its digest names the folder,
            and ``identity["backbone"]`` (when given) is what ``headstart cache`` shows.
        root: the cache folder (default :func:`~headstart._io.cache_dir` at construction).
        max_bytes: prune least recently used keys beyond this total size.
    """

    def __init__(
        self, identity: dict[str, Any], root: str | os.PathLike[str] | None = None, max_bytes: int = MAX_BYTES
    ):
        text = json.dumps(identity, sort_keys=True, default=str)
        self.key = hashlib.sha256(text.encode()).hexdigest()[:32]
        self.identity = identity
        self.root = Path(root) if root is not None else cache_dir() / ACTIVATIONS
        self.folder = self.root / self.key
        self.max_bytes = max_bytes
        self.read = self.written = self.damaged = 0
        self._described = False

    def _path(self, sha: str, view: int | str) -> Path:
        return self.folder / sha[:2] / f"{sha}.{view}.act"

    def _digest(self, sha: str, view: int | str, header: bytes, payload: bytes | memoryview) -> bytes:
        digest = hashlib.blake2b(digest_size=_DIGEST)
        digest.update(f"{self.key}|{sha}|{view}|".encode())
        digest.update(header)
        digest.update(payload)
        return digest.digest()

    def get(self, sha: str, view: int | str) -> Any:
        """The tensor stored for ``(sha, view)``, or None when there is none or it is not whole (counted in
        ``damaged``; the caller recomputes and :meth:`put_many` replaces it)."""
        import torch

        try:
            data = self._path(sha, view).read_bytes()
        except OSError:
            return None
        tensor = None
        with contextlib.suppress(ValueError, KeyError, TypeError, struct.error, RuntimeError):
            if data[:8] == _MAGIC:
                (length,) = struct.unpack_from("<I", data, 8 + _DIGEST)
                start = 12 + _DIGEST
                header = data[start : start + length]
                payload = memoryview(data)[start + length :]
                if data[8 : 8 + _DIGEST] == self._digest(sha, view, header, payload):
                    meta = json.loads(header)
                    dtype = getattr(torch, meta["dtype"]) if meta["dtype"] in _DTYPES else None
                    if dtype is not None:
                        tensor = torch.frombuffer(bytearray(payload), dtype=dtype).reshape(meta["shape"])
        if tensor is None:
            self.damaged += 1
            return None
        self.read += 1
        return tensor

    def put_many(self, items: Sequence[tuple[str, int | str, Any]]) -> None:
        """Store ``(sha, view, tensor)`` items, each file written whole and renamed into place. A store that cannot
        be written (read-only, full) only means recomputing next time; nothing is raised."""
        import torch

        try:
            self._describe()
            for sha, view, tensor in items:
                t = tensor.detach().cpu().contiguous()
                name = str(t.dtype).removeprefix("torch.")
                if name not in _DTYPES:
                    raise ValueError(f"activations of dtype {t.dtype} are not stored (expected one of {_DTYPES})")
                header = json.dumps({"dtype": name, "shape": list(t.shape)}).encode()
                payload = t.reshape(-1).view(torch.uint8).numpy().tobytes()
                blob = b"".join(
                    (_MAGIC, self._digest(sha, view, header, payload), struct.pack("<I", len(header)), header, payload)
                )
                path = self._path(sha, view)
                # (not fsynced: a file lost or emptied by a crash fails its digest and is recomputed)
                with atomic_path(path, durable=False) as temporary:
                    temporary.write_bytes(blob)
                self.written += 1
        except OSError:
            return

    def _describe(self) -> None:
        """Write ``key.json`` (what the folder holds, for ``headstart cache``) once; its mtime marks the key used."""
        if self._described:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        card = self.folder / "key.json"
        if card.is_file():
            os.utime(card)
        else:
            with atomic_path(card, durable=False) as temporary:
                temporary.write_text(json.dumps(self.identity, sort_keys=True, default=str, indent=1))
        self._described = True

    def touch(self) -> None:
        """Mark the key used now (pruning keeps the recently used keys)."""
        with contextlib.suppress(OSError):
            os.utime(self.folder / "key.json")

    def prune(self) -> None:
        """Remove whole keys, least recently used first (never this one), until the store holds at most
        ``max_bytes``."""
        try:
            keys = [Path(e.path) for e in os.scandir(self.root) if e.is_dir(follow_symlinks=False)]
        except OSError:
            return
        sizes = {key: _folder_bytes(key) for key in keys}
        total = sum(sizes.values())
        for key in sorted(keys, key=_last_used):
            if total <= self.max_bytes:
                break
            if key == self.folder:
                continue
            shutil.rmtree(key, ignore_errors=True)
            total -= sizes[key]


def _folder_bytes(folder: Path) -> int:
    total = 0
    for base, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(base, name)).st_size
    return total


def _last_used(folder: Path) -> float:
    try:
        return (folder / "key.json").stat().st_mtime
    except OSError:
        return time.time() - 1e9  # (no card: an unknown, oldest first)
