"""Feature extraction speed: the plain PyTorch pipeline against headstart's, same backbone, photos and run.

plain     = torchvision ImageFolder + DataLoader (default settings) + the timm model in fp32, as a tutorial writes it
headstart = headstart.extract_features with a cold cache (threaded decoding, JPEG draft, channels-last, auto precision),
            with its defaults (each photo and its mirror image) and single-view (flip_average=False)

Each variant runs in its own process (so peak memory is its own), several times; the median img/s is reported with
the ratio, and headstart's features are compared with the plain fp32 features (cosine per image).

    .venv/bin/python benchmarks/extract.py                      # ../shared/data/catsdogs-fullres, writes docs/BENCHMARKS.md
    .venv/bin/python benchmarks/extract.py --data DIR --limit 200 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402
DEFAULT_DATA = REPO.parent / "shared" / "data" / "catsdogs-fullres"


def _files(root: Path, limit: int | None) -> list[Path]:
    from torchvision.datasets import ImageFolder

    samples = [Path(p) for p, _ in ImageFolder(str(root)).samples]
    return samples[:limit] if limit else samples


def run_plain(root: Path, backbone: str, limit: int | None, batch_size: int, out: Path) -> dict:
    import numpy as np
    import timm
    import torch
    from timm.data import create_transform, resolve_model_data_config
    from torch.utils.data import DataLoader, Subset
    from torchvision.datasets import ImageFolder

    from headstart.features.backbones import load_backbone

    start = time.perf_counter()
    model = load_backbone(backbone).model.eval()  # same weights; a tutorial would call timm.create_model(pretrained=True)
    transform = create_transform(**resolve_model_data_config(model), is_training=False)
    dataset = ImageFolder(str(root), transform=transform)
    if limit:
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    feats = []
    with torch.inference_mode():
        for x, _ in DataLoader(dataset, batch_size=batch_size):
            feats.append(model.forward_head(model.forward_features(x), pre_logits=True).numpy())
    seconds = time.perf_counter() - start
    np.save(out, np.concatenate(feats))
    return {"n": len(dataset), "seconds": seconds}


def run_headstart(root: Path, backbone: str, limit: int | None, batch_size: int, out: Path,
                  flip_average: bool = True) -> dict:
    import numpy as np

    from headstart.features import FeatureCache, default_precision, extract_features

    files = _files(root, limit)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:  # cold cache every repetition
        feats = extract_features(files, backbone, cache=FeatureCache(Path(tmp) / "f.sqlite"), batch_size=batch_size,
                                 flip_average=flip_average)
    seconds = time.perf_counter() - start
    np.save(out, feats.features)
    return {"n": len(files), "seconds": seconds, "precision": default_precision()}


def _child(args: argparse.Namespace) -> None:
    fn = {"plain": run_plain, "headstart": run_headstart,
          "single-view": lambda *a: run_headstart(*a, flip_average=False)}[args.child]
    result = fn(Path(args.data), args.backbone, args.limit, args.batch_size, Path(args.features_out))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def _spawn(variant: str, args: argparse.Namespace, features_out: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--data", str(args.data), "--backbone", args.backbone,
           "--batch-size", str(args.batch_size), "--features-out", str(features_out)]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"{variant} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N photos")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--report", type=Path, default=REPO / "docs" / "BENCHMARKS.md")
    parser.add_argument("--child", choices=["plain", "headstart", "single-view"], help=argparse.SUPPRESS)
    parser.add_argument("--features-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(args)
    if not args.data.is_dir():
        sys.exit(f"no data at {args.data}: pass --data with a folder of class subfolders")

    import numpy as np

    runs: dict[str, list[dict]] = {"plain": [], "headstart": [], "single-view": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for variant in runs:  # interleaved, so drift in machine speed hits all
                res = _spawn(variant, args, Path(tmp) / f"{variant}.npy")
                res["img_s"] = res["n"] / res["seconds"]
                runs[variant].append(res)
                print(f"[{r + 1}/{args.repeats}] {variant:9s} {res['img_s']:6.1f} img/s  "
                      f"({res['n']} photos in {res['seconds']:.1f} s, peak RSS {res['peak_rss_mb']:.0f} MB)", flush=True)
        a, b = np.load(Path(tmp) / "plain.npy"), np.load(Path(tmp) / "single-view.npy")  # the same features
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    plain = statistics.median(r["img_s"] for r in runs["plain"])
    fast = statistics.median(r["img_s"] for r in runs["headstart"])
    single = statistics.median(r["img_s"] for r in runs["single-view"])
    ratio = fast / plain
    print(f"plain {plain:.1f} img/s, headstart (default: photo + mirror image) {fast:.1f} img/s: ratio {ratio:.2f}x; "
          f"headstart single-view {single:.1f} img/s: ratio {single / plain:.2f}x; "
          f"single-view cosine to plain fp32 features: min {cosine.min():.4f}, mean {cosine.mean():.4f}")
    _write_report(args, runs, plain, fast, ratio, cosine, single)


def _write_report(args, runs, plain, fast, ratio, cosine, single) -> None:
    import torch

    n = runs["plain"][0]["n"]
    lines = [
        "## Feature extraction, end to end from JPEG files",
        "",
        f"`python benchmarks/extract.py --data {args.data.name}{f' --limit {args.limit}' if args.limit else ''} "
        f"--repeats {args.repeats}` — {n} photos, backbone `{args.backbone}`, batch {args.batch_size}, "
        f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), torch {torch.__version__}.",
        "",
        "| pipeline | img/s (median) | runs | peak RSS |",
        "|---|---|---|---|",
        f"| plain: torchvision `ImageFolder` + `DataLoader` (defaults) + timm, fp32 | {plain:.1f} | "
        + ", ".join(f"{r['img_s']:.1f}" for r in runs["plain"]) + f" | {max(r['peak_rss_mb'] for r in runs['plain']):.0f} MB |",
        f"| headstart `extract_features`, defaults: each photo and its mirror image (cold cache, precision "
        f"{runs['headstart'][0]['precision']}) | {fast:.1f} | "
        + ", ".join(f"{r['img_s']:.1f}" for r in runs["headstart"]) + f" | {max(r['peak_rss_mb'] for r in runs['headstart']):.0f} MB |",
        f"| headstart `extract_features(..., flip_average=False)`: single view, like the plain pipeline | {single:.1f} | "
        + ", ".join(f"{r['img_s']:.1f}" for r in runs["single-view"]) + f" | {max(r['peak_rss_mb'] for r in runs['single-view']):.0f} MB |",
        "",
        f"**Ratio: {ratio:.2f}× with the defaults (twice the network work per photo), {single / plain:.2f}× like for "
        f"like.** headstart's single-view features against the plain fp32 ones: cosine min {cosine.min():.4f}, "
        f"mean {cosine.mean():.4f} over {len(cosine)} photos.",
    ]
    print(f"wrote {write_section('extract', chr(10).join(lines), args.report)}")


if __name__ == "__main__":
    main()
