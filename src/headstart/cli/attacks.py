"""Commands that fool a model: attack, robustness."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from headstart._io import check_output
from headstart.cli._common import (
    CacheDirOpt,
    DataArg,
    JsonOpt,
    ModelArg,
    SplitOpt,
    app,
    check_model_file,
    handles_errors,
    out,
    print_json,
    use_cache_dir,
)


@app.command()
@handles_errors
def attack(
    model: Annotated[
        str, typer.Argument(help="A model file written by `headstart train`, or a backbone name (its ImageNet head).")
    ],
    image: Annotated[Path, typer.Argument(help="The photo to perturb (at its own size).")],
    target: Annotated[
        str | None,
        typer.Option(help="Class name or index to reach, e.g. 284 or 'Siamese cat'; default: untargeted."),
    ] = None,
    method: Annotated[
        str, typer.Option(help="pgd, fgsm, or lesson (the lesson's unbounded descent, for comparison).")
    ] = "pgd",
    norm: Annotated[str, typer.Option(help="linf or l2.")] = "linf",
    eps: Annotated[str, typer.Option(help="Budget in 0–1 pixel units: 4/255 or 0.0157.")] = "4/255",
    steps: Annotated[
        int, typer.Option(help="Most gradient steps (PGD stops early once the goal holds with a margin).")
    ] = 50,
    step_size: Annotated[float | None, typer.Option(help="Step size (default eps/4; lesson: 1).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of PGD's random start.")] = 0,
    ensemble: Annotated[str | None, typer.Option(help="Attack these models too, all at once: NAME[,NAME].")] = None,
    transfer_to: Annotated[
        str | None, typer.Option("--transfer-to", help="Then classify the result with these models: NAME[,NAME].")
    ] = None,
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for the adversarial PNG, perturbation, figure and JSON.")
    ] = Path("attacks"),
    cache_dir: CacheDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Perturb a photo within a budget until the model changes its mind; verified on the saved 8-bit PNG."""
    use_cache_dir(cache_dir)
    check_model_file(model)
    check_output(out_dir, "folder", "--out")
    from headstart.attacks import attack as run_attack
    from headstart.attacks import save_attack, transfer

    others = [m.strip() for m in (ensemble or "").split(",") if m.strip()]
    result = run_attack(
        [model, *others],
        image,
        target=target,
        method=method,
        norm=norm,
        eps=eps,
        steps=steps,
        step_size=step_size,
        seed=seed,
    )
    if transfer_to:
        transfer(result, [m.strip() for m in transfer_to.split(",") if m.strip()])
    save_attack(result, out_dir)
    if as_json:
        print_json(result.to_dict())
        return
    b, a = result.before, result.after
    out.print(
        f"{image.name}: {b.label} {b.probability:.3f} → {a.label} {a.probability:.3f}: "
        f"{'success' if result.success else 'FAILED'} ({result.method}, {result.steps_used} steps); "
        f"L∞ {result.linf_8bit}/255, L2 {result.l2:.3f}" + (f", PSNR {result.psnr:.1f} dB" if result.psnr else ""),
        highlight=False,
    )
    for m in result.members[1:]:
        out.print(
            f"  ensemble {m['model']}: {m['adversarial']['label']} ({'fooled' if m['success'] else 'not fooled'})",
            highlight=False,
        )
    for t in result.transfer:
        carried = {True: "carried over", False: "did not carry over", None: "no such class"}[t["carried_over"]]
        out.print(
            f"  transfer {t['model']}: {t['original']['label']} → {t['adversarial']['label']}: {carried}",
            highlight=False,
        )
    out.print("files: " + ", ".join(result.files.values()), highlight=False)


@app.command()
@handles_errors
def robustness(
    model: ModelArg,
    data: DataArg,
    eps: Annotated[
        str, typer.Option(help="Budgets in 0–1 pixel units, comma-separated.")
    ] = "0,1/255,2/255,4/255,8/255",
    method: Annotated[str, typer.Option(help="pgd, fgsm or lesson.")] = "pgd",
    norm: Annotated[str, typer.Option(help="linf or l2.")] = "linf",
    steps: Annotated[int, typer.Option(help="Most PGD steps per photo and budget.")] = 20,
    split: SplitOpt = "all",
    limit: Annotated[int | None, typer.Option(help="Attack at most this many photos (evenly spread).")] = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for robustness.json and robustness.png.")] = Path(
        "robustness"
    ),
    cache_dir: CacheDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Accuracy against the attack budget on labelled photos (eps 0 = `evaluate`'s accuracy)."""
    use_cache_dir(cache_dir)
    check_model_file(model)
    check_output(out_dir, "folder", "--out", contents=("robustness.json", "robustness.png"), data=data)
    from headstart.attacks import robustness as measure
    from headstart.attacks import save_robustness

    report = measure(model, data, eps, method=method, norm=norm, steps=steps, split=split, limit=limit)
    paths = save_robustness(report, out_dir)
    if as_json:
        print_json({**report.to_dict(), "files": {k: str(p) for k, p in paths.items()}})
        return
    linf = report.norm == "linf"
    table = Table("eps", *(["8-bit steps"] if linf else []), "accuracy")
    for e, acc in zip(report.eps, report.accuracy):
        table.add_row(f"{e:.5g}", *([f"{e * 255:.3g}"] if linf else []), f"{acc:.3f}")
    out.print(table)
    out.print(
        f"{report.n_images} photos, {report.method} {report.norm} {report.steps} step{'s' * (report.steps != 1)}; files: "
        + ", ".join(str(p) for p in paths.values()),
        highlight=False,
    )
