"""``headstart info`` (what a model file is, from its header) and ``headstart cache`` (what the cache holds; cleaning
by backbone and age, with a dry run, never outside the cache folder). Real model files, real extractions."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli as run

pytestmark = pytest.mark.slow  # (real extractions, real model files)


@pytest.fixture(autouse=True)
def _keep_the_session_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--cache-dir` points the process at another cache (os.environ): put the session's back after each test."""
    monkeypatch.setenv("HEADSTART_CACHE_DIR", os.environ["HEADSTART_CACHE_DIR"])


# ------------------------------------------------------------------------------------------------------ info
def test_info_says_what_the_model_is_and_how_it_was_made(sample_model: Path) -> None:
    human = run("info", sample_model)
    assert human.exit_code == 0, human.output
    text = human.stdout
    for fragment in ("a headstart model file", "classes (12): Abyssinian, Bengal", "backbone: tf_efficientnet_lite0"):
        assert fragment in text, fragment
    assert "preprocessing: 224×224 px, crop 0.875" in text and "bicubic" in text
    assert "method: probe" in text and "validation: accuracy" in text and "seed 0" in text
    details = json.loads(run("info", sample_model, "--json").stdout)
    assert details["classes"][0] == "Abyssinian" and details["backbone"]["name"] == "tf_efficientnet_lite0"
    assert details["method"] == "probe" and 0 <= details["metrics"]["val_accuracy"] <= 1
    assert details["file"]["bytes"] == sample_model.stat().st_size and details["file"]["parameters"] > 3_000_000


def test_info_reads_the_header_only_and_imports_no_torch(sample_model: Path) -> None:
    code = (
        "import sys; from headstart.cli import app\n"
        "try:\n    app(['info', sys.argv[1]])\nexcept SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
        "assert 'torch' not in sys.modules and 'timm' not in sys.modules, 'imported torch'\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(sample_model)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("what", ["a folder", "missing"])
def test_info_on_something_else_is_one_line_and_2(what: str, tmp_path: Path) -> None:
    target = tmp_path if what == "a folder" else tmp_path / "nope.safetensors"
    result = run("info", target)
    assert result.exit_code == 2 and result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1


# ----------------------------------------------------------------------------------------------------- cache
@pytest.fixture(scope="module")
def extracted(sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder after one real extraction of 4 photos (made once; each test cleans its own copy)."""
    root = tmp_path_factory.mktemp("extracted")
    for breed in ("pug", "beagle"):
        shutil.copytree(sample / "test" / breed, root / "photos" / breed)
    session_cache = os.environ["HEADSTART_CACHE_DIR"]
    try:
        result = run("extract", root / "photos", "--cache-dir", root / "cache")
    finally:
        os.environ["HEADSTART_CACHE_DIR"] = session_cache  # (--cache-dir points the process elsewhere)
    assert result.exit_code == 0, result.output
    return root / "cache"


@pytest.fixture()
def filled_cache(extracted: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(extracted, tmp_path / "cache", symlinks=True))


def vectors(folder: Path) -> int:
    with sqlite3.connect(folder / "features.sqlite") as db:
        return db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]


def test_cache_shows_size_and_features_by_backbone_and_precision(filled_cache: Path) -> None:
    summary = json.loads(run("cache", "--cache-dir", filled_cache, "--json").stdout)
    [row] = summary["features"]["backbones"]
    assert row["backbone"] == "tf_efficientnet_lite0" and row["vectors"] == 4 and row["views"] == {"orig": 4}
    assert row["precision"] in ("bf16", "fp32") and row["last_used_days"] == 0.0
    on_disk = sum(p.stat().st_size for p in filled_cache.rglob("*") if p.is_file())
    assert on_disk <= summary["bytes"] <= on_disk + 2**20  # (+ the write-ahead log, folded back when it closed)
    human = run("cache", "--cache-dir", filled_cache)
    assert human.exit_code == 0 and "tf_efficientnet_lite0" in human.stdout and "MB in all" in human.stdout


def test_cache_clean_by_backbone_with_a_dry_run_first(filled_cache: Path) -> None:
    def listing() -> list[Path]:  # (less SQLite's write-ahead log files, which come and go with connections)
        return sorted(p for p in filled_cache.rglob("*") if not p.name.endswith(("-wal", "-shm")))

    before = listing()
    dry = run("cache", "clean", "--backbone", "tf_efficientnet_lite0", "--dry-run", "--cache-dir", filled_cache)
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.startswith("would remove 4 feature vectors of tf_efficientnet_lite0")
    assert listing() == before and vectors(filled_cache) == 4, "a dry run removes nothing"
    done = run("cache", "clean", "-b", "tf_efficientnet_lite0", "--cache-dir", filled_cache, "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["removed_vectors"] == 4 and vectors(filled_cache) == 0
    assert not list((filled_cache / "backbones").glob("*.safetensors")), "its trunk weights went too"


def test_cache_clean_by_age_never_touches_anything_outside_the_cache_folder(filled_cache: Path, tmp_path: Path) -> None:
    outside = tmp_path / "precious.json"
    outside.write_text("{}")
    link = filled_cache / "memo" / "link-to-outside.json"
    link.parent.mkdir(exist_ok=True)
    link.symlink_to(outside)
    month_ago = time.time() - 40 * 86400
    for path in (outside, *[p for p in filled_cache.rglob("*") if p.is_file() and p.suffix != ".sqlite"]):
        os.utime(path, (month_ago, month_ago))
    os.utime(link, (month_ago, month_ago), follow_symlinks=False)
    with sqlite3.connect(filled_cache / "features.sqlite") as db:
        db.execute("UPDATE last_used SET at=?", (month_ago,))
    result = run("cache", "clean", "--older-than", "30d", "--cache-dir", filled_cache)
    assert result.exit_code == 0, result.output
    assert vectors(filled_cache) == 0 and not link.is_symlink()
    assert outside.read_text() == "{}", "a link's target outside the cache stays"
    assert (filled_cache / "features.sqlite").is_file()


def test_cache_clean_says_what_it_needs(filled_cache: Path) -> None:
    nothing = run("cache", "clean", "--cache-dir", filled_cache)
    assert nothing.exit_code == 2 and "--older-than" in nothing.stderr
    unknown = run("cache", "clean", "-b", "resnet5O", "--cache-dir", filled_cache)
    assert unknown.exit_code == 2 and "holds no backbone 'resnet5O'" in unknown.stderr
    bad_age = run("cache", "clean", "--older-than", "soon", "--cache-dir", filled_cache)
    assert bad_age.exit_code == 2 and "30d" in bad_age.stderr
