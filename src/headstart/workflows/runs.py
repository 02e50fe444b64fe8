"""Run folders of fine-tuning: what a run was asked, continuing one (``resume``), and listing them.

A network run (``method="finetune"`` or ``"scratch"``) writes what it was asked into its run folder's
``config.json`` before its first epoch: the data, the settings, and its model file (as given, and relative to the
folder, so the two moved together stay paired). The end of the run replaces that file with the full record
(``run_id`` among it). ``resume`` reads it back, by one rule:

- what the resumed call leaves out comes from the folder, the model file too; what it gives must equal the
  folder's, else :class:`ResumeError` names every difference, and nothing is written;
- a missing folder, or one that holds no run started here, is a :class:`ResumeError`; a run that finished is
  :class:`NothingToResume`;
- a fresh run refuses a folder that holds an interrupted run (:func:`check_fresh_start`): it would replace it.

Example:
    >>> asked = resume_request("pets-ft-run", {"data": "/photos"})
    >>> asked["out"], asked["method"]
    ('pets-ft.safetensors', 'finetune')
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from headstart._io import write_json
from headstart.errors import HeadstartError

__all__ = [
    "COMPARED",
    "NothingToResume",
    "ResumeError",
    "check_fresh_start",
    "describe_run",
    "forget_checkpoints",
    "list_runs",
    "resume_request",
    "start_run",
]

RECORD = "config.json"
#: What a continuation must share with its run; the rest (device, cache, batch size, progress) is how to run.
COMPARED = (
    "data",
    "split",
    "method",
    "backbone",
    "weights",
    "val_fraction",
    "seed",
    "refit",
    "precision",
    "flip_average",
    "finetune",
    "out",
)
NETWORK_METHODS = ("finetune", "scratch")


class ResumeError(HeadstartError):
    """A run folder that cannot be continued by this call (missing, not a run, or of other settings)."""


class NothingToResume(HeadstartError):
    """The run finished: its model file was written; there is nothing left to continue."""


#: What a network run leaves in its folder to be continued; a new run there starts without them.
CHECKPOINTS = (
    "checkpoint.pt",
    "checkpoint.json",
    "refit-checkpoint.pt",
    "refit-checkpoint.json",
    "refit-metrics.jsonl",
)


def start_run(folder: str | os.PathLike[str], asked: dict[str, Any]) -> Path:
    """Write what a network run was asked into its run folder's ``config.json``, before its first epoch (the
    checkpoints of the finished run it replaces go: a continuation must never pick up another run's epochs)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    forget_checkpoints(folder)
    return write_json(folder / RECORD, {**asked, "model": _model_from(folder, asked["out"])})


def forget_checkpoints(folder: str | os.PathLike[str]) -> None:
    """Remove a run folder's checkpoints: what a run that starts afresh there must not continue (a sweep run again
    starts its variants afresh: it has no ``--resume``)."""
    for name in CHECKPOINTS:
        (Path(folder) / name).unlink(missing_ok=True)


def check_fresh_start(folder: str | os.PathLike[str]) -> None:
    """Refuse to start a new run in a folder holding an interrupted one with epochs done: that would replace them.
    (One interrupted before its first epoch has nothing to lose.)"""
    run = describe_run(folder)
    if run is not None and run["resumable"] and (Path(folder) / "checkpoint.pt").is_file():
        raise ResumeError(
            f"{folder} holds an interrupted run ({run['state']}; {run['progress']}): continue it with --resume "
            f"{folder}, or start afresh in another folder (--run-dir, or another --out), or remove {folder}."
        )


def resume_request(folder: str | os.PathLike[str], given: dict[str, Any]) -> dict[str, Any]:
    """What the run in ``folder`` was asked, with ``given`` (what the resumed call named, ``COMPARED`` keys)
    checked against it: every difference is named in one :class:`ResumeError`. ``out`` is the run's own model
    file (as a path from here).

    Raises:
        ResumeError: no such folder, no run started in it, or a difference.
        NothingToResume: the run finished.
    """
    folder = Path(folder)
    record = _record(folder)
    if record.get("run_id") is not None:
        model = _model_path(folder, record)
        raise NothingToResume(
            f"{folder} finished: its model is {model}"
            + ("" if model.is_file() else " (no longer there: train again without --resume to make it)")
            + "; nothing to resume."
        )
    differences = []
    for key, value in given.items():
        if key not in COMPARED:
            raise ValueError(f"resume_request compares {COMPARED}; got {key!r}")
        if key == "finetune":
            asked = record.get("finetune") or {}
            differences += [
                f"{name}: {_word(asked.get(name), 'chosen by the data size')} in the run, {_word(v)} here"
                for name, v in sorted(value.items())
                if asked.get(name) != v
            ]
        elif key in ("data", "out"):
            mine = _model_path(folder, record) if key == "out" else Path(record.get("data") or "")
            if _same_path(mine, value):
                continue
            differences.append(f"{'--out' if key == 'out' else 'data'}: {mine} in the run, {value} here")
        elif record.get(key) != value:
            differences.append(f"{key}: {_word(record.get(key))} in the run, {_word(value)} here")
    if differences:
        raise ResumeError(
            f"{folder} is a run of other settings, so it was not resumed (nothing written): "
            f"{'; '.join(differences)}. Leave these out to continue it as it was started (they come from its "
            f"{RECORD}), or start a new run without --resume."
        )
    return {**record, "out": str(_model_path(folder, record))}


def describe_run(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A network run's folder in a few words, read without torch: its data, method, model, epochs done of those
    planned and its state (``finished``, ``stopped early…``, ``interrupted…``); None when ``folder`` holds none."""
    folder = Path(folder)
    try:
        record = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("method") not in NETWORK_METHODS:
        return None
    validation, refit = _progress(folder / "checkpoint.json"), _progress(folder / "refit-checkpoint.json")
    done = f"{validation['epochs_done']}/{validation['epochs']} epochs" if validation else "0 epochs"
    if refit:
        done += f", refit {refit['epochs_done']}/{refit['epochs']}"
    stopped = (validation or {}).get("stopped_after")
    if record.get("run_id") is not None:
        state = "finished" + (f" (stopped early after epoch {stopped})" if stopped is not None else "")
    elif stopped is not None:
        state = f"interrupted after stopping early at epoch {stopped}"
    elif validation and validation["epochs_done"] >= validation["epochs"]:
        state = "interrupted after its validation run"
    else:
        state = "interrupted" if validation else "interrupted before its first epoch"
    return {
        "folder": str(folder),
        "data": record.get("data"),
        "method": record["method"],
        "model": str(_model_path(folder, record)),
        "progress": done,
        "state": state,
        "resumable": record.get("run_id") is None,
    }


def list_runs(folder: str | os.PathLike[str] = ".") -> list[dict[str, Any]]:
    """The network runs in ``folder`` and its subfolders (one level), as :func:`describe_run` says them.

    Example:
        >>> [(r["folder"], r["state"]) for r in list_runs(".")]
        [('pets-ft-run', 'interrupted'), ('cd-ft-run', 'finished')]
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise HeadstartError(f"{folder} is not a folder: give the folder that holds the run folders (default: here).")
    candidates = [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]
    return [run for run in map(describe_run, candidates) if run is not None]


def _record(folder: Path) -> dict[str, Any]:
    """The run folder's ``config.json``, or a ResumeError saying why there is none to continue."""
    hint = "--resume takes the run folder of a `train --method finetune/scratch` (`headstart runs` lists them)"
    if not folder.exists():
        raise ResumeError(f"--resume {folder}: no such folder; {hint}.")
    if not folder.is_dir():
        raise ResumeError(f"--resume {folder} is a file, not a run folder; {hint}.")
    try:
        record = json.loads((folder / RECORD).read_text())
    except FileNotFoundError:
        raise ResumeError(
            f"{folder} holds no run to resume (no {RECORD}: not a run folder, or one started by an older "
            f"headstart, whose settings cannot be checked); {hint}."
        ) from None
    except ValueError as exc:
        raise ResumeError(
            f"{folder / RECORD} is damaged ({exc}); the run cannot be checked, so it is not resumed."
        ) from None
    if not isinstance(record, dict) or record.get("method") not in NETWORK_METHODS:
        method = record.get("method") if isinstance(record, dict) else None
        raise ResumeError(f"{folder} is a run of method {method!r}: only finetune and scratch runs resume; {hint}.")
    return record


def _progress(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _model_from(folder: Path, out: str) -> str:
    """The model file as a path from the run folder (``pets-ft-run`` → ``../pets-ft.safetensors``)."""
    return os.path.relpath(Path(out).absolute(), folder.absolute())


def _model_path(folder: Path, record: dict[str, Any]) -> Path:
    """The run's model file, as a path from here: through the folder when recorded so, else as given."""
    if record.get("model"):
        return Path(os.path.relpath(os.path.normpath(folder.absolute() / record["model"])))
    return Path(record.get("out") or "model.safetensors")


def _same_path(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    return os.path.normpath(Path(a).absolute()) == os.path.normpath(Path(b).absolute())


def _word(value: Any, none: str = "not set") -> str:
    return none if value is None else json.dumps(value) if isinstance(value, (bool, str)) else str(value)
