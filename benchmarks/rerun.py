"""Re-running `headstart train` on the same photos: cold run against cached run, same process tree, same result.

    .venv/bin/python benchmarks/rerun.py                         # ../shared/data/pets-dev and catsdogs-dev
    .venv/bin/python benchmarks/rerun.py --data DIR [--data DIR2]

Each data set: `headstart train DATA` with an empty cache folder (features computed), then the same command again
(features from the cache). Wall time of each whole command (start-up and imports included), the ratio, and whether
the two model heads are identical.
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
from _report import write_section  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _train(data: Path, out: Path, cache: Path) -> float:
    env = {**__import__("os").environ, "HEADSTART_CACHE_DIR": str(cache)}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "headstart", "train", str(data), "--out", str(out), "--json"],
                   check=True, env=env, capture_output=True)
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
            a, b = load_file(str(tmp / "a.safetensors")), load_file(str(tmp / "b.safetensors"))
            same = all(np.array_equal(a[k], b[k]) for k in a) and a.keys() == b.keys()
        n = sum(1 for p in data.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
        rows.append((data.name, n, cold, warm, cold / warm, same))
        print(f"{data.name}: first run {cold:.1f} s, re-run {warm:.1f} s, ratio {cold / warm:.1f}x, identical model: {same}")
    lines = [
        "## Re-running `train` on the same photos",
        "",
        "`python benchmarks/rerun.py` — wall time of the whole `headstart train DATA` command (start-up included), "
        "first with an empty cache, then again.",
        "",
        "| data | photos | first run | re-run | ratio | identical model file tensors |",
        "|---|---|---|---|---|---|",
        *[f"| {d} | {n} | {c:.1f} s | {w:.1f} s | {r:.1f}× | {s} |" for d, n, c, w, r, s in rows],
    ]
    print(f"wrote {write_section('rerun', chr(10).join(lines))}")


if __name__ == "__main__":
    main()
