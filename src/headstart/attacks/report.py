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

from headstart._console import say
from headstart._io import save_figure, write_bytes_atomic, write_json
from headstart.attacks.adversarial import AttackResult, png_bytes
from headstart.attacks.display import amplified, attack_figure, robustness_figure
from headstart.attacks.robustness_curve import Robustness


def plot_attack(result: AttackResult, path: str | os.PathLike[str]) -> Path:
    """Write :func:`attack_figure` to ``path``.

    Example:
        >>> plot_attack(result, "pug.comparison.png")
        PosixPath('pug.comparison.png')
    """
    return save_figure(attack_figure(result), path)


def save_attack(result: AttackResult, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``<stem>.adversarial.png`` (the verified bytes), ``<stem>.perturbation.png`` (amplified, grey = no
    change), ``<stem>.comparison.png`` and ``<stem>.attack.json`` into ``out_dir``; returns the paths by kind.
    The names come from the photo alone, so an earlier attack on a photo of that name is replaced, with a note.

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
    earlier = [p.name for p in paths.values() if p.is_file()]
    if earlier:  # (files are named after the photo alone: another target, model or method on it lands here too)
        say(
            f"replacing the earlier attack on {stem} in {folder} ({', '.join(earlier)}); "
            "--out another folder keeps both"
        )
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
    folder = Path(out_dir)
    paths = {"json": folder / "robustness.json", "curve": folder / "robustness.png"}
    save_figure(robustness_figure(report), paths["curve"])
    write_json(paths["json"], report.to_dict())
    return paths


__all__ = ["amplified", "plot_attack", "save_attack", "save_robustness"]
