"""How much of what is wrong does `headstart audit` find? Known faults injected, repeated seeds, against plain baselines.

    .venv/bin/python benchmarks/audit.py                       # ../shared/data pets-dev, catsdogs-dev, -fullres; seeds 0-4
    .venv/bin/python benchmarks/audit.py --seeds 3 --data DIR --test-per-class 2

For each data set and seed, :func:`headstart.audit.faults.inject_faults` copies it under neutral names, holds out
test photos, moves photos to a wrong class, puts altered copies of test photos (resized, re-encoded, cropped,
mirrored, all four) among the training photos and mixes in images of other domains. The audit then runs twice (the
second time with every feature cached: the time quoted). Scored:

* wrong labels: recall among the first 20 label issues and in the whole list, precision of the first k (k = the
  number injected); baseline: the plain ranking by the loss of a probe fitted on all photos (sort by loss);
* duplicates: copy pairs found in one group, groups holding no injected pair (false groups); baseline: identical
  bytes (what `train`'s split groups by);
* outliers: injected images among the first 10 outliers, recall and precision of the outlier list; baseline: the
  lowest maximum probability of that probe.

Rewrites the "audit" section of docs/AUDIT.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
AUDIT_DOC = Path(__file__).resolve().parents[1] / "docs" / "AUDIT.md"
FAULTS = {"n_wrong_labels": 10, "n_copies": 10, "n_outliers": 8}


def _baselines(faults, cache) -> dict[str, float]:
    """Sort by in-sample loss (labels) and by lowest max probability (outliers), of one probe fitted on all photos."""
    from headstart.data.datasets import load_dataset
    from headstart.features.extract import extract_features
    from headstart.models.probe_fit import fit_probe

    data = load_dataset(faults.data)
    feats = extract_features(data.paths, cache=cache, flip_average=True)
    paths = [data.paths[i] for i in feats.indices]
    labels = np.array([data.labels[i] for i in feats.indices])
    fit = fit_probe(feats.features, labels, random_state=0)
    proba = fit.predict_proba(feats.features)
    given = proba[np.arange(len(labels)), np.searchsorted(fit.classes_, labels)]
    by_loss = [paths[i] for i in np.argsort(given, kind="stable")]
    by_doubt = [paths[i] for i in np.argsort(proba.max(axis=1), kind="stable")]
    return {
        "labels_at_20": len(set(by_loss[:20]) & set(faults.wrong_labels)) / len(faults.wrong_labels),
        "outliers_at_10": len(set(by_doubt[:10]) & set(faults.outliers)) / len(faults.outliers),
    }


def _score(report, faults) -> dict[str, float]:
    issues = [Path(r["path"]) for r in report.label_issues]
    wrong = set(faults.wrong_labels)
    k = len(wrong)
    pairs = [{str(c), str(o)} for c, (o, _) in faults.copies.items()]
    groups = [set(g["paths"]) for g in report.duplicates]
    outliers = [Path(r["path"]) for r in report.outliers]
    injected = set(faults.outliers)
    return {
        "labels_at_20": len(wrong & set(issues[:20])) / k,
        "labels_found": len(wrong & set(issues)) / k,
        "labels_precision_at_k": len(wrong & set(issues[:k])) / k,
        "label_list": len(issues),
        "suggested_right": np.mean(
            [
                next(r["suggested"] for r in report.label_issues if Path(r["path"]) == p) == t
                for p, (t, _) in faults.wrong_labels.items()
                if p in set(issues)
            ]
            or [0.0]
        ),
        "pairs_found": np.mean([any(p <= g for g in groups) for p in pairs]),
        "false_groups": sum(not any(p <= g for p in pairs) for g in groups),
        "outliers_at_10": len(injected & set(outliers[:10])) / len(injected),
        "outliers_found": len(injected & set(outliers)) / len(injected),
        "outlier_precision": len(injected & set(outliers)) / max(1, len(outliers)),
        "outliers_in_label_issues": len(injected & set(issues)),
    }


def _run(data: Path, seeds: int, test_per_class: int) -> list[dict[str, float]]:
    from headstart.audit.core import audit
    from headstart.audit.faults import inject_faults
    from headstart.features.cache import FeatureCache

    rows = []
    for seed in range(seeds):
        with tempfile.TemporaryDirectory() as tmp:
            faults = inject_faults(data, Path(tmp) / "faulty", seed=seed, test_per_class=test_per_class, **FAULTS)
            cache = FeatureCache()
            audit(faults.data, test=faults.test, cache=cache, seed=0)  # computes the new files' features
            start = time.perf_counter()
            report = audit(faults.data, test=faults.test, cache=cache, seed=0, reuse=False)
            seconds = time.perf_counter() - start
            row = {
                **_score(report, faults),
                "seconds": seconds,
                "n": report.n_usable,
                **{f"baseline_{k}": v for k, v in _baselines(faults, cache).items()},
            }
            kinds = {}
            for copy, (original, kind) in faults.copies.items():
                kinds[kind] = kinds.get(kind, 0) + any(
                    {str(copy), str(original)} <= set(g["paths"]) for g in report.duplicates
                )
            row["missed_copies"] = (
                ",".join(
                    f"{k}" for k, v in sorted(kinds.items()) if v < sum(kk == k for _, kk in faults.copies.values())
                )
                or "-"
            )
            rows.append(row)
            print(
                f"{data.name} seed {seed}: "
                + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
                flush=True,
            )
    return rows


def _timing(data: Path) -> str:
    from headstart.audit.core import audit

    audit(data)  # features into the cache
    lines = []
    for reuse in (True, False):
        start = time.perf_counter()
        report = audit(data, reuse=reuse)
        lines.append(
            f"{time.perf_counter() - start:.1f} s ({'memo on' if reuse else '--no-reuse: probe fitted and pixels hashed again'})"
        )
    return f"{report.n_usable} photos of `{data.name}`, {len(report.classes)} classes, features cached: " + "; ".join(
        lines
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, action="append")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--test-per-class", type=int, default=None)
    parser.add_argument("--timing", type=Path, default=SHARED / "catsdogs-fullres")
    args = parser.parse_args()
    os.environ.setdefault("HEADSTART_CACHE_DIR", str(Path(tempfile.gettempdir()) / "headstart-audit-bench-cache"))
    datasets = args.data or [SHARED / "pets-dev", SHARED / "catsdogs-dev", SHARED / "catsdogs-fullres"]
    cells = [
        "labels_at_20",
        "baseline_labels_at_20",
        "labels_found",
        "labels_precision_at_k",
        "suggested_right",
        "pairs_found",
        "false_groups",
        "outliers_at_10",
        "baseline_outliers_at_10",
        "outliers_found",
        "outlier_precision",
        "outliers_in_label_issues",
        "seconds",
    ]
    table = ["| data set (photos) | " + " | ".join(cells) + " |", "|---" * (len(cells) + 1) + "|"]
    for data in datasets:
        if not data.is_dir():
            print(f"skip {data}: not here")
            continue
        per_class = args.test_per_class or (1 if "pets" in data.name else 25)
        rows = _run(data, args.seeds, per_class)
        means = [np.mean([r[c] for r in rows]) for c in cells]
        mins = [np.min([r[c] for r in rows]) for c in cells]
        table.append(
            f"| {data.name} ({rows[0]['n']}) | "
            + " | ".join(
                f"{m:.2f} (min {lo:.2f})"
                if c not in ("false_groups", "outliers_in_label_issues", "seconds")
                else (f"{m:.1f} s" if c == "seconds" else f"{m:.1f} (max {np.max([r[c] for r in rows]):.0f})")
                for c, m, lo in zip(cells, means, mins)
            )
            + " |"
        )
        missed = sorted({r["missed_copies"] for r in rows} - {"-"})
        if missed:
            table.append(f"| {data.name}: copies missed in some seed: {', '.join(missed)} |" + " |" * (len(cells) - 1))
    timing = _timing(args.timing) if args.timing.is_dir() else "(timing data set not here)"
    import platform

    body = (
        f"## Measured: injected faults, {args.seeds} seeds (`benchmarks/audit.py`)\n\n"
        f"Faults per seed: {FAULTS['n_wrong_labels']} photos moved to a wrong class, {FAULTS['n_copies']} altered "
        "copies of test photos among the training photos (kinds in turn: resize, reencode, crop, mirror, all four), "
        f"{FAULTS['n_outliers']} images of other domains (charts, screenshot, table, sign, pattern, portrait); "
        "test set: 1 photo a class held out of pets-dev, 25 a class of the Dogs vs. Cats folders. Mean (and worst "
        "seed) of:\n\n" + "\n".join(table) + "\n\n"
        f"Speed: {timing}. Machine: {platform.machine()}, {os.cpu_count()} CPU(s), `OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}`, load average {os.getloadavg()[0]:.1f} at the end (other "
        "jobs on the machine slow every figure above).\n"
    )
    write_section("audit", body, report=AUDIT_DOC)
    print(body)


if __name__ == "__main__":
    main()
