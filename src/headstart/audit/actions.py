"""Acting on an audit, never destroying: move flagged files aside with a log, write and apply suggested relabels.

* :func:`quarantine_findings` moves the extra copies of duplicates (and the DATA side of leaks), the outliers and,
  when asked, the likely wrong labels into a folder, keeping their paths below the data set's root and logging each
  move with its reason in ``QUARANTINE.json`` (:func:`headstart.data.scanning.quarantine`: nothing is deleted or
  overwritten; the log says how to undo).
* :func:`write_relabel_csv` writes ``path,given,suggested,score`` for a person to review: delete the rows you
  disagree with, or empty their ``suggested`` cell.
* :func:`apply_relabels` applies such a CSV to a loaded data set; ``train`` takes the result
  (``train(apply_relabels(load_dataset("photos/"), "relabel.csv"))``).

Example:
    >>> report = audit("photos/")                                                   # doctest: +SKIP
    >>> write_relabel_csv(report, "relabel.csv")                                    # doctest: +SKIP
    >>> dataset = apply_relabels(load_dataset("photos/"), "relabel.csv")            # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from headstart._io import write_text_atomic
from headstart._names import csv_cell, csv_value
from headstart._validation import fail
from headstart.data.datasets import Dataset, Sample
from headstart.data.scanning import ScanReport, UnusableFile, quarantine
from headstart.errors import DataError

__all__ = [
    "KINDS",
    "RELABEL_COLUMNS",
    "RelabelWarning",
    "apply_relabels",
    "quarantine_findings",
    "quarantine_plan",
    "write_relabel_csv",
]

#: What :func:`quarantine_findings` can move.
KINDS = ("duplicates", "outliers", "label_issues")
RELABEL_COLUMNS = ("path", "given", "suggested", "score")


class RelabelWarning(UserWarning):
    """Rows of a relabel CSV were not applied; the message says which and why."""


def _report_dict(report: Any) -> dict[str, Any]:
    return report if isinstance(report, dict) else report.to_dict()


def quarantine_plan(report: Any, include: Iterable[str] = ("duplicates", "outliers")) -> list[UnusableFile]:
    """The DATA files :func:`quarantine_findings` would move, each with the reason it would log.

    Duplicates: every member of a group but the one kept (a leak keeps its TEST photo, so all its DATA copies go;
    otherwise the largest file stays). Test photos are never moved.
    """
    include = tuple(include)
    for kind in include:
        if kind not in KINDS:
            fail("include", "quarantine_findings", f"a list of {', '.join(map(repr, KINDS))}", kind)
    data = _report_dict(report)
    reasons: dict[str, list[str]] = {}
    if "duplicates" in include:
        for group in data["duplicates"]:
            for path, split in zip(group["paths"], group["splits"]):
                if split != "data" or path == group["keep"]:
                    continue
                what = "leak: copy of the test photo" if group["crosses_split"] else f"{group['kind']} duplicate of"
                reasons.setdefault(path, []).append(f"{what} {group['keep']} (similarity {group['similarity']:.3f})")
    if "outliers" in include:
        for row in data["outliers"]:
            reasons.setdefault(row["path"], []).append(f"outlier: unlike the other photos (score {row['score']:.2f})")
    if "label_issues" in include:
        for row in data["label_issues"]:
            reasons.setdefault(row["path"], []).append(
                f"likely wrong label: given {row['given']}, suggested {row['suggested']} (score {row['score']:.3f})"
            )
    return [UnusableFile(Path(path), "; ".join(why)) for path, why in reasons.items()]


def quarantine_findings(
    report: Any, destination: str | os.PathLike[str], *, include: Iterable[str] = ("duplicates", "outliers")
) -> list[tuple[Path, Path]]:
    """Move the flagged DATA files into ``destination`` (paths kept below the data set's root), logging why.

    Args:
        report: an :class:`~headstart.audit.core.AuditReport` (or its ``to_dict()``).
        destination: the quarantine folder; keep it outside the data folder (or hidden, ``photos/.quarantine``).
        include: which findings to move, among :data:`KINDS`.

    Returns:
        ``(old path, new path)`` per file moved; ``destination/QUARANTINE.json`` lists them with their reasons.

    Example:
        >>> moved = quarantine_findings(report, "quarantine/")                      # doctest: +SKIP
    """
    plan = quarantine_plan(report, include)
    if not plan:
        return []
    data = _report_dict(report)
    data_root = Path(data["data"])
    root = data_root if data_root.is_dir() else data_root.parent  # a CSV data set: relative to its folder
    if not all(_below(item.path, root) for item in plan):
        root = Path(os.path.commonpath([os.path.abspath(item.path.parent) for item in plan]))
    keep = {Path(group["keep"]) for group in data["duplicates"]} | _test_paths(data)
    return quarantine(ScanReport(n_files=len(plan), unusable=plan), destination, root=root, keep=keep)


def _test_paths(data: dict[str, Any]) -> set[Path]:
    return {
        Path(path)
        for group in data["duplicates"]
        for path, split in zip(group["paths"], group["splits"])
        if split == "test"
    }


def _below(path: Path, root: Path) -> bool:
    try:
        Path(os.path.abspath(path)).relative_to(os.path.abspath(root))
        return True
    except ValueError:
        return False


def write_relabel_csv(report: Any, path: str | os.PathLike[str], *, confident_only: bool = False) -> Path:
    """Write the suggested relabels (``path,given,suggested,score``, most doubtful first) for review.

    Args:
        report: an :class:`~headstart.audit.core.AuditReport` (or its ``to_dict()``).
        confident_only: only the issues confident learning is sure of (the suggested class reaches its threshold).
    """
    rows = [r for r in _report_dict(report)["label_issues"] if r.get("confident", True) or not confident_only]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(RELABEL_COLUMNS)
    for row in rows:  # (cells a spreadsheet would run as formulas are escaped; apply_relabels reads them back)
        writer.writerow(
            [csv_cell(row["path"]), csv_cell(row["given"]), csv_cell(row["suggested"]), f"{row['score']:.4f}"]
        )
    return write_text_atomic(path, buffer.getvalue())


def _read_relabels(csv_path: Path) -> list[tuple[int, dict[str, str]]]:
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            fields = [f.strip().lower() for f in reader.fieldnames or []]
            rows = [
                (n + 2, {k.strip().lower(): csv_value((v or "").strip()) for k, v in row.items() if k})
                for n, row in enumerate(reader)
            ]
    except OSError as exc:
        raise DataError(f"{csv_path}: cannot read the relabel CSV ({exc.strerror or exc}).") from exc
    if "path" not in fields or "suggested" not in fields:
        raise DataError(
            f"{csv_path}: a relabel CSV needs the columns path and suggested (and usually given and score), as "
            f"`headstart audit --relabel-csv` writes it; its header is {','.join(fields)!r}."
        )
    return rows


def apply_relabels(dataset: Dataset, csv_path: str | os.PathLike[str]) -> Dataset:
    """The data set with the labels of a reviewed relabel CSV applied (the files are not touched).

    A row applies when its ``path`` is a photo of ``dataset`` (relative paths are read from the CSV's folder) and
    its ``suggested`` cell is not empty. With a ``given`` column, a row whose photo no longer has that label is
    skipped (the CSV is older than the data set). Skipped rows are named in one :class:`RelabelWarning`.

    Args:
        dataset: from :func:`headstart.data.datasets.load_dataset`.
        csv_path: a CSV with the columns ``path,given,suggested[,score]`` (``headstart audit --relabel-csv``).

    Returns:
        A new :class:`~headstart.data.datasets.Dataset`: same photos, the applied labels, classes recomputed.

    Raises:
        DataError: the CSV cannot be read, lacks the columns, or none of its paths is in the data set.

    Example:
        >>> from headstart.data.datasets import load_dataset
        >>> fixed = apply_relabels(load_dataset("photos/"), "relabel.csv")          # doctest: +SKIP
        >>> train(fixed, out="pets.safetensors")                                    # doctest: +SKIP
    """
    csv_path = Path(csv_path)
    rows = _read_relabels(csv_path)
    index = {os.path.normcase(os.path.abspath(s.path)): i for i, s in enumerate(dataset.samples)}
    samples = list(dataset.samples)
    skipped: list[str] = []
    applied = matched = 0
    for line, row in rows:
        raw = row.get("path", "")
        if not raw:
            continue
        path = Path(raw).expanduser()
        if not path.is_absolute():
            path = csv_path.parent / path
        i = index.get(os.path.normcase(os.path.abspath(path)))
        if i is None:
            skipped.append(f"line {line}: {raw} is not a photo of {dataset.root}")
            continue
        matched += 1
        suggested, given = row.get("suggested", ""), row.get("given", "")
        if not suggested:
            continue
        if given and samples[i].label != given:
            skipped.append(f"line {line}: {raw} is labelled {samples[i].label!r} now, not {given!r}")
            continue
        samples[i] = Sample(samples[i].path, suggested)
        applied += 1
    if rows and not matched:
        raise DataError(
            f"{csv_path}: none of its {len(rows)} paths is a photo of {dataset.root}. Pass the data set the audit "
            "ran on (paths are compared as absolute paths; relative ones are read from the CSV's folder)."
        )
    new_classes = sorted({s.label for s in samples} - set(dataset.classes))
    if new_classes:
        skipped.append(f"new classes created: {', '.join(new_classes)} (check for typos)")
    if skipped:
        shown = "; ".join(skipped[:5]) + (f"; and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        warnings.warn(f"{csv_path}: {applied} relabel(s) applied; {shown}", RelabelWarning, stacklevel=2)
    return Dataset(
        samples=samples,
        classes=sorted({s.label for s in samples}),
        root=dataset.root,
        kind=dataset.kind,
        ignored=list(dataset.ignored),
    )
