"""What :meth:`ImageClassifier.fit <headstart.models.estimator.ImageClassifier.fit>` reports: the validation
metrics and calibration, how the fit went (photos, features, backbone, mirror averaging, seconds), and the part of
it the model file keeps (``metrics``, ``data``, ``finetune``, ``estimator``).

Example:
    >>> report = fit_report(dataset, prepared, backbone, model, validation, specific, selection, started)
    >>> model.metadata.update(file_metadata(report, dataset, method, config, params, seed=0, val_fraction=0.2))
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from headstart.data import Dataset
from headstart.models.classifier import Classifier
from headstart.models.finetune.config import Finetune
from headstart.reports import classification_metrics, public_metrics
from headstart.reports.calibration import calibration_metrics

__all__ = ["REPORT_ONLY", "file_metadata", "fit_report", "params_from_file", "stored_params"]

#: Report entries the model file does not keep (lists of photos, per-class tables, the reliability table).
REPORT_ONLY = ("skipped", "ignored", "validation", "history", "calibration")


def fit_report(
    dataset: Dataset,
    prepared: Any,
    backbone_name: str,
    model: Classifier,
    validation: dict[str, Any],
    specific: dict[str, Any],
    selection: Any,
    started: float,
    history: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The estimator's ``report_``: validation metrics of ``validation['proba']`` (the model that had not seen
    those photos), the method's own numbers (``specific``) and how the fit went."""
    val = classification_metrics(validation["labels"], validation["proba"], model.classes)
    calibration = calibration_metrics(validation["labels"], validation["proba"], model.classes)
    feats = prepared.feats
    return {
        "val_accuracy": val["accuracy"],
        "val_accuracy_ci": val["accuracy_ci"],
        "val_top5_accuracy": val["top5_accuracy"],
        **specific,
        "n_images": len(dataset),
        "n_usable": len(prepared.usable),
        "n_train": len(prepared.tr),
        "n_val": len(prepared.va),
        "n_classes": len(model.classes),
        "skipped": [u.to_dict() for u in feats.unusable],
        "ignored": [str(p) for p in dataset.ignored],
        "features": {"cached": feats.n_cached, "computed": feats.n_computed, "seconds": round(feats.seconds, 3)},
        "backbone": backbone_name,
        **({"backbone_selection": selection.to_dict()} if selection else {}),
        "flip_average": prepared.flip,
        "flip_average_cv": prepared.flip_cv,
        "val_ece": calibration["ece"],
        "val_ece_floor": calibration["ece_floor"],
        "val_nll": calibration["nll"],
        "val_brier": calibration["brier"],
        "calibration": calibration,
        "seconds": round(time.perf_counter() - started, 3),
        "validation": public_metrics(val),
        **({"history": history} if history is not None else {}),
    }


def file_metadata(
    report: dict[str, Any],
    dataset: Dataset,
    method: str,
    config: Any,
    params: dict[str, Any],
    *,
    seed: int,
    val_fraction: float,
) -> dict[str, Any]:
    """The model file's record of the fit: the method, the report's numbers, the data, the fine-tuning options
    and the estimator's hyper-parameters (``params``, so :func:`~headstart.models.estimator.load` gives them
    back)."""
    return {
        "method": method,
        "metrics": {k: v for k, v in report.items() if k not in REPORT_ONLY},
        "data": {"source": str(dataset.root), "kind": dataset.kind, "seed": seed, "val_fraction": val_fraction},
        **({"finetune": asdict(config)} if config is not None else {}),
        "estimator": params,
    }


def stored_params(params: dict[str, Any]) -> dict[str, Any]:
    """The estimator's hyper-parameters as the model file keeps them (JSON): fine-tuning options as a dict of the
    fields set (a Finetune given as ``method``, the older spelling, as ``method='finetune'``), paths as text, and
    ``flip_average`` None (the default) as ``"cached"``, its other spelling: files from before None meant that
    kept None for ``"auto"`` (:func:`params_from_file` reads both)."""
    params = dict(params)
    if isinstance(params.get("method"), Finetune):
        params["method"], params["finetune"] = "finetune", params["method"].set_fields()
    elif isinstance(params.get("finetune"), Finetune):
        params["finetune"] = params["finetune"].set_fields() or None
    elif isinstance(params.get("finetune"), dict):
        params["finetune"] = dict(params["finetune"]) or None
    weights = params.get("weights")
    params["weights"] = str(weights) if weights is not None else None
    if params.get("flip_average", "cached") is None:
        params["flip_average"] = "cached"
    return params


def params_from_file(
    meta: dict[str, Any], backbone_name: str, names: list[str], methods: tuple[str, ...]
) -> dict[str, Any]:
    """The hyper-parameters (``names``) a model file's metadata says it was fitted with: the ``estimator`` table
    (files from before run options left the constructor also kept those: they are left out); for a file from
    before the estimator, what it says about how it was made (the backbone, method, fine-tuning options, seed,
    validation share)."""
    stored = meta.get("estimator") if isinstance(meta.get("estimator"), dict) else {}
    params = {k: v for k, v in stored.items() if k in names}
    if "flip_average" in params and params["flip_average"] in (None, "cached"):
        params["flip_average"] = "auto" if params["flip_average"] is None else None  # (see stored_params)
    if stored:
        return params
    data = meta.get("data") if isinstance(meta.get("data"), dict) else {}
    params["backbone"] = backbone_name
    if meta.get("method") in methods:
        params["method"] = meta["method"]
    if isinstance(meta.get("finetune"), dict) and params.get("method", "probe") != "probe":
        known = {f for f in asdict(Finetune())}
        params["finetune"] = {k: v for k, v in meta["finetune"].items() if k in known}
    for name in ("seed", "val_fraction"):
        if isinstance(data.get(name), (int, float)) and not isinstance(data.get(name), bool):
            params[name] = data[name]
    return params
