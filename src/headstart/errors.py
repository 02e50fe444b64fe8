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


class SkippedFilesWarning(UserWarning):
    """Some photos could not be used and were left out; the message names them and says why.

    ``unusable`` holds them (each with ``path`` and ``reason``), so a program — the command line's one reporter of
    skipped files, for instance — can list them without parsing the message.
    """

    def __init__(self, unusable: object = (), message: str | None = None) -> None:
        self.unusable = list(unusable) if not isinstance(unusable, str) else []
        if message is None:
            message = unusable if isinstance(unusable, str) else describe_skipped(self.unusable)
        super().__init__(message)


def describe_skipped(unusable: object, limit: int = 10) -> str:
    """One text naming skipped files (the first ``limit``, then a count): ``skipped N unusable file(s):`` and a
    ``  path: reason`` line each. Every report of skipped files (warnings, the command line) is spelled so."""
    items = list(unusable)  # type: ignore[call-overload]
    if not items:
        return ""
    lines = [
        f"  {getattr(u, 'path', None) or u['path']}: {getattr(u, 'reason', None) or u['reason']}" for u in items[:limit]
    ]
    more = f"\n  … and {len(items) - limit} more (`headstart scan DATA` lists them all)" if len(items) > limit else ""
    return f"skipped {len(items)} unusable file(s):\n" + "\n".join(lines) + more
