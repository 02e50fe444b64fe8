"""Ctrl-C at any moment ends a command with exit 130 and one line on stderr: during the imports of start-up, while
parsing, while loading a network, while extracting; also where Python itself would swallow the interrupt ("Exception
ignored in ...", and the command ran on) and where unwinding would wait for queued work.

Each case is a real ``python -m headstart`` process receiving a real SIGINT. The moments during start-up are found
with ``-X importtime``: the signal is sent as soon as the process reports that a given module has been imported.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from headstart.cli import _interrupts
from headstart.cli._common import handles_errors
from headstart.errors import HeadstartError

MESSAGE = _interrupts.MESSAGE
PROGRESS = re.compile(
    r"\d+/\d+\s+(-:--:--|\d+:\d\d:\d\d)\s*$"
)  # a progress bar's line: "checking images ━━ 3/24 0:00:01"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def what_it_said(stderr: str) -> list[str]:
    """stderr without the import-time report and the progress bar."""
    return [
        line
        for line in stderr.splitlines()
        if line.strip() and not line.startswith("import time:") and not PROGRESS.search(line)
    ]


def assert_interrupted(returncode: int, stderr: str) -> None:
    said = what_it_said(stderr)
    assert returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "Exception ignored" not in stderr and "KeyboardInterrupt" not in stderr, (
        stderr[-3000:]
    )
    assert said == [MESSAGE], said


# after this module is imported, the signal lands in what start-up does next
MOMENTS = {
    "headstart.cli._interrupts": "importing Typer",
    "typer": "importing Rich",
    "headstart.cli._common": "importing the command modules",
    "headstart.cli": "parsing the command line",
    "headstart.features.extract": "importing torch",
    "torch": "importing timm",
    "timm": "building the network and loading its weights",
}


@pytest.mark.slow
@pytest.mark.parametrize("module", MOMENTS, ids=[f"{m} ({w})" for m, w in MOMENTS.items()])
def test_ctrl_c_during_start_up(module: str, sample: Path, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "headstart",
            "extract",
            str(sample / "test"),
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # an empty per-machine store: the backbone is converted, so start-up goes through torch and timm (with the
        # store another test filled, extract needs neither)
        env={**ENV, "HEADSTART_ENGINE_DIR": str(tmp_path / "engines")},
    )
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith("import time:") and line.rsplit("|", 1)[-1].strip() == module:
            break
    else:
        pytest.fail(f"{module} was never imported:\n{''.join(seen[-20:])}")
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    _, rest = proc.communicate(timeout=120)
    took = time.monotonic() - sent
    assert_interrupted(proc.returncode, "".join(seen) + rest)
    assert took < _interrupts.GRACE_S + 5, f"took {took:.1f} s to end after Ctrl-C"


@pytest.mark.slow
def test_ctrl_c_after_any_import_of_start_up(sample: Path, tmp_path: Path) -> None:
    """12 moments drawn (seeded) from the ~170 imports between the interrupt handling and the command: where one
    lands in code that Python runs through ``exec`` (dataclasses, named tuples) or wraps (``__set_name__`` turns it
    into a RuntimeError), it must still end as an interrupt."""
    import random

    command = [sys.executable, "-X", "importtime", "-m", "headstart", "scan", str(sample / "test")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=ENV)
    names = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]
    names = names[names.index("headstart.cli._interrupts") :]
    for index in sorted(random.Random(11).sample(range(len(names)), 12)):
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        seen, count = [], 0
        for line in proc.stderr:
            seen.append(line)
            count += line.startswith("import time:") and line.rsplit("|", 1)[-1].strip() in names
            if count > index:
                break
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=120)
        if proc.returncode == 0:  # (the scan of 24 photos finished first: nothing to interrupt)
            continue
        assert_interrupted(proc.returncode, "".join(seen) + rest)


def test_the_exit_code_survives_cpythons_stray_keyboard_interrupt_flag(tmp_path: Path) -> None:
    """Under ``python -m``, a KeyboardInterrupt that once escaped ``exec`` of a string makes CPython die by SIGINT
    at exit (status -2), whatever SystemExit said, unless the flag is cleared."""
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "__init__.py").write_text("")
    (tmp_path / "probe" / "__main__.py").write_text(
        textwrap.dedent("""
        from headstart.cli import _interrupts
        try:
            exec("raise KeyboardInterrupt")  # what an interrupt inside a dataclass's generated method looks like
        except KeyboardInterrupt:
            pass
        raise _interrupts.interrupted_exit()
    """)
    )
    done = subprocess.run([sys.executable, "-m", "probe"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 130, done.stderr


@pytest.mark.slow
def test_ctrl_c_while_extracting_keeps_what_was_committed(sample: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "headstart",
            "extract",
            str(sample / "train"),
            "--batch-size",
            "4",
            "--engine",
            "torch",  # (slow enough to be caught mid-way, whatever the per-machine store holds)
            "--cache-dir",
            str(cache),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    deadline = time.monotonic() + 120
    while not (cache / "features.sqlite").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(1.0)  # a few batches in
    assert proc.poll() is None, "finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    _, stderr = proc.communicate(timeout=120)
    assert_interrupted(proc.returncode, stderr)
    assert time.monotonic() - sent < _interrupts.GRACE_S + 5
    assert [p.name for p in cache.rglob(".*.tmp")] == [], "a temporary was left behind"


SWALLOWED = textwrap.dedent("""
    import os, signal, sys, time
    from headstart.cli import main

    class Finaliser:
        def __del__(self):
            # A real Ctrl-C that lands in a finaliser: Python cannot raise it here, prints "Exception ignored in"
            # and runs on (as it did in the import system's module-lock callback during start-up).
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)

    Finaliser()
    sys.argv = ["headstart", "scan", *sys.argv[1:]]
    main()
""")


@pytest.mark.slow
def test_an_interrupt_python_swallows_is_delivered_again(sample: Path) -> None:
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", SWALLOWED, *[str(sample)] * 20], capture_output=True, text=True, timeout=120, env=ENV
    )
    assert "image files" not in done.stdout, "the scan ran on past the interrupt"
    assert_interrupted(done.returncode, done.stderr)
    assert time.monotonic() - start < 30


QUEUED = textwrap.dedent("""
    import sys, time
    from concurrent.futures import ThreadPoolExecutor
    from headstart.cli import app, main
    from headstart.cli._common import handles_errors

    @app.command("queued")
    @handles_errors
    def queued() -> None:
        # the pattern of a scan over many files: every task submitted at once; leaving the `with` block after
        # Ctrl-C waits for all of them (here 2 workers x 100 s)
        with ThreadPoolExecutor(2) as pool:
            tasks = [pool.submit(time.sleep, 1) for _ in range(200)]
            print("started", flush=True)
            for task in tasks:
                task.result()

    sys.argv = ["headstart", "queued"]
    main()
""")


@pytest.mark.slow
def test_an_interrupt_ends_the_process_even_when_unwinding_would_wait(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", QUEUED], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )
    assert proc.stdout.readline().strip() == "started"
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    _, stderr = proc.communicate(timeout=120)
    took = time.monotonic() - sent
    assert_interrupted(proc.returncode, stderr)
    assert _interrupts.GRACE_S - 0.5 < took < _interrupts.GRACE_S + 5, f"ended {took:.1f} s after Ctrl-C"


# ----------------------------------------------------------------- an interrupt that became another error
def test_an_error_an_interrupt_turned_into_is_still_an_interrupt() -> None:
    app = typer.Typer()

    @app.command()
    @handles_errors
    def work(kind: str) -> None:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:  # a library that wraps whatever stopped it
            if kind == "headstart":
                raise HeadstartError("extraction stopped") from exc
            raise RuntimeError("DataLoader worker exited unexpectedly") from exc

    for kind in ("headstart", "runtime"):
        result = CliRunner().invoke(app, [kind])
        assert result.exit_code == 130, result.output
        assert result.output.strip() == MESSAGE


def test_a_plain_error_is_not_taken_for_an_interrupt() -> None:
    assert not _interrupts.caused_by_interrupt(HeadstartError("bad photo"), _interrupts.received())
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise OSError("disk full") from None
    except OSError as exc:
        # `from None` hides the context from a traceback, but it is still what stopped the work
        assert _interrupts.caused_by_interrupt(exc, _interrupts.received())
