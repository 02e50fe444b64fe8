"""Latency of predicting one photo (model already loaded): a plain timm loop against headstart's Classifier.predict.

    .venv/bin/python benchmarks/predict_latency.py [--data ../shared/data/catsdogs-fullres] [--n 100]

plain     = PIL open + timm eval transform + model forward (fp32) + softmax, one photo at a time
headstart = Classifier.predict([photo]) on a probe model (robust decoding, JPEG draft, bf16 where native, cache
            lookup and write; every photo is new to the cache, so nothing is served from it)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED / "catsdogs-fullres")
    parser.add_argument("--n", type=int, default=100)
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"no data at {args.data}")
    import torch
    from PIL import Image

    from headstart.models.classifier import Classifier
    from headstart.features import FeatureCache
    from headstart.data import list_image_files
    from headstart.workflows.training import train

    photos = list_image_files(args.data)[0]
    rng = np.random.default_rng(0)
    picks = [photos[i] for i in rng.choice(len(photos), size=min(2 * args.n, len(photos)), replace=False)]
    plain_set, fast_set = picks[: args.n], picks[args.n : 2 * args.n]
    sample = Path(__file__).resolve().parents[1] / "src" / "headstart" / "sample_data" / "pets" / "train"
    with tempfile.TemporaryDirectory() as tmp:
        model = Classifier.load(train(sample, out=Path(tmp) / "m.safetensors", cache=FeatureCache(Path(tmp) / "c")).model_path)
        backbone = model.backbone
        net, transform = backbone.model.eval(), backbone.transform()
        head_w, head_b = torch.from_numpy(model.head_weight), torch.from_numpy(model.head_bias)

        def plain(path: Path) -> None:
            x = transform(Image.open(path).convert("RGB"))[None]
            with torch.inference_mode():
                (backbone.features(x) @ head_w.T + head_b).softmax(-1)

        cache = FeatureCache(Path(tmp) / "latency.sqlite")
        plain(plain_set[0]), model.predict([fast_set[0]], cache=cache)  # warm-up (first call builds kernels)
        timings = {"plain": [], "headstart": []}
        for a, b in zip(plain_set[1:], fast_set[1:]):
            t = time.perf_counter(); plain(a); timings["plain"].append(time.perf_counter() - t)
            t = time.perf_counter(); model.predict([b], cache=cache); timings["headstart"].append(time.perf_counter() - t)
    rows = []
    for name, values in timings.items():
        ms = np.asarray(values) * 1000
        rows.append((name, np.percentile(ms, 50), np.percentile(ms, 99)))
        print(f"{name:9s} p50 {rows[-1][1]:6.1f} ms  p99 {rows[-1][2]:6.1f} ms  ({len(ms)} photos)")
    ratio = rows[0][1] / rows[1][1]
    print(f"p50 ratio plain/headstart: {ratio:.2f}x")
    lines = ["## Predicting one photo", "",
             f"`python benchmarks/predict_latency.py --data {args.data.name} --n {args.n}` — model loaded once, one photo per "
             "call, every photo new to the cache.", "", "| pipeline | p50 | p99 |", "|---|---|---|",
             *[f"| {n} | {p50:.1f} ms | {p99:.1f} ms |" for n, p50, p99 in rows], "",
             f"p50 ratio (plain / headstart): {ratio:.2f}×."]
    print(f"wrote {write_section('predict-latency', chr(10).join(lines))}")


if __name__ == "__main__":
    main()
