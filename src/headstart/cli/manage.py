"""Looking after what headstart keeps: ``info`` (what a model file is and how it was made), ``runs`` (the
fine-tuning runs in a folder, and which can be resumed) and ``cache`` (what the cache folder holds; ``cache clean``
by backbone or age, with a dry run).

Examples:
    headstart info pets.safetensors
    headstart info pets.safetensors --json
    headstart runs
    headstart cache
    headstart cache clean --older-than 30d --dry-run
    headstart cache clean --backbone tf_efficientnet_lite2
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from headstart.cli._common import (
    CacheDirOpt,
    JsonOpt,
    ModelArg,
    app,
    check_model_file,
    handles_errors,
    out,
    print_json,
    use_cache_dir,
)


@app.command()
@handles_errors
def info(model: ModelArg, as_json: JsonOpt = False) -> None:
    """What a model file is and how it was made: classes, backbone, preprocessing, metrics, training settings."""
    check_model_file(model)
    from headstart.workflows.info import describe_model, model_info

    details = model_info(model)
    if as_json:
        print_json(details)
        return
    for line in describe_model(details):
        out.print(line, highlight=False)


@app.command()
@handles_errors
def runs(
    folder: Annotated[Path, typer.Argument(help="The folder holding the run folders (default: here).")] = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """The fine-tuning runs in FOLDER and its subfolders: data, method, epochs done of those planned, and whether
    each finished or can be continued with `headstart train DATA --resume RUN_FOLDER`."""
    from headstart.workflows.runs import list_runs

    found = list_runs(folder)
    if as_json:
        print_json({"runs": found})
        return
    if not found:
        out.print(f"no fine-tuning runs in {folder} or its subfolders", highlight=False)
        return
    table = Table("run folder", "data", "method", "epochs done", "state", "model")
    for run in found:
        table.add_row(run["folder"], str(run["data"]), run["method"], run["progress"], run["state"], run["model"])
    out.print(table)
    resumable = [run["folder"] for run in found if run["resumable"]]
    if resumable:
        out.print(f"continue one with: headstart train DATA --resume {resumable[0]}", highlight=False)


cache_app = typer.Typer(
    help="What the cache folder holds (features by backbone, converted backbones, remembered fits); `cache clean` "
    "frees space. Everything there is recomputable.",
    no_args_is_help=False,
    invoke_without_command=True,
)
app.add_typer(cache_app, name="cache")


@cache_app.callback()
@handles_errors
def cache(ctx: typer.Context, cache_dir: CacheDirOpt = None, as_json: JsonOpt = False) -> None:
    """What the cache folder holds: its size, features by backbone and precision, backbone files, the memo."""
    if ctx.invoked_subcommand is not None:
        return
    use_cache_dir(cache_dir)
    from headstart.features.housekeeping import cache_summary

    summary = cache_summary()
    if as_json:
        print_json(summary)
        return
    features = summary["features"]
    out.print(f"{summary['folder']}: {_mb(summary['bytes'])} in all", highlight=False)
    table = Table("features of", "precision", "photos (views)", "about", "last used")
    for row in features["backbones"]:
        views = ", ".join(f"{n} {view}" for view, n in row["views"].items())
        days = row["last_used_days"]
        table.add_row(
            row["backbone"],
            row["precision"],
            views,
            _mb(row["bytes"]),
            "?" if days is None else "today" if days < 1 else f"{days:.0f} days ago",
        )
    out.print(f"features.sqlite: {_mb(features['bytes'])}")
    if features["backbones"]:
        out.print(table)
    for entry in summary["backbone_files"]:
        out.print(f"backbones/: {entry['backbone']}: {entry['files']} file(s), {_mb(entry['bytes'])}", highlight=False)
    store = summary["engine_store"]
    if not store["inside"]:
        out.print(f"engine store {store['folder']}: {_mb(store['bytes'])} (converted backbones; outside this folder)")
    for key in summary["activations"]:
        out.print(
            f"activations/: {key['backbone']} up to {key['where']} ({key['augment']} views, seed {key['seed']}, "
            f"{key['precision']}, {key['engine']}): {key['files'] - 1} files, {_mb(key['bytes'])} "
            "(fine-tuning's frozen stages; kept to 4 GB)",
            highlight=False,
        )
    memo = summary["memo"]
    out.print(f"memo/: {memo['entries']} remembered fits and pictures, {_mb(memo['bytes'])} (kept to 512 MB)")
    out.print("free space: headstart cache clean --older-than 30d (or --backbone NAME); --dry-run shows what would go")


@cache_app.command()
@handles_errors
def clean(
    backbone: Annotated[
        str | None, typer.Option("--backbone", "-b", help="Remove this backbone's features and files (its timm name).")
    ] = None,
    older_than: Annotated[
        str | None,
        typer.Option(help="Remove what was not used for this long: 30d, 12h, 2w (a plain number is days)."),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would be removed.")] = False,
    cache_dir: CacheDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Remove cached features and files by backbone and/or age (only inside the cache folder; all recomputable)."""
    use_cache_dir(cache_dir)
    from headstart.features.housekeeping import clean_cache, parse_age

    result = clean_cache(
        backbone=backbone, older_than_s=None if older_than is None else parse_age(older_than), dry_run=dry_run
    )
    if as_json:
        print_json(result)
        return
    verb = "would remove" if dry_run else "removed"
    what = f" of {', '.join(result['backbones'])}" if result["backbones"] else ""
    out.print(
        f"{verb} {result['removed_vectors']} feature vectors{what} and {len(result['removed_files'])} file(s): "
        f"{_mb(result['freed_bytes'])}",
        highlight=False,
    )
    for path in result["removed_files"]:
        out.print(f"  {path}", highlight=False)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"
