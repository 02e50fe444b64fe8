"""What the command-line tests share."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture()
def cli() -> Callable[..., Any]:
    """Run one ``headstart`` command in this process: ``cli("train", folder, "--json")`` → click's Result, stdout
    and stderr apart (exceptions not caught: a traceback fails the test)."""
    from typer.testing import CliRunner

    from headstart.cli import app

    try:
        runner = CliRunner(mix_stderr=False)
    except TypeError:  # (newer click keeps them apart anyway)
        runner = CliRunner()

    def run(*args: str | Path) -> Any:
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    return run
