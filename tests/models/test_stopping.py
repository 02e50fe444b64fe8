"""When fine-tuning stops and which epoch it keeps (models/finetune/stopping.py), and how curves.png shows it."""

from __future__ import annotations

import pytest

from headstart.models.finetune.parts import EpochRecord, curves_figure
from headstart.models.finetune.stopping import KEPT_BY, Stopping, beats_start, describe_stopping


def records(losses: list[float], accuracies: list[float]) -> list[EpochRecord]:
    """Epochs 0..n with these validation losses and accuracies (epoch 0 untrained, as the loop records it)."""
    return [
        EpochRecord(e, None if e == 0 else 0.5, None if e == 0 else 0.9, loss, acc, 1e-4, 1.0)
        for e, (loss, acc) in enumerate(zip(losses, accuracies, strict=True))
    ]


@pytest.mark.parametrize(
    ("losses", "accuracies", "patience", "stopped_after", "lowest"),
    [
        # accuracy flat from epoch 1 on while the loss still falls: it goes on (an accuracy rule stopped at 3)
        ([0.9, 0.7, 0.6, 0.5, 0.45, 0.44], [0.5, 0.8, 0.8, 0.8, 0.8, 0.8], 2, None, 5),
        # the loss rises after epoch 1 while the accuracy still climbs: it stops, `patience` epochs after the lowest
        ([0.9, 0.5, 0.6, 0.7, 0.8, 0.9], [0.5, 0.6, 0.7, 0.8, 0.9, 0.9], 3, 4, 1),
        ([0.1, 0.2, 0.3], [1.0, 1.0, 1.0], 1, 1, 0),  # the start was best: one epoch without improvement
        ([0.1, 0.2, 0.3], [1.0, 1.0, 1.0], 0, None, 0),  # patience 0: never stops
        ([0.5, 0.5, 0.49995, 0.5], [0.5, 0.5, 0.5, 0.5], 2, 2, 0),  # a fall within the tolerance is no fall
    ],
)
def test_the_run_stops_on_validation_loss_not_accuracy(losses, accuracies, patience, stopped_after, lowest) -> None:
    watch = Stopping.replayed(patience, records(losses, accuracies))
    assert watch.stopped_after == stopped_after
    assert watch.lowest_epoch == lowest and watch.lowest_loss == losses[lowest]


def test_a_resumed_run_replays_its_history_to_the_same_state() -> None:
    history = records([0.9, 0.5, 0.6, 0.7, 0.8], [0.5, 0.6, 0.7, 0.8, 0.9])
    live = Stopping(3)
    stops = [live.update(r.epoch, r.val_loss) for r in history]
    assert stops == [False, False, False, False, True]
    assert Stopping.replayed(3, history) == live, "a continuation knows it had stopped (it trains no further epoch)"


def test_the_stop_is_said_with_its_reason_and_the_epoch_kept_by_what() -> None:
    watch = Stopping.replayed(3, records([0.9, 0.5, 0.6, 0.7, 0.8], [0.5, 0.6, 0.7, 0.8, 0.9]))
    said = describe_stopping(watch.to_dict(10, kept=4))
    assert said == (
        "stopped after epoch 4 of 10: validation loss did not improve for 3 epochs (lowest 0.500, at epoch 1); "
        f"kept epoch 4 ({KEPT_BY})"
    )
    assert describe_stopping(Stopping(3).to_dict(10, kept=2)).startswith("trained all 10 epochs; kept epoch 2 (")
    assert Stopping(3).to_dict(10, kept=0)["lowest_loss"] is None


@pytest.mark.parametrize("kept", [0, 2])
def test_curves_mark_the_kept_epoch_and_accuracy_stays_within_0_and_1(kept: int) -> None:
    figure = curves_figure(records([0.9, 0.5, 0.6, 0.7], [1.0, 1.0, 0.5, 1.0]), kept=kept)
    accuracy, loss = figure.axes
    assert accuracy.get_ylim() == (0.0, 1.0), "not 1.04 because a point sits at 1.0"
    for ax in (accuracy, loss):
        marks = [line for line in ax.get_lines() if list(line.get_xdata()) == [kept, kept]]
        assert len(marks) == 1 and marks[0].get_label() == f"kept: epoch {kept}"
    assert all(line.get_label() != "kept" for line in curves_figure(records([0.9], [0.5])).axes[0].get_lines())


@pytest.mark.parametrize(
    ("fixes", "breaks", "gains"),
    [(5, 0, True), (4, 0, False), (6, 1, False), (7, 1, True), (1, 0, False), (0, 0, False), (10, 10, False)],
)
def test_a_network_beats_the_probe_only_by_more_fixes_than_luck_gives(fixes: int, breaks: int, gains: bool) -> None:
    """A one-sided sign test at 5% on the validation photos each gets right that the other misses: 5 of 5 changes
    count (chance 1/32), 4 of 4 (1/16) and 6 of 7 (8/128) do not, 7 of 8 (9/256) does."""
    import numpy as np

    same = 20  # photos both get right or both miss do not count
    y = np.zeros(fixes + breaks + same, dtype=np.int64)
    probe = np.r_[np.ones(fixes), np.zeros(breaks), np.zeros(same)].astype(int)  # 1 = wrong
    network = np.r_[np.zeros(fixes), np.ones(breaks), np.zeros(same)].astype(int)
    verdict = beats_start(np.eye(2)[network], np.eye(2)[probe], y)
    assert (verdict["fixes"], verdict["breaks"], verdict["gains"]) == (fixes, breaks, gains)


def test_a_head_from_zero_is_watched_from_epoch_1() -> None:
    history = records([0.1, 2.0, 1.5, 1.6], [0.9, 0.3, 0.6, 0.6])
    assert Stopping.replayed(1, history).stopped_after == 1, "from epoch 0: the probe's low loss stops it at once"
    watch = Stopping.replayed(1, history, first=1)
    assert watch.stopped_after == 3 and watch.lowest_epoch == 2
