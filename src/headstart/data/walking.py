"""Walking a folder of photos lazily, in sorted path order, without holding a listing of the whole data set.

:func:`walk_files` yields each file below a folder as it is reached. Only the folder being read is listed, and
compactly: its names sorted in one numpy byte-string array (the longest name's bytes a file), not a Python object
per file, so a class folder of 150,000 photos costs a few MB while it is read, then nothing. Two orders, as the
listings they stand in for: ``load_dataset``'s sorts the paths as text (a subfolder's name sorts with the ``/``
that follows it in the path: ``a.jpg`` before ``a/b.jpg``, ``cat-2/`` before ``cat/``), and
:func:`~headstart.data.images.list_image_files`'s sorts ``Path`` objects, part by part (``a/b.jpg`` first).

Example:
    >>> [p.name for p in walk_images("photos/")][:2]  # doctest: +SKIP
    ['01.jpg', '02.jpg']
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from headstart.data.images import is_image_file

__all__ = ["walk_files", "walk_images"]

_NAMES_AT_ONCE = 4096  # (names gathered in Python objects before they are packed into the folder's array)


def _sorted_entries(folder: str, text_order: bool) -> np.ndarray:
    """The folder's visible entries as sorted bytes, each subfolder's name ending in ``/`` (symlinked folders left
    out: not followed, as ``os.walk``); empty when the folder cannot be read."""
    parts, names = [], []
    try:
        with os.scandir(folder) as scan:
            for entry in scan:
                if entry.name.startswith("."):
                    continue
                try:
                    is_dir = entry.is_dir()
                    if is_dir and entry.is_symlink():
                        continue
                except OSError:
                    is_dir = False
                names.append(os.fsencode(entry.name) + (b"/" if is_dir else b""))
                if len(names) == _NAMES_AT_ONCE:
                    parts.append(np.array(names, dtype=bytes))
                    names = []
    except OSError:
        return np.array([], dtype=bytes)
    parts.append(np.array(names, dtype=bytes))
    entries = np.concatenate(parts)  # (bytes order is UTF-8's, which is code point order: str's sort)
    if text_order:
        entries.sort()
        return entries
    return entries[np.argsort(np.char.rstrip(entries, b"/"), kind="stable")]


def walk_files(
    folder: str | os.PathLike[str], *, text_order: bool = True, enter: Callable[[str], bool] | None = None
) -> Iterator[tuple[Path, bool]]:
    """``(file, whether it is an image)`` for every visible file below ``folder``, sorted (``text_order``: as text,
    else as ``Path`` objects); hidden entries skipped, symlinked folders not followed (as
    :func:`~headstart.data.images.list_image_files`). ``enter(folder)`` false: that folder (``folder`` itself
    included) is left out, e.g. one already walked under another name."""
    base = os.fspath(folder)
    if enter is not None and not enter(base):
        return
    for raw in _sorted_entries(base, text_order):
        name = os.fsdecode(raw)
        if name.endswith("/"):
            yield from walk_files(os.path.join(base, name[:-1]), text_order=text_order, enter=enter)
        else:
            yield Path(base, name), is_image_file(name)


def walk_images(folder: str | os.PathLike[str], *, text_order: bool = True) -> Iterator[Path]:
    """The image files of :func:`walk_files` (``text_order=False``: ``list_image_files(folder)[0]``, lazily)."""
    return (path for path, image in walk_files(folder, text_order=text_order) if image)
