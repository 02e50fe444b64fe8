"""The ``audit`` command: what is wrong with a data set before you train on it.

Examples:
    headstart audit photos/ --test test_photos/ --out audit/
    headstart audit photos/ --json > audit.json
    headstart audit photos/ --relabel-csv relabel.csv --quarantine photos-quarantine/
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from headstart._io import check_output
from headstart.cli._common import (
    BackboneOpt,
    CacheDirOpt,
    DataArg,
    JsonOpt,
    MaxPixelsOpt,
    WeightsOpt,
    app,
    err,
    handles_errors,
    max_pixels_or_none,
    out,
    print_json,
    skipped_files,
    use_cache_dir,
)

_SHOWN = 5


@app.command()
@handles_errors
def audit(
    data: DataArg,
    test: Annotated[
        str | None,
        typer.Option(help="Test photos (same layouts as DATA), searched for copies of DATA photos: leaks."),
    ] = None,
    out_dir: Annotated[
        Path,
        typer.Option("--out", "-o", help="Folder for audit.html (self-contained), audit.json and learning_curve.png."),
    ] = Path("audit"),
    quarantine: Annotated[
        Path | None, typer.Option(help="Move the flagged DATA files into this folder, with a log (never deletes).")
    ] = None,
    quarantine_what: Annotated[
        str, typer.Option(help="What --quarantine moves: a comma list of duplicates, outliers, label_issues.")
    ] = "duplicates,outliers",
    relabel_csv: Annotated[
        Path | None,
        typer.Option(help="Write the suggested relabels (path,given,suggested,score) here, to review and apply."),
    ] = None,
    backbone: BackboneOpt = "tf_efficientnet_lite0",
    weights: WeightsOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of the folds, subsamples and probes.")] = 0,
    thumbnails: Annotated[
        bool, typer.Option(help="Embed thumbnails in audit.html (--no-thumbnails: a much smaller page).")
    ] = True,
    reuse: Annotated[
        bool,
        typer.Option(help="Read the probe fit and pixel hashes back from the cache when their inputs are unchanged."),
    ] = True,
    max_pixels: MaxPixelsOpt = 89_478_485,
    cache_dir: CacheDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Find duplicates and leaks, likely wrong labels, outliers, imbalance, and how many photos would help."""
    use_cache_dir(cache_dir)
    for photos in (data, test) if test is not None else (data,):
        check_output(
            out_dir, "folder", "--out", contents=("audit.html", "audit.json", "learning_curve.png"), data=photos
        )
    if quarantine is not None:
        from headstart.data.quarantining import check_destination

        check_output(quarantine, "folder", "--quarantine")
        check_destination(quarantine, Path(data) if Path(data).is_dir() else Path(data).parent)
    if relabel_csv is not None:
        check_output(relabel_csv, "file", "--relabel-csv", example="relabel.csv")
    from headstart.audit.actions import KINDS, quarantine_findings, write_relabel_csv
    from headstart.audit.core import audit as run_audit

    kinds = [k.strip() for k in quarantine_what.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(
            f"The '--quarantine-what' option must list some of {', '.join(KINDS)}. Got {quarantine_what!r} instead."
        )
    report = run_audit(
        data,
        test=test,
        backbone=backbone,
        weights=weights,
        seed=seed,
        progress=not as_json,
        reuse=reuse,
        max_pixels=max_pixels_or_none(max_pixels),
    )
    written = report.save(out_dir, thumbnails=thumbnails)
    result = report.to_dict()
    if relabel_csv is not None:
        write_relabel_csv(report, relabel_csv)
    moved = quarantine_findings(report, quarantine, include=kinds) if quarantine is not None else []
    if as_json:
        result["written"] = {k: str(v) for k, v in written.items()}
        if relabel_csv is not None:
            result["relabel_csv"] = str(relabel_csv)
        if quarantine is not None:
            result["quarantined"] = [{"from": str(a), "to": str(b)} for a, b in moved]
        print_json({**result, "skipped": skipped_files()})
        return
    _print_summary(result)
    out.print(f"report: {written['html']} (and {written['json'].name} beside it)")
    if relabel_csv is not None:
        out.print(
            f"suggested relabels: {relabel_csv} ({len(result['label_issues'])} rows; review them, then train "
            "on the data set with them applied)"
        )
    if quarantine is not None:
        log = f" (log: {quarantine / 'QUARANTINE.json'})" if moved else " (nothing to move; no log written)"
        out.print(f"quarantined {len(moved)} file(s) into {quarantine}{log}")


def _print_summary(result: dict) -> None:
    s = result["summary"]
    accuracy = "–" if result["cv_accuracy"] is None else f"{100 * result['cv_accuracy']:.1f}%"
    balance = s["photos_per_class"]
    per_class = f"{balance['min']}" if balance["min"] == balance["max"] else f"{balance['min']}–{balance['max']}"
    out.print(
        f"{result['n_usable']} usable photos of {result['n_images']} in {s['n_classes']} classes "
        f"({per_class} a class); cross-validated accuracy {accuracy}; {result['seconds']:.1f} s"
    )
    out.print(f"duplicates: {s['duplicate_groups']} group(s), {s['leaks']} crossing DATA/TEST")
    for group in result["duplicates"][:_SHOWN]:
        tag = "LEAK " if group["crosses_split"] else ""
        out.print(f"  {tag}{group['kind']} {group['similarity']:.3f}: {', '.join(group['paths'])}")
    _more(len(result["duplicates"]))
    out.print(f"likely wrong labels: {s['label_issues']}")
    for row in result["label_issues"][:_SHOWN]:
        out.print(f"  {row['score']:.3f} {row['path']}: {row['given']} -> {row['suggested']}")
    _more(len(result["label_issues"]))
    out.print(f"outliers: {s['outliers']}")
    for row in result["outliers"][:_SHOWN]:
        out.print(f"  {row['score']:.2f} {row['path']}")
    _more(len(result["outliers"]))
    if result["confused_pairs"]:
        pairs = ", ".join(f"{p['true']}->{p['predicted']} ({p['count']})" for p in result["confused_pairs"][:3])
        out.print(f"most confused: {pairs}")
    if result["extrapolation"]:
        out.print(f"learning curve: {result['extrapolation']['headline']}")
    for note in result["notes"]:
        err.print(f"note: {note}")


def _more(n: int) -> None:
    """The line that says a list was cut: every list above shows its first :data:`_SHOWN`."""
    if n > _SHOWN:
        out.print(f"  … and {n - _SHOWN} more (all in the report)")
