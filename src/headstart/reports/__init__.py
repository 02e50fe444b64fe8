"""Layer 3, reports: scores and pictures of predictions, knowing no model (numpy arrays and class names in).

============  ===========================================================================================
``metrics``   accuracy, top-5, per-class precision/recall, the confusion matrix (plain numpy, JSON-ready)
``plots``     confusion matrices and captioned thumbnail grids (matplotlib's OO API, atomic writes)
============  ===========================================================================================

Every public name is importable from here; the modules load on first use. Each module's ``__all__`` and
``_MODULES`` below must agree (a test checks): add a new public name to both.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_MODULES = {
    "metrics": ("Probabilities", "ScoredPhotos", "classification_metrics", "confusion_matrix", "match_labels",
                "public_metrics", "score_photos", "write_metric_pictures"),
    "plots": ("fraction_axis", "integer_axis", "plot_confusion_matrix", "plot_image_grid"),
}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use."""
    if name in _EXPORTS:
        value = getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
