"""Does ``--backbone auto`` choose well on photos it has not seen? Its rule against every fixed backbone, over seeds.

For each data set and training size (K photos a class, drawn with seeds 0..N-1, every other photo is the test set;
or "all": four fifths of the photos, each seed one fold of a repeated stratified 5-fold split, the fold tests),
the probe is fitted on each offline backbone's features of the K-a-class training photos and scored on the rest.
Then each choice rule picks one backbone from the training photos alone, and scores what that backbone scores:

* ``lite0``, ``lite1``, ``lite2``: always that backbone;
* ``old rule``: lite1 first, a later one when its probe CV accuracy is higher by more than 1.5 photos' worth
  (the rule before the paired one);
* ``paired rule``: :class:`headstart.models.selection.PairedChoice`, the one backbone ``auto`` keeps beyond
  :data:`~headstart.models.selection.ENSEMBLE_MAX_PHOTOS` photos and for fine-tuning (the same code);
* ``auto (ensemble)``: what ``train`` fits with ``auto`` on these sizes: the ensemble of the three, its head the
  probes' calibrated logits averaged (:func:`~headstart.models.probe_fit.fit_ensemble_probe`, the same code);
* ``probabilities averaged``: the three probes' probabilities averaged instead (for comparison).

It prints, per data set and size, each rule's mean test accuracy ± its standard error over the seeds, how often
``auto`` left the default, and how many distinct backbones a rule picked across the seeds; and writes a section of
docs/TRAINING.md. Features come from (and go into) the feature cache: one view of each photo, as ``train`` computes.

    .venv/bin/python benchmarks/backbone_choice.py --seeds 10
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
BACKBONES = ("tf_efficientnet_lite1", "tf_efficientnet_lite2", "tf_efficientnet_lite0")  # auto's order
DOC = REPO / "docs" / "TRAINING.md"


def datasets(tmp: Path, digits_per_class: int) -> list[tuple[str, Path, tuple[int, ...]]]:
    """(name, folder, K photos a class to train on) for each data set this machine has."""
    sys.path.insert(0, str(Path(__file__).parent))
    from challenge import digits_folder

    out = []
    if (SHARED / "pets-dev").is_dir():
        out.append(("pets-dev", SHARED / "pets-dev", (3, 5, 0)))
    if (SHARED / "catsdogs-dev").is_dir():
        out.append(("catsdogs-dev", SHARED / "catsdogs-dev", (5, 20, 100, 0)))
    out.append(("digits (far domain)", digits_folder(tmp / "digits", digits_per_class), (5, 20, 0)))
    return out


def draw(labels: np.ndarray, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """K photos a class to train on (0: four fifths of every class, the fold ``seed % 5`` of repetition
    ``seed // 5`` of a stratified 5-fold split), the rest to test on."""
    if per_class == 0:
        from sklearn.model_selection import StratifiedKFold

        folds = StratifiedKFold(5, shuffle=True, random_state=seed // 5).split(labels, labels)
        return list(folds)[seed % 5]
    rng = np.random.default_rng(seed)
    train = np.concatenate(
        [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in np.unique(labels)]
    )
    return np.sort(train), np.setdiff1d(np.arange(len(labels)), train)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--digits-per-class", type=int, default=60)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/TRAINING.md as it is")
    args = parser.parse_args()

    from headstart.data import load_dataset
    from headstart.features import extract_features
    from headstart.models.inputs import feature_cache
    from headstart.models.memo import Memo
    from headstart.models.probe_fit import fit_ensemble_probe, fit_probe
    from headstart.models.selection import PairedChoice

    warnings.simplefilter("ignore")
    cache = feature_cache(None)
    memo = Memo.beside(cache)
    started = time.perf_counter()
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, folder, sizes in datasets(Path(tmp), args.digits_per_class):
            data = load_dataset(folder)
            feats = {b: extract_features(data.paths, b, cache=cache, progress=True) for b in BACKBONES}
            common = set.intersection(*(set(f.indices.tolist()) for f in feats.values()))
            keep = np.array(sorted(common))
            labels = np.asarray(data.labels)[keep]
            X = {b: f.features[np.searchsorted(f.indices, keep)] for b, f in feats.items()}
            for k in sizes:
                if k and np.unique(labels, return_counts=True)[1].min() <= k:
                    continue
                scores = collections.defaultdict(list)
                picks = collections.defaultdict(list)
                for seed in range(args.seeds):
                    train, test = draw(labels, k, seed)
                    test_acc, cv, C, T = {}, {}, {}, {}
                    mean_proba = 0.0
                    for b in BACKBONES:
                        fit = fit_probe(X[b][train], labels[train], random_state=seed, memo=memo)
                        proba = fit.predict_proba(X[b][test])
                        mean_proba = mean_proba + proba / len(BACKBONES)
                        predicted = fit.classes_[proba.argmax(axis=1)]
                        test_acc[b], cv[b], C[b] = float(np.mean(predicted == labels[test])), fit.cv_accuracy_, fit.C_
                        T[b] = fit.temperature_
                    for b in BACKBONES:
                        scores[b.removeprefix("tf_efficientnet_")].append(test_acc[b])
                    ensemble = fit.classes_[np.asarray(mean_proba).argmax(axis=1)]
                    scores["probabilities averaged"].append(float(np.mean(ensemble == labels[test])))
                    joined = np.hstack([X[b] for b in BACKBONES])
                    head = fit_ensemble_probe(
                        joined[train],
                        labels[train],
                        tuple(X[b].shape[1] for b in BACKBONES),
                        random_state=seed,
                        memo=memo,
                    )
                    guessed = head.classes_[head.predict_proba(joined[test]).argmax(axis=1)]
                    scores["auto (ensemble)"].append(float(np.mean(guessed == labels[test])))
                    old = BACKBONES[0]
                    for b in BACKBONES[1:]:
                        if cv[b] - cv[old] > 1.5 / len(train):
                            old = b
                    rule = PairedChoice(labels[train], seed=seed, memo=memo)
                    for b in BACKBONES:
                        rule.offer(b, X[b][train], C=C[b], temperature=T[b])
                    for tag, chosen in (("old rule", old), ("paired rule", rule.best)):
                        scores[tag].append(test_acc[chosen])
                        picks[tag].append(chosen.removeprefix("tf_efficientnet_"))
                row = {"data": name, "k": k or "all, 5-fold", "n_test": len(test)}
                for tag, values in scores.items():
                    v = np.asarray(values)
                    row[tag] = (v.mean(), v.std(ddof=1) / np.sqrt(len(v)))
                row["picks"] = {tag: collections.Counter(p) for tag, p in picks.items()}
                table.append(row)
                print(
                    f"{name} {k} a class: "
                    + ", ".join(f"{t} {v[0]:.4f}±{v[1]:.4f}" for t, v in row.items() if isinstance(v, tuple))
                    + f"; the paired rule picked {dict(row['picks']['paired rule'])}",
                    flush=True,
                )
    body = report(table, args.seeds, time.perf_counter() - started)
    print(body)
    if not args.no_write:
        text = DOC.read_text()
        block = f"<!-- backbone-choice -->\n{body.strip()}\n<!-- /backbone-choice -->"
        pattern = re.compile(r"<!-- backbone-choice -->.*?<!-- /backbone-choice -->", re.S)
        text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
        DOC.write_text(text)


def report(table: list[dict], seeds: int, seconds: float) -> str:
    tags = ("lite0", "lite1", "lite2", "old rule", "paired rule", "auto (ensemble)", "probabilities averaged")
    lines = [
        "### The choice on unseen photos, over seeds",
        "",
        f"`python benchmarks/backbone_choice.py --seeds {seeds}` ({seconds / 60:.0f} min): K photos a class drawn with "
        f'each seed 0..{seeds - 1}, every other photo tests ("all": each seed one fold of a repeated 5-fold split); '
        "mean test accuracy ± standard error over the seeds (test photos: of one seed). "
        "`auto (ensemble)` is the model `train` fits with `--backbone auto` on data sets of these sizes (the three "
        "probes' calibrated logits averaged); `paired rule` is the one backbone `auto` keeps on larger ones and for "
        "fine-tuning; `old rule` chose by one CV score with a 1.5-photo margin.",
        "",
        "| data | K a class (test photos) | " + " | ".join(tags) + " | paired rule picked | old rule picked |",
        "|---|---|" + "---|" * (len(tags) + 2),
    ]
    for row in table:
        best_fixed = max(row[t][0] for t in ("lite0", "lite1", "lite2"))
        cells = []
        for t in tags:
            m, s = row[t]
            cell = f"{m:.4f} ± {s:.4f}"
            cells.append(f"**{cell}**" if m >= best_fixed - 1e-12 else cell)
        picked = {
            t: ", ".join(f"{b} ×{n}" for b, n in sorted(row["picks"][t].items())) for t in ("paired rule", "old rule")
        }
        lines.append(
            f"| {row['data']} | {row['k']} ({row['n_test']}) | "
            + " | ".join(cells)
            + f" | {picked['paired rule']} | {picked['old rule']} |"
        )
    gaps = [row["auto (ensemble)"][0] - max(row[t][0] for t in ("lite0", "lite1", "lite2")) for row in table]
    lines += [
        "",
        "Bold: at least as good as the best fixed backbone on that row. `auto (ensemble)` minus the best fixed "
        "backbone of each row (which one is best changes from row to row): "
        + ", ".join(f"{g:+.4f}" for g in gaps)
        + (f"; mean {np.mean(gaps):+.4f}, worst {min(gaps):+.4f}." if gaps else "."),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
