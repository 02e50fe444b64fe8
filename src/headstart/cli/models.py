"""Commands that use a trained model: evaluate, predict, export, compare, demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from headstart._io import check_output
from headstart.cli._common import (
    CacheDirOpt,
    DataArg,
    EngineOpt,
    JsonOpt,
    MaxPixelsOpt,
    ModelArg,
    PrecisionOpt,
    SplitOpt,
    app,
    check_model_file,
    deprecated_flag,
    err,
    handles_errors,
    max_pixels_or_none,
    note_skipped,
    out,
    print_json,
    shown_path,
    skipped_files,
    use_cache_dir,
)


@app.command()
@handles_errors
def evaluate(
    model: ModelArg,
    data: DataArg,
    split: SplitOpt = "all",
    out_dir: Annotated[
        Path | None, typer.Option("--out", "-o", help="Folder for evaluation.json and the pictures.")
    ] = None,
    precision: PrecisionOpt = "auto",
    max_pixels: MaxPixelsOpt = 89_478_485,
    cache_dir: CacheDirOpt = None,
    as_json: JsonOpt = False,
    engine: EngineOpt = "auto",
    old_out_dir: Annotated[Path | None, typer.Option("--out-dir", hidden=True)] = None,
) -> None:
    """Accuracy, top-5, per-class precision/recall and confusion matrix of a model on labelled photos."""
    use_cache_dir(cache_dir)
    check_model_file(model, data, usage="headstart evaluate MODEL DATA")
    if old_out_dir is not None:
        deprecated_flag("--out-dir", "--out")
        out_dir = out_dir or old_out_dir
    if out_dir is not None:
        check_output(out_dir, "folder", "--out", contents=("evaluation.json",), data=data)
    from headstart.workflows.evaluation import evaluate as evaluate_model

    report = evaluate_model(
        model,
        data,
        split=split,
        out_dir=out_dir,
        precision=precision,
        max_pixels=max_pixels_or_none(max_pixels),
        progress=not as_json,
        engine=engine,
    )
    if report.unknown_labels:
        err.print(f"not scored (labels the model does not know): {report.unknown_labels}", highlight=False)
    if as_json:
        print_json({**report.to_dict(), "skipped": skipped_files()})
        return
    table = Table("class", "precision", "recall", "photos")
    for name, row in report.details["per_class"].items():
        if row["support"]:
            table.add_row(name, f"{row['precision']:.2f}", f"{row['recall']:.2f}", str(row["support"]))
    out.print(table)
    from headstart.reports.calibration import format_ece
    from headstart.reports.metrics import format_accuracy

    accuracy = format_accuracy(report.accuracy, report.details.get("accuracy_ci"), report.n_images)
    out.print(f"accuracy {accuracy} (95% interval), top-5 {report.top5_accuracy:.3f}")
    if report.calibration.get("ece") is not None:
        out.print(f"calibration: {format_ece(report.calibration)}, NLL {report.calibration['nll']:.3f}")
    if report.pictures:
        out.print("pictures: " + ", ".join(shown_path(p) for p in report.pictures))


@app.command()
@handles_errors
def predict(
    model: ModelArg,
    paths: Annotated[list[Path], typer.Argument(help="Images or folders of images.")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="How many labels to show per image.")] = 5,
    precision: PrecisionOpt = "auto",
    cache_dir: CacheDirOpt = None,
    as_json: JsonOpt = False,
    as_jsonl: Annotated[
        bool, typer.Option("--jsonl", help="One JSON object a line, as each photo is done (for large runs).")
    ] = False,
    engine: EngineOpt = "auto",
) -> None:
    """Top-k labels with probabilities for each image, written as each photo is done (cached photos first)."""
    use_cache_dir(cache_dir)
    check_model_file(model, *paths, usage="headstart predict MODEL PHOTO…")
    import json
    import sys

    from headstart.models.classifier import Classifier, Prediction

    results = Classifier.load(model).iter_predict(paths, top_k=top_k, precision=precision, engine=engine)
    as_json = as_json and not as_jsonl
    first = True
    if as_json:
        sys.stdout.write('{"predictions": [')
    for item in results:  # (streamed: memory bounded by a chunk of photos, whatever the number of photos)
        if not isinstance(item, Prediction):
            note_skipped([item])  # (listed once, with every other command's skips, when the command ends)
            if as_jsonl:
                sys.stdout.write(json.dumps({"path": shown_path(item.path), "skipped": item.reason}) + "\n")
        elif as_json or as_jsonl:
            sep = "" if as_jsonl else ("\n" if first else ",\n")
            row = {**item.to_dict(), "path": shown_path(item.path)}
            sys.stdout.write(sep + json.dumps(row) + ("\n" if as_jsonl else ""))
            first = False
        else:
            shown = ", ".join(f"{l} {q:.3f}" for l, q in zip(item.labels, item.probabilities))
            out.print(f"{shown_path(item.path)}: {shown}", highlight=False)
        sys.stdout.flush()
    if as_json:
        sys.stdout.write(("\n" if not first else "") + '], "skipped": ' + json.dumps(skipped_files()) + "}\n")
        sys.stdout.flush()


@app.command()
@handles_errors
def export(
    model: ModelArg,
    format_: Annotated[
        str,
        typer.Option(
            "--format",
            help="onnx, tflite (LiteRT; with --int8 also a fully int8 copy) or savedmodel (TensorFlow; Keras 3 loads "
            "it with keras.layers.TFSMLayer). tflite and savedmodel need the tf extra.",
        ),
    ] = "onnx",
    out_path: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Default: the model's name with .onnx, .tflite or _savedmodel."),
    ] = None,
    int8: Annotated[
        bool,
        typer.Option(
            "--int8", help="Also write an int8 copy (weights and activations; calibrated on --calibrate photos)."
        ),
    ] = False,
    calibrate: Annotated[
        str | None,
        typer.Option(
            help="[--int8] Photos like those the model will see, to calibrate activation ranges (default: its training photos, when still there)."
        ),
    ] = None,
    data: Annotated[
        str | None, typer.Option(help="Labelled photos to measure the accuracy of the export(s) on.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Export a model to ONNX, LiteRT or a TensorFlow SavedModel, checked against PyTorch in the export's own runtime;
    optionally int8 with its accuracy."""
    if format_ not in ("onnx", "tflite", "savedmodel"):
        raise ValueError(
            f"The '--format' option must be one of 'onnx', 'tflite', 'savedmodel'. Got {format_!r} instead."
        )
    check_model_file(model)
    if format_ != "onnx":
        export_tf(model, format_, out_path, int8, calibrate, data, as_json)
        return
    out_path = check_output(out_path or model.with_suffix(".onnx"), "file", "--out", example=model.stem + ".onnx")
    if int8:  # the int8 copy goes beside it
        check_output(out_path.with_name(out_path.stem + ".int8.onnx"), "file", "--int8's copy")
    from headstart.models.classifier import Classifier
    from headstart.workflows.export import export_onnx

    report = export_onnx(Classifier.load(model), out_path, int8=int8, calibrate=calibrate, check_data=data)
    if as_json:
        print_json({**report.to_dict(), "skipped": skipped_files()})
        return
    out.print(
        f"wrote {report.path}: max |probability difference| vs PyTorch {report.max_abs_diff_probabilities:.2g} "
        f"on {report.n_checked} images (features {report.max_abs_diff_features:.2g})",
        highlight=False,
    )
    if report.quantized is not None:
        out.print(
            f"wrote {report.quantized} (int8, calibrated on {report.calibration}): {report.ms_per_photo_int8:.1f} "
            f"ms a photo against {report.ms_per_photo_onnx:.1f} ms (ONNX Runtime, one photo, this machine)",
            highlight=False,
        )
    _print_accuracies(report.n_images, report.accuracy_pytorch, "ONNX", report.accuracy_onnx, report.accuracy_int8)


def export_tf(
    model: Path, format_: str, out_path: Path | None, int8: bool, calibrate: str | None, data: str | None, as_json: bool
) -> None:
    """``export --format tflite|savedmodel``: :func:`headstart.workflows.tf_export.export_tensorflow` and its lines."""
    if int8 and format_ != "tflite":
        raise ValueError("The '--int8' option needs '--format tflite' (int8 is a LiteRT quantisation).")
    default = model.with_suffix(".tflite") if format_ == "tflite" else model.with_name(model.stem + "_savedmodel")
    kind = "file" if format_ == "tflite" else "folder"
    out_path = check_output(out_path or default, kind, "--out", example=default.name)
    if int8:
        check_output(out_path.with_suffix(".int8.tflite"), "file", "--int8's copy")
    from headstart.models.classifier import Classifier
    from headstart.workflows.tf_export import export_tensorflow

    report = export_tensorflow(
        Classifier.load(model), out_path, format=format_, int8=int8, calibrate=calibrate, check_data=data
    )
    if as_json:
        print_json({**report.to_dict(), "skipped": skipped_files()})
        return
    runtime = "LiteRT interpreter" if format_ == "tflite" else "Keras 3 TFSMLayer"
    out.print(
        f"wrote {report.path} (classes and preprocessing: {report.metadata}): max |probability difference| vs "
        f"PyTorch {report.max_abs_diff_probabilities:.2g} in the {runtime} on {report.checked_on}",
        highlight=False,
    )
    if report.quantized is not None:
        out.print(
            f"wrote {report.quantized} (int8, calibrated on {report.calibration}): max |probability difference| "
            f"vs PyTorch {report.max_abs_diff_int8:.2g}",
            highlight=False,
        )
    _print_accuracies(report.n_images, report.accuracy_pytorch, format_, report.accuracy_export, report.accuracy_int8)


def _print_accuracies(
    n_images: int | None, pytorch: float | None, runtime: str, exported: float | None, int8: float | None
) -> None:
    """The accuracy line every export prints when given ``--data``: PyTorch, the export, int8 with its change."""
    if n_images is None:
        return
    line = f"accuracy on {n_images} photos: PyTorch {pytorch:.3f}, {runtime} {exported:.3f}"
    if int8 is not None:
        line += f", int8 {int8:.3f} ({int8 - exported:+.3f})"
    out.print(line)


@app.command()
@handles_errors
def compare(
    data: DataArg,
    backbones: Annotated[
        str, typer.Option(help="Comma-separated timm names.")
    ] = "tf_efficientnet_lite0,tf_efficientnet_lite1,tf_efficientnet_lite2",
    out_dir: Annotated[
        Path | None, typer.Option("--out", "-o", help="Folder for compare.json and compare.png.")
    ] = None,
    flip_average: Annotated[
        bool,
        typer.Option(
            "--flip-average/--no-flip-average",
            help="Score mirror-averaged features (each photo and its mirror image: twice the extraction).",
        ),
    ] = False,
    cache_dir: CacheDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Rank backbones for your data: cross-validated probe accuracy, extraction speed, feature size."""
    use_cache_dir(cache_dir)
    if out_dir is not None:
        check_output(out_dir, "folder", "--out", contents=("compare.json", "compare.png"), data=data)
    from headstart.workflows.compare import compare_backbones

    rows = compare_backbones(
        data,
        [b.strip() for b in backbones.split(",") if b.strip()],
        out_dir=out_dir,
        flip_average=flip_average,
        progress=not as_json,
    )
    if as_json:
        print_json({"backbones": rows, "skipped": skipped_files()})
        return
    table = Table("rank", "backbone", "probe accuracy (CV)", "img/s", "features")
    for r in rows:
        speed = "?" if r["images_per_second"] is None else f"{r['images_per_second']:.0f}"
        table.add_row(str(r["rank"]), r["backbone"], f"{r['cv_accuracy']:.3f}", speed, str(r["num_features"]))
    out.print(table)
    setup = [f"{r['backbone']} {r['setup_seconds']:.0f} s" for r in rows if r.get("setup_seconds")]
    if setup:
        out.print(f"img/s is extraction once a backbone is ready; getting it ready (once) took {', '.join(setup)}")
    if out_dir is not None:
        out.print(f"picture: {Path(out_dir) / 'compare.png'}")


@app.command()
@handles_errors
def demo(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the model and pictures.")] = Path(
        "headstart-demo"
    ),
    cache_dir: CacheDirOpt = None,
) -> None:
    """Train a pet-breed classifier on the bundled sample photos, evaluate it and predict a few (offline)."""
    use_cache_dir(cache_dir)
    check_output(out_dir, "folder", "--out")
    from headstart.workflows.demo import run_demo

    run_demo(out_dir, console=out)
