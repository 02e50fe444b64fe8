"""What a model file is and how it was made, read from its header alone (no tensors, no torch, no network).

Example:
    >>> info = model_info("pets.safetensors")
    >>> info["classes"][:2], info["backbone"]["name"], info["method"]
    (['Abyssinian', 'Bengal'], 'tf_efficientnet_lite1', 'probe')
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from headstart.models.modelfile import read_model_file
from headstart.models.probe_fit import describe_C

__all__ = ["describe_model", "model_info"]

#: the training settings worth showing, in this order (from the estimator's stored parameters)
SETTINGS = ("method", "backbone", "weights", "seed", "val_fraction", "refit", "flip_average", "precision")


def model_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The model file's header as one dict: ``file`` (path, bytes, tensors and parameters), ``format_version``,
    ``headstart_version``, ``classes``, ``backbone`` (name, weights, preprocessing, feature size), ``method``,
    ``metrics`` (validation and cross-validation figures), ``data`` (where it was trained, seed, split),
    ``settings`` (how it was trained) and ``finetune`` (the fine-tuning options, for a fine-tuned network).

    Raises:
        ModelFileError: the file is missing, damaged or not a headstart model file (says which).
    """
    path = Path(path)
    _, document = read_model_file(path, load_tensors=False)  # (checks the header first: ModelFileError)
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:  # (shapes only: no tensor is read)
        shapes = {name: list(handle.get_slice(name).get_shape()) for name in handle.keys()}
    parameters = sum(_product(shape) for shape in shapes.values())
    backbone = document.get("backbone") if isinstance(document.get("backbone"), dict) else {}
    stored = document.get("estimator") if isinstance(document.get("estimator"), dict) else {}
    return {
        "file": {
            "path": str(path),
            "bytes": path.stat().st_size,
            "tensors": len(shapes),
            "parameters": parameters,
            "trunk_parameters": sum(_product(s) for name, s in shapes.items() if name.startswith("backbone.")),
        },
        "format_version": document.get("format_version"),
        "headstart_version": document.get("headstart_version"),
        "created": document.get("created"),  # (files of headstart before 0.2 only: a run's time is no model's)
        "classes": list(document.get("classes") or []),
        "backbone": backbone,
        "method": document.get("method", stored.get("method")),
        "metrics": document.get("metrics") if isinstance(document.get("metrics"), dict) else {},
        "data": document.get("data") if isinstance(document.get("data"), dict) else {},
        "settings": {k: stored[k] for k in SETTINGS if k in stored},
        "finetune": document.get("finetune"),
    }


def describe_model(info: dict[str, Any]) -> list[str]:
    """:func:`model_info` as the lines ``headstart info`` prints."""
    f, b, m, d = info["file"], info["backbone"], info["metrics"], info["data"]
    config = b.get("data_config") or {}
    size = config.get("input_size") or ["?", "?", "?"]
    lines = [
        f"{f['path']}: a headstart model file (format {info['format_version']}, written by headstart "
        f"{info['headstart_version']}), {f['bytes'] / 1e6:.1f} MB, {f['parameters']:,} parameters",
        f"classes ({len(info['classes'])}): {', '.join(info['classes'])}",
        f"backbone: {b.get('name', '?')} ({b.get('num_features', '?')} features; weights: {b.get('source', '?')})",
        f"preprocessing: {size[-1]}×{size[-2]} px, crop {config.get('crop_pct', '?')} ({config.get('crop_mode', '?')}), "
        f"{config.get('interpolation', '?')}, mean {_numbers(config.get('mean'))}, std {_numbers(config.get('std'))}"
        + (", mirror-averaged" if b.get("flip_average") else ""),
    ]
    how = info["method"] or "?"
    if how == "probe" and "C" in m:
        how += f" (logistic regression, C={describe_C(m['C'])} by cross-validation, temperature {m.get('temperature', 1):.3g})"
    if info.get("finetune"):
        ft = info["finetune"]
        shown = ", ".join(f"{k}={ft[k]}" for k in ("epochs", "lr", "unfreeze", "augment", "batch_size") if k in ft)
        how += f" ({shown})"
    lines.append(f"method: {how}")
    if d:
        lines.append(
            f"trained on: {d.get('source', '?')} ({d.get('kind', '?')}; {m.get('n_usable', '?')} usable photos of "
            f"{m.get('n_images', '?')}), seed {d.get('seed', '?')}, validation fraction {d.get('val_fraction', '?')}"
        )
    if "val_accuracy" in m:
        parts = [f"accuracy {m['val_accuracy']:.3f}", f"top-5 {m.get('val_top5_accuracy', float('nan')):.3f}"]
        if m.get("val_ece") is not None:
            parts.append(f"ECE {m['val_ece']:.3f}")
        lines.append(f"validation: {', '.join(parts)} on {m.get('n_val', '?')} photos")
    if m.get("cv_accuracy") is not None:
        lines.append(f"cross-validated probe accuracy (training part): {m['cv_accuracy']:.3f}")
    selection = m.get("backbone_selection")
    if isinstance(selection, dict):
        lines.append(f"backbone chosen by: {selection.get('rule') or 'auto'}")
    if info["settings"]:
        lines.append("settings: " + ", ".join(f"{k}={v}" for k, v in info["settings"].items()))
    if info.get("created"):
        lines.append(f"created: {info['created']}")
    return lines


def _numbers(values: Any) -> str:
    return "(" + ", ".join(f"{v:.3g}" for v in values) + ")" if isinstance(values, list) else "?"


def _product(shape: list[int]) -> int:
    total = 1
    for n in shape:
        total *= int(n)
    return total
