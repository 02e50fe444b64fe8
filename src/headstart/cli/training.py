"""Commands that train: train, lr-find, sweep."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from headstart._io import check_output
from headstart.cli._common import (
    BackboneOpt,
    CacheDirOpt,
    DataArg,
    JsonOpt,
    MaxPixelsOpt,
    PrecisionOpt,
    SplitOpt,
    WeightsOpt,
    app,
    default_output,
    handles_errors,
    max_pixels_or_none,
    out,
    print_json,
    skipped_files,
    use_cache_dir,
)
from headstart.cli._finetune import finetune_flags, flag_of, given
from headstart.errors import HeadstartError
from headstart.models.finetune.config import Finetune
from headstart.models.probe_fit import describe_C

# train's own --seed and --precision also set these fields (they seed the split and drive the extraction too)
RUN_OPTIONS = ("seed", "precision")
# what the learning-rate range test reads of the options (it sweeps lr itself and trains no epochs)
# what train writes in its run folder (a folder of one of these names there is refused before any work)
RUN_FILES = (
    "config.json",
    "metrics.json",
    "metrics.jsonl",
    "curves.png",
    "confusion_matrix.png",
    "misclassified.png",
    "reliability.png",
    "backbone_selection.json",
)
# train's and lr-find's backbone: "auto" (the default) lets the probe's cross-validation choose
AutoBackboneOpt = Annotated[
    str,
    typer.Option(
        "--backbone",
        "-b",
        help="auto (the default: for a probe on up to 5,000 photos, the ensemble of lite1, lite2 and lite0, their probes averaged; else tf_efficientnet_lite1, unless lite2 or lite0 classifies the training photos better, photo by photo on the same cross-validation folds, by more than two paired standard errors; lite0 predicts fastest), auto:NAME,NAME (among those timm names), ensemble or ensemble:NAME,NAME (a probe over several backbones) or one timm name, e.g. tf_efficientnet_lite1, resnet50.a1_in1k.",
    ),
]
LR_FIND_FIELDS = (
    "batch_size",
    "unfreeze",
    "optimizer",
    "momentum",
    "weight_decay",
    "layer_decay",
    "label_smoothing",
    "augment",
    "head_dropout",
    "clip_grad",
    "freeze_bn",
    "precision",
    "workers",
    "seed",
)


@app.command()
@handles_errors
@finetune_flags(exclude=RUN_OPTIONS, before="config")
def train(
    ctx: typer.Context,
    data: DataArg,
    out_path: Annotated[
        Path, typer.Option("--out", "-o", help="The model file to write (with --resume: the run's own).")
    ] = Path("model.safetensors"),
    backbone: AutoBackboneOpt = "auto",
    weights: WeightsOpt = None,
    method: Annotated[
        str,
        typer.Option(
            help="probe (logistic regression on cached features), finetune (probe head, then the backbone unfrozen) or scratch (random weights)."
        ),
    ] = "probe",
    run_dir: Annotated[Path | None, typer.Option(help="Run folder (default: <out stem>-run beside the model).")] = None,
    split: SplitOpt = "all",
    val_fraction: Annotated[float, typer.Option(help="Share of photos held out for validation.")] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of the train/validation split and the training.")] = 0,
    refit: Annotated[bool, typer.Option(help="After validating, refit on all photos for the saved model.")] = True,
    reuse: Annotated[
        bool,
        typer.Option(
            help="Read probe fits and run pictures back from the cache when their inputs are unchanged (--no-reuse computes them again; same result)."
        ),
    ] = True,
    flip_average: Annotated[
        bool | None,
        typer.Option(
            "--flip-average/--no-flip-average",
            help="Average each photo's features with its mirror image's, in training and in the model's predictions (default: each photo once, unless its mirror view is cached, e.g. by `headstart extract --flip-average`: then cross-validation on the training part decides).",
        ),
    ] = None,
    precision: PrecisionOpt = "auto",
    max_pixels: MaxPixelsOpt = 89_478_485,
    cache_dir: CacheDirOpt = None,
    as_json: JsonOpt = False,
    config: Annotated[
        Path | None,
        typer.Option(
            help="[finetune] YAML/TOML file of fine-tuning options (flags win).", rich_help_panel="Fine-tuning"
        ),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="[finetune] Continue the interrupted run in this run folder (`headstart runs` lists them): what you leave out (--out, --method, the options) comes from the run, what you give must match it.",
            rich_help_panel="Fine-tuning",
        ),
    ] = None,
    device: Annotated[
        str,
        typer.Option(
            help="[finetune] auto (the GPU when there is one), cpu, cuda or cuda:N.", rich_help_panel="Fine-tuning"
        ),
    ] = "auto",
    relabel_csv: Annotated[
        Path | None,
        typer.Option(
            "--relabel-csv",
            help="Apply the reviewed relabels of `headstart audit --relabel-csv FILE` (path,given,suggested) to DATA's labels before training; the photos are not touched.",
        ),
    ] = None,
    labels_from_filenames: Annotated[
        bool,
        typer.Option(
            "--labels-from-filenames",
            help="DATA is a flat folder of <label><number> photos (cat_001.jpg, dog-2.png): take each label from the file name; the labels found are printed.",
        ),
    ] = False,
    **finetune: Any,
) -> None:
    """Train a classifier on labelled photos and save it as one model file."""
    use_cache_dir(cache_dir)

    def given_here(name: str) -> bool:  # on --resume, what is left out comes from the run folder
        return resume is None or getattr(ctx.get_parameter_source(name), "name", None) != "DEFAULT"

    if given_here("out_path"):
        check_output(out_path, "file", "--out", example="model.safetensors")  # where it writes, before any work
    from headstart.workflows.runs import NothingToResume
    from headstart.workflows.training import default_run_dir
    from headstart.workflows.training import train as train_model

    run_folder, named = (
        (resume, "--resume")
        if resume is not None
        else (run_dir, "--run-dir")
        if run_dir is not None
        else (default_run_dir(out_path), "the run folder (--run-dir)")
    )
    check_output(run_folder, "folder", named, contents=RUN_FILES)

    file_options = _file_options(config)
    flags = given(finetune)
    options = Finetune().replace(**file_options).replace(**flags).set_fields()  # checked before any work
    if method == "probe" and options and given_here("method"):
        named = [flag_of(k, v) for k, v in flags.items()] + [
            f"{k} (in {config})" for k in file_options if k not in flags
        ]
        raise ValueError(f"{', '.join(named)} only apply to --method finetune or scratch.")
    if labels_from_filenames or relabel_csv is not None:  # (the library warns with the labels found, on stderr)
        from headstart.data.datasets import load_dataset

        data = load_dataset(data, split=split, labels_from_filenames=labels_from_filenames)
        if relabel_csv is not None:
            from headstart.audit import apply_relabels

            data = apply_relabels(data, relabel_csv)
    asked = dict(
        backbone=backbone,
        weights=weights,
        method=method,
        out=out_path,
        split=split,
        val_fraction=val_fraction,
        seed=seed,
        refit=refit,
        precision=precision,
        flip_average=flip_average,  # (None: the API's default too)
    )
    asked = {k: v for k, v in asked.items() if given_here("out_path" if k == "out" else k)}
    if resume is None or options:
        asked["finetune"] = options or None
    try:
        result = train_model(
            data,
            run_dir=run_dir,
            max_pixels=max_pixels_or_none(max_pixels),
            progress=not as_json,
            resume=resume,
            device=device,
            reuse=reuse,
            **asked,
        )
    except NothingToResume as finished:
        out.print(str(finished), highlight=False)
        return
    method = result.model.metadata.get("method", method)
    m = result.metrics
    from headstart._distributed import current
    from headstart.models.finetune.stopping import describe_stopping
    from headstart.models.selection import describe_selection
    from headstart.reports.calibration import format_ece
    from headstart.reports.metrics import format_accuracy

    if not current().is_main:  # under torchrun, rank 0 reports
        return
    if as_json:
        print_json({"model": str(result.model_path), "run_dir": str(result.run_dir), **m, "skipped": skipped_files()})
        return
    f = m["features"]
    out.print(f"features: {f['cached']} cached, {f['computed']} computed ({f['seconds']:.1f} s)")
    if method == "probe":
        detail = f"C={describe_C(m['C'])} chosen by CV, CV accuracy {m['cv_accuracy']:.3f}"
    elif m.get("finetune_skipped"):
        detail = f"fine-tuning skipped, validation could not judge it; the probe alone: {m['probe_val_accuracy']:.3f}"
    elif m.get("probe_val_accuracy") is not None:
        detail = f"kept epoch {m['best_epoch']} of {m['epochs_run']}; epoch 0 is the probe alone: {m['probe_val_accuracy']:.3f}"
    else:
        detail = f"kept epoch {m['best_epoch']} of {m['epochs_run']}, trained from random weights; chance: {1 / m['n_classes']:.3f}"
    accuracy = format_accuracy(m["val_accuracy"], m.get("val_accuracy_ci"), m["n_val"])
    out.print(
        f"validation accuracy {accuracy} (95% interval), top-5 {m['val_top5_accuracy']:.3f} "
        f"({m['n_classes']} classes; {detail})"
    )
    if m.get("flip_average_cv"):
        cv = m["flip_average_cv"]
        out.print(
            f"mirror averaging: {'on' if m['flip_average'] else 'off'} (probe CV accuracy {cv['on']:.3f} with, "
            f"{cv['off']:.3f} without)"
        )
    if m.get("stopping"):
        out.print(describe_stopping(m["stopping"]), highlight=False)
    if m.get("backbone_selection"):
        sel = m["backbone_selection"]
        out.print(f"backbone: {sel['chosen']} (auto; {describe_selection(sel)})")
    elif method == "scratch":
        first = (
            " (auto from scratch: its first candidate, no pretrained comparison)"
            if str(result.estimator.backbone).startswith("auto")
            else ""
        )
        out.print(f"backbone: {m['backbone']}{first}, its architecture only: every weight learnt from these photos")
    if m.get("val_ece") is not None:
        out.print(
            f"calibration on validation: {format_ece(m['calibration'])}, NLL {m['val_nll']:.3f}, "
            f"Brier {m['val_brier']:.3f}; temperature {m.get('temperature', 1.0):.3g}"
        )
    from headstart.workflows.training import refit_summary

    out.print(f"model: {result.model_path} ({refit_summary(m, method)['what']})")
    out.print(f"run folder: {result.run_dir} ({', '.join(p.name for p in result.files)})")


@app.command("lr-find")
@handles_errors
@finetune_flags(only=LR_FIND_FIELDS)
def lr_find(
    data: DataArg,
    backbone: AutoBackboneOpt = "auto",
    weights: WeightsOpt = None,
    out_path: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="The plot to write (default <data folder name>-lr-find.png here)."),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(
            help="Batches to raise the learning rate over (default 40; it stops early, and says why, when the loss diverges or after 45 s)."
        ),
    ] = None,
    cache_dir: CacheDirOpt = None,
    as_json: JsonOpt = False,
    **finetune: Any,
) -> None:
    """Learning-rate range test for fine-tuning: a plot of loss against lr and a suggested value."""
    use_cache_dir(cache_dir)
    default = default_output(Path(str(data)).name, "lr-find", suffix=".png")  # (other data: another file)
    out_path = check_output(out_path or default, "file", "--out", example=str(default))
    from headstart.workflows.experiments import find_learning_rate

    options = Finetune().replace(**given(finetune)).set_fields()
    result = find_learning_rate(
        data,
        backbone=backbone,
        weights=weights,
        out=out_path,
        steps=steps,
        finetune=options,
        progress=not as_json,
    )
    if as_json:
        print_json({**result.to_dict(), "plot": str(out_path), "skipped": skipped_files()})
        return
    out.print(f"suggested learning rate: {result.suggestion:.2g} (use it as --lr); plot: {out_path}")
    out.print(f"{result.why}; {result.seconds:.1f} s ({result.seconds_per_step:.2f} s a step)")


@app.command()
@handles_errors
@finetune_flags(before="cache_dir")
def sweep(
    data: DataArg,
    settings: Annotated[
        list[str], typer.Option("--set", help="NAME=V1,V2,… for any fine-tuning option; several --set make a grid.")
    ],
    method: Annotated[str, typer.Option(help="finetune or scratch.")] = "finetune",
    backbone: BackboneOpt = "tf_efficientnet_lite0",
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Folder for the variants, table and plot (default sweep-<the options swept>)."
        ),
    ] = None,
    cache_dir: CacheDirOpt = None,
    as_json: JsonOpt = False,
    **finetune: Any,
) -> None:
    """Train variants of one or more options and compare them (e.g. --set head_dropout=0,0.2,0.5,0.8).

    The fine-tuning flags set the other options of every variant.
    """
    use_cache_dir(cache_dir)
    from headstart.workflows.experiments import sweep as run_sweep

    grid = parse_settings(settings)
    out_dir = out_dir or default_output("sweep", *grid)  # (two sweeps of other options never share a folder)
    check_output(out_dir, "folder", "--out", contents=("results.md", "results.json", "comparison.png"), data=data)

    base = Finetune().replace(**given(finetune)).set_fields()
    rows = run_sweep(
        data,
        grid,
        method=method,
        out_dir=out_dir,
        backbone=backbone,
        base_options=base,
        progress=not as_json,
    )
    if as_json:
        print_json(
            {"variants": [{k: v for k, v in r.items() if k != "history"} for r in rows], "skipped": skipped_files()}
        )
        return
    table = Table("variant", "validation accuracy", "best epoch", "seconds (own)")
    for r in rows:
        table.add_row(r["variant"], f"{r['val_accuracy']:.3f}", str(r["best_epoch"]), f"{r['seconds']:.0f}")
    out.print(table)
    shared = sum(r.get("shared_seconds", 0.0) for r in rows)
    if shared:
        out.print(f"frozen stages, run once for every variant: {shared:.0f} s (not in any variant's seconds)")
    out.print(f"table: {out_dir / 'results.md'}, plot: {out_dir / 'comparison.png'}")


def _file_options(config: Path | None) -> dict[str, Any]:
    """The options of ``--config``; a bad value there is named with the file, not as a flag."""
    if config is None:
        return {}
    try:
        return Finetune.from_file(config).set_fields()
    except ValueError as exc:
        raise HeadstartError(f"{config}: {exc}") from None


def parse_settings(items: list[str]) -> dict[str, list[Any]]:
    """``["head_dropout=0,0.2,0.5", "lr=1e-4"]`` → ``{"head_dropout": [0, 0.2, 0.5], "lr": [0.0001]}``.

    Example:
        >>> parse_settings(["head_dropout=0,0.5"])
        {'head_dropout': [0, 0.5]}
    """
    import yaml

    out: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise ValueError(f"--set needs NAME=V1,V2,… (e.g. head_dropout=0,0.2,0.5); got {item!r}.")
        out[key.strip().replace("-", "_")] = [yaml.safe_load(v.strip()) for v in values.split(",")]
    return out
