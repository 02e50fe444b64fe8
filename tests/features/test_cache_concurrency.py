"""Three real processes extracting overlapping photos into one cache compute each photo once, and every one of them
gets the features a single process gets, bit for bit."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from headstart.features.cache import FeatureCache
from headstart.features.extract import extract_features

_WORKER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import numpy as np
    from headstart.features import FeatureCache, extract_features, load_backbone
    db, go, out, views = sys.argv[1:5]
    paths = [Path(p) for p in sys.argv[5:]]
    backbone = load_backbone("tf_efficientnet_lite0")  # (imports and loading done before the start line)
    Path(out + ".ready").write_text("")
    while not Path(go).exists():
        time.sleep(0.005)
    feats = extract_features(paths, backbone, cache=FeatureCache(db), batch_size=3, precision="fp32", engine="torch",
                             flip_average=views == "both")
    np.save(out + ".npy", feats.features)
    Path(out).write_text(json.dumps({"n_computed": feats.n_computed, "n_views": feats.n_views_computed,
                                     "n_cached": feats.n_cached, "unusable": len(feats.unusable)}))
    """
)


def _alone(photos: list[Path], backbone, cache: FeatureCache, **options) -> object:
    """The single-process run to compare with, in the workers' conditions: one thread (oneDNN's reductions depend
    on the thread count; the batch composition does not change a photo's features)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return extract_features(
            photos, backbone, cache=cache, batch_size=3, precision="fp32", engine="torch", **options
        )
    finally:
        torch.set_num_threads(threads)


def _run_together(tmp_path: Path, db: Path, jobs: list[tuple[str, list[Path]]]) -> list[dict]:
    go = tmp_path / "go"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # three processes on two cores
    procs, outs = [], []
    for n, (views, paths) in enumerate(jobs):
        out = tmp_path / f"worker{n}.json"
        outs.append(out)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _WORKER, str(db), str(go), str(out), views, *map(str, paths)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        )
    deadline = time.monotonic() + 240
    while not all(Path(f"{o}.ready").exists() for o in outs):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [
            p.communicate()[1][-2000:] for p in procs if p.poll() is not None
        ]
        time.sleep(0.02)
    go.write_text("")  # all three start extracting at the same moment
    reports = []
    for p, out in zip(procs, outs):
        _, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr[-3000:]
        reports.append({**json.loads(out.read_text()), "features": np.load(f"{out}.npy")})
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0, "every claim was let go"
    return reports


@pytest.mark.slow
def test_three_extractors_on_overlapping_halves_compute_each_photo_once(sample: Path, tmp_path: Path, lite0) -> None:
    photos = sorted((sample / "test").glob("*/*.jpg"))
    half = len(photos) // 2
    jobs = [
        ("one", photos[:half]),  # the first half
        ("one", photos[half // 2 : half // 2 + half]),  # the middle half
        ("one", photos[half:] + photos[: half // 2]),
    ]  # the second half, then the first quarter
    reference = _alone(photos, lite0, FeatureCache(tmp_path / "alone.sqlite"))
    distinct = len(set(reference.hashes))
    db = tmp_path / "shared.sqlite"
    reports = _run_together(tmp_path, db, jobs)
    computed = [r["n_computed"] for r in reports]
    print(f"\nphotos computed by each of the three processes: {computed} ({distinct} distinct photos)")
    assert sum(computed) == distinct, f"each photo once: {computed} computed, {distinct} distinct photos"
    assert sum(r["n_views"] for r in reports) == distinct
    assert all(r["unusable"] == 0 for r in reports)
    row = {h: i for i, h in enumerate(reference.hashes)}
    index = {p: i for i, p in enumerate(photos)}
    for (_, paths), r in zip(jobs, reports):
        np.testing.assert_array_equal(r["features"], reference.features[[index[p] for p in paths]])
    shared = extract_features(photos, lite0, cache=FeatureCache(db), precision="fp32", engine="torch")
    assert shared.n_computed == 0 and len(row) == distinct
    np.testing.assert_array_equal(shared.features, reference.features)


@pytest.mark.slow
def test_extractors_wanting_different_views_share_them(sample: Path, tmp_path: Path, lite0) -> None:
    """One process wants mirror-averaged features of all photos, two want one view of half of them each: every
    view is computed once, and the averaged features equal a single process's."""
    photos = sorted((sample / "test").glob("*/*.jpg"))
    half = len(photos) // 2
    jobs = [("both", photos), ("one", photos[:half]), ("one", photos[half:])]
    reference = _alone(photos, lite0, FeatureCache(tmp_path / "alone.sqlite"), flip_average=True)
    distinct = len(set(reference.hashes))
    reports = _run_together(tmp_path, tmp_path / "shared.sqlite", jobs)
    assert sum(r["n_views"] for r in reports) == 2 * distinct, [r["n_views"] for r in reports]
    np.testing.assert_array_equal(reports[0]["features"], reference.features)
