"""Past one process: torchrun's shards for extraction and DDP for fine-tuning, against one process, on many photos.

    .venv/bin/python benchmarks/distributed.py                        # 16,000 photos made from ../shared/data
    .venv/bin/python benchmarks/distributed.py --photos 4000 --finetune-photos 1000

Steps, each a whole process (or torchrun's group of processes) timed from here, peak memory per process:

* ``extract``: ``headstart extract DATA`` in one process, then ``torchrun --nproc_per_node N -m headstart extract
  DATA`` into a brand-new cache folder (each process computes its share into the shared cache); the two caches hold
  the same rows (checked: the row count, and the features of a sample of photos within cosine 0.999).
* ``merge``: the same photos split in two halves extracted into two cache folders, as two machines would, then
  ``headstart merge-cache`` joining them.
* ``finetune``: ``headstart train --method finetune`` on ``--finetune-photos`` of them, one process against N under
  torchrun (DistributedDataParallel over gloo on a CPU).

The photos are distinct: each is a random crop (70–95% of the side), colour change and mirror of a photo of
``catsdogs-dev`` / ``catsdogs-fullres``, saved as a new JPEG (they are generated, not stored). On one machine the
processes share its cores, so the ratio measures the overhead of the shards, not a speed-up; the expected scaling
on more cores or machines is written beside the table. Rewrites the "distributed" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section

REPO = Path(__file__).resolve().parents[1]
#: One cut for every fine-tuning run (the default depends on the number of photos), so the warm-up converts it.
FINETUNE_CUT = ("--unfreeze", "2")
SOURCES = [REPO.parent / "shared" / "data" / name for name in ("catsdogs-dev", "catsdogs-fullres")]


def make_photos(out: Path, n: int, seed: int = 0) -> Path:
    """``n`` distinct labelled JPEGs in ``out/<class>/``, made from the shared cats and dogs (kept between runs)."""
    from PIL import Image, ImageEnhance, ImageOps

    done = out / f".made-{n}-{seed}"
    if done.is_file():
        return out
    sources = sorted(p for root in SOURCES for p in root.glob("*/*.jpg"))
    if not sources:
        raise SystemExit(f"no photos under {', '.join(map(str, SOURCES))}: this benchmark needs ../shared/data")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(sources))  # (both classes from the first photos on)
    for i in range(n):
        source = sources[order[i % len(sources)]]
        with Image.open(source) as im:
            photo = ImageOps.exif_transpose(im).convert("RGB")
        w, h = photo.size
        f = rng.uniform(0.70, 0.95)
        cw, ch = int(w * f), int(h * f)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        photo = photo.crop((x, y, x + cw, y + ch))
        photo = ImageEnhance.Color(photo).enhance(rng.uniform(0.6, 1.4))
        photo = ImageEnhance.Brightness(photo).enhance(rng.uniform(0.8, 1.2))
        if rng.random() < 0.5:
            photo = ImageOps.mirror(photo)
        target = out / source.parent.name / f"{i:06d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        photo.save(target, quality=90)
    done.touch()
    return out


def timed(command: list[str], env: dict[str, str]) -> dict:
    """Run a command; its wall time, exit code, the peak memory of its largest child and the last stderr lines."""
    with tempfile.NamedTemporaryFile(suffix=".rss") as rss:  # GNU time: the largest process of the tree, in KB
        began = time.perf_counter()
        done = subprocess.run(
            ["/usr/bin/time", "-q", "-f", "%M", "-o", rss.name, *command], capture_output=True, text=True, env=env
        )
        seconds = time.perf_counter() - began
        peak = int(Path(rss.name).read_text().split()[-1]) / 1024
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return {"seconds": seconds, "code": done.returncode, "peak_mb": peak, "stdout": done.stdout}


def headstart(*args: str) -> list[str]:
    return [sys.executable, "-m", "headstart", *args]


def torchrun(n: int, *args: str) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n)]
    return [*launcher, *headstart(*args)[1:]]


def env_with(cache: Path, threads: int | None = None) -> dict[str, str]:
    env = {**os.environ, "HEADSTART_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO / "src")}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def own_cache(features_from: Path, folder: Path) -> Path:
    """A cache folder holding a copy of ``features_from``'s features and nothing else (no stored activations), so
    each fine-tuning run computes its own frozen stages."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in features_from.glob("features.sqlite*"):
        shutil.copy(f, folder / f.name)
    return folder


def same_rows(a: Path, b: Path, data: Path, sample: int = 64) -> dict:
    """Row counts of two caches and the features of a sample of photos read from both (cosine)."""
    sys.path.insert(0, str(REPO / "src"))
    from headstart.data import load_dataset
    from headstart.features import FeatureCache, extract_features

    ca, cb = FeatureCache(a / "features.sqlite"), FeatureCache(b / "features.sqlite")
    paths = load_dataset(data).paths
    picked = [paths[i] for i in np.linspace(0, len(paths) - 1, sample).round().astype(int)]
    fa = extract_features(picked, "tf_efficientnet_lite0", cache=ca)
    fb = extract_features(picked, "tf_efficientnet_lite0", cache=cb)
    x, y = fa.features, fb.features
    cosine = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
    return {
        "rows": [ca.count(), cb.count()],
        "computed_on_read": fa.n_computed + fb.n_computed,
        "min_cosine": float(cosine.min()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=16000)
    parser.add_argument("--finetune-photos", type=int, default=2000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "headstart-distributed")
    parser.add_argument("--report", type=Path, default=REPO / "docs" / "BENCHMARKS.md")
    args = parser.parse_args()
    n = args.processes
    data = make_photos(args.work / f"photos-{args.photos}", args.photos)
    small = args.work / f"finetune-{args.finetune_photos}"
    if not small.is_dir():  # the first photos of each class, linked
        for cls in sorted(p.name for p in data.iterdir() if p.is_dir()):
            (small / cls).mkdir(parents=True)
            for p in sorted((data / cls).glob("*.jpg"))[: args.finetune_photos // 2]:
                os.link(p, small / cls / p.name)
    rows, checks = [], {}
    load_before = os.getloadavg()[0]

    caches = {k: args.work / f"cache-{k}" for k in ("one", "shards", "half-a", "half-b", "merged")}
    for c in caches.values():
        shutil.rmtree(c, ignore_errors=True)
    one = timed(headstart("extract", str(data), "--json"), env_with(caches["one"]))
    rows.append(("extract", "1 process", args.photos, one))
    shards = timed(
        torchrun(n, "extract", str(data), "--json"),
        env_with(caches["shards"], threads=max(1, (os.cpu_count() or 2) // n)),
    )
    rows.append(("extract", f"torchrun, {n} processes", args.photos, shards))
    checks["extract"] = same_rows(caches["one"], caches["shards"], data)
    print(f"extract: 1 process {one['seconds']:.1f} s, {n} processes {shards['seconds']:.1f} s; {checks['extract']}")

    halves = args.work / "halves"
    if not halves.is_dir():  # two machines' shares of the same photos
        for cls in sorted(p.name for p in data.iterdir() if p.is_dir()):
            for k, p in enumerate(sorted((data / cls).glob("*.jpg"))):
                target = halves / ("a" if k % 2 == 0 else "b") / cls / p.name
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(p, target)
    for half in ("a", "b"):
        timed(headstart("extract", str(halves / half), "--json"), env_with(caches[f"half-{half}"]))
    merge = timed(
        headstart(
            "merge-cache",
            str(caches["half-a"] / "features.sqlite"),
            str(caches["half-b"] / "features.sqlite"),
        ),  # (into the cache folder of its environment: "merged")
        env_with(caches["merged"]),
    )
    rows.append(("merge-cache", "2 caches of half the photos", args.photos, merge))
    print(f"merge-cache: {merge['seconds']:.1f} s")

    # Untimed: the frozen stages' conversion to OpenVINO happens once per machine (and cut); neither timed run pays it.
    warm = args.work / "warm-up"
    if not warm.is_dir():
        for cls in sorted(p.name for p in small.iterdir() if p.is_dir()):
            (warm / cls).mkdir(parents=True)
            for p in sorted((small / cls).glob("*.jpg"))[:10]:
                os.link(p, warm / cls / p.name)
    with tempfile.TemporaryDirectory() as tmp:
        warm_command = ["train", str(warm), "--method", "finetune", "--backbone", "tf_efficientnet_lite0"]
        warm_command += [*FINETUNE_CUT, "--always-finetune", "--epochs", "1", "--out", str(Path(tmp) / "w.safetensors")]
        timed(headstart(*warm_command), env_with(Path(tmp) / "cache"))
    for label, command, threads in (
        ("1 process", headstart, None),
        (f"torchrun, {n} processes (DDP, gloo)", lambda *a: torchrun(n, *a), max(1, (os.cpu_count() or 2) // n)),
    ):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "ft.safetensors"
            result = timed(
                command(
                    "train",
                    str(small),
                    "--method",
                    "finetune",
                    "--backbone",
                    "tf_efficientnet_lite0",
                    *FINETUNE_CUT,
                    "--always-finetune",  # (validation could not judge it on easy photos: it would keep the probe)
                    "--epochs",
                    str(args.finetune_epochs),
                    "--patience",
                    "0",
                    "--out",
                    str(out),
                    "--json",
                ),
                env_with(own_cache(caches["one"], Path(tmp) / "cache"), threads=threads),
            )
            report = json.loads(result["stdout"][result["stdout"].index("{") :])
            result["detail"] = f"val accuracy {report['val_accuracy']:.3f}, {report.get('epochs_run')} epochs"
        rows.append(("train --method finetune", label, args.finetune_photos, result))
        print(f"finetune {label}: {result['seconds']:.1f} s ({result['detail']})")

    table = [
        "| step | how | photos | wall s | photos/s | peak MB (largest process) | details |",
        "|---|---|---|---|---|---|---|",
    ]
    for step, how, photos, r in rows:
        table.append(
            f"| {step} | {how} | {photos:,} | {r['seconds']:.1f} | {photos / r['seconds']:.1f} | {r['peak_mb']:.0f} | "
            f"{r.get('detail', '')} |"
        )
    ratio_extract = one["seconds"] / shards["seconds"]
    body = f"""## Past one process: torchrun shards, merge-cache, DDP fine-tuning

`python benchmarks/distributed.py --photos {args.photos} --finetune-photos {args.finetune_photos} --finetune-epochs {args.finetune_epochs} --processes {n}` — distinct
generated JPEGs (crops, colour changes and mirror images of the shared cats and dogs), backbone
`tf_efficientnet_lite0`, each row a whole command (torchrun's group as one). Machine: {platform.machine()},
{os.cpu_count()} CPU(s), load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after.

{chr(10).join(table)}

The sharded extraction wrote the same rows as one process: {checks["extract"]["rows"][0]:,} and
{checks["extract"]["rows"][1]:,} rows; a sample of {64} photos read back from both caches with nothing recomputed
({checks["extract"]["computed_on_read"]} computed), features within cosine {checks["extract"]["min_cosine"]:.4f}.
One process over {n} processes: {ratio_extract:.2f}×.

Expected scaling: on one machine the processes share its cores (here {os.cpu_count()}), so sharding only pays
where one process leaves cores idle — more cores than one OpenVINO process uses, or one GPU per process;
extraction's shards are independent (each photo is computed by one process, each batch committed on its own), so
on separate machines or GPUs the time falls as 1/N plus start-up (the backbone's conversion once per machine) and
`merge-cache` (linear in the rows). DDP fine-tuning exchanges the trainable tail's gradients every step: with the
small tails the defaults train (the last stages of an EfficientNet-Lite), that is a few megabytes a step, so it
scales with the photos each process trains on until the network's bandwidth, not the cores, is the limit.
"""
    write_section("distributed", body, args.report)
    print(f"wrote {args.report}")


if __name__ == "__main__":
    main()
