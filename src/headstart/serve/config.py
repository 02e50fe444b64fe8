"""The settings of ``headstart serve``, checked once, in one place (the CLI options map onto these fields)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from headstart._validation import check_choice, check_int, check_number, fail
from headstart.data.images import DEFAULT_MAX_PIXELS
from headstart.errors import HeadstartError
from headstart.features.extract import ENGINES, PRECISIONS
from headstart.serve.limits import Limits

#: The environment variable that sets the API key when ``--api-key`` is not given.
API_KEY_ENV = "HEADSTART_API_KEY"


@dataclass(frozen=True)
class ServeConfig:
    """How the server listens, batches and limits requests.

    Attributes:
        host: address to bind; ``127.0.0.1`` (this machine only) unless told otherwise.
        port: TCP port (0 = any free port; the one chosen is printed).
        max_batch_size: most images per forward pass (1 turns micro-batching off); None: each model's own
            (:attr:`~headstart.serve.model.ServedModel.batch_size`: 16, or 1 for the OpenVINO engine).
        max_wait_ms: how long the first image of a batch waits for others.
        max_upload_mb: largest request body; bigger ones get 413.
        max_files: most images in one request; more get 413.
        max_top_k: the largest ``top_k`` a client may ask for.
        api_key: when set, every API route wants it (``X-API-Key: KEY`` or ``Authorization: Bearer KEY``).
        precision, engine: as for ``headstart predict``.
        max_pixels: images whose header claims more pixels are refused (decompression bombs); None = no limit.
        access_log: one line per request on stderr.
        limits: timeouts, connection and request counts (:class:`~headstart.serve.limits.Limits`).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int | None = None
    max_wait_ms: float = 5.0
    max_upload_mb: float = 20.0
    max_files: int = 16
    max_top_k: int = 100
    api_key: str | None = None
    precision: str = "auto"
    engine: str = "auto"
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    access_log: bool = False
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        caller = "ServeConfig"
        if not isinstance(self.host, str) or not self.host:
            fail("host", caller, "an address such as 127.0.0.1 or 0.0.0.0", self.host)
        check_int(self.port, "port", caller, low=0, high=65535)
        if self.max_batch_size is not None:
            check_int(self.max_batch_size, "max_batch_size", caller, low=1, high=1024)
        check_number(self.max_wait_ms, "max_wait_ms", caller, low=0, high=10_000)
        check_number(self.max_upload_mb, "max_upload_mb", caller, low=0, low_open=True)
        check_int(self.max_files, "max_files", caller, low=1)
        check_int(self.max_top_k, "max_top_k", caller, low=1)
        check_choice(self.precision, "precision", caller, PRECISIONS)
        check_choice(self.engine, "engine", caller, ENGINES)
        if self.max_pixels is not None:
            check_int(self.max_pixels, "max_pixels", caller, low=1)
        if self.api_key is not None and not self.api_key.strip():
            fail("api_key", caller, "a non-empty string (or None for no key)", self.api_key)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def loopback(self) -> bool:
        """Whether only this machine can connect."""
        return self.host in ("127.0.0.1", "localhost", "::1") or self.host.startswith("127.")


def api_key_from_environment() -> str | None:
    """The key in ``$HEADSTART_API_KEY``, if set and not empty."""
    value = os.environ.get(API_KEY_ENV, "").strip()
    return value or None


def api_key_from_file(path: str | os.PathLike[str]) -> str:
    """The key in a file (its first line, surrounding spaces dropped): ``--api-key-file``, which, unlike
    ``--api-key``, no other user of the machine can read in the process list."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise HeadstartError(
            f"{path}: cannot read the API key file ({getattr(exc, 'strerror', None) or exc}); write the key on its "
            "first line, readable only by you (chmod 600)."
        ) from None
    lines = text.strip().splitlines()
    if not lines or not lines[0].strip():
        raise HeadstartError(f"{path}: the API key file is empty; write the key on its first line.")
    return lines[0].strip()


__all__ = ["API_KEY_ENV", "ServeConfig", "api_key_from_environment", "api_key_from_file"]
