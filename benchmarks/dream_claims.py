"""Measure issue 4's dream claims: time and saved-PNG probability per class, and total variation vs high frequencies.

Usage:
    python benchmarks/dream_claims.py [--out DIR] [--model pets.safetensors --breed Siamese]

1. ``dream`` (default Lucid-style method) with the offline default backbone for ImageNet classes 284 (Siamese
   cat), 340 (zebra) and 967 (espresso): wall time and the target probability measured on the saved PNG.
2. The lesson's claim: the lesson loop (pixels, plain gradient steps) run for the same number of steps without
   and with total variation; both reach the same (saturated) target probability, and the high-frequency energy
   (share of spectral power above half the Nyquist frequency) of the saved PNG is reported for each.
3. With ``--model``: the same for one breed of a trained headstart model.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from headstart._io import write_json
from headstart.inside.class_image import dream
from headstart.models.target import load_target


def row(label: str, r, wall: float) -> dict:
    d = {
        "run": label,
        "target": r.target_name,
        "method": r.method,
        "probability_png": r.probability,
        "start_probability": r.start_probability,
        "steps": r.steps,
        "seconds_total": round(wall, 1),
        "seconds_optimisation": r.seconds,
        "high_frequency_energy": r.high_frequency_energy,
        "png": str(r.png),
    }
    print(json.dumps(d), flush=True)
    return d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("dream-claims"))
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--model", type=Path, help="a trained headstart model file (e.g. on ../shared/data/pets-dev)")
    parser.add_argument("--breed", default="Siamese")
    parser.add_argument("--skip-classes", action="store_true")
    args = parser.parse_args()
    rows = []
    if not args.skip_classes:
        for c in (284, 340, 967):
            t0 = time.perf_counter()  # includes loading the backbone, as the CLI would
            r = dream(args.backbone, c, args.out / f"lucid-{c}.png")
            rows.append(row(f"lucid {c}", r, time.perf_counter() - t0))
        net = load_target(args.backbone)
        for tv in (0.0, 100.0):
            t0 = time.perf_counter()
            r = dream(net, 284, args.out / f"lesson-284-tv{tv:g}.png", method="lesson", tv=tv)
            rows.append(row(f"lesson 284 tv={tv:g}", r, time.perf_counter() - t0))
        a, b = rows[-2], rows[-1]
        print(
            f"lesson loop, {a['steps']} steps: without TV p={a['probability_png']:.4f}, HF energy "
            f"{a['high_frequency_energy']:.3f}; with TV (100) p={b['probability_png']:.4f}, HF energy "
            f"{b['high_frequency_energy']:.3f}",
            flush=True,
        )
    if args.model is not None:
        t0 = time.perf_counter()
        r = dream(args.model, args.breed, args.out / f"lucid-{args.breed}.png")
        rows.append(row(f"lucid {args.breed} ({args.model.name})", r, time.perf_counter() - t0))
    write_json(args.out / "claims.json", rows)


if __name__ == "__main__":
    main()
