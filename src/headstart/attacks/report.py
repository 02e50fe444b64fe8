"""What an attack leaves on disk: the verified PNG, the amplified perturbation, a figure and a JSON report.

Every file goes through :mod:`headstart._io` (atomic, the umask's permissions); the adversarial PNG is the exact
byte string that was classified, never a re-encoding.

Example:
    >>> paths = save_attack(attack("tf_efficientnet_lite0", "dog.jpg", target=284), "attacks/")
    >>> sorted(paths)
    ['adversarial', 'figure', 'json', 'perturbation']
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from headstart._io import save_figure, write_bytes_atomic, write_json
from headstart._names import literal_figure
from headstart.attacks.adversarial import AttackResult, png_bytes
from headstart.attacks.robustness_curve import Robustness


def amplified(original: np.ndarray, adversarial: np.ndarray) -> tuple[np.ndarray, float]:
    """The perturbation scaled so its largest change is full contrast (grey = no change), and the gain used."""
    diff = adversarial.astype(np.float64) - original.astype(np.float64)
    peak = float(np.abs(diff).max()) or 1.0
    return np.clip(np.round(127.5 + diff * (127.5 / peak)), 0, 255).astype(np.uint8), 127.5 / peak


def _short(label: str) -> str:
    return label.split(",")[0][:28]


def plot_attack(result: AttackResult, path: str | os.PathLike[str]) -> Path:
    """Original | amplified perturbation | adversarial, with the top-5 bars before and after underneath.

    Example:
        >>> plot_attack(result, "pug.comparison.png")
        PosixPath('pug.comparison.png')
    """
    from matplotlib.figure import Figure

    picture_of_change, gain = amplified(result.original, result.adversarial)
    fig = Figure(figsize=(13, 7.5))
    grid = fig.add_gridspec(2, 3, height_ratios=[3, 2])
    titles = [
        f"original\n{_short(result.before.label)} {result.before.probability:.2f}" if result.before else "original",
        f"perturbation ×{gain:.0f}\nL∞ {result.linf_8bit}/255, L2 {result.l2:.2f}, "
        + (f"PSNR {result.psnr:.1f} dB" if result.psnr else "no change"),
        f"adversarial ({'success' if result.success else 'failed'})\n"
        f"{_short(result.after.label)} {result.after.probability:.2f}"
        if result.after
        else "adversarial",
    ]
    for i, (picture, title) in enumerate(zip([result.original, picture_of_change, result.adversarial], titles)):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(picture)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    for i, (verdict, name) in enumerate([(result.before, "before"), (result.after, "after")]):
        if verdict is None:
            continue
        ax = fig.add_subplot(grid[1, [0, 2][i]])
        labels = [_short(l) for l, _ in verdict.top5][::-1]
        values = [p for _, p in verdict.top5][::-1]
        colours = [
            "tab:red" if result.target_label and l == _short(result.target_label) else "tab:blue" for l in labels
        ]
        bars = ax.barh(labels, values, color=colours)
        ax.bar_label(bars, labels=[f"{v:.3f}" for v in values], fontsize=8, padding=2)
        ax.set_xlim(0, 1)
        ax.set_title(f"top-5 {name}", fontsize=10)
        ax.tick_params(labelsize=8)
    target = f" → {_short(result.target_label)}" if result.target_label else " (untargeted)"
    budget = "no budget" if result.method == "lesson" else f"{result.norm} eps={result.eps * 255:.3g}/255"
    fig.suptitle(f"{result.method.upper()} ({budget}) on {result.model}{target}", fontsize=11)
    literal_figure(fig).tight_layout()  # (measured before saving: names drawn literally from the start)
    return save_figure(fig, path)


def save_attack(result: AttackResult, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``<stem>.adversarial.png`` (the verified bytes), ``<stem>.perturbation.png`` (amplified, grey = no
    change), ``<stem>.comparison.png`` and ``<stem>.attack.json`` into ``out_dir``; returns the paths by kind.

    Example:
        >>> save_attack(result, "attacks/")["adversarial"]
        PosixPath('attacks/pug_168.adversarial.png')
    """
    folder = Path(out_dir)
    stem = result.image.stem
    paths = {
        "adversarial": folder / f"{stem}.adversarial.png",
        "perturbation": folder / f"{stem}.perturbation.png",
        "figure": folder / f"{stem}.comparison.png",
        "json": folder / f"{stem}.attack.json",
    }
    write_bytes_atomic(paths["adversarial"], result.png)
    write_bytes_atomic(paths["perturbation"], png_bytes(amplified(result.original, result.adversarial)[0]))
    plot_attack(result, paths["figure"])
    result.files = {k: str(p) for k, p in paths.items()}
    write_json(paths["json"], result.to_dict())
    return paths


def save_robustness(report: Robustness, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``robustness.json`` and ``robustness.png`` (accuracy against eps in 8-bit steps) into ``out_dir``.

    Example:
        >>> save_robustness(curve, "robustness/")["curve"]
        PosixPath('robustness/robustness.png')
    """
    from matplotlib.figure import Figure

    folder = Path(out_dir)
    paths = {"json": folder / "robustness.json", "curve": folder / "robustness.png"}
    linf = report.norm == "linf"
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.plot([e * (255 if linf else 1) for e in report.eps], report.accuracy, marker="o")
    ax.set_xlabel("budget eps (linf, in 8-bit steps: ×1/255)" if linf else "budget eps (l2, 0–1 units)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(
        f"{Path(report.model).name}: {report.method.upper()} {report.steps} "
        f"step{'s' * (report.steps != 1)}, {report.n_images} photos",
        fontsize=10,
    )
    literal_figure(fig).tight_layout()  # (measured before saving: names drawn literally from the start)
    save_figure(fig, paths["curve"])
    write_json(paths["json"], report.to_dict())
    return paths


__all__ = ["amplified", "plot_attack", "save_attack", "save_robustness"]
