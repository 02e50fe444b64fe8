"""Pictures people look at: confusion matrices and captioned thumbnail grids, written as PNG files.

matplotlib is imported inside each function (it costs a noticeable fraction of a second) and used through its
object-oriented ``Figure`` API, which renders with Agg whatever backend the caller's pyplot uses; nothing here
touches pyplot's global state. Files are written atomically (temporary name in the same folder, then rename) and
parent folders are created.

Every text is measured before the figure is laid out, so titles and captions fit whatever their length (a grid of
one photo widens for its title). Axes that count (photos, epochs) get whole-number ticks (:func:`integer_axis`);
axes of accuracies run from 0 to 1 (:func:`fraction_axis`): other modules' plots use the same two helpers.

Example:
    >>> plot_confusion_matrix(np.array([[5, 1], [0, 6]]), ["cat", "dog"], "runs/pets/confusion.png")
    >>> plot_image_grid([("a.jpg", "true: cat\\npred: dog 0.62")], "runs/pets/mistakes.png")
"""

from __future__ import annotations

import math
import textwrap
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from headstart._io import save_figure
from headstart._validation import check_int

__all__ = ["confusion_figure", "fraction_axis", "integer_axis", "plot_confusion_matrix", "plot_image_grid"]

DPI = 120
_PLACEHOLDER_GREY = 200
_TITLE_SIZE = 11
_MAX_TITLE_PX = 1400  # a longer title wraps instead of widening the picture further


def integer_axis(axis: Any) -> Any:
    """Whole-number ticks on an axis that counts (photos, epochs, images per class): no 2.5 epochs.

    Example:
        >>> integer_axis(ax.xaxis)  # doctest: +SKIP
    """
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))
    return axis


def fraction_axis(ax: Any, which: str = "y") -> Any:
    """An accuracy (or any share) axis from 0 to 1 exactly: not to 1.04 because a point sits at 1.0. Points on the
    edges are drawn whole rather than cut in half.

    Example:
        >>> fraction_axis(ax)  # doctest: +SKIP
    """
    (ax.set_ylim if which == "y" else ax.set_xlim)(0.0, 1.0)
    for line in ax.get_lines():
        line.set_clip_on(False)
    return ax


def _text_px(text: str, size: float) -> float:
    """Width in pixels (at DPI) of the widest line of ``text`` set in the default font at ``size`` points."""
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.font_manager import FontProperties

    renderer = RendererAgg(1, 1, DPI)
    font = FontProperties(size=size)
    lines = text.splitlines() or [""]
    return max(renderer.get_text_width_height_descent(line, font, ismath=False)[0] for line in lines)


def _fit(text: str, max_px: float, size: float) -> str:
    """``text`` wrapped (words kept whole where they fit) so that every line is at most ``max_px`` wide."""
    paragraphs = str(text).splitlines() or [""]
    out = []
    for paragraph in paragraphs:
        width = max(1, len(paragraph))
        wrapped = paragraph
        while width > 1 and _text_px(wrapped, size) > max_px:
            width -= max(1, width // 8)
            wrapped = textwrap.fill(paragraph, width, break_long_words=True, break_on_hyphens=False)
        out.append(wrapped)
    return "\n".join(out)


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
    the value and the tick labels shrink and turn to stay readable (37 classes fit). The colour bar of counts has
    whole-number ticks; that of fractions runs from 0 to 1.

    Args:
        matrix: Counts, shape ``(n_classes, n_classes)``; ``matrix[i, j]`` = true class i predicted as j.
        class_names: Names of the classes, in the matrix's order.
        path: Where to write the picture (format from the suffix; PNG when there is none).
        title: Title above the matrix.
        normalize: Divide each row by its total, so the diagonal shows each class's recall.

    Returns:
        The path written.

    Example:
        >>> plot_confusion_matrix(np.array([[5, 1], [0, 6]]), ["cat", "dog"], "cm.png")  # doctest: +SKIP
        PosixPath('cm.png')
    """
    return save_figure(_confusion_figure(matrix, class_names, title=title, normalize=normalize), path, dpi=DPI)


def confusion_figure(
    matrix: np.ndarray, class_names: Sequence[str], *, title: str = "Confusion matrix", normalize: bool = False
) -> Any:
    """The picture :func:`plot_confusion_matrix` writes, as a matplotlib figure (a notebook shows it)."""
    from headstart._names import literal_figure

    return literal_figure(_confusion_figure(matrix, class_names, title=title, normalize=normalize))


def _confusion_figure(matrix: np.ndarray, class_names: Sequence[str], *, title: str, normalize: bool) -> Any:
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
    if not normalize:
        integer_axis(colorbar.ax.yaxis)  # counts of photos: 0, 2, 4, never 2.5

    ticks = np.arange(n)
    names = [str(name) for name in class_names]
    ax.set_xticks(
        ticks,
        names,
        fontsize=tick_size,
        rotation=45 if n <= 15 else 90,
        ha="right" if n <= 15 else "center",
        rotation_mode="anchor" if n <= 15 else "default",
    )
    ax.set_yticks(ticks, names, fontsize=tick_size)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(_fit(title, (side + 1.0) * DPI - 40, _TITLE_SIZE), fontsize=_TITLE_SIZE, parse_math=False)

    if n <= 15:
        cell_size = 12 if n <= 4 else 10 if n <= 8 else 8
        for i in range(n):
            for j in range(n):
                value = matrix[i, j]
                text = f"{value:.2f}" if normalize else f"{value:.0f}"
                colour = "white" if value > 0.5 * vmax else "black"
                ax.text(j, i, text, ha="center", va="center", fontsize=cell_size, color=colour)
    return fig


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
    "nothing to show". The picture widens for a title longer than the grid (a grid of one photo keeps its whole
    title), and captions wrap to their cell.

    Args:
        items: ``(image_path, caption)`` pairs, drawn left to right, top to bottom.
        path: Where to write the picture (format from the suffix; PNG when there is none).
        title: Title above the grid.
        columns: Most thumbnails per row.
        thumb_size: Longest side of each thumbnail, in pixels.

    Returns:
        The path written.

    Example:
        >>> plot_image_grid([("a.jpg", "true: cat\\npred: dog 0.62")], "mistakes.png", title="Misclassified: 1")
        PosixPath('mistakes.png')
    """
    check_int(columns, "columns", "plot_image_grid", low=1)
    check_int(thumb_size, "thumb_size", "plot_image_grid", low=16)
    return save_figure(
        _image_grid_figure(list(items), title=title, columns=columns, thumb_size=thumb_size), path, dpi=DPI
    )


def _image_grid_figure(items: list[tuple[str | Path, str]], *, title: str | None, columns: int, thumb_size: int) -> Any:
    from matplotlib.figure import Figure

    margin, gap = 10, 16
    if not items:
        width = max(3.0 * DPI, (_text_px(title, _TITLE_SIZE) + 2 * margin) if title else 0.0)
        fig = Figure(figsize=(width / DPI, 1.2))
        fig.text(0.5, 0.5, "nothing to show", ha="center", va="center", fontsize=12, color="0.35")
        if title:
            fig.suptitle(_fit(title, _MAX_TITLE_PX, _TITLE_SIZE), fontsize=_TITLE_SIZE, parse_math=False)
        return fig

    # Fixed pixel layout: square cells of thumb_size, captions below, so every row lines up whatever the photos.
    font_size = 7 if thumb_size < 200 else 8
    captions = [_fit(str(caption), thumb_size + gap - 4, font_size) for _, caption in items]
    line_px = font_size * 1.2 * DPI / 72
    caption_px = max(caption.count("\n") + 1 for caption in captions) * line_px + 10
    n_columns = min(columns, len(items))
    n_rows = math.ceil(len(items) / n_columns)
    grid_width = 2 * margin + n_columns * thumb_size + (n_columns - 1) * gap
    title_text, title_px = None, 0.0
    if title:
        title_text = _fit(title, max(grid_width, _MAX_TITLE_PX) - 2 * margin, _TITLE_SIZE)
        title_px = (title_text.count("\n") + 1) * _TITLE_SIZE * 1.25 * DPI / 72 + 14
    width = max(grid_width, math.ceil(_text_px(title_text, _TITLE_SIZE)) + 2 * margin if title_text else 0)
    offset = (width - grid_width) / 2  # the grid is centred under a title wider than itself
    height = title_px + 2 * margin + n_rows * (thumb_size + caption_px) + (n_rows - 1) * gap
    fig = Figure(figsize=(width / DPI, height / DPI))
    if title_text:
        fig.text(
            0.5,
            1 - (margin / 2 + title_px / 2) / height,
            title_text,
            ha="center",
            va="center",
            fontsize=_TITLE_SIZE,
            linespacing=1.25,
            parse_math=False,
        )

    for index, ((image_path, _), caption) in enumerate(zip(items, captions)):
        row, column = divmod(index, n_columns)
        left = offset + margin + column * (thumb_size + gap)
        top = title_px + margin + row * (thumb_size + caption_px + gap)
        ax = fig.add_axes((left / width, 1 - (top + thumb_size) / height, thumb_size / width, thumb_size / height))
        ax.set_axis_off()
        thumbnail = _thumbnail(image_path, thumb_size)
        if thumbnail is None:
            ax.imshow(np.full((thumb_size, thumb_size, 3), _PLACEHOLDER_GREY, dtype=np.uint8))
            ax.text(
                0.5,
                0.5,
                "unreadable\nimage",
                transform=ax.transAxes,
                ha="center",
                va="center",
                fontsize=font_size + 1,
                color="0.3",
            )
        else:
            ax.imshow(_pad_to_square(thumbnail, thumb_size), interpolation="nearest")
        fig.text(
            (left + thumb_size / 2) / width,
            1 - (top + thumb_size + 3) / height,
            caption,
            ha="center",
            va="top",
            fontsize=font_size,
            linespacing=1.2,
            parse_math=False,
        )
    return fig


def _thumbnail(path: str | Path, size: int) -> np.ndarray | None:
    """An upright RGB thumbnail no larger than ``size`` on its longest side, or None if the file cannot be read.

    Decoded by :func:`headstart.data.images.load_image` (bombs refused, JPEGs at draft scale), not by Pillow
    directly: a picture of the mistakes must not be the one place a hostile file gets through.
    """
    from PIL import Image

    from headstart.data.images import SmallImageWarning, load_image
    from headstart.errors import UnusableImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SmallImageWarning)  # (said when the photo was first decoded)
            image = load_image(path, draft_size=(size * 2, size * 2))
    except UnusableImageError:  # missing, truncated, not an image, too big: a placeholder
        return None
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    return np.asarray(image)


def _pad_to_square(thumbnail: np.ndarray, size: int) -> np.ndarray:
    """Centre a thumbnail on a white ``size`` x ``size`` canvas so every cell of the grid has the same shape."""
    canvas = np.full((size, size, 3), 255, dtype=np.uint8)
    height, width = thumbnail.shape[:2]
    top, left = (size - height) // 2, (size - width) // 2
    canvas[top : top + height, left : left + width] = thumbnail
    return canvas
