"""The audit on the bundled sample photos with faults put in: photos moved to a wrong breed, altered copies of test
photos among the training photos (leaks), images of other domains under neutral names. Each must be found, and the
report must keep its schema and its promises (sorted, self-contained HTML, nothing destroyed)."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import pytest

from headstart.audit.core import SCHEMA, audit
from headstart.audit.faults import inject_faults

pytestmark = pytest.mark.slow  # every test here runs a real backbone

COPY_KINDS = ("resize", "reencode", "crop", "mirror", "all")


@pytest.fixture(scope="module")
def faults(sample, tmp_path_factory):
    return inject_faults(
        sample / "train",
        tmp_path_factory.mktemp("faulty"),
        test=sample / "test",
        n_wrong_labels=4,
        n_copies=5,
        n_outliers=3,
        copy_kinds=COPY_KINDS,
        seed=0,
    )


@pytest.fixture(scope="module")
def report(faults):
    return audit(faults.data, test=faults.test, seed=0)


@pytest.fixture(scope="module")
def saved(report, tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    return report.save(folder)


def test_every_altered_copy_of_a_test_photo_is_found_as_a_leak_and_no_group_is_false(report, faults):
    groups = [set(g["paths"]) for g in report.duplicates]
    for copy, (original, kind) in faults.copies.items():
        holding = [g for g in report.duplicates if {str(copy), str(original)} <= set(g["paths"])]
        assert holding, f"the {kind} copy {copy.name} of {original.name} was not found"
        assert holding[0]["crosses_split"] and holding[0]["splits"].count("test") == 1
    pairs = [{str(c), str(o)} for c, (o, _) in faults.copies.items()]
    false = [g for g in groups if not any(p <= g for p in pairs)]
    assert not false, f"groups of photos that are not copies: {false}"
    assert all(len(g) == 2 for g in groups)


def test_photos_moved_to_a_wrong_breed_lead_the_label_issues(report, faults):
    ranked = [Path(r["path"]) for r in report.label_issues]
    ranks = {p: ranked.index(p) for p in faults.wrong_labels if p in ranked}
    assert len(ranks) == len(faults.wrong_labels), f"missed: {set(faults.wrong_labels) - set(ranks)}"
    assert max(ranks.values()) < len(faults.wrong_labels) + 3, ranks  # among the first few
    suggested = {Path(r["path"]): r["suggested"] for r in report.label_issues}
    right = sum(suggested[p] == true for p, (true, _) in faults.wrong_labels.items())
    assert right >= len(faults.wrong_labels) - 1, "the suggested label should mostly be the photo's true breed"
    scores = [r["score"] for r in report.label_issues]
    assert scores == sorted(scores, reverse=True)


def test_images_of_other_domains_are_outliers_and_not_label_issues(report, faults):
    ranked = [Path(r["path"]) for r in report.outliers]
    assert set(ranked[: len(faults.outliers)]) == set(faults.outliers), [f.name for f in ranked]
    assert not set(faults.outliers) & {Path(r["path"]) for r in report.label_issues}
    scores = [r["score"] for r in report.outliers]
    assert scores == sorted(scores, reverse=True)
    assert not set(faults.wrong_labels) & set(ranked), "a wrong label is a pet photo, not an outlier"


def test_the_json_schema(report, saved, faults):
    data = json.loads(saved["json"].read_text())
    assert data == json.loads(json.dumps(report.to_dict()))
    assert data["schema"] == SCHEMA
    for key, kind in {
        "n_images": int,
        "duplicates": list,
        "label_issues": list,
        "outliers": list,
        "classes": list,
        "learning_curve": list,
        "summary": dict,
        "extrapolation": dict,
        "settings": dict,
    }.items():
        assert isinstance(data[key], kind), key
    assert data["n_images"] == 60 + 4 * 0 + 5 + 3  # the moved photos stay in DATA
    assert data["n_test_images"] == 24
    for group in data["duplicates"]:
        assert group["kind"] in ("exact", "near") and len(group["paths"]) >= 2
        assert 0.0 <= group["similarity"] <= 1.0 and isinstance(group["crosses_split"], bool)
        assert len(group["splits"]) == len(group["paths"]) == len(group["labels"])
    for row in data["label_issues"]:
        assert set(row) >= {"path", "given", "suggested", "score"} and row["given"] != row["suggested"]
        assert 0.0 <= row["score"] <= 1.0
    for row in data["outliers"]:
        assert set(row) >= {"path", "score", "label"}
    names = [c["name"] for c in data["classes"]]
    assert len(names) == 12 and sum(c["n_images"] for c in data["classes"]) == data["n_images"]
    assert all(0 <= c["cv_accuracy"] <= 1 for c in data["classes"])
    fractions = [p["fraction"] for p in data["learning_curve"]]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert data["extrapolation"]["projections"] and data["extrapolation"]["headline"]
    leaks_first = [g["crosses_split"] for g in data["duplicates"]]
    assert leaks_first == sorted(leaks_first, reverse=True)


def test_the_html_report_is_self_contained(saved, report):
    page = saved["html"].read_text()
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/") for s in sources), {s[:30] for s in sources}
    assert not re.search(r"(?:href|src)=\"(?:https?:|//|file:)", page)
    assert "<link" not in page and "<script" not in page
    assert page.count("data:image/jpeg;base64,") >= len(report.outliers) + len(report.duplicates)
    assert "data:image/png;base64," in page  # the learning curve
    assert saved["learning_curve"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first_leak = report.duplicates[0]["paths"][0]
    assert Path(first_leak).name in page


def test_the_same_seed_gives_the_same_report_and_leaves_warnings_working(report, faults):
    before = (list(warnings.filters), warnings.showwarning)
    again = audit(faults.data, test=faults.test, seed=0)
    assert (list(warnings.filters), warnings.showwarning) == before  # fits in threads must not leave it changed
    with pytest.warns(UserWarning, match="still heard"):
        warnings.warn("still heard", UserWarning)
    first, second = report.to_dict(), again.to_dict()
    for key in ("seconds", "settings"):
        first.pop(key), second.pop(key)
    assert first == second


def test_a_data_set_without_test_and_a_class_with_one_photo(sample, tmp_path):
    data = tmp_path / "data"
    for breed in ("beagle", "pug", "Persian"):
        shutil.copytree(sample / "train" / breed, data / breed)
    (data / "samoyed").mkdir()
    shutil.copy(next((sample / "train" / "samoyed").glob("*.jpg")), data / "samoyed" / "only.jpg")
    result = audit(data)
    assert result.test is None and result.n_test_images == 0
    assert any("samoyed" in note for note in result.notes)
    samoyed = next(c for c in result.classes if c["name"] == "samoyed")
    assert samoyed["n_images"] == 1 and samoyed["cv_accuracy"] is None
    assert all(Path(r["path"]).parent.name != "samoyed" for r in result.label_issues)
