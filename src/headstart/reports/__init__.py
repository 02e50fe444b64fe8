"""Layer 3, reports: scores and pictures of predictions, knowing no model (numpy arrays and class names in).

============  ===========================================================================================
``metrics``   accuracy (with its 95% interval), top-5, per-class precision/recall, the confusion matrix (plain numpy, JSON-ready)
``running``   the same scores accumulated batch by batch (evaluate streams its photos)
``plots``     confusion matrices and captioned thumbnail grids (matplotlib's OO API, atomic writes)
============  ===========================================================================================

Every public name is importable from here; the modules load on first use. Each module's ``__all__`` and
``_MODULES`` below must agree (a test checks): add a new public name to both.
"""

from __future__ import annotations

from headstart._lazy import lazy_exports

_MODULES = {
    "metrics": (
        "Probabilities",
        "ScoredPhotos",
        "accuracy_interval",
        "classification_metrics",
        "confusion_matrix",
        "format_accuracy",
        "match_labels",
        "public_metrics",
        "score_photos",
        "write_metric_pictures",
    ),
    "running": ("RunningScores",),
    "plots": ("confusion_figure", "fraction_axis", "integer_axis", "plot_confusion_matrix", "plot_image_grid"),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), _MODULES)
