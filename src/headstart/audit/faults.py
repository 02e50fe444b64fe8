"""Known faults put into a copy of a data set, to measure what :func:`headstart.audit.audit` finds.

``inject_faults`` copies a folder data set under neutral file names (``img_0042.jpg``: a name must not give a fault
away), then moves some photos to a wrong class, places altered copies of test photos among the training photos
(leaks: resized, re-encoded, slightly cropped, mirrored) and mixes in images from other domains (charts, text
screenshots, signs, patterns, a portrait). It returns where every fault is, so precision and recall can be counted.
The audit's tests and ``benchmarks/audit.py`` use it; it also answers "would the audit catch this on my data?".

Example:
    >>> faults = inject_faults("photos/", "faulty/", seed=0)                        # doctest: +SKIP
    >>> report = audit(faults.data, test=faults.test)                              # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from headstart._io import atomic_path, write_bytes_atomic
from headstart.data.datasets import load_dataset

__all__ = ["COPY_KINDS", "OUTLIER_KINDS", "InjectedFaults", "altered_copy", "inject_faults", "make_outlier"]

COPY_KINDS = ("resize", "reencode", "crop", "mirror", "all")
OUTLIER_KINDS = ("line_chart", "bar_chart", "screenshot", "sign", "pattern", "portrait", "scatter_chart", "table")


@dataclass
class InjectedFaults:
    """Where the faults are. Paths are those of the new data set.

    Attributes:
        data, test: the new training folder and test folder.
        wrong_labels: photo -> (its true class, the class folder it was moved to).
        copies: altered copy in ``data`` -> (the test photo it copies, the alteration).
        outliers: image from another domain -> its kind.
    """

    data: Path
    test: Path
    wrong_labels: dict[Path, tuple[str, str]] = field(default_factory=dict)
    copies: dict[Path, tuple[Path, str]] = field(default_factory=dict)
    outliers: dict[Path, str] = field(default_factory=dict)


def altered_copy(
    source: str | os.PathLike[str], target: str | os.PathLike[str], kind: str, rng: np.random.Generator
) -> None:
    """Save ``source`` altered as ``kind`` (one of :data:`COPY_KINDS`) to ``target`` as a JPEG.

    resize: 55-80% of the size; reencode: JPEG quality 60-80; crop: 3-7% off the sides; mirror: left-right;
    all: the four together.
    """
    from PIL import Image, ImageOps

    with Image.open(source) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    if kind in ("crop", "all"):
        w, h = image.size
        left, top, right, bottom = (rng.uniform(0.0, 0.07) for _ in range(4))
        image = image.crop((int(w * left), int(h * top), int(w * (1 - right)), int(h * (1 - bottom))))
    if kind in ("resize", "all"):
        scale = rng.uniform(0.55, 0.8)
        image = image.resize(
            (max(16, int(image.width * scale)), max(16, int(image.height * scale))), Image.Resampling.LANCZOS
        )
    if kind in ("mirror", "all"):
        image = ImageOps.mirror(image)
    quality = int(rng.integers(60, 81)) if kind in ("reencode", "all") else 90
    _save_jpeg(image, target, quality)


def _save_jpeg(image, target: str | os.PathLike[str], quality: int) -> None:
    with atomic_path(target) as temporary:
        image.save(temporary, format="JPEG", quality=quality)


def _figure_image(draw, rng: np.random.Generator):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    fig = Figure(figsize=(rng.uniform(4, 6), rng.uniform(3, 4.5)), dpi=80)
    FigureCanvasAgg(fig)
    draw(fig.add_subplot(), rng)
    fig.canvas.draw()
    return Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())


def _line_chart(ax, rng):
    x = np.arange(30)
    for _ in range(int(rng.integers(1, 4))):
        ax.plot(x, np.cumsum(rng.normal(size=30)), linewidth=2)
    ax.set_title("quarterly revenue"), ax.set_xlabel("week"), ax.grid(True)


def _bar_chart(ax, rng):
    ax.bar([f"Q{i}" for i in range(1, 7)], rng.uniform(1, 10, 6), color=rng.uniform(0, 1, 3))
    ax.set_ylabel("units sold")


def _scatter_chart(ax, rng):
    ax.scatter(rng.normal(size=120), rng.normal(size=120), c=rng.uniform(size=120), s=18)
    ax.set_title("survey results")


def _text_image(
    lines: list[str], size: tuple[int, int], background: str, ink: str, font_size: int, bar: str | None = None
):
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=font_size)
    top = 4
    if bar is not None:  # a window's title bar
        draw.rectangle((0, 0, size[0], 26), fill=bar)
        top = 34
    for row, line in enumerate(lines):
        draw.text((12, top + row * int(font_size * 1.4)), line, fill=ink, font=font)
    return image


_WORDS = (
    "import numpy as np",
    "def main():",
    "    return 0",
    "Settings",
    "File  Edit  View  Help",
    "Loading...",
    "ERROR 404 page not found",
    "Total: 1,204",
    "Username",
    "Password",
    "Click here to continue",
    "for i in range(10):",
    "print(result)",
    "Terms and conditions apply",
    "Inbox (3)",
)


def make_outlier(kind: str, rng: np.random.Generator):
    """An image of another domain (a PIL image): ``kind`` is one of :data:`OUTLIER_KINDS`."""
    from PIL import Image, ImageDraw

    if kind == "line_chart":
        return _figure_image(_line_chart, rng)
    if kind == "bar_chart":
        return _figure_image(_bar_chart, rng)
    if kind == "scatter_chart":
        return _figure_image(_scatter_chart, rng)
    if kind == "screenshot":
        lines = [str(rng.choice(_WORDS)) for _ in range(int(rng.integers(8, 14)))]
        return _text_image(lines, (480, 320), "white", "black", 15, bar="#3c6eb4")
    if kind == "table":
        lines = ["  ".join(f"{v:8.2f}" for v in rng.uniform(0, 1000, 5)) for _ in range(12)]
        return _text_image(["  id      price     qty     tax    total", *lines], (460, 300), "#fafafa", "#222", 13)
    if kind == "sign":
        colour = tuple(int(c) for c in rng.integers(0, 200, 3))
        words = [str(w) for w in rng.choice(["LOBBY", "EXIT", "OPEN", "WELCOME", "SALE", "PARKING"], 2, replace=False)]
        return _text_image(words, (400, 260), colour, "white", 64)
    if kind == "pattern":
        size = 256
        y, x = np.mgrid[0:size, 0:size] / size
        freq = rng.uniform(3, 12, 2)
        waves = np.sin(2 * np.pi * (freq[0] * x + rng.uniform())) * np.cos(2 * np.pi * (freq[1] * y))
        rgb = (np.stack([waves, np.roll(waves, 40, 0), x - y], axis=-1) * 0.5 + 0.5).clip(0, 1)
        image = Image.fromarray((rgb * 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x0, y0 = rng.integers(0, size - 60, 2)
            draw.rectangle(
                (int(x0), int(y0), int(x0) + 50, int(y0) + 50),
                outline=tuple(int(c) for c in rng.integers(0, 255, 3)),
                width=4,
            )
        return image
    if kind == "portrait":
        from matplotlib import cbook

        with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as opened:
            image = opened.convert("RGB")
        w, h = image.size
        crop = rng.uniform(0.0, 0.15, 4)
        return image.crop((int(w * crop[0]), int(h * crop[1]), int(w * (1 - crop[2])), int(h * (1 - crop[3]))))
    raise ValueError(f"The 'kind' parameter of make_outlier must be one of {OUTLIER_KINDS}. Got {kind!r} instead.")


def inject_faults(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    test: str | os.PathLike[str] | None = None,
    n_wrong_labels: int = 6,
    n_copies: int = 6,
    n_outliers: int = 5,
    copy_kinds: tuple[str, ...] = COPY_KINDS,
    test_per_class: int = 1,
    seed: int = 0,
) -> InjectedFaults:
    """Copy a folder data set to ``destination/data`` (and its test photos to ``destination/test``) with faults.

    Args:
        source: a folder with one subfolder per class.
        test: its test photos (same layout); ``None``: ``test_per_class`` photos of each class of ``source`` are
            held out as the test set.
        n_wrong_labels: photos moved to another class's folder (chosen at random).
        n_copies: test photos whose altered copies (:func:`altered_copy`, kinds taken in turn from
            ``copy_kinds``) are put in the training folder of their class.
        n_outliers: images from other domains (:func:`make_outlier`, kinds in turn) put in random class folders.
        seed: the same seed gives the same faults.

    Returns:
        :class:`InjectedFaults`. Every file gets a neutral name ``img_NNNN.jpg`` (numbers shuffled).
    """
    rng = np.random.default_rng(seed)
    dataset = load_dataset(source)
    destination = Path(destination)
    data_dir, test_dir = destination / "data", destination / "test"
    if test is not None:
        train_samples, test_samples = dataset.samples, load_dataset(test).samples
    else:
        held: dict[str, list[int]] = {}
        for i in rng.permutation(len(dataset.samples)):
            picked = held.setdefault(dataset.samples[i].label, [])
            if len(picked) < test_per_class:
                picked.append(int(i))
        chosen = {i for picked in held.values() for i in picked}
        train_samples = [s for i, s in enumerate(dataset.samples) if i not in chosen]
        test_samples = [dataset.samples[i] for i in sorted(chosen)]
    names = iter(rng.permutation(100_000 if len(train_samples) + len(test_samples) < 90_000 else 10**7))

    def name():
        return f"img_{next(names):05d}.jpg"

    faults = InjectedFaults(data_dir, test_dir)
    classes = sorted({s.label for s in train_samples})

    wrong = set(rng.choice(len(train_samples), size=min(n_wrong_labels, len(train_samples)), replace=False).tolist())
    for i, sample in enumerate(train_samples):
        label = sample.label
        if i in wrong:
            label = str(rng.choice([c for c in classes if c != sample.label]))
        target = data_dir / label / name()
        write_bytes_atomic(target, Path(sample.path).read_bytes())
        if i in wrong:
            faults.wrong_labels[target] = (sample.label, label)
    test_paths = []
    for sample in test_samples:
        target = test_dir / sample.label / name()
        write_bytes_atomic(target, Path(sample.path).read_bytes())
        test_paths.append((target, sample.label))
    for k, index in enumerate(rng.choice(len(test_paths), size=min(n_copies, len(test_paths)), replace=False)):
        original, label = test_paths[int(index)]
        kind = copy_kinds[k % len(copy_kinds)]
        target = data_dir / label / name()
        altered_copy(original, target, kind, rng)
        faults.copies[target] = (original, kind)
    for k in range(n_outliers):
        kind = OUTLIER_KINDS[k % len(OUTLIER_KINDS)]
        target = data_dir / str(rng.choice(classes)) / name()
        _save_jpeg(make_outlier(kind, rng), target, 88)
        faults.outliers[target] = kind
    return faults
