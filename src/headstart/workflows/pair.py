"""The run folder and the model file of one ``train``, committed together: both appear, or neither changes.

:func:`write_together` is what ``train`` saves with (see there for how); the run folder's ``config.json`` and the
model file's metadata carry the same ``run_id``, so which model a run folder belongs to can be checked.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["RUN_FILES", "write_together"]

#: Everything :func:`headstart.workflows.training.write_run_folder` may write: those of these a new run did not
#: write are an earlier run's, and go.
RUN_FILES = (
    "config.json",
    "backbone_selection.json",
    "confusion_matrix.png",
    "misclassified.png",
    "reliability.png",
    "metrics.jsonl",
    "curves.png",
    "metrics.json",
)


def write_together(clf: Any, run: Path, out: Path, write_run_folder: Callable[[Path, str], list[Path]]) -> list[Path]:
    """The run folder and the model file of one run appear together or not at all.

    Both are written whole under temporary names first (a staging folder beside the run folder, a temporary
    beside the model file), so a full disk or a failure fails there with nothing replaced. Then, holding the lock
    of the model file's folder (two trains to one ``--out`` take turns), the staged files are renamed into the
    run folder, the earlier run's pictures this run did not draw are removed (checkpoints stay), and the model file
    is renamed last: renames need no space. The run folder's ``config.json`` and the model's metadata carry the
    same ``run_id``. A failure names the file the user asked for, not its temporary.

    Args:
        clf: the fitted estimator (saved with ``clf.save``).
        run: the run folder; out: the model file.
        write_run_folder: ``(folder, run_id) -> files written``: writes the run folder's files into ``folder``.

    Returns:
        The run folder's files, at their final paths.
    """
    import shutil

    from headstart._io import locked_folder, temporary_beside

    clf.model_.metadata["run_id"] = run_id = content_id(clf.model_)
    staging, model = temporary_beside(run), temporary_beside(out)
    try:
        staged = write_run_folder(staging, run_id)
        clf.save(model)
        with locked_folder(out.parent):
            run.mkdir(parents=True, exist_ok=True)
            names = {path.name for path in staged}
            for name in RUN_FILES:
                if name not in names:
                    (run / name).unlink(missing_ok=True)
            for path in staged:
                os.replace(path, run / path.name)
            os.replace(model, out)  # last: a model file means its run folder is complete, and is this run's
    except OSError as exc:  # said of the files the user asked for, not of their temporaries
        name = os.fsdecode(exc.filename or "")
        real = out if name == str(model) else run / Path(name).name if name.startswith(str(staging)) else None
        if real is None:
            raise
        raise OSError(exc.errno, exc.strerror, str(real)) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        model.unlink(missing_ok=True)
    return [run / path.name for path in staged]


def content_id(model: Any) -> str:
    """The ``run_id`` of a model: a hash of what its file will hold (head, the trunk's content hash, class names,
    metadata less what describes one run), not a random token, so training again on the same inputs writes a
    bit-identical file while a run folder still names the one model it belongs to.

    Example:
        >>> content_id(clf.model_)
        '3f9a0c2b71d84e65'
    """
    import hashlib
    import json

    from headstart.models.modelfile import model_only

    described = {k: v for k, v in model.metadata.items() if k not in ("run_id", "path")}
    document = {"metadata": model_only(described), "backbone": model.spec.to_dict(), "classes": list(model.classes)}
    digest = hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode())
    digest.update(model.head_weight.tobytes())
    digest.update(model.head_bias.tobytes())
    return digest.hexdigest()[:16]
