"""Ctrl-C ends the command at any moment: exit 130 and one line, even where Python would swallow the interrupt.

Python turns SIGINT into ``KeyboardInterrupt`` at whatever line runs when it arrives. When that line is in a
finaliser or a weakref callback, the exception cannot propagate: Python prints "Exception ignored in ..." and runs
on. Start-up runs many such callbacks (the import system's module locks: "Exception ignored in
_get_module_lock"), which is how a Ctrl-C during start-up once let an extraction run on. So :func:`install` puts

- a SIGINT handler that counts the interrupt and raises ``KeyboardInterrupt`` (what Python's own does), or, in the
  command line's own code where nothing is there to catch it (between the imports and ``main``, after ``main``'s
  command), says the one line and raises ``SystemExit(130)``;
- a ``sys.unraisablehook``: a swallowed interrupt is not printed but delivered again a moment later, to whatever
  the main thread runs then (where it propagates, or is swallowed and delivered again);
- for the command line, a deadline: :data:`GRACE_S` seconds after a Ctrl-C the process ends even if unwinding
  waits on queued work or C code (as safe as SIGKILL, which loses nothing committed).

The CLI's ``handles_errors`` treats any failure while an interrupt is pending as the interrupt (a library that
turned it into another error still exits 130), and :func:`finish_interrupted` ends the process even when worker
threads would keep it alive. This module imports only the standard library: :mod:`headstart.cli` installs it
before importing Typer, Rich or any command.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any

MESSAGE = "interrupted: everything finished so far (cached features, saved files) is kept."
EXIT_INTERRUPTED = 130
REDELIVERY_DELAY_S = 0.01  # long enough for the swallowing callback to return
GRACE_S = 5.0  # after a Ctrl-C, how long the command may take to unwind before the process ends regardless

_received = 0
_said = False
_installed = False
_previous_unraisable_hook: Any = None
_command_line = False  # this process is `headstart ...` / `python -m headstart ...`, not a host importing the CLI
_caught = 0  # > 0 while code that turns a KeyboardInterrupt into exit 130 is on the stack (cli import, main's try)
_deadline_running = False


def received() -> int:
    """How many interrupts this process has received (compare two readings to see one arrive in between)."""
    return _received


def started_as_command() -> bool:
    """Whether the running program is headstart's command line (``python -m headstart`` or the ``headstart``
    script), as opposed to a program that imports :mod:`headstart.cli` (a test runner)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name == "headstart.__main__":
        return True
    return os.path.basename(getattr(main, "__file__", None) or "") == "headstart"


class catching:
    """``with catching():`` marks code that turns a ``KeyboardInterrupt`` into exit 130 itself."""

    def __enter__(self) -> None:
        global _caught
        _caught += 1

    def __exit__(self, *exc: Any) -> None:
        global _caught
        _caught -= 1


def _on_sigint(signum: int, frame: Any) -> None:
    global _received, _deadline_running
    _received += 1
    if _command_line and not _deadline_running:
        _deadline_running = True
        threading.Thread(target=_end_after_grace, name="headstart-interrupt-deadline", daemon=True).start()
    if _command_line and not _caught:  # nothing above would catch a KeyboardInterrupt: it would be a traceback
        announce()
        raise interrupted_exit()
    raise KeyboardInterrupt


def interrupted_exit() -> SystemExit:
    """The ``SystemExit(130)`` to end an interrupted process with.

    Under ``python -m``, CPython ends with death by SIGINT instead of the code given when a ``KeyboardInterrupt``
    once escaped code run by ``exec``/``eval`` of a string (dataclasses, ``inspect`` do that during imports), even
    when it was caught later: ``run_eval_code_obj`` sets a global "unhandled KeyboardInterrupt" flag that
    ``Py_RunMain`` checks at exit. Running one more string through ``exec`` clears the flag.
    """
    exec("None")
    return SystemExit(EXIT_INTERRUPTED)


def _end_after_grace() -> None:
    # Unwinding can wait on work already queued (a thread pool's `with` block waits for every submitted task) or
    # on C code that never returns to Python. A run killed outright loses nothing that was committed (the cache
    # commits per batch, files are renamed into place whole), so after the grace period end it as SIGKILL would.
    time.sleep(GRACE_S)
    announce()
    _exit_now()


def _deliver_again() -> None:
    import _thread

    time.sleep(REDELIVERY_DELAY_S)
    _thread.interrupt_main(signal.SIGINT)  # runs _on_sigint in the main thread, as a real Ctrl-C would


def _is_interrupt(unraisable: Any) -> bool:
    kind = unraisable.exc_type
    if not isinstance(kind, type):
        return False
    if issubclass(kind, KeyboardInterrupt):
        return True
    return issubclass(kind, SystemExit) and getattr(unraisable.exc_value, "code", None) == EXIT_INTERRUPTED


def _unraisable(unraisable: Any) -> None:
    if _is_interrupt(unraisable):
        try:
            threading.Thread(target=_deliver_again, name="headstart-interrupt", daemon=True).start()
            return
        except RuntimeError:  # no new threads at interpreter shutdown: the process is ending anyway
            pass
    (_previous_unraisable_hook or sys.__unraisablehook__)(unraisable)


def install(*, command_line: bool = False) -> bool:
    """Make Ctrl-C end the process from now on (main thread only; a host program's own SIGINT handler, or an
    ignored SIGINT — a job started with ``&`` by a script — is left alone). Returns whether it is in place.

    ``command_line``: this process is headstart's command line, so an interrupt may end it (deadline, exit 130
    where nothing catches); never set for a program that merely imports the CLI.
    """
    global _installed, _previous_unraisable_hook, _command_line
    _command_line = _command_line or command_line
    if _installed:
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return False
    signal.signal(signal.SIGINT, _on_sigint)
    _previous_unraisable_hook = sys.unraisablehook
    sys.unraisablehook = _unraisable
    _installed = True
    return True


def caused_by_interrupt(exc: BaseException, since: int) -> bool:
    """Whether ``exc`` is, wraps or followed an interrupt: a ``KeyboardInterrupt`` anywhere in its chain of causes,
    or any interrupt received after the reading ``since`` of :func:`received`."""
    if _received > since:
        return True
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def announce(*, again: bool = False) -> None:
    """The one line on stderr, once per process however many places see the interrupt (``again``: once more, for
    a command run in-process after an earlier one was interrupted)."""
    global _said
    if _said and not again:
        return
    _said = True
    try:
        sys.stderr.write(MESSAGE + "\n")
        sys.stderr.flush()
    except Exception:
        pass


def _exit_now(signum: int = 0, frame: Any = None) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(EXIT_INTERRUPTED)


def _interrupted_while_exiting(signum: int, frame: Any) -> None:
    announce()
    _exit_now()


def exiting() -> None:
    """The command is done: an interrupt from here on (atexit handlers, joining threads) still ends with 130 and
    the one line, instead of a traceback from the interpreter's shutdown."""
    if _installed and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _interrupted_while_exiting)


def finish_interrupted() -> None:
    """End the process after an interrupt: the one line (unless said already), then exit 130 — at once when
    threads that would otherwise keep it running (an extraction's workers) are still alive."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _exit_now)  # a second Ctrl-C while ending: out now
    announce()
    alive = [t for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon and t.is_alive()]
    if alive:
        _exit_now()
    raise interrupted_exit()
