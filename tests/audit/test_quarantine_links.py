"""A duplicate pair made by a symlink (or a hard link) is cleaned without losing the photo: the real file is the
one kept, whichever order the pair was found in, and the link is what moves (issue 20: the real file was moved and
the symlink kept, pointing nowhere)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from headstart._io import sha256_file
from headstart.audit.actions import quarantine_findings
from headstart.audit.findings import duplicate_rows
from headstart.features.duplicates import find_duplicates


@pytest.mark.parametrize("order", ["real first", "link first"])
@pytest.mark.parametrize("link", ["symlink", "hard link"])
def test_a_linked_duplicate_moves_the_link_and_keeps_the_photo(tmp_path: Path, sample: Path, order: str, link: str):
    data = tmp_path / "data" / "cats"
    data.mkdir(parents=True)
    photo = next((sample / "train").rglob("*.jpg"))
    real = data / "real.jpg"
    real.write_bytes(photo.read_bytes())
    other = data / ("a-link.jpg" if order == "link first" else "z-link.jpg")
    if link == "symlink":
        other.symlink_to(real)
    else:
        os.link(real, other)
    paths = sorted([real, other])
    groups = find_duplicates(file_hashes=[sha256_file(p) for p in paths])
    rows = duplicate_rows(groups, paths, ["data", "data"], ["cats", "cats"])
    report = {"data": str(tmp_path / "data"), "duplicates": rows, "outliers": [], "label_issues": []}
    moved = quarantine_findings(report, tmp_path / "q", include=["duplicates"])
    assert Path(rows[0]["keep"]).read_bytes() == photo.read_bytes(), "the kept name lost the photo"
    if link == "symlink":
        assert real.read_bytes() == photo.read_bytes(), "the photo itself was moved"
        assert rows[0]["keep"] == str(real), rows[0]
        assert [old for old, _ in moved] == [other] and (tmp_path / "q" / "cats" / other.name).is_symlink()
    else:  # two names of one file: either may go, the bytes stay under the other
        assert len(moved) == 1 and all(new.read_bytes() == photo.read_bytes() for _, new in moved), moved
