"""Layer 1, data: photos and data sets on disk, before any model is involved.

================  ======================================================================================
``images``        one file → upright 8-bit RGB, or an :class:`~headstart.errors.UnusableImageError` saying why
``scanning``      :func:`scan` a data set for unusable files; :class:`UnusableFile`
``quarantining``  :func:`quarantine`: the one safe way files are moved aside (no replacing, a locked log)
``datasets``      recognising a data set's layout (class folders, Oxford-IIIT Pet, PetImages, CSV); leak-free splits
``walking``       a folder's photos walked lazily, in sorted order, without a listing of the data set
``download``      the official pet archives, verified and safely extracted
``hashing``       a photo's pixel hash and perceptual hash (what duplicates are found by)
================  ======================================================================================

Every public name is importable from here (``from headstart.data import load_image``); the modules load on first
use, so importing this package costs nothing. Each module's ``__all__`` and ``_MODULES`` below must agree (a test
checks): add a new public name to both.
"""

from __future__ import annotations

from headstart._lazy import lazy_exports

_MODULES = {
    "images": (
        "DEFAULT_MAX_PIXELS",
        "FORMATS",
        "IMAGE_EXTENSIONS",
        "MIN_SIDE",
        "SmallImageWarning",
        "check_image",
        "check_max_pixels",
        "decode_image",
        "decode_threads",
        "is_image_file",
        "list_image_files",
        "load_image",
    ),
    "scanning": ("ScanReport", "UnusableFile", "scan"),
    "quarantining": ("QUARANTINE_LOG", "QuarantineWarning", "check_destination", "quarantine"),
    "datasets": (
        "Dataset",
        "LabelledPhotos",
        "LabelsFromFilenamesWarning",
        "Sample",
        "labelled_photos",
        "load_dataset",
        "train_val_split",
    ),
    "walking": ("walk_files", "walk_images"),
    "download": ("Archive", "BASE_URL_ENV", "DATASETS", "download_dataset"),
    "hashing": ("SIGNATURE_DECODE", "Signatures", "hamming", "image_signatures", "perceptual_hash"),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), _MODULES)
