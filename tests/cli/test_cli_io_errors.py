"""A file system that fails under a command — full, read-only, a file-size limit, no permission — ends in one line
naming the path and what to do, exit 2: never a traceback, never exit 1 (which means "some photos unusable").

Real failures, not mocks: small tmpfs mounts (needs root; skipped otherwise), a read-only mount, RLIMIT_FSIZE.
"""

from __future__ import annotations

import errno
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from headstart._io import io_error_message, write_bytes_atomic

SAMPLE_TRAIN = Path(__file__).resolve().parents[2] / "src" / "headstart" / "sample_data" / "pets" / "train"


def _mount(folder: Path, options: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    return folder


@pytest.fixture()
def mounts():
    made: list[Path] = []

    def mount(folder: Path, options: str) -> Path:
        made.append(_mount(folder, options))
        return folder

    yield mount
    for folder in reversed(made):
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture(scope="module")
def few_photos(tmp_path_factory) -> Path:
    """Two classes of three photos: extraction is short."""
    root = tmp_path_factory.mktemp("few")
    for breed in sorted(p for p in SAMPLE_TRAIN.iterdir() if p.is_dir())[:2]:
        (root / breed.name).mkdir()
        for photo in sorted(breed.glob("*.jpg"))[:3]:
            shutil.copy(photo, root / breed.name / photo.name)
    return root


def _run(*args: str, env: dict[str, str] | None = None, fsize: int | None = None) -> subprocess.CompletedProcess:
    def limit() -> None:
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "headstart", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=limit,
    )


def _one_line(proc: subprocess.CompletedProcess, path: Path | str, words: str) -> None:
    assert proc.returncode == 2, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert str(path) in errors[0] and words in errors[0], errors[0]


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["torch", "openvino"])
def test_the_cache_filling_up_during_extraction(tmp_path: Path, mounts, few_photos: Path, engine: str) -> None:
    if engine == "openvino":
        pytest.importorskip("openvino")
    disk = mounts(tmp_path / "disk", "size=96k" if engine == "torch" else "size=1m")
    engines = {"HEADSTART_ENGINE_DIR": str(disk / "engines")}  # (where OpenVINO's conversion is written)
    proc = _run("extract", str(few_photos), "--engine", engine, "--cache-dir", str(disk / "cache"), env=engines)
    _one_line(proc, disk, "no space left")


@pytest.mark.slow
def test_a_read_only_cache(tmp_path: Path, mounts, few_photos: Path) -> None:
    disk = mounts(tmp_path / "ro", "size=64k,ro")
    proc = _run("extract", str(few_photos), "--engine", "torch", env={"HEADSTART_CACHE_DIR": str(disk / "cache")})
    _one_line(proc, disk, "read-only")


@pytest.mark.slow
def test_a_file_size_limit_while_saving_the_model(tmp_path: Path, sample_model: Path) -> None:
    """RLIMIT_FSIZE (`ulimit -f`) below the model file's size: EFBIG at the save, after the training."""
    out = tmp_path / "pets.safetensors"
    proc = _run("train", str(SAMPLE_TRAIN), "--backbone", "tf_efficientnet_lite0", "--out", str(out), fsize=1 << 20)
    _one_line(proc, out, "larger than this system allows")
    assert not out.exists() and not out.with_name("pets-run").exists(), "half a pair was left"


def test_io_errors_are_worded_once_for_every_raiser(tmp_path: Path) -> None:
    """The words come from one function, whatever raised: Python's OSError (with or without a file name),
    SQLite's own errors, a library that wrapped the OSError, a failed write inside an atomic write."""
    import sqlite3

    full = OSError(errno.ENOSPC, "No space left on device", "runs/pets.safetensors")
    assert io_error_message(full).startswith("runs/pets.safetensors: cannot write it: no space left")
    wrapped = RuntimeError("stream writer failed")
    wrapped.__cause__ = OSError(errno.EROFS, "Read-only file system", "/mnt/x.png")
    assert io_error_message(wrapped).startswith("/mnt/x.png: cannot write it: the file system is read-only")
    assert "features.sqlite" in io_error_message(sqlite3.OperationalError("database or disk is full"))
    assert io_error_message(ValueError("nothing to do with files")) is None
    assert io_error_message(OSError(errno.ENOENT, "No such file", "x")) is None  # (said elsewhere, with advice)
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        with pytest.raises(OSError) as caught:
            write_bytes_atomic(locked / "out.json", b"{}")
        assert io_error_message(caught.value).startswith(str(locked / "out.json")), io_error_message(caught.value)


@pytest.fixture()
def ext4(tmp_path: Path):
    """A small ext4 file system on a loop device (needs root, mkfs.ext4 and chattr), for immutable folders: the one
    way to meet EPERM as root."""
    image, mount = tmp_path / "ext4.img", tmp_path / "ext4"
    mount.mkdir()
    with image.open("wb") as handle:
        handle.truncate(16 << 20)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True)
    if (
        made.returncode
        or subprocess.run(["mount", "-o", "loop", str(image), str(mount)], capture_output=True).returncode
    ):
        pytest.skip("cannot make and mount an ext4 image here (needs root and mkfs.ext4)")
    locked: list[Path] = []

    def immutable(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
            pytest.skip("chattr +i is not supported here")
        locked.append(folder)
        return folder

    yield mount, immutable
    for folder in locked:
        subprocess.run(["chattr", "-i", str(folder)], check=False)
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_a_quarantine_folder_that_refuses_a_move(tmp_path: Path, ext4) -> None:
    """EPERM part-way through `scan --quarantine` (one class folder of DIR immutable): one line naming the file,
    what was moved before it, exit 2; every file's bytes still somewhere."""
    mount, immutable = ext4
    data = tmp_path / "data"
    for name in ("a", "b"):
        (data / name).mkdir(parents=True)
        (data / name / "1.jpg").write_text(f"not a photo {name}")
    dest = mount / "q"
    immutable(dest / "b")
    proc = _run("scan", str(data), "--quarantine", str(dest))
    _one_line(proc, data / "b" / "1.jpg", "Operation not permitted")
    assert "moved before it are listed in" in proc.stderr, proc.stderr
    assert (dest / "a" / "1.jpg").read_text() == "not a photo a" and (
        data / "b" / "1.jpg"
    ).read_text() == "not a photo b"


def test_a_library_failing_to_write_is_asked_of_the_file_system(tmp_path: Path, mounts) -> None:
    """torch.save keeps no errno ("PytorchStreamWriter failed writing file"): inside atomic_path (every output, the
    fine-tuning checkpoints included) the failure becomes the OSError behind it, naming the target, and the
    half-written temporary is gone."""
    torch = pytest.importorskip("torch")
    from headstart._io import atomic_path

    disk = mounts(tmp_path / "disk", "size=1m")
    with pytest.raises(OSError) as caught:
        with atomic_path(disk / "checkpoint.pt") as temporary:
            torch.save({"weights": torch.zeros(1 << 20)}, temporary)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(disk / "checkpoint.pt"), caught.value
    assert io_error_message(caught.value).startswith(f"{disk / 'checkpoint.pt'}: cannot write it: no space left")
    assert not list(disk.iterdir()), "the temporary was left"
