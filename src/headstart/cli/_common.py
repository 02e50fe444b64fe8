"""What every command module shares: the Typer ``app``, the two consoles, the option types, error handling.

Results go to ``out`` (stdout); progress, warnings, skipped files and errors go to ``err`` (stderr). A command
module does ``from headstart.cli._common import app, ...`` and decorates its functions with ``@app.command()`` and
``@handles_errors``.

Exit codes, the same for every command:

====  ==========================================================================================
0     all done
1     done, but some inputs were unusable; they are listed on stderr (and in ``--json`` output), once, by
      :func:`handles_errors`: whatever skipped them (extraction, scoring, a fit) reports them to it
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

from headstart._console import listening_for_skipped
from headstart._io import check_output, io_error_message
from headstart._names import PrintableText, printable
from headstart.cli import _interrupts as interrupts
from headstart.errors import HeadstartError, SkippedFilesWarning, describe_skipped

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


# ----------------------------------------------------------------------------------------- where outputs go
# The rule, the same in every command:
# - `--out`/`-o` names what the command writes: a file where it writes one thing (train's model, export's ONNX,
#   lr-find's plot, the PNG of dream, featuremaps and explain), a folder where it writes several (evaluate, compare,
#   sweep, audit, attack, robustness, demo). train's second output, its run folder, is `--run-dir` (default: beside
#   the model, `<model stem>-run`). Old spellings (evaluate's `--out-dir`) still work, with a note.
# - Left out, an output's name is made from the inputs (:func:`default_output`), so two different commands (another
#   photo, model or grid) never write to the same default place.
# - Every output is checked before any work (`_io.check_output`) and written whole (temporary name, then rename):
#   running the same command again replaces its own earlier output, and says so.
def default_output(*parts: object, suffix: str = "") -> Path:
    """The path an output gets when ``--out`` is left out: the inputs that make it differ, joined by ``-``
    (``default_output("cat", "pets", "explain", suffix=".png")`` → ``cat-pets-explain.png``)."""
    words = [re.sub(r"[^\w.=,+-]+", "_", str(p)).strip("._") for p in parts if str(p)]
    return Path("-".join(w for w in words if w) + suffix)


def deprecated_flag(old: str, new: str) -> None:
    """Say, once, that an old spelling of a flag was used (it keeps working)."""
    err.print(f"note: {old} is now spelled {new} (the same meaning, as in every command); {old} still works for now.")


def max_pixels_or_none(value: int) -> int | None:
    """The ``--max-pixels`` value as the library takes it (0 = no limit = None)."""
    return None if value <= 0 else value


def use_cache_dir(cache_dir: Path | None) -> None:
    """Point the library at ``--cache-dir`` (before it is imported, so every layer sees the same folder)."""
    if cache_dir is not None:
        check_output(cache_dir, "folder", "--cache-dir")
        os.environ["HEADSTART_CACHE_DIR"] = str(cache_dir)


def _show_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    if issubclass(category, SkippedFilesWarning) and _RUNNING:  # the one reporter lists them when the command ends
        _RUNNING[-1].add(getattr(message, "unusable", []))
        return
    err.print(f"[yellow]warning:[/yellow] {escape(str(message))}", markup=True, highlight=False)


# ------------------------------------------------------------------------------------- paths and skipped files
def shown_path(path: str | os.PathLike[str]) -> str:
    """How every command shows a path it names (skipped files, predictions, outputs): relative to the folder the
    command runs in when the path is inside it, else as given."""
    text = os.fspath(path)
    candidate = Path(text)
    if candidate.is_absolute():
        try:
            return str(candidate.relative_to(Path.cwd()))
        except ValueError:
            return text
    return text


class _Skipped:
    """The unusable files one command skipped: path as shown -> reason, each once, in the order met."""

    def __init__(self) -> None:
        self.files: dict[str, str] = {}

    def add(self, items: Any) -> None:
        for item in items:
            path = item["path"] if isinstance(item, dict) else item.path
            reason = item["reason"] if isinstance(item, dict) else item.reason
            self.files.setdefault(shown_path(path), reason)


_RUNNING: list[_Skipped] = []  # the commands running in this process, innermost last


def note_skipped(items: Any) -> None:
    """Add files a command skipped by itself (each with ``path`` and ``reason``) to the one list it ends with."""
    if _RUNNING:
        _RUNNING[-1].add(items)


def skipped_files() -> list[dict[str, str]]:
    """The unusable files the running command skipped so far, as ``--json`` lists them (``path``, ``reason``)."""
    return [{"path": p, "reason": r} for p, r in _RUNNING[-1].files.items()] if _RUNNING else []


def _under_torchrun() -> bool:
    return os.environ.get("WORLD_SIZE", "1") not in ("", "1")


def _end_with_skipped(collected: _Skipped, code: int) -> int:
    """The rule of exit code 1, for every command: list the skipped files once on stderr (``skipped N unusable
    file(s):`` and a ``  path: reason`` line each) and exit 1. Under torchrun only rank 0 lists them, and every
    rank exits 0: torchrun turns any other code into a crash report (ChildFailedError) for work that was done."""
    if not collected.files:
        return code
    if os.environ.get("RANK", "0") in ("", "0"):
        err.print(describe_skipped(skipped_files(), limit=len(collected.files)), highlight=False)
        if _under_torchrun():
            err.print("(exit code 0 under torchrun, not 1: torchrun reports any other code as a failure)")
    return code if _under_torchrun() else max(code, EXIT_SKIPPED)


def handles_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into one clear line on stderr and exit 2, never a stack trace; an interrupt (Ctrl-C),
    however deep it lands and whatever error it turned into on its way up, into exit 130 and its one line; and
    unusable files skipped anywhere in the command into one list on stderr at its end and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        collected = _Skipped()
        _RUNNING.append(collected)
        try:
            with listening_for_skipped(collected.add), warnings.catch_warnings():
                warnings.simplefilter("always", SkippedFilesWarning)  # (each command hears its own)
                warnings.showwarning = _show_warning
                code = _run(fn, args, kwargs)
            code = _end_with_skipped(collected, code)
        finally:
            _RUNNING.remove(collected)
        if code:
            raise typer.Exit(code)

    return wrapper


def _run(fn: Callable[..., Any], args: Any, kwargs: Any) -> int:
    """Run the command; its exit code when it ends done (0, or 1 from :func:`finish`)."""
    since = interrupts.received()
    try:
        fn(*args, **kwargs)
        return EXIT_OK
    except typer.Exit as exc:
        if interrupts.received() > since:
            _interrupted()
        if exc.exit_code in (EXIT_OK, EXIT_SKIPPED):
            return exc.exit_code
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
            err.print(f"[red]error:[/red] {escape(where + (exc.strerror or str(exc)))}", markup=True, highlight=False)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        raise


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
    """End a command whose result is a list of unusable inputs (``scan``): exit 1 when it has any, else 0. (Files
    a command skipped on its way reach :func:`handles_errors` by themselves and end in 1 there.)"""
    if n_unusable:
        raise typer.Exit(EXIT_SKIPPED)


def check_model_file(path: Path | str, *others: Path | str, usage: str = "") -> None:
    """Catch, before loading says the file is damaged, what is not a model file where one belongs: an ONNX export,
    a photo or a folder of photos — and arguments given the wrong way round (``predict photo.jpg folder/``,
    ``evaluate photos/ pets.safetensors``). ``others`` are the command's other arguments; ``usage`` its synopsis
    (``headstart predict MODEL PHOTO…``)."""
    path = Path(path)
    swapped = [Path(o) for o in others if Path(o).suffix.lower() == ".safetensors" and Path(o).is_file()]
    if swapped and (path.is_dir() or _is_photo(path)):
        raise HeadstartError(
            f"{path} is {'a folder' if path.is_dir() else 'a photo'} and {swapped[0]} a model file: the arguments "
            f"are the wrong way round; the model comes first{f': `{usage}`' if usage else ''}."
        )
    if _is_photo(path):
        raise HeadstartError(
            f"{path} is a photo, not a model file: the model file comes first{f': `{usage}`' if usage else ''}; "
            "train one with `headstart train DATA --out MODEL.safetensors`."
        )
    if path.suffix.lower() == ".onnx":
        original = path.with_suffix(".safetensors")
        hint = f" (here: {original})" if original.is_file() else ""
        raise HeadstartError(
            f"{path} is an ONNX export, not a headstart model file: give the .safetensors model it was exported "
            f"from{hint}, and add --engine onnxruntime to run its backbone in ONNX Runtime; the .onnx file itself "
            "runs in any ONNX runtime without headstart."
        )


def _is_photo(path: Path) -> bool:
    from headstart.data.images import IMAGE_EXTENSIONS

    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


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
