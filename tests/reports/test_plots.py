"""headstart.reports.plots: confusion matrices and thumbnail grids come out as valid, sensibly sized pictures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from headstart.reports.plots import plot_confusion_matrix, plot_image_grid

SAMPLE = Path(__file__).resolve().parents[2] / "src" / "headstart" / "sample_data" / "pets"


def _open_png(path: Path) -> Image.Image:
    assert path.is_file(), path
    image = Image.open(path)
    image.verify()  # raises on a damaged file
    image = Image.open(path)
    assert image.format == "PNG"
    return image


def _files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("n_classes,normalize", [(2, False), (12, True), (37, False), (37, True)])
def test_confusion_matrix(tmp_path, n_classes, normalize):
    rng = np.random.default_rng(0)
    matrix = np.diag(rng.integers(5, 30, n_classes)) + rng.poisson(0.7, (n_classes, n_classes))
    names = [f"class_name_{i:02d}_long" for i in range(n_classes)]
    path = plot_confusion_matrix(matrix, names, tmp_path / "deep" / "cm.png", normalize=normalize, title="Test set")
    assert path == tmp_path / "deep" / "cm.png"
    width, height = _open_png(path).size
    assert 400 <= width <= 2400 and 400 <= height <= 2400, (width, height)
    if n_classes == 37:
        assert width >= 1200, width  # room for 37 labels
    assert _files_in(path.parent) == ["cm.png"]  # no temporary file left behind


def test_confusion_matrix_with_an_empty_row_and_a_shape_mismatch(tmp_path):
    matrix = np.array([[3, 1, 0], [0, 0, 0], [1, 0, 4]])
    _open_png(plot_confusion_matrix(matrix, ["a", "b", "c"], tmp_path / "cm.png", normalize=True))
    with pytest.raises(ValueError, match=r"shape \(2, 2\) for 2 class names; got shape \(3, 3\)"):
        plot_confusion_matrix(matrix, ["a", "b"], tmp_path / "bad.png")


def test_confusion_matrix_overwrites_atomically(tmp_path):
    path = tmp_path / "cm.png"
    path.write_bytes(b"old")
    plot_confusion_matrix(np.eye(2), ["a", "b"], path)
    _open_png(path)
    assert _files_in(tmp_path) == ["cm.png"]


def test_image_grid_with_a_missing_and_a_broken_image(tmp_path):
    photos = sorted(SAMPLE.glob("test/*/*.jpg"))[:7]
    assert photos, f"no sample photos under {SAMPLE}"
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(photos[0].read_bytes()[:200])
    items = [(photo, f"true: {photo.parent.name}\npred: basset_hound 0.62") for photo in photos]
    items += [(tmp_path / "missing.jpg", "true: pug\npred: beagle 0.51"), (broken, "broken")]

    path = plot_image_grid(items, tmp_path / "out" / "mistakes.png", title="Mistakes", columns=4, thumb_size=96)
    width, height = _open_png(path).size
    assert 4 * 96 <= width <= 4 * 96 + 200, width  # 4 columns of 96 px plus margins
    assert 3 * 96 <= height <= 3 * 96 + 300, height  # 3 rows with captions and a title
    assert _files_in(path.parent) == ["mistakes.png"]


def test_image_grid_single_item_and_empty(tmp_path):
    photo = next(SAMPLE.glob("train/*/*.jpg"))
    one = _open_png(plot_image_grid([(photo, "x")], tmp_path / "one.png"))
    assert one.size[0] < 300, one.size  # one column, not six

    empty = _open_png(plot_image_grid([], tmp_path / "empty.png", title="Mistakes"))
    assert empty.size[0] < 600 and empty.size[1] < 300, empty.size


def test_image_grid_rejects_bad_layout(tmp_path):
    with pytest.raises(
        ValueError, match=r"^The 'columns' parameter of plot_image_grid must be an int in \[1, inf\)\. Got 0 "
    ):
        plot_image_grid([], tmp_path / "x.png", columns=0)
    with pytest.raises(
        ValueError, match=r"^The 'thumb_size' parameter of plot_image_grid must be an int in \[16, inf\)"
    ):
        plot_image_grid([], tmp_path / "x.png", thumb_size=2)
    assert not (tmp_path / "x.png").exists()


def test_importing_plots_needs_neither_matplotlib_nor_torch():
    code = "import sys, headstart.reports.plots; print(*(m in sys.modules for m in ('torch', 'timm', 'matplotlib')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False", "False"], out


# --- every text fits; counts are whole; accuracies run 0..1 (issue 11) --------------------------------------------


def _texts_outside(fig) -> list[tuple[str, tuple[float, float, float, float]]]:
    """The texts of a rendered figure that reach past its edges (in pixels), with their extents."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    width, height = fig.bbox.width, fig.bbox.height
    outside = []
    for text in fig.findobj(lambda artist: type(artist).__name__ == "Text"):
        if not text.get_visible() or not text.get_text():
            continue
        box = text.get_window_extent(renderer)
        if box.x0 < -0.5 or box.y0 < -0.5 or box.x1 > width + 0.5 or box.y1 > height + 0.5:
            outside.append((text.get_text(), (box.x0, box.y0, box.x1, box.y1)))
    return outside


@pytest.mark.slow
@pytest.mark.parametrize("n_photos", [1, 2, 7])
def test_grid_titles_and_captions_fit_inside_the_picture(tmp_path, n_photos):
    """misclassified.png with one photo clipped its title to 'sclassified, 24 photos'."""
    from headstart.reports.plots import _image_grid_figure

    photos = sorted(SAMPLE.glob("test/*/*.jpg"))[:n_photos]
    items = [(p, "true: american_pit_bull_terrier\npred: staffordshire_bull_terrier 0.51") for p in photos]
    fig = _image_grid_figure(items, title="Misclassified, validation (24 photos): 1", columns=6, thumb_size=160)
    assert _texts_outside(fig) == []
    very_long = "Misclassified, " + "a very long data set name " * 12
    assert _texts_outside(_image_grid_figure(items, title=very_long, columns=6, thumb_size=96)) == []
    assert _texts_outside(_image_grid_figure([], title=very_long, columns=6, thumb_size=96)) == []

    path = plot_image_grid(items, tmp_path / "misclassified.png", title="Misclassified, validation (24 photos): 1")
    pixels = np.asarray(_open_png(path).convert("L"))
    title_rows = pixels[:30]
    assert (title_rows < 128).any(), "the title was not drawn"
    assert title_rows[:, :4].min() > 200 and title_rows[:, -4:].min() > 200, "the title touches the picture's edge"


def test_confusion_matrix_counts_have_whole_ticks_and_its_title_fits():
    from headstart.reports.plots import _confusion_figure

    for matrix in (np.array([[3, 0], [1, 2]]), np.array([[1, 0], [0, 1]]), np.array([[37, 5], [2, 44]])):
        title = "Confusion matrix, validation (24 photos)"
        fig = _confusion_figure(matrix, ["cat", "dog"], title=title, normalize=False)
        colorbar_ax = fig.axes[1]
        ticks = [t for t in colorbar_ax.get_yticks() if 0 <= t <= matrix.max()]
        assert ticks and all(float(t).is_integer() for t in ticks), f"{matrix.max()} images: ticks {ticks}"
        assert _texts_outside(fig) == []
    fig = _confusion_figure(np.array([[3, 1], [1, 2]]), ["cat", "dog"], title="x " * 80, normalize=True)
    assert _texts_outside(fig) == []
    assert tuple(fig.axes[1].get_ylim()) == (0.0, 1.0)


def test_count_and_accuracy_axes():
    """The two helpers every plot of epochs and accuracies uses: whole epochs, accuracy from 0 to 1 exactly."""
    from matplotlib.figure import Figure

    from headstart.reports import fraction_axis, integer_axis

    fig = Figure()
    ax = fig.add_subplot()
    ax.plot([0, 1, 2, 3], [0.55, 0.9, 1.0, 1.0], "o-")
    assert ax.get_ylim()[1] > 1.0, "test setup: matplotlib's own margin goes past 1"
    integer_axis(ax.xaxis)
    fraction_axis(ax)
    assert ax.get_ylim() == (0.0, 1.0)
    epochs = [t for t in ax.get_xticks() if 0 <= t <= 3]
    assert epochs and all(float(t).is_integer() for t in epochs), epochs
    assert not ax.get_lines()[0].get_clip_on(), "a point at 1.0 would be cut in half"
