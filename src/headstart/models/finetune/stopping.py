"""When fine-tuning stops and which epoch it keeps: the two rules in one place, and the words that say them.

- **Stopping** watches the validation *loss* (the mean cross-entropy each epoch's line prints): after ``patience``
  epochs in a row without a new lowest loss, the run stops. The loss moves with every photo's probability; the
  accuracy of a few validation photos moves in steps and stays flat while the network still improves.
- **Keeping** picks the epoch with the highest validation accuracy (what the saved model is judged by); between
  equal accuracies, the lower temperature-scaled loss (raw losses would favour the sharper epoch, not the better
  one: the saved head gets its temperature anyway). Epoch 0, the starting point, competes where it is a model
  (LP-FT: the probe's head on the pretrained trunk); a random start (``scratch``) does not, nor does a head
  trained from zero (its first epochs start far above the probe's loss: they race each other, not the probe).
- **Against the probe**, the kept epoch must then fix more validation photos than it breaks by more than chance
  (:func:`beats_start`, a sign test): validation of a few hundred photos moves by a photo or two from luck alone,
  and a network that wins by that little loses as often on new photos.

Example:
    >>> watch = Stopping(patience=2)
    >>> [watch.update(epoch, loss) for epoch, loss in enumerate([0.9, 0.7, 0.8, 0.75])]
    [False, False, False, True]
    >>> watch.stopped_after, watch.lowest_epoch
    (3, 1)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["KEPT_BY", "Stopping", "beats_start", "better", "calibrated_loss", "describe_stopping", "scores"]

#: How the kept epoch is chosen, in the words the run prints and records.
KEPT_BY = "the highest validation accuracy; between equal ones, the lower temperature-scaled loss"
#: A loss must fall by more than this to count as lower (the lines print three decimals).
TOLERANCE = 1e-4
#: The one-sided chance level under which a network's fixes against its breaks count as a gain over the probe.
SIGN_TEST_LEVEL = 0.05


@dataclass
class Stopping:
    """The early-stopping rule's state: the lowest validation loss so far, its epoch, and where the run stopped."""

    patience: int
    lowest_loss: float = math.inf
    lowest_epoch: int = 0
    stopped_after: int | None = None

    def update(self, epoch: int, val_loss: float) -> bool:
        """Take one epoch's validation loss; True when the run stops after it (``patience`` 0: never)."""
        if val_loss < self.lowest_loss - TOLERANCE:
            self.lowest_loss, self.lowest_epoch = float(val_loss), epoch
        elif self.patience and epoch - self.lowest_epoch >= self.patience:
            self.stopped_after = epoch
        return self.stopped_after is not None

    @classmethod
    def replayed(cls, patience: int, history: list[Any], first: int = 0) -> Stopping:
        """The state after the epochs of ``history`` (:class:`EpochRecord`\\ s) from epoch ``first`` on: what a
        resumed run goes on from, and whether it had already stopped."""
        watch = cls(patience)
        for record in history:
            if record.epoch >= first and record.val_loss is not None and watch.stopped_after is None:
                watch.update(record.epoch, record.val_loss)
        return watch

    def to_dict(self, epochs: int, kept: int) -> dict[str, Any]:
        """What the report records (``stopped_after`` None: the run trained every epoch it planned)."""
        return {
            "stopped_after": self.stopped_after,
            "epochs": epochs,
            "patience": self.patience,
            "monitor": "validation loss",
            "lowest_loss": None if math.isinf(self.lowest_loss) else round(self.lowest_loss, 6),
            "lowest_loss_epoch": self.lowest_epoch,
            "kept_epoch": kept,
            "kept_by": KEPT_BY,
        }


def describe_stopping(stopping: dict[str, Any]) -> str:
    """One line for the run's output: where it stopped and why, and which epoch it kept by what.

    Example:
        >>> describe_stopping({"stopped_after": 3, "epochs": 10, "patience": 3, "lowest_loss": 0.41,
        ...                    "lowest_loss_epoch": 0, "kept_epoch": 0, "kept_by": KEPT_BY})
        'stopped after epoch 3 of 10: validation loss did not improve for 3 epochs (lowest 0.410, at epoch 0); kept epoch 0 (the highest validation accuracy; between equal ones, the lower temperature-scaled loss)'
    """
    kept = f"kept epoch {stopping['kept_epoch']} ({stopping['kept_by']})"
    if stopping.get("stopped_after") is None:
        return f"trained all {stopping['epochs']} epochs; {kept}"
    lowest = stopping["lowest_loss"]
    return (
        f"stopped after epoch {stopping['stopped_after']} of {stopping['epochs']}: validation loss did not improve "
        f"for {stopping['patience']} epoch{'s' if stopping['patience'] != 1 else ''} (lowest "
        f"{'?' if lowest is None else f'{lowest:.3f}'}, at epoch {stopping['lowest_loss_epoch']}); {kept}"
    )


def beats_start(logits, start_logits, y) -> dict[str, Any]:
    """Whether validation ``logits`` beat the starting point's (the probe's): the photos each gets right that the
    other misses, and a one-sided sign test on them (``chance``: the probability of at least that many fixes out of
    the changed photos by luck). ``gains``: the chance is under :data:`SIGN_TEST_LEVEL`.

    Example:
        >>> y = np.array([0, 0, 0, 0, 0, 1])
        >>> start, after = np.eye(2)[[1, 1, 1, 1, 1, 1]], np.eye(2)[[0, 0, 0, 0, 0, 1]]
        >>> beats_start(after, start, y)["gains"], beats_start(after[:3], start[:3], y[:3])["gains"]
        (True, False)
    """
    right, was_right = np.asarray(logits).argmax(1) == y, np.asarray(start_logits).argmax(1) == y
    fixes, breaks = int((right & ~was_right).sum()), int((~right & was_right).sum())
    n = fixes + breaks
    chance = sum(math.comb(n, k) for k in range(fixes, n + 1)) / 2**n if n else 1.0
    return {"fixes": fixes, "breaks": breaks, "chance": round(chance, 6), "gains": chance < SIGN_TEST_LEVEL}


def better(logits, y, accuracy: float, best_logits, best_accuracy: float) -> bool:
    """Whether an epoch beats the best kept so far (see the module's docstring): higher accuracy, or the same
    accuracy and a lower log-loss once each is temperature-scaled."""
    if accuracy != best_accuracy or best_logits is None:
        return accuracy > best_accuracy
    return calibrated_loss(logits, y) < calibrated_loss(best_logits, y) - TOLERANCE


def calibrated_loss(logits, y) -> float:
    """The validation log-loss at the temperature that minimises it."""
    from headstart.models.temperature import fit_temperature

    t = fit_temperature(logits, y, guard=False)
    return scores(np.asarray(logits, dtype=np.float64) / t, y)[0]


def scores(logits, y) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of validation logits ``(n, n_classes)`` against class indices."""
    import torch

    if len(y) == 0:
        return float("nan"), float("nan")
    t = torch.from_numpy(np.ascontiguousarray(logits))
    loss = float(torch.nn.functional.cross_entropy(t, torch.from_numpy(y)))
    return loss, float((logits.argmax(axis=1) == y).mean())
