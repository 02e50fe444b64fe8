"""Shared console machinery: progress bars and one-line messages, both on stderr so stdout keeps only results."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def say(line: str) -> None:
    """One line on stderr (the progress channel), printed verbatim (no rich markup), control characters made
    visible (names in it come from files)."""
    from rich.console import Console

    from headstart._names import printable

    Console(stderr=True, markup=False, highlight=False, soft_wrap=True).print(printable(line, keep_newlines=True))


class progress:
    """A rich progress bar on stderr, or nothing: ``with progress(True, 100, "extracting") as advance: advance(1)``."""

    def __init__(self, enabled: bool, total: int, description: str) -> None:
        self.enabled, self.total, self.description = enabled, total, description
        self._bar: Any = None

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda n: None
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
    terminal, so a script in a terminal sees it and a pipe, a log file or a test does not."""
    if progress is not None:
        return bool(progress)
    import sys

    stream = sys.stderr
    return bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())


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
