"""Repeated cross-validation of what `train` gives, on your photos: the measurements behind docs/TRAINING.md.

Two kinds of run, each appending one JSON line per (fold, variant) to ``--out``:

* ``probe``: the linear probe per backbone (and concatenations, which no model file can hold) by nested CV: for
  each outer fold, ``LinearProbe`` (C by its own inner CV) on the other folds, scored on this one; accuracy,
  calibration (ECE over 15 bins, NLL, Brier) with the temperature unguarded and guarded, and what ``auto``'s
  rule would have chosen from the inner CV.
* ``train``: the estimator itself (``ImageClassifier.fit`` on the other folds: its own validation split, epoch
  choice, temperature and refit), predicting the held-out fold; ``--variants`` is JSON: name → fine-tuning
  options (``null``: the probe).

``--per-class K`` trains on K photos a class (``--reps`` random draws) and tests on all the others, instead of
K-fold CV. ``summary FILE`` prints mean accuracy, ECE pooled over each repetition, and a perfectly calibrated
predictor's ECE at the same confidences (the floor that binning noise alone gives).

Example:
    OMP_NUM_THREADS=2 python benchmarks/training_cv.py probe ../shared/data/pets-dev --out probe.jsonl --reps 2
    OMP_NUM_THREADS=2 python benchmarks/training_cv.py train ../shared/data/pets-dev --out ft.jsonl \\
        --backbone tf_efficientnet_lite1 --variants '{"probe": null, "finetune": {}}'
    python benchmarks/training_cv.py summary ft.jsonl
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

BACKBONES = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2")


def splits(labels: np.ndarray, folds: int, reps: int, per_class: int):
    """(fold id, repetition, train indices, test indices)."""
    from sklearn.model_selection import StratifiedKFold

    if per_class:
        for rep in range(reps):
            rng = np.random.default_rng(100 + rep)
            train = np.concatenate(
                [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in np.unique(labels)]
            )
            yield rep, rep, train, np.setdiff1d(np.arange(len(labels)), train)
        return
    for rep in range(reps):
        for k, (train, test) in enumerate(StratifiedKFold(folds, shuffle=True, random_state=rep).split(labels, labels)):
            yield rep * folds + k, rep, train, test


def run_probe(args, dataset, labels, out) -> None:
    import headstart.models.probe as probe_module
    from headstart._math import softmax
    from headstart.features import extract_features
    from headstart.models.inputs import feature_cache
    from headstart.models.probe import LinearProbe
    from headstart.models.temperature import fit_temperature
    from headstart.reports.calibration import calibration_metrics

    cache = feature_cache(args.cache or None)
    feats = {
        b.removeprefix("tf_efficientnet_"): extract_features(dataset.paths, b, cache=cache, flip_average=True)
        for b in BACKBONES
    }
    X = {k: f.features for k, f in feats.items()}
    X["lite0+1+2"] = np.hstack([X["lite0"], X["lite1"], X["lite2"]])
    X["lite1+2"] = np.hstack([X["lite1"], X["lite2"]])
    captured = {}

    def capture(log_proba, y):  # the probe's out-of-fold log-probabilities, to try both temperature rules
        captured["oof"], captured["y"] = log_proba.copy(), y.copy()
        return 1.0

    probe_module._temperature = capture
    for fold, rep, train, test in splits(labels, args.folds, args.reps, args.per_class):
        scored = {}
        for name, features in X.items():
            probe = LinearProbe(random_state=0).fit(features[train], labels[train])
            logits = features[test] @ probe.coef_.T + probe.intercept_
            row = {
                "data": args.data,
                "protocol": args.protocol,
                "fold": fold,
                "rep": rep,
                "variant": name,
                "n_train": len(train),
                "cv": float(probe.cv_accuracy_),
                "C": float(probe.C_),
            }
            for tag, guard in (("unguarded", False), ("guarded", True)):
                t = fit_temperature(captured["oof"], captured["y"], guard=guard) * probe.logit_scale_ratio_
                proba = softmax(logits / t, axis=1)
                m = calibration_metrics(list(labels[test]), proba, list(probe.classes_))
                row.update(
                    {
                        f"T_{tag}": t,
                        f"ece_{tag}": m["ece"],
                        f"nll_{tag}": m["nll"],
                        f"conf_{tag}": proba.max(1).round(5).tolist(),
                    }
                )
            row["correct"] = (probe.classes_[logits.argmax(1)] == labels[test]).tolist()
            row["acc"] = float(np.mean(row["correct"]))
            row["conf"], row["ece"] = row["conf_guarded"], row["ece_guarded"]
            scored[name] = row
            out.write(json.dumps(row) + "\n")
        best = "lite0"  # auto's rule: in order, a later one only when its CV gains more than 1.5 photos' worth
        for name in ("lite1", "lite2"):
            if scored[name]["cv"] - scored[best]["cv"] > 1.5 / len(train):
                best = name
        out.write(json.dumps({**scored[best], "variant": "auto", "picked": best}) + "\n")
        out.flush()
        print(fold, {k: round(v["acc"], 3) for k, v in scored.items()}, "auto ->", best, flush=True)


def run_train(args, dataset, labels, out) -> None:
    import headstart as hs
    from headstart.reports.calibration import calibration_metrics

    cache = args.cache or None
    paths = np.array([str(p) for p in dataset.paths])
    variants = json.loads(args.variants)
    for fold, rep, train, test in splits(labels, args.folds, args.reps, args.per_class):
        for name, options in variants.items():
            started = time.perf_counter()
            clf = hs.ImageClassifier(
                backbone=args.backbone,
                method="probe" if options is None else "finetune",
                finetune=options or None,
            )
            clf.fit((list(paths[train]), list(labels[train])), cache=cache)
            fit_seconds = time.perf_counter() - started
            proba = clf.predict_proba(list(paths[test]))
            m = calibration_metrics(list(labels[test]), proba, list(clf.classes_))
            r = clf.report_
            row = {
                "data": args.data,
                "protocol": args.protocol,
                "fold": fold,
                "rep": rep,
                "variant": name,
                "backbone": r.get("backbone"),
                "n_train": len(train),
                "acc": m["accuracy"],
                "ece": m["ece"],
                "nll": m["nll"],
                "brier": m["brier"],
                "conf": proba.max(1).round(5).tolist(),
                "correct": (clf.classes_[proba.argmax(1)] == labels[test]).tolist(),
                "val_accuracy": r["val_accuracy"],
                "temperature": r.get("temperature"),
                "best_epoch": r.get("best_epoch"),
                "mix": r.get("mix"),
                "flip_average": r.get("flip_average"),
                "refit": {k: v for k, v in (r.get("refit") or {}).items() if k != "history"},
                "frozen_stages": r.get("frozen_stages"),
                "fit_seconds": round(fit_seconds, 1),
                "epoch_seconds": [h["seconds"] for h in r.get("history") or []][1:],
                "val_accuracies": [h["val_accuracy"] for h in r.get("history") or []],
                "against_probe": (r.get("stopping") or {}).get("against_probe"),
                "mirror_check": r.get("mirror_check"),
                "skipped": r.get("finetune_skipped"),
            }
            out.write(json.dumps(row) + "\n")
            out.flush()
            print(
                fold,
                name,
                r.get("backbone"),
                f"acc {m['accuracy']:.4f} ece {m['ece']:.3f} best epoch {row['best_epoch']} fit {fit_seconds:.0f} s",
                flush=True,
            )


def summary(path: Path) -> None:
    from headstart.reports.calibration import expected_calibration_error

    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    groups = collections.defaultdict(list)
    for r in rows:
        groups[(r["data"], r["protocol"], r["variant"])].append(r)
    rng = np.random.default_rng(0)
    print("| data | protocol | variant | folds | accuracy | ECE pooled | floor | mean conf. | fit s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (data, protocol, variant), rs in sorted(groups.items()):
        pooled, floor, conf = [], [], []
        for rep in sorted({r["rep"] for r in rs}):
            c = np.concatenate([r["conf"] for r in rs if r["rep"] == rep])
            ok = np.concatenate([r["correct"] for r in rs if r["rep"] == rep]).astype(float)
            pooled.append(expected_calibration_error(c, ok))
            floor.append(np.mean([expected_calibration_error(c, rng.random(len(c)) < c) for _ in range(50)]))
            conf.append(c.mean())
        acc = np.array([r["acc"] for r in rs])
        fit = np.mean([r.get("fit_seconds", 0.0) for r in rs])
        print(
            f"| {data} | {protocol} | {variant} | {len(rs)} | {acc.mean():.4f} ± {acc.std() / np.sqrt(len(acc)):.4f} "
            f"| {np.mean(pooled):.4f} | {np.mean(floor):.4f} | {np.mean(conf):.4f} | {fit:.0f} |"
        )


def curve(paths: list[Path], report: Path) -> None:
    """Probe against fine-tune by photos a class (``--per-class`` runs of ``train``): the "learning-curve" section
    of docs/TRAINING.md, each row paired draw by draw."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _report import write_section

    rows = [json.loads(line) for path in paths for line in path.read_text().splitlines() if line.strip()]
    by = collections.defaultdict(dict)
    for r in rows:
        by[(r["data"], r["protocol"])].setdefault(r["fold"], {})[r["variant"]] = r
    table = [
        "| data | photos a class (train / test) | draws | probe | fine-tune | fine-tune − probe (paired) "
        "| epochs validation kept | fine-tune's fit |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def size(key: tuple[str, str]) -> tuple[str, int]:
        return key[0], int(key[1].split("/")[0]) if "/class" in key[1] else 10**9

    for key in sorted(by, key=size):
        pairs = [v for v in by[key].values() if "probe" in v and "finetune" in v]
        if not pairs:
            continue
        probe = np.array([v["probe"]["acc"] for v in pairs])
        tuned = np.array([v["finetune"]["acc"] for v in pairs])
        diff = tuned - probe
        se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
        n_test = len(pairs[0]["probe"]["conf"])
        table.append(
            f"| {key[0]} | {key[1].split('/')[0]} ({pairs[0]['probe']['n_train']} / {n_test}) | {len(pairs)} "
            f"| {probe.mean():.4f} | {tuned.mean():.4f} | {diff.mean():+.4f} ± {se:.4f} "
            f"| {', '.join('skipped' if v['finetune'].get('skipped') else str(v['finetune']['best_epoch']) for v in pairs)} "
            f"| {np.mean([v['finetune']['fit_seconds'] for v in pairs]):.0f} s |"
        )
    command = " ".join(p.name for p in paths)
    body = f"""### Probe or fine-tuning, by photos a class

`python benchmarks/training_cv.py curve {command}` over runs of `training_cv.py train DATA --backbone
tf_efficientnet_lite1 --per-class K --reps 3 --variants '{{"probe": null, "finetune": {{}}}}'`: K photos a class drawn
per repetition, the whole estimator (its own split, epoch choice, temperature, refit) fitted on them and scored on
every other photo; fine-tuning with its defaults. "skipped": validation could not judge a network against the probe
(the probe missed fewer than 5 validation photos), so nothing was trained; 0: a network was trained and did not
beat the probe by the sign test, so the probe is the model. Mean test accuracy; the difference paired draw by draw,
± its standard error. Fit seconds on a 2-core machine (other work beside it: they vary about twofold).

{chr(10).join(table)}
"""
    write_section("learning-curve", body, report)
    print(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("probe", "train", "summary", "curve"))
    parser.add_argument("data", nargs="+", help="a data set folder (for summary and curve, JSONL files)")
    parser.add_argument("--report", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "TRAINING.md")
    parser.add_argument("--out", type=Path, default=Path("training_cv.jsonl"))
    parser.add_argument("--backbone", default="auto")
    parser.add_argument("--variants", default='{"probe": null, "finetune": {}}')
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--per-class", type=int, default=0)
    parser.add_argument("--cache", default="", help="feature cache folder (default: headstart's)")
    args = parser.parse_args()
    if args.kind == "summary":
        for path in args.data:
            summary(Path(path))
        return
    if args.kind == "curve":
        curve([Path(p) for p in args.data], args.report)
        return
    args.data = args.data[0]
    warnings.filterwarnings("ignore")
    from headstart.data import load_dataset

    dataset = load_dataset(args.data)
    labels = np.asarray(dataset.labels)
    args.protocol = f"{args.per_class}/class" if args.per_class else f"{args.folds}-fold x{args.reps}"
    args.data = Path(args.data).name
    with args.out.open("a") as out:
        (run_probe if args.kind == "probe" else run_train)(args, dataset, labels, out)


if __name__ == "__main__":
    main()
