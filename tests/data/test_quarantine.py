"""The one safe move (headstart.data.quarantining, headstart._io.move_no_replace): whoever moves users' files, and
however many processes do it at once, every file's bytes end up somewhere, recorded, and nothing is replaced."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import pytest

from headstart._io import file_identity, move_no_replace
from headstart.data.quarantining import QUARANTINE_LOG, QuarantineWarning, quarantine
from headstart.data.scanning import ScanReport, UnusableFile, scan
from headstart.errors import DataError

pytestmark = pytest.mark.filterwarnings("ignore::headstart.data.images.SmallImageWarning")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _hashes(*folders: Path) -> Counter[str]:
    """The multiset of the bytes of every file below the folders (a quarantine folder's own log left out)."""
    return Counter(
        _digest(p)
        for folder in folders
        for p in folder.rglob("*")
        if p.is_file() and not p.is_symlink() and not (p == folder / QUARANTINE_LOG and folder.name != "data")
    )


def _broken_photos(root: Path, n: int, tag: str) -> None:
    """n unusable "photos" with distinct bytes, in two class folders (text saved as .jpg)."""
    for i in range(n):
        folder = root / ("cats" if i % 2 else "dogs")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:03d}.jpg").write_text(f"not a photo {tag} {i}")


def _headstart(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.Popen(
        [sys.executable, "-m", "headstart", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.slow
def test_two_concurrent_scans_into_one_folder_lose_nothing_and_log_everything(tmp_path: Path) -> None:
    """Two `scan --quarantine` processes at once on the same data, into the same folder, round after round (the
    same names every round, so every round clashes with the last): every file's bytes are accounted for, and the
    log names each moved file once, at a name that holds it."""
    data, dest = tmp_path / "data", tmp_path / "broken"
    expected: Counter[str] = Counter()
    for round_ in range(4):
        _broken_photos(data, 40, f"round {round_}")
        expected += _hashes(data)
        procs = [_headstart("scan", str(data), "--quarantine", str(dest), "--json") for _ in range(2)]
        results = [p.communicate(timeout=120) for p in procs]
        assert all(p.returncode in (0, 1) for p in procs), (  # (0: the other had moved them all)
            f"round {round_}: {[(p.returncode, r[1]) for p, r in zip(procs, results)]}"
        )
        assert _hashes(data, dest) == expected, f"round {round_}: a file's bytes were lost or duplicated"
        assert not _hashes(data), f"round {round_}: files left in the data set"
        log = json.loads((dest / QUARANTINE_LOG).read_text())["files"]
        named = [entry["quarantined_as"] for entry in log]
        assert len(named) == len(set(named)) == sum(expected.values()), f"round {round_}: log {len(named)} entries"
        assert all((dest / name).is_file() for name in named), f"round {round_}: the log names a missing file"
        assert all("state" not in entry and entry["moved_at"] for entry in log), "an entry left unfinished"
        moved = [m for out, _ in results for m in json.loads(out)["quarantined"]]
        assert len(moved) == 40, f"round {round_}: {len(moved)} moves reported for 40 files"


def test_move_no_replace_never_replaces_and_moves_links_as_links(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    a.write_bytes(b"A")
    b.write_bytes(b"B")
    with pytest.raises(FileExistsError):
        move_no_replace(a, b)
    assert a.read_bytes() == b"A" and b.read_bytes() == b"B", "a refused move touched a file"
    link = tmp_path / "link.jpg"
    link.symlink_to(a)
    move_no_replace(link, tmp_path / "moved-link.jpg")
    assert (tmp_path / "moved-link.jpg").is_symlink() and a.read_bytes() == b"A", "the link's file was moved"
    broken = tmp_path / "broken.jpg"
    broken.symlink_to(tmp_path / "nowhere")
    move_no_replace(broken, tmp_path / "broken-moved.jpg")
    assert (tmp_path / "broken-moved.jpg").is_symlink() and not broken.is_symlink()
    with pytest.raises(FileNotFoundError):
        move_no_replace(tmp_path / "gone.jpg", tmp_path / "gone-moved.jpg")


@pytest.fixture()
def other_filesystem(tmp_path: Path):
    """A folder on another file system (a small tmpfs; needs root), so that moves cross devices for real."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_move_across_file_systems_copies_then_links_exclusively(tmp_path: Path, other_filesystem: Path) -> None:
    source, link = tmp_path / "photo.jpg", tmp_path / "link.jpg"
    source.write_bytes(b"bytes of a photo")
    link.symlink_to(source)
    taken = other_filesystem / "taken.jpg"
    taken.write_bytes(b"already here")
    with pytest.raises(FileExistsError):
        move_no_replace(source, taken)
    assert taken.read_bytes() == b"already here" and source.is_file(), "a refused move touched a file"
    assert not [p for p in other_filesystem.iterdir() if p.name.endswith(".tmp")], "a temporary was left"
    move_no_replace(source, other_filesystem / "photo.jpg")
    move_no_replace(link, other_filesystem / "link.jpg")
    assert (other_filesystem / "photo.jpg").read_bytes() == b"bytes of a photo" and not source.exists()
    assert os.readlink(other_filesystem / "link.jpg") == str(source), "the link was not moved as a link"


def test_targets_stay_inside_the_folder_and_never_take_the_logs_name(tmp_path: Path) -> None:
    data, dest = tmp_path / "data", tmp_path / "q"
    data.mkdir()
    named_like_log = data / QUARANTINE_LOG
    named_like_log.write_text("a scanned file that happens to be called like the log")
    single = data / "single.jpg"
    single.write_text("not a photo")
    before = _hashes(data)
    # A file named like the log, and a file given alone (its root is the file itself).
    quarantine(ScanReport(1, [UnusableFile(named_like_log, "not an image")]), dest, root=data)
    quarantine(ScanReport(1, [UnusableFile(single, "not an image")]), dest, root=single)
    assert _hashes(dest) == before, "a file's bytes were lost"
    log = json.loads((dest / QUARANTINE_LOG).read_text())["files"]
    assert [e["quarantined_as"] for e in log] == ["QUARANTINE-1.json", "single.jpg"], log
    # The CLI: `scan ONE_FILE --quarantine DIR` moves the file into DIR, by its name.
    one = data / "one.jpg"
    one.write_text("not a photo either")
    proc = _headstart("scan", str(one), "--quarantine", str(dest))
    proc.communicate(timeout=60)
    assert proc.returncode == 1 and (dest / "one.jpg").read_text() == "not a photo either" and dest.is_dir()
    # A folder inside the destination that is a link leading out of it.
    outside = tmp_path / "outside"
    outside.mkdir()
    (dest / "cats").symlink_to(outside, target_is_directory=True)
    (data / "cats").mkdir()
    cat = data / "cats" / "x.jpg"
    cat.write_text("broken cat")
    with pytest.raises(DataError, match="leads outside the quarantine folder"):
        quarantine(ScanReport(1, [UnusableFile(cat, "not an image")]), dest, root=data)
    assert cat.read_text() == "broken cat" and not list(outside.iterdir()), "the file left the folder"


@pytest.mark.parametrize("where", ["the data folder", "a folder inside it", "inside it through a link"])
def test_a_destination_in_the_data_is_refused_before_anything_moves(tmp_path: Path, where: str) -> None:
    data = tmp_path / "data"
    _broken_photos(data, 4, where)
    before = _hashes(data)
    dest = {"the data folder": data, "a folder inside it": data / "dogs" / "q"}.get(where)
    if dest is None:
        (tmp_path / "alias").symlink_to(data, target_is_directory=True)
        dest = tmp_path / "alias" / "q"
    with pytest.raises(DataError, match="data folder"):
        quarantine(scan(data), dest, root=data)
    proc = _headstart("scan", str(data), "--quarantine", str(dest))
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "data folder" in stderr and "Traceback" not in stderr, stderr
    assert _hashes(data) == before, "files moved"
    assert not (data / "dogs" / "q").exists(), "the refused folder was created"
    quarantine(scan(data), data / ".quarantine", root=data)  # a hidden folder inside: listing skips it
    assert _hashes(data / ".quarantine") == before


def test_a_file_that_is_kept_is_never_moved_through_another_name(tmp_path: Path) -> None:
    """A planned name that is a kept one (its folder reached through a link) or that a kept symlink points to stays;
    another hard link or a symlink to a kept file may go, and the kept file stays whole."""
    data, dest = tmp_path / "data", tmp_path / "q"
    data.mkdir()
    real = data / "real.jpg"
    real.write_bytes(b"the only copy")
    link, hard = data / "link.jpg", data / "hard.jpg"
    link.symlink_to(real)
    os.link(real, hard)
    alias = tmp_path / "alias"
    alias.symlink_to(data, target_is_directory=True)
    planned = [UnusableFile(alias / "real.jpg", "copy"), UnusableFile(hard, "copy"), UnusableFile(link, "copy")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        moved = quarantine(ScanReport(3, planned), dest, root=data, keep=[real])
    assert real.read_bytes() == b"the only copy", "the kept file was moved under another name"
    assert sorted(new.name for _, new in moved) == ["hard.jpg", "link.jpg"], moved
    assert len([w for w in caught if issubclass(w.category, QuarantineWarning)]) == 1
    # A kept symlink: the file it points to stays (moving it would leave the kept link pointing nowhere).
    other = data / "other.jpg"
    other.write_bytes(b"pointed at")
    kept_link = data / "kept-link.jpg"
    kept_link.symlink_to(other)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert quarantine(ScanReport(1, [UnusableFile(other, "copy")]), dest, root=data, keep=[kept_link]) == []
    assert kept_link.read_bytes() == b"pointed at"


def test_the_folder_given_twice_or_through_a_link_is_scanned_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _broken_photos(data, 6, "twice")
    (tmp_path / "alias").symlink_to(data, target_is_directory=True)
    report = scan([data, tmp_path / "alias", data / "cats"])
    assert report.n_files == 6 and len(report.unusable) == 6, report


@pytest.mark.slow
def test_audit_refuses_a_test_set_that_is_the_data(tmp_path: Path, sample: Path) -> None:
    """`audit --test` given the DATA folder again (as is, through a symlink, or as hard links) is refused before any
    work: those are not leaks to move but the same photos."""
    from headstart.audit.core import audit

    data = tmp_path / "data"
    for photo in sorted((sample / "train").rglob("*.jpg"))[:8]:
        (data / photo.parent.name).mkdir(parents=True, exist_ok=True)
        (data / photo.parent.name / photo.name).write_bytes(photo.read_bytes())
    (tmp_path / "link").symlink_to(data, target_is_directory=True)
    hard = tmp_path / "hard"
    for photo in data.rglob("*.jpg"):
        (hard / photo.parent.name).mkdir(parents=True, exist_ok=True)
        os.link(photo, hard / photo.parent.name / photo.name)
    for test in (data, tmp_path / "link", hard):
        with pytest.raises(DataError, match="same files as DATA photos"):
            audit(data, test=test)
    assert file_identity(data) is not None and len(list(data.rglob("*.jpg"))) == 8


def test_a_run_killed_between_record_and_move_is_settled_by_the_next(tmp_path: Path) -> None:
    data, dest = tmp_path / "data", tmp_path / "q"
    _broken_photos(data, 2, "killed")
    dest.mkdir()
    (dest / "dogs").mkdir()
    (dest / "dogs" / "000.jpg").write_text("moved before the kill")
    log = {
        "files": [
            {"path": "data/dogs/000.jpg", "quarantined_as": "dogs/000.jpg", "reason": "r", "state": "moving"},
            {"path": "data/cats/001.jpg", "quarantined_as": "cats/001.jpg", "reason": "r", "state": "moving"},
        ]
    }
    (dest / QUARANTINE_LOG).write_text(json.dumps(log))
    (data / "dogs" / "000.jpg").unlink()
    quarantine(scan(data), dest, root=data)
    entries = json.loads((dest / QUARANTINE_LOG).read_text())["files"]
    assert [e["quarantined_as"] for e in entries] == ["dogs/000.jpg", "cats/001.jpg"], entries
    assert all("state" not in e for e in entries) and (dest / "cats" / "001.jpg").is_file()


def test_files_from_several_folders_go_to_a_folder_beside_them(tmp_path: Path) -> None:
    """`scan a/x.jpg b/y.jpg --quarantine q`: the files' common folder is no data folder, q beside them is fine."""
    for folder in ("a", "b/deep"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "x.jpg").write_text(f"not a photo in {folder}")
    before = _hashes(tmp_path)
    proc = _headstart(
        "scan",
        str(tmp_path / "a" / "x.jpg"),
        str(tmp_path / "b" / "deep" / "x.jpg"),
        "--quarantine",
        str(tmp_path / "q"),
    )
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr
    assert _hashes(tmp_path / "q") == before and not list((tmp_path / "a").iterdir()), stderr
