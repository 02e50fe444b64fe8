"""Acting on an audit: the relabel CSV (written, reviewed, applied to a data set train can take), the quarantine
(moves, logs, never deletes, never touches TEST), and the ``headstart audit`` command."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from headstart.audit.actions import (
    RelabelWarning,
    apply_relabels,
    quarantine_findings,
    quarantine_plan,
    write_relabel_csv,
)
from headstart.audit.core import audit
from headstart.audit.faults import inject_faults
from headstart.data.datasets import load_dataset
from headstart.errors import DataError


@pytest.fixture(scope="module")
def faults(sample, tmp_path_factory):
    return inject_faults(
        sample / "train",
        tmp_path_factory.mktemp("faulty"),
        test=sample / "test",
        n_wrong_labels=3,
        n_copies=3,
        n_outliers=2,
        copy_kinds=("resize", "mirror", "crop"),
        seed=1,
    )


@pytest.fixture(scope="module")
def report(faults):
    return audit(faults.data, test=faults.test, seed=0)


def _files(*folders: Path) -> set[str]:
    return {p.name for folder in folders for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_relabel_csv_round_trip_fixes_the_wrong_labels(report, faults, tmp_path):
    path = write_relabel_csv(report, tmp_path / "relabel.csv")
    rows = list(csv.reader(path.open()))
    assert rows[0] == ["path", "given", "suggested", "score"]
    assert len(rows) - 1 == len(report.label_issues)
    # A reviewer keeps only the rows about the photos that really were moved (and drops one by emptying it).
    kept = [r for r in rows[1:] if Path(r[0]) in faults.wrong_labels]
    declined = [*kept[-1][:2], "", kept[-1][3]]
    reviewed = tmp_path / "reviewed.csv"
    with reviewed.open("w", newline="") as handle:
        csv.writer(handle).writerows([rows[0], *kept[:-1], declined])
    dataset = load_dataset(faults.data)
    fixed = apply_relabels(dataset, reviewed)
    label = {s.path: s.label for s in fixed.samples}
    for row in kept[:-1]:
        assert label[Path(row[0])] == row[2]
        assert row[2] == faults.wrong_labels[Path(row[0])][0]  # the true breed
    assert label[Path(declined[0])] == declined[1]
    assert [s.path for s in fixed.samples] == dataset.paths and fixed.classes == dataset.classes
    assert {s.path: s.label for s in load_dataset(faults.data).samples} == {s.path: s.label for s in dataset.samples}
    # Applying the same CSV again: the given labels no longer match, nothing changes, a warning says why.
    with pytest.warns(RelabelWarning, match="is labelled"):
        again = apply_relabels(fixed, reviewed)
    assert {s.path: s.label for s in again.samples} == label


def test_apply_relabels_refuses_a_foreign_or_malformed_csv(faults, tmp_path):
    dataset = load_dataset(faults.data)
    foreign = tmp_path / "foreign.csv"
    foreign.write_text("path,given,suggested,score\n/nowhere/x.jpg,a,b,0.9\n")
    with pytest.raises(DataError, match="none of its 1 paths"):
        apply_relabels(dataset, foreign)
    malformed = tmp_path / "malformed.csv"
    malformed.write_text("file,label\nx.jpg,cat\n")
    with pytest.raises(DataError, match="path and suggested"):
        apply_relabels(dataset, malformed)


@pytest.mark.slow
def test_quarantine_moves_copies_and_outliers_logs_why_and_deletes_nothing(report, faults, tmp_path):
    # Work on a copy of the data set: the module's report must stay true for the other tests.
    data, test = tmp_path / "data", tmp_path / "test"
    shutil.copytree(faults.data, data)
    shutil.copytree(faults.test, test)
    moved_report = json.loads(
        json.dumps(report.to_dict()).replace(str(faults.data), str(data)).replace(str(faults.test), str(test))
    )
    before = _files(data, test)
    destination = tmp_path / "quarantine"
    plan = quarantine_plan(moved_report)
    moved = quarantine_findings(moved_report, destination)
    assert len(moved) == len(plan) == len(faults.copies) + len(faults.outliers)
    moved_names = {old.name for old, _ in moved}
    assert moved_names == {p.name for p in faults.copies} | {p.name for p in faults.outliers}
    assert _files(data, test, destination) == before | {"QUARANTINE.json"}  # nothing lost
    assert _files(test) == {p.name for p in faults.test.rglob("*.jpg")}  # test photos stay
    for old, new in moved:
        assert not old.exists() and new.is_file()
        assert new.relative_to(destination).parts[0] == old.parent.name  # class folder kept
    log = json.loads((destination / "QUARANTINE.json").read_text())["files"]
    reasons = {Path(entry["path"]).name: entry["reason"] for entry in log}
    assert all(reasons[p.name].startswith("leak: copy of the test photo") for p in faults.copies)
    assert all(reasons[p.name].startswith("outlier") for p in faults.outliers)
    with pytest.raises(ValueError, match="'include' parameter"):
        quarantine_plan(moved_report, include=["everything"])


@pytest.mark.slow
def test_the_audit_command(faults, tmp_path):
    from headstart.cli import app

    out = tmp_path / "report"
    relabel = tmp_path / "relabel.csv"
    result = CliRunner().invoke(
        app,
        [
            "audit",
            str(faults.data),
            "--test",
            str(faults.test),
            "--out",
            str(out),
            "--relabel-csv",
            str(relabel),
            "--json",
            "--no-thumbnails",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["summary"]["leaks"] == len(faults.copies)
    assert (out / "audit.html").is_file() and (out / "audit.json").is_file() and relabel.is_file()
    assert data["written"]["html"] == str(out / "audit.html")
    human = CliRunner().invoke(app, ["audit", str(faults.data), "--test", str(faults.test), "--out", str(out)])
    assert human.exit_code == 0, human.output
    assert "crossing DATA/TEST" in human.stdout and "learning curve:" in human.stdout
    bad = CliRunner().invoke(
        app, ["audit", str(faults.data), "--quarantine", str(tmp_path / "q"), "--quarantine-what", "everything"]
    )
    assert bad.exit_code == 2 and "--quarantine-what" in bad.output


@pytest.mark.slow
def test_train_reads_a_reviewed_relabel_csv(report, faults, tmp_path):
    """`headstart audit --relabel-csv` → review → `headstart train --relabel-csv`: the model learns the fixed labels."""
    from headstart.cli import app
    from headstart.workflows.training import train

    relabels = write_relabel_csv(report, tmp_path / "relabel.csv")
    rows = list(csv.reader(relabels.open()))
    moved = [r for r in rows[1:] if Path(r[0]) in faults.wrong_labels]
    assert moved, "the audit found none of the moved photos"
    reviewed = tmp_path / "reviewed.csv"
    with reviewed.open("w", newline="") as handle:
        csv.writer(handle).writerows([rows[0], *moved])
    out = tmp_path / "fixed.safetensors"
    result = CliRunner().invoke(
        app, ["train", str(faults.data), "--out", str(out), "--relabel-csv", str(reviewed), "--json"]
    )
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "fixed-run" / "config.json").read_text())
    assert run["method"] == "probe"
    # The same photos, relabelled in memory, give the model trained by the CLI: same classes, same head.
    from headstart.models.classifier import Classifier

    expected = train(apply_relabels(load_dataset(faults.data), reviewed), out=tmp_path / "api.safetensors")
    cli_model, api_model = Classifier.load(out), expected.model
    assert cli_model.classes == api_model.classes
    assert (cli_model.head_weight == api_model.head_weight).all()
    # and they differ from a model trained on the labels as they were
    plain = train(load_dataset(faults.data), out=tmp_path / "plain.safetensors").model
    assert not (
        plain.head_weight.shape == cli_model.head_weight.shape and (plain.head_weight == cli_model.head_weight).all()
    )
