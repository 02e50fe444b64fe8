"""The ``headstart`` command line: thin Typer wrappers over the public Python API.

Examples:
    headstart demo
    headstart backbones
    headstart scan photos/ --json
    headstart train photos/ --out pets.safetensors
    headstart evaluate pets.safetensors test_photos/ --json
    headstart predict pets.safetensors my_cat.jpg --top-k 3
    headstart attack tf_efficientnet_lite0 dog.jpg --target 284 --eps 4/255 --transfer-to tf_efficientnet_lite2
    headstart robustness pets.safetensors test_photos/ --eps 0,1/255,2/255,4/255 --json

Results go to stdout (``--json`` for machines); progress, warnings and errors go to stderr.

One module per command group; each registers its commands on the one ``app`` of :mod:`headstart.cli._common`.
Importing them here, in this order, is what makes the commands exist (and sets their order in ``--help``).
Optional groups (``serve``, ``audit``) register when their module is present.
"""

from __future__ import annotations

import sys

try:  # from the first line: a Ctrl-C during start-up ends in exit 130 and one line (see cli/_interrupts.py)
    from headstart.cli import _interrupts

    _interrupts.install(command_line=_interrupts.started_as_command())
    with _interrupts.catching():
        import importlib
        import importlib.util

        from headstart.cli._common import app

        COMMAND_MODULES = (
            "data",
            "training",
            "models",
            "attacks",
            "inside",
            "manage",
        )  # the order of `headstart --help`
        OPTIONAL_MODULES = ("serve", "audit")  # written by other parts of the project; skipped when absent

        for _name in COMMAND_MODULES:
            importlib.import_module(f"headstart.cli.{_name}")
        for _name in OPTIONAL_MODULES:
            if importlib.util.find_spec(f"headstart.cli.{_name}") is not None:
                importlib.import_module(f"headstart.cli.{_name}")
except BaseException as _exc:  # an interrupt, or an error it became on its way up (Python wraps some in RuntimeError)
    _handling = sys.modules.get("headstart.cli._interrupts")
    if _handling is None or not hasattr(_handling, "interrupted_exit"):  # it landed before the first line was done
        _cause: BaseException | None = _exc
        while _cause is not None and not isinstance(_cause, KeyboardInterrupt):
            _cause = _cause.__cause__ or _cause.__context__
        if _cause is None:
            raise
        sys.stderr.write("interrupted: everything finished so far (cached features, saved files) is kept.\n")
        exec("None")
        raise SystemExit(130) from None
    if isinstance(_exc, SystemExit) or not _handling.caused_by_interrupt(_exc, 0):
        raise
    _handling.announce()
    raise _handling.interrupted_exit() from None

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point: runs the command and exits with the documented code (130 for Ctrl-C, whenever
    it lands, with its one line on stderr)."""
    code: object = 0
    try:
        _interrupts.install(command_line=True)  # (done at import already, unless a host program handles SIGINT)
        with _interrupts.catching():
            app()  # always ends in SystemExit (Typer turns a Ctrl-C outside a command into a silent exit 130)
    except SystemExit as exc:
        code = exc.code
    except BaseException as exc:  # (a Ctrl-C outside a command, or an error it became on its way up)
        if not _interrupts.caused_by_interrupt(exc, 0):
            raise
        _interrupts.finish_interrupted()
    distributed = sys.modules.get("headstart._distributed")
    if distributed is not None:  # under torchrun: wait for the other ranks, then leave the group (no abort at exit)
        distributed.shutdown(orderly=code in (0, 1, None))
    if code == _interrupts.EXIT_INTERRUPTED or _interrupts.received():  # (also one Python swallowed before main)
        _interrupts.finish_interrupted()
    _interrupts.exiting()
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
