"""Checkpoints of a fine-tuning run, and continuing from one: which checkpoint a resumed run goes on from, what it
writes each epoch (the tensors, and a small JSON of its progress that ``headstart runs`` reads without torch), and
what stands in for the photos when nothing is left to train (no frozen stages computed for nothing).

Example:
    >>> state = resumable(run / "checkpoint.pt", "cpu", validating=True, schedule=8, epochs=8)
    >>> save_checkpoint(run / "checkpoint.pt", state, epochs_done=3, epochs=8, stopped_after=None)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from headstart._io import atomic_path, write_json

__all__ = ["NothingLeft", "resumable", "save_checkpoint"]


def resumable(checkpoint: Path | None, device: str, *, validating: bool, schedule: int, epochs: int) -> dict | None:
    """The checkpoint a resumed run goes on from, or None (none there; a refit's of another schedule, or past the
    epochs it must stop after, is not continued)."""
    import torch

    if checkpoint is None or not checkpoint.is_file():
        return None
    state = torch.load(checkpoint, map_location=device, weights_only=True)  # tensors and plain types only
    if validating or (int(state.get("schedule_epochs", -1)) == schedule and int(state["epoch"]) < epochs):
        return state
    return None


def save_checkpoint(checkpoint: Path, state: dict[str, Any], **progress: Any) -> None:
    """Replace ``checkpoint`` (``…checkpoint.pt``) whole, and its progress beside it (``…checkpoint.json``:
    ``epochs_done``, ``epochs``, ``stopped_after``)."""
    import torch

    with atomic_path(checkpoint) as temporary:
        torch.save(state, temporary)
    write_json(checkpoint.with_suffix(".json"), progress)


class NothingLeft:
    """The photos of a resumed run that has nothing left to train: only the validation labels are needed."""

    def __init__(self, network: Any, val_labels: Any) -> None:
        self.module, self.steps_per_epoch, self.val_labels = network, 1, val_labels

    def describe(self) -> dict[str, Any]:
        return {"cached": False, "resumed": "nothing left to train"}
