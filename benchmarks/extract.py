"""Feature extraction speed: every engine and precision, model only and end to end, against the plain pipeline.

plain      = torchvision ImageFolder + DataLoader (default settings) + the timm model in fp32, as a tutorial writes it
headstart  = `headstart.extract_features` (cold feature cache; the converted OpenVINO model already cached) with
             --engine torch (bf16 where native, channels-last) and openvino fp32 / bf16 / int8; `auto` is the default

Model only: the same preprocessed photos, batch 32, medians of alternating rounds in one process per engine. End to
end: each variant in its own process (so peak memory is its own), timed from the parent (whole process, start-up
included) and inside (after start-up); features compared per photo (cosine) with the plain fp32 ones. The roofline
is the model's FLOPs (torch's FLOP counter) over a measured fp32 / bf16 matmul peak.

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
#: End-to-end variants: name -> (engine, precision) for extract_features; "plain" is the tutorial pipeline.
END_TO_END = {
    "plain": None,
    "new-cache-dir": ("auto", "auto"),  # the default, in a brand-new --cache-dir (the per-machine store shared)
    "torch": ("torch", "auto"),
    "openvino-fp32": ("openvino", "fp32"),
    "openvino-bf16": ("openvino", "bf16"),
    "openvino-int8": ("openvino", "int8"),
}
#: Model-only variants: name -> (engine, precision).
MODEL_ONLY = {
    "torch-fp32": ("torch", "fp32"),
    "torch-bf16": ("torch", "bf16"),
    "onnxruntime-fp32": ("onnx", "fp32"),
    "openvino-fp32": ("openvino", "fp32"),
    "openvino-bf16": ("openvino", "bf16"),
    "openvino-int8": ("openvino", "int8"),
}


def _files(root: Path, limit: int | None) -> list[Path]:
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return files[:limit] if limit else files


def run_plain(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch
    from timm.data import create_transform, resolve_model_data_config
    from torch.utils.data import DataLoader, Subset
    from torchvision.datasets import ImageFolder

    from headstart.features.backbones import load_backbone

    start = time.perf_counter()
    model = load_backbone(
        args.backbone
    ).model.eval()  # same weights; a tutorial calls timm.create_model(pretrained=True)
    transform = create_transform(**resolve_model_data_config(model), is_training=False)
    dataset = ImageFolder(str(args.data), transform=transform)
    if args.limit:
        dataset = Subset(dataset, range(min(args.limit, len(dataset))))
    steady = time.perf_counter()
    feats = []
    with torch.inference_mode():
        for x, _ in DataLoader(dataset, batch_size=args.batch_size):
            feats.append(model.forward_head(model.forward_features(x), pre_logits=True).numpy())
    end = time.perf_counter()
    np.save(args.features_out, np.concatenate(feats))
    return {"n": len(dataset), "seconds": end - start, "steady_seconds": end - steady}


def run_headstart(args: argparse.Namespace, engine: str, precision: str) -> dict:
    import numpy as np

    start = time.perf_counter()
    if args.child.endswith(":new-cache-dir"):  # as `headstart extract --cache-dir NEW` (set before the import)
        os.environ["HEADSTART_CACHE_DIR"] = tempfile.mkdtemp(prefix="headstart-bench-new-")
    from headstart.features import FeatureCache, extract_features

    files = _files(args.data, args.limit)  # (ImageFolder's order: sorted class folders, sorted files)
    with tempfile.TemporaryDirectory() as tmp:  # cold feature cache every repetition
        feats = extract_features(
            files,
            args.backbone,
            cache=FeatureCache(Path(tmp) / "f.sqlite"),
            batch_size=args.batch_size,
            engine=engine,
            precision=precision,
        )
    seconds = time.perf_counter() - start
    np.save(args.features_out, feats.features)
    return {
        "n": len(files),
        "seconds": seconds,
        "key": feats.cache_key,
        "torch_imported": "torch" in sys.modules,
        "steady_seconds": feats.seconds,
    }


def run_model_only(args: argparse.Namespace, engine: str, precision: str) -> dict:
    """img/s of the engine alone on preprocessed photos (batch 32), and its features of them."""
    import numpy as np

    from headstart.features.backbones import load_backbone
    from headstart.features.extract import decode_size, preprocessor
    from headstart.features.preprocess import uint8_preprocessor

    backbone = load_backbone(args.backbone)
    files = _files(args.data, None)[: args.model_photos]
    if engine == "openvino":
        from headstart.features.openvino import INT8_PRECISION, openvino_embedder

        precision = INT8_PRECISION if precision == "int8" else precision  # (the int8 model's own name)
        crops = np.stack([uint8_preprocessor(backbone.spec, draft=decode_size(backbone.spec))(p) for p in files])
        embed = openvino_embedder(backbone.spec, precision, lambda: backbone).embed
        run = lambda batch: embed(batch, [(i, "orig") for i in range(len(batch))])  # noqa: E731
        data = crops
    else:
        import torch

        from headstart.features.engines import ONNX_PRECISION, view_embedder

        data = torch.stack([preprocessor(backbone)(p) for p in files])
        embed = view_embedder(backbone, precision=ONNX_PRECISION if engine == "onnx" else precision, device="cpu")
        run = lambda batch: embed(batch, [(i, "orig") for i in range(len(batch))])  # noqa: E731
    feats = np.concatenate([run(data[i : i + args.batch_size]) for i in range(0, len(data), args.batch_size)])
    rounds = []
    for _ in range(args.model_rounds):
        start = time.perf_counter()
        run(data[: args.batch_size])
        rounds.append(args.batch_size / (time.perf_counter() - start))
    np.save(args.features_out, feats)
    return {"img_s": statistics.median(rounds), "rounds": rounds}


def roofline(args: argparse.Namespace) -> dict:
    """Measured matmul peaks (fp32, bf16) and the model's FLOPs a photo."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from headstart.features.backbones import load_backbone

    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
        a @ b
        best = 0.0
        for _ in range(5):
            start = time.perf_counter()
            a @ b
            best = max(best, 2 * 2048**3 / (time.perf_counter() - start))
        peaks[name] = best / 1e9
    backbone = load_backbone(args.backbone)
    size = backbone.spec.data_config["input_size"]
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        backbone.features(torch.zeros(1, *size))
    return {"peak_gflops": peaks, "gflop_per_photo": counter.get_total_flops() / 1e9}


def _child(args: argparse.Namespace) -> None:
    kind, _, variant = args.child.partition(":")
    if kind == "roofline":
        result = roofline(args)
    elif kind == "model":
        result = run_model_only(args, *MODEL_ONLY[variant])
    elif variant == "plain":
        result = run_plain(args)
    else:
        result = run_headstart(args, *END_TO_END[variant])
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def _spawn(child: str, args: argparse.Namespace, features_out: Path) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        child,
        "--data",
        str(args.data),
        "--backbone",
        args.backbone,
        "--batch-size",
        str(args.batch_size),
        "--features-out",
        str(features_out),
        "--model-photos",
        str(args.model_photos),
        "--model-rounds",
        str(args.model_rounds),
    ]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"{child} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - start
    return result


def _cosine(a, b):
    import numpy as np

    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N photos")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--model-photos", type=int, default=128, help="photos for the model-only rounds")
    parser.add_argument("--model-rounds", type=int, default=5)
    parser.add_argument("--report", type=Path, default=REPO / "docs" / "BENCHMARKS.md")
    parser.add_argument("--variants", help="comma-separated end-to-end variants (default: all); plain always runs")
    parser.add_argument("--no-model-only", action="store_true", help="skip the model-only rounds and the roofline")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--features-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(args)
    if not args.data.is_dir():
        sys.exit(f"no data at {args.data}: pass --data with a folder of class subfolders")

    import numpy as np

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        roof = _spawn("roofline", args, tmp / "none.npy") if not args.no_model_only else None
        model: dict[str, dict] = {}
        for variant in (
            [] if args.no_model_only else MODEL_ONLY
        ):  # (the first OpenVINO runs convert and cache the models end to end reuses)
            model[variant] = _spawn(f"model:{variant}", args, tmp / f"model-{variant}.npy")
            print(f"model only  {variant:17s} {model[variant]['img_s']:6.1f} img/s", flush=True)
        for variant, res in model.items():
            reference = np.load(tmp / "model-torch-fp32.npy")
            res["min_cosine"] = float(_cosine(np.load(tmp / f"model-{variant}.npy"), reference).min())
        chosen = ["plain", *args.variants.split(",")] if args.variants else list(END_TO_END)
        runs: dict[str, list[dict]] = {v: [] for v in END_TO_END if v in chosen}
        for r in range(args.repeats):
            for variant in runs:  # interleaved, so drift in machine speed hits all
                res = _spawn(f"e2e:{variant}", args, tmp / f"{variant}.npy")
                res["img_s"], res["steady_img_s"] = res["n"] / res["process_seconds"], res["n"] / res["steady_seconds"]
                runs[variant].append(res)
                print(
                    f"[{r + 1}/{args.repeats}] {variant:14s} {res['img_s']:6.1f} img/s whole process, "
                    f"{res['steady_img_s']:6.1f} after start-up ({res['n']} photos, peak RSS "
                    f"{res['peak_rss_mb']:.0f} MB)",
                    flush=True,
                )
        plain_features = np.load(tmp / "plain.npy")
        cosines = {v: _cosine(np.load(tmp / f"{v}.npy"), plain_features) for v in runs}
    _write_report(args, roof, model, runs, cosines, load_before, os.getloadavg())


def _write_report(args, roof, model, runs, cosines, load_before, load_after) -> None:
    import openvino
    import torch

    med = {v: statistics.median(r["img_s"] for r in rs) for v, rs in runs.items()}
    steady = {v: statistics.median(r["steady_img_s"] for r in rs) for v, rs in runs.items()}
    partial = roof is None or len(runs) < len(END_TO_END)
    roof = roof or {"gflop_per_photo": float("nan"), "peak_gflops": {"fp32": float("nan"), "bf16": float("nan")}}
    gflop = roof["gflop_per_photo"]
    peak = roof["peak_gflops"]
    n = runs["plain"][0]["n"]
    lines = [
        "## Feature extraction: every engine, model only and end to end from JPEG files",
        "",
        f"`python benchmarks/extract.py --data {args.data.name}{f' --limit {args.limit}' if args.limit else ''} "
        f"--repeats {args.repeats}` — backbone `{args.backbone}` ({gflop:.2f} GFLOP a photo), batch "
        f"{args.batch_size}, {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), torch "
        f"{torch.__version__}, OpenVINO {openvino.__version__.split('-')[0]}. Load average before / after: "
        f"{load_before[0]:.1f} / {load_after[0]:.1f} (after: this run's own)"
        + (" — **a busy machine: re-run on a quiet one**." if load_before[0] > 0.75 * (os.cpu_count() or 1) else "."),
        "",
        f"Roofline: measured matmul peak {peak['fp32']:.0f} GFLOP/s fp32, {peak['bf16']:.0f} bf16 → "
        f"{peak['fp32'] / gflop:.0f} img/s fp32, {peak['bf16'] / gflop:.0f} bf16 at most.",
        "",
        f"Model only ({args.model_photos} preprocessed photos, median of {args.model_rounds} batches):",
        "",
        "| engine | img/s | of the roofline | min cosine to torch fp32 | peak RSS |",
        "|---|---|---|---|---|",
    ]
    for variant, res in model.items():
        roof_of = peak["bf16"] if "bf16" in variant or "int8" in variant else peak["fp32"]
        lines.append(
            f"| {variant} | {res['img_s']:.1f} | {100 * res['img_s'] * gflop / roof_of:.0f} % | "
            f"{res['min_cosine']:.4f} | {res['peak_rss_mb']:.0f} MB |"
        )
    lines += [
        "",
        f"End to end, {n} photos, whole processes (start-up included; the converted model cached, the feature cache "
        f"cold), median of {args.repeats}:",
        "",
        "| pipeline | img/s whole process | img/s after start-up | ratio to plain | min cosine to plain fp32 | "
        "imports torch | peak RSS |",
        "|---|---|---|---|---|---|---|",
    ]
    names = {
        "plain": "plain: `ImageFolder` + `DataLoader` + timm, fp32",
        "new-cache-dir": "headstart default (`auto`) with a brand-new `--cache-dir` (converted model per machine)",
        "torch": "headstart `--engine torch`",
        "openvino-fp32": "headstart `--engine openvino --precision fp32`",
        "openvino-bf16": "headstart `--engine openvino --precision bf16` (the default here: `auto`)",
        "openvino-int8": "headstart `--engine openvino --precision int8`",
    }
    for variant, rs in runs.items():
        torch_used = "yes" if variant == "plain" else ("yes" if rs[0]["torch_imported"] else "no")
        lines.append(
            f"| {names[variant]} | {med[variant]:.1f} | {steady[variant]:.1f} | "
            f"{med[variant] / med['plain']:.2f}× | {cosines[variant].min():.4f} | {torch_used} | "
            f"{max(r['peak_rss_mb'] for r in rs):.0f} MB |"
        )
    print("\n".join(lines))
    if partial:  # (docs/BENCHMARKS.md keeps whole runs only)
        print("not written to the report: a partial run (--variants / --no-model-only)")
        return
    print(f"wrote {write_section('extract', chr(10).join(lines), args.report)}")


if __name__ == "__main__":
    main()
