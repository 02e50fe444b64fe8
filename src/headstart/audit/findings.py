"""The audit's findings as JSON-ready dicts: duplicate groups, label issues, outliers, classes, confused pairs.

Each builder takes plain arrays (indices, probabilities, labels) and returns lists of dicts sorted most suspicious
first, in the schema docs/AUDIT.md documents.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from headstart.audit.labels import ConfidentLearning, label_issue_score
from headstart.features.duplicates import DuplicateGroup

__all__ = ["class_rows", "confused_pairs", "duplicate_rows", "label_issue_rows", "outlier_rows"]


def _round(value: float, digits: int = 4) -> float:
    return float(round(float(value), digits))


def duplicate_rows(
    groups: Sequence[DuplicateGroup], paths: Sequence[Path], splits: Sequence[str], labels: Sequence[str]
) -> list[dict[str, Any]]:
    """Groups as dicts: leaks (groups that cross DATA and TEST) first, then exact, then by decreasing similarity.

    ``keep`` names the member a clean-up keeps: the test photo of a leak (the copies in DATA go), otherwise the
    largest file that is not a symlink (most likely the original; moving it would leave the link pointing nowhere).
    """
    rows = []
    for group in groups:
        members = list(group.members)
        member_splits = [splits[i] for i in members]
        crosses = len(set(member_splits)) > 1
        if "test" in member_splits:
            keep = members[member_splits.index("test")]
        else:
            keep = max(members, key=lambda i: (not Path(paths[i]).is_symlink(), _size(paths[i]), -i))
        rows.append(
            {
                "kind": group.kind,
                "paths": [str(paths[i]) for i in members],
                "splits": member_splits,
                "labels": [labels[i] for i in members],
                "similarity": _round(group.similarity),
                "hamming": group.hamming,
                "crosses_split": crosses,
                "labels_differ": len({labels[i] for i in members}) > 1,
                "evidence": list(group.evidence),
                "keep": str(paths[keep]),
            }
        )
    rows.sort(key=lambda r: (not r["crosses_split"], r["kind"] != "exact", -r["similarity"], r["paths"]))
    return rows


def _size(path: Path) -> int:
    try:
        return Path(path).stat().st_size
    except OSError:
        return 0


def label_issue_rows(
    cl: ConfidentLearning,
    proba: np.ndarray,
    y: np.ndarray,
    classes: Sequence[str],
    paths: Sequence[Path],
    exclude: set[int],
) -> list[dict[str, Any]]:
    """Photos whose given label the out-of-fold probabilities contradict (outliers left out), most doubtful first.

    ``confident`` marks those in an off-diagonal cell of the confident joint; the others are misclassified by the
    out-of-fold probe without reaching the suggested class's threshold.
    """
    scores = label_issue_score(cl.self_confidence)
    confident = set(cl.issues.tolist())
    rows = []
    for i in cl.candidates.tolist():
        if i in exclude:
            continue
        suggested = int(cl.suggested[i])
        rows.append(
            {
                "path": str(paths[i]),
                "given": classes[int(y[i])],
                "suggested": classes[suggested],
                "score": _round(scores[i]),
                "given_probability": _round(proba[i, int(y[i])]),
                "suggested_probability": _round(proba[i, suggested]),
                "margin": _round(cl.margin[i]),
                "confident": i in confident,
            }
        )
    return rows


def outlier_rows(
    scores: np.ndarray,
    similarity: np.ndarray,
    proba: np.ndarray | None,
    labels: Sequence[str],
    classes: Sequence[str],
    paths: Sequence[Path],
    threshold: float,
) -> list[dict[str, Any]]:
    """Photos whose outlier score reaches ``threshold``, highest first."""
    order = np.argsort(-scores, kind="stable")
    rows = []
    for i in order.tolist():
        if scores[i] < threshold:
            break
        row = {
            "path": str(paths[i]),
            "label": labels[i],
            "score": _round(scores[i], 3),
            "neighbour_similarity": _round(similarity[i]),
        }
        if proba is not None and not np.isnan(proba[i]).any():
            row["max_probability"] = _round(proba[i].max())
            row["likeliest_class"] = classes[int(proba[i].argmax())]
        rows.append(row)
    return rows


def confused_pairs(proba: np.ndarray, y: np.ndarray, classes: Sequence[str], limit: int = 10) -> list[dict[str, Any]]:
    """The most frequent (true, predicted) mistakes of the out-of-fold predictions, with their rate in the class."""
    predicted = proba.argmax(axis=1)
    m = len(classes)
    matrix = np.zeros((m, m), dtype=np.int64)
    np.add.at(matrix, (y, predicted), 1)
    counts = matrix.sum(axis=1)
    cells = [(int(matrix[i, j]), i, j) for i in range(m) for j in range(m) if i != j and matrix[i, j] > 0]
    cells.sort(key=lambda c: (-c[0], -c[0] / max(counts[c[1]], 1), c[1], c[2]))
    return [
        {"true": classes[i], "predicted": classes[j], "count": n, "rate": _round(n / max(counts[i], 1))}
        for n, i, j in cells[:limit]
    ]


def class_rows(
    classes: Sequence[str],
    listed: Sequence[str],
    usable_labels: Sequence[str],
    proba: np.ndarray | None,
    y: np.ndarray | None,
    noise_rate: np.ndarray | None,
    issues: Sequence[dict[str, Any]],
    outliers: Sequence[dict[str, Any]],
    paths: Sequence[Path] | None = None,
) -> list[dict[str, Any]]:
    """Per class: photos listed and usable, cross-validated recall and precision, estimated label noise, findings.

    Args:
        classes: the class names, in index order.
        listed: the label of every photo listed (usable or not).
        usable_labels: the label of every usable photo.
        proba, y: out-of-fold probabilities and class indices of the photos cross-validated (those of the classes
            with two photos or more).
        paths: the files of those photos: each class's ``example`` is its photo the probe is surest of.
    """
    listed_counts = {c: 0 for c in classes}
    for label in listed:
        listed_counts[label] = listed_counts.get(label, 0) + 1
    usable_counts = {c: 0 for c in classes}
    for label in usable_labels:
        usable_counts[label] += 1
    issue_counts = {c: 0 for c in classes}
    for row in issues:
        issue_counts[row["given"]] += 1
    outlier_counts = {c: 0 for c in classes}
    for row in outliers:
        outlier_counts[row["label"]] += 1
    predicted = proba.argmax(axis=1) if proba is not None else None
    rows = []
    for j, name in enumerate(classes):
        row: dict[str, Any] = {
            "name": name,
            "n_images": listed_counts[name],
            "n_usable": usable_counts[name],
            "cv_accuracy": None,
            "precision": None,
            "estimated_label_noise": None,
            "n_label_issues": issue_counts[name],
            "n_outliers": outlier_counts[name],
            "most_confused_with": None,
            "example": None,
        }
        if predicted is not None and y is not None and np.any(y == j):
            mine = y == j
            if paths is not None:
                members = np.flatnonzero(mine)
                row["example"] = str(paths[int(members[np.argmax(proba[members, j])])])
            row["cv_accuracy"] = _round(np.mean(predicted[mine] == j))
            called = predicted == j
            row["precision"] = _round(np.mean(y[called] == j)) if called.any() else None
            if noise_rate is not None:
                row["estimated_label_noise"] = _round(noise_rate[j])
            wrong = predicted[mine][predicted[mine] != j]
            if len(wrong):
                values, counts = np.unique(wrong, return_counts=True)
                row["most_confused_with"] = {"class": classes[int(values[counts.argmax()])], "count": int(counts.max())}
        rows.append(row)
    return rows
