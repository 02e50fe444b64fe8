"""Is the heat map faithful? Blur the 20% of pixels it ranks highest vs a random 20%, and compare probability drops.

Usage:
    python benchmarks/explain_faithfulness.py [--data ../shared/data/pets-dev] [--n 30] [--model MODEL]

For each photo: the network's top class c and its probability p on the whole photo (shorter side = input size);
then the same photo with 20% of its pixels replaced by a strongly blurred copy (Gaussian, radius 8 px), chosen
(a) as the heat map's top 20%, (b) at random pixel by pixel, (c) as the top 20% of a random coarse map (7×7 noise
upsampled like the heat map, so the blurred region is as blob-shaped as in (a)). Prints the average drop of p for
each; a faithful map gives (a) a clearly larger drop than (b) and (c).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from headstart.data.images import list_image_files, load_image
from headstart.inside.heatmap import explain_view, whole_view
from headstart.models.target import load_target


def top_mask(score: np.ndarray, fraction: float) -> np.ndarray:
    k = int(round(fraction * score.size))
    order = np.argsort(-score.ravel(), kind="stable")[:k]
    mask = np.zeros(score.size, bool)
    mask[order] = True
    return mask.reshape(score.shape)


def probability(net, view: np.ndarray, c: int) -> float:
    x = torch.from_numpy(np.ascontiguousarray(view.transpose(2, 0, 1))).unsqueeze(0).float()
    return float(net.probabilities(x)[0, c])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "pets-dev"
    )
    parser.add_argument("--model", default="tf_efficientnet_lite0", help="backbone name or headstart model file")
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--fraction", type=float, default=0.2)
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"skipped: {args.data} is not here (fresh clone without ../shared/data)")
        return
    files = sorted(list_image_files(args.data)[0])
    files = files[:: max(1, len(files) // args.n)][: args.n]
    net = load_target(args.model)
    rng = np.random.default_rng(args.seed)
    drops = {"heat map top 20%": [], "random pixels": [], "random blobs": []}
    for path in files:
        view = whole_view(load_image(path), net.spec.data_config)
        e = explain_view(net, view, method=args.method)
        c, p = e.target, e.probability
        blurred = (
            np.asarray(
                Image.fromarray((view * 255).round().astype(np.uint8)).filter(ImageFilter.GaussianBlur(8)), np.float32
            )
            / 255
        )
        h, w = e.heatmap.shape
        coarse = np.asarray(
            Image.fromarray(rng.random((7, 7)).astype(np.float32)).resize((w, h), Image.Resampling.BILINEAR)
        )
        masks = {
            "heat map top 20%": top_mask(e.heatmap + 1e-6 * rng.random(e.heatmap.shape), args.fraction),
            "random pixels": top_mask(rng.random((h, w)), args.fraction),
            "random blobs": top_mask(coarse, args.fraction),
        }
        for name, mask in masks.items():
            drops[name].append(p - probability(net, np.where(mask[..., None], blurred, view), c))
    summary = {name: round(float(np.mean(v)), 4) for name, v in drops.items()}
    print(
        json.dumps(
            {
                "photos": len(files),
                "data": str(args.data),
                "model": args.model,
                "method": args.method,
                "fraction": args.fraction,
                "mean_probability_drop": summary,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
