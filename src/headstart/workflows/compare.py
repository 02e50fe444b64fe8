"""Which backbone suits your data? Cross-validated probe accuracy, extraction speed and feature size, ranked."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from headstart._io import save_figure, write_json
from headstart._validation import fail
from headstart.data.datasets import Dataset, load_dataset
from headstart.features.cache import FeatureCache
from headstart.models.memo import Memo
from headstart.models.selection import score_backbones

__all__ = ["compare_backbones", "plot_comparison"]


def compare_backbones(
    data: str | os.PathLike[str] | Dataset,
    backbones: Sequence[str],
    *,
    out_dir: str | os.PathLike[str] | None = None,
    cache: FeatureCache | None = None,
    flip_average: bool = False,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """For each backbone: the linear probe's cross-validated accuracy on ``data``, img/s and feature size.

    One view of each photo, as ``train`` computes by default; ``flip_average=True`` scores mirror-averaged
    features (each photo and its mirror image: twice the extraction).

    Features and probe fits come from (and go into) the cache, so a second call recomputes nothing. Rows are ranked by
    accuracy, then speed. With ``out_dir``: ``compare.json`` and ``compare.png``.

    Example:
        >>> compare_backbones("photos/", ["tf_efficientnet_lite0", "tf_efficientnet_lite2"])[0]["backbone"]
        'tf_efficientnet_lite2'
    """
    if isinstance(backbones, str) or not backbones or not all(isinstance(b, str) and b for b in backbones):
        fail(
            "backbones",
            "compare_backbones",
            "a list naming at least one backbone (timm names, e.g. ['tf_efficientnet_lite0', 'tf_efficientnet_lite1'])",
            backbones,
        )
    dataset = data if isinstance(data, Dataset) else load_dataset(data)
    cache = cache if cache is not None else FeatureCache()
    rows = score_backbones(
        dataset.paths,
        dataset.labels,
        backbones,
        cache=cache,
        memo=Memo.beside(cache),
        flip_average=bool(flip_average),
        progress=progress,
    )  # (the scoring `--backbone auto` uses too)
    rows.sort(key=lambda r: (-r["cv_accuracy"], -(r["images_per_second"] or 0.0)))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    if out_dir is not None:
        folder = Path(out_dir)
        write_json(folder / "compare.json", rows)
        plot_comparison(rows, folder / "compare.png")
    return rows


def plot_comparison(rows: list[dict[str, Any]], path: Path) -> Path:
    """Accuracy against speed, one labelled point per backbone (up and right is better).

    Example:
        >>> plot_comparison(compare_backbones("photos/", ["tf_efficientnet_lite0"]), Path("compare.png"))
        PosixPath('compare.png')
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for r in rows:
        if r["images_per_second"] is None:  # extracted before speeds were recorded: no x position to give
            continue
        ax.scatter(r["images_per_second"], r["cv_accuracy"], s=20 + r["num_features"] / 20)
        ax.annotate(
            f"{r['rank']}. {r['backbone']} ({r['num_features']}-d)",
            (r["images_per_second"], r["cv_accuracy"]),
            textcoords="offset points",
            xytext=(6, 4),
            fontsize=8,
        )
    ax.set(
        xlabel="extraction speed (images/s, this machine)",
        ylabel="linear probe accuracy (cross-validated)",
        title=f"Backbones on {rows[0]['n_images']} photos",
    )
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
