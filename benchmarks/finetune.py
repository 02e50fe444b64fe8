"""Fine-tuning: headstart's `train --method finetune` against the plain timm + torch loop, on the same photos.

The plain loop is what a tutorial writes: timm's training transform, a DataLoader, the backbone with all but its
last stage frozen (the same cut headstart makes), AdamW, cross-entropy, every epoch running the whole network over
every photo. headstart's run is the estimator with the same backbone, cut, rate and epochs (early stopping off), on
the features already cached: it runs the frozen stages on the fast engine once per augmented view, trains only the
rest, validates, and fits again on all photos; it runs twice, the second time reading the frozen stages' views
the first stored in the cache folder. All run in this process, one after the other; the script prints each
phase's time and the ratios, and rewrites its section of docs/BENCHMARKS.md (``--no-report``: print only).

    .venv/bin/python benchmarks/finetune.py ../shared/data/catsdogs-dev --per-class 100 --epochs 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _report import write_section

BACKBONE = "tf_efficientnet_lite0"


def photos(folder: Path, per_class: int) -> tuple[list[Path], list[str]]:
    paths, labels = [], []
    for cls in sorted(p for p in folder.iterdir() if p.is_dir()):
        chosen = sorted(cls.glob("*.jpg"))[:per_class]
        paths += chosen
        labels += [cls.name] * len(chosen)
    return paths, labels


def plain_loop(paths: list[Path], labels: list[str], epochs: int, batch_size: int, lr: float) -> dict[str, float]:
    """The tutorial's loop: whole network every epoch, the last stage + head conv + classifier trained."""
    import timm
    import torch
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    from headstart.features import load_backbone

    started = time.perf_counter()
    backbone = load_backbone(BACKBONE)  # the offline ImageNet weights, as timm would load them
    model = timm.create_model(BACKBONE, pretrained=False, num_classes=len(set(labels)))
    model.load_state_dict(
        {k: v for k, v in backbone.model.state_dict().items() if not k.startswith("classifier")}, strict=False
    )
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith(("blocks.6", "conv_head", "bn2", "classifier"))
    config = resolve_data_config({}, model=model)
    transform = create_transform(**config, is_training=True)
    classes = sorted(set(labels))
    y = torch.tensor([classes.index(label) for label in labels])

    class Photos(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(paths)

        def __getitem__(self, i: int):
            return transform(Image.open(paths[i]).convert("RGB")), y[i]

    loader = torch.utils.data.DataLoader(
        Photos(), batch_size=batch_size, shuffle=True, drop_last=len(paths) > batch_size
    )
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    setup = time.perf_counter() - started
    epoch_seconds = []
    for _ in range(epochs):
        began = time.perf_counter()
        model.train()
        for x, target in loader:
            optimiser.zero_grad()
            loss_fn(model(x), target).backward()
            optimiser.step()
        epoch_seconds.append(time.perf_counter() - began)
    return {"setup": setup, "epochs": sum(epoch_seconds), "total": time.perf_counter() - started}


def headstart_run(paths: list[Path], labels: list[str], epochs: int, batch_size: int, lr: float) -> dict[str, Any]:
    """One fit of the estimator; its phases from its report (the frozen stages' own seconds, the epochs' with the
    views each epoch computes, the refit's with what it reused)."""
    import headstart as hs

    started = time.perf_counter()
    options = hs.Finetune(epochs=epochs, unfreeze="2", lr=lr, batch_size=batch_size, patience=0, skip_unjudged=False)
    clf = hs.ImageClassifier(backbone=BACKBONE, method="finetune", finetune=options).fit((paths, labels))
    report = clf.report_
    frozen = report.get("frozen_stages") or {}
    refit = report.get("refit") or {}
    refit_frozen = refit.get("frozen_stages") or {}
    return {
        "computed": int(frozen.get("photo_views") or 0) + int(refit_frozen.get("photo_views") or 0),
        "frozen": float(frozen.get("seconds") or 0.0) + float(refit_frozen.get("seconds") or 0.0),
        "read": int(frozen.get("read_from_cache") or 0) + int(refit_frozen.get("read_from_cache") or 0),
        "read_seconds": float(frozen.get("read_seconds") or 0.0) + float(refit_frozen.get("read_seconds") or 0.0),
        "engine": frozen.get("engine", "?"),
        "epochs": float(sum(h.get("seconds", 0.0) for h in (report.get("history") or [])[1:])),
        "refit": float(refit.get("seconds") or 0.0),
        "refit_reused": int(refit_frozen.get("reused") or 0) + int(refit_frozen.get("read_from_cache") or 0),
        "total": time.perf_counter() - started,
        "val_accuracy": report["val_accuracy"],
    }


def _row(name: str, run: dict[str, Any]) -> str:
    frozen = f"{run['computed']:,} views computed in {run['frozen']:.1f} s" if run["computed"] else ""
    if run["read"]:
        frozen += f"{'; ' if frozen else ''}{run['read']:,} read from the cache folder in {run['read_seconds']:.1f} s"
    return (
        f"| {name} | {frozen or '–'} | {run['epochs']:.1f} s | {run['refit']:.1f} s ({run['refit_reused']:,} views "
        f"reused) | {run['total']:.1f} s |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--no-report", action="store_true", help="print only; leave docs/BENCHMARKS.md as it is")
    args = parser.parse_args()

    paths, labels = photos(args.data, args.per_class)
    # A cache folder of its own: the first run computes and stores the frozen stages' views, the second reads them.
    os.environ["HEADSTART_CACHE_DIR"] = tempfile.mkdtemp(prefix="headstart-bench-finetune-")
    from headstart.features import extract_features
    from headstart.models.finetune.frozen import clear_banks

    began = time.perf_counter()
    extract_features(paths, BACKBONE)  # headstart's runs start from cached features, as a re-run does
    extraction = time.perf_counter() - began
    load = os.getloadavg()[0]
    first = headstart_run(paths, labels, args.epochs, args.batch_size, args.lr)
    clear_banks()  # (as a new process: only the cache folder holds the views now)
    second = headstart_run(paths, labels, args.epochs, args.batch_size, args.lr)
    plain = plain_loop(paths, labels, args.epochs, args.batch_size, args.lr)
    shutil.rmtree(os.environ["HEADSTART_CACHE_DIR"], ignore_errors=True)
    ratio, ratio_again = plain["total"] / first["total"], plain["total"] / second["total"]
    lines = [
        "## Fine-tuning: `train --method finetune` against the plain timm + torch loop",
        "",
        f"`python benchmarks/finetune.py {args.data} --per-class {args.per_class} --epochs {args.epochs}` "
        f"({len(paths)} photos, {BACKBONE}, last stage + head trained, {args.epochs} epochs, batch {args.batch_size}; "
        f"load average {load:.1f} on {os.cpu_count()} cores when it started). Both headstart runs start from cached "
        f"features (extracted first, {extraction:.1f} s, not counted); the second runs in a fresh bank, as a new "
        "process does, and reads the frozen stages' views the first stored in the cache folder.",
        "",
        "| run | frozen stages | epochs | refit on all photos | whole run |",
        "|---|---|---|---|---|",
        _row(f"headstart, first run (frozen stages on {first['engine']}, once a view)", first),
        _row("headstart, second run on the same photos", second),
        f"| plain loop (whole network every epoch, no validation, no refit) | – | {plain['epochs']:.1f} s | – "
        f"| {plain['total']:.1f} s |",
        "",
        f"headstart's whole run (with validation and the refit on all photos) took {1 / ratio:.2f}× the plain loop's "
        f"time the first time ({ratio:.2f}× faster) and {1 / ratio_again:.2f}× the second ({ratio_again:.2f}× "
        f"faster); validation accuracy {first['val_accuracy']:.3f} and {second['val_accuracy']:.3f}.",
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_report:
        write_section("finetune", body)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
