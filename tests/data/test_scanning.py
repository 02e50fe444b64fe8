"""headstart.data.scanning: scan names exactly the broken files; quarantine moves them aside, losing nothing."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from headstart._validation import ParameterError
from headstart.data.scanning import QUARANTINE_LOG, ScanReport, UnusableFile, quarantine, scan
from headstart.errors import DataError

pytestmark = pytest.mark.filterwarnings("ignore::headstart.data.images.SmallImageWarning")  # tiny test images

RED = (255, 0, 0)
BLUE = (0, 0, 255)


def save(img: Image.Image, path: Path, format: str | None = None, **params) -> Path:
    img.save(path, format=format, **params)
    return path


def jpeg_bytes(size: tuple[int, int] = (64, 48), seed: int = 0) -> bytes:
    """A noisy JPEG, so its entropy-coded data is most of the file (truncating it cuts real pixels)."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_dataset(root: Path) -> tuple[set[Path], set[Path]]:
    """A folder of good and broken files; returns (good, broken)."""
    (root / "cats").mkdir(parents=True)
    (root / "dogs").mkdir()
    good = {
        save(Image.new("RGB", (20, 20), RED), root / "cats" / "ok.jpg"),
        save(Image.new("L", (20, 20), 9), root / "cats" / "grey.png"),
        save(Image.new("RGB", (20, 20), BLUE), root / "dogs" / "png_named.jpg", format="PNG"),
    }
    empty, text, half = root / "cats" / "empty.jpg", root / "dogs" / "text.jpg", root / "dogs" / "half.jpg"
    empty.touch()
    text.write_text("not an image")
    data = jpeg_bytes((128, 96))
    half.write_bytes(data[: len(data) // 2])
    (root / "README.txt").write_text("about this data")
    (root / ".DS_Store").write_bytes(b"\0\0")
    return good, {empty, text, half}


def test_scan_names_exactly_the_broken_files(tmp_path: Path) -> None:
    good, broken = make_dataset(tmp_path / "data")
    report = scan(tmp_path / "data", workers=4)
    assert {u.path for u in report.unusable} == broken, f"unusable {sorted(u.path for u in report.unusable)}"
    assert report.n_files == len(good) + len(broken), f"n_files {report.n_files}, expected {len(good) + len(broken)}"
    assert report.ignored == [tmp_path / "data" / "README.txt"], f"ignored {report.ignored}"
    reasons = {u.path.name: u.reason for u in report.unusable}
    assert reasons["empty.jpg"].startswith("empty file"), f"reasons {reasons}"
    assert reasons["text.jpg"].startswith("not an image"), f"reasons {reasons}"
    assert reasons["half.jpg"].startswith("truncated or corrupt"), f"reasons {reasons}"


def test_scan_report_to_dict_is_json(tmp_path: Path) -> None:
    make_dataset(tmp_path / "data")
    as_dict = json.loads(json.dumps(scan([tmp_path / "data"], progress=True).to_dict()))
    assert set(as_dict) == {"n_files", "unusable", "ignored"}, f"keys {sorted(as_dict)}"
    assert all(set(u) == {"path", "reason"} for u in as_dict["unusable"]), f"entries {as_dict['unusable']}"
    assert as_dict["n_files"] == 6 and len(as_dict["unusable"]) == 3, f"got {as_dict}"


def test_scan_files_named_directly_and_missing_path(tmp_path: Path) -> None:
    good = save(Image.new("RGB", (5, 5)), tmp_path / "a.png")
    bad = tmp_path / "b.jpg"
    bad.touch()
    report = scan([str(good), bad])
    assert report.n_files == 2 and [u.path for u in report.unusable] == [bad], f"report {report}"
    with pytest.raises(DataError, match="nope"):
        scan(tmp_path / "nope")


def test_quarantine_moves_without_deleting_or_overwriting(tmp_path: Path) -> None:
    root, dest = tmp_path / "data", tmp_path / "quarantine"
    good, broken = make_dataset(root)
    clash = dest / "dogs" / "text.jpg"
    clash.parent.mkdir(parents=True)
    clash.write_bytes(b"already here")
    report = scan(root)
    moved = quarantine(report, dest, root=root)

    assert {old for old, _ in moved} == broken, f"moved {sorted(old for old, _ in moved)}"
    assert not [old for old, _ in moved if old.exists()], "a source file is still in place"
    assert not [new for _, new in moved if not new.is_file()], "a moved file is missing at its destination"
    assert all(p.exists() for p in good), "a good file was touched"
    assert clash.read_bytes() == b"already here", "the existing file was overwritten"
    new_for = {old.name: new for old, new in moved}
    assert new_for["text.jpg"] == dest / "dogs" / "text-1.jpg", f"clash went to {new_for['text.jpg']}"
    assert new_for["empty.jpg"] == dest / "cats" / "empty.jpg", f"empty.jpg went to {new_for['empty.jpg']}"
    assert new_for["half.jpg"].read_bytes()[:2] == b"\xff\xd8", "the moved file's content changed"

    log = json.loads((dest / QUARANTINE_LOG).read_text())
    logged = {e["path"]: e["reason"] for e in log["files"]}
    expected = {str(u.path): u.reason for u in report.unusable}
    assert logged == expected, f"log {logged}, expected {expected}"

    # A second round appends to the log.
    again = root / "dogs" / "again.jpg"
    again.touch()
    quarantine(ScanReport(1, [UnusableFile(again, "empty file (0 bytes)")], []), dest, root=root)
    log = json.loads((dest / "QUARANTINE.json").read_text())
    assert len(log["files"]) == 4, f"log has {len(log['files'])} entries, expected 4 (3 + 1 appended)"


def test_quarantine_refuses_files_outside_root(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.jpg"
    outside.touch()
    report = ScanReport(1, [UnusableFile(outside, "empty file (0 bytes)")], [])
    with pytest.raises(DataError, match="not below the root"):
        quarantine(report, tmp_path / "q", root=tmp_path / "data")
    assert outside.exists(), "the file was moved despite the error"


def test_scan_parameters_are_checked_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match=r"The 'workers' parameter of scan must be an int in \[1, inf\)\. Got 0"):
        scan(tmp_path / "nope", workers=0)  # (the missing folder is not even looked at)
    with pytest.raises(ParameterError, match="The 'max_pixels' parameter of scan"):
        scan(tmp_path, max_pixels=-1)


def test_a_damaged_quarantine_log_stops_before_anything_moves(tmp_path: Path) -> None:
    root, dest = tmp_path / "data", tmp_path / "quarantine"
    _, broken = make_dataset(root)
    dest.mkdir()
    (dest / QUARANTINE_LOG).write_text("{ not json")
    with pytest.raises(DataError, match="cannot read the quarantine log"):
        quarantine(scan(root), dest, root=root)
    assert all(p.exists() for p in broken), "nothing is moved when the log cannot be kept"
    assert (dest / QUARANTINE_LOG).read_text() == "{ not json", "the damaged log is left for the user to look at"


def test_overlapping_arguments_are_checked_once_in_the_order_they_were_found(tmp_path: Path) -> None:
    """The walk is lazy (nothing listed); a file named before or after a folder that holds it, a subfolder given
    after its folder, a text file named in a folder: each checked once, in the order a whole listing gave."""
    _good, broken = make_dataset(tmp_path / "data")
    data = tmp_path / "data"
    (data / "cats" / "notes.txt").write_text("not an image")
    report = scan(
        [data / "dogs" / "text.jpg", data, data / "cats", data / "cats" / "empty.jpg", data / "cats" / "notes.txt"]
    )
    names = [u.path.relative_to(data).as_posix() for u in report.unusable]
    assert names == ["dogs/text.jpg", "cats/empty.jpg", "dogs/half.jpg", "cats/notes.txt"]
    assert report.n_files == 7
    assert sorted(p.relative_to(data).as_posix() for p in report.ignored) == ["README.txt", "cats/notes.txt"]
    assert {u.path for u in report.unusable} >= broken
