"""Pictures people look at: confusion matrices and captioned thumbnail grids, written as PNG files.

matplotlib is imported inside each function (it costs a noticeable fraction of a second) and used through its
object-oriented ``Figure`` API, which renders with Agg whatever backend the caller's pyplot uses; nothing here
touches pyplot's global state. Files are written atomically (temporary name in the same folder, then rename) and
parent folders are created.

Example:
    >>> plot_confusion_matrix(np.array([[5, 1], [0, 6]]), ["cat", "dog"], "runs/pets/confusion.png")
    >>> plot_image_grid([("a.jpg", "true: cat\\npred: dog 0.62")], "runs/pets/mistakes.png")
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from headstart._io import save_figure
from headstart._validation import check_int

__all__ = ["plot_confusion_matrix", "plot_image_grid"]

DPI = 120
_PLACEHOLDER_GREY = 200


def plot_confusion_matrix(
    matrix: np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    *,
    title: str = "Confusion matrix",
    normalize: bool = False,
) -> Path:
    """Draw a confusion matrix (rows: true class, columns: predicted class) with a colour bar.

    Counts (or fractions) are written in the cells when there are at most 15 classes; with more, the colour carries
    the value and the tick labels shrink and turn to stay readable (37 classes fit).

    Args:
        matrix: Counts, shape ``(n_classes, n_classes)``; ``matrix[i, j]`` = true class i predicted as j.
        class_names: Names of the classes, in the matrix's order.
        path: Where to write the picture (format from the suffix; PNG when there is none).
        title: Title above the matrix.
        normalize: Divide each row by its total, so the diagonal shows each class's recall.

    Returns:
        The path written.
    """
    from matplotlib.figure import Figure

    matrix = np.asarray(matrix, dtype=np.float64)
    n = len(class_names)
    if matrix.ndim != 2 or matrix.shape != (n, n):
        raise ValueError(
            f"the confusion matrix must be square with one row per class name: shape ({n}, {n}) for "
            f"{n} class names; got shape {matrix.shape}."
        )
    if normalize:
        totals = matrix.sum(axis=1, keepdims=True)
        matrix = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)

    side = min(max(4.5, 0.3 * n + 2.5), 18.0)
    tick_size = 9 if n <= 15 else max(5, 9 - n // 12)
    fig = Figure(figsize=(side + 1.0, side), layout="constrained")
    ax = fig.add_subplot()
    vmax = 1.0 if normalize else max(float(matrix.max()), 1.0)
    image = ax.imshow(matrix, cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest")
    colorbar = fig.colorbar(image, ax=ax, shrink=0.8)
    colorbar.ax.tick_params(labelsize=tick_size)
    colorbar.set_label("fraction of the true class" if normalize else "images", fontsize=tick_size + 1)

    ticks = np.arange(n)
    names = [str(name) for name in class_names]
    ax.set_xticks(ticks, names, fontsize=tick_size, rotation=45 if n <= 15 else 90,
                  ha="right" if n <= 15 else "center", rotation_mode="anchor" if n <= 15 else "default")
    ax.set_yticks(ticks, names, fontsize=tick_size)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)

    if n <= 15:
        cell_size = 12 if n <= 4 else 10 if n <= 8 else 8
        for i in range(n):
            for j in range(n):
                value = matrix[i, j]
                text = f"{value:.2f}" if normalize else f"{value:.0f}"
                colour = "white" if value > 0.5 * vmax else "black"
                ax.text(j, i, text, ha="center", va="center", fontsize=cell_size, color=colour)
    return save_figure(fig, path, dpi=DPI)


def plot_image_grid(
    items: Sequence[tuple[str | Path, str]],
    path: str | Path,
    *,
    title: str | None = None,
    columns: int = 6,
    thumb_size: int = 160,
) -> Path:
    """Draw a grid of thumbnails with a caption under each (e.g. ``"true: beagle\\npred: basset_hound 0.62"``).

    An image that cannot be read shows as a grey square saying so; an empty ``items`` writes a small picture saying
    "nothing to show".

    Args:
        items: ``(image_path, caption)`` pairs, drawn left to right, top to bottom.
        path: Where to write the picture (format from the suffix; PNG when there is none).
        title: Title above the grid.
        columns: Most thumbnails per row.
        thumb_size: Longest side of each thumbnail, in pixels.

    Returns:
        The path written.
    """
    from matplotlib.figure import Figure

    check_int(columns, "columns", "plot_image_grid", low=1)
    check_int(thumb_size, "thumb_size", "plot_image_grid", low=16)

    items = list(items)
    if not items:
        fig = Figure(figsize=(3.0, 1.2))
        fig.text(0.5, 0.5, "nothing to show", ha="center", va="center", fontsize=12, color="0.35")
        if title:
            fig.suptitle(title, fontsize=11)
        return save_figure(fig, path, dpi=DPI)

    # Fixed pixel layout: square cells of thumb_size, captions below, so every row lines up whatever the photos.
    font_size = 7 if thumb_size < 200 else 8
    margin, gap = 10, 16
    wrap = max(10, int((thumb_size + gap) / (0.6 * font_size * DPI / 72)))  # characters that fit under a cell
    captions = ["\n".join(textwrap.fill(line, wrap) for line in str(caption).splitlines()) for _, caption in items]
    caption_px = max(caption.count("\n") + 1 for caption in captions) * font_size * 1.35 * DPI / 72 + 8
    title_px = 34 if title else 0
    n_columns = min(columns, len(items))
    n_rows = math.ceil(len(items) / n_columns)
    width = 2 * margin + n_columns * thumb_size + (n_columns - 1) * gap
    height = title_px + 2 * margin + n_rows * (thumb_size + caption_px) + (n_rows - 1) * gap
    fig = Figure(figsize=(width / DPI, height / DPI))
    if title:
        fig.text(0.5, 1 - (title_px / 2 + 4) / height, title, ha="center", va="center", fontsize=11)

    for index, ((image_path, _), caption) in enumerate(zip(items, captions)):
        row, column = divmod(index, n_columns)
        left = margin + column * (thumb_size + gap)
        top = title_px + margin + row * (thumb_size + caption_px + gap)
        ax = fig.add_axes((left / width, 1 - (top + thumb_size) / height, thumb_size / width, thumb_size / height))
        ax.set_axis_off()
        thumbnail = _thumbnail(image_path, thumb_size)
        if thumbnail is None:
            ax.imshow(np.full((thumb_size, thumb_size, 3), _PLACEHOLDER_GREY, dtype=np.uint8))
            ax.text(0.5, 0.5, "unreadable\nimage", transform=ax.transAxes, ha="center", va="center",
                    fontsize=font_size + 1, color="0.3")
        else:
            ax.imshow(_pad_to_square(thumbnail, thumb_size), interpolation="nearest")
        fig.text((left + thumb_size / 2) / width, 1 - (top + thumb_size + 3) / height, caption, ha="center",
                 va="top", fontsize=font_size, linespacing=1.2)
    return save_figure(fig, path, dpi=DPI)


def _thumbnail(path: str | Path, size: int) -> np.ndarray | None:
    """An upright RGB thumbnail no larger than ``size`` on its longest side, or None if the file cannot be read."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            image.draft("RGB", (size * 2, size * 2))  # JPEG: decode at a reduced scale, much faster for big photos
            image = ImageOps.exif_transpose(image).convert("RGB")
            image.thumbnail((size, size), Image.Resampling.LANCZOS)
            return np.asarray(image)
    except Exception:  # any unreadable file (missing, truncated, not an image, too big) becomes a placeholder
        return None


def _pad_to_square(thumbnail: np.ndarray, size: int) -> np.ndarray:
    """Centre a thumbnail on a white ``size`` x ``size`` canvas so every cell of the grid has the same shape."""
    canvas = np.full((size, size, 3), 255, dtype=np.uint8)
    height, width = thumbnail.shape[:2]
    top, left = (size - height) // 2, (size - width) // 2
    canvas[top : top + height, left : left + width] = thumbnail
    return canvas
