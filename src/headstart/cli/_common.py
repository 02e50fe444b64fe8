"""What every command module shares: the Typer ``app``, the two consoles, the option types, error handling.

Results go to ``out`` (stdout); progress, warnings, skipped files and errors go to ``err`` (stderr). A command
module does ``from headstart.cli._common import app, ...`` and decorates its functions with ``@app.command()`` and
``@handles_errors``.

Exit codes, the same for every command:

====  ==========================================================================================
0     all done
1     done, but some inputs were unusable; they are listed on stderr (and in ``--json`` output)
2     bad usage or bad input for the whole command (one line on stderr says what and how to fix it)
130   interrupted (Ctrl-C); what was finished is kept
====  ==========================================================================================
"""

from __future__ import annotations

import functools
import json
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from headstart._io import check_output, io_error_message
from headstart._names import PrintableText, printable
from headstart.cli import _interrupts as interrupts
from headstart.errors import HeadstartError

EXIT_OK = 0
EXIT_SKIPPED = 1  # done, some inputs unusable (listed)
EXIT_BAD_INPUT = 2  # nothing (or nothing useful) done: bad usage or input for the whole command
EXIT_INTERRUPTED = interrupts.EXIT_INTERRUPTED

app = typer.Typer(
    name="headstart",
    help="Turn a folder of photos into an image classifier by reusing ImageNet-pretrained networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# markup=False: paths, reasons and class names are printed verbatim (a file named `cat [copy].jpg` must not lose
# `[copy]` as a style tag); the few coloured words opt in with markup=True and escape what they interpolate.
# Every piece of text either prints passes through _names.printable (PrintableText): names from files and model
# files cannot move the cursor, retitle or clear the terminal, whichever command prints them.
class _PrintableConsole(Console):
    """A rich Console whose printed strings pass through ``printable`` before rich sees them (rich itself drops a
    bell or a carriage return without a trace; these show them), and whose nested renderables (tables) pass
    through the :class:`PrintableText` hook."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        super().print(*(printable(o, keep_newlines=True) if isinstance(o, str) else o for o in objects), **kwargs)


out = _PrintableConsole(soft_wrap=True, markup=False)
err = _PrintableConsole(stderr=True, soft_wrap=True, markup=False)
out.push_render_hook(PrintableText())
err.push_render_hook(PrintableText())

# ------------------------------------------------------------------------------------------ shared option types
DataArg = Annotated[
    str, typer.Argument(help="Folder of class subfolders, Oxford-IIIT Pet root, PetImages folder or CSV of path,label.")
]
ModelArg = Annotated[Path, typer.Argument(help="A model file written by `headstart train`.")]
BackboneOpt = Annotated[
    str, typer.Option("--backbone", "-b", help="timm name, e.g. tf_efficientnet_lite0, resnet50.a1_in1k.")
]
WeightsOpt = Annotated[
    str | None,
    typer.Option(
        help="Where the weights come from: hub, package, none, or a local checkpoint path. Default: the offline package when installed, else the hub."
    ),
]
CacheDirOpt = Annotated[
    Path | None, typer.Option(help="Cache folder (default $HEADSTART_CACHE_DIR or ~/.cache/headstart).")
]
PrecisionOpt = Annotated[
    str, typer.Option(help="auto (bf16 where the CPU has native bf16), fp32, bf16, or int8 (OpenVINO + NNCF).")
]
SplitOpt = Annotated[
    str, typer.Option(help="all, or train/test for data sets with an official split (Oxford-IIIT Pet).")
]
MaxPixelsOpt = Annotated[
    int, typer.Option(help="Refuse images with more pixels than this (decompression bombs); 0 = no limit.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for machines.")]
EngineOpt = Annotated[
    str,
    typer.Option(
        help="auto (OpenVINO on a CPU where installed, else torch), openvino, torch, or onnxruntime; converted once, cached."
    ),
]


def max_pixels_or_none(value: int) -> int | None:
    """The ``--max-pixels`` value as the library takes it (0 = no limit = None)."""
    return None if value <= 0 else value


def use_cache_dir(cache_dir: Path | None) -> None:
    """Point the library at ``--cache-dir`` (before it is imported, so every layer sees the same folder)."""
    if cache_dir is not None:
        check_output(cache_dir, "folder", "--cache-dir")
        os.environ["HEADSTART_CACHE_DIR"] = str(cache_dir)


def _show_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    err.print(f"[yellow]warning:[/yellow] {escape(str(message))}", markup=True, highlight=False)


def handles_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into one clear line on stderr and exit 2, never a stack trace; an interrupt (Ctrl-C),
    however deep it lands and whatever error it turned into on its way up, into exit 130 and its one line."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        warnings.showwarning = _show_warning
        since = interrupts.received()
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            if interrupts.received() > since:
                _interrupted()
            raise
        except BaseException as exc:  # (SystemExit and GeneratorExit pass on unless an interrupt is behind them)
            if interrupts.caused_by_interrupt(exc, since):
                _interrupted()
            if isinstance(exc, (HeadstartError, ValueError)):
                err.print(f"[red]error:[/red] {escape(in_cli_words(exc, fn))}", markup=True, highlight=False)
                raise typer.Exit(EXIT_BAD_INPUT) from None
            failure = io_error_message(exc)  # disk full, read-only, permissions: however deep, whoever raised it
            if failure is not None:
                err.print(f"[red]error:[/red] {escape(failure)}", markup=True, highlight=False)
                raise typer.Exit(EXIT_BAD_INPUT) from None
            if isinstance(exc, OSError):  # a file the library did not expect to fail: still one line
                where = f"{exc.filename}: " if exc.filename else ""
                err.print(
                    f"[red]error:[/red] {escape(where + (exc.strerror or str(exc)))}", markup=True, highlight=False
                )
                raise typer.Exit(EXIT_BAD_INPUT) from None
            raise

    return wrapper


def _interrupted() -> None:
    interrupts.announce(again=True)
    raise typer.Exit(EXIT_INTERRUPTED) from None


_PARAMETER = re.compile(r"The '(\w+)' parameter of [\w.]+")


def in_cli_words(exc: BaseException, command: Callable[..., Any]) -> str:
    """The message of ``exc``, with the Python parameter it names (``The 'top_k' parameter of predict``) said as
    the command's option (``The '--top-k' option``). Names that are no option of the command stay as they are."""
    message = str(exc)
    if not isinstance(exc, ValueError):
        return message
    names = [getattr(exc, "parameter", None), *_PARAMETER.findall(message)]
    flags = options_of(command)
    for name in dict.fromkeys(n for n in names if n):
        spelled = "--" + name.replace("_", "-")
        flag = flags.get(name) or (spelled if spelled in flags.values() else None)
        if flag is None:
            continue
        message, n = re.subn(rf"The '{name}' parameter of [\w.]+", f"The '{flag}' option", message)
        if not n:
            message = message.replace(f"'{name}'", f"'{flag}'")
    return message


def options_of(command: Callable[..., Any]) -> dict[str, str]:
    """Python parameter name → the flag a user types (``top_k`` → ``--top-k``), read from the command's signature
    (its ``typer.Option`` declarations), so the words match ``--help`` whatever the Typer version."""
    import inspect

    from typer.models import OptionInfo

    flags = {}
    for param in inspect.signature(command, eval_str=True).parameters.values():
        info = next((m for m in getattr(param.annotation, "__metadata__", ()) if isinstance(m, OptionInfo)), None)
        if info is None:
            continue
        declared = [d for d in (info.default, *(info.param_decls or ())) if isinstance(d, str)]
        long = [part for d in declared for part in d.split("/") if part.startswith("--")]
        flags[param.name] = long[0] if long else "--" + param.name.replace("_", "-")
    return flags


def finish(n_unusable: int) -> None:
    """End a command that has done its work: exit 1 when it skipped unusable inputs (listed already), else 0."""
    if n_unusable:
        raise typer.Exit(EXIT_SKIPPED)


def check_model_file(path: Path | str) -> None:
    """Catch an ONNX export given where a headstart model file belongs, before loading says it is damaged."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        original = path.with_suffix(".safetensors")
        hint = f" (here: {original})" if original.is_file() else ""
        raise HeadstartError(
            f"{path} is an ONNX export, not a headstart model file: give the .safetensors model it was exported "
            f"from{hint}, and add --engine onnxruntime to run its backbone in ONNX Runtime; the .onnx file itself "
            "runs in any ONNX runtime without headstart."
        )


def _print_version(value: bool) -> None:
    if value:
        from headstart._version import __version__

        out.print(f"headstart {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print headstart's version and exit."),
    ] = False,
) -> None:
    """Turn a folder of photos into an image classifier by reusing ImageNet-pretrained networks."""


def print_json(data: Any) -> None:
    """Results for machines, on stdout."""
    out.print_json(json.dumps(data))
