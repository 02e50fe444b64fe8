"""Measure issue 5's attack claims; every number is taken from the saved PNGs, re-read from disk.

Usage:
    python benchmarks/attack_claims.py [--out DIR] [--data ../shared/data/pets-dev] [--steps 50]

1. A probe trained on ``--data`` (Oxford-IIIT Pet breeds) without the 24 bundled test photos; targeted L∞ PGD at
   4/255 in at most ``--steps`` steps pushes each of those 24 unseen photos to a fixed other breed (Bombay, or
   Siamese for Bombay photos). Success is re-checked with ``Classifier.predict`` on the saved PNGs and L∞ with
   Pillow, independently of the attack's own report.
2. The lesson's case: the bundled dog photos pushed to ImageNet class 284 (Siamese cat) at 4/255 with the
   offline default backbone's ImageNet head, and whether each adversarial image carries over to lite1 / lite2.
3. The robustness curve of the probe on the 24 unseen photos (PGD, eps 0,1,2,4,8 /255) against ``evaluate``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from headstart._io import write_json
from headstart.attacks.adversarial import attack, transfer
from headstart.attacks.report import save_attack, save_robustness
from headstart.attacks.robustness_curve import robustness
from headstart.data.datasets import load_dataset
from headstart.models.classifier import Classifier
from headstart.models.target import load_target
from headstart.workflows.evaluation import evaluate
from headstart.workflows.training import train

SAMPLE_TEST = Path(__file__).resolve().parents[1] / "src" / "headstart" / "sample_data" / "pets" / "test"


def linf(a: Path, b: Path) -> int:
    return int(
        np.abs(
            np.asarray(Image.open(a).convert("RGB"), np.int16) - np.asarray(Image.open(b).convert("RGB"), np.int16)
        ).max()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("attack-claims"))
    parser.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "pets-dev"
    )
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    report: dict = {}

    # 1. probe, unseen photos, fixed other breed
    data = load_dataset(args.data)
    held = {p.name for p in SAMPLE_TEST.rglob("*.jpg")}
    unseen = [s.path for s in data.samples if s.path.name in held] or sorted(SAMPLE_TEST.rglob("*.jpg"))
    model = train(
        data.subset([i for i, s in enumerate(data.samples) if s.path.name not in held]),
        out=args.out / "probe.safetensors",
    ).model_path
    rows = []
    for photo in unseen:
        target = "Siamese" if photo.parent.name == "Bombay" else "Bombay"
        start = time.perf_counter()
        result = attack(model, photo, target=target, eps="4/255", steps=args.steps)
        png = save_attack(result, args.out / "probe")["adversarial"]
        rows.append(
            {
                "photo": photo.name,
                "target": target,
                "success": result.success,
                "steps_used": result.steps_used,
                "linf_8bit": linf(png, photo),
                "png": str(png),
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    rechecked = Classifier.load(model).predict([r["png"] for r in rows]).predictions
    report["probe"] = {
        "n": len(rows),
        "success_reported": sum(r["success"] for r in rows),
        "success_rechecked_with_predict": sum(p.labels[0] == r["target"] for p, r in zip(rechecked, rows)),
        "max_linf_8bit": max(r["linf_8bit"] for r in rows),
        "max_steps_used": max(r["steps_used"] for r in rows),
        "mean_steps_used": float(np.mean([r["steps_used"] for r in rows])),
    }

    # 2. the lesson's case and transfer
    net = load_target("tf_efficientnet_lite0")
    others = [load_target("tf_efficientnet_lite1"), load_target("tf_efficientnet_lite2")]
    lesson = []
    for photo in sorted(p for p in SAMPLE_TEST.rglob("*.jpg") if p.parent.name.islower()):  # dog breeds
        result = attack(net, photo, target=284, eps="4/255", steps=args.steps)
        carried = {t["model"]: t["carried_over"] for t in transfer(result, others)}
        save_attack(result, args.out / "lesson")
        lesson.append(
            {
                "photo": photo.name,
                "before": result.before.label,
                "success": result.success,
                "p284": round(result.after.probabilities[284].item(), 3),
                "linf_8bit": result.linf_8bit,
                "transfer": carried,
            }
        )
        print(json.dumps(lesson[-1]), flush=True)
    report["lesson"] = {
        "n": len(lesson),
        "success": sum(r["success"] for r in lesson),
        "max_linf_8bit": max(r["linf_8bit"] for r in lesson),
        "carried_over": {o.name: sum(bool(r["transfer"][o.name]) for r in lesson) for o in others},
    }

    # 3. robustness curve on the unseen photos
    unseen_set = data.subset([i for i, s in enumerate(data.samples) if s.path.name in held])
    curve = robustness(model, unseen_set, "0,1/255,2/255,4/255,8/255", steps=20)
    save_robustness(curve, args.out / "robustness")
    report["robustness"] = {
        "eps_8bit": [e * 255 for e in curve.eps],
        "accuracy": curve.accuracy,
        "evaluate_accuracy": evaluate(model, unseen_set).accuracy,
    }
    print(json.dumps(report, indent=2))
    write_json(args.out / "attack_claims.json", report)


if __name__ == "__main__":
    main()
