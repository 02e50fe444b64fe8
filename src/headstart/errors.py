"""Typed exceptions: the library raises these, the CLI turns each into a one-line message and a non-zero exit."""

from __future__ import annotations

from pathlib import Path


class HeadstartError(Exception):
    """Base class of every error headstart raises on purpose (bad input, missing weights, damaged files)."""


class BackboneUnavailableError(HeadstartError):
    """The backbone's weights cannot be had here (no network, no local file, unknown name)."""


class DataError(HeadstartError):
    """A data set, CSV or folder does not have the layout headstart expects."""


class UnusableImageError(HeadstartError):
    """One file cannot be used as a photo; ``reason`` says why in words a person can act on."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class ModelFileError(HeadstartError):
    """A model file is damaged, foreign or from an incompatible headstart version."""


class CacheError(HeadstartError):
    """The feature cache does not match what it is asked for."""


class OutputError(HeadstartError):
    """An output location cannot be written (under a file, read-only, or the wrong kind); found before any work."""
