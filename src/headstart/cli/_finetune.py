"""Fine-tuning flags made from the fields of :class:`headstart.models.finetune.config.Finetune`.

The dataclass is the one place an option is declared: its name gives the flag (``warmup_epochs`` →
``--warmup-epochs``; a bool gets ``--x/--no-x`` unless the field names its own pair, as ``--freeze-bn/--train-bn``),
its metadata the help, its type the parsing. :func:`finetune_flags` adds them to a command's signature, so Typer
sees ordinary parameters; the command receives them in ``**options`` and passes on the ones given.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable
from typing import Annotated, Any

import typer

from headstart.models.finetune.config import Finetune, field_types

PANEL = "Fine-tuning"


def flag_of(name: str, value: Any = None) -> str:
    """The flag of a field as a user types it: ``warmup_epochs`` → ``--warmup-epochs``; for a bool, the flag that
    gives ``value`` (``freeze_bn`` False → ``--train-bn``)."""
    field = next(f for f in dataclasses.fields(Finetune) if f.name == name)
    on, _, off = _declaration(field, field_types()[name]).partition("/")
    return off if value is False and off else on


def _declaration(field: dataclasses.Field, kind: type) -> str:
    dashed = field.name.replace("_", "-")
    return field.metadata.get("flag") or (f"--{dashed}/--no-{dashed}" if kind is bool else f"--{dashed}")


def _parameter(field: dataclasses.Field, kind: type) -> inspect.Parameter:
    option = typer.Option(_declaration(field, kind), help=field.metadata["help"], rich_help_panel=PANEL)
    return inspect.Parameter(
        field.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=Annotated[kind | None, option]
    )


def finetune_flags(
    *, only: Iterable[str] | None = None, exclude: Iterable[str] = (), before: str | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command one flag per :class:`Finetune` field (``only`` those, less ``exclude``), inserted before the
    parameter ``before`` (default: at the end). The command takes them as ``**options``; ungiven flags are None.

    Example:
        >>> @app.command()
        ... @handles_errors
        ... @finetune_flags(exclude=("seed",))
        ... def train(data: str, **options: Any) -> None: ...
    """
    types = field_types()
    chosen = [
        f for f in dataclasses.fields(Finetune) if (only is None or f.name in set(only)) and f.name not in set(exclude)
    ]
    unknown = set(only or ()) - set(types)
    if unknown:  # a programming error, caught by the CLI's import in every test run
        raise TypeError(f"not fields of Finetune: {sorted(unknown)}")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        params = [
            p
            for p in inspect.signature(fn, eval_str=True).parameters.values()
            if p.kind is not inspect.Parameter.VAR_KEYWORD
        ]
        at = next((i for i, p in enumerate(params) if p.name == before), len(params))
        clash = {p.name for p in params} & {f.name for f in chosen}
        if clash:
            raise TypeError(f"{fn.__name__} already has parameters {sorted(clash)}")
        generated = [_parameter(f, types[f.name]) for f in chosen]
        fn.__signature__ = inspect.Signature(params[:at] + generated + params[at:])  # type: ignore[attr-defined]
        return fn

    return decorate


def given(options: dict[str, Any]) -> dict[str, Any]:
    """The fine-tuning flags that were given (not None), by field name."""
    return {name: value for name, value in options.items() if value is not None}
