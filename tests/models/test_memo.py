"""The memo of probe fits and pictures: same inputs give the remembered result, any change is a miss."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from headstart.models.memo import Memo, memo_pictures
from headstart.models.probe import LinearProbe
from headstart.models.probe_fit import ProbeFit, fit_probe


@pytest.fixture()
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 12)).astype(np.float32)
    y = np.array(["cat", "dog", "fox"])[(X[:, 0] > 0).astype(int) + (X[:, 1] > 1).astype(int)]
    return X, y


def entries(memo: Memo) -> list[str]:
    return sorted(p.name for p in memo.folder.iterdir()) if memo.folder.is_dir() else []


def test_key_tells_apart_dtype_shape_and_order_of_parts() -> None:
    a = np.arange(6, dtype=np.float32)
    keys = {
        Memo.key(a),
        Memo.key(a.reshape(2, 3)),
        Memo.key(a.astype(np.float64)),
        Memo.key(a, "x"),
        Memo.key("x", a),
        Memo.key(a.tobytes()),
    }
    assert len(keys) == 6
    assert Memo.key({"a": 1, "b": 2}) == Memo.key({"b": 2, "a": 1})
    assert Memo.key("ab", "c") != Memo.key("a", "bc")


def test_a_fit_is_remembered_and_predicts_like_the_probe(tmp_path: Path, data) -> None:
    X, y = data
    memo = Memo(tmp_path / "memo")
    first = fit_probe(X, y, memo=memo)
    assert len(entries(memo)) == 1
    direct = LinearProbe(random_state=0).fit(X, y)
    np.testing.assert_array_equal(first.predict_proba(X), direct.predict_proba(X))
    assert first.C_ == direct.C_ and first.temperature_ == direct.temperature_

    again = fit_probe(X, y, memo=memo)
    assert len(entries(memo)) == 1
    for name in ("coef_", "intercept_", "classes_"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    assert (again.C_, again.cv_accuracy_, again.temperature_, again.n_splits_) == (
        first.C_,
        first.cv_accuracy_,
        first.temperature_,
        first.n_splits_,
    )
    np.testing.assert_array_equal(first.predict_proba(X), again.predict_proba(X))


@pytest.mark.slow
def test_any_change_of_input_or_setting_is_a_miss(tmp_path: Path, data) -> None:
    X, y = data
    memo = Memo(tmp_path / "memo")
    fit_probe(X, y, memo=memo)
    changed = y.copy()
    changed[0] = "fox" if y[0] != "fox" else "cat"
    fit_probe(X, changed, memo=memo)
    X2 = X.copy()
    X2[3, 3] += 1e-3
    fit_probe(X2, y, memo=memo)
    fit_probe(X, y, random_state=1, memo=memo)
    assert len(entries(memo)) == 4


def test_a_damaged_entry_is_refitted_and_replaced(tmp_path: Path, data) -> None:
    X, y = data
    memo = Memo(tmp_path / "memo")
    good = fit_probe(X, y, memo=memo)
    (entry,) = memo.folder.iterdir()
    entry.write_bytes(b"\x80\x04 not a safetensors file")
    again = fit_probe(X, y, memo=memo)
    np.testing.assert_array_equal(good.coef_, again.coef_)
    assert ProbeFit.from_bytes(entry.read_bytes()).C_ == good.C_


def test_no_memo_writes_nothing(tmp_path: Path, data) -> None:
    X, y = data
    fit = fit_probe(X, y, memo=None)
    assert fit.coef_.shape == (3, 12)
    assert not any(tmp_path.iterdir())


def test_prune_deletes_the_least_recently_used(tmp_path: Path) -> None:
    memo = Memo(tmp_path / "memo", max_bytes=3500)
    for i, name in enumerate("abc"):
        memo.write(name, ".bin", bytes(1000))
        os.utime(memo.path(name, ".bin"), ns=(i * 10**9, i * 10**9))
    memo.read("a", ".bin")  # a use: a is now the most recent
    memo.write("d", ".bin", bytes(1000))  # 4000 bytes > 3500: b, the least recently used, goes
    assert entries(memo) == ["a.bin", "c.bin", "d.bin"]


def test_pictures_are_drawn_once_then_copied(tmp_path: Path) -> None:
    memo = Memo(tmp_path / "memo")
    drawn = []

    def draw(folder: Path) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        drawn.append(folder)
        (folder / "one.png").write_bytes(b"picture one")
        (folder / "two.png").write_bytes(b"picture two")
        return [folder / "one.png", folder / "two.png"]

    first = tmp_path / "first"
    memo_pictures(memo, ["inputs", 1], first, lambda: draw(first))
    second = tmp_path / "second"
    written = memo_pictures(memo, ["inputs", 1], second, lambda: draw(second))
    assert drawn == [first]
    assert [p.read_bytes() for p in written] == [b"picture one", b"picture two"]

    third = tmp_path / "third"
    memo_pictures(memo, ["inputs", 2], third, lambda: draw(third))  # other inputs: drawn
    for entry in memo.folder.glob("*-one.png"):
        entry.unlink()  # an incomplete entry: drawn again
    fourth = tmp_path / "fourth"
    memo_pictures(memo, ["inputs", 1], fourth, lambda: draw(fourth))
    assert drawn == [first, third, fourth]
