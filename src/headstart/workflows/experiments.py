"""The two experiments around fine-tuning: ``find_learning_rate`` (the lr range test on the network ``train`` would
fine-tune) and ``sweep`` (one variant per combination of fine-tuning options, compared in a table and a picture).

Example:
    >>> find_learning_rate("photos/", out="lr.png").suggestion
    0.00021
    >>> sweep("photos/", {"head_dropout": [0, 0.2, 0.5]}, out_dir="sweep")[0]["val_accuracy"]
    0.917
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from headstart._console import wants_progress
from headstart._io import write_json, write_text_atomic
from headstart._validation import check_choice
from headstart.data import Dataset, load_dataset
from headstart.features import DEFAULT_BACKBONE, FeatureCache, extract_features
from headstart.models.finetune.config import Finetune
from headstart.models.inputs import ResolvedBackbone, feature_cache
from headstart.models.memo import Memo
from headstart.models.probe_fit import fit_probe
from headstart.workflows.runs import forget_checkpoints
from headstart.workflows.training import train

__all__ = ["find_learning_rate", "sweep"]


def find_learning_rate(
    data: str | os.PathLike[str] | Dataset,
    *,
    backbone: str = "auto",
    weights: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] = "lr-find.png",
    steps: int | None = None,
    budget_s: float | None = None,
    finetune: Finetune | dict[str, Any] | None = None,
    cache: FeatureCache | str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    finetune_options: dict[str, Any] | None = None,
):
    """The lr range test on the network fine-tuning would train (probe head, same unfrozen part); writes the plot.

    ``steps`` defaults to :data:`~headstart.models.finetune.lr_find.DEFAULT_STEPS` and ``budget_s`` (the most seconds the
    steps may take; None: the default, 0: none) to :data:`~headstart.models.finetune.lr_find.DEFAULT_BUDGET_S`. The
    frozen stages run once per photo, so on Oxford pets (259 photos, 2 CPU cores) the whole test takes well under
    a minute; the result says how many steps ran, why it stopped and the seconds per step. ``finetune``: the
    fine-tuning options to test under (a Finetune or a dict of its fields; ``finetune_options`` is its older,
    deprecated name).

    Returns:
        :class:`headstart.models.finetune.lr_find.LrFindResult` with ``suggestion``, ``stopped``/``why`` and ``seconds``.

    Example:
        >>> result = find_learning_rate("photos/", out="lr.png", steps=20)
        >>> result.suggestion, result.why
        (0.00021, 'all 20 steps')
    """
    from headstart.models.backbone_names import check_backbone_choice
    from headstart.models.finetune.lr_find import DEFAULT_BUDGET_S, DEFAULT_STEPS, lr_range_test, plot_lr_find
    from headstart.models.finetune.parts import build_network, start_from_probe, zero_head_weights
    from headstart.models.selection import select_for_fit

    if finetune_options is not None:
        warnings.warn(
            "find_learning_rate(finetune_options=...) is deprecated and will stop working in headstart 0.3: pass "
            "finetune=... (a Finetune or a dict of its fields).",
            FutureWarning,
            stacklevel=2,
        )
        finetune = finetune if finetune is not None else finetune_options
    if isinstance(finetune, Finetune):
        finetune = finetune.set_fields()
    progress = wants_progress(progress)
    dataset = data if isinstance(data, Dataset) else load_dataset(data)
    store = feature_cache(cache)
    candidates = check_backbone_choice(
        backbone, weights, "finetune", "find_learning_rate"
    )  # (one network: no ensemble)
    # one backbone object: extraction (on a cache miss) and the range test; for auto the one `train` would choose
    source = (
        ResolvedBackbone(backbone, weights)
        if candidates is None
        else select_for_fit(
            dataset,
            candidates,
            cache=store,
            memo=Memo.beside(store),
            seed=0,
            val_fraction=0.2,
            weights=weights,
            progress=progress,
        ).backbone
    )
    feats = extract_features(dataset.paths, source, cache=store, progress=progress, flip_average=False)
    usable = dataset.subset(feats.indices.tolist())
    probe = fit_probe(feats.features, np.asarray(usable.labels), memo=Memo.beside(store))
    config = Finetune.for_data_size(len(usable), **(finetune or {}))
    classes = [str(c) for c in probe.classes_]
    network = build_network(source.load(), len(classes), config.head_dropout)
    start_from_probe(network, probe.coef_, probe.intercept_, probe.temperature_, feats.features.mean(axis=0))
    if config.head_start == "zero":  # (where training starts it)
        zero_head_weights(network)
    budget = DEFAULT_BUDGET_S if budget_s is None else (budget_s or None)
    result = lr_range_test(
        network,
        usable,
        classes,
        source.spec.data_config,
        config,
        steps=steps or DEFAULT_STEPS,
        budget_s=budget,
        progress=progress,
        spec=source.spec,
        hashes=dict(zip(map(str, usable.paths), feats.hashes)),
    )
    plot_lr_find(result, Path(out))
    return result


def sweep(
    data: str | os.PathLike[str] | Dataset,
    settings: dict[str, list[Any]],
    *,
    method: str = "finetune",
    out_dir: str | os.PathLike[str] = "sweep",
    backbone: str = DEFAULT_BACKBONE,
    base_options: dict[str, Any] | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Train one variant per combination of ``settings`` (a grid) and compare them in a table and one picture.

    Writes ``results.json``, ``results.md`` and ``comparison.png`` (validation accuracy per epoch, and the best of
    each variant) in ``out_dir``; each variant's model and run folder sit beside them.

    Example:
        >>> sweep("photos/", {"head_dropout": [0, 0.2, 0.5, 0.8]})   # the lesson's dropout experiment
    """
    import itertools

    check_choice(method, "method", "sweep", ("finetune", "scratch"))
    Finetune().replace(**{k: v[0] for k, v in settings.items()})  # unknown names fail before any training
    folder = Path(out_dir)
    dataset = data if isinstance(data, Dataset) else load_dataset(data)
    keys = list(settings)
    rows: list[dict[str, Any]] = []
    for values in itertools.product(*(settings[k] for k in keys)):
        variant = dict(zip(keys, values))
        name = ",".join(f"{k}={v}" for k, v in variant.items())
        slug = "_".join(f"{k}-{v}" for k, v in variant.items()).replace("/", "-")
        forget_checkpoints(folder / slug)  # (a sweep run again starts its variants afresh: it has no --resume)
        result = train(
            dataset,
            method=method,
            backbone=backbone,
            out=folder / f"{slug}.safetensors",
            run_dir=folder / slug,
            finetune={"skip_unjudged": False, **(base_options or {}), **variant},  # (a sweep compares trainings)
            progress=progress,
        )
        m = result.metrics
        frozen = m.get("frozen_stages") or {}
        # the frozen stages' pass (or its reading from the cache folder), done once for every variant
        shared = float(frozen.get("seconds") or 0.0) + float(frozen.get("read_seconds") or 0.0)
        rows.append(
            {
                "variant": name,
                **variant,
                "val_accuracy": m["val_accuracy"],
                "best_epoch": m["best_epoch"],
                "epochs_run": m["epochs_run"],
                "seconds": round(m["seconds"] - shared, 3),  # this variant's own work
                "shared_seconds": round(shared, 3),
                "history": result.estimator.report_.get("history", []),
            }
        )
    write_json(folder / "results.json", rows)
    table = ["| variant | validation accuracy | best epoch | epochs | seconds |", "|---|---|---|---|---|"]
    table += [
        f"| {r['variant']} | {r['val_accuracy']:.3f} | {r['best_epoch']} | {r['epochs_run']} | {r['seconds']:.0f} |"
        for r in rows
    ]
    shared = sum(r["shared_seconds"] for r in rows)
    if shared:
        table.append(
            f"\nseconds: each variant's own; the frozen stages' pass, shared by all, took {shared:.0f} s more."
        )
    write_text_atomic(folder / "results.md", "\n".join(table) + "\n")
    _plot_sweep(rows, folder / "comparison.png")
    return rows


def _plot_sweep(rows: list[dict[str, Any]], path: Path) -> Path:
    from matplotlib.figure import Figure

    from headstart._io import save_figure

    fig = Figure(figsize=(11, 4), layout="constrained")
    curves, bars = fig.subplots(1, 2)
    for r in rows:
        h = r["history"]
        curves.plot([e["epoch"] for e in h], [e["val_accuracy"] for e in h], "o-", label=r["variant"])
        curves.plot([e["epoch"] for e in h], [e["train_accuracy"] for e in h], ":", color=curves.lines[-1].get_color())
    curves.set(xlabel="epoch", ylabel="accuracy", title="Validation (solid) and training (dotted) accuracy")
    curves.grid(alpha=0.3)
    curves.legend(fontsize=8)
    bars.barh([r["variant"] for r in rows], [r["val_accuracy"] for r in rows], color="tab:blue")
    bars.set(xlabel="validation accuracy (best epoch)", title="Variants", xlim=(0, 1))
    for i, r in enumerate(rows):
        bars.text(r["val_accuracy"], i, f" {r['val_accuracy']:.3f}", va="center")
    return save_figure(fig, path)
