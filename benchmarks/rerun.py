"""Re-running `headstart train` on the same photos: cold run against cached run, same process tree, same result.

    .venv/bin/python benchmarks/rerun.py                         # ../shared/data/pets-dev and catsdogs-dev
    .venv/bin/python benchmarks/rerun.py --data DIR [--data DIR2]

Each data set: `headstart train DATA` with an empty cache folder (features computed, probes fitted, pictures drawn),
then the same command again (all of it read back from the cache and its memo), then once more with `--no-reuse`
(features from the cache, probes fitted and pictures drawn again). Wall time of each whole command (start-up and
imports included), the ratios, and whether the model files' tensors are identical.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _train(data: Path, out: Path, cache: Path, *flags: str) -> float:
    env = {**__import__("os").environ, "HEADSTART_CACHE_DIR": str(cache)}
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "headstart", "train", str(data), "--out", str(out), "--json", *flags],
        check=True,
        env=env,
        capture_output=True,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, action="append")
    args = parser.parse_args()
    datasets = args.data or [SHARED / "pets-dev", SHARED / "catsdogs-dev"]
    from safetensors.numpy import load_file

    rows = []
    for data in datasets:
        if not data.is_dir():
            print(f"skip {data}: not here")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            cold = _train(data, tmp / "a.safetensors", tmp / "cache")
            warm = _train(data, tmp / "b.safetensors", tmp / "cache")
            refit = _train(data, tmp / "c.safetensors", tmp / "cache", "--no-reuse")
            a, b, c = (load_file(str(tmp / f"{x}.safetensors")) for x in "abc")
            same = all(a.keys() == o.keys() and all(np.array_equal(a[k], o[k]) for k in a) for o in (b, c))
        n = sum(1 for p in data.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
        rows.append((data.name, n, cold, warm, cold / warm, refit, cold / refit, same))
        print(
            f"{data.name}: first run {cold:.1f} s, re-run {warm:.2f} s ({cold / warm:.1f}x), "
            f"re-run --no-reuse {refit:.1f} s ({cold / refit:.1f}x), identical models: {same}"
        )
    lines = [
        "## Re-running `train` on the same photos",
        "",
        "`python benchmarks/rerun.py` — wall time of the whole `headstart train DATA` command (start-up included): "
        "first with an empty cache; again (features, probe fits and pictures read back); again with `--no-reuse` "
        "(features read back, probes fitted and pictures drawn anew).",
        "",
        "| data | photos | first run | re-run | ratio | re-run `--no-reuse` | ratio | identical model file tensors |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {d} | {n} | {c:.1f} s | {w:.2f} s | {r:.1f}× | {f:.1f} s | {rf:.1f}× | {s} |"
            for d, n, c, w, r, f, rf, s in rows
        ],
    ]
    print(f"wrote {write_section('rerun', chr(10).join(lines))}")


if __name__ == "__main__":
    main()
