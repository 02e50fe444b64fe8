"""Commands that look inside a network: dream, featuremaps, explain."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from headstart._io import check_output
from headstart.cli._common import (
    BackboneOpt,
    JsonOpt,
    app,
    check_model_file,
    default_output,
    err,
    handles_errors,
    out,
    print_json,
    shown_path,
)
from headstart.errors import HeadstartError

# ------------------------------------------------------------------------- looking inside: dream, featuremaps, explain
TargetOpt = Annotated[
    str | None,
    typer.Option("--class", "-c", help="Class index or name, e.g. 284 or 'Siamese cat' (a breed for a trained model)."),
]


@app.command()
@handles_errors
def dream(
    target: Annotated[
        str,
        typer.Option(
            "--target", "-t", help="Class to dream: index or name, e.g. 284 or 'Siamese cat'; a breed with --model."
        ),
    ],
    backbone: Annotated[
        str | None,
        typer.Option("--backbone", "-b", help="Backbone with an ImageNet head (default tf_efficientnet_lite0)."),
    ] = None,
    model: Annotated[
        Path | None, typer.Option("--model", "-m", help="A trained headstart model file instead of a backbone.")
    ] = None,
    out_path: Annotated[Path, typer.Option("--out", "-o", help="PNG to write; a JSON report goes beside it.")] = Path(
        "dream.png"
    ),
    method: Annotated[
        str,
        typer.Option(
            help="lucid (Fourier, decorrelated colour, random transforms) or lesson (pixels, plain gradient steps)."
        ),
    ] = "lucid",
    steps: Annotated[int | None, typer.Option(help="Maximum steps (default 256 lucid, 300 lesson).")] = None,
    tv: Annotated[
        float | None, typer.Option(help="Weight of total variation (default 0.25 lucid, 100 lesson; 0 = none).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the start image and the random transforms.")] = 0,
    stop_at: Annotated[
        float | None,
        typer.Option(help="Stop early once the 8-bit image reaches this probability (default: run all steps)."),
    ] = None,
    strip: Annotated[
        bool, typer.Option("--strip", help="Also write <out>-strip.png, the image during the optimisation.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Optimise an image until the network sees the class in it; the probability is measured on the saved PNG."""
    if backbone is not None and model is not None:
        raise HeadstartError("Give --backbone or --model, not both.")
    source = model if model is not None else (backbone or "tf_efficientnet_lite0")
    check_model_file(source)
    check_output(out_path, "file", "--out", example="dream.png")
    check_output(out_path.with_suffix(".json"), "file", "--out's report")
    if strip:
        check_output(out_path.with_name(f"{out_path.stem}-strip.png"), "file", "--strip's picture")
    from headstart.inside.class_image import dream as run_dream

    if not as_json:
        err.print(f"dreaming {target!r} with {source} ({method}); this takes a minute or two on a laptop CPU …")
    result = run_dream(
        source, target, out_path, method=method, steps=steps, tv=tv, seed=seed, stop_at=stop_at or None, strip=strip
    )
    if as_json:
        print_json(result.to_dict())
        return
    out.print(
        f"{result.png}: {result.target_name} p={result.probability:.3f} on the saved PNG "
        f"(start {result.start_probability:.4f}; {result.steps} steps, {result.seconds:.1f} s; "
        f"high-frequency energy {result.high_frequency_energy:.3f})",
        highlight=False,
    )
    out.print(f"report: {result.json}" + (f", strip: {result.strip}" if result.strip else ""), highlight=False)


@app.command()
@handles_errors
def featuremaps(
    image: Annotated[Path | None, typer.Argument(help="The photo to look at.")] = None,
    backbone: BackboneOpt = "tf_efficientnet_lite0",
    model: Annotated[
        Path | None, typer.Option("--model", "-m", help="Use a trained headstart model's backbone.")
    ] = None,
    layer: Annotated[
        str | None,
        typer.Option(help="Stage to show, as timm names it (see --list-layers); default the second-to-last."),
    ] = None,
    list_layers: Annotated[
        bool, typer.Option("--list-layers", help="List the backbone's feature stages and exit.")
    ] = False,
    out_path: Annotated[Path, typer.Option("--out", "-o", help="PNG to write.")] = Path("featuremaps.png"),
    channels: Annotated[int, typer.Option(help="How many of the most active channels to show.")] = 16,
    as_json: JsonOpt = False,
) -> None:
    """Feature maps of one photo: the most active channels of a stage and the positions × channels strip."""
    from headstart.inside import activations as fmaps

    source = model if model is not None else backbone
    check_model_file(source)
    if list_layers:
        layers = fmaps.list_layers(source)
        if as_json:
            print_json(layers)
        else:
            for row in layers:
                out.print(
                    f"{row['module']:<18} {row['num_chs']:>5} channels  1/{row['reduction']} resolution",
                    highlight=False,
                )
        return
    if image is None:
        raise HeadstartError("Give the photo to look at (IMAGE), or --list-layers.")
    check_output(out_path, "file", "--out", example="featuremaps.png")
    fm = fmaps.featuremaps(source, image, out_path, layer=layer, n_channels=channels)
    if as_json:
        print_json(
            {
                "out": str(out_path),
                "layer": fm.layer,
                "shape": list(fm.activations.shape),
                "final_shape": list(fm.final.shape),
                "top_channels": fm.top_channels(channels),
            }
        )
        return
    out.print(
        f"{out_path}: {fm.layer} {tuple(fm.activations.shape)}, final map {tuple(fm.final.shape)}", highlight=False
    )


@app.command()
@handles_errors
def explain(
    model: Annotated[str, typer.Argument(help="A headstart model file, or a backbone name (its ImageNet head).")],
    image: Annotated[Path, typer.Argument(help="The photo to explain.")],
    target: TargetOpt = None,
    out_path: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="PNG to write (default <image stem>-<model stem>-explain.png here)."),
    ] = None,
    method: Annotated[str, typer.Option(help="gradcam, gradcam++, hirescam, xgradcam or layercam.")] = "gradcam",
    layer: Annotated[str | None, typer.Option(help="Layer to explain (default the last feature stage).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Heat map of where the network looks for the top (or a chosen) class, over the photo."""
    check_model_file(model)
    named = Path(model).stem if model.endswith(".safetensors") else model
    default = default_output(image.stem, named, "explain", suffix=".png")
    out_path = check_output(out_path or default, "file", "--out", example=str(default))
    from headstart.inside.heatmap import explain as run_explain

    result = run_explain(model, image, out_path, target=target, method=method, layer=layer)
    if as_json:
        print_json(result.to_dict())
        return
    from headstart.inside.heatmap import SCORED_ON

    out.print(
        f"{shown_path(result.out)}: {result.method} for {result.target_name} (p={result.probability:.3f} on "
        f"{SCORED_ON}), layer {result.layer}",
        highlight=False,
    )
