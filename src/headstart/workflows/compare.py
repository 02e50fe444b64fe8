"""Which backbone suits your data? Cross-validated probe accuracy, extraction speed and feature size, ranked."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from headstart.data.datasets import Dataset, load_dataset
from headstart.features.extract import FeatureCache, extract_features
from headstart.models.memo import Memo, fit_probe


def compare_backbones(
    data: str | os.PathLike[str] | Dataset,
    backbones: list[str],
    *,
    out_dir: str | os.PathLike[str] | None = None,
    cache: FeatureCache | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """For each backbone: the linear probe's cross-validated accuracy on ``data``, img/s and feature size.

    Features and probe fits come from (and go into) the cache, so a second call recomputes nothing. Rows are ranked by
    accuracy, then speed. With ``out_dir``: ``compare.json`` and ``compare.png``.

    Example:
        >>> compare_backbones("photos/", ["tf_efficientnet_lite0", "tf_efficientnet_lite2"])[0]["backbone"]
        'tf_efficientnet_lite2'
    """
    if not backbones:
        raise ValueError("Name at least one backbone, e.g. --backbones tf_efficientnet_lite0,tf_efficientnet_lite1.")
    dataset = data if isinstance(data, Dataset) else load_dataset(data)
    cache = cache if cache is not None else FeatureCache()
    rows = []
    for name in backbones:
        feats = extract_features(dataset.paths, name, cache=cache, progress=progress)
        labels = np.asarray(dataset.subset(feats.indices.tolist()).labels)
        probe = fit_probe(feats.features, labels, memo=Memo.beside(cache))
        rows.append({
            "backbone": name,
            "cv_accuracy": round(float(probe.cv_accuracy_), 4),
            "folds": int(probe.n_splits_),
            "images_per_second": None if (speed := cache.speed(feats.cache_key)) is None else round(speed, 1),
            "num_features": int(feats.features.shape[1]),
            "n_images": int(len(labels)),
            "weights": feats.spec.source if feats.spec else "",
        })
    rows.sort(key=lambda r: (-r["cv_accuracy"], -(r["images_per_second"] or 0.0)))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    if out_dir is not None:
        folder = Path(out_dir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "compare.json").write_text(json.dumps(rows, indent=2) + "\n")
        plot_comparison(rows, folder / "compare.png")
    return rows


def plot_comparison(rows: list[dict[str, Any]], path: Path) -> Path:
    """Accuracy against speed, one labelled point per backbone (up and right is better)."""
    from matplotlib.figure import Figure

    from headstart._io import save_figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for r in rows:
        if r["images_per_second"] is None:  # extracted before speeds were recorded: no x position to give
            continue
        ax.scatter(r["images_per_second"], r["cv_accuracy"], s=20 + r["num_features"] / 20)
        ax.annotate(f"{r['rank']}. {r['backbone']} ({r['num_features']}-d)", (r["images_per_second"], r["cv_accuracy"]),
                    textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set(xlabel="extraction speed (images/s, this machine)", ylabel="linear probe accuracy (cross-validated)",
           title=f"Backbones on {rows[0]['n_images']} photos")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
