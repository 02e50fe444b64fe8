"""Every command that writes checks where it writes before any work: a location under a file, of the wrong kind or
read-only ends in one line naming it and what to do, exit 2, and nothing written.

The inputs in these tests (photos, model files) do not exist: a command that touched them before checking its
output would fail on them instead, so each case also shows that the check comes first.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import run_cli as run


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture()
def place(tmp_path: Path) -> Path:
    """A folder holding a file ``a-file`` and a folder ``a-folder``; the inputs ``photos/``, ``pets.safetensors``
    and ``cat.jpg`` named in the commands are not there."""
    (tmp_path / "a-file").write_text("in the way\n")
    (tmp_path / "a-folder").mkdir()
    return tmp_path


# (command line with {p} for the place, the option the message must name, the path it must name, what it says)
UNDER_A_FILE = "{p}/a-file is a file, not a folder"
IS_A_FOLDER = "it is a folder; give the path of a file to write"
IS_A_FILE = "it is a file, not a folder"
CASES = {
    "train --out under a file": (
        "train {p}/photos --out {p}/a-file/m.safetensors",
        "--out",
        "{p}/a-file/m.safetensors",
        UNDER_A_FILE,
    ),
    "train --out a folder": (
        "train {p}/photos --out {p}/a-folder",
        "--out",
        "{p}/a-folder",
        IS_A_FOLDER + ", e.g. {p}/a-folder/model.safetensors",
    ),
    "train --run-dir a file": (
        "train {p}/photos --out {p}/m.safetensors --run-dir {p}/a-file",
        "--run-dir",
        "{p}/a-file",
        IS_A_FILE,
    ),
    "train's default run folder a file": (
        "train {p}/photos --out {p}/a.safetensors",
        "the run folder (--run-dir)",
        "{p}/a-run",
        IS_A_FILE,
    ),
    "train --resume a file": (
        "train {p}/photos --method finetune --out {p}/m.safetensors --resume {p}/a-file",
        "--resume",
        "{p}/a-file",
        IS_A_FILE,
    ),
    "lr-find --out a folder": (  # (the example is lr-find's default name, made from the data's: photos-…)
        "lr-find {p}/photos --out {p}/a-folder",
        "--out",
        "{p}/a-folder",
        IS_A_FOLDER + ", e.g. {p}/a-folder/photos-lr-find.png",
    ),
    "sweep --out a file": ("sweep {p}/photos --set lr=0.1,0.01 --out {p}/a-file", "--out", "{p}/a-file", IS_A_FILE),
    "evaluate --out a file": (
        "evaluate {p}/pets.safetensors {p}/photos --out {p}/a-file",
        "--out",
        "{p}/a-file",
        IS_A_FILE,
    ),
    "evaluate -o under a file": (
        "evaluate {p}/pets.safetensors {p}/photos -o {p}/a-file/eval",
        "--out",
        "{p}/a-file/eval",
        UNDER_A_FILE,
    ),
    "export --out a folder": (
        "export {p}/pets.safetensors --out {p}/a-folder",
        "--out",
        "{p}/a-folder",
        IS_A_FOLDER + ", e.g. {p}/a-folder/pets.onnx",
    ),
    "export's default --out a folder": ("export {p}/pets.safetensors", "--out", "{p}/pets.onnx", IS_A_FOLDER),
    "export --int8 copy a folder": (
        "export {p}/pets.safetensors --out {p}/x.onnx --int8",
        "--int8's copy",
        "{p}/x.int8.onnx",
        IS_A_FOLDER,
    ),
    "attack --out a file": (
        "attack tf_efficientnet_lite0 {p}/cat.jpg --out {p}/a-file",
        "--out",
        "{p}/a-file",
        IS_A_FILE,
    ),
    "robustness --out under a file": (
        "robustness {p}/pets.safetensors {p}/photos --out {p}/a-file/r",
        "--out",
        "{p}/a-file/r",
        UNDER_A_FILE,
    ),
    "dream --out a folder": (
        "dream --target 1 --out {p}/a-folder",
        "--out",
        "{p}/a-folder",
        IS_A_FOLDER + ", e.g. {p}/a-folder/dream.png",
    ),
    "dream's report a folder": ("dream --target 1 --out {p}/d.png", "--out's report", "{p}/d.json", IS_A_FOLDER),
    "featuremaps --out under a file": (
        "featuremaps {p}/cat.jpg --out {p}/a-file/f.png",
        "--out",
        "{p}/a-file/f.png",
        UNDER_A_FILE,
    ),
    "explain --out a folder": (
        "explain tf_efficientnet_lite0 {p}/cat.jpg --out {p}/a-folder",
        "--out",
        "{p}/a-folder",
        IS_A_FOLDER + ", e.g. {p}/a-folder/cat-tf_efficientnet_lite0-explain.png",
    ),
    "compare --out a file": ("compare {p}/photos --out {p}/a-file", "--out", "{p}/a-file", IS_A_FILE),
    "demo --out a file": ("demo --out {p}/a-file", "--out", "{p}/a-file", IS_A_FILE),
    "download into a file": ("download pets {p}/a-file", "DESTINATION", "{p}/a-file", IS_A_FILE),
    "extract --cache-dir a file": ("extract {p}/photos --cache-dir {p}/a-file", "--cache-dir", "{p}/a-file", IS_A_FILE),
    "predict --cache-dir under a file": (
        "predict {p}/pets.safetensors {p}/cat.jpg --cache-dir {p}/a-file/c",
        "--cache-dir",
        "{p}/a-file/c",
        UNDER_A_FILE,
    ),
    "audit --out a file": ("audit {p}/photos --out {p}/a-file", "--out", "{p}/a-file", IS_A_FILE),
    "audit --quarantine a file": (
        "audit {p}/photos --out {p}/audit --quarantine {p}/a-file",
        "--quarantine",
        "{p}/a-file",
        IS_A_FILE,
    ),
    "audit --relabel-csv a folder": (
        "audit {p}/photos --out {p}/audit --relabel-csv {p}/a-folder",
        "--relabel-csv",
        "{p}/a-folder",
        IS_A_FOLDER,
    ),
}
OPTIONAL_COMMANDS = {"audit": "headstart.cli.audit"}  # command groups other parts of the project add


@pytest.fixture()
def in_the_way(place: Path) -> Path:
    """What some cases need besides ``a-file`` and ``a-folder``: a file where train's default run folder goes, the
    JSON report dream writes beside its PNG, the int8 copy export writes beside its file, export's default file."""
    (place / "a-run").write_text("in the way\n")
    (place / "d.json").mkdir()
    (place / "x.int8.onnx").mkdir()
    (place / "pets.onnx").mkdir()
    return place


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_a_bad_output_location_is_refused_before_any_work(case: str, in_the_way: Path) -> None:
    command, option, path, problem = (part.replace("{p}", str(in_the_way)) for part in CASES[case])
    name = command.split()[0]
    if name in OPTIONAL_COMMANDS and importlib.util.find_spec(OPTIONAL_COMMANDS[name]) is None:
        pytest.skip(f"no `{name}` command in this checkout")
    before = tree(in_the_way)
    result = run(*command.split())
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines == [f"error: {option} {path} cannot be written: {lines[0].split(': ', 2)[2]}"], result.stderr
    assert problem in lines[0], lines[0]
    assert tree(in_the_way) == before, "a refused command wrote something"


@pytest.mark.parametrize(
    "command",
    [
        ["evaluate", "MODEL", "photos"],
        ["compare", "photos"],
        ["audit", "train", "--test", "photos"],
        ["sweep", "photos", "--set", "head_dropout=0,0.5"],
        ["robustness", "MODEL", "photos"],
    ],
)
def test_a_folder_output_inside_the_photos_is_refused(command: list[str], sample_model: Path, tmp_path: Path) -> None:
    """`evaluate MODEL test_photos --out test_photos` used to write its pictures among the photos, so the next
    command on that folder stopped at "3 photos directly inside it (confusion_matrix.png, ...)"."""
    for folder in ("photos", "train"):
        (tmp_path / folder / "cat").mkdir(parents=True)
        (tmp_path / folder / "cat" / "1.jpg").write_bytes(b"")
    before = tree(tmp_path)
    args = [sample_model if a == "MODEL" else tmp_path / a if a in ("photos", "train") else a for a in command]
    result = run(*args, "--out", tmp_path / "photos" / "eval")
    assert result.exit_code == 2, result.output
    assert f"is inside the data folder {tmp_path / 'photos'}" in result.stderr, result.stderr
    assert tree(tmp_path) == before


def test_the_old_spelling_out_dir_still_works_with_a_note(sample_model: Path, sample: Path, tmp_path: Path) -> None:
    result = run("evaluate", sample_model, sample / "test", "--out-dir", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "eval" / "evaluation.json").is_file()
    assert "note: --out-dir is now spelled --out" in result.stderr


def test_default_outputs_are_named_after_their_inputs_so_two_commands_never_share_one(tmp_path: Path) -> None:
    """The README's two `explain`s (a model file, a backbone) and two `sweep`s (other options) used to write the
    same default place: the second replaced the first's picture, or mixed its variants into the first's folder."""
    from headstart.cli._common import default_output

    explains = {default_output("cat", m, "explain", suffix=".png") for m in ("pets", "tf_efficientnet_lite0")}
    sweeps = {default_output("sweep", *grid) for grid in (["head_dropout"], ["lr", "unfreeze"])}
    assert explains == {Path("cat-pets-explain.png"), Path("cat-tf_efficientnet_lite0-explain.png")}
    assert sweeps == {Path("sweep-head_dropout"), Path("sweep-lr-unfreeze")}
    assert (
        default_output("cat", "resnet50.a1_in1k", "explain", suffix=".png").name == "cat-resnet50.a1_in1k-explain.png"
    )


def test_scan_checks_its_quarantine_before_decoding(sample: Path, place: Path) -> None:
    result = run("scan", sample / "test", "--quarantine", place / "a-file")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith(f"error: --quarantine {place / 'a-file'} cannot be written: {IS_A_FILE}")


@pytest.mark.slow
def test_a_run_folder_holding_a_folder_where_a_file_goes(place: Path) -> None:
    (place / "m-run" / "metrics.json").mkdir(parents=True)
    result = run("train", place / "photos", "--out", place / "m.safetensors")
    assert result.exit_code == 2, result.output
    assert f"{place / 'm-run' / 'metrics.json'} is a folder where a file is written" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("location", [Path("/sys"), Path("/proc/sys")], ids=str)
def test_a_read_only_location(location: Path, place: Path) -> None:
    if not location.is_dir() or (os.access(location, os.W_OK) and _takes_files(location)):
        pytest.skip(f"{location} is not a read-only location here")
    result = run("train", place / "photos", "--out", location / "headstart" / "m.safetensors")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(
        f"error: --out {location / 'headstart' / 'm.safetensors'} cannot be written: {location} is not writable"
    )


def _takes_files(folder: Path) -> bool:
    probe = folder / f"headstart-test-{os.getpid()}"
    try:
        probe.touch()
    except OSError:
        return False
    probe.unlink()
    return True


def honour_permission_bits() -> None:
    """In a child before exec: drop root's power to ignore permission bits (a no-op when not root)."""
    if os.geteuid() != 0:
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            os._exit(97)


def test_a_folder_without_write_permission_before_any_import_of_torch(sample: Path, tmp_path: Path) -> None:
    """The real command line, as a user without write permission meets it: refused at once, torch never imported."""
    locked = tmp_path / "shared-models"
    locked.mkdir()
    locked.chmod(0o555)
    done = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "headstart",
            "train",
            str(sample / "train"),
            "--out",
            str(locked / "pets.safetensors"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=honour_permission_bits,
        env={**os.environ, "HEADSTART_CACHE_DIR": str(tmp_path / "cache")},
    )
    if done.returncode == 97:
        pytest.skip("cannot make a folder read-only to this process (root without CAP_SETPCAP)")
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]
    said = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
    assert done.returncode == 2, done.stderr[-2000:]
    assert said == [
        f"error: --out {locked / 'pets.safetensors'} cannot be written: {locked} is not writable "
        "(permissions); choose a writable location (or make it writable)."
    ]
    assert "torch" not in imported and "headstart.features.extract" not in imported
    assert list(tmp_path.iterdir()) == [locked] and list(locked.iterdir()) == []


def test_export_refuses_before_loading_the_model(tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import sys
        from typer.testing import CliRunner
        from headstart.cli import app
        result = CliRunner().invoke(app, ["export", {str(tmp_path / "pets.safetensors")!r}, "--out", {str(tmp_path)!r}])
        print(result.exit_code, "torch" in sys.modules, "onnx" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["2", "False", "False"], done.stderr
