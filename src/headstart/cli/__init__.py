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
"""

from __future__ import annotations

import functools
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from headstart.errors import HeadstartError

app = typer.Typer(
    name="headstart",
    help="Turn a folder of photos into an image classifier by reusing ImageNet-pretrained networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# markup=False: paths, reasons and class names are printed verbatim (a file named `cat [copy].jpg` must not lose
# `[copy]` as a style tag); the few coloured words opt in with markup=True and escape what they interpolate.
out = Console(soft_wrap=True, markup=False)
err = Console(stderr=True, soft_wrap=True, markup=False)

# ------------------------------------------------------------------------------------------ shared option types
DataArg = Annotated[str, typer.Argument(help="Folder of class subfolders, Oxford-IIIT Pet root, PetImages folder or CSV of path,label.")]
ModelArg = Annotated[Path, typer.Argument(help="A model file written by `headstart train`.")]
BackboneOpt = Annotated[str, typer.Option("--backbone", "-b", help="timm name, e.g. tf_efficientnet_lite0, resnet50.a1_in1k.")]
WeightsOpt = Annotated[Optional[str], typer.Option(help="Where the weights come from: hub, package, none, or a local checkpoint path. Default: the offline package when installed, else the hub.")]
CacheDirOpt = Annotated[Optional[Path], typer.Option(help="Cache folder (default $HEADSTART_CACHE_DIR or ~/.cache/headstart).")]
PrecisionOpt = Annotated[str, typer.Option(help="auto (bf16 where the CPU has native bf16), fp32 or bf16.")]
SplitOpt = Annotated[str, typer.Option(help="all, or train/test for data sets with an official split (Oxford-IIIT Pet).")]
MaxPixelsOpt = Annotated[int, typer.Option(help="Refuse images with more pixels than this (decompression bombs); 0 = no limit.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for machines.")]
EngineOpt = Annotated[str, typer.Option(help="torch, or onnxruntime (the backbone exported to ONNX once, cached).")]


def _max_pixels(value: int) -> int | None:
    return None if value <= 0 else value


def _use_cache_dir(cache_dir: Path | None) -> None:
    if cache_dir is not None:
        os.environ["HEADSTART_CACHE_DIR"] = str(cache_dir)


def _show_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    err.print(f"[yellow]warning:[/yellow] {escape(str(message))}", markup=True, highlight=False)


def handles_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into one clear line on stderr and a non-zero exit, never a stack trace."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        warnings.showwarning = _show_warning
        try:
            return fn(*args, **kwargs)
        except (HeadstartError, ValueError) as exc:
            err.print(f"[red]error:[/red] {escape(str(exc))}", markup=True, highlight=False)
            raise typer.Exit(2 if isinstance(exc, ValueError) else 1) from None
        except KeyboardInterrupt:
            err.print("interrupted: everything finished so far (cached features, saved files) is kept.")
            raise typer.Exit(130) from None

    return wrapper


def _json(data: Any) -> None:
    out.print_json(json.dumps(data))


# ---------------------------------------------------------------------------------------------------- commands
@app.command()
@handles_errors
def backbones(
    all_: Annotated[bool, typer.Option("--all", help="Every pretrained timm model, not just the catalogue.")] = False,
    pattern: Annotated[Optional[str], typer.Option(help="Wildcard filter over timm names, e.g. 'resnet*'.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List backbones: which are usable right now, and why not the others."""
    from headstart.features.backbones import list_backbones

    rows = list_backbones(include_all=all_, pattern=pattern)
    if as_json:
        _json([{"name": r.name, "usable": r.usable, "source": r.source, "description": r.description} for r in rows])
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
    quarantine: Annotated[Optional[Path], typer.Option(help="Move unusable files into this folder (never deletes).")] = None,
    max_pixels: MaxPixelsOpt = 89_478_485,
    as_json: JsonOpt = False,
) -> None:
    """Decode every image and list the unusable ones with the reason."""
    from headstart.data.images import quarantine as move_aside
    from headstart.data.images import scan as scan_files

    for p in data:
        if not p.exists():
            raise HeadstartError(f"{p} does not exist: pass a folder or image files to scan.")
    report = scan_files(data, max_pixels=_max_pixels(max_pixels), progress=not as_json)
    moved = []
    if quarantine is not None and report.unusable:
        root = data[0] if len(data) == 1 and data[0].is_dir() else Path(os.path.commonpath([p.resolve() for p in data]))
        moved = move_aside(report, quarantine, root=root)
    if as_json:
        result = report.to_dict()
        if quarantine is not None:
            result["quarantined"] = [{"from": str(a), "to": str(b)} for a, b in moved]
        _json(result)
        return
    out.print(f"{report.n_files} image files, {len(report.unusable)} unusable, {len(report.ignored)} other files ignored")
    for u in report.unusable:
        out.print(f"  {u.path}: {u.reason}", highlight=False)
    for a, b in moved:
        out.print(f"  moved {a} -> {b}", highlight=False)


@app.command()
@handles_errors
def download(
    dataset: Annotated[str, typer.Argument(help="pets (Oxford-IIIT Pet) or catsdogs (Microsoft's PetImages).")],
    destination: Annotated[Path, typer.Argument(help="Folder to download and extract into.")],
) -> None:
    """Download and check an official data set archive, then extract it."""
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
    engine: EngineOpt = "torch",
    flip_average: Annotated[bool, typer.Option(help="Average each photo's features with its mirror image's (what `train` uses by default).")] = True,
) -> None:
    """Compute and cache backbone features for a data set (only what is not cached yet)."""
    _use_cache_dir(cache_dir)
    from headstart.data.datasets import load_dataset
    from headstart.features.distributed import init_from_env
    from headstart.features.extract import describe_unusable, extract_features

    group = init_from_env()  # under torchrun: each process extracts its share into the shared cache
    dataset = load_dataset(data, split=split)
    feats = extract_features(dataset.paths, backbone, weights=weights, batch_size=batch_size, precision=precision,
                             max_pixels=_max_pixels(max_pixels), progress=not as_json and group.is_main,
                             engine=engine, flip_average=flip_average)
    if not group.is_main:
        return
    summary = {
        "n_images": len(dataset), "n_usable": int(len(feats.indices)), "n_cached": feats.n_cached,
        "n_computed": feats.n_computed, "seconds": round(feats.seconds, 3),
        "images_per_second": round(feats.images_per_second, 1), "num_features": int(feats.features.shape[1]),
        "backbone": feats.spec.name if feats.spec else backbone,
        "skipped": [u.to_dict() for u in feats.unusable],
    }
    if as_json:
        _json(summary)
        return
    if feats.unusable:
        err.print(describe_unusable(feats.unusable), highlight=False)
    out.print(
        f"{summary['n_usable']}/{len(dataset)} images → {summary['num_features']}-d features with {summary['backbone']}: "
        f"{feats.n_cached} cached, {feats.n_computed} computed in {feats.seconds:.1f} s"
        + (f" ({feats.images_per_second:.0f} img/s)" if feats.n_computed else "")
    )


@app.command("merge-cache")
@handles_errors
def merge_cache(
    sources: Annotated[list[Path], typer.Argument(help="features.sqlite files from other machines or folders.")],
    cache_dir: CacheDirOpt = None,
) -> None:
    """Merge feature caches extracted elsewhere (e.g. one per machine) into this one."""
    _use_cache_dir(cache_dir)
    from headstart.features.extract import FeatureCache

    cache = FeatureCache()
    for source in sources:
        out.print(f"{source}: {cache.merge_from(source)} new features")
    out.print(f"{cache.path}: {cache.count()} features")


@app.command()
@handles_errors
def train(
    data: DataArg,
    out_path: Annotated[Path, typer.Option("--out", "-o", help="The model file to write.")] = Path("model.safetensors"),
    backbone: BackboneOpt = "tf_efficientnet_lite0",
    weights: WeightsOpt = None,
    method: Annotated[str, typer.Option(help="probe (logistic regression on cached features), finetune (probe head, then the backbone unfrozen) or scratch (random weights).")] = "probe",
    run_dir: Annotated[Optional[Path], typer.Option(help="Run folder (default: <out stem>-run beside the model).")] = None,
    split: SplitOpt = "all",
    val_fraction: Annotated[float, typer.Option(help="Share of photos held out for validation.")] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of the train/validation split and the training.")] = 0,
    refit: Annotated[bool, typer.Option(help="After validating, refit on all photos for the saved model.")] = True,
    reuse: Annotated[bool, typer.Option(help="Read probe fits and run pictures back from the cache when their inputs are unchanged (--no-reuse computes them again; same result).")] = True,
    flip_average: Annotated[Optional[bool], typer.Option("--flip-average/--no-flip-average", help="Average each photo's features with its mirror image's, in training and in the model's predictions (default: cross-validation on the training part decides).")] = None,
    precision: PrecisionOpt = "auto",
    max_pixels: MaxPixelsOpt = 89_478_485,
    cache_dir: CacheDirOpt = None,
    as_json: JsonOpt = False,
    epochs: Annotated[Optional[int], typer.Option(help="[finetune] Epochs (default by data size).", rich_help_panel="Fine-tuning")] = None,
    lr: Annotated[Optional[float], typer.Option(help="[finetune] Peak learning rate of the head.", rich_help_panel="Fine-tuning")] = None,
    layer_decay: Annotated[Optional[float], typer.Option(help="[finetune] Learning-rate factor per layer of depth (discriminative rates).", rich_help_panel="Fine-tuning")] = None,
    unfreeze: Annotated[Optional[str], typer.Option(help="[finetune] 'all' or K: train only the last K stages.", rich_help_panel="Fine-tuning")] = None,
    optimizer: Annotated[Optional[str], typer.Option(help="[finetune] adamw or sgd.", rich_help_panel="Fine-tuning")] = None,
    schedule: Annotated[Optional[str], typer.Option(help="[finetune] cosine (with warm-up) or onecycle.", rich_help_panel="Fine-tuning")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="[finetune] Weight decay.", rich_help_panel="Fine-tuning")] = None,
    label_smoothing: Annotated[Optional[float], typer.Option(help="[finetune] Label smoothing.", rich_help_panel="Fine-tuning")] = None,
    augment: Annotated[Optional[str], typer.Option(help="[finetune] none, light, trivial or randaugment.", rich_help_panel="Fine-tuning")] = None,
    head_dropout: Annotated[Optional[float], typer.Option(help="[finetune] Dropout before the head.", rich_help_panel="Fine-tuning")] = None,
    clip_grad: Annotated[Optional[float], typer.Option(help="[finetune] Max gradient norm (0 = off).", rich_help_panel="Fine-tuning")] = None,
    patience: Annotated[Optional[int], typer.Option(help="[finetune] Stop after this many epochs without improvement (0 = never).", rich_help_panel="Fine-tuning")] = None,
    ema: Annotated[Optional[bool], typer.Option("--ema/--no-ema", help="[finetune] Keep an exponential moving average of the weights.", rich_help_panel="Fine-tuning")] = None,
    freeze_bn: Annotated[Optional[bool], typer.Option("--freeze-bn/--train-bn", help="[finetune] Keep BatchNorm's pretrained statistics (default under 20,000 photos).", rich_help_panel="Fine-tuning")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="[finetune] Photos per step.", rich_help_panel="Fine-tuning")] = None,
    config: Annotated[Optional[Path], typer.Option(help="[finetune] YAML/TOML file of fine-tuning options (flags win).", rich_help_panel="Fine-tuning")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="[finetune] Continue the interrupted run in this run folder.", rich_help_panel="Fine-tuning")] = None,
    device: Annotated[str, typer.Option(help="[finetune] auto (the GPU when there is one), cpu, cuda or cuda:N.", rich_help_panel="Fine-tuning")] = "auto",
) -> None:
    """Train a classifier on labelled photos and save it as one model file."""
    _use_cache_dir(cache_dir)
    from headstart.models.finetune import load_config_file
    from headstart.workflows.training import train as train_model

    options = load_config_file(config) if config is not None else {}
    flags = dict(epochs=epochs, lr=lr, layer_decay=layer_decay, unfreeze=unfreeze, optimizer=optimizer,
                 schedule=schedule, weight_decay=weight_decay, label_smoothing=label_smoothing, augment=augment,
                 head_dropout=head_dropout, clip_grad=clip_grad, patience=patience, ema=ema, batch_size=batch_size,
                 freeze_bn=freeze_bn)
    options.update({k: v for k, v in flags.items() if v is not None})
    if method == "probe" and options:
        raise ValueError(f"{', '.join('--' + k.replace('_', '-') for k in options)} only apply to --method finetune or scratch.")
    result = train_model(data, backbone=backbone, weights=weights, method=method, out=out_path, run_dir=run_dir,
                         split=split, val_fraction=val_fraction, seed=seed, refit=refit, precision=precision,
                         max_pixels=_max_pixels(max_pixels), progress=not as_json, finetune_options=options,
                         resume=resume, device=device, reuse=reuse, flip_average=flip_average)
    m = result.metrics
    from headstart.features.distributed import current

    if not current().is_main:  # under torchrun, rank 0 reports
        return
    if as_json:
        _json({"model": str(result.model_path), "run_dir": str(result.run_dir), **m})
        return
    f = m["features"]
    out.print(f"features: {f['cached']} cached, {f['computed']} computed ({f['seconds']:.1f} s)")
    detail = (f"C={m['C']:.3g} chosen by CV, CV accuracy {m['cv_accuracy']:.3f}" if method == "probe" else
              f"best epoch {m['best_epoch']} of {m['epochs_run']} (0 = the starting point); the probe alone: {m['probe_val_accuracy']:.3f}")
    out.print(
        f"validation accuracy {m['val_accuracy']:.3f}, top-5 {m['val_top5_accuracy']:.3f} "
        f"on {m['n_val']} photos ({m['n_classes']} classes; {detail})"
    )
    if m["skipped"]:
        out.print(f"skipped {len(m['skipped'])} unusable file(s): listed in {result.run_dir / 'metrics.json'}")
    if m.get("flip_average_cv"):
        cv = m["flip_average_cv"]
        out.print(f"mirror averaging: {'on' if m['flip_average'] else 'off'} (probe CV accuracy {cv['on']:.3f} with, "
                  f"{cv['off']:.3f} without)")
    out.print(f"model: {result.model_path}" + (" (refit on all photos)" if m["refit_on_all"] else ""))
    out.print(f"run folder: {result.run_dir} (confusion_matrix.png, misclassified.png, metrics.json, config.json)")


@app.command("lr-find")
@handles_errors
def lr_find(
    data: DataArg,
    backbone: BackboneOpt = "tf_efficientnet_lite0",
    weights: WeightsOpt = None,
    out_path: Annotated[Path, typer.Option("--out", "-o", help="The plot to write.")] = Path("lr-find.png"),
    steps: Annotated[int, typer.Option(help="Batches to raise the learning rate over.")] = 60,
    batch_size: Annotated[Optional[int], typer.Option(help="Photos per step.")] = None,
    unfreeze: Annotated[Optional[str], typer.Option(help="'all' or K: the part fine-tuning will train.")] = None,
    cache_dir: CacheDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Learning-rate range test for fine-tuning: a plot of loss against lr and a suggested value."""
    _use_cache_dir(cache_dir)
    from headstart.workflows.training import find_learning_rate

    options = {k: v for k, v in dict(batch_size=batch_size, unfreeze=unfreeze).items() if v is not None}
    result = find_learning_rate(data, backbone=backbone, weights=weights, out=out_path, steps=steps,
                                finetune_options=options, progress=not as_json)
    if as_json:
        _json({**result.to_dict(), "plot": str(out_path)})
        return
    out.print(f"suggested learning rate: {result.suggestion:.2g} (use it as --lr); plot: {out_path}")


@app.command()
@handles_errors
def sweep(
    data: DataArg,
    settings: Annotated[list[str], typer.Option("--set", help="NAME=V1,V2,… for any fine-tuning option; several --set make a grid.")],
    method: Annotated[str, typer.Option(help="finetune or scratch.")] = "finetune",
    backbone: BackboneOpt = "tf_efficientnet_lite0",
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the variants, table and plot.")] = Path("sweep"),
    epochs: Annotated[Optional[int], typer.Option(help="Epochs of every variant (unless swept).")] = None,
    cache_dir: CacheDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train variants of one or more options and compare them (e.g. --set head_dropout=0,0.2,0.5,0.8)."""
    _use_cache_dir(cache_dir)
    from headstart.workflows.training import parse_settings
    from headstart.workflows.training import sweep as run_sweep

    base = {"epochs": epochs} if epochs is not None else {}
    rows = run_sweep(data, parse_settings(settings), method=method, out_dir=out_dir, backbone=backbone,
                     base_options=base, progress=not as_json)
    if as_json:
        _json([{k: v for k, v in r.items() if k != "history"} for r in rows])
        return
    table = Table("variant", "validation accuracy", "best epoch", "seconds")
    for r in rows:
        table.add_row(r["variant"], f"{r['val_accuracy']:.3f}", str(r["best_epoch"]), f"{r['seconds']:.0f}")
    out.print(table)
    out.print(f"table: {out_dir / 'results.md'}, plot: {out_dir / 'comparison.png'}")


@app.command()
@handles_errors
def evaluate(
    model: ModelArg,
    data: DataArg,
    split: SplitOpt = "all",
    out_dir: Annotated[Optional[Path], typer.Option(help="Write evaluation.json and the pictures here.")] = None,
    precision: PrecisionOpt = "auto",
    max_pixels: MaxPixelsOpt = 89_478_485,
    cache_dir: CacheDirOpt = None,
    as_json: JsonOpt = False,
    engine: EngineOpt = "torch",
) -> None:
    """Accuracy, top-5, per-class precision/recall and confusion matrix of a model on labelled photos."""
    _use_cache_dir(cache_dir)
    from headstart.workflows.evaluation import evaluate as evaluate_model

    report = evaluate_model(model, data, split=split, out_dir=out_dir, precision=precision,
                            max_pixels=_max_pixels(max_pixels), progress=not as_json, engine=engine)
    if as_json:
        _json(report.to_dict())
        return
    table = Table("class", "precision", "recall", "photos")
    for name, row in report.details["per_class"].items():
        if row["support"]:
            table.add_row(name, f"{row['precision']:.2f}", f"{row['recall']:.2f}", str(row["support"]))
    out.print(table)
    out.print(f"accuracy {report.accuracy:.3f}, top-5 {report.top5_accuracy:.3f} on {report.n_images} photos")
    if report.skipped:
        out.print(f"skipped {len(report.skipped)} unusable file(s):")
        for s in report.skipped:
            out.print(f"  {s['path']}: {s['reason']}", highlight=False)
    if report.unknown_labels:
        out.print(f"not scored (labels the model does not know): {report.unknown_labels}")
    if report.pictures:
        out.print("pictures: " + ", ".join(report.pictures))


@app.command()
@handles_errors
def predict(
    model: ModelArg,
    paths: Annotated[list[Path], typer.Argument(help="Images or folders of images.")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="How many labels to show per image.")] = 5,
    precision: PrecisionOpt = "auto",
    cache_dir: CacheDirOpt = None,
    as_json: JsonOpt = False,
    engine: EngineOpt = "torch",
) -> None:
    """Top-k labels with probabilities for each image."""
    _use_cache_dir(cache_dir)
    from headstart.models.classifier import Classifier

    result = Classifier.load(model).predict(paths, top_k=top_k, precision=precision, engine=engine)
    if as_json:
        _json(result.to_list())
    else:
        for p in result.predictions:
            shown = ", ".join(f"{l} {q:.3f}" for l, q in zip(p.labels, p.probabilities))
            out.print(f"{p.path}: {shown}", highlight=False)
    for u in result.unusable:
        err.print(f"[yellow]skipped[/yellow] {escape(f'{u.path}: {u.reason}')}", markup=True, highlight=False)
    if result.unusable and not result.predictions:
        raise typer.Exit(1)


@app.command()
@handles_errors
def export(
    model: ModelArg,
    format_: Annotated[str, typer.Option("--format", help="onnx")] = "onnx",
    out_path: Annotated[Optional[Path], typer.Option("--out", "-o", help="Default: the model's name with .onnx.")] = None,
    int8: Annotated[bool, typer.Option("--int8", help="Also write an int8 copy (weights and activations; calibrated on --calibrate photos).")] = False,
    calibrate: Annotated[Optional[str], typer.Option(help="[--int8] Photos like those the model will see, to calibrate activation ranges (default: its training photos, when still there).")] = None,
    data: Annotated[Optional[str], typer.Option(help="Labelled photos to measure the accuracy of the export(s) on.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Export a model to ONNX, checked numerically against PyTorch; optionally int8 with its accuracy and speed."""
    from headstart.models.classifier import Classifier
    from headstart.workflows.export import export_onnx, onnx_accuracy, quantize_int8, time_onnx

    if format_ != "onnx":
        raise ValueError(f"The '--format' option must be 'onnx'. Got {format_!r} instead.")
    classifier = Classifier.load(model)
    if int8 and calibrate is None:
        source = (classifier.metadata.get("data") or {}).get("source")
        if not source or not Path(source).exists():
            raise ValueError("--int8 needs photos to calibrate on and the model's training photos are not at "
                             f"{source or '(not recorded)'}: pass --calibrate DATA (a few hundred photos like the "
                             "ones the model will see).")
        calibrate = source
    target = out_path or model.with_suffix(".onnx")
    report = export_onnx(classifier, target)
    result = report.to_dict()
    if int8:
        report.quantized = quantize_int8(target, target.with_name(target.stem + ".int8.onnx"), classifier, calibrate)
        result["quantized"] = str(report.quantized)
        result["calibration"] = str(calibrate)
        import numpy as np

        image = np.zeros((1, *classifier.spec.data_config["input_size"]), dtype=np.float32)
        result["ms_per_photo_onnx"] = round(time_onnx(target, image) * 1000, 2)
        result["ms_per_photo_int8"] = round(time_onnx(report.quantized, image) * 1000, 2)
    if data is not None:
        from headstart.workflows.evaluation import evaluate as evaluate_model

        result["accuracy_pytorch"] = evaluate_model(classifier, data).accuracy
        result["accuracy_onnx"], result["n_images"] = onnx_accuracy(target, classifier, data)
        if report.quantized is not None:
            result["accuracy_int8"], _ = onnx_accuracy(report.quantized, classifier, data)
    if as_json:
        _json(result)
        return
    out.print(f"wrote {target}: max |probability difference| vs PyTorch {report.max_abs_diff_probabilities:.2g} "
              f"on {report.n_checked} images (features {report.max_abs_diff_features:.2g})")
    if report.quantized is not None:
        out.print(f"wrote {report.quantized} (int8, calibrated on {calibrate}): {result['ms_per_photo_int8']:.1f} ms a "
                  f"photo against {result['ms_per_photo_onnx']:.1f} ms (ONNX Runtime, one photo, this machine)")
    if data is not None:
        line = f"accuracy on {result['n_images']} photos: PyTorch {result['accuracy_pytorch']:.3f}, ONNX {result['accuracy_onnx']:.3f}"
        if "accuracy_int8" in result:
            change = result["accuracy_int8"] - result["accuracy_onnx"]
            line += f", int8 {result['accuracy_int8']:.3f} ({change:+.3f})"
        out.print(line)


@app.command()
@handles_errors
def compare(
    data: DataArg,
    backbones: Annotated[str, typer.Option(help="Comma-separated timm names.")] = "tf_efficientnet_lite0,tf_efficientnet_lite1,tf_efficientnet_lite2",
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Write compare.json and compare.png here.")] = None,
    cache_dir: CacheDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Rank backbones for your data: cross-validated probe accuracy, extraction speed, feature size."""
    _use_cache_dir(cache_dir)
    from headstart.workflows.compare import compare_backbones

    rows = compare_backbones(data, [b.strip() for b in backbones.split(",") if b.strip()], out_dir=out_dir,
                             progress=not as_json)
    if as_json:
        _json(rows)
        return
    table = Table("rank", "backbone", "probe accuracy (CV)", "img/s", "features")
    for r in rows:
        speed = "?" if r["images_per_second"] is None else f"{r['images_per_second']:.0f}"
        table.add_row(str(r["rank"]), r["backbone"], f"{r['cv_accuracy']:.3f}", speed, str(r["num_features"]))
    out.print(table)
    if out_dir is not None:
        out.print(f"picture: {Path(out_dir) / 'compare.png'}")


@app.command()
@handles_errors
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Where to write the model and pictures.")] = Path("headstart-demo"),
    cache_dir: CacheDirOpt = None,
) -> None:
    """Train a pet-breed classifier on the bundled sample photos, evaluate it and predict a few (offline)."""
    _use_cache_dir(cache_dir)
    from headstart.workflows.demo import run_demo

    run_demo(out_dir, console=out)


@app.command()
@handles_errors
def attack(
    model: Annotated[str, typer.Argument(help="A model file written by `headstart train`, or a backbone name (its ImageNet head).")],
    image: Annotated[Path, typer.Argument(help="The photo to perturb (at its own size).")],
    target: Annotated[Optional[str], typer.Option(help="Class name or index to reach, e.g. 284 or 'Siamese cat'; default: untargeted.")] = None,
    method: Annotated[str, typer.Option(help="pgd, fgsm, or lesson (the lesson's unbounded descent, for comparison).")] = "pgd",
    norm: Annotated[str, typer.Option(help="linf or l2.")] = "linf",
    eps: Annotated[str, typer.Option(help="Budget in 0–1 pixel units: 4/255 or 0.0157.")] = "4/255",
    steps: Annotated[int, typer.Option(help="Most gradient steps (PGD stops early once the goal holds with a margin).")] = 50,
    step_size: Annotated[Optional[float], typer.Option(help="Step size (default eps/4; lesson: 1).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of PGD's random start.")] = 0,
    ensemble: Annotated[Optional[str], typer.Option(help="Attack these models too, all at once: NAME[,NAME].")] = None,
    transfer_to: Annotated[Optional[str], typer.Option("--transfer-to", help="Then classify the result with these models: NAME[,NAME].")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the adversarial PNG, perturbation, figure and JSON.")] = Path("attacks"),
    cache_dir: CacheDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Perturb a photo within a budget until the model changes its mind; verified on the saved 8-bit PNG."""
    _use_cache_dir(cache_dir)
    from headstart.attacks import attack as run_attack, save_attack, transfer

    others = [m.strip() for m in (ensemble or "").split(",") if m.strip()]
    result = run_attack([model, *others], image, target=target, method=method, norm=norm, eps=eps, steps=steps,
                        step_size=step_size, seed=seed)
    if transfer_to:
        transfer(result, [m.strip() for m in transfer_to.split(",") if m.strip()])
    save_attack(result, out_dir)
    if as_json:
        _json(result.to_dict())
        return
    b, a = result.before, result.after
    out.print(
        f"{image.name}: {b.label} {b.probability:.3f} → {a.label} {a.probability:.3f}: "
        f"{'success' if result.success else 'FAILED'} ({result.method}, {result.steps_used} steps); "
        f"L∞ {result.linf_8bit}/255, L2 {result.l2:.3f}" + (f", PSNR {result.psnr:.1f} dB" if result.psnr else ""),
        highlight=False,
    )
    for m in result.members[1:]:
        out.print(f"  ensemble {m['model']}: {m['adversarial']['label']} ({'fooled' if m['success'] else 'not fooled'})", highlight=False)
    for t in result.transfer:
        carried = {True: "carried over", False: "did not carry over", None: "no such class"}[t["carried_over"]]
        out.print(f"  transfer {t['model']}: {t['original']['label']} → {t['adversarial']['label']}: {carried}", highlight=False)
    out.print("files: " + ", ".join(result.files.values()), highlight=False)


@app.command()
@handles_errors
def robustness(
    model: ModelArg,
    data: DataArg,
    eps: Annotated[str, typer.Option(help="Budgets in 0–1 pixel units, comma-separated.")] = "0,1/255,2/255,4/255,8/255",
    method: Annotated[str, typer.Option(help="pgd, fgsm or lesson.")] = "pgd",
    norm: Annotated[str, typer.Option(help="linf or l2.")] = "linf",
    steps: Annotated[int, typer.Option(help="Most PGD steps per photo and budget.")] = 20,
    split: SplitOpt = "all",
    limit: Annotated[Optional[int], typer.Option(help="Attack at most this many photos (evenly spread).")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for robustness.json and robustness.png.")] = Path("robustness"),
    cache_dir: CacheDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Accuracy against the attack budget on labelled photos (eps 0 = `evaluate`'s accuracy)."""
    _use_cache_dir(cache_dir)
    from headstart.attacks import robustness as measure, save_robustness

    report = measure(model, data, eps, method=method, norm=norm, steps=steps, split=split, limit=limit)
    paths = save_robustness(report, out_dir)
    if as_json:
        _json({**report.to_dict(), "files": {k: str(p) for k, p in paths.items()}})
        return
    linf = report.norm == "linf"
    table = Table("eps", *(["8-bit steps"] if linf else []), "accuracy")
    for e, acc in zip(report.eps, report.accuracy):
        table.add_row(f"{e:.5g}", *([f"{e * 255:.3g}"] if linf else []), f"{acc:.3f}")
    out.print(table)
    out.print(f"{report.n_images} photos, {report.method} {report.norm} {report.steps} step{'s' * (report.steps != 1)}; files: "
              + ", ".join(str(p) for p in paths.values()), highlight=False)


# ------------------------------------------------------------------------- looking inside: dream, featuremaps, explain
TargetOpt = Annotated[Optional[str], typer.Option("--class", "-c", help="Class index or name, e.g. 284 or 'Siamese cat' (a breed for a trained model).")]


@app.command()
@handles_errors
def dream(
    target: Annotated[str, typer.Option("--target", "-t", help="Class to dream: index or name, e.g. 284 or 'Siamese cat'; a breed with --model.")],
    backbone: Annotated[Optional[str], typer.Option("--backbone", "-b", help="Backbone with an ImageNet head (default tf_efficientnet_lite0).")] = None,
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="A trained headstart model file instead of a backbone.")] = None,
    out_path: Annotated[Path, typer.Option("--out", "-o", help="PNG to write; a JSON report goes beside it.")] = Path("dream.png"),
    method: Annotated[str, typer.Option(help="lucid (Fourier, decorrelated colour, random transforms) or lesson (pixels, plain gradient steps).")] = "lucid",
    steps: Annotated[Optional[int], typer.Option(help="Maximum steps (default 256 lucid, 300 lesson).")] = None,
    tv: Annotated[Optional[float], typer.Option(help="Weight of total variation (default 0.25 lucid, 100 lesson; 0 = none).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the start image and the random transforms.")] = 0,
    stop_at: Annotated[Optional[float], typer.Option(help="Stop early once the 8-bit image reaches this probability (default: run all steps).")] = None,
    strip: Annotated[bool, typer.Option("--strip", help="Also write <out>-strip.png, the image during the optimisation.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Optimise an image until the network sees the class in it; the probability is measured on the saved PNG."""
    from headstart.inside.class_image import dream as run_dream

    if backbone is not None and model is not None:
        raise HeadstartError("Give --backbone or --model, not both.")
    source = model if model is not None else (backbone or "tf_efficientnet_lite0")
    if not as_json:
        err.print(f"dreaming {target!r} with {source} ({method}); this takes a minute or two on a laptop CPU …")
    result = run_dream(source, target, out_path, method=method, steps=steps, tv=tv, seed=seed, stop_at=stop_at or None,
                       strip=strip)
    if as_json:
        _json(result.to_dict())
        return
    out.print(f"{result.png}: {result.target_name} p={result.probability:.3f} on the saved PNG "
              f"(start {result.start_probability:.4f}; {result.steps} steps, {result.seconds:.1f} s; "
              f"high-frequency energy {result.high_frequency_energy:.3f})", highlight=False)
    out.print(f"report: {result.json}" + (f", strip: {result.strip}" if result.strip else ""), highlight=False)


@app.command()
@handles_errors
def featuremaps(
    image: Annotated[Optional[Path], typer.Argument(help="The photo to look at.")] = None,
    backbone: BackboneOpt = "tf_efficientnet_lite0",
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Use a trained headstart model's backbone.")] = None,
    layer: Annotated[Optional[str], typer.Option(help="Stage to show, as timm names it (see --list-layers); default the second-to-last.")] = None,
    list_layers: Annotated[bool, typer.Option("--list-layers", help="List the backbone's feature stages and exit.")] = False,
    out_path: Annotated[Path, typer.Option("--out", "-o", help="PNG to write.")] = Path("featuremaps.png"),
    channels: Annotated[int, typer.Option(help="How many of the most active channels to show.")] = 16,
    as_json: JsonOpt = False,
) -> None:
    """Feature maps of one photo: the most active channels of a stage and the positions × channels strip."""
    from headstart.inside import activations as fmaps

    source = model if model is not None else backbone
    if list_layers:
        layers = fmaps.list_layers(source)
        if as_json:
            _json(layers)
        else:
            for row in layers:
                out.print(f"{row['module']:<18} {row['num_chs']:>5} channels  1/{row['reduction']} resolution", highlight=False)
        return
    if image is None:
        raise HeadstartError("Give the photo to look at (IMAGE), or --list-layers.")
    fm = fmaps.featuremaps(source, image, out_path, layer=layer, n_channels=channels)
    if as_json:
        _json({"out": str(out_path), "layer": fm.layer, "shape": list(fm.activations.shape),
               "final_shape": list(fm.final.shape), "top_channels": fm.top_channels(channels)})
        return
    out.print(f"{out_path}: {fm.layer} {tuple(fm.activations.shape)}, final map {tuple(fm.final.shape)}", highlight=False)


@app.command()
@handles_errors
def explain(
    model: Annotated[str, typer.Argument(help="A headstart model file, or a backbone name (its ImageNet head).")],
    image: Annotated[Path, typer.Argument(help="The photo to explain.")],
    target: TargetOpt = None,
    out_path: Annotated[Optional[Path], typer.Option("--out", "-o", help="PNG to write (default <image stem>-explain.png here).")] = None,
    method: Annotated[str, typer.Option(help="gradcam, gradcam++, hirescam, xgradcam or layercam.")] = "gradcam",
    layer: Annotated[Optional[str], typer.Option(help="Layer to explain (default the last feature stage).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Heat map of where the network looks for the top (or a chosen) class, over the photo."""
    from headstart.inside.heatmap import explain as run_explain

    result = run_explain(model, image, out_path or Path(f"{image.stem}-explain.png"), target=target, method=method, layer=layer)
    if as_json:
        _json(result.to_dict())
        return
    out.print(f"{result.out}: {result.method} for {result.target_name} (p={result.probability:.3f}), layer {result.layer}",
              highlight=False)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
