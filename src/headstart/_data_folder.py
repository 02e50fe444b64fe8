"""Whether an output folder is a folder of photos, or inside one (where a later listing would read its files)."""

from __future__ import annotations

import os
from pathlib import Path


def inside_data(path: Path, data: Path) -> str | None:
    """``"the data folder"`` or ``"inside the data folder"`` when the output folder ``path`` is the folder of
    photos ``data`` or a folder below it that a listing reads (not a hidden one); None otherwise (``data`` a CSV
    file or missing, ``path`` elsewhere)."""
    try:
        if not data.is_dir():
            return None
        root = Path(os.path.abspath(data)).resolve()
        below = Path(os.path.abspath(path)).resolve().relative_to(root)
    except (ValueError, OSError):
        return None
    if root == Path(root.anchor) or any(part.startswith(".") for part in below.parts):
        return None
    return "inside the data folder" if below.parts else "the data folder"
