"""Latency of predicting one photo: a plain timm loop against headstart's Classifier.predict on every engine, and the
whole `headstart predict MODEL photo.jpg` command.

    .venv/bin/python benchmarks/predict_latency.py [--data ../shared/data/catsdogs-fullres] [--n 100]

plain     = PIL open + timm eval transform + model forward (fp32) + softmax, one photo at a time
headstart = Classifier.predict([photo]) on a probe model (robust decoding, JPEG draft, cache lookup and write; every
            photo is new to the cache, so nothing is served from it), per engine and precision; "model only" is the
            engine alone on one preprocessed photo
command   = the whole `headstart predict MODEL photo.jpg` process, warm (converted model and backbone card cached):
            a photo new to the feature cache, and one already in it
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
#: name -> (engine, precision)
ENGINES = {
    "torch": ("torch", "auto"),
    "openvino-fp32": ("openvino", "fp32"),
    "openvino-bf16": ("openvino", "bf16"),
    "openvino-int8": ("openvino", "int8"),
}


def _ms(values: list[float]) -> tuple[float, float]:
    ms = np.asarray(values) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED / "catsdogs-fullres")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--commands", type=int, default=5, help="whole-command runs of each kind")
    parser.add_argument("--report", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"no data at {args.data}")
    import torch
    from PIL import Image

    from headstart.data import list_image_files
    from headstart.features import FeatureCache
    from headstart.features.extract import decode_size
    from headstart.features.openvino import openvino_embedder, resolve_engine
    from headstart.features.preprocess import uint8_preprocessor
    from headstart.models.classifier import Classifier
    from headstart.workflows.training import train

    load_before = os.getloadavg()
    photos = list_image_files(args.data)[0]
    rng = np.random.default_rng(0)
    picks = [
        photos[i] for i in rng.choice(len(photos), size=min((len(ENGINES) + 1) * args.n, len(photos)), replace=False)
    ]
    sets = [picks[i * args.n : (i + 1) * args.n] for i in range(len(ENGINES) + 1)]
    sample = Path(__file__).resolve().parents[1] / "src" / "headstart" / "sample_data" / "pets" / "train"
    rows: list[tuple[str, float, float, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_path = train(sample, out=tmp / "m.safetensors", cache=FeatureCache(tmp / "c")).model_path
        model = Classifier.load(model_path)
        backbone = model.backbone
        _net, transform = backbone.model.eval(), backbone.transform()
        head_w, head_b = torch.from_numpy(model.head_weight), torch.from_numpy(model.head_bias)

        def plain(path: Path) -> None:
            x = transform(Image.open(path).convert("RGB"))[None]
            with torch.inference_mode():
                (backbone.features(x) @ head_w.T + head_b).softmax(-1)

        plain(sets[0][0])  # warm-up (first call builds kernels)
        timings = []
        for path in sets[0][1:]:
            start = time.perf_counter()
            plain(path)
            timings.append(time.perf_counter() - start)
        rows.append(("plain: PIL + timm transform + timm fp32", *_ms(timings), ""))
        crop = uint8_preprocessor(model.spec, draft=decode_size(model.spec))(sets[0][0])[None]
        for (name, (engine, precision)), photos_here in zip(ENGINES.items(), sets[1:]):
            cache = FeatureCache(tmp / f"{name}.sqlite")
            model.predict([photos_here[0]], cache=cache, engine=engine, precision=precision)  # warm-up / convert
            timings = []
            for path in photos_here[1:]:
                start = time.perf_counter()
                model.predict([path], cache=cache, engine=engine, precision=precision)
                timings.append(time.perf_counter() - start)
            alone = ""
            if engine == "openvino":
                embed = openvino_embedder(
                    model.spec, resolve_engine(engine, precision, "cpu")[1], lambda: backbone
                ).embed
                embed(crop, [(0, "orig")])
                model_only = []
                for _ in range(50):
                    start = time.perf_counter()
                    embed(crop, [(0, "orig")])
                    model_only.append(time.perf_counter() - start)
                alone = f"{_ms(model_only)[0]:.1f} ms"
            rows.append((f"headstart `predict --engine {engine} --precision {precision}`", *_ms(timings), alone))
        for name, p50, p99, alone in rows:
            print(f"{name:60s} p50 {p50:6.1f} ms  p99 {p99:6.1f} ms  model only {alone or '-'}")

        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", str(os.cpu_count())))
        cli = [str(Path(sys.executable).with_name("headstart")), "predict", str(model_path)]
        commands: dict[str, list[float]] = {"new photo": [], "photo in the feature cache": []}
        subprocess.run([*cli, str(sets[0][1])], env=env, capture_output=True, check=True)  # warm the files
        for i in range(args.commands):
            for kind, photo in (("new photo", sets[0][2 + i]), ("photo in the feature cache", sets[0][1])):
                start = time.perf_counter()
                subprocess.run([*cli, str(photo)], env=env, capture_output=True, check=True)
                commands[kind].append(time.perf_counter() - start)
    load_after = os.getloadavg()
    command_s = {k: statistics.median(v) for k, v in commands.items()}
    for kind, seconds in command_s.items():
        print(f"`headstart predict MODEL photo.jpg`, {kind}: {seconds:.2f} s (median of {args.commands})")
    ratio = rows[0][1] / rows[3][1]
    busy = load_before[0] > 0.75 * (os.cpu_count() or 1)  # (the load after is this run's own)
    lines = [
        "## Predicting one photo",
        "",
        f"`python benchmarks/predict_latency.py --data {args.data.name} --n {args.n}` — model loaded once, one "
        f"photo per call, every photo new to the cache; {os.cpu_count()} CPU cores. Load average before / after: "
        f"{load_before[0]:.1f} / {load_after[0]:.1f}"
        + (" — **a busy machine: re-run on a quiet one**." if busy else "."),
        "",
        "| pipeline | p50 | p99 | model only, p50 |",
        "|---|---|---|---|",
        *[f"| {n} | {p50:.1f} ms | {p99:.1f} ms | {alone or '–'} |" for n, p50, p99, alone in rows],
        "",
        f"p50 ratio (plain / headstart default, OpenVINO bf16): {ratio:.2f}×.",
        "",
        "The whole command, `headstart predict MODEL photo.jpg`, warm (converted model cached), median of "
        f"{args.commands}: " + "; ".join(f"{k} {v:.2f} s" for k, v in command_s.items()) + ".",
    ]
    print(f"wrote {write_section('predict-latency', chr(10).join(lines), args.report)}")


if __name__ == "__main__":
    main()
