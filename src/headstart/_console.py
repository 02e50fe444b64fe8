"""Shared console machinery: progress bars and one-line messages, both on stderr so stdout keeps only results."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


def say(line: str) -> None:
    """One line on stderr (the progress channel), printed verbatim (no rich markup), control characters made
    visible (names in it come from files)."""
    from rich.console import Console

    from headstart._names import printable

    # (not rich's Jupyter rendering, which shows it as a result: in a notebook it belongs in the stderr stream too)
    console = Console(stderr=True, markup=False, highlight=False, soft_wrap=True, force_jupyter=False)
    console.print(printable(line, keep_newlines=True))


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (rich's test: an IPython ZMQ shell; none without ipykernel loaded)."""
    if "ipykernel" not in sys.modules:
        return False
    from rich.console import Console

    return Console().is_jupyter


def _has_widgets() -> bool:
    from importlib.util import find_spec

    return find_spec("ipywidgets") is not None


class _TextBar:
    """A progress line on stderr, rewritten in place with a carriage return (a notebook's stream output honours it):
    what a notebook gets when ipywidgets, which rich's live bar needs there, is not installed."""

    WIDTH = 30

    def __init__(self, total: int, description: str) -> None:
        self.total, self.description, self.done, self._shown = max(total, 0), description, 0, -1

    def advance(self, n: int) -> None:
        self.done += n
        share = min(self.done / self.total, 1.0) if self.total else 1.0
        if int(share * 100) != self._shown:  # at most 101 writes, whatever the total
            self._shown = int(share * 100)
            filled = round(share * self.WIDTH)
            bar = "█" * filled + "·" * (self.WIDTH - filled)
            sys.stderr.write(f"\r{self.description} {bar} {self.done}/{self.total}")
            sys.stderr.flush()

    def stop(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()


class progress:
    """A rich progress bar on stderr, or nothing: ``with progress(True, 100, "extracting") as advance: advance(1)``.

    In a notebook the same bar shows live below the cell (rich draws it in an ipywidgets output); without
    ipywidgets installed it is a text line rewritten in place, so no notebook is left without progress."""

    def __init__(self, enabled: bool, total: int, description: str) -> None:
        self.enabled, self.total, self.description = enabled, total, description
        self._bar: Any = None

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda n: None
        if in_notebook() and not _has_widgets():
            self._bar = _TextBar(self.total, self.description)
            self._bar.advance(0)
            return self._bar.advance
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._bar.start()
        task = self._bar.add_task(self.description, total=self.total)
        return lambda n: self._bar.advance(task, n)

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()


def wants_progress(progress: bool | None) -> bool:
    """Whether to show progress: as asked, or (``None``, the default of the API's run options) when stderr is a
    terminal or this is a notebook's kernel, so a script in a terminal and a notebook see it and a pipe, a log file
    or a test does not."""
    if progress is not None:
        return bool(progress)
    stream = sys.stderr
    return bool(stream is not None and hasattr(stream, "isatty") and stream.isatty()) or in_notebook()


# ------------------------------------------------------------------------------------- skipped files, reported once
_SKIPPED_LISTENERS: list[Callable[[list[Any]], None]] = []


def report_skipped(unusable: Any) -> None:
    """Tell whoever listens (the command line's one reporter) about files left out as unusable (each with ``path``
    and ``reason``). Library code calls this wherever it skips files; without a listener it does nothing (the
    library's own result and warnings still name them)."""
    items = list(unusable)
    if items:
        for listener in list(_SKIPPED_LISTENERS):
            listener(items)


class listening_for_skipped:
    """``with listening_for_skipped(callback):`` every :func:`report_skipped` inside goes to ``callback``."""

    def __init__(self, callback: Callable[[list[Any]], None]) -> None:
        self.callback = callback

    def __enter__(self) -> Callable[[list[Any]], None]:
        _SKIPPED_LISTENERS.append(self.callback)
        return self.callback

    def __exit__(self, *exc: Any) -> None:
        _SKIPPED_LISTENERS.remove(self.callback)
