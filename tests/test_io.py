"""The shared file machinery: output locations checked before work, writes that a kill cannot half-do, temporaries a
killed writer left behind cleaned by the next write, and files readable by the group and others under umask 022."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from headstart._io import (
    atomic_path,
    check_output,
    remove_stale_temporaries,
    save_figure,
    write_bytes_atomic,
    write_json,
    write_text_atomic,
)
from headstart.errors import HeadstartError, OutputError


def tree(root: Path) -> list[str]:
    """Every path under ``root``, hidden ones included (a probe or temporary left behind shows here)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# ------------------------------------------------------------------------- check_output: refused before any work
@pytest.fixture()
def places(tmp_path: Path) -> Path:
    (tmp_path / "a-file").write_text("not a folder\n")
    (tmp_path / "a-folder").mkdir()
    return tmp_path


def refused(path, kind: str = "file", **kwargs) -> str:
    with pytest.raises(OutputError) as info:
        check_output(path, kind, "--out", **kwargs)
    message = str(info.value)
    assert isinstance(info.value, HeadstartError)
    assert "\n" not in message and message.startswith(f"--out {path} cannot be written: ")
    return message


def test_accepts_writable_places_and_creates_nothing(places: Path) -> None:
    before = tree(places)
    assert check_output(places / "new" / "deeper" / "m.safetensors") == places / "new" / "deeper" / "m.safetensors"
    assert check_output(places / "a-file") == places / "a-file"  # an existing file is replaced, as a re-run should
    assert check_output(places / "a-folder", "folder") == places / "a-folder"
    assert check_output(places / "new-folder" / "run", "folder") == places / "new-folder" / "run"
    assert tree(places) == before, "checking wrote something (a folder, or a probe it did not remove)"


def test_a_file_under_a_file(places: Path) -> None:
    message = refused(places / "a-file" / "m.safetensors")
    assert f"{places / 'a-file'} is a file, not a folder" in message
    message = refused(places / "a-file" / "deeper" / "run", "folder")
    assert f"{places / 'a-file'} is a file" in message


def test_an_existing_folder_where_a_file_is_wanted(places: Path) -> None:
    # what used to end in IsADirectoryError after all the work (`--out dir/`)
    message = refused(places / "a-folder", example="model.safetensors")
    assert "it is a folder" in message and str(places / "a-folder" / "model.safetensors") in message


def test_an_existing_file_where_a_folder_is_wanted(places: Path) -> None:
    assert "it is a file, not a folder" in refused(places / "a-file", "folder")


def test_a_folder_where_the_command_writes_a_file_inside(places: Path) -> None:
    (places / "a-folder" / "metrics.json").mkdir()
    message = refused(places / "a-folder", "folder", contents=("config.json", "metrics.json"))
    assert f"{places / 'a-folder' / 'metrics.json'} is a folder where a file is written" in message


def test_a_device_or_a_broken_link_is_no_output_file(places: Path) -> None:
    # renaming over /dev/null would replace the device node itself (as root)
    assert "not a regular file" in refused(Path("/dev/null"))
    (places / "dangling").symlink_to(places / "nowhere")
    assert "not a regular file" in refused(places / "dangling")
    assert "broken link" in refused(places / "dangling" / "m.png")


def test_a_kind_that_is_neither_file_nor_folder_is_a_programming_error(places: Path) -> None:
    with pytest.raises(ValueError, match="'file' or 'folder'"):
        check_output(places / "x", "dir")


READ_ONLY_FOR_ROOT = [Path("/sys"), Path("/proc/sys")]  # kernel file systems refuse new files even to root


@pytest.mark.parametrize("kind", ["file", "folder"])
@pytest.mark.parametrize("location", READ_ONLY_FOR_ROOT, ids=str)
def test_a_location_that_refuses_new_files(location: Path, kind: str) -> None:
    if not location.is_dir():
        pytest.skip(f"{location} is not here")
    probe = location / f"headstart-test-{os.getpid()}"
    try:
        probe.touch()
    except OSError:
        pass
    else:
        probe.unlink()
        pytest.skip(f"{location} takes new files here")
    message = refused(location / "out" / "m.png", kind)
    assert f"{location} is " in message and "choose a writable location" in message


def honour_permission_bits() -> None:
    """In a child before exec: drop root's power to ignore permission bits (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH),
    so a 0555 folder is read-only to it as to any user (a no-op when not root)."""
    if os.geteuid() != 0:
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP: gone from the bounding set, so from exec on
            os._exit(97)


def test_a_folder_without_write_permission(tmp_path: Path) -> None:
    """Permission bits, as a user meets them (as root, in a child that cannot override them)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    code = textwrap.dedent(f"""
        import os
        from headstart._io import check_output
        from headstart.errors import OutputError
        if os.access({str(locked)!r}, os.W_OK):
            print("permission bits are ignored here")
        try:
            check_output({str(locked / "m.safetensors")!r}, "file", "--out")
        except OutputError as exc:
            print(exc)
        else:
            print("accepted")
    """)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, preexec_fn=honour_permission_bits
    )
    if done.returncode == 97 or "ignored here" in done.stdout:
        pytest.skip("cannot make a folder read-only to this process (root without CAP_SETPCAP)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        f"--out {locked / 'm.safetensors'} cannot be written: {locked} is not writable "
        "(permissions); choose a writable location (or make it writable)."
    )


# ------------------------------------------------------------------------------- atomic writes and temporaries
def temporaries(folder: Path, name: str) -> list[Path]:
    return sorted(folder.glob(f".{name}.*.tmp"))


WRITER = textwrap.dedent("""
    import sys, time
    from headstart._io import atomic_path
    target = sys.argv[1]
    chunk = b"x" * (1 << 20)
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as handle:
            for i in range(10_000):  # up to 10 GB: it is killed long before
                handle.write(chunk)
                handle.flush()
                if i == 8:
                    print("writing", flush=True)
                time.sleep(0.002)
""")


def start_writer(target: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing", "the writer did not start"
    return proc


def test_a_writer_killed_mid_write_leaves_the_old_file_and_the_next_write_cleans_its_temporary(tmp_path: Path) -> None:
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"the old model")
    proc = start_writer(target)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    [leftover] = temporaries(tmp_path, target.name)
    assert str(proc.pid) in leftover.name and leftover.stat().st_size >= 9 << 20  # a large, half-written file
    assert target.read_bytes() == b"the old model", "a kill must never leave a half-written target"

    write_bytes_atomic(target, b"the new model")
    assert target.read_bytes() == b"the new model"
    assert temporaries(tmp_path, target.name) == [], "the next write removes what the killed writer left"


def test_a_live_writers_temporary_is_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "features.bin"
    proc = start_writer(target)
    try:
        [live] = temporaries(tmp_path, target.name)
        assert remove_stale_temporaries(target) == []
        assert live.exists(), "a running writer's temporary was removed"
        (tmp_path / f".{target.name}.999999999.0123abcd.tmp").write_bytes(b"from a process that is gone")
        assert [p.name for p in remove_stale_temporaries(target)] == [f".{target.name}.999999999.0123abcd.tmp"]
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_a_failed_write_removes_its_temporary_and_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    write_json(target, {"accuracy": 0.9})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text('{"accura')
        raise RuntimeError("the disk filled up")
    assert json.loads(target.read_text()) == {"accuracy": 0.9}
    assert temporaries(tmp_path, target.name) == []


# --------------------------------------------------------------------------------- permissions follow the umask
@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def write_every_kind(folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1))
    fig.add_subplot().plot([0, 1])
    with atomic_path(folder / "raw.bin") as tmp:
        tmp.write_bytes(b"raw")
    return [
        write_bytes_atomic(folder / "adversarial.png", b"\x89PNG"),
        write_text_atomic(folder / "notes.txt", "text"),
        write_json(folder / "attack.json", {"ok": True}),
        save_figure(fig, folder / "confusion_matrix.png"),
        folder / "raw.bin",
    ]


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_written_files_get_the_mode_the_umask_gives(tmp_path: Path, mask: int, mode: int) -> None:
    # the old mkstemp-based writer made every file 0600: attack PNGs, pictures and cache files unreadable to others
    with umask(mask):
        written = write_every_kind(tmp_path)
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in written} == {p.name: oct(mode) for p in written}


def test_check_output_is_fast_enough_to_run_before_every_command(tmp_path: Path) -> None:
    start = time.perf_counter()
    for i in range(200):
        check_output(tmp_path / f"run-{i}" / "m.safetensors")
    assert (time.perf_counter() - start) / 200 < 0.005  # well under a millisecond here; 5 ms is the bound


def test_a_folder_output_in_the_data_folder_is_refused(places: Path) -> None:
    # `evaluate MODEL test_photos --out test_photos` wrote its pictures among the photos: the next command on the
    # folder then stopped at "3 photos directly inside it (confusion_matrix.png, ...)"
    photos = places / "photos"
    (photos / "cat").mkdir(parents=True)
    assert "it is the data folder" in refused(photos, "folder", data=photos)
    assert f"inside the data folder {photos}" in refused(photos / "eval", "folder", data=photos)
    assert "inside the data folder" in refused(photos / "cat", "folder", data=str(photos) + "/")
    assert check_output(photos / ".eval", "folder", data=photos) == photos / ".eval"  # hidden: listing skips it
    assert check_output(places / "eval", "folder", data=photos) == places / "eval"
    (places / "list.csv").write_text("photos/cat/1.jpg,cat\n")
    assert check_output(places / "eval", "folder", data=places / "list.csv") == places / "eval"


@pytest.mark.parametrize("axis", ["x", "y"])
def test_numbers_on_a_log_axis_are_drawn_as_numbers_not_as_maths_markup(tmp_path: Path, axis: str) -> None:
    """Every figure is drawn with maths off (names are data), so matplotlib's log-axis labels, written as maths,
    came out as their markup ("$\\mathdefault{10^{-7}}$", the lr-find plot's whole axis): they are plain numbers."""
    from matplotlib.figure import Figure

    from headstart._display import figure_png

    fig = Figure()
    ax = fig.subplots()
    ax.plot([1e-7, 1e-3, 1e-1], [1e-7, 1e-3, 1e-1])
    getattr(ax, f"set_{axis}scale")("log")
    save_figure(fig, tmp_path / "log.png")
    figure_png(fig)
    labels = [t.get_text() for t in getattr(ax, f"get_{axis}ticklabels")()]
    assert labels and not any("$" in t or "mathdefault" in t for t in labels), labels
    assert any(t.replace("−", "-") == "1e-03" for t in labels), labels
