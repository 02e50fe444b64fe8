"""How attack results show themselves: the comparison figure, the robustness curve and the notebook cards
(``AttackResult.figure()``, ``_repr_html_``). Imports neither result class, so the results can call it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import headstart._display as show
from headstart._names import literal_figure

__all__ = ["amplified", "attack_card", "attack_figure", "robustness_card", "robustness_figure"]


def amplified(original: np.ndarray, adversarial: np.ndarray) -> tuple[np.ndarray, float]:
    """The perturbation scaled so its largest change is full contrast (grey = no change), and the gain used."""
    diff = adversarial.astype(np.float64) - original.astype(np.float64)
    peak = float(np.abs(diff).max()) or 1.0
    return np.clip(np.round(127.5 + diff * (127.5 / peak)), 0, 255).astype(np.uint8), 127.5 / peak


def _short(label: str) -> str:
    return label.split(",")[0][:28]


def attack_figure(result: Any) -> Any:
    """Original | amplified perturbation | adversarial, with the top-5 bars before and after underneath, as a
    matplotlib figure (``AttackResult.figure()``; a notebook shows it)."""
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
    literal_figure(fig).tight_layout()  # (measured before drawing: names drawn literally from the start)
    return fig


def robustness_figure(report: Any) -> Any:
    """Accuracy against the budget as a matplotlib figure (``Robustness.figure()``; a notebook shows it)."""
    from matplotlib.figure import Figure

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
    literal_figure(fig).tight_layout()  # (measured before drawing: names drawn literally from the start)
    return fig


def attack_card(result: Any) -> str:
    """The attack as a notebook shows it (``AttackResult._repr_html_``): the verdicts, the budget, the figure."""
    before, after = result.before, result.after
    rows = [
        ("photo", result.image),
        ("model", result.model),
        ("method", result.method),
        (
            "budget",
            "none (the lesson's descent)"
            if result.method == "lesson"
            else f"{result.norm} eps {result.eps_8bit:.3g}/255",
        ),
        ("target", result.target_label if result.target_label else "(untargeted)"),
        ("before", f"{before.label} ({before.probability:.3f})" if before else ...),
        ("after (the saved 8-bit PNG)", f"{after.label} ({after.probability:.3f})" if after else ...),
        ("success", "yes" if result.success else "no"),
        ("steps used", f"{result.steps_used} of {result.steps}"),
        (
            "largest change",
            f"{result.linf_8bit}/255 (L2 {result.l2:.3g}, PSNR {result.psnr:.1f} dB)"
            if result.psnr
            else f"{result.linf_8bit}/255",
        ),
    ]
    parts = [
        show.fields(rows),
        show.image(show.figure_png(attack_figure(result)), "original, perturbation, adversarial"),
    ]
    if result.transfer:
        rows = [
            (
                t["model"],
                f"{t['original']['label']} ({t['original']['probability']:.3f})",
                f"{t['adversarial']['label']} ({t['adversarial']['probability']:.3f})",
                t["target_probability"],
                {True: "yes", False: "no", None: "target unknown to it"}[t["carried_over"]],
            )
            for t in result.transfer
        ]
        header = ["model", "original photo", "adversarial PNG", "target probability", "carried over"]
        parts += [show.heading("Transfer to other models", 4), show.table(header, rows)]
    return show.card("attack", "Adversarial attack", *parts)


def robustness_card(report: Any) -> str:
    """The robustness curve as a notebook shows it (``Robustness._repr_html_``)."""
    linf = report.norm == "linf"
    rows = [
        (f"{e * 255:.3g}/255" if linf else f"{e:.3g}", show.percent(a), show.percent(s))
        for e, a, s in zip(report.eps, report.accuracy, report.attack_success)
    ]
    parts = [
        show.fields(
            [
                ("model", report.model),
                ("attack", f"{report.method} {report.norm}, {report.steps} steps"),
                ("photos", report.n_images),
                ("clean accuracy", show.percent(report.clean_accuracy)),
            ]
        ),
        show.table(["eps", "accuracy", "attack success"], rows),
        show.image(show.figure_png(robustness_figure(report)), "accuracy against the budget"),
    ]
    return show.card("robustness", "Robustness", *parts)
