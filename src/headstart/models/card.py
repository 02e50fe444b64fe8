"""The model card an :class:`~headstart.models.estimator.ImageClassifier` shows in a notebook (``_repr_html_``).

Fitted: what it is (backbone and its preprocessing, method, classes), how it did on its held-out photos (accuracy,
top-5, calibration: ECE, NLL, Brier, temperature) and what it skipped. Not fitted: its settings and how to fit it.
"""

from __future__ import annotations

from typing import Any

import headstart._display as show


def _method_name(estimator: Any) -> str:
    method = estimator.method
    return method if isinstance(method, str) else "finetune"


def model_card_html(estimator: Any) -> str:
    """The estimator's card as HTML (every value escaped)."""
    name = type(estimator).__name__
    if not hasattr(estimator, "model_"):
        settings = [(k, v) for k, v in estimator.get_params().items() if k not in ("cache",)]
        return show.card(
            "model-card",
            f"{name} (not fitted)",
            show.fields(settings),
            show.paragraph("Call .fit(folder_of_class_folders) to train it."),
        )
    report: dict[str, Any] = getattr(estimator, "report_", {}) or {}
    spec = estimator.spec_
    config = spec.data_config
    side = config.get("input_size", [0, 0, 0])[-1]
    classes = [str(c) for c in estimator.classes_]
    shown_classes = ", ".join(classes[:30]) + (f" … ({len(classes)} in all)" if len(classes) > 30 else "")
    what = show.fields(
        [
            ("method", _method_name(estimator)),
            ("backbone", spec.name),
            ("weights", spec.source),
            (
                "preprocessing",
                f"{side}×{side}, {config.get('interpolation')}, crop {config.get('crop_pct')}, "
                f"mean {config.get('mean')}, std {config.get('std')}",
            ),
            ("mirror averaging", bool(spec.flip_average)),
            ("classes", shown_classes),
        ]
    )
    val = report.get("n_val")
    how = show.fields(
        [
            ("photos", f"{report.get('n_train', '?')} training, {val if val is not None else '?'} validation"),
            ("validation accuracy", show.percent(report.get("val_accuracy")) if "val_accuracy" in report else ...),
            (
                "validation top-5",
                show.percent(report.get("val_top5_accuracy")) if "val_top5_accuracy" in report else ...,
            ),
            ("cross-validated accuracy", show.percent(report["cv_accuracy"]) if report.get("cv_accuracy") else ...),
            ("ECE (15 bins)", report.get("val_ece", ...)),
            ("NLL", report.get("val_nll", ...)),
            ("Brier", report.get("val_brier", ...)),
            ("temperature", report.get("temperature", ...)),
            ("regularisation C", report.get("C", ...)),
            ("best epoch", report.get("best_epoch", ...)),
            ("refit on all photos", report.get("refit_on_all", ...)),
            ("seconds", report.get("seconds", ...)),
        ]
    )
    parts = [show.heading("What it is", 4), what, show.heading("How it did on held-out photos", 4), how]
    skipped = getattr(estimator, "unusable_", []) or []
    if skipped:
        rows = [(getattr(u, "path", u), getattr(u, "reason", "")) for u in skipped]
        parts += [show.heading(f"Skipped photos ({len(rows)})", 4), show.table(["file", "why"], rows)]
    return show.card("model-card", f"{name}: {len(classes)} classes on {spec.name}", *parts)
