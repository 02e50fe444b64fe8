"""How headstart's steps grow with the data: wall time, peak memory and the growth exponent, beside the plain approach.

    .venv/bin/python benchmarks/scale.py                          # 5,000 and 20,000 rows (a shared machine)
    .venv/bin/python benchmarks/scale.py --sizes 30000 300000     # the target sizes, on a quiet machine
    .venv/bin/python benchmarks/scale.py --plain-max 20000        # plain approaches up to this many rows only
    .venv/bin/python benchmarks/scale.py --steps --photo-sizes 1000 4000   # only the real commands, on photos
    .venv/bin/python benchmarks/scale.py --steps --photo-sizes 1000 16000 48000 --photos-made 16000 \
        --commands train predict evaluate --section scale-photos      # predict's and evaluate's peak memory
    .venv/bin/python benchmarks/scale.py --steps audit --sizes 300000 --section scale-audit   # the audit's stages

Every measurement runs in its own process (peak memory = that process's maximum resident set, imports included) on
synthetic feature rows: ``d = 1280`` (``tf_efficientnet_lite0``), 37 classes of Gaussian clusters, 1% near copies
(another row plus a little noise) and 0.2% outliers (random directions) injected, so that the recall of copies and
outliers is measured along with the time. Steps:

* ``probe``: :class:`~headstart.models.probe.LinearProbe` (C on a sample beyond ``max_cv_rows``, torch L-BFGS over
  all rows) against the plain one (``max_cv_rows`` = all rows: C cross-validated over all rows, scikit-learn);
* ``duplicates``: :func:`~headstart.features.duplicates.find_duplicates` on features (an index beyond
  ``EXACT_ROWS``) against all pairs (``exact_rows`` = all rows);
* ``outliers``: :func:`~headstart.audit.outliers.outlier_scores`, the same two ways;
* ``audit``: the audit's stages after the features (:func:`~headstart.audit.core.audit_features`: one neighbour
  search, duplicates, outliers, the probe's C, the cross-validated probes and the learning curve), each timed, with
  0.5% of the labels moved to another class (recall of wrong labels beside copies and outliers);
* ``cache``: reading every row back from a :class:`~headstart.features.cache.FeatureCache` (``iter_vectors``)
  into a preallocated matrix (what ``extract_features`` does), against the matrix's own size;
* ``phone``: :func:`~headstart.features.duplicates.image_signatures` of 12-megapixel JPEGs (made from the bundled
  photos), decoded reduced (JPEG draft) against a full decode.

The growth exponent is ``log(t2 / t1) / log(n2 / n1)`` between the two largest sizes measured; for the commands on
photos, the peak memory's growth a photo between the two sizes and the peak it projects at 300,000 photos. Rewrites
the "scale" section of docs/BENCHMARKS.md (or ``--section``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section

D, CLASSES = 1280, 37


def synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows, labels, the (original, copy) pairs injected and the outlier rows."""
    rng = np.random.default_rng(seed)
    centres = 0.35 * rng.normal(size=(CLASSES, D)).astype(np.float32)  # about 90% accuracy for a linear probe
    y = rng.integers(0, CLASSES, n)
    X = np.empty((n, D), dtype=np.float32)
    for start in range(0, n, 20_000):
        stop = min(n, start + 20_000)
        X[start:stop] = centres[y[start:stop]] + 2.5 * rng.normal(size=(stop - start, D)).astype(np.float32)
    X = np.maximum(X, 0)  # post-ReLU-like features: all positive, like a backbone's pooled features
    copies = rng.choice(n, 2 * (n // 100), replace=False).reshape(-1, 2)
    X[copies[:, 1]] = X[copies[:, 0]] + 0.05 * rng.normal(size=(len(copies), D)).astype(np.float32)
    y[copies[:, 1]] = y[copies[:, 0]]
    outliers = np.setdiff1d(rng.choice(n, max(1, n // 500), replace=False), copies.ravel())
    X[outliers] = 0.0  # a few strong features only: unlike every class (a chart among photos)
    for row in outliers:
        X[row, rng.choice(D, 64, replace=False)] = rng.uniform(0, 20, 64)
    return X, y, copies, outliers


def run_one(step: str, way: str, n: int) -> dict:
    X, y, copies, outliers = synthetic(n)
    out: dict = {}
    start = time.perf_counter()
    if step == "probe":
        from headstart.models.probe import LinearProbe

        train = np.arange(n) % 10 != 0
        probe = LinearProbe(**({"max_cv_rows": n} if way == "plain" else {})).fit(X[train], y[train])
        out["accuracy"] = round(float(np.mean(probe.predict(X[~train]) == y[~train])), 4)
    elif step == "duplicates":
        from headstart.features.duplicates import find_duplicates

        groups = find_duplicates(features=X, **({"exact_rows": n} if way == "plain" else {}))
        together = {(a, b) for g in groups for a in g.members for b in g.members}
        out["copy_recall"] = round(float(np.mean([(int(a), int(b)) in together for a, b in copies])), 4)
    elif step == "outliers":
        from headstart.audit.outliers import OUTLIER_Z, outlier_scores

        scores, _ = outlier_scores(X, **({"exact_rows": n} if way == "plain" else {}))
        out["outlier_recall"] = round(float(np.mean(scores[outliers] >= OUTLIER_Z)), 4)
    elif step == "audit":
        out.update(_audit_rows(X, y, copies, outliers))
    elif step == "cache":
        from headstart.features.cache import FeatureCache

        with tempfile.TemporaryDirectory() as folder:
            cache = FeatureCache(Path(folder) / "features.sqlite")
            hashes = [hashlib.sha256(b"%d" % i).hexdigest() for i in range(n)]  # stored in random key order
            for s in range(0, n, 5000):
                cache.put_many("fp", list(zip(hashes[s : s + 5000], X[s : s + 5000])))
            del X
            out["file_mb"] = round(os.path.getsize(Path(folder) / "features.sqlite") / 2**20, 1)
            before = _reset_peak()
            start = time.perf_counter()
            row_of = {h: r for r, h in enumerate(hashes)}
            matrix = np.empty((n, D), dtype=np.float32)  # what extract_features does: rows into one matrix
            for sha, vector in cache.iter_vectors("fp", hashes):
                matrix[row_of[sha]] = vector
            out["matrix_mb"] = round(matrix.nbytes / 2**20, 1)
            if before is not None:  # the read's own peak, above what the process held before it
                out["read_peak_mb"] = round((_peak_kb() - before) / 1024)
    elif step == "phone":
        from PIL import Image

        from headstart.data import hashing
        from headstart.data.images import load_image

        sample = Path(__file__).resolve().parents[1] / "src" / "headstart" / "sample_data" / "pets"
        with tempfile.TemporaryDirectory() as folder:
            paths = []
            for k, photo in enumerate(sorted(sample.rglob("*.jpg"))[:n]):
                with Image.open(photo) as image:
                    big = image.convert("RGB").resize((4032, 3024), Image.Resampling.BICUBIC)
                paths.append(Path(folder) / f"{k}.jpg")
                big.save(paths[-1], quality=92)
            out["mb_per_photo"] = round(sum(p.stat().st_size for p in paths) / len(paths) / 2**20, 1)
            if way == "plain":
                hashing.SIGNATURE_DECODE = None  # the full decode the hashes had before
            start = time.perf_counter()
            hashing.image_signatures(paths, workers=2)
            out["ms_per_photo"] = round(1000 * (time.perf_counter() - start) / len(paths), 1)
            start = time.perf_counter()
            for p in paths:
                load_image(p, draft_size=(256, 256))
            out["extraction_decode_ms"] = round(1000 * (time.perf_counter() - start) / len(paths), 1)
    out["seconds"] = round(time.perf_counter() - start, 2)
    out["peak_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def _audit_rows(X: np.ndarray, y: np.ndarray, copies: np.ndarray, outliers: np.ndarray) -> dict:
    """The audit's stages after the features (:func:`~headstart.audit.core.audit_features`, what ``audit`` runs on
    cached rows), each stage timed, with 0.5% of the labels moved to another class: recall of the three faults.
    The pixel hashes of cached photos come from the memo; here a copy shares its original's perceptual hash."""
    import headstart.audit.core as core
    from headstart.data import Signatures

    n = len(y)
    rng = np.random.default_rng(1)
    clean = np.setdiff1d(np.arange(n), np.concatenate([copies.ravel(), outliers]))
    wrong = rng.choice(clean, max(1, n // 200), replace=False)
    y = y.copy()
    y[wrong] = (y[wrong] + rng.integers(1, CLASSES, len(wrong))) % CLASSES
    names = [f"class{k:02d}" for k in range(CLASSES)]
    labels = [names[k] for k in y]
    paths = [Path(f"/synthetic/{labels[i]}/{i:06d}.jpg") for i in range(n)]  # (what a listing holds)
    phashes = rng.integers(0, 2**63, n)
    phashes[copies[:, 1]] = phashes[copies[:, 0]]
    stages: dict[str, float] = {}

    def timed(name, function):
        def run(*args, **kwargs):
            began = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                stages[name] = stages.get(name, 0.0) + time.perf_counter() - began

        return run

    for name in (
        "nearest_neighbours",
        "find_duplicates",
        "outlier_scores",
        "fit_probe",
        "out_of_fold_probabilities",
        "learning_curve",
    ):
        setattr(core, name, timed(name, getattr(core, name)))
    found = core.audit_features(
        X,
        labels,
        names,
        n_data=n,
        paths=paths,
        file_hashes=None,
        signatures=Signatures(None, phashes.tolist(), None),
        listed=labels,
    )
    together = {(a, b) for g in found.duplicates for a in g["paths"] for b in g["paths"]}
    flagged_outliers = {r["path"] for r in found.outliers}
    issues = {r["path"] for r in found.label_issues}
    return {
        "copy_recall": round(float(np.mean([(str(paths[a]), str(paths[b])) in together for a, b in copies])), 4),
        "outlier_recall": round(float(np.mean([str(paths[i]) in flagged_outliers for i in outliers])), 4),
        "label_recall": round(float(np.mean([str(paths[i]) in issues for i in wrong])), 4),
        "label_issues": len(issues),
        "cv_accuracy": round(float(found.cv_accuracy), 4),
        **{f"{name}_s": round(t, 1) for name, t in stages.items()},
    }


def _peak_kb() -> int:
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])


def _reset_peak() -> int | None:
    """Reset the process's peak resident memory (Linux: clear_refs 5) and return the resident memory now, in KB;
    None where that cannot be done."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return int(next(line for line in open("/proc/self/status") if line.startswith("VmRSS")).split()[1])
    except OSError:
        return None


def linked_photos(made: Path, out: Path, n: int) -> Path:
    """``n`` photos in ``out/<class>/``: hard links to the photos made in ``made``, each under several names."""
    done = out / f".linked-{n}"
    if done.is_file():
        return out
    sources = sorted(made.glob("*/*.jpg"))
    for i in range(n):
        source = sources[i % len(sources)]
        target = out / source.parent.name / f"{i // len(sources)}-{source.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.link(source, target)
    done.touch()
    return out


def run_commands(n: int, folder: Path, only: list[str] | None = None, made: int | None = None) -> dict[str, dict]:
    """The real commands on ``n`` generated photos, each timed as its own process (``only``: these commands; a
    model is trained whenever one that needs it is asked for). Beyond ``made`` photos, the photos are the ``made``
    ones linked under more names (:func:`linked_photos`: their features cached, as the same photos), and the model
    is the one trained on those."""
    from distributed import env_with, headstart, make_photos, timed

    linked = made is not None and n > made
    if linked:
        data = linked_photos(make_photos(folder / f"photos-{made}", made), folder / f"photos-{n}-linked", n)
    else:
        data = make_photos(folder / f"photos-{n}", n)
    env = env_with(folder / f"cache-{made if linked else n}")
    model = folder / f"model-{made if linked else n}.safetensors"
    runs = {
        "extract": headstart("extract", str(data)),
        "train": headstart("train", str(data), "--backbone", "tf_efficientnet_lite0", "--out", str(model)),
        "predict --jsonl": headstart("predict", str(model), str(data), "--jsonl"),
        "evaluate": headstart("evaluate", str(model), str(data), "--json"),
        "audit": headstart("audit", str(data), "--out", str(folder / f"audit-{n}")),
    }
    results = {}
    for name, command in runs.items():
        if only and name.split()[0] not in only and not (name == "train" and {"predict", "evaluate"} & set(only)):
            continue
        if linked and name == "train" and model.is_file():
            continue
        result = timed(command, env)
        results[name] = {"seconds": round(result["seconds"], 2), "peak_mb": round(result["peak_mb"])}
    return results


def measure(step: str, way: str, n: int) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--one", step, way, str(n)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def exponent(rows: list[tuple[int, dict]]) -> str:
    timed = [(n, r["seconds"]) for n, r in rows if "seconds" in r and r["seconds"] > 0]
    if len(timed) < 2:
        return "–"
    (n1, t1), (n2, t2) = timed[-2], timed[-1]
    return f"n^{math.log(t2 / t1) / math.log(n2 / n1):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000])
    parser.add_argument("--plain-max", type=int, default=20000, help="largest size the plain approaches run at")
    parser.add_argument("--plain-probe-max", type=int, default=10000, help="largest size the plain probe runs at")
    parser.add_argument("--steps", nargs="*", default=["probe", "duplicates", "outliers", "cache", "phone"])
    parser.add_argument("--phone-photos", type=int, default=8)
    parser.add_argument("--photo-sizes", type=int, nargs="*", default=[], help="photos for the commands step")
    parser.add_argument("--photo-folder", type=Path, help="where the photos are made (kept between runs)")
    parser.add_argument("--commands", nargs="*", help="only these commands on photos (extract train predict ...)")
    parser.add_argument("--section", default="scale", help="the section of docs/BENCHMARKS.md to rewrite")
    parser.add_argument("--photos-made", type=int, help="beyond this many photos, link the ones made (no new photos)")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        step, way, n = args.one
        print(json.dumps(run_one(step, way, int(n))))
        return

    lines = [
        "| step | way | rows | wall s | peak MB | details |",
        "|---|---|---|---|---|---|",
    ]
    growth = []
    for step in args.steps:
        ways = ("headstart", "plain") if step not in ("cache", "audit") else ("headstart",)
        sizes = [args.phone_photos] if step == "phone" else args.sizes
        for way in ways:
            rows = []
            for n in sizes:
                limit = args.plain_probe_max if step == "probe" else args.plain_max
                if way == "plain" and n > limit and step != "phone":
                    continue
                result = measure(step, way, n)
                rows.append((n, result))
                details = ", ".join(f"{k} {v}" for k, v in result.items() if k not in ("seconds", "peak_mb"))
                line = f"| {step} | {way} | {n:,} | {result.get('seconds', '–')} | {result.get('peak_mb', '–')} | {details} |"
                print(line, flush=True)
                lines.append(line)
            if step != "phone":
                growth.append(f"{step} ({way}): {exponent(rows)}")
    if args.photo_sizes:
        folder = args.photo_folder or Path(tempfile.mkdtemp(prefix="headstart-scale-"))
        by_command: dict[str, list[tuple[int, dict]]] = {}
        for n in args.photo_sizes:
            for name, result in run_commands(n, folder, args.commands, args.photos_made).items():
                by_command.setdefault(name, []).append((n, result))
                line = f"| {name} | photos | {n:,} | {result['seconds']} | {result['peak_mb']} | |"
                print(line, flush=True)
                lines.append(line)
        for name, rows in by_command.items():
            (n0, smallest), (n1, before), (n2, last) = rows[0], rows[-2] if len(rows) > 1 else rows[0], rows[-1]
            line = f"{name}: {exponent(rows)}, peak memory x{last['peak_mb'] / smallest['peak_mb']:.2f}"
            if n2 > n1:  # (linear in the photos from the two largest sizes on: what a listing of them would cost)
                per_photo = (last["peak_mb"] - before["peak_mb"]) / (n2 - n1)
                at = last["peak_mb"] + per_photo * (300_000 - n2)
                line += (
                    f" ({1024 * per_photo:.3f} KB a photo from {n1:,} to {n2:,}: {at:.0f} MB projected at 300,000 "
                    f"photos, x{at / smallest['peak_mb']:.2f} the peak at {n0:,})"
                )
            growth.append(line)
    load = os.getloadavg()
    body = "\n".join(
        [
            "## Scale: time, memory and growth on synthetic feature rows and generated photos"
            + ("" if args.section == "scale" else f" ({args.section})"),
            "",
            f"`python benchmarks/scale.py --sizes {' '.join(map(str, args.sizes))} --plain-max {args.plain_max} "
            f"--plain-probe-max {args.plain_probe_max} --steps {' '.join(args.steps)}"
            + (f" --photo-sizes {' '.join(map(str, args.photo_sizes))}" if args.photo_sizes else "")
            + (f" --commands {' '.join(args.commands)}" if args.commands else "")
            + (f" --photos-made {args.photos_made}" if args.photos_made else "")
            + (f" --section {args.section}" if args.section != "scale" else "")
            + "` — "
            f"synthetic rows of {D} features, 37 classes, 1% near copies and 0.2% outliers injected (the script's "
            "docstring); each cell is its own process, peak memory includes the imports (about 800 MB with torch "
            f"and scikit-learn). Machine: {os.uname().machine}, {os.cpu_count()} CPU(s), load average "
            f"{load[0]:.1f} at the end of the run (shared with other jobs: absolute times are inflated, the ratios "
            "and exponents are what to read).",
            *(
                [
                    "",
                    f"Beyond {args.photos_made:,} photos, the photos are the {args.photos_made:,} made ones linked under "
                    "more names (their features cached, as the same photos).",
                ]
                if args.photos_made
                else []
            ),
            "",
            *lines,
            "",
            "Growth between the two largest sizes: " + "; ".join(growth) + ".",
        ]
    )
    print(write_section(args.section, body))


if __name__ == "__main__":
    main()
