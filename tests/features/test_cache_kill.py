"""SIGKILL during `headstart extract` at random moments: the cache stays intact, keeps every committed batch, and a
rerun computes exactly what was missing and leaves no stray files (nor stray claims)."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from headstart.data import load_dataset
from headstart.features.backbones import resolve_backbone
from headstart.features.cache import FeatureCache
from headstart.features.extract import extract_features

SEEDS = (11, 22, 33)


def _committed(db: Path) -> int:
    """Vectors the killed process committed (0 when it died before creating its tables)."""
    if not db.exists():
        return 0
    with contextlib.closing(sqlite3.connect(db)) as con:  # (closed: an open one would keep the WAL files)
        try:
            return int(con.execute("SELECT COUNT(*) FROM vectors").fetchone()[0])
        except sqlite3.OperationalError:  # no table yet
            return 0


@pytest.mark.slow
def test_sigkill_at_random_moments_during_extract_loses_nothing_committed(
    sample: Path, tmp_path: Path, lite0, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = sample / "test"
    paths = load_dataset(data).paths
    started = time.monotonic()
    runs = {}
    for seed in SEEDS:  # all three at once (separate caches): the start-up (torch, timm) overlaps
        rng = random.Random(seed)
        target = rng.randint(0, len(paths) - 1)  # committed vectors to wait for; 0: kill during start-up
        delay = rng.uniform(0.5, 4.0) if target == 0 else rng.uniform(0.0, 0.3)
        cache = tmp_path / f"cache-{seed}"
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "headstart",
                "extract",
                str(data),
                "--batch-size",
                "2",
                "--engine",
                "torch",
                "--cache-dir",
                str(cache),
                "--json",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        runs[seed] = {
            "proc": proc,
            "cache": cache,
            "target": target,
            "delay": delay,
            "since": time.monotonic(),
            "kill_at": None,
        }
    deadline = time.monotonic() + 240
    while any(r["proc"].poll() is None for r in runs.values()):
        assert time.monotonic() < deadline, "the extractions neither finished nor were killed"
        now = time.monotonic()
        for r in runs.values():
            if r["proc"].poll() is not None:
                continue
            if r["kill_at"] is None and (r["target"] == 0 or _committed(r["cache"] / "features.sqlite") >= r["target"]):
                r["kill_at"] = (r["since"] if r["target"] == 0 else now) + r["delay"]
            if r["kill_at"] is not None and now >= r["kill_at"]:
                r["proc"].send_signal(signal.SIGKILL)
        time.sleep(0.01)

    results = {}
    for seed, r in runs.items():
        r["proc"].wait()
        r["proc"].stderr.close()
        db = r["cache"] / "features.sqlite"
        killed = r["proc"].returncode == -signal.SIGKILL
        if db.exists():
            with contextlib.closing(sqlite3.connect(db)) as con:
                assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok", seed
        kept = _committed(db)
        monkeypatch.setenv("HEADSTART_CACHE_DIR", str(r["cache"]))
        assert resolve_backbone("tf_efficientnet_lite0") == lite0.spec  # (its card: rewritten if the kill cut it)
        cache = FeatureCache(db)
        rerun = extract_features(paths, lite0, cache=cache, batch_size=2, engine="torch")
        assert rerun.unusable == [], seed
        assert (rerun.n_cached, rerun.n_computed) == (kept, len(paths) - kept), (
            f"seed {seed} (killed: {killed}, at {kept} committed): the rerun computes exactly what was missing"
        )
        with contextlib.closing(sqlite3.connect(db)) as con:
            assert con.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0, "the killed run's claims are gone"
        cache.close()
        left = sorted(p.relative_to(r["cache"]).as_posix() for p in r["cache"].rglob("*") if p.is_file())
        stray = [n for n in left if n.startswith(".") or "/." in n or n.endswith((".tmp", "-wal", "-shm", "-journal"))]
        assert stray == [] and "features.sqlite" in left, f"no stray files (temporaries, journals): {left}"
        assert all(n == "features.sqlite" or n.startswith("backbones/") for n in left), left
        results[seed] = (kept, killed, rerun.features)
    first = next(iter(results.values()))[2]
    for kept, killed, features in results.values():
        np.testing.assert_array_equal(features, first)  # what was kept is what a whole run gives
    seconds = time.monotonic() - started
    print(f"kills (committed, killed): {[(k, x) for k, x, _ in results.values()]}; {seconds:.1f} s in all")
    assert any(killed for _, killed, _ in results.values()), "at least one run was really killed"
