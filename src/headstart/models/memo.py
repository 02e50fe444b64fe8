"""Remember the results of slow, deterministic steps (probe fits, run pictures) under a hash of all they depend on.

Re-running ``train`` on the same photos with the same settings then reads the features, the fitted probe and the
run pictures back instead of recomputing them: the same model file, a fraction of the time, and neither
scikit-learn nor matplotlib imported. A key covers the bytes of the inputs, the settings, the versions of the
libraries that compute the result and the source of headstart's own code for it, so changing any of them misses.

Entries are plain files in ``memo/`` beside the feature cache (safetensors for arrays, PNG for pictures), written
atomically; reading one never executes code. The least recently used are deleted beyond :data:`MAX_BYTES`.

The probe fits are remembered by :func:`headstart.models.probe_fit.fit_probe`, beside the probe.

Example:
    >>> memo = Memo.beside(FeatureCache())
    >>> memo.write(Memo.key("note", [1, 2]), ".txt", b"hello")
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from headstart._io import write_bytes_atomic

__all__ = ["MAX_BYTES", "Memo", "memo_pictures", "memo_signatures", "source_digest", "versions"]

#: The memo folder is pruned (least recently used first) to stay under this many bytes.
MAX_BYTES = 512 * 2**20


class Memo:
    """A folder of results keyed by content hashes.

    Args:
        folder: where the entries live; created on the first write.
        max_bytes: prune the least recently used entries beyond this total size.
    """

    def __init__(self, folder: str | os.PathLike[str], max_bytes: int = MAX_BYTES) -> None:
        self.folder = Path(folder)
        self.max_bytes = max_bytes

    @classmethod
    def beside(cls, cache: Any) -> Memo:
        """The memo that lives with a :class:`headstart.features.extract.FeatureCache` (``memo/`` in its folder)."""
        return cls(Path(cache.path).parent / "memo")

    @staticmethod
    def key(*parts: Any) -> str:
        """SHA-256 over ``parts``: bytes, str, numpy arrays (dtype, shape and data) or JSON-serialisable values."""
        digest = hashlib.sha256()
        for part in parts:
            if isinstance(part, np.ndarray):
                data = np.ascontiguousarray(part)
                digest.update(f"ndarray {data.dtype.str} {data.shape}".encode())
                digest.update(data.data if data.dtype.kind != "O" else json.dumps(data.tolist()).encode())
            elif isinstance(part, (bytes, bytearray, memoryview)):
                digest.update(b"bytes %d " % len(part))
                digest.update(part)
            else:
                text = part if isinstance(part, str) else json.dumps(part, sort_keys=True, default=str)
                digest.update(b"text %d " % len(text.encode()))
                digest.update(text.encode())
        return digest.hexdigest()

    def path(self, key: str, suffix: str) -> Path:
        return self.folder / f"{key}{suffix}"

    def read(self, key: str, suffix: str) -> bytes | None:
        """The entry's bytes, or None; a hit counts as a use (its mtime moves to now, so pruning keeps it)."""
        path = self.path(key, suffix)
        try:
            data = path.read_bytes()
            os.utime(path)
        except OSError:
            return None
        return data

    def write(self, key: str, suffix: str, data: bytes) -> None:
        """Store an entry atomically; a memo that cannot be written (read-only disk, full disk) is only a miss later."""
        try:
            write_bytes_atomic(self.path(key, suffix), data)
        except OSError:
            return
        self.prune()

    def prune(self) -> None:
        """Delete the least recently used entries until the folder holds at most ``max_bytes``."""
        try:
            entries = [
                (e.stat().st_mtime_ns, e.stat().st_size, Path(e.path))
                for e in os.scandir(self.folder)
                if e.is_file() and not e.name.startswith(".")
            ]
        except OSError:
            return
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size


def source_digest(module: str) -> str:
    """SHA-256 of a module's source file, read without importing it: a change to the code is a change of key."""
    spec = importlib.util.find_spec(module)
    origin = spec.origin if spec is not None else None
    return hashlib.sha256(Path(origin).read_bytes()).hexdigest() if origin else "unknown"


def versions(*distributions: str) -> dict[str, str]:
    """Installed versions (without importing the packages)."""
    out = {}
    for name in distributions:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


# ----------------------------------------------------------------------------------------------------- pictures
def memo_pictures(
    memo: Memo | None, key_parts: Sequence[Any], folder: Path, draw: Callable[[], list[Path]]
) -> list[Path]:
    """Pictures ``draw()`` writes into ``folder``, copied from ``memo`` when the same inputs were drawn before.

    ``key_parts`` must determine the pictures completely (data, titles, image contents); the source of headstart's
    plotting code and the versions of matplotlib and Pillow are added here.
    """
    if memo is None:
        return draw()
    key = Memo.key(
        "pictures",
        source_digest("headstart.reports.plots"),
        source_digest("headstart.reports.metrics"),
        versions("matplotlib", "pillow"),
        *key_parts,
    )
    manifest = memo.read(key, ".json")
    if manifest is not None:
        try:
            names = json.loads(manifest)
            copies = [(memo.path(key, f"-{name}"), folder / name) for name in names]
            if all(source.is_file() for source, _ in copies):
                for source, target in copies:
                    write_bytes_atomic(target, source.read_bytes())
                    os.utime(source)
                return [target for _, target in copies]
        except (OSError, ValueError, TypeError):
            pass
    written = draw()
    try:
        for path in written:
            memo.write(key, f"-{path.name}", path.read_bytes())
        memo.write(key, ".json", json.dumps([path.name for path in written]).encode())  # last: marks it complete
    except OSError:
        pass
    return written


# ---------------------------------------------------------------------------------------------- photo signatures
def memo_signatures(
    paths: Sequence[str | os.PathLike[str]],
    hashes: Sequence[str],
    memo: Memo | None,
    *,
    max_pixels: int | None,
    progress: bool = False,
) -> Any:
    """:func:`headstart.data.image_signatures` of the photos (pixel hash and pHashes), decoded once per distinct
    file content and remembered in the memo for this set of contents (``train``'s split and ``audit`` share it).

    Example:
        >>> sigs = memo_signatures(usable.paths, feats.hashes, Memo.beside(cache), max_pixels=None)  # doctest: +SKIP
    """
    from headstart.data import Signatures, image_signatures

    def aligned(by_hash: dict[str, tuple[Any, Any, Any]]) -> Any:
        rows = [by_hash[h] for h in hashes]
        return Signatures([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])

    unique = list(dict.fromkeys(hashes))
    key = None
    if memo is not None:
        key = Memo.key(
            "signatures",
            source_digest("headstart.features.duplicates"),
            source_digest("headstart.data.images"),
            versions("pillow", "numpy"),
            max_pixels,
            unique,
        )
        data = memo.read(key, ".json")
        if data is not None:
            try:
                return aligned(
                    {
                        h: (p, None if a is None else int(a, 16), None if b is None else int(b, 16))
                        for h, p, a, b in json.loads(data)
                    }
                )
            except (ValueError, TypeError, KeyError):
                pass  # a damaged entry is a miss
    first: dict[str, Any] = {}
    for path, h in zip(paths, hashes):
        first.setdefault(h, path)
    computed = image_signatures([first[h] for h in unique], max_pixels=max_pixels, progress=progress)
    by_hash = {
        h: (computed.pixel_hashes[k], computed.phashes[k], computed.mirror_phashes[k]) for k, h in enumerate(unique)
    }
    if key is not None:
        rows = [
            [h, p, None if a is None else f"{a:016x}", None if b is None else f"{b:016x}"]
            for h, (p, a, b) in by_hash.items()
        ]
        memo.write(key, ".json", json.dumps(rows).encode())
    return aligned(by_hash)
