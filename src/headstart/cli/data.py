"""Commands about photos and features: backbones, scan, download, extract, merge-cache."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from headstart._io import check_output
from headstart.cli._common import (
    BackboneOpt,
    CacheDirOpt,
    DataArg,
    EngineOpt,
    JsonOpt,
    MaxPixelsOpt,
    PrecisionOpt,
    SplitOpt,
    WeightsOpt,
    app,
    finish,
    handles_errors,
    max_pixels_or_none,
    out,
    print_json,
    shown_path,
    skipped_files,
    use_cache_dir,
)
from headstart.errors import HeadstartError

#: Photos ``extract`` holds at once (their features: 4,096 x 1,280 floats = 21 MB for the default backbone); each
#: chunk's cached photos are read first, the rest computed in one pipeline run (the compiled engine is reused).
EXTRACT_CHUNK = 4096

#: Columns from which `backbones` prints a table; narrower terminals get a line a backbone and its text beneath.
WIDE_TABLE = 120


@app.command()
@handles_errors
def backbones(
    all_: Annotated[bool, typer.Option("--all", help="Every pretrained timm model, not just the catalogue.")] = False,
    pattern: Annotated[str | None, typer.Option(help="Wildcard filter over timm names, e.g. 'resnet*'.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List backbones: which are usable right now, and why not the others."""
    from headstart.features import list_backbones

    rows = list_backbones(include_all=all_, pattern=pattern)
    if as_json:
        print_json(
            [{"name": r.name, "usable": r.usable, "source": r.source, "description": r.description} for r in rows]
        )
        return
    if out.width < WIDE_TABLE:  # (a four-column table at 80 columns wrapped "about" to 9 characters)
        import textwrap

        for r in rows:
            usable = ("usable", "green") if r.usable else ("not usable", "red")
            out.print(Text.assemble((r.name, "bold"), "  ", usable))
            text = f"{r.description}; weights: {r.source}"
            for line in textwrap.wrap(text, width=max(20, out.width - 4), break_on_hyphens=False):
                out.print(f"    {line}", highlight=False)
        return
    table = Table("backbone", "usable", "weights", "about")
    table.columns[0].no_wrap = True
    for r in rows:
        table.add_row(r.name, Text("yes", "green") if r.usable else Text("no", "red"), r.source, r.description)
    out.print(table)


@app.command()
@handles_errors
def scan(
    data: Annotated[list[Path], typer.Argument(help="Folders or files to check.")],
    quarantine: Annotated[
        Path | None, typer.Option(help="Move unusable files into this folder (never deletes).")
    ] = None,
    max_pixels: MaxPixelsOpt = 89_478_485,
    as_json: JsonOpt = False,
) -> None:
    """Decode every image and list the unusable ones with the reason."""
    from headstart.data import quarantine as move_aside
    from headstart.data import scan as scan_files

    for p in data:
        if not p.exists():
            raise HeadstartError(f"{p} does not exist: pass a folder or image files to scan.")
    root = data[0] if len(data) == 1 and data[0].is_dir() else Path(os.path.commonpath([p.resolve() for p in data]))
    if quarantine is not None:
        from headstart.data.quarantining import check_destination

        check_output(quarantine, "folder", "--quarantine")
        for given in data:  # each folder scanned (a file: its folder) is data the quarantine must stay out of
            check_destination(quarantine, given)
    report = scan_files(data, max_pixels=max_pixels_or_none(max_pixels), progress=not as_json)
    moved = []
    if quarantine is not None and report.unusable:
        moved = move_aside(report, quarantine, root=root, scanned=data)
    if as_json:
        result = {
            **report.to_dict(),
            "unusable": [{**u.to_dict(), "path": shown_path(u.path)} for u in report.unusable],
        }
        if quarantine is not None:
            result["quarantined"] = [{"from": str(a), "to": str(b)} for a, b in moved]
        print_json(result)
        finish(len(report.unusable))
        return
    out.print(
        f"{report.n_files} image files, {len(report.unusable)} unusable, {len(report.ignored)} other files ignored"
    )
    for u in report.unusable:
        out.print(f"  {shown_path(u.path)}: {u.reason}", highlight=False)
    for a, b in moved:
        out.print(f"  moved {a} -> {b}", highlight=False)
    finish(len(report.unusable))


@app.command()
@handles_errors
def download(
    dataset: Annotated[str, typer.Argument(help="pets (Oxford-IIIT Pet) or catsdogs (Microsoft's PetImages).")],
    destination: Annotated[Path, typer.Argument(help="Folder to download and extract into.")],
) -> None:
    """Download and check an official data set archive, then extract it."""
    check_output(destination, "folder", "DESTINATION")
    from headstart.data.download import download_dataset

    root = download_dataset(dataset, destination)
    out.print(f"ready: {root}  (use it as DATA, e.g. `headstart train {root}`)")


@app.command()
@handles_errors
def extract(
    data: DataArg,
    backbone: BackboneOpt = "tf_efficientnet_lite0",
    weights: WeightsOpt = None,
    split: SplitOpt = "all",
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 32,
    precision: PrecisionOpt = "auto",
    max_pixels: MaxPixelsOpt = 89_478_485,
    cache_dir: CacheDirOpt = None,
    as_json: JsonOpt = False,
    engine: EngineOpt = "auto",
    flip_average: Annotated[
        bool,
        typer.Option(
            help="Also compute each photo's mirror image, for mirror-averaged features (`train` then lets cross-validation decide on them at no cost). Default: each photo once."
        ),
    ] = False,
    labels_from_filenames: Annotated[
        bool,
        typer.Option(
            "--labels-from-filenames",
            help="DATA is a flat folder of <label><number> photos (cat_001.jpg): take each label from the file name.",
        ),
    ] = False,
) -> None:
    """Compute and cache backbone features for a data set (only what is not cached yet)."""
    use_cache_dir(cache_dir)
    import time

    from headstart._distributed import init_from_env
    from headstart.data.datasets import labelled_photos, load_dataset
    from headstart.features.stream import iter_features

    group = init_from_env()  # under torchrun: each process extracts its share into the shared cache
    source = load_dataset(data, split=split, labels_from_filenames=True) if labels_from_filenames else data
    photos = labelled_photos(source, split=split)  # (class folders walked as they are read: never listed whole)
    started = time.perf_counter()
    counts = dict(n_images=0, n_usable=0, n_cached=0, n_computed=0)
    computing, width, name = 0.0, 0, backbone

    def paths():
        for path, _ in photos:
            counts["n_images"] += 1
            yield path

    # a chunk at a time (the cached photos first): memory bounded by the chunk, not by the data set
    for _, feats in iter_features(
        paths(),
        backbone,
        chunk=EXTRACT_CHUNK,
        weights=weights,
        batch_size=batch_size,
        precision=precision,
        max_pixels=max_pixels_or_none(max_pixels),
        progress=not as_json and group.is_main,
        engine=engine,
        flip_average=flip_average,
    ):
        if feats.n_computed:
            computing += feats.seconds - feats.setup_seconds
        for key in ("n_cached", "n_computed"):
            counts[key] += getattr(feats, key)
        counts["n_usable"] += len(feats.indices)
        width, name = int(feats.features.shape[1]) or width, feats.spec.name if feats.spec else name
    if not group.is_main:
        return
    seconds = time.perf_counter() - started
    summary = {
        **counts,
        "seconds": round(seconds, 3),
        "images_per_second": round(counts["n_computed"] / computing, 1) if counts["n_computed"] and computing else 0.0,
        "num_features": width,
        "backbone": name,
        "skipped": skipped_files(),
    }
    if as_json:
        print_json(summary)
        return
    out.print(
        f"{summary['n_usable']}/{summary['n_images']} images → {summary['num_features']}-d features with {summary['backbone']}: "
        f"{summary['n_cached']} cached, {summary['n_computed']} computed in {summary['seconds']:.1f} s"
        + (f" ({summary['images_per_second']:.0f} img/s)" if summary["n_computed"] else "")
    )


@app.command("merge-cache")
@handles_errors
def merge_cache(
    sources: Annotated[list[Path], typer.Argument(help="features.sqlite files from other machines or folders.")],
    cache_dir: CacheDirOpt = None,
) -> None:
    """Merge feature caches extracted elsewhere (e.g. one per machine) into this one."""
    use_cache_dir(cache_dir)
    from headstart.features import FeatureCache

    cache = FeatureCache()
    for source in sources:
        out.print(f"{source}: {cache.merge_from(source)} new features")
    out.print(f"{cache.path}: {cache.count()} features")
