"""Layer 1, data: photos and data sets on disk, before any model is involved.

=============  ======================================================================================
``images``     one file → upright 8-bit RGB, or an :class:`~headstart.errors.UnusableImageError` saying why
``scanning``   :func:`scan` a data set for unusable files; :func:`quarantine` them; :class:`UnusableFile`
``datasets``   recognising a data set's layout (class folders, Oxford-IIIT Pet, PetImages, CSV); leak-free splits
``download``   the official pet archives, verified and safely extracted
=============  ======================================================================================

Every public name is importable from here (``from headstart.data import load_image``); the modules load on first
use, so importing this package costs nothing. Each module's ``__all__`` and ``_MODULES`` below must agree (a test
checks): add a new public name to both.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_MODULES = {
    "images": ("DEFAULT_MAX_PIXELS", "FORMATS", "IMAGE_EXTENSIONS", "MIN_SIDE", "SmallImageWarning", "check_image",
               "check_max_pixels", "decode_image", "decode_threads", "is_image_file", "list_image_files", "load_image"),
    "scanning": ("QUARANTINE_LOG", "ScanReport", "UnusableFile", "quarantine", "scan"),
    "datasets": ("Dataset", "LabelsFromFilenamesWarning", "Sample", "load_dataset", "train_val_split"),
    "download": ("Archive", "BASE_URL_ENV", "DATASETS", "download_dataset"),
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
